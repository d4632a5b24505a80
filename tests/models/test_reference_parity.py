"""Our FCN, DeepLabV3 and EncNet on ResNeSt give the reference's own outputs (torch-encoding 1.2.1's code).

Each case builds the reference's model with its own code (tests/reference_code.py: the wheel named by
ENCNET_TORCH_ENCODING; skipped without it), with its own random initialisation (fixed seed) and mildly
randomised BatchNorm statistics and affine parameters, converts its ``state_dict`` with
``convert_pytorch_encoding_state_dict``, loads it strictly into ``create_model`` and compares, within
1e-4 relative (max abs difference / max abs value):

* eval mode: the logits (``out``);
* train mode: ``out``, ``aux`` and, for EncNet, ``se``; then every BatchNorm running statistic (and every
  other tensor of the state_dict) after that train-mode forward.

Dropout is left on (p = 0.1, and ASPP's Dropout2d p = 0.5): both models draw their dropout masks in the
same order (head, then auxiliary head) from the global generator, so seeding it identically before each
forward gives both the same masks.

``norm_layer``: the reference's default is its SyncBatchNorm (compiled kernels in train mode); the cases
use ``nn.BatchNorm2d``, in a subclass that also takes the 3-D input (B, K, D) of the reference's
EncModule, whose ``norm_layer(ncodes)`` follows the Encoding layer (its SyncBatchNorm takes any shape;
``nn.BatchNorm2d`` refuses 3-D). For 3-D input that is exactly ``nn.BatchNorm1d``, which our EncModule
uses there. The Encoding layer's compiled kernels are pure-PyTorch stand-ins (``encoding_kernels``).
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_code import encoding_kernels, reference_package
from torch import nn

from encnet_core.models import convert_pytorch_encoding_state_dict, create_model
from encnet_core.models.backbones import build_backbone, load_backbone_weights

TOLERANCE = 1e-4
NCLASS = 59


class ReferenceBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also takes (B, C, L) input, as the reference's SyncBatchNorm does."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.dim()}D input)")


@pytest.fixture(scope="module")
def encoding(tmp_path_factory: pytest.TempPathFactory):
    return reference_package(tmp_path_factory.mktemp("torch_encoding"))


def randomise_norms(model: nn.Module, seed: int = 1) -> None:
    """Mildly random BatchNorm running statistics and affine parameters (the reference's init sets 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=gen) * 0.1)


def relative(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """max |expected - actual| / max |expected|, after checking shapes and that expected is not degenerate."""
    assert expected.shape == actual.shape
    scale = expected.abs().max().item()
    assert math.isfinite(scale) and scale > 1e-3, scale  # a meaningful comparison: not all zeros, no inf/nan
    return (expected - actual).abs().max().item() / scale


def reference_model(encoding, family: str, backbone: str, lateral: bool) -> nn.Module:
    sseg = encoding.models.sseg
    arguments = {"aux": True, "norm_layer": ReferenceBatchNorm}
    if family == "fcn":
        return sseg.fcn.FCN(NCLASS, backbone, **arguments)
    if family == "deeplab":
        return sseg.deeplab.DeepLabV3(NCLASS, backbone, **arguments)
    return sseg.encnet.EncNet(NCLASS, backbone, se_loss=True, lateral=lateral, **arguments)


# (family, backbone, lateral): EncNet with the published PASCAL Context models' lateral branch, and once without
CASES = [(f, b, f == "encnet") for b in ("resnest50", "resnest101") for f in ("fcn", "deeplab", "encnet")]
CASES.append(("encnet", "resnest50", False))


@pytest.mark.parametrize("family,backbone,lateral", CASES, ids=lambda v: str(v))
def test_logits_and_running_stats_equal_the_reference(encoding, family: str, backbone: str, lateral: bool) -> None:
    torch.manual_seed(0)  # the reference's own initialisation, deterministic
    reference = reference_model(encoding, family, backbone, lateral)
    randomise_norms(reference)
    model = create_model(f"{family}_{backbone}", NCLASS, **({"lateral": lateral} if family == "encnet" else {}))
    model.load_state_dict(convert_pytorch_encoding_state_dict(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    with torch.no_grad(), encoding_kernels(encoding):
        reference.eval()
        model.eval()
        expected, actual = reference(x), model(x)
        error = relative(expected[0], actual["out"])
        assert error < TOLERANCE, f"eval out: {error:.2e}"

        reference.train()
        model.train()
        torch.manual_seed(3)
        expected = reference(x)
        torch.manual_seed(3)
        actual = model(x)
    names = ["out", "se", "aux"] if family == "encnet" else ["out", "aux"]  # the reference's output order
    assert sorted(actual) == sorted(names) and len(expected) == len(names)
    for name, value in zip(names, expected, strict=True):
        error = relative(value, actual[name])
        assert error < TOLERANCE, f"train {name}: {error:.2e}"

    converted = convert_pytorch_encoding_state_dict(reference.state_dict())
    state = model.state_dict()
    assert list(converted) == list(state)
    for key, value in converted.items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == state[key].item() == 1, key
        elif key.endswith(("running_mean", "running_var")):
            error = relative(value, state[key])
            assert error < TOLERANCE, f"{key} after a train-mode forward: {error:.2e}"
        else:
            assert torch.equal(value, state[key]), key  # parameters: untouched by a forward


def test_imagenet_backbone_loads_and_gives_the_reference_features(encoding) -> None:
    """The reference's resnest50() (ImageNet classifier, undilated) state_dict loads into our backbone with
    nothing missing or unexpected (its fc dropped), and our dilated stages c1..c4 equal the reference's
    ``dilated=True`` network run as its BaseNet.base_forward does."""
    resnest = encoding.models.backbone.resnest
    torch.manual_seed(0)
    imagenet = resnest.resnest50()
    randomise_norms(imagenet)
    state = imagenet.state_dict()
    assert {"fc.weight", "fc.bias"} <= set(state)

    ours = build_backbone("resnest50")
    assert load_backbone_weights(ours, "resnest50", state) == {"missing": [], "unexpected": []}
    loaded = ours.state_dict()
    assert list(loaded) == [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)

    dilated = resnest.resnest50(dilated=True)
    dilated.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def stages(net: nn.Module) -> list[torch.Tensor]:  # BaseNet.base_forward of the reference
        out = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        features = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            out = layer(out)
            features.append(out)
        return features

    for mode in ("eval", "train"):
        dilated.train(mode == "train")
        ours.train(mode == "train")
        with torch.no_grad():
            expected, actual = stages(dilated), ours(x)
        assert [tuple(f.shape) for f in actual] == [(2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 8, 8), (2, 2048, 8, 8)]
        for index, (e, a) in enumerate(zip(expected, actual, strict=True), start=1):
            error = relative(e, a)
            assert error < TOLERANCE, f"{mode} c{index}: {error:.2e}"


def test_kernel_stand_ins_compute_the_documented_formulas() -> None:
    """scaled_l2[b,i,k] = S[k] ||X[b,i] - C[k]||^2 and aggregate[b,k] = sum_i A[b,i,k] (X[b,i] - C[k]), by hand."""
    from reference_code import _aggregate, _scaled_l2

    X = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])  # B=1, N=2, D=2
    C = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -2.0]])  # K=3
    S = torch.tensor([1.0, -0.5, 2.0])
    assert _scaled_l2(X, C, S).tolist() == [[[5.0, -0.5, 2 * 17.0], [10.0, -0.5 * 8.0, 2 * 2.0]]]
    A = torch.tensor([[[0.5, 1.0, 0.0], [0.25, 0.0, 2.0]]])
    # k=0: 0.5*(1,2) + 0.25*(3,-1); k=1: 1*((1,2)-(1,1)); k=2: 2*((3,-1)-(2,-2))
    assert _aggregate(A, X, C).tolist() == [[[1.25, 0.75], [0.0, 1.0], [2.0, 2.0]]]
