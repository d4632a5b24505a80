"""Checkpoints: written atomically, read with ``weights_only=True``, able to rebuild their model alone.

A training checkpoint is a dict: the model's metadata, ``ModelMetadata.to_dict()`` (weights/metadata.py
owns those fields, their defaults and their validation: model_config, classes, palette, mean, std,
base_size, crop_size, encnet_version; its ``training`` summary is derived from the training state
when read), plus the weights and the training state (engine/train_state.py builds and restores it)::

    {"format": "encnet-checkpoint", "version": 1, **metadata, "model": state_dict, "train_config": {...},
     "world_size": int, "optimizer": ..., "scheduler": ..., "scaler": ..., "epoch": int, "iteration": int,
     "rng": {...}, "metrics": {...}, "best_score": float, "best_metrics": {...},
     "tensor_digest": "sha256:...", "training_digest": "sha256:..."}

``save_checkpoint`` records a digest of the tensor data (``tensor_digest``: the weights, ``model``;
``training_digest``: every other tensor, optimiser and RNG state, when the payload has an optimizer)
and ``load_checkpoint`` checks it, so a file damaged on disk or in transfer is refused with one line
instead of loading with wrong numbers (torch's zip reader checks no CRC). Files without a digest (older
encnet files, the reference's published ones) load as before. See ``tensor_digest`` for the construction.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encnet_core.errors import CheckpointError, ModelError
from encnet_core.models import convert_pytorch_encoding_state_dict, create_model
from encnet_core.paths import atomic_write, is_disk_full
from encnet_core.version import __version__
from encnet_core.weights.metadata import ModelMetadata

log = logging.getLogger("encnet")

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "adapt_state_dict",
    "tensor_digest",
    "check_tensor_digest",
    "check_training_digest",
    "check_weight_dtypes",
    "exception_reason",
    "DIGEST_KEY",
    "DIGEST_HEADER",
    "TRAINING_DIGEST_KEY",
]

CHECKPOINT_FORMAT = "encnet-checkpoint"
CHECKPOINT_VERSION = 1  # the "version" every checkpoint written by save_checkpoint carries
DIGEST_KEY = "tensor_digest"  # checkpoint/weights key (safetensors: header key "encnet.tensor_digest"): digest of the weights
DIGEST_HEADER = "encnet.tensor_digest"  # safetensors header key: tensor_digest() of the file's tensors (checked on read)
TRAINING_DIGEST_KEY = "training_digest"  # training checkpoints: digest of every tensor besides the weights
DIGEST_ALGORITHM = "sha256"  # hardware-accelerated (SHA-NI, ARMv8 crypto) in OpenSSL: faster than blake2b on such CPUs
_PARALLEL_DIGEST_BYTES = 32 << 20  # hash tensors in threads (hashlib releases the GIL) above this total size


def exception_reason(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type name: a reason that is never empty."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _tensor_bytes(tensor: torch.Tensor) -> Any:
    """The tensor's elements as bytes in row-major order (a view when it is a contiguous CPU tensor)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    return tensor.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy()


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(_tensor_bytes(tensor)).hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` of a name -> tensor mapping: independent of the file format and of tensor layout.

    The sha256 of one line per tensor, in sorted name order: ``name NUL dtype NUL shape NUL sha256(bytes)``,
    where ``bytes`` are the elements in row-major order. The per-tensor hashes run in up to
    ``torch.get_num_threads()`` threads (at most 8) when the tensors hold over 32 MB; the result does
    not depend on how many.
    """
    keys = sorted(tensors)
    size = sum(tensors[k].numel() * tensors[k].element_size() for k in keys)
    workers = min(8, torch.get_num_threads(), len(keys)) if size > _PARALLEL_DIGEST_BYTES else 1
    if workers > 1:
        by_size = sorted(keys, key=lambda k: -tensors[k].numel() * tensors[k].element_size())  # largest first: even finish
        with ThreadPoolExecutor(workers) as pool:
            hashes = dict(zip(by_size, pool.map(lambda k: _sha256(tensors[k]), by_size), strict=True))
    else:
        hashes = {k: _sha256(tensors[k]) for k in keys}
    outer = hashlib.sha256()
    for key in keys:
        tensor = tensors[key]
        outer.update(f"{key}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0{hashes[key]}\n".encode())
    return f"{DIGEST_ALGORITHM}:{outer.hexdigest()}"


def _training_tensors(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint besides its weights (optimizer, scaler, RNG states), keyed by its path."""
    found: dict[str, torch.Tensor] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            found[where] = value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{where}/{key!r}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}/{i}")

    for key, value in ckpt.items():
        if key not in ("model", DIGEST_KEY, TRAINING_DIGEST_KEY):
            walk(value, repr(key))
    return found


def check_tensor_digest(recorded: Any, tensors: Mapping[str, torch.Tensor], path: Path | str, what: str = "weights") -> None:
    """Refuse ``tensors`` when they do not match the digest ``recorded`` in ``path`` (None: the file has none)."""
    if recorded is None:
        return
    if not isinstance(recorded, str) or not recorded.startswith(f"{DIGEST_ALGORITHM}:"):
        raise CheckpointError(
            f"{path}: the digest recorded for its {what} is {str(recorded)[:40]!r}, not a {DIGEST_ALGORITHM} digest; "
            "the file is damaged or was written by a newer encnet"
        )
    if tensor_digest(tensors) != recorded:
        raise CheckpointError(
            f"{path} is corrupt: its tensor data ({what}) does not match the digest encnet recorded when it wrote "
            "the file (damaged on disk or in transfer); use an intact copy or write it again"
        )


def check_training_digest(ckpt: Mapping[str, Any], path: Path | str) -> None:
    """Refuse a training checkpoint whose optimizer/scaler/RNG tensors do not match its recorded digest."""
    check_tensor_digest(ckpt.get(TRAINING_DIGEST_KEY), _training_tensors(ckpt), path, "training state (optimizer, RNG)")


def check_weight_dtypes(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: Path | str, name: str) -> None:
    """Refuse integer, bool or complex tensors where model ``name`` has floating-point ones.

    ``load_state_dict`` would cast them silently (int8 weights become meaningless floats). Floating
    dtypes are accepted and cast (float16 and bfloat16 exports exist); the model's own integer buffers
    (BatchNorm's ``num_batches_tracked``) take integers.
    """
    for key, target in own.items():  # the model's order: the first offending tensor is the first the model has
        value = state.get(key)
        if isinstance(value, torch.Tensor) and target.is_floating_point() and not value.is_floating_point():
            dtype = str(value.dtype).removeprefix("torch.")
            raise CheckpointError(
                f"{path}: tensor {key} is {dtype}, but model {name} takes floating-point weights there; "
                "encnet loads float32/float16/bfloat16 weights, not quantized or integer ones"
            )


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


def save_checkpoint(payload: dict[str, Any], path: Path, digest: bool = True) -> None:
    """Write ``payload`` to ``path`` through a temp file, an fsync and an atomic rename.

    With ``digest`` (always, except to measure its cost) the digest of the weights (``model``) and, when
    the payload has an ``optimizer``, of the other tensors is recorded (see the module docstring).

    The file already at ``path`` stays intact until the new one is complete on disk. On an error or
    an interruption the temp file is removed; a full disk raises one `CheckpointError` ("no space
    left on <dir>"), any other OS error one "cannot write" `CheckpointError`.
    """
    path = Path(path)
    payload = {k: v for k, v in payload.items() if k not in (DIGEST_KEY, TRAINING_DIGEST_KEY)}
    if digest and isinstance(payload.get("model"), Mapping):
        payload[DIGEST_KEY] = tensor_digest(payload["model"])
        if "optimizer" in payload:
            payload[TRAINING_DIGEST_KEY] = tensor_digest(_training_tensors(payload))
    recorder: _RecordingFile | None = None
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as raw:
            recorder = _RecordingFile(raw)
            torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "encnet_version": __version__,
                        **payload}, recorder)  # fmt: skip
    except (OSError, RuntimeError) as exc:
        error = recorder.error if recorder is not None and recorder.error is not None else exc
        if not isinstance(error, OSError):
            raise
        if is_disk_full(error):
            kept = "the previous one is intact" if path.exists() else "nothing was written"
            raise CheckpointError(f"no space left on {path.parent}: {path.name} was not saved ({kept})") from None
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (no code execution). A bare state_dict comes back as ``{"model": sd}``.

    The weights are checked against their recorded digest (files without one load as before); the
    training state's is checked by ``check_training_digest`` (what --resume restores).
    """
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
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({exception_reason(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    if obj.get("format") == CHECKPOINT_FORMAT:
        ModelMetadata.validate(obj, path)
        check_tensor_digest(obj.get(DIGEST_KEY), obj.get("model") or {}, path)
        return obj
    state = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither an encnet checkpoint nor a state_dict")
    return {"model": state}


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict)."""
    config = ckpt.get("model_config")
    if not config:
        raise CheckpointError(f"{path} has no model description; it is a bare state_dict (use --init-from with --model)")
    try:
        model = create_model(**config)
    except (TypeError, ValueError, ModelError) as exc:  # arguments the builder rejects
        raise CheckpointError(f"{path}: model_config does not build a model ({exception_reason(exc)})") from None
    check_weight_dtypes(ckpt["model"], model.state_dict(), path, config.get("name"))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]  # line 0: "Error(s) in loading state_dict for EncNet:"
        raise CheckpointError(f"{path}: weights do not fit model {config.get('name')}: {lines[0] if lines else exception_reason(exc)}") from None
    return model


def adapt_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept encnet and PyTorch-Encoding state_dicts (and DataParallel/DDP prefixes)."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if any(k.startswith(("pretrained.", "auxlayer.")) for k in state):
        state = convert_pytorch_encoding_state_dict(state)
    return state
