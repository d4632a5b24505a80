"""DataLoader workers: ``loader_workers`` (engine/workers.py) picks them from the usable CPUs and the work
for ``--workers auto`` (the default of train and evaluate) and caps an explicit number at the CPUs;
every DataLoader of train and evaluate (segmentation and classification) gets its count from it."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from classification_helpers import classification_config, make_synthetic_classification
from helpers import train_tiny
from typer.testing import CliRunner

import encnet_core.engine.classification as classification_module
import encnet_core.engine.segmentation as segmentation_module
import encnet_core.engine.train as train_module
import encnet_core.engine.workers as workers_module
from encnet_cli.main import app
from encnet_core.config import TrainConfig, parse_set_option
from encnet_core.data.hdf5 import read_info
from encnet_core.engine.distributed import DistInfo
from encnet_core.engine.evaluate import EvaluateOptions, evaluate
from encnet_core.engine.tasks import task_for
from encnet_core.engine.workers import check_workers, loader_workers, local_processes, usable_cpus
from encnet_core.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize(
    ("cpus", "processes", "samples", "expected"),
    [
        (1, 1, 10_000, 0),  # one CPU: the main process decodes
        (2, 1, 10_000, 0),  # two: a worker would only take the main process's second core
        (3, 1, 10_000, 2),  # one per CPU but one
        (4, 1, 10_000, 3),
        (64, 1, 10_000, 8),  # at most 8
        (16, 4, 10_000, 3),  # torchrun, 4 local processes: 4 CPUs each
        (16, 8, 10_000, 0),  # 2 CPUs each
        (16, 1, 63, 0),  # a small split: starting workers costs more than decoding it
        (16, 1, 64, 2),  # at most one per 32 samples
        (16, 1, 100, 3),
    ],
)
def test_auto_from_cpus_processes_and_samples(cpus: int, processes: int, samples: int, expected: int) -> None:
    assert loader_workers("auto", samples, cpus=cpus, processes=processes) == expected


@pytest.mark.parametrize(("requested", "cpus", "expected"), [(0, 64, 0), (2, 2, 2), (5, 2, 2), (3, 16, 3), ("4", 16, 4)])
def test_an_explicit_number_wins_up_to_the_cpus(requested: int | str, cpus: int, expected: int) -> None:
    assert loader_workers(requested, 10, cpus=cpus, processes=8) == expected  # never divided, never 0 for a small split


def test_usable_cpus_follow_the_affinity_mask_and_local_processes_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(workers_module.os, "cpu_count", lambda: 64)
    assert usable_cpus() == 1  # taskset -c 3: one CPU, however many the machine has
    assert loader_workers("auto", 10_000) == 0
    monkeypatch.delattr(workers_module.os, "sched_getaffinity")
    assert usable_cpus() == 64  # no affinity call on this OS: the CPU count
    assert loader_workers("auto", 10_000) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert local_processes() == 8 and loader_workers("auto", 10_000) == 7  # 64 CPUs / 8 processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "junk")
    assert local_processes() == 1


@pytest.mark.parametrize("bad", [-1, "-2", "many", 1.5, True, None])
def test_check_workers_refuses_what_is_not_auto_or_a_count(bad: Any) -> None:
    with pytest.raises(ConfigError, match="--workers must be >= 0 or auto"):
        check_workers(bad)
    assert check_workers(" Auto ") == "auto" and check_workers("3") == 3 and check_workers(0) == 0


def test_train_config_takes_auto_from_every_layer(tmp_path: Path) -> None:
    assert TrainConfig().workers == "auto"
    assert parse_set_option(["workers=auto"]) == {"workers": "auto"} and parse_set_option(["workers=3"]) == {"workers": 3}
    assert TrainConfig.from_dict({"workers": "auto"}).workers == "auto"
    for bad in ({"workers": -1}, {"workers": "lots"}, {"workers": 2.5}, {"workers": True}):
        with pytest.raises(ConfigError, match="workers must be"):
            TrainConfig.from_dict(bad)
        with pytest.raises(ConfigError, match="--workers must be >= 0 or auto"):
            TrainConfig(**bad)
    assert 'workers = "auto"' in TrainConfig().to_toml()
    assert tomllib.loads(TrainConfig().to_toml())["workers"] == "auto"


# ----------------------------------------------------------------------------- what reaches the DataLoaders


def spy_loaders(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[int]:
    """Record the ``num_workers`` of every DataLoader that ``module`` builds."""
    seen: list[int] = []
    real = module.DataLoader

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("num_workers", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "DataLoader", recording)
    return seen


def cpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(workers_module, "usable_cpus", lambda: count)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_h5: Path) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return train_tiny(synthetic_h5, tmp_path_factory.mktemp("workers"), iters=1)
    finally:
        torch.set_num_threads(threads)


def test_evaluate_defaults_to_auto(monkeypatch: pytest.MonkeyPatch, synthetic_h5: Path, checkpoint: Path) -> None:
    seen = spy_loaders(monkeypatch, segmentation_module)
    cpus(monkeypatch, 2)
    assert EvaluateOptions().workers == "auto"
    auto = evaluate(checkpoint, synthetic_h5, EvaluateOptions(device="cpu"))
    one = evaluate(checkpoint, synthetic_h5, EvaluateOptions(device="cpu", workers=1))
    many = evaluate(checkpoint, synthetic_h5, EvaluateOptions(device="cpu", workers=9))
    assert seen == [0, 1, 2]  # 2 CPUs: auto none; explicit 1: 1; explicit 9: the 2 CPUs
    assert auto["pixAcc"] == one["pixAcc"] == many["pixAcc"] and auto["mIoU"] == one["mIoU"]  # same numbers


def test_the_cli_passes_auto_and_numbers(monkeypatch: pytest.MonkeyPatch, synthetic_h5: Path, checkpoint: Path) -> None:
    seen = spy_loaders(monkeypatch, segmentation_module)
    cpus(monkeypatch, 3)
    base = ["evaluate", str(checkpoint), str(synthetic_h5), "--device", "cpu", "--no-progress", "--limit", "2"]
    for extra in ([], ["-j", "auto"], ["--workers", "1"]):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 0, result.output
    assert seen == [0, 0, 1]  # auto: 2 samples is a small split
    result = runner.invoke(app, base + ["-j", "some"])
    assert result.exit_code == 2 and "'some' is not a worker count: use auto or a number >= 0" in result.output


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # built, never iterated: no process starts
def test_train_loaders_get_their_workers_from_the_run(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., TrainConfig], synthetic_h5: Path
) -> None:
    seen = spy_loaders(monkeypatch, train_module)
    info, data = DistInfo(), read_info(synthetic_h5)
    cpus(monkeypatch, 8)
    for config in (
        make_config(workers="auto", iters=100),  # 400 samples over the run: 7 (8 CPUs but one)
        make_config(workers="auto", iters=2),  # 8 samples: none
        make_config(workers="auto", iters=None, epochs=1),  # one epoch of 24: none
        make_config(workers=3, iters=2),  # explicit
        make_config(workers=20, iters=2),  # explicit, at most the CPUs
    ):
        train_module._loaders(config, data, info, task_for(data.task))
    assert seen == [7, 7, 0, 0, 0, 0, 3, 3, 8, 8]  # training and validation loader of each


def test_train_cli_writes_auto_to_the_run_config(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_loaders(monkeypatch, train_module)
    cpus(monkeypatch, 2)
    args = ["train", str(synthetic_h5), "-m", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48",
            "--device", "cpu", "--no-progress", "--iters", "1", "--val-split", ""]  # fmt: skip
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["workers"] == "auto" and seen == [0]


def test_classification_evaluate_uses_the_same_rule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = make_synthetic_classification(tmp_path, 8, 8)
    config = dataclasses.replace(classification_config(data, tmp_path / "run"), iters=1, val_split="")
    torch.manual_seed(0)
    last = train_module.train(config).last_checkpoint
    seen = spy_loaders(monkeypatch, classification_module)
    cpus(monkeypatch, 2)
    evaluate(last, data, EvaluateOptions(device="cpu"))
    evaluate(last, data, EvaluateOptions(device="cpu", workers=1))
    assert seen == [0, 1]
