"""The encnet HDF5 dataset format, version 2: the one definition of its schema (docs/dataset-format.md).

File attributes: ``format`` = "encnet-hdf5", ``format_version`` = ``FORMAT_VERSION``, ``task``
("segmentation" or "classification"; a version 1 file has none and is a segmentation dataset),
``dataset``, ``classes`` (JSON list), ``palette`` (uint8 C x 3), ``ignore_index`` = 255,
``encnet_version``, ``sources`` (JSON), ``min_pixels`` (segmentation only). One group per split with
``images`` (vlen uint8: the source file's encoded bytes), ``names`` (vlen str) and ``sizes`` (N, 2)
int32 height/width; a segmentation split adds ``masks`` (vlen uint8: an 8-bit single-channel PNG of
the label map; absent for unlabelled splits), ``class_pixels`` (N, C) int64 and ``se_targets`` (N, C)
uint8, a classification split ``labels`` (N,) int64 class indices (absent for unlabelled splits).

The rules of the content live here too, for every writer and reader: ``encode_mask`` /
``decode_mask_tensor`` (``decode_mask``) for masks, ``invalid_label`` (labels are 0..C-1 or 255),
``class_pixel_counts`` and ``class_presence`` (``se_targets`` = ``class_pixels >= min_pixels``), and
``dataset_statistics`` for ``encnet info``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from PIL import Image

from encnet_core.choices import TASKS  # what a dataset holds
from encnet_core.constants import IGNORE_INDEX
from encnet_core.errors import DataError, EncNetError
from encnet_core.paths import AtomicFile, is_disk_full
from encnet_core.tasks import DEFAULT, facts
from encnet_core.version import __version__

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "TASKS",
    "Sample",
    "DatasetInfo",
    "HDF5Writer",
    "read_info",
    "probe_task",
    "encode_mask",
    "MaskError",
    "decode_mask",
    "decode_mask_tensor",
    "decoder_message",
    "invalid_label",
    "class_pixel_counts",
    "class_presence",
    "dataset_statistics",
    "open_h5",
    "read_array",
    "read_names",
]

FORMAT = "encnet-hdf5"
FORMAT_VERSION = 2  # what HDF5Writer writes
READABLE_VERSIONS = (1, 2)  # what read_info reads: version 1 files are segmentation datasets
_BYTES = h5py.vlen_dtype(np.dtype("uint8"))
_STR = h5py.string_dtype("utf-8")
WRITE_BLOCK = 256  # samples HDF5Writer writes at once (the chunk length of a large split)
WRITE_BLOCK_BYTES = 16 * 2**20  # ...or fewer, once they hold this many encoded bytes


def _vlen_block(blobs: Sequence[bytes]) -> np.ndarray:
    """A block of byte strings as h5py writes it into a variable-length uint8 dataset: a (B,) object array
    of uint8 arrays, or, when every blob has the same length, a (B, L) uint8 array (h5py would turn equal-length
    arrays in an object array into a 2-D object array, which it cannot write)."""
    if len({len(blob) for blob in blobs}) == 1 and blobs[0]:
        return np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    out = np.empty(len(blobs), dtype=object)
    for index, blob in enumerate(blobs):
        out[index] = np.frombuffer(blob, dtype=np.uint8)
    return out


@dataclass
class Sample:
    """One converted image: what a conversion worker hands to the writer."""

    name: str  # image id
    image: bytes  # encoded file bytes, unchanged
    height: int
    width: int
    mask: bytes | None = None  # segmentation: PNG of the (H, W) uint8 label map, or None when unlabelled
    class_pixels: np.ndarray | None = None  # segmentation: (C,) int64
    label: int | None = None  # classification: the class index 0..C-1, or None when unlabelled
    mask_values: np.ndarray | None = None  # segmentation: (K,) the distinct values of the mask, sorted (prepare's label checks)


@dataclass
class DatasetInfo:
    """The file-level metadata of a prepared dataset."""

    path: Path
    dataset: str
    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    ignore_index: int
    splits: dict[str, int]  # split -> number of images
    labelled: dict[str, bool]  # split -> has masks (segmentation) or labels (classification)
    encnet_version: str
    sources: dict[str, Any] = field(default_factory=dict)
    min_pixels: int | None = None  # segmentation only
    stored: dict[str, int] = field(default_factory=dict)  # split -> samples whose image (and mask) is stored
    task: str = "segmentation"  # one of TASKS
    format_version: int = FORMAT_VERSION  # the file's own version (1 or 2)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def encode_mask(labels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) uint8 label map (single channel, lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: ("grayscale", 1), 2: ("RGB", 3), 3: ("palette", 1), 4: ("LA", 2), 6: ("RGBA", 4)}  # name, channels
_OTHER_FORMATS = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WebP"}


class MaskError(DataError):
    """A stored mask that is not an 8-bit single-channel PNG: ``detail`` says why it does not decode,
    or (``detail`` None) ``channels`` and ``depth`` ("uint8", "uint16", "1-bit", ...) say what it holds."""

    def __init__(self, message: str, detail: str | None = None, channels: int = 1, depth: str = "uint8") -> None:
        super().__init__(message)
        self.detail, self.channels, self.depth = detail, channels, depth

    def __reduce__(self) -> tuple[Any, ...]:
        return (MaskError, (str(self), self.detail, self.channels, self.depth))


def _undecodable(detail: str) -> MaskError:
    return MaskError(f"the mask does not decode ({detail})", detail)


def decoder_message(exc: BaseException) -> str:
    """The first line of a decoder's error, without torchvision's C++ source location; the first sentence."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = re.sub(r"^[^,]*, \S+:\d+, ", "", text.splitlines()[0])  # "decode_png, /.../decode_png.cpp:79, ..."
    return line.split(". ")[0].removesuffix(".")  # "Unsupported image file. Only jpeg, png, ..." -> the first sentence


@functools.cache
def _torchvision_png() -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]]:
    """torch and torchvision's PNG decoder, imported on first use (preparing a dataset never needs torch;
    a cached call costs 0.1 us, an import statement in the decoder 8 us per mask)."""
    import torch
    from torchvision.io import ImageReadMode, decode_png

    return torch, functools.partial(decode_png, mode=ImageReadMode.UNCHANGED)


def decode_mask_tensor(data: bytes | np.ndarray) -> torch.Tensor:
    """The (H, W) uint8 label map of a stored mask (what ``encode_mask`` wrote), decoded with torchvision.io.

    The one mask decoder of every reader (the dataset, ``encnet targets``): a mask must be a PNG of
    one 8-bit channel (grayscale, or palette indices); anything else raises `MaskError`.
    """
    torch, decode_png = _torchvision_png()
    head = bytes(data[:26])  # signature and the IHDR chunk: bit depth at 24, colour type at 25
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or len(head) < 26:
        other = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
        raise _undecodable(f"a {other} file, not a PNG" if other else ("it is empty" if not head else "not an image file"))
    depth, colour = head[24], head[25]
    if colour not in _PNG_COLOUR_TYPES or depth not in (1, 2, 4, 8, 16):
        raise _undecodable(f"PNG colour type {colour} with bit depth {depth} does not exist")
    name, channels = _PNG_COLOUR_TYPES[colour]
    if channels != 1 or depth != 8:
        bits = {8: "uint8", 16: "uint16"}.get(depth, f"{depth}-bit")
        kind = name if depth == 8 else f"{depth}-bit {name}"
        raise MaskError(f"the mask is a {kind} image, not a single-channel label map", None, channels, bits)
    if isinstance(data, np.ndarray) and data.flags.writeable:
        encoded = torch.from_numpy(data)
    else:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        labels = decode_png(encoded)  # (1, H, W) uint8
    except (RuntimeError, ValueError, OSError) as exc:
        raise _undecodable(decoder_message(exc)) from None
    return labels[0]


def decode_mask(data: bytes | np.ndarray) -> np.ndarray:
    """``decode_mask_tensor`` as a numpy (H, W) uint8 array."""
    return decode_mask_tensor(data).numpy()


def invalid_label(labels: np.ndarray | torch.Tensor, num_classes: int) -> int | None:
    """The largest label of ``labels`` that is neither a class (0..C-1) nor IGNORE_INDEX, or None if all are.

    ``labels``: (H, W), a uint8 torch tensor (the dataset's decoded masks) or a numpy array of any
    integer type (``prepare``'s source labels).
    """
    if 0 in labels.shape:
        return None
    if isinstance(labels, np.ndarray) and labels.dtype != np.uint8:
        bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
        return int(labels[bad].max()) if bad.any() else None
    top = int((labels + 1).max())  # uint8 wraps: IGNORE_INDEX (255) -> 0, label c -> c + 1
    return top - 1 if top > num_classes else None


def class_pixel_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) int64 pixel count per class, ignoring 255."""
    flat = labels.reshape(-1)
    return np.bincount(flat[flat < num_classes], minlength=num_classes)[:num_classes].astype(np.int64)


def class_presence(class_pixels: np.ndarray, min_pixels: int) -> np.ndarray:
    """``se_targets`` from ``class_pixels`` (any shape): 1 where a class has at least ``min_pixels`` pixels, uint8."""
    return (np.asarray(class_pixels) >= min_pixels).astype(np.uint8)


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; this is not a valid encnet dataset, create it again with `encnet prepare`")


def _show(value: Any) -> str:
    """A short one-line repr of an attribute value for error messages."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _attr(handle: h5py.File, path: Path, key: str, required: bool = True) -> Any:
    try:
        if key not in handle.attrs:
            if required:
                raise _fail(path, f"the file attribute {key!r} is missing")
            return None
        return handle.attrs[key]
    except (OSError, TypeError, ValueError, KeyError) as exc:  # an attribute of a type h5py cannot read
        raise _fail(path, f"the file attribute {key!r} cannot be read ({exc})") from None


def _as_str(value: Any) -> str | None:
    """``value`` as text if it is a string attribute (str, bytes or a 0-d string array), else None."""
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "USO":
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value) if isinstance(value, str) else None


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer attribute (not a bool, not an array of several), else None."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def _check_format(handle: h5py.File, path: Path) -> int:
    """The file's format version (one of READABLE_VERSIONS); `DataError` for another format or version."""
    fmt = _as_str(_attr(handle, path, "format", required=False))
    if fmt != FORMAT:
        shown = "missing" if "format" not in handle.attrs else _show(handle.attrs["format"])
        raise DataError(f"{path} is not an encnet dataset (format attribute {shown}); create it with `encnet prepare`")
    raw = _attr(handle, path, "format_version")
    version = _as_int(raw)
    if version is None:
        raise _fail(path, f"format_version is {_show(raw)}, not an integer")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise DataError(f"{path} has format version {version}; this encnet reads versions {readable}")
    return version


def _read_task(handle: h5py.File, path: Path, version: int) -> str:
    """The ``task`` attribute: required from version 2 on; a version 1 file is a segmentation dataset."""
    if "task" not in handle.attrs and version == 1:
        return "segmentation"
    raw = _attr(handle, path, "task")
    task = _as_str(raw)
    if task not in TASKS:
        raise _fail(path, f"the attribute 'task' is {_show(raw)}, not one of {', '.join(repr(t) for t in TASKS)}")
    if version == 1 and task != DEFAULT:
        raise _fail(path, f"format version 1 holds segmentation datasets only, but 'task' is {task!r}")
    return task


def _model_file_kind(path: Path) -> str | None:
    """What model file ``path`` is, from its content ("a PyTorch checkpoint or export", ...); None if none."""
    import zipfile

    try:
        with path.open("rb") as handle:
            head = handle.read(64)
        size = path.stat().st_size
        if head[:2] == b"PK":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            torch_members = ("/data.pkl", "/constants.pkl", "/archive_format", "/byteorder")
            return "a PyTorch checkpoint or export" if any(n.endswith(torch_members) for n in names) else None
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if head.startswith(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"):  # torch.save's legacy (non-zip) format
        return "a PyTorch checkpoint"
    if head[8:10] in (b'{"', b"{}") and int.from_bytes(head[:8], "little") <= size - 8:
        return "a safetensors model"
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"\x12\x07pytorch" in head[:16]):  # ONNX protobuf
        return "an ONNX model"
    return None


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """Open an encnet HDF5 file, checking its format and version (``read_info`` checks the rest)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        handle = h5py.File(path, mode)
    except OSError as exc:
        if kind := _model_file_kind(path):  # swapped arguments: a model where the dataset goes
            raise DataError(
                f"{path} is {kind}, not a dataset: pass a dataset made by `encnet prepare` (.h5) here "
                "(a model goes where the command asks for MODEL: encnet evaluate MODEL DATA, train --init-from MODEL)"
            ) from None
        raise DataError(f"{path} is not a readable HDF5 file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    try:
        _check_format(handle, path)
    except BaseException:
        handle.close()
        raise
    return handle


def _json_attr(handle: h5py.File, path: Path, key: str, kind: type, required: bool = True) -> Any:
    raw = _attr(handle, path, key, required)
    if raw is None:
        return None
    text = _as_str(raw)
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise _fail(path, f"the attribute {key!r} is {_show(raw)}, not a JSON {kind.__name__}")
    return value


def _read_classes(handle: h5py.File, path: Path) -> list[str]:
    classes = _json_attr(handle, path, "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise _fail(path, f"'classes' must be a non-empty JSON list of names, got {_show(classes)}")
    return classes


def _read_palette(handle: h5py.File, path: Path, num_classes: int) -> np.ndarray:
    raw = _attr(handle, path, "palette")
    palette = np.asarray(raw)
    if palette.shape != (num_classes, 3) or palette.dtype.kind not in "iu" or palette.min() < 0 or palette.max() > 255:
        raise _fail(
            path,
            f"'palette' must be {num_classes} x 3 integers 0..255 (one RGB colour per class), "
            f"got {palette.dtype} of shape {palette.shape}",
        )
    return palette.astype(np.uint8)


def _dataset(group: h5py.Group, path: Path, split: str, key: str, required: bool = True) -> h5py.Dataset | None:
    item = group.get(key)
    if item is None and not required:
        return None
    if not isinstance(item, h5py.Dataset):
        raise _fail(path, f"split {split!r} has no {key!r} dataset" if item is None else f"{split}/{key} is not a dataset")
    return item


_SEGMENTATION_ONLY = ("masks", "class_pixels", "se_targets")


def _check_labels(group: h5py.Group, path: Path, split: str, count: int, num_classes: int) -> None:
    """A classification split's ``labels``, if any: ``count`` integers, each a class index 0..C-1."""
    labels = _dataset(group, path, split, "labels", required=False)
    if labels is None:
        return
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise _fail(path, f"{split}/labels must be {count} integers (one class index per name), got {labels.dtype} of shape {labels.shape}")
    values = labels[...]
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        names = group["names"]
        name = f" ({names.asstr()[first]!r})" if _decodes(names, first) else ""
        raise _fail(
            path, f"{split}/labels holds {int(values[first])} for sample {first}{name}; labels must be 0..{num_classes - 1} (the {num_classes} classes)"
        )


def _check_split(
    group: h5py.Group, path: Path, split: str, num_classes: int, allow_truncated: bool, task: str = "segmentation"
) -> int:
    """Check one split's datasets against the schema; returns how many samples have their image (and mask) stored."""
    images = _dataset(group, path, split, "images")
    names = _dataset(group, path, split, "names")
    sizes = _dataset(group, path, split, "sizes")
    classification = not facts(task).per_pixel
    if classification:
        extra = next((key for key in _SEGMENTATION_ONLY if key in group), None)
        if extra is not None:
            raise _fail(path, f"split {split!r} holds {extra!r}, which a classification dataset has not (it stores 'labels')")
    elif "labels" in group:
        raise _fail(path, f"split {split!r} holds 'labels', which a segmentation dataset has not (it stores 'masks')")
    masks = None if classification else _dataset(group, path, split, "masks", required=False)
    for key, ds in (("images", images), ("masks", masks)):
        if ds is not None and (ds.ndim != 1 or h5py.check_vlen_dtype(ds.dtype) != np.dtype("uint8")):
            raise _fail(path, f"{split}/{key} must be a 1-D array of variable-length bytes (encoded files), got {ds.dtype} of shape {ds.shape}")
    if names.ndim != 1 or h5py.check_string_dtype(names.dtype) is None:
        raise _fail(path, f"{split}/names must be a 1-D array of strings, got {names.dtype} of shape {names.shape}")
    count = names.shape[0]
    for key, ds in (("images", images), ("masks", masks)):
        if ds is not None and ds.shape[0] > count:
            raise _fail(path, f"{split}/names lists {count} samples but {split}/{key} holds {ds.shape[0]}")
    for key in () if classification else ("class_pixels", "se_targets"):
        ds = _dataset(group, path, split, key)
        if ds.shape != (count, num_classes) or ds.dtype.kind not in "iu":
            raise _fail(path, f"{split}/{key} must be {count} x {num_classes} integers (one row per name), got {ds.dtype} of shape {ds.shape}")
    if classification:
        _check_labels(group, path, split, count, num_classes)
    if sizes.shape != (count, 2) or sizes.dtype.kind not in "iu":
        raise _fail(path, f"{split}/sizes must be {count} x 2 integers (height, width per name), got {sizes.dtype} of shape {sizes.shape}")
    values = sizes[...]
    if count and values.min() < 1:
        first = int(np.flatnonzero((values < 1).any(axis=1))[0])
        raise _fail(path, f"{split}/sizes holds {tuple(values[first].tolist())} for sample {first}; sizes must be positive")
    stored = min(ds.shape[0] for ds in (images, masks, names) if ds is not None)
    if stored < count and not allow_truncated:
        first = names.asstr()[stored] if _decodes(names, stored) else "?"
        raise DataError(
            f"{path}: split {split!r} is truncated: it lists {count} samples but stores images/masks for only "
            f"{stored} (the first missing is sample {stored} {first!r}); create the file again, "
            "or pass --skip-bad to skip the missing samples"
        )
    return stored


def _decodes(names: h5py.Dataset, index: int) -> bool:
    try:
        names.asstr()[index]
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def probe_task(path: Path) -> str:
    """What a prepared file holds, to pick defaults before a command's real work: ``read_info``'s task
    ("segmentation" or "classification"; a truncated file is not refused here), or "segmentation" when the
    file cannot be read; the command's set-up reads it again and then says why, in one line."""
    try:
        return read_info(path, allow_truncated=True).task
    except (EncNetError, OSError):
        return "segmentation"


def read_info(path: Path, allow_truncated: bool = False) -> DatasetInfo:
    """File-level metadata and split sizes of a prepared dataset, checked against the schema.

    Every attribute and every split's datasets are checked for presence, type and shape (a damaged
    or hand-made file fails here with one line naming the problem, not later with wrong numbers);
    a classification split's labels are also checked to be class indices. Files of every version in
    ``READABLE_VERSIONS`` are read; ``DatasetInfo.task`` says which layout the file has (version 1:
    always segmentation). A split whose ``images``/``masks`` are shorter than its ``names`` is refused
    unless ``allow_truncated``; ``DatasetInfo.stored`` then says how many samples have their data.
    """
    path = Path(path)
    with open_h5(path) as handle:
        format_version = _check_format(handle, path)  # (open_h5 checked it already: this is the value)
        task = _read_task(handle, path, format_version)
        dataset = _as_str(_attr(handle, path, "dataset"))
        if dataset is None:
            raise _fail(path, f"the attribute 'dataset' is {_show(handle.attrs['dataset'])}, not a string")
        classes = _read_classes(handle, path)
        palette = _read_palette(handle, path, len(classes))
        raw = _attr(handle, path, "ignore_index")
        if _as_int(raw) != IGNORE_INDEX:
            raise _fail(path, f"ignore_index is {_show(raw)}; encnet datasets use {IGNORE_INDEX}")
        version = _as_str(_attr(handle, path, "encnet_version"))
        if version is None:
            raise _fail(path, f"the attribute 'encnet_version' is {_show(handle.attrs['encnet_version'])}, not a string")
        sources = _json_attr(handle, path, "sources", dict, required=False) or {}
        min_pixels = None
        if "min_pixels" in handle.attrs:
            raw = _attr(handle, path, "min_pixels")
            min_pixels = _as_int(raw)
            if min_pixels is None or min_pixels < 0:
                raise _fail(path, f"min_pixels is {_show(raw)}, not a non-negative integer")
        splits, labelled, stored = {}, {}, {}
        try:
            items = list(handle.items())
        except (OSError, KeyError) as exc:
            raise _fail(path, f"its splits cannot be listed ({exc})") from None
        for name, group in items:
            if not isinstance(group, h5py.Group):
                raise _fail(path, f"{name!r} at the top level is not a split (a group)")
            try:
                stored[name] = _check_split(group, path, name, len(classes), allow_truncated, task)
            except (OSError, KeyError, TypeError) as exc:  # damaged HDF5 structures
                raise _fail(path, f"split {name!r} cannot be read ({exc})") from None
            splits[name] = int(group["names"].shape[0])
            labelled[name] = facts(task).label_field in group
        return DatasetInfo(
            path=path,
            dataset=dataset,
            classes=classes,
            palette=palette,
            ignore_index=IGNORE_INDEX,
            splits=splits,
            labelled=labelled,
            encnet_version=version,
            sources=sources,
            min_pixels=min_pixels,
            stored=stored,
            task=task,
            format_version=format_version,
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_array(handle: h5py.File, path: Path, split: str, key: str, selection: Any = ...) -> np.ndarray:
    """``handle[split][key][selection]``, or one `DataError` naming the array when HDF5 cannot read it
    (a damaged chunk: h5py raises OSError, e.g. "filter returned failure during read")."""
    try:
        return handle[split][key][selection]
    except (OSError, RuntimeError) as exc:
        raise _fail(path, f"{split}/{key} cannot be read, the file is damaged (HDF5: {_first_line(exc)})") from None


def read_names(path: Path, split: str) -> list[str]:
    """The image names of ``split`` (``read_info`` has checked that the split exists)."""
    with open_h5(path) as handle:
        names = handle[split]["names"]
        try:
            return list(names.asstr()[:])
        except (UnicodeDecodeError, ValueError) as exc:
            raise _fail(path, f"{split}/names holds a name that is not UTF-8 text ({exc})") from None
        except (OSError, RuntimeError) as exc:
            raise _fail(path, f"{split}/names cannot be read, the file is damaged (HDF5: {_first_line(exc)})") from None


class HDF5Writer:
    """Writes a dataset to a hidden temp file beside ``out`` and moves it to ``out`` only when closed
    without error; on an error or an interruption the temp file is removed.

    Without ``overwrite`` the final move never replaces anything: if ``out`` appeared while the
    dataset was being written (say, another run), `DataError` says so, that file is left as it is
    and this run's temp file is removed. A full disk, or any other write error, is one `DataError`
    ("no space left on <dir>"), again with the temp file removed.

    `add` checks a sample and queues it; the queue is written a block at a time (`WRITE_BLOCK` samples,
    or fewer once they hold `WRITE_BLOCK_BYTES`), one slice per dataset: a write per sample per dataset
    cost about 1 ms, more than converting a small image. Memory holds at most one block.

    ``task="classification"`` writes a classification file: its splits hold ``labels`` (from
    `Sample.label`) instead of masks, ``class_pixels`` and ``se_targets``, and it has no ``min_pixels``.

    Usage::

        with HDF5Writer(out, "voc", classes, palette, sources) as writer:
            writer.begin_split("train", capacity=n, labelled=True)
            for sample in samples:
                writer.add(sample)
    """

    def __init__(
        self,
        out: Path,
        dataset: str,
        classes: Sequence[str],
        palette: np.ndarray,
        sources: dict[str, Any] | None = None,
        min_pixels: int = 1,
        overwrite: bool = False,
        task: str = "segmentation",
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.out = Path(out)
        self.overwrite = overwrite
        self._file = AtomicFile(self.out)
        self.tmp = self._file.tmp
        self.classes = list(classes)
        self.min_pixels = min_pixels
        self.handle: h5py.File | None = None
        self._group: h5py.Group | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # the current split's datasets
        self._count = 0  # samples of the current split written so far
        self._queue: list[Sample] = []  # checked samples waiting for the next block write
        self._queued_bytes = 0
        try:
            with self._writing():
                self.out.parent.mkdir(parents=True, exist_ok=True)
                self.handle = h5py.File(self.tmp, "x")
                attrs = self.handle.attrs
                attrs["format"] = FORMAT
                attrs["format_version"] = FORMAT_VERSION
                attrs["task"] = task
                attrs["dataset"] = dataset
                attrs["classes"] = json.dumps(self.classes)
                attrs["palette"] = np.asarray(palette, dtype=np.uint8).reshape(len(self.classes), 3)
                attrs["ignore_index"] = IGNORE_INDEX
                attrs["encnet_version"] = __version__
                attrs["sources"] = json.dumps(sources or {})
                if facts(task).per_pixel:
                    attrs["min_pixels"] = min_pixels
        except BaseException:
            self._discard()
            raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a write error of h5py or the OS into one `DataError` (the caller removes the temp file)."""
        try:
            yield
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError from a failed close or flush
            if is_disk_full(exc):
                raise DataError(f"no space left on {self.out.parent}: {self.out.name} was not written") from None
            detail = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DataError(f"cannot write {self.tmp}: {detail}") from None

    def _discard(self) -> None:
        """Remove the unpublished temp file, closing it first; safe to call more than once (a no-op once published)."""
        self._group = None  # no h5py object of the file may outlive its failed close
        self._datasets, self._queue = {}, []
        if not self._file.committed:  # (a published file shares its data with ``tmp``: never truncate it)
            with contextlib.suppress(OSError):
                os.truncate(self.tmp, 0)  # frees the space first, so that closing cannot fail on a full disk
        if self.handle is not None:
            with contextlib.suppress(Exception):
                self.handle.close()
        self._file.discard()

    def begin_split(self, name: str, capacity: int, labelled: bool) -> None:
        """Start a split of at most ``capacity`` images (shrunk to the number added)."""
        with self._writing():
            self._finish_split()
            assert self.handle is not None
            group = self.handle.create_group(name)
            C = len(self.classes)
            chunk = max(1, min(256, capacity))
            group.create_dataset("images", (capacity,), dtype=_BYTES, maxshape=(None,), chunks=(chunk,))
            if labelled and facts(self.task).per_pixel:
                group.create_dataset("masks", (capacity,), dtype=_BYTES, maxshape=(None,), chunks=(chunk,))
            group.create_dataset("names", (capacity,), dtype=_STR, maxshape=(None,), chunks=(chunk,))
            group.create_dataset("sizes", (capacity, 2), dtype=np.int32, maxshape=(None, 2), chunks=(chunk, 2))
            if not facts(self.task).per_pixel:
                if labelled:
                    group.create_dataset("labels", (capacity,), dtype=np.int64, maxshape=(None,), chunks=(chunk,))
            else:
                group.create_dataset("class_pixels", (capacity, C), dtype=np.int64, maxshape=(None, C), chunks=(chunk, C))
                group.create_dataset("se_targets", (capacity, C), dtype=np.uint8, maxshape=(None, C), chunks=(chunk, C))
        self._group = group
        self._datasets = {key: group[key] for key in group}
        self._count = 0

    def add(self, sample: Sample) -> None:
        """Check ``sample`` and queue it; queued samples are written a block at a time (`WRITE_BLOCK`)."""
        if self._group is None:
            raise RuntimeError("begin_split() first")
        if "masks" in self._datasets and (sample.mask is None or sample.class_pixels is None):
            raise DataError(f"{sample.name}: a labelled split needs a mask")
        if "labels" in self._datasets:
            if sample.label is None:
                raise DataError(f"{sample.name}: a labelled split needs a label")
            if not 0 <= sample.label < len(self.classes):
                raise DataError(f"{sample.name}: label {sample.label} outside 0..{len(self.classes) - 1}")
        self._queue.append(sample)
        self._queued_bytes += len(sample.image) + len(sample.mask or b"")
        if len(self._queue) >= WRITE_BLOCK or self._queued_bytes >= WRITE_BLOCK_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Write the queued samples: one slice assignment per dataset (per-sample writes cost ~1 ms each)."""
        samples, self._queue, self._queued_bytes = self._queue, [], 0
        if not samples:
            return
        datasets = self._datasets
        begin, end = self._count, self._count + len(samples)
        with self._writing():
            if end > datasets["names"].shape[0]:
                for ds in datasets.values():
                    ds.resize((max(end, ds.shape[0] + WRITE_BLOCK),) + ds.shape[1:])
            datasets["images"][begin:end] = _vlen_block([s.image for s in samples])
            datasets["names"][begin:end] = np.array([s.name for s in samples], dtype=object)
            datasets["sizes"][begin:end] = np.array([(s.height, s.width) for s in samples], dtype=np.int32)
            if "masks" in datasets:
                pixels = np.stack([s.class_pixels for s in samples]).astype(np.int64)  # (B, C)
                datasets["masks"][begin:end] = _vlen_block([s.mask for s in samples])
                datasets["class_pixels"][begin:end] = pixels
                datasets["se_targets"][begin:end] = class_presence(pixels, self.min_pixels)
            if "labels" in datasets:
                datasets["labels"][begin:end] = np.array([s.label for s in samples], dtype=np.int64)
        self._count = end

    def add_all(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.add(sample)

    def set_attribute(self, key: str, value: Any) -> None:
        """Set a file attribute (e.g. ``sources`` once the skipped files are known)."""
        assert self.handle is not None
        with self._writing():
            self.handle.attrs[key] = value

    def _finish_split(self) -> None:
        if self._group is not None:
            self._flush()
            for ds in self._datasets.values():
                ds.resize((self._count,) + ds.shape[1:])
        self._group = None
        self._datasets = {}

    def close(self, success: bool = True) -> None:
        """Finish the file and move it to ``out`` on success; remove it otherwise (or on any error)."""
        if not success or self.handle is None:
            self._discard()
            return
        try:
            with self._writing():
                self._finish_split()
                self.handle.close()
                try:  # fsync first: the data is on disk before the name says the file is complete
                    self._file.commit(overwrite=self.overwrite)  # without overwrite, never over an existing path
                except FileExistsError:
                    raise DataError(
                        f"{self.out} appeared while this dataset was being prepared (another `encnet prepare` "
                        "run?); it was left as it is and this run's result was removed: pass --overwrite to replace it"
                    ) from None
        except BaseException:
            self._discard()
            raise

    def __enter__(self) -> HDF5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)


def _png_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk (no decoding), or None when ``data`` is not a PNG."""
    head = bytes(data[:24])
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return (height, width) if width > 0 and height > 0 else None


def _mask_pixels(handle: h5py.File, path: Path, split: str, block: int = 256) -> int:
    """The pixels of every stored mask of ``split``, from each PNG's header (read block by block).

    A mask that cannot be read (a damaged chunk) or is not a PNG is one `DataError` naming the
    split and the sample, as the datasets name a bad sample.
    """
    masks = handle[split]["masks"]
    total = 0
    for begin in range(0, masks.shape[0], block):
        try:
            stored = list(masks[begin : begin + block])
        except (OSError, RuntimeError):  # a damaged chunk: find the sample it holds
            stored = []
            for index in range(begin, min(begin + block, masks.shape[0])):
                try:
                    stored.append(masks[index])
                except (OSError, RuntimeError) as exc:
                    _bad_mask(handle, path, split, index, f"the stored mask cannot be read: the file is damaged there (HDF5: {_first_line(exc)})")
        for offset, data in enumerate(stored):
            size = _png_size(data)
            if size is None:
                _bad_mask(handle, path, split, begin + offset, "the mask is not a readable PNG")
            total += size[0] * size[1]
    return total


def _bad_mask(handle: h5py.File, path: Path, split: str, index: int, reason: str) -> None:
    names = handle[split]["names"]
    name = repr(names.asstr()[index]) if _decodes_safely(names, index) else "?"
    raise DataError(f"{path}: split {split!r} sample {index} ({name}): {reason}; fix the file (run `encnet prepare` again)")


def _decodes_safely(names: h5py.Dataset, index: int) -> bool:
    try:
        return _decodes(names, index)
    except (OSError, RuntimeError):
        return False


def dataset_statistics(path: Path) -> dict[str, Any]:
    """Splits and counts; per class, for segmentation its pixel share and the fraction of images
    containing it (and per labelled split ``empty_classes``: the classes with no pixel there), for
    classification its image count and the fraction of the split it makes up."""
    info = read_info(path)
    result: dict[str, Any] = {
        "path": str(path),
        "dataset": info.dataset,
        "task": info.task,
        "format_version": info.format_version,
        "encnet_version": info.encnet_version,
        "num_classes": info.num_classes,
        "ignore_index": info.ignore_index,
        "min_pixels": info.min_pixels,
        "splits": {},
    }
    with open_h5(path) as handle:
        for split, count in info.splits.items():
            entry: dict[str, Any] = {"images": count, "labelled": info.labelled[split]}
            if not facts(info.task).per_pixel:
                if info.labelled[split] and count:
                    counts = np.bincount(read_array(handle, path, split, "labels"), minlength=info.num_classes)
                    entry["classes"] = [
                        {"index": c, "name": name, "images": int(counts[c]), "image_fraction": float(counts[c]) / count}
                        for c, name in enumerate(info.classes)
                    ]
                result["splits"][split] = entry
                continue
            if info.labelled[split] and count:
                pixels = read_array(handle, path, split, "class_pixels")
                present = read_array(handle, path, split, "se_targets")
                labelled = int(pixels.sum())
                total = max(labelled, 1)
                # of the pixels of the stored masks themselves (their PNG headers), not of ``sizes``:
                # a ``sizes`` array that disagrees with the masks would make this figure wrong
                entry["labelled_pixel_fraction"] = labelled / max(_mask_pixels(handle, path, split), 1)
                entry["classes"] = [
                    {
                        "index": c,
                        "name": name,
                        "pixel_share": float(pixels[:, c].sum()) / total,
                        "image_fraction": float(present[:, c].mean()),
                    }
                    for c, name in enumerate(info.classes)
                ]
                entry["empty_classes"] = [info.classes[c] for c in np.flatnonzero(pixels.sum(axis=0) == 0)]  # no pixel here
            result["splits"][split] = entry
    return result
