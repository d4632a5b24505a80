"""What a training run does differently per task: one small interface (``Task``), one object per task.

train.py has one loop for every task; it asks the run's task (``task_for``) for the parts that
differ and for nothing else:

* ``check(config)``: the settings that do not apply to the task (one `ConfigError`);
* ``build_model(config, num_classes)``: the model (segmentation: ``EncNet`` with the head options;
  classification: a CIFAR classifier);
* ``train_dataset(config)`` / ``val_dataset(config)``: the splits with their transforms (segmentation:
  data/transforms.py; classification: data/classification_transforms.py);
* ``criterion(config)``: ``loss(outputs, targets) -> (total, parts)``;
* ``validate(model, loader, num_classes, info, amp)``: the validation metrics, ``score`` deciding best.pt;
* ``val_metrics``: the metric names a ``Validated`` event carries (engine/events.py).

Which task a run has is the dataset's (``DatasetInfo.task``); the model must be of the same task
(``check_task``). The optimiser's groups follow ``model.task`` (engine/optim.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from encnet_core.config import TrainConfig
from encnet_core.data.dataset import HDF5SegmentationDataset
from encnet_core.data.transforms import eval_transform, train_transform
from encnet_core.engine.classification import ClassificationTask
from encnet_core.engine.device import autocast_context
from encnet_core.engine.distributed import DistInfo, all_reduce_sum
from encnet_core.engine.events import VAL_METRICS
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.engine.metrics import ConfusionMatrix
from encnet_core.errors import ConfigError, DataError
from encnet_core.models import MODELS, create_model, model_task
from encnet_core.weights.builder import build_model

log = logging.getLogger("encnet")

__all__ = ["Task", "SegmentationTask", "ClassificationTask", "task_for", "check_task", "config_task", "SEGMENTATION", "CLASSIFICATION"]


class Task(Protocol):
    """The task-specific parts of a training run (see the module docstring)."""

    name: str  # "segmentation" or "classification": DatasetInfo.task, model.task
    val_metrics: tuple[str, ...]  # the numbers of each Validated event; "score" decides best.pt

    def check(self, config: TrainConfig) -> None: ...

    def build_model(self, config: TrainConfig, num_classes: int) -> nn.Module: ...

    def train_dataset(self, config: TrainConfig) -> Dataset: ...

    def val_dataset(self, config: TrainConfig) -> Dataset: ...

    def criterion(self, config: TrainConfig) -> nn.Module: ...

    def validate(self, model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]: ...


class SegmentationTask:
    """EncNet segmentation: the paper's loss (CE + aux + SE), the reference's augmentation, pixAcc/mIoU."""

    name = "segmentation"
    val_metrics = VAL_METRICS

    def check(self, config: TrainConfig) -> None:
        pass  # every setting applies (build_model refuses the head options an FCN model lacks)

    def build_model(self, config: TrainConfig, num_classes: int) -> nn.Module:
        if config.model not in MODELS:
            create_model(config.model, num_classes)  # raises the "unknown model" error
        overrides: dict[str, Any] = {"aux": config.aux, "output_stride": config.output_stride, "dropout": config.dropout}
        if MODELS[config.model].get("head") != "fcn":
            overrides.update(se_loss=config.se_loss, lateral=config.lateral or None, num_codes=config.num_codes)
        elif config.lateral:
            raise ConfigError(f"--lateral does not apply to {config.model} (no EncHead)")
        return build_model(config.model, num_classes, backbone_weights=config.backbone_weights, **overrides)

    def train_dataset(self, config: TrainConfig) -> HDF5SegmentationDataset:
        dataset = HDF5SegmentationDataset(
            Path(config.data),
            config.train_split,
            train_transform(config.base_size, config.crop_size, (config.scale_min, config.scale_max), config.mean, config.std),
            strict=not config.skip_bad,
        )
        if dataset.labelled_pixels() == 0:
            raise DataError(
                f"{config.data}: the {config.train_split} split has no labelled pixel (no masks, or only 255 by its "
                "class_pixels, which `encnet targets` recomputes): nothing to train on"
            )
        return dataset

    def val_dataset(self, config: TrainConfig) -> HDF5SegmentationDataset:
        dataset = HDF5SegmentationDataset(
            Path(config.data), config.val_split, eval_transform(config.crop_size, config.mean, config.std), strict=not config.skip_bad
        )
        if dataset.labelled_pixels() == 0:
            raise DataError(
                f"{config.data}: the {config.val_split} split has no labelled pixel (every mask pixel is 255 by "
                "its class_pixels); validate on another split or pass --val-split ''"
            )
        return dataset

    def criterion(self, config: TrainConfig) -> nn.Module:
        return SegmentationLoss(config.se_weight if config.se_loss else 0.0, config.aux_weight if config.aux else 0.0)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]:
        """Single-scale validation; confusion matrices are summed over ranks."""
        model.eval()
        confusion = ConfusionMatrix(num_classes, info.device)
        for images, masks in loader:
            images = images.to(info.device, non_blocking=True)
            with autocast_context(info.device, amp):
                logits = model(images)["out"]
            confusion.update(logits.argmax(1), masks)
        all_reduce_sum(confusion.matrix, info)
        if int(confusion.matrix.sum()) == 0:
            raise DataError("the validation images have no labelled pixel (every mask pixel is 255): nothing to score")
        metrics = confusion.compute()
        metrics["score"] = (metrics["pixAcc"] + metrics["mIoU"]) / 2
        return metrics


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
    example = "encnet_cifar14 or encnet_cifar_tiny" if data_task == "classification" else "encnet_resnet50s or encnet_tiny"
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
