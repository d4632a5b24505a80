"""CLI basics: version, help, one-line errors, models table, doctor step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core import __version__

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"encnet {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("models", "doctor"):
        assert command in result.output


def test_models_json_lists_registry() -> None:
    result = runner.invoke(app, ["models", "--json", "--size", "64"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["encnet_resnet50"]["backbone"] == "resnet50"
    assert rows["fcn_resnet50"]["head"] == "FCN"
    assert rows["encnet_resnet50"]["params_m"] > rows["encnet_tiny"]["params_m"] > 0
    assert rows["encnet_resnet101"]["gflops"] > rows["encnet_resnet50"]["gflops"]
    assert rows["deeplab_resnest50"]["head"] == "DeepLabV3 (ASPP)" and rows["deeplab_resnest50"]["backbone"] == "resnest50"


def test_models_words_narrow_the_list() -> None:
    result = runner.invoke(app, ["models", "resnest", "DEEPLAB", "--json", "--size", "64"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.output)]
    assert names == ["deeplab_resnest50", "deeplab_resnest101", "deeplab_resnest200", "deeplab_resnest269", "deeplab_resnest_tiny"]
    result = runner.invoke(app, ["models", "resnest", "cifar"])
    assert result.exit_code == 2 and "no model name contains 'resnest' and 'cifar'" in result.output


def test_doctor_runs_a_training_step() -> None:
    result = runner.invoke(app, ["doctor", "--json", "--device", "cpu", "--amp", "bf16"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["outputs"]["out"] == [2, 21, 64, 64]
    assert set(info["loss"]) == {"total", "seg", "aux", "se"}
    assert info["params_with_grad"].split("/")[0] == info["params_with_grad"].split("/")[1]
    import onnxruntime

    assert info["engines"]["torch"] == torch.__version__ and info["engines"]["onnxruntime"] == onnxruntime.__version__
    assert info["auto_engine"] == {"checkpoint": "torch", "onnx": "onnxruntime"}
    flags = set(open("/proc/cpuinfo").read().split())
    if "avx512_bf16" in flags:
        assert info["cpu_bf16"].startswith("avx512_bf16")
    elif not {"amx_bf16"} & flags and "AMX" not in torch.backends.cpu.get_cpu_capability():
        assert info["cpu_bf16"] == "emulated (no avx512_bf16/amx_bf16)"


def test_doctor_names_a_missing_engine_and_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from encnet_core.engine import engines

    monkeypatch.setattr(engines, "installed_engines", lambda: {"torch": "2", "onnxruntime": None, "openvino": None})
    result = runner.invoke(app, ["doctor", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1] for line in result.output.splitlines() if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 2}
    assert rows["engines onnxruntime"] == "not installed: pip install 'encnet[onnx]'"
    assert rows["engines openvino"] == "not installed: pip install 'encnet[openvino]'"
    assert rows["auto_engine checkpoint"] == "torch" and rows["auto_engine onnx"] == "onnxruntime"


def test_user_error_is_one_line_exit_1() -> None:
    result = runner.invoke(app, ["doctor", "--model", "nope"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'")


def test_cuda_refused_without_gpu_and_fp16_on_cpu() -> None:
    result = runner.invoke(app, ["doctor", "--amp", "fp16", "--device", "cpu"])
    assert result.exit_code == 1 and "fp16 needs a CUDA device" in result.output


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "encnet_cli", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"encnet {__version__}"


def test_every_command_help_renders() -> None:
    for command in ("prepare", "targets", "info", "train", "evaluate", "predict", "export", "models", "doctor"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_error_message_with_brackets_is_printed_verbatim(tmp_path) -> None:
    result = runner.invoke(app, ["prepare", "voc", "--out", str(tmp_path / "x.h5"), "--checksum", "[bad]"])
    assert result.exit_code == 1 and "[bad]" in result.output
