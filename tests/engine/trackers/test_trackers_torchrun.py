"""Under torchrun only rank 0 writes to the trackers: 2 gloo CPU processes, one MLflow run, one W&B run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_records

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_two_processes_log_one_run_per_tracker(folder_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'encnet[mlflow]')")
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'encnet[wandb]')")
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for name in ("WORLD_SIZE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR"):
        env.pop(name, None)
    out = tmp_path / "two"
    run = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "encnet_cli", "train", str(folder_h5),
         "-m", "encnet_tiny", "--iters", "2", "--batch-size", "2", "--crop-size", "32", "--base-size", "64", "--workers", "0",
         "--freeze-bn", "--val-split", "", "--log-every", "1", "--no-progress", "-o", str(out),
         "--tracker", "mlflow", "--tracker", "wandb"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading RUN/mlruns (MLflow 3's file store opt-in)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("encnet").experiment_id])  # one, not two
    assert mlflow_run.data.params["run.world_size"] == "2" and mlflow_run.data.params["run.global_batch"] == "4"
    history = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "loss/total")}
    assert history == {r["iteration"]: pytest.approx(r["loss"], rel=1e-9) for r in run_records(out)}
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 2
