"""Backbone weights read from where a user names them (weights/builder.py): files, torchvision, refusals."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from encnet_core.errors import ModelError
from encnet_core.weights.builder import build_model


def test_backbone_weights_from_local_file(tmp_path) -> None:
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("encnet_resnet18", 5, backbone_weights=str(path))
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    torch.testing.assert_close(model.backbone.bn1.running_var, source.bn1.running_var)
    assert "backbone_weights" not in model.config


def test_backbone_weights_wrong_architecture(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ModelError, match="do not fit"):
        build_model("encnet_resnet50", 5, backbone_weights=str(path))
    with pytest.raises(ModelError, match="not found"):
        build_model("encnet_resnet18", 5, backbone_weights=str(tmp_path / "missing.pth"))


def test_backbone_weights_refuse_pickled_code(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(ModelError, match="cannot read"):
        build_model("encnet_resnet18", 5, backbone_weights=str(path))


def test_imagenet_weights_offline_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match="could not download ImageNet weights"):
        build_model("encnet_resnet18", 5, backbone_weights="imagenet")
    with pytest.raises(ModelError, match="no ImageNet weights"):
        build_model("encnet_resnet50s", 5, backbone_weights="imagenet")
