"""Colour palettes for label maps: one definition used by prepare, predict and export."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
"""Label value for void / unlabelled / padding pixels, in every prepared dataset."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Normalisation mean (RGB, 0..1) of the ImageNet-pretrained backbones."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Normalisation std (RGB, 0..1) of the ImageNet-pretrained backbones."""


def voc_palette(num_classes: int = 256) -> np.ndarray:
    """The bit-interleaved PASCAL VOC colour map, shape (num_classes, 3), uint8."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def pil_palette(palette: np.ndarray) -> list[int]:
    """A flat 768-entry list for PIL's Image.putpalette; index 255 (ignore) is white."""
    full = np.zeros((256, 3), dtype=np.uint8)
    count = min(len(palette), 255)
    full[:count] = palette[:count]
    full[IGNORE_INDEX] = (255, 255, 255)
    return full.reshape(-1).tolist()
