"""Inference modes shared by ``encnet evaluate`` and ``encnet predict``.

* whole image: one forward pass on the full-resolution image (``scales=None``, ``slide=False``);
* sliding window (``slide=True``): crop_size windows at stride ``stride_rate * crop_size`` over the
  image at its own size, edge windows padded, overlaps averaged;
* multi-scale (``scales=(0.5, ...)``), PyTorch-Encoding's procedure: for each scale the long side
  becomes ``ceil(base_size * scale)`` (aspect kept); if that fits in the crop the image is padded to
  the crop and run once, otherwise it is slid over as above; results are resized to the image.

``flip`` adds the horizontally flipped view of every view. How views are merged (``merge``):

* ``"prob"`` (default, like mmsegmentation): softmax probabilities averaged over the views covering
  a pixel (windows and flips), then over scales;
* ``"reference"``: PyTorch-Encoding's ``MultiEvalModule`` (``encoding/models/sseg/base.py``) to float
  rounding: each window scores ``exp(logits(x) + flip(logits(flip(x))))`` (``module_inference``: the
  flip pair's logits are summed *before* the exponential), windows are averaged where they overlap,
  and the per-scale results, resized to the image, are summed. The exponential is taken in float32
  as the reference does, so it overflows to inf where a flip pair's logits sum past about 88.7;
* ``"logits"``: the same sums without the exponential (logits summed over flips and scales,
  averaged over windows). It is *not* the reference's merge: a sum of logits ranks classes like a
  product of every view's probabilities, while the reference multiplies only a window's flip pair
  and then adds over windows and scales, a sum dominated by the views with the largest logits; with
  more than one scale or window their argmaxes differ.

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

__all__ = ["InferenceConfig", "InferenceRequest", "infer", "ModelFn", "window_starts", "parse_scales", "MERGES"]

MAX_SIDE = 16384  # largest crop, base size or scaled side accepted (pixels)
MAX_SCALE = 8.0  # largest multi-scale factor accepted
MERGES = ("prob", "reference", "logits")  # see the module docstring

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
    merge: str = "prob"  # "prob": mean softmax; "reference": PyTorch-Encoding's exp-sum; "logits": logit sums
    batch_size: int = 8  # views per forward pass
    align_corners: bool = True  # bilinear resizing of images and scores (reference: True)
    pad_value: tuple[float, ...] = (0.0, 0.0, 0.0)  # per-channel value of padding, in normalised units

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ConfigError(f"--merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
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


@dataclass(frozen=True)
class InferenceRequest:
    """The inference options as a command takes them, before the model is read: nothing is checked
    yet, and ``crop_size``/``base_size`` None stand for the model's own training sizes.
    ``config(crop, base)`` checks them and builds the ``InferenceConfig`` once the model is loaded."""

    scales: str | None = None  # "0.5,0.75,1" as given (parse_scales); None or "": the image's own size
    slide: bool = False  # sliding window at the image's own size
    flip: bool = False  # add horizontally flipped views
    crop_size: int | None = None  # window side; None: the model's training crop
    base_size: int | None = None  # long side at scale 1.0; None: the model's training base size
    stride_rate: float = 2 / 3  # window stride / crop_size
    merge: str = "prob"  # "prob", "reference" or "logits" (MERGES)
    batch_size: int = 8  # views per forward pass

    def config(self, model_crop: int, model_base: int) -> InferenceConfig:
        """The checked settings, the sizes not given taken from the model (``LoadedModel.crop_size/base_size``)."""
        return InferenceConfig(
            scales=parse_scales(self.scales),
            slide=self.slide,
            flip=self.flip,
            crop_size=model_crop if self.crop_size is None else self.crop_size,
            base_size=model_base if self.base_size is None else self.base_size,
            stride_rate=self.stride_rate,
            merge=self.merge,
            batch_size=self.batch_size,
        )


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
    """Runs queued views in batches and adds their scores into per-scale canvases.

    ``count`` counts views (prob, logits) or windows (reference: a window and its flip are one
    score, as in the reference's ``module_inference``).
    """

    def __init__(self, model: ModelFn, config: InferenceConfig) -> None:
        self.model, self.config = model, config
        self.queue: list[tuple[Tensor, tuple[Tensor, Tensor, int, int, int, int], bool]] = []
        self.pending: Tensor | None = None  # reference merge: a window's logits, waiting for its flip's

    def add(self, view: Tensor, canvas: Tensor, count: Tensor, y0: int, y1: int, x0: int, x1: int) -> None:
        """Queue ``view`` (3, crop, crop) whose region [y0:y1, x0:x1] of ``canvas`` it predicts."""
        target = (canvas, count, y0, y1, x0, x1)
        self.queue.append((view, target, False))
        if self.config.flip:  # right after its window: the reference merge pairs them in order
            self.queue.append((view.flip(-1), target, True))
        if len(self.queue) >= self.config.batch_size:
            self.flush(full_only=True)

    def flush(self, full_only: bool = False) -> None:
        """Run the queued views; with ``full_only`` only whole batches (the rest waits for more views)."""
        size = self.config.batch_size
        end = len(self.queue) - len(self.queue) % size if full_only else len(self.queue)
        for start in range(0, end, size):
            chunk = self.queue[start : start + size]
            logits = self.model(torch.stack([v[0] for v in chunk])).float()  # (n, C, crop, crop)
            for logit, (_, target, flipped) in zip(logits, chunk, strict=True):
                self._merge(logit.flip(-1) if flipped else logit, target, flipped)
        del self.queue[:end]

    def _merge(self, logit: Tensor, target: tuple[Tensor, Tensor, int, int, int, int], flipped: bool) -> None:
        canvas, count, y0, y1, x0, x1 = target
        merge = self.config.merge
        if merge == "reference":
            if self.config.flip and not flipped:
                self.pending = logit
                return
            score = (self.pending + logit).exp() if flipped else logit.exp()  # exp(l(x) + flip(l(flip x)))
            self.pending = None
        else:
            score = logit.softmax(0) if merge == "prob" else logit
        canvas[:, y0:y1, x0:x1] += score[:, : y1 - y0, : x1 - x0]
        count[y0:y1, x0:x1] += 1


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

    ``merge="prob"``: the mean probability over views. ``"reference"``: the reference's
    ``MultiEvalModule`` scores, the sum over scales of the window-averaged ``exp(logits + flipped
    logits)``. ``"logits"``: the same sum without the exponential.
    """
    _, H, W = image.shape
    device = image.device
    total = torch.zeros(num_classes, H, W, device=device)
    if config.scales is None and not config.slide:  # whole image
        views = torch.stack([image, image.flip(-1)]) if config.flip else image[None]
        logits = model(views).float()
        if config.merge == "reference":
            return (logits[0] + logits[1].flip(-1)).exp() if config.flip else logits[0].exp()
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
    # logits: count holds views, and the reference sums a window's flip pair: x2 turns the mean back into that sum
    pair_sum = 2 if config.flip and config.merge == "logits" else 1
    for canvas, count in canvases:
        scale_scores = canvas / count.clamp_min(1) * pair_sum if pair_sum > 1 else canvas / count.clamp_min(1)
        if scale_scores.shape[-2:] != (H, W):
            scale_scores = F.interpolate(scale_scores[None], (H, W), mode="bilinear", align_corners=config.align_corners)[0]
        total += scale_scores
    return total / len(canvases) if config.merge == "prob" else total
