"""``encnet models``: the registered models with their task, size and cost."""

from __future__ import annotations

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, plural
from encnet_core.constants import CIFAR_CROP_SIZE, DEFAULT_CROP_SIZE
from encnet_core.tasks import facts

CIFAR_CLASSES = 10  # the classifiers are counted for CIFAR-10


def models(
    num_classes: int = typer.Option(59, "--num-classes", help="Classes of the segmentation models' classifier layers (59 = PASCAL Context)."),
    size: int = typer.Option(DEFAULT_CROP_SIZE, "--size", help="Square input size at which the segmentation models' FLOPs are counted."),
    json_out: opt.JsonOut = None,
) -> None:
    """List the registered models: task, backbone, head, parameters and forward GFLOPs (eval mode).

    Segmentation models are counted at --size and --num-classes; the CIFAR classifiers at 32 x 32 and
    10 classes (CIFAR-10).
    """
    from encnet_core.models import CLASSIFIERS, MODELS, count_flops  # torch: when it runs, not for --help

    check_json_target(json_out)
    rows = []
    for name, spec in MODELS.items():
        params, flops = count_flops(name, num_classes, size)
        head = "FCN" if spec.get("head") == "fcn" else "EncHead"
        rows.append(_row(name, "segmentation", spec["backbone"], head, params, flops, size, num_classes))
    for name, spec in CLASSIFIERS.items():
        params, flops = count_flops(name, CIFAR_CLASSES, CIFAR_CROP_SIZE)
        head = f"Encoding attention, K={spec['num_codes']}" if spec["attention"] == "enc" else "SE attention"
        rows.append(_row(name, "classification", f"cifar-resnet14, width {spec['width']}", head, params, flops, CIFAR_CROP_SIZE, CIFAR_CLASSES))
    if json_out is not None:
        emit_json(rows, json_out)
        if json_to_stdout(json_out):
            return
    for task, title in (
        ("segmentation", f"segmentation models ({plural(num_classes, 'class', 'classes')}, GFLOPs at {size}x{size}, 1 MAC = 2 FLOPs)"),
        ("classification", f"classification models ({CIFAR_CLASSES} classes, GFLOPs at {CIFAR_CROP_SIZE}x{CIFAR_CROP_SIZE}, 1 MAC = 2 FLOPs)"),
    ):
        table = Table(title=f"encnet models: {title}")
        for column, justify in (("name", "left"), ("backbone", "left"), ("head", "left"), ("params (M)", "right"), ("GFLOPs", "right")):
            table.add_column(column, justify=justify)
        for row in rows:
            if row["task"] == task:
                gflops = f"{row['gflops']:.{facts(task).gflops_digits}f}"
                table.add_row(row["name"], row["backbone"], row["head"], f"{row['params_m']:.2f}", gflops)
        console.print(table)


def _row(name: str, task: str, backbone: str, head: str, params: int, flops: int, size: int, classes: int) -> dict:
    return {
        "name": name,
        "task": task,
        "backbone": backbone,
        "head": head,
        "params_m": round(params / 1e6, 2),
        "gflops": round(flops / 1e9, facts(task).gflops_digits),
        "size": size,
        "num_classes": classes,
    }
