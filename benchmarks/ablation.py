"""Miniature of the paper's ablation: dilated FCN vs EncNet (+/- SE-loss, K codewords) on synthetic data.

The paper (PASCAL Context, ResNet-50) reports that the Encoding module and the SE-loss each raise mIoU
over the dilated-FCN baseline and that more codewords help up to K=32. This script repeats the
comparison at a CPU-sized scale on the built-in synthetic dataset, whose car/oven and umbrella/lamp
pairs are drawn identically and differ only by the scene around them, so global context decides them.

Every variant trains with the same recipe (synthetic_cpu: iterations, batch, lr, crop, augmentation),
the same seed and the auxiliary head on; only the head differs:

    fcn          dilated FCN baseline (fcn_tiny: same backbone, FCNHead, no Encoding)
    enc-k32      EncNet without SE-loss, K=32
    enc-se-k32   EncNet with SE-loss, K=32
    enc-se-k8    EncNet with SE-loss, K=8
    enc-se-k16   EncNet with SE-loss, K=16

The final checkpoint (last.pt, i.e. exactly --iters iterations, no checkpoint picked on val) is
evaluated single-scale on the whole val images with ``evaluate``. The script prints a Markdown table
(pixAcc, mIoU, mean IoU of the four context-pair classes, how often a pair member is taken for its
twin, wall time) with differences to the FCN of the same seed, and writes it with a JSON of every
number to --out. A run whose result.json matches its configuration is reused, not retrained.

    .venv/bin/python benchmarks/ablation.py                                  # all variants, seed 0
    .venv/bin/python benchmarks/ablation.py --seeds 0,1,2 --variants fcn,enc-se-k32 --report ablation-seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import encnet_core
from encnet_core.config import TrainConfig, load_toml, recipe_path
from encnet_core.data.hdf5 import read_info
from encnet_core.data.prepare import PrepareOptions, prepare
from encnet_core.data.synthetic import CONTEXT_PAIRS
from encnet_core.engine.evaluate import EvaluateOptions, evaluate
from encnet_core.engine.events import TrainEvent, TrainLog, TrainStart
from encnet_core.engine.train import train

RECIPES = {"standard": "synthetic_cpu", "far": "synthetic_far_cpu"}  # the recipe of each synthetic layout
DATA_SEED = 0  # seed of the synthetic dataset (`encnet prepare synthetic` default): one fixed dataset


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    model: str
    se_loss: bool
    num_codes: int | None  # None: no Encoding layer


VARIANTS = {
    v.name: v
    for v in (
        Variant("fcn", "dilated FCN", "fcn_tiny", False, None),
        Variant("enc-k32", "EncNet, no SE-loss", "encnet_tiny", False, 32),
        Variant("enc-se-k32", "EncNet + SE-loss", "encnet_tiny", True, 32),
        Variant("enc-se-k8", "EncNet + SE-loss", "encnet_tiny", True, 8),
        Variant("enc-se-k16", "EncNet + SE-loss", "encnet_tiny", True, 16),
    )
}
BASELINE = "fcn"
SWEEP = ("enc-se-k8", "enc-se-k16")  # the K sweep: --sweep-seeds may give it fewer seeds


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layout", choices=tuple(RECIPES), default="standard",
        help="synthetic layout: standard (128 px, recipe synthetic_cpu) or far (256 px, context beyond the "
        "FCN's receptive field, recipe synthetic_far_cpu)",
    )  # fmt: skip
    parser.add_argument("--iters", type=int, default=None, help="iterations per run (default: the recipe's)")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated training seeds (model init, data order, augmentation)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--sweep-seeds", default=None,
        help=f"seeds of the K sweep ({', '.join(SWEEP)}) when fewer than --seeds fit the budget (default: --seeds)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for runs, table and JSON (default: a new temp folder)"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared synthetic HDF5 (default: prepare one in --out)"
    )
    parser.add_argument(
        "--report", default="ablation", help="file name (no suffix) of the table (.md) and JSON in --out"
    )
    parser.add_argument("--device", default="cpu", help="device for training and evaluation")
    args = parser.parse_args()
    args.recipe_name = RECIPES[args.layout]
    args.recipe = load_toml(recipe_path(args.recipe_name))
    if args.iters is None:
        args.iters = args.recipe["iters"]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        sweep = args.seeds if args.sweep_seeds is None else [int(s) for s in args.sweep_seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds and --sweep-seeds must be comma-separated integers, got {args.seeds!r}")
    if not sweep:
        parser.error("--sweep-seeds names no seed")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants or not args.seeds:
        parser.error(
            f"--variants must name some of {', '.join(VARIANTS)} (got {', '.join(unknown) or 'none'})"
        )
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    args.seeds_of = {v: (sweep if v in SWEEP else args.seeds) for v in args.variants}
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="encnet-ablation-"))
    return args


def dataset(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    path = args.out / ("synthetic.h5" if args.layout == "standard" else f"synthetic-{args.layout}.h5")
    if not path.exists():
        log(f"preparing the synthetic dataset ({args.layout} layout, seed {DATA_SEED}) in {path}")
        prepare(
            "synthetic",
            PrepareOptions(
                out=path, root=args.out / "cache", workers=1, params={"seed": DATA_SEED, "layout": args.layout}
            ),
        )
    return path


def config_for(variant: Variant, seed: int, data: Path, args: argparse.Namespace) -> TrainConfig:
    settings = {
        **args.recipe,
        "recipe": args.recipe_name,
        "data": str(data),
        "output_dir": str(args.out / "runs" / f"{variant.name}-seed{seed}"),
        "model": variant.model,
        "iters": args.iters,
        "seed": seed,
        "aux": True,
        "se_loss": variant.se_loss,
        "num_codes": variant.num_codes,
        "val_every": 0,  # validate once, at the end: the evaluated model is last.pt anyway
        "device": args.device,
    }
    return TrainConfig.from_dict(settings)


def context_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Mean IoU of the context-pair classes, and the share of their pixels predicted as the twin class."""
    classes = evaluation["classes"]
    confusion = evaluation["confusion_matrix"]  # rows: label, columns: prediction
    index = {name: classes.index(name) for pair in CONTEXT_PAIRS for name in pair}
    ious = {name: evaluation["iou"][i] for name, i in index.items()}
    swapped = labelled = 0
    for a, b in CONTEXT_PAIRS:
        for x, y in ((a, b), (b, a)):
            swapped += confusion[index[x]][index[y]]
            labelled += sum(confusion[index[x]])
    present = [v for v in ious.values() if v is not None]
    return {
        "context_classes": list(index),
        "context_iou": ious,
        "context_mIoU": sum(present) / len(present) if present else 0.0,
        "pair_swap": swapped / labelled if labelled else 0.0,
    }


def median_speed(run_dir: Path) -> float:
    """Median training iterations per second over the run's log windows (metrics.jsonl)."""
    with (run_dir / "metrics.jsonl").open() as lines:
        speeds = [entry["it_per_s"] for entry in map(json.loads, lines) if entry["type"] == "train"]
    return statistics.median(speeds)


def run_one(variant: Variant, seed: int, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = config_for(variant, seed, data, args)
    run_dir = Path(config.output_dir)
    cached = run_dir / "result.json"
    if cached.exists():
        previous = json.loads(cached.read_text())
        if previous.get("config") == config.to_dict():
            log(f"{variant.name} seed {seed}: reusing {cached}")
            previous.setdefault("median_it_per_s", median_speed(run_dir))
            return previous
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"{variant.name} seed {seed}: training {config.model} for {config.iters} iterations")
    start_event: dict[str, Any] = {}

    def callback(event: TrainEvent) -> None:
        if isinstance(event, TrainStart):
            start_event.update(dataclasses.asdict(event))
        elif isinstance(event, TrainLog) and (event.iteration % 200 == 0 or event.iteration == event.total_iters):
            log(f"  {variant.name} seed {seed}: iteration {event.iteration}/{event.total_iters}, "
                f"loss {event.losses['loss']:.3f}, {event.it_per_s:.1f} it/s")  # fmt: skip

    load_before = os.getloadavg()
    wall_start = time.perf_counter()
    result = train(config, callback=callback)
    if result.last_checkpoint is None or result.iteration != config.iters:
        raise SystemExit(f"{variant.name} seed {seed}: training stopped at iteration {result.iteration}")
    evaluation = evaluate(
        result.last_checkpoint, data, EvaluateOptions(split="val", device=args.device, workers=1)
    )
    wall = time.perf_counter() - wall_start
    record = {
        "variant": variant.name,
        "label": variant.label,
        "model": variant.model,
        "se_loss": variant.se_loss,
        "num_codes": variant.num_codes,
        "seed": seed,
        "params": start_event.get("params"),
        "pixAcc": evaluation["pixAcc"],
        "mIoU": evaluation["mIoU"],
        "mIoU_all": evaluation["mIoU_all"],
        **context_metrics(evaluation),
        "iou": dict(zip(evaluation["classes"], evaluation["iou"], strict=True)),
        "train_seconds": result.seconds,
        "eval_seconds": evaluation["seconds"],
        "wall_seconds": wall,
        "median_it_per_s": median_speed(run_dir),
        "images_per_second": result.images_per_second,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "train_val_last": result.best,  # the in-training validation (resized centre crop) at the last iteration
        "checkpoint": str(result.last_checkpoint),
        "config": config.to_dict(),
        "confusion_matrix": evaluation["confusion_matrix"],
    }
    cached.write_text(json.dumps(record, indent=2) + "\n")
    log(f"{variant.name} seed {seed}: mIoU {record['mIoU']:.4f}, context mIoU {record['context_mIoU']:.4f}, "
        f"{wall:.0f} s")  # fmt: skip
    return record


# ----------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pct(value: float, std: float | None = None, signed: bool = False) -> str:
    text = f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return text + (f" ± {100 * std:.2f}" if std is not None else "")


def table(records: list[dict[str, Any]], variants: list[str], seeds_of: dict[str, list[int]]) -> str:
    """Markdown table: one row per run, plus mean ± std rows for a variant with several seeds (``seeds_of``).

    Δ columns are paired differences to the FCN of the same seed; "step / FCN" is the ratio of the
    median training step times (median over log windows, robust to bursts of load from other jobs).
    """
    by_key = {(r["variant"], r["seed"]): r for r in records}
    has_base = all((BASELINE, s) in by_key for seeds in seeds_of.values() for s in seeds)
    metrics = ("pixAcc", "mIoU", "context_mIoU", "pair_swap")
    header = ["variant", "K", "SE", "params", "seed", "pixAcc %", "mIoU %", "context mIoU %", "pair swap %",
              "wall s", "median it/s"]  # fmt: skip
    if has_base:
        header += ["Δ pixAcc", "Δ mIoU", "Δ context mIoU", "step / FCN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def deltas(name: str, runs: list[dict[str, Any]]) -> list[str]:
        if not has_base:
            return []
        if name == BASELINE:
            return ["baseline", "", "", "1.00"]
        base = [by_key[(BASELINE, r["seed"])] for r in runs]
        cells = [_pct(*_mean_std([r[k] - b[k] for r, b in zip(runs, base, strict=True)]), signed=True)
                 for k in metrics[:3]]  # fmt: skip
        ratio = statistics.fmean(
            b["median_it_per_s"] / r["median_it_per_s"] for r, b in zip(runs, base, strict=True)
        )
        return [*cells, f"{ratio:.2f}"]

    for name in variants:
        seeds = seeds_of[name]
        runs = [by_key[(name, s)] for s in seeds]
        first = runs[0]
        fixed = ["-" if first["num_codes"] is None else str(first["num_codes"]), "yes" if first["se_loss"] else "no",
                 f"{first['params']:,}"]  # fmt: skip
        for r in runs:
            cells = [_pct(r[k]) for k in metrics] + [
                f"{r['wall_seconds']:.0f}",
                f"{r['median_it_per_s']:.1f}",
            ]
            lines.append("| " + " | ".join([f"{name} ({first['label']})", *fixed, str(r["seed"]), *cells,
                                            *deltas(name, [r])]) + " |")  # fmt: skip
        if len(seeds) > 1:
            cells = [_pct(*_mean_std([r[k] for r in runs])) for k in metrics]
            cells += [f"{statistics.fmean(r['wall_seconds'] for r in runs):.0f}",
                      f"{statistics.fmean(r['median_it_per_s'] for r in runs):.1f}"]  # fmt: skip
            lines.append("| " + " | ".join([f"**{name} mean ± std**", *fixed, ",".join(map(str, seeds)), *cells,
                                            *deltas(name, runs)]) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logging.getLogger("encnet").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    data = dataset(args)
    info = read_info(data)
    missing = [name for pair in CONTEXT_PAIRS for name in pair if name not in info.classes]
    if missing:
        raise SystemExit(f"{data} has no class(es) {', '.join(missing)}; use the synthetic dataset")
    log(f"results in {args.out}")
    start = time.perf_counter()
    all_seeds = sorted({s for seeds in args.seeds_of.values() for s in seeds})
    records = [run_one(VARIANTS[v], seed, data, args) for seed in all_seeds for v in args.variants
               if seed in args.seeds_of[v]]  # fmt: skip
    text = table(records, args.variants, args.seeds_of)
    machine = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
               f"({platform.processor() or platform.machine()}), device {args.device}")  # fmt: skip
    settings = {
        key: records[0]["config"][key]
        for key in ("iters", "batch_size", "lr", "crop_size", "base_size", "scale_min", "scale_max", "aux")
    }
    summary = (
        f"{args.recipe_name} recipe, {', '.join(f'{k}={v}' for k, v in settings.items())}; seeds {args.seeds} (K sweep {args.seeds_of.get(SWEEP[0], args.seeds)}); "
        f"dataset {data.name} (synthetic, {args.layout} layout, seed {DATA_SEED}, {info.splits.get('train')} train / "
        f"{info.splits.get('val')} val images); evaluated: last.pt, whole image, single scale, val split.\n"
        f"mIoU = mean over classes present in labels or predictions; context = {', '.join(records[0]['context_classes'])}; "
        f"pair swap = share of those pixels predicted as the twin class; Δ = variant - FCN of the same seed "
        f"(percentage points).\n{machine}; total {time.perf_counter() - start:.0f} s.\n"
    )
    print(summary)
    print(text)
    (args.out / f"{args.report}.md").write_text(summary + "\n" + text + "\n")
    report = {
        "recipe": args.recipe_name,
        "layout": args.layout,
        "seeds": args.seeds,
        "seeds_of": args.seeds_of,
        "data_seed": DATA_SEED,
        "variants": args.variants,
        "dataset": str(data),
        "machine": machine,
        "encnet_version": getattr(encnet_core, "__version__", None),
        "command": " ".join(sys.argv),
        "runs": records,
    }
    (args.out / f"{args.report}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out / (args.report + '.md')} and {args.out / (args.report + '.json')}")


if __name__ == "__main__":
    main()
