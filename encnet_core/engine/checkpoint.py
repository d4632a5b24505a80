"""Checkpoints: written atomically, read with ``weights_only=True``, able to rebuild their model alone.

A training checkpoint is a dict::

    {"format": "encnet-checkpoint", "version": 1, "encnet_version": ...,
     "model_config": {...create_model kwargs...}, "model": state_dict,
     "classes": [...], "palette": [[r, g, b], ...], "mean": [...], "std": [...],
     "base_size": int, "crop_size": int, "train_config": {...},
     "optimizer": ..., "scheduler": ..., "scaler": ..., "epoch": int, "iteration": int,
     "rng": {...}, "metrics": {...}, "best_score": float}
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encnet_core import __version__
from encnet_core.errors import CheckpointError, ModelError
from encnet_core.models import EncNet, convert_pytorch_encoding_state_dict, create_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "validate_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "encnet-checkpoint"
MAX_CLASSES = 1024  # masks are 8-bit with 255 = ignore; anything far above is a damaged or hostile file
MAX_IMAGE_SIDE = 8192  # base/crop size bound
MAX_MODEL_ARG = 4096  # bound of every integer model argument (codewords, head channels, ...)


class _RecordingFile:
    """A file wrapper that keeps the OS error of a failed write (torch.save turns it into a RuntimeError)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` through a temp file, an fsync and an atomic rename.

    The file already at ``path`` stays intact until the new one is complete on disk. On an error or
    an interruption the temp file is removed; a full disk raises one `CheckpointError` ("no space
    left on <dir>"), any other OS error one "cannot write" `CheckpointError`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    recorder: _RecordingFile | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw:
            recorder = _RecordingFile(raw)
            torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "encnet_version": __version__, **payload}, recorder)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        error = recorder.error if recorder is not None and recorder.error is not None else exc
        if not isinstance(error, OSError):
            raise
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the previous one is intact" if path.exists() else "nothing was written"
            raise CheckpointError(f"no space left on {path.parent}: {path.name} was not saved ({kept})") from None
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (no code execution). A bare state_dict comes back as ``{"model": sd}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        reason = next((line.strip() for line in text.splitlines() if "global" in line.lower()), "")
        if reason:
            raise CheckpointError(
                f"{path} was refused: loading it would need to import or run code, not only read tensors ({reason})"
            ) from None
        detail = next((line.strip() for line in text.splitlines() if line.strip() and "Weights only load failed" not in line
                       and "weights_only" not in line), "unpickling failed")  # fmt: skip
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint/export ({detail})") from None
    except Exception as exc:  # empty/truncated pickles raise IndexError, struct.error, KeyError, ...
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({detail})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    if obj.get("format") == CHECKPOINT_FORMAT:
        validate_checkpoint(obj, path)
        return obj
    state = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither an encnet checkpoint nor a state_dict")
    return {"model": state}


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> EncNet:
    """Rebuild the model a checkpoint describes and load its weights (strict)."""
    config = ckpt.get("model_config")
    if not config:
        raise CheckpointError(f"{path} has no model description; it is a bare state_dict (use --init-from with --model)")
    try:
        model = create_model(**config)
    except (TypeError, ValueError, ModelError) as exc:  # arguments the builder rejects
        raise CheckpointError(f"{path}: model_config does not build a model ({(str(exc).splitlines() or [''])[0]})") from None
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {config.get('name')}: {str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else exc}") from None
    return model


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_checkpoint(meta: dict[str, Any], path: Path | str = "checkpoint") -> None:
    """Check the metadata of a checkpoint or export before anything is built from it.

    The one check every load path runs (torch.load checkpoints and weights, safetensors headers,
    the encnet.json of TorchScript/pt2/ONNX exports): class names, model_config num_classes and
    palette rows agree, sizes and model arguments are in range (so nothing huge is allocated), and
    the state_dict, when present, holds only tensors. Raises one ``CheckpointError`` naming the field.
    """

    def fail(problem: str) -> None:
        raise CheckpointError(f"{path}: {problem}; the file is damaged or was not written by encnet")

    num_classes = None
    config = meta.get("model_config")
    if config is not None:
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            fail("model_config is not a table of model arguments")
        if not isinstance(config.get("name"), str):
            fail("model_config has no model name")
        num_classes = config.get("num_classes")
        if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
            fail(f"model_config num_classes is {num_classes!r}, not a class count in 1..{MAX_CLASSES}")
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


def adapt_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept encnet and PyTorch-Encoding state_dicts (and DataParallel/DDP prefixes)."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if any(k.startswith(("pretrained.", "auxlayer.")) for k in state):
        state = convert_pytorch_encoding_state_dict(state)
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (torch CPU/CUDA, numpy, random), as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},  # fmt: skip
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    import ast

    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
