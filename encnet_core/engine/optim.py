"""The paper's optimiser and schedule: SGD with the heads at ``head_lr_mult`` x the backbone lr, poly decay."""

from __future__ import annotations

import torch

from encnet_core.config import TrainConfig
from encnet_core.models import EncNet

__all__ = ["PolySchedule", "scaled_lr", "build_optimizer", "build_scheduler"]


class PolySchedule:
    """lr factor: linear warm-up, then (1 - it / total) ** power, per iteration (picklable for LambdaLR)."""

    def __init__(self, total_iters: int, power: float = 0.9, warmup_iters: int = 0) -> None:
        self.total_iters, self.power, self.warmup_iters = total_iters, power, warmup_iters

    def __call__(self, iteration: int) -> float:
        factor = max(0.0, 1.0 - iteration / self.total_iters) ** self.power
        if iteration < self.warmup_iters:
            factor *= (iteration + 1) / self.warmup_iters
        return factor


def scaled_lr(config: TrainConfig, global_batch: int) -> float:
    """The backbone lr: ``config.lr`` is given per 16 images and scales linearly with the global batch."""
    return config.lr * global_batch / 16


def build_optimizer(model: EncNet, config: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD over the trainable parameters: backbone at ``lr`` (group 0, when any), heads at ``lr * head_lr_mult``."""
    head = {id(p) for p in model.head_parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    heads = [p for p in model.head_parameters() if p.requires_grad]
    groups = [{"params": heads, "lr": lr * config.head_lr_mult}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr})
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay over ``total_iters`` steps (``scheduler.step()`` once per iteration), after the warm-up."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PolySchedule(total_iters, config.poly_power, config.warmup_iters))
