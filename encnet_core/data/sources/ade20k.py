"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 0 ("other") ignored, labels stored as id - 1."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.data.archives import open_archive
from encnet_core.data.download import RemoteFile
from encnet_core.data.sources import Item, Source, SourcePlan, find_prefix
from encnet_core.errors import DataError
from encnet_core.palette import voc_palette

ADE20K_ZIP = RemoteFile(
    name="ADEChallengeData2016.zip",
    url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    md5="7328b3957e407ddae1d3cbf487f149ef",
    sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
    size=967_033_700,
)
_SPLITS = {"train": "training", "val": "validation"}


def decode_ade_png(raw: bytes) -> np.ndarray:
    """Annotation PNG (0 = other, 1..150) -> labels 0..149, 0 -> 255."""
    with Image.open(io.BytesIO(raw)) as img:
        if img.mode not in ("L", "P"):
            raise DataError(f"annotation has mode {img.mode}, expected single-channel")
        values = np.asarray(img, dtype=np.uint8)
    return values - np.uint8(1)  # uint8 arithmetic wraps 0 -> 255


def parse_object_info(text: str) -> list[str]:
    """Class names, in order, from objectInfo150.txt (tab-separated, Name is the last column)."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or rows[0][-1].strip() != "Name":
        raise DataError("objectInfo150.txt has no Name column header")
    names = [row[-1].strip() for row in rows[1:]]
    if len(names) != 150:
        raise DataError(f"objectInfo150.txt lists {len(names)} classes, expected 150")
    return names


def plan_ade20k(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    archive = files[ADE20K_ZIP.name]
    with open_archive(archive, params.get("_limits")) as arc:
        names = arc.names()
        prefix = find_prefix(names, "objectInfo150.txt", str(archive))
        classes = parse_object_info(arc.read(f"{prefix}objectInfo150.txt").decode("utf-8", "replace"))
        available = set(names)
    splits = {}
    for split, folder in _SPLITS.items():
        image_dir = f"{prefix}images/{folder}/"
        items = []
        for name in sorted(n for n in names if n.startswith(image_dir) and n.endswith(".jpg")):
            stem = Path(name).stem
            mask = f"{prefix}annotations/{folder}/{stem}.png"
            if mask not in available:
                raise DataError(f"{archive}: {name} has no annotation {mask}")
            items.append(Item(stem, (str(archive), name), (str(archive), mask), decode_ade_png))
        splits[split] = items
    return SourcePlan(classes, voc_palette(151)[1:], splits, {"train": 20210, "val": 2000})


ADE20K = Source("ade20k", "ADE20K SceneParsing (train 20210 / val 2000, 150 classes)", (ADE20K_ZIP,), plan_ade20k)
