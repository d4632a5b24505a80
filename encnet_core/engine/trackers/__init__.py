"""Experiment trackers of a training run (``encnet train --tracker NAME``, repeatable): one module per
tracker, each a ``train`` callback on trackers.base.TrackerCallback that passes events on to ``inner``.

    callback = make_trackers(["mlflow", "wandb"], run_dir, config.to_dict(), inner=display)
    result = train(config, callback=callback[0] if callback else display)
    for tracker in callback: tracker.finish(result.best, result.iteration)

The tracker packages (tensorboard, mlflow, wandb) are imported when a tracker is made, never on import
of this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encnet_core.choices import TRACKERS
from encnet_core.engine.events import Callback
from encnet_core.engine.trackers.base import TrackerCallback

__all__ = ["TRACKERS", "make_trackers", "TrackerCallback"]



def _make(name: str, run_dir: Path, config: dict[str, Any], inner: Callback | None) -> TrackerCallback:
    if name == "tensorboard":
        from encnet_core.engine.trackers.tensorboard import TENSORBOARD_DIR, TensorBoardCallback

        return TensorBoardCallback(run_dir / TENSORBOARD_DIR, inner=inner, config=config)
    if name == "mlflow":
        from encnet_core.engine.trackers.mlflow import MLflowCallback

        return MLflowCallback(run_dir, config=config, inner=inner)
    if name == "wandb":
        from encnet_core.engine.trackers.wandb import WandbCallback

        return WandbCallback(run_dir, config=config, inner=inner)
    raise ValueError(f"unknown tracker {name!r}; one of {', '.join(TRACKERS)}")


def make_trackers(names: list[str], run_dir: Path | str, config: dict[str, Any], inner: Callback | None = None) -> list[TrackerCallback]:
    """One tracker per name (duplicates once, in the given order), chained: the first calls the second,
    ..., the last calls ``inner``; the first is the callback to give ``train``. Each checks its package
    when made (a ConfigError naming the extra), so a missing one stops the command before any work."""
    unique = list(dict.fromkeys(names))
    made: list[TrackerCallback] = []
    for name in reversed(unique):
        made.insert(0, _make(name, Path(run_dir), config, made[0] if made else inner))
    return made
