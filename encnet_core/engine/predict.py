"""``encnet predict``: segment a folder of images; palette masks, overlays and predictions.json."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor

from encnet_core.data.hdf5 import FORMAT
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.errors import ConfigError
from encnet_core.palette import palette_png
from encnet_core.paths import atomic_write, check_output_dir
from encnet_core.progress import ProgressCallback
from encnet_core.viz import draw_legend, legend_entries
from encnet_core.weights.model_files import LoadedModel

__all__ = ["PredictOptions", "PredictResult", "predict", "collect_inputs", "load_rgb", "read_error_reason"]


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


def image_extensions() -> set[str]:
    """Lower-case suffixes of the image formats PIL can read (a folder's other files are not candidates).

    PIL's stub formats (HDF5 ``.h5``, BUFR, GRIB, WMF on Linux) and its save-only ones (PDF) are left
    out: it names them but cannot decode them, so an encnet dataset in a folder of photos is not an image.
    """
    Image.init()
    return {
        ext.lower() for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and not (isinstance(Image.OPEN[fmt][0], type) and issubclass(Image.OPEN[fmt][0], ImageFile.StubImageFile))
    }  # fmt: skip


def _unlistable(exc: OSError) -> None:
    raise ConfigError(f"cannot read the folder {exc.filename} ({exc.strerror or exc}); fix its permissions or leave it out")


def _file_or_unreadable(path: Path) -> bool:
    """Whether ``path`` is a file, or cannot be looked at (a listable folder without search permission):
    such a file is a candidate, reported as a failed image when it cannot be opened."""
    try:
        return path.is_file()
    except OSError:
        return True


def _image_files(folder: Path, skip: Path | None, extensions: set[str]) -> list[Path]:
    """Image files under ``folder`` (recursively, not following links to folders), leaving out ``skip``."""
    found = []
    for root, dirs, files in os.walk(folder, onerror=_unlistable):
        if skip is not None:
            dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
        found.extend(Path(root) / f for f in files if Path(f).suffix.lower() in extensions and _file_or_unreadable(Path(root) / f))
    return sorted(found)


def _check_input(item: Path) -> None:
    """Refuse, in one line, an input that is missing, cannot be looked at, is not a file or folder, or is
    a dataset (an HDF5 file) rather than an image. Other named files are candidates: one that cannot
    be decoded is reported as a failed image, like one found in a folder."""
    try:
        mode = item.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"input not found: {item}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the input {item} ({exc.strerror or exc}); check the permissions of it and its folders") from None
    if stat.S_ISDIR(mode):
        return
    if not stat.S_ISREG(mode):
        raise ConfigError(f"input {item} is neither a file nor a folder")
    try:
        is_hdf5 = h5py.is_hdf5(item)
    except OSError:
        return  # unreadable: reported as a failed image
    if is_hdf5:
        try:
            with h5py.File(item, "r") as handle:
                encnet = handle.attrs.get("format") in (FORMAT, FORMAT.encode())
        except Exception:  # noqa: BLE001 - a damaged HDF5 file is still not an image
            encnet = False
        if encnet:
            raise ConfigError(f"{item} is an encnet dataset; to evaluate on it use encnet evaluate MODEL {item}")
        raise ConfigError(f"{item} is an HDF5 file, not an image; predict reads image files (JPEG, PNG, ...) and folders of them")


def _output_stems(found: list[tuple[Path, str]]) -> list[str]:
    """Output stems: the relative path without its suffix, or with it where two inputs share a stem.

    ``coffee.jpg`` and ``coffee.png`` in one folder write ``coffee.jpg.png`` and ``coffee.png.png`` (and
    are ``coffee.jpg`` / ``coffee.png`` in predictions.json); an image alone keeps ``coffee.png``. Stems
    are compared ignoring case, as on case-insensitive file systems.
    """
    stems = [PurePosixPath(rel).with_suffix("").as_posix() for _, rel in found]
    shared = defaultdict(int)
    for stem in stems:
        shared[stem.casefold()] += 1
    return [rel if shared[stem.casefold()] > 1 else stem for (_, rel), stem in zip(found, stems, strict=True)]


def collect_inputs(inputs: list[Path], output: Path | None = None) -> list[tuple[Path, str]]:
    """(file, relative output stem) for every image file given or found (recursively) in a folder.

    In folders, only files with an image suffix (``image_extensions``) are candidates; a file named on
    the command line always is (an encnet dataset is refused with the command to use instead). Two
    inputs with the same stem keep their suffixes in their outputs (``_output_stems``); inputs that
    would still write the same file (``a/x.png`` and ``b/x.png`` named together) are refused.

    With ``output``, an output folder that could mix masks with the inputs is refused and an output
    folder inside an input folder is skipped, so that a run never reads its own (or an earlier run's) masks.
    """
    for item in inputs:
        _check_input(item)
    extensions = image_extensions()
    if output is not None:
        _check_output_folder(inputs, output)
    skip = output.resolve() if output is not None else None
    found: list[tuple[Path, str]] = []  # (file, output name relative to the output folder, with its suffix)
    for item in inputs:
        if item.is_dir():
            found.extend((path, path.relative_to(item).as_posix()) for path in _image_files(item, skip, extensions))
        else:
            found.append((item, item.name))
    if not found:
        raise ConfigError("no image files found in the inputs")
    named = list(zip((path for path, _ in found), _output_stems(found), strict=True))
    seen: dict[str, Path] = {}
    for path, stem in named:
        if stem.casefold() in seen:
            raise ConfigError(
                f"{seen[stem.casefold()]} and {path} have the same name and would both write {stem}.png; predict them "
                "in two runs with different --output folders (or rename one)"
            )
        seen[stem.casefold()] = path
    return named


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


def read_error_reason(exc: BaseException) -> str:
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


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB as displayed (EXIF orientation applied); no more whole-image copies than needed
    (an image already upright and RGB is decoded once and handed to NumPy, not copied by PIL first)."""
    with _open_image(path) as img:
        if img.getexif().get(0x0112, 1) in range(2, 9):  # exif_transpose copies even an upright image
            img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: 0..65535 -> 0..255 (PIL would clip)
            gray = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # grayscale, palette, RGBA, CMYK -> RGB


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
            with _open_image(path) as img:
                key = _oriented_size(img) if whole else None
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
