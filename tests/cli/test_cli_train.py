"""``encnet train`` end to end: settings layering, user errors as one line, unsafe or corrupt
checkpoints, SIGTERM and ``--resume auto``."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import make_synthetic
from typer.testing import CliRunner

from encnet_cli.main import app

runner = CliRunner()

TINY = ["-m", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "--workers", "0",
        "--device", "cpu", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic scenes: 24 train / 8 val images of 48 px (6 iterations per epoch at batch 4)."""
    return make_synthetic(tmp_path_factory.mktemp("cli_train"), 24, 8)


@pytest.fixture(scope="module")
def checkpoint(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real last.pt of a 2-iteration run (also checks the --json summary)."""
    out = tmp_path_factory.mktemp("cli_run") / "run"
    result = runner.invoke(
        app, ["train", str(data), *TINY, "--iters", "2", "--val-split", "", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iteration"] == summary["total_iters"] == 2 and summary["stopped_by"] is None
    assert summary["last_checkpoint"] == str(out / "last.pt") and summary["best_checkpoint"] is None
    return out / "last.pt"


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ----------------------------------------------------------------------------- options and settings


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--output-dir", "--model", "--recipe", "--config", "--epochs", "--iters", "--batch-size", "--lr",
                   "--crop-size", "--amp", "--resume", "--init-from", "--freeze-bn", "--seed", "--json"):  # fmt: skip
        assert option in result.output, option
    assert "torchrun" in result.output


def test_unknown_recipe_is_one_line(data: Path, tmp_path: Path) -> None:
    line = _one_error_line(
        runner.invoke(app, ["train", str(data), "--recipe", "nope", "-o", str(tmp_path / "r")])
    )
    assert "unknown recipe 'nope'" in line and "synthetic_cpu" in line  # lists the available ones
    assert not (tmp_path / "r").exists()


def test_run_length_is_required(data: Path, tmp_path: Path) -> None:
    line = _one_error_line(runner.invoke(app, ["train", str(data), *TINY, "-o", str(tmp_path / "r")]))
    assert "--epochs or --iters" in line


def test_config_file_errors_are_one_line(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    assert "unknown setting(s) learning_rate" in _one_error_line(
        runner.invoke(app, ["train", str(data), "--config", str(bad)])
    )
    bad.write_text("[train\n")
    assert "invalid TOML" in _one_error_line(runner.invoke(app, ["train", str(data), "--config", str(bad)]))
    missing = tmp_path / "missing.toml"
    assert "config file not found" in _one_error_line(
        runner.invoke(app, ["train", str(data), "--config", str(missing)])
    )


def test_recipe_then_config_file_then_flags(data: Path, tmp_path: Path) -> None:
    """defaults < --recipe < --config < flags, as saved in the run's config.toml and checkpoint."""
    config_file = tmp_path / "settings.toml"
    config_file.write_text(
        "[train]\nepochs = 50\nbatch_size = 2\nlr = 0.02\ncrop_size = 32\nbase_size = 48\nworkers = 0\n"
        'seed = 5\nval_split = ""\nlog_every = 1\nse_weight = 0.5\n'
    )
    out = tmp_path / "run"
    flags = ["--recipe", "synthetic_cpu", "--config", str(config_file), "--iters", "1", "--lr", "0.03",
             "--seed", "6", "--device", "cpu", "--no-progress", "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, ["train", str(data), *flags])
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["recipe"] == "synthetic_cpu" and saved["model"] == "encnet_tiny"  # recipe
    assert saved["val_every"] == 10  # recipe, not overridden
    from_file = (saved["batch_size"], saved["crop_size"], saved["workers"], saved["se_weight"])
    assert from_file == (2, 32, 0, 0.5)
    assert (saved["lr"], saved["seed"], saved["iters"]) == (0.03, 6, 1)  # flags
    assert "epochs" not in saved  # --iters replaces the file's epochs
    assert saved["data"] == str(data) and saved["output_dir"] == str(out)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["train_config"]["lr"] == 0.03 and ckpt["iteration"] == 1
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == 0.0  # 0.03 x 2/16 x (1 - 1/1) ** 0.9


# ----------------------------------------------------------------------------- unreadable checkpoints


class _CodePayload:
    """Unpickling this runs a shell command (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "torch_save_payload", "pickle_payload"])
@pytest.mark.parametrize("option", ["--resume", "--init-from"])
def test_bad_checkpoint_is_one_line_error(
    data: Path, checkpoint: Path, tmp_path: Path, kind: str, option: str
) -> None:
    marker = tmp_path / "code-ran"
    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif kind == "random":
        bad.write_bytes(os.urandom(5000))
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "torch_save_payload":
        torch.save({"model": _CodePayload(marker)}, bad)
    else:
        bad.write_bytes(pickle.dumps({"model": _CodePayload(marker)}))
    result = runner.invoke(
        app, ["train", str(data), *TINY, "--iters", "1", "-o", str(tmp_path / "run"), option, str(bad)]
    )
    line = _one_error_line(result)
    assert str(bad) in line
    if kind in ("truncated", "empty"):
        assert "is corrupt or not a PyTorch checkpoint" in line
    if kind == "torch_save_payload":
        assert "was refused" in line
    assert not marker.exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_missing_resume_checkpoint(data: Path, tmp_path: Path) -> None:
    line = _one_error_line(
        runner.invoke(app, ["train", str(data), *TINY, "--iters", "1", "--resume", str(tmp_path / "no.pt")])
    )
    assert "no such checkpoint" in line


# ----------------------------------------------------------------------------- SIGTERM and --resume auto


def test_sigterm_saves_last_and_resume_auto_continues(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    command = [sys.executable, "-m", "encnet_cli", "train", str(data), *TINY, "--iters", "100000", "--log-every", "1",
               "--val-split", "", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no metrics record within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    stopped_at = ckpt["iteration"]
    logged = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert 1 <= logged[-1] <= stopped_at < 100000
    assert f"SIGTERM: saved {out / 'last.pt'} at iteration {stopped_at}" in " ".join(stderr.split())
    assert "SIGTERM" in stdout  # the summary table's stopped_by row
    assert not list(out.glob(".*.tmp"))

    result = runner.invoke(
        app, ["train", str(data), *TINY, "--iters", str(stopped_at + 2), "--log-every", "1", "--val-split", "",
              "-o", str(out), "--resume", "auto", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"resumed from {out / 'last.pt'} at iteration {stopped_at}/{stopped_at + 2}" in " ".join(
        result.stderr.split()
    )
    assert json.loads(result.stdout)["iteration"] == stopped_at + 2
    records = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert records[len(logged) :] == [stopped_at + 1, stopped_at + 2]
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == stopped_at + 2

    # the run is complete: resuming again asks for a longer run
    again = runner.invoke(
        app, ["train", str(data), *TINY, "--iters", str(stopped_at + 2), "-o", str(out), "--resume", "auto"]
    )
    assert "raise --iters/--epochs" in _one_error_line(again)


def test_diverging_run_stops_with_one_clear_line(data: Path, tmp_path: Path) -> None:
    args = ["--iters", "12", "--lr", "1e6", "--log-every", "1", "-o", str(tmp_path / "r")]
    result = runner.invoke(app, ["train", str(data), *TINY, *args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1
        and "the loss became non-finite near iteration" in errors[0]
        and "lower --lr" in errors[0]
    )
    assert not (tmp_path / "r" / "last.pt").exists()  # diverged within the first epoch: nothing saved
