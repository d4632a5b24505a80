"""Every epoch a run states comes from one definition (``epoch_of``, from 1, the last one possibly partial):
the start line's count, the metrics records, the validations, the checkpoints and the result agree.

The runs here replace the SGD step and the training samples' decoding by stand-ins (tests/train_stubs.py:
the loop, data order, validation and checkpoints are the real ones), so 1200 iterations take a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_checkpoint_file, make_synthetic, run_records
from train_stubs import stub_training

from encnet_core.config import TrainConfig
from encnet_core.engine.events import TrainEvent, TrainStart, Validated
from encnet_core.engine.train import TrainResult, epoch_of, train


@pytest.mark.parametrize(
    ("iteration", "per_epoch", "epoch"),
    [(0, 37, 0), (1, 37, 1), (36, 37, 1), (37, 37, 1), (38, 37, 2), (1184, 37, 32), (1185, 37, 33), (1200, 37, 33),
     (30, 37, 1), (6, 6, 1), (7, 6, 2)],
)  # fmt: skip
def test_epoch_of_counts_from_one_and_rounds_up(iteration: int, per_epoch: int, epoch: int) -> None:
    assert epoch_of(iteration, per_epoch) == epoch


@pytest.fixture(scope="module")
def data37(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 training images (37 iterations per epoch at batch 1) and 2 validation images of 32 px."""
    return make_synthetic(tmp_path_factory.mktemp("epochs37"), 37, 2, size=32)


def _run(
    data: Path, out: Path, iters: int, monkeypatch: pytest.MonkeyPatch, resume: str | None = None
) -> tuple[TrainResult, list[TrainEvent]]:
    stub_training(monkeypatch)
    config = TrainConfig(data=str(data), output_dir=str(out), model="encnet_tiny", iters=iters, batch_size=1, crop_size=32,
                         base_size=32, workers=0, device="cpu", log_every=100, val_every=10)  # fmt: skip
    events: list[TrainEvent] = []
    return train(config, resume=resume, callback=events.append), events


@pytest.mark.parametrize(("iters", "epochs", "val_epochs"), [(1200, 33, [10, 20, 30, 33]), (30, 1, [1])])
def test_log_val_checkpoint_and_result_state_the_same_epochs(
    data37: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iters: int, epochs: int, val_epochs: list[int]
) -> None:
    """1200 iterations of 37: 33 epochs (the 33rd of 16 iterations) everywhere; 30 of 37: epoch 1, not 0."""
    result, events = _run(data37, tmp_path / "run", iters, monkeypatch)
    start = next(e for e in events if isinstance(e, TrainStart))
    assert (start.iters_per_epoch, start.epochs) == (37, epochs)
    train_records = run_records(result.output_dir)
    assert train_records[-1]["iteration"] == iters and train_records[-1]["epoch"] == epochs
    for record in train_records:  # each record: the epoch of its last iteration
        assert record["epoch"] == (record["iteration"] - 1) // 37 + 1
    vals = run_records(result.output_dir, "val")
    assert [v["epoch"] for v in vals] == val_epochs
    assert [v["epoch"] for v in vals] == [e.epoch for e in events if isinstance(e, Validated)]
    assert vals[-1]["iteration"] == iters
    assert (result.iteration, result.epoch, result.iters_per_epoch) == (iters, epochs, 37)
    assert load_checkpoint_file(result.last_checkpoint)["epoch"] == epochs
    best = load_checkpoint_file(result.best_checkpoint)
    assert best["epoch"] == best["best_metrics"]["epoch"] == epoch_of(best["iteration"], 37)


def test_a_resumed_run_goes_on_counting_the_same_epochs(data37: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped mid-epoch 2 (iteration 50) and resumed to 80: the records go on as one run's (epochs 2, 3)."""
    out = tmp_path / "run"
    first, _ = _run(data37, out, 50, monkeypatch)
    assert first.epoch == 2 and load_checkpoint_file(first.last_checkpoint)["epoch"] == 2
    resumed, events = _run(data37, out, 80, monkeypatch, resume="auto")
    start = next(e for e in events if isinstance(e, TrainStart))
    assert (start.iteration, start.epochs) == (50, 3)
    assert [(r["iteration"], r["epoch"]) for r in run_records(out)] == [(37, 1), (50, 2), (74, 2), (80, 3)]
    assert resumed.epoch == 3 and load_checkpoint_file(resumed.last_checkpoint)["epoch"] == 3
