"""Gradient accumulation (``--accumulate K``): K micro-batches per optimizer step equal one K times larger
batch, DDP synchronises once per step, the fp16 scaler steps once, exact resume counts micro-batches."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import assert_same as _assert_same
from helpers import load_checkpoint_file as _load
from helpers import one_error_line, run_cli
from helpers import run_records as _records
from helpers import stop_at as _stop_at
from torch import nn
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.config import TrainConfig
from encnet_core.engine.distributed import DistInfo
from encnet_core.engine.events import TrainEvent, TrainStart
from encnet_core.engine.train import build_model, setup, train, train_step
from encnet_core.errors import ConfigError


def _equivalence_config(folder_h5: Path, out: Path, batch_size: int, accumulate: int, **changes) -> TrainConfig:
    """encnet_tiny on the 3-class folder set (no ignore pixels; base 64 > crop 32: no padding), frozen BN, no dropout."""
    return TrainConfig(
        data=str(folder_h5), output_dir=str(out), model="encnet_tiny", batch_size=batch_size, accumulate=accumulate,
        iters=1, lr=0.1, crop_size=32, base_size=64, workers=0, device="cpu", freeze_bn=True, dropout=0.0,
        val_split="", log_every=1, **changes,
    )  # fmt: skip


def test_accumulated_micro_batches_equal_one_large_batch(folder_h5: Path, tmp_path: Path) -> None:
    """batch 2 x ``accumulate=4`` == batch 8 x 1: the same 8 images, the same lr (global batch 8), the same weights
    after one SGD step (the first step's update is lr x (gradient + decay): equal weights, equal gradients).

    This holds only because the two are the same computation here, which they are not in general:
    * BatchNorm in training mode normalises each micro-batch with its own statistics (2 images, not 8) and
      updates the running statistics K times: the runs use ``freeze_bn`` (running statistics throughout).
    * Dropout draws other masks in another order: ``dropout=0``.
    * The loss: the criterion (engine/losses.py) averages the cross-entropy over each micro-batch's
      *labelled* pixels, and a step's loss is the mean of the K micro-batch losses (each divided by K). That is
      the mean over the effective batch only when every micro-batch has as many labelled pixels; with ignore
      pixels (padding, ignore bands) a micro-batch with fewer labelled pixels weighs each of them more. The folder
      set has no ignore pixels and base 64 > crop 32 means no padding. (The SE loss averages over images x classes,
      the same count in every micro-batch: exact either way.)
    """
    runs = {}
    for batch, k in ((8, 1), (2, 4)):
        events: list[TrainEvent] = []
        runs[k] = train(_equivalence_config(folder_h5, tmp_path / f"k{k}", batch, k), callback=events.append)
        start = next(e for e in events if isinstance(e, TrainStart))
        assert start.global_batch == 8 and start.lr == pytest.approx(0.1 * 8 / 16)  # the lr rule sees the effective batch
        assert runs[k].iters_per_epoch == 2  # 16 images, 8 per optimizer step
    one, accumulated = _load(runs[1].last_checkpoint), _load(runs[4].last_checkpoint)
    assert one["iteration"] == accumulated["iteration"] == 1
    for key, value in one["model"].items():
        torch.testing.assert_close(accumulated["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(accumulated["optimizer"]["state"][0]["momentum_buffer"], one["optimizer"]["state"][0]["momentum_buffer"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    # the logged loss is the effective batch's (the mean of the micro-batches' equals it: equal pixel counts)
    assert _records(tmp_path / "k4")[0]["loss"] == pytest.approx(_records(tmp_path / "k1")[0]["loss"], rel=1e-5)
    # ... and the step moved the weights well beyond that tolerance
    torch.manual_seed(0)
    start_weights = build_model(TrainConfig(model="encnet_tiny", freeze_bn=True, dropout=0.0), 3).state_dict()
    moved = max((one["model"][k] - start_weights[k]).abs().max().item() for k in start_weights if start_weights[k].is_floating_point())
    assert moved > 1e-3


def test_interrupt_and_resume_with_accumulation_equals_one_run(make_config: Callable[..., TrainConfig]) -> None:
    """``accumulate=2``, batch 2: 24 images are 12 micro-batches, 6 optimizer steps an epoch. 12 steps in one go ==
    stop after 9 (SIGTERM path, mid-epoch 2: the sampler resumes at micro-batch 6) + ``resume="auto"``, bit for bit."""
    one_go = train(make_config("one_go", iters=12, batch_size=2, accumulate=2))
    assert (one_go.iteration, one_go.iters_per_epoch, one_go.epoch) == (12, 6, 2)

    config = make_config("split", iters=12, batch_size=2, accumulate=2)
    stopped = train(config, callback=_stop_at(9))
    assert (stopped.stopped_by, stopped.iteration) == ("SIGTERM", 9)
    assert _load(stopped.last_checkpoint)["iteration"] == 9
    resumed = train(config, resume="auto")
    assert resumed.iteration == 12

    a, b = _load(one_go.last_checkpoint), _load(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a.keys() - {"train_config"}:  # weights, optimizer, scheduler, RNG, metrics, counters
        _assert_same(a[key], b[key], key)
    assert b["scheduler"]["last_epoch"] == 12  # one scheduler step per optimizer step
    assert [r["iteration"] for r in _records(resumed.output_dir)] == [3, 6, 9, 12]
    _assert_same([r["loss"] for r in _records(one_go.output_dir)], [r["loss"] for r in _records(resumed.output_dir)])
    # throughput counts the images of an optimizer step: batch 2 x 1 process x 2 micro-batches
    assert all(r["images_per_s"] == pytest.approx(4 * r["it_per_s"]) for r in _records(one_go.output_dir))


def test_a_stop_signal_mid_accumulation_finishes_the_step(make_config: Callable[..., TrainConfig], monkeypatch) -> None:
    """SIGTERM between two micro-batches of a step: the step completes (both micro-batches, one optimizer step)
    and last.pt is saved at that step boundary."""
    from encnet_core.engine import train as train_module

    forward = train_module._forward
    calls = []

    def forward_then_signal(run, images, targets, device):
        calls.append(1)
        if len(calls) == 3:  # the first micro-batch of step 2
            signal.raise_signal(signal.SIGTERM)
        return forward(run, images, targets, device)

    monkeypatch.setattr(train_module, "_forward", forward_then_signal)
    stopped = train(make_config("stop", iters=6, batch_size=2, accumulate=2, val_split=""))
    assert (stopped.stopped_by, stopped.iteration, len(calls)) == ("SIGTERM", 2, 4)
    assert _load(stopped.last_checkpoint)["iteration"] == 2


class _RecordingDDP(nn.Module):
    """What the step sees of DDP: ``no_sync()``; records whether each forward ran inside it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.syncing, self.forwards = module, True, []

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.forwards.append(self.syncing)
        return self.module(images)


def test_ddp_no_sync_on_all_but_the_last_micro_batch(make_config: Callable[..., TrainConfig]) -> None:
    run = setup(make_config("ddp", iters=2, batch_size=2, accumulate=3, val_split=""), None, lambda event: None, DistInfo())
    run.net = _RecordingDDP(run.model)
    images, masks = [torch.randn(2, 3, 32, 32) for _ in range(3)], [torch.randint(0, 3, (2, 32, 32)) for _ in range(3)]
    loss, parts = train_step(run, images, masks, torch.device("cpu"))
    assert run.net.forwards == [False, False, True]  # all-reduce (DDP's backward hooks) on the last micro-batch only
    assert run.scheduler.last_epoch == 1 and torch.isfinite(loss) and set(parts) >= {"seg"}


def test_loss_scaler_scales_every_micro_batch_and_steps_once(make_config: Callable[..., TrainConfig]) -> None:
    """fp16's GradScaler (here on CPU: fp16 training itself needs CUDA) with accumulation: each micro-batch's
    backward is scaled, the optimizer steps once on the unscaled sum: the same weights as without a scaler (a
    power-of-two scale is exact), and ``update`` ran once (its growth tracker counts one step)."""
    config = make_config("scaler", iters=2, batch_size=2, accumulate=2, val_split="", dropout=0.0)
    images, masks = [torch.randn(2, 3, 32, 32) for _ in range(2)], [torch.randint(0, 3, (2, 32, 32)) for _ in range(2)]
    weights = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)):
        run = setup(config, None, lambda event: None, DistInfo())
        run.scaler = scaler
        train_step(run, images, masks, torch.device("cpu"))
        weights.append({k: v.detach().clone() for k, v in run.model.state_dict().items()})
        if scaler is not None:
            assert scaler.get_scale() == 2.0**11  # one update with growth_interval 1: grown once, not twice
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_an_epoch_is_whole_optimizer_steps_and_the_remainder_is_dropped(make_config: Callable[..., TrainConfig]) -> None:
    """24 images, batch 2: 12 micro-batches; ``accumulate=5``: 2 steps an epoch, 2 micro-batches left over each epoch."""
    run = setup(make_config("rest", epochs=3, batch_size=2, accumulate=5, val_split=""), None, lambda event: None, DistInfo())
    assert (run.iters_per_epoch, run.total_iters, run.global_batch) == (2, 6, 10)
    assert run.lr == pytest.approx(0.05 * 10 / 16)


def test_too_few_images_for_one_optimizer_step_is_one_config_error(make_config: Callable[..., TrainConfig]) -> None:
    with pytest.raises(ConfigError, match="fewer than one optimizer step.*--accumulate 13"):
        setup(make_config("few", iters=1, batch_size=2, accumulate=13), None, lambda event: None, DistInfo())
    with pytest.raises(ConfigError, match="--accumulate must be at least 1"):
        dataclasses.replace(TrainConfig(), accumulate=0)


def test_bad_accumulate_on_the_command_line_is_one_line(synthetic_h5: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(synthetic_h5), "-o", str(tmp_path / "run"), "--accumulate", "0"])
    assert one_error_line(result) == "error: --accumulate must be at least 1"


# ----------------------------------------------------------------------------- DDP (gloo)


@pytest.mark.slow
def test_two_process_gloo_accumulation_equals_one_process_with_the_whole_batch(folder_h5: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x batch 2 x ``--accumulate 2`` == 1 process x batch 8, after 2 SGD steps: the same 8
    images a step (rank r's micro-batches are positions r, r+2 and r+4, r+6 of the order), gradients averaged over
    ranks once per step. Frozen BN, no dropout, no ignore pixels: see the single-process test for why."""
    common = [str(folder_h5), "-m", "encnet_tiny", "--iters", "2", "--dropout", "0", "--crop-size", "32", "--base-size", "64",
              "--workers", "0", "--lr", "0.1", "--freeze-bn", "--val-split", "", "--log-every", "1", "--no-progress"]  # fmt: skip
    two_args = ["train", *common, "--batch-size", "2", "--accumulate", "2", "-o", str(tmp_path / "two")]
    two = run_cli(two_args, tmp_path, ["--standalone", "--nproc-per-node", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(["train", *common, "--batch-size", "8", "-o", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "global batch 8" in " ".join(two.stderr.split())
    assert [r["iteration"] for r in _records(tmp_path / "two")] == [1, 2]

    a, b = _load(tmp_path / "two" / "last.pt"), _load(tmp_path / "one" / "last.pt")
    assert a["iteration"] == b["iteration"] == 2
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-4, msg=key)
