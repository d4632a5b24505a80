"""Image transforms (torchvision.transforms.v2) of the classification task, for training, validation and inference.

Every pipeline takes the ``tv_tensors.Image`` (3, H, W) uint8 that ``HDF5ClassificationDataset`` gives
(the label passes beside it, untouched) and returns a (3, crop, crop) image:

* ``train_transform``: the reference's CIFAR augmentation (PyTorch-Encoding v0.2.0,
  experiments/recognition/dataset/cifar10.py: ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
  ``Normalize``): zero padding of ``crop / 8`` pixels on every side (4 at 32), a random crop, a
  horizontal flip with p = 0.5, then ``normalize_image``;
* ``eval_transform``: no augmentation, normalised;
* ``fit_transform``: the uint8 image at the crop size, not normalised (evaluate and predict normalise
  whole batches on the model's device).

Images of another size than ``crop`` are first resized (short side, antialiased bilinear) and
centre-cropped to ``crop`` x ``crop``; for CIFAR (32 x 32 images, crop 32) both steps leave them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from encnet_core.constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR_CROP_SIZE
from encnet_core.data.transforms import normalize_image
from encnet_core.errors import ConfigError

__all__ = ["train_transform", "eval_transform", "fit_transform", "padding_for"]


def padding_for(crop_size: int) -> int:
    """Pixels of zero padding on each side before the random crop: ``crop / 8``, the reference's 4 at 32."""
    return crop_size // 8


class _Normalized(v2.Transform):
    """uint8 ``tv_tensors.Image`` -> plain float32 (3, H, W) ``normalize_image`` tensor (laid out contiguously first)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def transform(self, inpt: Any, params: dict[str, Any]) -> torch.Tensor:
        return normalize_image(inpt.as_subclass(torch.Tensor).contiguous(), self.mean, self.std)


class _Plain(v2.Transform):
    """``tv_tensors.Image`` -> plain uint8 (3, H, W) tensor (what DataLoader batches of evaluate hold)."""

    _transformed_types = (tv_tensors.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> torch.Tensor:
        return inpt.as_subclass(torch.Tensor).contiguous()


def _fit(crop_size: int) -> list[v2.Transform]:
    if crop_size < 1:
        raise ConfigError(f"crop_size must be >= 1, got {crop_size}")
    return [v2.Resize(crop_size, antialias=True), v2.CenterCrop(crop_size)]  # no-ops at the crop size


def train_transform(
    crop_size: int = CIFAR_CROP_SIZE, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> v2.Compose:
    """Pad ``crop / 8`` with zeros, random crop, horizontal flip (p = 0.5), normalise: (3, crop, crop) float32."""
    return v2.Compose(
        _fit(crop_size)
        + [v2.RandomCrop(crop_size, padding=padding_for(crop_size), fill=0), v2.RandomHorizontalFlip(p=0.5)]
        + [_Normalized(mean, std)]
    )


def eval_transform(
    crop_size: int = CIFAR_CROP_SIZE, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> v2.Compose:
    """Validation: the image at the crop size, normalised; (3, crop, crop) float32."""
    return v2.Compose(_fit(crop_size) + [_Normalized(mean, std)])


def fit_transform(crop_size: int = CIFAR_CROP_SIZE) -> v2.Compose:
    """The image at the crop size, still uint8: (3, crop, crop)."""
    return v2.Compose(_fit(crop_size) + [_Plain()])
