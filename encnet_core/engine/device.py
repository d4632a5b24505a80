"""Every device decision of encnet, in one place: which device a process uses, what runs on it
(mixed precision, memory layout, pinned memory, ONNX providers), and its random state.

Other modules ask these functions instead of testing ``device.type == "cuda"`` or
``torch.cuda.is_available()`` themselves.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from encnet_core.errors import ConfigError

__all__ = [
    "AMP_MODES",
    "resolve_device",
    "process_device",
    "is_cuda",
    "check_amp",
    "autocast_context",
    "grad_scaler",
    "channels_last",
    "inference_channels_last",
    "cpu_native_bf16",
    "prepare_for_training",
    "pin_memory",
    "onnx_providers",
    "synchronize",
    "accelerator_rng_state",
    "set_accelerator_rng_state",
    "environment",
    "device_names",
]

AMP_MODES = ("off", "bf16", "fp16")

_NO_GPU = "--device cuda was given but no CUDA GPU is visible to PyTorch; use --device cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(_NO_GPU)
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc


def process_device(name: str, local_rank: int) -> torch.device:
    """The device of torchrun process ``local_rank``: GPU ``local_rank`` (made current), or the CPU
    when no GPU is visible or ``name`` is ``cpu``."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(_NO_GPU)
    if not torch.cuda.is_available() or name.startswith("cpu"):
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def is_cuda(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU (NCCL, SyncBatchNorm and DDP device ids need one)."""
    return device.type == "cuda"


def check_amp(device: torch.device, amp: str) -> None:
    """`ConfigError` unless ``amp`` (off, bf16, fp16) can run on ``device``: fp16 needs CUDA, bf16 a GPU that has it."""
    if amp not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and not is_cuda(device):
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    if amp == "bf16" and is_cuda(device) and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bfloat16; use --amp fp16")


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in {off, bf16, fp16} (see ``check_amp``). On CPU, bf16 autocast runs."""
    check_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs (fp16 runs on CUDA only, see ``check_amp``); None otherwise."""
    return torch.amp.GradScaler("cuda") if amp == "fp16" else None


def channels_last(device: torch.device) -> bool:
    """Whether models and their inputs use the channels-last memory layout on ``device`` (faster on GPUs)."""
    return is_cuda(device)


def inference_channels_last(device: torch.device, amp: str = "off") -> bool:
    """Whether eager inference (``load_model``) uses channels-last: on GPUs, and on the CPU in float32, where
    benchmarks/engines_cpu.py measured it faster (docs/export.md "Engines"); not under CPU bf16 autocast,
    where it measured slower than the default layout."""
    return channels_last(device) or amp == "off"


def cpu_native_bf16() -> list[str]:
    """The CPU's native bfloat16 instruction sets (``avx512_bf16``, ``amx_bf16``; AMX also when torch
    dispatches to it), or [] where bf16 autocast on the CPU is emulated (and slow). ``--amp bf16`` stays the
    user's choice either way: it changes some predicted classes (docs/export.md "Engines")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            flags = set(handle.read().split())
    except OSError:
        flags = set()
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    if "AMX" in torch.backends.cpu.get_cpu_capability() and "amx_bf16" not in found:
        found.append("amx_bf16")
    return found


def prepare_for_training(device: torch.device) -> None:
    """Per-process settings for training on ``device`` (cuDNN picks the fastest kernels for fixed crop sizes)."""
    if is_cuda(device):
        torch.backends.cudnn.benchmark = True


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders feeding ``device`` pin their batches (page-locked memory copies faster to a GPU)."""
    return is_cuda(device)


def onnx_providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for ``device``, most preferred first."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if is_cuda(device) else ["CPUExecutionProvider"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on CPU."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def accelerator_rng_state() -> list[torch.Tensor] | None:
    """The random state of every visible GPU (for a checkpoint), or None without one."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def set_accelerator_rng_state(states: list[torch.Tensor] | None) -> None:
    """Restore ``accelerator_rng_state()``; nothing to do without a GPU or a saved state."""
    if states is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states)


def environment() -> dict[str, Any]:
    """Whether CUDA is available and the names of the visible GPUs (for ``encnet doctor``)."""
    return {
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def device_names() -> list[str]:
    """Every ``--device`` value that names a device here: auto, cpu, cuda and cuda:N per visible GPU."""
    return ["auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
