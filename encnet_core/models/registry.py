"""Registered model variants: each is data (a dict of arguments) for one builder.

``MODELS`` are the segmentation variants (arguments of ``EncNet``), ``CLASSIFIERS`` the
classification variants (arguments of ``CifarResNet``); ``model_task`` says which a name is.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

from encnet_core.constants import DEFAULT_CROP_SIZE
from encnet_core.errors import ModelError
from encnet_core.models.backbones import BACKBONES, load_backbone_weights
from encnet_core.models.cifar import CifarResNet
from encnet_core.models.encnet import EncNet

__all__ = ["MODELS", "CLASSIFIERS", "HEADS", "OVERRIDES", "create_model", "list_models", "model_task", "has_encoding_head", "count_flops"]

HEADS: dict[str, str] = {"encnet": "enc", "fcn": "fcn", "deeplab": "deeplab"}
"""Name prefix of a segmentation variant -> ``EncNet(head=...)``: EncNet, the dilated-FCN baseline, DeepLabV3."""

_TINY = {"tiny", "resnest_tiny"}  # test backbones: narrow heads so that a CPU step takes milliseconds


def _segmentation_variants() -> dict[str, dict[str, Any]]:
    """Every head on every backbone (``{prefix}_{backbone}``); the tiny backbones get narrow EncHeads."""
    variants: dict[str, dict[str, Any]] = {}
    for prefix, head in HEADS.items():
        for backbone in BACKBONES:
            args: dict[str, Any] = {"backbone": backbone}
            if head != "enc":
                args["head"] = head
            elif backbone in _TINY:
                args.update(head_channels=32, num_codes=8)
            variants[f"{prefix}_{backbone}"] = args
    return variants


MODELS: dict[str, dict[str, Any]] = _segmentation_variants()
"""Segmentation variants: ``encnet_``, ``fcn_`` or ``deeplab_`` + a backbone name of ``BACKBONES``."""

CLASSIFIERS: dict[str, dict[str, Any]] = {
    # the paper's CIFAR-10 network (reference: encnetdrop, widen 8, 32 codes) and its SE-ResNet twin
    "encnet_cifar14": {"attention": "enc", "width": 128, "num_codes": 32},
    "se_cifar14": {"attention": "se", "width": 128},
    # tiny variants for tests and quick CPU runs (same 14 layers, widths 16/32/64)
    "encnet_cifar_tiny": {"attention": "enc", "width": 16, "num_codes": 8},
    "se_cifar_tiny": {"attention": "se", "width": 16},
}

OVERRIDES: dict[str, str] = {
    "lateral": "use layer2/layer3 features in the head (paper setting for PASCAL)",
    "num_codes": "number of codewords K of the Encoding layer",
    "aux": "auxiliary FCN head on layer3",
    "se_loss": "Semantic Encoding head (class-presence logits)",
    "output_stride": "8 (default) or 16",
    "head_channels": "width of the EncHead (512 in the paper)",
    "align_corners": "bilinear upsampling mode of the logits (reference: True)",
    "dropout": "dropout before the classifiers",
    "backbone_weights": "ImageNet weights for the backbone, a state_dict (weights.builder.build_model reads them from a local file, 'imagenet' (torchvision's) or a zoo backbone name)",
}
_ENC_ONLY = {"lateral", "num_codes", "se_loss", "head_channels"}
_CLASSIFICATION_OPTIONS = {"num_codes", "dropout"}  # the rest of OVERRIDES are segmentation-only


def list_models() -> list[str]:
    """Names accepted by ``create_model``: the segmentation models, then the classification ones."""
    return [*MODELS, *CLASSIFIERS]


def has_encoding_head(name: str) -> bool:
    """Whether segmentation variant ``name`` has EncNet's head (the Encoding-only options apply to it)."""
    return MODELS[name].get("head", "enc") == "enc"


def model_task(name: str) -> str:
    """``"segmentation"`` or ``"classification"``: what the registered model ``name`` predicts."""
    if name in MODELS:
        return "segmentation"
    if name in CLASSIFIERS:
        return "classification"
    raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def create_model(name: str, num_classes: int, **overrides: Any) -> EncNet | CifarResNet:
    """Build a registered model; ``overrides`` change its arguments (see ``OVERRIDES``).

    The model remembers ``config`` (name, num_classes and the effective overrides, without
    ``backbone_weights``) so a checkpoint can rebuild it with ``create_model(**config)``, and has
    ``task`` (``model_task(name)``). Classification models take ``num_codes`` (Encoding ones only)
    and ``dropout``; the other options are refused for them. ``backbone_weights`` is a state_dict:
    this module fetches nothing (``weights.builder.build_model`` resolves a file or a name first).
    """
    model_task(name)  # raises the "unknown model" error
    if num_classes < 1:
        raise ModelError(f"num_classes must be positive, got {num_classes}")
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ModelError(f"unknown model option(s) {sorted(unknown)}; valid: {', '.join(OVERRIDES)}")
    if name in CLASSIFIERS:
        return _create_classifier(name, num_classes, overrides)
    args = dict(MODELS[name])
    weights = overrides.pop("backbone_weights", None)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not has_encoding_head(name):
        dropped = {k for k in overrides if k in _ENC_ONLY}
        if dropped:
            raise ModelError(f"{name} has no Encoding head; options {sorted(dropped)} do not apply")
    args.update(overrides)
    model = EncNet(num_classes=num_classes, **args)
    if weights is not None:
        if not isinstance(weights, Mapping):
            raise ModelError(
                f"backbone_weights takes a state_dict here, not {type(weights).__name__}; "
                "encnet_core.weights.builder.build_model reads a file, 'imagenet' or a zoo name"
            )
        load_backbone_weights(model.backbone, args["backbone"], weights)
    model.config = {"name": name, "num_classes": num_classes, **overrides}
    return model


def _create_classifier(name: str, num_classes: int, overrides: dict[str, Any]) -> CifarResNet:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    args = dict(CLASSIFIERS[name])
    segmentation_only = sorted(set(overrides) - _CLASSIFICATION_OPTIONS)
    if segmentation_only:
        raise ModelError(f"{name} is a classification model; options {segmentation_only} apply to segmentation models only")
    if "num_codes" in overrides and args["attention"] != "enc":
        raise ModelError(f"{name} has no Encoding layer; option 'num_codes' does not apply")
    args.update(overrides)
    model = CifarResNet(num_classes, **args)
    model.config = {"name": name, "num_classes": num_classes, **overrides}
    return model


def count_flops(name: str, num_classes: int = 21, size: int = DEFAULT_CROP_SIZE, **overrides: Any) -> tuple[int, int]:
    """(parameter count, forward FLOPs) at a size x size input, in eval mode, measured on the meta device.

    Pass ``size=32`` for the CIFAR classifiers (the default is the segmentation crop).

    FLOPs are counted by ``torch.utils.flop_counter`` (a multiply-add counts as 2). Results are remembered
    for the process (a variant's count never changes; ``encnet models`` counts 46 of them).
    """
    key = tuple(sorted(overrides.items()))
    try:
        hash(key)
    except TypeError:  # e.g. a backbone_weights state_dict: count without remembering
        return _count_flops.__wrapped__(name, num_classes, size, key)
    return _count_flops(name, num_classes, size, key)


@functools.lru_cache(maxsize=256)
def _count_flops(name: str, num_classes: int, size: int, overrides: tuple[tuple[str, Any], ...]) -> tuple[int, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(name, num_classes, **dict(overrides)).eval()
        x = torch.empty(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops()
