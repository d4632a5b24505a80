"""Models by name: PyTorch-Encoding's published EncNet weights and ImageNet backbones, fetched and cached.

``ZOO`` is the one table of the published models. Every fact in it was read from the reference
repository (zhanghang1989/PyTorch-Encoding, commit ac748410):

* ``sha1``: ``encoding/models/model_store.py`` (``_model_sha1``); it is the sha1 of the ``.pth``
  file (a state_dict) inside the published ``{name}-{sha1[:8]}.zip``, which lies under
  ``{repo}/models/`` with ``repo`` = ``encoding_repo_url`` of the same file;
* ``model`` and ``arguments``: ``encoding/models/sseg/encnet.py``, ``get_encnet`` and the
  ``get_encnet_resnet*_{pcontext,ade}`` builders: ``lateral=True`` exactly for datasets whose name
  starts with "p" (pcontext), ``aux=True``, SE head on (``se_loss`` defaults to True), K = 32;
* ``base_size``/``crop_size``: the same builders (ADE20K ResNet-101s: 640/576, the others 520/480);
* number of classes: ``NUM_CLASS`` of ``encoding/datasets/pcontext.py`` (59) and ``ade20k.py`` (150);
* ``pixacc``/``miou``: ``docs/source/model_zoo/segmentation.rst``, "ResNet Backbone Models" tables,
  measured with the reference's multi-scale + flip test (``test.py --eval``, "using MS" in that page)
  on the val split, mIoU averaged over all classes (encnet's ``mIoU_all``).

The ImageNet backbones have no published accuracy in that repository's docs (its ImageNet page lists
only ResNeSt models), so their numbers are None.

``pull`` downloads one zip with encnet's own resumable, retrying ``download``, checks the sha1 of its
``.pth`` member, reads it with ``torch.load(weights_only=True)``, converts it to encnet's names,
checks it fits the model strictly, and caches it as a safetensors file with full ``ModelMetadata``.
``resolve`` is what every command that takes a MODEL calls (through ``engine/model_files.py``): a
file that exists wins, a zoo name is pulled on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from encnet_core.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ZooModel", "ZOO", "REFERENCE_REPO", "MIRROR_ENV", "published", "get", "list_models"]

REFERENCE_REPO = "https://s3.us-west-1.wasabisys.com/encoding"
"""``encoding_repo_url`` of the reference's model_store.py: the zips lie under ``{repo}/models/``."""

MIRROR_ENV = "ENCNET_WEIGHTS_MIRROR"
"""Environment variable that replaces ``REFERENCE_REPO`` (``--mirror`` replaces both)."""

_DOCS = "PyTorch-Encoding docs/source/model_zoo/segmentation.rst (ResNet Backbone Models)"
_PROTOCOL = (
    "val split; multi-scale 0.5,0.75,1.0,1.25,1.5,1.75 with horizontal flip (the reference's test.py --eval, "
    "MultiEvalModule); mIoU over all classes (encnet's mIoU_all)"
)


@dataclass(frozen=True)
class ZooModel:
    """One published model of the reference."""

    name: str  # the reference's name in model_store.py; also the zoo name
    kind: str  # "segmentation" (an EncNet) or "backbone" (an ImageNet-pretrained dilated ResNet)
    sha1: str  # sha1 of the .pth inside the published zip (model_store.py _model_sha1)
    dataset: str  # "pcontext" or "ade20k" (segmentation), "imagenet" (backbone)
    model: str  # encnet registry name (segmentation) or backbone name (models/backbones.py)
    arguments: dict[str, Any] = field(default_factory=dict)  # create_model overrides, as get_encnet builds it
    base_size: int = 520  # the reference builder's base_size (long side at scale 1.0)
    crop_size: int = 480  # the reference builder's crop_size (training crop, sliding window)
    pixacc: float | None = None  # published pixel accuracy (fraction), see `source`
    miou: float | None = None  # published mIoU over all classes (fraction), see `source`
    source: str | None = None  # where pixacc/miou were read
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the reference's BaseNet mean
    std: tuple[float, float, float] = IMAGENET_STD  # the reference's BaseNet std

    @property
    def stem(self) -> str:
        """``{name}-{sha1[:8]}``: the published zip and its .pth member are named after it."""
        return f"{self.name}-{self.sha1[:8]}"

    def url(self, repo: str) -> str:
        """The zip's URL under ``repo`` (a '/' is appended if missing, as the reference does)."""
        return f"{repo if repo.endswith('/') else repo + '/'}models/{self.stem}.zip"


def _seg(name: str, sha1: str, dataset: str, backbone: str, pixacc: float, miou: float, **sizes: int) -> ZooModel:
    arguments = {"lateral": True} if dataset.startswith("p") else {}  # get_encnet: lateral for 'p...' datasets
    return ZooModel(
        name, "segmentation", sha1, dataset, f"encnet_{backbone}", arguments, pixacc=pixacc, miou=miou, source=_DOCS, **sizes
    )


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        _seg("encnet_resnet50s_pcontext", "4de91d5922d4d3264f678b663f874da72e82db00", "pcontext", "resnet50s", 0.792, 0.510),
        _seg("encnet_resnet101s_pcontext", "9f27ea13d514d7010e59988341bcbd4140fcc33d", "pcontext", "resnet101s", 0.807, 0.541),
        _seg("encnet_resnet50s_ade", "07ac287cd77e53ea583f37454e17d30ce1509a4a", "ade20k", "resnet50s", 0.801, 0.415),
        _seg(
            "encnet_resnet101s_ade", "3f54fa3b67bac7619cd9b3673f5c8227cf8f4718", "ade20k", "resnet101s", 0.813, 0.444,
            base_size=640, crop_size=576,
        ),  # fmt: skip
        ZooModel("resnet50s", "backbone", "a75c83cfc89a56a4e8ba71b14f1ec67e923787b3", "imagenet", "resnet50s"),
        ZooModel("resnet101s", "backbone", "03a0f310d6447880f1b22a83bd7d1aa7fc702c6e", "imagenet", "resnet101s"),
        ZooModel("resnet152s", "backbone", "36670e8bc2428ecd5b7db1578538e2dd23872813", "imagenet", "resnet152s"),
    )
}


def list_models() -> list[ZooModel]:
    """Every model of the zoo, in table order."""
    return list(ZOO.values())


def get(name: str) -> ZooModel | None:
    """The zoo entry called ``name`` (case-insensitive, like the reference's get_model), or None."""
    return ZOO.get(name.lower()) if isinstance(name, str) else None


def published(name: str) -> dict[str, Any] | None:
    """The reference's published result for zoo model ``name``, or None (not a zoo name, or nothing published).

    Keys: ``pixAcc`` and ``mIoU`` (fractions, as encnet's metrics report them; mIoU is over all
    classes, i.e. encnet's ``mIoU_all``), ``dataset``, ``split``, ``base_size``, ``crop_size``,
    ``protocol`` (how the reference measured them) and ``source`` (where the numbers were read).
    """
    entry = get(name)
    if entry is None or entry.pixacc is None or entry.miou is None:
        return None
    return {
        "name": entry.name,
        "pixAcc": entry.pixacc,
        "mIoU": entry.miou,
        "miou_convention": "mIoU_all",
        "dataset": entry.dataset,
        "split": "val",
        "base_size": entry.base_size,
        "crop_size": entry.crop_size,
        "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
        "flip": True,
        "protocol": _PROTOCOL,
        "source": entry.source,
    }
