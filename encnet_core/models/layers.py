"""EncNet building blocks: the Encoding layer, the Context Encoding Module and the heads.

Module and parameter names follow the reference implementation (PyTorch-Encoding), so its weights map
onto ours with a prefix rename only (see ``convert.py``).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Encoding", "Mean", "EncModule", "EncHead", "FCNHead", "ASPP", "DeepLabV3Head"]


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast for ``device_type`` (a no-op on devices without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _autocast_enabled(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _flush_subnormals(t: Tensor) -> Tensor:
    """``t`` with every entry of magnitude at most ``finfo.tiny`` (the subnormals) set to 0.

    A nearly one-hot soft assignment has many subnormal entries (and so has its gradient), and x86
    CPUs multiply those in slow microcode: every GEMM with such an operand runs several times slower.
    Zeroing them changes every result by less than 1e-38 absolute. Done here, in the kernel, not with
    the calling thread's flush-to-zero mode, which the BLAS worker threads do not share.
    """
    return F.hardshrink(t, torch.finfo(t.dtype).tiny)


def _encode(feats: Tensor, codes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """E (B, K, C), distances (B, K, N) and assignments (B, K, N) from centred descriptors (B, C, N).

    ``feats`` may have any strides (a view of the (B, C, H, W) map, channels-first or channels-last):
    the GEMMs read it in place, transposed where needed, and nothing is copied into another layout.
    """
    B, C, _ = feats.shape
    K = codes.shape[0]
    # ||x||^2 + ||d||^2 - 2 d.x in one GEMM per image (the codewords are shared: a stride-0 batch)
    norms = feats.square().sum(1).unsqueeze(1) + codes.square().sum(-1).unsqueeze(-1)  # (B, K, N)
    dist = torch.baddbmm(norms, codes.expand(B, K, C), feats, alpha=-2.0).clamp_min_(0.0)  # (B, K, N)
    assign = _flush_subnormals(torch.softmax(dist * scale.unsqueeze(-1), dim=1))  # (B, K, N), softmax over K
    # sum_i a_ik x_i - (sum_i a_ik) d_k
    encoded = torch.baddbmm(assign.sum(2, keepdim=True) * codes, assign, feats.transpose(1, 2), beta=-1.0)  # (B, K, C)
    return encoded, dist, assign


class _EncodingFunction(torch.autograd.Function):
    """``_encode`` with a hand-written backward: four GEMMs (one of them with stacked operands) and a
    few fused passes, instead of autograd's chain of elementwise gradients. The gradient of the
    descriptors is written straight into their own layout."""

    @staticmethod
    def forward(ctx, feats: Tensor, codes: Tensor, scale: Tensor) -> Tensor:
        encoded, dist, assign = _encode(feats, codes, scale)
        ctx.save_for_backward(feats, codes, scale, dist, assign)
        return encoded

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        feats, codes, scale, dist, assign = ctx.saved_tensors
        B, C, _ = feats.shape
        K = codes.shape[0]
        # E_k = sum_i a_ik x_i - (sum_i a_ik) d_k  =>  dL/da_ik = G_k.x_i - G_k.d_k
        d_assign = torch.baddbmm((grad * codes).sum(-1, keepdim=True), grad, feats, beta=-1.0)  # (B, K, N)
        # softmax over k of z_ik = s_k * dist_ik
        d_z = _flush_subnormals(assign * (d_assign - (assign * d_assign).sum(1, keepdim=True)))  # (B, K, N)
        d_scale = (d_z * dist).sum((0, 2)) if ctx.needs_input_grad[2] else None  # (K,); None for a fixed scale
        d_dist = _flush_subnormals(d_z * scale.unsqueeze(-1))  # (B, K, N); the clamp at 0 only bites at exact zeros
        # dx_i = sum_k a_ik G_k - 2 sum_k d_dist_ik d_k + 2 x_i sum_k d_dist_ik: one GEMM on stacked operands
        left = torch.cat([grad, codes.expand(B, K, C) * -2.0], 1)  # (B, 2K, C)
        right = torch.cat([assign, d_dist], 1)  # (B, 2K, N)
        if feats.stride(1) == 1 and C > 1:  # channels-last descriptors: (B, N, C) in memory
            d_feats = torch.bmm(right.transpose(1, 2), left).transpose(1, 2)  # (B, C, N) view of (B, N, C)
        else:
            d_feats = torch.bmm(left.transpose(1, 2), right)  # (B, C, N)
        d_feats.addcmul_(feats, d_dist.sum(1, keepdim=True), value=2.0)
        # dd_k = -(sum_i a_ik) G_k - 2 sum_i d_dist_ik x_i + 2 d_k sum_i d_dist_ik, summed over the batch
        d_codes = torch.baddbmm(assign.sum(2, keepdim=True) * grad, d_dist, feats.transpose(1, 2), beta=-1.0, alpha=-2.0)
        d_codes = d_codes.sum(0).addcmul_(codes, d_dist.sum((0, 2)).unsqueeze(-1), value=2.0)  # (K, C)
        return d_feats, d_codes, d_scale


class Encoding(nn.Module):
    """Residual encoding layer (Zhang et al. 2018, eq. 1-2).

    For descriptors x_i (the N = H*W positions of a (B, C, H, W) map), codewords d_k and smoothing
    factors s_k::

        a_ik = softmax_k(s_k * ||x_i - d_k||^2)
        e_k  = sum_i a_ik (x_i - d_k)

    Both terms are computed with matrix products, never materialising the (B, N, K, C) residuals:
    ``||x - d||^2 = ||x||^2 - 2 x.d + ||d||^2`` and ``E = A^T X - (sum_i a_ik) d_k``. Descriptors
    and codewords are first shifted by the batch's mean descriptor (distances and residual sums are
    invariant to a common shift), which keeps the expansion accurate for features with large norms;
    one shared shift keeps the codewords common to all images. The descriptors stay in the input's
    (B, C, N) layout (the GEMMs take transposed operands, no transposed copies), and assignment
    entries (and their gradients) below ``finfo.tiny`` are flushed to 0 (subnormals slow CPU GEMMs).
    Everything runs in float32 (or float64 for float64 input), also under autocast.

    ``fixed_scale``: None (default) learns ``scale``, a parameter (K,) in the reference's sign (it
    multiplies the squared distance, so it is negative). A number fixes every s_k to it instead, in
    the same sign: the paper's classification networks fix the smoothing at 0.5, i.e.
    ``a_ik = softmax_k(-0.5 ||x_i - d_k||^2)``, which is ``fixed_scale=-0.5``. The fixed value is a
    non-persistent buffer named ``scale`` (it takes no gradient and is not in the state dict).
    """

    scale: Tensor  # (K,): a parameter, or a buffer when fixed_scale is set

    def __init__(self, channels: int, num_codes: int, fixed_scale: float | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.num_codes = num_codes
        self.fixed_scale = fixed_scale
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))  # (K, C)
        if fixed_scale is None:
            self.scale = nn.Parameter(torch.empty(num_codes))  # (K,)
        else:
            self.register_buffer("scale", torch.empty(num_codes), persistent=False)  # (K,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: codewords U(-1/sqrt(KC), 1/sqrt(KC)), scale U(-1, 0) (or the fixed value)."""
        bound = 1.0 / math.sqrt(self.num_codes * self.channels)
        nn.init.uniform_(self.codewords, -bound, bound)
        if self.fixed_scale is None:
            nn.init.uniform_(self.scale, -1.0, 0.0)
        else:
            nn.init.constant_(self.scale, self.fixed_scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Encoding expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        with _no_autocast(x.device.type):
            flat = x.flatten(2)  # (B, C, N), a view in x's own memory layout
            # one shift for the whole batch: distances and residual sums are shift-invariant, and a
            # shared shift keeps the codewords (K, C) common to all images
            center = flat.detach().mean(dim=(0, 2), dtype=dtype)  # (C,)
            feats = flat - center.unsqueeze(-1)  # (B, C, N) in dtype (type promotion), x's strides
            codes = self.codewords.to(dtype) - center  # (K, C)
            scale = self.scale.to(dtype)  # (K,)
            if torch.is_grad_enabled() and any(t.requires_grad for t in (feats, codes, scale)):
                encoded = _EncodingFunction.apply(feats, codes, scale)  # hand-written backward
            else:
                encoded = _encode(feats, codes, scale)[0]  # inference, tracing and export: plain ops
        if not _autocast_enabled(x.device.type):
            encoded = encoded.to(x.dtype)  # e.g. a float16 model; under autocast the float32 result flows on
        return encoded

    def extra_repr(self) -> str:
        fixed = "" if self.fixed_scale is None else f", fixed_scale={self.fixed_scale}"
        return f"channels={self.channels}, num_codes={self.num_codes}{fixed}"


class Mean(nn.Module):
    """Mean over one dimension (the reference's ``encoding.nn.Mean``)."""

    def __init__(self, dim: int, keep_dim: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.keep_dim = keep_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(self.dim, keepdim=self.keep_dim)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, norm_layer: type[nn.Module]) -> nn.Sequential:
    """Conv (no bias) -> norm -> ReLU, the repeated unit of the heads."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        norm_layer(out_ch),
        nn.ReLU(inplace=True),
    )


class EncModule(nn.Module):
    """Context Encoding Module: channel attention from the encoded context, plus the SE logits.

    ``encoding``: Conv1x1 -> BN -> ReLU -> Encoding -> BatchNorm1d(K) -> ReLU -> mean over K (B, C);
    ``fc``: gamma = sigmoid(Linear(C, C)); output ReLU(x + x * gamma); ``selayer``: Linear(C, classes).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_codes: int = 32,
        se_loss: bool = True,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.encoding = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            norm_layer(channels),
            nn.ReLU(inplace=True),
            Encoding(channels, num_codes),
            nn.BatchNorm1d(num_codes),
            nn.ReLU(inplace=True),
            Mean(dim=1),
        )
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())
        self.selayer = nn.Linear(channels, num_classes) if se_loss else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        context = self.encoding(x)  # (B, C)
        gamma = self.fc(context)  # (B, C)
        out = F.relu(x + x * gamma[:, :, None, None].to(x.dtype))  # (B, C, H, W)
        se = self.selayer(context) if self.selayer is not None else None  # (B, classes)
        return out, se


class EncHead(nn.Module):
    """EncNet head on the backbone's last stage, with the optional lateral branch of the paper.

    ``in_channels`` are the channels of (layer2, layer3, layer4); only layer4 is used without
    ``lateral``. Returns (logits at feature resolution, SE logits or None).
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int],
        num_classes: int,
        *,
        channels: int = 512,
        num_codes: int = 32,
        se_loss: bool = True,
        lateral: bool = False,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        c2, c3, c4 = in_channels
        self.lateral = lateral
        self.conv5 = conv_bn_relu(c4, channels, 3, norm_layer)
        if lateral:
            self.connect = nn.ModuleList(
                [conv_bn_relu(c2, channels, 1, norm_layer), conv_bn_relu(c3, channels, 1, norm_layer)]
            )
            self.fusion = conv_bn_relu(3 * channels, channels, 3, norm_layer)
        self.encmodule = EncModule(channels, num_classes, num_codes, se_loss, norm_layer)
        self.conv6 = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, c2: Tensor, c3: Tensor, c4: Tensor) -> tuple[Tensor, Tensor | None]:
        feat = self.conv5(c4)  # (B, 512, h, w)
        if self.lateral:
            feat = self.fusion(torch.cat([feat, self.connect[0](c2), self.connect[1](c3)], dim=1))
        feat, se = self.encmodule(feat)
        return self.conv6(feat), se  # (B, classes, h, w), (B, classes) | None


class FCNHead(nn.Sequential):
    """FCN head: Conv3x3(C -> C/4)-BN-ReLU-Dropout(0.1)-Conv1x1(-> classes). Aux head and baseline."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            norm_layer(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017, "Rethinking Atrous Convolution"), as the reference's
    ``ASPP_Module``: a 1x1 branch ``b0``, three 3x3 branches ``b1``-``b3`` dilated by ``rates``, the
    image-pooling branch ``b4`` (global average, 1x1 conv, broadcast back), each to ``in_channels // 8``
    channels with BN and ReLU; concatenated and projected (1x1 conv, BN, ReLU, Dropout2d(0.5))."""

    def __init__(self, in_channels: int, rates: tuple[int, int, int], norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        out = in_channels // 8
        self.b0 = conv_bn_relu(in_channels, out, 1, norm_layer)
        for index, rate in enumerate(rates, start=1):
            setattr(self, f"b{index}", nn.Sequential(
                nn.Conv2d(in_channels, out, 3, padding=rate, dilation=rate, bias=False),
                norm_layer(out),
                nn.ReLU(inplace=True),
            ))  # fmt: skip
        self.b4 = _ImagePooling(in_channels, out, norm_layer)
        self.project = nn.Sequential(
            nn.Conv2d(5 * out, out, 1, bias=False),
            norm_layer(out),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)]  # 5 x (B, C/8, h, w)
        return self.project(torch.cat(branches, dim=1))


class _ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool -> 1x1 conv -> BN -> ReLU, broadcast to (h, w).
    The reference upsamples the 1x1 map bilinearly (align_corners=True), which repeats its one value."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: type[nn.Module]) -> None:
        super().__init__()
        self.gap = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.gap(x).expand(-1, -1, x.shape[-2], x.shape[-1])  # (B, C/8, h, w)


class DeepLabV3Head(nn.Module):
    """DeepLabV3 head, the reference's ``DeepLabV3Head``: ASPP, then Conv3x3 - BN - ReLU - Dropout - Conv1x1.

    ``rates``: the atrous rates; the reference uses 12/24/36 (the DeepLabV3 paper's rates at output
    stride 8; at output stride 16 the paper uses 6/12/18, which ``EncNet`` passes then).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        rates: tuple[int, int, int] = (12, 24, 36),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        inter = in_channels // 8
        self.aspp = ASPP(in_channels, rates, norm_layer)
        self.block = nn.Sequential(
            nn.Conv2d(inter, inter, 3, padding=1, bias=False),
            norm_layer(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.aspp(x))  # (B, classes, h, w)
