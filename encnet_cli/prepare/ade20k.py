"""``encnet prepare ade20k``: the ADE20K SceneParsing benchmark."""

from encnet_cli.prepare._common import MinPixels, Shared, Strict, run


def ade20k(shared: Shared, strict: Strict = False, min_pixels: MinPixels = 1) -> None:
    """ADE20K SceneParsing: train 20210 / val 2000, 150 classes (ADEChallengeData2016.zip)."""
    run("ade20k", shared, {}, strict=strict, min_pixels=min_pixels)
