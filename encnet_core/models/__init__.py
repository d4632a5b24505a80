"""EncNet models: layers, backbones, the segmentation model, the CIFAR classifiers, the registry and the
reference-weights converter."""

from encnet_core.models.backbones import BACKBONES, build_backbone, load_backbone_weights
from encnet_core.models.cifar import CifarResNet
from encnet_core.models.convert import convert_pytorch_encoding_state_dict
from encnet_core.models.encnet import EncNet
from encnet_core.models.layers import EncHead, EncModule, Encoding, FCNHead
from encnet_core.models.registry import (
    CLASSIFIERS,
    MODELS,
    count_flops,
    create_model,
    list_models,
    model_task,
)

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "MODELS",
    "CifarResNet",
    "EncHead",
    "EncModule",
    "EncNet",
    "Encoding",
    "FCNHead",
    "convert_pytorch_encoding_state_dict",
    "count_flops",
    "create_model",
    "list_models",
    "load_backbone_weights",
    "build_backbone",
    "model_task",
]
