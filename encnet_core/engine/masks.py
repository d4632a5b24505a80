"""Masks from a segmentation model (``encnet predict``'s segmentation task): palette masks, overlays and predictions.json."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from encnet_core.engine.images import (
    PredictResult,
    collect_inputs,
    load_rgb,
    open_image,
    oriented_size,
    read_error_reason,
)
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.errors import ConfigError
from encnet_core.palette import palette_png
from encnet_core.paths import atomic_write, check_output_dir
from encnet_core.progress import ProgressCallback
from encnet_core.viz import draw_legend, legend_entries
from encnet_core.weights.model_files import LoadedModel

__all__ = ["PredictOptions", "predict", "predict_request", "overlay_image", "upsampled_labels"]


@dataclass(frozen=True)
class PredictOptions:
    """Options of ``encnet predict``."""

    output: Path  # output folder
    inference: InferenceConfig = InferenceConfig()  # whole / sliding / multi-scale, flip, merge
    mask_format: str = "color"  # "color": palette PNG; "index": grayscale PNG of label values
    overlay: bool = False  # also write <name>_overlay.jpg blending the colours over the image
    alpha: float = 0.5  # overlay opacity of the class colours
    se_threshold: float = 0.5  # SE-head probability for a class to be reported present
    min_share: float = 0.001  # pixel share for a class to be listed in predictions.json
    overwrite: bool = False  # replace existing outputs
    batch_size: int = 4  # images per forward pass (same-size images, whole-image mode)

    def __post_init__(self) -> None:
        if self.mask_format not in ("color", "index"):
            raise ConfigError(f"--format must be color or index, got {self.mask_format!r}")
        if not 0.0 <= self.alpha <= 1.0:  # also false for nan
            raise ConfigError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if not 0.0 <= self.se_threshold <= 1.0:
            raise ConfigError(f"--se-threshold must be between 0 and 1, got {self.se_threshold}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def _outputs(options: PredictOptions, stem: str) -> list[Path]:
    paths = [options.output / f"{stem}.png"]
    if options.overlay:
        paths.append(options.output / f"{stem}_overlay.jpg")
    return paths


def _write_output(path: Path, data: bytes | Image.Image, **save_options: Any) -> None:
    """Write one output file atomically (PNG bytes, or an image PIL encodes by the suffix); no fsync:
    a mask or an overlay is cheap to make again."""
    with atomic_write(path, fsync=False, keep_suffix=True) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data.save(tmp, **save_options)


BAND_PIXELS = 1 << 20  # pixels per band of rows when blending overlays and counting classes (bounds the temporaries)
MAX_BATCH_PIXELS = 1 << 22  # whole-image mode batches same-size images only up to this many pixels per pass
UPSAMPLE_ELEMENTS = 1 << 25  # logit maps up to this many values at full size are resized at once, larger ones a class at a time


def _bands(labels: np.ndarray) -> list[slice]:
    """Row ranges of about ``BAND_PIXELS`` pixels covering ``labels`` (H, W)."""
    rows = max(1, BAND_PIXELS // max(labels.shape[1], 1))
    return [slice(top, top + rows) for top in range(0, labels.shape[0], rows)]


def overlay_image(rgb: np.ndarray, labels: np.ndarray, model: LoadedModel, alpha: float) -> Image.Image:
    """The class colours blended over ``rgb`` at opacity ``alpha``, with a legend of the classes present
    (swatch and name, most pixels first) in the top-left corner. Blended in bands of rows (the same
    float32 arithmetic per pixel), so a large photo needs no full-size float copies."""
    blended = np.empty(rgb.shape, dtype=np.uint8)
    for rows in _bands(labels):
        colours = model.palette[labels[rows]]  # (h, W, 3)
        blended[rows] = (rgb[rows].astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round()
    picture = Image.fromarray(blended)
    del blended
    return draw_legend(picture, legend_entries([labels[rows] for rows in _bands(labels)], model.classes, model.palette))[0]


def _argmax_classes(logits: Tensor, dim: int = 1) -> Tensor:
    """``logits.argmax(dim)`` as uint8 labels (int64 past 256 classes), without an int64 map of the image's size."""
    labels = logits.argmax(dim)
    return labels.to(torch.uint8) if logits.shape[dim] <= 256 else labels


@torch.no_grad()
def upsampled_labels(model: LoadedModel, lowres: Tensor, size: tuple[int, int]) -> Tensor:
    """``model.upsample(lowres, size).argmax(1)``, the labels ``model.run`` gives, as uint8 (N, H, W).

    A full-size logit map larger than ``UPSAMPLE_ELEMENTS`` values (a 24-megapixel photo with 14
    classes is 1.3 GB of float32) is never built: each class's map is resized alone (the resizing is
    per channel, and bit-identical to the whole map's) and folded into a running maximum and argmax
    with ``argmax``'s rules (the first of equal maxima wins; NaN counts as the maximum).
    """
    assert model.upsample is not None
    n, classes = lowres.shape[:2]
    # three channels at once take another code path in PyTorch's CPU resizing than one channel does
    if classes == 3 or n * classes * size[0] * size[1] <= UPSAMPLE_ELEMENTS:
        return _argmax_classes(model.upsample(lowres, size))
    best = model.upsample(lowres[:, :1], size)[:, 0]
    labels = torch.zeros(best.shape, dtype=torch.uint8 if classes <= 256 else torch.int64, device=best.device)
    for c in range(1, classes):
        score = model.upsample(lowres[:, c : c + 1], size)[:, 0]
        better = (score > best) | (score.isnan() & ~best.isnan())
        best = torch.where(better, score, best)
        labels.masked_fill_(better, c)
        del score, better
    return labels


def predict(
    model: LoadedModel, inputs: list[Path], options: PredictOptions, progress: ProgressCallback | None = None
) -> PredictResult:
    """Segment every image; an unreadable file is recorded in ``failed`` and the rest go on."""
    check_output_dir(options.output, "--output")
    files = collect_inputs(inputs, options.output)
    if not options.overwrite:
        existing = [p for _, stem in files for p in _outputs(options, stem) if p.exists()]
        if existing:
            raise ConfigError(f"{len(existing)} outputs exist already (e.g. {existing[0]}); pass --overwrite to replace them")
    options.output.mkdir(parents=True, exist_ok=True)
    inference = options.inference
    if inference.pad_value == (0.0, 0.0, 0.0):
        from dataclasses import replace

        inference = replace(inference, pad_value=model.pad_value)
    whole = inference.scales is None and not inference.slide
    start = time.perf_counter()
    result = PredictResult(written=0)
    # group by size (read from the header only) so whole-image passes can batch images
    groups: dict[tuple[int, int] | None, list[tuple[Path, str]]] = defaultdict(list)
    for path, stem in files:
        try:
            with open_image(path) as img:
                key = oriented_size(img) if whole else None
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on crafted files; skip the file, go on
            result.failed.append({"file": str(path), "reason": read_error_reason(exc)})
            continue
        groups[key].append((path, stem))
    done = len(result.failed)
    for key, group in groups.items():
        step = min(options.batch_size, max(1, MAX_BATCH_PIXELS // (key[0] * key[1] or 1))) if key else 1
        for begin in range(0, len(group), step):
            batch: list[tuple[Path, str, np.ndarray]] = []
            chunk = group[begin : begin + step]
            for path, stem in chunk:
                try:
                    batch.append((path, stem, load_rgb(path)))
                except Exception as exc:  # noqa: BLE001 - as above: one unreadable file does not stop the run
                    result.failed.append({"file": str(path), "reason": read_error_reason(exc)})
            if batch:
                _predict_batch(model, batch, inference, options, result)
            done += len(chunk)
            if progress:
                progress("predicting", done, len(files), unit="items")
    with atomic_write(options.output / "predictions.json") as tmp:
        tmp.write_text(json.dumps({
            "classes": model.classes, "se_threshold": options.se_threshold, "images": result.predictions,
            "failed": result.failed}, indent=2) + "\n")  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def _predict_batch(
    model: LoadedModel,
    batch: list[tuple[Path, str, np.ndarray]],
    inference: InferenceConfig,
    options: PredictOptions,
    result: PredictResult,
) -> None:
    images = model.normalize(torch.from_numpy(np.stack([a for _, _, a in batch])).permute(0, 3, 1, 2))  # (N, 3, H, W)
    size = (images.shape[-2], images.shape[-1])
    if inference.scales is None and not inference.slide and not inference.flip:
        # one batched pass gives the masks and the SE head; logits stay at the head's resolution when the
        # model allows it, and are resized and reduced to labels without a full-size float map of every class
        if model.run_lowres is not None:
            lowres, se_logits = model.run_lowres(images)
            del images
            predictions = upsampled_labels(model, lowres, size)
            del lowres
        else:
            logits, se_logits = model.run(images)
            del images
            predictions = _argmax_classes(logits)
            del logits
    else:
        predictions = torch.stack([_argmax_classes(infer(model.forward, img, model.num_classes, inference), 0) for img in images])
        se_logits = None
        if model.has_se:  # the SE head needs no full-size logits either
            se_logits = model.run_lowres(images)[1] if model.run_lowres is not None else model.se_forward(images)
        del images
    se_probs = torch.sigmoid(se_logits.float()) if se_logits is not None else None
    for i, (path, stem, rgb) in enumerate(batch):
        labels = predictions[i].to(torch.uint8).cpu().numpy()  # (H, W)
        mask = palette_png(labels, model.palette) if options.mask_format == "color" else Image.fromarray(labels, mode="L")
        _write_output(options.output / f"{stem}.png", mask)
        if options.overlay:
            _write_output(options.output / f"{stem}_overlay.jpg", overlay_image(rgb, labels, model, options.alpha), quality=92)
        counts = sum(np.bincount(labels[rows].reshape(-1), minlength=256)[: model.num_classes] for rows in _bands(labels))
        share = counts / max(labels.size, 1)
        entry: dict[str, Any] = {
            "file": str(path),
            "size": [int(labels.shape[0]), int(labels.shape[1])],
            "classes_by_pixels": [
                {"class": model.classes[c], "index": int(c), "share": round(float(share[c]), 5)}
                for c in np.argsort(-share)
                if share[c] >= options.min_share
            ],
        }
        if se_probs is not None:
            probs = se_probs[i].cpu()
            entry["classes_by_se"] = [
                {"class": model.classes[c], "index": int(c), "probability": round(float(probs[c]), 4)}
                for c in torch.argsort(probs, descending=True).tolist()
                if probs[c] >= options.se_threshold
            ]
        result.predictions[stem] = entry
        result.written += 1


def predict_request(model: LoadedModel, inputs: list[Path], request: Any, progress: ProgressCallback | None = None) -> PredictResult:
    """``predict`` with ``request``'s (engine/predict.py's ``PredictRequest``) segmentation options, crop and base size defaulting to the model's."""
    options = PredictOptions(
        output=request.output, inference=request.inference.config(model.crop_size, model.base_size),
        mask_format=request.mask_format, overlay=request.overlay, alpha=request.alpha,
        se_threshold=request.se_threshold, overwrite=request.overwrite, batch_size=request.batch_size,
    )  # fmt: skip
    return predict(model, inputs, options, progress=progress)
