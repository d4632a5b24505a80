"""The servers' PNG values and VOC palette against the reference's own code (torch-encoding 1.2.1): its
datasets' ``make_pred`` (pascal_voc: the class index; ade20k: + 1; cityscapes: trainId -> labelId) and
``utils.get_mask_pallete``'s VOC colour map, as its experiments/segmentation/test.py writes test results."""

from __future__ import annotations

import importlib.util
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference_code import reference_package

from encnet_core.engine.submit import server_png

PACKAGE = "encnet_reference_datasets"  # the reference's encoding/datasets, loaded without its __init__ (COCO needs tqdm)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the reference's ``encoding`` package (unpacked from the wheel)."""
    return Path(reference_package(tmp_path_factory.mktemp("torch_encoding")).__path__[0])


def load(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Module ``path`` as ``name`` (in a private package, so ``from .base import`` finds the reference's base.py)."""
    if "tqdm" not in sys.modules and importlib.util.find_spec("tqdm") is None:  # imported by pascal_voc.py and cityscapes.py, used only to print
        stand_in = types.ModuleType("tqdm")
        stand_in.tqdm = stand_in.trange = lambda *a, **k: None
        monkeypatch.setitem(sys.modules, "tqdm", stand_in)
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(path.parent)]
    monkeypatch.setitem(sys.modules, PACKAGE, package)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def values(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_voc_and_ade20k_make_pred(reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    voc = load(reference / "datasets" / "pascal_voc.py", f"{PACKAGE}.pascal_voc", monkeypatch)
    labels = rng.integers(0, 21, (7, 9)).astype(np.uint8)
    png = server_png("voc", labels)
    dataset = object.__new__(voc.VOCSegmentation)  # make_pred needs only the class's pred_offset, not the files
    np.testing.assert_array_equal(values(png), dataset.make_pred(labels.astype(np.int64)))
    pallete = load(reference / "utils" / "pallete.py", "encnet_reference_pallete", monkeypatch)
    reference_png = pallete.get_mask_pallete(labels.astype(np.int64), "pascal_voc")
    assert Image.open(io.BytesIO(png)).getpalette() == reference_png.getpalette()  # the reference's vocpallete (256 colours)

    ade = load(reference / "datasets" / "ade20k.py", f"{PACKAGE}.ade20k", monkeypatch)
    labels = rng.integers(0, 150, (7, 9)).astype(np.uint8)
    labels[0, :2] = (0, 149)
    np.testing.assert_array_equal(values(server_png("ade20k", labels)), object.__new__(ade.ADE20KSegmentation).make_pred(labels.astype(np.int64)))


def test_cityscapes_make_pred(reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CitySegmentation sets its tables in __init__: built on a one-image folder in the reference's layout."""
    city = load(reference / "datasets" / "cityscapes.py", f"{PACKAGE}.cityscapes", monkeypatch)
    for folder, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        (tmp_path / folder / "test" / "berlin").mkdir(parents=True)
        Image.new("L", (4, 2)).save(tmp_path / folder / "test" / "berlin" / f"berlin_000000_000019_{suffix}.png")
    dataset = city.CitySegmentation(root=str(tmp_path), split="test", mode="test")
    labels = np.concatenate([np.arange(19), np.random.default_rng(1).integers(0, 19, 45)]).astype(np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(values(server_png("cityscapes", labels)), dataset.make_pred(labels.astype(np.int64)))
