"""``encnet predict``: run a model on images and folders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from encnet_cli import _options as opt
from encnet_cli._output import console, err_console
from encnet_cli._progress import ProgressReporter
from encnet_core.engine.device import resolve_device
from encnet_core.engine.predict import PredictOptions
from encnet_core.engine.predict import predict as run_predict
from encnet_core.engine.runtime import load_model


def predict(
    model: Path = typer.Argument(..., help="Training checkpoint or exported model."),
    inputs: list[Path] = typer.Argument(..., help="Image files and folders (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (masks keep the inputs' relative paths); refused if it is, contains or holds an input, skipped when inside an input folder."),
    mask_format: str = typer.Option("color", "--format", help="Mask PNGs: color (palette) or index (label values)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <name>_overlay.jpg with the classes blended in."),
    alpha: float = typer.Option(0.5, "--alpha", help="Overlay opacity of the class colours."),
    se_threshold: float = typer.Option(0.5, "--se-threshold", help="SE-head probability to report a class as present."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    scales: str = opt.ScalesOption,
    slide: bool = opt.SlideOption,
    flip: bool = opt.FlipOption,
    crop_size: int = opt.CropOption,
    base_size: int = opt.BaseOption,
    stride_rate: float = opt.StrideOption,
    merge: str = opt.MergeOption,
    batch_size: int = typer.Option(4, "--batch-size", help="Images (whole-image mode) or views per forward pass."),
    device: str = opt.DeviceOption,
    amp: str = opt.AmpOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    trust_code: bool = opt.TrustCodeOption,
) -> None:
    """Segment images: a palette PNG per image, optional overlays, and predictions.json listing the
    classes found by pixel share and by the SE head. Unreadable files are reported and skipped
    (exit code 1 if any)."""
    loaded = load_model(model, resolve_device(device), amp, trust_code=trust_code)
    inference = opt.inference_config(
        scales, slide, flip, crop_size, base_size, stride_rate, merge, batch_size, loaded.crop_size, loaded.base_size
    )
    options = PredictOptions(
        output=output, inference=inference, mask_format=mask_format, overlay=overlay, alpha=alpha,
        se_threshold=se_threshold, overwrite=overwrite, batch_size=batch_size,
    )  # fmt: skip
    with ProgressReporter(enabled=progress) as reporter:
        result = run_predict(loaded, inputs, options, progress=reporter)
    for failure in result.failed:
        err_console.print(Text.assemble(("skipped ", "yellow"), f"{failure['file']}: {failure['reason']}"), highlight=False)
    console.print(
        f"{result.written} images segmented, {len(result.failed)} failed, {result.seconds:.1f}s -> {output} "
        f"(predictions.json)"
    )
    if result.failed:
        raise typer.Exit(1)
