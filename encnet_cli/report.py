"""``encnet report``: a training run's curves, best.pt's per-class IoU and predictions, as one PNG (and HTML)."""

from __future__ import annotations

from pathlib import Path

import typer

from encnet_cli import _options as opt
from encnet_cli._output import console, err_console, plural, safe_text


def report(
    run_dir: Path = typer.Argument(..., help="A training run's folder (encnet train --output-dir): metrics.jsonl, config.toml, best.pt."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/report.png)."),
    html: bool = typer.Option(False, "--html", help="Also write report.html beside the PNG: the picture embedded and a table of the final numbers."),
    data: Path = typer.Option(None, "--data", help="Prepared dataset to evaluate best.pt on (default: config.toml's data)."),
    limit: int = typer.Option(32, "--limit", help="Validation images to evaluate best.pt on for the per-class IoU."),
    images: int = typer.Option(4, "--images", help="Validation images in the image | ground truth | prediction grid (0 to 16)."),
    device: opt.Device = "auto",
) -> None:
    """Draw a run's report: loss terms, lr and throughput over iterations, validation pixAcc/mIoU over
    epochs, per-class IoU of best.pt and a grid of validation images | ground truth | prediction.

    best.pt is evaluated on the first --limit images of the validation split (whole image, single scale):
    quick, not the full evaluation (encnet evaluate).
    """
    from encnet_core.report import ReportOptions, write_report  # numpy, matplotlib: not for --help

    result = write_report(run_dir, ReportOptions(out=out, html=html, data=data, device=device, limit=limit, images=images))
    for note in result.notes:
        err_console.print(f"note: {safe_text(note)}", style="yellow", highlight=False, soft_wrap=True)
    console.print(f"wrote {safe_text(result.png)} ({', '.join(result.panels)})", highlight=False, soft_wrap=True)
    if result.html is not None:
        console.print(f"wrote {safe_text(result.html)}", highlight=False, soft_wrap=True)
    final = result.final
    if "best.pt mIoU" in final:
        console.print(
            f"best.pt on {plural(final['best.pt images evaluated'], 'image')}: pixAcc {final['best.pt pixAcc']:.4f}  mIoU {final['best.pt mIoU']:.4f}",
            highlight=False,
        )  # fmt: skip
