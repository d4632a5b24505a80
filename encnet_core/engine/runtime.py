"""A model ready for inference, from any saved form: what ``evaluate`` and ``predict`` run.

``load_model(path, device)`` reads a training checkpoint (``last.pt``/``best.pt``) or a weights export
(issue: export formats add TorchScript, pt2 and ONNX here) and returns a ``LoadedModel`` carrying the
forward function and the metadata inference needs (classes, palette, normalisation, sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encnet_core.engine.checkpoint import load_checkpoint, model_from_checkpoint
from encnet_core.engine.device import autocast_context
from encnet_core.errors import CheckpointError
from encnet_core.palette import IMAGENET_MEAN, IMAGENET_STD, voc_palette

__all__ = ["LoadedModel", "load_model", "model_metadata", "peek_metadata"]


@dataclass
class LoadedModel:
    """A callable segmentation model plus its metadata."""

    forward: Callable[[Tensor], Tensor]  # (N, 3, h, w) normalised -> (N, C, h, w) logits
    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    base_size: int
    crop_size: int
    device: torch.device
    source: str  # "checkpoint", "weights", ...
    se_forward: Callable[[Tensor], Tensor] | None = None  # (N, 3, h, w) -> (N, C) SE logits, if the model has them
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 (3, H, W) or (N, 3, H, W) RGB -> normalised float32 on the model's device."""
        x = image.to(self.device, non_blocking=True).float() / 255.0
        mean = torch.tensor(self.mean, device=self.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(-1, 1, 1)
        return (x - mean) / std

    @property
    def pad_value(self) -> tuple[float, float, float]:
        """Normalised value of a black pixel (the reference pads with it)."""
        return tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))  # type: ignore[return-value]


def model_metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The metadata fields of a checkpoint or weights export (no tensors)."""
    classes = ckpt.get("classes") or [f"class_{i}" for i in range(ckpt.get("model_config", {}).get("num_classes", 0))]
    return {
        "model_config": ckpt.get("model_config"),
        "classes": classes,
        "palette": ckpt.get("palette") or voc_palette(len(classes)).tolist(),
        "mean": list(ckpt.get("mean") or IMAGENET_MEAN),
        "std": list(ckpt.get("std") or IMAGENET_STD),
        "base_size": int(ckpt.get("base_size") or 520),
        "crop_size": int(ckpt.get("crop_size") or 480),
        "encnet_version": ckpt.get("encnet_version"),
        "training": ckpt.get("training") or _training_summary(ckpt),
    }


def _training_summary(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    if "iteration" not in ckpt:
        return None
    config = ckpt.get("train_config") or {}
    return {
        "iteration": ckpt.get("iteration"),
        "epoch": ckpt.get("epoch"),
        "dataset": config.get("data"),
        "best": ckpt.get("best_metrics"),
        "metrics": ckpt.get("metrics"),
    }


def load_model(path: Path, device: torch.device, amp: str = "off") -> LoadedModel:
    """Load a checkpoint or export for inference on ``device`` (eval mode, no autograd)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if "model_config" not in ckpt:
        raise CheckpointError(
            f"{path} is a bare state_dict without model metadata; train or export with encnet, or fine-tune from it with --init-from"
        )
    meta = model_metadata(ckpt)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    def forward(x: Tensor) -> Tensor:
        with torch.inference_mode(), autocast_context(device, amp):
            return model(x.to(device))["out"]

    se_forward = None
    if getattr(model.head, "encmodule", None) is not None and model.head.encmodule.selayer is not None:

        def se_forward(x: Tensor) -> Tensor:
            with torch.inference_mode(), autocast_context(device, amp):
                return model(x.to(device), with_se=True)["se"]

    return LoadedModel(
        forward=forward,
        classes=list(meta["classes"]),
        palette=np.asarray(meta["palette"], dtype=np.uint8),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        base_size=meta["base_size"],
        crop_size=meta["crop_size"],
        device=device,
        source="weights" if ckpt.get("kind") == "weights" else "checkpoint",
        se_forward=se_forward,
        metadata=meta,
    )


def peek_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a checkpoint or export without building the model."""
    ckpt = load_checkpoint(Path(path))
    return model_metadata(ckpt)
