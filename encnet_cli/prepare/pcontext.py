"""``encnet prepare pcontext``: PASCAL Context, 59 classes, from one of two label sources."""

from enum import Enum
from typing import Annotated

import typer

from encnet_cli.prepare._common import MinPixels, Shared, Strict, run
from encnet_core.choices import DEFAULT_LABELS, LABEL_SOURCES

LabelSource = Enum("LabelSource", {name: name for name in LABEL_SOURCES}, type=str)  # type: ignore[misc]


def pcontext(
    shared: Shared,
    labels: Annotated[LabelSource | None, typer.Option("--labels", help=f"Label source: json (trainval_merged.json painted as the reference's detail API does; PyTorch-Encoding's masks) or mat (trainval.tar.gz's .mat label maps). Default {DEFAULT_LABELS}; see docs/datasets.md.")] = None,  # type: ignore[valid-type]
    strict: Strict = False,
    min_pixels: MinPixels = 1,
) -> None:
    """PASCAL Context, 59 classes: train 4996 / val 5104 with the json labels, 4998 / 5105 with --labels mat (VOCtrainval_03-May-2010.tar)."""
    params = {"labels": labels.value if labels is not None else DEFAULT_LABELS}
    run("pcontext", shared, params, strict=strict, min_pixels=min_pixels)
