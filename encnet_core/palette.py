"""Colour palettes for label maps, and the one writer of palette PNGs (prepare, evaluate, predict)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from encnet_core.constants import IGNORE_INDEX

__all__ = ["voc_palette", "pil_palette", "palette_png"]


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


def palette_png(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """PNG bytes of (H, W) uint8 ``labels`` as a palette ("P") image: the pixel values are the labels,
    ``palette`` (C, 3) gives their colours and IGNORE_INDEX is white (see ``pil_palette``)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(pil_palette(palette))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
