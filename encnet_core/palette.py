"""Colour palettes for label maps, and the one writer of palette PNGs (prepare, evaluate, predict)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from encnet_core.constants import IGNORE_INDEX

__all__ = ["voc_palette", "pil_palette", "palette_png", "rgb_to_lab", "delta_e76"]


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


_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)  # linear sRGB -> CIE XYZ, D65 white (IEC 61966-2-1)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB colours (..., 3) in 0..255 as CIELAB (..., 3): L* 0..100, a*, b* (D65 white, the CIE formulas)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
    )


def delta_e76(palette: np.ndarray) -> np.ndarray:
    """(C, C) CIE76 colour differences (Euclidean distance in CIELAB) between the rows of a (C, 3) palette.

    About 2.3 is a just-noticeable difference; rows 40 apart read as different colours at a glance.
    """
    lab = rgb_to_lab(np.asarray(palette).reshape(-1, 3))
    return np.sqrt(((lab[:, None, :] - lab[None, :, :]) ** 2).sum(-1))


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
