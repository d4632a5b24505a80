"""Checkpoints: written atomically, read with ``weights_only=True``, able to rebuild their model alone.

A training checkpoint is a dict: the model's metadata, ``ModelMetadata.to_dict()`` (engine/metadata.py
owns those fields, their defaults and their validation: model_config, classes, palette, mean, std,
base_size, crop_size, encnet_version; its ``training`` summary is derived from the training state
when read), plus the weights and the training state::

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
import random
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from encnet_core import __version__
from encnet_core.engine.device import accelerator_rng_state, set_accelerator_rng_state
from encnet_core.engine.metadata import ModelMetadata
from encnet_core.errors import CheckpointError, ConfigError, ModelError
from encnet_core.models import convert_pytorch_encoding_state_dict, create_model
from encnet_core.paths import atomic_write, is_disk_full

if TYPE_CHECKING:
    from encnet_core.config import TrainConfig
    from encnet_core.data.hdf5 import DatasetInfo

log = logging.getLogger("encnet")

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "rng_state",
    "set_rng_state",
    "TrainState",
    "training_payload",
    "resume_path",
    "resume_from",
    "init_from_checkpoint",
    "tensor_digest",
    "check_tensor_digest",
    "check_training_digest",
    "check_weight_dtypes",
    "exception_reason",
    "DIGEST_KEY",
    "TRAINING_DIGEST_KEY",
]

CHECKPOINT_FORMAT = "encnet-checkpoint"
CHECKPOINT_VERSION = 1  # the "version" every checkpoint written by save_checkpoint carries
DIGEST_KEY = "tensor_digest"  # checkpoint/weights key (safetensors: header key "encnet.tensor_digest"): digest of the weights
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


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (torch CPU/CUDA, numpy, random), as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},  # fmt: skip
        "python": repr(random.getstate()),
    }
    if (cuda := accelerator_rng_state()) is not None:
        state["cuda"] = cuda
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    import ast

    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    set_accelerator_rng_state(state.get("cuda"))


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------- training state: payload, resume, fine-tuning


@dataclass
class TrainState:
    """Where a run stands besides its weights and optimiser: what --resume restores and the loop advances."""

    iteration: int = 0  # iterations done
    best_score: float = -1.0  # best validation score so far: (pixAcc + mIoU) / 2, or top-1 accuracy; -1 before any
    best_metrics: dict[str, Any] | None = None  # the validation record of that score


def training_payload(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, scaler: torch.amp.GradScaler | None,
    config: TrainConfig, data_info: DatasetInfo, state: TrainState, epoch: int, metrics: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """What ``save_checkpoint`` writes for a training run: metadata, weights and the whole training state.

    ``model`` may be wrapped (DDP, torch.compile); the bare model's state_dict is saved. The RNG
    states are read now, so call this at the moment of saving.
    """
    core = model.module if hasattr(model, "module") else model
    core = getattr(core, "_orig_mod", core)
    # the model's metadata (its "training" summary stays None: readers derive it from the training state)
    metadata = ModelMetadata(
        model_config=core.config, classes=data_info.classes, palette=data_info.palette.tolist(), mean=config.mean,
        std=config.std, base_size=config.base_size, crop_size=config.crop_size, encnet_version=__version__,
        task=core.task,
    )  # fmt: skip
    return {
        **metadata.to_dict(),
        "model": core.state_dict(),
        "train_config": config.to_dict(),
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "iteration": state.iteration,
        "rng": rng_state(),
        "metrics": metrics,
        "best_score": state.best_score,
        "best_metrics": state.best_metrics,
    }


def resume_path(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` is the run folder's last.pt (None before the first save)."""
    if not resume:
        return None
    if resume == "auto":
        path = out_dir / "last.pt"
        if not path.exists():
            log.info("--resume auto: no %s yet, starting a new run", path)
            return None
        return path
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint")
    return path


def resume_from(
    path: Path, *, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
    scaler: torch.amp.GradScaler | None, total_iters: int, classes: list[str], ranks: int,
    say: Callable[[str], None] | None = None, iters_per_epoch: int = 1,
) -> TrainState:  # fmt: skip
    """Restore weights, optimiser, schedule, scaler and every RNG from the training checkpoint ``path``.

    The schedule keeps this run's ``total_iters`` (resuming may lengthen the run; ``iters_per_epoch``
    places the step schedule's decays). Refuses another
    model or dataset's run, other model settings, and a run already at its end; ``say`` (rank 0's)
    gets a warning naming the settings that break the exact continuation, then "resumed from ...".
    """
    from encnet_core.engine.model_files import load_training_checkpoint  # model_files imports this module
    from encnet_core.engine.optim import lr_schedule

    ckpt = load_training_checkpoint(path)
    if ckpt.get("model_config", {}).get("name") != config.model or ckpt.get("classes") != classes:
        raise CheckpointError(f"{path} is a run of another model or dataset; use --init-from to fine-tune from it")
    _check_resume_settings(ckpt, path, config, model, ranks, say)
    check_weight_dtypes(ckpt["model"], model.state_dict(), path, config.model)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    factor = lr_schedule(config, total_iters, iters_per_epoch)  # every parameter group: this run's length
    scheduler.lr_lambdas = [factor] * len(scheduler.lr_lambdas)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    state = TrainState(int(ckpt["iteration"]), float(ckpt.get("best_score", -1.0)), ckpt.get("best_metrics"))
    set_rng_state(ckpt["rng"])
    if state.iteration >= total_iters:
        raise ConfigError(f"{path} already reached iteration {state.iteration}; raise --iters/--epochs to train longer")
    if say is not None:
        say(f"resumed from {path} at iteration {state.iteration}/{total_iters}")
    return state


# Settings that an exact continuation needs unchanged (the run length may change; it is the point of resuming).
EXACT_RESUME_SETTINGS = (
    "data", "train_split", "batch_size", "lr", "head_lr_mult", "momentum", "weight_decay", "poly_power",
    "lr_schedule", "lr_step", "warmup_iters", "crop_size", "base_size", "scale_min", "scale_max", "se_loss", "se_weight", "aux",
    "aux_weight", "amp", "seed", "freeze_backbone", "freeze_bn", "mean", "std",
)  # fmt: skip


def _check_resume_settings(
    ckpt: dict[str, Any], path: Path, config: TrainConfig, model: nn.Module, ranks: int, say: Callable[[str], None] | None
) -> None:
    """Refuse a resume whose model differs from the checkpoint's; say which settings break the exact resume."""
    saved_model = ckpt.get("model_config") or {}
    changed = sorted(k for k in set(saved_model) | set(model.config) if saved_model.get(k) != model.config.get(k))
    if changed:
        detail = ", ".join(f"{k} {saved_model.get(k)!r} -> {model.config.get(k)!r}" for k in changed[:4])
        raise CheckpointError(
            f"{path} was trained with other model settings ({detail}); resume with the run's settings, "
            "or fine-tune from it with --init-from"
        )
    if say is None:
        return
    saved = ckpt.get("train_config") or {}
    now = config.to_dict()
    differ = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in EXACT_RESUME_SETTINGS if k in saved and saved[k] != now.get(k)]
    if ckpt.get("world_size") not in (None, ranks):
        differ.append(f"processes {ckpt['world_size']} -> {ranks}")
    if differ:
        say(f"warning: resuming with changed settings ({'; '.join(differ)}): "
            "the run continues but is no longer an exact continuation of the interrupted one")  # fmt: skip


def _class_specific(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the layers a fine-tuning run may drop from a checkpoint: the model's
    class-specific layers, and a checkpoint's SE layer when the model has none (``--no-se-loss``)."""
    prefixes = model.classifier_prefixes()
    if getattr(model, "head_type", None) == "enc" and not model.has_se:
        prefixes += ("head.encmodule.selayer.",)
    return prefixes


def init_from_checkpoint(model: nn.Module, path: Path, classes: list[str], trust_code: bool = False) -> list[str]:
    """Load weights for fine-tuning; class-specific layers that do not fit are re-initialised.

    ``path``: a checkpoint, bare state_dict or export (TorchScript/pt2 only with ``trust_code``).
    Returns the re-initialised layer names. Any other missing or mis-shaped weight is an error.
    """
    from encnet_core.engine.model_files import read_model_file  # model_files imports this module

    ckpt = read_model_file(path, trust_code=trust_code)
    source = ModelMetadata.from_dict(ckpt, path) if ckpt.get("model_config") else None
    if source is not None and source.task != model.task:
        raise CheckpointError(
            f"{path} holds a {source.task} model ({source.model_config['name']}); --init-from needs a {model.task} "
            f"checkpoint for {model.config['name']}"
        )
    state = adapt_state_dict(ckpt["model"])
    own = model.state_dict()
    check_weight_dtypes(state, own, path, model.config["name"])
    same_classes = ckpt.get("classes") in (None, classes)
    class_specific = _class_specific(model)
    reinit = []
    for key in list(state):
        if key.startswith(class_specific) and (not same_classes or key not in own or state[key].shape != own[key].shape):
            reinit.append(key)
            del state[key]
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(
            f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model needs {tuple(own[wrong[0]].shape)}; "
            "is --model the architecture of this checkpoint?"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(class_specific)]
    if missing or result.unexpected_keys:
        names = (missing or result.unexpected_keys)[:3]
        raise CheckpointError(
            f"{path} does not match model: {len(missing)} missing and {len(result.unexpected_keys)} unexpected "
            f"weights (e.g. {', '.join(names)}); check --model and "
            f"{'--lateral/--aux/--se-loss' if model.task == 'segmentation' else '--num-codes'}"
        )
    return sorted({k.rsplit(".", 1)[0] for k in reinit} | {k.rsplit(".", 1)[0] for k in result.missing_keys})
