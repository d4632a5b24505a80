"""The classification task: top-1/top-5 counting against an independent computation, the CIFAR
augmentation, the cosine/step schedules, and training (learning, best.pt on top-1, exact resume, bf16,
fine-tuning, DDP) through the one training loop."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from classification_helpers import classification_config, make_synthetic_classification
from helpers import assert_same as _assert_same
from helpers import load_checkpoint_file as _load
from helpers import run_cli
from helpers import run_records as _records
from torchvision import tv_tensors

from encnet_core.config import CLASSIFICATION_DEFAULTS, TrainConfig, resolve_train_config
from encnet_core.constants import CIFAR10_MEAN, CIFAR10_STD
from encnet_core.data import classification_transforms as cls_transforms
from encnet_core.data.transforms import normalize_image
from encnet_core.engine.classification import ClassCounts, ClassificationLoss
from encnet_core.engine.events import CLASSIFICATION_VAL_METRICS, Message, TrainEvent, TrainLog, TrainStep
from encnet_core.engine.optim import CosineSchedule, StepSchedule, lr_schedule
from encnet_core.engine.train import TrainResult, build_model, train
from encnet_core.engine.train_state import init_from_checkpoint
from encnet_core.errors import CheckpointError, ConfigError
from encnet_core.models import create_model
from encnet_core.weights.metadata import ModelMetadata


@pytest.fixture(scope="module")
def cls_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic classification set: 3 scene classes, 32 train / 16 val images of 32 x 32."""
    return make_synthetic_classification(tmp_path_factory.mktemp("cls"))


# ----------------------------------------------------------------------------- metrics


def _reference_counts(logits: np.ndarray, labels: np.ndarray, k: int) -> dict[str, Any]:
    """Top-1/top-k error and per-class accuracy the long way: a full descending sort per row."""
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    topk = np.array([labels[i] in order[i, :k] for i in range(len(labels))])
    per_class = [top1[labels == c].mean() if (labels == c).any() else None for c in range(logits.shape[1])]
    return {"top1_error": 1 - top1.mean(), "topk_error": 1 - topk.mean(), "class_accuracy": per_class}


def test_top1_top5_match_an_independent_computation() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(203, 12)).astype(np.float32)
    labels = rng.integers(0, 11, size=203)  # class 11 has no image: its accuracy is None
    counts = ClassCounts(12)
    for chunk in np.array_split(np.arange(203), 5):  # several batches
        counts.update(torch.from_numpy(logits[chunk]), torch.from_numpy(labels[chunk]))
    counts.update(torch.randn(4, 12), torch.full((4,), 255))  # unlabelled images are left out
    got = counts.compute()
    want = _reference_counts(logits, labels, 5)
    assert got["images"] == 203 and got["top5_k"] == 5
    assert got["top1_error"] == pytest.approx(want["top1_error"], abs=1e-12)
    assert got["top5_error"] == pytest.approx(want["topk_error"], abs=1e-12)
    assert 0 < got["top5_error"] < got["top1_error"] < 1
    assert got["accuracy"] == got["score"] == pytest.approx(1 - want["top1_error"], abs=1e-12)
    assert got["class_accuracy"][11] is None
    for c in range(11):
        assert got["class_accuracy"][c] == pytest.approx(want["class_accuracy"][c], abs=1e-12)
    assert got["mean_class_accuracy"] == pytest.approx(np.mean(want["class_accuracy"][:11]), abs=1e-12)
    assert got["class_images"] == np.bincount(labels, minlength=12).tolist()
    expected_loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="mean").item()
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_top5_with_fewer_classes_uses_k_equal_to_the_classes() -> None:
    counts = ClassCounts(3)
    counts.update(torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]]), torch.tensor([2, 2]))
    got = counts.compute()
    assert got["top5_k"] == 3 and got["top5_error"] == 0.0 and got["top1_error"] == 0.5


def test_loss_is_plain_cross_entropy() -> None:
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    total, parts = ClassificationLoss()(logits.to(torch.bfloat16), labels)
    manual = -(logits.to(torch.bfloat16).float().log_softmax(1)[torch.arange(6), labels]).mean()
    assert parts == {} and total.dtype == torch.float32
    torch.testing.assert_close(total, manual)


# ----------------------------------------------------------------------------- augmentation and schedules


def test_train_transform_is_a_crop_of_the_zero_padded_image_maybe_flipped() -> None:
    """Every output is one of the 81 x 2 windows of the image padded with 4 black pixels (before
    normalisation), and different seeds draw different windows."""
    image = tv_tensors.Image(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    padded = F.pad(image.as_subclass(torch.Tensor), (4, 4, 4, 4))  # (3, 40, 40), zeros
    windows = {}
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 32, left : left + 32]
            for flip in (False, True):
                view = crop.flip(-1) if flip else crop
                windows[(top, left, flip)] = normalize_image(view, CIFAR10_MEAN, CIFAR10_STD)
    transform = cls_transforms.train_transform(32, CIFAR10_MEAN, CIFAR10_STD)
    found = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(image)
        assert type(out) is torch.Tensor and out.shape == (3, 32, 32) and out.dtype == torch.float32
        matches = [key for key, window in windows.items() if torch.equal(out, window)]
        assert matches, f"seed {seed}: not a padded crop"
        found.add(matches[0])
    assert len(found) > 6  # the crop and the flip are random
    assert cls_transforms.padding_for(32) == 4


def test_eval_and_fit_transforms() -> None:
    image = tv_tensors.Image(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    out = cls_transforms.eval_transform(32, CIFAR10_MEAN, CIFAR10_STD)(image)
    torch.testing.assert_close(out, normalize_image(image.as_subclass(torch.Tensor), CIFAR10_MEAN, CIFAR10_STD), rtol=0, atol=0)
    assert torch.equal(cls_transforms.fit_transform(32)(image), image.as_subclass(torch.Tensor))
    big = tv_tensors.Image(torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8))
    fitted = cls_transforms.fit_transform(32)(big)
    assert fitted.shape == (3, 32, 32) and fitted.dtype == torch.uint8


def test_cosine_and_step_schedules_follow_the_reference_formulas() -> None:
    cosine = CosineSchedule(total_iters=40)
    for t in (0, 1, 13, 20, 39, 40):
        assert cosine(t) == pytest.approx(0.5 * (1 + math.cos(math.pi * t / 40)), abs=1e-15)  # LR_Scheduler "cos"
    assert cosine(0) == 1.0 and cosine(40) == pytest.approx(0.0, abs=1e-15)
    step = StepSchedule(iters_per_epoch=5, step_epochs=2)
    # the reference: 0.1 ** ((epoch - 1) // lr_step), epochs from 1
    for t in range(30):
        assert step(t) == pytest.approx(0.1 ** ((t // 5 + 1 - 1) // 2), rel=1e-12)
    warm = CosineSchedule(total_iters=40, warmup_iters=4)
    assert warm(0) == pytest.approx(0.25 * cosine(0)) and warm(4) == cosine(4)
    config = TrainConfig(lr_schedule="step", lr_step=3)
    assert isinstance(lr_schedule(config, 100, 7), StepSchedule) and lr_schedule(config, 100, 7).iters_per_epoch == 7
    with pytest.raises(ConfigError, match="--lr-schedule must be one of poly, cosine, step"):
        TrainConfig(lr_schedule="linear")


def test_classification_defaults_sit_under_every_layer(cls_h5: Path) -> None:
    config = resolve_train_config(cls_h5, task="classification")
    assert config.model == "encnet_cifar14" and config.crop_size == 32 and config.lr_schedule == "cosine"
    assert config.mean == CIFAR10_MEAN and config.batch_size == 128 and config.weight_decay == 5e-4
    assert config.output_dir == str(Path("runs") / "encnet_cifar14-synthetic_cls")
    flagged = resolve_train_config(cls_h5, "synthetic_cls_cpu", flags={"batch_size": 4}, task="classification")
    assert (flagged.model, flagged.batch_size, flagged.lr) == ("encnet_cifar_tiny", 4, 0.05)
    assert resolve_train_config(cls_h5).model == TrainConfig.model  # segmentation: TrainConfig's own defaults
    assert set(CLASSIFICATION_DEFAULTS) <= set(TrainConfig.__dataclass_fields__)


def test_cifar_recipe_is_the_reference_recipe(cls_h5: Path) -> None:
    config = resolve_train_config(cls_h5, "cifar10_encnet14", task="classification")
    assert config.model == "encnet_cifar14" and config.epochs == 600 and config.batch_size == 128
    assert config.lr * config.batch_size / 16 == pytest.approx(0.1)  # the reference's lr at its batch
    assert (config.momentum, config.weight_decay, config.lr_schedule) == (0.9, 5e-4, "cosine")
    assert config.mean == (0.4914, 0.4822, 0.4465) and config.std == (0.2023, 0.1994, 0.2010)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def cls_run(cls_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """12 iterations = 3 epochs of 4 batches of 8, validation each epoch."""
    return train(classification_config(cls_h5, tmp_path_factory.mktemp("cls_run"), epochs=3, lr=0.1))


def test_a_run_learns_validates_top1_and_keeps_the_best(cls_run: TrainResult) -> None:
    records = _records(cls_run.output_dir)
    assert [r["iteration"] for r in records] == [2, 4, 6, 8, 10, 12]
    assert set(records[0]) == {"type", "iteration", "epoch", "lr", "loss", "it_per_s", "images_per_s", "data_share"}
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    for r in records:  # cosine over 12 iterations at 0.1 x 8 / 16
        assert r["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * r["iteration"] / 12)), abs=1e-12)
    vals = _records(cls_run.output_dir, "val")
    assert [v["epoch"] for v in vals] == [1, 2, 3]
    assert all(set(v) == {"type", "iteration", "epoch", *CLASSIFICATION_VAL_METRICS} for v in vals)
    best = max(vals, key=lambda v: v["accuracy"])  # the first of the best
    assert cls_run.best == best and best["score"] == best["accuracy"] == pytest.approx(1 - best["top1_error"])
    assert best["accuracy"] >= 0.75  # 3 classes: chance is at most the largest class share
    ckpt = _load(cls_run.best_checkpoint)
    assert ckpt["task"] == "classification" and ckpt["model_config"] == {"name": "encnet_cifar_tiny", "num_classes": 3}
    assert ckpt["best_metrics"] == best and ckpt["iteration"] == best["iteration"]
    assert len(ckpt["optimizer"]["param_groups"]) == 1  # one lr for every layer, as the reference
    meta = ModelMetadata.from_dict(ckpt)
    assert meta.task == "classification" and meta.crop_size == 32 and meta.mean == CIFAR10_MEAN
    assert meta.training["best_val"] == {"top1_error": round(best["top1_error"], 4), "top5_error": 0.0}


def _stop_at(iteration: int) -> Callable[[TrainEvent], None]:
    def callback(event: TrainEvent) -> None:
        if isinstance(event, (TrainStep, TrainLog)) and event.iteration == iteration:
            signal.raise_signal(signal.SIGTERM)

    return callback


def test_interrupt_and_resume_equals_one_run(cls_h5: Path, tmp_path: Path) -> None:
    """10 iterations (epochs of 4) in one go == stop after 6 (mid-epoch 2) + resume, bit for bit."""
    one_go = train(classification_config(cls_h5, tmp_path / "one", iters=10))
    config = classification_config(cls_h5, tmp_path / "split", iters=10)
    stopped = train(config, callback=_stop_at(6))
    assert (stopped.stopped_by, stopped.iteration) == ("SIGTERM", 6)
    messages: list[str] = []
    resumed = train(config, resume="auto", callback=lambda e: messages.append(e.text) if isinstance(e, Message) else None)
    assert resumed.iteration == 10 and any("iteration 6/10" in m for m in messages)
    a, b = _load(one_go.last_checkpoint), _load(resumed.last_checkpoint)
    for key in a.keys() - {"train_config"}:
        _assert_same(a[key], b[key], key)
    _assert_same(_load(one_go.best_checkpoint)["model"], _load(resumed.best_checkpoint)["model"], "best.pt")
    _assert_same([r["loss"] for r in _records(one_go.output_dir)], [r["loss"] for r in _records(resumed.output_dir)])


def test_bf16_autocast_on_cpu(cls_h5: Path, tmp_path: Path) -> None:
    fp32 = train(classification_config(cls_h5, tmp_path / "fp32", iters=1, log_every=1, val_split=""))
    bf16 = train(classification_config(cls_h5, tmp_path / "bf16", iters=3, log_every=1, amp="bf16"))
    records = _records(bf16.output_dir)
    assert [r["iteration"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    reference = _records(fp32.output_dir)[0]["loss"]
    assert records[0]["loss"] != reference  # the forward pass really ran in bfloat16 ...
    assert records[0]["loss"] == pytest.approx(reference, rel=0.05)  # ... and computed about the same loss
    assert _records(bf16.output_dir, "val")[0]["iteration"] == 3
    ckpt = _load(bf16.last_checkpoint)
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v.float()).all() for v in ckpt["model"].values())


def test_init_from_reinitialises_the_classifier_only(cls_run: TrainResult, cls_h5: Path, tmp_path: Path) -> None:
    source = _load(cls_run.last_checkpoint)["model"]
    torch.manual_seed(0)
    model = create_model("encnet_cifar_tiny", 5)
    fresh_fc = model.fc.weight.detach().clone()
    assert init_from_checkpoint(model, cls_run.last_checkpoint, ["a", "b", "c", "d", "e"]) == ["fc"]
    state = model.state_dict()
    assert torch.equal(state["fc.weight"], fresh_fc) and state["fc.weight"].shape == (5, 64)
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("fc."))
    # the same classes: every weight, and a run from it starts there
    run = train(classification_config(cls_h5, tmp_path / "ft", iters=1, init_from=str(cls_run.last_checkpoint), lr=1e-9, val_split=""))
    assert run.reinitialised == []
    moved = _load(run.last_checkpoint)["model"]
    assert max((moved[k].float() - v.float()).abs().max().item() for k, v in source.items() if "running" not in k and "num_batches" not in k) < 1e-6


def test_init_from_refuses_another_task_or_architecture(cls_run: TrainResult, synthetic_h5: Path, tmp_path: Path) -> None:
    from helpers import train_tiny

    segmentation = train_tiny(synthetic_h5, tmp_path, iters=1)
    with pytest.raises(CheckpointError, match=r"holds a segmentation model \(encnet_tiny\); --init-from needs a classification checkpoint"):
        init_from_checkpoint(create_model("encnet_cifar_tiny", 3), segmentation, ["a", "b", "c"])
    with pytest.raises(CheckpointError, match=r"does not match model: .*check --model and --num-codes"):
        init_from_checkpoint(create_model("se_cifar_tiny", 3), cls_run.last_checkpoint, ["street", "kitchen", "beach"])


def test_wrong_task_and_segmentation_settings_are_refused(cls_h5: Path, synthetic_h5: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--model encnet_tiny is a segmentation model but .* is a classification dataset"):
        train(classification_config(cls_h5, tmp_path / "a", iters=1, model="encnet_tiny"))
    with pytest.raises(ConfigError, match=r"--model encnet_cifar_tiny is a classification model but .* is a segmentation dataset"):
        train(classification_config(synthetic_h5, tmp_path / "b", iters=1))
    with pytest.raises(ConfigError, match=r"^--lateral, --freeze-backbone do not apply to classification models"):
        train(classification_config(cls_h5, tmp_path / "c", iters=1, lateral=True, freeze_backbone=True))
    assert not any((tmp_path / name).exists() for name in "abc")  # refused before the run folder is written
    assert build_model(classification_config(cls_h5, tmp_path, num_codes=4), 3).layer1[0].se.encoding.num_codes == 4


# ----------------------------------------------------------------------------- DDP (gloo) == one process


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process_with_double_batch(cls_h5: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x batch 4 == 1 process x batch 8, after 3 SGD steps.

    As for segmentation (tests/engine/test_train.py): ``--freeze-bn`` (SyncBatchNorm needs CUDA, so each
    process would normalise with its own statistics); the classifier has no dropout; each process's
    cross-entropy mean over 4 images, averaged by DDP, is the mean over the 8.
    """
    common = [str(cls_h5), "-m", "encnet_cifar_tiny", "--iters", "3", "--workers", "0", "--lr", "0.1", "--freeze-bn",
              "--val-split", "", "--log-every", "1", "--no-progress"]  # fmt: skip
    two = run_cli(["train", *common, "--batch-size", "4", "-o", str(tmp_path / "two")], tmp_path, ["--standalone", "--nproc-per-node", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(["train", *common, "--batch-size", "8", "-o", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.toml", "last.pt", "metrics.jsonl"]
    assert two.stdout.count("encnet train: encnet_cifar_tiny") == 1
    assert " ".join(two.stderr.split()).count("training on cpu x2") == 1
    a, b = _load(tmp_path / "two" / "last.pt"), _load(tmp_path / "one" / "last.pt")
    assert a["iteration"] == b["iteration"] == 3 and a["world_size"] == 2 and a["task"] == "classification"
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-4, msg=key)
    for x, y in zip(_records(tmp_path / "two"), _records(tmp_path / "one"), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)  # the logged loss is the mean over both ranks
    torch.manual_seed(0)
    start = build_model(TrainConfig(model="encnet_cifar_tiny"), 3).state_dict()
    assert max((b["model"][k] - start[k]).abs().max().item() for k in start if start[k].is_floating_point()) > 2e-3  # 20x the tolerance


def test_skip_bad_replaces_a_bad_training_image_and_lists_it(tmp_path: Path) -> None:
    """An image that does not decode: one line naming it, or with skip_bad the run goes on and lists it."""
    import io

    from PIL import Image

    from encnet_core.data.dataset import BadSampleError
    from encnet_core.data.hdf5 import HDF5Writer, Sample

    path = tmp_path / "bad.h5"
    rng = np.random.default_rng(0)
    with HDF5Writer(path, "handmade", ["a", "b"], np.zeros((2, 3), np.uint8), task="classification") as writer:
        for split, count in (("train", 16), ("val", 4)):
            writer.begin_split(split, count, labelled=True)
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
                data = b"not a png" if (split, i) == ("train", 3) else buffer.getvalue()
                writer.add(Sample(f"{split}{i}", data, 32, 32, label=i % 2))
    with pytest.raises(BadSampleError, match=r"split 'train' sample 3 \('train3'\)"):
        train(classification_config(path, tmp_path / "strict", iters=2))
    result = train(classification_config(path, tmp_path / "skip", iters=4, skip_bad=True))
    assert result.iteration == 4 and [(s["split"], s["index"]) for s in result.skipped] == [("train", 3)]
    assert any(r["type"] == "skipped" and r["name"] == "train3" for r in map(json.loads, (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()))
