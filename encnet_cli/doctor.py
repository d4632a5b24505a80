"""``encnet doctor``: check the installation and the device with one training step."""

from __future__ import annotations

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout
from encnet_core.engine.doctor import run_doctor


def doctor(
    model_name: str = typer.Option("encnet_tiny", "--model", "-m", help="Registered model to build (see `encnet models`)."),
    num_classes: int = typer.Option(21, "--num-classes", help="Number of classes of the test model."),
    size: int = typer.Option(64, "--size", help="Side of the random square input."),
    batch_size: int = typer.Option(2, "--batch-size", help="Batch size of the test step (>= 2 for BatchNorm)."),
    device_name: opt.Device = "auto",
    amp: opt.Amp = typer.Option(opt.Amp.off, "--amp", help="Mixed precision of the test step."),
    json_out: opt.JsonOut = None,
) -> None:
    """Print the environment, then build a model and run one forward/backward step on random data."""
    check_json_target(json_out)
    report = run_doctor(model_name, num_classes, size, batch_size, device_name, opt.value(amp))
    if json_out is not None:
        emit_json(report, json_out)
    if not json_to_stdout(json_out):
        table = Table(title="encnet doctor", show_header=False)
        for key, value in report.items():
            table.add_row(key, str(value))
        console.print(table)
    if report["status"] != "ok":
        raise typer.Exit(1)
