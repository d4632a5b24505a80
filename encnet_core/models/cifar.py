"""CIFAR classifiers: the paper's 14-layer EncNet (Encoding-based channel attention) and its SE twin.

Section "Image classification" of Zhang et al. (CVPR 2018): a shallow SE-ResNet whose SE block is
replaced by channel attention computed from the Encoding layer, with the smoothing factors fixed at
0.5; 14 layers, 3.45% error on CIFAR-10. The layout is read from the reference's recognition
experiments, PyTorch-Encoding v0.2.0 (commit 2294439740071913d263922f19142788d46683a5, 2018-03-20):
``experiments/recognition/model/encnetdrop.py`` (``Net``), ``model/mynn.py`` (``EncBasicBlock``,
``EncDropLayer``) and ``encoding/nn/encoding.py`` (``EncodingDrop``). The model files stay the same
(mynn.py only gains other layers) up to 5a1e3fbc, the parent of their removal in b872eb8. The
published CIFAR-10 model, "EncNet-32k128d" (3.35% error in the reference docs,
``docs/source/experiments/cifar.rst``), is ``--model encnetdrop --widen 8 --ncodes 32``, which is
``encnet_cifar14`` here.

Layout (``width`` = 16 x widen = 128, K = 32), 1 + 6 x 2 + 1 = 14 weight layers::

    stem     Conv3x3(3 -> 128, bias) - BN - ReLU                                  (B, 128, H, W)
    layer1   2 x Block(128), stride 1                                            (B, 128, H, W)
    layer2   2 x Block(256), the first with stride 2                             (B, 256, H/2, W/2)
    layer3   2 x Block(512), the first with stride 2                             (B, 512, H/4, W/4)
    head     BN - ReLU - global average pool - [Dropout] - Linear(512 -> classes) (B, classes)

    Block(C): Conv3x3(stride, no bias) - BN - ReLU - Conv3x3(no bias) - BN - attention(C)
              + shortcut (identity, or Conv1x1(stride, bias) when the shape changes) - ReLU

    EncAttention(C) (the reference's EncDropLayer), r = 4, D = C / r:
        Conv1x1(C -> D, bias) - BN - ReLU - Encoding(D, K, s = 0.5) - flatten (B, K*D)
        - L2 normalise - Linear(K*D -> C) - sigmoid = gamma;  out = x * gamma
    SEAttention(C) (Hu et al.'s squeeze-excitation, the baseline), r = 4:
        global average pool - Linear(C -> C/r) - ReLU - Linear(C/r -> C) - sigmoid = gamma;  out = x * gamma

Module names inside a block follow the reference (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``se``,
``residual_layer``; ``se.fc`` keeps the reference's indices).

Where we differ from, or go beyond, the reference (each one a choice, see docs/models.md):

- Smoothing. The paper fixes s = 0.5, and so do we, in training and evaluation
  (``Encoding(fixed_scale=-0.5)``, the reference's sign). The reference's ``EncodingDrop`` uses
  -0.5 only in eval mode; in training it redraws every s_k from U(0, 1) (scale U(-1, 0)) at
  each forward pass (a stochastic regulariser, like Shake-Shake).
- Softmax axis. v0.2.0 to v0.4.x normalised the assignments over the positions (softmax over dim 1
  of a (B, N, K) tensor), a bug the author acknowledged in PyTorch-Encoding PR #115 and fixed in
  v0.5.0 (f891919). Our Encoding layer uses the paper's softmax over the K codewords.
- Pooling. The reference's ``AvgPool2d(8)`` + view works only at 32 x 32 input; a global average
  pool is the same there and takes any input size (at least 8 x 8 keeps a 2 x 2 final map).
- SE baseline. The reference has no SE twin; ours keeps every layer of the block and swaps only
  the attention, with the same reduction r = 4 as the Encoding branch (Hu et al. use 16).
- Dropout. None in the reference (``dropout=0``); the option drops before the classifier.
- L2 normalisation: ``F.normalize`` with eps 1e-8 (the reference's last value; v0.2.0 had 1e-10).

``forward(x)`` takes (B, 3, H, W) floats and returns logits (B, classes).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from encnet_core.models.layers import Encoding

__all__ = ["EncAttention", "SEAttention", "EncBasicBlock", "CifarResNet", "PAPER_SMOOTHING"]

PAPER_SMOOTHING = 0.5  # the paper's fixed s_k: a_ik = softmax_k(-0.5 ||x_i - d_k||^2)


class L2Normalize(nn.Module):
    """``v / max(||v||_2, eps)`` over dim 1 (the reference's ``encoding.nn.Normalize``)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=1, eps=self.eps)


class EncAttention(nn.Module):
    """Channel attention from the Encoding layer: ``x * sigmoid(Linear(normalise(flatten(E))))``.

    ``fc`` keeps the indices of the reference's ``EncDropLayer.fc``: 0 Conv1x1, 1 BN, 2 ReLU,
    3 Encoding, 4 flatten, 5 L2 normalise, 6 Linear, 7 sigmoid.
    """

    def __init__(self, channels: int, num_codes: int = 32, reduction: int = 4, smoothing: float = PAPER_SMOOTHING) -> None:
        super().__init__()
        dim = channels // reduction
        self.fc = nn.Sequential(
            nn.Conv2d(channels, dim, 1),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            Encoding(dim, num_codes, fixed_scale=-smoothing),
            nn.Flatten(1),
            L2Normalize(),
            nn.Linear(num_codes * dim, channels),
            nn.Sigmoid(),
        )

    @property
    def encoding(self) -> Encoding:
        return self.fc[3]

    def forward(self, x: Tensor) -> Tensor:
        gamma = self.fc(x)  # (B, C); Encoding gives (B, K, D), flattened k-major to (B, K*D)
        return x * gamma[:, :, None, None].to(x.dtype)  # (B, C, H, W)


class SEAttention(nn.Module):
    """Squeeze-excitation (Hu et al. 2018): ``x * sigmoid(Linear(ReLU(Linear(mean_hw(x)))))``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gamma = self.fc(x)  # (B, C)
        return x * gamma[:, :, None, None]  # (B, C, H, W)


class EncBasicBlock(nn.Module):
    """Post-activation basic block with channel attention before the sum (the reference's ``EncBasicBlock``)."""

    def __init__(self, in_channels: int, channels: int, stride: int, attention: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = attention
        changes = in_channels != channels or stride != 1
        self.residual_layer = nn.Conv2d(in_channels, channels, 1, stride=stride) if changes else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C, H/s, W/s)
        out = self.se(self.bn2(self.conv2(out)))  # (B, C, H/s, W/s)
        shortcut = x if self.residual_layer is None else self.residual_layer(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3-stage CIFAR ResNet with channel attention in every block: ``attention="enc"`` (EncNet) or ``"se"``.

    ``width`` is the first stage's channels (doubled at each later stage), ``blocks`` the blocks per
    stage, ``num_codes`` the codewords K (``"enc"`` only), ``reduction`` the attention's channel
    reduction r, ``smoothing`` the fixed s of the Encoding layers, ``dropout`` before the classifier.
    """

    task = "classification"

    def __init__(
        self,
        num_classes: int,
        *,
        attention: str = "enc",
        width: int = 128,
        blocks: tuple[int, int, int] = (2, 2, 2),
        num_codes: int = 32,
        reduction: int = 4,
        smoothing: float = PAPER_SMOOTHING,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if attention not in ("enc", "se"):
            raise ValueError(f"attention must be 'enc' or 'se', got {attention!r}")
        self.num_classes = num_classes
        self.attention = attention
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages: list[nn.Sequential] = []
        in_ch = width
        for i, n in enumerate(blocks):
            ch = width * 2**i
            layers = []
            for j in range(n):
                attn = (
                    EncAttention(ch, num_codes, reduction, smoothing) if attention == "enc" else SEAttention(ch, reduction)
                )
                layers.append(EncBasicBlock(in_ch, ch, 2 if i > 0 and j == 0 else 1, attn))
                in_ch = ch
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.norm = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, 4*width, H/4, W/4)
        x = F.adaptive_avg_pool2d(self.norm(x), 1).flatten(1)  # (B, 4*width)
        return self.fc(self.dropout(x))  # (B, classes)

    def classifier_prefixes(self) -> tuple[str, ...]:
        """State-dict name prefixes of the layers whose shape depends on the class count."""
        return ("fc.",)

    def reset_classifier(self, num_classes: int) -> list[str]:
        """Replace the classifier by a freshly initialised one for ``num_classes`` classes; returns ``["fc"]``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.fc = nn.Linear(self.fc.in_features, num_classes)
        self.num_classes = num_classes
        if hasattr(self, "config"):
            self.config = {**self.config, "num_classes": num_classes}
        return ["fc"]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, attention={self.attention!r}"

    # set by create_model: the registered name and arguments, so checkpoints can rebuild the model
    config: dict[str, Any]
