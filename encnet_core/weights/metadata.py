"""What a saved model says about itself: the one definition of the metadata every checkpoint and export carries.

``ModelMetadata`` owns the fields, their defaults, their validation and their dict form. Every
writer stores ``ModelMetadata.to_dict()`` (the training checkpoint beside its training state, each
export inside its file as ``encnet.json``) and every reader goes through ``ModelMetadata.from_dict``
(torch.load checkpoints and weights, safetensors headers, the ``encnet.json`` of TorchScript, pt2 and
ONNX exports), so a damaged or hostile file is refused with one line naming the field before
anything is built from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encnet_core.choices import PRECISIONS, TASKS  # what a model predicts, and computes with
from encnet_core.constants import DEFAULT_BASE_SIZE, DEFAULT_CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD
from encnet_core.errors import CheckpointError
from encnet_core.models import create_model, list_models, model_task
from encnet_core.palette import voc_palette
from encnet_core.tasks import facts

__all__ = [
    "ModelMetadata",
    "MAX_CLASSES",
    "MAX_IMAGE_SIDE",
    "MAX_MODEL_ARG",
    "METADATA_NAME",
]

METADATA_NAME = "encnet.json"  # the metadata member/key of an export (TorchScript, pt2, ONNX, safetensors header)

MAX_CLASSES = 1024  # masks are 8-bit with 255 = ignore; anything far above is a damaged or hostile file
MAX_IMAGE_SIDE = 8192  # base/crop size bound
MAX_MODEL_ARG = 4096  # bound of every integer model argument (codewords, head channels, ...)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to rebuild a model and run it like in training, besides its weights."""

    model_config: dict[str, Any] | None  # create_model kwargs (name, num_classes, overrides); None for a bare state_dict
    classes: tuple[str, ...]  # class names, index = label value
    palette: tuple[tuple[int, int, int], ...] = ()  # (C, 3) RGB colours; empty: the VOC colour map for len(classes)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation mean (RGB, 0..1)
    std: tuple[float, float, float] = IMAGENET_STD  # normalisation std (RGB, 0..1)
    base_size: int = DEFAULT_BASE_SIZE  # long side at scale 1.0 (multi-scale inference); a file without one gets the default
    crop_size: int = DEFAULT_CROP_SIZE  # training crop, the sliding window's side; likewise
    encnet_version: str | None = None  # package version that wrote the file
    training: dict[str, Any] | None = None  # iteration, epoch, dataset, best_val, best_iteration
    export_format: str | None = None  # exports only: weights, safetensors, torchscript, pt2, onnx
    half: bool | None = None  # exports only: float16 weights / inputs
    task: str = "segmentation"  # segmentation ((N, C, H, W) logits) or classification ((N, C) logits); a file without one: its model's
    precision: str = "fp32"  # numbers the model computes with: fp32, fp16 (--half) or int8 (--int8: ONNX or OpenVINO); a file without one: fp32

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        rows = self.palette if len(self.palette) else voc_palette(len(self.classes)).tolist()
        object.__setattr__(self, "palette", tuple(tuple(row) for row in rows))
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_se(self) -> bool:
        """Whether the described model has the SE head (its graph exports then return SE logits).

        For graph formats (TorchScript, pt2, ONNX), which hold no ``EncNet`` to ask: the registry
        builds the described model on the meta device (no memory, no weights) and the model says.
        A description this version cannot build (an unknown variant) has no SE head to use.
        """
        if not self.model_config or not facts(self.task).per_pixel:
            return False
        try:
            with torch.device("meta"):
                return getattr(create_model(**self.model_config), "has_se", False)
        except Exception:  # noqa: BLE001 - ModelError, TypeError, ... from arguments this version's builder rejects
            return False

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and values (JSON and ``torch.load(weights_only=True)`` safe); export fields only when set."""
        out: dict[str, Any] = {
            "model_config": self.model_config,
            "classes": list(self.classes),
            "palette": [list(row) for row in self.palette],
            "mean": list(self.mean),
            "std": list(self.std),
            "base_size": self.base_size,
            "crop_size": self.crop_size,
            "encnet_version": self.encnet_version,
            "training": self.training,
            "task": self.task,
        }
        for key in ("export_format", "half"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.export_format is not None or self.precision != "fp32":
            out["precision"] = self.precision  # exports record it; checkpoints (fp32) stay as before
        return out

    @classmethod
    def from_dict(cls, meta: dict[str, Any], path: Path | str = "checkpoint") -> ModelMetadata:
        """The metadata of a checkpoint, export or ``encnet.json`` dict: validated, defaults filled in.

        A training checkpoint's ``training`` summary is derived from its training state.
        Raises one ``CheckpointError`` naming the field (see ``validate``).
        """
        cls.validate(meta, path)
        config = meta.get("model_config")
        classes = meta.get("classes") or [f"class_{i}" for i in range((config or {}).get("num_classes", 0))]
        return cls(
            model_config=config,
            classes=tuple(classes),
            palette=tuple(meta.get("palette") or ()),
            mean=tuple(meta.get("mean") or IMAGENET_MEAN),
            std=tuple(meta.get("std") or IMAGENET_STD),
            base_size=int(meta.get("base_size") or DEFAULT_BASE_SIZE),
            crop_size=int(meta.get("crop_size") or DEFAULT_CROP_SIZE),
            encnet_version=meta.get("encnet_version"),
            training=meta.get("training") or _training_summary(meta),
            export_format=meta.get("export_format"),
            half=meta.get("half"),
            task=meta.get("task") or _model_config_task(config) or "segmentation",
            precision=meta.get("precision") or ("fp16" if meta.get("half") else "fp32"),
        )

    @staticmethod
    def validate(meta: dict[str, Any], path: Path | str = "checkpoint") -> None:
        """Check the metadata of a checkpoint or export before anything is built from it.

        The one check every load path runs (torch.load checkpoints and weights, safetensors headers,
        the encnet.json of TorchScript/pt2/ONNX exports): class names, model_config num_classes and
        palette rows agree, sizes and model arguments are in range (so nothing huge is allocated), and
        the state_dict, when present, holds only tensors. Raises one ``CheckpointError`` naming the field.
        """

        def fail(problem: str) -> None:
            raise CheckpointError(f"{path}: {problem}; the file is damaged or was not written by encnet")

        num_classes = None
        precision = meta.get("precision")
        if precision is not None and precision not in PRECISIONS:
            fail(f"precision is {precision!r}, not one of {', '.join(PRECISIONS)}")
        task = meta.get("task")
        if task is not None and task not in TASKS:
            fail(f"task is {task!r}, not one of {', '.join(TASKS)}")
        config = meta.get("model_config")
        if config is not None:
            if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
                fail("model_config is not a table of model arguments")
            if not isinstance(config.get("name"), str):
                fail("model_config has no model name")
            num_classes = config.get("num_classes")
            if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
                fail(f"model_config num_classes is {num_classes!r}, not a class count in 1..{MAX_CLASSES}")
            if task is not None and _model_config_task(config) not in (None, task):
                fail(f"task is {task!r} but model {config['name']} is a {_model_config_task(config)} model")
            for key, value in config.items():
                if key == "backbone_weights":
                    fail("model_config asks to load backbone weights from elsewhere; a checkpoint carries its own")
                if not (value is None or isinstance(value, (bool, int, float, str))):
                    fail(f"model_config {key} is a {type(value).__name__}, not a plain value")
                if _is_int(value) and not 0 <= value <= MAX_MODEL_ARG and key != "num_classes":
                    fail(f"model_config {key}={value} is out of range (0..{MAX_MODEL_ARG})")
        classes = meta.get("classes")
        if classes is not None:
            if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
                fail("classes is not a list of class names")
            if not 1 <= len(classes) <= MAX_CLASSES:
                fail(f"classes lists {len(classes)} names, not 1..{MAX_CLASSES}")
            if num_classes is not None and len(classes) != num_classes:
                fail(f"classes lists {len(classes)} names but model_config num_classes is {num_classes}")
        count = len(classes) if classes else num_classes
        palette = meta.get("palette")
        if palette is not None:
            rows_ok = isinstance(palette, (list, tuple)) and all(
                isinstance(row, (list, tuple)) and len(row) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in row) for row in palette
            )
            if not rows_ok:
                fail("palette is not a list of [r, g, b] rows of integers 0..255")
            if count is not None and len(palette) != count:
                fail(f"palette has {len(palette)} rows for {count} classes")
        for key in ("mean", "std"):
            value = meta.get(key)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                fail(f"{key} is {value!r}, not three finite numbers (R, G, B)")
            if key == "std" and not all(v > 0 for v in value):
                fail(f"std is {list(value)}, it must be positive")
        for key in ("base_size", "crop_size"):
            value = meta.get(key)
            if value is not None and (not _is_int(value) or not 1 <= value <= MAX_IMAGE_SIDE):
                fail(f"{key} is {value!r}, not a size in 1..{MAX_IMAGE_SIDE} pixels")
        state = meta.get("model")
        if state is not None and (not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values())):
            fail("its model entry is not a state_dict of tensors")


def _model_config_task(config: dict[str, Any] | None) -> str | None:
    """The task of the registered model a model_config names; None for a name this version does not know.

    (A file from before classification existed has no ``task``: its models are all segmentation ones.)
    """
    if not config or config.get("name") not in list_models():
        return "segmentation" if not config else None
    return model_task(config["name"])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _training_summary(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """A training checkpoint's iteration, epoch, dataset and best validation scores (what exports carry)."""
    if "iteration" not in ckpt:
        return None
    config = ckpt.get("train_config") or {}
    best = ckpt.get("best_metrics") or {}
    return {
        "iteration": ckpt.get("iteration"),
        "epoch": ckpt.get("epoch"),
        "dataset": config.get("data") if isinstance(config, dict) else None,
        "best_val": {k: round(best[k], 4) for k in ("pixAcc", "mIoU", "mIoU_all", "top1_error", "top5_error") if k in best} or None,
        "best_iteration": best.get("iteration"),
    }
