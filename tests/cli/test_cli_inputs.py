"""The CLI's own inputs: bad numbers, output paths that cannot be written, TOML of the wrong types, and
resumes that break the exact continuation. Each is one line, before any work."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import one_error_line, tiny_trained
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core import paths
from encnet_core.config import TrainConfig, load_toml
from encnet_core.errors import ConfigError

runner = CliRunner()
EVAL = ("--device", "cpu", "-j", "0", "--no-progress")
TRAIN = ("--model", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "-j", "0",
         "--device", "cpu", "--no-progress")  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    yield from tiny_trained(tmp_path_factory, "cli_inputs")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--scales", "nan", "--scales must be positive"),
        ("--scales", "inf", "--scales must be positive"),
        ("--scales", "1e9", "--scales must be positive"),
        ("--scales", ",", "comma-separated numbers"),
        ("--workers", "-1", "--workers must be >= 0"),
        ("--crop-size", "0", "--crop-size must be between 8"),
        ("--base-size", "100000", "--base-size must be between 1"),
        ("--stride-rate", "nan", "--stride-rate"),
        ("--batch-size", "0", "--batch-size"),
    ],
)
def test_evaluate_bad_numbers(tiny: tuple[Path, Path], option: str, value: str, message: str) -> None:
    data, ckpt = tiny
    assert message in one_error_line(run("evaluate", ckpt, data, *EVAL, option, value))


def test_scales_times_base_size_is_bounded(tiny: tuple[Path, Path]) -> None:
    data, ckpt = tiny
    line = one_error_line(run("evaluate", ckpt, data, "--scales", "4", "--base-size", "8000", *EVAL))
    assert "32000 px" in line


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--alpha", "nan", "--alpha"), ("--se-threshold", "2", "--se-threshold"), ("--crop-size", "0", "--crop-size")],
)
def test_predict_bad_numbers(tiny: tuple[Path, Path], tmp_path: Path, option: str, value: str, message: str) -> None:
    _, ckpt = tiny
    (tmp_path / "in").mkdir()
    line = one_error_line(run("predict", ckpt, tmp_path / "in", "-o", tmp_path / "out", option, value, "--device", "cpu"))
    assert message in line
    assert not (tmp_path / "out").exists()


def test_evaluate_output_paths_are_checked_before_the_work(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "is a folder" in one_error_line(run("evaluate", ckpt, data, f"--json={folder}", *EVAL))
    assert "is a file, not a folder" in one_error_line(run("evaluate", ckpt, data, "--confusion", a_file / "c.png", *EVAL))
    assert "is a file; give a folder" in one_error_line(run("evaluate", ckpt, data, "--save-predictions", a_file, *EVAL))
    assert a_file.read_text() == "keep"


def test_predict_and_train_output_that_is_a_file(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    (tmp_path / "in").mkdir()
    assert "is a file" in one_error_line(run("predict", ckpt, tmp_path / "in", "-o", a_file, "--device", "cpu"))
    assert "is a file" in one_error_line(run("train", data, "-o", a_file, "--iters", "1", *TRAIN))
    assert a_file.read_text() == "keep"


@pytest.fixture
def read_only_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder no file can be created in: a read-only tmpfs where the OS lets us mount one (root), else a
    folder whose write probe fails as it would there (EROFS)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        real = paths.tempfile.TemporaryFile

        def refuse(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
            if dir is not None and Path(dir) == folder:
                raise OSError(30, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(paths.tempfile, "TemporaryFile", refuse)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_unwritable_output_is_refused_before_the_work(tiny: tuple[Path, Path], read_only_dir: Path) -> None:
    data, ckpt = tiny
    line = one_error_line(run("evaluate", ckpt, data, "--json", read_only_dir / "m.json", *EVAL))
    assert "cannot write in" in line and "Read-only file system" in line
    line = one_error_line(run("train", data, "-o", read_only_dir / "run", "--iters", "1", *TRAIN))
    assert "cannot write in" in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lr = "0.01"', "lr must be a number, got '0.01' (a string)"),
        ("batch_size = 2.5", "batch_size must be an integer, got 2.5"),
        ("mean = [0.5]", "mean must be a list of 3 numbers"),
        ("se_loss = 1", "se_loss must be true or false"),
        ("lr = nan", "lr must be a finite number"),
        ("train = 3", "[train] must be a table"),
    ],
)
def test_toml_of_wrong_types_is_one_line(tiny: tuple[Path, Path], tmp_path: Path, text: str, message: str) -> None:
    data, _ = tiny
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    line = one_error_line(run("train", data, "--config", config, "-o", tmp_path / "run", "--iters", "1", *TRAIN))
    assert message in line and str(config) in line
    assert not (tmp_path / "run").exists()


def test_toml_of_right_types_loads(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text("[train]\nlr = 1\nnum_codes = 8\nmean = [0.5, 0.5, 0.5]\ninit_from = 'x.pt'\n")
    values = load_toml(config)
    assert TrainConfig.from_dict(values).mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="dropout must be a number"):
        TrainConfig.from_dict({"dropout": "0.1"})


def test_resume_with_other_batch_size_says_it_is_not_exact(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    out = tmp_path / "run"
    assert run("train", data, "-o", out, "--iters", "1", *TRAIN).exit_code == 0
    args = [a if a != "4" else "2" for a in TRAIN]  # --batch-size 2
    result = run("train", data, "-o", out, "--iters", "2", "--resume", "auto", *args)
    assert result.exit_code == 0, result.output
    assert "batch_size 4 -> 2" in result.output and "no longer an exact continuation" in result.output


def test_resume_with_other_model_settings_is_one_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    out = tmp_path / "run"
    assert run("train", data, "-o", out, "--iters", "1", *TRAIN).exit_code == 0
    line = one_error_line(run("train", data, "-o", out, "--iters", "2", "--resume", "auto", "--no-aux", *TRAIN))
    assert "other model settings (aux True -> False)" in line and "--init-from" in line


def test_error_lines_and_logs_escape_terminal_codes(tmp_path: Path) -> None:
    hostile = tmp_path / "\x1b[31mred\x07.pt"
    hostile.write_bytes(b"not a checkpoint")
    line = one_error_line(run("info", hostile))
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b[31mred\\x07.pt" in line  # shown, visibly escaped

    import logging

    from encnet_cli.main import _SafeFormatter

    record = logging.LogRecord("encnet", logging.WARNING, __file__, 1, "class %s", ("\x1b]0;owned\x07",), None)
    assert _SafeFormatter("%(message)s").format(record) == "class \\x1b]0;owned\\x07"


def test_export_output_path_is_checked_first(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    assert "is a folder" in one_error_line(run("export", ckpt, folder, "--overwrite"))
    assert "is a file, not a folder" in one_error_line(run("export", ckpt, a_file / "m.pt"))
    assert "exists; pass --overwrite" in one_error_line(run("export", ckpt, a_file))
    assert a_file.read_text() == "keep" and list(folder.iterdir()) == []


def test_skipped_sample_with_markup_in_its_name_prints_as_written(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    import h5py
    import numpy as np

    data, _ = tiny
    bad = tmp_path / "bad.h5"
    shutil.copy(data, bad)
    with h5py.File(bad, "r+") as handle:
        handle["train/names"][1] = "[/]x\x1b[2J"
        handle["train/masks"][1] = np.frombuffer(b"garbage", np.uint8)
    result = run("train", bad, "-o", tmp_path / "run", "--iters", "2", "--skip-bad", *TRAIN)
    assert result.exit_code == 0, result.output
    assert "[/]x\\x1b[2J" in result.output and "\x1b[2J" not in result.output
