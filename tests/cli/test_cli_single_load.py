"""Every command that takes a model file reads it once: one ``torch.load`` per command."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_synthetic
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.hdf5 import read_info
from encnet_core.models import create_model
from encnet_core.weights.checkpoint import save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset, checkpoint of an untrained encnet_tiny for its classes, folder with one image)."""
    folder = tmp_path_factory.mktemp("single_load")
    data = make_synthetic(folder, 2, 2, size=32)
    info = read_info(data)
    torch.manual_seed(0)
    model = create_model("encnet_tiny", info.num_classes)
    ckpt = folder / "best.pt"
    save_checkpoint(
        {"model_config": model.config, "model": model.state_dict(), "classes": list(info.classes),
         "palette": info.palette.tolist(), "base_size": 40, "crop_size": 32, "iteration": 1, "epoch": 0},
        ckpt,
    )  # fmt: skip
    images = folder / "images"
    images.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(images / "a.png")
    return data, ckpt, images


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts ``torch.load`` calls by the file they read."""
    counts: Counter = Counter()
    original = torch.load

    def counting(f, *args, **kwargs):
        counts[str(f)] += 1
        return original(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return counts


@pytest.mark.parametrize("command", ["info", "evaluate", "predict", "export"])
def test_each_command_reads_the_model_file_once(files: tuple[Path, Path, Path], loads: Counter, tmp_path: Path, command: str) -> None:
    data, ckpt, images = files
    args = {
        "info": ["info", ckpt, "--json"],
        "evaluate": ["evaluate", ckpt, data, "--device", "cpu", "-j", "0", "--no-progress", "--json", "-"],
        "predict": ["predict", ckpt, images, "-o", tmp_path / "out", "--device", "cpu", "--no-progress"],
        "export": ["export", ckpt, tmp_path / "model.safetensors", "--format", "safetensors"],  # verified without torch.load
    }[command]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert loads == Counter({str(ckpt): 1})
