"""CPU inference engines and eager PyTorch speed-ups, measured in one run against eager fp32 PyTorch.

One model (random weights, seed 0; 59 classes as PASCAL Context) on one normalised 480 x 480 image,
batch 1, every variant in this process with the same thread count (``--threads``, default 2):

* ``torch fp32``: eager PyTorch, contiguous (NCHW) model and input: the baseline;
* ``torch channels_last``: model and input in the channels-last layout;
* ``torch bf16``: bfloat16 autocast (only meaningful where the CPU has native bf16: avx512_bf16/AMX);
* ``torch compile``: ``torch.compile`` of the fp32 model (the compile time is printed apart);
* ``onnxruntime``: the model exported to ONNX (weights/export.py, opset 18, dynamic axes) in an
  onnxruntime CPU session, as ``--engine onnxruntime`` runs it.

Each variant is warmed up, then timed over ``--repeats`` runs; the median is reported with its ratio
to the baseline (below 1: faster), the largest logit difference to the baseline and the share of
pixels whose class agrees. The 1-minute load average before and after is printed: the machine is shared.

    .venv/bin/python benchmarks/engines_cpu.py [--model encnet_resnet50s] [--size 480] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encnet_resnet50s")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="fp32,channels_last,bf16,bf16_channels_last,onnxruntime,compile")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    from encnet_core.models import create_model
    from encnet_core.weights.checkpoint import save_checkpoint
    from encnet_core.weights.export import ExportWrapper, export_model

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = create_model(args.model, 59).eval()
    wrapper = ExportWrapper(model).eval()
    x = torch.randn(1, 3, args.size, args.size)

    def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
        out = fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), out

    def eager(layout: torch.memory_format, amp: bool):
        module = wrapper.to(memory_format=layout)
        inp = x.contiguous(memory_format=layout)

        def fn() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
                return _first(module(inp)).float()

        return fn

    results: dict[str, tuple[float, torch.Tensor]] = {}
    extra: dict[str, str] = {}
    wanted = args.variants.split(",")
    results["fp32"] = timed(eager(torch.contiguous_format, False), args.repeats)
    if "channels_last" in wanted:
        results["channels_last"] = timed(eager(torch.channels_last, False), args.repeats)
    if "bf16" in wanted:
        results["bf16"] = timed(eager(torch.contiguous_format, True), args.repeats)
    if "bf16_channels_last" in wanted:
        results["bf16_channels_last"] = timed(eager(torch.channels_last, True), args.repeats)
    wrapper.to(memory_format=torch.contiguous_format)
    if "onnxruntime" in wanted:
        import onnxruntime

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "model.pt"
            save_checkpoint({"model_config": model.config, "model": model.state_dict(), "classes": [f"c{i}" for i in range(59)],
                             "palette": [[i, i, i] for i in range(59)], "mean": [0.5] * 3, "std": [0.25] * 3,
                             "base_size": 520, "crop_size": args.size}, ckpt)  # fmt: skip
            start = time.perf_counter()
            export_model(ckpt, Path(tmp) / "model.onnx", "onnx", verify=False)
            extra["onnxruntime"] = f"export {time.perf_counter() - start:.1f}s"
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = onnxruntime.InferenceSession(str(Path(tmp) / "model.onnx"), options, providers=["CPUExecutionProvider"])
            feed = {"image": x.numpy()}
            results["onnxruntime"] = timed(lambda: torch.from_numpy(session.run(None, feed)[0]), args.repeats)
    if "compile" in wanted:
        compiled = torch.compile(wrapper)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        extra["compile"] = f"compile + first run {time.perf_counter() - start:.1f}s"
        results["compile"] = timed(lambda: _first(compiled(x)), args.repeats)

    base_time, base_out = results["fp32"]
    print(f"{args.model} {args.size}x{args.size} batch 1, {args.threads} threads, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {_bf16_flags()}")  # fmt: skip
    print(f"{'variant':<20} {'median s':>9} {'ratio':>6} {'max |diff|':>10} {'same class':>10}")
    for name, (seconds, out) in results.items():
        diff = (out.float() - base_out).abs().max().item()
        agree = (out.argmax(1) == base_out.argmax(1)).float().mean().item()
        print(f"{name:<20} {seconds:9.3f} {seconds / base_time:6.2f} {diff:10.2e} {100 * agree:9.3f}%  {extra.get(name, '')}")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _bf16_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "cpu flags unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return "native bf16: " + (", ".join(have) if have else "none")


if __name__ == "__main__":
    sys.exit(main())
