"""Paired image/mask transforms (torchvision.transforms.v2) for training, validation and evaluation.

Every pipeline takes ``(tv_tensors.Image (3, H, W) uint8, tv_tensors.Mask (H, W) int64)`` as given by
``HDF5SegmentationDataset`` and returns a normalised float32 image (3, H', W') and a plain int64 mask
(H', W') with IGNORE_INDEX (255) on void and padding pixels. Masks are always resized with nearest
neighbour (``v2.functional.resize`` does so for ``tv_tensors.Mask``), so labels are never blended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from encnet_core.constants import (
    DEFAULT_BASE_SIZE,
    DEFAULT_CROP_SIZE,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from encnet_core.errors import ConfigError

__all__ = [
    "normalize_image",
    "PadToSize",
    "PlainMask",
    "RandomLongSideResize",
    "eval_transform",
    "normalize_only",
    "train_transform",
]


class RandomLongSideResize(v2.Transform):
    """Resize so the long side is a uniform random integer in [min_size, max_size], keeping the aspect.

    The short side is rounded to the nearest integer; images use antialiased bilinear, masks nearest.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"long_side": int(torch.randint(self.min_size, self.max_size + 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = F.get_size(inpt)
        long_side = params["long_side"]
        if height > width:
            size = [long_side, max(1, int(width * long_side / height + 0.5))]
        else:
            size = [max(1, int(height * long_side / width + 0.5)), long_side]
        return self._call_kernel(F.resize, inpt, size, antialias=True)


class PadToSize(v2.Transform):
    """Pad on the right and bottom to at least ``size`` x ``size``: images with 0, masks with IGNORE_INDEX.

    (``v2.RandomCrop(pad_if_needed=True)`` pads both sides by the missing amount, which places the
    image at a random position; the reference pads right/bottom only.)
    """

    def __init__(self, size: int, image_fill: float = 0, mask_fill: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = size
        self.image_fill = image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(next(inpt for inpt in flat_inputs if isinstance(inpt, torch.Tensor)))
        # left, top, right, bottom
        return {"padding": [0, 0, max(self.size - width, 0), max(self.size - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.image_fill
        return self._call_kernel(F.pad, inpt, params["padding"], fill=fill)


class PlainMask(v2.Transform):
    """Turn the ``tv_tensors.Mask`` into the plain int64 (H, W) tensor that losses and metrics take."""

    _transformed_types = (tv_tensors.Mask,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> torch.Tensor:
        mask = inpt.as_subclass(torch.Tensor)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]  # (1, H, W) -> (H, W)
        return mask.to(torch.int64)


def normalize_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> float32 ``(image / 255 - mean) / std`` on the image's device.

    The one normalisation of encnet: training and validation (the pipelines below) and inference
    (``LoadedModel.normalize``) all call it. Returns a new tensor; ``image`` is left as it is.
    """
    x = image.to(torch.float32, copy=True).div_(255)
    x = x.sub_(torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1))
    return x.div_(torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1))


class _Normalize(v2.Transform):
    """``normalize_image`` as a paired transform: the image is normalised, the mask passes through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(normalize_image(inpt.as_subclass(torch.Tensor), self.mean, self.std), like=inpt)


class _ContiguousImage(v2.Transform):
    """Lay the image out as (C, H, W) in memory; values are unchanged.

    torchvision.io decodes into an (H, W, C) buffer and the resize keeps that layout (its uint8 kernel is
    fastest on it), but the normalisation's per-channel broadcast runs about 4x slower on it than on a
    contiguous image; copying the uint8 crop first is cheaper than normalising the strided one.
    """

    _transformed_types = (tv_tensors.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(inpt.contiguous(), like=inpt)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """uint8 image -> float32 (x / 255 - mean) / std (``normalize_image``); the mask becomes a plain int64 tensor."""
    return [_ContiguousImage(), _Normalize(mean, std), PlainMask()]


def train_transform(
    base_size: int = DEFAULT_BASE_SIZE,
    crop_size: int = DEFAULT_CROP_SIZE,
    scale_range: tuple[float, float] = (0.5, 2.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = True,
) -> v2.Compose:
    """The reference training augmentation, output (3, crop, crop) float32 and (crop, crop) int64.

    Long side uniform in [scale_range[0] * base_size, scale_range[1] * base_size] (aspect kept),
    horizontal flip with p=0.5, pad right/bottom to the crop (image 0 before normalisation, mask
    255), random crop, normalise.
    """
    low, high = round(scale_range[0] * base_size), round(scale_range[1] * base_size)
    if crop_size < 1 or not 1 <= low <= high:
        raise ConfigError(
            f"need crop_size >= 1 and 0 < scale_range[0] <= scale_range[1] with a long side of at least 1 px; "
            f"got crop_size={crop_size}, base_size={base_size}, scale_range={tuple(scale_range)}"
        )
    steps: list[v2.Transform] = [RandomLongSideResize(low, high)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [PadToSize(crop_size), v2.RandomCrop(crop_size)]
    return v2.Compose(steps + _normalize(mean, std))


def eval_transform(
    crop_size: int = DEFAULT_CROP_SIZE, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Validation during training: short side to ``crop_size``, centre crop, normalise; (3, crop, crop)."""
    if crop_size < 1:
        raise ConfigError(f"crop_size must be >= 1, got {crop_size}")
    return v2.Compose(
        [v2.Resize(crop_size, antialias=True), v2.CenterCrop(crop_size)] + _normalize(mean, std)
    )


def normalize_only(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Full-resolution evaluation: normalise the image, keep its size; the mask becomes plain int64."""
    return v2.Compose(_normalize(mean, std))
