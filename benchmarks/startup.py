"""Start-up time of the ``encnet`` command: what a user waits for before anything happens.

Times, in one run, fresh subprocesses: ``python -c pass`` (the interpreter alone), ``python -c "import
torch"``, ``encnet --help``, ``encnet --version``, ``encnet evaluate --help`` and a usage error (``encnet
evaluate --bogus``, exit 2). Each is run --repeats times, interleaved; the best wall time and the best
CPU time (user + system of the child, which a busy machine disturbs least) are printed, each as a ratio
to ``python -c pass`` and to ``import torch``, with the load average before and after. Goal: ``encnet
--help`` under 0.1x of ``import torch`` in wall time (torch and the other heavy libraries load only when
a command runs).

    .venv/bin/python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

HELP_GOAL = 0.1  # encnet --help / import torch, at most


@dataclass(frozen=True)
class Case:
    """One command line to time and the exit code it must end with (a usage error exits 2)."""

    name: str
    argv: tuple[str, ...]
    exit_code: int = 0


def cases(python: str = sys.executable) -> list[Case]:
    """The command lines timed: the two references first (``python -c pass``, ``import torch``)."""
    encnet = (python, "-m", "encnet_cli")  # the console script's code path, without depending on PATH
    return [
        Case("python -c pass", (python, "-c", "pass")),
        Case("python -c 'import torch'", (python, "-c", "import torch")),
        Case("encnet --help", (*encnet, "--help")),
        Case("encnet --version", (*encnet, "--version")),
        Case("encnet evaluate --help", (*encnet, "evaluate", "--help")),
        Case("encnet evaluate --bogus (usage error)", (*encnet, "evaluate", "--bogus"), exit_code=2),
    ]


def run_once(case: Case) -> tuple[float, float]:
    """(wall time, CPU time) in seconds of one run of ``case`` in a fresh process; its exit code is checked.
    CPU time (user + system of the child) is what a loaded machine disturbs least."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "COLUMNS": "100"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(case.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != case.exit_code:
        raise SystemExit(f"{case.name}: exit {proc.returncode}, expected {case.exit_code}: {proc.stderr.decode()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(all_cases: list[Case], repeats: int) -> dict[str, tuple[float, float]]:
    """The best wall time and the best CPU time of each case over ``repeats`` rounds (one run of each case
    per round, so that a change in load touches every case alike), by name."""
    best = {case.name: (float("inf"), float("inf")) for case in all_cases}
    for _ in range(repeats):
        for case in all_cases:
            wall, cpu = run_once(case)
            best[case.name] = (min(best[case.name][0], wall), min(best[case.name][1], cpu))
    return best


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def table(times: dict[str, tuple[float, float]], base: str, torch_name: str) -> list[str]:
    """One line per case: best wall time and its ratios to ``base`` (python -c pass) and to ``torch_name``
    (import torch), then the same for CPU time."""
    width = max(len(name) for name in times)
    lines = [f"{'command':<{width}}  {'wall s':>7}  {'x pass':>7}  {'x torch':>7}  {'CPU s':>7}  {'x pass':>7}  {'x torch':>7}"]
    for name, (wall, cpu) in times.items():
        lines.append(
            f"{name:<{width}}  {wall:7.3f}  {wall / times[base][0]:7.2f}  {wall / times[torch_name][0]:7.3f}  "
            f"{cpu:7.3f}  {cpu / max(times[base][1], 1e-3):7.2f}  {cpu / max(times[torch_name][1], 1e-3):7.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the best is reported")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    all_cases = cases()
    before = load_average()
    times = measure(all_cases, args.repeats)
    after = load_average()
    base, torch_name = all_cases[0].name, all_cases[1].name
    print(f"start-up, best of {args.repeats} runs of a fresh process; load average before {before}, after {after}; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for line in table(times, base, torch_name):
        print(line)
    ratio = times["encnet --help"][0] / times[torch_name][0]
    verdict = "met" if ratio < HELP_GOAL else "NOT met"
    print(f"goal: encnet --help under {HELP_GOAL}x of import torch (wall time): {ratio:.3f}x, {verdict}")


if __name__ == "__main__":
    main()
