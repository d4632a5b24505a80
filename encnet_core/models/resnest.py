"""ResNeSt's split-attention bottleneck (Zhang et al., "ResNeSt: Split-Attention Networks", 2020).

The layers follow the reference implementation (torch-encoding 1.2.1: ``encoding/nn/splat.py`` and the
``Bottleneck`` of ``encoding/models/backbone/resnet.py`` with ``radix=2, groups=1, bottleneck_width=64,
avd=True, avd_first=False``), with the same module and parameter names, so its ImageNet and segmentation
weights load with a prefix rename only:

* ``SplitAttentionConv2d`` (the reference's ``SplAtConv2d``): a grouped 3x3 convolution producing
  ``radix`` splits of the output channels, BatchNorm and ReLU; the splits are summed, globally pooled and
  passed through ``fc1`` (1x1 conv to ``max(in_channels * radix // 4, 32)`` channels) - BN - ReLU -
  ``fc2`` (1x1 conv back to ``channels * radix``); a softmax over the radix (``RadixSoftmax``, the
  reference's ``rSoftMax``) weighs the splits, whose weighted sum is the output.
* ``SplitAttentionBottleneck``: conv1x1 - BN - ReLU - split-attention conv3x3 - [avg pool] - conv1x1 - BN,
  plus the shortcut. "avd" (the reference's name): the stride of the block is taken by a 3x3 average pool
  (padding 1) after the split-attention conv instead of by the conv; the reference builds that pool in
  the first block of every stage after the first, also when the stage is dilated and its stride is 1 (a
  3x3 stride-1 average pool: encnet does the same, so the published weights see what they were trained on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RadixSoftmax", "SplitAttentionConv2d", "SplitAttentionBottleneck"]


class RadixSoftmax(nn.Module):
    """Softmax over the radix splits of each cardinal group (sigmoid when ``radix == 1``)."""

    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, x: Tensor) -> Tensor:
        batch = x.size(0)
        if self.radix > 1:
            x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)  # (B, radix, groups, C/groups)
            return F.softmax(x, dim=1).reshape(batch, -1)
        return torch.sigmoid(x)


class SplitAttentionConv2d(nn.Module):
    """Split-attention convolution: ``channels`` outputs from ``radix`` attention-weighted splits."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        inter_channels = max(in_channels * radix // reduction_factor, 32)
        self.radix = radix
        self.cardinality = groups
        self.channels = channels
        self.conv = nn.Conv2d(
            in_channels, channels * radix, kernel_size, stride, padding, dilation, groups=groups * radix, bias=False
        )
        self.bn0 = norm_layer(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter_channels, 1, groups=groups)
        self.bn1 = norm_layer(inter_channels)
        self.fc2 = nn.Conv2d(inter_channels, channels * radix, 1, groups=groups)
        self.rsoftmax = RadixSoftmax(radix, groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn0(self.conv(x)))  # (B, C * radix, H, W)
        batch, channel = x.shape[:2]
        if self.radix > 1:
            splits = torch.split(x, channel // self.radix, dim=1)  # radix x (B, C, H, W)
            gap = sum(splits)
        else:
            splits = (x,)
            gap = x
        gap = self.relu(self.bn1(self.fc1(F.adaptive_avg_pool2d(gap, 1))))  # (B, inter, 1, 1)
        attention = self.rsoftmax(self.fc2(gap)).view(batch, -1, 1, 1)  # (B, C * radix, 1, 1)
        if self.radix > 1:
            weights = torch.split(attention, channel // self.radix, dim=1)
            return sum(w * s for w, s in zip(weights, splits, strict=True)).contiguous()
        return (attention * x).contiguous()


class SplitAttentionBottleneck(nn.Module):
    """ResNeSt bottleneck (expansion 4) with the reference's parameter names.

    ``is_first``: the first block of a stage other than the first; with ``stride > 1`` or ``is_first``
    the block has ``avd_layer``, a 3x3 average pool with the block's stride, after the split-attention conv.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        is_first: bool = False,
        radix: int = 2,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.avd = stride > 1 or is_first
        if self.avd:
            self.avd_layer = nn.AvgPool2d(3, stride, padding=1)
            stride = 1
        self.conv2 = SplitAttentionConv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, radix=radix, norm_layer=norm_layer
        )
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm_layer(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avd:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)
