"""Peak memory of ``encnet predict`` on one large photo, against what loading the model and decoding the image cost.

In one run, each measurement in its own fresh process (the peak resident set, ``VmHWM``, of a
process that only does that step; read through ``resource.getrusage(RUSAGE_CHILDREN)`` of a small
wrapper process that starts it, so the figure is that of the measured process alone):

* ``predict``: ``encnet predict MODEL photo.jpg -o out --device cpu`` (and with ``--overlay``), the
  whole CLI run: start, model load, decode, forward pass, masks, overlay, predictions.json;
* ``model``: a Python process that imports torch and encnet and loads the same model, nothing else;
* ``decode``: a Python process that decodes the photo to an RGB array with PIL and NumPy, nothing else
  (no torch).

Peaks are ``ru_maxrss``, which on this machine includes about 190 MB that a process importing torch
touches while it exits (``VmHWM`` read just before exit is that much lower); every row that imports
torch carries it alike.

The model is ``encnet_tiny`` (the ``make demo`` variant, 0.36M parameters, 14 classes), untrained
(random weights, seed 0), saved as a weights file; the photo is a synthetic JPEG (smooth
gradients, blocks and noise), 6000 x 4000 by default (24 megapixels). It prints absolute peaks in
MB (10^6 bytes), the ratios of predict to the baselines, what predict adds over the sum of the two,
the 1-minute load average before and after, and whether the goal (peak under 1.5 GB) is met.

    .venv/bin/python benchmarks/predict_memory.py [--width 6000] [--height 4000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MB = 1500.0  # peak resident set of predict on a 24-megapixel photo

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"  # KiB on Linux
)


def peak_mb(command: list[str], env: dict[str, str]) -> float:
    """Peak resident set (MB) of ``command`` run to completion in its own process."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, env=env, check=True)
    code, kib = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return int(kib) * 1024 / 1e6


def make_model(path: Path) -> int:
    import torch

    from encnet_core.data.synthetic import CLASSES, PALETTE
    from encnet_core.models import create_model
    from encnet_core.weights.checkpoint import save_checkpoint
    from encnet_core.weights.metadata import ModelMetadata

    torch.manual_seed(0)
    model = create_model("encnet_tiny", len(CLASSES)).eval()
    meta = ModelMetadata(model_config=model.config, classes=CLASSES, palette=PALETTE.tolist(), base_size=128, crop_size=112)
    save_checkpoint({**meta.to_dict(), "kind": "weights", "model": model.state_dict()}, path)
    return sum(p.numel() for p in model.parameters())


def make_photo(path: Path, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    blocks = rng.integers(0, 256, (12, 18, 3)).astype(np.float32)
    tiles = blocks[(y[:, 0] * 11.999).astype(int)][:, (x[0] * 17.999).astype(int)]  # (H, W, 3)
    rgb = np.empty((height, width, 3), np.uint8)
    for c, (a, b) in enumerate(((200, 40), (60, 150), (30, 90))):
        channel = 0.5 * tiles[:, :, c] + 0.5 * (a * y + b * x) + rng.normal(0, 12, (height, width)).astype(np.float32)
        rgb[:, :, c] = np.clip(channel, 0, 255)
    Image.fromarray(rgb).save(path, quality=90)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured processes")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    encnet = str(Path(sys.executable).with_name("encnet"))
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, photo = folder / "encnet_tiny.pt", folder / "photo.jpg"
        params = make_model(model)
        make_photo(photo, args.width, args.height)
        print(f"model: encnet_tiny, {params / 1e6:.2f}M parameters; photo: {args.width} x {args.height} "
              f"({args.width * args.height / 1e6:.1f} MP, {photo.stat().st_size / 1e6:.1f} MB JPEG); "
              f"OMP_NUM_THREADS={args.threads}")  # fmt: skip
        model_only = peak_mb([sys.executable, "-c", "import sys, torch; from encnet_core.weights.model_files import load_model; "
                              "load_model(sys.argv[1], torch.device('cpu'))", str(model)], env)  # fmt: skip
        decode_only = peak_mb([sys.executable, "-c", "import sys, numpy; from PIL import Image; "
                               "numpy.asarray(Image.open(sys.argv[1]).convert('RGB'))", str(photo)], env)  # fmt: skip
        runs = {}
        for name, extra in (("predict", []), ("predict --overlay", ["--overlay"])):
            start = time.perf_counter()
            runs[name] = (peak_mb([encnet, "predict", str(model), str(photo), "-o", str(folder / name.replace(" ", "")),
                                   "--device", "cpu", "--no-progress", *extra], env), time.perf_counter() - start)  # fmt: skip
    print(f"{'process':<22}{'peak MB':>9}")
    print(f"{'torch + model loaded':<22}{model_only:>9.0f}")
    print(f"{'image decoded only':<22}{decode_only:>9.0f}")
    for name, (mb, seconds) in runs.items():
        print(f"{name:<22}{mb:>9.0f}   {mb / model_only:.2f}x model, {mb / decode_only:.2f}x decode, "
              f"+{mb - model_only - decode_only:.0f} MB over model + decode, {seconds:.0f} s")  # fmt: skip
    worst = max(mb for mb, _ in runs.values())
    print(f"goal: peak under {GOAL_MB:.0f} MB -> {worst:.0f} MB: {'met' if worst < GOAL_MB else 'NOT met'}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
