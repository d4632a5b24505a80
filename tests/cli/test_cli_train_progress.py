"""``encnet train``'s messages and progress: the epochs its lines and summary state agree (1200 iterations of
37 are 33 epochs, 30 of 37 are 1), plurals, the time-left estimate on a terminal and in a log, and stdout
left to ``--json``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from helpers import make_synthetic
from rich.console import Console
from train_stubs import stub_training
from typer.testing import CliRunner

from encnet_cli._output import plural
from encnet_cli._progress import TrainDisplay, duration, start_text
from encnet_cli.main import app
from encnet_core.engine.events import Message, TrainLog, TrainStart, TrainStep, Validated

runner = CliRunner()


def _start(total: int, per_epoch: int, epochs: int, iteration: int = 0) -> TrainStart:
    return TrainStart(total_iters=total, iteration=iteration, iters_per_epoch=per_epoch, epochs=epochs, device="cpu",
                      world_size=1, lr=0.05, global_batch=8, params=360_000)  # fmt: skip


def _log(iteration: int, total: int, epoch: int) -> TrainLog:
    return TrainLog(iteration, total, epoch, 0.01, {"loss": 1.5, "seg": 1.0}, 10.0, 80.0, 0.25)


def test_counts_and_durations_read_as_words() -> None:
    assert [plural(n, "epoch") for n in (0, 1, 2, 33)] == ["0 epochs", "1 epoch", "2 epochs", "33 epochs"]
    assert [duration(s) for s in (0, 59.6, 80, 3725)] == ["0:00:00", "0:01:00", "0:01:20", "1:02:05"]


def test_the_start_line_says_the_run_length_in_epochs_with_the_last_partial() -> None:
    assert "1200 iterations (37/epoch, 33 epochs, the last one of 16 iterations)," in start_text(_start(1200, 37, 33))
    assert "30 iterations (37/epoch, 1 epoch, partial)," in start_text(_start(30, 37, 1))
    assert "74 iterations (37/epoch, 2 epochs)," in start_text(_start(74, 37, 2))
    assert "1 iteration (1/epoch, 1 epoch)," in start_text(_start(1, 1, 1))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_in_a_log_progress_is_a_plain_line_with_the_time_left() -> None:
    """Not a terminal: a line at the first record, then at most every `interval` s, and at the end, one line each."""
    out, clock = io.StringIO(), _Clock()
    display = TrainDisplay(enabled=True, console=Console(file=out, width=40), interval=30, clock=clock)
    display(_start(1200, 37, 33))
    clock.now += 10
    display(TrainStep(37, 1200))
    display(_log(100, 1200, 3))  # first record: 100 its in 10 s -> 1100 left at 10 it/s
    clock.now += 20
    display(_log(300, 1200, 9))  # 20 s after the last line: not yet
    clock.now += 20
    display(_log(400, 1200, 11))  # 40 s after: 400 its in 50 s since the start -> 800 left at 8 it/s
    display(Validated(400, 11, {"pixAcc": 0.9, "mIoU": 0.5, "mIoU_all": 0.4}))
    clock.now += 1
    display(_log(1200, 1200, 33))  # the end, however soon
    display(Message("saved [x]"))
    display.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "training on cpu x1: 1200 iterations (37/epoch, 33 epochs, the last one of 16 iterations), global batch 8, "
        "lr 0.05, 0.36M parameters",
        "it 100/1200 (8%), epoch 3/33: loss 1.500 (seg 1.000) lr 1.00e-02 10.00 it/s data 25%; 0:00:10 elapsed, 0:01:50 left",
        "it 400/1200 (33%), epoch 11/33: loss 1.500 (seg 1.000) lr 1.00e-02 10.00 it/s data 25%; 0:00:50 elapsed, 0:01:40 left",
        "val epoch 11 (it 400): pixAcc 0.9000 mIoU 0.5000 (all-classes 0.4000)",
        "it 1200/1200 (100%), epoch 33/33: loss 1.500 (seg 1.000) lr 1.00e-02 10.00 it/s data 25%; 0:00:51 elapsed, done",
        "saved [x]",
    ]  # one line each, whatever the width (40 here), and no control codes


def test_on_a_terminal_progress_is_a_bar_with_the_epoch_and_the_time_left() -> None:
    out = io.StringIO()
    display = TrainDisplay(enabled=True, console=Console(file=out, width=100, force_terminal=True))
    assert display.bar and not display.lines
    display(_start(1200, 37, 33, iteration=50))  # resumed mid-epoch 2
    task = display.progress.tasks[0]
    assert (task.completed, task.total, task.fields["epoch"]) == (50, 1200, "2/33")
    display(TrainStep(74, 1200))
    assert display.progress.tasks[0].fields["epoch"] == "2/33"
    display(TrainStep(75, 1200))
    display(_log(100, 1200, 3))
    assert display.progress.tasks[0].fields["epoch"] == "3/33" and display.progress.stats.startswith("loss 1.500 (seg 1.000)")
    display.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())
    assert "epoch 3/33" in shown and "100/1200" in shown and " elapsed, " in shown and " left" in shown
    assert "it 100/1200" not in shown  # no plain lines on a terminal


def test_without_progress_only_the_messages_are_printed() -> None:
    out = io.StringIO()
    display = TrainDisplay(enabled=False, console=Console(file=out, width=200, force_terminal=True))
    display(_start(30, 37, 1))
    display(_log(30, 30, 1))
    display(Validated(30, 1, {"pixAcc": 0.5, "mIoU": 0.25, "mIoU_all": 0.2}))
    display.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue()).splitlines()
    assert len(shown) == 2 and shown[0].startswith("training on cpu x1: 30 iterations (37/epoch, 1 epoch, partial)")
    assert shown[1] == "val epoch 1 (it 30): pixAcc 0.5000 mIoU 0.2500 (all-classes 0.2000)"


@pytest.fixture(scope="module")
def data37(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 training images (37 iterations per epoch at batch 1) and 2 validation images of 32 px."""
    return make_synthetic(tmp_path_factory.mktemp("cli_epochs37"), 37, 2, size=32)


ARGS = ["-m", "encnet_tiny", "--batch-size", "1", "--crop-size", "32", "--base-size", "32", "--workers", "0",
        "--device", "cpu", "--val-every", "10", "--log-every", "100"]  # fmt: skip


@pytest.mark.parametrize(
    ("iters", "start", "epochs", "table", "vals"),
    [
        (1200, "1200 iterations (37/epoch, 33 epochs, the last one of 16 iterations)", 33,
         "33 (the last one partial: 16 of 37 iterations)", [10, 20, 30, 33]),
        (30, "30 iterations (37/epoch, 1 epoch, partial)", 1, "1 (partial: 30 of 37 iterations)", [1]),
    ],
)  # fmt: skip
def test_lines_and_summary_state_the_same_epochs(
    data37: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iters: int, start: str, epochs: int, table: str, vals: list[int]
) -> None:
    """The issue's two runs: start line, progress lines, validations, the table and --json agree."""
    stub_training(monkeypatch)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data37), *ARGS, "--iters", str(iters), "-o", str(out), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert f"training on cpu x1: {start}, global batch 1" in err
    assert re.findall(r"val epoch (\d+) \(it (\d+)\)", err) == [(str(e), str(min(e * 37, iters))) for e in vals]
    assert f"it {iters}/{iters} (100%), epoch {epochs}/{epochs}: " in err and err.count(", done") == 1
    assert not re.search(r"\b1 epochs\b", err + result.stdout)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["epochs"], summary["iters_per_epoch"], summary["iteration"]) == (epochs, 37, iters)
    assert summary["best"]["epoch"] in vals
    row = next(line for line in result.stdout.splitlines() if " epochs " in line)
    assert table in row


def test_json_on_stdout_stays_json(data37: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--json to stdout: stdout is the summary alone; the messages (no progress) go to stderr."""
    stub_training(monkeypatch)
    result = runner.invoke(app, ["train", str(data37), *ARGS, "--iters", "30", "-o", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["epochs"], summary["best"]["epoch"]) == (1, 1)
    assert "val epoch 1 (it 30)" in result.stderr and "it 30/30" not in result.stderr
