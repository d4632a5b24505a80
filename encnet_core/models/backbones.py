"""Dilated ResNet backbones (output stride 8 or 16), torchvision-compatible parameter names.

* ``resnet18/34/50/101/152``: torchvision's ResNets (7x7 stem). ResNet-18/34 use a BasicBlock that
  accepts dilation (torchvision's refuses it) with the same parameter names, so torchvision weights load.
* ``resnet50s/101s/152s``: PyTorch-Encoding's deep stem (three 3x3 convs, 128 channels into layer1).
* ``resnest50/101/200/269``: ResNeSt (split-attention bottlenecks with radix 2, deep stem of width 32
  for ResNeSt-50 and 64 for the others, average-pool downsampling in the shortcuts, "avd" pooling in the
  blocks; models/resnest.py), as the reference builds them (``encoding/models/backbone/resnest.py``).
* ``tiny``: a 4-stage BasicBlock net with one block per stage and narrow widths, for tests and CPU demos.
* ``resnest_tiny``: a ResNeSt with one split-attention block per stage and narrow widths, for tests.

Dilation follows the reference: for output stride 8, layer3 has stride 1 and dilation 2 and layer4
stride 1 and dilation 4, the first block of each stage keeping the previous stage's dilation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from encnet_core.errors import ModelError
from encnet_core.models.resnest import SplitAttentionBottleneck

log = logging.getLogger("encnet")

__all__ = ["BackboneSpec", "BACKBONES", "ResNetBackbone", "BasicBlock", "build_backbone", "load_backbone_weights"]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (same parameter names) with dilation support."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of one backbone."""

    block: str  # "basic", "bottleneck" or "splat" (ResNeSt's split-attention bottleneck, radix 2)
    layers: tuple[int, int, int, int]  # blocks per stage
    deep_stem: bool = False  # PyTorch-Encoding's 3x conv3x3 stem (the "s" variants and ResNeSt)
    width: int = 64  # channels of the first stage (before expansion)
    torchvision_name: str | None = None  # name in torchvision.models, for ImageNet weights
    stem_width: int | None = None  # deep stem: channels of its first two convs (its output has twice that); None = width
    avg_down: bool = False  # shortcut downsampling by average pooling, then a stride-1 1x1 conv (ResNet-D, ResNeSt)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("basic", (2, 2, 2, 2), torchvision_name="resnet18"),
    "resnet34": BackboneSpec("basic", (3, 4, 6, 3), torchvision_name="resnet34"),
    "resnet50": BackboneSpec("bottleneck", (3, 4, 6, 3), torchvision_name="resnet50"),
    "resnet101": BackboneSpec("bottleneck", (3, 4, 23, 3), torchvision_name="resnet101"),
    "resnet152": BackboneSpec("bottleneck", (3, 8, 36, 3), torchvision_name="resnet152"),
    "resnet50s": BackboneSpec("bottleneck", (3, 4, 6, 3), deep_stem=True),
    "resnet101s": BackboneSpec("bottleneck", (3, 4, 23, 3), deep_stem=True),
    "resnet152s": BackboneSpec("bottleneck", (3, 8, 36, 3), deep_stem=True),
    "resnest50": BackboneSpec("splat", (3, 4, 6, 3), deep_stem=True, stem_width=32, avg_down=True),
    "resnest101": BackboneSpec("splat", (3, 4, 23, 3), deep_stem=True, avg_down=True),
    "resnest200": BackboneSpec("splat", (3, 24, 36, 3), deep_stem=True, avg_down=True),
    "resnest269": BackboneSpec("splat", (3, 30, 48, 8), deep_stem=True, avg_down=True),
    "tiny": BackboneSpec("basic", (1, 1, 1, 1), width=16),
    "resnest_tiny": BackboneSpec("splat", (1, 1, 1, 1), deep_stem=True, width=16, stem_width=8, avg_down=True),
}
_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "splat": SplitAttentionBottleneck}


class ResNetBackbone(nn.Module):
    """A dilated ResNet without its classifier; ``forward`` returns the four stage outputs."""

    def __init__(self, spec: BackboneSpec, output_stride: int = 8, norm_layer: type[nn.Module] = nn.BatchNorm2d):
        super().__init__()
        if output_stride not in (8, 16):
            raise ModelError(f"output_stride must be 8 or 16, got {output_stride}")
        block = _BLOCKS[spec.block]
        self._norm_layer = norm_layer
        self._avg_down = spec.avg_down
        self.dilation = 1
        width = spec.width
        if spec.deep_stem:
            stem = spec.stem_width or width  # 64 -> 64 -> 128 as in PyTorch-Encoding (ResNeSt-50: 32 -> 32 -> 64)
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, stem, 3, 2, 1, bias=False),
                norm_layer(stem),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem, stem, 3, 1, 1, bias=False),
                norm_layer(stem),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem, stem * 2, 3, 1, 1, bias=False),
            )
            self.inplanes = stem * 2
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.inplanes = width
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        dilate3, dilate4 = (True, True) if output_stride == 8 else (False, True)
        self.layer1 = self._make_layer(block, width, spec.layers[0], first_stage=True)
        self.layer2 = self._make_layer(block, width * 2, spec.layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, spec.layers[2], stride=2, dilate=dilate3)
        self.layer4 = self._make_layer(block, width * 8, spec.layers[3], stride=2, dilate=dilate4)
        exp = block.expansion
        self.channels = (width * exp, width * 2 * exp, width * 4 * exp, width * 8 * exp)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1, dilate: bool = False, first_stage: bool = False
    ):
        norm_layer = self._norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            if self._avg_down:  # the reference: AvgPool(stride) undilated, else AvgPool(1) (a no-op kept for the indices)
                pool = stride if self.dilation == 1 else 1
                downsample = nn.Sequential(
                    nn.AvgPool2d(pool, pool, ceil_mode=True, count_include_pad=False),
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, 1, bias=False),
                    norm_layer(planes * block.expansion),
                )
            else:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    norm_layer(planes * block.expansion),
                )
        extra = {"is_first": not first_stage} if block is SplitAttentionBottleneck else {}
        layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation, norm_layer=norm_layer, **extra)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)  # (B, C1, H/4, W/4)
        c2 = self.layer2(c1)  # (B, C2, H/8, W/8)
        c3 = self.layer3(c2)  # (B, C3, H/8 or H/16, ...)
        c4 = self.layer4(c3)  # (B, C4, H/8 or H/16, ...)
        return c1, c2, c3, c4


def build_backbone(name: str, output_stride: int = 8) -> ResNetBackbone:
    """A randomly initialised backbone by name (see ``BACKBONES``)."""
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return ResNetBackbone(BACKBONES[name], output_stride)


def load_backbone_weights(
    backbone: ResNetBackbone, name: str, state: Mapping[str, Tensor], source: str = "a state_dict"
) -> dict[str, list[str]]:
    """Load an ImageNet state_dict into ``backbone`` (``name``: its architecture; ``source``: what the
    messages call the weights). weights/builder.py reads them from a file, torchvision or the zoo.

    Accepts torchvision state_dicts and PyTorch-Encoding ones (``module.``/``pretrained.`` prefixes);
    the classifier (``fc.*``) is dropped. Returns and logs the missing and unexpected keys; a shape
    mismatch is an error (wrong architecture).
    """
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "pretrained.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("fc."):
            cleaned[key] = value
    own = backbone.state_dict()
    bad = [k for k, v in cleaned.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ModelError(
            f"backbone weights do not fit {name!r}: {bad[0]} has shape {tuple(cleaned[bad[0]].shape)}, "
            f"expected {tuple(own[bad[0]].shape)} ({len(bad)} mismatches)"
        )
    result = backbone.load_state_dict(cleaned, strict=False)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    if report["missing"]:
        log.warning("backbone weights: %d missing keys (kept at init), e.g. %s", len(report["missing"]), report["missing"][:3])
    if report["unexpected"]:
        log.warning("backbone weights: %d unexpected keys ignored, e.g. %s", len(report["unexpected"]), report["unexpected"][:3])
    loaded = len(own) - len(report["missing"])
    log.info("backbone weights: loaded %d/%d tensors from %s", loaded, len(own), source)
    return report
