"""Under torchrun only rank 0 writes to the trackers: 2 gloo CPU processes, one MLflow run, one W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli_env, run_cli, run_records


@pytest.mark.slow
def test_two_processes_log_one_run_per_tracker(folder_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'encnet[mlflow]')")
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'encnet[wandb]')")
    from mlflow.tracking import MlflowClient

    env = cli_env(WANDB_MODE="offline", WANDB_SILENT="true")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR"):
        env.pop(name, None)
    out = tmp_path / "two"
    args = ["train", str(folder_h5), "-m", "encnet_tiny", "--iters", "2", "--batch-size", "2", "--crop-size", "32",
            "--base-size", "64", "--workers", "0", "--freeze-bn", "--val-split", "", "--log-every", "1", "--no-progress",
            "-o", str(out), "--tracker", "mlflow", "--tracker", "wandb"]  # fmt: skip
    run = run_cli(args, tmp_path, ["--standalone", "--nproc-per-node", "2"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading RUN/mlruns (MLflow 3's file store opt-in)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("encnet").experiment_id])  # one, not two
    assert mlflow_run.data.params["run.world_size"] == "2" and mlflow_run.data.params["run.global_batch"] == "4"
    history = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "loss/total")}
    assert history == {r["iteration"]: pytest.approx(r["loss"], rel=1e-9) for r in run_records(out)}
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 2
