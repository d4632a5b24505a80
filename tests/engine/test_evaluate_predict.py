"""evaluate() and predict() on a tiny trained checkpoint, against loops written here."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import make_synthetic, train_tiny
from PIL import Image

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.hdf5 import HDF5Writer, Sample, class_pixel_counts, encode_mask
from encnet_core.data.synthetic import CLASSES
from encnet_core.engine.evaluate import EvaluateOptions, evaluate
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.engine.masks import PredictOptions, predict
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import pil_palette
from encnet_core.weights.checkpoint import load_checkpoint, model_from_checkpoint
from encnet_core.weights.model_files import load_model

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Tiny:
    data: Path  # synthetic, 8 train / 6 val at 48 px
    checkpoint: Path  # encnet_tiny after 2 iterations
    folder: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("evaluate_predict")
    data = make_synthetic(folder, 8, 6)
    torch.manual_seed(0)
    yield Tiny(data, train_tiny(data, folder), folder)
    torch.set_num_threads(threads)


class Reference:
    """The checkpoint's model rebuilt by hand, run on images normalised here."""

    def __init__(self, checkpoint: Path) -> None:
        ckpt = load_checkpoint(checkpoint)
        self.model = model_from_checkpoint(ckpt).eval()
        self.mean = torch.tensor(ckpt["mean"]).view(3, 1, 1)
        self.std = torch.tensor(ckpt["std"]).view(3, 1, 1)
        self.classes = ckpt["classes"]
        self.palette = np.asarray(ckpt["palette"], dtype=np.uint8)

    def normalise(self, rgb: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255 - self.mean) / self.std

    @torch.no_grad()
    def logits(self, rgb: np.ndarray) -> torch.Tensor:
        return self.model(self.normalise(rgb)[None])["out"][0]  # (C, H, W)

    @torch.no_grad()
    def se_probabilities(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.sigmoid(self.model(self.normalise(rgb)[None], with_se=True)["se"][0])


def read_split(path: Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB (H, W, 3), labels (H, W)) decoded with PIL straight from the HDF5 file."""
    out = []
    with h5py.File(path, "r") as handle:
        group = handle[split]
        for i in range(group["names"].shape[0]):
            rgb = np.asarray(Image.open(io.BytesIO(group["images"][i].tobytes())).convert("RGB"))
            labels = np.asarray(Image.open(io.BytesIO(group["masks"][i].tobytes())))
            out.append((group["names"].asstr()[i], rgb, labels))
    return out


def loop_confusion(predictions: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for prediction, label in zip(predictions, labels, strict=True):
        for t in range(num_classes):
            for p in range(num_classes):
                matrix[t, p] += int(((label == t) & (prediction == p)).sum())
    return matrix


def options(**changes) -> EvaluateOptions:
    return EvaluateOptions(**{"device": "cpu", "workers": 0, **changes})


# ---------------------------------------------------------------------------------------------- evaluate


def test_whole_image_evaluation_equals_manual_loop(tiny: Tiny) -> None:
    ref = Reference(tiny.checkpoint)
    samples = read_split(tiny.data, "val")
    predictions = [ref.logits(rgb).argmax(0).numpy() for _, rgb, _ in samples]
    labels = [lab for _, _, lab in samples]
    matrix = loop_confusion(predictions, labels, len(CLASSES))
    result = evaluate(tiny.checkpoint, tiny.data, options())
    assert result["images"] == 6 and result["split"] == "val" and result["classes"] == list(CLASSES)
    assert np.array_equal(np.asarray(result["confusion_matrix"]), matrix)
    labelled = sum(int((lab != IGNORE_INDEX).sum()) for lab in labels)
    assert result["pixels"] == labelled
    assert result["pixAcc"] == pytest.approx(np.trace(matrix) / labelled)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = [matrix[c, c] / union[c] if union[c] else None for c in range(len(CLASSES))]
    assert [v is None for v in result["iou"]] == [v is None for v in iou]
    assert [v for v in result["iou"] if v is not None] == pytest.approx([v for v in iou if v is not None])
    assert result["mIoU"] == pytest.approx(np.mean([v for v in iou if v is not None]))
    assert result["mIoU_all"] == pytest.approx(sum(v or 0 for v in iou) / len(CLASSES))
    assert result["inference"]["scales"] is None and result["inference"]["flip"] is False
    json.dumps(result)  # everything is JSON-serialisable


def test_limit_predictions_and_confusion_png(tiny: Tiny, tmp_path: Path) -> None:
    ref = Reference(tiny.checkpoint)
    samples = read_split(tiny.data, "val")[:2]
    out = tmp_path / "pred"
    result = evaluate(tiny.checkpoint, tiny.data, options(limit=2, save_predictions=out, confusion=tmp_path / "cm.png"))
    assert result["images"] == 2
    assert result["pixels"] == sum(int((lab != IGNORE_INDEX).sum()) for _, _, lab in samples)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name, _, _ in samples)
    name, rgb, _ = samples[1]
    with Image.open(out / f"{name}.png") as png:
        assert png.mode == "P"
        assert png.getpalette()[: 3 * 256] == pil_palette(ref.palette)
        assert np.array_equal(np.asarray(png), ref.logits(rgb).argmax(0).numpy())
    with Image.open(tmp_path / "cm.png") as cm:
        assert cm.format == "PNG" and cm.width >= 500 and cm.height >= 500  # matplotlib figure (tests/test_viz.py: content)


def test_multi_scale_flip_evaluation_matches_infer(tiny: Tiny) -> None:
    ref = Reference(tiny.checkpoint)
    config = InferenceConfig(scales=(0.75, 1.25), flip=True, crop_size=32, base_size=48, merge="logits")
    samples = read_split(tiny.data, "val")[:2]
    pad = tuple((-ref.mean / ref.std).view(3).tolist())  # the reference pads with black
    predictions = []
    for _, rgb, _ in samples:
        with torch.no_grad():
            scores = infer(lambda x: ref.model(x)["out"], ref.normalise(rgb), len(CLASSES),
                           InferenceConfig(**{**config.__dict__, "pad_value": pad}))  # fmt: skip
        predictions.append(scores.argmax(0).numpy())
    matrix = loop_confusion(predictions, [lab for _, _, lab in samples], len(CLASSES))
    result = evaluate(tiny.checkpoint, tiny.data, options(limit=2, inference=config))
    assert np.array_equal(np.asarray(result["confusion_matrix"]), matrix)
    assert result["inference"]["scales"] == [0.75, 1.25] and result["inference"]["merge"] == "logits"


def _write_h5(path: Path, classes: list[str], splits: dict[str, bool]) -> Path:
    rng = np.random.default_rng(0)
    with HDF5Writer(path, "handmade", classes, np.zeros((len(classes), 3), np.uint8)) as writer:
        for split, labelled in splits.items():
            writer.begin_split(split, 1, labelled)
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
            labels = rng.integers(0, len(classes), (16, 16)).astype(np.uint8)
            writer.add(Sample("img0", buffer.getvalue(), 16, 16, encode_mask(labels) if labelled else None,
                              class_pixel_counts(labels, len(classes)) if labelled else None))  # fmt: skip
    return path


def test_class_count_mismatch_and_unlabelled_split_are_clear_errors(tiny: Tiny, tmp_path: Path) -> None:
    three = _write_h5(tmp_path / "three.h5", ["a", "b", "c"], {"val": True})
    with pytest.raises(ConfigError, match="predicts 14 classes but .* has 3"):
        evaluate(tiny.checkpoint, three, options())
    same = _write_h5(tmp_path / "unlabelled.h5", list(CLASSES), {"val": True, "test": False})
    with pytest.raises(DataError, match="split 'test' .* has no labels"):
        evaluate(tiny.checkpoint, same, options(split="test"))
    with pytest.raises(DataError, match="no split 'train'"):
        evaluate(tiny.checkpoint, same, options(split="train"))
    assert evaluate(tiny.checkpoint, same, options())["images"] == 1
    for limit in (0, -1):  # used to "evaluate" nothing and report images = -1
        with pytest.raises(ConfigError, match="--limit must be at least 1"):
            evaluate(tiny.checkpoint, same, options(limit=limit))


# ---------------------------------------------------------------------------------------------- predict


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Nested folders: RGB, grayscale, RGBA, EXIF-rotated JPEG, a corrupt PNG and a text file."""
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_rgb(40, 52, 1)).save(root / "a.png")
    Image.fromarray(_rgb(40, 52, 5)).save(root / "b.png")  # same size as a.png: one batched forward pass
    Image.fromarray(_rgb(36, 36, 2)[..., 0]).save(root / "sub" / "gray.png")  # mode L
    rgba = np.concatenate([_rgb(30, 44, 3), np.full((30, 44, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(root / "sub" / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_rgb(30, 50, 4)).save(root / "sub" / "deeper" / "rot.jpg", exif=exif, quality=95)
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (root / "notes.txt").write_text("not an image\n")
    return root


def _displayed_rgb(path: Path) -> np.ndarray:
    from PIL import ImageOps

    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


EXPECTED = {"a": (40, 52), "b": (40, 52), "sub/gray": (36, 36), "sub/rgba": (30, 44), "sub/deeper/rot": (50, 30)}  # (H, W) shown


def test_predict_folder_masks_overlays_json(tiny: Tiny, inputs: Path, tmp_path: Path) -> None:
    ref = Reference(tiny.checkpoint)
    model = load_model(tiny.checkpoint, CPU)
    out = tmp_path / "out"
    result = predict(model, [inputs], PredictOptions(output=out, overlay=True, se_threshold=0.52, min_share=0.05))
    assert result.written == 5
    assert [Path(f["file"]).name for f in result.failed] == ["broken.png"] and result.failed[0]["reason"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(["predictions.json"] + [f"{s}.png" for s in EXPECTED] + [f"{s}_overlay.jpg" for s in EXPECTED])
    report = json.loads((out / "predictions.json").read_text())
    assert report["classes"] == list(CLASSES) and report["se_threshold"] == 0.52
    assert [Path(f["file"]).name for f in report["failed"]] == ["broken.png"]
    assert sorted(report["images"]) == sorted(EXPECTED)
    src = {"a": "a.png", "b": "b.png", "sub/gray": "sub/gray.png", "sub/rgba": "sub/rgba.png", "sub/deeper/rot": "sub/deeper/rot.jpg"}
    partial = 0  # images whose SE list is a strict, non-empty subset of the classes
    for stem, (h, w) in EXPECTED.items():
        rgb = _displayed_rgb(inputs / src[stem])
        assert rgb.shape[:2] == (h, w)
        labels = ref.logits(rgb).argmax(0).numpy()
        with Image.open(out / f"{stem}.png") as png:
            assert png.mode == "P" and png.size == (w, h)
            assert png.getpalette()[: 3 * 256] == pil_palette(ref.palette)
            assert np.array_equal(np.asarray(png), labels)
        with Image.open(out / f"{stem}_overlay.jpg") as overlay:
            assert overlay.format == "JPEG" and overlay.size == (w, h)
        entry = report["images"][stem]
        assert entry["size"] == [h, w] and Path(entry["file"]) == inputs / src[stem]
        share = np.bincount(labels.reshape(-1), minlength=len(CLASSES)) / labels.size
        listed = {item["index"]: item["share"] for item in entry["classes_by_pixels"]}
        assert set(listed) == {c for c in range(len(CLASSES)) if share[c] >= 0.05}
        assert sum(listed.values()) == pytest.approx(1 - share[share < 0.05].sum(), abs=1e-4)
        assert [item["share"] for item in entry["classes_by_pixels"]] == sorted(listed.values(), reverse=True)
        probs = ref.se_probabilities(rgb)
        se = entry["classes_by_se"]
        assert {item["index"] for item in se} == {c for c in range(len(CLASSES)) if probs[c] >= 0.52}
        partial += 0 < len(se) < len(CLASSES)
        assert all(item["probability"] >= 0.52 and item["class"] == CLASSES[item["index"]] for item in se)
        for item in se:
            assert item["probability"] == pytest.approx(float(probs[item["index"]]), abs=1e-3)
    assert partial > 0


def test_predict_index_format(tiny: Tiny, inputs: Path, tmp_path: Path) -> None:
    ref = Reference(tiny.checkpoint)
    model = load_model(tiny.checkpoint, CPU)
    out = tmp_path / "index"
    predict(model, [inputs / "sub" / "deeper" / "rot.jpg", inputs / "a.png"], PredictOptions(output=out, mask_format="index"))
    for stem, source in (("rot", "sub/deeper/rot.jpg"), ("a", "a.png")):
        with Image.open(out / f"{stem}.png") as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), ref.logits(_displayed_rgb(inputs / source)).argmax(0).numpy())
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "predictions.json", "rot.png"]


def test_predict_refuses_to_overwrite_and_writes_nothing(tiny: Tiny, inputs: Path, tmp_path: Path) -> None:
    model = load_model(tiny.checkpoint, CPU)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="outputs exist already .* --overwrite"):
        predict(model, [inputs], PredictOptions(output=out, overlay=True))
    assert [p.name for p in out.rglob("*")] == ["a.png"] and (out / "a.png").read_bytes() == b"keep me"
    result = predict(model, [inputs / "a.png"], PredictOptions(output=out, overwrite=True))
    assert result.written == 1 and (out / "a.png").read_bytes() != b"keep me"


@pytest.mark.parametrize(
    "inference",
    [
        InferenceConfig(scales=(0.75, 1.0), flip=True, crop_size=32, base_size=48),
        InferenceConfig(slide=True, crop_size=32, batch_size=3),
        InferenceConfig(flip=True, merge="logits"),
    ],
    ids=["scales-flip", "slide", "whole-flip"],
)
def test_predict_inference_modes(tiny: Tiny, inputs: Path, tmp_path: Path, inference: InferenceConfig) -> None:
    ref = Reference(tiny.checkpoint)
    model = load_model(tiny.checkpoint, CPU)
    out = tmp_path / "out"
    result = predict(model, [inputs / "sub"], PredictOptions(output=out, inference=inference))
    assert result.written == 3 and len(result.failed) == 1
    pad = tuple((-ref.mean / ref.std).view(3).tolist())
    config = InferenceConfig(**{**inference.__dict__, "pad_value": pad})
    for stem in ("gray", "rgba", "deeper/rot"):
        source = next((inputs / "sub").glob(f"{stem}.*"))
        with torch.no_grad():
            scores = infer(lambda x: ref.model(x)["out"], ref.normalise(_displayed_rgb(source)), len(CLASSES), config)
        with Image.open(out / f"{stem}.png") as png:
            assert np.array_equal(np.asarray(png), scores.argmax(0).numpy())
