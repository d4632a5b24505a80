"""EncNet-14 against its SE-ResNet twin on CIFAR-sized input: one training step on CPU.

A training step is what ``encnet train`` does per batch for a classifier: forward in train mode,
cross-entropy (``ClassificationLoss``), backward and an SGD step (``build_optimizer``: momentum 0.9,
weight decay 5e-4, one group). Both models of a pair are built from the same seed and see the same
batch; the only difference is the channel attention of each block (Encoding with K codewords and s
fixed at 0.5, or squeeze-excitation), see encnet_core/models/cifar.py.

Pairs: ``encnet_cifar14`` / ``se_cifar14`` (the paper's widths, 128/256/512) and ``encnet_cifar_tiny``
/ ``se_cifar_tiny`` (16/32/64). After warm-up steps the two are timed in rounds: each round steps both
once, back to back, alternating which goes first; the ratio is the median over rounds of the ratio
within a round (load that changes between rounds cancels out), with the range of the per-round
ratios beside it. Forward FLOPs (``torch.utils.flop_counter``, a multiply-add = 2) and parameters
are printed for the same batch so the time ratio can be read against the work. Only the ratios are
claims; the load average is printed before and after.

    .venv/bin/python benchmarks/cifar.py                       # both pairs, batch 16 (full) / 64 (tiny)
    .venv/bin/python benchmarks/cifar.py --pairs tiny --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from encnet_core.config import TrainConfig
from encnet_core.engine.classification import ClassificationLoss
from encnet_core.engine.optim import build_optimizer
from encnet_core.models import create_model

PAIRS = {"full": ("encnet_cifar14", "se_cifar14"), "tiny": ("encnet_cifar_tiny", "se_cifar_tiny")}
DEFAULT_BATCH = {"full": 16, "tiny": 64}
CLASSES = 10  # CIFAR-10


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, CLASSES).train()


def step_fn(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One training step of ``model`` on the fixed batch (x, y), as the training loop does it."""
    optimizer = build_optimizer(model, TrainConfig(weight_decay=5e-4), lr=0.1)
    loss_fn = ClassificationLoss()

    def step() -> None:
        loss, _ = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_pair(ours: Callable[[], None], theirs: Callable[[], None], warmup: int, repeats: int) -> dict[str, float]:
    """Median over rounds of ours / theirs within the round (each round runs both, alternating the order)."""
    for _ in range(warmup):
        ours()
        theirs()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for round_index in range(repeats):
        order = (("ours", ours), ("theirs", theirs))
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["ours"], times["theirs"], strict=True)]
    return {
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "ratio_of_best": min(times["ours"]) / min(times["theirs"]),
        "seconds_ours": statistics.median(times["ours"]),
        "seconds_theirs": statistics.median(times["theirs"]),
    }


def forward_flops(name: str, batch: int) -> int:
    with torch.device("meta"):
        model = create_model(name, CLASSES).train()
        x = torch.empty(batch, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def run_pair(key: str, batch: int, args: argparse.Namespace) -> dict[str, object]:
    ours_name, theirs_name = PAIRS[key]
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, CLASSES, (batch,), generator=generator)
    ours, theirs = build(ours_name, args.seed), build(theirs_name, args.seed)
    timing = time_pair(step_fn(ours, x, y), step_fn(theirs, x, y), args.warmup, args.repeats)
    params = [sum(p.numel() for p in m.parameters()) for m in (ours, theirs)]
    flops = [forward_flops(name, batch) for name in (ours_name, theirs_name)]
    return {
        "pair": key, "ours": ours_name, "baseline": theirs_name, "batch": batch, **timing,
        "params": params, "params_ratio": params[0] / params[1], "forward_gflops": [f / 1e9 for f in flops],
        "flops_ratio": flops[0] / flops[1],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="full,tiny", help="comma-separated: full (EncNet-14 vs SE-14), tiny")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: 16 full, 64 tiny)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, input and labels")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args()
    keys = [key.strip() for key in args.pairs.split(",") if key.strip()]
    unknown = [key for key in keys if key not in PAIRS]
    if unknown:
        parser.error(f"unknown pair(s) {', '.join(unknown)}; choose from {', '.join(PAIRS)}")

    load_before = os.getloadavg()
    print(
        f"CIFAR training step (forward + CE + backward + SGD), 3x32x32, {CLASSES} classes, float32, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_before[0]:.2f} "
        f"on {os.cpu_count()} CPUs"
    )
    results = []
    for key in keys:
        batch = args.batch or DEFAULT_BATCH[key]
        result = run_pair(key, batch, args)
        results.append(result)
        print(f"\n{result['ours']} / {result['baseline']}, batch {batch}:")
        print(
            f"  step time ratio {result['ratio']:.3f}x  (median of {args.repeats} rounds; rounds {result['low']:.3f}x .. "
            f"{result['high']:.3f}x; best step / best step {result['ratio_of_best']:.3f}x)"
        )
        print(f"  forward GFLOPs  {result['forward_gflops'][0]:.3f} vs {result['forward_gflops'][1]:.3f}  ({result['flops_ratio']:.3f}x)")
        print(f"  parameters      {result['params'][0] / 1e6:.2f}M vs {result['params'][1] / 1e6:.2f}M  ({result['params_ratio']:.3f}x)")
        print(f"  (seconds per step here: {result['seconds_ours']:.3f} vs {result['seconds_theirs']:.3f}; context only)")
    load_after = os.getloadavg()
    print(f"\nload average after {load_after[0]:.2f} (before {load_before[0]:.2f}); other processes skew the ratios")
    if args.json is not None:
        args.json.write_text(json.dumps({"load_average_before": load_before, "load_average_after": load_after,
                                         "threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
