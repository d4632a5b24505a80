"""TensorBoard events for a training run: a ``train`` callback (engine/events.py) that writes the
metrics.jsonl numbers as scalars under ``RUN/tensorboard`` and passes every event on.

    from encnet_core.engine.tensorboard import TensorBoardCallback
    with TensorBoardCallback(run_dir / "tensorboard", inner=display) as callback:
        train(config, callback=callback)

Scalars, at the iteration as step: ``loss/total`` and ``loss/<term>`` (seg, aux, se), ``lr``,
``throughput/images_per_s``, ``throughput/it_per_s``, ``throughput/data_share`` (each TrainLog), and
``val/<metric>`` for VAL_METRICS (each Validated). ``train`` calls its callback on rank 0 only, and
the writer is made at the run's TrainStart, so other torchrun ranks write nothing. A resumed run
purges the steps after its checkpoint (those of the interrupted run) from the curves.

Needs the ``tensorboard`` package (``pip install 'encnet[tensorboard]'``); open the events with
``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from encnet_core.engine.events import Callback, TrainEvent, TrainLog, TrainStart, Validated
from encnet_core.errors import ConfigError

__all__ = ["TensorBoardCallback", "check_tensorboard", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"  # the events' folder inside the run folder

_MISSING = "--tensorboard needs the tensorboard package: pip install 'encnet[tensorboard]'"


def check_tensorboard() -> None:
    """Raise one clear ConfigError unless ``torch.utils.tensorboard`` can be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401 - raises ImportError without the tensorboard package
    except ImportError:
        raise ConfigError(_MISSING) from None


class TensorBoardCallback:
    """Writes a run's training and validation numbers as TensorBoard scalars, then calls ``inner``."""

    def __init__(self, log_dir: Path | str, inner: Callback | None = None) -> None:
        check_tensorboard()  # before the run starts, not at its first event
        self.log_dir = Path(log_dir)
        self.inner = inner
        self.writer: Any = None  # a SummaryWriter, made at TrainStart (rank 0 only gets events)

    def __call__(self, event: TrainEvent) -> None:
        if isinstance(event, TrainStart):
            self._open(event)
        elif isinstance(event, TrainLog) and self.writer is not None:
            self._train_scalars(event)
        elif isinstance(event, Validated) and self.writer is not None:
            for name, value in event.metrics.items():
                self.writer.add_scalar(f"val/{name}", value, event.iteration)
            self.writer.flush()  # a validation is rare and worth seeing at once
        if self.inner is not None:
            self.inner(event)

    def _open(self, event: TrainStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is not None:
            self.writer.close()
        # resumed at iteration N: drop the steps past N that the interrupted run wrote after its last checkpoint
        purge = event.iteration + 1 if event.iteration > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self.writer.add_text(
            "run",
            f"{event.total_iters} iterations, {event.epochs} epoch{'' if event.epochs == 1 else 's'} of {event.iters_per_epoch}; global batch "
            f"{event.global_batch} on {event.world_size} x {event.device}; lr {event.lr:g}; {event.params:,} parameters",
            event.iteration,
        )

    def _train_scalars(self, event: TrainLog) -> None:
        step = event.iteration
        for name, value in event.losses.items():
            self.writer.add_scalar("loss/total" if name == "loss" else f"loss/{name}", value, step)
        self.writer.add_scalar("lr", event.lr, step)
        self.writer.add_scalar("throughput/images_per_s", event.images_per_s, step)
        self.writer.add_scalar("throughput/it_per_s", event.it_per_s, step)
        self.writer.add_scalar("throughput/data_share", event.data_share, step)

    def close(self) -> None:
        """Flush and close the event file (safe to call twice, or when no event came)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> TensorBoardCallback:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
