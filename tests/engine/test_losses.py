"""SegmentationLoss and se_targets against hand computations."""

from __future__ import annotations

import math

import torch

from encnet_core.engine.losses import SegmentationLoss, se_targets


def test_se_targets_against_loop() -> None:
    labels = torch.randint(0, 6, (4, 9, 7))
    labels[0] = 255
    labels[1, :3] = 255
    labels[2] = 2
    labels[3, 0, 0] = 17  # out of range: ignored like the reference's histc range
    expected = torch.zeros(4, 6)
    for b in range(4):
        for value in labels[b].unique().tolist():
            if 0 <= value < 6:
                expected[b, value] = 1
    assert torch.equal(se_targets(labels, 6), expected)
    assert se_targets(labels, 6)[0].sum() == 0


def test_loss_against_hand_computation() -> None:
    # one image of 1x2 pixels, 2 classes; second pixel ignored
    out = torch.tensor([[[[2.0, 5.0]], [[0.0, -1.0]]]])  # (1, 2, 1, 2)
    aux = torch.tensor([[[[0.0, 0.0]], [[1.0, 3.0]]]])
    se = torch.tensor([[0.5, -1.0]])
    labels = torch.tensor([[[1, 255]]])
    criterion = SegmentationLoss(se_weight=0.2, aux_weight=0.4)
    total, parts = criterion({"out": out, "aux": aux, "se": se}, labels)
    seg = -math.log(math.exp(0.0) / (math.exp(2.0) + math.exp(0.0)))
    aux_ce = -math.log(math.exp(1.0) / (math.exp(0.0) + math.exp(1.0)))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # class 0 absent (target 0), class 1 present (target 1)
    bce = (-math.log(1 - sig(0.5)) - math.log(sig(-1.0))) / 2
    assert math.isclose(parts["seg"].item(), seg, rel_tol=1e-6)
    assert math.isclose(parts["aux"].item(), aux_ce, rel_tol=1e-6)
    assert math.isclose(parts["se"].item(), bce, rel_tol=1e-6)
    assert math.isclose(total.item(), seg + 0.4 * aux_ce + 0.2 * bce, rel_tol=1e-6)


def test_missing_heads_and_all_ignored() -> None:
    criterion = SegmentationLoss()
    out = torch.randn(2, 3, 4, 4, requires_grad=True)
    total, parts = criterion({"out": out}, torch.full((2, 4, 4), 255))
    assert set(parts) == {"seg"} and total.item() == 0.0
    total.backward()
    assert torch.isfinite(out.grad).all()


def test_loss_under_bf16_autocast_is_float32() -> None:
    out = torch.randn(2, 3, 4, 4).bfloat16()
    total, _ = SegmentationLoss()({"out": out}, torch.randint(0, 3, (2, 4, 4)))
    assert total.dtype == torch.float32
