"""`encnet evaluate` and `encnet predict` end to end on a tiny trained checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_synthetic, one_error_line, train_tiny
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.engine.evaluate import EvaluateOptions, evaluate

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dataset, checkpoint): synthetic 8 train / 6 val at 48 px, encnet_tiny after 2 iterations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cli_evaluate_predict")
    data = make_synthetic(folder, 8, 6)
    torch.manual_seed(0)
    yield data, train_tiny(data, folder)
    torch.set_num_threads(threads)


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])




EVAL = ("--device", "cpu", "-j", "0")


def test_evaluate_json_stdout_matches_library(tiny: tuple[Path, Path]) -> None:
    data, ckpt = tiny
    result = run("evaluate", ckpt, data, "--json", "-", *EVAL)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = evaluate(ckpt, data, EvaluateOptions(device="cpu", workers=0))
    for key in ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU", "iou", "acc", "confusion_matrix", "images"):
        assert report[key] == expected[key], key
    assert len(report["iou"]) == 14 and report["model"] == str(ckpt)


def test_evaluate_json_file_and_table(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    out = tmp_path / "metrics.json"
    result = run("evaluate", ckpt, data, "--json", out, "--limit", "2", "--no-progress", *EVAL)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["split"] == "val" and report["dataset"] == str(data)
    assert set(report) >= {"pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU", "iou", "acc", "classes", "inference"}
    assert f"pixAcc {report['pixAcc']:.4f}" in result.stdout and "sky" in result.stdout


def test_evaluate_multi_scale_flip(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    result = run("evaluate", ckpt, data, "--scales", "0.75,1.0", "--flip", "--limit", "2", "--json", "-",
                 "--confusion", tmp_path / "cm.png", "--save-predictions", tmp_path / "pred", *EVAL)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inference"]["scales"] == [0.75, 1.0] and report["inference"]["flip"] is True
    assert report["inference"]["crop_size"] == 32 and report["inference"]["base_size"] == 48  # the checkpoint's
    assert 0 <= report["pixAcc"] <= 1
    assert (tmp_path / "cm.png").is_file() and len(list((tmp_path / "pred").glob("*.png"))) == 2


@pytest.mark.parametrize(("scales", "message"), [("0.5,abc", "comma-separated numbers"), ("0,1", "positive")])
def test_evaluate_bad_scales_is_one_line(tiny: tuple[Path, Path], scales: str, message: str) -> None:
    data, ckpt = tiny
    assert message in one_error_line(run("evaluate", ckpt, data, "--scales", scales, *EVAL))


def test_missing_model_file_is_one_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    line = one_error_line(run("evaluate", tmp_path / "nope.pt", data, *EVAL))
    assert "not found" in line and "nope.pt" in line
    line = one_error_line(run("predict", tmp_path / "nope.pt", data, "-o", tmp_path / "out", "--device", "cpu"))
    assert "not found" in line


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(root / "one.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(root / "nested" / "two.jpg")
    (root / "nested" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "readme.txt").write_text("ignored\n")
    return root


def test_predict_reports_failures_and_exits_1(tiny: tuple[Path, Path], folder: Path, tmp_path: Path) -> None:
    _, ckpt = tiny
    out = tmp_path / "out"
    result = run("predict", ckpt, folder, "-o", out, "--format", "index", "--overlay", "--no-progress", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "2 images segmented, 1 failed" in result.stdout
    assert "skipped" in result.stderr and "bad.jpg" in result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "nested/two.png", "nested/two_overlay.jpg", "one.png", "one_overlay.jpg", "predictions.json",
    ]  # fmt: skip
    with Image.open(out / "one.png") as png:
        assert png.mode == "L" and png.size == (44, 36) and int(np.asarray(png).max()) < 14
    report = json.loads((out / "predictions.json").read_text())
    assert sorted(report["images"]) == ["nested/two", "one"] and len(report["failed"]) == 1
    assert "classes_by_se" in report["images"]["one"]
    # a second run refuses to overwrite, in one line, and changes nothing
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_error_line(run("predict", ckpt, folder / "one.png", "-o", out, "--device", "cpu"))
    assert "--overwrite" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_predict_multi_scale_slide_flip_run(tiny: tuple[Path, Path], folder: Path, tmp_path: Path) -> None:
    _, ckpt = tiny
    for i, extra in enumerate((["--scales", "0.75,1.0", "--flip"], ["--slide", "--batch-size", "3"])):
        out = tmp_path / f"out{i}"
        result = run("predict", ckpt, folder / "one.png", "-o", out, "--no-progress", "--device", "cpu", *extra)
        assert result.exit_code == 0, result.output
        with Image.open(out / "one.png") as png:
            assert png.mode == "P" and png.size == (44, 36)
