"""MLflow tracking for a training run (``train --tracker mlflow``): a tracker (trackers/base.py) that logs
the settings as parameters, the metrics.jsonl numbers as metrics and the best/last validation at the end.

Where: ``MLFLOW_TRACKING_URI`` when set (a server, a database, a folder), else a local file store in the
run folder, ``RUN/mlruns`` (open it with ``mlflow ui --backend-store-uri RUN/mlruns``). The experiment is
``MLFLOW_EXPERIMENT_NAME`` or "encnet"; the MLflow run is named after the run folder. Parameters: every
``TrainConfig`` field (the recipe among them) as text; metrics: trackers.base's names, iteration as step.

Needs ``mlflow-skinny`` (or ``mlflow``): ``pip install 'encnet[mlflow]'``. Uses ``MlflowClient`` (no
global active run), so a library caller's own MLflow runs are left alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from encnet_core.engine.events import Callback, TrainStart
from encnet_core.engine.trackers.base import TrackerCallback, flat_config
from encnet_core.errors import ConfigError

__all__ = ["MLflowCallback", "check_mlflow", "MLFLOW_DIR", "tracking_uri"]

MLFLOW_DIR = "mlruns"  # the local file store inside the run folder (no MLFLOW_TRACKING_URI)
DEFAULT_EXPERIMENT = "encnet"

_MISSING = "--tracker mlflow needs the mlflow package: pip install 'encnet[mlflow]'"


def check_mlflow() -> None:
    """Raise one clear ConfigError unless ``mlflow`` can be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(_MISSING) from None


def tracking_uri(run_dir: Path) -> str:
    """MLFLOW_TRACKING_URI, or the file store ``RUN/mlruns`` as a file: URI."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.resolve() / MLFLOW_DIR).as_uri()


class MLflowCallback(TrackerCallback):
    """Logs a run to MLflow (on rank 0: the run is made at TrainStart), then calls ``inner``."""

    def __init__(self, run_dir: Path | str, config: dict[str, Any] | None = None, inner: Callback | None = None) -> None:
        check_mlflow()  # before the run starts, not at its first event
        super().__init__(run_dir, config=config, inner=inner)
        self.client: Any = None
        self.uri = ""

    def _open(self, event: TrainStart, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(self.run_dir)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # our default store is MLflow's file store, which MLflow 3 keeps only on this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        tags = {"encnet.run_dir": str(self.run_dir.resolve()), "encnet.resumed_at": str(event.iteration)}
        self.run = self.client.create_run(experiment_id, run_name=self.run_dir.resolve().name, tags=tags)
        run_params = {"total_iters": event.total_iters, "world_size": event.world_size, "global_batch": event.global_batch,
                      "scaled_lr": event.lr, "params": event.params}  # fmt: skip
        params = flat_config({**config, **{f"run.{k}": v for k, v in run_params.items()}})
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run.info.run_id, params=items[start : start + 100])

    def _log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, step) for name, value in scalars.items()]
        for start in range(0, len(metrics), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run.info.run_id, metrics=metrics[start : start + 1000])

    def _finish(self, final: dict[str, float], step: int) -> None:
        self._log(final, step)

    def _close(self, failed: bool) -> None:
        self.client.set_terminated(self.run.info.run_id, status="FAILED" if failed else "FINISHED")
