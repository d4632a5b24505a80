"""benchmarks/deploy.py runs at tiny sizes and prints a row for every engine, ratios to eager fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_deploy_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "deploy.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "deploy.py"), "--model", "encnet_tiny", "--shapes", "40x56",
               "--batches", "1,2", "--reps", "1", "--threads", "1", "--train-iters", "1", "--layouts", "standard",
               "--calib-images", "2", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    for engine in ("torch fp32", "torch channels_last", "torch bf16", "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"):
        assert engine in text
    assert "load average" in text and "goal float" in text and "goal int8" in text
    results = json.loads(out.read_text())
    engines = results["engines"]
    assert set(engines["torch fp32"]["rates"]) == {"40x56 b1", "40x56 b2"}
    for engine in ("onnxruntime fp32", "onnxruntime int8"):
        assert all(rate > 0 for rate in engines[engine]["rates"].values()) and engines[engine]["peak_mb"] > 10
    assert "1.00x" in text.splitlines()[2]  # the baseline row is its own reference
    accuracy = results["accuracy"]["standard"]
    assert accuracy["onnxruntime fp32"]["mIoU"] == pytest.approx(accuracy["torch fp32"]["mIoU"], abs=1e-3)
    assert 0 <= accuracy["onnxruntime int8"]["pixAcc"] <= 1
    if "rates" in engines["openvino int8"]:  # encnet[nncf] installed (dev): NNCF's IR ran
        assert all(rate > 0 for rate in engines["openvino int8"]["rates"].values())
        assert 0 <= accuracy["openvino int8"]["pixAcc"] <= 1
