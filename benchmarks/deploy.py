"""Deploy engines against eager PyTorch fp32: images/s, peak memory and accuracy, in one run.

Engines (a row each, printed whatever it measures or why it was skipped):

* ``torch fp32``: the eager model (the baseline of every ratio); ``torch channels_last`` (model and
  inputs in the channels-last layout); ``torch bf16`` (CPU bfloat16 autocast, where the CPU has it);
* ``onnxruntime fp32``: the ONNX export (``encnet export --format onnx``) through
  ``weights.model_files.load_model``; ``onnxruntime int8``: the ``--int8`` export (weights/quantize.py);
* ``openvino fp32``: the ONNX export through ``encnet_core.weights.openvino.load_openvino`` when
  ``openvino`` imports (``encnet[openvino]``); the row says why otherwise; ``openvino bf16``: the same
  with OpenVINO's bfloat16 inference precision (``--engine openvino --amp bf16``); ``openvino int8``:
  ``export --format openvino --int8`` (NNCF's quantization, ``encnet[nncf]``).

Speed: the model (``--model``, default encnet_resnet50s, random weights: speed does not depend on
them) on the same random images of each shape (``--shapes``, default 480x480 and 512x1024 as HxW) and
batch (``--batches``, default 1 and 8); each engine runs in its own process with ``--threads``
intra-op threads (onnxruntime's sessions get the same count), one warm-up then ``--reps`` timed
forward passes, median; images/s as a ratio to eager fp32. Peak memory: that process's peak resident
set (``VmHWM``: torch import, model load and the runs).

Accuracy: pixAcc/mIoU of each engine, minus eager fp32's, on the val split of the synthetic standard
and far layouts, from encnet_tiny trained here for ``--train-iters`` iterations (nothing bigger trains
on a CPU; the int8 row is calibrated on the train split). The 1-minute load average is printed
before and after: a loaded machine makes every ratio noisy.

    .venv/bin/python benchmarks/deploy.py [--model encnet_resnet50s] [--shapes 480x480,512x1024]
        [--batches 1,8] [--threads 2] [--reps 3] [--train-iters 150]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = (
    "torch fp32", "torch channels_last", "torch bf16", "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino bf16",
    "openvino int8",
)  # fmt: skip
EXTRAS = {"torch": "(base)", "onnxruntime": "encnet[onnx]", "openvino": "encnet[openvino]"}
GOALS = {"float": (2.0, 0.3), "int8": (3.0, 1.0)}  # resnet50s 480x480 batch 1: speed ratio >=, |mIoU delta| (points) <=


class Skip(Exception):
    """An engine that cannot run here, and why."""


def _limit_onnxruntime_threads(threads: int) -> None:
    """Sessions opened by load_model get ``threads`` intra-op threads (the same as torch's), one inter-op."""
    import onnxruntime

    original = onnxruntime.InferenceSession

    def session(path, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = onnxruntime.SessionOptions()
            sess_options.intra_op_num_threads, sess_options.inter_op_num_threads = threads, 1
        return original(path, sess_options, *args, **kwargs)

    onnxruntime.InferenceSession = session


def build(engine: str, folder: Path, threads: int):
    """``forward(x)``: (N, 3, H, W) normalised float32 -> (N, C, H, W) logits, for the files in ``folder``."""
    import torch

    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    if engine.startswith("torch"):
        from encnet_core.weights.checkpoint import model_from_checkpoint
        from encnet_core.weights.export import ExportWrapper
        from encnet_core.weights.model_files import read_model_file

        path = folder / "model.pt"
        model = ExportWrapper(model_from_checkpoint(read_model_file(path), path).eval())
        if engine == "torch channels_last":
            model = model.to(memory_format=torch.channels_last)
        if engine == "torch bf16" and not torch.backends.mkldnn.is_available():
            raise Skip("no oneDNN (mkldnn) in this torch build")
        if engine == "torch bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise Skip("this CPU has no bfloat16 support (avx512_bf16/amx)")

        def forward(x: torch.Tensor) -> torch.Tensor:
            if engine == "torch channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=engine == "torch bf16"):
                out = model(x)
            return (out[0] if isinstance(out, tuple) else out).float()

        return forward
    if engine.startswith("onnxruntime"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise Skip("onnxruntime is not installed (pip install 'encnet[onnx]')") from None
        from encnet_core.weights.model_files import load_model

        _limit_onnxruntime_threads(threads)
        return load_model(folder / ("int8.onnx" if engine.endswith("int8") else "fp32.onnx"), cpu).forward
    if engine.startswith("openvino"):
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise Skip("openvino is not installed (pip install 'encnet[openvino]')") from None
        try:
            from encnet_core.weights.openvino import load_openvino
        except ImportError as exc:
            raise Skip(f"encnet_core.weights.openvino is not available ({exc})") from None
        if engine == "openvino int8":  # export --format openvino --int8 (NNCF)
            if not (folder / "int8.xml").is_file():
                raise Skip("no OpenVINO int8 export (needs encnet[nncf])")
            loaded = load_openvino(folder / "int8.xml", cpu)
        else:
            loaded = load_openvino(folder / "fp32.onnx", cpu, precision=engine.split()[1])  # bf16: --engine openvino --amp bf16
        return loaded.forward if hasattr(loaded, "forward") else loaded
    raise ValueError(engine)


def worker(engine: str, folder: Path, shapes: list[tuple[int, int]], batches: list[int], threads: int, reps: int) -> dict:
    """Speed of one engine (run in its own process: its peak memory is its own)."""
    import torch

    try:
        forward = build(engine, folder, threads)
    except Skip as exc:
        return {"skip": str(exc)}
    rates = {}
    for height, width in shapes:
        for batch in batches:
            x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
            forward(x)  # warm-up: first-run allocations, kernel selection
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
            rates[f"{height}x{width} b{batch}"] = batch / statistics.median(times)
    return {"rates": rates, "peak_mb": peak_mb()}


def peak_mb() -> float:
    """This process's peak resident set (MB): ``VmHWM`` (ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def write_files(checkpoint: Path, data: Path, folder: Path, calib_images: int) -> None:
    """model.pt (weights export), fp32.onnx and int8.onnx (calibrated on ``data``'s train split) of ``checkpoint``."""
    from encnet_core.weights.export import export_model

    folder.mkdir(parents=True, exist_ok=True)
    export_model(checkpoint, folder / "model.pt", "weights", overwrite=True)
    try:
        export_model(checkpoint, folder / "fp32.onnx", "onnx", overwrite=True)
        export_model(checkpoint, folder / "int8.onnx", "onnx", int8=True, calibrate=data, calib_images=calib_images, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - no onnx/onnxruntime: those rows say so
        print(f"ONNX exports failed: {exc}", file=sys.stderr)
    try:
        export_model(checkpoint, folder / "int8.xml", "openvino", int8=True, calibrate=data, calib_images=calib_images, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - no openvino/nncf: the row says so
        print(f"OpenVINO int8 export failed: {exc}", file=sys.stderr)


def speed_model(name: str, data: Path, crop: int, path: Path) -> Path:
    """A checkpoint of ``name`` with random weights (seed 0) for the classes of ``data``."""
    import torch

    from encnet_core.data.hdf5 import read_info
    from encnet_core.models import create_model
    from encnet_core.weights.checkpoint import save_checkpoint
    from encnet_core.weights.metadata import ModelMetadata

    classes = read_info(data).classes
    torch.manual_seed(0)
    model = create_model(name, len(classes)).eval()
    meta = ModelMetadata(model_config=dict(model.config), classes=tuple(classes), base_size=crop, crop_size=crop)
    save_checkpoint({**meta.to_dict(), "kind": "weights", "model": model.state_dict()}, path)
    return path


def trained_tiny(layout: str, folder: Path, iters: int) -> tuple[Path, Path]:
    """(dataset, last.pt): encnet_tiny trained for ``iters`` iterations on a small synthetic ``layout`` set."""
    import torch

    from encnet_core.config import TrainConfig
    from encnet_core.data.prepare import PrepareOptions, prepare
    from encnet_core.engine.train import train

    size, crop = (48, 48) if layout == "standard" else (256, 96)
    data = folder / f"{layout}.h5"
    params = {"num_train": 64 if layout == "standard" else 32, "num_val": 24 if layout == "standard" else 12, "size": size, "layout": layout}
    prepare("synthetic", PrepareOptions(out=data, root=folder / "cache", workers=1, params=params))
    torch.manual_seed(0)
    config = TrainConfig(data=str(data), output_dir=str(folder / f"run-{layout}"), model="encnet_tiny", iters=iters,
                         batch_size=8, crop_size=crop, base_size=size, workers=0, device="cpu", val_every=0)  # fmt: skip
    return data, train(config).last_checkpoint


def accuracy(engine: str, folder: Path, data: Path, threads: int) -> dict | str:
    """pixAcc/mIoU of ``engine`` on the val split (whole images), or why it was skipped."""
    import torch

    from encnet_core.data.dataset import open_dataset
    from encnet_core.engine.metrics import ConfusionMatrix
    from encnet_core.weights.model_files import peek_metadata

    try:
        forward = build(engine, folder, threads)
    except Skip as exc:
        return str(exc)
    meta = peek_metadata(folder / "model.pt")
    mean, std = torch.tensor(meta["mean"])[:, None, None], torch.tensor(meta["std"])[:, None, None]
    dataset = open_dataset(data, "val")
    confusion = ConfusionMatrix(len(meta["classes"]))
    for i in range(len(dataset)):
        image, mask = dataset[i]
        x = ((image.as_subclass(torch.Tensor).float() / 255 - mean) / std)[None]
        confusion.update(forward(x).argmax(1)[0], mask.as_subclass(torch.Tensor))
    scores = confusion.compute()
    return {"pixAcc": scores["pixAcc"], "mIoU": scores["mIoU"]}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encnet_resnet50s", help="model of the speed rows (random weights)")
    parser.add_argument("--shapes", default="480x480,512x1024", help="HxW of the speed images, comma-separated")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    parser.add_argument("--reps", type=int, default=3, help="timed forward passes per shape and batch (median)")
    parser.add_argument("--calib-images", type=int, default=8, help="calibration images of the speed model's int8 export (random weights)")
    parser.add_argument("--train-iters", type=int, default=150, help="iterations of the tiny models of the accuracy columns (0: none)")
    parser.add_argument("--layouts", default="standard,far", help="synthetic layouts of the accuracy columns")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run, comma-separated")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes, batches = parse_shapes(args.shapes), [int(b) for b in args.batches.split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, shapes, batches, args.threads, args.reps)))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    engines = [e for e in args.engines.split(",") if e]
    load_before = os.getloadavg()[0]
    results: dict = {"model": args.model, "threads": args.threads, "engines": {}, "accuracy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from encnet_core.data.prepare import PrepareOptions, prepare

        calib = tmp / "calib.h5"
        prepare("synthetic", PrepareOptions(out=calib, root=tmp / "cache", workers=1, params={"num_train": args.calib_images, "num_val": 1}))
        crop = max(max(s) for s in shapes)
        write_files(speed_model(args.model, calib, min(crop, 480), tmp / "speed.pt"), calib, tmp / "speed", args.calib_images)
        for engine in engines:
            command = [sys.executable, __file__, "--worker", engine, "--folder", str(tmp / "speed"), "--shapes", args.shapes,
                       "--batches", args.batches, "--threads", str(args.threads), "--reps", str(args.reps)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            results["engines"][engine] = json.loads(lines[-1]) if done.returncode == 0 and lines else {"skip": f"failed: {done.stderr.strip()[-300:]}"}
        if args.train_iters > 0:
            for layout in args.layouts.split(","):
                data, checkpoint = trained_tiny(layout, tmp / "tiny", args.train_iters)
                write_files(checkpoint, data, tmp / f"tiny-{layout}", 64)
                results["accuracy"][layout] = {e: accuracy(e, tmp / f"tiny-{layout}", data, args.threads) for e in engines}
    results["load_average"] = [load_before, os.getloadavg()[0]]
    print_table(results, shapes, batches)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def print_table(results: dict, shapes: list[tuple[int, int]], batches: list[int]) -> None:
    engines = results["engines"]
    base = engines.get("torch fp32", {}).get("rates", {})
    keys = [f"{h}x{w} b{b}" for h, w in shapes for b in batches]
    print(f"deploy engines, model {results['model']}, {results['threads']} threads; load average {results['load_average'][0]:.2f} -> {results['load_average'][1]:.2f}")
    print(f"{'engine':22s}" + "".join(f"{k:>16s}" for k in keys) + f"{'peak MB':>9s}  install")
    for engine, entry in engines.items():
        extra = EXTRAS[engine.split()[0]]
        if "skip" in entry:
            print(f"{engine:22s}  skipped: {entry['skip']}  ({extra})")
            continue
        cells = []
        for key in keys:
            rate, ref = entry["rates"].get(key), base.get(key)
            cells.append(f"{rate:7.2f} {rate / ref:5.2f}x" if rate and ref else f"{rate or 0:7.2f}     ?")
        print(f"{engine:22s}" + "".join(f"{c:>16s}" for c in cells) + f"{entry['peak_mb']:9.0f}  {extra}")
    print("(images/s and ratio to torch fp32)")
    for layout, rows in results["accuracy"].items():
        ref = rows.get("torch fp32")
        print(f"accuracy, encnet_tiny on synthetic {layout} val (difference to torch fp32, points):")
        for engine, scores in rows.items():
            if isinstance(scores, str):
                print(f"  {engine:22s} skipped: {scores}")
            elif isinstance(ref, dict):
                d_acc, d_miou = 100 * (scores["pixAcc"] - ref["pixAcc"]), 100 * (scores["mIoU"] - ref["mIoU"])
                print(f"  {engine:22s} pixAcc {scores['pixAcc']:.4f} ({d_acc:+.2f})  mIoU {scores['mIoU']:.4f} ({d_miou:+.2f})")
    key = f"{shapes[0][0]}x{shapes[0][1]} b{batches[0]}"
    for kind, (speed_goal, miou_goal) in GOALS.items():
        names = [e for e in engines if "rates" in engines[e] and e != "torch fp32" and (e.endswith("int8") == (kind == "int8"))]
        if not names or not base.get(key):
            print(f"goal {kind}: no engine measured")
            continue
        best = max(names, key=lambda e: engines[e]["rates"].get(key, 0))
        ratio = engines[best]["rates"][key] / base[key]
        deltas = [abs(100 * (r[best]["mIoU"] - r["torch fp32"]["mIoU"])) for r in results["accuracy"].values()
                  if isinstance(r.get(best), dict) and isinstance(r.get("torch fp32"), dict)]  # fmt: skip
        worst = max(deltas) if deltas else float("nan")
        met = ratio >= speed_goal and worst <= miou_goal
        print(f"goal {kind} ({key}): {best} {ratio:.2f}x (goal >= {speed_goal}x), |mIoU delta| {worst:.2f} (goal <= {miou_goal}): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
