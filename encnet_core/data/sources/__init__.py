"""Dataset sources for ``encnet prepare``: what to fetch and how to turn it into (image, labels) items.

A source is data plus one ``plan`` function (and optionally a ``check`` of its parameters, which
``prepare`` runs before any work): given the verified local files of its remotes, a work folder and
its parameters (plus ``_limits``, the `ArchiveLimits` to open archives with), it lists the items of every split (picklable references to an image and a
mask in an archive or on disk, with the function that turns the raw mask file into labels), the
class names and the palette. ``encnet_core.data.prepare`` does the rest, the same way for every source.

A classification source (``SourcePlan.task == "classification"``) lists items without masks: each
carries its class index in ``Item.label``, or a ``load`` function that makes the encoded image and
its label itself (a record of a binary file, a generated scene), run in the conversion workers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.choices import SOURCES  # the source names, also the CLI's choices
from encnet_core.errors import DataError
from encnet_core.fetch.download import RemoteFile

__all__ = ["Ref", "Item", "SourcePlan", "Source", "SOURCES", "get_source", "decode_index_png"]

Ref = tuple[str, str]
"""(archive path, member name), or ("", file path) for a plain file."""

MaskDecoder = Callable[[bytes], np.ndarray]
"""Raw mask file bytes -> (H, W) uint8 labels (0..C-1, 255 ignore)."""

ItemLoader = Callable[[], tuple[bytes, int | None]]
"""Makes a classification item: (encoded image file bytes, class index or None when unlabelled)."""


@dataclass(frozen=True)
class Item:
    """One image to convert (picklable: sent to the conversion workers)."""

    name: str  # image id stored in `names`
    image: Ref  # where the image is (with ``load``: only named in messages)
    mask: Ref | None  # None for unlabelled splits (and for classification)
    decode_mask: MaskDecoder | None = None
    label: int | None = None  # classification: the class index, when the plan knows it
    load: ItemLoader | None = None  # classification: makes (image bytes, label) instead of reading ``image``


@dataclass
class SourcePlan:
    """Everything the converter needs to know about one dataset."""

    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    splits: dict[str, list[Item]]
    expected: dict[str, int] = field(default_factory=dict)  # known split sizes, checked before converting
    files: dict[str, Any] = field(default_factory=dict)  # extra provenance recorded in the `sources` attribute
    task: str = "segmentation"  # or "classification": items carry a label (or a loader) instead of a mask


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


def _registry() -> dict[str, Source]:
    from encnet_core.data.sources import ade20k, cifar10, folder, pcontext, synthetic_cls, voc

    return {
        "voc": voc.VOC,
        "voc-aug": voc.VOC_AUG,
        "pcontext": pcontext.PCONTEXT,
        "ade20k": ade20k.ADE20K,
        "folder": folder.FOLDER,
        "synthetic": synthetic_cls.SYNTHETIC,  # voc.SYNTHETIC's segmentation scenes, or with task=classification their scene types
        "cifar10": cifar10.CIFAR10,
    }




def get_source(name: str) -> Source:
    registry = _registry()
    if name not in registry:
        raise DataError(f"unknown dataset source {name!r}; choose one of {', '.join(SOURCES)}")
    return registry[name]
