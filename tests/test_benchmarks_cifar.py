"""benchmarks/cifar.py runs (tiny pair, one round), so it cannot rot, and reports ratios, not bare times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cifar_benchmark_reports_ratios_against_the_se_twin(tmp_path: Path) -> None:
    out = tmp_path / "cifar.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cifar.py"), "--pairs", "tiny", "--batch", "4", "--warmup", "1",
         "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "encnet_cifar_tiny / se_cifar_tiny, batch 4:" in done.stdout and "load average" in done.stdout
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["baseline"] == "se_cifar_tiny" and row["ratio"] > 0 and row["low"] <= row["ratio"] <= row["high"]
    assert row["flops_ratio"] > 1 and row["params_ratio"] > 1  # the Encoding branch adds work and weights
    assert len(report["load_average_before"]) == 3
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cifar.py"), "--pairs", "huge"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 2 and "unknown pair(s) huge" in bad.stderr
