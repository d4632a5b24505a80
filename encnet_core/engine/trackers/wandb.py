"""Weights & Biases logging for a training run (``train --tracker wandb``): a tracker (trackers/base.py)
that logs the settings as the W&B config, the metrics.jsonl numbers with the iteration as step, and the
best/last validation as the run summary.

W&B's own environment decides the rest: ``WANDB_MODE=offline`` works without an account (sync later with
``wandb sync``), ``WANDB_PROJECT`` names the project (default "encnet"), ``WANDB_DIR`` where its files go
(default: the run folder, ``RUN/wandb``); the W&B run is named after the run folder.

Needs ``wandb``: ``pip install 'encnet[wandb]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from encnet_core.engine.events import Callback, TrainStart
from encnet_core.engine.trackers.base import TrackerCallback
from encnet_core.errors import ConfigError

__all__ = ["WandbCallback", "check_wandb", "DEFAULT_PROJECT"]

DEFAULT_PROJECT = "encnet"

_MISSING = "--tracker wandb needs the wandb package: pip install 'encnet[wandb]'"


def check_wandb() -> None:
    """Raise one clear ConfigError unless ``wandb`` can be imported."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(_MISSING) from None


class WandbCallback(TrackerCallback):
    """Logs a run to W&B (on rank 0: the run is made at TrainStart), then calls ``inner``."""

    def __init__(self, run_dir: Path | str, config: dict[str, Any] | None = None, inner: Callback | None = None) -> None:
        check_wandb()  # before the run starts, not at its first event
        super().__init__(run_dir, config=config, inner=inner)

    def _open(self, event: TrainStart, config: dict[str, Any]) -> None:
        import wandb

        folder = Path(os.environ.get("WANDB_DIR") or self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        run_config = {**config, "run": {"total_iters": event.total_iters, "resumed_at": event.iteration,
                                        "world_size": event.world_size, "global_batch": event.global_batch,
                                        "scaled_lr": event.lr, "params": event.params}}  # fmt: skip
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, name=self.run_dir.resolve().name,
                              dir=str(folder), config=run_config, reinit="create_new")  # fmt: skip

    def _log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def _finish(self, final: dict[str, float], step: int) -> None:
        self.run.summary.update(final)

    def _close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
