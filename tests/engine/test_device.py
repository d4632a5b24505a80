"""engine/device.py answers every device question (the rest of encnet asks it instead of testing CUDA)."""

from __future__ import annotations

import pytest
import torch

from encnet_core.engine import device as device_module
from encnet_core.engine.device import (
    autocast_context,
    channels_last,
    check_amp,
    device_names,
    environment,
    grad_scaler,
    is_cuda,
    onnx_providers,
    pin_memory,
    process_device,
    resolve_device,
    set_accelerator_rng_state,
)
from encnet_core.errors import ConfigError

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)  # a device object only: nothing runs on it here


def test_decisions_for_cpu_and_gpu() -> None:
    assert (is_cuda(CPU), pin_memory(CPU), channels_last(CPU)) == (False, False, False)
    assert (is_cuda(GPU), pin_memory(GPU), channels_last(GPU)) == (True, True, True)
    assert onnx_providers(CPU) == ["CPUExecutionProvider"]
    assert onnx_providers(GPU) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert grad_scaler("off") is None and grad_scaler("bf16") is None


def test_amp_checks() -> None:
    check_amp(CPU, "off")
    check_amp(CPU, "bf16")
    with pytest.raises(ConfigError, match="--amp fp16 needs a CUDA device; use --amp bf16 on CPU"):
        check_amp(CPU, "fp16")
    with pytest.raises(ConfigError, match="--amp must be one of off, bf16, fp16"):
        autocast_context(CPU, "fp8")
    with autocast_context(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module.torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == CPU and process_device("auto", 1) == CPU and process_device("cpu", 0) == CPU
    for call in (lambda: resolve_device("cuda"), lambda: process_device("cuda:1", 1)):
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            call()
    assert device_module.accelerator_rng_state() is None
    set_accelerator_rng_state([torch.zeros(1)])  # nothing to restore into: a no-op
    assert environment() == {"cuda_available": False, "gpus": []}
    assert device_names() == ["auto", "cpu", "cuda"]


def test_a_local_rank_without_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module.torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="LOCAL_RANK 2 but only 2 GPUs are visible"):
        process_device("auto", 2)
    assert process_device("cpu", 2) == CPU
