"""What --save-every costs: training iterations/s with last.pt written every N iterations vs never.

Each setting trains the same model for --iters iterations on the synthetic dataset (prepared once into
a temp folder), the settings alternate for --repeats rounds and the best round of each is kept; the
script prints iterations/s of the loop (from the first step's start to the run's end: the saves
included, the set-up not), the checkpoint's size, and the ratio to --save-every 0 measured in the
same run. --save-every-minutes is off in every run (0).

    .venv/bin/python benchmarks/save_every.py [--model encnet_resnet18] [--every 0 10 1] [--iters 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from encnet_core.config import TrainConfig
from encnet_core.data.prepare import PrepareOptions, prepare
from encnet_core.engine.events import TrainEvent, TrainStart
from encnet_core.engine.train import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encnet_resnet18", help="registered model (encnet_tiny for a smoke run)")
    parser.add_argument("--every", type=int, nargs="+", default=[0, 10, 1], help="--save-every values; the first is the baseline")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each setting is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on a shared 2-core machine)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, data: Path, folder: Path) -> dict[int, float]:
    """Best iterations/s per --save-every value over ``args.repeats`` alternating rounds."""
    best: dict[int, float] = {}
    for repeat in range(args.repeats):
        for every in args.every:
            started: list[float] = []

            def on_start(event: TrainEvent, started: list[float] = started) -> None:
                if isinstance(event, TrainStart):
                    started.append(time.perf_counter())

            config = TrainConfig(
                data=str(data), output_dir=str(folder / f"every{every}-{repeat}"), model=args.model, iters=args.iters,
                batch_size=args.batch, crop_size=args.crop, base_size=args.crop, workers=0, val_split="",
                log_every=args.iters, device="cpu", save_every=every, save_every_minutes=0.0,
            )  # fmt: skip
            train(config, callback=on_start)
            speed = args.iters / (time.perf_counter() - started[0])
            best[every] = max(best.get(every, 0.0), speed)
    return best


def table(best: dict[int, float], baseline: int, checkpoint_bytes: int) -> list[str]:
    lines = [f"{'--save-every':<14}{'it/s':>8}{'x baseline':>12}"]
    for every, speed in best.items():
        lines.append(f"{every:<14}{speed:>8.2f}{speed / best[baseline]:>12.3f}")
    lines.append(f"last.pt: {checkpoint_bytes / 2**20:.1f} MiB")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("encnet").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.h5"
        prepare("synthetic", PrepareOptions(out=data, root=Path(tmp), workers=1, params={"num_train": 32, "num_val": 4}))
        best = measure(args, data, Path(tmp))
        size = (Path(tmp) / f"every{args.every[0]}-0" / "last.pt").stat().st_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, batch {args.batch}, "
          f"crop {args.crop}, {args.iters} iterations x {args.repeats} rounds, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n".join(table(best, args.every[0], size)))


if __name__ == "__main__":
    main()
