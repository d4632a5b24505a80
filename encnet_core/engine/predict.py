"""``encnet predict``: segment a folder of images; palette masks, overlays and predictions.json."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.engine.model_files import LoadedModel
from encnet_core.errors import ConfigError
from encnet_core.palette import palette_png
from encnet_core.paths import atomic_write, check_output_dir
from encnet_core.progress import ProgressCallback
from encnet_core.viz import draw_legend, legend_entries

__all__ = ["PredictOptions", "PredictResult", "predict", "collect_inputs"]


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


@dataclass
class PredictResult:
    """What ``predict`` wrote."""

    written: int
    failed: list[dict[str, str]] = field(default_factory=list)
    predictions: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _check_output_folder(inputs: list[Path], output: Path) -> None:
    """Refuse an output folder that could put masks among the inputs (and so replace or re-read them).

    The output may not be an input folder, contain one, or be the folder of an input file given by
    name; an output folder inside an input folder is fine (``collect_inputs`` does not look into it).
    Paths are compared resolved, so symbolic links and ``..`` do not get around the check.
    """
    out = output.resolve()
    for item in inputs:
        where = item.resolve()
        if item.is_dir() and (where == out or out in where.parents):
            what = "is the input folder" if where == out else "contains the input folder"
            raise ConfigError(
                f"--output {output} {what} {item}: the masks would land among the images (and could replace "
                "them); choose an output folder outside the inputs"
            )
        if item.is_file() and where.parent == out:
            raise ConfigError(
                f"--output {output} is the folder of the input {item}: its mask {output / (item.stem + '.png')} "
                "would land beside it or replace it; choose another output folder"
            )


def _image_files(folder: Path, skip: Path | None, extensions: set[str]) -> list[Path]:
    """Image files under ``folder`` (recursively, not following links to folders), leaving out ``skip``."""
    found = []
    for root, dirs, files in os.walk(folder):
        if skip is not None:
            dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
        found.extend(Path(root) / f for f in files if Path(f).suffix.lower() in extensions and (Path(root) / f).is_file())
    return sorted(found)


def collect_inputs(inputs: list[Path], output: Path | None = None) -> list[tuple[Path, str]]:
    """(file, relative output stem) for every image file given or found (recursively) in a folder.

    With ``output``, an output folder that could mix masks with the inputs is refused and an output
    folder inside an input folder is skipped, so that a run never reads its own (or an earlier run's) masks.
    """
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    if output is not None:
        _check_output_folder(inputs, output)
    skip = output.resolve() if output is not None else None
    found: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            for path in _image_files(item, skip, extensions):
                found.append((path, path.relative_to(item).with_suffix("").as_posix()))
        elif item.is_file():
            found.append((item, item.stem))
        elif item.exists():
            raise ConfigError(f"input {item} is neither a file nor a folder")
        else:
            raise ConfigError(f"input not found: {item}")
    stems = defaultdict(list)
    for path, stem in found:
        stems[stem].append(path)
    clashes = [paths for paths in stems.values() if len(paths) > 1]
    if clashes:
        raise ConfigError(f"{clashes[0][0]} and {clashes[0][1]} would write the same output; give them separately")
    if not found:
        raise ConfigError("no image files found in the inputs")
    return found


def _outputs(options: PredictOptions, stem: str) -> list[Path]:
    paths = [options.output / f"{stem}.png"]
    if options.overlay:
        paths.append(options.output / f"{stem}_overlay.jpg")
    return paths


_TRANSPOSING = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (no decoding)."""
    orientation = img.getexif().get(0x0112, 1)
    return (img.height, img.width) if orientation in _TRANSPOSING else img.size


def _reason(exc: BaseException) -> str:
    """One line saying why a file could not be read."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with PIL's decompression-bomb warning (images over ``Image.MAX_IMAGE_PIXELS``) as an error.

    Past twice that limit PIL raises ``DecompressionBombError`` itself; either way the file is
    reported and skipped like any unreadable one instead of being decoded.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            yield img


def _load_rgb(path: Path) -> np.ndarray:
    with _open_image(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: 0..65535 -> 0..255 (PIL would clip)
            gray = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))  # grayscale, palette, RGBA, CMYK -> RGB


def _write_output(path: Path, data: bytes | Image.Image, **save_options: Any) -> None:
    """Write one output file atomically (PNG bytes, or an image PIL encodes by the suffix); no fsync:
    a mask or an overlay is cheap to make again."""
    with atomic_write(path, fsync=False, keep_suffix=True) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data.save(tmp, **save_options)


def overlay_image(rgb: np.ndarray, labels: np.ndarray, model: LoadedModel, alpha: float) -> Image.Image:
    """The class colours blended over ``rgb`` at opacity ``alpha``, with a legend of the classes present
    (swatch and name, most pixels first) in the top-left corner."""
    colours = model.palette[labels]  # (H, W, 3)
    blended = (rgb.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round()
    picture = Image.fromarray(blended.astype(np.uint8))
    return draw_legend(picture, legend_entries(labels, model.classes, model.palette))[0]


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
            with _open_image(path) as img:
                key = _oriented_size(img) if whole else None
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on crafted files; skip the file, go on
            result.failed.append({"file": str(path), "reason": _reason(exc)})
            continue
        groups[key].append((path, stem))
    done = len(result.failed)
    for group in groups.values():
        step = options.batch_size if whole else 1
        for begin in range(0, len(group), step):
            batch: list[tuple[Path, str, np.ndarray]] = []
            chunk = group[begin : begin + step]
            for path, stem in chunk:
                try:
                    batch.append((path, stem, _load_rgb(path)))
                except Exception as exc:  # noqa: BLE001 - as above: one unreadable file does not stop the run
                    result.failed.append({"file": str(path), "reason": _reason(exc)})
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
    if inference.scales is None and not inference.slide and not inference.flip:
        logits, se_logits = model.run(images)  # one batched pass gives the masks and the SE head
        predictions = logits.float().argmax(1)
    else:
        predictions = torch.stack([infer(model.forward, img, model.num_classes, inference).argmax(0) for img in images])
        se_logits = model.se_forward(images) if model.has_se else None
    se_probs = torch.sigmoid(se_logits.float()) if se_logits is not None else None
    for i, (path, stem, rgb) in enumerate(batch):
        labels = predictions[i].to(torch.uint8).cpu().numpy()  # (H, W)
        mask = palette_png(labels, model.palette) if options.mask_format == "color" else Image.fromarray(labels, mode="L")
        _write_output(options.output / f"{stem}.png", mask)
        if options.overlay:
            _write_output(options.output / f"{stem}_overlay.jpg", overlay_image(rgb, labels, model, options.alpha), quality=92)
        counts = np.bincount(labels.reshape(-1), minlength=model.num_classes)[: model.num_classes]
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
