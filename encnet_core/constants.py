"""The numbers every part of encnet agrees on, defined once: the ignore label, normalisation, sizes."""

from __future__ import annotations

__all__ = [
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD", "DEFAULT_BASE_SIZE",
    "DEFAULT_CROP_SIZE", "CIFAR_CROP_SIZE",
]  # fmt: skip

IGNORE_INDEX = 255
"""Label value for void / unlabelled / padding pixels, in every prepared dataset, loss and metric."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Normalisation mean (RGB, 0..1) of the ImageNet-pretrained backbones."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Normalisation std (RGB, 0..1) of the ImageNet-pretrained backbones."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
"""Normalisation mean (RGB, 0..1) of the CIFAR classifiers: the reference's (PyTorch-Encoding v0.2.0,
experiments/recognition/dataset/cifar10.py, ``transforms.Normalize``)."""

CIFAR10_STD = (0.2023, 0.1994, 0.2010)
"""Normalisation std (RGB, 0..1) of the CIFAR classifiers, from the same ``transforms.Normalize``."""

CIFAR_CROP_SIZE = 32
"""Side (pixels) of a CIFAR image: the classifiers' training crop and input size."""

DEFAULT_BASE_SIZE = 520
"""Long side (pixels) before random scaling in training, and at scale 1.0 in multi-scale inference."""

DEFAULT_CROP_SIZE = 480
"""Side (pixels) of the square training crop and of the inference window."""
