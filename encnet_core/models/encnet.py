"""The EncNet segmentation model and its family on the same dilated backbones: the FCN baseline and DeepLabV3.

``forward(x)`` returns a dict: ``"out"`` (B, classes, H, W) always; in training mode also ``"aux"``
(B, classes, H, W) when the auxiliary FCN head is on and ``"se"`` (B, classes) SE logits when SE-loss
is on. ``forward(x, with_se=True)`` also returns ``"se"`` in eval mode (used by ``encnet predict``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from encnet_core.models.backbones import build_backbone
from encnet_core.models.layers import DeepLabV3Head, EncHead, FCNHead

__all__ = ["EncNet"]


class EncNet(nn.Module):
    """Dilated ResNet or ResNeSt + EncHead (``head="enc"``), FCNHead (``head="fcn"``, the ablation
    baseline) or DeepLabV3Head (``head="deeplab"``); the auxiliary FCN head on layer3 for all three.

    The heads are the reference's (torch-encoding 1.2.1: ``EncNet``, ``FCN`` and ``DeepLabV3`` of
    ``encoding/models/sseg``); DeepLabV3's atrous rates are 12/24/36 at output stride 8, 6/12/18 at 16.
    """

    HEADS = ("enc", "fcn", "deeplab")

    task = "segmentation"

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        head: str = "enc",
        output_stride: int = 8,
        lateral: bool = False,
        num_codes: int = 32,
        head_channels: int = 512,
        aux: bool = True,
        se_loss: bool = True,
        align_corners: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {', '.join(self.HEADS)}, got {head!r}")
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.head_type = head
        self.backbone = build_backbone(backbone, output_stride)
        _, c2, c3, c4 = self.backbone.channels
        if head == "enc":
            self.head: nn.Module = EncHead(
                (c2, c3, c4),
                num_classes,
                channels=head_channels,
                num_codes=num_codes,
                se_loss=se_loss,
                lateral=lateral,
                dropout=dropout,
            )
        elif head == "deeplab":
            rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
            self.head = DeepLabV3Head(c4, num_classes, rates=rates, dropout=dropout)
        else:
            self.head = FCNHead(c4, num_classes, dropout=dropout)
        self.aux_head = FCNHead(c3, num_classes, dropout=dropout) if aux else None

    def _upsample(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor, with_se: bool = False, upsample: bool = True) -> dict[str, Tensor]:
        """``upsample=False``: ``"out"`` at the head's resolution (``_upsample`` brings it to the input's)."""
        size = (x.shape[-2], x.shape[-1])
        _, c2, c3, c4 = self.backbone(x)
        se: Tensor | None = None
        if self.head_type == "enc":
            logits, se = self.head(c2, c3, c4)
        else:
            logits = self.head(c4)
        outputs = {"out": self._upsample(logits, size) if upsample else logits}  # (B, classes, H, W)
        if self.training and self.aux_head is not None:
            outputs["aux"] = self._upsample(self.aux_head(c3), size)  # (B, classes, H, W)
        if se is not None and (self.training or with_se):
            outputs["se"] = se  # (B, classes)
        return outputs

    @property
    def has_se(self) -> bool:
        """Whether the model has the SE head: ``forward(x, with_se=True)`` then returns ``"se"``."""
        return self.head_type == "enc" and self.head.encmodule.selayer is not None

    def classifier_prefixes(self) -> tuple[str, ...]:
        """State-dict name prefixes of the layers whose shape depends on the class count."""
        prefixes = [{"enc": "head.conv6.1.", "deeplab": "head.block.4."}.get(self.head_type, "head.4.")]
        if self.has_se:
            prefixes.append("head.encmodule.selayer.")
        if self.aux_head is not None:
            prefixes.append("aux_head.4.")
        return tuple(prefixes)

    def reset_classifier(self, num_classes: int) -> list[str]:
        """Replace every class-specific layer by a freshly initialised one for ``num_classes`` classes.

        Returns the replaced layers' names (as in the state dict, without the parameter suffix).
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        replaced: list[str] = []
        if self.head_type == "enc":
            old = self.head.conv6[1]
            self.head.conv6[1] = nn.Conv2d(old.in_channels, num_classes, 1)
            replaced.append("head.conv6.1")
            if self.has_se:
                self.head.encmodule.selayer = nn.Linear(self.head.encmodule.selayer.in_features, num_classes)
                replaced.append("head.encmodule.selayer")
        else:
            layers = self.head.block if self.head_type == "deeplab" else self.head
            layers[4] = nn.Conv2d(layers[4].in_channels, num_classes, 1)
            replaced.append("head.block.4" if self.head_type == "deeplab" else "head.4")
        if self.aux_head is not None:
            self.aux_head[4] = nn.Conv2d(self.aux_head[4].in_channels, num_classes, 1)
            replaced.append("aux_head.4")
        self.num_classes = num_classes
        if hasattr(self, "config"):
            self.config = {**self.config, "num_classes": num_classes}
        return replaced

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the heads (trained at 10x the backbone learning rate)."""
        params = list(self.head.parameters())
        if self.aux_head is not None:
            params += list(self.aux_head.parameters())
        return params

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, head={self.head_type!r}"

    # set by create_model: the registered name and arguments, so checkpoints can rebuild the model
    config: dict[str, Any]
