"""``encnet models``: the registered models with their task, size and cost."""

from __future__ import annotations

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, plural
from encnet_core.constants import CIFAR_CROP_SIZE, DEFAULT_CROP_SIZE
from encnet_core.tasks import facts

CIFAR_CLASSES = 10  # the classifiers are counted for CIFAR-10
HEAD_NAMES = {"enc": "EncHead", "fcn": "FCN", "deeplab": "DeepLabV3 (ASPP)"}  # EncNet(head=...) -> shown name


def models(
    words: list[str] = typer.Argument(
        None,
        metavar="WORDS",
        help="Only the models whose name contains every one of these words, e.g. `resnest deeplab` (default: all).",
        show_default=False,
    ),
    num_classes: int = typer.Option(59, "--num-classes", help="Classes of the segmentation models' classifier layers (59 = PASCAL Context)."),
    size: int = typer.Option(DEFAULT_CROP_SIZE, "--size", help="Square input size at which the segmentation models' FLOPs are counted."),
    json_out: opt.JsonOut = None,
) -> None:
    """List the registered models: task, backbone, head, parameters and forward GFLOPs (eval mode).

    Every head (EncNet, FCN, DeepLabV3) comes on every backbone; WORDS narrow the list (counting all of
    them takes a few seconds).

    Segmentation models are counted at --size and --num-classes; the CIFAR classifiers at 32 x 32 and
    10 classes (CIFAR-10).
    """
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.models import CLASSIFIERS, MODELS, count_flops  # torch: when it runs, not for --help

    check_json_target(json_out)
    words = [w.lower() for w in words or []]
    chosen = [name for name in [*MODELS, *CLASSIFIERS] if all(w in name for w in words)]
    if not chosen:
        raise typer.BadParameter(f"no model name contains {' and '.join(map(repr, words))}; `encnet models` lists them all", param_hint="WORDS")
    rows = []
    with ProgressReporter(enabled=not json_to_stdout(json_out)) as report:
        for done, name in enumerate(chosen):
            report("counting parameters and FLOPs", done, len(chosen), unit="items")
            if name in MODELS:
                spec = MODELS[name]
                params, flops = count_flops(name, num_classes, size)
                head = HEAD_NAMES[spec.get("head", "enc")]
                rows.append(_row(name, "segmentation", spec["backbone"], head, params, flops, size, num_classes))
            else:
                spec = CLASSIFIERS[name]
                params, flops = count_flops(name, CIFAR_CLASSES, CIFAR_CROP_SIZE)
                head = f"Encoding attention, K={spec['num_codes']}" if spec["attention"] == "enc" else "SE attention"
                backbone = f"cifar-resnet14, width {spec['width']}"
                rows.append(_row(name, "classification", backbone, head, params, flops, CIFAR_CROP_SIZE, CIFAR_CLASSES))
        report("counting parameters and FLOPs", len(chosen), len(chosen), unit="items")
    if json_out is not None:
        emit_json(rows, json_out)
        if json_to_stdout(json_out):
            return
    for task, title in (
        ("segmentation", f"segmentation models ({plural(num_classes, 'class', 'classes')}, GFLOPs at {size}x{size}, 1 MAC = 2 FLOPs)"),
        ("classification", f"classification models ({CIFAR_CLASSES} classes, GFLOPs at {CIFAR_CROP_SIZE}x{CIFAR_CROP_SIZE}, 1 MAC = 2 FLOPs)"),
    ):
        if not any(row["task"] == task for row in rows):
            continue
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
