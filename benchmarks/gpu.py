"""One GPU benchmark: every ratio measured in the same run, each printed with its goal (sized for ~5 minutes on one GPU).

Rows (see ``encnet_core/diagnostics/benchmark.py`` for how each is measured):

- the Encoding layer against the broadcast formulation: time (goal >= 20x), extra peak memory
  (>= 15x), outputs and gradients equal (<= 1e-4);
- EncNet-ResNet50s (lateral, 59 classes, 480 crops, batch 8) training images/s in encnet's own
  training step: fp32, AMP bf16, AMP fp16 + GradScaler, bf16 + channels_last and bf16 +
  channels_last + torch.compile, each against fp32 (goal > 1x), with peak GPU memory;
- EncNet-ResNet50 / torchvision FCN-ResNet50 training step (<= 1.05x) and EncNet / DeepLabV3-ResNet50
  inference (<= 0.85x), fp32, as benchmarks/heads.py on CPU;
- multi-scale + flip evaluation: ``infer()`` over the pure forwards of its views (<= 10%), and one
  view per forward against batches of 8;
- the training DataLoader (N workers) against the step's consumption (>= 1x) and the data share
  of a loader + step loop (<= 5%);
- a one-process DistributedDataParallel step (NCCL, SyncBatchNorm converted) against the plain step.

Without CUDA (``--device auto`` on a machine without a GPU, or ``--device cpu``) the same code paths
run at tiny sizes on the CPU (32 px crops, batch 2, encnet_tiny for EncNet-ResNet50s, gloo instead
of NCCL, bf16 autocast on the CPU; the fp16, compile and GPU-memory rows say why they are skipped)
and the script says so: that run checks that the script works (tests/test_benchmarks_gpu.py runs
it), its figures are no claims. ``--device cuda`` without a GPU refuses with one line.

    .venv/bin/python benchmarks/gpu.py                    # on a GPU machine
    .venv/bin/python benchmarks/gpu.py --json gpu.json    # also write the rows as JSON
    encnet doctor --device cuda --bench                   # the short version
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encnet_core.diagnostics.benchmark import BenchConfig, BenchReport, run_benchmark
from encnet_core.errors import EncNetError


def print_report(report: BenchReport) -> None:
    env = report.environment
    print(f"\ndevice {report.device} ({report.device_name}), torch {env['torch']}"
          + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}, TF32 matmul {env['tf32_matmul']} / cuDNN {env['tf32_cudnn']}"
             if "cuda" in env else f", {env['threads']} threads")
          + f"; load average {env['load_average']} at the start, {env['load_average_end']} at the end on {env['cpus']} CPUs")  # fmt: skip
    if report.tiny:
        print("NO CUDA: the same code paths ran at tiny sizes on the CPU; these figures are no claims (verdicts left out)")
    section = None
    for row in report.rows:
        if row.section != section:
            section = row.section
            print(f"\n{section}")
            print(f"  {'measurement':<44} {'ratio':>9}  {'goal':<9} {'verdict':<8} {'peak MiB':>9}  detail")
        peak = f"{row.peak_mib:.0f}" if row.peak_mib is not None else "-"
        print(f"  {row.name:<44} {row.value():>9}  {row.goal:<9} {row.verdict():<8} {peak:>9}  {row.detail}")
    verdicts = [row.verdict() for row in report.rows]
    print(f"\n{verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL, {verdicts.count('skipped')} skipped, "
          f"{verdicts.count('-')} without a verdict; {report.seconds:.0f} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (without CUDA: tiny sizes on the CPU)")
    parser.add_argument("--profile", choices=("full", "short"), default="full", help="short: what `encnet doctor --bench` runs")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the loader rows (default min(8, CPUs))")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args()
    try:
        config = BenchConfig(device=args.device, profile=args.profile, workers=args.workers, compile=not args.no_compile)
        report = run_benchmark(config, say=lambda text: print(text, file=sys.stderr, flush=True))
    except EncNetError as exc:
        print(f"gpu.py: error: {exc}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
