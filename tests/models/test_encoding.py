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


def test_fixed_scale_is_a_constant_buffer() -> None:
    """``fixed_scale`` (the paper's fixed s for classification): the naive formula with that s, no learnable scale."""
    layer = Encoding(6, 4, fixed_scale=-0.5).double()
    assert [n for n, _ in layer.named_parameters()] == ["codewords"] and list(layer.state_dict()) == ["codewords"]
    assert torch.equal(layer.scale, torch.full((4,), -0.5, dtype=torch.float64))
    with torch.no_grad():
        layer.codewords.normal_()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    fixed = torch.full((4,), -0.5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_encoding(x, layer.codewords, fixed), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda inp, cw: torch.func.functional_call(layer, {"codewords": cw}, (inp,)), (x, layer.codewords))
    layer.reset_parameters()
    assert torch.equal(layer.scale, fixed) and "fixed_scale=-0.5" in repr(layer)


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


def _forward_backward(layer: Encoding, x: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    """Output and the gradients of x, codewords and scale of ``(layer(x) * weight).sum()``."""
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    (out * weight).sum().backward()
    return [out.detach(), x.grad, layer.codewords.grad, layer.scale.grad]


def _naive_forward_backward(layer: Encoding, x: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    """The same, from the naive formula in float64."""
    x = x.detach().double().requires_grad_(True)
    cw = layer.codewords.detach().double().requires_grad_(True)
    sc = layer.scale.detach().double().requires_grad_(True)
    out = naive_encoding(x, cw, sc)
    (out * weight.double()).sum().backward()
    return [out.detach(), x.grad, cw.grad, sc.grad]


def _subnormal_case() -> tuple[Encoding, torch.Tensor, torch.Tensor]:
    """Codewords on a line at 0, 9.27, 9.5, 10 and 10.5 (scale -1). Half the descriptors sit near 0:
    their assignments to the far codewords are exp(-86) .. exp(-110), float32 numbers around and
    below the smallest normal one (subnormal or 0), and with a small upstream gradient so is the
    softmax gradient of the ones just above it. The other half sit between codewords 2 and 3 (soft
    assignments, which carry the scale gradient)."""
    torch.manual_seed(0)
    C, K = 16, 5
    layer = Encoding(C, K)
    direction = torch.ones(C) / C**0.5
    with torch.no_grad():
        layer.codewords.copy_(torch.tensor([0.0, 9.27, 9.5, 10.0, 10.5])[:, None] * direction)
        layer.scale.fill_(-1.0)
    x = 0.05 * torch.randn(2, C, 4, 4)
    x[:, :, 2:] += 9.75 * direction[:, None, None]
    weight = 0.01 * torch.randn(2, K, C)
    return layer, x, weight


def test_subnormal_assignments_are_flushed_without_changing_results() -> None:
    from encnet_core.models.layers import _encode

    layer, x, weight = _subnormal_case()
    tiny = torch.finfo(torch.float32).tiny
    # the case is what it claims: the float32 softmax of the naive formula has subnormal entries
    feats = x.flatten(2).transpose(1, 2)  # (B, N, C)
    naive32 = torch.softmax(layer.scale * ((feats[:, :, None] - layer.codewords) ** 2).sum(-1), dim=2).detach()
    assert ((naive32 > 0) & (naive32 < tiny)).sum() >= 16
    # ours holds none: they are zero
    flat = x.flatten(2)
    center = flat.mean(dim=(0, 2))
    assign = _encode(flat - center[:, None], layer.codewords.detach() - center, layer.scale.detach())[2]
    assert ((assign > 0) & (assign < tiny)).sum() == 0
    assert (assign == 0).sum() >= ((naive32 > 0) & (naive32 < tiny)).sum()
    # and every result matches float64 within the float32 tolerances of the other tests
    for mine, ref in zip(_forward_backward(layer, x, weight), _naive_forward_backward(layer, x, weight), strict=True):
        torch.testing.assert_close(mine.double(), ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_backward_flushes_subnormal_gradients() -> None:
    """The softmax gradient of the subnormal case holds subnormals in float32 unless flushed too (this
    test fails when only the assignment is flushed): no matrix product gets a subnormal operand."""
    from torch.utils._python_dispatch import TorchDispatchMode

    layer, x, weight = _subnormal_case()
    tiny = torch.finfo(torch.float32).tiny
    gemms = {torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default, torch.ops.aten.mm.default}
    found: list[int] = []

    class Operands(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in gemms:
                found.extend(int(((t != 0) & (t.abs() < tiny)).sum()) for t in args if isinstance(t, torch.Tensor))
            return func(*args, **(kwargs or {}))

    with Operands():
        _forward_backward(layer, x, weight)
    assert len(found) >= 12 and sum(found) == 0


def test_flush_keeps_normal_numbers() -> None:
    from encnet_core.models.layers import _flush_subnormals

    tiny = torch.finfo(torch.float32).tiny
    t = torch.tensor([0.0, tiny / 4, -tiny / 2, tiny * 2, -tiny * 2, 1e-30, -3.0, float("inf")])
    expected = torch.tensor([0.0, 0.0, 0.0, tiny * 2, -tiny * 2, 1e-30, -3.0, float("inf")])
    assert torch.equal(_flush_subnormals(t), expected)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_no_copy_into_another_layout(layout: torch.memory_format) -> None:
    """Forward + backward allocate exactly three (B, C, H, W)-sized tensors (the centred descriptors, their
    squares for the norms, and the input's gradient, written in the input's own layout) and copy none."""
    from torch.utils._python_dispatch import TorchDispatchMode

    B, C, H, W = 2, 12, 5, 7
    layer = Encoding(C, 4)  # no (B, 2K, N) operand has B*C*H*W elements
    x = torch.randn(B, C, H, W).relu_().contiguous(memory_format=layout).requires_grad_(True)
    big: list[str] = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in args if isinstance(t, torch.Tensor)}
            if isinstance(out, torch.Tensor) and out.numel() == B * C * H * W:
                if out.untyped_storage().data_ptr() not in inputs:  # a new tensor, not a view or in-place
                    big.append(func.__name__)
            return out

    with Allocations():
        layer(x).sum().backward()
    assert len(big) == 3, big
    assert not [name for name in big if "copy" in name or "clone" in name], big
    assert x.grad.is_contiguous(memory_format=layout)


def test_channels_last_input_matches_contiguous() -> None:
    torch.manual_seed(0)
    layer = Encoding(16, 6)
    x = torch.randn(2, 16, 5, 7).relu_()
    weight = torch.randn(2, 6, 16)
    plain = _forward_backward(layer, x, weight)
    cl = _forward_backward(layer, x.contiguous(memory_format=torch.channels_last), weight)
    for a, b in zip(cl, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
