"""``encnet prepare folder`` at scale: does memory stay flat and time grow linearly with the number of images?

COCO's train split has 118k images; a converter that keeps something per image (or slows down as the
file grows) shows it here first. In one run, for each N (default 1000 and 10000 images) and each
``--workers`` setting (1, and 0 = one per core), it runs the real command in a subprocess::

    python -m encnet_cli prepare folder --images I --masks M --classes C -o OUT --workers W --no-progress --json F

on synthetic inputs: a flat folder of N small JPEGs (``--size``, 64 x 64 by default) and their index
PNG masks (21 classes and some 255), like COCO's flat ``train2017/``; ``prepare`` splits 10% off as val.
The inputs are made once with NumPy and PIL (256 distinct images, repeated) and cached under ``--cache``.

Memory is the peak, over the whole run, of the summed PSS (proportional set size, from
``/proc/PID/smaps_rollup``, sampled every ``--interval`` seconds) of the process tree: the ``encnet``
process and its conversion workers. PSS splits the pages a forked worker shares with its parent
between them, so the sum is what the tree really holds (summed RSS would count shared pages once per
process; it is printed too). ``largest process`` is ``ru_maxrss`` from ``wait4``: the peak of the single
largest process of the tree (the main one or a worker), exact but not sampled.

Time is ``prepare``'s own ``seconds`` (from the ``--json`` result: planning, conversion and writing;
not the interpreter's start). It prints, per N and workers, the median over ``--repeats`` (runs are
interleaved: every N and setting once per round, so load changes hit all alike), and the ratios

* memory: peak(N_max) / peak(N_min) (goal <= 1.2), and the growth in MB per 1000 images;
* time: seconds(N_max) / ((N_max / N_min) x seconds(N_min)) (goal <= 1.15: linear);
* cores: seconds(--workers 1) / seconds(--workers 0) at N_max (the speed-up of one process per core;
  medians, and between the fastest run of each, the one least disturbed by other work),
  and per row the cores the command kept busy: CPU seconds of the tree (``wait4``: the workers are
  reaped by the main process, so theirs are included) / wall seconds; on a machine that others load,
  the speed-up is capped by the cores left, and ``cores`` shows how many the command got;

with the load average (``uptime``) before and after.

    .venv/bin/python benchmarks/prepare_scale.py [--sizes 1000 10000] [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MEMORY_GOAL = 1.2  # peak(N_max) / peak(N_min)
TIME_GOAL = 1.15  # seconds(N_max) / (N_max / N_min x seconds(N_min))
NUM_CLASSES = 21
VARIANTS = 256  # distinct images; file i is variant i % VARIANTS


@dataclass(frozen=True)
class Inputs:
    images: Path
    masks: Path
    classes: Path
    count: int


@dataclass(frozen=True)
class Run:
    """One ``prepare folder`` run."""

    n: int  # images in the input folder
    workers: int  # --workers (0 = one per core)
    seconds: float  # prepare's own time (the --json result)
    wall: float  # the whole command, interpreter start included
    peak_pss_mb: float  # peak of the summed PSS of the process tree (sampled)
    peak_rss_mb: float  # peak of the summed RSS of the process tree (sampled; shared pages counted per process)
    largest_mb: float  # ru_maxrss of the largest single process of the tree (wait4)
    cpu: float  # CPU seconds (user + system) of the whole tree, interpreter start included (wait4)
    processes: int  # most processes seen in the tree at once
    counts: dict[str, int]  # images written per split


# ----------------------------------------------------------------------------- inputs


def _variants(size: int) -> list[tuple[bytes, bytes]]:
    """VARIANTS (JPEG, index PNG) pairs of ``size`` x ``size``: gradients, blocks and noise; block labels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    cells = max(1, size // 16)
    pairs = []
    for _ in range(VARIANTS):
        labels = rng.integers(0, NUM_CLASSES, (cells, cells)).astype(np.uint8)
        labels[rng.random((cells, cells)) < 0.1] = 255  # some ignore
        mask = np.kron(labels, np.ones((size // cells + 1, size // cells + 1), np.uint8))[:size, :size]
        colour = rng.integers(0, 256, (NUM_CLASSES + 1, 3)).astype(np.float32)
        base = colour[np.minimum(mask, NUM_CLASSES)]  # (H, W, 3)
        rgb = 0.6 * base + 0.4 * 255 * (y * rng.random(3) + x * rng.random(3)) / 2 + rng.normal(0, 8, (size, size, 3))
        image, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(image, format="JPEG", quality=90)
        Image.fromarray(mask, mode="L").save(png, format="PNG")
        pairs.append((image.getvalue(), png.getvalue()))
    return pairs


def make_inputs(cache: Path, n: int, size: int) -> Inputs:
    """A flat image folder, its mask folder and a class list for ``n`` images (made once, then reused)."""
    folder = cache / f"{size}px-{n}"
    inputs = Inputs(folder / "images", folder / "masks", folder / "classes.txt", n)
    if (folder / "complete").is_file():
        return inputs
    inputs.images.mkdir(parents=True, exist_ok=True)
    inputs.masks.mkdir(parents=True, exist_ok=True)
    pairs = _variants(size)
    for i in range(n):
        image, mask = pairs[i % len(pairs)]
        (inputs.images / f"{i:09d}.jpg").write_bytes(image)
        (inputs.masks / f"{i:09d}.png").write_bytes(mask)
    inputs.classes.write_text("".join(f"class{c}\n" for c in range(NUM_CLASSES)))
    (folder / "complete").write_text("")
    return inputs


# ----------------------------------------------------------------------------- measuring


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:  # gone meanwhile
        pass
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def memory_kib(pids: Sequence[int]) -> tuple[int, int]:
    """(summed PSS, summed RSS) in KiB of ``pids`` (a process that ended meanwhile counts 0)."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return pss, rss


def run_prepare(inputs: Inputs, out: Path, workers: int, interval: float = 0.05) -> Run:
    """Run ``encnet prepare folder`` on ``inputs`` in a subprocess, sampling its process tree's memory."""
    report = out.with_suffix(".json")
    command = [
        sys.executable, "-m", "encnet_cli", "prepare", "folder", "--images", str(inputs.images), "--masks",
        str(inputs.masks), "--classes", str(inputs.classes), "-o", str(out), "--overwrite", "--workers", str(workers),
        "--no-progress", "--json", str(report),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        peak_pss = peak_rss = processes = 0
        while True:
            pids = tree(process.pid)
            processes = max(processes, len(pids))
            pss, rss = memory_kib(pids)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(interval)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"prepare exited with {process.returncode}: {stderr.read().decode(errors='replace')[-2000:]}")
    result = json.loads(report.read_text())
    return Run(inputs.count, workers, float(result["seconds"]), wall, peak_pss / 1024, peak_rss / 1024,
               usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, processes, dict(result["counts"]))  # fmt: skip


def measure(cache: Path, work: Path, sizes: Sequence[int], workers: Sequence[int], repeats: int, size: int,
            interval: float = 0.05) -> list[Run]:  # fmt: skip
    """Every (N, workers) once per round, ``repeats`` rounds; the outputs go to ``work`` (removed after each run)."""
    inputs = {n: make_inputs(cache, n, size) for n in sizes}
    runs = []
    for _ in range(repeats):
        for n in sizes:
            for w in workers:
                out = work / f"scale-{n}-{w}.h5"
                runs.append(run_prepare(inputs[n], out, w, interval))
                out.unlink()
                out.with_suffix(".json").unlink()
    return runs


# ----------------------------------------------------------------------------- report


def summarise(runs: Sequence[Run]) -> dict:
    """Medians per (N, workers) and the ratios: memory and time between the smallest and largest N, cores."""
    sizes = sorted({r.n for r in runs})
    settings = list(dict.fromkeys(r.workers for r in runs))  # as given: the baseline (--workers 1) first
    rows = {}
    for n in sizes:
        for w in settings:
            group = [r for r in runs if r.n == n and r.workers == w]
            rows[(n, w)] = {key: statistics.median(getattr(r, key) for r in group)
                            for key in ("seconds", "wall", "peak_pss_mb", "peak_rss_mb", "largest_mb", "cpu", "processes")}  # fmt: skip
            rows[(n, w)]["best_seconds"] = min(r.seconds for r in group)
    small, large = sizes[0], sizes[-1]
    ratios = {}
    for w in settings:
        a, b = rows[(small, w)], rows[(large, w)]
        ratios[w] = {
            "memory": b["peak_pss_mb"] / a["peak_pss_mb"],
            "mb_per_1000": (b["peak_pss_mb"] - a["peak_pss_mb"]) / (large - small) * 1000 if large > small else 0.0,
            "largest": b["largest_mb"] / a["largest_mb"],
            "time": b["seconds"] / (large / small * a["seconds"]),
        }
    both = 0 in settings and 1 in settings
    speedup = rows[(large, 1)]["seconds"] / rows[(large, 0)]["seconds"] if both else None
    best = rows[(large, 1)]["best_seconds"] / rows[(large, 0)]["best_seconds"] if both else None
    return {"sizes": sizes, "workers": settings, "rows": rows, "ratios": ratios, "speedup": speedup, "speedup_best": best}


def table(summary: dict) -> list[str]:
    lines = [f"{'images':>8}{'workers':>9}{'procs':>7}{'prepare s':>11}{'wall s':>9}{'ms/image':>10}"
             f"{'tree PSS MB':>13}{'tree RSS MB':>13}{'largest MB':>12}{'CPU s':>8}{'cores':>7}"]  # fmt: skip
    for (n, w), row in summary["rows"].items():
        lines.append(f"{n:>8}{w if w else 'cores':>9}{row['processes']:>7.0f}{row['seconds']:>11.2f}{row['wall']:>9.2f}"
                     f"{row['seconds'] / n * 1000:>10.3f}{row['peak_pss_mb']:>13.1f}{row['peak_rss_mb']:>13.1f}"
                     f"{row['largest_mb']:>12.1f}{row['cpu']:>8.2f}{row['cpu'] / row['wall']:>7.2f}")  # fmt: skip
    small, large = summary["sizes"][0], summary["sizes"][-1]
    for w, ratio in summary["ratios"].items():
        setting = f"--workers {w}" + (" (one per core)" if w == 0 else "")
        lines.append(
            f"{setting}: memory {large}/{small} = {ratio['memory']:.3f}x (goal <= {MEMORY_GOAL}: "
            f"{'met' if ratio['memory'] <= MEMORY_GOAL else 'NOT met'}; {ratio['mb_per_1000']:+.2f} MB per 1000 images; "
            f"largest process {ratio['largest']:.3f}x), time {large}/({large // small} x {small}) = {ratio['time']:.3f}x "
            f"(goal <= {TIME_GOAL}: {'met' if ratio['time'] <= TIME_GOAL else 'NOT met'})"
        )
    if summary["speedup"] is not None:
        lines.append(f"cores: --workers 1 / --workers 0 at {large} images = {summary['speedup']:.2f}x faster (medians; "
                     f"{summary['speedup_best']:.2f}x between the fastest runs; {os.cpu_count()} cores)")  # fmt: skip
    return lines


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of images")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="--workers settings (0 = one per core)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (every N and setting once per round)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--interval", type=float, default=0.05, help="memory sampling interval, seconds")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "encnet-prepare-scale",
                        help="where the synthetic inputs are kept between runs")  # fmt: skip
    args = parser.parse_args(argv)
    import h5py
    import numpy

    print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, h5py {h5py.__version__} "
          f"(HDF5 {h5py.version.hdf5_version}), {os.cpu_count()} cores; {args.size} x {args.size} images")  # fmt: skip
    print(f"before: {uptime()}")
    with tempfile.TemporaryDirectory() as work:
        runs = measure(args.cache, Path(work), sorted(args.sizes), args.workers, args.repeats, args.size, args.interval)
    for run in runs:
        print(f"run: {run.n} images, --workers {run.workers}: {run.seconds:.2f} s ({run.cpu:.2f} CPU s), tree PSS {run.peak_pss_mb:.1f} MB, "
              f"largest process {run.largest_mb:.1f} MB, {run.processes} processes, {run.counts}")  # fmt: skip
    summary = summarise(runs)
    for line in table(summary):
        print(line)
    print(f"after: {uptime()}")
    return {"runs": runs, **summary}


if __name__ == "__main__":
    main()
