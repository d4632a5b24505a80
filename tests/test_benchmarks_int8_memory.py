"""benchmarks/int8_calibration_memory.py runs at a tiny size and prints a row per image count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")


def test_int8_calibration_memory_smoke() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "int8_calibration_memory.py"), "--model", "encnet_tiny", "--size", "48", "--counts", "1,3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "3"] and all(float(row[1]) > 50 for row in rows)
    assert "load average" in done.stdout
