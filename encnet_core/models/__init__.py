"""EncNet models: layers, backbones, the model, the registry and the reference-weights converter."""

from encnet_core.models.backbones import BACKBONES, load_backbone_weights
from encnet_core.models.convert import convert_pytorch_encoding_state_dict
from encnet_core.models.encnet import EncNet
from encnet_core.models.layers import EncHead, EncModule, Encoding, FCNHead
from encnet_core.models.registry import MODELS, count_flops, create_model, list_models

__all__ = [
    "BACKBONES",
    "MODELS",
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
]
