"""Load PyTorch-Encoding's published EncNet weights: rename its state_dict keys to ours.

Its model has ``pretrained`` (the backbone), ``head`` (EncHead, same inner names as ours) and
``auxlayer.conv5`` (FCNHead as a Sequential); ours has ``backbone``, ``head`` and ``aux_head``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from encnet_core.errors import ModelError

__all__ = ["convert_pytorch_encoding_state_dict"]

_PREFIXES = (
    ("pretrained.", "backbone."),
    ("auxlayer.conv5.", "aux_head."),
    ("head.", "head."),
)


def convert_pytorch_encoding_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a PyTorch-Encoding EncNet (or FCN) state_dict onto encnet's names.

    Drops the backbone's ImageNet classifier (``pretrained.fc``) and a DataParallel ``module.``
    prefix. PyTorch-Encoding's FCN baseline keeps its head in ``head.conv5``: that becomes ``head.``.
    Unrecognised keys are an error (the file is not a PyTorch-Encoding EncNet/FCN).
    """
    is_fcn = not any(k.removeprefix("module.").startswith("head.encmodule.") for k in state_dict) and any(
        k.removeprefix("module.").startswith("head.conv5.") for k in state_dict
    )
    out: dict[str, Tensor] = {}
    for raw_key, value in state_dict.items():
        key = raw_key.removeprefix("module.")
        if key.startswith("pretrained.fc."):
            continue
        if is_fcn and key.startswith("head.conv5."):
            out["head." + key.removeprefix("head.conv5.")] = value
            continue
        for old, new in _PREFIXES:
            if key.startswith(old):
                out[new + key.removeprefix(old)] = value
                break
        else:
            raise ModelError(f"not a PyTorch-Encoding EncNet state_dict: unexpected key {raw_key!r}")
    return out
