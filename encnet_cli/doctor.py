"""``encnet doctor``: check the installation and the device with one training step (``--bench``: and the short GPU benchmark)."""

from __future__ import annotations

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, err_console, json_to_stdout, safe_text
from encnet_core.errors import EncNetError


def doctor(
    model_name: str = typer.Option("encnet_tiny", "--model", "-m", help="Registered model to build (see `encnet models`)."),
    num_classes: int = typer.Option(21, "--num-classes", help="Number of classes of the test model."),
    size: int = typer.Option(64, "--size", help="Side of the random square input."),
    batch_size: int = typer.Option(2, "--batch-size", help="Batch size of the test step (>= 2 for BatchNorm)."),
    device_name: opt.Device = "auto",
    amp: opt.Amp = typer.Option(opt.Amp.off, "--amp", help="Mixed precision of the test step."),
    bench: bool = typer.Option(
        False, "--bench",
        help="Then run the short GPU benchmark (benchmarks/gpu.py --profile short: Encoding layer, training step "
        "fp32/AMP/channels_last, data loading, one-process DDP; each ratio with its goal). Sized for about a minute on a GPU; "
        "without CUDA the same code paths at tiny sizes on the CPU.",
    ),  # fmt: skip
    json_out: opt.JsonOut = None,
) -> None:
    """Print the environment, then build a model and run one forward/backward step on random data."""
    from encnet_core.diagnostics.doctor import environment_report, run_doctor
    from encnet_core.engine.device import resolve_device  # torch: not for --help

    check_json_target(json_out)
    try:
        resolve_device(device_name)
    except EncNetError as exc:  # --device cuda without a GPU: the environment shows why, then the one-line error
        failed = {**environment_report(), "status": "error", "error": str(exc)}
        if json_out is not None:
            emit_json(failed, json_out)
        if not json_to_stdout(json_out):
            _print_report({k: v for k, v in failed.items() if k != "error"})
        raise
    say = (lambda text: err_console.print(text, style="dim", markup=False, highlight=False)) if bench else None
    report = run_doctor(model_name, num_classes, size, batch_size, device_name, opt.value(amp), bench=bench, say=say)
    if json_out is not None:
        emit_json(report, json_out)
    if not json_to_stdout(json_out):
        _print_report(report)
        if "bench" in report:
            _print_bench(report["bench"])
    if report["status"] != "ok":
        raise typer.Exit(1)


def _print_report(report: dict) -> None:
    """The report's entries (but the benchmark's) as a two-column table."""
    table = Table(title="encnet doctor", show_header=False)
    for key, value in report.items():
        if isinstance(value, dict) and key != "bench":  # engines, auto_engine: one row per entry
            for name, entry in value.items():
                table.add_row(f"{key} {name}", safe_text(entry))
        elif key != "bench":
            table.add_row(key, safe_text(value))  # GPU names come from the driver
    console.print(table)


def _print_bench(bench: dict) -> None:
    """The benchmark's rows, grouped by section: ratio, goal, verdict, peak GPU memory, detail."""
    title = f"GPU benchmark (short) on {bench['device']} ({bench['device_name']}), {bench['seconds']:.0f} s"
    if bench["tiny"]:
        title += ": NO CUDA, the same code paths ran at tiny sizes on the CPU (no claims)"
    table = Table(title=title)
    for column in ("measurement", "ratio", "goal", "verdict", "peak MiB"):
        table.add_column(column, no_wrap=column != "measurement")
    table.add_column("detail", overflow="fold")
    section = None
    for row in bench["rows"]:
        if row["section"] != section:
            section = row["section"]
            table.add_row(f"[bold]{safe_text(section)}[/bold]", end_section=False)
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        table.add_row(f"  {safe_text(row['name'])}", row["value"], safe_text(row["goal"]), row["verdict"], peak, safe_text(row["detail"]))
    console.print(table)
