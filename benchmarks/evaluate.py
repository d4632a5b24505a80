"""Multi-scale + flip inference cost of ``infer`` against the pure model cost of the same views.

``infer`` with the reference's scales (0.5 .. 1.75) and flip tiles each scale into crop-size views
and runs them in batches. This script measures, in one run and on the same image:

* ours: ``infer(...)`` end to end (resizing, padding, tiling, batched forwards, merging);
* pure: only the model's forward passes over exactly the views ``infer`` ran, at the same batch
  sizes (the views are recorded once, then replayed), i.e. the model cost nothing can remove;
* one by one: ``infer`` with ``batch_size=1``, the reference's way.

It prints medians over --repeats runs, overhead = ours / pure - 1 (goal: <= 10%) and the speed-up
of batching over one-by-one views. One torch thread by default: on a busy machine, multi-threaded
forwards stall on whichever core another process holds and the timings swing by 10x.

    .venv/bin/python benchmarks/evaluate.py [--model encnet_resnet18] [--base 256] [--crop 224]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from torch import Tensor

from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.models import create_model

GOAL = 0.10  # allowed overhead over the pure model cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encnet_resnet18", help="registered model (random weights)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--base", type=int, default=256, help="long side at scale 1.0")
    parser.add_argument("--crop", type=int, default=224, help="window side")
    parser.add_argument("--height", type=int, default=192, help="image height (width = --base)")
    parser.add_argument("--scales", default="0.5,0.75,1.0,1.25,1.5,1.75")
    parser.add_argument("--batch", type=int, default=8, help="views per forward pass")
    parser.add_argument("--merge", default="logits", choices=["logits", "prob"])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); 1 keeps timings stable on a shared machine")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, args.classes).eval()

    def forward(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(x)["out"]

    image = torch.randn(3, args.height, args.base)
    scales = tuple(float(s) for s in args.scales.split(","))
    config = InferenceConfig(scales=scales, flip=True, crop_size=args.crop, base_size=args.base,
                             merge=args.merge, batch_size=args.batch)  # fmt: skip
    single = InferenceConfig(**{**config.__dict__, "batch_size": 1})

    recorded: list[Tensor] = []  # the exact batches infer() runs (also the warm-up)

    def recording(x: Tensor) -> Tensor:
        recorded.append(x.clone())
        return forward(x)

    with torch.inference_mode():
        infer(recording, image, args.classes, config)
        for batch in recorded:  # warm-up of every shape for the pure replay
            forward(batch)
    views = sum(b.shape[0] for b in recorded)
    shapes = Counter(tuple(b.shape) for b in recorded)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def replay() -> None:
        for batch in recorded:
            forward(batch)

    ours, pure, one_by_one = [], [], []
    with torch.inference_mode():
        for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit all three
            ours.append(timed(lambda: infer(forward, image, args.classes, config)))
            pure.append(timed(replay))
            one_by_one.append(timed(lambda: infer(forward, image, args.classes, single)))
    t_ours, t_pure, t_one = (statistics.median(v) for v in (ours, pure, one_by_one))
    overhead = t_ours / t_pure - 1

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} ({args.classes} classes, "
          f"random weights); image {args.height}x{args.base}, base {args.base}, crop {args.crop}, "
          f"scales {','.join(f'{s:g}' for s in scales)} + flip, merge {args.merge}")  # fmt: skip
    print(f"{views} views in {len(recorded)} forward passes: "
          + ", ".join(f"{n} x {tuple(s)}" for s, n in shapes.items()))  # fmt: skip
    print(f"median of {args.repeats} runs")
    print(f"{'measurement':<44}{'seconds':>9}{'ratio':>8}")
    print(f"{'pure model cost (same views, batch ' + str(args.batch) + ')':<44}{t_pure:>9.3f}{1.0:>8.3f}")
    print(f"{'infer(), batched views (batch ' + str(args.batch) + ')':<44}{t_ours:>9.3f}{t_ours / t_pure:>8.3f}")
    print(f"{'infer(), one view per forward (batch 1)':<44}{t_one:>9.3f}{t_one / t_pure:>8.3f}")
    print(f"overhead of infer() over the pure model cost: {overhead:+.1%} (goal <= {GOAL:.0%}): "
          f"{'PASS' if overhead <= GOAL else 'FAIL'}")  # fmt: skip
    print(f"one-by-one / batched: {t_one / t_ours:.3f}")


if __name__ == "__main__":
    main()
