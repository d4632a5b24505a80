"""EncNet against torchvision's segmentation models and against encnet's own DeepLabV3: a training
step and inference, on CPU. Three pairs (``--pairs``, default all):

``torchvision``:

- Train step (forward + loss + backward, train mode, no optimizer step): our
  ``create_model("encnet_resnet50", classes)`` (no lateral branch; aux head and SE head on) with
  ``SegmentationLoss()`` (CE + 0.2 aux CE + 0.2 SE BCE) against torchvision's
  ``fcn_resnet50(aux_loss=True)`` with CE(out) + 0.2 CE(aux). Both use a dilated ResNet-50 at output
  stride 8 and an FCN aux head on layer3, so the difference is our head (conv5, EncModule, SE) vs the
  FCN head (one 3x3 conv 2048->512 and a classifier). Goal: ours <= 1.05x FCN.
- Inference (eval mode, ``torch.inference_mode``): ours against ``deeplabv3_resnet50(aux_loss=False)``
  (same backbone, ASPP head). Goal: ours <= 0.85x DeepLabV3.

``resnet50s`` and ``resnest50`` (issue 22; reported, no goal): EncNet against DeepLabV3 on the same
backbone, both from encnet's registry: ``encnet_<backbone>`` (no lateral branch; aux and SE heads on)
against ``deeplab_<backbone>`` (ASPP head, aux head on), for the dilated ResNet-50 with the deep stem
(``resnet50s``) and ResNeSt-50 (``resnest50``). Train step: both with ``SegmentationLoss()``, which is
CE + 0.2 aux CE + 0.2 SE BCE for EncNet and CE + 0.2 aux CE for DeepLabV3 (it has no SE head);
inference as above. ``--backbone PAIR=NAME`` runs a pair on another backbone of the registry (the
test runs ``resnest50=resnest_tiny``, i.e. encnet_resnest_tiny vs deeplab_resnest_tiny).

All models are randomly initialised (no downloads) from fixed seeds and see the same input and labels.
After warm-up calls, the two models of a pair are timed in rounds: each round calls both once, back to
back, alternating which goes first, and the reported ratio is the median over rounds of the ratio
within a round (so load from other processes that changes between rounds cancels out). Also printed:
the range of the per-round ratios and min(ours) / min(theirs), the ratio of each model's least
disturbed call; when these disagree with the median, the machine was busy. Only the ratios are claims. Forward FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
meta device (a multiply-add counts as 2), split into backbone, head and aux head, so that the time
ratios can be read against the work each model does.

    .venv/bin/python benchmarks/heads.py                      # batch 2, 3x256x256, 21 classes, all pairs
    .venv/bin/python benchmarks/heads.py --size 480 --batch 2 --repeats 3 --pairs resnest50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

from encnet_core.constants import IGNORE_INDEX
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.models.backbones import BACKBONES
from encnet_core.models.registry import MODELS, create_model

TRAIN_GOAL = 1.05  # our train step time / FCN's, at most
INFER_GOAL = 0.85  # our inference time / DeepLabV3's, at most
AUX_WEIGHT = 0.2  # torchvision's reference scripts and PyTorch-Encoding both weight the aux CE by 0.2

# --pairs: the torchvision pair, then EncNet vs encnet's DeepLabV3 on one backbone (pair -> default backbone)
SAME_BACKBONE = {"resnet50s": "resnet50s", "resnest50": "resnest50"}
PAIRS = ("torchvision", *SAME_BACKBONE)

# top-level children of each model, grouped for the FLOP breakdown
PARTS = {
    "backbone": ("backbone",),
    "head": ("head", "classifier"),
    "aux head": ("aux_head", "aux_classifier"),
}


def build(name: str, classes: int, seed: int) -> nn.Module:
    """A model, randomly initialised from ``seed``: ``encnet`` (EncNet-ResNet50), torchvision's ``fcn``
    or ``deeplabv3``, or a registry name ``encnet_<backbone>`` / ``deeplab_<backbone>`` (aux head on;
    EncNet also with the SE head and without the lateral branch)."""
    torch.manual_seed(seed)
    if name == "encnet":
        return create_model("encnet_resnet50", classes, lateral=False, aux=True, se_loss=True)
    if name == "fcn":
        return fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=classes)
    if name == "deeplabv3":
        return deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=classes)
    if name.startswith("encnet_") and name in MODELS:
        return create_model(name, classes, lateral=False, aux=True, se_loss=True)
    if name.startswith("deeplab_") and name in MODELS:
        return create_model(name, classes, aux=True)
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


@dataclass(frozen=True)
class Comparison:
    """One timed row: ours against a baseline, in one mode, with the names ``build`` takes."""

    pair: str  # its --pairs name
    mode: str  # "train" (forward + loss + backward) or "inference"
    ours: str
    theirs: str
    title: str  # the section heading
    label: str  # what the ratio is, e.g. "ours / FCN"
    goal: float | None = None  # the most ours / theirs may be; None: reported only


def comparisons(pairs: Sequence[str], backbones: Mapping[str, str]) -> list[Comparison]:
    """The rows of ``pairs``, in order; ``backbones``: pair of ``SAME_BACKBONE`` -> backbone to run it on."""
    rows: list[Comparison] = []
    for pair in pairs:
        if pair == "torchvision":
            rows.append(Comparison(pair, "train", "encnet", "fcn",
                                   "train step (forward + loss + backward), EncNet vs FCN (aux on both):",
                                   "ours / FCN", TRAIN_GOAL))  # fmt: skip
            rows.append(Comparison(pair, "inference", "encnet", "deeplabv3",
                                   "inference (eval, inference_mode), EncNet vs DeepLabV3:",
                                   "ours / DeepLabV3", INFER_GOAL))  # fmt: skip
            continue
        backbone = backbones[pair]
        ours, theirs = f"encnet_{backbone}", f"deeplab_{backbone}"
        rows.append(Comparison(pair, "train", ours, theirs,
                               f"train step (forward + loss + backward), {ours} vs {theirs} (aux on both, SE on EncNet):",
                               f"EncNet / DeepLabV3 ({backbone})"))  # fmt: skip
        rows.append(Comparison(pair, "inference", ours, theirs,
                               f"inference (eval, inference_mode), {ours} vs {theirs}:",
                               f"EncNet / DeepLabV3 ({backbone})"))  # fmt: skip
    return rows


def loss_for(name: str) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """torchvision's FCN: CE + 0.2 aux CE. Registry models: ``SegmentationLoss()``, which adds the SE
    term only when the outputs have ``"se"`` (EncNet's SE head; DeepLabV3 has none)."""
    if name == "fcn":
        return torchvision_loss
    loss = SegmentationLoss(aux_weight=AUX_WEIGHT)
    return lambda outputs, labels: loss(outputs, labels)[0]


@dataclass(frozen=True)
class Result:
    comparison: Comparison
    timing: PairTiming
    flops: dict[str, dict[str, int]]  # model name -> "total" and each of PARTS -> forward FLOPs


def measure(comparison: Comparison, args: argparse.Namespace, x: Tensor, y: Tensor) -> Result:
    """Time one row (both models built from the same seed, in the row's mode) and count its FLOPs."""
    train = comparison.mode == "train"
    ours = build(comparison.ours, args.classes, args.seed).train(train)
    theirs = build(comparison.theirs, args.classes, args.seed).train(train)
    if train:
        our_loss, their_loss = loss_for(comparison.ours), loss_for(comparison.theirs)
        timing = time_pair(lambda: train_step(ours, our_loss, x, y), lambda: train_step(theirs, their_loss, x, y),
                           args.warmup, args.repeats)  # fmt: skip
    else:
        timing = time_pair(lambda: infer(ours, x), lambda: infer(theirs, x), args.warmup, args.repeats)
    flops = {name: forward_flops(name, args, train) for name in (comparison.ours, comparison.theirs)}
    return Result(comparison, timing, flops)


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
    wo, wt = max(10, len(ours)), max(10, len(theirs))
    print(f"  {'forward GFLOPs':<16} {ours:>{wo}} {theirs:>{wt}} {'ratio':>8}")
    for part in ("total", *PARTS):
        a, b = flops[ours][part], flops[theirs][part]
        if a == 0 and b == 0:
            continue
        ratio = f"{a / b:7.2f}x" if b else "      -"
        print(f"  {part:<16} {a / 1e9:>{wo}.1f} {b / 1e9:>{wt}.1f} {ratio:>8}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="input height = width")
    parser.add_argument("--batch", type=int, default=2, help="batch size")
    parser.add_argument("--classes", type=int, default=21, help="number of classes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, input and labels")
    parser.add_argument(
        "--pairs", default=",".join(PAIRS),
        help=f"comma-separated comparisons to run, of {', '.join(PAIRS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--backbone", action="append", default=[], metavar="PAIR=NAME",
        help="run a same-backbone pair on another registry backbone, e.g. resnest50=resnest_tiny (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    pairs = [pair.strip() for pair in args.pairs.split(",") if pair.strip()]
    if not pairs or any(pair not in PAIRS for pair in pairs):
        parser.error(f"--pairs takes a comma-separated list of {', '.join(PAIRS)}; got {args.pairs!r}")
    args.pairs = list(dict.fromkeys(pairs))
    args.backbones = dict(SAME_BACKBONE)
    for item in args.backbone:
        pair, sep, name = item.partition("=")
        if not sep or pair not in SAME_BACKBONE:
            parser.error(
                f"--backbone takes PAIR=NAME with PAIR one of {', '.join(SAME_BACKBONE)}; got {item!r}"
            )
        if name not in BACKBONES:
            parser.error(
                f"--backbone {item}: unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
            )
        args.backbones[pair] = name
    if args.batch < 2 and any(pair in SAME_BACKBONE for pair in args.pairs):
        parser.error(
            "--batch 1 cannot train DeepLabV3 (its image-pooling branch has one value per channel for BatchNorm); "
            "use --batch 2 or more, or --pairs torchvision"
        )
    return args


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    print(
        f"EncNet vs torchvision / vs DeepLabV3 on the same backbone (pairs {', '.join(args.pairs)}), "
        f"batch {args.batch}, 3x{args.size}x{args.size}, {args.classes} classes, "
        f"float32, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=generator)

    results = [measure(row, args, x, y) for row in comparisons(args.pairs, args.backbones)]
    for result in results:
        row = result.comparison
        print(f"\n{row.title}")
        print_timing(row.label, result.timing)
        print_flops((row.ours, row.theirs), result.flops)
    print("\n(seconds per call of ours on this machine; only the ratios are claims)")
    for result in results:
        row = result.comparison
        print(f"  {row.mode:<9} {row.ours:<20} {result.timing.seconds:.2f} s")
    print(
        f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes skew the ratios)"
    )
    for heading, rows in (
        ("goals:", [r for r in results if r.comparison.goal is not None]),
        ("reported (no goal):", [r for r in results if r.comparison.goal is None]),
    ):
        if not rows:
            continue
        print(heading)
        for result in rows:
            row, ratio = result.comparison, result.timing.ratio
            line = (
                f"  {'train step' if row.mode == 'train' else 'inference':<11} {row.label:<34} = {ratio:.3f}x"
            )
            if row.goal is not None:
                line += f"  (goal <= {row.goal}x)  {verdict(ratio <= row.goal)}"
            print(line)
    return results


if __name__ == "__main__":
    main()
