"""Building a registered model with ImageNet backbone weights read from where a user names them.

``build_model`` is ``models.create_model`` plus ``backbone_weights`` given as a local state_dict file
(torch.save or .safetensors), ``"imagenet"`` (torchvision's, downloaded by torchvision) or a zoo
backbone name (``resnet50s``, ``resnet101s``, ``resnet152s``: the reference's, pulled on first use;
see weights/zoo.py). It resolves them to a state_dict here; the models never fetch or read files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encnet_core.errors import ModelError
from encnet_core.models import (
    BACKBONES,
    MODELS,
    CifarResNet,
    EncNet,
    create_model,
    load_backbone_weights,
    model_task,
)
from encnet_core.tasks import facts
from encnet_core.weights import zoo

__all__ = ["build_model", "backbone_weights"]


def build_model(name: str, num_classes: int, **overrides: Any) -> EncNet | CifarResNet:
    """``create_model(name, num_classes, **overrides)`` with ``backbone_weights`` a file path, ``"imagenet"``
    or a zoo backbone name (or None): the model is built first (so its own errors come first), then the
    weights are read and loaded into its backbone. ``model.config`` never holds ``backbone_weights``."""
    if not facts(model_task(name)).per_pixel:  # a classifier refuses backbone_weights itself
        return create_model(name, num_classes, **overrides)
    source = overrides.pop("backbone_weights", None)
    model = create_model(name, num_classes, **overrides)
    if source:
        backbone = MODELS[name]["backbone"]
        load_backbone_weights(model.backbone, backbone, backbone_weights(backbone, source), str(source))
    return model


def backbone_weights(name: str, source: str | Path) -> dict[str, Tensor]:
    """The state_dict ``source`` names for backbone ``name``: ``"imagenet"`` (torchvision's), a zoo
    backbone name (a file that exists wins over a name), or a local state_dict file."""
    if str(source) == "imagenet":
        return _imagenet_state_dict(name)
    state = _zoo_state_dict(name, str(source))
    return state if state is not None else _read_state_dict(Path(source))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state_dict file: torch.save (read with weights_only=True) or .safetensors."""
    if not path.is_file():
        raise ModelError(f"backbone weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError: bad header, offsets, dtypes
            raise ModelError(f"cannot read backbone weights {path}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file
        raise ModelError(f"cannot read backbone weights {path}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state_dict of tensors")
    return obj


def _imagenet_state_dict(name: str) -> dict[str, Tensor]:
    spec = BACKBONES[name]
    if spec.torchvision_name is None:
        entry = zoo.get(name)
        zoo_hint = f", or the reference's with --backbone-weights {name}" if entry and entry.kind == "backbone" else ""
        raise ModelError(
            f"torchvision has no ImageNet weights for {name!r}; pass a local file with --backbone-weights PATH{zoo_hint}"
        )
    from torchvision.models import get_model_weights

    weights = get_model_weights(spec.torchvision_name).DEFAULT
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # offline, proxy, disk full...
        raise ModelError(
            f"could not download ImageNet weights {weights} ({str(exc).splitlines()[0]}); "
            "download them elsewhere and pass the file with --backbone-weights PATH"
        ) from exc


def _zoo_state_dict(name: str, source: str) -> dict[str, Tensor] | None:
    """The reference's ImageNet backbone ``source`` from the zoo (pulled on first use), or None if
    ``source`` is not a zoo backbone name (or is a file that exists: a path wins over a name)."""
    entry = zoo.get(source)
    if entry is None or entry.kind != "backbone" or Path(source).exists():
        return None
    if entry.model != name:
        raise ModelError(f"--backbone-weights {entry.name} holds a {entry.model} backbone, but the model's is {name}")
    return zoo.backbone_state_dict(entry.name)[1]


