"""engine/trackers/__init__.py: one tracker per name, chained in the given order around ``inner``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from encnet_core.engine.events import TrainLog, TrainStart, Validated
from encnet_core.engine.trackers import TRACKERS, make_trackers
from encnet_core.engine.trackers.base import TrackerCallback, final_scalars, train_scalars, val_scalars


class _Recorder(TrackerCallback):
    """A tracker that keeps what it was given (the base's dispatch, without a package)."""

    def __init__(self, run_dir: Path, inner=None) -> None:
        super().__init__(run_dir, config={"model": "m"}, inner=inner)
        self.written: list[tuple] = []

    def _open(self, event, config) -> None:
        self.run = "open"
        self.written.append(("open", event.iteration, config))

    def _log(self, scalars, step) -> None:
        self.written.append(("log", step, scalars))

    def _finish(self, final, step) -> None:
        self.written.append(("finish", step, final))

    def _close(self, failed) -> None:
        self.written.append(("close", failed))


START = TrainStart(total_iters=4, iteration=0, iters_per_epoch=4, epochs=1, device="cpu", world_size=1, lr=0.01,
                   global_batch=4, params=10)  # fmt: skip
LOG = TrainLog(iteration=2, total_iters=4, epoch=1, lr=0.005, losses={"loss": 2.0, "seg": 1.5, "aux": 0.5}, it_per_s=3.0,
               images_per_s=12.0, data_share=0.25)  # fmt: skip
VAL = Validated(iteration=4, epoch=1, metrics={"pixAcc": 0.5, "mIoU": 0.25, "score": 0.375})


def test_events_in_order_then_passed_on(tmp_path: Path) -> None:
    seen = []
    tracker = _Recorder(tmp_path, inner=seen.append)
    for event in (START, LOG, VAL):
        tracker(event)
    tracker.finish({"type": "val", "iteration": 4, "epoch": 1, "pixAcc": 0.5, "mIoU": 0.25, "score": 0.375}, 4)
    tracker.close()  # a second close: nothing
    assert seen == [START, LOG, VAL]
    assert tracker.written == [
        ("open", 0, {"model": "m"}),
        ("log", 2, {"loss/total": 2.0, "loss/seg": 1.5, "loss/aux": 0.5, "lr": 0.005, "throughput/images_per_s": 12.0,
                    "throughput/it_per_s": 3.0, "throughput/data_share": 0.25}),
        ("log", 4, {"val/pixAcc": 0.5, "val/mIoU": 0.25, "val/score": 0.375}),
        ("finish", 4, {"iterations": 4.0, "best/iteration": 4.0, "best/epoch": 1.0, "best/pixAcc": 0.5, "best/mIoU": 0.25,
                       "best/score": 0.375, "last/pixAcc": 0.5, "last/mIoU": 0.25, "last/score": 0.375}),
        ("close", False),
    ]  # fmt: skip


def test_no_run_without_train_start(tmp_path: Path) -> None:
    """Ranks other than 0 get no events: their tracker opens nothing, and finish/close write nothing."""
    tracker = _Recorder(tmp_path)
    tracker.finish(None, 4)
    tracker.close(failed=True)
    assert tracker.written == []


def test_scalar_names_are_the_metrics_jsonl_numbers() -> None:
    record = LOG.record()
    scalars = train_scalars(LOG)
    assert scalars["loss/total"] == record["loss"] and scalars["lr"] == record["lr"]
    assert val_scalars(VAL) == {f"val/{k}": v for k, v in VAL.metrics.items()}
    assert final_scalars(None, None, 7) == {"iterations": 7.0}


def test_make_trackers_chains_once_per_name(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    seen = []
    [board] = make_trackers(["tensorboard", "tensorboard"], tmp_path, {"model": "m"}, inner=seen.append)
    assert board.inner == seen.append and board.log_dir == tmp_path / "tensorboard"
    assert make_trackers([], tmp_path, {}) == []
    if importlib.util.find_spec("mlflow") is not None:  # two trackers: the first calls the second, which calls inner
        first, second = make_trackers(["mlflow", "tensorboard"], tmp_path, {}, inner=seen.append)
        assert type(first).__name__ == "MLflowCallback" and first.inner is second and second.inner == seen.append
    with pytest.raises(ValueError, match="one of tensorboard, mlflow, wandb"):
        make_trackers(["comet"], tmp_path, {})
    assert TRACKERS == ("tensorboard", "mlflow", "wandb")
