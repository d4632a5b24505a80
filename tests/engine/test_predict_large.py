"""predict's bounded-memory path: logits kept at the head's resolution, resized a class at a time,
banded overlays and counts; the masks must equal the straightforward computation pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from encnet_core.data.synthetic import CLASSES, PALETTE
from encnet_core.engine import masks as predict_module
from encnet_core.engine.masks import PredictOptions, overlay_image, predict, upsampled_labels
from encnet_core.models import create_model
from encnet_core.viz import draw_legend, legend_entries
from encnet_core.weights.checkpoint import save_checkpoint
from encnet_core.weights.metadata import ModelMetadata
from encnet_core.weights.model_files import load_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained encnet_tiny (14 classes, seed 0) saved as a weights file, as the benchmark does."""
    torch.manual_seed(0)
    model = create_model("encnet_tiny", len(CLASSES)).eval()
    meta = ModelMetadata(model_config=model.config, classes=CLASSES, palette=PALETTE.tolist(), base_size=128, crop_size=112)
    path = tmp_path_factory.mktemp("large") / "tiny.pt"
    save_checkpoint({**meta.to_dict(), "kind": "weights", "model": model.state_dict()}, path)
    return path


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth colour gradients, blocks and noise: the random tiny model then predicts several classes."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    blocks = rng.integers(0, 256, (6, 8, 3)).astype(np.float32)[(y * 6 // h).astype(int), (x * 8 // w).astype(int)]
    noise = rng.normal(0, 20, (h, w, 3)).astype(np.float32)
    return np.clip(blocks * 0.6 + (y / h * 200)[..., None] * 0.4 + noise, 0, 255).astype(np.uint8)


def _old_masks_and_overlay(model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What predict computed before: full-resolution logits from run(), argmax, float overlay."""
    images = model.normalize(torch.from_numpy(rgb[None].copy()).permute(0, 3, 1, 2))
    logits, _ = model.run(images)
    labels = logits.float().argmax(1)[0].to(torch.uint8).numpy()
    colours = model.palette[labels]
    blended = (rgb.astype(np.float32) * 0.5 + colours.astype(np.float32) * 0.5).round().astype(np.uint8)
    return labels, blended


def test_masks_equal_the_full_resolution_path_on_a_1200x900_photo(weights: Path, tmp_path: Path, monkeypatch) -> None:
    model = load_model(weights, CPU)
    rgb = _photo(900, 1200)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    expected, blended = _old_masks_and_overlay(model, rgb)
    assert len(np.unique(expected)) >= 3  # a real test: several classes predicted
    calls = []
    monkeypatch.setattr(predict_module, "UPSAMPLE_ELEMENTS", 1 << 20)  # force the class-at-a-time path at this size
    monkeypatch.setattr(predict_module, "BAND_PIXELS", 50_000)  # and many overlay / count bands
    upsample = model.upsample
    model.upsample = lambda logits, size: calls.append(logits.shape[1]) or upsample(logits, size)
    out = tmp_path / "out"
    result = predict(model, [tmp_path / "photo.png"], PredictOptions(output=out, overlay=True, mask_format="index", min_share=0))
    assert calls == [1] * len(CLASSES)  # one class at a time, never the whole map
    with Image.open(out / "photo.png") as png:
        assert np.array_equal(np.asarray(png), expected)
    shares = {item["index"]: item["share"] for item in result.predictions["photo"]["classes_by_pixels"]}
    counts = np.bincount(expected.reshape(-1), minlength=len(CLASSES))
    assert shares == {c: round(counts[c] / expected.size, 5) for c in range(len(CLASSES))}  # min_share 0: all listed
    old_overlay = draw_legend(Image.fromarray(blended), legend_entries(expected, model.classes, model.palette))[0]
    assert np.array_equal(np.asarray(overlay_image(rgb, expected, model, 0.5)), np.asarray(old_overlay))
    report = json.loads((out / "predictions.json").read_text())
    assert report["images"]["photo"]["size"] == [900, 1200]


def test_class_at_a_time_argmax_keeps_argmax_rules(weights: Path) -> None:
    """Ties go to the first class and NaN counts as the maximum, as torch.argmax does."""
    model = load_model(weights, CPU)
    lowres = torch.randn(2, 14, 9, 11)
    lowres[:, 5] = lowres[:, 2]  # exact ties between classes 2 and 5
    lowres[0, 7, 3, 4] = float("nan")
    lowres[1, :, 0, 0] = float("nan")
    size = (37, 41)
    full = F.interpolate(lowres, size, mode="bilinear", align_corners=True).argmax(1)
    old_limit = predict_module.UPSAMPLE_ELEMENTS
    try:
        predict_module.UPSAMPLE_ELEMENTS = 1
        labels = upsampled_labels(model, lowres, size)
    finally:
        predict_module.UPSAMPLE_ELEMENTS = old_limit
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), full)
    assert int(labels[1, 0, 0]) == 0 and (labels == 5).sum() == 0


def test_large_images_are_not_batched_together(weights: Path, tmp_path: Path, monkeypatch) -> None:
    model = load_model(weights, CPU)
    for name in "abc":
        Image.fromarray(_photo(60, 80)).save(tmp_path / f"{name}.png")
    seen = []
    run_lowres = model.run_lowres
    model.run_lowres = lambda x: seen.append(x.shape[0]) or run_lowres(x)
    monkeypatch.setattr(predict_module, "MAX_BATCH_PIXELS", 2 * 60 * 80)  # two images per pass at most
    predict(model, [tmp_path / f"{n}.png" for n in "abc"], PredictOptions(output=tmp_path / "out", batch_size=4))
    assert seen == [2, 1]


def test_legend_from_bands_equals_legend_from_the_whole_map() -> None:
    labels = np.random.default_rng(0).integers(0, 5, (50, 40)).astype(np.uint8)
    bands = [labels[rows] for rows in predict_module._bands(labels)]
    assert legend_entries(bands, CLASSES, PALETTE) == legend_entries(labels, CLASSES, PALETTE)
