"""The numbers every part of encnet agrees on, defined once: the ignore label, normalisation, sizes."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_BASE_SIZE", "DEFAULT_CROP_SIZE"]

IGNORE_INDEX = 255
"""Label value for void / unlabelled / padding pixels, in every prepared dataset, loss and metric."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Normalisation mean (RGB, 0..1) of the ImageNet-pretrained backbones."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Normalisation std (RGB, 0..1) of the ImageNet-pretrained backbones."""

DEFAULT_BASE_SIZE = 520
"""Long side (pixels) before random scaling in training, and at scale 1.0 in multi-scale inference."""

DEFAULT_CROP_SIZE = 480
"""Side (pixels) of the square training crop and of the inference window."""
