"""`encnet predict` inputs and outputs: unreadable files named or found, datasets among the inputs, images
sharing a name, output folders this process cannot look into."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import one_error_line
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.synthetic import CLASSES, PALETTE
from encnet_core.errors import ConfigError
from encnet_core.models import create_model
from encnet_core.paths import check_output_dir
from encnet_core.weights.checkpoint import save_checkpoint
from encnet_core.weights.metadata import ModelMetadata

runner = CliRunner()
CPU = ("--device", "cpu", "--no-progress")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = create_model("encnet_tiny", len(CLASSES)).eval()
    meta = ModelMetadata(model_config=net.config, classes=CLASSES, palette=PALETTE.tolist(), base_size=48, crop_size=32)
    path = tmp_path_factory.mktemp("predict_inputs") / "tiny.pt"
    save_checkpoint({**meta.to_dict(), "kind": "weights", "model": net.state_dict()}, path)
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _image(path: Path, seed: int, size: tuple[int, int] = (30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _skipped(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("skipped ")]


def test_unreadable_file_named_or_in_a_folder_is_reported_the_same_way(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / ("a-rather-long-folder-name-" * 3)  # the skipped line must stay one line past 80 columns
    good = _image(folder / "good.png", 1)
    bad = folder / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    named = run("predict", model, bad, good, "-o", tmp_path / "named", *CPU)
    found = run("predict", model, folder, "-o", tmp_path / "found", *CPU)
    for result, out in ((named, tmp_path / "named"), (found, tmp_path / "found")):
        assert result.exit_code == 1, result.output
        assert "1 image segmented, 1 failed" in result.stdout or "1 images segmented, 1 failed" in result.stdout
        lines = _skipped(result.stderr)
        assert len(lines) == 1 and str(bad) in lines[0] and "cannot identify image file" in lines[0]
        assert (out / "good.png").is_file()
        assert [Path(f["file"]) for f in json.loads((out / "predictions.json").read_text())["failed"]] == [bad]


def test_dataset_in_a_folder_is_left_out_and_named_one_is_refused(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    _image(folder / "street.png", 2)
    with h5py.File(folder / "data.h5", "w") as handle:
        handle.attrs["format"] = "encnet-hdf5"
    (folder / "readme.txt").write_text("notes\n")
    result = run("predict", model, folder, "-o", tmp_path / "out", *CPU)
    assert result.exit_code == 0, result.output
    assert _skipped(result.stderr) == [] and json.loads((tmp_path / "out" / "predictions.json").read_text())["failed"] == []
    line = one_error_line(run("predict", model, folder / "data.h5", "-o", tmp_path / "out2", *CPU))
    assert f"{folder / 'data.h5'} is an encnet dataset; to evaluate on it use encnet evaluate MODEL {folder / 'data.h5'}" in line
    with h5py.File(tmp_path / "other.h5", "w"):
        pass
    assert "is an HDF5 file, not an image" in one_error_line(run("predict", model, tmp_path / "other.h5", "-o", tmp_path / "out3", *CPU))
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_images_sharing_a_name_keep_their_suffix(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    jpg, png, alone = _image(folder / "coffee.jpg", 3), _image(folder / "coffee.png", 4), _image(folder / "tea.png", 5)
    out = tmp_path / "out"
    result = run("predict", model, folder, "-o", out, "--format", "index", *CPU)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["coffee.jpg.png", "coffee.png.png", "predictions.json", "tea.png"]
    report = json.loads((out / "predictions.json").read_text())["images"]
    assert {k: Path(v["file"]) for k, v in report.items()} == {"coffee.jpg": jpg, "coffee.png": png, "tea": alone}
    # each output is its own image's mask: the same as predicting that image alone
    for source, name in ((jpg, "coffee.jpg.png"), (png, "coffee.png.png")):
        single = tmp_path / f"single-{source.suffix[1:]}"
        assert run("predict", model, source, "-o", single, "--format", "index", *CPU).exit_code == 0
        with Image.open(out / name) as both, Image.open(single / "coffee.png") as alone_mask:
            assert np.array_equal(np.asarray(both), np.asarray(alone_mask))


def test_same_name_in_two_named_folders_is_one_line(model: Path, tmp_path: Path) -> None:
    a, b = _image(tmp_path / "a" / "x.png", 6), _image(tmp_path / "b" / "x.png", 7)
    line = one_error_line(run("predict", model, a, b, "-o", tmp_path / "out", *CPU))
    assert str(a) in line and str(b) in line and "--output" in line


def test_output_under_a_file_is_one_line(model: Path, tmp_path: Path) -> None:
    image = _image(tmp_path / "in" / "x.png", 8)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    line = one_error_line(run("predict", model, image, "-o", blocker / "out", *CPU))
    assert f"{blocker} is a file, not a folder" in line
    line = one_error_line(run("predict", model, image, "-o", tmp_path / "out", "--json", blocker / "x.json", *CPU))
    assert f"{blocker} is a file, not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits: the locked folder is searchable for it")
def test_output_in_a_folder_without_search_permission_is_one_line(model: Path, tmp_path: Path) -> None:
    image = _image(tmp_path / "in" / "x.png", 9)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        line = one_error_line(run("predict", model, image, "-o", locked / "out" / "deeper", *CPU))
        assert f"cannot write in {locked}" in line
    finally:
        locked.chmod(0o755)


def test_check_output_dir_climbs_past_a_folder_it_may_not_look_into(tmp_path: Path, monkeypatch) -> None:
    """The same case for root: Path.exists raising PermissionError (what a chmod 000 parent does for
    other users) ends in the one-line write check of the nearest folder that can be looked at."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_exists = Path.exists

    def exists(self: Path, *args, **kwargs) -> bool:
        if locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    check_output_dir(locked / "out" / "deeper", "--output")  # before: the PermissionError itself, a traceback
    blocker = tmp_path / "blocker"
    blocker.write_text("x\n")
    monkeypatch.setattr(Path, "exists", real_exists)
    with pytest.raises(ConfigError, match=f"{blocker} is a file, not a folder"):
        check_output_dir(blocker / "out", "--output")
