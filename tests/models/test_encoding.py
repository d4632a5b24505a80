"""The Encoding layer against the paper's formula, written naively in float64."""

from __future__ import annotations

import pytest
import torch

from encnet_core.models import Encoding


def naive_encoding(x: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e_k = sum_i softmax_k(s_k ||x_i - d_k||^2) (x_i - d_k), with explicit residuals (B, N, K, C)."""
    x = x.double()
    B, C = x.shape[:2]
    feats = x.reshape(B, C, -1).transpose(1, 2)  # (B, N, C)
    residuals = feats[:, :, None, :] - codewords.double()[None, None]  # (B, N, K, C)
    dist = (residuals**2).sum(-1)  # (B, N, K)
    assign = torch.softmax(scale.double() * dist, dim=2)  # (B, N, K)
    return (assign[..., None] * residuals).sum(1)  # (B, K, C)


def test_parameters_and_reference_init() -> None:
    layer = Encoding(64, 16)
    assert layer.codewords.shape == (16, 64) and layer.scale.shape == (16,)
    bound = 1 / (16 * 64) ** 0.5
    assert layer.codewords.abs().max() <= bound
    assert layer.codewords.abs().max() > 0.8 * bound  # actually spread over the range
    assert (layer.scale <= 0).all() and (layer.scale >= -1).all()


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 16, 3, 3), (3, 4, 1, 9)])
def test_matches_naive_formula_float64(shape: tuple[int, int, int, int]) -> None:
    B, C, H, W = shape
    layer = Encoding(C, 6).double()
    with torch.no_grad():
        layer.codewords.normal_()
    x = torch.randn(*shape, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (B, 6, C) and out.dtype == torch.float64
    torch.testing.assert_close(out, naive_encoding(x, layer.codewords, layer.scale), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("offset", [30.0, 300.0])
def test_large_norm_inputs_float32(offset: float) -> None:
    """Features with a large common offset (||x|| >> ||x - d||) stay accurate in float32."""
    C, K = 64, 8
    layer = Encoding(C, K)
    with torch.no_grad():
        layer.codewords.copy_(offset + torch.randn(K, C))
        layer.scale.uniform_(-0.05, -0.01)
    x = offset + torch.randn(2, C, 6, 6)
    expected = naive_encoding(x, layer.codewords, layer.scale)
    out = layer(x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def test_large_norm_inputs_float64_exact() -> None:
    layer = Encoding(32, 4).double()
    with torch.no_grad():
        layer.codewords.normal_(std=50.0)
    x = 1e3 * torch.randn(2, 32, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_encoding(x, layer.codewords, layer.scale), rtol=1e-8, atol=1e-6)


def test_gradcheck() -> None:
    layer = Encoding(5, 3).double()
    with torch.no_grad():
        layer.codewords.normal_()
    x = torch.randn(2, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, cw, s: _functional(layer, inp, cw, s), (x, layer.codewords, layer.scale))


def _functional(layer: Encoding, x: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(layer, {"codewords": codewords, "scale": scale}, (x,))


def test_gradients_match_naive() -> None:
    layer = Encoding(12, 5).double()
    x = torch.randn(2, 12, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 5, 12, dtype=torch.float64)
    (layer(x) * weight).sum().backward()
    ours = (x.grad.clone(), layer.codewords.grad.clone(), layer.scale.grad.clone())
    x2 = x.detach().clone().requires_grad_(True)
    cw = layer.codewords.detach().clone().requires_grad_(True)
    sc = layer.scale.detach().clone().requires_grad_(True)
    (naive_encoding(x2, cw, sc) * weight).sum().backward()
    for mine, ref in zip(ours, (x2.grad, cw.grad, sc.grad), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-9)


def test_bfloat16_autocast_on_cpu_computes_in_float32() -> None:
    layer = Encoding(32, 8)
    x = torch.randn(2, 32, 5, 5)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    # only the input rounding to bfloat16 differs
    torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2 * reference.abs().max().item())
    out.sum().backward()
    assert layer.codewords.grad is not None and torch.isfinite(layer.codewords.grad).all()


def test_no_four_dimensional_intermediate() -> None:
    """No tensor of B*N*K*C elements is ever allocated (checked through the autograd graph's saved tensors)."""
    B, C, K, H, W = 2, 16, 8, 6, 6
    layer = Encoding(C, K)
    x = torch.randn(B, C, H, W, requires_grad=True)
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert sizes and max(sizes) < B * H * W * K * C / 4
