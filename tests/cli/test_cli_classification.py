"""The classification task end to end through the CLI: train (task from the data file), resume,
evaluate (table and --json), predict (classes and scores), export, models; and every wrong-task or
segmentation-only combination as one line."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from classification_helpers import make_synthetic_classification
from helpers import make_synthetic, one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.sources.synthetic_cls import render_scene

runner = CliRunner()

TINY = ["-m", "encnet_cifar_tiny", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic classification set: 32 train / 16 val images of 32 px (4 iterations per epoch at batch 8)."""
    return make_synthetic_classification(tmp_path_factory.mktemp("cli_cls"))


@pytest.fixture(scope="module")
def segmentation_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("cli_seg"), 4, 2)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run folder (best.pt, last.pt, metrics.jsonl)."""
    out = tmp_path_factory.mktemp("cli_cls_run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = runner.invoke(app, ["train", str(data), *TINY, "--epochs", "2", "--lr", "0.1", "-o", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


def test_train_picks_the_task_from_the_data(run: Path) -> None:
    config = tomllib.loads((run / "config.toml").read_text())
    # classification defaults under the flags: the CIFAR crop, normalisation, schedule and weight decay
    assert config["model"] == "encnet_cifar_tiny" and config["crop_size"] == 32 and config["lr_schedule"] == "cosine"
    assert config["mean"] == [0.4914, 0.4822, 0.4465] and config["weight_decay"] == 5e-4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["type"] == "val"]
    assert [v["epoch"] for v in vals] == [1, 2] and all("top1_error" in v and "top5_error" in v for v in vals)
    assert torch.load(run / "best.pt", weights_only=True)["task"] == "classification"


def test_train_output_shows_top1_and_top5(data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(data), *TINY, "--iters", "4", "-o", str(tmp_path / "r")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "val epoch 1 (it 4): top-1 error" in result.output and "top-5 error 0.00%" in result.output
    assert "best               │ top-1 error" in result.output and "pixAcc" not in result.output


def test_resume_auto_continues_a_stopped_run(data: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "r")
    assert runner.invoke(app, ["train", str(data), *TINY, "--iters", "2", "-o", out, "--lr-schedule", "step"]).exit_code == 0
    result = runner.invoke(app, ["train", str(data), *TINY, "--iters", "4", "-o", out, "--lr-schedule", "step", "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "iteration 2/4" in result.output
    assert torch.load(Path(out) / "last.pt", weights_only=True)["iteration"] == 4


def test_evaluate_prints_per_class_accuracy_and_json(run: Path, data: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(run / "best.pt"), str(data), "--device", "cpu", "--no-progress"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("classification", "street", "kitchen", "beach", "top-1 error", "top-5 error 0.00% (k = 3: 3 classes)"):
        assert text in result.output
    as_json = runner.invoke(app, ["evaluate", str(run / "best.pt"), str(data), "--device", "cpu", "--json"])
    report = json.loads(as_json.output)
    assert report["task"] == "classification" and report["images"] == 16 and len(report["class_accuracy"]) == 3
    assert report["accuracy"] == pytest.approx(1 - report["top1_error"])
    assert f"{100 * report['top1_error']:.2f}%" in result.output


def test_evaluate_refuses_inference_options_in_one_line(run: Path, data: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(run / "best.pt"), str(data), "--flip", "--scales", "0.5,1", "--merge", "logits"])
    line = one_error_line(result)
    assert "--scales, --flip, --merge do not apply to the classification dataset" in line
    line = one_error_line(runner.invoke(app, ["evaluate", str(run / "best.pt"), str(data), "--protocol", "reference"]))
    assert "--protocol does not apply" in line


def test_wrong_task_combinations_are_one_line(run: Path, data: Path, segmentation_data: Path, tmp_path: Path) -> None:
    line = one_error_line(runner.invoke(app, ["train", str(data), *TINY, "-m", "encnet_tiny", "--iters", "1", "-o", str(tmp_path / "a")]))
    assert "--model encnet_tiny is a segmentation model but" in line and "encnet_cifar14" in line
    line = one_error_line(runner.invoke(app, ["train", str(segmentation_data), *TINY, "--iters", "1", "-o", str(tmp_path / "b")]))
    assert "--model encnet_cifar_tiny is a classification model but" in line and "is a segmentation dataset" in line
    line = one_error_line(runner.invoke(app, ["train", str(data), *TINY, "--lateral", "--iters", "1", "-o", str(tmp_path / "c")]))
    assert "--lateral does not apply to classification models" in line
    line = one_error_line(runner.invoke(app, ["evaluate", str(run / "best.pt"), str(segmentation_data), "--device", "cpu"]))
    assert "best.pt is a classification model but" in line
    recipe = ["train", str(data), "--recipe", "synthetic_cpu", "--iters", "1", "--device", "cpu", "-o", str(tmp_path / "d")]
    line = one_error_line(runner.invoke(app, recipe))
    assert "--model encnet_tiny is a segmentation model" in line  # a segmentation recipe's model over the defaults
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_predict_prints_classes_and_scores(run: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"s{i}.png").write_bytes(render_scene(4, i, 32)[0])
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(run / "best.pt"), str(images), "-o", str(out), "--top-k", "2", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "predictions.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json"]  # no masks
    for stem, entry in saved["images"].items():
        first, second = entry["top"]
        assert first["score"] >= second["score"]
        assert f"{stem}: {first['class']} {first['score']:.3f}, {second['class']} {second['score']:.3f}" in result.output
    assert "3 images classified, 0 failed" in result.output
    line = one_error_line(runner.invoke(app, ["predict", str(run / "best.pt"), str(images), "-o", str(tmp_path / "o2"), "--overlay", "--format", "index"]))
    assert "--format, --overlay do not apply to a classification model" in line
    assert not (tmp_path / "o2").exists()


def test_top_k_is_refused_for_a_segmentation_model(segmentation_data: Path, tmp_path: Path) -> None:
    from helpers import train_tiny

    checkpoint = train_tiny(segmentation_data, tmp_path, iters=1)
    line = one_error_line(runner.invoke(app, ["predict", str(checkpoint), str(tmp_path), "-o", str(tmp_path / "o"), "--top-k", "3"]))
    assert "--top-k does not apply to a segmentation model" in line


def test_export_then_evaluate_gives_the_same_numbers(run: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    exported = runner.invoke(app, ["export", str(run / "best.pt"), str(out), "-f", "safetensors", "--json"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["model"] == "encnet_cifar_tiny"
    a = json.loads(runner.invoke(app, ["evaluate", str(run / "best.pt"), str(data), "--device", "cpu", "--json"]).output)
    b = json.loads(runner.invoke(app, ["evaluate", str(out), str(data), "--device", "cpu", "--json"]).output)
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["top1_error"] == b["top1_error"]


def test_models_lists_the_classifiers_at_32_px() -> None:
    result = runner.invoke(app, ["models", "--json", "--size", "64"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    for name in ("encnet_cifar14", "se_cifar14", "encnet_cifar_tiny", "se_cifar_tiny"):
        assert rows[name]["task"] == "classification" and rows[name]["size"] == 32 and rows[name]["num_classes"] == 10
    assert rows["encnet_cifar14"]["params_m"] == 16.79 and rows["encnet_cifar14"]["gflops"] == pytest.approx(3.44, abs=0.01)
    assert rows["encnet_cifar14"]["gflops"] > rows["se_cifar14"]["gflops"] > rows["encnet_cifar_tiny"]["gflops"]
    assert rows["encnet_tiny"]["task"] == "segmentation" and rows["encnet_tiny"]["size"] == 64


def test_train_help_shows_the_classification_defaults() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    text = " ".join(result.output.split())
    assert "(default: encnet_resnet50s; classification data: encnet_cifar14)" in text
    assert "--lr-schedule" in text and "(default: poly; classification data: cosine)" in text


def test_report_refuses_a_classification_run_in_one_line(run: Path) -> None:
    line = one_error_line(runner.invoke(app, ["report", str(run), "--out", str(run / "r.png")]))
    assert "is a classification run (encnet_cifar_tiny): encnet report draws segmentation runs" in line
    assert not (run / "r.png").exists()


def test_info_shows_the_model_task(run: Path) -> None:
    result = runner.invoke(app, ["info", str(run / "best.pt")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "task" in result.output and "classification" in result.output
