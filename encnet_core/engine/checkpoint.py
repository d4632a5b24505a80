"""Checkpoints: written atomically, read with ``weights_only=True``, able to rebuild their model alone.

A training checkpoint is a dict: the model's metadata, ``ModelMetadata.to_dict()`` (engine/metadata.py
owns those fields, their defaults and their validation: model_config, classes, palette, mean, std,
base_size, crop_size, encnet_version; its ``training`` summary is derived from the training state
when read), plus the weights and the training state::

    {"format": "encnet-checkpoint", "version": 1, **metadata, "model": state_dict, "train_config": {...},
     "world_size": int, "optimizer": ..., "scheduler": ..., "scaler": ..., "epoch": int, "iteration": int,
     "rng": {...}, "metrics": {...}, "best_score": float, "best_metrics": {...}}
"""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encnet_core import __version__
from encnet_core.engine.metadata import ModelMetadata
from encnet_core.errors import CheckpointError, ModelError
from encnet_core.models import EncNet, convert_pytorch_encoding_state_dict, create_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "encnet-checkpoint"


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
        ModelMetadata.validate(obj, path)
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
