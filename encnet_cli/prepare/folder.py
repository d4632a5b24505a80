"""``encnet prepare folder``: your own images, masks and class list."""

from pathlib import Path
from typing import Annotated

import typer

from encnet_cli.prepare._common import MinPixels, Shared, run


def folder(
    shared: Shared,
    images: Annotated[Path | None, typer.Option("--images", help="Image folder (with train, val and optional test subfolders, or flat).")] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="Mask folder mirroring --images (.png).")] = None,
    classes: Annotated[Path | None, typer.Option("--classes", help="Class list file, one 'name [R G B]' per line (the colours also map colour masks).")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of a flat folder used for val.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Split seed of a flat folder.")] = 0,
    binary: Annotated[bool, typer.Option("--binary", help="0/255 masks of a 2-class list: read 255 as class 1 (the object), not as ignore.")] = False,
    reduce_zero_label: Annotated[bool, typer.Option("--reduce-zero-label", help="Index masks whose labels start at 1: read v as class v-1 and 0 as ignore (255).")] = False,
    min_pixels: MinPixels = 1,
) -> None:
    """Your own images + masks + class list (see docs/datasets.md)."""
    params = {"images": images, "masks": masks, "classes": classes, "val_fraction": val_fraction, "seed": seed,
              "binary": binary, "reduce_zero_label": reduce_zero_label}  # fmt: skip
    run("folder", shared, params, min_pixels=min_pixels)
