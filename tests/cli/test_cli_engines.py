"""`--engine` on predict, evaluate and submit: onnxruntime's results are eager PyTorch's, and the errors are one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_synthetic, one_error_line, train_tiny
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.weights.export import export_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dataset, checkpoint): synthetic 8 train / 6 val at 48 px, encnet_tiny after 2 iterations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cli_engines")
    data = make_synthetic(folder, 8, 6)
    torch.manual_seed(0)
    yield data, train_tiny(data, folder)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCNET_CACHE", str(tmp_path / "cache"))


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_evaluate_onnxruntime_matches_torch(tiny: tuple[Path, Path]) -> None:
    data, ckpt = tiny
    reports = {}
    for engine in ("torch", "onnxruntime"):
        result = run("evaluate", ckpt, data, "--engine", engine, "--slide", "--flip", "--json", "-", "--device", "cpu", "-j", "0")
        assert result.exit_code == 0, result.output
        reports[engine] = json.loads(result.stdout)
        assert reports[engine]["engine"] == engine
    cm_torch, cm_ort = (np.array(reports[e]["confusion_matrix"]) for e in ("torch", "onnxruntime"))
    assert np.abs(cm_torch - cm_ort).sum() <= 0.001 * cm_torch.sum()  # the same predictions on >= 99.9% of pixels
    assert reports["onnxruntime"]["pixAcc"] == pytest.approx(reports["torch"]["pixAcc"], abs=1e-3)


def test_predict_onnxruntime_masks_match_torch(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate(((48, 64), (60, 40))):
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    masks = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / engine
        result = run("predict", ckpt, images, "-o", out, "--engine", engine, "--scales", "0.75,1", "--flip",
                     "--format", "index", "--device", "cpu", "--no-progress")  # fmt: skip
        assert result.exit_code == 0, result.output
        masks[engine] = [np.array(Image.open(out / f"{i}.png")) for i in range(2)]
    same = sum(int((a == b).sum()) for a, b in zip(masks["torch"], masks["onnxruntime"], strict=True))
    assert same / sum(a.size for a in masks["torch"]) >= 0.999


def test_onnx_file_with_engine_torch_is_one_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    onnx = export_model(ckpt, tmp_path / "model.onnx", "onnx").path
    line = one_error_line(run("evaluate", onnx, data, "--engine", "torch", "--device", "cpu", "-j", "0"))
    assert "an ONNX file runs with onnxruntime or openvino" in line


def test_missing_engine_is_one_line(tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from encnet_core.engine import engines

    monkeypatch.setattr(engines, "installed_engines", lambda: {"torch": "2", "onnxruntime": None, "openvino": None})
    _, ckpt = tiny
    line = one_error_line(run("predict", ckpt, tmp_path, "-o", tmp_path / "out", "--engine", "onnxruntime", "--device", "cpu"))
    assert line == "error: the onnxruntime engine is not installed: pip install 'encnet[onnx]'"


def test_engine_is_a_choice_on_every_inference_command() -> None:
    for command in ("predict", "evaluate", "submit"):
        result = run(command, "--help")
        assert "--engine" in result.output and "onnxruntime" in result.output, command
    result = run("predict", "model.pt", "x.png", "-o", "out", "--engine", "tensorrt")
    assert result.exit_code == 2 and "tensorrt" in result.output
