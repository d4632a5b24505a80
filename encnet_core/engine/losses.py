"""EncNet's training loss: CE(seg) + aux_weight * CE(aux) + se_weight * BCE(se)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encnet_core.constants import IGNORE_INDEX

__all__ = ["SegmentationLoss", "se_targets"]


def se_targets(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Multi-hot class presence of each label map: (B, H, W) int -> (B, num_classes) float.

    One scatter over the batch; ``ignore_index`` and any value outside 0..num_classes-1 are dropped.
    """
    flat = labels.reshape(labels.shape[0], -1).long()  # (B, N)
    valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
    index = torch.where(valid, flat, torch.full_like(flat, num_classes))  # invalid -> spare column
    present = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device)
    present.scatter_(1, index, 1.0)
    return present[:, :num_classes]  # (B, num_classes)


class SegmentationLoss(nn.Module):
    """The EncNet loss over the model's output dict.

    ``forward(outputs, labels)`` returns ``(total, parts)`` with parts ``seg`` and, when the
    outputs contain them, ``aux`` and ``se`` (unweighted, detached). The SE target is built from
    ``labels`` (the training crop), as in the paper.
    """

    def __init__(self, se_weight: float = 0.2, aux_weight: float = 0.2, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.se_weight = se_weight
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def _cross_entropy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean CE over non-ignored pixels; 0 (not NaN) for a batch whose pixels are all ignored."""
        summed = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="sum")
        return summed / (labels != self.ignore_index).sum().clamp_min(1)

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        labels = labels.long()
        seg = self._cross_entropy(outputs["out"], labels)
        total = seg
        parts = {"seg": seg.detach()}
        if "aux" in outputs and self.aux_weight > 0:
            aux = self._cross_entropy(outputs["aux"], labels)
            total = total + self.aux_weight * aux
            parts["aux"] = aux.detach()
        if "se" in outputs and self.se_weight > 0:
            se_logits = outputs["se"].float()
            target = se_targets(labels, se_logits.shape[1], self.ignore_index)
            se = F.binary_cross_entropy_with_logits(se_logits, target)
            total = total + self.se_weight * se
            parts["se"] = se.detach()
        return total, parts
