"""The training loop, one for every task: SGD + poly/cosine/step lr, AMP, DDP under torchrun, exact resume, atomic checkpoints.

Reproducibility: the data a step sees is a pure function of (seed, epoch, position): each epoch's
order is a seeded permutation, and each sample's augmentation is drawn from a generator seeded by
(seed, epoch, index). Together with the saved RNG, optimizer and scheduler states this makes
``N iterations, stop, --resume, N more`` equal to ``2N`` in one go (on CPU, bit for bit).

Read from the bottom up: ``train`` joins the process group and calls ``_train``, the loop, which
gets everything it trains with from ``setup`` (one ``TrainSetup``), runs ``train_step`` per optimizer step
(one batch, or ``--accumulate K`` micro-batches: an "iteration" is an optimizer step throughout),
keeps the loss means in a ``LogWindow`` and ends each epoch in ``_end_of_epoch`` (validate, save).
The parts live next door: tasks.py (what differs between segmentation and classification: model,
datasets, loss, validation; the task is the dataset's), sampling.py (data order and augmentation
seeds), optim.py (SGD, lr schedules), checkpoint.py (payload, resume, fine-tuning), events.py (what
the caller is told).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from encnet_core.config import TrainConfig
from encnet_core.data.dataset import (
    BadSample,
    CheckedBatches,
    CheckedSamples,
    collate_checked,
)
from encnet_core.data.hdf5 import DatasetInfo, read_info
from encnet_core.engine.device import (
    autocast_context,
    check_amp,
    grad_scaler,
    is_cuda,
    pin_memory,
    prepare_for_training,
)
from encnet_core.engine.device import channels_last as device_channels_last
from encnet_core.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_flag,
    gather_lists,
    init_distributed,
    max_over_ranks,
    peer_failures,
    shutdown_distributed,
)
from encnet_core.engine.events import (
    Callback,
    Message,
    SampleSkipped,
    TrainEvent,
    TrainLog,
    TrainStart,
    TrainStep,
    Validated,
)
from encnet_core.engine.optim import PolySchedule, build_optimizer, build_scheduler, scaled_lr
from encnet_core.engine.sampling import EpochSampler, SeededSamples, ShardSampler
from encnet_core.engine.tasks import SEGMENTATION, Task, config_task, task_for
from encnet_core.engine.train_state import (
    TrainState,
    elastic_restart,
    init_from_checkpoint,
    restart_resume,
    resume_from,
    resume_path,
    training_payload,
)
from encnet_core.engine.workers import loader_workers
from encnet_core.errors import ConfigError, EncNetError
from encnet_core.models import create_model, list_models, model_task
from encnet_core.paths import atomic_write, check_output_dir
from encnet_core.weights.checkpoint import save_checkpoint
from encnet_core.weights.model_files import check_trusted

log = logging.getLogger("encnet")

__all__ = [
    "train", "TrainResult", "NonFiniteLoss", "setup", "TrainSetup", "train_step", "LogWindow", "build_model", "validate",
    "init_from_checkpoint", "EpochSampler", "SeededSamples", "PolySchedule", "epoch_of",
]  # fmt: skip


class NonFiniteLoss(EncNetError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path  # the run folder
    iteration: int  # iterations done
    total_iters: int  # iterations of the whole run
    epoch: int  # epochs trained in, the last possibly partial: epoch_of(iteration, iters_per_epoch)
    best: dict[str, Any] | None  # the best validation record (None: no validation)
    last_checkpoint: Path | None  # last.pt, once written
    best_checkpoint: Path | None  # best.pt, once written
    seconds: float  # wall time of the call
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" when interrupted
    reinitialised: list[str] = field(default_factory=list)  # layers --init-from re-initialised
    images_per_second: float = 0.0  # training images per second of step time, over all processes
    data_share: float = 0.0  # share of step time spent waiting for data
    skipped: list[dict[str, Any]] = field(default_factory=list)  # bad samples left out (--skip-bad), once each
    iters_per_epoch: int = 0  # optimizer steps per epoch (global batches // accumulate)


def epoch_of(iteration: int, iters_per_epoch: int) -> int:
    """The epoch, counted from 1, that iteration number ``iteration`` (counted from 1) falls in; 0 for 0.

    ``ceil(iteration / iters_per_epoch)``: the one definition of every epoch number a run states, so
    they agree. ``epoch_of(total_iters, ...)`` is the run's epoch count (its last epoch may be partial:
    1200 iterations of 37 are 33 epochs, the 33rd of 16 iterations); a metrics record's, a validation's,
    a checkpoint's and the summary's epoch is that of the last iteration done.
    """
    return -(-iteration // iters_per_epoch)


# ----------------------------------------------------------------------------- set-up


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model ``config`` describes, for ``num_classes`` classes (its task's ``build_model``)."""
    if config.model not in list_models():
        create_model(config.model, num_classes)  # raises the "unknown model" error
    return task_for(model_task(config.model)).build_model(config, num_classes)


@dataclass
class TrainSetup:
    """Everything a run trains with, as ``setup`` builds it."""

    config: TrainConfig  # the run's settings
    data_info: DatasetInfo  # the dataset's task, classes, palette and splits
    task: Task  # what differs per task: model, datasets, loss, validation (the dataset's task)
    model: nn.Module  # the bare model (what checkpoints save)
    net: nn.Module  # what the steps call: the model, under DDP and/or torch.compile
    sampler: EpochSampler  # the training order, set per epoch
    train_loader: CheckedBatches  # training batches (bad samples raise or are skipped)
    val_loader: CheckedBatches | None  # validation batches; None: no validation
    optimizer: torch.optim.SGD  # backbone and head parameter groups (a classifier: one group)
    scheduler: torch.optim.lr_scheduler.LambdaLR  # the lr schedule (poly, cosine or step), stepped per iteration
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling; None otherwise
    criterion: nn.Module  # (outputs, targets) -> (loss, parts): segmentation seg + aux + SE weighted, classification CE
    state: TrainState  # iteration and best score (a resumed run's, or the start)
    total_iters: int  # iterations of the whole run
    iters_per_epoch: int  # optimizer steps per epoch: global micro-batches // accumulate
    total_epochs: int  # epochs of the whole run (the last one may be partial)
    global_batch: int  # images per optimizer step over all processes (batch x processes x accumulate)
    lr: float  # backbone lr after scaling by the global batch
    reinitialised: list[str]  # layers --init-from re-initialised
    channels_last: bool  # model and batches in NHWC memory format (device.channels_last's choice unless setup was told)


def setup(
    config: TrainConfig, resume: str | None, emit: Callback, info: DistInfo, trust_code: bool = False, *,
    channels_last: bool | None = None,
) -> TrainSetup:  # fmt: skip
    """Check the inputs, build data, model, optimiser and schedule, restore a resumed run's state.

    Every check that can fail runs before the run folder is written; rank 0 writes config.toml.
    ``channels_last``: NHWC model and batches; None (what a run uses) leaves it to ``device.channels_last``
    (on CUDA, not on CPU); the GPU benchmark sets it to measure that choice.
    """
    layout = device_channels_last(info.device) if channels_last is None else channels_last
    if config.model not in list_models():
        create_model(config.model, 1)  # the "unknown model" error, before anything is written
    if config.init_from:
        check_trusted(Path(config.init_from), trust_code)  # a program is refused before the run folder is written
    out_dir = Path(config.output_dir)
    check_output_dir(out_dir, "--output-dir")
    data_info = read_info(Path(config.data), allow_truncated=config.skip_bad)
    task = config_task(config, data_info.task)  # the model fits the data, the settings apply
    check_amp(info.device, config.amp)
    sampler, train_loader, val_loader = _loaders(config, data_info, info, task)
    iters_per_epoch = sampler.batches_per_epoch // config.accumulate  # optimizer steps; a remainder of micro-batches is dropped
    total_iters = _run_length(config, iters_per_epoch)
    say = (lambda text: emit(Message(text))) if info.is_main else None
    model, reinitialised = _model(config, data_info, info, say, trust_code, layout)  # its option errors come before the folder
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(config.to_toml())
    global_batch = config.batch_size * info.world_size * config.accumulate  # images per optimizer step
    lr = scaled_lr(config, global_batch)
    optimizer = build_optimizer(model, config, lr)
    scheduler = build_scheduler(optimizer, config, total_iters, iters_per_epoch)
    scaler = grad_scaler(config.amp)
    restart = max_over_ranks(elastic_restart(), info)  # torchrun restarted the workers (after one died)
    state, path = TrainState(), resume_path(restart_resume(resume, out_dir, restart, say), out_dir)
    if path is not None:
        state = resume_from(path, config=config, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            total_iters=total_iters, classes=data_info.classes, ranks=info.world_size, say=say,
                            iters_per_epoch=iters_per_epoch)  # fmt: skip
    if restart and info.is_main:
        _forget_lost_records(out_dir / "metrics.jsonl", state.iteration)
    with peer_failures(info, config.dist_timeout, lambda: "start-up (DDP's first broadcast)", lambda: "no step was taken"):
        model, net = _parallel(model, config, info)
    criterion = task.criterion(config)
    return TrainSetup(
        config=config, data_info=data_info, task=task, model=model, net=net, sampler=sampler, train_loader=train_loader,
        val_loader=val_loader, optimizer=optimizer, scheduler=scheduler, scaler=scaler, criterion=criterion, state=state,
        total_iters=total_iters, iters_per_epoch=iters_per_epoch, total_epochs=epoch_of(total_iters, iters_per_epoch),
        global_batch=global_batch, lr=lr, reinitialised=reinitialised, channels_last=layout,
    )  # fmt: skip


def _loaders(
    config: TrainConfig, data_info: DatasetInfo, info: DistInfo, task: Task = SEGMENTATION
) -> tuple[EpochSampler, CheckedBatches, CheckedBatches | None]:
    """The training sampler and loader, and the validation loader (None without a labelled validation split)."""
    train_set = task.train_dataset(config)
    sampler = EpochSampler(len(train_set), config.batch_size, info, config.seed)
    if sampler.batches_per_epoch == 0:
        raise ConfigError(
            f"the {config.train_split} split has {len(train_set)} images, fewer than one global batch "
            f"({config.batch_size} x {info.world_size}); lower --batch-size"
        )
    if sampler.batches_per_epoch < config.accumulate:
        raise ConfigError(
            f"the {config.train_split} split has {len(train_set)} images, fewer than one optimizer step "
            f"({config.batch_size} x {info.world_size} x --accumulate {config.accumulate}); lower --accumulate or --batch-size"
        )
    micro_batches = config.iters * config.accumulate if config.iters else (config.epochs or 1) * sampler.batches_per_epoch
    run_samples = micro_batches * config.batch_size  # this process's, over the run
    workers = loader_workers(config.workers, run_samples)  # auto: from the usable cores and the work (engine/workers.py)
    loader_args = {
        "num_workers": workers,
        "pin_memory": pin_memory(info.device),
        "persistent_workers": workers > 0,
        "generator": torch.Generator().manual_seed(config.seed),
        "collate_fn": collate_checked,  # bad samples travel as data: (batch, bad samples, missing)
    }
    train_loader = CheckedBatches(
        DataLoader(SeededSamples(train_set, config.seed, config.skip_bad), config.batch_size, sampler=sampler, **loader_args),
        Path(config.data), config.skip_bad, require_complete=True,
    )  # fmt: skip
    val_loader = None
    if config.val_split and config.val_split in data_info.splits and data_info.labelled.get(config.val_split):
        val_set = task.val_dataset(config)
        val_loader = CheckedBatches(
            DataLoader(CheckedSamples(val_set), config.batch_size, sampler=ShardSampler(len(val_set), info), **loader_args),
            Path(config.data), config.skip_bad,
        )  # fmt: skip
    elif config.val_split and info.is_main:
        log.warning("no labelled %r split in %s: training without validation", config.val_split, config.data)
    return sampler, train_loader, val_loader


def _run_length(config: TrainConfig, iters_per_epoch: int) -> int:
    """Total iterations: ``iters``, else ``epochs`` whole epochs."""
    if config.iters:
        return config.iters
    if config.epochs:
        return config.epochs * iters_per_epoch
    raise ConfigError("give the run's length with --epochs or --iters")


def _model(
    config: TrainConfig, data_info: DatasetInfo, info: DistInfo, say: Callable[[str], None] | None, trust_code: bool,
    channels_last: bool,
) -> tuple[nn.Module, list[str]]:
    """The model, seeded, on its device (NHWC with ``channels_last``): fine-tuned from ``init_from`` (with the
    re-initialised layers), frozen as asked."""
    torch.manual_seed(config.seed)
    model = build_model(config, data_info.num_classes)
    reinitialised: list[str] = []
    if config.init_from:
        reinitialised = init_from_checkpoint(model, Path(config.init_from), data_info.classes, trust_code)
        if reinitialised and say is not None:
            say(f"re-initialised for {data_info.num_classes} classes: {', '.join(reinitialised)}")
    if config.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    model.to(info.device)
    prepare_for_training(info.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, reinitialised


def _parallel(model: nn.Module, config: TrainConfig, info: DistInfo) -> tuple[nn.Module, nn.Module]:
    """The model (with SyncBatchNorm under torchrun on CUDA) and what the steps call (DDP, torch.compile)."""
    if info.distributed and is_cuda(info.device):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif info.distributed and info.is_main:
        log.warning("SyncBatchNorm needs CUDA: on CPU each process normalises with its own batch statistics")
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if is_cuda(info.device) else None)
    if config.compile:
        net = torch.compile(net)
    return model, net


def _set_train_mode(model: nn.Module, config: TrainConfig) -> None:
    model.train()
    core = model.module if hasattr(model, "module") else model
    if config.freeze_backbone:
        core.backbone.eval()
    if config.freeze_bn:
        for module in core.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ----------------------------------------------------------------------------- steps, records, validation


def train_step(
    run: TrainSetup, images: Tensor | Sequence[Tensor], targets: Tensor | Sequence[Tensor], device: torch.device
) -> tuple[Tensor, dict[str, Tensor]]:
    """One SGD step (forward under autocast, fp16 loss scaling) on a batch, or on K micro-batches accumulated.

    The loop below calls it once per optimizer step; the GPU benchmark (diagnostics/benchmark.py) times it.
    ``images``: (B, 3, H, W), made NHWC when ``run.channels_last``; ``targets``: masks (B, H, W) for
    segmentation, labels (B,) for classification. Or sequences of K of each (``--accumulate K``): each
    micro-batch's loss is divided by K and backpropagated (scaled by the GradScaler with fp16), DDP
    all-reduces only on the last one (``no_sync`` before), then one optimizer step: the gradient is the
    mean of the micro-batches' loss gradients. Only one micro-batch's activations are alive at a time.
    Returns the loss and its terms, each the mean over the micro-batches.
    """
    if isinstance(images, Tensor):
        images, targets = [images], [targets]
    k = len(images)
    run.optimizer.zero_grad(set_to_none=True)
    losses, terms = [], []
    for i, (micro_images, micro_targets) in enumerate(zip(images, targets, strict=True)):
        with _gradient_sync(run.net, last=i == k - 1):
            loss, parts = _forward(run, micro_images, micro_targets, device)
            scaled = loss / k if k > 1 else loss
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        losses.append(loss.detach())
        terms.append(parts)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    if k == 1:
        return losses[0], terms[0]
    return torch.stack(losses).mean(), {key: torch.stack([t[key] for t in terms]).mean() for key in terms[0]}


def _forward(run: TrainSetup, images: Tensor, targets: Tensor, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss and its terms on one (micro-)batch, moved to ``device`` (NHWC when ``run.channels_last``)."""
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(device, run.config.amp):
        outputs = run.net(images)
    return run.criterion(outputs, targets)


def _gradient_sync(net: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync()`` on all but the last micro-batch of a step (gradients all-reduced once); nothing without DDP."""
    no_sync = getattr(net, "no_sync", None)  # DDP, also under torch.compile (which forwards attributes)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def _step_groups(batches: Iterable[tuple[Tensor, Tensor]], k: int) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """The loader's batches in groups of ``k``, one group per optimizer step: (images, targets) lists.

    An incomplete last group is dropped, as the loader drops incomplete batches (the loop never reaches it:
    an epoch is ``batches // k`` steps).
    """
    images: list[Tensor] = []
    targets: list[Tensor] = []
    for image_batch, target_batch in batches:
        images.append(image_batch)
        targets.append(target_batch)
        if len(images) == k:
            yield images, targets
            images, targets = [], []


class LogWindow:
    """The iterations since the last metrics record (summed loss terms, data wait, wall time), and run totals."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.non_finite = torch.zeros((), dtype=torch.bool, device=info.device)  # any non-finite loss yet (no sync per step)
        self.sums: dict[str, Any] = {}  # loss term -> sum over the window's steps
        self.steps, self.data_time, self.start = 0, 0.0, time.perf_counter()
        self.total_data, self.total_step_time, self.total_images = 0.0, 0.0, 0  # over the whole run

    def add(self, loss: Tensor, parts: dict[str, Tensor], images: int, data_time: float, step_time: float) -> None:
        """One step: its loss and terms, the images over all processes, the seconds waited for data and in all."""
        self.non_finite |= ~torch.isfinite(loss.detach())
        for key, value in {"loss": loss.detach(), **parts}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.data_time += data_time
        self.total_data += data_time
        self.total_step_time += step_time
        self.total_images += images

    def finite(self) -> bool:
        """No non-finite loss so far on this process."""
        return not bool(self.non_finite.item())

    def check_finite(self, iteration: int, last_path: Path) -> None:
        if not self.finite():
            raise NonFiniteLoss(
                f"the loss became non-finite near iteration {iteration}; "
                f"{'last.pt keeps the last good state; ' if last_path.exists() else ''}"
                "lower --lr, use --amp bf16/off, or check the data"
            )

    def close(self, iteration: int, run: TrainSetup, epoch: int) -> TrainLog:
        """The window's record, means over all processes; the next window starts now."""
        elapsed = time.perf_counter() - self.start
        sums = self.sums
        if self.info.distributed:  # log the mean over all ranks, not rank 0's alone
            keys = sorted(sums)
            values = torch.stack([torch.as_tensor(sums[k], device=self.info.device).float() for k in keys])
            sums = {k: v / self.info.world_size for k, v in zip(keys, all_reduce_sum(values, self.info), strict=True)}

        def per_second(amount: float) -> float:
            return amount / elapsed if elapsed > 0 else 0.0

        event = TrainLog(
            iteration, run.total_iters, epoch, run.optimizer.param_groups[0]["lr"], {k: float(v) / self.steps for k, v in sums.items()},
            per_second(self.steps), per_second(self.steps * run.global_batch), per_second(self.data_time),
        )  # fmt: skip
        self.sums, self.steps, self.data_time, self.start = {}, 0, 0.0, time.perf_counter()
        return event


class _RunOutputs:
    """What rank 0 writes and says: metrics.jsonl records, events, last.pt and best.pt (no-ops elsewhere)."""

    def __init__(self, out_dir: Path, info: DistInfo, emit: Callback) -> None:
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.is_main, self._emit = info.is_main, emit
        self.last_saved: int | None = None  # the iteration this run last wrote last.pt at (every rank knows it)
        self._file = (out_dir / "metrics.jsonl").open("a") if info.is_main else None

    def __enter__(self) -> _RunOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def record(self, entry: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()

    def emit(self, event: TrainEvent) -> None:
        if self.is_main:
            self._emit(event)

    def save(self, path: Path, run: TrainSetup, metrics: dict[str, Any] | None) -> None:
        if path == self.last_path:
            self.last_saved = run.state.iteration
        if self.is_main:
            epoch = epoch_of(run.state.iteration, run.iters_per_epoch)
            save_checkpoint(training_payload(run.model, run.optimizer, run.scheduler, run.scaler, run.config,
                                             run.data_info, run.state, epoch, metrics), path)  # fmt: skip

    def last_text(self) -> str:
        """What last.pt holds, for the line a failed collective ends the run with."""
        if self.last_saved is not None:
            return f"last.pt is from iteration {self.last_saved}"
        return "last.pt is as the run found it" if self.last_path.exists() else "no last.pt was written"

    def watch_skips(self, run: TrainSetup, info: DistInfo) -> None:
        """--skip-bad: each bad sample once, in metrics.jsonl and on screen (other ranks: in their log)."""

        def skip(sample: BadSample) -> None:
            if self.is_main:
                self.record({"type": "skipped", "iteration": run.state.iteration, **sample.to_dict()})
                self.emit(SampleSkipped(sample))
            else:
                log.warning("rank %d: skipped bad sample: %s", info.rank, sample)

        run.train_loader.on_skip = skip
        if run.val_loader is not None:
            run.val_loader.on_skip = skip

    def all_skipped(self, run: TrainSetup, info: DistInfo) -> list[BadSample]:
        """The bad samples every rank left out; rank 0 records the other ranks' ones now."""
        skipped = {**run.train_loader.skipped, **(run.val_loader.skipped if run.val_loader else {})}
        for sample in gather_lists(list(skipped.values()), info):  # under torchrun, the other ranks' too
            if (sample.split, sample.index) not in skipped:
                skipped[(sample.split, sample.index)] = sample
                self.record({"type": "skipped", "iteration": run.state.iteration, **sample.to_dict()})
        return list(skipped.values())


def validate(model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]:
    """Single-scale segmentation validation (``SegmentationTask.validate``); confusion matrices are summed over ranks."""
    return SEGMENTATION.validate(model, loader, num_classes, info, amp)


def _end_of_epoch(run: TrainSetup, out: _RunOutputs, info: DistInfo) -> None:
    """After an epoch (or the run's last iteration): validate when due and at the end, keep best.pt, save last.pt."""
    state, config = run.state, run.config
    completed = state.iteration // run.iters_per_epoch
    epoch_done = state.iteration % run.iters_per_epoch == 0
    due = config.val_every and epoch_done and completed % config.val_every == 0
    metrics = None
    if run.val_loader is not None and (state.iteration >= run.total_iters or due):
        metrics = run.task.validate(run.net, run.val_loader, run.data_info.num_classes, info, config.amp)
        event = Validated(state.iteration, epoch_of(state.iteration, run.iters_per_epoch), {k: metrics[k] for k in run.task.val_metrics})
        out.record(event.record())
        out.emit(event)
        if metrics["score"] > state.best_score:
            state.best_score, state.best_metrics = metrics["score"], event.record()
            out.save(out.best_path, run, state.best_metrics)
    out.save(out.last_path, run, metrics)


class _SaveSchedule:
    """--save-every N / --save-every-minutes M: when rank 0 also writes last.pt within an epoch.

    Checked after each optimizer step. Rank 0 alone saves and alone decides (no collective depends on
    the decision), so the clock may differ between ranks: the other ranks never look at it.
    """

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.every, self.seconds, self.is_main = config.save_every, config.save_every_minutes * 60.0, info.is_main
        self.last = time.monotonic()

    def due(self, iteration: int) -> bool:
        if not self.is_main:
            return False
        if self.every and iteration % self.every == 0:
            return True
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        """last.pt was just written (within the epoch or at its end): the minutes count from now."""
        self.last = time.monotonic()


FAULT_ENV = "ENCNET_TEST_FAULT"  # test-only: "KIND@RANK:ITERATION", KIND hang or kill, RANK a rank or lN a local rank


def _injected_fault(info: DistInfo, iteration: int, stop: _StopFlag) -> None:
    """Test-only, read here alone: make one process hang (until a signal) or die (SIGKILL) as it starts
    ``iteration`` (the others then fail in that step's collectives: DDP's buffer broadcast in forward), so
    the tests can check what the other processes do. Unset in every real run."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":  # torchrun's first attempt only
        return
    kind, _, place = spec.partition("@")
    rank, _, at = place.partition(":")
    mine = info.local_rank if rank.startswith("l") else info.rank  # "l1": local rank 1 (the process of one node)
    if int(rank.lstrip("l")) != mine or int(at) != iteration:
        return
    log.warning("rank %d: %s=%s: %s at iteration %d", info.rank, FAULT_ENV, spec, kind, iteration)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while stop.signal is None:  # "hang": as a process stuck outside Python would, until torchrun or the test ends it
        time.sleep(0.1)


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


# ----------------------------------------------------------------------------- the run


def train(
    config: TrainConfig, resume: str | None = None, callback: Callback | None = None, *, trust_code: bool = False
) -> TrainResult:
    """Run (or resume) a training run described by ``config``; see ``encnet train --help``.

    ``callback`` gets rank 0's events (engine/events.py). ``trust_code`` lets ``config.init_from`` be a
    TorchScript/pt2 program (opening one runs its code); it is a parameter, not a config field, so no
    recipe or saved config.toml can turn it on. ``resume`` needs a training checkpoint and never opens a program.
    """
    emit = callback or (lambda event: None)
    info = init_distributed(config.device, config.dist_timeout)
    completed = False
    try:
        result = _train(config, resume, emit, info, trust_code)
        completed = True
        return result
    finally:
        shutdown_distributed(info, completed)


def _train(config: TrainConfig, resume: str | None, emit: Callback, info: DistInfo, trust_code: bool = False) -> TrainResult:
    start_time = time.perf_counter()
    run = setup(config, resume, emit, info, trust_code)
    try:
        return _run(run, config, emit, info, start_time)
    finally:
        for loader in (run.train_loader, run.val_loader):
            _close_dataset(loader)


def _close_dataset(loader: Any) -> None:
    """Close the HDF5 handle of the dataset under ``loader`` (CheckedBatches -> DataLoader -> SeededSamples or
    CheckedSamples -> the HDF5 split; any of the wrappers may be absent)."""
    node = loader
    while node is not None and not hasattr(node, "close"):
        node = getattr(node, "loader", None) or getattr(node, "dataset", None)
    if node is not None:
        node.close()


def _forget_lost_records(metrics: Path, iteration: int) -> None:
    """After an elastic restart: drop metrics.jsonl records of the iterations after the checkpoint the run
    continues from (they are done again), so that no iteration is recorded twice, and a last line the dead
    process left half written."""
    if not metrics.is_file():
        return

    def keep(line: str) -> bool:
        try:
            return line.endswith("\n") and json.loads(line).get("iteration", 0) <= iteration
        except (ValueError, AttributeError):
            return False

    lines = metrics.read_text().splitlines(keepends=True)
    kept = [line for line in lines if keep(line)]
    if len(kept) < len(lines):
        with atomic_write(metrics) as tmp:
            tmp.write_text("".join(kept))


def _run(run: TrainSetup, config: TrainConfig, emit: Callback, info: DistInfo, start_time: float) -> TrainResult:
    state, window, stopped_by = run.state, LogWindow(info), None
    saves = _SaveSchedule(config, info)
    with _RunOutputs(Path(config.output_dir), info, emit) as out:
        out.watch_skips(run, info)
        out.emit(TrainStart(run.total_iters, state.iteration, run.iters_per_epoch, run.total_epochs, str(info.device),
                            info.world_size, run.lr, run.global_batch, sum(p.numel() for p in run.model.parameters())))  # fmt: skip
        # every collective below (DDP's all-reduce, LogWindow.close, broadcast_flag, validation, all_skipped): a failed
        # one ends the run with one line, and nothing is saved after it (the state may differ between ranks)
        at = state.iteration  # the iteration under way (its step, or the collectives after it), for that line
        failures = peer_failures(info, config.dist_timeout, lambda: f"iteration {at}", out.last_text)
        with failures, _StopFlag() as stop:
            while state.iteration < run.total_iters and stopped_by is None:
                epoch, position = divmod(state.iteration, run.iters_per_epoch)
                run.sampler.set_epoch(epoch, position * config.accumulate)  # the sampler counts micro-batches
                _set_train_mode(run.net, config)
                fetch_start = time.perf_counter()
                for images, masks in _step_groups(run.train_loader, config.accumulate):  # one optimizer step each
                    data_time = time.perf_counter() - fetch_start
                    at = state.iteration + 1
                    _injected_fault(info, at, stop)
                    loss, parts = train_step(run, images, masks, info.device)
                    state.iteration += 1
                    step_images = sum(batch.shape[0] for batch in images) * info.world_size
                    window.add(loss, parts, step_images, data_time, time.perf_counter() - fetch_start)
                    last_of_epoch = state.iteration % run.iters_per_epoch == 0 or state.iteration >= run.total_iters
                    if window.steps >= config.log_every or last_of_epoch or stop.signal:
                        window.check_finite(state.iteration, out.last_path)
                        logged = window.close(state.iteration, run, epoch_of(state.iteration, run.iters_per_epoch))
                        out.record(logged.record())
                        out.emit(logged)
                    else:
                        out.emit(TrainStep(state.iteration, run.total_iters))
                    if broadcast_flag(stop.signal is not None, info):
                        stopped_by = stop.signal or "signal"
                        break
                    if last_of_epoch:
                        break
                    if saves.due(state.iteration):  # rank 0 only
                        if window.finite():  # else no save (last.pt keeps the last good state); the next record's
                            out.save(out.last_path, run, None)  # check, on every rank, stops the run
                        saves.saved()
                    fetch_start = time.perf_counter()
                if stopped_by is None:
                    _end_of_epoch(run, out, info)
                    saves.saved()
        if stopped_by is not None:
            out.save(out.last_path, run, None)
            out.emit(Message(f"{stopped_by}: saved {out.last_path} at iteration {state.iteration}; continue with --resume auto"))
        with failures:
            skipped = out.all_skipped(run, info)
    return TrainResult(
        output_dir=Path(config.output_dir),
        iteration=state.iteration,
        total_iters=run.total_iters,
        epoch=epoch_of(state.iteration, run.iters_per_epoch),
        best=state.best_metrics,
        last_checkpoint=out.last_path if out.last_path.exists() else None,
        best_checkpoint=out.best_path if out.best_path.exists() else None,
        seconds=time.perf_counter() - start_time,
        stopped_by=stopped_by,
        reinitialised=run.reinitialised,
        images_per_second=window.total_images / window.total_step_time if window.total_step_time else 0.0,
        data_share=window.total_data / window.total_step_time if window.total_step_time else 0.0,
        skipped=[sample.to_dict() for sample in skipped],
        iters_per_epoch=run.iters_per_epoch,
    )
