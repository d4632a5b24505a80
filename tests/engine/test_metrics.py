"""ConfusionMatrix / metrics_from_confusion against a pixel-by-pixel reference written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from encnet_core.constants import IGNORE_INDEX
from encnet_core.engine.metrics import ConfusionMatrix, metrics_from_confusion


def reference_metrics(predictions: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> dict:
    """Counts TP/FP/FN per class by looping over pixels, then the textbook formulas."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    labelled = [0] * num_classes
    correct = total = 0
    for prediction, label in zip(predictions, labels, strict=True):
        for p, t in zip(prediction.reshape(-1).tolist(), label.reshape(-1).tolist(), strict=True):
            if t == IGNORE_INDEX:
                continue
            total += 1
            labelled[t] += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fn[t] += 1
                fp[p] += 1
    iou: list[float | None] = []
    for c in range(num_classes):
        union = tp[c] + fp[c] + fn[c]
        iou.append(tp[c] / union if union else None)
    present = [v for v in iou if v is not None]
    accs = [tp[c] / labelled[c] for c in range(num_classes) if labelled[c]]
    return {
        "pixAcc": correct / total,
        "mIoU": sum(present) / len(present),
        "mIoU_all": sum(v or 0.0 for v in iou) / num_classes,
        "mean_acc": sum(accs) / len(accs),
        "fwIoU": sum(labelled[c] / total * (iou[c] or 0.0) for c in range(num_classes)),
        "iou": iou,
        "acc": [tp[c] / labelled[c] if labelled[c] else None for c in range(num_classes)],
        "pixels": total,
    }


def _batches(seed: int = 0, count: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """7 classes: 4 only in predictions, 5 only in labels, 6 nowhere; ~15% ignore pixels."""
    rng = np.random.default_rng(seed)
    predictions, labels = [], []
    for _ in range(count):
        label = rng.choice([0, 1, 2, 3, 5], size=(2, 9, 11)).astype(np.int64)
        prediction = rng.choice([0, 1, 2, 3, 4], size=label.shape).astype(np.int64)
        agree = rng.random(label.shape) < 0.5
        prediction[agree & (label != 5)] = label[agree & (label != 5)]
        label[rng.random(label.shape) < 0.15] = IGNORE_INDEX
        prediction[label == IGNORE_INDEX] = 6 if rng.random() < 0.5 else 0  # ignored: must not count anywhere
        predictions.append(prediction)
        labels.append(label)
    return predictions, labels


def _assert_matches(metrics: dict, expected: dict) -> None:
    for key in ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    assert metrics["pixels"] == expected["pixels"]
    for key in ("iou", "acc"):
        assert len(metrics[key]) == len(expected[key])
        for got, want in zip(metrics[key], expected[key], strict=True):
            assert (got is None) == (want is None), key
            if want is not None:
                assert got == pytest.approx(want, abs=1e-12), key


def test_metrics_match_pixel_loop_reference() -> None:
    predictions, labels = _batches()
    confusion = ConfusionMatrix(7)
    for prediction, label in zip(predictions, labels, strict=True):
        confusion.update(torch.from_numpy(prediction), torch.from_numpy(label))
    expected = reference_metrics(predictions, labels, 7)
    metrics = confusion.compute()
    _assert_matches(metrics, expected)
    # the case shapes the fixture promises
    assert expected["iou"][6] is None and metrics["acc"][6] is None  # absent from both
    assert expected["iou"][4] == 0.0 and expected["acc"][4] is None  # predicted, never labelled
    assert expected["iou"][5] == 0.0 and expected["acc"][5] == 0.0  # labelled, never predicted
    assert metrics["mIoU"] == pytest.approx(sum(expected["iou"][:6]) / 6)
    assert metrics["mIoU_all"] == pytest.approx(sum(expected["iou"][:6]) / 7)
    # ignored pixels: none of their predictions (class 6 or 0) is counted
    matrix = confusion.matrix.numpy()
    assert matrix.sum() == sum(int((lab != IGNORE_INDEX).sum()) for lab in labels)
    assert matrix[:, 6].sum() == 0


def test_accumulating_batches_equals_one_update() -> None:
    predictions, labels = _batches(seed=3, count=4)
    stepwise = ConfusionMatrix(7)
    for prediction, label in zip(predictions, labels, strict=True):
        stepwise.update(torch.from_numpy(prediction), torch.from_numpy(label))
    at_once = ConfusionMatrix(7)
    at_once.update(torch.from_numpy(np.concatenate(predictions)), torch.from_numpy(np.concatenate(labels)))
    assert torch.equal(stepwise.matrix, at_once.matrix)
    assert stepwise.compute() == at_once.compute()
    # (H, W) maps as well as (B, H, W) batches
    single = ConfusionMatrix(7)
    for prediction, label in zip(predictions, labels, strict=True):
        for p, t in zip(prediction, label, strict=True):
            single.update(torch.from_numpy(p), torch.from_numpy(t))
    assert torch.equal(single.matrix, at_once.matrix)


def test_confusion_layout_rows_are_labels() -> None:
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor([[1, 1, 2, 0]]), torch.tensor([[0, 1, 2, IGNORE_INDEX]]))
    assert confusion.matrix.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_hand_computed_small_case() -> None:
    # label 0 0 1 1 ; prediction 0 1 1 1 -> IoU0 = 1/2, IoU1 = 2/3, class 2 absent
    matrix = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    metrics = metrics_from_confusion(matrix)
    assert metrics["pixAcc"] == pytest.approx(3 / 4)
    assert metrics["iou"][2] is None and metrics["acc"][2] is None
    assert metrics["iou"][:2] == pytest.approx([1 / 2, 2 / 3])
    assert metrics["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics["mIoU_all"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert metrics["mean_acc"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["fwIoU"] == pytest.approx(0.5 * 1 / 2 + 0.5 * 2 / 3)


def test_empty_confusion_is_all_zero_not_nan() -> None:
    metrics = metrics_from_confusion(torch.zeros(4, 4, dtype=torch.int64))
    for key in ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU"):
        assert metrics[key] == 0.0 and not math.isnan(metrics[key])
    assert metrics["iou"] == [None] * 4 and metrics["pixels"] == 0
