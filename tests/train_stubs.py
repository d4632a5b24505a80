"""Stand-ins that make a training run cheap where only its loop is under test (epoch arithmetic, messages,
progress): no SGD step and no sample decoding; the data order, validation and checkpoints stay real."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from encnet_core.engine import train as train_module
from encnet_core.engine.sampling import SeededSamples


def _no_sgd(run: Any, images: torch.Tensor, targets: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict]:
    """The SGD step's stand-in: the schedule advances, the weights stay."""
    run.optimizer.step()  # no gradients: nothing changes
    run.scheduler.step()
    return torch.tensor(1.0), {}


def _blank_sample(self: SeededSamples, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """A decoded, augmented 32 px training sample's stand-in (its content does not matter to ``_no_sgd``)."""
    return torch.zeros(3, 32, 32), torch.zeros(32, 32, dtype=torch.long), ()


def stub_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the SGD step and the training samples' decoding (train with crop 32)."""
    monkeypatch.setattr(train_module, "train_step", _no_sgd)
    monkeypatch.setattr(SeededSamples, "__getitem__", _blank_sample)
