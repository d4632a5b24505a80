"""Checkpoints within an epoch (--save-every, --save-every-minutes), elastic restarts under torchrun
(--max-restarts) and multi-node runs (two torchrun agents on one machine, c10d rendezvous, gloo)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import assert_same as _assert_same
from helpers import load_checkpoint_file as _load
from helpers import run_records as _records

from encnet_core.config import TrainConfig
from encnet_core.engine import train as train_module
from encnet_core.engine.events import Message, TrainEvent, TrainLog, TrainStep
from encnet_core.engine.train import train
from encnet_core.engine.train_state import restart_resume
from encnet_core.errors import ConfigError


class _Crash(Exception):
    """A process dying mid-epoch (no SIGTERM: nothing is saved on the way out)."""


def _crash_at(iteration: int) -> Callable[[TrainEvent], None]:
    def callback(event: TrainEvent) -> None:
        if isinstance(event, (TrainStep, TrainLog)) and event.iteration == iteration:
            raise _Crash(iteration)

    return callback


# ----------------------------------------------------------------------------- --save-every


def test_save_every_checkpoint_resumes_exactly(make_config: Callable[..., TrainConfig]) -> None:
    """18 iterations (3 epochs of 6) in one go == a run that dies at iteration 10 (mid-epoch 2, nothing saved
    on the way out) + ``resume="auto"`` from the --save-every 4 checkpoint of iteration 8, bit for bit."""
    one_go = train(make_config("one_go", iters=18))
    config = make_config("crashed", iters=18, save_every=4, save_every_minutes=0.0)
    with pytest.raises(_Crash):
        train(config, callback=_crash_at(10))
    last = Path(config.output_dir) / "last.pt"
    assert _load(last)["iteration"] == 8 and _load(last)["epoch"] == 2  # saved mid-epoch 2 (iterations 7..12)

    messages: list[str] = []
    resumed = train(config, resume="auto", callback=lambda e: messages.append(e.text) if isinstance(e, Message) else None)
    assert resumed.iteration == 18 and any("resumed from" in m and "iteration 8/18" in m for m in messages)
    a, b = _load(one_go.last_checkpoint), _load(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a.keys() - {"train_config"}:  # weights, optimizer, scheduler, RNG, metrics, counters
        _assert_same(a[key], b[key], key)


def test_save_every_minutes_saves_within_the_epoch(make_config: Callable[..., TrainConfig]) -> None:
    """A period shorter than a step: last.pt after every step; the crash at 5 (of a 6-step epoch) keeps 4."""
    config = make_config("minutes", iters=12, save_every_minutes=1e-9)
    with pytest.raises(_Crash):
        train(config, callback=_crash_at(5))
    assert _load(Path(config.output_dir) / "last.pt")["iteration"] == 4
    off = make_config("off", iters=12, save_every=0, save_every_minutes=0.0)
    with pytest.raises(_Crash):
        train(off, callback=_crash_at(5))
    assert not (Path(off.output_dir) / "last.pt").exists()  # off: the epoch-end save only


def test_save_settings_are_checked() -> None:
    assert TrainConfig.save_every == 0 and TrainConfig.save_every_minutes == 30.0
    with pytest.raises(ConfigError, match="--save-every must be >= 0"):
        TrainConfig(save_every=-1)
    with pytest.raises(ConfigError, match="--save-every-minutes must be >= 0"):
        TrainConfig(save_every_minutes=-0.5)


# ----------------------------------------------------------------------------- elastic restarts (no torchrun)


def test_restart_resumes_from_the_run_folders_last_pt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert restart_resume(None, tmp_path, said.append) is None and restart_resume("x.pt", tmp_path) == "x.pt"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # torchrun's first attempt
    assert restart_resume("auto", tmp_path, said.append) == "auto" and said == []

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert restart_resume(None, tmp_path, said.append) is None  # nothing saved yet: from scratch
    assert restart_resume("other/best.pt", tmp_path, said.append) == "other/best.pt"  # ... or as the first attempt
    (tmp_path / "last.pt").write_bytes(b"")
    for given in (None, "auto", "other/best.pt"):  # the run folder's last.pt is newer than any --resume
        assert restart_resume(given, tmp_path, said.append) == str(tmp_path / "last.pt")
    assert said == [
        f"restart 2 of torchrun: no {tmp_path / 'last.pt'} yet, starting from scratch",
        f"restart 2 of torchrun: no {tmp_path / 'last.pt'} yet, resuming from other/best.pt",
        *[f"restart 2 of torchrun: resuming from {tmp_path / 'last.pt'}"] * 3,
    ]


def test_restart_forgets_the_records_after_the_checkpoint(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    entries = [{"type": "train", "iteration": i} for i in (2, 4, 6)] + [{"type": "val", "iteration": 4}]
    metrics.write_text("".join(json.dumps(e) + "\n" for e in entries))
    train_module._forget_lost_records(metrics, 4)
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == [entries[0], entries[1], entries[3]]
    assert _records(tmp_path) == entries[:2]
    train_module._forget_lost_records(tmp_path / "none.jsonl", 4)  # no file: nothing to do


def test_save_every_never_saves_a_non_finite_state(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss turns NaN at iteration 8: --save-every 1 stops there, last.pt of iteration 7 stays."""
    import math

    import torch

    from encnet_core.engine import segmentation as segmentation_module
    from encnet_core.engine.train import NonFiniteLoss

    class NaNFromIteration8(segmentation_module.SegmentationLoss):
        calls = 0

        def forward(self, outputs, labels):
            total, parts = super().forward(outputs, labels)
            NaNFromIteration8.calls += 1
            return (total * math.nan if NaNFromIteration8.calls >= 8 else total), parts

    monkeypatch.setattr(segmentation_module, "SegmentationLoss", NaNFromIteration8)
    config = make_config("nan", iters=18, log_every=6, val_split="", save_every=1)
    with pytest.raises(NonFiniteLoss, match=r"non-finite near iteration 8; last\.pt keeps the last good state"):
        train(config)
    ckpt = _load(Path(config.output_dir) / "last.pt")
    assert ckpt["iteration"] == 7 and all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())
