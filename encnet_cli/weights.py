"""``encnet weights``: the reference's published models by name (list, pull, add); see encnet_core/weights/zoo.py."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, safe_text

app = typer.Typer(
    name="weights",
    help="Published EncNet models and ImageNet backbones by name: list, pull (download and convert), add a local file.",
    no_args_is_help=True,
)

_NAME_HELP = "Zoo name, e.g. encnet_resnet50s_pcontext (see `encnet weights list`)."


def _complete_name(incomplete: str) -> list[str]:
    from encnet_core.weights import zoo  # torch: when a command runs, not for --help

    return [name for name in zoo.ZOO if name.startswith(incomplete)]


def _percent(value: float | None) -> str:
    """A published fraction in percent with the digits the reference gives (80.18, 79.2, 51.0)."""
    if value is None:
        return "-"
    text = f"{100 * value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


@app.command("list")
def list_weights(
    json_out: opt.JsonOut = None,
) -> None:
    """The published models: dataset, classes, the reference's pixAcc/mIoU, sha1, whether cached."""
    from encnet_core.weights import zoo  # torch: when a command runs, not for --help

    check_json_target(json_out)
    rows = [zoo.describe(entry) for entry in zoo.list_models()]
    if json_out is not None:
        emit_json(rows, json_out)
        if json_to_stdout(json_out):
            return
    table = Table(title=f"published models (cache: {safe_text(zoo.cache_dir())})", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for column, justify in (
        ("name", "left"), ("dataset", "left"), ("classes", "right"), ("pixAcc/mIoU", "right"), ("sha1", "left"),
        ("cached", "left"),
    ):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=True)
    for row in rows:
        scores = "-" if row["pixAcc"] is None else f"{_percent(row['pixAcc'])}/{_percent(row['mIoU'])}"
        table.add_row(
            safe_text(row["name"]), row["dataset"], str(row["classes"] or "-"), scores, row["sha1"][:8],
            "yes" if row["cached"] else "no",
        )  # fmt: skip
    console.print(table)
    console.print(
        "pixAcc/mIoU (%): as published by PyTorch-Encoding (multi-scale + flip on val, mIoU over all classes); "
        "`encnet weights pull NAME` downloads one.",
        style="dim",
    )


def _report(name: str, path: Path, json_out: Path | None, verb: str) -> None:
    if json_out is not None:
        emit_json({"name": name, "path": str(path), "bytes": path.stat().st_size}, json_out)
    if not json_to_stdout(json_out):
        console.print(f"{verb} {safe_text(name)}: {safe_text(path)}", highlight=False, soft_wrap=True)


@app.command("pull")
def pull(
    name: str = typer.Argument(..., help=_NAME_HELP, autocompletion=_complete_name),
    mirror: opt.Mirror = None,
    checksum: str = typer.Option(None, "--checksum", help="ALGO:HEX the .pth must have instead of the published sha1, e.g. sha1:4de91d59..."),
    timeout: float = typer.Option(30.0, "--timeout", help="Network timeout in seconds, per connection attempt and per read."),
    retries: int = typer.Option(5, "--retries", min=0, help="Failed attempts in a row (without new bytes) before giving up; waits double from 1 s."),
    force: bool = typer.Option(False, "--force", help="Download and convert again even if cached."),
    json_out: opt.JsonOut = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Download a published model, verify its sha1, convert it and cache it as safetensors with metadata."""
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.weights import zoo  # torch: when a command runs, not for --help

    check_json_target(json_out)
    cached = zoo.is_cached(name) and not force
    with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
        path = zoo.pull(name, mirror=mirror, checksum=checksum, progress=reporter, timeout=timeout, retries=retries, force=force)
    _report(name, path, json_out, "already cached" if cached else "cached")


@app.command("add")
def add(
    name: str = typer.Argument(..., help=_NAME_HELP, autocompletion=_complete_name),
    file: Path = typer.Argument(..., help="The model's .pth (a PyTorch-Encoding state_dict) or its published .zip."),
    checksum: str = typer.Option(None, "--checksum", help="ALGO:HEX the .pth must have instead of the published sha1."),
    json_out: opt.JsonOut = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Cache a published model from a local file (verified and converted like a pull; the file is kept)."""
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.weights import zoo  # torch: when a command runs, not for --help

    check_json_target(json_out)
    with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
        path = zoo.add(name, file, checksum=checksum, progress=reporter)
    _report(name, path, json_out, "cached")
