"""benchmarks/gpu.py and ``encnet doctor --bench`` run their CPU fallback (tiny sizes), so neither can rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from encnet_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_ON_CPU = {  # rows that cannot run on a CPU, and a word of the reason each gives
    "extra peak memory, broadcast / ours": "GPU allocator",
    "AMP fp16 + GradScaler / fp32": "fp16 needs a CUDA device",
    "bf16 + channels_last + torch.compile / fp32": "CUDA only",
}


def _script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def _check_rows(report: dict, sections: int) -> None:
    assert report["tiny"] is True and report["device"] == "cpu"
    rows = {row["name"]: row for row in report["rows"]}
    assert len({row["section"] for row in report["rows"]}) == sections
    for name, row in rows.items():
        if name in SKIPPED_ON_CPU:
            assert row["ratio"] is None and SKIPPED_ON_CPU[name] in row["detail"], row
        else:  # measured, and no verdict: tiny CPU figures are no claims (an overhead row may be below 0 under load)
            assert row["ratio"] is not None and math.isfinite(row["ratio"]) and row["passed"] is None, row
            assert row["ratio"] >= 0 or row["name"].startswith("infer() / pure forwards"), row
    # equality is a real check at any size
    assert rows["max relative difference, ours vs broadcast"]["ratio"] <= 1e-4
    assert rows["DDP (gloo) step / plain step"]["ratio"] > 0


@pytest.mark.slow
def test_gpu_benchmark_runs_its_code_paths_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = _script("gpu.py", "--device", "cpu", "--workers", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO CUDA: the same code paths ran at tiny sizes on the CPU" in proc.stdout
    assert "tiny sizes on the CPU" in proc.stderr  # said before it starts, too
    report = json.loads(out.read_text())
    _check_rows(report, sections=6)
    for section in ("Encoding layer", "training step", "data loading", "EncNet-ResNet50 vs torchvision",
                    "multi-scale + flip evaluation", "distributed"):  # fmt: skip
        assert any(row["section"].startswith(section) for row in report["rows"]), section
    for row in report["rows"]:  # every row is printed with its goal
        assert row["name"] in proc.stdout and row["goal"] in proc.stdout


@pytest.mark.slow
def test_doctor_bench_runs_the_short_version(tmp_path: Path) -> None:
    out = tmp_path / "doctor.json"
    result = CliRunner().invoke(app, ["doctor", "--device", "cpu", "--bench", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "GPU benchmark (short)" in result.output and "NO CUDA" in result.output
    report = json.loads(out.read_text())
    assert report["status"] == "ok" and report["bench"]["profile"] == "short"
    _check_rows(report["bench"], sections=4)  # the short profile leaves out the torchvision and evaluation rows


def test_plain_doctor_runs_no_benchmark() -> None:
    result = CliRunner().invoke(app, ["doctor", "--device", "cpu", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "bench" not in json.loads(result.output)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
@pytest.mark.parametrize("script", ["gpu.py", "encoding_layer.py"])
def test_device_cuda_without_a_gpu_is_one_line(script: str) -> None:
    proc = _script(script, "--device", "cuda", timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--device cpu" in lines[0], proc.stderr
