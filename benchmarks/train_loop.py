"""Training throughput of EncNet vs the dilated-FCN baseline in encnet's own training loop.

Both models share the backbone, data, augmentation and settings; only the head differs. Each run
trains for --iters iterations on the synthetic dataset (prepared once into a temp folder) and the
script prints images/s, the data-loading share of step time and the ratio EncNet / FCN.

    .venv/bin/python benchmarks/train_loop.py [--backbone resnet18] [--iters 30] [--crop 128]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from encnet_core.config import TrainConfig
from encnet_core.data.prepare import PrepareOptions, prepare
from encnet_core.engine.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18", help="resnet18 or resnet50 (both EncNet and FCN exist)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per model; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable on a shared 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("encnet").setLevel(logging.ERROR)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.h5"
        prepare("synthetic", PrepareOptions(out=data, root=Path(tmp), workers=1, params={"num_train": 64, "num_val": 8}))
        results: dict[str, list[tuple[float, float]]] = {}
        for repeat in range(args.repeats):
            for model in (f"fcn_{args.backbone}", f"encnet_{args.backbone}"):
                config = TrainConfig(
                    data=str(data), output_dir=f"{tmp}/{model}-{repeat}", model=model, iters=args.iters,
                    batch_size=args.batch, crop_size=args.crop, base_size=args.crop, workers=args.workers,
                    val_split="", log_every=args.iters, device="cpu",
                )  # fmt: skip
                result = train(config)
                results.setdefault(model, []).append((result.images_per_second, result.data_share))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone {args.backbone}, "
          f"batch {args.batch}, crop {args.crop}, {args.iters} iterations x {args.repeats} runs")  # fmt: skip
    print(f"{'model':<22}{'images/s':>10}{'data share':>12}")
    best = {}
    for model, runs in results.items():
        speed, share = max(runs)
        best[model] = speed
        print(f"{model:<22}{speed:>10.2f}{share:>12.1%}")
    enc, fcn = best[f"encnet_{args.backbone}"], best[f"fcn_{args.backbone}"]
    print(f"EncNet / FCN throughput ratio: {enc / fcn:.3f} (step time ratio {fcn / enc:.3f})")


if __name__ == "__main__":
    main()
