"""The DeepLabV3 head and the ResNeSt backbones: structure as the reference builds it (torch-encoding 1.2.1:
encoding/models/sseg/deeplab.py, encoding/models/backbone/resnet.py with resnest.py's arguments), class-specific
layers, the options each head takes. Logit parity with the reference's own code is in test_reference_parity.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encnet_core.errors import ModelError
from encnet_core.models import DeepLabV3Head, build_backbone, create_model, has_encoding_head
from encnet_core.models.resnest import RadixSoftmax, SplitAttentionBottleneck


def _dilations(head: DeepLabV3Head) -> list[int]:
    return [getattr(head.aspp, f"b{i}")[0].dilation[0] for i in (1, 2, 3)]


def test_deeplab_head_rates_follow_the_output_stride() -> None:
    assert _dilations(create_model("deeplab_tiny", 3).head) == [12, 24, 36]  # the reference's (output stride 8)
    assert _dilations(create_model("deeplab_tiny", 3, output_stride=16).head) == [6, 12, 18]  # DeepLabV3 paper, OS 16
    head = create_model("deeplab_resnet18", 3).head  # 512 channels into the head: ASPP branches of 512 // 8
    assert head.aspp.b0[0].out_channels == 64 and head.aspp.project[0].in_channels == 5 * 64
    assert isinstance(head.aspp.project[3], nn.Dropout2d) and head.aspp.project[3].p == 0.5
    assert head.block[3].p == 0.1 and head.block[4].out_channels == 3


def test_image_pooling_branch_equals_the_references_bilinear_upsampling() -> None:
    torch.manual_seed(0)
    head = create_model("deeplab_tiny", 3).head.eval()
    x = torch.randn(2, 128, 7, 9)
    pooled = head.aspp.b4.gap(x)  # (2, 16, 1, 1)
    expected = F.interpolate(pooled, (7, 9), mode="bilinear", align_corners=True)  # AsppPooling.forward
    assert torch.equal(head.aspp.b4(x), expected)


def test_deeplab_classifier_layers_and_fine_tuning() -> None:
    model = create_model("deeplab_tiny", 5)
    assert model.classifier_prefixes() == ("head.block.4.", "aux_head.4.")
    keys = model.state_dict()
    assert all(any(k.startswith(p) for k in keys) for p in model.classifier_prefixes())
    kept = model.head.aspp.b1[0].weight.clone()
    assert model.reset_classifier(2) == ["head.block.4", "aux_head.4"]
    assert model.head.block[4].out_channels == 2 and model.aux_head[4].out_channels == 2
    assert torch.equal(model.head.aspp.b1[0].weight, kept)
    assert model(torch.randn(2, 3, 32, 32))["out"].shape == (2, 2, 32, 32)


def test_deeplab_training_refuses_one_image_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from encnet_core.config import TrainConfig
    from encnet_core.engine.segmentation import SegmentationTask
    from encnet_core.errors import ConfigError

    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what torch says without the check
        create_model("deeplab_tiny", 3).train()(torch.randn(1, 3, 32, 32))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="deeplab_tiny needs --batch-size 2 or more per process"):
        SegmentationTask().check(TrainConfig(data="d.h5", model="deeplab_tiny", batch_size=1))
    SegmentationTask().check(TrainConfig(data="d.h5", model="deeplab_tiny", batch_size=2))
    SegmentationTask().check(TrainConfig(data="d.h5", model="encnet_tiny", batch_size=1))  # EncNet's head pools nothing to 1x1 before BN2d


@pytest.mark.parametrize("option", [{"lateral": True}, {"num_codes": 4}, {"se_loss": True}, {"head_channels": 8}])
def test_heads_without_encoding_refuse_its_options(option: dict) -> None:
    for name in ("deeplab_tiny", "fcn_resnest_tiny"):
        with pytest.raises(ModelError, match="has no Encoding head"):
            create_model(name, 3, **option)
    assert has_encoding_head("encnet_resnest50") and not has_encoding_head("deeplab_resnest50")
    assert not has_encoding_head("fcn_resnet50s")


def test_resnest_blocks_as_the_reference_builds_them() -> None:
    backbone = build_backbone("resnest50")
    # deep stem of width 32 (ResNeSt-50; 64 for the deeper ones): 3 -> 32 -> 32 -> 64
    assert [backbone.conv1[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    assert [build_backbone("resnest101").conv1[i].out_channels for i in (0, 3, 6)] == [64, 64, 128]
    assert len(build_backbone("resnest269", output_stride=8).layer3) == 48
    # "avd": a 3x3 average pool in the first block of layer2-4 (stride 2 in layer2; stride 1 in the dilated ones)
    first = [backbone.layer1[0], backbone.layer2[0], backbone.layer3[0], backbone.layer4[0]]
    assert [b.avd for b in first] == [False, True, True, True]
    assert [b.avd_layer.stride for b in first[1:]] == [2, 1, 1]
    assert not any(b.avd for layer in (backbone.layer2, backbone.layer3) for b in list(layer)[1:])
    # shortcuts: average pooling (kernel = the stage's stride when undilated, 1 when dilated), then a 1x1 conv
    pools = [layer[0].downsample[0] for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)]
    assert [p.kernel_size for p in pools] == [1, 2, 1, 1] and all(p.ceil_mode and not p.count_include_pad for p in pools)
    assert [layer[0].downsample[1].stride for layer in (backbone.layer2, backbone.layer3)] == [(1, 1), (1, 1)]
    # dilation 1/2 in layer3's first/other blocks, 2/4 in layer4's (the reference's _make_layer)
    assert [backbone.layer3[0].conv2.conv.dilation, backbone.layer3[1].conv2.conv.dilation] == [(1, 1), (2, 2)]
    assert [backbone.layer4[0].conv2.conv.dilation, backbone.layer4[1].conv2.conv.dilation] == [(2, 2), (4, 4)]
    os16 = build_backbone("resnest50", output_stride=16)
    assert os16.layer3[0].downsample[0].kernel_size == 2 and os16.layer3[0].avd_layer.stride == 2
    assert [os16.layer4[0].conv2.conv.dilation, os16.layer4[1].conv2.conv.dilation] == [(1, 1), (2, 2)]


def test_split_attention_conv_shapes_and_names() -> None:
    block = build_backbone("resnest50").layer1[0]
    assert isinstance(block, SplitAttentionBottleneck)
    conv = block.conv2  # in 64, radix 2: the grouped conv gives 128 channels, fc1 has max(64 * 2 // 4, 32) = 32
    assert (conv.conv.out_channels, conv.conv.groups, conv.fc1.out_channels, conv.fc2.out_channels) == (128, 2, 32, 128)
    names = {k.split(".", 1)[1] for k in block.state_dict() if k.startswith("conv2.")}
    assert {"conv.weight", "bn0.weight", "fc1.weight", "fc1.bias", "bn1.running_var", "fc2.weight", "fc2.bias"} <= names


def test_radix_softmax_weighs_the_splits_of_each_channel() -> None:
    x = torch.randn(3, 2 * 5)  # (B, radix * C), splits laid out [split0 channels, split1 channels]
    out = RadixSoftmax(radix=2, cardinality=1)(x)
    pairs = torch.stack([x[:, :5], x[:, 5:]], dim=1).softmax(dim=1)  # softmax across the 2 splits per channel
    torch.testing.assert_close(out, torch.cat([pairs[:, 0], pairs[:, 1]], dim=1))
    assert torch.equal(RadixSoftmax(radix=1, cardinality=1)(x), torch.sigmoid(x))


def test_resnest_tiny_models_train_a_step() -> None:
    torch.manual_seed(0)
    for name in ("encnet_resnest_tiny", "deeplab_resnest_tiny", "fcn_resnest_tiny"):
        model = create_model(name, 4).train()
        out = model(torch.randn(2, 3, 32, 32))
        loss = out["out"].logsumexp(1).mean() + out["aux"].logsumexp(1).mean()
        loss.backward()
        grad = model.backbone.layer2[0].conv2.fc2.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name  # the attention path takes gradients
