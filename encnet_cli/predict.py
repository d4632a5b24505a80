"""``encnet predict``: run a model on images and folders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, err_console, json_to_stdout, safe_text
from encnet_cli._progress import ProgressReporter
from encnet_core.engine.device import resolve_device
from encnet_core.engine.model_files import load_model
from encnet_core.engine.predict import PredictOptions
from encnet_core.engine.predict import predict as run_predict


def predict(
    model: Path = typer.Argument(..., help="Training checkpoint, exported model, or a zoo name (encnet weights list; pulled on first use)."),
    inputs: list[Path] = typer.Argument(..., help="Image files and folders (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (masks keep the inputs' relative paths); refused if it is, contains or holds an input, skipped when inside an input folder."),
    mask_format: opt.MaskFormat = typer.Option(opt.MaskFormat.color, "--format", help="Mask PNGs: color (palette) or index (label values)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <name>_overlay.jpg with the classes blended in and a legend of the classes present."),
    alpha: float = typer.Option(0.5, "--alpha", help="Overlay opacity of the class colours."),
    se_threshold: float = typer.Option(0.5, "--se-threshold", help="SE-head probability to report a class as present."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    trust_code: opt.TrustCode = False,
    json_out: opt.JsonOut = None,
) -> None:
    """Segment images: a palette PNG per image, optional overlays, and predictions.json listing the
    classes found by pixel share and by the SE head. Unreadable files are reported and skipped
    (exit code 1 if any)."""
    check_json_target(json_out)
    loaded = load_model(model, resolve_device(device), opt.value(amp), trust_code=trust_code)
    inference = opt.inference_config(
        scales, slide, flip, crop_size, base_size, stride_rate, merge, batch_size, loaded.crop_size, loaded.base_size
    )
    options = PredictOptions(
        output=output, inference=inference, mask_format=opt.value(mask_format), overlay=overlay, alpha=alpha,
        se_threshold=se_threshold, overwrite=overwrite, batch_size=batch_size,
    )  # fmt: skip
    with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
        result = run_predict(loaded, inputs, options, progress=reporter)
    for failure in result.failed:
        err_console.print(Text.assemble(("skipped ", "yellow"), safe_text(f"{failure['file']}: {failure['reason']}", markup=False)), highlight=False)
    if json_out is not None:  # predictions.json's content plus the run's summary
        emit_json({
            "output": str(output), "written": result.written, "failed": result.failed, "seconds": round(result.seconds, 2),
            "classes": loaded.classes, "se_threshold": se_threshold, "images": result.predictions}, json_out)  # fmt: skip
    if not json_to_stdout(json_out):
        console.print(
            f"{result.written} images segmented, {len(result.failed)} failed, {result.seconds:.1f}s -> {output} "
            f"(predictions.json)"
        )
    if result.failed:
        raise typer.Exit(1)
