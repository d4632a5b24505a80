"""Receptive field of the ablation's models, and where the evidence for the context-pair twins lies.

Measures, with the input-gradient method (the gradient of one output pixel's logits with respect to
the input image):

* the theoretical receptive field: the extent of the input pixels whose gradient is not zero, for
  the centre output pixel of a 512 x 512 input (random weights, so no ReLU pattern hides a path);
* the effective receptive field (Luo et al., 2016): the mean absolute input gradient of the centre
  output pixel over validation images, and the radius (Chebyshev, i.e. a square around the pixel)
  that holds 50% / 90% / 99% of it;
* on a synthetic dataset: how far each context-pair twin pixel lies from the nearest pixel of its
  scene (any class other than the twins and the scene-neutral ``ground``), and the share of twin
  pixels that have a scene pixel inside the theoretical receptive field;
* with trained checkpoints: the share of the input gradient of the twin decision (the twin's logit
  minus its pair's, summed over the twin's pixels) that falls on scene pixels. For a model that
  cannot see the scene from the twins it is exactly 0.

    .venv/bin/python benchmarks/receptive_field.py --data /tmp/encnet-ablation-far/synthetic-far.h5 \\
        --checkpoint fcn=/tmp/encnet-ablation-far/runs/fcn-seed0/last.pt \\
        --checkpoint enc-se-k32=/tmp/encnet-ablation-far/runs/enc-se-k32-seed0/last.pt

Prints a Markdown table and writes JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from encnet_core.data.dataset import read_image_and_mask
from encnet_core.data.hdf5 import read_info
from encnet_core.data.synthetic import CONTEXT_PAIRS
from encnet_core.data.transforms import normalize_image
from encnet_core.models.registry import create_model
from encnet_core.weights.checkpoint import load_checkpoint, model_from_checkpoint

MASS = (0.5, 0.9, 0.99)
_NEUTRAL = ("ground",)
_TWINS = tuple(name for pair in CONTEXT_PAIRS for name in pair)
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def theoretical_extent(model: torch.nn.Module, size: int = 512) -> dict[str, int]:
    """Rows/columns of a ``size`` input reached by the centre output pixel; ``width`` = the larger span."""
    x = torch.randn(1, 3, size, size, requires_grad=True)
    _logits(model, x)[0, :, size // 2, size // 2].sum().backward()
    reached = (x.grad.abs().sum(dim=1)[0] > 0).nonzero()  # (P, 2)
    top, left = reached.min(dim=0).values.tolist()
    bottom, right = reached.max(dim=0).values.tolist()
    width = max(bottom - top, right - left) + 1
    return {"width": width, "half_width": max(size // 2 - top, bottom - size // 2, size // 2 - left, right - size // 2),
            "rows": [top, bottom], "cols": [left, right]}  # fmt: skip


def effective_radius(model: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, Any]:
    """Chebyshev radii around the centre output pixel holding ``MASS`` of its mean absolute input gradient."""
    total = None
    for image in images:
        x = normalize_image(image, _MEAN, _STD)[None].requires_grad_(True)  # (1, 3, H, W)
        h, w = x.shape[-2:]
        _logits(model, x)[0, :, h // 2, w // 2].sum().backward()
        g = x.grad.abs().sum(dim=1)[0]  # (H, W)
        total = g if total is None else total + g
    assert total is not None
    h, w = total.shape
    rows = torch.arange(h)[:, None] - h // 2
    cols = torch.arange(w)[None, :] - w // 2
    radius = torch.maximum(rows.abs(), cols.abs())  # (H, W) Chebyshev distance to the centre
    mass = torch.zeros(int(radius.max()) + 1).index_add_(0, radius.flatten(), total.flatten())
    cumulative = mass.cumsum(0) / mass.sum()
    return {f"r{int(100 * m)}": int((cumulative < m).sum()) for m in MASS}


def twin_geometry(labels: list[np.ndarray], classes: list[str], half_width: int) -> dict[str, Any]:
    """Chebyshev distance of every twin pixel to its scene's nearest pixel, and the share within ``half_width``."""
    twin_ids = [classes.index(n) for n in _TWINS if n in classes]
    other = [i for i, n in enumerate(classes) if n not in _TWINS and n not in _NEUTRAL]
    distances = []
    for lab in labels:
        twins = np.isin(lab, twin_ids)
        scene = np.isin(lab, other)
        if not twins.any() or not scene.any():
            continue
        dist = ndimage.distance_transform_cdt(~scene, metric="chessboard")  # (H, W) to the nearest scene pixel
        distances.append(dist[twins])
    d = np.concatenate(distances)
    return {"twin_pixels": int(d.size), "min": int(d.min()), "median": float(np.median(d)),
            "within_rf": float((d <= half_width).mean())}  # fmt: skip


def evidence_share(model: torch.nn.Module, images: list[torch.Tensor], labels: list[np.ndarray], classes: list[str]) -> float:
    """Mean over images of the share of |d(twin logit - pair logit)/d input| that lies on scene pixels."""
    pair_of = {a: b for x, y in CONTEXT_PAIRS for a, b in ((x, y), (y, x))}
    other = [i for i, n in enumerate(classes) if n not in _TWINS and n not in _NEUTRAL]
    shares = []
    for image, lab in zip(images, labels, strict=True):
        present = [n for n in _TWINS if (lab == classes.index(n)).any()]
        if not present:
            continue
        x = normalize_image(image, _MEAN, _STD)[None].requires_grad_(True)
        logits = _logits(model, x)[0]  # (C, H, W)
        score = sum(
            ((logits[classes.index(n)] - logits[classes.index(pair_of[n])]) * torch.from_numpy(lab == classes.index(n))).sum()
            for n in present
        )
        score.backward()
        g = x.grad.abs().sum(dim=1)[0].numpy()  # (H, W)
        shares.append(float(g[np.isin(lab, other)].sum() / max(g.sum(), 1e-30)))
    return float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared synthetic HDF5 (standard or far layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=20, help="validation images to average over (default 20)")
    parser.add_argument("--models", default="fcn_tiny,encnet_tiny", help="registry models for the theoretical extent")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="trained model (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    info = read_info(args.data)
    count = min(args.images, info.splits[args.split])
    samples = [read_image_and_mask(args.data, args.split, i) for i in range(count)]
    images = [torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) for img, _ in samples]  # (3, H, W) uint8
    labels = [lab for _, lab in samples]
    result: dict[str, Any] = {"data": str(args.data), "split": args.split, "images": count, "models": {}, "checkpoints": {}}

    for name in [m for m in args.models.split(",") if m]:
        model = create_model(name, info.num_classes).eval()
        extent = theoretical_extent(model)
        result["models"][name] = {"theoretical": extent, "effective_untrained": effective_radius(model, images)}
    half = result["models"].get("fcn_tiny", next(iter(result["models"].values())))["theoretical"]["half_width"]
    result["twins"] = twin_geometry(labels, info.classes, half)

    for text in args.checkpoint:
        name, _, path = text.partition("=")
        ckpt = load_checkpoint(Path(path))
        model = model_from_checkpoint(ckpt, Path(path)).float().eval()
        result["checkpoints"][name] = {
            "path": path,
            "effective": effective_radius(model, images),
            "evidence_on_scene": evidence_share(model, images, labels, info.classes),
        }

    print(f"data {args.data} ({args.split}, {count} images, {images[0].shape[-1]} px)\n")
    print("| model | theoretical RF (px) | half-width | effective r50 / r90 / r99 (untrained) |")
    print("|---|---|---|---|")
    for name, m in result["models"].items():
        e = m["effective_untrained"]
        print(f"| {name} | {m['theoretical']['width']} | {m['theoretical']['half_width']} | {e['r50']} / {e['r90']} / {e['r99']} |")
    t = result["twins"]
    print(f"\ntwin pixels: {t['twin_pixels']}; Chebyshev distance to the nearest scene pixel: min {t['min']}, "
          f"median {t['median']:.0f} px; share with a scene pixel inside fcn_tiny's theoretical RF "
          f"(<= {half} px): {100 * t['within_rf']:.1f}%")  # fmt: skip
    if result["checkpoints"]:
        print("\n| trained model | effective r50 / r90 / r99 | twin-decision gradient on scene pixels |")
        print("|---|---|---|")
        for name, c in result["checkpoints"].items():
            e = c["effective"]
            print(f"| {name} | {e['r50']} / {e['r90']} / {e['r99']} | {100 * c['evidence_on_scene']:.2f}% |")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
