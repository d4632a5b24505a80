"""PASCAL VOC 2012, VOC 2012 + SBD ("VOC aug"), and the synthetic VOC-style dataset."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from encnet_core.data.sources.base import Item, Source, SourcePlan, decode_index_png, find_prefix
from encnet_core.errors import DataError
from encnet_core.fetch.archives import ArchiveLimits, open_archive, safe_extract
from encnet_core.fetch.download import RemoteFile
from encnet_core.palette import voc_palette
from encnet_core.paths import atomic_write, is_disk_full

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

VOC2012 = RemoteFile(
    name="VOCtrainval_11-May-2012.tar",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    sha1="4e443f8a2eca6b1dac8a6c57641b67dd40621a49",
    size=1_999_639_040,
)
SBD = RemoteFile(
    name="benchmark.tgz",
    url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    sha1="7129e0a480c2d6afb02b517bb18ac54283bfaa35",
    size=1_419_539_633,
)


def read_ids(raw: bytes) -> list[str]:
    """Image ids of a split list file (first token of each non-empty line)."""
    return [line.split()[0] for line in raw.decode().splitlines() if line.strip()]


def voc_items(
    archive: Path, classes_required: bool = False, limits: ArchiveLimits | None = None
) -> tuple[dict[str, list[Item]], list[str] | None]:
    """train/val items of a VOC-layout archive, and the names in its classes.txt when it has one."""
    with open_archive(archive, limits) as arc:
        names = arc.names()
        prefix = find_prefix(names, "ImageSets/Segmentation/train.txt", str(archive))
        splits = {}
        for split in ("train", "val"):
            ids = read_ids(arc.read(f"{prefix}ImageSets/Segmentation/{split}.txt"))
            splits[split] = [
                Item(
                    i,
                    (str(archive), f"{prefix}JPEGImages/{i}.jpg"),
                    (str(archive), f"{prefix}SegmentationClass/{i}.png"),
                    decode_index_png,
                )
                for i in ids
            ]
        classes = None
        if arc.exists(f"{prefix}classes.txt"):
            classes = [c.strip() for c in arc.read(f"{prefix}classes.txt").decode().splitlines() if c.strip()]
        elif classes_required:
            raise DataError(f"{archive}: no classes.txt beside ImageSets/")
    return splits, classes


def plan_voc(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    splits, _ = voc_items(files[VOC2012.name], limits=params.get("_limits"))
    return SourcePlan(list(VOC_CLASSES), voc_palette(len(VOC_CLASSES)), splits, {"train": 1464, "val": 1449})


def decode_sbd_mat(raw: bytes) -> np.ndarray:
    """SBD ``cls/<id>.mat``: struct GTcls, field Segmentation (H, W) with VOC's 21 labels."""
    mat = scipy.io.loadmat(io.BytesIO(raw), squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat:
        raise DataError("not an SBD cls .mat file (no GTcls struct)")
    return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)


def extract_once(
    archive: Path,
    dest: Path,
    wanted: Any,
    hashes: dict[str, str] | None = None,
    limits: ArchiveLimits | None = None,
) -> list[str]:
    """Extract the members of a compressed archive selected by ``wanted(name)`` into ``dest``, once.

    Compressed tars only read fast front to back, so their needed members are extracted (safely)
    instead of read in random order. A marker file names the archive's sha256 so a second run reuses it.
    """
    marker = dest / ".extracted"
    tag = (hashes or {}).get("sha256", "") + f"{archive.stat().st_size}"
    if marker.is_file() and marker.read_text() == tag:
        return [line for line in (dest / ".members").read_text().splitlines() if line]
    with open_archive(archive, limits) as arc:
        members = [n for n in arc.names() if wanted(n)]
    safe_extract(archive, dest, members, limits=limits)
    try:
        for path, text in ((dest / ".members", "\n".join(members)), (marker, tag)):  # the marker last: it says done
            with atomic_write(path) as tmp:
                tmp.write_text(text)
    except OSError as exc:
        raise DataError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return members


def plan_voc_aug(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    voc_tar, sbd_tgz = files[VOC2012.name], files[SBD.name]
    limits = params.get("_limits")
    voc_splits, _ = voc_items(voc_tar, limits=limits)
    sbd_dir = workdir / "sbd"
    members = extract_once(
        sbd_tgz,
        sbd_dir,
        lambda n: n.endswith((".txt", ".mat")) and ("/cls/" in n or n.endswith(("train.txt", "val.txt"))),
        params.get("_hashes", {}).get(SBD.name),
        limits,
    )
    prefix = find_prefix(members, "train.txt", str(sbd_tgz))
    sbd_ids = read_ids((sbd_dir / f"{prefix}train.txt").read_bytes()) + read_ids((sbd_dir / f"{prefix}val.txt").read_bytes())
    sbd_masks = {Path(m).stem: sbd_dir / m for m in members if "/cls/" in "/" + m and m.endswith(".mat")}
    voc_train = {item.name: item for item in voc_splits["train"]}
    val_ids = {item.name for item in voc_splits["val"]}
    train_ids = sorted((set(sbd_ids) | set(voc_train)) - val_ids)
    images = str(voc_tar)
    img_prefix = voc_splits["val"][0].image[1].rsplit("JPEGImages/", 1)[0] if voc_splits["val"] else ""
    train = []
    for i in train_ids:
        if i in sbd_masks:
            train.append(Item(i, (images, f"{img_prefix}JPEGImages/{i}.jpg"), ("", str(sbd_masks[i])), decode_sbd_mat))
        elif i in voc_train:
            train.append(voc_train[i])
        else:
            raise DataError(f"SBD lists {i} but has no cls/{i}.mat; the SBD archive is incomplete")
    return SourcePlan(
        list(VOC_CLASSES),
        voc_palette(len(VOC_CLASSES)),
        {"train": train, "val": voc_splits["val"]},
        {"train": 10582, "val": 1449},
    )


def _synthetic_arguments(params: dict[str, Any]) -> tuple[int, int, int, int, str]:
    """(num_train, num_val, size, seed, layout) from the parameters of the synthetic source."""
    from encnet_core.data import synthetic

    layout = str(params.get("layout") or "standard")
    size = params.get("size")
    size = synthetic.DEFAULT_SIZES.get(layout, 128) if size is None else int(size)
    return (int(params.get("num_train", 300)), int(params.get("num_val", 100)), size, int(params.get("seed", 0)),
            layout)  # fmt: skip


def check_synthetic(params: dict[str, Any]) -> None:
    """`ConfigError` for split sizes, image size or seed that cannot make a synthetic dataset."""
    from encnet_core.data import synthetic

    synthetic.check_arguments(*_synthetic_arguments(params))


def plan_synthetic(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    from encnet_core.data import synthetic

    num_train, num_val, size, seed, layout = _synthetic_arguments(params)
    tag = "" if layout == "standard" else f"-{layout}"
    archive = workdir / f"synthetic{tag}-s{seed}-{size}px-{num_train}-{num_val}.tar"
    if not archive.is_file():
        try:
            synthetic.write_voc_archive(
                archive, num_train=num_train, num_val=num_val, size=size, seed=seed, layout=layout,
                progress=params.get("_progress"),
            )
        except OSError as exc:
            if is_disk_full(exc):
                raise DataError(f"no space left on {workdir}: cannot write {archive.name}") from None
            raise DataError(f"cannot write {archive}: {exc.strerror or exc}") from None
    splits, classes = voc_items(archive, classes_required=True, limits=params.get("_limits"))
    assert classes is not None
    known = tuple(classes) == synthetic.layout_classes(layout)  # distinct colours (synthetic.CLASS_COLOURS), not the VOC map
    return SourcePlan(
        classes,
        synthetic.layout_palette(layout) if known else voc_palette(len(classes)),
        splits,
        {"train": num_train, "val": num_val},
        files={"synthetic_archive": str(archive), "seed": seed, "size": size, "layout": layout},
    )


VOC = Source("voc", "PASCAL VOC 2012 segmentation (train 1464 / val 1449, 21 classes)", (VOC2012,), plan_voc)
VOC_AUG = Source(
    "voc-aug", "VOC 2012 + SBD labels (trainaug 10582 / val 1449, 21 classes)", (VOC2012, SBD), plan_voc_aug
)
SYNTHETIC = Source(
    "synthetic", "built-in procedural scenes where context matters (no network)", (), plan_synthetic, check_synthetic
)
