"""What a training run tells its caller (the CLI's progress display): one small frozen dataclass per event.

``train(config, callback=...)`` calls ``callback(event)`` on rank 0 with one of these, in this order:
``Message``\\s of the set-up (re-initialised layers, resume warnings), ``TrainStart``, then per iteration
a ``TrainStep`` or, every ``log_every`` iterations and at each epoch's end, a ``TrainLog`` (the same
numbers as the metrics.jsonl record); ``Validated`` after each validation, ``SampleSkipped`` for each
bad sample a ``--skip-bad`` run leaves out, and a last ``Message`` when a signal stopped the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from encnet_core.data.dataset import BadSample

__all__ = ["VAL_METRICS", "CLASSIFICATION_VAL_METRICS", "TrainStart", "TrainStep", "TrainLog", "Validated", "Message", "SampleSkipped", "TrainEvent", "Callback"]

VAL_METRICS = ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU", "score")
"""The validation numbers a ``Validated`` event and its metrics.jsonl record carry (segmentation)."""

CLASSIFICATION_VAL_METRICS = ("top1_error", "top5_error", "accuracy", "mean_class_accuracy", "loss", "score")
"""The same for a classification run ("score" = top-1 accuracy; top-5 uses k = min(5, classes))."""


@dataclass(frozen=True)
class TrainStart:
    """The run is set up and its first (or, resumed, next) step comes."""

    total_iters: int  # iterations of the whole run
    iteration: int  # iterations already done (0, or where a resumed run continues)
    iters_per_epoch: int  # optimizer steps per epoch (global batches // accumulate)
    epochs: int  # epochs of the whole run (the last one may be partial)
    device: str  # this process's device, e.g. "cpu" or "cuda:0"
    world_size: int  # processes (torchrun)
    lr: float  # backbone lr after scaling by the global batch
    global_batch: int  # images per optimizer step over all processes (batch x processes x accumulate)
    params: int  # model parameters


@dataclass(frozen=True)
class TrainStep:
    """An iteration ended without a metrics record."""

    iteration: int  # iterations done
    total_iters: int  # iterations of the whole run


@dataclass(frozen=True)
class TrainLog:
    """Means over the iterations since the last record (over all processes): one metrics.jsonl line."""

    iteration: int  # iterations done
    total_iters: int  # iterations of the whole run
    epoch: int  # the epoch these iterations belong to, from 1
    lr: float  # the backbone lr the next step will use
    losses: dict[str, float]  # "loss" (the total) and its terms ("seg", "aux", "se" as configured)
    it_per_s: float  # iterations per second over the window
    images_per_s: float  # images per second over all processes
    data_share: float  # share of the window spent waiting for data

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl record (``type`` "train")."""
        return {"type": "train", "iteration": self.iteration, "epoch": self.epoch, "lr": self.lr, **self.losses,
                "it_per_s": self.it_per_s, "images_per_s": self.images_per_s, "data_share": self.data_share}  # fmt: skip


@dataclass(frozen=True)
class Validated:
    """A validation pass over the validation split ended."""

    iteration: int  # iterations done
    epoch: int  # the epoch of the last iteration done, from 1 (a run's last may be partial): train.epoch_of
    metrics: dict[str, float]  # VAL_METRICS ("score" = (pixAcc + mIoU) / 2) or CLASSIFICATION_VAL_METRICS ("score" = accuracy)

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl record (``type`` "val"), also kept as the checkpoint's ``best_metrics``."""
        return {"type": "val", "iteration": self.iteration, "epoch": self.epoch, **self.metrics}


@dataclass(frozen=True)
class Message:
    """A line for the user (re-initialised layers, resume notes and warnings, a signal's stop)."""

    text: str  # plain text; names in it may come from files


@dataclass(frozen=True)
class SampleSkipped:
    """A ``--skip-bad`` run left out a bad sample (each one once)."""

    sample: BadSample  # split, index, name and reason


TrainEvent = TrainStart | TrainStep | TrainLog | Validated | Message | SampleSkipped
Callback = Callable[[TrainEvent], None]
