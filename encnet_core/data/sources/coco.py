"""COCO 2017 as the reference's 21-class VOC-style set (torch-encoding 1.2.1, ``COCOSegmentation``).

The reference pre-trains its VOC models on COCO reduced to the 20 VOC classes: VOC class ``i`` <- COCO
category ``CAT_LIST[i]``; every other category stays background (0); there is no ignore label (255).
An image's mask paints its instance annotations in the order of the annotation file, each only where
the mask is still 0 (the first instance wins), crowd regions (``iscrowd`` 1, uncompressed RLE) exactly
like the others, and keeps the image only if more than 1000 pixels are non-zero (``_preprocess``).
Rasterisation is the COCO mask API's (pycocotools ``frPyObjects`` + ``decode``), as in the reference.

Where the work happens (time vs memory):

- The plan (main process) parses each ``instances_*.json`` once (instances_train2017.json is 448 MB:
  a few GB of Python objects while it is parsed, freed right after) and keeps, per image, only its
  VOC-category annotations, polygons and RLE counts as numpy arrays (a quarter of the memory of lists).
- Each item carries its own annotations; the conversion workers rasterise them (``make_mask``), in
  parallel, once. The 1000-pixel filter needs the mask, so it runs there too: an item that fails it
  comes back as "filtered" (counted, not stored, not an error) before its image is read. Filtering in
  the plan would rasterise every mask twice, the first time on one core (as the reference's
  ``_preprocess`` does). An image without any VOC annotation is filtered at once.
  ``encnet prepare`` reports the filtered images per split (``filtered``; the ``sources`` attribute).

A compressed RLE (a string ``counts``) does not occur in the official instance files; the reference's
``frPyObjects`` call raises on one. It is decoded as pycocotools' own ``COCO.annToRLE`` does (used as is).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from encnet_core.data.sources.base import Item, Source, SourcePlan, find_prefix
from encnet_core.data.sources.voc import VOC_CLASSES
from encnet_core.errors import ConfigError, DataError
from encnet_core.fetch.archives import ArchiveLimits, open_archive
from encnet_core.fetch.download import RemoteFile
from encnet_core.palette import voc_palette

# md5s: the ones intel/neural-compressor lists for these files
# (examples/pytorch/fx/object_detection/maskrcnn/download_dataset.sh, "$md5sum *.zip"); also in
# NVIDIA/DeepLearningExamples' and other COCO download scripts. Sizes (bytes): the Content-Length that
# public download scripts check (found by code search; messages only).
TRAIN2017 = RemoteFile(
    name="train2017.zip",
    url="http://images.cocodataset.org/zips/train2017.zip",
    md5="cced6f7f71b7629ddf16f17bbcfab6b2",
    size=19_336_861_798,
)
VAL2017 = RemoteFile(
    name="val2017.zip",
    url="http://images.cocodataset.org/zips/val2017.zip",
    md5="442b8da7639aecaf257c1dceb8ba8c80",
    size=815_585_330,
)
ANNOTATIONS2017 = RemoteFile(
    name="annotations_trainval2017.zip",
    url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    md5="f4bbac642086de4f52a3fdda2de5fa2c",
    size=252_907_541,
)

CAT_LIST = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
"""VOC class i <- COCO category CAT_LIST[i] (the reference's COCOSegmentation.CAT_LIST; 0: none)."""

MIN_LABELLED_PIXELS = 1000
"""An image is kept only if more than this many pixels are non-zero (the reference's _preprocess)."""

MAX_PIXELS = 1 << 26
"""Largest width x height an image record may claim (COCO's are at most 640 x 640)."""

ANNOTATION_MAX_BYTES = 1 << 30
"""The instance files are read whole whatever --max-member-size says (instances_train2017.json: 448 MB)."""

_SPLITS = {"train": TRAIN2017, "val": VAL2017}
EXPECTED = {"train": 118_287, "val": 5_000}  # images in instances_{train,val}2017.json, before the filter
_EXTRA = "pip install 'encnet[coco]'"

Segmentation = Any  # a compact annotation: polygons as float64 arrays, RLE counts as a uint32 array or str


def check_coco(params: dict[str, Any]) -> None:
    """The COCO mask API must be installed (checked before any download)."""
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        raise ConfigError(f"encnet prepare coco needs pycocotools (the COCO mask API): {_EXTRA}") from None


# ----------------------------------------------------------------------------- masks (workers)


def _restore(segmentation: Segmentation) -> Any:
    """The annotation's JSON value again (lists of floats), so that ``frPyObjects`` takes the same path."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        return {"size": list(segmentation["size"]), "counts": counts if isinstance(counts, str) else counts.tolist()}
    return [polygon.tolist() for polygon in segmentation]


def coco_mask(annotations: tuple[tuple[int, Segmentation], ...], height: int, width: int) -> np.ndarray | None:
    """The reference's ``_gen_seg_mask`` over (VOC class, segmentation) pairs; None if <= 1000 px are labelled."""
    from pycocotools import mask as coco_mask_api

    mask = np.zeros((height, width), dtype=np.uint8)
    for c, compact in annotations:
        segmentation = _restore(compact)
        try:
            if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
                rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}  # COCO.annToRLE
            else:
                rle = coco_mask_api.frPyObjects(segmentation, height, width)
            m = coco_mask_api.decode(rle)
        except Exception as exc:  # pycocotools raises plain Exception ("input type is not supported.")
            raise DataError(f"the COCO mask API cannot rasterise an annotation of VOC class {c}: {exc}") from None
        if m.shape[:2] != (height, width):
            raise DataError(f"an annotation of VOC class {c} is {m.shape[1]}x{m.shape[0]}, the image record {width}x{height}")
        if len(m.shape) < 3:
            mask[:, :] += (mask == 0) * (m * c)
        else:
            mask[:, :] += (mask == 0) * (((np.sum(m, axis=2)) > 0) * c).astype(np.uint8)
    if int((mask > 0).sum()) <= MIN_LABELLED_PIXELS:
        return None
    return mask


# ----------------------------------------------------------------------------- plan (main process)


def _compact(segmentation: Any, where: str) -> Segmentation:
    """An annotation's ``segmentation`` in less memory, or `DataError` if it is neither polygons nor an RLE."""
    try:
        if isinstance(segmentation, dict):
            size, counts = segmentation["size"], segmentation["counts"]
            if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
                raise ValueError("its RLE size is not [height, width]")
            if isinstance(counts, str):
                return {"size": tuple(size), "counts": counts}
            if not isinstance(counts, list) or not all(isinstance(v, int) and v >= 0 for v in counts):
                raise ValueError("its RLE counts are neither a string nor a list of counts")
            return {"size": tuple(size), "counts": np.asarray(counts, dtype=np.uint32)}
        if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) and p for p in segmentation):
            polygons = [np.asarray(p, dtype=np.float64) for p in segmentation]
            if any(p.ndim != 1 for p in polygons):
                raise ValueError("a polygon is not a flat list of coordinates")
            return polygons
    except KeyError as exc:
        raise DataError(f"{where}: its RLE has no {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: {exc}") from None
    raise DataError(f"{where}: segmentation is neither polygons nor an RLE")


def _field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"{where} has no {key!r}; is this a COCO instances file?")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} is a {type(value).__name__}")
    return value


def read_instances(
    archive: Path, member: str, limits: ArchiveLimits | None, progress: Any = None
) -> tuple[list[dict[str, Any]], dict[int, list[tuple[int, Segmentation]]]]:
    """The images of an instances file (in file order) and their VOC-category annotations (in file order)
    by image id."""
    limits = limits or ArchiveLimits()
    allowance = ArchiveLimits(max(limits.max_member_bytes, ANNOTATION_MAX_BYTES), limits.max_ratio, limits.ratio_floor)
    name = Path(member).name
    if progress:
        progress(f"reading {name}", 0, 1, unit="files")
    with open_archive(archive, allowance) as arc:
        raw = arc.read(member)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{archive}:{member}: not a JSON file ({str(exc).splitlines()[0]})") from None
    del raw
    where = f"{archive}:{member}"
    images = _field(data, "images", list, where)
    annotations = _field(data, "annotations", list, where)
    kept_images = []
    for i, image in enumerate(images):
        at = f"{where}: image {i}"
        kept_images.append({
            "id": _field(image, "id", int, at),
            "file_name": _field(image, "file_name", str, at),
            "height": _field(image, "height", int, at),
            "width": _field(image, "width", int, at),
        })  # fmt: skip
        height, width = kept_images[-1]["height"], kept_images[-1]["width"]
        if not (height > 0 and width > 0 and height * width <= MAX_PIXELS):  # the mask is allocated from these
            raise DataError(f"{at}: {width}x{height} is not an image size (at most {MAX_PIXELS} pixels)")
    voc = {cat: i for i, cat in enumerate(CAT_LIST) if i > 0}
    by_image: dict[int, list[tuple[int, Segmentation]]] = {}
    for i, annotation in enumerate(annotations):
        at = f"{where}: annotation {i}"
        category = _field(annotation, "category_id", int, at)
        image_id = _field(annotation, "image_id", int, at)
        if category not in voc:
            continue
        segmentation = _compact(_field(annotation, "segmentation", (list, dict), at), at)
        by_image.setdefault(image_id, []).append((voc[category], segmentation))
    del data, images, annotations
    if progress:
        progress(f"reading {name}", 1, 1, unit="files")
    return kept_images, by_image


def plan_coco(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    limits = params.get("_limits")
    annotations = files[ANNOTATIONS2017.name]
    with open_archive(annotations, limits) as arc:
        names = arc.names()
    ann_prefix = find_prefix(names, "annotations/instances_train2017.json", str(annotations))
    splits: dict[str, list[Item]] = {}
    for split, remote in _SPLITS.items():
        folder = remote.name.removesuffix(".zip")
        member = f"{ann_prefix}annotations/instances_{folder}.json"
        if member not in names:
            raise DataError(f"{annotations}: no {member}; is this the right archive?")
        archive = files[remote.name]
        with open_archive(archive, limits) as arc:
            image_names = arc.names()
        prefix = _image_prefix(image_names, folder, archive)
        images, by_image = read_instances(annotations, member, limits, params.get("_progress"))
        splits[split] = [
            Item(
                Path(image["file_name"]).stem,
                (str(archive), f"{prefix}{image['file_name']}"),
                (str(annotations), member),
                # no VOC annotation: an all-0 mask, filtered in the worker without reading the image
                make_mask=functools.partial(coco_mask, tuple(by_image.get(image["id"], ())), image["height"], image["width"]),
            )
            for image in images
        ]
        del by_image
    return SourcePlan(
        list(VOC_CLASSES),
        voc_palette(len(VOC_CLASSES)),
        splits,
        EXPECTED,
        files={"min_labelled_pixels": MIN_LABELLED_PIXELS},
    )


def _image_prefix(names: list[str], folder: str, archive: Path) -> str:
    """The folder prefix of ``train2017/``'s images in an archive listing (``train2017/x.jpg`` -> ``train2017/``)."""
    for name in names:
        head, sep, _ = name.rpartition(f"{folder}/")
        if sep and (not head or head.endswith("/")):
            return head + sep
    raise DataError(f"{archive}: no {folder}/ folder; is this the right archive?")


COCO = Source(
    "coco",
    "COCO 2017 reduced to the 20 VOC classes, the reference's pre-training set (21 classes)",
    (TRAIN2017, VAL2017, ANNOTATIONS2017),
    plan_coco,
    check_coco,
)
