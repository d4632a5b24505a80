"""Builders shared by the classification tests (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from encnet_core.config import TrainConfig
from encnet_core.constants import CIFAR10_MEAN, CIFAR10_STD
from encnet_core.data.prepare import PrepareOptions, prepare


def make_synthetic_classification(folder: Path, num_train: int = 32, num_val: int = 16, size: int = 32) -> Path:
    """The synthetic classification set (3 scene classes, ``size`` px) at ``folder/synthetic_cls.h5``."""
    out = folder / "synthetic_cls.h5"
    params = {"task": "classification", "num_train": num_train, "num_val": num_val, "size": size}
    prepare("synthetic", PrepareOptions(out=out, root=folder / "cache", workers=1, params=params))
    return out


def classification_config(data: Path, output_dir: Path, **changes) -> TrainConfig:
    """encnet_cifar_tiny on ``data``: batch 8, crop 32, CIFAR normalisation, cosine lr, CPU, no workers."""
    settings = dict(
        data=str(data), output_dir=str(output_dir), model="encnet_cifar_tiny", batch_size=8, lr=0.05, crop_size=32,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, lr_schedule="cosine", weight_decay=5e-4, workers=0, log_every=2, device="cpu",
    )  # fmt: skip
    settings.update(changes)
    return TrainConfig(**settings)
