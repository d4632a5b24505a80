"""`encnet evaluate` time by DataLoader workers: 0, 2 and auto (engine/workers.py ``loader_workers``).

One run prepares a synthetic set (``encnet prepare synthetic``), trains encnet_tiny for one iteration
(the weights do not matter, the work per image does), then evaluates its ``val`` split with each
worker setting in turn, interleaved over --repeats rounds after one untimed warm-up round, and prints
the median seconds, the ratio to workers 0 and what auto resolved to on this machine (its usable
CPUs: the process's affinity mask), with the load average before and after. Every setting must give
the same pixAcc and mIoU (checked).

    .venv/bin/python benchmarks/loader_workers.py [--num-val 64] [--size 96] [--repeats 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from encnet_core.config import TrainConfig
from encnet_core.data.prepare import PrepareOptions, prepare
from encnet_core.engine.evaluate import EvaluateOptions, evaluate
from encnet_core.engine.train import train
from encnet_core.engine.workers import loader_workers, local_processes, usable_cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-val", type=int, default=64, help="validation images evaluated")
    parser.add_argument("--size", type=int, default=96, help="side of the square synthetic images")
    parser.add_argument("--model", default="encnet_tiny", help="registered model (one training iteration)")
    parser.add_argument("--device", default="cpu", help="evaluation device")
    parser.add_argument("--settings", default="0,2,auto", help="comma-separated --workers values; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: torch's default, as encnet evaluate)")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings: list[int | str] = [s if s == "auto" else int(s) for s in args.settings.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "synthetic.h5"
        params = {"num_train": 8, "num_val": args.num_val, "size": args.size}
        prepare("synthetic", PrepareOptions(out=data, root=work / "cache", workers=1, params=params))
        config = TrainConfig(data=str(data), output_dir=str(work / "run"), model=args.model, iters=1, batch_size=4,
                             crop_size=min(args.size, 96), base_size=args.size, workers=0, device=args.device, val_split="")  # fmt: skip
        checkpoint = train(config).last_checkpoint
        times: dict[str, list[float]] = {str(s): [] for s in settings}
        scores: dict[str, tuple[float, float]] = {}
        for round_ in range(args.repeats + 1):  # round 0: warm-up, not timed
            for setting in settings:
                start = time.perf_counter()
                result = evaluate(checkpoint, data, EvaluateOptions(device=args.device, workers=setting))
                seconds = time.perf_counter() - start
                scores[str(setting)] = (result["pixAcc"], result["mIoU"])
                if round_:
                    times[str(setting)].append(seconds)
                print(f"round {round_}{' (warm-up)' if not round_ else ''}: --workers {setting}: {seconds:.2f} s", flush=True)
    load_after = os.getloadavg()
    if len(set(scores.values())) != 1:
        raise SystemExit(f"the settings gave different numbers: {scores}")
    auto = loader_workers("auto", args.num_val)
    baseline = statistics.median(times[str(settings[0])])
    print(f"evaluate {args.model} on {args.num_val} synthetic {args.size}px images, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; usable CPUs {usable_cpus()} (os.cpu_count {os.cpu_count()}), "
          f"local processes {local_processes()}: auto = {auto} workers")  # fmt: skip
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")  # fmt: skip
    print(f"{'--workers':>10} {'median s':>9} {'vs ' + str(settings[0]):>8}   runs (s)")
    rows = []
    for setting in settings:
        median = statistics.median(times[str(setting)])
        label = f"auto ({auto})" if setting == "auto" else str(setting)
        print(f"{label:>10} {median:9.2f} {median / baseline:7.2f}x   {' '.join(f'{t:.2f}' for t in times[str(setting)])}")
        rows.append({"workers": setting, "resolved": auto if setting == "auto" else loader_workers(setting, args.num_val),
                     "median_s": median, "ratio": median / baseline, "runs_s": times[str(setting)]})  # fmt: skip
    print(f"same pixAcc {scores[str(settings[0])][0]:.4f} and mIoU {scores[str(settings[0])][1]:.4f} for every setting")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "usable_cpus": usable_cpus(),
                                             "load_before": load_before, "load_after": load_after, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
