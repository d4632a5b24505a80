"""``encnet doctor``: check the installation and the device with one training step."""

from __future__ import annotations

import time

import torch
import torchvision
import typer
from rich.table import Table

from encnet_cli._output import console, emit_json
from encnet_core import __version__
from encnet_core.engine.device import autocast_context, resolve_device
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.models import create_model


def doctor(
    model_name: str = typer.Option("encnet_tiny", "--model", "-m", help="Registered model to build (see `encnet models`)."),
    num_classes: int = typer.Option(21, "--num-classes", help="Number of classes of the test model."),
    size: int = typer.Option(64, "--size", help="Side of the random square input."),
    batch_size: int = typer.Option(2, "--batch-size", help="Batch size of the test step (>= 2 for BatchNorm)."),
    device_name: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    amp: str = typer.Option("off", "--amp", help="Mixed precision of the test step: off, bf16 or fp16."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the environment, then build a model and run one forward/backward step on random data."""
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    grads = sum(p.grad is not None for p in model.parameters())
    info = {
        "encnet": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "device": str(device),
        "amp": amp,
        "model": model_name,
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
        "loss": {"total": float(loss.detach()), **{k: float(v) for k, v in parts.items()}},
        "params_with_grad": f"{grads}/{sum(1 for _ in model.parameters())}",
        "step_seconds": round(elapsed, 3),
    }
    if not torch.isfinite(loss):
        info["status"] = "non-finite loss"
    if as_json:
        emit_json(info, None)
    else:
        table = Table(title="encnet doctor", show_header=False)
        for key, value in info.items():
            table.add_row(key, str(value))
        console.print(table)
    if not torch.isfinite(loss):
        raise typer.Exit(1)
