"""PASCAL Context, 59 classes: VOC 2010 images, labels from ``trainval_merged.json`` or the ``.mat`` files.

Two label sources, chosen with the ``labels`` parameter (``encnet prepare pcontext --labels json|mat``):

- ``json`` (default), what PyTorch-Encoding trains and evaluates on: ``trainval_merged.json`` (the
  PASCAL in Detail annotations, fetched with the sha1 of the reference's scripts/prepare_pcontext.py)
  painted as the detail API's ``getMask`` does (`detail_masks`, no ``detail`` package), then mapped
  like encoding/datasets/pcontext.py: its sorted ``_mapping`` (0 and the 59 benchmark ids) indexes
  the classes, 0 becomes ignore (the reference's ``mask - 1`` = -1; 255 here) and any other value
  is refused, as the reference's ``_class_to_index`` asserts. Splits are the images whose ``phase``
  is ``train`` / ``val``, in the file's order (the reference's ``Detail(..., split).getImgs()``).
- ``mat``: ``trainval.tar.gz``'s ``trainval/<id>.mat`` ``LabelMap`` ids (into labels.txt's 459
  categories), mapped with one lookup table, every other id becoming 255; splits are VOC 2010's
  ``ImageSets/Main/{train,val}.txt``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from encnet_core.choices import DEFAULT_LABELS, LABEL_SOURCES  # the `labels` parameter
from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.sources.base import Item, Source, SourcePlan, find_prefix
from encnet_core.data.sources.detail_masks import DetailImage, check_detail_json, paint_mask, read_detail_json
from encnet_core.data.sources.voc import extract_once, read_ids
from encnet_core.errors import ConfigError, DataError
from encnet_core.fetch.archives import open_archive
from encnet_core.fetch.download import RemoteFile
from encnet_core.palette import voc_palette
from encnet_core.paths import is_disk_full

VOC2010 = RemoteFile(
    name="VOCtrainval_03-May-2010.tar",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
    md5="da459979d0c395079b5c75ee67908abb",
    sha1="bf9985e9f2b064752bf6bd654d89f017c76c395a",
    size=1_362_066_432,
)
CONTEXT_LABELS = RemoteFile(
    name="trainval.tar.gz", url="https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz", size=30_700_000
)
# PyTorch-Encoding's scripts/prepare_pcontext.py fetches this URL with this sha1 (no size is published)
TRAINVAL_MERGED = RemoteFile(
    name="trainval_merged.json",
    url="https://codalabuser.blob.core.windows.net/public/trainval_merged.json",
    sha1="169325d9f7e9047537fedca7b04de4dddf10b881",
)

# (labels.txt id, name) of the 59-class benchmark, in class-index order
CONTEXT59 = (
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"), (23, "bicycle"), (25, "bird"),
    (31, "boat"), (33, "book"), (34, "bottle"), (44, "building"), (45, "bus"), (46, "cabinet"), (59, "car"),
    (65, "cat"), (68, "ceiling"), (72, "chair"), (80, "cloth"), (85, "computer"), (98, "cow"), (104, "cup"),
    (105, "curtain"), (113, "dog"), (115, "door"), (144, "fence"), (158, "floor"), (159, "flower"), (162, "food"),
    (187, "grass"), (189, "ground"), (207, "horse"), (220, "keyboard"), (232, "light"), (258, "motorbike"),
    (259, "mountain"), (260, "mouse"), (284, "person"), (295, "plate"), (296, "platform"), (308, "pottedplant"),
    (324, "road"), (326, "rock"), (347, "sheep"), (349, "shelves"), (354, "sidewalk"), (355, "sign"), (360, "sky"),
    (366, "snow"), (368, "sofa"), (397, "table"), (415, "track"), (416, "train"), (420, "tree"), (424, "truck"),
    (427, "tvmonitor"), (440, "wall"), (445, "water"), (454, "window"), (458, "wood"),
)  # fmt: skip
NUM_IDS = 460  # labels.txt ids 0..459 (0 = unlabelled)
# the values a getMask mask may hold for the reference's _class_to_index: 0 and the 59 ids (its _mapping)
REFERENCE_VALUES = np.array([0] + [label_id for label_id, _ in CONTEXT59])


def lookup_table() -> np.ndarray:
    """(460,) uint8: labels.txt id -> class index 0..58, or 255."""
    lut = np.full(NUM_IDS, IGNORE_INDEX, dtype=np.uint8)
    for index, (label_id, _) in enumerate(CONTEXT59):
        lut[label_id] = index
    return lut


def decode_context_mat(raw: bytes, lut: np.ndarray) -> np.ndarray:
    """``trainval/<id>.mat`` (field LabelMap) -> (H, W) uint8 labels."""
    mat = scipy.io.loadmat(io.BytesIO(raw))
    if "LabelMap" not in mat:
        raise DataError("not a PASCAL Context label file (no LabelMap)")
    ids = np.asarray(mat["LabelMap"], dtype=np.int64)
    if ids.min() < 0 or ids.max() >= len(lut):
        raise DataError(f"LabelMap id {int(ids.max())} is outside labels.txt's 0..{len(lut) - 1}")
    return lut[ids]


def check_label_names(text: str) -> None:
    """labels.txt must name the benchmark's ids as expected (guards against a different label file)."""
    names = {}
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            if key.strip().isdigit():
                names[int(key)] = value.strip()
    wrong = [(i, n, names.get(i)) for i, n in CONTEXT59 if names.get(i) != n]
    if wrong:
        i, expected, found = wrong[0]
        raise DataError(f"labels.txt names id {i} {found!r}, expected {expected!r}: not the PASCAL Context label file")


def class_index(mask: np.ndarray, lut: np.ndarray, what: str = "mask") -> np.ndarray:
    """A getMask mask (category ids) -> (H, W) uint8 labels, as the reference's ``_class_to_index``.

    Its ``np.digitize(mask, _mapping, right=True)`` gives each of the 60 sorted values its position,
    and ``_mask_transform`` subtracts 1: 0 becomes -1 (ignore, stored as 255), the 59 ids 0..58, which
    is ``lut``. A value outside ``_mapping`` fails the reference's assert; here it is a `DataError`.
    """
    values = np.unique(mask)
    bad = values[~np.isin(values, REFERENCE_VALUES)]
    if bad.size:
        raise DataError(
            f"{what}: category_id {int(bad[0])} is neither 0 nor one of the 59 classes' ids "
            "(the reference's _class_to_index refuses such a mask)"
        )
    return lut[mask]


def decode_detail_item(raw: bytes, lut: np.ndarray) -> np.ndarray:
    """One image's annotations (written by `_split_annotations`) -> (H, W) uint8 labels."""
    item = json.loads(raw)
    what = f"trainval_merged.json image {item['image_id']}"
    annotations = [(a, c, (h, w), counts) for a, c, (h, w), counts in item["annotations"]]
    return class_index(paint_mask(item["height"], item["width"], annotations, what), lut, what)


def _split_annotations(path: Path, workdir: Path, hashes: dict[str, str] | None) -> tuple[Path, dict[str, list]]:
    """Read ``trainval_merged.json`` once: one small annotation file per train/val image under a folder
    named by the file's sha256, and ``index.json`` (split -> [[name, file_name], ...] in file order).

    The folder is written under a temporary name and renamed when complete, so a later run (or one
    that was interrupted) finds either all of it or none; a complete one is reused.
    """
    tag = ((hashes or {}).get("sha256") or "unhashed")[:16] + f"-{path.stat().st_size}"
    folder = workdir / "pcontext-json" / tag
    if (folder / "index.json").is_file():
        return folder, json.loads((folder / "index.json").read_text())
    images: list[DetailImage] = read_detail_json(path)
    index: dict[str, list] = {"train": [], "val": []}
    temp = folder.with_name(f".{tag}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for split in index:
            (temp / split).mkdir(parents=True)
        for img in images:
            if img.phase not in index:  # Detail(..., split).getImgs() keeps the images of that phase only
                continue
            name = Path(img.file_name).stem
            annotations = [[a, c, list(size), counts] for a, c, size, counts in img.annotations]
            record = {"image_id": img.image_id, "height": img.height, "width": img.width, "annotations": annotations}
            (temp / img.phase / f"{name}.json").write_text(json.dumps(record))
            index[img.phase].append([name, img.file_name])
        (temp / "index.json").write_text(json.dumps(index))
        try:
            temp.rename(folder)
        except OSError:
            if not (folder / "index.json").is_file():  # not another run that finished first
                raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DataError(f"no space left on {workdir}: cannot write the PASCAL Context annotations") from None
        raise DataError(f"cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder, index


def _plan_from_json(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    images = files[VOC2010.name]
    folder, index = _split_annotations(
        files[TRAINVAL_MERGED.name], workdir, params.get("_hashes", {}).get(TRAINVAL_MERGED.name)
    )
    decoder = functools.partial(decode_detail_item, lut=lookup_table())
    splits: dict[str, list[Item]] = {}
    with open_archive(images, params.get("_limits")) as arc:
        prefix = find_prefix(arc.names(), "ImageSets/Main/train.txt", str(images))
        for split, entries in index.items():
            items = []
            for name, file_name in entries:
                member = f"{prefix}JPEGImages/{file_name}"
                if not arc.exists(member):
                    raise DataError(f"trainval_merged.json lists {file_name}, which {images.name} does not hold")
                items.append(Item(name, (str(images), member), ("", str(folder / split / f"{name}.json")), decoder))
            splits[split] = items
    classes = [name for _, name in CONTEXT59]
    return SourcePlan(
        classes, voc_palette(len(classes) + 1)[1:], splits, {"train": 4996, "val": 5104}, files={"labels": "json"}
    )


def check_pcontext(params: dict[str, Any]) -> None:
    labels = params.get("labels", DEFAULT_LABELS)
    if labels not in LABEL_SOURCES:
        raise ConfigError(f"--labels must be one of {', '.join(LABEL_SOURCES)}, got {labels!r}")


def pcontext_remotes(params: dict[str, Any]) -> tuple[RemoteFile, ...]:
    """The files the chosen label source needs: the VOC 2010 images and trainval_merged.json or trainval.tar.gz."""
    return (VOC2010, CONTEXT_LABELS) if params.get("labels", DEFAULT_LABELS) == "mat" else (VOC2010, TRAINVAL_MERGED)


def plan_pcontext(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    if params.get("labels", DEFAULT_LABELS) == "json":
        return _plan_from_json(files, workdir, params)
    images = files[VOC2010.name]
    label_dir = workdir / "pcontext-labels"
    members = extract_once(
        files[CONTEXT_LABELS.name],
        label_dir,
        lambda n: n.endswith((".mat", "labels.txt")),
        params.get("_hashes", {}).get(CONTEXT_LABELS.name),
        params.get("_limits"),
    )
    label_file = next((m for m in members if m.endswith("labels.txt")), None)
    if label_file is None:
        raise DataError(f"{files[CONTEXT_LABELS.name]} has no labels.txt")
    check_label_names((label_dir / label_file).read_text())
    mats = {Path(m).stem: label_dir / m for m in members if m.endswith(".mat")}
    decoder = functools.partial(decode_context_mat, lut=lookup_table())
    splits: dict[str, list[Item]] = {}
    with open_archive(images, params.get("_limits")) as arc:
        prefix = find_prefix(arc.names(), "ImageSets/Main/train.txt", str(images))
        for split in ("train", "val"):
            items = []
            for i in read_ids(arc.read(f"{prefix}ImageSets/Main/{split}.txt")):
                if i not in mats:
                    raise DataError(f"no label file trainval/{i}.mat for {split} image {i}")
                items.append(Item(i, (str(images), f"{prefix}JPEGImages/{i}.jpg"), ("", str(mats[i])), decoder))
            splits[split] = items
    classes = [name for _, name in CONTEXT59]
    return SourcePlan(
        classes, voc_palette(len(classes) + 1)[1:], splits, {"train": 4998, "val": 5105}, files={"labels": "mat"}
    )


PCONTEXT = Source(
    "pcontext",
    "PASCAL Context 59 classes (json labels: train 4996 / val 5104; mat labels: train 4998 / val 5105)",
    (VOC2010, TRAINVAL_MERGED),
    plan_pcontext,
    check_pcontext,
    remotes_for=pcontext_remotes,
    file_checks={TRAINVAL_MERGED.name: check_detail_json},
)
