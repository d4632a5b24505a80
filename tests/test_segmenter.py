"""The Python API (encnet_core/segmenter.py): inputs of every kind give the CLI's masks, and
docs/python.md's example runs as written."""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stdout
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import make_synthetic, train_tiny
from PIL import Image

from encnet_core import Segmentation, Segmenter
from encnet_core.engine.device import resolve_device
from encnet_core.engine.masks import PredictOptions, predict
from encnet_core.errors import ConfigError
from encnet_core.weights.model_files import load_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as ``make demo`` leaves it: demo-run/run/best.pt and demo-run/images/*/*.jpg."""
    root = tmp_path_factory.mktemp("demo")
    data = make_synthetic(root / "data", 8, 6)
    ckpt = train_tiny(data, root / "train", iters=2)
    (root / "demo-run" / "run").mkdir(parents=True)
    (root / "demo-run" / "run" / "best.pt").write_bytes(ckpt.read_bytes())
    with h5py.File(data) as f:
        for i in range(6):
            target = root / "demo-run" / "images" / ("street" if i < 3 else "more") / f"{f['val/names'][i].decode()}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f["val/images"][i].tobytes())
    return root


@pytest.fixture(scope="module")
def model_file(demo: Path) -> Path:
    return demo / "demo-run" / "run" / "best.pt"


@pytest.fixture(scope="module")
def images(demo: Path) -> list[Path]:
    return sorted((demo / "demo-run" / "images").rglob("*.jpg"))


def test_doc_example_runs(demo: Path) -> None:
    """The python block of docs/python.md, executed in a folder with the demo's files."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    cwd = Path.cwd()
    os.chdir(demo)
    try:
        out = io.StringIO()
        with redirect_stdout(out):
            exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__doc_example__"})
    finally:
        os.chdir(cwd)
    assert "SE head:" in out.getvalue()
    assert Image.open(demo / "demo-run" / "first-mask.png").size == (48, 48)


def test_masks_match_predict(model_file: Path, images: list[Path], tmp_path: Path) -> None:
    """Segmenter gives predict's masks and predictions.json's class shares, for paths and a batch."""
    loaded = load_model(model_file, resolve_device("cpu"))
    predict(loaded, [images[0].parent.parent], PredictOptions(output=tmp_path / "out", mask_format="index", min_share=0.0))
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    seg = Segmenter.load(model_file, device="cpu")
    results = seg.seg(images)
    assert isinstance(results, list) and len(results) == len(images)
    for path, result in zip(images, results, strict=True):
        stem = path.relative_to(images[0].parent.parent).with_suffix("").as_posix()
        expected = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert result.labels.dtype == np.uint8
        np.testing.assert_array_equal(result.labels, expected)
        shares = {e["class"]: e["share"] for e in written[stem]["classes_by_pixels"]}
        assert {k: round(v, 5) for k, v in result.classes_by_pixels(0.0)} == shares
        assert result.pixel_share.sum() == pytest.approx(1.0)
        assert result.mean_probability.sum() == pytest.approx(1.0, abs=1e-4)
        se = [e["class"] for e in written[stem].get("classes_by_se", [])]
        assert result.se_classes == se
    one = seg(images[0])
    assert isinstance(one, Segmentation)
    np.testing.assert_array_equal(one.labels, results[0].labels)


def test_every_input_kind_gives_the_same_mask(model_file: Path, images: list[Path]) -> None:
    seg = Segmenter.load(model_file, device="cpu")
    rgb = np.asarray(Image.open(images[0]).convert("RGB"))
    reference = seg.seg(images[0]).labels
    for image in (str(images[0]), Image.open(images[0]), rgb, torch.from_numpy(rgb.copy()).permute(2, 0, 1)):
        np.testing.assert_array_equal(seg.seg(image).labels, reference)
    as_float = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    np.testing.assert_array_equal(seg.seg(as_float).labels, reference)
    mixed = seg.seg([rgb, as_float, rgb[:40]])  # different types and sizes in one call
    np.testing.assert_array_equal(mixed[1].labels, reference)
    assert mixed[2].labels.shape == (40, 48)


def test_inference_options_match_infer(model_file: Path, images: list[Path]) -> None:
    """Multi-scale + flip + reference merge: the labels are infer()'s argmax for the same config."""
    from encnet_core.engine.inference import infer

    seg = Segmenter.load(model_file, device="cpu", scales=(0.75, 1.0, 1.25), flip=True, merge="reference", batch_size=3)
    assert seg.inference.scales == (0.75, 1.0, 1.25) and seg.inference.crop_size == 32
    rgb = np.asarray(Image.open(images[0]).convert("RGB"))
    result = seg.seg(rgb)
    image = seg.model.normalize(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
    expected = infer(seg.model.forward, image, seg.model.num_classes, seg.inference).argmax(0).numpy()
    np.testing.assert_array_equal(result.labels, expected)
    assert result.mean_probability is None  # the reference merge gives no probabilities


def test_bad_inputs_are_one_clear_error(model_file: Path, tmp_path: Path) -> None:
    seg = Segmenter.load(model_file, device="cpu")
    with pytest.raises(ConfigError, match="image not found"):
        seg.seg(tmp_path / "missing.jpg")
    (tmp_path / "not-an-image.jpg").write_bytes(b"\x89HDF\r\n")
    with pytest.raises(ConfigError, match="cannot read image .*not-an-image.jpg"):
        seg.seg([tmp_path / "not-an-image.jpg"])
    with pytest.raises(ConfigError, match="uint8"):
        seg.seg(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match=r"\(3, H, W\)"):
        seg.seg(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="cannot segment"):
        seg.seg(42)
    with pytest.raises(ConfigError, match="--merge"):
        Segmenter.load(model_file, device="cpu", merge="mean")


def test_import_encnet_core_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, encnet_core; assert 'torch' not in sys.modules; encnet_core.Segmenter; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
