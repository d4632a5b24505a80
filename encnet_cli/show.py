"""``encnet show``: a grid of a prepared dataset's images with their masks overlaid and a class legend
(a classification dataset's images captioned with their class)."""

from __future__ import annotations

from pathlib import Path

import typer

from encnet_cli._output import console, safe_text
from encnet_core.paths import check_output_file


def show(
    data: Path = typer.Argument(..., help="Prepared dataset (.h5)."),
    split: str = typer.Option("val", "--split", help="Split to show."),
    index: int = typer.Option(None, "--index", help="Start at image N of the split (alone, unless --count is given)."),
    name: str = typer.Option(None, "--name", help="Start at the image with this stored name (alone, unless --count is given)."),
    count: int = typer.Option(None, "--count", help="How many images to show (default 16; 1 with --index/--name)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Opacity of the class colours over the images."),
    out: Path = typer.Option(Path("show.png"), "--out", "-o", help="PNG to write."),
) -> None:
    """Write a grid of images with their masks overlaid (the file's palette) and a legend of the classes present.

    Without --index/--name: the first --count images of the split. Unlabelled splits show the images alone;
    a classification dataset's images are captioned with their class name instead.
    """
    from encnet_core.viz import dataset_grid, save_figure  # numpy, matplotlib: when it runs, not for --help

    if index is not None and name is not None:
        raise typer.BadParameter("give --index or --name, not both", param_hint="'--index' / '--name'")
    check_output_file(out, "--out")
    if count is None:
        count = 1 if index is not None or name is not None else 16
    figure, shown = dataset_grid(data, split, index=index, name=name, count=count, alpha=alpha)
    save_figure(figure, out)
    first, last = shown["indices"][0], shown["indices"][-1]
    which = f"image {first}" if first == last else f"images {first}..{last}"
    classes = ", ".join(safe_text(c) for c in shown["legend"]) or "none (unlabelled)"
    console.print(f"wrote {safe_text(out)}: {which} of split {safe_text(shown['split'])!s}; classes present: {classes}", highlight=False, soft_wrap=True)
