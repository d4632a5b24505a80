"""The training loop: learning, poly schedule, sharding, exact resume, DDP equivalence, fine-tuning,
bf16, and stopping on a non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_same as _assert_same
from helpers import load_checkpoint_file as _load
from helpers import run_cli
from helpers import run_records as _records
from helpers import stop_at as _stop_at
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.config import TrainConfig
from encnet_core.data.hdf5 import read_info
from encnet_core.engine import segmentation as segmentation_module
from encnet_core.engine.distributed import DistInfo
from encnet_core.engine.events import VAL_METRICS, Message, TrainEvent, TrainLog, TrainStep, Validated
from encnet_core.engine.train import (
    EpochSampler,
    NonFiniteLoss,
    PolySchedule,
    TrainResult,
    build_model,
    init_from_checkpoint,
    setup,
    train,
    train_step,
)
from encnet_core.errors import CheckpointError

# ----------------------------------------------------------------------------- schedule and sampler


def test_poly_schedule_matches_formula() -> None:
    schedule = PolySchedule(total_iters=37, power=0.9)
    for it in range(0, 38):
        assert schedule(it) == pytest.approx((1 - it / 37) ** 0.9, rel=1e-12, abs=0)
    assert schedule(37) == 0.0 and schedule(40) == 0.0  # never negative past the end
    warm = PolySchedule(total_iters=100, power=0.9, warmup_iters=4)
    assert [warm(it) for it in range(4)] == pytest.approx(
        [(1 - it / 100) ** 0.9 * (it + 1) / 4 for it in range(4)]
    )
    assert warm(4) == pytest.approx((1 - 4 / 100) ** 0.9)

    # as the optimizer sees it: both parameter groups (heads at 10x) follow lr * (1 - it / total) ** 0.9
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(
        [{"params": params[:1], "lr": 0.02}, {"params": params[1:], "lr": 0.2}], lr=0.02
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PolySchedule(10))
    for it in range(10):
        for group, lr in zip(optimizer.param_groups, (0.02, 0.2), strict=True):
            assert group["lr"] == pytest.approx(lr * (1 - it / 10) ** 0.9, rel=1e-12)
        optimizer.step()
        scheduler.step()


def _batches(sampler: EpochSampler) -> list[list[int]]:
    indices = [index for _, index in sampler]
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


@pytest.mark.parametrize("size,batch,world", [(24, 4, 2), (25, 2, 3), (17, 3, 1)])
def test_epoch_sampler_shards_the_single_rank_batches(size: int, batch: int, world: int) -> None:
    single = EpochSampler(size, batch * world, DistInfo(), seed=3)
    ranks = [EpochSampler(size, batch, DistInfo(rank=r, world_size=world), seed=3) for r in range(world)]
    assert all(s.batches_per_epoch == single.batches_per_epoch == size // (batch * world) for s in ranks)
    for epoch in (0, 1):
        for sampler in [single, *ranks]:
            sampler.set_epoch(epoch)
        assert all(key[0] == epoch for key in ranks[0])
        whole = _batches(single)
        shards = [_batches(s) for s in ranks]
        assert all(len(s) == len(whole) == single.batches_per_epoch for s in shards)
        for k, batch_k in enumerate(whole):
            parts = [set(shard[k]) for shard in shards]
            assert all(len(p) == batch for p in parts)
            assert sum(len(p) for p in parts) == len(set().union(*parts))  # ranks disjoint
            assert set().union(*parts) == set(batch_k)  # together: the single-rank batch
        assert len(set(sum(whole, []))) == single.batches_per_epoch * batch * world  # no repeats in an epoch
    # a new permutation each epoch, the same one for the same (seed, epoch)
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first
    single.set_epoch(0)
    assert list(single) == first
    # resuming mid-epoch skips whole batches of this rank
    ranks[-1].set_epoch(1)
    full = _batches(ranks[-1])
    ranks[-1].set_epoch(1, start_batch=1)
    assert _batches(ranks[-1]) == full[1:] and len(ranks[-1]) == (len(full) - 1) * batch


# ----------------------------------------------------------------------------- a short run


@pytest.fixture(scope="module")
def short_run(base_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """36 iterations = 6 epochs of 6 batches, one metrics record per epoch, validation every 3 epochs."""
    out = tmp_path_factory.mktemp("short")
    config = dataclasses.replace(base_config, output_dir=str(out), iters=36, lr=0.1, log_every=6, val_every=3)
    return train(config)


def test_loss_goes_down_and_lr_follows_poly(short_run: TrainResult) -> None:
    records = _records(short_run.output_dir)
    assert [r["iteration"] for r in records] == [6, 12, 18, 24, 30, 36]
    assert all(math.isfinite(r["loss"]) for r in records)
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"
    base_lr = 0.1 * 4 / 16  # lr per 16 images x global batch 4
    for r in records:  # the lr the next step will use
        assert r["lr"] == pytest.approx(base_lr * (1 - r["iteration"] / 36) ** 0.9, rel=1e-9, abs=1e-15)
    assert [v["epoch"] for v in _records(short_run.output_dir, "val")] == [3, 6]
    assert short_run.iteration == 36 and short_run.epoch == 6 and short_run.stopped_by is None
    ckpt = _load(short_run.last_checkpoint)
    assert ckpt["iteration"] == 36 and ckpt["model_config"]["name"] == "encnet_tiny"
    assert ckpt["scheduler"]["_last_lr"] == pytest.approx([0.0, 0.0])


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupt_and_resume_equals_one_run(make_config: Callable[..., TrainConfig], workers: int) -> None:
    """18 iterations (3 epochs of 6) in one go == stop after 9 (mid-epoch 2) + ``resume="auto"``.

    The stop goes through the SIGTERM path. (Training with ``iters=9`` and then resuming with
    ``iters=18`` is *not* the same run: the poly schedule of the first 9 steps decays to 0 at 9.)
    """
    one_go = train(make_config("one_go", iters=18, workers=workers))
    assert one_go.iteration == 18

    config = make_config("split", iters=18, workers=workers)
    stopped = train(config, callback=_stop_at(9))
    assert (stopped.stopped_by, stopped.iteration) == ("SIGTERM", 9)
    assert _load(stopped.last_checkpoint)["iteration"] == 9
    messages: list[str] = []
    resume = "auto" if workers == 0 else str(stopped.last_checkpoint)  # both spellings
    resumed = train(
        config, resume=resume, callback=lambda e: messages.append(e.text) if isinstance(e, Message) else None
    )
    assert resumed.iteration == 18 and any("resumed from" in m and "iteration 9/18" in m for m in messages)

    a, b = _load(one_go.last_checkpoint), _load(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a.keys() - {"train_config"}:  # weights, optimizer, scheduler, RNG, metrics, counters
        _assert_same(a[key], b[key], key)
    assert {**a["train_config"], "output_dir": ""} == {**b["train_config"], "output_dir": ""}
    momentum = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert momentum and all(m is not None and m.abs().sum() > 0 for m in momentum)
    assert b["scheduler"]["_last_lr"] == a["scheduler"]["_last_lr"] == [0.0, 0.0]
    assert b["scheduler"]["last_epoch"] == 18
    # and the metrics log continues where it stopped: no iteration twice, none missing at the log points
    train_iterations = [r["iteration"] for r in _records(resumed.output_dir)]
    assert train_iterations == [3, 6, 9, 12, 15, 18]
    _assert_same(
        [r["loss"] for r in _records(one_go.output_dir)], [r["loss"] for r in _records(resumed.output_dir)]
    )


# ----------------------------------------------------------------------------- DDP (gloo) == one process


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process_with_double_batch(folder_h5: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x batch 2 == 1 process x batch 4, after 3 SGD steps.

    What has to hold for the two to be the same computation:
    * BatchNorm: SyncBatchNorm refuses CPU tensors, so each process would normalise with its own batch
      statistics: ``--freeze-bn`` (every BatchNorm uses its running statistics).
    * Loss: each process takes the CE mean over its own labelled pixels and DDP averages gradients, which
      equals the global mean only when every process has as many labelled pixels: the 3-class folder
      set has no ignore pixels, and base size 64 > crop 32 means no padding.
    * Dropout (0.1 in the heads) draws per-process masks; measured: 0.05 max weight difference after
      3 steps with it, 6e-8 without: the runs use ``--dropout 0``.
    """
    common = [str(folder_h5), "-m", "encnet_tiny", "--iters", "3", "--dropout", "0", "--crop-size", "32", "--base-size", "64",
              "--workers", "0", "--lr", "0.1", "--freeze-bn", "--val-split", "", "--log-every", "1", "--no-progress"]  # fmt: skip
    two = run_cli(["train", *common, "--batch-size", "2", "-o", str(tmp_path / "two")], tmp_path, ["--standalone", "--nproc-per-node", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(["train", *common, "--batch-size", "4", "-o", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]

    # rank 0 alone writes the run folder and prints the summary
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.toml", "last.pt", "metrics.jsonl"]
    assert [r["iteration"] for r in _records(tmp_path / "two")] == [1, 2, 3]
    assert two.stdout.count("encnet train: encnet_tiny") == 1
    stderr = " ".join(two.stderr.split())
    assert stderr.count("training on cpu x2") == 1 and "global batch 4" in stderr
    assert stderr.count("SyncBatchNorm needs CUDA") == 1

    a, b = _load(tmp_path / "two" / "last.pt"), _load(tmp_path / "one" / "last.pt")
    assert a["iteration"] == b["iteration"] == 3
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-4, msg=key)
    # ... and the steps did move the weights well beyond that tolerance
    torch.manual_seed(0)
    start = build_model(TrainConfig(model="encnet_tiny", freeze_bn=True, dropout=0.0), 3).state_dict()
    moved = max((b["model"][k] - start[k]).abs().max().item() for k in start if start[k].is_floating_point())
    assert moved > 1e-2


# ----------------------------------------------------------------------------- fine-tuning


def test_init_from_reinitialises_class_layers_only(
    short_run: TrainResult, folder_h5: Path, make_config
) -> None:
    source = _load(short_run.last_checkpoint)["model"]
    classes = read_info(folder_h5).classes
    config = make_config("finetune", data=str(folder_h5), init_from=str(short_run.last_checkpoint))
    torch.manual_seed(config.seed)
    fresh = build_model(config, len(classes)).state_dict()
    torch.manual_seed(config.seed)
    model = build_model(config, len(classes))
    reinitialised = init_from_checkpoint(model, short_run.last_checkpoint, classes)
    assert reinitialised == ["aux_head.4", "head.conv6.1", "head.encmodule.selayer"]
    state = model.state_dict()
    assert state.keys() == source.keys()
    for key, value in state.items():
        if key.startswith(model.classifier_prefixes()):  # new shape, fresh initialisation
            assert value.shape[0] == 3 and source[key].shape[0] == 14, key
            assert torch.equal(value, fresh[key]), key
        else:  # everything else: the source weights (BatchNorm statistics included)
            assert torch.equal(value, source[key]), key

    result = train(dataclasses.replace(config, iters=2, val_split=""))
    assert result.reinitialised == reinitialised and result.iteration == 2
    assert _load(result.last_checkpoint)["model"]["head.conv6.1.weight"].shape[0] == 3

    # the CLI says so on stderr and lists them in its summary
    out = Path(config.output_dir).with_name("finetune_cli")
    cli = CliRunner().invoke(app, ["train", str(folder_h5), "-m", "encnet_tiny", "--init-from", str(short_run.last_checkpoint),
                                   "--iters", "1", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "--workers", "0",
                                   "--val-split", "", "--no-progress", "--json", "-o", str(out)])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert "re-initialised for 3 classes: aux_head.4, head.conv6.1, head.encmodule.selayer" in " ".join(
        cli.stderr.split()
    )
    assert json.loads(cli.stdout)["reinitialised"] == reinitialised


def test_init_from_another_architecture_is_a_checkpoint_error(short_run: TrainResult, make_config) -> None:
    fcn = train(make_config("fcn", model="fcn_tiny", iters=1, val_split=""))
    with pytest.raises(CheckpointError, match=r"does not match model.*check --model"):
        train(make_config("enc_from_fcn", init_from=str(fcn.last_checkpoint), iters=1, val_split=""))
    with pytest.raises(CheckpointError, match=r"does not match model.*check --model"):
        train(
            make_config("fcn_from_enc", model="fcn_tiny", init_from=str(short_run.last_checkpoint), iters=1)
        )
    # --resume (not --init-from) with another model's run says which option to use
    with pytest.raises(CheckpointError, match="use --init-from"):
        train(make_config("resume_other", iters=2), resume=str(fcn.last_checkpoint))


def test_init_from_se_checkpoint_without_se_drops_the_se_layer(tmp_path: Path) -> None:
    """Fine-tuning with --no-se-loss from a checkpoint with the SE layer drops that layer, keeps the rest."""
    torch.manual_seed(0)
    source = build_model(TrainConfig(model="encnet_tiny"), 3)
    torch.save(source.state_dict(), tmp_path / "se.pt")
    model = build_model(TrainConfig(model="encnet_tiny", se_loss=False), 3)
    assert not model.has_se
    assert init_from_checkpoint(model, tmp_path / "se.pt", ["a", "b", "c"]) == ["head.encmodule.selayer"]
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.encmodule.selayer.")}
    _assert_same(model.state_dict(), expected)


# ----------------------------------------------------------------------------- events


def test_events_come_in_order_and_logs_equal_the_metrics_records(make_config) -> None:
    events: list[TrainEvent] = []
    result = train(make_config("events", iters=6, log_every=3, val_every=1), callback=events.append)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TrainStart", "TrainStep", "TrainStep", "TrainLog", "TrainStep", "TrainStep", "TrainLog", "Validated"]
    start = events[0]
    assert (start.total_iters, start.iteration, start.iters_per_epoch, start.epochs) == (6, 0, 6, 1)
    assert (start.world_size, start.global_batch, start.lr) == (1, 4, pytest.approx(0.05 * 4 / 16))
    assert [e.iteration for e in events[1:]] == [1, 2, 3, 4, 5, 6, 6]
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == [e.record() for e in events if isinstance(e, (TrainLog, Validated))]
    assert result.best == events[-1].record() and set(events[-1].metrics) == set(VAL_METRICS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.iteration = 1


# ----------------------------------------------------------------------------- the public step


@pytest.mark.parametrize("layout", [None, False, True])
def test_train_step_is_one_step_in_the_layout_setup_chose(make_config, layout: bool | None) -> None:
    """``setup(channels_last=...)`` (None: device.channels_last's choice, off on CPU) decides the model's and the
    batches' memory format; ``train_step`` takes one SGD step (the benchmark times it without patching anything)."""
    run = setup(make_config("step", iters=2, val_split=""), None, lambda event: None, DistInfo(), channels_last=layout)
    assert run.channels_last is bool(layout)
    weight = next(p for p in run.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)  # a 3x3 conv
    assert weight.is_contiguous(memory_format=torch.channels_last) is bool(layout)
    before = weight.detach().clone()
    images, masks = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    loss, parts = train_step(run, images, masks, torch.device("cpu"))
    assert torch.isfinite(loss) and set(parts) >= {"seg"}
    assert not torch.equal(before, weight.detach())  # the weights moved
    assert run.scheduler.last_epoch == 1  # and the schedule advanced one iteration


# ----------------------------------------------------------------------------- bf16 and non-finite loss


def test_bf16_autocast_on_cpu(make_config) -> None:
    fp32 = train(make_config("fp32", iters=1, log_every=1, val_split=""))
    bf16 = train(make_config("bf16", iters=3, log_every=1, amp="bf16"))
    records = _records(bf16.output_dir)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r[k]) for r in records for k in ("loss", "seg", "aux", "se"))
    reference = _records(fp32.output_dir)[0]["loss"]
    assert records[0]["loss"] != reference  # the forward pass really ran in bfloat16 ...
    assert records[0]["loss"] == pytest.approx(reference, rel=0.05)  # ... and computed the same loss
    assert _records(bf16.output_dir, "val")[0]["iteration"] == 3
    ckpt = _load(bf16.last_checkpoint)
    assert ckpt["iteration"] == 3 and ckpt["train_config"]["amp"] == "bf16"
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v.float()).all() for v in ckpt["model"].values())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(make_config, monkeypatch) -> None:
    """The loss turns NaN at iteration 8; last.pt of iteration 6 (end of epoch 1) stays as it was."""

    class NaNFromIteration8(segmentation_module.SegmentationLoss):
        calls = 0

        def forward(self, outputs, labels):
            total, parts = super().forward(outputs, labels)
            NaNFromIteration8.calls += 1
            return (total * math.nan if NaNFromIteration8.calls >= 8 else total), parts

    monkeypatch.setattr(segmentation_module, "SegmentationLoss", NaNFromIteration8)  # SegmentationTask.criterion builds it
    config = make_config("nan", iters=18, log_every=3, val_split="")
    last = Path(config.output_dir) / "last.pt"
    saved: dict[str, bytes] = {}

    def keep_copy(event: TrainEvent) -> None:
        if isinstance(event, TrainStep) and event.iteration == 7:
            saved["bytes"] = last.read_bytes()

    with pytest.raises(
        NonFiniteLoss, match=r"non-finite near iteration 9; last\.pt keeps the last good state"
    ):
        train(config, callback=keep_copy)
    assert last.read_bytes() == saved["bytes"]
    ckpt = _load(last)
    assert ckpt["iteration"] == 6 and all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())
    assert [r["iteration"] for r in _records(config.output_dir)] == [3, 6]  # nothing logged after the NaN
