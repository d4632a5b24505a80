"""A trained classifier after training: every export format, evaluate (against an independent
computation of top-1/top-5), predict on files, and the one-line refusals of the other task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from classification_helpers import classification_config, make_synthetic_classification
from PIL import Image

from encnet_core.data.dataset import HDF5ClassificationDataset
from encnet_core.data.sources.synthetic_cls import render_scene
from encnet_core.engine.classification import ClassifyOptions, classify, predict_classes
from encnet_core.engine.evaluate import EvaluateOptions, evaluate
from encnet_core.engine.inference import InferenceConfig
from encnet_core.engine.train import train
from encnet_core.errors import CheckpointError, ConfigError
from encnet_core.segmenter import Segmenter
from encnet_core.weights.checkpoint import load_checkpoint, model_from_checkpoint
from encnet_core.weights.export import FORMATS, export_model
from encnet_core.weights.metadata import ModelMetadata
from encnet_core.weights.model_files import load_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, best.pt) of encnet_cifar_tiny after 2 epochs on 32 synthetic images (16 val)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("cls_inference")
        data = make_synthetic_classification(folder)
        result = train(classification_config(data, folder / "run", epochs=2, lr=0.1))
        yield data, result.best_checkpoint
    finally:
        torch.set_num_threads(threads)


def _val_logits(checkpoint: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits on the val split, computed here without the evaluate code path."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    dataset = HDF5ClassificationDataset(data, "val")
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    images = torch.stack([dataset[i][0].as_subclass(torch.Tensor) for i in range(len(dataset))]).float() / 255
    with torch.no_grad():
        logits = model((images - mean) / std)
    return logits.numpy(), dataset.labels.numpy()


def test_evaluate_matches_an_independent_computation(trained: tuple[Path, Path]) -> None:
    data, best = trained
    result = evaluate(best, data, EvaluateOptions(device="cpu", workers=0, inference=InferenceConfig(batch_size=5)))
    logits, labels = _val_logits(best, data)
    predicted = logits.argmax(1)
    assert result["task"] == "classification" and result["images"] == len(labels) == 16
    assert result["top1_error"] == pytest.approx(float((predicted != labels).mean()), abs=1e-12)
    assert result["top5_k"] == 3 and result["top5_error"] == 0.0  # 3 classes: the label is always among the top 3
    for c in range(3):
        assert result["class_accuracy"][c] == pytest.approx(float((predicted[labels == c] == c).mean()), abs=1e-12)
    assert result["confusion_matrix"] == np.bincount(labels * 3 + predicted, minlength=9).reshape(3, 3).tolist()
    assert result["classes"] == ["street", "kitchen", "beach"] and result["model"] == str(best)


def test_evaluate_refuses_segmentation_options_and_the_other_task(trained: tuple[Path, Path], synthetic_h5: Path, tmp_path: Path) -> None:
    data, best = trained
    options = EvaluateOptions(device="cpu", workers=0, inference=InferenceConfig(scales=(0.5, 1.0), flip=True))
    with pytest.raises(ConfigError, match=r"^--scales, --flip do not apply to a classification model"):
        evaluate(best, data, options)
    with pytest.raises(ConfigError, match=r"^--save-predictions does not apply"):
        evaluate(best, data, EvaluateOptions(device="cpu", workers=0, save_predictions=tmp_path / "p"))
    with pytest.raises(ConfigError, match=r"^best\.pt is a classification model but .* is a segmentation dataset"):
        evaluate(best, synthetic_h5, EvaluateOptions(device="cpu", workers=0))
    from helpers import train_tiny

    segmentation = train_tiny(synthetic_h5, tmp_path, iters=1)
    with pytest.raises(ConfigError, match=r"^last\.pt is a segmentation model but .* is a classification dataset"):
        evaluate(segmentation, data, EvaluateOptions(device="cpu", workers=0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_format_gives_the_checkpoints_logits(trained: tuple[Path, Path], tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    if fmt == "openvino":
        pytest.importorskip("openvino", reason="pip install 'encnet[openvino]'")
    data, best = trained
    out = tmp_path / f"model.{'xml' if fmt == 'openvino' else fmt}"  # an OpenVINO IR is OUT.xml + OUT.bin
    result = export_model(best, out, fmt)
    assert result.metadata["task"] == "classification" and result.metadata["export_format"] == fmt
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    reference = load_model(best, CPU)
    loaded = load_model(out, CPU, trust_code=True)
    assert loaded.task == reference.task == "classification" and not loaded.has_se
    x = reference.normalize(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    got, want = loaded.forward(x), reference.forward(x)
    assert got.shape == (3, 3)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)


def test_predict_writes_the_top_k_classes_and_scores(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, best = trained
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        png, _ = render_scene(11, i, 32)
        (images / f"scene{i}.png").write_bytes(png)
    Image.fromarray(np.asarray(Image.open(images / "scene0.png"))).resize((80, 60)).save(images / "wide.jpg")
    (images / "broken.png").write_bytes(b"not an image")
    model = load_model(best, CPU)
    result = predict_classes(model, [images], ClassifyOptions(output=tmp_path / "out", top_k=2, batch_size=2))
    assert result.written == 4 and [f["file"] for f in result.failed] == [str(images / "broken.png")]
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved["task"] == "classification" and saved["top_k"] == 2 and saved["images"] == result.predictions
    assert saved["images"]["wide"]["size"] == [60, 80]
    tensor = torch.from_numpy(np.array(Image.open(images / "scene1.png").convert("RGB"))).permute(2, 0, 1)
    probs = model.forward(model.normalize(tensor[None])).softmax(1)[0]
    order = probs.argsort(descending=True)[:2].tolist()
    top = saved["images"]["scene1"]["top"]
    assert [t["index"] for t in top] == order and [t["class"] for t in top] == [model.classes[c] for c in order]
    assert [t["score"] for t in top] == [pytest.approx(probs[c].item(), abs=1e-5) for c in order]
    assert classify(model, [tensor], top_k=9)[0][0]["index"] == order[0]  # k past the classes: all of them
    assert len(classify(model, [tensor], top_k=9)[0]) == 3
    with pytest.raises(ConfigError, match="predictions.json exists already; pass --overwrite"):
        predict_classes(model, [images], ClassifyOptions(output=tmp_path / "out"))


def test_segmenter_and_metadata_refuse_a_classifier_where_they_must(trained: tuple[Path, Path]) -> None:
    _, best = trained
    with pytest.raises(ConfigError, match="holds a classification model: Segmenter segments"):
        Segmenter(load_model(best, CPU))
    meta = load_checkpoint(best)
    with pytest.raises(CheckpointError, match="task is 'segmentation' but model encnet_cifar_tiny is a classification model"):
        ModelMetadata.validate({**meta, "task": "segmentation"}, "x.pt")
    with pytest.raises(CheckpointError, match="task is 'detection', not one of segmentation, classification"):
        ModelMetadata.validate({**meta, "task": "detection"}, "x.pt")
    old = {k: v for k, v in meta.items() if k != "task"}  # a file written before the field: its model says
    assert ModelMetadata.from_dict(old).task == "classification"
    assert ModelMetadata.from_dict({"classes": ["a"], "model_config": None}).task == "segmentation"
