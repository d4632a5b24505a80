"""Segmentation metrics from one confusion matrix accumulated on the device (rows: label, columns: prediction)."""

from __future__ import annotations

from typing import Any

import torch

from encnet_core.constants import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "metrics_from_confusion"]


class ConfusionMatrix:
    """(C, C) int64 counts; pixels labelled ``ignore_index`` are left out of every count."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` and ``target`` (B, H, W) or (H, W) integer class maps."""
        C = self.num_classes
        target = target.to(self.matrix.device).reshape(-1).long()
        prediction = prediction.to(self.matrix.device).reshape(-1).long()
        keep = (target != self.ignore_index) & (target >= 0) & (target < C)
        index = target[keep] * C + prediction[keep].clamp(0, C - 1)
        self.matrix += torch.bincount(index, minlength=C * C).view(C, C)

    def compute(self) -> dict[str, Any]:
        return metrics_from_confusion(self.matrix)


def metrics_from_confusion(matrix: torch.Tensor) -> dict[str, Any]:
    """pixAcc, mIoU (both conventions), mean accuracy, frequency-weighted IoU and per-class values.

    ``mIoU`` (headline) averages over classes present in the labels or the predictions (union > 0),
    like mmsegmentation; ``mIoU_all`` averages over every class with empty ones counted as 0, like
    PyTorch-Encoding. Per-class IoU/accuracy are None for classes with an empty union/no labels.
    """
    m = matrix.double().cpu()
    tp = m.diag()
    labelled = m.sum(1)  # TP + FN
    predicted = m.sum(0)  # TP + FP
    union = labelled + predicted - tp
    total = labelled.sum().item()
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.zeros_like(tp))
    acc = torch.where(labelled > 0, tp / labelled.clamp_min(1), torch.zeros_like(tp))
    present = union > 0
    freq = labelled / max(total, 1)
    return {
        "pixAcc": tp.sum().item() / total if total else 0.0,
        "mIoU": iou[present].mean().item() if present.any() else 0.0,
        "mIoU_all": iou.mean().item(),
        "mean_acc": acc[labelled > 0].mean().item() if (labelled > 0).any() else 0.0,
        "fwIoU": (freq * iou).sum().item(),
        "iou": [iou[c].item() if present[c] else None for c in range(len(tp))],
        "acc": [acc[c].item() if labelled[c] > 0 else None for c in range(len(tp))],
        "pixels": int(total),
    }
