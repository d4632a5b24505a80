"""``encnet prepare coco``: COCO 2017 reduced to the 20 VOC classes, pixel for pixel as the reference does it.

The test builds the three official zips (train2017.zip, val2017.zip, annotations_trainval2017.zip) with
a few 40-48 px images and instance files that hold multi-part polygons, an uncompressed-RLE crowd
region, a compressed RLE, a non-VOC category, overlapping instances and images the 1000-pixel filter
drops, serves them from 127.0.0.1, prepares them, and compares every stored mask with the reference's
own ``COCOSegmentation._gen_seg_mask`` (torch-encoding 1.2.1, run with pycocotools) and, for the simple
shapes, with the pixels worked out by hand.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, random_image, stored_split
from helpers import one_error_line
from reference_code import _StandIn, reference_package
from typer.testing import CliRunner

from encnet_cli.main import app

mask_api = pytest.importorskip("pycocotools.mask")

# VOC class i <- COCO category CAT_LIST[i]: typed here from the reference's coco.py docstring table
PERSON, DOG, CAR, BOTTLE, CHAIR = 1, 18, 3, 44, 62  # COCO category ids
VOC = {PERSON: 15, DOG: 12, CAR: 7, BOTTLE: 5, CHAIR: 9}
BACKPACK = 27  # not a VOC class


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs, starting with zeros) of a 0/1 mask."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


CROWD = np.zeros((40, 48), dtype=np.uint8)
CROWD[15:40, :] = 1  # 1200 px
BOTTLE_REGION = np.zeros((40, 40), dtype=np.uint8)
BOTTLE_REGION[10:40, 4:35] = 1  # 930 px

# (split, file name, height, width, [(category, segmentation, iscrowd)])
IMAGES = [
    ("train", "000000000001.jpg", 40, 48, [
        (PERSON, [rect(2, 2, 20, 12), rect(30, 5, 40, 15)], 0),  # two parts
        (DOG, [rect(10, 8, 26, 30)], 0),  # overlaps the person: the person (first) wins
        (BACKPACK, [rect(0, 0, 48, 40)], 0),  # not VOC: stays 0
        (CAR, uncompressed_rle(CROWD), 1),  # crowd, painted like the others
    ]),
    ("train", "000000000002.jpg", 40, 40, [(PERSON, [rect(10, 10, 30, 30)], 0)]),  # 400 px: filtered
    ("train", "000000000003.jpg", 40, 40, []),  # nothing: filtered
    ("train", "000000000004.jpg", 40, 40, [(BACKPACK, [rect(0, 0, 40, 40)], 0)]),  # only non-VOC: filtered
    ("val", "000000000010.jpg", 40, 40, [
        (CHAIR, [rect(0, 0, 10, 10)], 0),
        (BOTTLE, compressed_rle(BOTTLE_REGION), 0),
    ]),
    ("val", "000000000011.jpg", 40, 40, [(PERSON, [rect(4, 4, 38, 36)], 0)]),  # 32 x 34 = 1088 px: kept
    ("val", "000000000012.jpg", 40, 40, [(DOG, [rect(0, 0, 25, 40)], 0)]),  # exactly 1000 px: filtered
]  # fmt: skip
KEPT = {"train": ["000000000001"], "val": ["000000000010", "000000000011"]}


def by_hand(name: str) -> np.ndarray | None:
    """What pycocotools fills for the axis-aligned rectangles: x0 <= x < x1, y0 <= y < y1."""
    if name == "000000000011":
        mask = np.zeros((40, 40), dtype=np.uint8)
        mask[4:36, 4:38] = 15
        return mask
    if name == "000000000010":
        mask = np.zeros((40, 40), dtype=np.uint8)
        mask[0:10, 0:10] = 9
        mask[(BOTTLE_REGION == 1) & (mask == 0)] = 5
        return mask
    return None


def instances(split: str, table: list = IMAGES) -> dict:
    images, annotations = [], []
    for i, (s, file_name, height, width, anns) in enumerate(table):
        if s != split:
            continue
        images.append({"id": 100 + i, "file_name": file_name, "height": height, "width": width})
        for category, segmentation, crowd in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": category,
                                "segmentation": segmentation, "iscrowd": crowd, "area": 0.0, "bbox": [0, 0, 1, 1]})  # fmt: skip
    categories = [{"id": c, "name": str(c), "supercategory": ""} for c in (PERSON, DOG, CAR, BOTTLE, CHAIR, BACKPACK)]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build(folder: Path, table: list) -> dict:
    """The three zips of ``table``'s images, and the image file bytes by name."""
    rng = np.random.default_rng(23)
    image_bytes: dict[str, bytes] = {}
    zips: dict[str, dict[str, bytes]] = {"train": {}, "val": {}}
    for split, file_name, height, width, _ in table:
        data = encode(random_image(rng, height, width), "JPEG")
        image_bytes[file_name.removesuffix(".jpg")] = data
        zips[split][f"{split}2017/{file_name}"] = data
    paths = {
        "train2017.zip": write_zip(folder / "train2017.zip", zips["train"]),
        "val2017.zip": write_zip(folder / "val2017.zip", zips["val"]),
        "annotations_trainval2017.zip": write_zip(folder / "annotations_trainval2017.zip", {
            f"annotations/instances_{split}2017.json": json.dumps(instances(split, table)).encode()
            for split in ("train", "val")
        }),
    }  # fmt: skip
    return {"paths": paths, "images": image_bytes}


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build(tmp_path_factory.mktemp("coco"), IMAGES)


def reference_masks(tmp_path: Path, table: list = IMAGES) -> dict[str, np.ndarray]:
    """Every image's mask as the reference's ``COCOSegmentation._gen_seg_mask`` makes it (pycocotools)."""
    reference_package(tmp_path / "torch_encoding")
    added = "tqdm" not in sys.modules and importlib.util.find_spec("tqdm") is None
    if added:
        sys.modules["tqdm"] = _StandIn("tqdm")  # coco.py imports trange at the top; _gen_seg_mask does not use it
    try:
        segmentation = importlib.import_module("encoding.datasets.coco").COCOSegmentation
    finally:
        if added:
            del sys.modules["tqdm"]
    this = types.SimpleNamespace(coco_mask=mask_api, CAT_LIST=segmentation.CAT_LIST)
    masks = {}
    for _, file_name, height, width, anns in table:
        # the reference's frPyObjects raises on a compressed RLE (never in the official files): its
        # uncompressed form, the same pixels, stands in for it
        target = [{"category_id": c, "segmentation": s if not isinstance(s, dict) or isinstance(s["counts"], list)
                   else uncompressed_rle(mask_api.decode({"size": s["size"], "counts": s["counts"].encode()}))}
                  for c, s, _ in anns]  # fmt: skip
        masks[file_name.removesuffix(".jpg")] = segmentation._gen_seg_mask(this, target, height, width)
    return masks


def error_line(result) -> str:
    """The one error line (after the run's warnings), with no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and result.output.rstrip().endswith(lines[0].rstrip()), result.output
    return lines[0]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cat_list_is_the_references() -> None:
    from encnet_core.data.sources.coco import CAT_LIST

    assert list(CAT_LIST) == [0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]
    assert all(CAT_LIST[v] == c for c, v in VOC.items())


def test_prepare_coco_matches_the_reference_pixel_for_pixel(http_server, coco: dict, tmp_path: Path) -> None:
    out, root = tmp_path / "coco.h5", tmp_path / "cache"
    args = []
    for name, path in coco["paths"].items():
        args += ["--url", f"{name}={http_server.serve(path)}", "--checksum", f"{name}=md5:{md5(path)}"]
    result = invoke("prepare", "coco", *args, "--root", root, "--out", out, "--workers", 1, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"train": 1, "val": 2} and summary["filtered"] == {"train": 3, "val": 1}
    assert summary["skipped"] == [] and "split 'train' has 4 images, the reference has 118287" in summary["warnings"]
    reference = reference_masks(tmp_path)
    for split, names in KEPT.items():
        stored = stored_split(out, split)
        assert stored["names"] == names
        for i, name in enumerate(names):
            assert stored["images"][i] == coco["images"][name]
            np.testing.assert_array_equal(stored["masks"][i], reference[name], err_msg=name)
            if by_hand(name) is not None:
                np.testing.assert_array_equal(stored["masks"][i], by_hand(name), err_msg=name)
            counts = [int((reference[name] == c).sum()) for c in range(21)]
            assert stored["class_pixels"][i].tolist() == counts
    first = reference["000000000001"]
    assert set(np.unique(first).tolist()) == {0, 7, 12, 15}  # background, car (crowd), dog, person; no backpack
    assert first[10, 15] == 15  # person and dog overlap: the first annotation wins
    for name in ("000000000002", "000000000003", "000000000004", "000000000012"):  # what _preprocess drops
        assert (reference[name] > 0).sum() <= 1000
    assert (reference["000000000012"] > 0).sum() == 1000 and (reference["000000000010"] > 0).sum() == 1030
    with __import__("h5py").File(out) as handle:
        sources = json.loads(handle.attrs["sources"])
        assert handle.attrs["dataset"] == "coco"
    assert sources["filtered"] == {"train": 3, "val": 1}


def test_worker_processes_rasterise_the_same_masks(tmp_path: Path) -> None:
    """20 val images (the pool runs from 16 items), rasterised in 2 worker processes: the reference's masks."""
    from encnet_core.data.prepare import PrepareOptions, prepare

    rng = np.random.default_rng(5)
    table = [IMAGES[0]]
    for i in range(20):
        anns = []
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, 20, 2))
            x1, y1 = x0 + int(rng.integers(8, 20)), y0 + int(rng.integers(8, 20))
            anns.append((int(rng.choice(list(VOC))), [rect(x0, y0, x1, y1), rect(x1, y0, x1 + 5, y0 + 7)], 0))
        anns.append((CAR, uncompressed_rle(np.pad(np.ones((20, 40), np.uint8), ((20, 0), (0, 0)))), 1))
        table.append(("val", f"{200 + i:012d}.jpg", 40, 40, anns))
    (tmp_path / "zips").mkdir()
    built = build(tmp_path / "zips", table)
    options = PrepareOptions(out=tmp_path / "coco.h5", root=tmp_path / "cache", archives=built["paths"],
                             download=False, verify=False, workers=2)  # fmt: skip
    result = prepare("coco", options)
    reference = reference_masks(tmp_path, table)
    kept = [name for name in reference if name.startswith("0000000002") and (reference[name] > 0).sum() > 1000]
    assert result.counts == {"train": 1, "val": len(kept)} and len(kept) >= 16
    assert result.filtered == {"train": 0, "val": 20 - len(kept)}
    stored = stored_split(options.out, "val")
    assert stored["names"] == kept
    for i, name in enumerate(kept):
        np.testing.assert_array_equal(stored["masks"][i], reference[name], err_msg=name)
        assert stored["images"][i] == built["images"][name]


@pytest.mark.parametrize(
    "segmentation",
    [
        [rect(3, 5, 39, 37), [1.5, 2.5, 30.25, 33.75]],  # a 4-number "polygon": frPyObjects reads it as a box
        [[0.5, 0.5, 39.5, 1.0, 20.0, 39.5], rect(1.3, 20.7, 39.2, 39.9)],  # fractional coordinates
    ],
)
def test_unusual_polygons_as_the_reference(tmp_path: Path, segmentation: list) -> None:
    from encnet_core.data.sources.coco import _compact, coco_mask

    table = [("train", "x.jpg", 40, 40, [(PERSON, segmentation, 0)])]
    expected = reference_masks(tmp_path, table)["x"]
    assert (expected > 0).sum() > 1000
    np.testing.assert_array_equal(coco_mask(((15, _compact(segmentation, "test")),), 40, 40), expected)


def bad_annotations(tmp_path: Path, coco: dict, members: dict[str, bytes]) -> list[str]:
    paths = dict(coco["paths"])
    paths["annotations_trainval2017.zip"] = write_zip(tmp_path / "annotations_trainval2017.zip", members)
    return [a for name, path in paths.items() for a in ("--archive", f"{name}={path}")]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"annotations/instances_train2017.json": b"{not json", "annotations/instances_val2017.json": b"{}"},
         "annotations/instances_train2017.json: not a JSON file"),
        ({"annotations/instances_train2017.json": json.dumps({"images": []}).encode(),
          "annotations/instances_val2017.json": b"{}"},
         "has no 'annotations'; is this a COCO instances file?"),
        ({"annotations/instances_train2017.json": json.dumps({"images": [{"id": 1}], "annotations": []}).encode(),
          "annotations/instances_val2017.json": b"{}"},
         "image 0 has no 'file_name'"),
        ({"annotations/instances_train2017.json": json.dumps({"images": [], "annotations": [
            {"image_id": 1, "category_id": PERSON, "segmentation": "x"}]}).encode(),
          "annotations/instances_val2017.json": b"{}"},
         "annotation 0: 'segmentation' is a str"),
        ({"annotations/instances_train2017.json": json.dumps({"images": [
            {"id": 1, "file_name": "a.jpg", "height": 100_000, "width": 100_000}], "annotations": []}).encode(),
          "annotations/instances_val2017.json": b"{}"},
         "image 0: 100000x100000 is not an image size"),
        ({"annotations/instances_val2017.json": b"{}"}, "no annotations/instances_train2017.json found"),
        ({"../escape.json": b"{}", "annotations/instances_train2017.json": b"{}"}, "unsafe member '../escape.json'"),
    ],
)
def test_bad_annotation_files_are_one_line(coco: dict, tmp_path: Path, members: dict, message: str) -> None:
    out = tmp_path / "coco.h5"
    args = bad_annotations(tmp_path, coco, members)
    line = error_line(invoke("prepare", "coco", *args, "--no-verify", "--root", tmp_path / "cache",
                                 "--out", out, "--workers", 1, "--no-progress"))  # fmt: skip
    assert message in line, line
    assert not out.exists() and not (tmp_path / "escape.json").exists()


def test_missing_pycocotools_is_one_line_before_any_download(
    http_server, coco: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in sys.modules if n == "pycocotools" or n.startswith("pycocotools.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import pycocotools raises ImportError
    url = http_server.serve(coco["paths"]["val2017.zip"])
    line = one_error_line(invoke("prepare", "coco", "--url", f"val2017.zip={url}", "--root", tmp_path / "cache",
                                 "--out", tmp_path / "coco.h5"))  # fmt: skip
    assert line == "error: encnet prepare coco needs pycocotools (the COCO mask API): pip install 'encnet[coco]'"
    assert not (tmp_path / "cache").exists() and http_server.state.requests == []


def test_a_mask_of_another_size_than_its_image_is_a_bad_item(coco: dict, tmp_path: Path) -> None:
    """The instance file's height/width make the mask; an image of another size is refused (or skipped)."""
    members = {f"annotations/instances_{s}2017.json": json.dumps(instances(s)).encode() for s in ("train", "val")}
    data = json.loads(members["annotations/instances_val2017.json"])
    data["images"][1]["height"] = 41
    members["annotations/instances_val2017.json"] = json.dumps(data).encode()
    args = bad_annotations(tmp_path, coco, members)
    base = ("prepare", "coco", *args, "--no-verify", "--root", tmp_path / "cache", "--workers", 1, "--no-progress")
    line = error_line(invoke(*base, "--out", tmp_path / "a.h5"))
    assert "val2017.zip:val2017/000000000011.jpg: mask is 40x41 but the image is 40x40 (pass --skip-bad" in line
    result = invoke(*base, "--out", tmp_path / "b.h5", "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["counts"] == {"train": 1, "val": 1}

