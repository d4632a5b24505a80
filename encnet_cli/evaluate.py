"""``encnet evaluate``: pixAcc / mIoU and per-class IoU of a model on a prepared split (top-1/top-5
error and per-class accuracy for a classifier on a classification file)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, plural, safe_text
from encnet_core.errors import ConfigError
from encnet_core.tasks import DEFAULT, facts


def evaluate(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Training checkpoint (best.pt/last.pt), exported model, or a zoo name (encnet weights list; pulled on first use)."),
    data: Path = typer.Argument(..., help="Prepared dataset (.h5)."),
    split: str = typer.Option("val", "--split", help="Split to evaluate."),
    scales: opt.Scales = None,
    slide: opt.Slide = False,
    flip: opt.Flip = False,
    crop_size: opt.Crop = None,
    base_size: opt.Base = None,
    stride_rate: opt.Stride = 2 / 3,
    merge: opt.MergeOpt = opt.Merge.prob,
    protocol: opt.ProtocolOpt = opt.Protocol.none,
    batch_size: int = typer.Option(8, "--batch-size", help="Views per forward pass."),
    device: opt.Device = "auto",
    amp: opt.AmpOpt = opt.Amp.off,
    engine: opt.EngineOpt = opt.Engine.auto,
    compile: opt.CompileOpt = False,
    workers: str = opt.workers_option("auto"),
    save_predictions: Path = typer.Option(None, "--save-predictions", help="Folder for palette PNG predictions named after the images; a name that would leave the folder (absolute, '..') is rejected before any work."),
    confusion: Path = typer.Option(None, "--confusion", help="Write the row-normalised confusion matrix as a PNG: class names on both axes, rates in the cells, a colour bar (past 30 classes: the most confused pairs and the sorted per-class IoU)."),
    json_out: opt.JsonOut = None,
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N images."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad",
        help="Skip samples that do not decode or break the format (listed in the output and under 'skipped' in --json) instead of stopping at the first.",
    ),  # fmt: skip
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    trust_code: opt.TrustCode = False,
    mirror: opt.Mirror = None,
) -> None:
    """Evaluate a model: pixAcc, mIoU (two conventions), mean accuracy, fwIoU and per-class IoU.

    Single-scale whole image by default; --slide, --scales and --flip select the reference's
    sliding-window and multi-scale procedures, --merge reference its way of merging them, and
    --protocol reference all of its evaluation at once. Under torchrun each rank evaluates a disjoint share.

    A classifier on a classification file: top-1 and top-5 error, accuracy and per-class accuracy,
    each image scored once at the model's training size (the inference options above do not apply).
    """
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.engine.evaluate import EvaluateOptions
    from encnet_core.engine.evaluate import run as run_evaluate

    if protocol is opt.Protocol.reference:
        opt.check_protocol_flags(ctx, "evaluate")
    _check_classification_flags(ctx, data)
    check_json_target(json_out)
    options = EvaluateOptions(
        split=split, device=device, amp=opt.value(amp), engine=opt.value(engine), compile=compile, workers=workers,
        save_predictions=save_predictions, confusion=confusion, limit=limit, trust_code=trust_code,
        skip_bad=skip_bad, protocol=opt.value(protocol),
    )  # fmt: skip
    request = opt.inference_request(scales, slide, flip, crop_size, base_size, stride_rate, merge, batch_size)
    is_main = int(os.environ.get("RANK", "0")) == 0
    with ProgressReporter(enabled=progress and is_main and not json_to_stdout(json_out)) as reporter:
        result = run_evaluate(model, data, options, request, progress=reporter, mirror=mirror)
    if not is_main:
        return
    if json_out is not None:
        emit_json(result, json_out)
        if json_to_stdout(json_out):
            return
    _PRINTERS[result.get("task", DEFAULT)](result, model, data, split)


def _print_segmentation(result: dict, model: Path, data: Path, split: str) -> None:
    """Per-class IoU and accuracy table, then pixAcc, mIoU (two conventions), mean accuracy and fwIoU."""
    used = result["inference"]
    scales_used, flipped = used["scales"], used["flip"]
    mode = "multi-scale " + ",".join(str(s) for s in scales_used) if scales_used else ("sliding window" if used["slide"] else "whole image")
    mode += (", flip" if flipped else "") + (f", merge {used['merge']}" if scales_used or used["slide"] or flipped else "")
    if "protocol" in result:
        mode += ", reference protocol"
    title = f"{safe_text(model.name)} on {safe_text(data.name)}/{safe_text(split)} ({plural(result['images'], 'image')}, {mode})"
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("accuracy", justify="right")
    for name, iou, acc in zip(result["classes"], result["iou"], result["acc"], strict=True):
        table.add_row(safe_text(name), "-" if iou is None else f"{iou:.4f}", "-" if acc is None else f"{acc:.4f}")  # names: data
    console.print(table)
    console.print(
        f"pixAcc [bold]{result['pixAcc']:.4f}[/]  mIoU [bold]{result['mIoU']:.4f}[/] (headline: classes present)  "
        f"mIoU_all {result['mIoU_all']:.4f} (reference: all classes)  mean acc {result['mean_acc']:.4f}  "
        f"fwIoU {result['fwIoU']:.4f}  ({result['seconds']:.1f}s)"
    )
    if "protocol" in result:
        _print_protocol(result["protocol"], split)
    if result["skipped"]:
        console.print(f"skipped {plural(len(result['skipped']), 'bad sample')}, not scored:", style="yellow", highlight=False)
        for bad in result["skipped"]:
            text = f"  split {bad['split']!r} sample {bad['index']} ({bad['name']!r}): {bad['reason']}"
            console.print(safe_text(text, markup=False), markup=False, highlight=False, soft_wrap=True)


_SEGMENTATION_ONLY = ("scales", "slide", "flip", "crop_size", "base_size", "stride_rate", "merge", "protocol", "save_predictions")


def _check_classification_flags(ctx: typer.Context, data: Path) -> None:
    """Segmentation's inference options on a classification file: one line naming them, before any work."""
    from encnet_core.data.hdf5 import probe_task  # h5py: when the command runs

    given = [name for name in _SEGMENTATION_ONLY if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if given and not facts(probe_task(data)).per_pixel:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(
            f"{flags} {'does' if len(given) == 1 else 'do'} not apply to the classification dataset {data} "
            "(a classifier scores each whole image once, at its training size); drop them"
        )


def _print_classification(result: dict, model: Path, data: Path, split: str) -> None:
    """Per-class accuracy table, then top-1/top-5 error and accuracy."""
    table = Table(title=f"{safe_text(model.name)} on {safe_text(data.name)}/{safe_text(split)} ({plural(result['images'], 'image')}, classification)")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    for name, count, acc in zip(result["classes"], result["class_images"], result["class_accuracy"], strict=True):
        table.add_row(safe_text(name), str(count), "-" if acc is None else f"{acc:.4f}")  # names: data
    console.print(table)
    k = result["top5_k"]
    console.print(
        f"top-1 error [bold]{100 * result['top1_error']:.2f}%[/]  top-5 error [bold]{100 * result['top5_error']:.2f}%[/]"
        f"{f' (k = {k}: {k} classes)' if k < 5 else ''}  accuracy {result['accuracy']:.4f}  "
        f"mean class accuracy {result['mean_class_accuracy']:.4f}  loss {result['loss']:.4f}  ({result['seconds']:.1f}s)"
    )
    if result["skipped"]:
        console.print(f"skipped {plural(len(result['skipped']), 'bad sample')}, not scored:", style="yellow", highlight=False)
        for bad in result["skipped"]:
            text = f"  split {bad['split']!r} sample {bad['index']} ({bad['name']!r}): {bad['reason']}"
            console.print(safe_text(text, markup=False), markup=False, highlight=False, soft_wrap=True)


_PRINTERS = {"segmentation": _print_segmentation, "classification": _print_classification}  # per task (encnet_core/tasks.py's names)


def _print_protocol(protocol: dict, split: str) -> None:
    """The reference's two numbers as measured, and the published ones for a zoo MODEL."""
    published = protocol["published"]
    table = Table(title=f"reference protocol, {safe_text(protocol['dataset'])}")
    table.add_column("")
    table.add_column("pixAcc %", justify="right")
    table.add_column("mIoU % (all classes: mIoU_all)", justify="right")
    table.add_row("measured", f"{100 * protocol['pixAcc']:.2f}", f"{100 * protocol['mIoU']:.2f}")
    if published is not None:
        table.add_row(f"published ({published['split']})", f"{100 * published['pixAcc']:.1f}", f"{100 * published['mIoU']:.1f}")
    console.print(table)
    if not protocol["known_dataset"]:
        console.print(
            f"dataset {protocol['dataset']!r} is not one the reference evaluates; used its test.py scales for every "
            "dataset but Cityscapes", style="yellow", markup=False, highlight=False,
        )  # fmt: skip
    if published is not None and (published["dataset"], published["split"]) != (protocol["dataset"], split):
        console.print(
            f"the published numbers are for split {published['split']!r} of {published['dataset']!r}; this is split "
            f"{split!r} of {protocol['dataset']!r}", style="yellow", markup=False, highlight=False,
        )  # fmt: skip
