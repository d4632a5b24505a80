"""benchmarks/startup.py: its cases, its table (no timing is asserted: the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _startup():
    spec = importlib.util.spec_from_file_location("encnet_startup", ROOT / "benchmarks" / "startup.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["encnet_startup"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cases_are_the_documented_rows() -> None:
    startup = _startup()
    cases = startup.cases("python")
    assert [c.name for c in cases] == [
        "python -c pass", "python -c 'import torch'", "encnet --help", "encnet --version", "encnet evaluate --help",
        "encnet evaluate --bogus (usage error)",
    ]  # fmt: skip
    assert cases[2].argv == ("python", "-m", "encnet_cli", "--help") and cases[-1].exit_code == 2


def test_measure_and_table_with_one_repeat() -> None:
    startup = _startup()
    cases = [startup.Case("pass", (sys.executable, "-c", "pass")), startup.Case("usage", (sys.executable, "-c", "raise SystemExit(2)"), 2)]
    times = startup.measure(cases, 1)
    assert set(times) == {"pass", "usage"} and all(wall > 0 and cpu >= 0 for wall, cpu in times.values())
    lines = startup.table(times, "pass", "usage")
    assert lines[0].split() == ["command", "wall", "s", "x", "pass", "x", "torch", "CPU", "s", "x", "pass", "x", "torch"]
    assert [line.split()[0] for line in lines[1:]] == ["pass", "usage"]
    assert lines[1].split()[2] == "1.00"  # the reference against itself
    with pytest.raises(SystemExit, match="exit 0, expected 2"):
        startup.run_once(startup.Case("wrong", (sys.executable, "-c", "pass"), 2))
