"""``encnet prepare synthetic``: the built-in procedural scenes (no network), for segmentation or classification."""

from enum import Enum
from typing import Annotated

import typer

from encnet_cli.prepare._common import MinPixels, Shared, run
from encnet_core.choices import DEFAULT_SIZES, LAYOUTS, TASKS
from encnet_core.choices import SYNTHETIC_CLASSIFICATION_DEFAULTS as CLS
from encnet_core.errors import ConfigError
from encnet_core.tasks import facts

Layout = Enum("Layout", {name: name for name in LAYOUTS}, type=str)  # type: ignore[misc]
Task = Enum("Task", {name: name for name in TASKS}, type=str)  # type: ignore[misc]


def synthetic(
    shared: Shared,
    num_train: Annotated[int | None, typer.Option("--num-train", help=f"Training images (default 300; {CLS['num_train']} with --task classification).", show_default=False)] = None,
    num_val: Annotated[int | None, typer.Option("--num-val", help=f"Validation images (default 100; {CLS['num_val']} with --task classification).", show_default=False)] = None,
    size: Annotated[int | None, typer.Option("--size", help=f"Image side in pixels (default {DEFAULT_SIZES['standard']}; {DEFAULT_SIZES['far']} with --layout far, which needs at least that; {CLS['size']} with --task classification).", show_default=False)] = None,
    task: Annotated[Task, typer.Option("--task", help="segmentation (label maps), or classification (each image labelled with its scene type: street, kitchen, beach).")] = "segmentation",  # type: ignore[valid-type, assignment]
    layout: Annotated[Layout, typer.Option("--layout", help="standard, or far: the scene in a band at the top, the context-pair twins on scene-neutral ground far below it (beyond a small model's receptive field; see docs/ablation.md).")] = "standard",  # type: ignore[valid-type, assignment]
    seed: Annotated[int, typer.Option("--seed", help="Scene seed.")] = 0,
    min_pixels: MinPixels = 1,
) -> None:
    """Built-in procedural scenes where context matters, no network: segmentation, or --task classification by scene type."""
    if not facts(task.value).per_pixel:
        if layout.value != "standard":
            raise ConfigError(f"--layout {layout.value} only applies to the synthetic segmentation set, not to --task classification")
        params = {"task": task.value, "num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    else:
        params = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed, "layout": layout.value}
    run("synthetic", shared, params, min_pixels=min_pixels)
