"""benchmarks/engines_cpu.py: a tiny run prints every variant's ratio to eager fp32 and the agreement of its classes
(no timing is asserted: the figures live in docs/export.md, Engines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_prints_ratios_and_agreement(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENCNET_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engines_cpu.py"), "--model", "encnet_tiny", "--size", "48", "--threads", "1",
         "--repeats", "1", "--variants", "fp32,channels_last,bf16,onnxruntime"],
        capture_output=True, text=True, check=True, env=env, timeout=300,
    )  # fmt: skip
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:] if line and not line.startswith("load")}
    assert set(rows) == {"fp32", "channels_last", "bf16", "onnxruntime"}
    assert rows["fp32"][2] == "1.00" and rows["fp32"][4] == "100.000%"
    assert rows["channels_last"][4] == "100.000%" and rows["onnxruntime"][4] == "100.000%"  # same classes as eager fp32
    assert "load average (1 min)" in proc.stdout
