"""Builders and checks shared by the test modules (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from encnet_core.config import TrainConfig
from encnet_core.data.prepare import PrepareOptions, prepare


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
