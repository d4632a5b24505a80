"""Cost of the tensor digest that encnet records in every model file it writes and checks on every load.

The file: a training checkpoint of ``encnet_resnet101s`` (59 classes, random weights) as training writes
it: metadata, the weights, SGD momentum buffers (one optimiser step on random gradients), the LR
scheduler and every RNG state; and the safetensors export of the same weights. Each is saved and loaded
with and without the digest:

* checkpoint save: ``save_checkpoint(payload, path, digest=False)`` against ``digest=True`` (the
  default: sha256 of the weights and of the training state, then ``torch.save``, fsync, rename);
* checkpoint load: ``load_checkpoint`` of the file saved without a digest against the one saved with
  it (the weights' digest checked: what evaluate, predict, info, export and --init-from do), and
  ``load_checkpoint`` + ``check_training_digest`` of the latter (what ``train --resume`` does);
* safetensors save: ``safetensors.torch.save`` + write, without and with the digest in the header
  (what ``encnet export --format safetensors`` writes); safetensors load: encnet's reader
  (``model_files.read_safetensors``) of the file without and of the file with the digest;
* end to end: ``load_model`` (file read, model built, weights loaded: what ``encnet evaluate`` and
  ``predict`` wait for before the first image) of each file without and with its digest.

Rounds are interleaved (each variant once per round, order reversed every other round); a ratio is
the median over rounds of the within-round ratio (digest / plain), so load from other processes that
changes between rounds cancels out. Files are written to a temporary folder and read back from the page
cache. The hashing uses up to ``torch.get_num_threads()`` threads (``--threads``). The load average is
printed at the start and at the end. Only the ratios are claims; absolute times depend on the machine.

    .venv/bin/python benchmarks/model_digest.py [--repeats 5] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encnet_core.engine.train_state import rng_state  # noqa: E402
from encnet_core.models import create_model  # noqa: E402
from encnet_core.weights.checkpoint import (  # noqa: E402
    check_training_digest,
    load_checkpoint,
    save_checkpoint,
    tensor_digest,
)
from encnet_core.weights.metadata import ModelMetadata  # noqa: E402
from encnet_core.weights.model_files import DIGEST_HEADER, METADATA_NAME, load_model, read_safetensors  # noqa: E402

MODEL = "encnet_resnet101s"
CPU = torch.device("cpu")
CLASSES = 59


def build_payload() -> dict[str, Any]:
    """What training's ``save`` hands ``save_checkpoint`` for ``encnet_resnet101s``, with random weights."""
    torch.manual_seed(0)
    model = create_model(MODEL, CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # momentum buffers: as large as the weights
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: (1 - i / 1000) ** 0.9)
    meta = ModelMetadata(model_config=model.config, classes=tuple(f"class_{i}" for i in range(CLASSES)))
    return {
        **meta.to_dict(), "model": model.state_dict(), "train_config": {}, "world_size": 1,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": None, "epoch": 1,
        "iteration": 1, "rng": rng_state(), "metrics": None, "best_score": -1.0, "best_metrics": None,
    }  # fmt: skip


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, which bound the hashing threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    payload = build_payload()
    weights = payload["model"]
    size = {
        "weights_MB": sum(t.numel() * t.element_size() for t in weights.values()) / 1e6,
        "tensors": len(weights),
    }
    print(f"{MODEL}: {size['tensors']} weight tensors, {size['weights_MB']:.1f} MB of weights "
          f"(+ as much again of momentum in the checkpoint); torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}; load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")  # fmt: skip
    from safetensors.torch import save as st_save

    contiguous = {k: v.detach().contiguous() for k, v in weights.items()}
    meta_json = json.dumps({k: v for k, v in payload.items() if k in ModelMetadata.__dataclass_fields__})

    with tempfile.TemporaryDirectory(prefix="encnet-digest-") as folder:
        plain, digested = Path(folder) / "plain.pt", Path(folder) / "digest.pt"
        st_plain, st_digested = Path(folder) / "plain.safetensors", Path(folder) / "digest.safetensors"

        def st_write(path: Path, with_digest: bool) -> None:
            header = {"format": "pt", METADATA_NAME: meta_json}
            if with_digest:
                header[DIGEST_HEADER] = tensor_digest(contiguous)
            path.write_bytes(st_save(contiguous, metadata=header))

        def resume_load() -> None:
            check_training_digest(load_checkpoint(digested), digested)

        variants: dict[str, Callable[[], Any]] = {
            "checkpoint save, plain": lambda: save_checkpoint(payload, plain, digest=False),
            "checkpoint save, digest": lambda: save_checkpoint(payload, digested),
            "checkpoint load, plain": lambda: load_checkpoint(plain),
            "checkpoint load, weights digest checked (evaluate)": lambda: load_checkpoint(digested),
            "checkpoint load, both digests checked (--resume)": resume_load,
            "safetensors save, plain": lambda: st_write(st_plain, False),
            "safetensors save, digest": lambda: st_write(st_digested, True),
            "safetensors load, plain": lambda: read_safetensors(st_plain),
            "safetensors load, digest checked": lambda: read_safetensors(st_digested),
            "load_model checkpoint, plain": lambda: load_model(plain, CPU),
            "load_model checkpoint, digest checked": lambda: load_model(digested, CPU),
            "load_model safetensors, plain": lambda: load_model(st_plain, CPU),
            "load_model safetensors, digest checked": lambda: load_model(st_digested, CPU),
            "digest of the weights alone": lambda: tensor_digest(weights),
        }
        for fn in variants.values():  # warm-up: files exist, page cache and allocator warm
            fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.repeats):
            for name in names if round_ % 2 == 0 else reversed(names):
                times[name].append(timed(variants[name]))
        checkpoint_mb = digested.stat().st_size / 1e6

    pairs = {
        "checkpoint save": ("checkpoint save, plain", "checkpoint save, digest"),
        "checkpoint load (evaluate, predict, info)": ("checkpoint load, plain", "checkpoint load, weights digest checked (evaluate)"),
        "checkpoint load (train --resume)": ("checkpoint load, plain", "checkpoint load, both digests checked (--resume)"),
        "safetensors save": ("safetensors save, plain", "safetensors save, digest"),
        "safetensors load": ("safetensors load, plain", "safetensors load, digest checked"),
        "load_model, checkpoint": ("load_model checkpoint, plain", "load_model checkpoint, digest checked"),
        "load_model, safetensors": ("load_model safetensors, plain", "load_model safetensors, digest checked"),
    }
    load_end = os.getloadavg()
    print(f"checkpoint file {checkpoint_mb:.0f} MB; median of {args.repeats} interleaved rounds:")
    for name, values in times.items():
        print(f"  {name:<52} {statistics.median(values):7.3f} s")
    ratios, ranges = {}, {}
    for label, (base, digest) in pairs.items():
        per_round = [d / b for d, b in zip(times[digest], times[base], strict=True)]
        ratios[label], ranges[label] = statistics.median(per_round), (min(per_round), max(per_round))
        of_medians = statistics.median(times[digest]) / statistics.median(times[base])
        print(f"  ratio {label:<46} {ratios[label]:.2f}x  (rounds {ranges[label][0]:.2f}-{ranges[label][1]:.2f}x; "
              f"ratio of the medians {of_medians:.2f}x)")  # fmt: skip
    hashed = statistics.median(times["digest of the weights alone"])
    print(f"  sha256 digest throughput: {size['weights_MB'] / hashed:.0f} MB/s")
    print(f"load average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.json is not None:
        record = {
            "model": MODEL, **size, "checkpoint_MB": checkpoint_mb, "threads": torch.get_num_threads(),
            "repeats": args.repeats, "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratios": ratios, "ratio_ranges": ranges, "times_s": times, "load_average": {"start": load_start, "end": load_end},
        }  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
