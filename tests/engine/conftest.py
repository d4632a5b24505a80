"""Tiny datasets and a base training configuration shared by the engine tests.

Built once per session: a synthetic dataset (14 classes, 24 train / 8 val at 48 px) and a 3-class
``folder`` dataset (16 train / 4 val, square 48 px, no ignore pixels) used for fine-tuning onto another
class count and for the distributed-equivalence run (where ignore pixels would make per-process loss
means differ from the global mean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_synthetic
from PIL import Image

from encnet_core.config import TrainConfig
from encnet_core.data.prepare import PrepareOptions, prepare

FOLDER_CLASSES = ("background", "square", "stripe")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the 2-core machine is shared, and tiny models gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in synthetic scenes: 14 classes, 24 train / 8 val images of 48 x 48 (with ignore bands)."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), 24, 8)


def _write_folder_split(images: Path, masks: Path, count: int, rng: np.random.Generator) -> None:
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    colours = np.array([[40, 40, 40], [200, 60, 60], [60, 60, 200]], dtype=np.int16)
    for i in range(count):
        labels = (
            rng.integers(0, len(FOLDER_CLASSES), size=(6, 6)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        )  # (48, 48)
        noise = rng.integers(-30, 31, size=(48, 48, 3))
        rgb = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(images / f"{i:03d}.png")
        Image.fromarray(labels, mode="L").save(masks / f"{i:03d}.png")


@pytest.fixture(scope="session")
def folder_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ``folder`` dataset: 16 train / 4 val square 48 px images, every pixel labelled."""
    folder = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(7)
    for split, count in (("train", 16), ("val", 4)):
        _write_folder_split(folder / "images" / split, folder / "masks" / split, count, rng)
    (folder / "classes.txt").write_text("\n".join(FOLDER_CLASSES) + "\n")
    out = folder / "three.h5"
    params = {"images": folder / "images", "masks": folder / "masks", "classes": folder / "classes.txt"}
    prepare("folder", PrepareOptions(out=out, root=folder / "cache", workers=1, params=params))
    return out


@pytest.fixture(scope="session")
def base_config(synthetic_h5: Path) -> TrainConfig:
    """encnet_tiny on the synthetic set: batch 4 (6 iterations per epoch), crop 32, no workers."""
    return TrainConfig(
        data=str(synthetic_h5),
        model="encnet_tiny",
        batch_size=4,
        lr=0.05,
        crop_size=32,
        base_size=48,
        workers=0,
        log_every=3,
        device="cpu",
    )


@pytest.fixture
def make_config(base_config: TrainConfig, tmp_path: Path) -> Callable[..., TrainConfig]:
    """``make_config(name, **changes)``: the base configuration writing to ``tmp_path / name``."""

    def make(name: str = "run", **changes) -> TrainConfig:
        return dataclasses.replace(base_config, output_dir=str(tmp_path / name), **changes)

    return make
