"""What every experiment tracker of a training run gets, and the one callback base they share.

A tracker is a ``train`` callback (engine/events.py) that passes every event on to ``inner`` (the
progress display, or the next tracker) and writes, with the iteration as step:

* at ``TrainStart``: the run's settings (``TrainConfig.to_dict()``, the recipe name among them);
* each ``TrainLog``: ``train_scalars`` (the metrics.jsonl "train" record's numbers);
* each ``Validated``: ``val_scalars`` (the "val" record's metrics);
* at the end, ``finish(result)``: ``final_scalars`` (the best and the last validation, the steps done).

``train`` calls its callback on rank 0 only and a tracker opens its run at ``TrainStart``, so the other
torchrun ranks write nothing: their ``finish`` and ``close`` find no run and do nothing.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from encnet_core.engine.events import Callback, TrainEvent, TrainLog, TrainStart, Validated

__all__ = ["TrackerCallback", "train_scalars", "val_scalars", "final_scalars", "flat_config"]


def train_scalars(event: TrainLog) -> dict[str, float]:
    """The scalars of one metrics.jsonl "train" record: loss/total, loss/<term>, lr, throughput/*."""
    scalars = {"loss/total" if name == "loss" else f"loss/{name}": value for name, value in event.losses.items()}
    scalars["lr"] = event.lr
    scalars["throughput/images_per_s"] = event.images_per_s
    scalars["throughput/it_per_s"] = event.it_per_s
    scalars["throughput/data_share"] = event.data_share
    return scalars


def val_scalars(event: Validated) -> dict[str, float]:
    """The scalars of one metrics.jsonl "val" record: val/<metric>."""
    return {f"val/{name}": value for name, value in event.metrics.items()}


def final_scalars(best: dict[str, Any] | None, last: Validated | None, iteration: int) -> dict[str, float]:
    """The run's end: best/<metric> (the best validation record, its epoch and iteration among them),
    last/<metric> (the last validation of this run) and ``iterations`` (steps done)."""
    final: dict[str, float] = {"iterations": float(iteration)}
    for name, value in (best or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            final[f"best/{name}"] = float(value)
    if last is not None:
        final.update({f"last/{name}": value for name, value in last.metrics.items()})
    return final


def flat_config(config: dict[str, Any]) -> dict[str, str]:
    """A config dict as flat string parameters (trackers that keep parameters as text: MLflow)."""
    return {name: "" if value is None else str(value) for name, value in config.items()}


class TrackerCallback:
    """The shared part of every tracker: event dispatch, ``inner``, the last validation, ``finish``.

    Subclasses implement ``_open(event, config)`` (make the run: TrainStart, rank 0 only), ``_log(scalars,
    step)``, ``_finish(final, step)`` and ``_close(failed)``, and set ``self.run`` while a run is open.
    """

    def __init__(self, run_dir: Path | str, config: dict[str, Any] | None = None, inner: Callback | None = None) -> None:
        self.run_dir = Path(run_dir)  # the run folder (or, for TensorBoard, its events folder)
        self.config = config or {}
        self.inner = inner
        self.run: Any = None  # the tracker's run or writer, made at TrainStart
        self._last: Validated | None = None

    def __call__(self, event: TrainEvent) -> None:
        if isinstance(event, TrainStart):
            self.close()  # a second TrainStart (another train() call): a new tracker run
            self._last = None
            self._open(event, self.config)
        elif isinstance(event, TrainLog) and self.run is not None:
            self._log(train_scalars(event), event.iteration)
        elif isinstance(event, Validated) and self.run is not None:
            self._last = event
            self._log(val_scalars(event), event.iteration)
        if self.inner is not None:
            self.inner(event)

    def finish(self, best: dict[str, Any] | None, iteration: int) -> None:
        """Write the final metrics (``TrainResult.best`` and ``.iteration``) and close the run; nothing
        without an open run (another rank, or a run that failed before its TrainStart)."""
        if self.run is not None:
            self._finish(final_scalars(best, self._last, iteration), iteration)
        self.close()

    def close(self, failed: bool = False) -> None:
        """End the run (safe to call twice, or when no event came); ``failed``: the training raised
        (MLflow marks the run FAILED, W&B gives it exit code 1)."""
        if self.run is not None:
            self._close(failed)
            self.run = None

    def _open(self, event: TrainStart, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def _log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _finish(self, final: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _close(self, failed: bool) -> None:
        raise NotImplementedError

    def __enter__(self) -> TrackerCallback:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(failed=kind is not None)
