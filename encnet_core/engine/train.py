"""The training loop: SGD + poly lr, AMP, DDP under torchrun, exact resume, atomic checkpoints.

Reproducibility: the data a step sees is a pure function of (seed, epoch, position): each epoch's
order is a seeded permutation, and each sample's augmentation is drawn from a generator seeded by
(seed, epoch, index). Together with the saved RNG, optimizer and scheduler states this makes
``N iterations, stop, --resume, N more`` equal to ``2N`` in one go (on CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from encnet_core.config import TrainConfig
from encnet_core.data.dataset import (
    BadSample,
    BadSampleError,
    CheckedBatches,
    CheckedSamples,
    HDF5SegmentationDataset,
    collate_checked,
)
from encnet_core.data.hdf5 import read_info
from encnet_core.data.transforms import eval_transform, train_transform
from encnet_core.engine.checkpoint import (
    adapt_state_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from encnet_core.engine.device import autocast_context
from encnet_core.engine.distributed import (
    DistInfo,
    ShardSampler,
    all_reduce_sum,
    broadcast_flag,
    gather_lists,
    init_distributed,
    shutdown_distributed,
)
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.engine.metrics import ConfusionMatrix
from encnet_core.engine.model_files import check_trusted, load_training_checkpoint, read_model_file
from encnet_core.errors import CheckpointError, ConfigError, DataError, EncNetError
from encnet_core.models import MODELS, EncNet, create_model
from encnet_core.paths import check_output_dir

log = logging.getLogger("encnet")

__all__ = ["train", "TrainResult", "EpochSampler", "SeededSamples", "PolySchedule", "CLASS_SPECIFIC", "validate"]

CLASS_SPECIFIC = ("head.conv6.1.", "head.encmodule.selayer.", "aux_head.4.", "head.4.")
"""Parameter prefixes whose shape depends on the class count (re-initialised when fine-tuning)."""

Callback = Callable[[str, dict[str, Any]], None]


class NonFiniteLoss(EncNetError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    iteration: int
    total_iters: int
    epoch: int
    best: dict[str, Any] | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    seconds: float
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" when interrupted
    reinitialised: list[str] = field(default_factory=list)
    images_per_second: float = 0.0
    data_share: float = 0.0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # bad samples left out (--skip-bad), once each


# ----------------------------------------------------------------------------- data order and augmentation


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for this rank's share of a seeded per-epoch permutation.

    Rank r takes positions r, r + W, r + 2W, ... (as DistributedSampler), whole batches only;
    ``start_batch`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, size: int, batch_size: int, info: DistInfo, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world = info.rank, info.world_size
        self.batches_per_epoch = size // (batch_size * self.world)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        used = self.batches_per_epoch * self.batch_size * self.world
        mine = order[self.rank : used : self.world][self.start_batch * self.batch_size :]
        return iter([(self.epoch, int(i)) for i in mine])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededSamples(Dataset):
    """Wraps a dataset so that ``view[(epoch, index)]`` draws its augmentation from a fixed seed.

    Items are ``(image, mask, bad)`` for ``collate_checked``: a sample that raises ``BadSampleError``
    comes back in ``bad`` as data (a DataLoader worker would re-raise it wrapped in a traceback). With
    ``skip_bad`` the next good sample of the split takes its place, with the same seed, so batches keep
    their size and the data a step sees stays a pure function of (seed, epoch, position).
    """

    def __init__(self, dataset: HDF5SegmentationDataset, seed: int, skip_bad: bool = False) -> None:
        self.dataset, self.seed, self.skip_bad = dataset, seed, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any, tuple[BadSample, ...]]:
        epoch, index = key
        bad: list[BadSample] = []
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG (dropout) untouched
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63))
            for step in range(len(self.dataset)):  # a bad sample fails while decoding, before any random draw
                try:
                    image, mask = self.dataset[(index + step) % len(self.dataset)]
                    return image, mask, tuple(bad)
                except BadSampleError as exc:
                    bad.append(exc.sample)
                    if not self.skip_bad:
                        break
        return None, None, tuple(bad)


class PolySchedule:
    """lr factor: linear warm-up, then (1 - it / total) ** power, per iteration (picklable for LambdaLR)."""

    def __init__(self, total_iters: int, power: float = 0.9, warmup_iters: int = 0) -> None:
        self.total_iters, self.power, self.warmup_iters = total_iters, power, warmup_iters

    def __call__(self, iteration: int) -> float:
        factor = max(0.0, 1.0 - iteration / self.total_iters) ** self.power
        if iteration < self.warmup_iters:
            factor *= (iteration + 1) / self.warmup_iters
        return factor


# ----------------------------------------------------------------------------- model set-up


def build_model(config: TrainConfig, num_classes: int) -> EncNet:
    if config.model not in MODELS:
        create_model(config.model, num_classes)  # raises the "unknown model" error
    overrides: dict[str, Any] = {"aux": config.aux, "output_stride": config.output_stride, "dropout": config.dropout}
    if MODELS[config.model].get("head") != "fcn":
        overrides.update(se_loss=config.se_loss, lateral=config.lateral or None, num_codes=config.num_codes)
    elif config.lateral:
        raise ConfigError(f"--lateral does not apply to {config.model} (no EncHead)")
    return create_model(config.model, num_classes, backbone_weights=config.backbone_weights, **overrides)


def init_from_checkpoint(model: nn.Module, path: Path, classes: list[str], trust_code: bool = False) -> list[str]:
    """Load weights for fine-tuning; class-specific layers that do not fit are re-initialised.

    ``path``: a checkpoint, bare state_dict or export (TorchScript/pt2 only with ``trust_code``).
    Returns the re-initialised parameter names. Any other missing or mis-shaped weight is an error.
    """
    ckpt = read_model_file(path, trust_code=trust_code)
    state = adapt_state_dict(ckpt["model"])
    own = model.state_dict()
    same_classes = ckpt.get("classes") in (None, classes)
    reinit = []
    for key in list(state):
        if key.startswith(CLASS_SPECIFIC) and (not same_classes or key not in own or state[key].shape != own[key].shape):
            reinit.append(key)
            del state[key]
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(
            f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the model needs {tuple(own[wrong[0]].shape)}; "
            "is --model the architecture of this checkpoint?"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(CLASS_SPECIFIC)]
    if missing or result.unexpected_keys:
        names = (missing or result.unexpected_keys)[:3]
        raise CheckpointError(
            f"{path} does not match model: {len(missing)} missing and {len(result.unexpected_keys)} unexpected "
            f"weights (e.g. {', '.join(names)}); check --model and --lateral/--aux/--se-loss"
        )
    return sorted({k.rsplit(".", 1)[0] for k in reinit} | {k.rsplit(".", 1)[0] for k in result.missing_keys})


def _optimizer(model: EncNet, config: TrainConfig, lr: float) -> torch.optim.SGD:
    head = {id(p) for p in model.head_parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    heads = [p for p in model.head_parameters() if p.requires_grad]
    groups = [{"params": heads, "lr": lr * config.head_lr_mult}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr})
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _set_train_mode(model: nn.Module, config: TrainConfig) -> None:
    model.train()
    core = model.module if hasattr(model, "module") else model
    if config.freeze_backbone:
        core.backbone.eval()
    if config.freeze_bn:
        for module in core.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]:
    """Single-scale validation; confusion matrices are summed over ranks."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, info.device)
    for images, masks in loader:
        images = images.to(info.device, non_blocking=True)
        with autocast_context(info.device, amp):
            logits = model(images)["out"]
        confusion.update(logits.argmax(1), masks)
    all_reduce_sum(confusion.matrix, info)
    if int(confusion.matrix.sum()) == 0:
        raise DataError("the validation images have no labelled pixel (every mask pixel is 255): nothing to score")
    metrics = confusion.compute()
    metrics["score"] = (metrics["pixAcc"] + metrics["mIoU"]) / 2
    return metrics


# ----------------------------------------------------------------------------- the run


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked after every step."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _checkpoint_payload(model, optimizer, scheduler, scaler, config, info_ds, epoch, iteration, metrics, best_score):
    core = model.module if hasattr(model, "module") else model
    core = getattr(core, "_orig_mod", core)
    return {
        "model_config": core.config,
        "model": core.state_dict(),
        "classes": info_ds.classes,
        "palette": info_ds.palette.tolist(),
        "mean": list(config.mean),
        "std": list(config.std),
        "base_size": config.base_size,
        "crop_size": config.crop_size,
        "train_config": config.to_dict(),
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "iteration": iteration,
        "rng": rng_state(),
        "metrics": metrics,
        "best_score": best_score,
    }


def train(
    config: TrainConfig, resume: str | None = None, callback: Callback | None = None, *, trust_code: bool = False
) -> TrainResult:
    """Run (or resume) a training run described by ``config``; see ``encnet train --help``.

    ``trust_code`` lets ``config.init_from`` be a TorchScript/pt2 program (opening one runs its code);
    it is a parameter, not a config field, so no recipe or saved config.toml can turn it on.
    ``resume`` needs a training checkpoint and never opens a program.
    """
    emit = callback or (lambda event, data: None)
    info = init_distributed(config.device)
    try:
        return _train(config, resume, emit, info, trust_code)
    finally:
        shutdown_distributed(info)


def _train(config: TrainConfig, resume: str | None, emit: Callback, info: DistInfo, trust_code: bool = False) -> TrainResult:
    start_time = time.perf_counter()
    if config.model not in MODELS:
        create_model(config.model, 1)  # the "unknown model" error, before anything is written
    if config.init_from:
        check_trusted(Path(config.init_from), trust_code)  # a program is refused before the run folder is written
    out_dir = Path(config.output_dir)
    check_output_dir(out_dir, "--output-dir")
    data_info = read_info(Path(config.data), allow_truncated=config.skip_bad)
    num_classes = data_info.num_classes
    device = info.device
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")

    # data
    train_set = HDF5SegmentationDataset(
        Path(config.data),
        config.train_split,
        train_transform(config.base_size, config.crop_size, (config.scale_min, config.scale_max), config.mean, config.std),
        strict=not config.skip_bad,
    )
    if train_set.labelled_pixels() == 0:
        raise DataError(
            f"{config.data}: the {config.train_split} split has no labelled pixel (no masks, or only 255 by its "
            "class_pixels, which `encnet targets` recomputes): nothing to train on"
        )
    sampler = EpochSampler(len(train_set), config.batch_size, info, config.seed)
    if sampler.batches_per_epoch == 0:
        raise ConfigError(
            f"the {config.train_split} split has {len(train_set)} images, fewer than one global batch "
            f"({config.batch_size} x {info.world_size}); lower --batch-size"
        )
    workers = min(config.workers, os.cpu_count() or 1)  # more workers than cores only adds contention
    loader_args = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "generator": torch.Generator().manual_seed(config.seed),
    }
    loader_args["collate_fn"] = collate_checked  # bad samples travel as data: (batch, bad samples, missing)
    train_loader = CheckedBatches(
        DataLoader(SeededSamples(train_set, config.seed, config.skip_bad), config.batch_size, sampler=sampler, **loader_args),
        Path(config.data), config.skip_bad, require_complete=True,
    )  # fmt: skip
    val_loader = None
    if config.val_split and config.val_split in data_info.splits and data_info.labelled.get(config.val_split):
        val_set = HDF5SegmentationDataset(
            Path(config.data), config.val_split, eval_transform(config.crop_size, config.mean, config.std), strict=not config.skip_bad
        )
        if val_set.labelled_pixels() == 0:
            raise DataError(
                f"{config.data}: the {config.val_split} split has no labelled pixel (every mask pixel is 255 by "
                "its class_pixels); validate on another split or pass --val-split ''"
            )
        val_loader = CheckedBatches(
            DataLoader(CheckedSamples(val_set), config.batch_size, sampler=ShardSampler(len(val_set), info), **loader_args),
            Path(config.data), config.skip_bad,
        )  # fmt: skip
    elif config.val_split and info.is_main:
        log.warning("no labelled %r split in %s: training without validation", config.val_split, config.data)

    iters_per_epoch = sampler.batches_per_epoch
    if config.iters:
        total_iters = config.iters
    elif config.epochs:
        total_iters = config.epochs * iters_per_epoch
    else:
        raise ConfigError("give the run's length with --epochs or --iters")
    total_epochs = math.ceil(total_iters / iters_per_epoch)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(config.to_toml())

    # model
    torch.manual_seed(config.seed)
    model = build_model(config, num_classes)
    reinitialised: list[str] = []
    if config.init_from:
        reinitialised = init_from_checkpoint(model, Path(config.init_from), data_info.classes, trust_code)
        if reinitialised and info.is_main:
            emit("message", {"text": f"re-initialised for {num_classes} classes: {', '.join(reinitialised)}"})
    if config.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    global_batch = config.batch_size * info.world_size
    lr = config.lr * global_batch / 16
    optimizer = _optimizer(model, config, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PolySchedule(total_iters, config.poly_power, config.warmup_iters))
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None

    # resume
    iteration, best_score, best_metrics = 0, -1.0, None
    resume_path = _resume_path(resume, out_dir)
    if resume_path is not None:
        ckpt = load_training_checkpoint(resume_path)
        if ckpt.get("model_config", {}).get("name") != config.model or ckpt.get("classes") != data_info.classes:
            raise CheckpointError(f"{resume_path} is a run of another model or dataset; use --init-from to fine-tune from it")
        _check_resume_settings(ckpt, resume_path, config, model, info.world_size, emit if info.is_main else None)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scheduler.lr_lambdas[0] = PolySchedule(total_iters, config.poly_power, config.warmup_iters)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iteration = int(ckpt["iteration"])
        best_score = float(ckpt.get("best_score", -1.0))
        best_metrics = ckpt.get("best_metrics")
        set_rng_state(ckpt["rng"])
        if iteration >= total_iters:
            raise ConfigError(f"{resume_path} already reached iteration {iteration}; raise --iters/--epochs to train longer")
        if info.is_main:
            emit("message", {"text": f"resumed from {resume_path} at iteration {iteration}/{total_iters}"})

    if info.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif info.distributed and info.is_main:
        log.warning("SyncBatchNorm needs CUDA: on CPU each process normalises with its own batch statistics")
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    criterion = SegmentationLoss(config.se_weight if config.se_loss else 0.0, config.aux_weight if config.aux else 0.0)

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    metrics_file = (out_dir / "metrics.jsonl").open("a") if info.is_main else None

    def record(entry: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(entry) + "\n")
            metrics_file.flush()

    def save(path: Path, metrics: dict[str, Any] | None) -> None:
        if info.is_main:
            payload = _checkpoint_payload(
                model, optimizer, scheduler, scaler, config, data_info, iteration // iters_per_epoch, iteration, metrics, best_score
            )
            payload["best_metrics"] = best_metrics
            save_checkpoint(payload, path)

    def skip(sample: BadSample) -> None:  # --skip-bad: each bad sample once, in metrics.jsonl and on screen
        if info.is_main:
            record({"type": "skipped", "iteration": iteration, **sample.to_dict()})
            emit("message", {"text": f"skipped bad sample: {sample}"})
        else:
            log.warning("rank %d: skipped bad sample: %s", info.rank, sample)

    train_loader.on_skip = skip
    if val_loader is not None:
        val_loader.on_skip = skip

    if info.is_main:
        emit("start", {"total_iters": total_iters, "iteration": iteration, "iters_per_epoch": iters_per_epoch,
                       "epochs": total_epochs, "device": str(device), "world_size": info.world_size,
                       "lr": lr, "global_batch": global_batch, "params": sum(p.numel() for p in model.parameters())})  # fmt: skip

    stopped_by = None
    bad_loss = torch.zeros((), dtype=torch.bool, device=device)
    sums: dict[str, torch.Tensor] = {}
    window_start, window_data, window_steps = time.perf_counter(), 0.0, 0
    total_data, total_step_time, total_images = 0.0, 0.0, 0
    with _StopFlag() as stop:
        while iteration < total_iters and stopped_by is None:
            epoch, position = divmod(iteration, iters_per_epoch)
            sampler.set_epoch(epoch, position)
            _set_train_mode(net, config)
            fetch_start = time.perf_counter()
            for images, masks in train_loader:
                data_time = time.perf_counter() - fetch_start
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True)
                if device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast_context(device, config.amp):
                    outputs = net(images)
                loss, parts = criterion(outputs, masks)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                bad_loss |= ~torch.isfinite(loss.detach())
                iteration += 1
                for key, value in {"loss": loss.detach(), **parts}.items():
                    sums[key] = sums.get(key, 0.0) + value
                window_data += data_time
                total_data += data_time
                total_step_time += time.perf_counter() - fetch_start
                total_images += images.shape[0] * info.world_size
                window_steps += 1
                last_of_epoch = iteration % iters_per_epoch == 0 or iteration >= total_iters
                if window_steps >= config.log_every or last_of_epoch or stop.signal:
                    if bool(bad_loss.item()):
                        raise NonFiniteLoss(
                            f"the loss became non-finite near iteration {iteration}; "
                            f"{'last.pt keeps the last good state; ' if last_path.exists() else ''}"
                            "lower --lr, use --amp bf16/off, or check the data"
                        )
                    elapsed = time.perf_counter() - window_start
                    if info.distributed:  # log the mean over all ranks, not rank 0's alone
                        keys = sorted(sums)
                        stacked = all_reduce_sum(torch.stack([torch.as_tensor(sums[k], device=device).float() for k in keys]), info)
                        sums = {k: v / info.world_size for k, v in zip(keys, stacked, strict=True)}
                    entry = {
                        "type": "train",
                        "iteration": iteration,
                        "epoch": epoch + 1,
                        "lr": optimizer.param_groups[0]["lr"],
                        **{k: float(v) / window_steps for k, v in sums.items()},
                        "it_per_s": window_steps / elapsed if elapsed > 0 else 0.0,
                        "images_per_s": window_steps * global_batch / elapsed if elapsed > 0 else 0.0,
                        "data_share": window_data / elapsed if elapsed > 0 else 0.0,
                    }
                    if info.is_main:
                        record(entry)
                        emit("log", {**entry, "total_iters": total_iters})
                    sums, window_data, window_steps, window_start = {}, 0.0, 0, time.perf_counter()
                elif info.is_main:
                    emit("step", {"iteration": iteration, "total_iters": total_iters})
                if broadcast_flag(stop.signal is not None, info):
                    stopped_by = stop.signal or "signal"
                    break
                if last_of_epoch:
                    break
                fetch_start = time.perf_counter()
            if stopped_by is not None:
                break
            completed = iteration // iters_per_epoch
            epoch_done = iteration % iters_per_epoch == 0
            finished = iteration >= total_iters
            metrics = None
            due = config.val_every and epoch_done and completed % config.val_every == 0
            if val_loader is not None and (finished or due):
                metrics = validate(net, val_loader, num_classes, info, config.amp)
                entry = {"type": "val", "iteration": iteration, "epoch": completed,
                         **{k: metrics[k] for k in ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU", "score")}}  # fmt: skip
                record(entry)
                if info.is_main:
                    emit("val", entry)
                if metrics["score"] > best_score:
                    best_score, best_metrics = metrics["score"], entry
                    save(best_path, entry)
            save(last_path, metrics)
    if stopped_by is not None:
        save(last_path, None)
        if info.is_main:
            emit("message", {"text": f"{stopped_by}: saved {last_path} at iteration {iteration}; continue with --resume auto"})
    skipped = {**train_loader.skipped, **(val_loader.skipped if val_loader else {})}
    for sample in gather_lists(list(skipped.values()), info):  # under torchrun, the other ranks' too
        if (sample.split, sample.index) not in skipped:
            skipped[(sample.split, sample.index)] = sample
            record({"type": "skipped", "iteration": iteration, **sample.to_dict()})
    if metrics_file is not None:
        metrics_file.close()
    seconds = time.perf_counter() - start_time
    return TrainResult(
        output_dir=out_dir,
        iteration=iteration,
        total_iters=total_iters,
        epoch=iteration // iters_per_epoch,
        best=best_metrics,
        last_checkpoint=last_path if last_path.exists() else None,
        best_checkpoint=best_path if best_path.exists() else None,
        seconds=seconds,
        stopped_by=stopped_by,
        reinitialised=reinitialised,
        images_per_second=total_images / total_step_time if total_step_time else 0.0,
        data_share=total_data / total_step_time if total_step_time else 0.0,
        skipped=[sample.to_dict() for sample in skipped.values()],
    )


# Settings that an exact continuation needs unchanged (the run length may change; it is the point of resuming).
EXACT_RESUME_SETTINGS = (
    "data", "train_split", "batch_size", "lr", "head_lr_mult", "momentum", "weight_decay", "poly_power",
    "warmup_iters", "crop_size", "base_size", "scale_min", "scale_max", "se_loss", "se_weight", "aux",
    "aux_weight", "amp", "seed", "freeze_backbone", "freeze_bn", "mean", "std",
)  # fmt: skip


def _check_resume_settings(
    ckpt: dict[str, Any], path: Path, config: TrainConfig, model: EncNet, ranks: int, emit: Callback | None
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
    if emit is None:
        return
    saved = ckpt.get("train_config") or {}
    now = config.to_dict()
    differ = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in EXACT_RESUME_SETTINGS if k in saved and saved[k] != now.get(k)]
    if ckpt.get("world_size") not in (None, ranks):
        differ.append(f"processes {ckpt['world_size']} -> {ranks}")
    if differ:
        emit("message", {"text": f"warning: resuming with changed settings ({'; '.join(differ)}): "
                                 "the run continues but is no longer an exact continuation of the interrupted one"})  # fmt: skip


def _resume_path(resume: str | None, out_dir: Path) -> Path | None:
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
