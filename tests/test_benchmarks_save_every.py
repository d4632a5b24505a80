"""benchmarks/save_every.py: its options, its table, and a tiny run (no timing is asserted: the figures live in
docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _save_every():
    spec = importlib.util.spec_from_file_location("encnet_save_every", ROOT / "benchmarks" / "save_every.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["encnet_save_every"] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_and_table() -> None:
    bench = _save_every()
    args = bench.parse_args([])
    assert args.model == "encnet_resnet18" and args.every == [0, 10, 1] and args.repeats == 2
    lines = bench.table({0: 2.0, 10: 1.9, 1: 1.0}, 0, 3 * 2**20)
    assert lines[0].split() == ["--save-every", "it/s", "x", "baseline"]
    assert [line.split() for line in lines[1:4]] == [["0", "2.00", "1.000"], ["10", "1.90", "0.950"], ["1", "1.00", "0.500"]]
    assert lines[4] == "last.pt: 3.0 MiB"


def test_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        _save_every().main(["--model", "encnet_tiny", "--every", "0", "1", "--iters", "2", "--repeats", "1",
                            "--crop", "32", "--batch", "2"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    assert "encnet_tiny" in out[0] and "load average" in out[0]
    assert [line.split()[0] for line in out[2:4]] == ["0", "1"] and out[2].split()[2] == "1.000"
    assert out[4].startswith("last.pt: ")
