"""`encnet submit` end to end: the server's files, --json, and the refusals as one line."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line, usage_error_line, write_h5, write_images, write_model
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.sources.ade20k import ADE20K_CLASSES
from encnet_core.data.sources.voc import VOC_CLASSES

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def voc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("submit") / "voc.pt", list(VOC_CLASSES))


def test_voc_from_a_prepared_file_with_json(voc_model: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", ["2008_000001", "2008_000002"], [(30, 40), (30, 40)])
    data = write_h5(tmp_path / "voc.h5", images, ["2008_000001", "2008_000002"], dataset="voc")
    out = tmp_path / "out"
    result = run("submit", voc_model, data, "--server", "voc", "-o", out, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    folder = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert report["server"] == "voc" and report["images"] == 2 and report["files"] == ["2008_000001.png", "2008_000002.png"]
    assert report["folder"] == str(folder.resolve()) and report["archive"] == str((out / "results.tgz").resolve())
    assert report["inference"]["scales"] is None and report["inference"]["flip"] is False
    with tarfile.open(out / "results.tgz") as tar:
        assert [m for m in tar.getnames() if m.endswith(".png")] == [
            "results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png", "results/VOC2012/Segmentation/comp6_test_cls/2008_000002.png",
        ]  # fmt: skip
    assert Image.open(folder / "2008_000001.png").mode == "P"
    assert np.asarray(Image.open(folder / "2008_000001.png")).max() <= 20

    again = run("submit", voc_model, data, "--server", "voc", "-o", out, "--device", "cpu")
    assert "3 outputs exist already" in one_error_line(again) and "pass --overwrite" in one_error_line(again)
    replaced = run("submit", voc_model, data, "--server", "voc", "-o", out, "--device", "cpu", "--overwrite", "--no-progress")
    assert replaced.exit_code == 0, replaced.output
    assert "2 images for voc in" in replaced.stdout and "results.tgz" in replaced.stdout


def test_wrong_classes_and_bad_options_are_one_line(voc_model: Path, tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["a"], [(24, 30)])
    line = one_error_line(run("submit", voc_model, tmp_path / "images", "--server", "ade20k", "-o", tmp_path / "out", "--device", "cpu"))
    assert "the model predicts 21 classes but the ADE20K scene-parsing server takes 150" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "submission.zip").exists()
    line = usage_error_line(run("submit", voc_model, tmp_path / "images", "--server", "voc", "-o", tmp_path / "out", "--protocol", "reference", "--flip"))
    assert "--protocol reference sets --flip itself" in line and "or submit without --protocol" in line
    assert "'coco' is not one of" in usage_error_line(run("submit", voc_model, tmp_path / "images", "--server", "coco", "-o", tmp_path / "out"))


def test_ade20k_folder(tmp_path: Path) -> None:
    model = write_model(tmp_path / "ade.pt", list(ADE20K_CLASSES), seed=3)
    write_images(tmp_path / "images", ["ADE_test_00000001"], [(26, 34)])
    result = run("submit", model, tmp_path / "images", "--server", "ade20k", "-o", tmp_path / "ade", "--device", "cpu", "--slide")
    assert result.exit_code == 0, result.output
    values = np.asarray(Image.open(tmp_path / "ade" / "ADE_test_00000001.png"))
    assert values.min() >= 1 and values.max() <= 150
    assert (tmp_path / "submission.zip").is_file()
