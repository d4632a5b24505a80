"""encnet export: round trips per format, metadata inside every format, and refusing unsafe files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.errors import CheckpointError, ConfigError
from encnet_core.models import create_model
from encnet_core.weights.checkpoint import save_checkpoint
from encnet_core.weights.export import export_model
from encnet_core.weights.model_files import detect_format, load_model, peek_metadata

CLASSES = ["sky", "road", "car", "person"]
PALETTE = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
SUFFIX = {"weights": "pt", "safetensors": "safetensors", "torchscript": "ts", "pt2": "pt2", "onnx": "onnx"}
CODE = {"torchscript", "pt2"}  # programs: opened only with trust_code


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("encnet_tiny", len(CLASSES))
    # make BatchNorm statistics non-trivial so a format that drops them would show
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, 48, 48) * 2 + 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(
        {
            "model_config": model.config, "model": model.state_dict(), "classes": CLASSES, "palette": PALETTE,
            "mean": MEAN, "std": STD, "base_size": 64, "crop_size": 48, "iteration": 7, "epoch": 1,
            "train_config": {"data": "x.h5"}, "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("fmt", ["weights", "safetensors", "torchscript", "pt2", "onnx"])
def test_round_trip_same_predictions(checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"model.{SUFFIX[fmt]}"
    result = export_model(checkpoint, out, fmt)
    assert result.path == out and out.is_file() and result.max_abs_diff is not None and result.max_abs_diff < 1e-3
    assert detect_format(out) == ("checkpoint" if fmt == "weights" else fmt)
    source = load_model(checkpoint, torch.device("cpu"))
    if fmt in CODE:
        with pytest.raises(CheckpointError, match="runs code from the file; pass --trust-code"):
            load_model(out, torch.device("cpu"))
    exported = load_model(out, torch.device("cpu"), trust_code=fmt in CODE)
    # another size than the export's sample, and batch 3: dynamic shapes
    x = torch.randn(3, 3, 40, 72)
    expected, got = source.forward(x), exported.forward(x)
    assert got.shape == (3, len(CLASSES), 40, 72)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(exported.se_forward(x), source.se_forward(x), rtol=1e-4, atol=1e-4)
    # metadata travels inside the file and is used
    assert exported.classes == CLASSES
    assert exported.palette.tolist() == PALETTE
    assert list(exported.mean) == MEAN and list(exported.std) == STD
    assert exported.crop_size == 48 and exported.base_size == 64
    assert peek_metadata(out)["classes"] == CLASSES
    assert peek_metadata(out)["runs_code"] == (fmt in CODE)


def test_weights_export_is_slim_and_half_halves_it(checkpoint: Path, tmp_path: Path) -> None:
    full = export_model(checkpoint, tmp_path / "full.pt", "weights")
    half = export_model(checkpoint, tmp_path / "half.pt", "weights", half=True)
    stored = torch.load(full.path, weights_only=True)
    assert "optimizer" not in stored and stored["kind"] == "weights"
    assert stored["training"]["iteration"] == 7
    assert half.bytes < 0.6 * full.bytes
    assert torch.load(half.path, weights_only=True)["model"]["head.conv6.1.weight"].dtype == torch.float16


def test_hash_name_and_overwrite(checkpoint: Path, tmp_path: Path) -> None:
    result = export_model(checkpoint, tmp_path / "model.pt", "weights", hash_name=True)
    digest = hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert result.path.name == f"model-{digest[:8]}.pt" and result.sha256 == digest
    export_model(checkpoint, tmp_path / "plain.pt", "weights")
    with pytest.raises(ConfigError, match="exists"):
        export_model(checkpoint, tmp_path / "plain.pt", "weights")
    assert export_model(checkpoint, tmp_path / "plain.pt", "weights", overwrite=True, verify=False).max_abs_diff is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/encnet-export-pwned",))


def test_crafted_pickle_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/encnet-export-pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload()}, evil)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    for path in (evil, raw):
        with pytest.raises(CheckpointError, match="refused|corrupt"):
            export_model(path, tmp_path / "out.pt")
        with pytest.raises(CheckpointError):
            load_model(path, torch.device("cpu"))
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def test_unknown_model_name_and_corrupt_file(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model_config"] = {**ckpt["model_config"], "name": "encnet_resnet9000"}
    renamed = tmp_path / "renamed.pt"
    torch.save(ckpt, renamed)
    with pytest.raises(CheckpointError, match="unknown model 'encnet_resnet9000'"):
        export_model(renamed, tmp_path / "a.pt")
    ckpt["model_config"] = {**ckpt["model_config"], "name": "fcn_tiny"}
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="do not fit model fcn_tiny"):
        export_model(other, tmp_path / "b.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt"):
        export_model(corrupt, tmp_path / "c.pt")
    bare = tmp_path / "bare.pt"
    torch.save(create_model("encnet_tiny", 4).state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        export_model(bare, tmp_path / "d.pt")
    assert not any((tmp_path / n).exists() for n in ("a.pt", "b.pt", "c.pt", "d.pt"))


def test_cli_export_info_and_predict_with_export(checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "model.ts"
    result = runner.invoke(app, ["export", str(checkpoint), str(out), "--format", "torchscript", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["format"] == "torchscript" and summary["max_abs_diff"] < 1e-3 and summary["classes"] == 4
    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["classes"] == CLASSES and meta["export_format"] == "torchscript" and meta["training"]["iteration"] == 7
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(images / "a.png")
    result = runner.invoke(app, ["predict", str(out), str(images), "-o", str(tmp_path / "pred"), "--no-progress"])
    assert result.exit_code == 1 and "TorchScript program" in result.output and "--trust-code" in result.output
    result = runner.invoke(app, ["predict", str(out), str(images), "-o", str(tmp_path / "pred"), "--no-progress", "--trust-code"])
    assert result.exit_code == 0, result.output
    mask = Image.open(tmp_path / "pred" / "a.png")
    assert mask.mode == "P" and mask.size == (40, 30)
    assert mask.getpalette()[:6] == PALETTE[0] + PALETTE[1]  # the export's palette was used
    result = runner.invoke(app, ["export", str(checkpoint), str(tmp_path / "x.bin"), "--format", "tflite"])
    # a choice typo is a usage error (issue 11: exit 2, one line listing the formats)
    assert result.exit_code == 2 and "'tflite' is not one of 'weights', 'safetensors'" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
