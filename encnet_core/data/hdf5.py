"""The encnet HDF5 dataset format, version 1: the one definition of its schema (docs/dataset-format.md).

File attributes: ``format`` = "encnet-hdf5", ``format_version`` = 1, ``dataset``, ``classes`` (JSON
list), ``palette`` (uint8 C x 3), ``ignore_index`` = 255, ``encnet_version``, ``sources`` (JSON).
One group per split with ``images`` (vlen uint8: the source file's encoded bytes), ``masks`` (vlen
uint8: PNG of the uint8 label map; absent for unlabelled splits), ``names`` (vlen str), ``sizes``
(N, 2) int32 height/width, ``class_pixels`` (N, C) int64 and ``se_targets`` (N, C) uint8.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from encnet_core import __version__
from encnet_core.errors import DataError
from encnet_core.palette import IGNORE_INDEX

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Sample",
    "DatasetInfo",
    "HDF5Writer",
    "read_info",
    "encode_mask",
    "decode_mask",
    "class_pixel_counts",
    "open_h5",
]

FORMAT = "encnet-hdf5"
FORMAT_VERSION = 1
_BYTES = h5py.vlen_dtype(np.dtype("uint8"))
_STR = h5py.string_dtype("utf-8")


@dataclass
class Sample:
    """One converted image: what a conversion worker hands to the writer."""

    name: str  # image id
    image: bytes  # encoded file bytes, unchanged
    height: int
    width: int
    mask: bytes | None = None  # PNG of the (H, W) uint8 label map, or None when unlabelled
    class_pixels: np.ndarray | None = None  # (C,) int64


@dataclass
class DatasetInfo:
    """The file-level metadata of a prepared dataset."""

    path: Path
    dataset: str
    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    ignore_index: int
    splits: dict[str, int]  # split -> number of images
    labelled: dict[str, bool]
    encnet_version: str
    sources: dict[str, Any] = field(default_factory=dict)
    min_pixels: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def encode_mask(labels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) uint8 label map (single channel, lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_mask(data: bytes | np.ndarray) -> np.ndarray:
    """The (H, W) uint8 label map stored by ``encode_mask``."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    with Image.open(io.BytesIO(raw)) as img:
        return np.asarray(img, dtype=np.uint8)


def class_pixel_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) int64 pixel count per class, ignoring 255."""
    flat = labels.reshape(-1)
    return np.bincount(flat[flat < num_classes], minlength=num_classes)[:num_classes].astype(np.int64)


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """Open an encnet HDF5 file, checking its format and version."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        handle = h5py.File(path, mode)
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc})") from exc
    fmt = handle.attrs.get("format")
    if fmt != FORMAT:
        handle.close()
        raise DataError(f"{path} is not an encnet dataset (format attribute {fmt!r}); create it with `encnet prepare`")
    version = int(handle.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        handle.close()
        raise DataError(f"{path} has format version {version}; this encnet reads version {FORMAT_VERSION}")
    return handle


def read_info(path: Path) -> DatasetInfo:
    """File-level metadata and split sizes of a prepared dataset."""
    with open_h5(path) as handle:
        attrs = handle.attrs
        splits = {name: int(group["names"].shape[0]) for name, group in handle.items()}
        labelled = {name: "masks" in group for name, group in handle.items()}
        return DatasetInfo(
            path=Path(path),
            dataset=str(attrs["dataset"]),
            classes=json.loads(attrs["classes"]),
            palette=np.asarray(attrs["palette"], dtype=np.uint8),
            ignore_index=int(attrs["ignore_index"]),
            splits=splits,
            labelled=labelled,
            encnet_version=str(attrs["encnet_version"]),
            sources=json.loads(attrs.get("sources", "{}")),
            min_pixels=int(attrs["min_pixels"]) if "min_pixels" in attrs else None,
        )


class HDF5Writer:
    """Writes a dataset to ``<out>.tmp`` and renames it to ``out`` only when closed without error.

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
    ) -> None:
        self.out = Path(out)
        self.tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        self.classes = list(classes)
        self.min_pixels = min_pixels
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.handle = h5py.File(self.tmp, "w")
        attrs = self.handle.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["dataset"] = dataset
        attrs["classes"] = json.dumps(self.classes)
        attrs["palette"] = np.asarray(palette, dtype=np.uint8).reshape(len(self.classes), 3)
        attrs["ignore_index"] = IGNORE_INDEX
        attrs["encnet_version"] = __version__
        attrs["sources"] = json.dumps(sources or {})
        attrs["min_pixels"] = min_pixels
        self._group: h5py.Group | None = None
        self._count = 0

    def begin_split(self, name: str, capacity: int, labelled: bool) -> None:
        """Start a split of at most ``capacity`` images (shrunk to the number added)."""
        self._finish_split()
        group = self.handle.create_group(name)
        C = len(self.classes)
        chunk = max(1, min(256, capacity))
        group.create_dataset("images", (capacity,), dtype=_BYTES, maxshape=(None,), chunks=(chunk,))
        if labelled:
            group.create_dataset("masks", (capacity,), dtype=_BYTES, maxshape=(None,), chunks=(chunk,))
        group.create_dataset("names", (capacity,), dtype=_STR, maxshape=(None,), chunks=(chunk,))
        group.create_dataset("sizes", (capacity, 2), dtype=np.int32, maxshape=(None, 2), chunks=(chunk, 2))
        group.create_dataset("class_pixels", (capacity, C), dtype=np.int64, maxshape=(None, C), chunks=(chunk, C))
        group.create_dataset("se_targets", (capacity, C), dtype=np.uint8, maxshape=(None, C), chunks=(chunk, C))
        self._group = group
        self._count = 0

    def add(self, sample: Sample) -> None:
        group = self._group
        if group is None:
            raise RuntimeError("begin_split() first")
        i = self._count
        if i >= group["names"].shape[0]:
            for key in group:
                ds = group[key]
                ds.resize((i + 256,) + ds.shape[1:])
        group["images"][i] = np.frombuffer(sample.image, dtype=np.uint8)
        group["names"][i] = sample.name
        group["sizes"][i] = (sample.height, sample.width)
        if "masks" in group:
            if sample.mask is None or sample.class_pixels is None:
                raise DataError(f"{sample.name}: a labelled split needs a mask")
            group["masks"][i] = np.frombuffer(sample.mask, dtype=np.uint8)
            group["class_pixels"][i] = sample.class_pixels
            group["se_targets"][i] = (sample.class_pixels >= self.min_pixels).astype(np.uint8)
        self._count += 1

    def add_all(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.add(sample)

    def _finish_split(self) -> None:
        if self._group is not None:
            for key in self._group:
                ds = self._group[key]
                ds.resize((self._count,) + ds.shape[1:])
        self._group = None

    def close(self, success: bool = True) -> None:
        """Finish the file; rename it to ``out`` on success, delete it otherwise."""
        try:
            if success:
                self._finish_split()
        finally:
            self.handle.close()
        if success:
            os.replace(self.tmp, self.out)
        else:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> HDF5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)
