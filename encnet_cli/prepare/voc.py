"""``encnet prepare voc`` and ``encnet prepare voc-aug``: PASCAL VOC 2012, alone or with SBD's extra masks."""

from encnet_cli.prepare._common import MinPixels, Shared, Strict, run


def voc(shared: Shared, strict: Strict = False, min_pixels: MinPixels = 1) -> None:
    """PASCAL VOC 2012 segmentation: train 1464 / val 1449, 21 classes (VOCtrainval_11-May-2012.tar)."""
    run("voc", shared, {}, strict=strict, min_pixels=min_pixels)


def voc_aug(shared: Shared, strict: Strict = False, min_pixels: MinPixels = 1) -> None:
    """VOC 2012 with SBD's masks: trainaug 10582 / val 1449, 21 classes (VOCtrainval_11-May-2012.tar, benchmark.tgz)."""
    run("voc-aug", shared, {}, strict=strict, min_pixels=min_pixels)
