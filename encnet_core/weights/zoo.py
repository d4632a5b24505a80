"""Models by name: PyTorch-Encoding's published EncNet weights and ImageNet backbones, fetched and cached.

``ZOO`` is the one table of the published models. Every fact in it was read from the reference
repository (zhanghang1989/PyTorch-Encoding, commit ac748410):

* ``sha1``: ``encoding/models/model_store.py`` (``_model_sha1``); it is the sha1 of the ``.pth``
  file (a state_dict) inside the published ``{name}-{sha1[:8]}.zip``, which lies under
  ``{repo}/models/`` with ``repo`` = ``encoding_repo_url`` of the same file;
* ``model`` and ``arguments``: ``encoding/models/sseg/encnet.py``, ``get_encnet`` and the
  ``get_encnet_resnet*_{pcontext,ade}`` builders: ``lateral=True`` exactly for datasets whose name
  starts with "p" (pcontext), ``aux=True``, SE head on (``se_loss`` defaults to True), K = 32;
  ``fcn.py`` (``get_fcn_resnet50_ade``, ``get_fcn_resnest50_*``) and ``deeplab.py``
  (``get_deeplab_resnest*_*``): ``aux=True``, no lateral branch, no SE head; the ResNeSt backbones:
  ``encoding/models/backbone/resnest.py``;
* ``base_size``/``crop_size``: the same builders (ADE20K EncNet ResNet-101s: 640/576, the others 520/480,
  ``BaseNet``'s defaults);
* number of classes: ``NUM_CLASS`` of ``encoding/datasets/pcontext.py`` (59) and ``ade20k.py`` (150);
* ``pixacc``/``miou``: ``docs/source/model_zoo/segmentation.rst``, "ResNet Backbone Models" and
  "ResNeSt Backbone Models" tables,
  measured with the reference's multi-scale + flip test (``test.py --eval``, "using MS" in that page)
  on the val split, mIoU averaged over all classes (encnet's ``mIoU_all``).

The ImageNet backbones carry no segmentation numbers (None); the ResNeSt ones' ImageNet top-1 is on
that repository's docs/source/model_zoo/imagenet.rst (docs/zoo.md quotes it).

``pull`` downloads one zip with encnet's own resumable, retrying ``download``, checks the sha1 of its
``.pth`` member, reads it with ``torch.load(weights_only=True)``, converts it to encnet's names,
checks it fits the model strictly, and caches it as a safetensors file with full ``ModelMetadata``.
``resolve`` is what every command that takes a MODEL calls (through ``weights/model_files.py``): a
file that exists wins, a zoo name is pulled on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encnet_core.choices import MIRROR_ENV  # replaces REFERENCE_REPO (--mirror replaces both)
from encnet_core.constants import IMAGENET_MEAN, IMAGENET_STD
from encnet_core.errors import (
    ArchiveError,
    ChecksumError,
    ConfigError,
    DownloadError,
    EncNetError,
    ModelError,
)
from encnet_core.fetch.archives import ArchiveLimits, open_archive, safe_extract
from encnet_core.fetch.download import (
    HASH_ALGOS,
    NetworkError,
    check_timeout,
    check_url,
    default_cache_dir,
    download,
    file_hashes,
)
from encnet_core.models import convert_pytorch_encoding_state_dict, create_model
from encnet_core.models.backbones import build_backbone
from encnet_core.palette import voc_palette
from encnet_core.paths import atomic_write, is_disk_full
from encnet_core.progress import ProgressCallback
from encnet_core.version import __version__
from encnet_core.weights.checkpoint import DIGEST_HEADER, exception_reason, load_checkpoint, tensor_digest
from encnet_core.weights.metadata import METADATA_NAME, ModelMetadata

log = logging.getLogger("encnet")

__all__ = [
    "ZooModel",
    "ZOO",
    "DATASET_LABELS",
    "REFERENCE_REPO",
    "MIRROR_ENV",
    "ZOO_HEADER",
    "published",
    "get",
    "list_models",
    "repo_url",
    "cache_dir",
    "cache_path",
    "is_cached",
    "pull",
    "add",
    "resolve",
    "backbone_state_dict",
    "describe",
]

REFERENCE_REPO = "https://s3.us-west-1.wasabisys.com/encoding"
"""``encoding_repo_url`` of the reference's model_store.py: the zips lie under ``{repo}/models/``."""


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


_RESNEST_DOCS = "PyTorch-Encoding docs/source/model_zoo/segmentation.rst (ResNeSt Backbone Models)"


def _seg(
    name: str, sha1: str, dataset: str, backbone: str, pixacc: float, miou: float, head: str = "encnet", docs: str = _DOCS, **sizes: int
) -> ZooModel:
    # get_encnet: lateral for 'p...' datasets; the FCN and DeepLabV3 builders (get_fcn, get_deeplab) have no lateral branch
    arguments = {"lateral": True} if head == "encnet" and dataset.startswith("p") else {}
    return ZooModel(
        name, "segmentation", sha1, dataset, f"{head}_{backbone}", arguments, pixacc=pixacc, miou=miou, source=docs, **sizes
    )


def _resnest(name: str, sha1: str, dataset: str, pixacc: float, miou: float) -> ZooModel:
    head, backbone, _ = name.split("_")  # e.g. deeplab_resnest50_ade
    return _seg(name, sha1, dataset, backbone, pixacc, miou, head=head, docs=_RESNEST_DOCS)


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
        _seg("fcn_resnet50s_ade", "662e979de25a389f11c65e9f1df7e06c2c356381", "ade20k", "resnet50s", 0.787, 0.385, head="fcn"),
        _resnest("fcn_resnest50_ade", "4aba491aaf8e4866a9c9981b210e3e3266ac1f2a", "ade20k", 0.8018, 0.4294),
        _resnest("deeplab_resnest50_ade", "2225f09d0f40b9a168d9091652194bc35ec2a5a9", "ade20k", 0.8117, 0.4512),
        _resnest("deeplab_resnest101_ade", "06ca799c8cc148fe0fafb5b6d052052935aa3cc8", "ade20k", 0.8207, 0.4691),
        _resnest("deeplab_resnest200_ade", "7b9e7d3e6f0e2c763c7d77cad14d306c0a31fe05", "ade20k", 0.8245, 0.4836),
        _resnest("deeplab_resnest269_ade", "0074dd10a6e6696f6f521653fb98224e75955496", "ade20k", 0.8262, 0.4760),
        _resnest("fcn_resnest50_pcontext", "77a2161deeb1564e8b9c41a4bb7a3f33998b00ad", "pcontext", 0.7919, 0.5198),
        _resnest("deeplab_resnest50_pcontext", "08dccbc4f4694baab631e037a374d76d8108c61f", "pcontext", 0.8041, 0.5319),
        _resnest("deeplab_resnest101_pcontext", "faf5841853aae64bd965a7bdc2cdc6e7a2b5d898", "pcontext", 0.8191, 0.5649),
        _resnest("deeplab_resnest200_pcontext", "fe76a26551dd5dcf2d474fd37cba99d43f6e984e", "pcontext", 0.8250, 0.5837),
        _resnest("deeplab_resnest269_pcontext", "b661fd26c49656e01e9487cd9245babb12f37449", "pcontext", 0.8306, 0.5892),
        ZooModel("resnet50s", "backbone", "a75c83cfc89a56a4e8ba71b14f1ec67e923787b3", "imagenet", "resnet50s"),
        ZooModel("resnet101s", "backbone", "03a0f310d6447880f1b22a83bd7d1aa7fc702c6e", "imagenet", "resnet101s"),
        ZooModel("resnet152s", "backbone", "36670e8bc2428ecd5b7db1578538e2dd23872813", "imagenet", "resnet152s"),
        ZooModel("resnest50", "backbone", "fb9de5b360976e3e8bd3679d3e93c5409a5eff3c", "imagenet", "resnest50"),
        ZooModel("resnest101", "backbone", "966fb78c22323b0c68097c5c1242bd16d3e07fd5", "imagenet", "resnest101"),
        ZooModel("resnest200", "backbone", "d7fd712f5a1fcee5b3ce176026fbb6d0d278454a", "imagenet", "resnest200"),
        ZooModel("resnest269", "backbone", "51ae5f19032e22af4ec08e695496547acdba5ce5", "imagenet", "resnest269"),
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


# ----------------------------------------------------------------------------- class names of the datasets


def _pcontext_labels() -> tuple[list[str], np.ndarray]:
    from encnet_core.data.sources.pcontext import CONTEXT59

    classes = [name for _, name in CONTEXT59]  # the reference's _mapping sorted: the same order (by labels.txt id)
    return classes, voc_palette(len(classes) + 1)[1:]  # as `encnet prepare pcontext` stores them


def _ade20k_labels() -> tuple[list[str], np.ndarray]:
    from encnet_core.data.sources.ade20k import ADE20K_CLASSES

    return list(ADE20K_CLASSES), voc_palette(len(ADE20K_CLASSES) + 1)[1:]  # as `encnet prepare ade20k` stores them


DATASET_LABELS: dict[str, Callable[[], tuple[list[str], np.ndarray]]] = {
    "pcontext": _pcontext_labels,
    "ade20k": _ade20k_labels,
}
"""Dataset name -> (class names, (C, 3) uint8 palette) that a zoo model of that dataset carries."""


# ----------------------------------------------------------------------------- where files come from and go

ZOO_HEADER = "encnet.zoo"
"""safetensors header key of a cached zoo file: JSON with the zoo name, kind, sha1 of the source .pth, URL."""

MAX_PTH_BYTES = 2 << 30  # largest .pth read from a published zip (ResNet-152s EncNet: about 0.3 GB)


def repo_url(mirror: str | None = None) -> str:
    """Where the zips are: ``mirror``, else ``$ENCNET_WEIGHTS_MIRROR``, else the reference's repository."""
    url = mirror or os.environ.get(MIRROR_ENV) or REFERENCE_REPO
    option = "--mirror" if mirror else MIRROR_ENV if os.environ.get(MIRROR_ENV) else "the zoo URL"
    return check_url(url.strip(), option)


def cache_dir() -> Path:
    """``<cache>/weights``, with ``<cache>`` = ``$ENCNET_CACHE``, else ``$XDG_CACHE_HOME/encnet``, else ``~/.cache/encnet``."""
    return default_cache_dir() / "weights"


def _entry(name: str) -> ZooModel:
    entry = get(name)
    if entry is None:
        raise ModelError(f"unknown zoo model {name!r}; `encnet weights list` shows the names: {', '.join(ZOO)}")
    return entry


def cache_path(name: str) -> Path:
    """The cached safetensors file of zoo model ``name`` (it may not exist yet)."""
    return cache_dir() / f"{_entry(name).stem}.safetensors"


def is_cached(name: str) -> bool:
    """Whether zoo model ``name`` is in the cache (a pull or add completed; partial files never count)."""
    return cache_path(name).is_file()


def _parse_checksum(text: str) -> tuple[str, str]:
    """``ALGO:HEX`` (md5, sha1, sha256) -> (algo, lower-case hex); ConfigError if malformed."""
    algo, colon, digest = text.strip().partition(":")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if not colon or algo not in HASH_ALGOS:
        raise ConfigError(f"bad --checksum value {text!r}: expected ALGO:HEX with ALGO one of {', '.join(HASH_ALGOS)}, e.g. sha1:4de91d59...")
    length = hashlib.new(algo, usedforsecurity=False).digest_size * 2
    if not re.fullmatch(rf"[0-9a-f]{{{length}}}", digest):
        raise ConfigError(f"bad --checksum value {text!r}: a {algo} digest has {length} hexadecimal digits")
    return algo, digest


def _expected(entry: ZooModel, checksum: str | None) -> tuple[str, str, str]:
    """(algo, hex, who vouches) of the .pth: the published sha1, or the user's ``--checksum``."""
    if checksum:
        return (*_parse_checksum(checksum), "--checksum")
    return "sha1", entry.sha1, "the reference publishes"


# ----------------------------------------------------------------------------- converting a .pth


def _fits(state: dict[str, Tensor], own: dict[str, Tensor], what: str, source: str) -> None:
    """``state`` has exactly ``own``'s keys and shapes (a strict load), else one ModelError."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        key = wrong[0]
        raise ModelError(
            f"{source} does not fit {what}: {key} has shape {tuple(state[key].shape)}, expected {tuple(own[key].shape)} "
            f"({len(wrong)} mismatches)"
        )
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        raise ModelError(
            f"{source} does not fit {what}: {len(missing)} missing and {len(unexpected)} unexpected weights (e.g. {', '.join(names)})"
        )


def _convert(entry: ZooModel, pth: Path, source: str) -> dict[str, Tensor]:
    """The .pth's state_dict (read with weights_only=True) under encnet's names, checked to fit strictly."""
    try:
        state = load_checkpoint(pth)["model"]  # torch.load(weights_only=True); a {"state_dict": ...} wrapper is unwrapped
    except EncNetError as exc:
        raise ModelError(f"{source}: {str(exc).removeprefix(f'{pth} ').removeprefix(f'{pth}: ')}") from None
    if entry.kind == "segmentation":
        state = convert_pytorch_encoding_state_dict(state)
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            classes, _ = DATASET_LABELS[entry.dataset]()
            own = create_model(entry.model, len(classes), **entry.arguments).state_dict()
    else:
        cleaned = {}
        for key, value in state.items():
            for prefix in ("module.", "pretrained."):
                key = key.removeprefix(prefix)
            if not key.startswith("fc."):  # the ImageNet classifier: a segmentation backbone has none
                cleaned[key] = value
        state = cleaned
        with torch.device("meta"):
            own = build_backbone(entry.model).state_dict()
    _fits(state, own, f"{entry.model}{' ' + str(entry.arguments) if entry.arguments else ''}", source)
    return state


def _metadata(entry: ZooModel) -> dict[str, Any]:
    """ModelMetadata of a segmentation entry, as the reference builds that model (model_files reads it back)."""
    classes, palette = DATASET_LABELS[entry.dataset]()
    return ModelMetadata(
        model_config={"name": entry.model, "num_classes": len(classes), **entry.arguments},
        classes=tuple(classes),
        palette=tuple(tuple(int(v) for v in row) for row in palette),
        mean=entry.mean,
        std=entry.std,
        base_size=entry.base_size,
        crop_size=entry.crop_size,
        encnet_version=__version__,
        export_format="safetensors",
    ).to_dict()


def _write_cache(entry: ZooModel, state: dict[str, Tensor], provenance: dict[str, Any]) -> Path:
    """Write the cache file atomically: the state_dict as safetensors, metadata in its header."""
    from safetensors.torch import save


    header = {"format": "pt", ZOO_HEADER: json.dumps({"name": entry.name, "kind": entry.kind, **provenance})}
    if entry.kind == "segmentation":
        header[METADATA_NAME] = json.dumps(_metadata(entry))
    target = cache_path(entry.name)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    header[DIGEST_HEADER] = tensor_digest(tensors)  # checked on every read (model_files, backbone_state_dict)
    try:
        with atomic_write(target) as tmp:
            tmp.write_bytes(save(tensors, metadata=header))  # save_file would make it 0600
    except OSError as exc:
        if is_disk_full(exc):
            raise DownloadError(f"no space left on {target.parent}: {entry.name} was not cached") from None
        raise DownloadError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def _pth_member(zip_path: Path, entry: ZooModel, what: str) -> str:
    """The .pth member of a published zip: ``{stem}.pth`` (or the only .pth it holds)."""
    with open_archive(zip_path, ArchiveLimits(max_member_bytes=MAX_PTH_BYTES)) as archive:
        names = archive.names()
    wanted = f"{entry.stem}.pth"
    if wanted in names:
        return wanted
    pths = [n for n in names if n.endswith(".pth")]
    if len(pths) == 1:
        return pths[0]
    raise ArchiveError(f"{what} holds no {wanted} (members: {', '.join(names[:5]) or 'none'}); it is not the published zip")


def _install(
    entry: ZooModel, pth: Path, checksum: str | None, source: str, origin: str, progress: ProgressCallback | None,
    added: Path | None = None,
) -> Path:
    """Check the .pth's checksum, convert it, check the fit, write the cache file; returns its path.
    ``added``: the user's file (`add`), else the file was downloaded (`pull`), for the mismatch's advice."""
    algo, want, vouch = _expected(entry, checksum)
    hashes = file_hashes(pth, progress=progress)
    if hashes[algo] != want:
        trust = f"--checksum {algo}:{hashes[algo]}"
        advice = (
            f"if you trust this file: `encnet weights add {entry.name} {added} {trust}`" if added is not None else
            f"try again or another mirror, or if you trust this file: `encnet weights pull {entry.name} {trust}` "
            "(with --mirror URL for a mirror)"
        )  # fmt: skip
        raise ChecksumError(f"{source} has {algo} {hashes[algo]} but {vouch} {want} for {entry.name}, so nothing was cached; {advice}")
    state = _convert(entry, pth, source)
    return _write_cache(entry, state, {"sha1": hashes["sha1"], "origin": origin})


def _extract_pth(zip_path: Path, entry: ZooModel, work: Path, what: str) -> Path:
    member = _pth_member(zip_path, entry, what)
    (path,) = safe_extract(zip_path, work, [member], limits=ArchiveLimits(max_member_bytes=MAX_PTH_BYTES))
    return path


MIRROR_HINT = "pass --mirror URL"
"""How a pull's failure message tells the user to take the zip from a mirror, unless the caller says
otherwise: right for ``encnet weights pull``, ``predict`` and ``evaluate`` (they have ``--mirror``)."""


def _offline_advice(entry: ZooModel, mirror_hint: str = MIRROR_HINT) -> str:
    return (
        f"if you are offline or the file moved, {mirror_hint} (or set {MIRROR_ENV}=URL), URL being a server with "
        f"models/{entry.stem}.zip, or get {entry.stem}.pth elsewhere and run `encnet weights add {entry.name} FILE.pth`"
    )


# ----------------------------------------------------------------------------- pull, add, resolve


def pull(
    name: str,
    mirror: str | None = None,
    checksum: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    timeout: float = 30.0,
    retries: int = 5,
    force: bool = False,
    mirror_hint: str = MIRROR_HINT,
) -> Path:
    """The cached safetensors file of zoo model ``name``, downloaded and converted first if needed.

    Downloads ``{repo}/models/{stem}.zip`` (``repo``: ``mirror``, ``$ENCNET_WEIGHTS_MIRROR`` or the
    reference's) with encnet's resumable, retrying ``download`` (``timeout`` seconds per attempt and
    read), extracts its ``.pth`` (size-capped), checks it against the published sha1 (or
    ``checksum``, ``ALGO:HEX``), converts it and caches it (see the module docstring). The zip and
    the extracted .pth are deleted afterwards, and after a checksum or conversion failure too: a
    failed pull leaves nothing usable in the cache (an interrupted download keeps its ``.part`` file,
    which the next pull resumes). A cached file is returned without any network access unless ``force``.
    A failed download's message ends with the ways out, ``mirror_hint`` (how the caller's command takes
    a mirror, default "pass --mirror URL") among them; a host that cannot be reached (offline) fails
    at once, without retries.
    """
    entry = _entry(name)
    check_timeout(timeout)
    target = cache_path(entry.name)
    if checksum:
        _parse_checksum(checksum)  # a malformed value fails before any download
    if target.is_file() and not force:
        return target
    url = entry.url(repo_url(mirror))
    work = cache_dir() / "downloads"
    with _locked(work / f"{entry.stem}.lock"):  # ranks of one torchrun job pull once, not into one .part at once
        if target.is_file() and not force:
            return target  # another process cached it while this one waited
        return _pull_locked(entry, url, work, checksum, progress, timeout, retries, mirror_hint)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; elsewhere no lock)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise DownloadError(f"cannot write {path.parent}: {exc.strerror or exc}") from None
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _pull_locked(
    entry: ZooModel, url: str, work: Path, checksum: str | None, progress: ProgressCallback | None, timeout: float, retries: int,
    mirror_hint: str = MIRROR_HINT,
) -> Path:
    zip_path = work / f"{entry.stem}.zip"
    try:
        try:
            download(url, zip_path, progress=progress, timeout=timeout, retries=retries)
        except ChecksumError:
            raise
        except NetworkError as exc:  # offline, refused, or out of retries: says whether a .part is kept
            raise exc.with_advice(_offline_advice(entry, mirror_hint)) from None
        except DownloadError as exc:
            text = str(exc)
            if not text.startswith(f"cannot download {url}"):  # a local problem (disk full): its own message
                raise
            detail = text.removeprefix(f"cannot download {url}").removeprefix(": ")
            raise DownloadError(f"cannot download {url} ({detail}); {_offline_advice(entry, mirror_hint)}") from None
        pth = _extract_pth(zip_path, entry, work / entry.stem, f"the zip downloaded from {url}")
        path = _install(entry, pth, checksum, f"{entry.stem}.pth from {url}", url, progress)
    except BaseException:
        zip_path.unlink(missing_ok=True)  # a bad download is never reused (a .part of an interrupted one is kept)
        raise
    finally:
        shutil.rmtree(work / entry.stem, ignore_errors=True)
    zip_path.unlink(missing_ok=True)
    return path


def add(name: str, file: Path, checksum: str | None = None, progress: ProgressCallback | None = None) -> Path:
    """Cache zoo model ``name`` from a local ``.pth`` (or the published ``.zip``) instead of downloading it.

    The file must have the published sha1 (or ``checksum``) and convert strictly, exactly as a pull;
    the file itself is left untouched. Returns the cached safetensors file.
    """
    entry = _entry(name)
    file = Path(file)
    if checksum:
        _parse_checksum(checksum)
    if not file.is_file():
        raise ConfigError(f"{file} does not exist: pass the {entry.stem}.pth (or .zip) file of {entry.name}")
    downloads = cache_dir() / "downloads"
    with _locked(downloads / f"{entry.stem}.lock"):
        if not _is_published_zip(file):
            return _install(entry, file, checksum, str(file), str(file.resolve()), progress, added=file)
        work = downloads / entry.stem
        try:
            pth = _extract_pth(file, entry, work, str(file))
            return _install(entry, pth, checksum, f"{pth.name} in {file}", str(file.resolve()), progress, added=file)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _is_published_zip(file: Path) -> bool:
    """A zip holding a .pth member (a torch.save file is a zip too, but holds data.pkl, no .pth)."""
    if not zipfile.is_zipfile(file):
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            return any(n.endswith(".pth") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _looks_like_name(text: str) -> bool:
    return "/" not in text and os.sep not in text and not text.endswith((".pt", ".pth", ".safetensors"))


class _LogProgress:
    """Download progress as a log line per 10% (resolve runs inside commands that show their own progress)."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def __call__(self, description: str, done: int, total: int | None, *, unit: str) -> None:
        if not total or not description.startswith("downloading"):
            return
        percent = 100 * done // total
        if percent >= self._next.get(description, 10):
            self._next[description] = percent // 10 * 10 + 10
            log.info("%s: %d%% of %.1f MB", description, percent, total / 1e6)


def resolve(
    name_or_path: str | Path,
    kind: str = "segmentation",
    progress: ProgressCallback | None = None,
    *,
    mirror: str | None = None,
    mirror_hint: str | None = None,
) -> Path:
    """What a MODEL (or ``--backbone-weights``) argument names: an existing file wins; a zoo name is
    pulled on first use (from ``mirror``, else ``$ENCNET_WEIGHTS_MIRROR``, else the reference's) and
    its cached file returned; anything else comes back as a Path for the caller to report as missing.

    A zoo name of the other ``kind`` (a backbone given as a MODEL, or the reverse) is a ModelError.
    ``mirror_hint`` is how the calling command takes a mirror, for the message of a failed pull
    (e.g. "pass --mirror URL"); by default it points to ``encnet weights pull NAME --mirror URL``,
    since most commands that take a MODEL have no --mirror of their own.
    """
    path = Path(name_or_path)
    text = str(name_or_path)
    if path.exists() or not _looks_like_name(text):
        return path
    entry = get(text)
    if entry is None:
        return path
    if entry.kind != kind:
        if entry.kind == "backbone":
            raise ModelError(
                f"{entry.name} is an ImageNet backbone, not a segmentation model: train from it with "
                f"`encnet train --model encnet_{entry.model} --backbone-weights {entry.name}`"
            )
        raise ModelError(f"{entry.name} is a segmentation model, not a backbone: pass it as the MODEL, or to --init-from")
    if is_cached(entry.name):
        return cache_path(entry.name)
    log.info("%s is not cached yet: downloading %s", entry.name, entry.url(repo_url(mirror)))
    hint = mirror_hint or f"run `encnet weights pull {entry.name} --mirror URL` first"
    path = pull(entry.name, mirror=mirror, progress=progress or _LogProgress(), mirror_hint=hint)
    log.info("cached %s at %s", entry.name, path)
    return path


def backbone_state_dict(name: str) -> tuple[ZooModel, dict[str, Tensor]]:
    """The zoo backbone ``name`` (pulled on first use) and its cached state_dict (backbone names, no fc),
    checked against the digest in its header (cache files written before digests have none)."""
    from safetensors import safe_open


    path = resolve(name, kind="backbone")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            recorded = (handle.metadata() or {}).get(DIGEST_HEADER)
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # SafetensorError: a damaged cache file
        raise ModelError(f"cached backbone {path} is unreadable ({exception_reason(exc)}): delete it and run again") from None
    if recorded is not None and tensor_digest(state) != recorded:
        raise ModelError(f"cached backbone {path} is corrupt (its tensors do not match the digest recorded when it was cached): delete it and run again")
    return _entry(name), state


def describe(entry: ZooModel, mirror: str | None = None) -> dict[str, Any]:
    """One zoo entry as plain data (``encnet weights list --json``): the table's facts plus cache state and URL."""
    classes = len(DATASET_LABELS[entry.dataset]()[0]) if entry.dataset in DATASET_LABELS else None
    return {
        "name": entry.name,
        "kind": entry.kind,
        "dataset": entry.dataset,
        "classes": classes,
        "model": entry.model,
        "arguments": dict(entry.arguments),
        "base_size": entry.base_size if entry.kind == "segmentation" else None,
        "crop_size": entry.crop_size if entry.kind == "segmentation" else None,
        "pixAcc": entry.pixacc,
        "mIoU": entry.miou,
        "source": entry.source,
        "sha1": entry.sha1,
        "url": entry.url(repo_url(mirror)),
        "cached": is_cached(entry.name),
        "path": str(cache_path(entry.name)),
    }
