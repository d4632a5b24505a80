"""Builders and checks shared by the test modules (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from encnet_core.config import TrainConfig
from encnet_core.data.hdf5 import HDF5Writer, Sample
from encnet_core.data.prepare import PrepareOptions, prepare
from encnet_core.palette import voc_palette


def make_synthetic(folder: Path, num_train: int, num_val: int, size: int = 48) -> Path:
    """A small built-in synthetic dataset at ``folder/synthetic.h5`` (one conversion process)."""
    out = folder / "synthetic.h5"
    params = {"num_train": num_train, "num_val": num_val, "size": size}
    prepare("synthetic", PrepareOptions(out=out, root=folder / "cache", workers=1, params=params))
    return out


def train_tiny(data: Path, folder: Path, iters: int = 2) -> Path:
    """``last.pt`` of encnet_tiny trained for ``iters`` iterations on ``data`` (CPU, crop 32)."""
    from encnet_core.engine.train import train

    config = TrainConfig(data=str(data), output_dir=str(folder / "run"), model="encnet_tiny", iters=iters,
                         batch_size=4, crop_size=32, base_size=48, workers=0, device="cpu")  # fmt: skip
    return train(config).last_checkpoint


def one_error_line(result) -> str:
    """The single non-empty output line of a failed command (exit 1)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def usage_error_line(result) -> str:
    """The single non-empty output line of a usage error (exit 2): an unknown option, a bad value."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def tiny_trained(tmp_path_factory, name: str, num_train: int = 8, num_val: int = 4):
    """Yield (dataset, checkpoint) for a module-scoped fixture: a synthetic set and encnet_tiny after 2
    iterations, built with one intra-op thread (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp(name)
        data = make_synthetic(folder, num_train, num_val)
        torch.manual_seed(0)
        yield data, train_tiny(data, folder)
    finally:
        torch.set_num_threads(threads)


def run_records(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    """The entries of ``kind`` in a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["type"] == kind]


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint as torch.load reads it (weights_only, on the CPU)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Recursive equality; tensors bit for bit (dtype and shape included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def write_model(path: Path, classes: list[str], seed: int = 0) -> Path:
    """A weights file of encnet_tiny with random weights (and BN statistics) for ``classes``."""
    from encnet_core.models import create_model
    from encnet_core.weights.checkpoint import save_checkpoint
    from encnet_core.weights.metadata import ModelMetadata

    torch.manual_seed(seed)
    model = create_model("encnet_tiny", len(classes))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.2, 2.0)
                module.weight.uniform_(0.5, 3.0)
    meta = ModelMetadata(model_config=dict(model.config), classes=tuple(classes), base_size=48, crop_size=32)
    save_checkpoint({"kind": "weights", "model": model.state_dict(), **meta.to_dict()}, path)
    return path


def write_images(folder: Path, names: list[str], sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Noise PNGs (RGB) named ``names``; (height, width) per image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (h, w) in zip(names, sizes, strict=True):
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_h5(path: Path, images: list[Path], names: list[str], dataset: str = "cityscapes") -> Path:
    """A prepared file with one unlabelled split, ``test``, holding ``images`` under ``names``."""
    with HDF5Writer(path, dataset, ["a", "b"], voc_palette(2)) as writer:
        writer.begin_split("test", capacity=len(images), labelled=False)
        for image, name in zip(images, names, strict=True):
            with Image.open(image) as img:
                w, h = img.size
            writer.add(Sample(name=name, image=image.read_bytes(), height=h, width=w))
    return path


def stop_at(iteration: int):
    """A train() callback that interrupts the run (as `kill -TERM` would) once ``iteration`` is done."""
    import signal

    from encnet_core.engine.events import TrainLog, TrainStep

    def callback(event) -> None:
        if isinstance(event, (TrainStep, TrainLog)) and event.iteration == iteration:
            signal.raise_signal(signal.SIGTERM)

    return callback


TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of an encnet subprocess: this checkout first on the path, one thread, a wide terminal,
    no torchrun variables inherited from the test's own process; ``extra`` on top."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}
    for name in TORCHRUN_VARS:
        env.pop(name, None)
    return env


def run_cli(args: list[str], cwd: Path, torchrun: list[str] | None = None, env: dict[str, str] | None = None, timeout: float = 240):
    """``python -m encnet_cli ARGS`` in ``cwd`` (under ``torchrun`` with those launcher arguments when given), output captured."""
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun] if torchrun is not None else [sys.executable]
    return subprocess.run([*launcher, "-m", "encnet_cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env(), cwd=cwd)  # fmt: skip
