"""``encnet train``: train or fine-tune EncNet on a prepared dataset (one CPU to many GPUs via torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import console, emit_json, err_console
from encnet_core.config import TrainConfig, list_recipes, load_toml, recipe_path
from encnet_core.engine.train import train as run_train


class _TrainDisplay:
    """Rich progress for the library's training events (rank 0 only)."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
        )
        self.task: Any = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "start":
            self.progress.start()
            err_console.print(
                f"training on {data['device']} x{data['world_size']}: {data['total_iters']} iterations "
                f"({data['iters_per_epoch']}/epoch, {data['epochs']} epochs), global batch {data['global_batch']}, "
                f"lr {data['lr']:.3g}, {data['params'] / 1e6:.2f}M parameters"
            )
            self.task = self.progress.add_task("train", total=data["total_iters"], completed=data["iteration"], epoch=1, stats="")
        elif event == "step" and self.task is not None:
            self.progress.update(self.task, completed=data["iteration"])
        elif event == "log" and self.task is not None:
            parts = " ".join(f"{k} {data[k]:.3f}" for k in ("seg", "aux", "se") if k in data)
            stats = (
                f"loss {data['loss']:.3f} ({parts}) lr {data['lr']:.2e} {data['it_per_s']:.2f} it/s "
                f"data {data['data_share']:.0%}"
            )
            self.progress.update(self.task, completed=data["iteration"], epoch=data["epoch"], stats=stats)
        elif event == "val":
            self.progress.console.print(
                f"val epoch {data['epoch']} (it {data['iteration']}): pixAcc {data['pixAcc']:.4f} "
                f"mIoU {data['mIoU']:.4f} (all-classes {data['mIoU_all']:.4f})"
            )
        elif event == "message":
            self.progress.console.print(data["text"])

    def close(self) -> None:
        self.progress.stop()


def _skipped_text(skipped: list[dict[str, Any]]) -> str | None:
    """The summary's line for the bad samples a --skip-bad run left out (markup escaped: names are data)."""
    if not skipped:
        return None
    shown = ", ".join(f"{s['split']} {s['index']} ({s['name']!r})" for s in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return escape(f"{len(skipped)} bad sample(s): {shown}{more}; reasons in metrics.jsonl")


def train(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="Prepared dataset (.h5) from `encnet prepare`."),
    output_dir: Path = typer.Option(None, "--output-dir", "-o", help="Run folder (config.toml, metrics.jsonl, last.pt, best.pt)."),
    model: str = typer.Option(None, "--model", "-m", help="Registered model (see `encnet models`) [default: encnet_resnet50s]."),
    recipe: str = typer.Option(None, "--recipe", help=f"Start from a shipped recipe: {', '.join(list_recipes())}."),
    config_file: Path = typer.Option(None, "--config", help="TOML file of settings (over the recipe, under CLI flags)."),
    epochs: int = typer.Option(None, "--epochs", help="Run length in epochs (total when resuming)."),
    iters: int = typer.Option(None, "--iters", help="Run length in iterations (overrides --epochs; total when resuming)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Images per process and step [default: 8]."),
    lr: float = typer.Option(None, "--lr", help="Base lr per 16 images; scaled by global batch / 16 [default: 0.01]."),
    warmup_iters: int = typer.Option(None, "--warmup-iters", help="Linear warm-up iterations [default: 0]."),
    crop_size: int = typer.Option(None, "--crop-size", help="Training crop side [default: 480]."),
    base_size: int = typer.Option(None, "--base-size", help="Long side before random 0.5-2.0x scaling [default: 520]."),
    workers: int = typer.Option(None, "--workers", "-j", help="DataLoader workers per process [default: 4]."),
    num_codes: int = typer.Option(None, "--num-codes", help="Codewords K of the Encoding layer [default: model's, 32]."),
    se_loss: bool = typer.Option(None, "--se-loss/--no-se-loss", help="Semantic Encoding loss [default: on]."),
    se_weight: float = typer.Option(None, "--se-weight", help="SE loss weight [default: 0.2]."),
    aux: bool = typer.Option(None, "--aux/--no-aux", help="Auxiliary FCN head on layer3 [default: on]."),
    aux_weight: float = typer.Option(None, "--aux-weight", help="Aux loss weight [default: 0.2]."),
    lateral: bool = typer.Option(None, "--lateral/--no-lateral", help="EncHead lateral branch (paper setting for PASCAL)."),
    dropout: float = typer.Option(None, "--dropout", help="Dropout before the classifiers [default: 0.1]."),
    output_stride: int = typer.Option(None, "--output-stride", help="Backbone output stride, 8 or 16 [default: 8]."),
    amp: str = typer.Option(None, "--amp", help="Mixed precision: off, bf16 or fp16 (CUDA) [default: off]."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N [default: auto]."),
    seed: int = typer.Option(None, "--seed", help="Seed of model init, data order and augmentation [default: 0]."),
    val_every: int = typer.Option(None, "--val-every", help="Validate every N epochs; 0 = only at the end [default: 1]."),
    log_every: int = typer.Option(None, "--log-every", help="Iterations per metrics.jsonl record [default: 10]."),
    resume: str = typer.Option(None, "--resume", help="'auto' (the run folder's last.pt, if any) or a checkpoint path."),
    init_from: Path = typer.Option(None, "--init-from", help="Fine-tune from an encnet or PyTorch-Encoding checkpoint, or an export."),
    trust_code: bool = opt.TrustCodeOption,
    freeze_backbone: bool = typer.Option(None, "--freeze-backbone", help="Train the heads only."),
    freeze_bn: bool = typer.Option(None, "--freeze-bn", help="Keep BatchNorm statistics fixed (tiny batches)."),
    backbone_weights: str = typer.Option(None, "--backbone-weights", help="ImageNet weights: a local state_dict file or 'imagenet'."),
    compile_model: bool = typer.Option(None, "--compile", help="torch.compile the model."),
    val_split: str = typer.Option(None, "--val-split", help="Split to validate on; '' to skip [default: val]."),
    skip_bad: bool = typer.Option(
        None, "--skip-bad",
        help="Go on past samples that do not decode or break the format: a bad training sample is replaced by the next good one, a bad validation sample is left out; each is listed in metrics.jsonl and the summary.",
    ),  # fmt: skip
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress display."),
) -> None:
    """Train or fine-tune a model; distributed with `torchrun --nproc-per-node N -m encnet_cli train ...`."""
    settings: dict[str, Any] = {}
    if recipe:
        settings.update(load_toml(recipe_path(recipe)))
        settings["recipe"] = recipe
    if config_file:
        settings.update(load_toml(config_file))
    flags = {
        "output_dir": output_dir, "model": model, "epochs": epochs, "iters": iters, "batch_size": batch_size,
        "lr": lr, "warmup_iters": warmup_iters, "crop_size": crop_size, "base_size": base_size,
        "workers": workers, "num_codes": num_codes, "se_loss": se_loss, "se_weight": se_weight, "aux": aux,
        "aux_weight": aux_weight, "lateral": lateral, "dropout": dropout, "output_stride": output_stride, "amp": amp,
        "device": device, "seed": seed, "val_every": val_every, "log_every": log_every, "init_from": init_from,
        "freeze_backbone": freeze_backbone, "freeze_bn": freeze_bn, "backbone_weights": backbone_weights,
        "compile": compile_model, "val_split": val_split, "skip_bad": skip_bad,
    }  # fmt: skip
    if iters is not None and "epochs" in settings and epochs is None:
        settings.pop("epochs")
    settings.update({k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None})
    settings["data"] = str(data)
    if "output_dir" not in settings:
        settings["output_dir"] = str(Path("runs") / f"{settings.get('model', 'encnet_resnet50s')}-{data.stem}")
    config = TrainConfig.from_dict(settings)
    is_main = int(os.environ.get("RANK", "0")) == 0
    display = _TrainDisplay(enabled=progress and is_main and not as_json)
    try:
        result = run_train(config, resume=resume, callback=display, trust_code=trust_code)
    finally:
        display.close()
    if not is_main:
        return
    summary = {
        "output_dir": str(result.output_dir),
        "iteration": result.iteration,
        "total_iters": result.total_iters,
        "epochs": result.epoch,
        "best": (
            f"pixAcc {result.best['pixAcc']:.4f}, mIoU {result.best['mIoU']:.4f} (epoch {result.best['epoch']}, "
            f"iteration {result.best['iteration']})"
            if result.best and not as_json
            else result.best
        ),
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_second, 2),
        "data_loading_share": round(result.data_share, 3),
        "reinitialised": result.reinitialised,
        "stopped_by": result.stopped_by,
        "skipped": result.skipped if as_json else _skipped_text(result.skipped),
    }
    if as_json:
        emit_json(summary, None)
    else:
        table = Table(title=f"encnet train: {config.model} on {data.name}", show_header=False)
        for key, value in summary.items():
            if value not in (None, []):
                table.add_row(key, str(value))
        console.print(table)
    if result.stopped_by:
        sys.exit(130 if result.stopped_by == "SIGINT" else 143)
