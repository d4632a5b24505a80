"""SGD and the lr schedules: segmentation heads at ``head_lr_mult`` x the backbone lr (the paper's),
classifiers in one group (the reference's recognition experiments); poly, cosine or step decay per iteration."""

from __future__ import annotations

import math

import torch
from torch import nn

from encnet_core.config import TrainConfig
from encnet_core.tasks import DEFAULT, facts

__all__ = ["PolySchedule", "CosineSchedule", "StepSchedule", "lr_schedule", "scaled_lr", "build_optimizer", "build_scheduler"]


class _Schedule:
    """An lr factor per iteration with a linear warm-up over the first ``warmup_iters`` (picklable for LambdaLR)."""

    warmup_iters: int

    def decay(self, iteration: int) -> float:
        raise NotImplementedError

    def __call__(self, iteration: int) -> float:
        factor = self.decay(iteration)
        if iteration < self.warmup_iters:
            factor *= (iteration + 1) / self.warmup_iters
        return factor


class PolySchedule(_Schedule):
    """lr factor: linear warm-up, then (1 - it / total) ** power (the paper's segmentation schedule)."""

    def __init__(self, total_iters: int, power: float = 0.9, warmup_iters: int = 0) -> None:
        self.total_iters, self.power, self.warmup_iters = total_iters, power, warmup_iters

    def decay(self, iteration: int) -> float:
        return max(0.0, 1.0 - iteration / self.total_iters) ** self.power


class CosineSchedule(_Schedule):
    """lr factor 0.5 * (1 + cos(pi * it / total)): PyTorch-Encoding's ``LR_Scheduler`` mode ``cos``
    (encoding/utils.py, v0.2.0), per iteration from 1 at the first step."""

    def __init__(self, total_iters: int, warmup_iters: int = 0) -> None:
        self.total_iters, self.warmup_iters = total_iters, warmup_iters

    def decay(self, iteration: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(iteration, self.total_iters) / self.total_iters))


class StepSchedule(_Schedule):
    """lr factor 0.1 ** (epoch // step_epochs), epoch counted from 0: ``LR_Scheduler`` mode ``step``
    (``lr * 0.1 ** ((epoch - 1) // lr_step)`` with its epochs counted from 1)."""

    def __init__(self, iters_per_epoch: int, step_epochs: int, warmup_iters: int = 0) -> None:
        self.iters_per_epoch, self.step_epochs, self.warmup_iters = iters_per_epoch, step_epochs, warmup_iters

    def decay(self, iteration: int) -> float:
        return 0.1 ** ((iteration // self.iters_per_epoch) // self.step_epochs)


def lr_schedule(config: TrainConfig, total_iters: int, iters_per_epoch: int) -> _Schedule:
    """The lr factor ``config.lr_schedule`` names, over a run of ``total_iters`` iterations."""
    if config.lr_schedule == "cosine":
        return CosineSchedule(total_iters, config.warmup_iters)
    if config.lr_schedule == "step":
        return StepSchedule(iters_per_epoch, config.lr_step, config.warmup_iters)
    return PolySchedule(total_iters, config.poly_power, config.warmup_iters)


def scaled_lr(config: TrainConfig, global_batch: int) -> float:
    """The backbone lr: ``config.lr`` is given per 16 images and scales linearly with the global batch."""
    return config.lr * global_batch / 16


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD over the trainable parameters.

    Segmentation: backbone at ``lr`` (group 0, when any), heads at ``lr * head_lr_mult``.
    Classification: every parameter at ``lr`` in one group, as the reference's recognition
    experiments (``get_optimizer(args, model, diff_LR=False)``); ``head_lr_mult`` does not apply.
    """
    if not facts(getattr(model, "task", DEFAULT)).per_pixel:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    head = {id(p) for p in model.head_parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    heads = [p for p in model.head_parameters() if p.requires_grad]
    groups = [{"params": heads, "lr": lr * config.head_lr_mult}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr})
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_iters: int, iters_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """``config.lr_schedule`` over ``total_iters`` steps (``scheduler.step()`` once per iteration), after the
    warm-up; ``iters_per_epoch`` places the step schedule's decays."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config, total_iters, iters_per_epoch))
