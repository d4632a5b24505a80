"""``encnet models``: the registered models with their size and cost."""

from __future__ import annotations

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout
from encnet_core.constants import DEFAULT_CROP_SIZE
from encnet_core.models import MODELS, count_flops


def models(
    num_classes: int = typer.Option(59, "--num-classes", help="Classes of the classifier layers (59 = PASCAL Context)."),
    size: int = typer.Option(DEFAULT_CROP_SIZE, "--size", help="Square input size at which FLOPs are counted."),
    json_out: opt.JsonOut = None,
) -> None:
    """List the registered models: backbone, head, parameters and forward GFLOPs (eval mode)."""
    check_json_target(json_out)
    rows = []
    for name, spec in MODELS.items():
        params, flops = count_flops(name, num_classes, size)
        rows.append(
            {
                "name": name,
                "backbone": spec["backbone"],
                "head": "FCN" if spec.get("head") == "fcn" else "EncHead",
                "params_m": round(params / 1e6, 2),
                "gflops": round(flops / 1e9, 1),
            }
        )
    if json_out is not None:
        emit_json(rows, json_out)
        if json_to_stdout(json_out):
            return
    table = Table(title=f"encnet models ({num_classes} classes, GFLOPs at {size}x{size}, 1 MAC = 2 FLOPs)")
    for column, justify in (("name", "left"), ("backbone", "left"), ("head", "left"), ("params (M)", "right"), ("GFLOPs", "right")):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(row["name"], row["backbone"], row["head"], f"{row['params_m']:.2f}", f"{row['gflops']:.1f}")
    console.print(table)
