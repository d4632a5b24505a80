"""``encnet train --save-every / --save-every-minutes``: the flags reach the run's config and its
within-epoch saves; bad values are one error line."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import load_checkpoint_file, make_synthetic, one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app

runner = CliRunner()
TINY = ["-m", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "--workers", "0",
        "--device", "cpu", "--no-progress", "--val-split", ""]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_save_every_flags_reach_the_run(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path, 24, 4)  # 6 iterations per epoch
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), *TINY, "--iters", "5", "--save-every", "2",
                                 "--save-every-minutes", "0", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["save_every"] == 2 and config["save_every_minutes"] == 0.0
    assert load_checkpoint_file(out / "last.pt")["iteration"] == 5  # the end; saves at 2 and 4 before it

    for flag, message in (("--save-every", "--save-every must be >= 0"),
                          ("--save-every-minutes", "--save-every-minutes must be >= 0")):  # fmt: skip
        bad = runner.invoke(app, ["train", str(data), *TINY, "--iters", "5", flag, "-1", "-o", str(tmp_path / "bad")])
        assert message in one_error_line(bad)
    help_text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output.split())
    assert "(default: 30.0)" in help_text and "a second or two" in help_text
