"""OpenVINO: running an encnet model with OpenVINO's CPU runtime (extra ``encnet[openvino]``).

``load_openvino(path, device)`` opens an OpenVINO IR (``model.xml`` with its weights ``model.bin``
beside it, as ``encnet export --format openvino`` writes) or an ONNX export (OpenVINO reads ONNX
directly) and returns the same ``LoadedModel`` as every other format: outputs "out" (and "se") mapped
by name, dynamic batch/height/width kept, the encnet metadata read from the IR's ``rt_info``
(key ``encnet.json``, the same JSON as an ONNX file's ``metadata_props``).

The model is compiled for OpenVINO's "CPU" device, with float32 inference precision (the CPU plugin
would otherwise pick bfloat16 on CPUs that have it) and torch's thread count. A CUDA ``device`` is not
refused: OpenVINO runs on the CPU here, a warning says so once, and the outputs are moved to
``device`` so that the rest of inference runs there as it would for any other format.

Reading a model never runs code from it: an IR is an XML graph of OpenVINO's built-in operations plus
raw weight bytes (custom operations would need extensions, which are never loaded here), and an ONNX
file is checked first for external data outside its folder (``check_onnx_file``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encnet_core.errors import CheckpointError
from encnet_core.weights.metadata import METADATA_NAME, ModelMetadata
from encnet_core.weights.model_files import (
    MAX_METADATA_BYTES,
    LoadedModel,
    _from_metadata,
    _metadata_from_json,
    check_onnx_file,
    model_format,
)

log = logging.getLogger("encnet")

__all__ = ["load_openvino", "read_openvino_metadata", "weights_file", "OPENVINO_DEVICE"]

OPENVINO_DEVICE = "CPU"
"""The OpenVINO device models are compiled for."""

_INSTALL = "pip install 'encnet[openvino]'"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise CheckpointError(f"OpenVINO models need the openvino package: {_INSTALL}") from None
    return openvino


def _reason(exc: BaseException) -> str:
    """OpenVINO's messages start with the C++ source location; the last non-blank line says what is wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def weights_file(xml: Path) -> Path:
    """The weights file of an IR: the ``.xml``'s name with ``.bin`` (where OpenVINO looks for it)."""
    return Path(xml).with_suffix(".bin")


def _read(path: Path, fmt: str) -> tuple[Any, Any, ModelMetadata]:
    """(openvino module, ov.Model, metadata) of an IR or an ONNX file, checked first; errors are one line naming the file."""
    ov = _openvino()
    props = None
    if fmt == "onnx":
        props = check_onnx_file(path)  # before OpenVINO opens it; the metadata is in its metadata_props
        what, files = "ONNX model", (str(path),)
    else:
        weights = weights_file(path)
        if not weights.is_file():
            raise CheckpointError(f"{path} is an OpenVINO IR but its weights file {weights} is missing (keep the .xml and .bin together)")
        what, files = "OpenVINO IR", (str(path), str(weights))
    try:
        model = ov.Core().read_model(*files)
    except Exception as exc:  # OpenVINO raises RuntimeError for parse errors, bad offsets, unknown operations
        raise CheckpointError(f"{path} is not a readable {what} ({_reason(exc)})") from None
    if props is not None:
        text = props.get(METADATA_NAME, "")
    else:
        text = model.get_rt_info([METADATA_NAME]).astype(str) if model.has_rt_info([METADATA_NAME]) else ""
    if len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: its {METADATA_NAME} is over the {MAX_METADATA_BYTES}-byte limit")
    return ov, model, _metadata_from_json(text, path)


def _check_format(path: Path) -> str:
    fmt = model_format(path)
    if fmt not in ("openvino", "onnx"):
        raise CheckpointError(f"{path} is not an OpenVINO IR (.xml with its .bin) or an ONNX model; OpenVINO cannot run it")
    return fmt


def read_openvino_metadata(path: Path) -> dict[str, Any]:
    """The encnet metadata of an IR (or ONNX file) as ``ModelMetadata.to_dict()``; reads the graph and
    checks the weights file fits it, compiles nothing."""
    path = Path(path)
    fmt = _check_format(path)
    return _read(path, fmt)[2].to_dict()


def load_openvino(path: Path, device: torch.device) -> LoadedModel:
    """An OpenVINO IR (``.xml`` + ``.bin``) or ONNX file, compiled for OpenVINO's CPU, as a ``LoadedModel``
    whose outputs land on ``device`` (a CUDA device: OpenVINO still runs on the CPU, with a warning)."""
    path = Path(path)
    fmt = _check_format(path)
    ov, model, meta = _read(path, fmt)
    if device.type != "cpu":
        log.warning("OpenVINO runs on the CPU here; its outputs are moved to %s", device)
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.inference_precision: ov.Type.f32, props.inference_num_threads: torch.get_num_threads()}
    try:
        compiled = ov.Core().compile_model(model, OPENVINO_DEVICE, config)
    except Exception as exc:
        raise CheckpointError(f"{path}: OpenVINO cannot compile it for the CPU ({_reason(exc)})") from None
    outputs = {name: port for port in compiled.outputs for name in port.get_names()}
    if "out" not in outputs:
        raise CheckpointError(f"{path} has no output named 'out'; export it with `encnet export`")
    se_port = outputs.get("se")
    dtype = np.float16 if compiled.inputs[0].get_element_type() == ov.Type.f16 else np.float32

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        result = compiled(x.detach().cpu().numpy().astype(dtype, copy=False), share_outputs=False)
        se = torch.from_numpy(result[se_port]).to(device) if se_port is not None else None
        return torch.from_numpy(result[outputs["out"]]).to(device), se

    return _from_metadata(run, se_port is not None and meta.has_se, meta, device, "openvino")
