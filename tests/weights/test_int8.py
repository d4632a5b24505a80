"""encnet export --int8: ONNX Runtime static quantization calibrated on a dataset split, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from classification_helpers import make_synthetic_classification
from helpers import make_synthetic, one_error_line, train_tiny, write_h5, write_images
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.dataset import open_dataset
from encnet_core.errors import ConfigError, DataError
from encnet_core.weights.export import export_model
from encnet_core.weights.model_files import load_model, peek_metadata

pytest.importorskip("onnxruntime")

CPU = torch.device("cpu")
AGREEMENT = 0.95  # measured on this model: 96.6% of val pixels, 99.0% of calibration pixels keep the fp32 class


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, last.pt): encnet_tiny after 30 iterations on 16 synthetic images (48 px, 8 val)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("int8")
        data = make_synthetic(folder, 16, 8)
        torch.manual_seed(0)
        yield data, train_tiny(data, folder, iters=30)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exports(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """(fp32 ONNX, int8 ONNX, the int8 ExportResult)."""
    data, checkpoint = trained
    folder = tmp_path_factory.mktemp("int8_exports")
    fp32 = export_model(checkpoint, folder / "fp32.onnx", "onnx").path
    result = export_model(checkpoint, folder / "int8.onnx", "onnx", int8=True, calibrate=data, calib_images=16)
    return fp32, result.path, result


def _val_masks(path: Path, data: Path) -> torch.Tensor:
    model = load_model(path, CPU)
    dataset = open_dataset(data, "val")
    images = torch.stack([dataset[i][0].as_subclass(torch.Tensor) for i in range(len(dataset))])
    return model.forward(model.normalize(images)).argmax(1)  # (N, H, W)


def test_int8_masks_agree_with_fp32(trained: tuple[Path, Path], exports) -> None:
    data, _ = trained
    fp32, int8, result = exports
    assert result.metadata["precision"] == "int8" and result.metadata["export_format"] == "onnx"
    assert result.mask_agreement is not None and result.mask_agreement >= AGREEMENT
    agreement = (_val_masks(int8, data) == _val_masks(fp32, data)).float().mean().item()
    assert agreement >= AGREEMENT, agreement
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights
    assert not [p for p in int8.parent.iterdir() if p.name.startswith(".")]  # temp files (the float graph) are gone
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_metadata_precision_and_info(exports) -> None:
    fp32, int8, _ = exports
    assert peek_metadata(int8)["precision"] == "int8"
    assert peek_metadata(fp32)["precision"] == "fp32"
    assert load_model(int8, CPU).metadata["precision"] == "int8"
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(int8), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["precision"] == "int8"
    result = runner.invoke(app, ["info", str(int8)])
    assert result.exit_code == 0 and "precision" in result.output and "int8" in result.output


def test_old_files_read_as_fp32(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, checkpoint = trained
    assert peek_metadata(checkpoint).get("precision", "fp32") == "fp32"
    half = export_model(checkpoint, tmp_path / "half.pt", "weights", half=True)
    assert half.metadata["precision"] == "fp16" and peek_metadata(half.path)["precision"] == "fp16"


def test_cli_int8_export(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, checkpoint = trained
    out = tmp_path / "m.onnx"
    args = ["export", str(checkpoint), str(out), "--format", "onnx", "--int8", "--calibrate", str(data), "--calib-images", "8"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["precision"] == "int8" and summary["mask_agreement"] >= AGREEMENT


def test_refusals_before_any_work(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, checkpoint = trained
    out = tmp_path / "x.onnx"
    with pytest.raises(ConfigError, match="--int8 needs --calibrate"):
        export_model(checkpoint, out, "onnx", int8=True)
    with pytest.raises(ConfigError, match="ONNX exports only"):
        export_model(checkpoint, tmp_path / "x.pt", "weights", int8=True, calibrate=data)
    with pytest.raises(ConfigError, match="--calibrate applies to --int8"):
        export_model(checkpoint, out, "onnx", calibrate=data)
    with pytest.raises(ConfigError, match="exclude each other"):
        export_model(checkpoint, out, "onnx", int8=True, half=True, calibrate=data)
    classification = make_synthetic_classification(tmp_path / "cls")
    with pytest.raises(ConfigError, match="is a segmentation model but .* is a classification dataset"):
        export_model(checkpoint, out, "onnx", int8=True, calibrate=classification)
    images = write_images(tmp_path / "img", ["a"], [(40, 40)])
    other = write_h5(tmp_path / "other.h5", images, ["a"])  # classes a, b
    with pytest.raises(ConfigError, match="predicts .* classes .* but .* has 2"):
        export_model(checkpoint, out, "onnx", int8=True, calibrate=other, calib_split="test")
    with pytest.raises(DataError, match="no split 'nope'"):
        export_model(checkpoint, out, "onnx", int8=True, calibrate=data, calib_split="nope")
    assert not out.exists() and not list(tmp_path.glob(".*"))
    runner = CliRunner()
    line = one_error_line(runner.invoke(app, ["export", str(checkpoint), str(out), "--format", "onnx", "--int8"]))
    assert "--int8 needs --calibrate" in line
    line = one_error_line(runner.invoke(app, ["export", str(checkpoint), str(tmp_path / "y.ts"), "--format", "torchscript", "--int8", "--calibrate", str(data)]))
    assert "ONNX exports only" in line
