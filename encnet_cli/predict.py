"""``encnet predict``: run a model on images and folders (masks from a segmentation model, classes from a classifier)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.text import Text

from encnet_cli import _options as opt
from encnet_cli._output import (
    check_json_target,
    console,
    emit_json,
    err_console,
    json_to_stdout,
    plural,
    safe_text,
)
from encnet_core.tasks import predict_flags

if TYPE_CHECKING:  # the engine (torch) is imported when the command runs, not to parse its options or print --help
    from encnet_core.engine.images import PredictResult
    from encnet_core.engine.predict import PredictRequest


def predict(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Training checkpoint, exported model, or a zoo name (encnet weights list; pulled on first use)."),
    inputs: list[Path] = typer.Argument(..., help="Image files and folders (searched recursively for files with an image suffix; other files are left out). Images that share a name (coffee.jpg, coffee.png) keep their suffix in their outputs (coffee.jpg.png, coffee.png.png)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (masks keep the inputs' relative paths); refused if it is, contains or holds an input, skipped when inside an input folder."),
    mask_format: opt.MaskFormat = typer.Option(opt.MaskFormat.color, "--format", help="Mask PNGs: color (palette) or index (label values)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <name>_overlay.jpg with the classes blended in and a legend of the classes present."),
    alpha: float = typer.Option(0.5, "--alpha", help="Overlay opacity of the class colours."),
    se_threshold: float = typer.Option(0.5, "--se-threshold", help="SE-head probability to report a class as present."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    top_k: int = typer.Option(1, "--top-k", help="Classifiers: the k most probable classes per image, with their softmax scores."),
    scales: opt.Scales = None,
    slide: opt.Slide = False,
    flip: opt.Flip = False,
    crop_size: opt.Crop = None,
    base_size: opt.Base = None,
    stride_rate: opt.Stride = 2 / 3,
    merge: opt.MergeOpt = opt.Merge.prob,
    batch_size: int = typer.Option(4, "--batch-size", help="Images (whole-image mode) or views per forward pass."),
    device: opt.Device = "auto",
    amp: opt.AmpOpt = opt.Amp.off,
    engine: opt.EngineOpt = opt.Engine.auto,
    compile: opt.CompileOpt = False,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    trust_code: opt.TrustCode = False,
    mirror: opt.Mirror = None,
    json_out: opt.JsonOut = None,
) -> None:
    """Segment images: a palette PNG per image, optional overlays, and predictions.json listing the
    classes found by pixel share and by the SE head. A classifier instead prints the top --top-k
    classes and scores of each image and writes them to predictions.json (no masks). Unreadable files
    are reported and skipped (exit code 1 if any)."""
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.engine.predict import PredictRequest
    from encnet_core.engine.predict import run as run_predict

    check_json_target(json_out)
    request = PredictRequest(
        output=output, inference=opt.inference_request(scales, slide, flip, crop_size, base_size, stride_rate, merge, batch_size),
        mask_format=opt.value(mask_format), overlay=overlay, alpha=alpha, se_threshold=se_threshold, top_k=top_k,
        overwrite=overwrite, batch_size=batch_size, device=device, amp=opt.value(amp), engine=opt.value(engine), compile=compile, trust_code=trust_code, mirror=mirror,
        given=frozenset(_given(ctx, predict_flags())),
    )  # fmt: skip
    with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
        done = run_predict(model, inputs, request, progress=reporter)
    result = done.result
    for failure in result.failed:
        err_console.print(Text.assemble(("skipped ", "yellow"), safe_text(f"{failure['file']}: {failure['reason']}", markup=False)), highlight=False, soft_wrap=True)
    _PRINTERS[done.task](result, done.classes, output, request, json_out)
    if result.failed:
        raise typer.Exit(1)


def _given(ctx: typer.Context, flags: tuple[str, ...]) -> list[str]:
    """The options among ``flags`` (as the engine names them) given on the command line."""
    param = {"--format": "mask_format"}  # the one flag that is not its parameter's name
    return [f for f in flags if getattr(ctx.get_parameter_source(param.get(f, f[2:].replace("-", "_"))), "name", None) == "COMMANDLINE"]


def _print_masks(result: PredictResult, classes: list[str], output: Path, request: PredictRequest, json_out: Path | None) -> None:
    """A segmentation model's predict: a summary line (the masks are files)."""
    if json_out is not None:  # predictions.json's content plus the run's summary
        emit_json({
            "output": str(output), "written": result.written, "failed": result.failed, "seconds": round(result.seconds, 2),
            "classes": classes, "se_threshold": request.se_threshold, "images": result.predictions}, json_out)  # fmt: skip
    if not json_to_stdout(json_out):
        console.print(
            f"{plural(result.written, 'image')} segmented, {len(result.failed)} failed, {result.seconds:.1f}s -> {output} "
            f"(predictions.json)"
        )


def _print_classes(result: PredictResult, classes: list[str], output: Path, request: PredictRequest, json_out: Path | None) -> None:
    """A classifier's predict: one line per image (its top-k classes and scores)."""
    top_k = request.top_k
    if json_out is not None:
        emit_json({
            "output": str(output), "written": result.written, "failed": result.failed, "seconds": round(result.seconds, 2),
            "task": "classification", "classes": classes, "top_k": top_k, "images": result.predictions}, json_out)  # fmt: skip
    if not json_to_stdout(json_out):
        for stem, entry in result.predictions.items():
            scores = ", ".join(f"{top['class']} {top['score']:.3f}" for top in entry["top"])
            console.print(safe_text(f"{stem}: {scores}"), highlight=False, soft_wrap=True)
        console.print(f"{plural(result.written, 'image')} classified, {len(result.failed)} failed, {result.seconds:.1f}s -> {output} (predictions.json)")


_PRINTERS = {"segmentation": _print_masks, "classification": _print_classes}  # per task (encnet_core/tasks.py's names)
