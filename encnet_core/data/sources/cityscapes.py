"""Cityscapes (fine annotations, optionally the coarse extra set): 19 classes, labelIds -> trainIds.

The files are the user's own downloads (https://www.cityscapes-dataset.com/downloads/ needs a login, so
no URL works for encnet): ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` given with
``--archive NAME=PATH``, or an unpacked root folder holding ``leftImg8bit/`` and ``gtFine/`` (the
``root_dir`` parameter, ``--from DIR``). With ``coarse``: ``leftImg8bit_trainextra.zip`` and
``gtCoarse.zip`` (or ``leftImg8bit/train_extra/`` and ``gtCoarse/`` under the root) add the split
``train_extra`` (coarse labels).

Layout: ``leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` with
``gtFine/{split}/{city}/{same stem}_gtFine_labelIds.png`` (``_color``, ``_instanceIds`` and
``_polygons.json`` are not used). Masks hold labelIds (0..33), mapped to trainIds with
`cityscapes_labels` (the reference's ``CitySegmentation._class_to_index``); a value above 33 is an error
naming the file. The test split's gtFine masks are placeholders: test is stored unlabelled. Names are
the image file stems without ``_leftImg8bit`` (``aachen_000000_000019``), as a submission names its files.

No checksums are published: the site gives an md5 per package only to a logged-in user (cityscapesScripts'
``csDownload`` reads it from ``/md5-sum/?packageID=N``); pass it with ``--checksum NAME=md5:HEX`` if you
have it. Otherwise an archive must open and list to its end, the splits must have their sizes
(``--strict``) and every labelled image its mask; the sha256 of each archive is recorded as for any source.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.data.sources.base import Item, Ref, Source, SourcePlan
from encnet_core.data.sources.cityscapes_labels import CLASSES, PALETTE, labelids_to_trainids
from encnet_core.errors import ConfigError, DataError
from encnet_core.fetch.archives import ArchiveLimits, open_archive
from encnet_core.fetch.download import RemoteFile

DOWNLOADS = "https://www.cityscapes-dataset.com/downloads/"
_MANUAL = f"the Cityscapes site needs a login: download it yourself from {DOWNLOADS}"
IMAGES = RemoteFile("leftImg8bit_trainvaltest.zip", "", size=11_592_327_197, manual=_MANUAL)
FINE = RemoteFile("gtFine_trainvaltest.zip", "", size=252_567_705, manual=_MANUAL)
EXTRA_IMAGES = RemoteFile("leftImg8bit_trainextra.zip", "", size=46_880_000_000, manual=_MANUAL)
COARSE = RemoteFile("gtCoarse.zip", "", size=1_371_000_000, manual=_MANUAL)

EXPECTED = {"train": 2975, "val": 500, "test": 1525}
EXPECTED_EXTRA = {"train_extra": 19998}
MAX_LABEL_ID = 33  # labels.py's largest labelId ('bicycle'); 'license plate' (-1) never appears in a PNG

# leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png, under any top folder
_IMAGE = re.compile(r"^(?P<prefix>(?:.*/)?)leftImg8bit/(?P<split>[^/]+)/(?P<city>[^/]+)/(?P<stem>[^/]+)_leftImg8bit\.png$")


def decode_labelids(raw: bytes) -> np.ndarray:
    """A ``*_labelIds.png`` (8-bit labelIds 0..33) -> trainIds 0..18, 255 ignored."""
    with Image.open(io.BytesIO(raw)) as img:
        if img.mode not in ("L", "P"):
            raise DataError(f"labelIds mask has mode {img.mode}; expected an 8-bit single-channel PNG")
        ids = np.asarray(img, dtype=np.uint8)
    if ids.size and int(ids.max()) > MAX_LABEL_ID:
        raise DataError(f"labelId {int(ids.max())} is not a Cityscapes label (0..{MAX_LABEL_ID})")
    return labelids_to_trainids(ids)


def check_cityscapes(params: dict[str, Any]) -> None:
    """`ConfigError` for a ``--from`` folder that is missing or lacks leftImg8bit/ and gtFine/ (gtCoarse/ with coarse)."""
    root = params.get("root_dir")
    if root is None:
        return
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--from {root}: no such folder (the unpacked Cityscapes root, holding leftImg8bit/ and gtFine/)")
    needed = ["leftImg8bit", "gtFine"] + (["gtCoarse"] if params.get("coarse") else [])
    for name in needed:
        if not (root / name).is_dir():
            raise ConfigError(f"--from {root} has no {name}/ folder: unpack {_zip_of(name)} into it")


def _zip_of(folder: str) -> str:
    return {"leftImg8bit": IMAGES.name, "gtFine": FINE.name, "gtCoarse": COARSE.name}[folder]


def remotes_for(params: dict[str, Any]) -> tuple[RemoteFile, ...]:
    """The archives a run needs: none with ``--from``; the two fine ones, and the coarse two with ``coarse``."""
    if params.get("root_dir") is not None:
        return ()
    return (IMAGES, FINE, EXTRA_IMAGES, COARSE) if params.get("coarse") else (IMAGES, FINE)


def _listing(container: Path, limits: ArchiveLimits | None) -> tuple[str, list[str]]:
    """(container for `Ref`, member names): an archive's listing, or the files under a folder ("" container)."""
    if container.is_dir():
        return "", sorted(str(p) for p in container.rglob("*.png") if p.is_file())
    with open_archive(container, limits) as arc:
        return str(container), arc.names()


def _split_items(
    images: tuple[str, list[str]],
    masks: tuple[str, list[str]],
    splits: tuple[str, ...],
    kind: str,
    where: str,
) -> dict[str, list[Item]]:
    """Items of ``splits`` from an image listing and a mask listing (``kind``: gtFine or gtCoarse)."""
    image_container, image_names = images
    mask_container, mask_names = masks
    available = set(mask_names)
    mask_prefix = None  # the folder above gtFine/: an archive's top folder ("" in the real zips); a --from root's path
    if mask_container:
        pattern = re.compile(rf"^((?:.*/)?){kind}/[^/]+/[^/]+/[^/]+_{kind}_labelIds\.png$")
        mask_prefix = next((m[1] for m in map(pattern.match, mask_names) if m), "")
    found: dict[str, list[Item]] = {split: [] for split in splits}
    for name in sorted(image_names):
        match = _IMAGE.match(name)
        if match is None or match["split"] not in found:
            continue
        split, city, stem = match["split"], match["city"], match["stem"]
        image: Ref = (image_container, name)
        if split == "test":  # gtFine's test masks are placeholders: stored unlabelled
            found[split].append(Item(stem, image, None))
            continue
        prefix = match["prefix"] if mask_prefix is None else mask_prefix  # --from: the root above leftImg8bit/
        mask = f"{prefix}{kind}/{split}/{city}/{stem}_{kind}_labelIds.png"
        if mask not in available:
            raise DataError(f"{where}: {name} has no mask {mask}")
        found[split].append(Item(stem, image, (mask_container, mask), decode_labelids))
    return found


def plan_cityscapes(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    limits = params.get("_limits")
    coarse = bool(params.get("coarse"))
    root = params.get("root_dir")
    if root is not None:
        check_cityscapes(params)
        root = Path(root)
        images = _listing(root / "leftImg8bit", limits)
        fine, extra_images, coarse_masks = _listing(root / "gtFine", limits), images, None
        if coarse:
            coarse_masks = _listing(root / "gtCoarse", limits)
        where = {"fine": str(root), "coarse": str(root)}
        provenance: dict[str, Any] = {"root": str(root)}
    else:
        images, fine = _listing(files[IMAGES.name], limits), _listing(files[FINE.name], limits)
        where = {"fine": f"{files[IMAGES.name]} + {files[FINE.name]}"}
        coarse_masks = None
        if coarse:
            extra_images, coarse_masks = _listing(files[EXTRA_IMAGES.name], limits), _listing(files[COARSE.name], limits)
            where["coarse"] = f"{files[EXTRA_IMAGES.name]} + {files[COARSE.name]}"
        provenance = {}
    splits = _split_items(images, fine, ("train", "val", "test"), "gtFine", where["fine"])
    expected = dict(EXPECTED)
    if coarse_masks is not None:
        splits.update(_split_items(extra_images, coarse_masks, ("train_extra",), "gtCoarse", where["coarse"]))
        expected.update(EXPECTED_EXTRA)
    if not splits["train"] and not splits["val"]:
        raise DataError(f"{where['fine']}: no leftImg8bit/train or leftImg8bit/val images found; are these the Cityscapes files?")
    return SourcePlan(list(CLASSES), PALETTE.copy(), splits, expected, files={**provenance, "coarse": coarse})


CITYSCAPES = Source(
    "cityscapes",
    "Cityscapes fine annotations (train 2975 / val 500 / test 1525 unlabelled, 19 classes; --coarse adds train_extra 19998)",
    (IMAGES, FINE),
    plan_cityscapes,
    check_cityscapes,
    remotes_for,
)
