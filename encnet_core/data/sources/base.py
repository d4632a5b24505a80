"""What every dataset source is made of: item references, the plan, the source record, and helpers
the sources share (the sources import this module; ``encnet_core.data.sources`` re-exports it)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.errors import DataError
from encnet_core.fetch.download import RemoteFile

__all__ = ["Ref", "Item", "ItemList", "SourcePlan", "Source", "MaskDecoder", "ItemLoader", "MaskMaker", "decode_index_png", "find_prefix"]

Ref = tuple[str, str]
"""(archive path, member name), or ("", file path) for a plain file."""

MaskDecoder = Callable[[bytes], np.ndarray]
"""Raw mask file bytes -> (H, W) uint8 labels (0..C-1, 255 ignore)."""

ItemLoader = Callable[[], tuple[bytes, int | None]]
"""Makes a classification item: (encoded image file bytes, class index or None when unlabelled)."""

MaskMaker = Callable[[], "np.ndarray | None"]
"""Makes an item's (H, W) uint8 labels itself (COCO: rasterises its polygons), or None when the source's
filter leaves the item out (COCO: 1000 labelled pixels or fewer); run in the conversion workers."""


@dataclass(frozen=True, slots=True)  # slots: a plan may hold 100k+ of them
class Item:
    """One image to convert (picklable: sent to the conversion workers)."""

    name: str  # image id stored in `names`
    image: Ref  # where the image is (with ``load``: only named in messages)
    mask: Ref | None  # None for unlabelled splits (and for classification)
    decode_mask: MaskDecoder | None = None
    label: int | None = None  # classification: the class index, when the plan knows it
    load: ItemLoader | None = None  # classification: makes (image bytes, label) instead of reading ``image``
    make_mask: MaskMaker | None = None  # makes the labels instead of reading ``mask`` (then only named in messages)


class ItemList(Sequence[Item]):
    """A split's items made on demand from one small record per item (say, a relative path): a plan of
    118k images then holds 118k short strings, not 118k `Item`s with their paths. An index gives an
    `Item`, a slice a list of them (what the conversion workers are sent)."""

    def __init__(self, records: Sequence[Any], make: Callable[[Any], Item]) -> None:
        self._records, self._make = records, make

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._make(record) for record in self._records[index]]
        return self._make(self._records[index])

    def __iter__(self) -> Iterator[Item]:
        return map(self._make, self._records)

    def __repr__(self) -> str:
        return f"ItemList({len(self)} items)"


@dataclass
class SourcePlan:
    """Everything the converter needs to know about one dataset."""

    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    splits: dict[str, Sequence[Item]]  # a list, or an ItemList
    expected: dict[str, int] = field(default_factory=dict)  # known split sizes, checked before converting
    files: dict[str, Any] = field(default_factory=dict)  # extra provenance recorded in the `sources` attribute
    task: str = "segmentation"  # or "classification": items carry a label (or a loader) instead of a mask
    user_masks: bool = False  # the user's own masks: label errors suggest --binary and --reduce-zero-label


@dataclass(frozen=True)
class Source:
    """A dataset ``encnet prepare`` knows: its downloadable files and its plan function."""

    name: str
    description: str
    remotes: tuple[RemoteFile, ...]
    plan: Callable[[dict[str, Path], Path, dict[str, Any]], SourcePlan]
    check: Callable[[dict[str, Any]], None] | None = None  # raises ConfigError for bad parameters
    remotes_for: Callable[[dict[str, Any]], tuple[RemoteFile, ...]] | None = None  # files by parameters (else remotes)
    file_checks: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)  # non-archive file -> its check

    def files(self, params: Mapping[str, Any]) -> tuple[RemoteFile, ...]:
        """The remote files a run with these parameters needs."""
        return self.remotes if self.remotes_for is None else self.remotes_for(dict(params))


def decode_index_png(raw: bytes) -> np.ndarray:
    """A palette ("P") or grayscale ("L") PNG whose pixel values are the labels."""
    with Image.open(io.BytesIO(raw)) as img:
        if img.mode not in ("P", "L"):
            raise DataError(f"mask has mode {img.mode}; expected a palette (P) or index (L) PNG")
        return np.asarray(img, dtype=np.uint8)


def find_prefix(names: list[str], suffix: str, what: str) -> str:
    """The folder prefix under which ``suffix`` lies in an archive listing (layouts differ in their top folder)."""
    for name in names:
        if name == suffix or name.endswith("/" + suffix):
            return name[: len(name) - len(suffix)]
    raise DataError(f"{what}: no {suffix} found; is this the right archive?")
