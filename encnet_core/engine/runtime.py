"""A model ready for inference, from any saved form: what ``evaluate`` and ``predict`` run.

``load_model(path, device)`` reads a training checkpoint (``last.pt``/``best.pt``) or a weights export
(issue: export formats add TorchScript, pt2 and ONNX here) and returns a ``LoadedModel`` carrying the
forward function and the metadata inference needs (classes, palette, normalisation, sizes).
"""

from __future__ import annotations

import json
import warnings
import zipfile
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

__all__ = ["LoadedModel", "load_model", "model_metadata", "peek_metadata", "detect_format", "METADATA_NAME"]

METADATA_NAME = "encnet.json"


@dataclass
class LoadedModel:
    """A callable segmentation model plus its metadata."""

    run: Callable[[Tensor], tuple[Tensor, Tensor | None]]  # (N, 3, h, w) normalised -> (logits (N, C, h, w), SE logits (N, C) or None)
    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    base_size: int
    crop_size: int
    device: torch.device
    source: str  # "checkpoint", "weights", ...
    has_se: bool = False  # whether run() returns SE logits
    metadata: dict[str, Any] = field(default_factory=dict)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, h, w) normalised -> (N, C, h, w) logits."""
        return self.run(x)[0]

    def se_forward(self, x: Tensor) -> Tensor | None:
        """(N, 3, h, w) normalised -> (N, C) SE logits, or None for models without the SE head."""
        return self.run(x)[1]

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
    best = ckpt.get("best_metrics") or {}
    return {
        "iteration": ckpt.get("iteration"),
        "epoch": ckpt.get("epoch"),
        "dataset": config.get("data"),
        "best_val": {k: round(best[k], 4) for k in ("pixAcc", "mIoU", "mIoU_all") if k in best} or None,
        "best_iteration": best.get("iteration"),
    }


def detect_format(path: Path) -> str:
    """"checkpoint" (torch.save: checkpoints and weights exports), "torchscript", "pt2" or "onnx"."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise CheckpointError(f"{path} is corrupt (a damaged zip archive)") from None
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("archive_format") for n in names):
            return "pt2"
        return "checkpoint"
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":  # ONNX protobuf: field 1 (ir_version) first
        return "onnx"
    return "checkpoint"


def _metadata_from_json(text: str | bytes, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (ValueError, TypeError):
        meta = None
    if not isinstance(meta, dict) or "classes" not in meta:
        raise CheckpointError(f"{path} has no encnet metadata ({METADATA_NAME}); export it with `encnet export`")
    return meta


def _from_metadata(run, has_se: bool, meta: dict[str, Any], device: torch.device, source: str) -> LoadedModel:
    return LoadedModel(
        run=run,
        classes=list(meta["classes"]),
        palette=np.asarray(meta["palette"], dtype=np.uint8),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        base_size=int(meta["base_size"]),
        crop_size=int(meta["crop_size"]),
        device=device,
        source=source,
        has_se=has_se,
        metadata=meta,
    )


def _split_outputs(result: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(result, (tuple, list)):
        return result[0], result[1] if len(result) > 1 else None
    return result, None


def _graph_model(module: Any, meta: dict[str, Any], device: torch.device, source: str) -> LoadedModel:
    """TorchScript/pt2 modules return (out, se) or out."""
    dtype = torch.float16 if meta.get("half") else torch.float32

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.inference_mode():
            return _split_outputs(module(x.to(device, dtype)))

    has_se = meta.get("model_config", {}).get("se_loss", True) and not str(
        meta.get("model_config", {}).get("name", "")).startswith("fcn")  # fmt: skip
    return _from_metadata(run, bool(has_se), meta, device, source)


def _load_onnx(path: Path, device: torch.device) -> LoadedModel:
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX model: install onnxruntime (pip install 'encnet[onnx]')") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CheckpointError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    meta = _metadata_from_json(session.get_modelmeta().custom_metadata_map.get(METADATA_NAME, ""), path)
    names = [o.name for o in session.get_outputs()]
    dtype = np.float16 if meta.get("half") else np.float32

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        outputs = session.run(None, {"image": x.detach().cpu().numpy().astype(dtype)})
        se = torch.from_numpy(outputs[names.index("se")]).to(device) if "se" in names else None
        return torch.from_numpy(outputs[names.index("out")]).to(device), se

    return _from_metadata(run, "se" in names, meta, device, "onnx")


def load_model(path: Path, device: torch.device, amp: str = "off") -> LoadedModel:
    """Load a checkpoint, weights, TorchScript, pt2 or ONNX export for inference on ``device``."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "torchscript":
        extra = {METADATA_NAME: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a readable TorchScript model ({str(exc).splitlines()[0]})") from None
        return _graph_model(module.eval(), _metadata_from_json(extra[METADATA_NAME], path), device, "torchscript")
    if fmt == "pt2":
        extra = {METADATA_NAME: ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as exc:  # the pt2 loader raises several types
            raise CheckpointError(f"{path} is not a readable pt2 program ({str(exc).splitlines()[0]})") from None
        module = program.module().to(device)
        return _graph_model(module, _metadata_from_json(extra[METADATA_NAME], path), device, "pt2")
    if fmt == "onnx":
        return _load_onnx(path, device)
    ckpt = load_checkpoint(path)
    if "model_config" not in ckpt:
        raise CheckpointError(
            f"{path} is a bare state_dict without model metadata; train or export with encnet, or fine-tune from it with --init-from"
        )
    meta = model_metadata(ckpt)
    model = model_from_checkpoint(ckpt, path).float().to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    has_se = getattr(model.head, "encmodule", None) is not None and model.head.encmodule.selayer is not None

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.inference_mode(), autocast_context(device, amp):
            outputs = model(x.to(device, torch.float32), with_se=has_se)
        return outputs["out"], outputs.get("se")

    source = "weights" if ckpt.get("kind") == "weights" else "checkpoint"
    return _from_metadata(run, has_se, meta, device, source)


def peek_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a checkpoint or export (format detected from the file)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "checkpoint":
        ckpt = load_checkpoint(path)
        return {"format": ckpt.get("kind", "checkpoint") if "model_config" in ckpt else "state_dict", **model_metadata(ckpt)}
    if fmt == "onnx":
        return _load_onnx(path, torch.device("cpu")).metadata
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"extra/{METADATA_NAME}") or name.endswith(f"/{METADATA_NAME}"):
                return _metadata_from_json(archive.read(name), path)
    raise CheckpointError(f"{path} has no encnet metadata ({METADATA_NAME})")
