"""``encnet doctor``: the environment, and one training step of a model on random data on the device;
with ``bench``, also the short GPU benchmark (``diagnostics/benchmark.py``, tiny sizes without CUDA)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from encnet_core.engine.device import autocast_context, environment, resolve_device, synchronize
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.errors import ConfigError
from encnet_core.models import create_model
from encnet_core.version import __version__

__all__ = ["environment_report", "engines_report", "run_doctor"]


def environment_report() -> dict[str, Any]:
    """The environment part of the doctor's report: versions, whether CUDA is available, the visible GPUs.
    Needs no device, so it is shown even when the step cannot run (e.g. ``--device cuda`` without a GPU)."""
    return {"encnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__, **environment()}


def engines_report(device: torch.device) -> dict[str, Any]:
    """The inference engines: each one's version, or the one line naming its pip extra when it is missing,
    and what ``--engine auto`` picks on ``device`` for a checkpoint and for an .onnx file; whether the CPU has
    native bfloat16 (``--amp bf16`` on the CPU)."""
    from encnet_core.engine.device import cpu_native_bf16
    from encnet_core.engine.engines import auto_engine, installed_engines, missing_engine

    found = installed_engines()
    return {
        "engines": {name: version or f"not installed: {missing_engine(name).split(': ', 1)[1]}" for name, version in found.items()},
        "auto_engine": {fmt: auto_engine(fmt, device, found) for fmt in ("checkpoint", "onnx")},
        "cpu_bf16": ", ".join(cpu_native_bf16()) or "emulated (no avx512_bf16/amx_bf16)",
    }


def run_doctor(
    model_name: str = "encnet_tiny", num_classes: int = 21, size: int = 64, batch_size: int = 2,
    device_name: str = "auto", amp: str = "off", bench: bool = False, say: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Build ``model_name`` and run one forward/backward step; the report says what ran and how long it took.

    ``status`` is "ok", or "non-finite loss" when the step's loss is NaN/inf. ``bench`` adds
    ``report["bench"]``: the short GPU benchmark's rows (``BenchReport.to_dict()``) on the same
    device; ``say`` gets its progress lines.
    """
    if not 8 <= size <= 4096:
        raise ConfigError(f"--size must be between 8 and 4096, got {size}")
    if batch_size < 2:
        raise ConfigError("--batch-size must be at least 2 (BatchNorm needs two samples in training mode)")
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes).to(device).train()
    criterion = SegmentationLoss()
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch_size, size, size), device=device)
    start = time.perf_counter()
    with autocast_context(device, amp):
        outputs = model(images)
        loss, parts = criterion(outputs, labels)
    loss.backward()
    synchronize(device)
    elapsed = time.perf_counter() - start
    grads = sum(p.grad is not None for p in model.parameters())
    finite = bool(torch.isfinite(loss))
    report = {
        **environment_report(),  # encnet, torch, torchvision, cuda_available, gpus
        "device": str(device),
        "amp": amp,
        "model": model_name,
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
        "loss": {"total": float(loss.detach()), **{k: float(v) for k, v in parts.items()}},
        "params_with_grad": f"{grads}/{sum(1 for _ in model.parameters())}",
        "step_seconds": round(elapsed, 3),
        **engines_report(device),  # engines (versions), auto_engine (checkpoint, onnx)
        "status": "ok" if finite else "non-finite loss",
    }
    if bench:
        # imported here: the benchmark pulls in data, training and inference
        from encnet_core.diagnostics.benchmark import BenchConfig, run_benchmark

        del model, outputs, loss
        report["bench"] = run_benchmark(BenchConfig(device=str(device), profile="short"), say).to_dict()
    return report
