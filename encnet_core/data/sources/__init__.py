"""Dataset sources for ``encnet prepare``: what to fetch and how to turn it into (image, labels) items.

A source is data plus one ``plan`` function (and optionally a ``check`` of its parameters, which
``prepare`` runs before any work): given the verified local files of its remotes, a work folder and
its parameters (plus ``_limits``, the `ArchiveLimits` to open archives with), it lists the items of every split (picklable references to an image and a
mask in an archive or on disk, with the function that turns the raw mask file into labels), the
class names and the palette. ``encnet_core.data.prepare`` does the rest, the same way for every source.

A classification source (``SourcePlan.task == "classification"``) lists items without masks: each
carries its class index in ``Item.label``, or a ``load`` function that makes the encoded image and
its label itself (a record of a binary file, a generated scene), run in the conversion workers.
"""

from __future__ import annotations

from encnet_core.choices import SOURCES  # the source names, also the CLI's choices
from encnet_core.data.sources.base import (
    Item,
    ItemLoader,
    MaskDecoder,
    MaskMaker,
    Ref,
    Source,
    SourcePlan,
    decode_index_png,
    find_prefix,
)
from encnet_core.errors import DataError

__all__ = ["Ref", "Item", "SourcePlan", "Source", "SOURCES", "get_source", "decode_index_png", "find_prefix", "MaskDecoder", "ItemLoader", "MaskMaker"]


def _registry() -> dict[str, Source]:
    # here, not at the top: a run imports the sources (scipy, archives) only when it prepares one
    from encnet_core.data.sources import (
        ade20k,
        cifar10,
        cityscapes,
        coco,
        folder,
        pcontext,
        synthetic_cls,
        voc,
    )

    return {
        "voc": voc.VOC,
        "voc-aug": voc.VOC_AUG,
        "pcontext": pcontext.PCONTEXT,
        "ade20k": ade20k.ADE20K,
        "folder": folder.FOLDER,
        "synthetic": synthetic_cls.SYNTHETIC,  # voc.SYNTHETIC's segmentation scenes, or with task=classification their scene types
        "cifar10": cifar10.CIFAR10,
        "cityscapes": cityscapes.CITYSCAPES,
        "coco": coco.COCO,
    }




def get_source(name: str) -> Source:
    registry = _registry()
    if name not in registry:
        raise DataError(f"unknown dataset source {name!r}; choose one of {', '.join(SOURCES)}")
    return registry[name]
