"""``train --tracker mlflow`` (engine/trackers/mlflow.py): the run read back with MLflow's own client holds
the settings as parameters, metrics.jsonl's numbers as metric histories, and the best and last validation."""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.config import TrainConfig
from encnet_core.engine.events import TrainLog
from encnet_core.engine.trackers.mlflow import MLflowCallback
from encnet_core.engine.train import train

ARGS = ["-m", "encnet_tiny", "--iters", "6", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "-j", "0",
        "--device", "cpu", "--log-every", "2", "--val-every", "1", "--no-progress"]  # fmt: skip


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


def _no_env(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset ``names`` for the test, and restore them (set or not) afterwards."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def mlflow_client() -> Callable:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'encnet[mlflow]')")
    from mlflow.tracking import MlflowClient

    return MlflowClient


def test_cli_mlflow_run_reads_back(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_client: Callable) -> None:
    _no_env(monkeypatch, "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE")
    out = tmp_path / "tiny-run"
    result = CliRunner().invoke(app, ["train", str(synthetic_h5), *ARGS, "-o", str(out), "--tracker", "mlflow"])
    assert result.exit_code == 0, result.output
    client = mlflow_client(tracking_uri=(out / "mlruns").as_uri())  # the default store: RUN/mlruns
    experiment = client.get_experiment_by_name("encnet")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"

    saved = tomllib.loads((out / "config.toml").read_text())  # every setting of the run, as text
    for key, value in saved.items():
        assert run.data.params[key] == str(value), key
    assert run.data.params["model"] == "encnet_tiny" and run.data.params["recipe"] == ""
    assert run.data.params["run.total_iters"] == "6"

    train_records, val_records = _records(out, "train"), _records(out, "val")
    assert [r["iteration"] for r in train_records] == [2, 4, 6] and len(val_records) == 1

    def history(name: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}

    assert sorted(history("loss/total")) == [2, 4, 6]
    for record in train_records:
        step = record["iteration"]
        assert history("loss/total")[step] == pytest.approx(record["loss"], rel=1e-9)
        for term in ("seg", "aux", "se"):
            assert history(f"loss/{term}")[step] == pytest.approx(record[term], rel=1e-9)
        assert history("lr")[step] == pytest.approx(record["lr"], rel=1e-9)
        assert history("throughput/images_per_s")[step] == pytest.approx(record["images_per_s"], rel=1e-9)
        assert history("throughput/it_per_s")[step] == pytest.approx(record["it_per_s"], rel=1e-9)
        assert history("throughput/data_share")[step] == pytest.approx(record["data_share"], rel=1e-9, abs=1e-12)
    [val] = val_records
    for metric in ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU", "score"):
        assert history(f"val/{metric}") == {6: pytest.approx(val[metric], rel=1e-9, abs=1e-12)}
        # the end: the best validation (the only one here) and the last
        assert run.data.metrics[f"best/{metric}"] == pytest.approx(val[metric], rel=1e-9, abs=1e-12)
        assert run.data.metrics[f"last/{metric}"] == pytest.approx(val[metric], rel=1e-9, abs=1e-12)
    assert run.data.metrics["best/iteration"] == 6 and run.data.metrics["best/epoch"] == 1
    assert run.data.metrics["iterations"] == 6


def test_tracking_uri_and_experiment_from_the_environment(make_config: Callable[..., TrainConfig], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, mlflow_client: Callable) -> None:  # fmt: skip
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "segmentation-sweeps")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in for a file store the user names
    config = make_config("env-run", iters=2, log_every=1, val_split="")
    with MLflowCallback(config.output_dir, config=config.to_dict()) as callback:
        result = train(config, callback=callback)
        callback.finish(result.best, result.iteration)
    assert not (Path(config.output_dir) / "mlruns").exists()
    client = mlflow_client(tracking_uri=store.as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("segmentation-sweeps").experiment_id])
    assert run.info.run_name == "env-run"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss/total")} == {1, 2}
    assert run.data.metrics["iterations"] == 2 and not any(k.startswith(("best/", "last/")) for k in run.data.metrics)


def test_missing_mlflow_is_one_line(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import raises ImportError
    result = CliRunner().invoke(app, ["train", str(synthetic_h5), "-m", "encnet_tiny", "--iters", "1", "--device", "cpu",
                                      "-o", str(tmp_path / "run"), "--tracker", "mlflow"])  # fmt: skip
    line = one_error_line(result)
    assert "pip install 'encnet[mlflow]'" in line
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"


def test_a_run_that_raises_is_failed(make_config: Callable[..., TrainConfig], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, mlflow_client: Callable) -> None:  # fmt: skip
    _no_env(monkeypatch, "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE")
    config = make_config("raises", iters=4, log_every=1, val_split="")

    def stop_at_two(event) -> None:
        if isinstance(event, TrainLog) and event.iteration == 2:
            raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        with MLflowCallback(config.output_dir, config=config.to_dict(), inner=stop_at_two) as callback:
            train(config, callback=callback)
    client = mlflow_client(tracking_uri=(Path(config.output_dir) / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("encnet").experiment_id])
    assert run.info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/total")) == [1, 2]
