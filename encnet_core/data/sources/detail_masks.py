"""The PASCAL in Detail API's ``getMask``, without the ``detail`` package: masks from ``trainval_merged.json``.

PyTorch-Encoding builds its PASCAL Context masks with ``Detail(trainval_merged.json, ..., split).getMask(img)``
(zhanghang1989/detail-api, PythonAPI/detail/__init__.py). With no category, instance or part given,
``getMask`` (lines 348-357) does exactly this:

1. ``mask = np.zeros((img['height'], img['width']))``: the size is the JSON's, not the JPEG's.
2. For each annotation of the image, in the order of the JSON's ``annos_segmentation`` list (the
   insertion order of the ``segmentations`` dict keyed by annotation ``id``, lines 95-96 and 192: a
   repeated id keeps its first position and its last value), ``m = decode(ann['segmentation'])`` and
   ``mask[np.nonzero(m)] = ann['category_id']``: whole-object regions only (no parts, no occlusion
   order, no crowd filter), painted one over the other, the later annotation winning where they overlap.
3. Pixels no annotation covers stay 0.

``decode`` is the COCO mask API (detail/mask.py -> _mask.pyx -> common/maskApi.c): a dict
``{'size': [h, w], 'counts': str}`` is a compressed RLE, read by ``rleFrString`` (6 bits per
character, characters 48..111, LEB128-like with a sign bit, and each count from the fourth on stored
as a difference from the count two before it) and expanded by ``rleDecode`` into an (h, w) mask in
column-major order, runs alternating 0 and 1 starting with 0. Any other ``segmentation`` fails there:
a list (polygons, or a list of RLEs, which decodes to a 3-D array that cannot index the 2-D mask) or
``counts`` as a list (uncompressed RLE). Polygons are never rasterised by ``getMask``.

This module does the same with numpy, and refuses (one `DataError` line) what the C code would read
out of bounds, leave undefined or crash on: characters outside 48..111, a string ending inside a
count, counts that do not add up to h * w (``rleDecode`` writes exactly their sum into an h * w buffer:
fewer leave malloc's garbage, more overflow it), and a decoded pixel outside the image's size (numpy's
IndexError in the reference). Sizes are capped (`MAX_SIDE`, `MAX_JSON_BYTES`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encnet_core.errors import DataError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_SIDE",
    "DetailImage",
    "decode_rle",
    "paint_mask",
    "read_detail_json",
    "check_detail_json",
]

MAX_JSON_BYTES = 4 << 30  # largest annotation file read into memory
MAX_SIDE = 8192  # largest image or RLE height/width, in pixels
_MAX_TOKEN_CHARS = 6  # a count of an image within MAX_SIDE**2 pixels needs at most 6 characters
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_INT64 = 1 << 63

Annotation = tuple[int, int, tuple[int, int], str]
"""(annotation id, category id, RLE (height, width), RLE counts string)."""


@dataclass(frozen=True)
class DetailImage:
    """One image of the annotation file, with its annotations in ``getMask``'s painting order."""

    image_id: int
    file_name: str
    height: int
    width: int
    phase: str
    annotations: tuple[Annotation, ...]


# ----------------------------------------------------------------------------- RLE (maskApi.c)


def _rle_counts(counts: str, what: str) -> np.ndarray:
    """``rleFrString``: the compressed counts string -> (m,) int64 counts, as the C code's uint32 values."""
    codes = np.frombuffer(counts.encode("utf-8"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ((codes < 0) | (codes > 63)).any():
        raise DataError(f"{what}: RLE counts hold a character outside '0'..'o' (not a COCO compressed RLE)")
    ends = np.flatnonzero((codes & 0x20) == 0)  # a character without the continuation bit ends a count
    if ends.size == 0 or ends[-1] != codes.size - 1:
        raise DataError(f"{what}: RLE counts end in the middle of a count (truncated)")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_TOKEN_CHARS:
        raise DataError(f"{what}: an RLE count of {int(lengths.max())} characters is too large for any image")
    position = np.arange(codes.size) - np.repeat(starts, lengths)  # k: the character's place in its count
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0  # sign bit of the last character: x |= -1 << 5 * k
    values = values - np.where(negative, np.left_shift(1, 5 * lengths), 0)
    # if (m > 2) x += cnts[m - 2]: counts 3, 5, 7... add up from count 1; counts 4, 6, 8... from count 2
    out = values.copy()
    out[1::2] = np.cumsum(values[1::2])
    out[2::2] = np.cumsum(values[2::2])
    return out & 0xFFFFFFFF  # cnts[m] = (uint) x


def decode_rle(size: tuple[int, int], counts: str, what: str = "RLE") -> np.ndarray:
    """``maskUtils.decode({'size': size, 'counts': counts})``: (h, w) uint8 0/1, exactly as maskApi.c.

    Raises `DataError` (naming ``what``) where the C code would misbehave: see the module docstring.
    """
    height, width = size
    cnts = _rle_counts(counts, what)
    if cnts.size > height * width + 1:  # more runs than pixels (+1 for a leading empty run) cannot add up
        raise DataError(f"{what}: RLE has {cnts.size} counts for {height}x{width} pixels")
    total = int(cnts.sum())
    if total != height * width:
        raise DataError(f"{what}: RLE counts add up to {total} pixels, not {height}x{width} = {height * width}")
    runs = np.arange(cnts.size, dtype=np.int64) % 2  # rleDecode: v = 0, then v = !v after every count
    flat = np.repeat(runs.astype(np.uint8), cnts)
    return flat.reshape(width, height).T  # column-major (Fortran) order, as _mask.pyx's Masks.__array__


# ----------------------------------------------------------------------------- getMask


def paint_mask(height: int, width: int, annotations: Sequence[Annotation], what: str = "image") -> np.ndarray:
    """``Detail.getMask(img)`` for an image of ``height`` x ``width``: (H, W) int64 category ids, 0 unpainted."""
    mask = np.zeros((height, width), dtype=np.int64)
    for ann_id, category_id, size, counts in annotations:
        where = f"{what}, annotation {ann_id}"
        rows, cols = np.nonzero(decode_rle(size, counts, where))
        if rows.size and (int(rows.max()) >= height or int(cols.max()) >= width):
            raise DataError(
                f"{where}: its {size[0]}x{size[1]} RLE paints pixels outside the {height}x{width} image"
            )
        mask[rows, cols] = category_id
    return mask


# ----------------------------------------------------------------------------- the annotation file

# Only these keys are kept while parsing (everything else, e.g. parts, occlusion edges and boundary
# masks, is dropped as soon as its object is read, so memory holds what getMask needs).
_KEEP = frozenset(
    {"images", "annos_segmentation", "image_id", "file_name", "height", "width", "phase", "id",
     "category_id", "segmentation", "size", "counts"}
)  # fmt: skip


def _keep_needed(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value for key, value in pairs if key in _KEEP}


def _int(value: Any, what: str, low: int = -_INT64, high: int = _INT64 - 1) -> int:
    if type(value) is not int or not low <= value <= high:  # bool is not an int here; floats are refused
        got = str(value)[:20] if type(value) is int else type(value).__name__
        raise DataError(f"{what} must be an integer from {low} to {high}, got {got}")
    return value


def _field(obj: Any, key: str, what: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{what} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{what} has no {key!r}")
    return obj[key]


def _segmentation(value: Any, what: str) -> tuple[tuple[int, int], str]:
    """A compressed RLE ``{'size': [h, w], 'counts': str}``: the only form ``getMask`` decodes."""
    if isinstance(value, list):
        raise DataError(
            f"{what}: segmentation is a list (polygons); getMask decodes only compressed RLE "
            "({'size': [h, w], 'counts': '...'}), so the detail API fails on this file too"
        )
    size = _field(value, "size", f"{what} segmentation")
    counts = _field(value, "counts", f"{what} segmentation")
    if not isinstance(size, list) or len(size) != 2:
        raise DataError(f"{what}: segmentation size must be [height, width]")
    height = _int(size[0], f"{what} segmentation height", 0, MAX_SIDE)
    width = _int(size[1], f"{what} segmentation width", 0, MAX_SIDE)
    if not isinstance(counts, str):
        raise DataError(
            f"{what}: segmentation counts must be a compressed RLE string, got {type(counts).__name__} "
            "(getMask does not decode uncompressed RLE)"
        )
    if len(counts) > _MAX_TOKEN_CHARS * (height * width + 1):
        raise DataError(f"{what}: RLE counts of {len(counts)} characters are too long for {height}x{width} pixels")
    return (height, width), counts


def check_detail_json(path: Path) -> None:
    """A quick check of a file no checksum vouched for: a JSON object, whole (ends with its closing brace)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(64).lstrip()
            handle.seek(max(0, size - 64))
            tail = handle.read().rstrip()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if size > MAX_JSON_BYTES:
        raise DataError(f"{path}: {size} bytes, over the limit of {MAX_JSON_BYTES} bytes for an annotation file")
    if not head.startswith((b"{", b"\xef\xbb\xbf{")) or not tail.endswith(b"}"):
        raise DataError(f"{path}: not a whole JSON object (truncated, or not trainval_merged.json)")


def read_detail_json(path: Path) -> list[DetailImage]:
    """The images of a ``trainval_merged.json`` (in the file's order), each with its annotations in
    ``getMask``'s order, with every field that order and painting depend on checked for type and size.

    Follows the detail API's index (``Detail.__createIndex``): images keyed by ``image_id`` and
    annotations by ``id`` (a repeated key keeps its first position and its last value), an annotation
    belongs to the image its ``image_id`` names. Raises `DataError` (one line) for anything else.
    """
    path = Path(path)
    check_detail_json(path)
    try:
        data = json.loads(path.read_bytes(), object_pairs_hook=_keep_needed)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not valid JSON ({reason[:200]})") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read it") from None
    images_raw = _field(data, "images", path.name)
    annotations_raw = _field(data, "annos_segmentation", path.name)
    if not isinstance(images_raw, list) or not isinstance(annotations_raw, list):
        raise DataError(f"{path.name}: 'images' and 'annos_segmentation' must be lists")

    images: dict[int, dict[str, Any]] = {}
    for index, img in enumerate(images_raw):
        what = f"{path.name} images[{index}]"
        image_id = _int(_field(img, "image_id", what), f"{what} image_id")
        file_name = _field(img, "file_name", what)
        if not isinstance(file_name, str) or not _FILE_NAME.fullmatch(file_name) or ".." in file_name:
            shown = json.dumps(file_name)[:60] if isinstance(file_name, str) else type(file_name).__name__
            raise DataError(f"{what}: file_name must be a plain file name, got {shown}")
        phase = _field(img, "phase", what)
        if not isinstance(phase, str):
            raise DataError(f"{what}: phase must be a string")
        images[image_id] = {
            "file_name": file_name,
            "height": _int(_field(img, "height", what), f"{what} height", 1, MAX_SIDE),
            "width": _int(_field(img, "width", what), f"{what} width", 1, MAX_SIDE),
            "phase": phase,
        }
    annotations: dict[int, tuple[int, int, tuple[int, int], str]] = {}  # id -> (image id, category, size, counts)
    for index, ann in enumerate(annotations_raw):
        what = f"{path.name} annos_segmentation[{index}]"
        ann_id = _int(_field(ann, "id", what), f"{what} id")
        image_id = _int(_field(ann, "image_id", what), f"{what} image_id")
        category_id = _int(_field(ann, "category_id", what), f"{what} category_id")
        size, counts = _segmentation(_field(ann, "segmentation", what), f"{what} (id {ann_id})")
        annotations[ann_id] = (image_id, category_id, size, counts)
    by_image: dict[int, list[Annotation]] = {image_id: [] for image_id in images}
    for ann_id, (image_id, category_id, size, counts) in annotations.items():
        if image_id not in by_image:  # the detail API's index fails on it (KeyError)
            raise DataError(f"{path.name}: annotation {ann_id} names image_id {image_id}, which is not in 'images'")
        by_image[image_id].append((ann_id, category_id, size, counts))

    seen: dict[str, int] = {}
    out = []
    for image_id, img in images.items():
        if img["file_name"] in seen:
            raise DataError(f"{path.name}: images {seen[img['file_name']]} and {image_id} are both {img['file_name']}")
        seen[img["file_name"]] = image_id
        out.append(DetailImage(image_id, img["file_name"], img["height"], img["width"], img["phase"],
                               tuple(by_image[image_id])))  # fmt: skip
    return out
