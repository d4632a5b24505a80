"""Shared data-test fixtures: the loopback HTTP server (from tests/loopback.py), and small archives in
the real datasets' layouts.

The archive builders write a handful
of 24-40 px images with random (seeded, so deterministic) content in the exact layout of the official
archives (as docs/datasets.md describes them, from the datasets' own pages) and return, beside the archive, what a correct
conversion must store: the image file bytes and the labels after the dataset's documented mapping.
The label facts (VOC class names, the 59 PASCAL Context ids, ADE's ``v - 1`` rule) are typed here from
the datasets' documentation, not imported from encnet_core, so the tests check the library against an
independent statement of them.

tests/cli/test_cli_prepare.py loads this file by path to reuse the builders and the server.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from loopback import Handler, Server, ServerState, http_server  # noqa: F401  (shared with tests/fetch)
from PIL import Image

# ----------------------------------------------------------------------------- facts from the datasets' docs

IGNORE = 255

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

# PASCAL Context 59: (labels.txt id, name), class index = position; every other id is ignored
CONTEXT59 = [
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"), (23, "bicycle"), (25, "bird"),
    (31, "boat"), (33, "book"), (34, "bottle"), (44, "building"), (45, "bus"), (46, "cabinet"), (59, "car"),
    (65, "cat"), (68, "ceiling"), (72, "chair"), (80, "cloth"), (85, "computer"), (98, "cow"), (104, "cup"),
    (105, "curtain"), (113, "dog"), (115, "door"), (144, "fence"), (158, "floor"), (159, "flower"), (162, "food"),
    (187, "grass"), (189, "ground"), (207, "horse"), (220, "keyboard"), (232, "light"), (258, "motorbike"),
    (259, "mountain"), (260, "mouse"), (284, "person"), (295, "plate"), (296, "platform"), (308, "pottedplant"),
    (324, "road"), (326, "rock"), (347, "sheep"), (349, "shelves"), (354, "sidewalk"), (355, "sign"), (360, "sky"),
    (366, "snow"), (368, "sofa"), (397, "table"), (415, "track"), (416, "train"), (420, "tree"), (424, "truck"),
    (427, "tvmonitor"), (440, "wall"), (445, "water"), (454, "window"), (458, "wood"),
]  # fmt: skip

ADE_NAMES = ["wall", "building, edifice", "sky", "floor, flooring", "tree"] + [
    f"thing {i}" for i in range(6, 151)
]

# Official remote file names (the cache and --url/--checksum/--archive keys)
VOC2012_TAR = "VOCtrainval_11-May-2012.tar"
SBD_TGZ = "benchmark.tgz"
VOC2010_TAR = "VOCtrainval_03-May-2010.tar"
CONTEXT_TGZ = "trainval.tar.gz"
ADE_ZIP = "ADEChallengeData2016.zip"

# VOC 2012 / SBD ids, chosen so that every case of the trainaug rule
# ((SBD train | SBD val | VOC train) - VOC val, SBD labels where SBD has them) occurs.
VOC_TRAIN = ["2008_000001", "2008_000002", "2008_000003", "2008_000004"]
VOC_VAL = ["2008_000101", "2008_000102", "2008_000103"]
SBD_TRAIN = ["2009_000202", "2008_000101", "2008_000001", "2009_000201"]  # unsorted, like the real list
SBD_VAL = ["2008_000102", "2009_000203", "2008_000002"]
VOC_EXTRA_JPEGS = ["2009_000201", "2009_000202", "2009_000203", "2010_000301"]  # detection-only images
# trainaug, written out by hand: id -> where its labels come from
TRAINAUG_ORIGIN = {
    "2008_000001": "sbd",  # VOC train and SBD train
    "2008_000002": "sbd",  # VOC train and SBD val
    "2008_000003": "voc",  # VOC train only
    "2008_000004": "voc",  # VOC train only
    "2009_000201": "sbd",  # SBD train only (image from the VOC tar)
    "2009_000202": "sbd",  # SBD train only
    "2009_000203": "sbd",  # SBD val only
}  # 2008_000101 (SBD train) and 2008_000102 (SBD val) are VOC val: excluded

CONTEXT_TRAIN = ["2008_000010", "2008_000011", "2008_000012"]
CONTEXT_VAL = ["2008_000020", "2008_000021"]

ADE_TRAIN = ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]
ADE_VAL = ["ADE_val_00000001", "ADE_val_00000002"]


# ----------------------------------------------------------------------------- content


def seed_of(text: str) -> int:
    """A stable seed for one image id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    height, width = rng.integers(24, 41, size=2)
    return int(height), int(width)


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: a colour gradient plus noise (something a JPEG encoder treats like a photo)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    noisy = base + rng.normal(0, 25, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def blocky_labels(rng: np.random.Generator, height: int, width: int, values: np.ndarray) -> np.ndarray:
    """(H, W) labels drawn from ``values`` in a 4x4 grid of blocks."""
    grid = rng.choice(values, size=(4, 4))
    rows = np.arange(height) * 4 // height
    cols = np.arange(width) * 4 // width
    return grid[rows[:, None], cols[None, :]]


def with_void_borders(labels: np.ndarray) -> np.ndarray:
    """VOC style: pixels next to a different label become 255."""
    out = labels.astype(np.uint8).copy()
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:, 1:] |= horizontal
    out[edge] = IGNORE
    return out


def voc_colour_map() -> list[int]:
    """The bit-interleaved VOC palette (256 entries), written out independently of encnet_core."""
    colours = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours += [r, g, b]
    return colours


def palette_png(labels: np.ndarray) -> bytes:
    """A "P" mode PNG whose indices are ``labels`` (how VOC stores SegmentationClass)."""
    img = Image.frombytes(
        "P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels, np.uint8).tobytes()
    )
    img.putpalette(voc_colour_map())
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def gray_png(values: np.ndarray) -> bytes:
    """An "L" mode PNG of ``values``."""
    buffer = io.BytesIO()
    Image.frombytes(
        "L", (values.shape[1], values.shape[0]), np.ascontiguousarray(values, np.uint8).tobytes()
    ).save(buffer, format="PNG")
    return buffer.getvalue()


def mat_bytes(variables: dict) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- archives


@dataclass
class Layout:
    """The members of an archive in a dataset's layout, and what a correct conversion stores from them."""

    members: dict[str, bytes]  # member name -> bytes, in archive order
    splits: dict[str, list[str]] = field(default_factory=dict)  # split -> ids, in stored order
    images: dict[str, bytes] = field(default_factory=dict)  # id -> image file bytes
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # id -> expected stored labels
    dirs: list[str] = field(default_factory=list)  # directory entries to add first


@dataclass
class Built:
    """An archive written to disk."""

    path: Path
    layout: Layout
    md5: str

    @property
    def name(self) -> str:
        return self.path.name


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_tar(path: Path, layout: Layout, mode: str = "w") -> Built:
    """Write a (compressed, by ``mode``) tar with fixed owners and times."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name in layout.dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_300_000_000
            tar.addfile(info)
        for name, data in layout.members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_300_000_000
            tar.addfile(info, io.BytesIO(data))
    return Built(path, layout, md5_of(path))


def write_zip(path: Path, layout: Layout) -> Built:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in layout.dirs:
            zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/", (2016, 1, 1, 0, 0, 0)), b"")
        for name, data in layout.members.items():
            zf.writestr(
                zipfile.ZipInfo(name, (2016, 1, 1, 0, 0, 0)), data, compress_type=zipfile.ZIP_DEFLATED
            )
    return Built(path, layout, md5_of(path))


def voc2012_layout(
    train: list[str] = VOC_TRAIN, val: list[str] = VOC_VAL, extra: list[str] = VOC_EXTRA_JPEGS
) -> Layout:
    """``VOCdevkit/VOC2012``: JPEGImages for every id, SegmentationClass palette PNGs for train + val.

    Labels are 0..20 blocks with 255 borders; the first image holds both 0 and 20.
    """
    root = "VOCdevkit/VOC2012"
    layout = Layout({}, {"train": list(train), "val": list(val)})
    layout.dirs = ["VOCdevkit", root] + [
        f"{root}/{d}" for d in ("JPEGImages", "SegmentationClass", "ImageSets", "ImageSets/Segmentation")
    ]
    for index, image_id in enumerate(list(train) + list(val) + list(extra)):
        rng = np.random.default_rng(seed_of("voc" + image_id))
        height, width = random_size(rng)
        jpeg = encode(random_image(rng, height, width))
        layout.images[image_id] = jpeg
        layout.members[f"{root}/JPEGImages/{image_id}.jpg"] = jpeg
        if image_id in extra:
            continue
        labels = with_void_borders(blocky_labels(rng, height, width, np.arange(21)))
        if index == 0:
            labels[-2:, :2], labels[-2:, -2:] = 0, 20  # 0 and 20 both occur
        layout.labels[image_id] = labels
        layout.members[f"{root}/SegmentationClass/{image_id}.png"] = palette_png(labels)
    for split, ids in (("train", train), ("val", val), ("trainval", list(train) + list(val))):
        layout.members[f"{root}/ImageSets/Segmentation/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
    return layout


def sbd_layout(voc: Layout, train: list[str] = SBD_TRAIN, val: list[str] = SBD_VAL) -> Layout:
    """``benchmark_RELEASE/dataset``: cls/<id>.mat (GTcls.Segmentation, 0..20, no 255), img/<id>.jpg, lists.

    The SBD images are the VOC images (same bytes); SBD labels differ from the VOC labels of the same id.
    """
    root = "benchmark_RELEASE/dataset"
    layout = Layout({}, {"train": list(train), "val": list(val)})
    layout.dirs = ["benchmark_RELEASE", root, f"{root}/cls", f"{root}/img", f"{root}/inst"]
    for image_id in list(train) + list(val):
        rng = np.random.default_rng(seed_of("sbd" + image_id))
        jpeg = voc.images[image_id]
        with Image.open(io.BytesIO(jpeg)) as img:
            width, height = img.size
        labels = blocky_labels(rng, height, width, np.arange(21)).astype(np.uint8)
        if image_id in voc.labels:
            assert not np.array_equal(labels, voc.labels[image_id])
        layout.images[image_id] = jpeg
        layout.labels[image_id] = labels
        present = np.unique(labels[labels > 0]).astype(np.uint8)
        layout.members[f"{root}/cls/{image_id}.mat"] = mat_bytes(
            {"GTcls": {"Segmentation": labels, "CategoriesPresent": present}}
        )
        layout.members[f"{root}/inst/{image_id}.mat"] = mat_bytes(
            {"GTinst": {"Segmentation": (labels > 0).astype(np.uint8)}}
        )
        layout.members[f"{root}/img/{image_id}.jpg"] = jpeg
    layout.members[f"{root}/train.txt"] = "".join(f"{i}\n" for i in train).encode()
    layout.members[f"{root}/val.txt"] = "".join(f"{i}\n" for i in val).encode()
    layout.members["benchmark_RELEASE/README"] = b"Semantic Boundaries Dataset\n"
    return layout


def context_lut() -> np.ndarray:
    lut = np.full(460, IGNORE, dtype=np.uint8)
    for index, (label_id, _) in enumerate(CONTEXT59):
        lut[label_id] = index
    return lut


def voc2010_layout(train: list[str] = CONTEXT_TRAIN, val: list[str] = CONTEXT_VAL) -> Layout:
    """``VOCdevkit/VOC2010``: JPEGImages and ImageSets/Main/{train,val}.txt (+ a per-class list)."""
    root = "VOCdevkit/VOC2010"
    layout = Layout({}, {"train": list(train), "val": list(val)})
    layout.dirs = ["VOCdevkit", root, f"{root}/JPEGImages", f"{root}/ImageSets", f"{root}/ImageSets/Main"]
    for image_id in list(train) + list(val) + ["2010_009999"]:
        rng = np.random.default_rng(seed_of("voc2010" + image_id))
        jpeg = encode(random_image(rng, *random_size(rng)))
        layout.images[image_id] = jpeg
        layout.members[f"{root}/JPEGImages/{image_id}.jpg"] = jpeg
    layout.members[f"{root}/ImageSets/Main/aeroplane_train.txt"] = "".join(
        f"{i} -1\n" for i in train
    ).encode()
    layout.members[f"{root}/ImageSets/Main/train.txt"] = "".join(f"{i}\n" for i in train).encode()
    layout.members[f"{root}/ImageSets/Main/val.txt"] = "".join(f"{i}\n" for i in val).encode()
    return layout


def context_layout(voc2010: Layout) -> Layout:
    """trainval.tar.gz: ``trainval/<id>.mat`` (LabelMap ids 0..459) and ``labels.txt`` ("id: name")."""
    names = dict(CONTEXT59)
    layout = Layout({}, dict(voc2010.splits))
    layout.dirs = ["trainval"]
    benchmark = np.array([label_id for label_id, _ in CONTEXT59])
    others = np.array([0, 1, 3, 100, 230, 300, 401, 459])  # unlabelled and non-benchmark ids
    lut = context_lut()
    for image_id in voc2010.splits["train"] + voc2010.splits["val"]:
        rng = np.random.default_rng(seed_of("context" + image_id))
        with Image.open(io.BytesIO(voc2010.images[image_id])) as img:
            width, height = img.size
        ids = blocky_labels(rng, height, width, np.concatenate([benchmark, others])).astype(np.uint16)
        ids[0, 0], ids[0, 1], ids[1, 0] = 458, 2, 0  # last and first benchmark id, and unlabelled
        layout.members[f"trainval/{image_id}.mat"] = mat_bytes({"LabelMap": ids})
        layout.labels[image_id] = lut[ids]
        layout.images[image_id] = voc2010.images[image_id]
    lines = [f"{i}: {names.get(i, f'category{i}')}" for i in range(1, 460)]
    layout.members["labels.txt"] = ("\n".join(lines) + "\n").encode()
    return layout


def ade_layout(train: list[str] = ADE_TRAIN, val: list[str] = ADE_VAL) -> Layout:
    """``ADEChallengeData2016``: images/{training,validation}/*.jpg, annotations/.../*.png (L, 0..150)."""
    root = "ADEChallengeData2016"
    layout = Layout({}, {"train": list(train), "val": list(val)})
    layout.dirs = [root] + [
        f"{root}/{a}/{b}" for a in ("images", "annotations") for b in ("training", "validation")
    ]
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [
        f"{i}\t{0.1 / i:.4f}\t{1000 - i}\t{100 - i // 2}\t{name}" for i, name in enumerate(ADE_NAMES, start=1)
    ]
    layout.members[f"{root}/objectInfo150.txt"] = ("\n".join(rows) + "\n").encode()
    layout.members[f"{root}/sceneCategories.txt"] = b"".join(f"{i} street\n".encode() for i in train + val)
    for folder, ids in (("training", train), ("validation", val)):
        for index, image_id in enumerate(ids):
            rng = np.random.default_rng(seed_of("ade" + image_id))
            height, width = random_size(rng)
            jpeg = encode(random_image(rng, height, width))
            values = blocky_labels(rng, height, width, np.arange(151)).astype(np.uint8)
            values[0, :3] = (0, 1, 150)
            if index == 0:
                values[-3:, -3:] = 0
            layout.members[f"{root}/images/{folder}/{image_id}.jpg"] = jpeg
            layout.members[f"{root}/annotations/{folder}/{image_id}.png"] = gray_png(values)
            layout.images[image_id] = jpeg
            expected = values.astype(np.int64) - 1
            expected[values == 0] = IGNORE
            layout.labels[image_id] = expected.astype(np.uint8)
    return layout


@pytest.fixture(scope="session")
def voc_tar(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return write_tar(tmp_path_factory.mktemp("voc") / VOC2012_TAR, voc2012_layout())


@pytest.fixture(scope="session")
def sbd_tgz(tmp_path_factory: pytest.TempPathFactory, voc_tar: Built) -> Built:
    return write_tar(tmp_path_factory.mktemp("sbd") / SBD_TGZ, sbd_layout(voc_tar.layout), mode="w:gz")


@pytest.fixture(scope="session")
def voc2010_tar(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return write_tar(tmp_path_factory.mktemp("voc2010") / VOC2010_TAR, voc2010_layout())


@pytest.fixture(scope="session")
def context_tgz(tmp_path_factory: pytest.TempPathFactory, voc2010_tar: Built) -> Built:
    return write_tar(
        tmp_path_factory.mktemp("context") / CONTEXT_TGZ, context_layout(voc2010_tar.layout), mode="w:gz"
    )


@pytest.fixture(scope="session")
def ade_zip(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return write_zip(tmp_path_factory.mktemp("ade") / ADE_ZIP, ade_layout())


# ----------------------------------------------------------------------------- checking a prepared file


def stored_split(path: Path, split: str) -> dict[str, np.ndarray | list]:
    """Everything stored for one split, decoded with PIL and h5py only."""
    with h5py.File(path, "r") as handle:
        group = handle[split]
        masks = []
        if "masks" in group:
            for raw in group["masks"][:]:
                with Image.open(io.BytesIO(raw.tobytes())) as img:
                    assert img.mode == "L"
                    masks.append(np.asarray(img))
        return {
            "names": list(group["names"].asstr()[:]),
            "images": [raw.tobytes() for raw in group["images"][:]],
            "masks": masks,
            "sizes": group["sizes"][:],
            "class_pixels": group["class_pixels"][:],
            "se_targets": group["se_targets"][:],
        }


def assert_split_matches(
    path: Path,
    split: str,
    ids: list[str],
    images: dict[str, bytes],
    labels: dict[str, np.ndarray],
    num_classes: int,
    min_pixels: int = 1,
) -> None:
    """Every stored sample of ``split`` equals its source: names in order, image bytes, mask pixels, stats."""
    stored = stored_split(path, split)
    assert stored["names"] == ids
    for i, name in enumerate(ids):
        assert stored["images"][i] == images[name], f"{split}/{name}: image bytes differ from the source file"
        expected = labels[name]
        assert tuple(stored["sizes"][i]) == expected.shape
        np.testing.assert_array_equal(stored["masks"][i], expected, err_msg=f"{split}/{name}")
        counts = np.array([(expected == c).sum() for c in range(num_classes)])
        assert stored["class_pixels"][i].tolist() == counts.tolist()
        assert stored["se_targets"][i].tolist() == (counts >= min_pixels).astype(int).tolist()
