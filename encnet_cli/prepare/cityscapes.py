"""``encnet prepare cityscapes``: Cityscapes from your own downloads (the site needs a login)."""

from pathlib import Path
from typing import Annotated

import typer

from encnet_cli.prepare._common import MinPixels, Shared, Strict, run
from encnet_core.errors import ConfigError


def cityscapes(
    shared: Shared,
    from_: Annotated[Path | None, typer.Option("--from", help="An unpacked Cityscapes root holding leftImg8bit/ and gtFine/ (and gtCoarse/ with --coarse), instead of the zips.")] = None,
    coarse: Annotated[bool, typer.Option("--coarse", help="Add the coarse set as split train_extra (19998 images): leftImg8bit_trainextra.zip and gtCoarse.zip.")] = False,
    strict: Strict = False,
    min_pixels: MinPixels = 1,
) -> None:
    """Cityscapes, 19 classes: train 2975 / val 500 / test 1525 (unlabelled), from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, downloaded from https://www.cityscapes-dataset.com/downloads/ (login) and passed with --archive NAME=PATH, or --from DIR."""
    if from_ is not None and shared.archive:
        raise ConfigError("--from DIR and --archive give the same files two ways: pass the unpacked folder or the zips, not both")
    run("cityscapes", shared, {"root_dir": from_, "coarse": coarse}, strict=strict, min_pixels=min_pixels)
