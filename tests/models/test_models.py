"""Registered models: output contract, backbones against torchvision, weights loading."""

from __future__ import annotations

import pytest
import torch
import torchvision

from encnet_core.errors import ModelError
from encnet_core.models import EncHead, EncModule, FCNHead, create_model, list_models, model_task

REQUIRED = ["encnet_resnet50", "encnet_resnet101", "encnet_resnet50s", "encnet_resnet101s", "encnet_resnet18", "fcn_resnet50"]


def test_required_models_registered() -> None:
    names = list_models()
    for name in REQUIRED + ["encnet_tiny"]:
        assert name in names


# every head on one backbone of each kind (torchvision ResNet, deep-stem ResNet, ResNeSt, the tiny ones); the
# deeper ones differ only in block counts (their keys are checked against the reference's tables in test_convert.py)
CONTRACT_BACKBONES = {"resnet18", "resnet50s", "resnest50", "tiny", "resnest_tiny"}


def test_every_head_on_every_backbone() -> None:
    from encnet_core.models import BACKBONES, HEADS, MODELS

    assert {(n.split("_", 1)[0], spec["backbone"]) for n, spec in MODELS.items()} == {(h, b) for h in HEADS for b in BACKBONES}
    for name, spec in MODELS.items():
        assert spec.get("head", "enc") == HEADS[name.split("_", 1)[0]] and name.endswith(spec["backbone"])


@pytest.mark.parametrize("name", [n for n in list_models() if model_task(n) == "segmentation" and n.split("_", 1)[1] in CONTRACT_BACKBONES])
def test_output_contract_every_model(name: str) -> None:
    # the tiny variants compute on the CPU; the full-size ones run on the meta device (shapes and keys only)
    device = torch.device("cpu" if name.endswith("tiny") else "meta")
    with device:
        model = create_model(name, 7)
        x = torch.randn(2, 3, 40, 48)
    model.train()
    out = model(x)
    assert out["out"].shape == (2, 7, 40, 48)
    assert out["aux"].shape == (2, 7, 40, 48)
    if name.startswith("encnet"):
        assert out["se"].shape == (2, 7)
    else:
        assert "se" not in out
    model.eval()
    with torch.no_grad():
        out = model(x[:1])
    assert list(out) == ["out"] and out["out"].shape == (1, 7, 40, 48)


def test_switches_remove_heads() -> None:
    model = create_model("encnet_tiny", 4, aux=False, se_loss=False).train()
    assert model.aux_head is None
    assert list(model(torch.randn(2, 3, 32, 32))) == ["out"]
    model.eval()
    assert "se" in create_model("encnet_tiny", 4).eval()(torch.randn(1, 3, 32, 32), with_se=True)


def test_lateral_and_codes_overrides() -> None:
    model = create_model("encnet_tiny", 4, lateral=True, num_codes=5)
    assert isinstance(model.head, EncHead) and model.head.lateral
    assert isinstance(model.head.encmodule, EncModule)
    assert model.head.encmodule.encoding[3].codewords.shape == (5, 32)
    assert model.config == {"name": "encnet_tiny", "num_classes": 4, "lateral": True, "num_codes": 5}
    rebuilt = create_model(**model.config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_fcn_baseline_has_no_encoding() -> None:
    model = create_model("fcn_resnet50", 3)
    assert isinstance(model.head, FCNHead)
    assert not any("encmodule" in k for k in model.state_dict())
    with pytest.raises(ModelError, match="no Encoding head"):
        create_model("fcn_resnet50", 3, num_codes=8)


def test_bad_names_and_overrides() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        create_model("encnet_resnet9000", 3)
    with pytest.raises(ModelError, match="unknown model option"):
        create_model("encnet_tiny", 3, codes=3)
    with pytest.raises(ModelError, match="output_stride"):
        create_model("encnet_tiny", 3, output_stride=32)


@pytest.mark.parametrize("output_stride,dilations", [(8, (2, 4)), (16, (1, 2))])
def test_dilated_resnet50_matches_torchvision(output_stride: int, dilations: tuple[int, int]) -> None:
    """Our dilated backbone computes exactly torchvision's dilated ResNet-50 given the same weights."""
    replace = [False, True, True] if output_stride == 8 else [False, False, True]
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=replace).eval()
    model = create_model("encnet_resnet50", 3, output_stride=output_stride).eval()
    missing = model.backbone.load_state_dict(reference.state_dict(), strict=False)
    assert missing.missing_keys == [] and set(missing.unexpected_keys) == {"fc.weight", "fc.bias"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c4 = model.backbone(x)[3]
        ref = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
    assert c4.shape[-1] == 64 // output_stride
    torch.testing.assert_close(c4, ref)
    assert model.backbone.layer4[1].conv2.dilation == (dilations[1], dilations[1])
    assert model.backbone.layer3[1].conv2.dilation == (dilations[0], dilations[0])


def test_dilated_basic_block_resnet18() -> None:
    """ResNet-18 (BasicBlock) works dilated at output stride 8 and keeps torchvision's names."""
    model = create_model("encnet_resnet18", 3).eval()
    c1, c2, c3, c4 = model.backbone(torch.randn(1, 3, 64, 64))
    assert c2.shape[-1] == c3.shape[-1] == c4.shape[-1] == 8
    assert model.backbone.layer4[1].conv1.dilation == (4, 4)
    tv_keys = {k for k in torchvision.models.resnet18(weights=None).state_dict() if not k.startswith("fc.")}
    assert tv_keys == set(model.backbone.state_dict())


@pytest.mark.parametrize(("name", "overrides"), [("encnet_tiny", {}), ("encnet_tiny", {"se_loss": False, "aux": False}),
                                                 ("fcn_tiny", {})])  # fmt: skip
def test_model_states_its_classifier(name: str, overrides: dict) -> None:
    model = create_model(name, 5, **overrides)
    state = model.state_dict()
    prefixes = model.classifier_prefixes()
    # exactly the tensors whose first dimension is the class count belong to the classifier layers
    by_shape = {k.rsplit(".", 1)[0] for k, v in state.items() if v.ndim and v.shape[0] == 5}
    assert {k.rsplit(".", 1)[0] for k in state if k.startswith(prefixes)} == by_shape
    assert model.has_se == (name.startswith("encnet") and overrides.get("se_loss", True))
    torch.manual_seed(0)
    kept = {k: v.clone() for k, v in state.items() if not k.startswith(prefixes)}
    replaced = model.reset_classifier(3)
    assert sorted(replaced) == sorted(p.rstrip(".") for p in prefixes)
    assert model.num_classes == 3 and model.config["num_classes"] == 3
    new_state = model.state_dict()
    assert all(torch.equal(new_state[k], v) for k, v in kept.items())
    model.eval()
    out = model(torch.randn(1, 3, 32, 32), with_se=True)
    assert out["out"].shape == (1, 3, 32, 32)
    assert ("se" in out) == model.has_se and (not model.has_se or out["se"].shape == (1, 3))
    rebuilt = create_model(**model.config)
    rebuilt.load_state_dict(new_state)  # the checkpoint contract still holds


def test_create_model_takes_backbone_weights_as_a_state_dict_only() -> None:
    """models/ fetch nothing: a state_dict loads into the backbone, a name or a path is refused."""
    source = create_model("encnet_tiny", 3)
    state = {f"module.{k}": v + 1 for k, v in source.backbone.state_dict().items() if v.is_floating_point()}
    model = create_model("encnet_tiny", 3, backbone_weights=state)
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, source.backbone.layer3[0].conv1.weight + 1)
    assert "backbone_weights" not in model.config
    with pytest.raises(ModelError, match="backbone_weights takes a state_dict here, not str"):
        create_model("encnet_tiny", 3, backbone_weights="imagenet")
