"""int8 post-training static quantization of an ONNX export (``encnet export --format onnx --int8``).

ONNX Runtime's quantizer (``onnxruntime.quantization.quantize_static``) rewrites the float graph in the
QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized operator, which the runtime
fuses into int8 kernels): weights int8, per output channel; activations int8 with scales from MinMax
calibration on images of a dataset split, prepared as evaluation prepares them (short side to the
model's crop size, centre crop, the model's normalisation: data/transforms.py ``eval_transform``).

Activations are int8 (S8S8): ONNX Runtime's recommended first choice for QDQ on CPUs (U8S8 with QDQ
can saturate on x86 without VNNI); uint8 measured the same here (benchmarks/int8_keep_float.py).
Which nodes stay float is chosen by measurement: ``KEEP_FLOAT`` names the node-name prefixes left in
float, the EncModule (the Encoding layer's MatMul/Softmax/ReduceSum subgraph, its fc gate and the SE
head). On encnet_tiny trained on the synthetic far layout, quantizing everything kept 97.8% of the
val pixels' classes; leaving the EncModule float kept 99.4% (the Encoding layer alone: 97.6%; the
classifier conv alone: 97.9%); the standard layout gave 99.0-99.4% for every choice (docs/export.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from encnet_core.errors import ConfigError, DataError
from encnet_core.progress import ProgressCallback, ThrottledProgress

__all__ = ["KEEP_FLOAT", "calibration_batches", "check_calibration_data", "check_nncf", "quantize_onnx", "quantize_openvino"]

KEEP_FLOAT: tuple[str, ...] = ("/model/head/encmodule/",)  # node-name prefixes left in float (module docstring)
CALIBRATION_BATCH = 1  # images per calibration run: memory is that of one image, whatever --calib-images is
# ONNX Runtime's MinMax calibrator keeps only each tensor's min and max per run; its session's memory is set by
# the first two runs (the arena, then the memory pattern) and stays there: EncNet-ResNet50 at 480 px, batch 1,
# measured 4.0 GiB peak for 2, 4 and 8 images; batch 4 took 6.5 GiB for 4 images and 11.5 GiB for 8.


def check_calibration_data(data: Path, split: str, meta: dict[str, Any], count: int) -> None:
    """Refuse, with one line and before any work, a calibration set that does not fit the model."""
    from encnet_core.data.hdf5 import read_info

    if count < 1:
        raise ConfigError(f"--calib-images must be at least 1, got {count}")
    data = Path(data)
    if not data.is_file():
        raise DataError(f"calibration dataset not found: {data} (a prepared .h5 file: encnet prepare)")
    info = read_info(data)
    task = meta.get("task") or "segmentation"
    if task != info.task:  # (engine/tasks.py check_task's words; weights/ takes nothing but device from engine/)
        raise ConfigError(f"the model is a {task} model but {data} is a {info.task} dataset; calibrate on the dataset the model was trained for")
    if split not in info.splits:
        raise DataError(f"{data} has no split {split!r}; it has {', '.join(info.splits) or 'no splits'} (--calib-split)")
    if info.splits[split] < 1:
        raise DataError(f"split {split!r} of {data} has no images to calibrate on")
    classes = list(meta.get("classes") or [])
    if list(info.classes) != classes:
        raise ConfigError(
            f"the model predicts {len(classes)} classes ({', '.join(classes[:4])}...) but {data} has "
            f"{info.num_classes} ({', '.join(info.classes[:4])}...); calibrate on the dataset the model was trained for"
        )


def calibration_batches(data: Path, split: str, meta: dict[str, Any], count: int) -> list[np.ndarray]:
    """Up to ``count`` images of ``split``, spread evenly over it, as float32 (n, 3, crop, crop) batches."""
    import torch

    from encnet_core.data.dataset import open_dataset
    from encnet_core.data.transforms import eval_transform

    crop = int(meta["crop_size"])
    transform = eval_transform(crop, meta["mean"], meta["std"])
    dataset = open_dataset(Path(data), split)
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    images = []
    for index in indices:
        image = dataset[int(index)][0]
        images.append(transform(image).as_subclass(torch.Tensor).float())  # (3, crop, crop)
    stacked = torch.stack(images).numpy()
    return [stacked[i : i + CALIBRATION_BATCH] for i in range(0, len(stacked), CALIBRATION_BATCH)]


class _Reader:
    """The ``CalibrationDataReader`` protocol over prepared batches; reports the images handed out."""

    def __init__(self, batches: list[np.ndarray], progress: ProgressCallback | None = None) -> None:
        self._batches = batches
        self._iter: Iterator[np.ndarray] = iter(batches)
        self._report = ThrottledProgress(progress, "calibrating int8", "items")
        self._total = sum(len(batch) for batch in batches)
        self._done = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        self._report(self._done, self._total, final=batch is None)
        if batch is not None:
            self._done += len(batch)
        return None if batch is None else {"image": batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def float_nodes(model_path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``model_path`` whose name starts with one of ``prefixes``."""
    if not prefixes:
        return []
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [node.name for node in graph.node if node.name.startswith(prefixes)]


def quantize_onnx(
    float_path: Path,
    out: Path,
    batches: list[np.ndarray],
    keep_float: tuple[str, ...] = KEEP_FLOAT,
    activation: str = "int8",
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Write the int8 QDQ model of the float ONNX file ``float_path`` to ``out``; returns the nodes left float."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    excluded = float_nodes(float_path, keep_float)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice (pre-processing, rank-1 weights) goes to the root logger
    onnxruntime.set_default_logger_severity(3)  # and its calibration sessions' notes on unused initializers
    try:
        quantize_static(
            str(float_path),
            str(out),
            _Reader(batches, progress),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
    finally:
        root.setLevel(level)
        onnxruntime.set_default_logger_severity(2)
    return excluded


def check_nncf() -> None:
    """Refuse, before any work, an OpenVINO int8 export without NNCF (OpenVINO's quantizer)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        raise ConfigError("--format openvino --int8 needs OpenVINO and NNCF: pip install 'encnet[nncf]'")


def quantize_openvino(
    float_onnx: Path, out: Path, batches: list[np.ndarray], meta_json: str,
    keep_float: tuple[str, ...] = KEEP_FLOAT, progress: ProgressCallback | None = None,
) -> None:  # fmt: skip
    """Write the int8 OpenVINO IR (``out`` .xml and its .bin) of the float ONNX file ``float_onnx``:
    NNCF's post-training quantization (``nncf.quantize``: int8 weights and activations, its default
    MinMax-based ranges and fast bias correction) calibrated on ``batches``, the nodes under
    ``keep_float`` left float as in ``quantize_onnx``; the metadata ``meta_json`` in the IR's rt_info.

    Why NNCF and not the ONNX Runtime QDQ graph converted: OpenVINO runs that graph as fast, but
    its results drifted from PyTorch's on EncNet (docs/export.md "int8"); NNCF's model did not."""
    import contextlib
    import io
    import re

    from encnet_core.weights.metadata import METADATA_NAME
    from encnet_core.weights.model_files import no_openvino_telemetry

    no_openvino_telemetry()  # before NNCF's import, which sets up its telemetry
    import nncf
    import openvino as ov

    report = ThrottledProgress(progress, "calibrating int8", "items")
    total, done = sum(len(batch) for batch in batches), 0

    def counted(batch: np.ndarray) -> np.ndarray:
        nonlocal done
        report(done, total)
        done = min(total, done + len(batch))
        return batch

    scope = nncf.IgnoredScope(patterns=[re.escape(prefix) + ".*" for prefix in keep_float], validate=False)
    model = ov.convert_model(str(float_onnx))
    nncf.set_log_level(logging.ERROR)
    quiet = logging.getLogger("torch.utils.cpp_extension")  # NNCF imports it: "No CUDA runtime is found" on CPU machines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's own progress bars (ours go to the caller's callback)
            quantized = nncf.quantize(model, nncf.Dataset(batches, counted), subset_size=len(batches), ignored_scope=scope)
    finally:
        quiet.setLevel(level)
    report(total, total, final=True)
    quantized.set_rt_info(meta_json, [METADATA_NAME])
    ov.save_model(quantized, str(out), compress_to_fp16=False)


def set_metadata(path: Path, meta_json: str) -> None:
    """Replace the ``encnet.json`` entry of an ONNX file's ``metadata_props`` by ``meta_json``."""
    import onnx

    from encnet_core.weights.metadata import METADATA_NAME

    proto = onnx.load(str(path))
    used = {name for node in proto.graph.node for name in node.input}
    unused = [init for init in proto.graph.initializer if init.name not in used]
    for init in unused:  # the quantizer leaves a few behind; onnxruntime warns about each on every load
        proto.graph.initializer.remove(init)
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key != METADATA_NAME]
    del proto.metadata_props[:]
    for key, value in [*kept, (METADATA_NAME, meta_json)]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def copy_metadata(float_path: Path, out: Path) -> None:
    """Give the int8 model ``out`` the metadata of ``float_path`` with ``precision`` int8."""
    import json

    import onnx

    from encnet_core.weights.metadata import METADATA_NAME

    props = {e.key: e.value for e in onnx.load(str(float_path), load_external_data=False).metadata_props}
    set_metadata(out, json.dumps({**json.loads(props[METADATA_NAME]), "precision": "int8"}))
