"""Inference modes shared by ``encnet evaluate`` and ``encnet predict``.

* whole image: one forward pass on the full-resolution image (``scales=None``, ``slide=False``);
* sliding window (``slide=True``): crop_size windows at stride ``stride_rate * crop_size`` over the
  image at its own size, edge windows padded, overlaps averaged;
* multi-scale (``scales=(0.5, ...)``), PyTorch-Encoding's procedure: for each scale the long side
  becomes ``ceil(base_size * scale)`` (aspect kept); if that fits in the crop the image is padded to
  the crop and run once, otherwise it is slid over as above; results are resized to the image.

``flip`` adds the horizontally flipped view of every view. Views are merged by averaging softmax
probabilities (``merge="prob"``, default) or by summing logits like the reference (``merge="logits"``).
All views of one image have the crop's shape (whole-image mode aside), so they are batched together,
``batch_size`` at a time, across windows, flips and scales.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from encnet_core.constants import DEFAULT_BASE_SIZE, DEFAULT_CROP_SIZE
from encnet_core.errors import ConfigError

__all__ = ["InferenceConfig", "infer", "ModelFn", "window_starts", "parse_scales"]

MAX_SIDE = 16384  # largest crop, base size or scaled side accepted (pixels)
MAX_SCALE = 8.0  # largest multi-scale factor accepted

ModelFn = Callable[[Tensor], Tensor]
"""(N, 3, h, w) normalised images -> (N, C, h, w) logits."""


@dataclass(frozen=True)
class InferenceConfig:
    """How to turn an image into class scores."""

    scales: tuple[float, ...] | None = None  # None: the image's own size; else the reference multi-scale procedure
    slide: bool = False  # sliding window at the image's own size (ignored with scales: those slide when needed)
    flip: bool = False  # add horizontally flipped views
    crop_size: int = DEFAULT_CROP_SIZE  # window side
    base_size: int = DEFAULT_BASE_SIZE  # long side at scale 1.0 (multi-scale)
    stride_rate: float = 2 / 3  # window stride / crop_size
    merge: str = "prob"  # "prob": average softmax probabilities; "logits": sum logits (reference)
    batch_size: int = 8  # views per forward pass
    align_corners: bool = True  # bilinear resizing of images and scores (reference: True)
    pad_value: tuple[float, ...] = (0.0, 0.0, 0.0)  # per-channel value of padding, in normalised units

    def __post_init__(self) -> None:
        if self.merge not in ("prob", "logits"):
            raise ConfigError(f"--merge must be prob or logits, got {self.merge!r}")
        if not 0 < self.stride_rate <= 1:
            raise ConfigError(f"--stride-rate must be in (0, 1], got {self.stride_rate}")
        if not 8 <= self.crop_size <= MAX_SIDE:
            raise ConfigError(f"--crop-size must be between 8 and {MAX_SIDE}, got {self.crop_size}")
        if not 1 <= self.base_size <= MAX_SIDE:
            raise ConfigError(f"--base-size must be between 1 and {MAX_SIDE}, got {self.base_size}")
        if self.scales is not None:
            bad = [s for s in self.scales if not (math.isfinite(s) and 0 < s <= MAX_SCALE)]
            if not self.scales or bad:
                raise ConfigError(f"--scales must be positive numbers up to {MAX_SCALE:g}, got {bad[0] if bad else 'none'}")
            if max(self.scales) * self.base_size > MAX_SIDE:
                raise ConfigError(
                    f"--scales {max(self.scales):g} x --base-size {self.base_size} makes a {max(self.scales) * self.base_size:.0f} px "
                    f"side; the limit is {MAX_SIDE}"
                )
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """'0.5,0.75,1' -> (0.5, 0.75, 1.0); None/'' -> None."""
    if not text:
        return None
    try:
        scales = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--scales must be comma-separated numbers, got {text!r}") from None
    if not scales:
        raise ConfigError(f"--scales must be comma-separated numbers, got {text!r}")
    return scales


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows covering [0, length) (length >= crop), as the reference grid."""
    count = int(math.ceil((length - crop) / stride)) + 1
    return [i * stride for i in range(count)]


def _pad(image: Tensor, height: int, width: int, value: Sequence[float]) -> Tensor:
    """Pad (N, 3, h, w) at the bottom/right to (height, width) with a per-channel value."""
    n, c, h, w = image.shape
    if h >= height and w >= width:
        return image
    out = image.new_empty(n, c, max(h, height), max(w, width))
    out[:] = torch.tensor(value, dtype=image.dtype, device=image.device).view(1, c, 1, 1)
    out[:, :, :h, :w] = image
    return out


class _Accumulator:
    """Runs queued views in batches and adds their scores into per-scale canvases."""

    def __init__(self, model: ModelFn, config: InferenceConfig) -> None:
        self.model, self.config = model, config
        self.queue: list[tuple[Tensor, Tensor, Tensor, int, int, int, int, bool]] = []

    def add(self, view: Tensor, canvas: Tensor, count: Tensor, y0: int, y1: int, x0: int, x1: int) -> None:
        """Queue ``view`` (3, crop, crop) whose region [y0:y1, x0:x1] of ``canvas`` it predicts."""
        self.queue.append((view, canvas, count, y0, y1, x0, x1, False))
        if self.config.flip:
            self.queue.append((view.flip(-1), canvas, count, y0, y1, x0, x1, True))
        if len(self.queue) >= self.config.batch_size:
            self.flush(full_only=True)

    def flush(self, full_only: bool = False) -> None:
        """Run the queued views; with ``full_only`` only whole batches (the rest waits for more views)."""
        size = self.config.batch_size
        end = len(self.queue) - len(self.queue) % size if full_only else len(self.queue)
        for start in range(0, end, size):
            chunk = self.queue[start : start + size]
            logits = self.model(torch.stack([v[0] for v in chunk])).float()  # (n, C, crop, crop)
            scores = logits.softmax(1) if self.config.merge == "prob" else logits
            for score, (_, canvas, count, y0, y1, x0, x1, flipped) in zip(scores, chunk, strict=True):
                if flipped:
                    score = score.flip(-1)
                canvas[:, y0:y1, x0:x1] += score[:, : y1 - y0, : x1 - x0]
                count[y0:y1, x0:x1] += 1
        del self.queue[:end]


def _tile(acc: _Accumulator, image: Tensor, canvas: Tensor, count: Tensor, config: InferenceConfig) -> None:
    """Queue crop-size windows over ``image`` (3, h, w), padding it to at least the crop."""
    crop = config.crop_size
    _, h, w = image.shape
    padded = _pad(image[None], crop, crop, config.pad_value)[0]
    ph, pw = padded.shape[-2:]
    stride = max(1, int(crop * config.stride_rate))
    for y0 in window_starts(ph, crop, stride):
        for x0 in window_starts(pw, crop, stride):
            y1, x1 = min(y0 + crop, ph), min(x0 + crop, pw)
            window = _pad(padded[None, :, y0:y1, x0:x1], crop, crop, config.pad_value)[0]
            acc.add(window, canvas, count, y0, min(y1, h), x0, min(x1, w))


@torch.no_grad()
def infer(model: ModelFn, image: Tensor, num_classes: int, config: InferenceConfig) -> Tensor:
    """Merged class scores (C, H, W) for one normalised image (3, H, W); argmax(0) is the prediction.

    With ``merge="prob"`` the result is the mean probability over views; with ``"logits"`` the sum
    over scales (and flips) of the window-averaged logits, as the reference.
    """
    _, H, W = image.shape
    device = image.device
    total = torch.zeros(num_classes, H, W, device=device)
    if config.scales is None and not config.slide:  # whole image
        views = torch.stack([image, image.flip(-1)]) if config.flip else image[None]
        logits = model(views).float()
        scores = logits.softmax(1) if config.merge == "prob" else logits
        total = scores[0] + (scores[1].flip(-1) if config.flip else 0)
        return total / len(views) if config.merge == "prob" else total
    acc = _Accumulator(model, config)
    canvases = []
    scales = config.scales or (None,)
    for scale in scales:
        if scale is None:
            h, w, resized = H, W, image
        else:
            long_side = int(math.ceil(config.base_size * scale))
            h, w = (long_side, int(W * long_side / H + 0.5)) if H > W else (int(H * long_side / W + 0.5), long_side)
            resized = F.interpolate(image[None], (h, w), mode="bilinear", align_corners=config.align_corners)[0]
        canvas = torch.zeros(num_classes, h, w, device=device)
        count = torch.zeros(h, w, device=device)
        _tile(acc, resized, canvas, count, config)
        canvases.append((canvas, count))
    acc.flush()
    views_per_pixel = 2 if config.flip else 1
    for canvas, count in canvases:
        # windows are averaged; flips averaged (prob) or summed (logits, as the reference adds them)
        scale_scores = canvas / count.clamp_min(1) * (views_per_pixel if config.merge == "logits" else 1)
        if scale_scores.shape[-2:] != (H, W):
            scale_scores = F.interpolate(scale_scores[None], (H, W), mode="bilinear", align_corners=config.align_corners)[0]
        total += scale_scores
    return total / len(canvases) if config.merge == "prob" else total
