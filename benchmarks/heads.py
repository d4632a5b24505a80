"""EncNet-ResNet50 against torchvision's segmentation models: a training step and inference, on CPU.

- Train step (forward + loss + backward, train mode, no optimizer step): our
  ``create_model("encnet_resnet50", classes)`` (no lateral branch; aux head and SE head on) with
  ``SegmentationLoss()`` (CE + 0.2 aux CE + 0.2 SE BCE) against torchvision's
  ``fcn_resnet50(aux_loss=True)`` with CE(out) + 0.2 CE(aux). Both use a dilated ResNet-50 at output
  stride 8 and an FCN aux head on layer3, so the difference is our head (conv5, EncModule, SE) vs the
  FCN head (one 3x3 conv 2048->512 and a classifier). Goal: ours <= 1.05x FCN.
- Inference (eval mode, ``torch.inference_mode``): ours against ``deeplabv3_resnet50(aux_loss=False)``
  (same backbone, ASPP head). Goal: ours <= 0.85x DeepLabV3.

All models are randomly initialised (no downloads) from fixed seeds and see the same input and labels.
After warm-up calls, the two models of a pair are timed in rounds: each round calls both once, back to
back, alternating which goes first, and the reported ratio is the median over rounds of the ratio
within a round (so load from other processes that changes between rounds cancels out). Also printed:
the range of the per-round ratios and min(ours) / min(theirs), the ratio of each model's least
disturbed call; when these disagree with the median, the machine was busy. Only the ratios are claims. Forward FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
meta device (a multiply-add counts as 2), split into backbone, head and aux head, so that the time
ratios can be read against the work each model does.

    .venv/bin/python benchmarks/heads.py                      # batch 2, 3x256x256, 21 classes
    .venv/bin/python benchmarks/heads.py --size 480 --batch 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

from encnet_core.constants import IGNORE_INDEX
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.models.registry import create_model

TRAIN_GOAL = 1.05  # our train step time / FCN's, at most
INFER_GOAL = 0.85  # our inference time / DeepLabV3's, at most
AUX_WEIGHT = 0.2  # torchvision's reference scripts and PyTorch-Encoding both weight the aux CE by 0.2

# top-level children of each model, grouped for the FLOP breakdown
PARTS = {
    "backbone": ("backbone",),
    "head": ("head", "classifier"),
    "aux head": ("aux_head", "aux_classifier"),
}


def build(name: str, classes: int, seed: int) -> nn.Module:
    """One of the three models, randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    if name == "encnet":
        return create_model("encnet_resnet50", classes, lateral=False, aux=True, se_loss=True)
    if name == "fcn":
        return fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=classes)
    if name == "deeplabv3":
        return deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=classes)
    raise ValueError(name)


def torchvision_loss(outputs: dict[str, Tensor], labels: Tensor) -> Tensor:
    """CE(out) + 0.2 CE(aux), as torchvision's segmentation reference script."""
    loss = F.cross_entropy(outputs["out"], labels, ignore_index=IGNORE_INDEX)
    return loss + AUX_WEIGHT * F.cross_entropy(outputs["aux"], labels, ignore_index=IGNORE_INDEX)


def train_step(
    model: nn.Module, loss_fn: Callable[[dict[str, Tensor], Tensor], Tensor], x: Tensor, y: Tensor
):
    """Forward + loss + backward, gradients cleared first."""
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()


def infer(model: nn.Module, x: Tensor) -> None:
    with torch.inference_mode():
        model(x)["out"]


@dataclass(frozen=True)
class PairTiming:
    """Timing of ours against a baseline over several rounds."""

    ratio: float  # median over rounds of ours / theirs within the round: the claim
    low: float  # smallest per-round ratio
    high: float  # largest per-round ratio
    ratio_of_best: float  # min(ours) / min(theirs): each model's least disturbed call
    seconds: float  # median seconds per call of ours (machine-dependent, context only)


def time_pair(ours: Callable[[], None], theirs: Callable[[], None], warmup: int, repeats: int) -> PairTiming:
    """Each round calls both once, back to back, alternating which goes first.

    The ratio is taken within a round, so a change of load from other processes between rounds
    cancels out; the spread of the per-round ratios shows how much load there was.
    """
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
    return PairTiming(
        ratio=statistics.median(ratios),
        low=min(ratios),
        high=max(ratios),
        ratio_of_best=min(times["ours"]) / min(times["theirs"]),
        seconds=statistics.median(times["ours"]),
    )


def bench_train(args: argparse.Namespace, x: Tensor, y: Tensor) -> PairTiming:
    """Train step, ours vs FCN."""
    encnet = build("encnet", args.classes, args.seed).train()
    fcn = build("fcn", args.classes, args.seed).train()
    our_loss = SegmentationLoss(aux_weight=AUX_WEIGHT)
    return time_pair(
        lambda: train_step(encnet, lambda out, labels: our_loss(out, labels)[0], x, y),
        lambda: train_step(fcn, torchvision_loss, x, y),
        args.warmup,
        args.repeats,
    )


def bench_inference(args: argparse.Namespace, x: Tensor) -> PairTiming:
    """Inference, ours vs DeepLabV3."""
    encnet = build("encnet", args.classes, args.seed).eval()
    deeplab = build("deeplabv3", args.classes, args.seed).eval()
    return time_pair(lambda: infer(encnet, x), lambda: infer(deeplab, x), args.warmup, args.repeats)


def forward_flops(name: str, args: argparse.Namespace, train: bool) -> dict[str, int]:
    """Forward FLOPs of one call at the benchmark's batch and size, total and per part, on meta."""
    with torch.device("meta"):
        model = build(name, args.classes, args.seed).train(train)
        x = torch.empty(args.batch, 3, args.size, args.size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    flops = {"total": counter.get_total_flops()}
    for part, children in PARTS.items():
        flops[part] = sum(sum(per_module.get(f"{root}.{child}", {}).values()) for child in children)
    return flops


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_timing(label: str, timing: PairTiming) -> None:
    print(
        f"  time {label} = {timing.ratio:.3f}x  (median of rounds; rounds {timing.low:.3f}x .. "
        f"{timing.high:.3f}x; best call / best call {timing.ratio_of_best:.3f}x)"
    )


def print_flops(pair: tuple[str, str], flops: dict[str, dict[str, int]]) -> None:
    ours, theirs = pair
    print(f"  {'forward GFLOPs':<16} {ours:>10} {theirs:>10} {'ratio':>8}")
    for part in ("total", *PARTS):
        a, b = flops[ours][part], flops[theirs][part]
        if a == 0 and b == 0:
            continue
        ratio = f"{a / b:7.2f}x" if b else "      -"
        print(f"  {part:<16} {a / 1e9:>10.1f} {b / 1e9:>10.1f} {ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="input height = width")
    parser.add_argument("--batch", type=int, default=2, help="batch size")
    parser.add_argument("--classes", type=int, default=21, help="number of classes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, input and labels")
    args = parser.parse_args()

    print(
        f"EncNet-ResNet50 vs torchvision, batch {args.batch}, 3x{args.size}x{args.size}, {args.classes} classes, "
        f"float32, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=generator)

    train = bench_train(args, x, y)
    infer = bench_inference(args, x)
    train_flops = {name: forward_flops(name, args, train=True) for name in ("encnet", "fcn")}
    infer_flops = {name: forward_flops(name, args, train=False) for name in ("encnet", "deeplabv3")}

    print("\ntrain step (forward + loss + backward), EncNet vs FCN (aux on both):")
    print_timing("ours / FCN", train)
    print_flops(("encnet", "fcn"), train_flops)
    print("\ninference (eval, inference_mode), EncNet vs DeepLabV3:")
    print_timing("ours / DeepLabV3", infer)
    print_flops(("encnet", "deeplabv3"), infer_flops)
    print(
        f"\n(ours: train step {train.seconds:.2f} s, inference {infer.seconds:.2f} s "
        "on this machine; only the ratios are claims)"
    )
    print(
        f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes skew the ratios)"
    )
    print("goals:")
    for label, timing, goal in (
        ("train step  ours / FCN      ", train, TRAIN_GOAL),
        ("inference   ours / DeepLabV3", infer, INFER_GOAL),
    ):
        print(f"  {label} = {timing.ratio:.3f}x  (goal <= {goal}x)  {verdict(timing.ratio <= goal)}")


if __name__ == "__main__":
    main()
