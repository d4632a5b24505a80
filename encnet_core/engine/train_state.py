"""Training state: what a run needs besides its weights to continue exactly, and where it comes from.

``training_payload`` is what ``weights.checkpoint.save_checkpoint`` writes for a training run (metadata,
weights, optimiser, schedule, scaler, every RNG); ``resume_from`` restores it (``--resume``);
``init_from_checkpoint`` loads another run's or file's weights to fine-tune (``--init-from``).
The files themselves (writing, reading, digests, dtype checks) are weights/checkpoint.py's.
"""

from __future__ import annotations

import ast
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from encnet_core.engine.device import accelerator_rng_state, set_accelerator_rng_state
from encnet_core.engine.optim import lr_schedule
from encnet_core.errors import CheckpointError, ConfigError
from encnet_core.tasks import facts
from encnet_core.version import __version__
from encnet_core.weights.checkpoint import adapt_state_dict, check_weight_dtypes
from encnet_core.weights.metadata import ModelMetadata
from encnet_core.weights.model_files import load_training_checkpoint, read_model_file

if TYPE_CHECKING:
    from encnet_core.config import TrainConfig
    from encnet_core.data.hdf5 import DatasetInfo

log = logging.getLogger("encnet")

__all__ = [
    "rng_state",
    "set_rng_state",
    "TrainState",
    "training_payload",
    "resume_path",
    "elastic_restart",
    "restart_resume",
    "resume_from",
    "init_from_checkpoint",
    "EXACT_RESUME_SETTINGS",
]


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
    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    set_accelerator_rng_state(state.get("cuda"))


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------- payload, resume, fine-tuning


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


def elastic_restart() -> int:
    """Which restart of its worker group this process's torchrun agent is running (TORCHELASTIC_RESTART_COUNT;
    0: the first attempt, or not under torchrun). With several nodes, an agent whose own workers were
    healthy restarts them with its count unchanged: take the largest over all ranks (``max_over_ranks``)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def restart_resume(resume: str | None, out_dir: Path, restart: int, say: Callable[[str], None] | None = None) -> str | None:
    """What a run resumes from: ``resume``, unless torchrun restarted the worker group (``restart`` > 0:
    ``--max-restarts`` after a worker or node died). Then the run folder's last.pt, when it exists, is
    the newest state of this very run (newer than any ``--resume`` path given), and the run continues
    from it as ``--resume auto`` would; without one yet it starts as the first attempt did. Every rank
    decides the same way from the same (shared) run folder. ``say`` (rank 0's) gets one line."""
    if restart <= 0:
        return resume
    last = out_dir / "last.pt"
    if last.is_file():
        if say is not None:
            say(f"restart {restart} of torchrun: resuming from {last}")
        return str(last)
    if say is not None:
        start = f"resuming from {resume}" if resume and resume != "auto" else "starting from scratch"
        say(f"restart {restart} of torchrun: no {last} yet, {start}")
    return resume


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
    "data", "train_split", "batch_size", "accumulate", "lr", "head_lr_mult", "momentum", "weight_decay", "poly_power",
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
            f"{facts(model.task).head_flags}"
        )
    return sorted({k.rsplit(".", 1)[0] for k in reinit} | {k.rsplit(".", 1)[0] for k in result.missing_keys})
