"""``encnet prepare coco``: COCO 2017 reduced to the 20 VOC classes (the reference's pre-training set)."""

from encnet_cli.prepare._common import MinPixels, Shared, Strict, run


def coco(shared: Shared, strict: Strict = False, min_pixels: MinPixels = 1) -> None:
    """COCO 2017 as 21 VOC classes (the reference's COCO pre-training set): images with more than 1000 labelled pixels of train2017 / val2017. Needs pycocotools: pip install 'encnet\\[coco]' (train2017.zip, val2017.zip, annotations_trainval2017.zip; 20 GB)."""
    run("coco", shared, {}, strict=strict, min_pixels=min_pixels)
