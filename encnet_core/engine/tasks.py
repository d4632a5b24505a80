"""What differs per task: one small interface (``Task``), one object per task (``SegmentationTask`` in
engine/segmentation.py, ``ClassificationTask`` in engine/classification.py), registered in ``_TASKS``.

train.py has one loop for every task, evaluate.py and predict.py one command each; they ask the task
(``task_for(name)``) for the parts that differ and for nothing else:

* ``check(config)``: the settings that do not apply to the task (one `ConfigError`);
* ``build_model(config, num_classes)``: the model (segmentation: ``EncNet`` with the head options;
  classification: a CIFAR classifier);
* ``train_dataset(config)`` / ``val_dataset(config)``: the splits with their transforms (segmentation:
  data/transforms.py; classification: data/classification_transforms.py);
* ``criterion(config)``: ``loss(outputs, targets) -> (total, parts)``;
* ``validate(model, loader, num_classes, info, amp)``: the validation metrics, ``score`` deciding best.pt;
* ``val_metrics``: the metric names a ``Validated`` event carries (engine/events.py);
* ``evaluate(model, data, options, info, progress, dataset_info=, model_name=)``: ``encnet evaluate``'s
  scoring, once engine/evaluate.py's ``evaluate_loaded`` has checked what every task shares;
* ``predict(model, inputs, request, progress)``: ``encnet predict`` with a loaded model (engine/predict.py's
  ``run``), ``request`` its ``PredictRequest``.

The plain facts of a task (its name, which CLI options apply, its HDF5 label field ...) are in the
torch-free registry encnet_core/tasks.py; a third task is a ``TaskFacts`` there, an engine module
with its ``Task`` registered here in ``_TASKS``, and the views docs/architecture.md lists under "Tasks".

Which task a run has is the dataset's (``DatasetInfo.task``); the model must be of the same task
(``check_task``). The optimiser's groups follow ``model.task`` (engine/optim.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from torch import nn
from torch.utils.data import Dataset

from encnet_core.config import TrainConfig
from encnet_core.data.hdf5 import DatasetInfo
from encnet_core.engine.classification import ClassificationTask
from encnet_core.engine.distributed import DistInfo
from encnet_core.engine.segmentation import SegmentationTask
from encnet_core.errors import ConfigError
from encnet_core.models import model_task
from encnet_core.progress import ProgressCallback
from encnet_core.tasks import facts
from encnet_core.weights.model_files import LoadedModel

log = logging.getLogger("encnet")

__all__ = ["Task", "SegmentationTask", "ClassificationTask", "task_for", "check_task", "config_task", "SEGMENTATION", "CLASSIFICATION"]


class Task(Protocol):
    """The task-specific parts of training, evaluation and prediction (see the module docstring)."""

    name: str  # "segmentation" or "classification": DatasetInfo.task, model.task
    val_metrics: tuple[str, ...]  # the numbers of each Validated event; "score" decides best.pt

    def check(self, config: TrainConfig) -> None: ...

    def build_model(self, config: TrainConfig, num_classes: int) -> nn.Module: ...

    def train_dataset(self, config: TrainConfig) -> Dataset: ...

    def val_dataset(self, config: TrainConfig) -> Dataset: ...

    def criterion(self, config: TrainConfig) -> nn.Module: ...

    def validate(self, model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]: ...

    def evaluate(
        self, model: LoadedModel, data: Path, options: Any, info: DistInfo, progress: ProgressCallback | None = None, *,
        dataset_info: DatasetInfo, model_name: str | None = None,
    ) -> dict[str, Any]: ...  # fmt: skip

    def predict(self, model: LoadedModel, inputs: list[Path], request: Any, progress: ProgressCallback | None = None) -> Any: ...


SEGMENTATION = SegmentationTask()
CLASSIFICATION = ClassificationTask()
_TASKS: dict[str, Task] = {"segmentation": SEGMENTATION, "classification": CLASSIFICATION}


def task_for(name: str) -> Task:
    """The ``Task`` of a task name (``DatasetInfo.task``, ``model_task(model)``)."""
    return _TASKS[name]


def check_task(model_task_name: str, data_task: str, data: Path | str, model: str) -> None:
    """One `ConfigError` when ``model`` (a name or a file, of task ``model_task_name``) does not fit the
    dataset ``data`` of task ``data_task``."""
    if model_task_name == data_task:
        return
    example = facts(data_task).example_models
    raise ConfigError(
        f"{model} is a {model_task_name} model but {data} is a {data_task} dataset; "
        f"use a {data_task} model (encnet models lists them: {example})"
    )


def config_task(config: TrainConfig, data_task: str) -> Task:
    """The task of a run of ``config`` on a ``data_task`` dataset, after checking the model fits it and the settings apply."""
    check_task(model_task(config.model), data_task, config.data, f"--model {config.model}")
    task = task_for(data_task)
    task.check(config)
    return task
