"""EncNet models: layers, backbones (ResNet, ResNeSt), the segmentation model with its EncNet, FCN and DeepLabV3
heads, the CIFAR classifiers, the registry and the reference-weights converter."""

from encnet_core.models.backbones import BACKBONES, build_backbone, load_backbone_weights
from encnet_core.models.cifar import CifarResNet
from encnet_core.models.convert import convert_pytorch_encoding_state_dict
from encnet_core.models.encnet import EncNet
from encnet_core.models.layers import ASPP, DeepLabV3Head, EncHead, EncModule, Encoding, FCNHead
from encnet_core.models.registry import (
    CLASSIFIERS,
    HEADS,
    MODELS,
    count_flops,
    create_model,
    has_encoding_head,
    list_models,
    model_task,
)

__all__ = [
    "ASPP",
    "BACKBONES",
    "DeepLabV3Head",
    "HEADS",
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
    "has_encoding_head",
    "list_models",
    "load_backbone_weights",
    "build_backbone",
    "model_task",
]
