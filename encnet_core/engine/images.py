"""The images a command is given: ``collect_inputs`` (files and folders to a list of images, each with
its output stem), ``open_image`` / ``load_rgb`` (decoding, EXIF orientation applied) and
``read_error_reason`` (why an image could not be read, in one line); ``PredictResult``, what a predict
run wrote (masks or classes). ``encnet predict`` uses them for
segmentation (engine/masks.py) and for classifiers (engine/classification.py)."""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
from PIL import Image, ImageFile, ImageOps

from encnet_core.data.hdf5 import FORMAT
from encnet_core.errors import ConfigError

__all__ = ["PredictResult", "collect_inputs", "image_extensions", "open_image", "oriented_size", "load_rgb", "read_error_reason"]


@dataclass
class PredictResult:
    """What a predict run wrote, for either task (engine/masks.py's ``predict``, classification's ``predict_classes``)."""

    written: int  # images with outputs
    failed: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"} per image that could not be read
    predictions: dict[str, Any] = field(default_factory=dict)  # output stem -> what predictions.json holds for it
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


_TRANSPOSING = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (no decoding)."""
    orientation = img.getexif().get(0x0112, 1)
    return (img.height, img.width) if orientation in _TRANSPOSING else img.size


def read_error_reason(exc: BaseException) -> str:
    """One line saying why a file could not be read."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
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
    with open_image(path) as img:
        if img.getexif().get(0x0112, 1) in range(2, 9):  # exif_transpose copies even an upright image
            img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: 0..65535 -> 0..255 (PIL would clip)
            gray = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # grayscale, palette, RGBA, CMYK -> RGB
