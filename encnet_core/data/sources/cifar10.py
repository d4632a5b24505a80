"""CIFAR-10 from its binary version (``cifar-10-binary.tar.gz``; the Python version is pickled and is not used).

The archive holds ``cifar-10-batches-bin/`` with ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train,
10000 images each), ``test_batch.bin`` (val, 10000), ``batches.meta.txt`` (the 10 class names, one
a line, label ``i`` is line ``i``) and a ``readme.html``. A batch file is a run of 3073-byte records:
one label byte (0..9), then the 32 x 32 image as three 1024-byte planes, red, green and blue, each
row-major. The batch files are extracted safely (``archives.safe_extract``: member size and
expansion limits, no path escapes) under ``--root/cifar10/``, once; every record file must be a
whole number of records. The conversion workers then read one record each (``read_record``) and
store its image as a lossless PNG, its label byte as the class index (a label outside the classes
stops the conversion naming file and record, or with ``--skip-bad`` is skipped). Names are
``train_00000`` .. ``train_49999`` (batch 1 first) and ``val_00000`` .. ``val_09999``.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.data.sources.base import Item, Source, SourcePlan, find_prefix
from encnet_core.data.sources.voc import extract_once
from encnet_core.errors import DataError
from encnet_core.fetch.download import RemoteFile
from encnet_core.palette import voc_palette

__all__ = ["ARCHIVE", "RECORD_BYTES", "IMAGE_SIDE", "TRAIN_BATCHES", "VAL_BATCH", "CIFAR10", "read_record", "decode_record"]

# The md5 is the one the dataset's page (https://www.cs.toronto.edu/~kriz/cifar.html) lists for "CIFAR-10 binary
# version (suitable for C programs)", 162 MB: found quoted from that page's table in a public write-up, and the same
# value in aria-ml/dataeval (src/dataeval/utils/data/datasets/_cifar10.py, DataLocation of this URL). The size,
# 170,052,171 bytes, is what TensorFlow's CIFAR-10 tutorial prints after downloading this URL ("Successfully
# downloaded cifar-10-binary.tar.gz 170052171 bytes"), as quoted in several public notes.
ARCHIVE = RemoteFile(
    name="cifar-10-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    size=170_052_171,
)

IMAGE_SIDE = 32
RECORD_BYTES = 1 + 3 * IMAGE_SIDE * IMAGE_SIDE  # one label byte, then the R, G and B planes
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
VAL_BATCH = "test_batch.bin"
META = "batches.meta.txt"
NUM_CLASSES = 10
_FOLDER = "cifar-10-batches-bin/"


def decode_record(record: bytes) -> tuple[np.ndarray, int]:
    """One 3073-byte record as (image (32, 32, 3) uint8 RGB, label byte)."""
    if len(record) != RECORD_BYTES:
        raise DataError(f"a record is {len(record)} bytes, not {RECORD_BYTES}")
    planes = np.frombuffer(record, dtype=np.uint8, offset=1).reshape(3, IMAGE_SIDE, IMAGE_SIDE)  # (3, H, W)
    return np.ascontiguousarray(planes.transpose(1, 2, 0)), record[0]


def read_record(path: str, index: int) -> tuple[bytes, int]:
    """Record ``index`` of the batch file ``path``: (PNG bytes of its image, its label byte)."""
    with open(path, "rb") as stream:
        stream.seek(index * RECORD_BYTES)
        record = stream.read(RECORD_BYTES)
    image, label = decode_record(record)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue(), label


def read_classes(raw: bytes, where: str) -> list[str]:
    """The class names of ``batches.meta.txt``: its non-empty lines; there must be 10, all different."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where} is not text; the archive is corrupt") from None
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    if len(classes) != NUM_CLASSES or len(set(classes)) != NUM_CLASSES:
        shown = ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")
        raise DataError(f"{where} lists {len(classes)} class names ({shown}); CIFAR-10 has {NUM_CLASSES} different ones")
    return classes


def _records(path: Path, archive: Path, member: str) -> int:
    """The number of records of an extracted batch file, which must be a whole, non-zero number of them."""
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES:
        raise DataError(
            f"{archive}: {member} is {size} bytes, not a whole number of {RECORD_BYTES}-byte records "
            "(1 label byte + 3072 pixel bytes); the archive is corrupt or not CIFAR-10's binary version"
        )
    return size // RECORD_BYTES


def plan_cifar10(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    archive = files[ARCHIVE.name]
    wanted = (*TRAIN_BATCHES, VAL_BATCH, META)
    dest = workdir / "cifar10"
    members = extract_once(
        archive,
        dest,
        lambda name: name.rsplit("/", 1)[-1] in wanted,
        params.get("_hashes", {}).get(ARCHIVE.name),
        params.get("_limits"),
    )
    prefix = find_prefix(members, f"{_FOLDER}{META}", str(archive))
    present = set(members)
    missing = [name for name in wanted if f"{prefix}{_FOLDER}{name}" not in present]
    if missing:
        raise DataError(f"{archive}: no {_FOLDER}{missing[0]}; is this CIFAR-10's binary version (cifar-10-binary.tar.gz)?")
    classes = read_classes((dest / f"{prefix}{_FOLDER}{META}").read_bytes(), f"{archive}: {_FOLDER}{META}")
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for split, batches in (("train", TRAIN_BATCHES), ("val", (VAL_BATCH,))):
        for batch in batches:
            member = f"{prefix}{_FOLDER}{batch}"
            path = dest / member
            for record in range(_records(path, archive, member)):
                name = f"{split}_{len(splits[split]):05d}"
                where = ("", f"{path}, record {record}")  # named in messages only: `load` reads the record
                splits[split].append(Item(name, where, None, load=functools.partial(read_record, str(path), record)))
    return SourcePlan(
        classes,
        voc_palette(len(classes)),
        splits,
        {"train": 50_000, "val": 10_000},
        files={"extracted": str(dest)},
        task="classification",
    )


CIFAR10 = Source(
    "cifar10", "CIFAR-10 classification, binary version (train 50000 / val 10000, 10 classes, 32 x 32)", (ARCHIVE,), plan_cifar10
)
