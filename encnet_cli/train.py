"""``encnet train``: train or fine-tune EncNet on a prepared dataset (one CPU to many GPUs via torchrun)."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, plural, safe_text
from encnet_core.choices import TRACKERS
from encnet_core.config import (
    CLASSIFICATION_DEFAULTS,
    LR_SCHEDULES,
    TrainConfig,
    list_recipes,
    parse_set_option,
    resolve_train_config,
)

_Schedule = StrEnum("Schedule", {name: name for name in LR_SCHEDULES})  # choices from the library's list
_Tracker = StrEnum("Tracker", {name: name for name in TRACKERS})

# Each option is written once, in train()'s signature: the ones named after a TrainConfig field are its flags.
NOT_FLAGS = {  # TrainConfig fields without a flag of their own, and why
    "data": "the DATA argument",
    "mean": "three numbers: --set mean=[R,G,B] (or a recipe / --config)",
    "std": "three numbers: --set std=[R,G,B] (or a recipe / --config)",
    "recipe": "recorded from --recipe, which is a layer of settings rather than one setting",
}
CLI_ONLY = {  # train() parameters that are no TrainConfig field: how the run is set up, resumed or shown
    "ctx": "typer's context",
    "recipe": "a layer of settings (the field records its name)",
    "config_file": "a layer of settings (--config FILE)",
    "set_values": "a layer of settings (--set KEY=VALUE)",
    "resume": "where to continue from, not a setting of the run (config.toml would resume every rerun)",
    "trust_code": "a permission: no recipe or saved config.toml may turn it on",
    "json_out": "output of the command",
    "tensorboard": "output of the command (an alias of --tracker tensorboard)",
    "tracker": "output of the command (callbacks around the display)",
    "progress": "output of the command",
}
FIELD_OF = {"compile_model": "compile"}  # parameters named apart from their field (compile is a builtin)


def flag_settings(params: dict[str, Any]) -> dict[str, Any]:
    """train()'s flags by TrainConfig field, as resolve_train_config takes them (None: not given), in the
    signature's order; ``params``: train()'s arguments (its locals() before anything else is assigned)."""
    fields = TrainConfig.__dataclass_fields__
    return {
        FIELD_OF.get(name, name): value
        for name, value in params.items()
        if name not in CLI_ONLY and FIELD_OF.get(name, name) in fields and FIELD_OF.get(name, name) not in NOT_FLAGS
    }


def _skipped_text(skipped: list[dict[str, Any]]) -> str | None:
    """The summary's line for the bad samples a --skip-bad run left out (markup escaped: names are data)."""
    if not skipped:
        return None
    shown = ", ".join(f"{s['split']} {s['index']} ({s['name']!r})" for s in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return safe_text(f"{plural(len(skipped), 'bad sample')}: {shown}{more}; reasons in metrics.jsonl")


def _complete_recipe(incomplete: str) -> list[str]:
    return [name for name in list_recipes() if name.startswith(incomplete)]


def _d(name: str) -> str:
    """' (default: X)' for help text, read from TrainConfig (the one owner of the defaults), and
    '; classification: Y' where CLASSIFICATION_DEFAULTS differs."""
    value = TrainConfig.__dataclass_fields__[name].default
    if isinstance(value, bool):
        value = "on" if value else "off"
    shown = value if value != "" else repr(value)
    if name in CLASSIFICATION_DEFAULTS:
        return f" (default: {shown}; classification data: {CLASSIFICATION_DEFAULTS[name]})"
    return f" (default: {shown})"


def train(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="Prepared dataset (.h5) from `encnet prepare`."),
    output_dir: Path = typer.Option(None, "--output-dir", "-o", help="Run folder (config.toml, metrics.jsonl, last.pt, best.pt) (default: runs/MODEL-DATASTEM)."),
    model: str = typer.Option(None, "--model", "-m", help=f"Registered model (see `encnet models`){_d('model')}."),
    recipe: str = typer.Option(None, "--recipe", help=f"Start from a shipped recipe ({len(list_recipes())}; docs/reproducing.md says which is which): {', '.join(list_recipes())}.", autocompletion=_complete_recipe),
    config_file: Path = typer.Option(None, "--config", help="TOML file of settings (over the recipe, under --set and flags)."),
    set_values: list[str] = typer.Option(None, "--set", help="Any training setting as KEY=VALUE (a TOML value), e.g. --set head_lr_mult=5 --set mean=[0.5,0.5,0.5]; repeatable; over --config, under named flags."),
    epochs: int = typer.Option(None, "--epochs", help="Run length in epochs (total when resuming)."),
    iters: int = typer.Option(None, "--iters", help="Run length in iterations (total when resuming; wins over --epochs)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help=f"Images per process and step{_d('batch_size')}."),
    accumulate: int = typer.Option(None, "--accumulate", help=f"Gradient accumulation: --batch-size is per micro-batch, and this many micro-batches make one optimizer step (an iteration); the global batch is batch x processes x this{_d('accumulate')}."),
    lr: float = typer.Option(None, "--lr", help=f"Base lr per 16 images; scaled by global batch / 16 (images per optimizer step){_d('lr')}."),
    head_lr_mult: float = typer.Option(None, "--head-lr-mult", help=f"The heads' lr as a multiple of the backbone's{_d('head_lr_mult')}."),
    momentum: float = typer.Option(None, "--momentum", help=f"SGD momentum{_d('momentum')}."),
    weight_decay: float = typer.Option(None, "--weight-decay", help=f"SGD weight decay{_d('weight_decay')}."),
    lr_schedule: _Schedule = typer.Option(None, "--lr-schedule", help=f"lr decay per iteration: poly (1 - it/total) ** power, cosine 0.5 (1 + cos(pi it/total)), step x0.1 every --lr-step epochs{_d('lr_schedule')}."),
    lr_step: int = typer.Option(None, "--lr-step", help=f"Step schedule: epochs between the x0.1 decays{_d('lr_step')}."),
    poly_power: float = typer.Option(None, "--poly-power", help=f"Poly schedule: lr x (1 - it/total) ** power{_d('poly_power')}."),
    warmup_iters: int = typer.Option(None, "--warmup-iters", help=f"Linear warm-up iterations{_d('warmup_iters')}."),
    crop_size: int = typer.Option(None, "--crop-size", help=f"Training crop side{_d('crop_size')}."),
    base_size: int = typer.Option(None, "--base-size", help=f"Long side before random scaling{_d('base_size')}."),
    scale_min: float = typer.Option(None, "--scale-min", help=f"Smallest random scale of the base size{_d('scale_min')}."),
    scale_max: float = typer.Option(None, "--scale-max", help=f"Largest random scale of the base size{_d('scale_max')}."),
    workers: str = opt.workers_option(None, _d("workers")),
    num_codes: int = typer.Option(None, "--num-codes", help="Codewords K of the Encoding layer (default: the model's, 32; EncNet models only, FCN and DeepLabV3 have none)."),
    se_loss: bool = typer.Option(None, "--se-loss/--no-se-loss", help=f"Semantic Encoding loss{_d('se_loss')} (EncNet models; FCN and DeepLabV3 have no SE head and train without it)."),
    se_weight: float = typer.Option(None, "--se-weight", help=f"SE loss weight{_d('se_weight')}."),
    aux: bool = typer.Option(None, "--aux/--no-aux", help=f"Auxiliary FCN head on layer3{_d('aux')}."),
    aux_weight: float = typer.Option(None, "--aux-weight", help=f"Aux loss weight{_d('aux_weight')}."),
    lateral: bool = typer.Option(None, "--lateral/--no-lateral", help=f"EncHead lateral branch (paper setting for PASCAL){_d('lateral')}."),
    dropout: float = typer.Option(None, "--dropout", help="Dropout before the classifiers (default: the model's, 0.1)."),
    output_stride: int = typer.Option(None, "--output-stride", help=f"Backbone output stride, 8 or 16{_d('output_stride')}."),
    amp: opt.Amp = typer.Option(None, "--amp", help=f"Mixed precision (fp16 needs CUDA and adds a GradScaler){_d('amp')}."),
    device: str = typer.Option(None, "--device", help=f"auto (CUDA when available), cpu, cuda or cuda:N{_d('device')}.", callback=opt.check_device, autocompletion=opt.complete_device),
    dist_timeout: float = typer.Option(None, "--dist-timeout", metavar="SECONDS", help=f"Under torchrun: how long a collective waits for the other processes; then every process still running stops with one line naming the iteration, last.pt kept{_d('dist_timeout')}."),
    seed: int = typer.Option(None, "--seed", help=f"Seed of model init, data order and augmentation{_d('seed')}."),
    val_split: str = typer.Option(None, "--val-split", help=f"Split to validate on; '' to skip{_d('val_split')}."),
    train_split: str = typer.Option(None, "--train-split", help=f"Split to train on{_d('train_split')}."),
    val_every: int = typer.Option(None, "--val-every", help=f"Validate every N epochs; 0 = only at the end{_d('val_every')}."),
    log_every: int = typer.Option(None, "--log-every", help=f"Iterations per metrics.jsonl record{_d('log_every')}."),
    save_every: int = typer.Option(None, "--save-every", help=f"Also save last.pt every N iterations within an epoch, to lose at most N iterations when a process or node dies; 0 = off{_d('save_every')}."),
    save_every_minutes: float = typer.Option(None, "--save-every-minutes", help=f"Also save last.pt when M minutes passed since the last save; 0 = off{_d('save_every_minutes')}: long epochs lose at most that much work, for a save that takes a second or two (a ResNet-101 checkpoint)."),
    resume: str = typer.Option(None, "--resume", help="'auto' (the run folder's last.pt, if any) or a checkpoint path."),
    init_from: Path = typer.Option(None, "--init-from", help="Fine-tune from an encnet or PyTorch-Encoding checkpoint, an export, or a zoo name (encnet weights list)."),
    trust_code: opt.TrustCode = False,
    freeze_backbone: bool = typer.Option(None, "--freeze-backbone", help="Train the heads only."),
    freeze_bn: bool = typer.Option(None, "--freeze-bn", help="Keep BatchNorm statistics fixed (tiny batches)."),
    backbone_weights: str = typer.Option(None, "--backbone-weights", help="ImageNet weights: a local state_dict file, 'imagenet' (torchvision's), or the reference's by name, e.g. resnet101s or resnest101 (`encnet weights list` shows them all)."),
    compile_model: bool = typer.Option(None, "--compile", help="torch.compile the model."),
    skip_bad: bool = typer.Option(
        None, "--skip-bad",
        help="Go on past samples that do not decode or break the format: a bad training sample is replaced by the next good one, a bad validation sample is left out; each is listed in metrics.jsonl and the summary.",
    ),  # fmt: skip
    json_out: opt.JsonOut = None,
    tracker: list[_Tracker] = typer.Option(
        None, "--tracker",
        help="Also log the run (settings; losses, lr, throughput and validation metrics per record; best and last "
        "validation at the end) to an experiment tracker; repeatable; rank 0 only. tensorboard: events in "
        "RUN/tensorboard. mlflow: MLFLOW_TRACKING_URI if set, else a local file store RUN/mlruns; experiment "
        "MLFLOW_EXPERIMENT_NAME or 'encnet'. wandb: WANDB_PROJECT or 'encnet', files under RUN/wandb (or WANDB_DIR); "
        "WANDB_MODE=offline needs no account. Each needs its extra: pip install 'encnet[NAME]'.",
    ),  # fmt: skip
    tensorboard: bool = typer.Option(
        False, "--tensorboard",
        help="The same as --tracker tensorboard: TensorBoard events in RUN/tensorboard; view with tensorboard --logdir runs/.",
    ),  # fmt: skip
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress display."),
) -> None:
    """Train or fine-tune a model; distributed with `torchrun --nproc-per-node N -m encnet_cli train ...`.

    The task is the dataset's: a segmentation file trains a segmentation model, a classification file
    (encnet prepare cifar10, synthetic --task classification) a classifier (default encnet_cifar14),
    with cross-entropy, crop + flip augmentation and top-1/top-5 validation.

    Settings: defaults (classification data: its own, shown as such) < --recipe < --config FILE <
    --set KEY=VALUE < named flags (config.toml in the run folder records the result). mean/std and
    every other setting without a flag go through --set.
    """
    flags = flag_settings(locals())  # first: locals() holds the parameters only
    # torch and rich.progress: when the command runs, not to parse its options or print --help
    from encnet_cli._progress import TrainDisplay, val_text
    from encnet_core.data.hdf5 import probe_task
    from encnet_core.engine.trackers import make_trackers
    from encnet_core.engine.train import train as run_train

    config = resolve_train_config(data, recipe, config_file, parse_set_option(set_values or []), flags, task=probe_task(data))
    check_json_target(json_out)
    is_main = int(os.environ.get("RANK", "0")) == 0
    names = [str(t) for t in tracker or []] + (["tensorboard"] if tensorboard else [])
    trackers = make_trackers(names, Path(config.output_dir), config.to_dict())  # installed? (one line, before any work)
    display = TrainDisplay(enabled=progress and is_main and not json_to_stdout(json_out))
    if trackers:
        trackers[-1].inner = display  # the chain: tracker -> ... -> tracker -> display
    failed = True
    try:
        result = run_train(config, resume=resume, callback=trackers[0] if trackers else display, trust_code=trust_code)
        failed = False
        for each in trackers:  # the final metrics; no-op on ranks other than 0 (they opened no run)
            each.finish(result.best, result.iteration)
    finally:
        for each in trackers:
            each.close(failed=failed)  # a run that raised: FAILED in MLflow, exit code 1 in W&B
        display.close()
    if not is_main:
        return
    summary = {
        "output_dir": str(result.output_dir),
        "iteration": result.iteration,
        "total_iters": result.total_iters,
        "epochs": result.epoch,  # epochs trained in, the last possibly partial (encnet_core.engine.train.epoch_of)
        "iters_per_epoch": result.iters_per_epoch,
        "best": result.best,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_second, 2),
        "data_loading_share": round(result.data_share, 3),
        "reinitialised": result.reinitialised,
        "stopped_by": result.stopped_by,
        "skipped": result.skipped,
    }
    if json_out is not None:
        emit_json(summary, json_out)
    if not json_to_stdout(json_out):
        best = result.best
        if best:
            scores = val_text(best) if "top1_error" in best else f"pixAcc {best['pixAcc']:.4f}, mIoU {best['mIoU']:.4f}"
            summary["best"] = f"{scores} (epoch {best['epoch']}, iteration {best['iteration']})"
        summary["skipped"] = _skipped_text(result.skipped)
        in_last = result.iteration - (result.epoch - 1) * result.iters_per_epoch
        if 0 < in_last < result.iters_per_epoch:
            which = "partial" if result.epoch == 1 else "the last one partial"
            summary["epochs"] = f"{result.epoch} ({which}: {in_last} of {result.iters_per_epoch} iterations)"
        table = Table(title=f"encnet train: {safe_text(config.model)} on {safe_text(data.name)}", show_header=False)
        for key, value in summary.items():
            if value not in (None, []):
                table.add_row(key, str(value))
        console.print(table)
    if result.stopped_by:
        sys.exit(130 if result.stopped_by == "SIGINT" else 143)
