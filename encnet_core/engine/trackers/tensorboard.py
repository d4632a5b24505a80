"""TensorBoard events for a training run (``train --tracker tensorboard``, alias ``--tensorboard``): a
tracker (trackers/base.py) that writes the metrics.jsonl numbers as scalars under ``RUN/tensorboard``.

    from encnet_core.engine.trackers.tensorboard import TensorBoardCallback
    with TensorBoardCallback(run_dir / "tensorboard", inner=display, config=config.to_dict()) as callback:
        result = train(config, callback=callback)
        callback.finish(result.best, result.iteration)

Scalars, at the iteration as step: ``loss/total`` and ``loss/<term>`` (seg, aux, se), ``lr``,
``throughput/images_per_s``, ``throughput/it_per_s``, ``throughput/data_share`` (each TrainLog), and
``val/<metric>`` for VAL_METRICS (each Validated); the settings as text ("config", TOML-like lines) and
a "run" line at the start; ``best/<metric>``, ``last/<metric>`` at the end. The writer is made at the
run's TrainStart (rank 0 only gets events), so other torchrun ranks write nothing. A resumed run purges
the steps after its checkpoint (those of the interrupted run) from the curves.

Needs the ``tensorboard`` package (``pip install 'encnet[tensorboard]'``); open the events with
``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encnet_core.engine.events import Callback, TrainStart
from encnet_core.engine.trackers.base import TrackerCallback
from encnet_core.errors import ConfigError

__all__ = ["TensorBoardCallback", "check_tensorboard", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"  # the events' folder inside the run folder

_MISSING = "--tracker tensorboard needs the tensorboard package: pip install 'encnet[tensorboard]'"


def check_tensorboard() -> None:
    """Raise one clear ConfigError unless ``torch.utils.tensorboard`` can be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401 - raises ImportError without the tensorboard package
    except ImportError:
        raise ConfigError(_MISSING) from None


class TensorBoardCallback(TrackerCallback):
    """Writes a run's training and validation numbers as TensorBoard scalars, then calls ``inner``."""

    def __init__(self, log_dir: Path | str, inner: Callback | None = None, config: dict[str, Any] | None = None) -> None:
        check_tensorboard()  # before the run starts, not at its first event
        super().__init__(log_dir, config=config, inner=inner)
        self.log_dir = Path(log_dir)

    def _open(self, event: TrainStart, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # resumed at iteration N: drop the steps past N that the interrupted run wrote after its last checkpoint
        purge = event.iteration + 1 if event.iteration > 0 else None
        self.run = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self.run.add_text(
            "run",
            f"{event.total_iters} iterations, {event.epochs} epoch{'' if event.epochs == 1 else 's'} of {event.iters_per_epoch}; global batch "
            f"{event.global_batch} on {event.world_size} x {event.device}; lr {event.lr:g}; {event.params:,} parameters",
            event.iteration,
        )
        if config:  # markdown: two spaces end a line
            self.run.add_text("config", "  \n".join(f"{k} = {v!r}" for k, v in config.items()), event.iteration)

    def _log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.run.add_scalar(name, value, step)
        if any(name.startswith("val/") for name in scalars):
            self.run.flush()  # a validation is rare and worth seeing at once

    def _finish(self, final: dict[str, float], step: int) -> None:
        for name, value in final.items():
            self.run.add_scalar(name, value, step)

    def _close(self, failed: bool) -> None:
        self.run.close()
