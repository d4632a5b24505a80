"""The CIFAR classifiers: shapes, sizes against a hand count, the fixed-s Encoding attention against the
reference's formula written out here, gradients, the SE twin, and the registry's classification rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from encnet_core.errors import ModelError
from encnet_core.models import (
    CLASSIFIERS,
    CifarResNet,
    Encoding,
    count_flops,
    create_model,
    list_models,
    model_task,
)
from encnet_core.models.cifar import EncAttention, SEAttention

TINY = ["encnet_cifar_tiny", "se_cifar_tiny"]
SEGMENTATION_ONLY = {
    "aux": True,
    "se_loss": True,
    "lateral": True,
    "output_stride": 16,
    "align_corners": False,
    "backbone_weights": "imagenet",
    "head_channels": 64,
}


def test_registered_with_their_task() -> None:
    names = list_models()
    for name in ["encnet_cifar14", "se_cifar14", *TINY]:
        assert name in names and model_task(name) == "classification"
        assert create_model(name, 10).task == "classification"
    assert model_task("encnet_tiny") == "segmentation" and create_model("encnet_tiny", 3).task == "segmentation"
    assert model_task("fcn_resnet50") == "segmentation"
    with pytest.raises(ModelError, match="unknown model 'resnet9000'"):
        model_task("resnet9000")


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [(32, 32), (8, 8), (40, 24)])
def test_logits_shape_any_input_size(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, 10)
    x = torch.randn(2, 3, *size)
    out = model.train()(x)
    assert out.shape == (2, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def _hand_count(attention: str, width: int, num_codes: int, classes: int, reduction: int = 4) -> int:
    """Parameters of the 14-layer net, counted layer by layer from the reference's layout."""
    conv = lambda cin, cout, k, bias: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731

    def attn(c: int) -> int:
        d = c // reduction
        if attention == "se":
            return (c * d + d) + (d * c + c)  # Linear(C, C/r), Linear(C/r, C)
        # Conv1x1(C, D) + BN(D) + codewords (K, D), no scale parameter (s fixed) + Linear(K*D, C)
        return conv(c, d, 1, True) + bn(d) + num_codes * d + (num_codes * d * c + c)

    total = conv(3, width, 3, True) + bn(width)
    cin = width
    for stage in range(3):
        c = width * 2**stage
        for block in range(2):
            total += conv(cin, c, 3, False) + bn(c) + conv(c, c, 3, False) + bn(c) + attn(c)
            if cin != c or (stage > 0 and block == 0):
                total += conv(cin, c, 1, True)  # the strided 1x1 shortcut
            cin = c
    return total + bn(cin) + (cin * classes + classes)


@pytest.mark.parametrize(("name", "expected"), [("encnet_cifar14", 16_788_042), ("se_cifar14", 11_439_818)])
def test_full_models_parameter_counts(name: str, expected: int) -> None:
    with torch.device("meta"):
        model = create_model(name, 10)
    params = sum(p.numel() for p in model.parameters())
    spec = CLASSIFIERS[name]
    assert params == _hand_count(spec["attention"], spec["width"], spec.get("num_codes", 0), 10) == expected
    # weight layers: stem conv + 6 blocks x 2 conv3x3 + classifier (shortcuts and attention not counted)
    convs3 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    linear = [m for n, m in model.named_modules() if n == "fc"]
    assert len(convs3) + len(linear) == 14


def test_flops_counted_at_32() -> None:
    enc_params, enc_flops = count_flops("encnet_cifar_tiny", 10, 32)
    se_params, se_flops = count_flops("se_cifar_tiny", 10, 32)
    assert enc_params == sum(p.numel() for p in create_model("encnet_cifar_tiny", 10).parameters())
    assert 0 < se_flops < enc_flops and se_params < enc_params
    # the stem conv alone: 2 * 32*32 * 16 * 27 multiply-adds; the whole net costs more
    assert enc_flops > 2 * 32 * 32 * 16 * 27


def _reference_enc_layer(layer: EncAttention, x: torch.Tensor, s: float) -> torch.Tensor:
    """The reference's EncDropLayer in eval mode (mynn.py, encoding.py at PyTorch-Encoding v0.2.0), with the
    paper's softmax over codewords: e_k = sum_i exp(-s||r_ik||^2) / sum_j exp(-s||r_ij||^2) r_ik."""
    conv, bn = layer.fc[0], layer.fc[1]
    y = F.relu(F.batch_norm(F.conv2d(x, conv.weight, conv.bias), bn.running_mean, bn.running_var, bn.weight, bn.bias))
    B, D = y.shape[:2]
    X = y.reshape(B, D, -1).transpose(1, 2)  # (B, N, D)
    codewords = layer.fc[3].codewords  # (K, D)
    R = X[:, :, None, :] - codewords[None, None]  # (B, N, K, D): r_ik = x_i - d_k
    logits = -s * (R**2).sum(-1)  # (B, N, K)
    A = logits.exp() / logits.exp().sum(2, keepdim=True)  # over the K codewords
    E = (A[..., None] * R).sum(1)  # (B, K, D)
    v = E.reshape(B, -1)  # View(-1, D*K)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)  # Normalize()
    gamma = torch.sigmoid(v @ layer.fc[6].weight.T + layer.fc[6].bias)  # (B, C)
    return x * gamma[:, :, None, None]


def test_encoding_attention_uses_fixed_half_smoothing() -> None:
    model = create_model("encnet_cifar_tiny", 10).double()
    layer = model.layer2[0].se
    assert isinstance(layer, EncAttention)
    encoding = layer.encoding
    assert isinstance(encoding, Encoding) and encoding.fixed_scale == -0.5
    assert torch.equal(encoding.scale, torch.full((8,), -0.5, dtype=torch.float64))
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith("scale") for n in names) and not any(k.endswith("scale") for k in model.state_dict())
    with torch.no_grad():
        encoding.codewords.normal_()  # spread codewords: the assignments depend on s
        layer.fc[1].running_mean.uniform_(-0.5, 0.5)
        layer.fc[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, _reference_enc_layer(layer, x, 0.5), rtol=1e-10, atol=1e-12)
        # the check can tell s apart: the learnable reference init range U(0, 1) gives other values
        assert not torch.allclose(out, _reference_enc_layer(layer, x, 1.0), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(out, _reference_enc_layer(layer, x, 0.1), rtol=1e-4, atol=1e-6)
    # training mode uses the same s: two passes over the same batch agree (the reference redraws s)
    layer.train()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)


def test_gradients_reach_every_parameter() -> None:
    model = create_model("encnet_cifar_tiny", 10).train()
    x = torch.randn(2, 3, 32, 32)
    loss = F.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    encoding = model.layer3[1].se.encoding
    assert encoding.scale.grad is None and not encoding.scale.requires_grad


def test_se_twin_differs_only_in_the_attention() -> None:
    enc, se = create_model("encnet_cifar_tiny", 10), create_model("se_cifar_tiny", 10)
    blocks = lambda m: [b for layer in (m.layer1, m.layer2, m.layer3) for b in layer]  # noqa: E731
    assert all(isinstance(b.se, EncAttention) for b in blocks(enc)) and len(blocks(enc)) == 6
    assert all(isinstance(b.se, SEAttention) for b in blocks(se)) and len(blocks(se)) == 6
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items() if ".se." not in k}  # noqa: E731
    assert shapes(enc) == shapes(se)
    # the SE block: global average pool, C -> C/4 -> C, sigmoid gate
    attn = se.layer3[0].se
    x = torch.randn(2, 64, 4, 4)
    fc1, fc2 = attn.fc[2], attn.fc[4]
    gate = torch.sigmoid(F.linear(F.relu(F.linear(x.mean((2, 3)), fc1.weight, fc1.bias)), fc2.weight, fc2.bias))
    assert fc1.weight.shape == (16, 64)
    torch.testing.assert_close(attn(x), x * gate[:, :, None, None])


@pytest.mark.parametrize("option", sorted(SEGMENTATION_ONLY))
def test_registry_refuses_segmentation_options(option: str) -> None:
    with pytest.raises(ModelError, match=r"encnet_cifar_tiny is a classification model; options \['" + option):
        create_model("encnet_cifar_tiny", 10, **{option: SEGMENTATION_ONLY[option]})


def test_registry_classification_options_and_rebuild() -> None:
    with pytest.raises(ModelError, match="se_cifar_tiny has no Encoding layer"):
        create_model("se_cifar_tiny", 10, num_codes=4)
    with pytest.raises(ModelError, match="unknown model option"):
        create_model("encnet_cifar_tiny", 10, codes=4)
    model = create_model("encnet_cifar_tiny", 10, num_codes=4, dropout=0.2, aux=None, backbone_weights=None)
    assert model.config == {"name": "encnet_cifar_tiny", "num_classes": 10, "num_codes": 4, "dropout": 0.2}
    assert model.layer1[0].se.encoding.codewords.shape == (4, 4) and model.dropout.p == 0.2
    rebuilt = create_model(**model.config)
    rebuilt.load_state_dict(model.state_dict())  # strict: the config rebuilds the same layers
    assert isinstance(rebuilt, CifarResNet)
    assert create_model("se_cifar_tiny", 10, dropout=0.1).config["dropout"] == 0.1


def test_reset_classifier() -> None:
    model = create_model("encnet_cifar_tiny", 10)
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(model.classifier_prefixes())}
    assert model.reset_classifier(3) == ["fc"]
    assert model.num_classes == 3 and model.config["num_classes"] == 3
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in kept.items())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    create_model(**model.config).load_state_dict(state)
