"""``train --tracker tensorboard`` (engine/trackers/tensorboard.py): the events read back hold metrics.jsonl's numbers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.config import TrainConfig
from encnet_core.engine.events import TrainLog, TrainStart
from encnet_core.engine.trackers.tensorboard import TensorBoardCallback
from encnet_core.engine.train import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


def test_events_match_metrics_jsonl(make_config: Callable[..., TrainConfig]) -> None:
    config = make_config("tb", iters=6, val_every=1)  # 6 iterations = one epoch, one validation
    seen = []
    with TensorBoardCallback(Path(config.output_dir) / "tensorboard", inner=seen.append) as callback:
        train(config, callback=callback)
    assert any(isinstance(e, TrainLog) for e in seen), "events are passed on to the inner callback"
    scalars = _scalars(Path(config.output_dir) / "tensorboard")
    train_records, val_records = _records(Path(config.output_dir), "train"), _records(Path(config.output_dir), "val")
    assert train_records and val_records
    for record in train_records:
        step = record["iteration"]
        assert scalars["loss/total"][step] == pytest.approx(record["loss"], rel=1e-6)
        for term in ("seg", "aux", "se"):
            if term in record:
                assert scalars[f"loss/{term}"][step] == pytest.approx(record[term], rel=1e-6)
        assert scalars["lr"][step] == pytest.approx(record["lr"], rel=1e-6)
        assert scalars["throughput/images_per_s"][step] == pytest.approx(record["images_per_s"], rel=1e-6)
        assert scalars["throughput/data_share"][step] == pytest.approx(record["data_share"], rel=1e-5, abs=1e-7)
    for record in val_records:
        for metric in ("pixAcc", "mIoU", "mIoU_all", "score"):
            assert scalars[f"val/{metric}"][record["iteration"]] == pytest.approx(record[metric], rel=1e-6, abs=1e-7)
    assert sorted(scalars["loss/total"]) == [r["iteration"] for r in train_records]


def test_cli_tensorboard_writes_run_tensorboard(synthetic_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", str(synthetic_h5), "-m", "encnet_tiny", "--iters", "3", "--batch-size", "4", "--crop-size", "32",
        "--base-size", "48", "-j", "0", "--device", "cpu", "--val-split", "", "--log-every", "1", "-o", str(out),
        "--no-progress", "--tensorboard"])  # fmt: skip
    assert result.exit_code == 0, result.output
    scalars = _scalars(out / "tensorboard")
    assert sorted(scalars["loss/total"]) == [1, 2, 3]
    assert {"lr", "throughput/it_per_s", "loss/seg"} <= set(scalars)


def test_missing_tensorboard_is_one_line(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    result = CliRunner().invoke(app, ["train", str(synthetic_h5), "-m", "encnet_tiny", "--iters", "1", "--device", "cpu",
                                      "-o", str(tmp_path / "run"), "--tensorboard"])  # fmt: skip
    line = one_error_line(result)
    assert "pip install 'encnet[tensorboard]'" in line
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"


def _start(iteration: int) -> TrainStart:
    return TrainStart(total_iters=6, iteration=iteration, iters_per_epoch=6, epochs=1, device="cpu", world_size=1,
                      lr=0.01, global_batch=4, params=10)  # fmt: skip


def _log(iteration: int, loss: float) -> TrainLog:
    return TrainLog(iteration=iteration, total_iters=6, epoch=1, lr=0.01, losses={"loss": loss, "seg": loss},
                    it_per_s=1.0, images_per_s=4.0, data_share=0.1)  # fmt: skip


def test_resume_drops_the_steps_after_the_checkpoint(tmp_path: Path) -> None:
    """A run logs steps 1..6 and is resumed from its checkpoint at step 3: steps 4..6 are the new run's."""
    with TensorBoardCallback(tmp_path) as first:
        first(_start(0))
        for step in range(1, 7):
            first(_log(step, 10.0 + step))
    with TensorBoardCallback(tmp_path) as resumed:
        resumed(_start(3))
        for step in (4, 5):
            resumed(_log(step, 20.0 + step))
    assert _scalars(tmp_path)["loss/total"] == {1: 11.0, 2: 12.0, 3: 13.0, 4: 24.0, 5: 25.0}
