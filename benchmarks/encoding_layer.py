"""Encoding layer: our matrix-product formulation against the broadcast one, forward + backward (CPU or CUDA).

Three variants run on the same input, the same upstream gradient and the same codeword/scale values:

- ``ours``: ``encnet_core.models.layers.Encoding`` (distances and aggregation as batched matrix products).
- ``broadcast``: the formulation of mmsegmentation's ``EncodingLayer`` in plain PyTorch
  (``encnet_core.diagnostics.benchmark.BroadcastEncoding``, shared with benchmarks/gpu.py). It materialises
  the residuals x_i - d_k as a (B, N, K, C) tensor. (mmsegmentation even builds that tensor twice,
  once for the distances and once for the aggregation; this baseline builds it once.)
- ``matmul``: only the two matrix products our layer is made of, chained with no softmax in between:
  (B, N, C) x (C, K) -> (B, N, K) and (B, K, N) x (B, N, C) -> (B, K, C), forward + backward, on the
  same values given as a contiguous (B, N, C) tensor (so not even a layout change is timed). This is
  the floor: "close to the cost of the matrix products" is our time divided by this one.

Time: every call is ``forward`` then ``backward`` of a fixed random (B, K, C) upstream gradient (what
BatchNorm1d hands back in the EncModule). After warm-up calls, the variants are timed in interleaved
rounds; in each round a variant is called often enough to take about 0.2 s (order reversed every other
round). A ratio is the median over rounds of the ratio of per-call times within the round, so load
from other processes that changes between rounds cancels out. Only ratios between variants measured
in this run are claims; absolute times depend on the machine.

Peak extra memory: each variant runs in a fresh subprocess (this script with ``--worker``). The
subprocess builds its inputs, runs the variant once at a tiny shape so that libraries allocate their
lazy state, resets the kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``, so
VmHWM restarts from the current VmRSS instead of the peak left by ``import torch``), runs one forward +
backward at full size and reads VmHWM from /proc/self/status. VmHWM - VmRSS(before) is the extra peak
memory of the call, gradients included. PyTorch's CPU allocator hands freed blocks back to malloc and
a fresh process has almost nothing freed to reuse, so this is (within a few MB) the peak of what the
call held live at once. Linux only. With ``--device cuda`` it is read from PyTorch's GPU allocator in
this process instead (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
what was allocated before the call), and every timed batch of calls ends with
``torch.cuda.synchronize()``. Without a GPU, ``--device cuda`` refuses with one line.

Equality: output E and the gradients of x, codewords and scale, as max |a - b| / max |b| (error
relative to the tensor's scale), ours vs broadcast (the goal), and each vs the broadcast formulation
evaluated in float64. With a nearly one-hot assignment (see below) the scale gradient is a sum of
terms that cancel to ~1e-9 of their size, below float32 resolution: both float32 formulations get it
wrong by the same amount and agree with each other, which the table shows.

Input: by default ReLU(N(0, 1)) features, the distribution the layer sees inside the EncModule (after
Conv-BN-ReLU); ``--input randn`` uses N(0, 1). Codewords and scale use the reference initialisation.
With such inputs ||x_i - d_k||^2 is in the hundreds, so the soft assignment is nearly one-hot and many
of its entries and gradients are subnormal floats, which x86 CPUs process far more slowly. Our layer
pays for it in the backward matrix products; the broadcast one, bound by memory traffic, hardly
notices. ``--input small`` scales the features by 0.05, which keeps the assignment soft and shows the
layer without subnormals.

    .venv/bin/python benchmarks/encoding_layer.py            # B=2, C=512, K=32, 60x60, float32
    .venv/bin/python benchmarks/encoding_layer.py --size 30 --repeats 9
    .venv/bin/python benchmarks/encoding_layer.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from encnet_core.diagnostics.benchmark import BroadcastEncoding
from encnet_core.engine.device import synchronize
from encnet_core.models.layers import Encoding

SPEED_GOAL = 50.0  # broadcast time / our time
MEMORY_GOAL = 15.0  # broadcast extra peak memory / ours
EQUAL_TOL = 1e-4  # max |ours - broadcast| / max |broadcast|, outputs and every gradient
VARIANTS = ("ours", "broadcast", "matmul")


class MatmulFloor(nn.Module):
    """Only the two matrix products of our layer, forward + backward: the cost floor."""

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))  # (K, C)
        self.scale = nn.Parameter(torch.empty(num_codes))  # (K,), unused; kept for the shared state

    def forward(self, feats: Tensor) -> Tensor:  # (B, N, C) contiguous
        scores = feats @ self.codewords.t()  # (B, N, K)
        return torch.bmm(scores.transpose(1, 2), feats)  # (B, K, C)


def build(variant: str, args: argparse.Namespace, size: int) -> tuple[nn.Module, Tensor, Tensor]:
    """The variant's module (reference init, seeded, so every variant gets the same values), x and dE.

    x is (B, C, H, W), except for ``matmul``, which gets the same values as a (B, N, C) tensor.
    """
    torch.manual_seed(args.seed)
    reference = Encoding(args.channels, args.codes)
    module = {"ours": Encoding, "broadcast": BroadcastEncoding, "matmul": MatmulFloor}[variant](
        args.channels, args.codes
    )
    module.load_state_dict(reference.state_dict())
    module.to(args.device)
    torch.manual_seed(args.seed + 1)  # the modules' constructors draw differently; reseed for the data
    x = torch.randn(args.batch, args.channels, size, size)  # (B, C, H, W)
    if args.input == "relu":
        x = x.relu_()
    elif args.input == "small":
        x = x.mul_(0.05)
    if variant == "matmul":
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, N, C)
    x = x.to(args.device).requires_grad_(True)
    grad_out = torch.randn(args.batch, args.codes, args.channels).to(args.device)  # (B, K, C)
    return module, x, grad_out


def step(module: nn.Module, x: Tensor, grad_out: Tensor) -> None:
    """One forward + backward, gradients cleared first."""
    x.grad = None
    module.zero_grad(set_to_none=True)
    module(x).backward(grad_out)


def time_rounds(
    fns: dict[str, Callable[[], None]], warmup: int, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Per-call seconds of each function in each of ``repeats`` interleaved rounds.

    In a round every function runs back to back (order reversed every other round), each called
    often enough to take ~0.2 s; the number of calls is calibrated on the warm-up calls. On CUDA
    every batch of calls is synchronised before the clock is read.
    """
    calls = {}
    for name, fn in fns.items():
        synchronize(device)
        start = time.perf_counter()
        for _ in range(warmup):
            fn()
        synchronize(device)
        per_call = (time.perf_counter() - start) / warmup
        calls[name] = max(1, math.ceil(0.2 / per_call))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return samples


def paired_ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of time(name) / time(baseline) within the round."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline], strict=True))


def max_rel_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


GRAD_NAMES = ("output E", "grad x", "grad codewords", "grad scale")


def forward_backward_results(
    variant: str, args: argparse.Namespace, dtype: torch.dtype = torch.float32
) -> list[Tensor]:
    """Output and gradients (x, codewords, scale) of one forward + backward, as float64.

    In float64 the batch is processed one image at a time (the layer treats images independently;
    parameter gradients accumulate), which halves the peak memory of the broadcast formulation.
    """
    module, x, grad_out = build(variant, args, args.size)
    module = module.to(dtype)
    x = x.detach().to(dtype).requires_grad_(True)
    grad_out = grad_out.to(dtype)
    chunk = 1 if dtype == torch.float64 else x.shape[0]
    outs = []
    for start in range(0, x.shape[0], chunk):
        out = module(x[start : start + chunk])
        out.backward(grad_out[start : start + chunk])
        outs.append(out.detach())
    grads = [x.grad, module.codewords.grad, module.scale.grad]
    return [t.double() for t in [torch.cat(outs), *grads]]


def compare(args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """Per tensor: max relative difference ours vs broadcast, ours vs float64, broadcast vs float64.

    The float64 reference is the broadcast formulation evaluated in float64.
    """
    ours = forward_backward_results("ours", args)
    broadcast = forward_backward_results("broadcast", args)
    exact = forward_backward_results("broadcast", args, torch.float64)
    return {
        name: (max_rel_diff(o, b), max_rel_diff(o, e), max_rel_diff(b, e))
        for name, o, b, e in zip(GRAD_NAMES, ours, broadcast, exact, strict=True)
    }


def _proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this measurement needs Linux)")


def worker(args: argparse.Namespace) -> None:
    """Run in a fresh process: print the extra peak resident memory (bytes) of one forward + backward."""
    module, x, grad_out = build(args.worker, args, args.size)
    small, x_small, grad_small = build(args.worker, args, 4)
    step(small, x_small, grad_small)  # lazy library state, at negligible size
    del small, x_small, grad_small
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark VmHWM to the current VmRSS
    before = _proc_status_kib("VmRSS")
    step(module, x, grad_out)
    peak = _proc_status_kib("VmHWM")
    print(json.dumps({"extra_peak_bytes": (peak - before) * 1024}))


def cuda_peak_memory(variant: str, args: argparse.Namespace) -> int:
    """Extra peak GPU memory (bytes) of one forward + backward, from PyTorch's CUDA allocator."""
    module, x, grad_out = build(variant, args, args.size)
    step(module, x, grad_out)  # lazy library state (cuBLAS workspaces)
    x.grad = None
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize(args.device)
    torch.cuda.reset_peak_memory_stats(args.device)
    before = torch.cuda.memory_allocated(args.device)
    step(module, x, grad_out)
    torch.cuda.synchronize(args.device)
    return torch.cuda.max_memory_allocated(args.device) - before


def peak_memory(variant: str, args: argparse.Namespace) -> int:
    """Median over ``--memory-runs`` fresh subprocesses of the variant's extra peak RSS (CPU), or the
    allocator's peak in this process (CUDA)."""
    if args.device.type == "cuda":
        return cuda_peak_memory(variant, args)
    cmd = [sys.executable, __file__, "--worker", variant]
    for key in ("batch", "channels", "codes", "size", "input", "seed"):
        cmd += [f"--{key}", str(getattr(args, key))]
    peaks = []
    for _ in range(args.memory_runs):
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        peaks.append(json.loads(done.stdout.strip().splitlines()[-1])["extra_peak_bytes"])
    return int(statistics.median(peaks))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="batch size B")
    parser.add_argument("--channels", type=int, default=512, help="channels C")
    parser.add_argument("--codes", type=int, default=32, help="codewords K")
    parser.add_argument("--size", type=int, default=60, help="feature map height = width (N = size^2)")
    parser.add_argument(
        "--input", choices=("relu", "randn", "small"), default="relu", help="input distribution (see above)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--memory-runs", type=int, default=1, help="subprocesses per variant for memory")
    parser.add_argument("--seed", type=int, default=0, help="seed for input, gradient and parameters")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (needs a GPU)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("encoding_layer.py: --device cuda needs a CUDA GPU and PyTorch sees none here; use --device cpu")
    args.device = torch.device(args.device)
    if args.worker:
        worker(args)
        return

    n = args.size * args.size
    where = (
        f"CUDA ({torch.cuda.get_device_name(args.device)})"
        if args.device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"Encoding forward+backward, B={args.batch} C={args.channels} K={args.codes} "
        f"{args.size}x{args.size} (N={n}), float32, input={args.input}, {where}, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    diffs = compare(args)
    print("\nmax relative difference max|a - b| / max|b| (float64: broadcast formulation in float64)")
    print(f"  {'tensor':<15} {'ours vs broadcast':>18} {'ours vs float64':>16} {'broadcast vs float64':>21}")
    for name, (ours_bc, ours_exact, bc_exact) in diffs.items():
        print(f"  {name:<15} {ours_bc:>18.2e} {ours_exact:>16.2e} {bc_exact:>21.2e}")

    fns = {}
    for variant in VARIANTS:
        module, x, grad_out = build(variant, args, args.size)
        fns[variant] = lambda m=module, x=x, g=grad_out: step(m, x, g)
    samples = time_rounds(fns, args.warmup, args.repeats, args.device)
    times = {variant: paired_ratio(samples, variant, "ours") for variant in VARIANTS}  # time / ours
    del fns, module, x, grad_out
    peaks = {variant: peak_memory(variant, args) for variant in VARIANTS}

    print(f"\n{'variant':<10} {'time / ours':>12} {'extra peak memory / ours':>26}")
    for variant in VARIANTS:
        print(f"{variant:<10} {times[variant]:>11.2f}x {peaks[variant] / peaks['ours']:>25.2f}x")
    print(
        f"(ours: {statistics.median(samples['ours']) * 1e3:.1f} ms, {peaks['ours'] / 2**20:.1f} MiB on this machine; "
        "only the ratios are claims)"
    )

    speedup = times["broadcast"]
    memory_saving = peaks["broadcast"] / peaks["ours"]
    worst = max(d[0] for d in diffs.values())
    print(
        f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes skew the ratios)"
    )
    print("goals:")
    print(
        f"  speed   broadcast / ours = {speedup:6.1f}x  (goal >= {SPEED_GOAL:g}x)   {verdict(speedup >= SPEED_GOAL)}"
    )
    print(
        f"  memory  broadcast / ours = {memory_saving:6.1f}x  (goal >= {MEMORY_GOAL:g}x)   "
        f"{verdict(memory_saving >= MEMORY_GOAL)}"
    )
    print(
        f"  equal   max rel. diff    = {worst:.1e}  (goal <= {EQUAL_TOL:g})   {verdict(worst <= EQUAL_TOL)}"
    )
    print(
        f"  (ours / bare matrix products = {1 / times['matmul']:.1f}x time, "
        f"{peaks['ours'] / peaks['matmul']:.1f}x memory)"
    )


if __name__ == "__main__":
    main()
