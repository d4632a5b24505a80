"""PASCAL Context labels from ``trainval_merged.json``, painted as the detail API's ``getMask`` does.

Everything the library does is checked against code written here independently, from the detail
API's and PyTorch-Encoding's published source: masks are drawn with PIL (polygons, ellipses,
rectangles), encoded with a port of maskApi.c's ``rleEncode`` + ``rleToString``, decoded back by a
character-by-character port of ``rleFrString`` + ``rleDecode``, painted by a transcription of
``getMask``'s loop (float64 zeros, ``mask[np.nonzero(m)] = category_id``, annotations keyed by id)
and mapped with the reference's own ``_mapping`` (typed here unsorted, as in
encoding/datasets/pcontext.py), ``np.digitize(right=True)`` and ``mask - 1``. A few RLE strings
are literals produced by the real detail API (its _mask extension built from zhanghang1989/detail-api).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import scipy.io
from helpers import one_error_line, usage_error_line
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.prepare import PrepareOptions, prepare
from encnet_core.data.sources import detail_masks, pcontext
from encnet_core.data.sources.detail_masks import decode_rle, paint_mask, read_detail_json
from encnet_core.errors import DataError


def _data_fixtures() -> ModuleType:
    name = "encnet_tests_data_fixtures"  # tests/data/conftest.py under its own name (see test_prepare.py)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("conftest.py"))
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fx = _data_fixtures()
Built, Server = fx.Built, fx.Server
JSON_NAME = "trainval_merged.json"

# encoding/datasets/pcontext.py, ContextSegmentation._mapping before np.sort, as published
REFERENCE_MAPPING = [
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295,
    296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347,
    220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
]  # fmt: skip


# ----------------------------------------------------------------------------- independent reference code


def rle_string(mask: np.ndarray) -> str:
    """The compressed RLE of a 0/1 mask: maskApi.c's rleEncode (column-major runs from 0) + rleToString."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    if not counts:
        counts = [0]
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def rle_decode_loop(size: list[int], counts: str) -> np.ndarray:
    """maskApi.c's rleFrString and rleDecode, one character and one pixel at a time."""
    height, width = size
    cnts: list[int] = []
    s = counts.encode()
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[len(cnts) - 2]
        cnts.append(x % (1 << 32))
    pixels: list[int] = []
    value = 0
    for count in cnts:
        pixels.extend([value] * count)
        value = 1 - value
    assert len(pixels) == height * width
    return np.array(pixels, dtype=np.uint8).reshape((height, width), order="F")


def reference_get_mask(data: dict, image_id: int) -> np.ndarray:
    """Detail.getMask(img) with no category: its index (dicts keyed by id) and its painting loop."""
    images = {}
    for img in data["images"]:
        images[img["image_id"]] = img
    segmentations = {}
    for segm in data["annos_segmentation"]:
        segmentations[segm["id"]] = segm
    img = images[image_id]
    mask = np.zeros((img["height"], img["width"]))
    for ann in segmentations.values():
        if ann["image_id"] == image_id:
            m = rle_decode_loop(ann["segmentation"]["size"], ann["segmentation"]["counts"])
            mask[np.nonzero(m)] = ann["category_id"]
    return mask


def reference_labels(mask: np.ndarray) -> np.ndarray:
    """ContextSegmentation._class_to_index then _mask_transform (-1 stored as 255)."""
    mapping = np.sort(np.array(REFERENCE_MAPPING))
    key = np.array(range(len(mapping))).astype("uint8")
    for value in np.unique(mask):
        assert value in mapping
    index = np.digitize(mask.ravel(), mapping, right=True)
    target = key[index].reshape(mask.shape).astype("int32") - 1
    return np.where(target == -1, 255, target).astype(np.uint8)


def reference_split(data: dict, phase: str) -> list[dict]:
    """Detail(..., phase).getImgs(): the images keyed by image_id, in order, whose phase matches."""
    images = {}
    for img in data["images"]:
        images[img["image_id"]] = img
    return [img for img in images.values() if img["phase"] == phase]


# ----------------------------------------------------------------------------- building annotation files


def draw(height: int, width: int, shape: str, rng: np.random.Generator) -> np.ndarray:
    """A (height, width) 0/1 mask with one PIL-drawn polygon, ellipse or rectangle."""
    canvas = Image.new("L", (width, height), 0)
    pen = ImageDraw.Draw(canvas)
    xs = np.sort(rng.integers(-3, width + 3, 2))
    ys = np.sort(rng.integers(-3, height + 3, 2))
    if shape == "polygon":
        points = [(float(rng.uniform(-2, width + 2)), float(rng.uniform(-2, height + 2))) for _ in range(6)]
        pen.polygon(points, fill=1)
    elif shape == "ellipse":
        pen.ellipse([int(xs[0]), int(ys[0]), int(xs[1]) + 1, int(ys[1]) + 1], fill=1)
    else:
        pen.rectangle([int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])], fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def image_entry(image_id: str, jpeg: bytes, phase: str) -> dict:
    with Image.open(io.BytesIO(jpeg)) as img:
        width, height = img.size
    return {"image_id": int(image_id.replace("_", "")), "file_name": f"{image_id}.jpg", "height": height,
            "width": width, "phase": phase, "date_captured": "2010-03-03"}  # fmt: skip


def annotation(ann_id: int, image: dict, category: int, mask: np.ndarray) -> dict:
    return {"id": ann_id, "image_id": image["image_id"], "category_id": category, "iscrowd": 0, "area": int(mask.sum()),
            "bbox": [0, 0, 1, 1], "segmentation": {"size": list(mask.shape), "counts": rle_string(mask)},
            "parts": [{"part_id": 7, "segmentation": {"size": list(mask.shape), "counts": rle_string(mask)}}]}  # fmt: skip


def skeleton(images: list[dict], annotations: list[dict]) -> dict:
    """The top level of trainval_merged.json, with the members getMask does not read filled in."""
    categories = sorted({a["category_id"] for a in annotations} | {2, 284})
    return {
        "info": {"description": "PASCAL in Detail (test fixture)"},
        "images": images,
        "annos_segmentation": annotations,
        "annos_occlusion": [{"image_id": i["image_id"], "imsize": [i["height"], i["width"]], "ne": 0,
                             "edges": {"indices": [[1, 2, 3]], "edgelabel": [1]}} for i in images],
        "annos_boundary": [{"image_id": i["image_id"], "boundary_mask": {"size": [i["height"], i["width"]],
                            "counts": rle_string(np.zeros((i["height"], i["width"])))}} for i in images],
        "categories": [{"category_id": c, "name": f"category{c}", "supercategory": "object", "onlysemantic": 0,
                        "parts": [7]} for c in categories],
        "parts": [{"part_id": 7, "name": "body", "superpart": "none"}],
    }  # fmt: skip


def detail_json(voc2010: fx.Layout) -> dict:
    """trainval_merged.json for the VOC 2010 fixture images: overlapping PIL shapes of benchmark ids and 0.

    The phases leave out one VOC train image (as the real file lists 4996 of the 4998) and add a test
    image; annotations of different images interleave; one id repeats (its last value counts); a
    non-benchmark category (100) is painted over completely, which the reference accepts.
    """
    rng = np.random.default_rng(12)
    train, val = voc2010.splits["train"], voc2010.splits["val"]
    phases = {train[2]: "train", val[1]: "val", train[0]: "train", val[0]: "val", "2010_009999": "test"}
    images = [image_entry(i, voc2010.images[i], phase) for i, phase in phases.items()]
    benchmark = [label_id for label_id, _ in fx.CONTEXT59]
    annotations = []
    for _round in range(3):
        for image in images:
            for _ in range(3):
                category = int(rng.choice(benchmark + [0]))
                shape = ("polygon", "ellipse", "rectangle")[len(annotations) % 3]
                mask = draw(image["height"], image["width"], shape, rng)
                annotations.append(annotation(1000 + len(annotations), image, category, mask))
    first = images[0]
    hidden = np.zeros((first["height"], first["width"]), np.uint8)
    hidden[:4, :4] = 1
    annotations.insert(0, annotation(5, first, 100, hidden))  # painted over by the next one
    annotations.insert(1, annotation(6, first, 458, hidden))
    repeated = annotation(1003, first, 2, draw(first["height"], first["width"], "ellipse", rng))
    annotations.append(repeated)  # replaces annotation 1003, painted at its first position
    return skeleton(images, annotations)


def expected_masks(data: dict) -> dict[str, tuple[list[str], dict[str, np.ndarray]]]:
    """split -> (names in the reference's order, name -> stored labels), by the reference code above."""
    out = {}
    for split in ("train", "val"):
        images = reference_split(data, split)
        names = [img["file_name"].removesuffix(".jpg") for img in images]
        labels = {name: reference_labels(reference_get_mask(data, img["image_id"])) for name, img in zip(names, images, strict=True)}
        out[split] = (names, labels)
    return out


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def sha1(path: Path) -> dict[str, str]:
    return {"sha1": hashlib.sha1(path.read_bytes()).hexdigest()}


def run(tmp_path: Path, **options) -> tuple:
    warnings: list[str] = []
    defaults = {"out": tmp_path / "out.h5", "root": tmp_path / "cache", "workers": 1}
    result = prepare("pcontext", PrepareOptions(**{**defaults, **options}), warn=warnings.append)
    return result, warnings


def run_json(tmp_path: Path, voc2010: Built, path: Path, **options) -> tuple:
    """prepare pcontext --labels json from local files, both pinned to their checksums."""
    archives = {voc2010.name: voc2010.path, JSON_NAME: path}
    checksums = {voc2010.name: {"md5": voc2010.md5}, JSON_NAME: sha1(path)}
    return run(tmp_path, archives=archives, checksums=checksums, params={"labels": "json"}, **options)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------- RLE decoding


def test_decode_rle_matches_strings_from_the_detail_api() -> None:
    """Strings the real detail API (_mask.encode) produced for these masks, negative deltas included."""
    np.testing.assert_array_equal(decode_rle((3, 2), "11110"), [[0, 1], [1, 1], [0, 0]])
    small = np.zeros((4, 3), np.uint8)
    small[0, 0] = small[3, 2] = 1
    small[1:3, 1] = 1
    np.testing.assert_array_equal(decode_rle((4, 3), "01410O"), small)
    big = np.zeros((375, 500), np.uint8)
    big[300:302, 450:452] = 1
    big[5, 3] = 1
    big[:, 499] = 1
    np.testing.assert_array_equal(decode_rle((375, 500), r"ZS11_oS51V\lJ0]m`0e;"), big)


@pytest.mark.parametrize("seed", range(4))
def test_decode_rle_inverts_the_encoder_on_drawn_shapes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for index in range(40):
        height, width = (int(v) for v in rng.integers(1, 90, 2))
        if index % 10 == 0:
            height, width = (int(v) for v in rng.integers(300, 1200, 2))  # counts of several characters
        mask = draw(height, width, ("polygon", "ellipse", "rectangle")[index % 3], rng)
        if index % 7 == 0:
            mask = (rng.random((height, width)) < 0.5).astype(np.uint8)
        counts = rle_string(mask)
        decoded = decode_rle((height, width), counts)
        assert decoded.dtype == np.uint8 and decoded.shape == (height, width)
        np.testing.assert_array_equal(decoded, mask)
        if height * width < 20_000:
            np.testing.assert_array_equal(rle_decode_loop([height, width], counts), decoded)


def test_decode_rle_of_empty_and_full_masks() -> None:
    for height, width in ((0, 5), (5, 0), (1, 1), (7, 3)):
        for value in (0, 1):
            mask = np.full((height, width), value, np.uint8)
            np.testing.assert_array_equal(decode_rle((height, width), rle_string(mask)), mask)
    assert decode_rle((0, 0), "").shape == (0, 0)


# ----------------------------------------------------------------------------- getMask and the mapping


def test_the_mapping_is_the_references_digitize() -> None:
    """Every value the reference accepts maps to the same class here; the rest are refused."""
    values = np.array(REFERENCE_MAPPING, dtype=np.int64).reshape(6, 10)
    lut = pcontext.lookup_table()
    np.testing.assert_array_equal(pcontext.class_index(values, lut), reference_labels(values.astype(float)))
    assert pcontext.class_index(np.zeros((2, 2), np.int64), lut).tolist() == [[255, 255], [255, 255]]
    for bad in (1, 3, 100, 459, 460, -1):
        with pytest.raises(DataError, match=f"category_id {bad} is neither 0 nor one of the 59"):
            pcontext.class_index(np.array([[2, bad]]), lut, "image 7")


def test_paint_follows_get_mask_order_overlaps_and_duplicates(voc2010_tar: Built, tmp_path: Path) -> None:
    data = detail_json(voc2010_tar.layout)
    images = read_detail_json(write_json(tmp_path / JSON_NAME, data))
    assert [img.file_name for img in images] == [i["file_name"] for i in data["images"]]
    lut = pcontext.lookup_table()
    overlapping = 0
    for img in images:
        painted = paint_mask(img.height, img.width, img.annotations)
        expected = reference_get_mask(data, img.image_id)
        np.testing.assert_array_equal(painted, expected.astype(np.int64))
        np.testing.assert_array_equal(pcontext.class_index(painted, lut), reference_labels(expected))
        covered = sum(rle_decode_loop(list(a[2]), a[3]).astype(int) for a in img.annotations)
        overlapping += int((np.asarray(covered) > 1).sum())
    assert overlapping > 100  # the fixture really overlaps
    first = images[0]
    ids = [a[0] for a in first.annotations]
    # 1003 was the second image's; repeated for the first image, it keeps its place in the file's order
    # (after 5, 6, 1000-1002) and takes its last value: the first image's now, category 2
    assert ids[:6] == [5, 6, 1000, 1001, 1002, 1003] and first.annotations[5][1] == 2
    assert 1003 not in [a[0] for a in images[1].annotations]


def test_an_rle_smaller_than_the_image_paints_its_top_left() -> None:
    small = np.ones((3, 4), np.uint8)
    painted = paint_mask(5, 6, [(1, 2, (3, 4), rle_string(small))])
    expected = np.zeros((5, 6), np.int64)
    expected[:3, :4] = 2
    np.testing.assert_array_equal(painted, expected)
    with pytest.raises(DataError, match="its 5x4 RLE paints pixels outside the 4x6 image") as info:
        paint_mask(4, 6, [(9, 2, (5, 4), rle_string(np.ones((5, 4), np.uint8)))], "image 7")
    assert one_line(info).startswith("image 7, annotation 9: ")
    empty_rows = np.zeros((5, 4), np.uint8)
    empty_rows[:2] = 1  # a larger RLE whose pixels all fall inside: numpy paints them, so do we
    assert paint_mask(4, 6, [(9, 2, (5, 4), rle_string(empty_rows))]).sum() == 2 * 8


# ----------------------------------------------------------------------------- hostile files


def small_file() -> dict:
    image = {"image_id": 2008000010, "file_name": "2008_000010.jpg", "height": 6, "width": 5, "phase": "train"}
    mask = np.zeros((6, 5), np.uint8)
    mask[1:4, 2:] = 1
    return {"images": [image], "annos_segmentation": [annotation(1, image, 2, mask)]}


def _set(path: str, value: object):
    def change(data: dict) -> dict:
        target = data
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[keys[-1]] = value
        return data

    return change


READ_ERRORS = [
    (_set("images", {"a": 1}), "'images' and 'annos_segmentation' must be lists"),
    (lambda d: {"images": []}, "trainval_merged.json has no 'annos_segmentation'"),
    (_set("images.0.height", "6"), "images[0] height must be an integer from 1 to 8192, got str"),
    (_set("images.0.height", 100_000), "images[0] height must be an integer from 1 to 8192, got 100000"),
    (_set("images.0.width", 0), "images[0] width must be an integer from 1 to 8192, got 0"),
    (_set("images.0.image_id", True), "images[0] image_id must be an integer"),
    (_set("images.0.file_name", "../../etc/passwd"), "file_name must be a plain file name"),
    (_set("images.0.file_name", "a/b.jpg"), "file_name must be a plain file name"),
    (_set("images.0.phase", 1), "images[0]: phase must be a string"),
    (_set("annos_segmentation.0.id", 1.5), "annos_segmentation[0] id must be an integer"),
    (_set("annos_segmentation.0.category_id", 2.0), "category_id must be an integer"),
    (_set("annos_segmentation.0.image_id", 7), "annotation 1 names image_id 7, which is not in 'images'"),
    (_set("annos_segmentation.0.segmentation", [[1.0, 1.0, 4.0, 1.0, 4.0, 4.0]]),
     "segmentation is a list (polygons); getMask decodes only compressed RLE"),
    (_set("annos_segmentation.0.segmentation.counts", [6, 3, 21]), "getMask does not decode uncompressed RLE"),
    (_set("annos_segmentation.0.segmentation.size", [6]), "segmentation size must be [height, width]"),
    (_set("annos_segmentation.0.segmentation.size", [10**6, 10**6]), "segmentation height must be an integer from 0 to 8192"),
    (_set("annos_segmentation.0.segmentation.counts", "1" * 1000), "RLE counts of 1000 characters are too long for 6x5"),
    (_set("annos_segmentation.0.segmentation", "RLE"), "segmentation must be a JSON object, got str"),
    (lambda d: {**d, "images": [*d["images"], dict(d["images"][0], image_id=3)]},
     "images 2008000010 and 3 are both 2008_000010.jpg"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), READ_ERRORS)
def test_a_hostile_file_is_refused_in_one_line_when_read(change, message: str, tmp_path: Path) -> None:
    path = write_json(tmp_path / JSON_NAME, change(small_file()))
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_detail_json(path)
    one_line(info)


PAINT_ERRORS = [
    ("3", "RLE counts add up to 3 pixels, not 6x5 = 30"),
    ("VO1", "RLE counts add up to"),  # a negative first count wraps to 2**32 - 1 as in C
    ("6321;", "RLE counts add up to"),
    ("o", "RLE counts end in the middle of a count (truncated)"),
    ("0" * 40, "RLE has 40 counts for 6x5 pixels"),
    ("p0", "RLE counts hold a character outside"),
    ("!", "RLE counts hold a character outside"),
    ("abcdefg1", "an RLE count of 8 characters is too large"),
    ("é", "RLE counts hold a character outside"),
    ("6\u00003", "RLE counts hold a character outside"),
]


@pytest.mark.parametrize(("counts", "message"), PAINT_ERRORS)
def test_bad_rle_is_refused_in_one_line_when_painted(counts: str, message: str, tmp_path: Path) -> None:
    path = write_json(tmp_path / JSON_NAME, _set("annos_segmentation.0.segmentation.counts", counts)(small_file()))
    (img,) = read_detail_json(path)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        paint_mask(img.height, img.width, img.annotations, "image 2008000010")
    assert one_line(info).startswith("image 2008000010, annotation 1: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html>503 Service Unavailable</html>", "not a whole JSON object"),
        ('{"images": [], "annos_segmentation": [', "not a whole JSON object"),
        ('{"images": [] "annos_segmentation": []}', "not valid JSON"),
        ('{"images": ' + "[" * 200_000 + "]" * 200_000 + "}", "not valid JSON"),
        ('{"images": [{"image_id": 1' + "0" * 5000 + "}]}", "not valid JSON"),
        ("[{}]", "not a whole JSON object"),
    ],
)
def test_a_file_that_is_not_an_annotation_file_is_one_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / JSON_NAME
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_detail_json(path)
    one_line(info)


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path: Path, monkeypatch) -> None:
    path = write_json(tmp_path / JSON_NAME, small_file())
    monkeypatch.setattr(detail_masks, "MAX_JSON_BYTES", 100)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read the file"))
    with pytest.raises(DataError, match="bytes, over the limit of 100 bytes for an annotation file"):
        read_detail_json(path)


# ----------------------------------------------------------------------------- prepare pcontext --labels json


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory, voc2010_tar: Built) -> tuple[Path, dict]:
    data = detail_json(voc2010_tar.layout)
    return write_json(tmp_path_factory.mktemp("detail") / JSON_NAME, data), data


def assert_stored(out: Path, data: dict, voc2010: fx.Layout) -> None:
    for split, (names, labels) in expected_masks(data).items():
        fx.assert_split_matches(out, split, names, voc2010.images, labels, 59)


def test_prepare_json_labels_from_a_loopback_server(
    http_server: Server, voc2010_tar: Built, merged: tuple[Path, dict], tmp_path: Path
) -> None:
    path, data = merged
    urls = {built.path.name: http_server.serve(built.path) for built in (voc2010_tar,)}
    urls[JSON_NAME] = http_server.serve(path)
    result, warnings = run(
        tmp_path, urls=urls, checksums={voc2010_tar.name: {"md5": voc2010_tar.md5}, JSON_NAME: sha1(path)},
        params={"labels": "json"},
    )
    assert result.counts == {"train": 2, "val": 2} and result.classes == [n for _, n in fx.CONTEXT59]
    assert warnings == ["split 'train' has 2 images, the reference has 4996",
                        "split 'val' has 2 images, the reference has 5104"]  # fmt: skip
    train, val = voc2010_tar.layout.splits["train"], voc2010_tar.layout.splits["val"]
    assert expected_masks(data)["train"][0] == [train[2], train[0]]  # the file's order, phase train only
    assert expected_masks(data)["val"][0] == [val[1], val[0]]
    assert_stored(result.out, data, voc2010_tar.layout)
    with h5py_file(result.out) as handle:
        sources = json.loads(handle.attrs["sources"])
    assert sources["labels"] == "json" and [f["file"] for f in sources["files"]] == [voc2010_tar.name, JSON_NAME]
    assert sources["files"][1]["sha1"] == sha1(path)["sha1"]


def h5py_file(path: Path):
    import h5py

    return h5py.File(path, "r")


def test_json_annotations_are_split_once_and_reused(
    voc2010_tar: Built, merged: tuple[Path, dict], tmp_path: Path, monkeypatch
) -> None:
    path, data = merged
    run_json(tmp_path, voc2010_tar, path)
    monkeypatch.setattr(pcontext, "read_detail_json", lambda p: pytest.fail("read the JSON again"))
    result, _ = run_json(tmp_path, voc2010_tar, path, out=tmp_path / "again.h5")
    assert_stored(result.out, data, voc2010_tar.layout)
    assert [p.name for p in (tmp_path / "cache" / "pcontext-json").iterdir()] == [
        hashlib.sha256(path.read_bytes()).hexdigest()[:16] + f"-{path.stat().st_size}"
    ]  # one complete folder, no temporary one left


def test_json_and_mat_labels_agree_where_the_json_holds_the_label_maps(
    voc2010_tar: Built, context_tgz: Built, tmp_path: Path
) -> None:
    """A JSON with one annotation per benchmark id present in each .mat LabelMap gives the .mat's masks;
    by design the splits come from the JSON's phases (here it leaves out one VOC train image)."""
    voc2010 = voc2010_tar.layout
    train, val = voc2010.splits["train"], voc2010.splits["val"]
    images, annotations = [], []
    benchmark = {label_id for label_id, _ in fx.CONTEXT59}
    for image_id, phase in [(i, "train") for i in train[:-1]] + [(i, "val") for i in val]:
        image = image_entry(image_id, voc2010.images[image_id], phase)
        images.append(image)
        ids = scipy.io.loadmat(io.BytesIO(context_tgz.layout.members[f"trainval/{image_id}.mat"]))["LabelMap"]
        for label_id in np.unique(ids)[::-1]:  # any order: the regions do not overlap
            if int(label_id) in benchmark:
                mask = (ids == label_id).astype(np.uint8)
                annotations.append(annotation(len(annotations) + 1, image, int(label_id), mask))
    path = write_json(tmp_path / JSON_NAME, skeleton(images, annotations))
    from_json, _ = run_json(tmp_path, voc2010_tar, path, out=tmp_path / "json.h5")
    from_mat, _ = run(tmp_path, archives={voc2010_tar.name: voc2010_tar.path, "trainval.tar.gz": context_tgz.path},
                      verify=False, params={"labels": "mat"}, out=tmp_path / "mat.h5")  # fmt: skip
    assert from_mat.counts == {"train": 3, "val": 2} and from_json.counts == {"train": 2, "val": 2}
    for split in ("train", "val"):
        stored_json, stored_mat = fx.stored_split(from_json.out, split), fx.stored_split(from_mat.out, split)
        mat_masks = dict(zip(stored_mat["names"], stored_mat["masks"], strict=True))
        assert stored_json["names"] == [i for i in voc2010.splits[split] if i != train[-1]]
        for name, mask in zip(stored_json["names"], stored_json["masks"], strict=True):
            np.testing.assert_array_equal(mask, mat_masks[name], err_msg=name)
            np.testing.assert_array_equal(mask, context_tgz.layout.labels[name])


def test_an_unverified_json_must_be_whole(voc2010_tar: Built, merged: tuple[Path, dict], tmp_path: Path) -> None:
    path, data = merged
    cut = tmp_path / "cut" / JSON_NAME
    cut.parent.mkdir()
    cut.write_bytes(path.read_bytes()[:-10])
    archives = {voc2010_tar.name: voc2010_tar.path}
    with pytest.raises(DataError, match="not a whole JSON object") as info:
        run(tmp_path, archives={**archives, JSON_NAME: cut}, verify=False, params={"labels": "json"})
    assert str(cut) in one_line(info)
    result, warnings = run(tmp_path, archives={**archives, JSON_NAME: path}, verify=False, params={"labels": "json"})
    assert f"checksum verification skipped for {path}" in warnings  # a JSON file is not refused as "no archive"
    assert_stored(result.out, data, voc2010_tar.layout)


def test_a_category_outside_the_59_is_refused_for_its_image(
    voc2010_tar: Built, merged: tuple[Path, dict], tmp_path: Path
) -> None:
    _, data = merged
    data = copy.deepcopy(data)
    train_image = next(i for i in data["images"] if i["phase"] == "train")
    for victim in data["annos_segmentation"]:  # one whose pixels stay visible, so that the reference's assert fails
        if victim["image_id"] == train_image["image_id"]:
            victim["category_id"], before = 3, victim["category_id"]  # labels.txt's id 3 is not a benchmark class
            if 3 in reference_get_mask(data, train_image["image_id"]):
                break
            victim["category_id"] = before
    path = write_json(tmp_path / JSON_NAME, data)
    with pytest.raises(DataError, match="category_id 3 is neither 0 nor one of the 59 classes' ids") as info:
        run_json(tmp_path, voc2010_tar, path)
    assert "pass --skip-bad" in one_line(info)
    result, _ = run_json(tmp_path, voc2010_tar, path, skip_bad=True)
    assert [s["name"] for s in result.skipped] == [train_image["file_name"][:-4]]


def test_an_image_the_voc_archive_lacks_is_one_line(voc2010_tar: Built, tmp_path: Path) -> None:
    data = small_file()
    data["images"][0]["file_name"] = "2011_000001.jpg"
    path = write_json(tmp_path / JSON_NAME, data)
    with pytest.raises(DataError, match="trainval_merged.json lists 2011_000001.jpg, which VOCtrainval_03-May-2010.tar does not hold"):  # noqa: E501
        run_json(tmp_path, voc2010_tar, path)


def test_the_json_source_is_the_default_with_the_references_checksum() -> None:
    assert pcontext.pcontext_remotes({}) == (pcontext.VOC2010, pcontext.TRAINVAL_MERGED)
    assert pcontext.PCONTEXT.files({"labels": "mat"}) == (pcontext.VOC2010, pcontext.CONTEXT_LABELS)
    # the URL and sha1 of PyTorch-Encoding's scripts/prepare_pcontext.py
    assert pcontext.TRAINVAL_MERGED.url == "https://codalabuser.blob.core.windows.net/public/trainval_merged.json"
    assert pcontext.TRAINVAL_MERGED.checksums() == {"sha1": "169325d9f7e9047537fedca7b04de4dddf10b881"}


# ----------------------------------------------------------------------------- the command


runner = CliRunner()


def test_cli_prepare_pcontext_defaults_to_json_labels(
    http_server: Server, voc2010_tar: Built, merged: tuple[Path, dict], tmp_path: Path
) -> None:
    path, data = merged
    voc_url, json_url = http_server.serve(voc2010_tar.path), http_server.serve(path)
    out = tmp_path / "pc.h5"
    result = runner.invoke(app, [str(a) for a in (
        "prepare", "pcontext", "--out", out, "--root", tmp_path / "cache", "--workers", 1, "--no-progress",
        "--url", f"{voc2010_tar.name}={voc_url}", "--url", f"{JSON_NAME}={json_url}",
        "--checksum", f"{voc2010_tar.name}=md5:{voc2010_tar.md5}", "--checksum", f"{JSON_NAME}=sha1:{sha1(path)['sha1']}",
    )])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_stored(out, data, voc2010_tar.layout)


def test_cli_hostile_json_and_misplaced_labels_are_one_line(voc2010_tar: Built, tmp_path: Path) -> None:
    path = write_json(tmp_path / JSON_NAME, _set("annos_segmentation.0.segmentation", [[1, 2, 3, 4, 5, 6]])(small_file()))
    out = tmp_path / "pc.h5"
    result = runner.invoke(app, [str(a) for a in (
        "prepare", "pcontext", "--labels", "json", "--out", out, "--root", tmp_path / "cache", "--no-progress",
        "--archive", voc2010_tar.path, "--archive", f"{JSON_NAME}={path}", "--checksum", f"{JSON_NAME}=sha1:{sha1(path)['sha1']}",
        "--checksum", f"{voc2010_tar.name}=md5:{voc2010_tar.md5}",
    )])  # fmt: skip
    assert "segmentation is a list (polygons)" in one_error_line(result) and not out.exists()
    result = runner.invoke(app, ["prepare", "ade20k", "--labels", "mat", "--out", str(out)])
    assert "No such option: --labels" in usage_error_line(result)  # pcontext's option; ade20k's parser refuses it
    result = runner.invoke(app, ["prepare", "pcontext", "--labels", "png", "--out", str(out)])
    assert result.exit_code == 2
