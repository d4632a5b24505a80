"""PASCAL Context, 59 classes: VOC 2010 images, labels from the .mat files of trainval.tar.gz.

No ``detail`` package and no pickled masks: ``LabelMap`` ids (into labels.txt's 459 categories) are
mapped to the 59 benchmark classes with one lookup table; every other id becomes 255.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.archives import open_archive
from encnet_core.data.download import RemoteFile
from encnet_core.data.sources import Item, Source, SourcePlan, find_prefix
from encnet_core.data.sources.voc import extract_once, read_ids
from encnet_core.errors import DataError
from encnet_core.palette import voc_palette

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


def plan_pcontext(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
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
    return SourcePlan(classes, voc_palette(len(classes) + 1)[1:], splits, {"train": 4998, "val": 5105})


PCONTEXT = Source(
    "pcontext", "PASCAL Context 59 classes (train 4998 / val 5105)", (VOC2010, CONTEXT_LABELS), plan_pcontext
)
