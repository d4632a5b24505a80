"""Peak memory of int8 calibration (``encnet export --int8``) against the number of calibration images.

Each count runs in its own process: an ONNX int8 export of ``--model`` (random weights: memory does not
depend on them) at ``--size`` px, calibrated on ``N`` images of a synthetic dataset, and that process's
peak resident set (``VmHWM``) is printed with the time it took. Memory that stays flat as N grows is
what weights/quantize.py ``CALIBRATION_BATCH`` (one image per calibration run) is for.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/int8_calibration_memory.py [--model encnet_resnet50s]
        [--size 480] [--counts 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(checkpoint: Path, data: Path, out: Path, count: int) -> dict:
    from encnet_core.weights.export import export_model

    start = time.perf_counter()
    export_model(checkpoint, out, "onnx", int8=True, calibrate=data, calib_images=count, verify=False, overwrite=True)
    return {"images": count, "peak_mb": peak_mb(), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encnet_resnet50s", help="model (random weights)")
    parser.add_argument("--size", type=int, default=480, help="image and crop size (px)")
    parser.add_argument("--counts", default="1,2,4,8", help="calibration image counts, comma-separated")
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.worker:
        checkpoint, data, out = (Path(p) for p in args.worker)
        print(json.dumps(worker(checkpoint, data, out, counts[0])))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from deploy import speed_model  # a checkpoint of the model with random weights for a dataset's classes

    from encnet_core.data.prepare import PrepareOptions, prepare

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "calib.h5"
        prepare("synthetic", PrepareOptions(out=data, root=tmp / "cache", workers=1,
                                            params={"num_train": max(counts), "num_val": 1, "size": args.size}))  # fmt: skip
        checkpoint = speed_model(args.model, data, args.size, tmp / "model.pt")
        print(f"int8 calibration memory, {args.model} at {args.size} px; load average {load:.2f}")
        print(f"{'images':>7} {'peak MB':>9} {'seconds':>8}")
        for count in counts:
            command = [sys.executable, __file__, "--counts", str(count), "--worker", str(checkpoint), str(data), str(tmp / "int8.onnx")]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{row['images']:>7} {row['peak_mb']:>9.0f} {row['seconds']:>8.1f}", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
