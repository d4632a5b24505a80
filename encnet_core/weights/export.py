"""``encnet export``: slim, self-describing models.

Formats (the metadata travels inside each as ``encnet.json``):

* ``weights``: ``torch.save`` of {kind: "weights", model state_dict, metadata, tensor_digest}; no optimizer
  (read with ``weights_only=True``);
* ``safetensors``: the state_dict as a safetensors file (no pickle at all), metadata in its header
  (``__metadata__["encnet.json"]``) beside the tensors' digest (``__metadata__["encnet.tensor_digest"]``,
  checked on every read); the format to share weights with strangers;
* ``torchscript``: ``torch.jit.trace`` with the metadata as an extra file;
* ``pt2``: ``torch.export`` program with dynamic height and width, metadata as an extra file;
* ``onnx``: opset 18, dynamic batch/height/width axes, metadata in ``metadata_props`` (extra ``encnet[onnx]``);
  with ``int8`` the float graph is then quantized (weights/quantize.py: ONNX Runtime's static QDQ
  quantizer, calibrated on a dataset split) and the metadata's ``precision`` says "int8".
* ``openvino``: the ONNX export converted to an OpenVINO IR, ``OUT.xml`` (graph, metadata in its
  ``rt_info``) and ``OUT.bin`` (weights) written together: both or neither (extra ``encnet[openvino]``).
  The weights stay float32 unless ``--half`` asks for float16 weights (``compress_to_fp16``); the IR
  takes float32 input either way.
  With ``int8`` the IR is quantized by NNCF, OpenVINO's post-training quantizer, calibrated on a
  dataset split (weights/quantize.py ``quantize_openvino``; extra ``encnet[nncf]``).

TorchScript and pt2 files are programs: reading them back (``--verify``, evaluate, predict, or as the
input of another export) runs code from the file, so only files from a trusted source are opened
(``trust_code``). The export's own temp file is verified as trusted: this process just wrote it.

Every export maps a normalised (N, 3, H, W) float image to (N, C, H, W) logits ("out") and, for
models with the SE head, (N, C) SE logits ("se"); a classifier's exports map it to (N, C) class logits
("out"), and its metadata says ``task`` "classification".
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encnet_core.choices import EXPORT_FORMATS
from encnet_core.errors import CheckpointError, ConfigError, EncNetError
from encnet_core.paths import AtomicFile, check_output_file
from encnet_core.progress import ProgressCallback
from encnet_core.tasks import facts
from encnet_core.weights.checkpoint import (
    exception_reason,
    model_from_checkpoint,
    save_checkpoint,
    tensor_digest,
)
from encnet_core.weights.metadata import ModelMetadata
from encnet_core.weights.model_files import (
    DIGEST_HEADER,
    METADATA_NAME,
    load_model,
    no_openvino_telemetry,
    read_model_file,
)

log = logging.getLogger("encnet")

__all__ = ["FORMATS", "ExportResult", "export_model", "ExportWrapper", "METADATA_NAME"]

FORMATS = EXPORT_FORMATS  # defined in choices.py: the CLI lists them without importing torch
ONNX_OPSET = 18


class ExportWrapper(nn.Module):
    """Tensor-in, tensors-out view of a model for tracing/exporting: an EncNet's (out logits, SE logits)
    or out logits, a classifier's (N, C) logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.classifier = not facts(model.task).per_pixel
        self.has_se = getattr(model, "has_se", False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        if self.classifier:
            return self.model(x)  # (N, C)
        outputs = self.model(x, with_se=self.has_se)
        return (outputs["out"], outputs["se"]) if self.has_se else outputs["out"]


@dataclass
class ExportResult:
    """What ``export_model`` wrote."""

    path: Path
    format: str
    bytes: int  # an OpenVINO IR: .xml and .bin together
    sha256: str  # of ``path`` (an IR: its .xml)
    max_abs_diff: float | None  # largest |export - PyTorch| on the sample input, None without --verify
    metadata: dict[str, Any]  # ModelMetadata.to_dict() of what the export carries
    mask_agreement: float | None = None  # int8 with --verify: share of calibration pixels whose class matches PyTorch's


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 (used within the iteration)
                digest.update(block)
    return digest.hexdigest()


def _sample(size: int, dtype: torch.dtype) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, size, size + size // 4, generator=generator).to(dtype)  # batch 2: keeps the batch dim dynamic


def _write_export(wrapper: ExportWrapper, fmt: str, tmp: Path, meta_json: str, sample: Tensor, metadata: dict) -> None:
    if fmt == "weights":
        state = {k: v for k, v in wrapper.model.state_dict().items()}
        save_checkpoint({"kind": "weights", "model": state, **metadata}, tmp)
    elif fmt == "safetensors":
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in wrapper.model.state_dict().items()}
        header = {"format": "pt", METADATA_NAME: meta_json, DIGEST_HEADER: tensor_digest(state)}
        tmp.write_bytes(save(state, metadata=header))  # save_file would make it 0600
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning on the input check; TorchScript's deprecation notice
            traced = torch.jit.trace(wrapper, sample, check_trace=False, strict=False)
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_NAME: meta_json})
    elif fmt == "pt2":
        dims = {"x": {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
        with torch.no_grad():
            program = torch.export.export(wrapper, (sample,), dynamic_shapes=dims)
        torch.export.save(program, tmp, extra_files={METADATA_NAME: meta_json})
    elif fmt == "openvino":
        _write_openvino(wrapper, tmp, meta_json, sample, metadata)
    elif fmt == "onnx":
        try:
            import onnx
        except ImportError:
            raise ConfigError("ONNX export needs the onnx extra: pip install 'encnet[onnx]'") from None
        outputs = ["out", "se"] if wrapper.has_se else ["out"]
        out_axes = {0: "batch"} if wrapper.classifier else {0: "batch", 2: "height", 3: "width"}
        axes = {"image": {0: "batch", 2: "height", 3: "width"}, "out": out_axes}
        if wrapper.has_se:
            axes["se"] = {0: "batch"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (sample,), str(tmp), input_names=["image"], output_names=outputs,
                dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False,
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_NAME, meta_json
        onnx.save(proto, str(tmp))


def _write_openvino(wrapper: ExportWrapper, tmp: Path, meta_json: str, sample: Tensor, metadata: dict) -> None:
    """``tmp`` (.xml) and its .bin: the ONNX export converted by OpenVINO, metadata in the IR's rt_info."""
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("OpenVINO export needs the openvino extra: pip install 'encnet[openvino]'") from None
    onnx_tmp = tmp.with_suffix(".onnx")
    no_openvino_telemetry()
    try:
        _write_export(wrapper, "onnx", onnx_tmp, meta_json, sample, metadata)
        model = ov.convert_model(str(onnx_tmp))
    finally:
        onnx_tmp.unlink(missing_ok=True)
    model.set_rt_info(meta_json, [METADATA_NAME])
    # save_model compresses float weights to float16 by default: only when --half asks for it
    ov.save_model(model, str(tmp), compress_to_fp16=bool(metadata.get("half")))


def _commit_pair(file: AtomicFile, weights: AtomicFile) -> None:
    """Give an IR's .xml and .bin their names, both or neither: an existing .xml goes first (an
    interrupted export then leaves no .xml, never an old .xml with a new .bin), then the .bin, then the .xml."""
    file.target.unlink(missing_ok=True)
    weights.commit()
    try:
        file.commit()
    except BaseException:
        weights.target.unlink(missing_ok=True)
        raise


def export_model(
    checkpoint: Path,
    out: Path,
    fmt: str = "weights",
    *,
    half: bool = False,
    verify: bool = True,
    hash_name: bool = False,
    overwrite: bool = False,
    sample_size: int = 0,
    tolerance: float = 1e-3,
    trust_code: bool = False,
    int8: bool = False,
    calibrate: Path | None = None,
    calib_images: int = 32,
    calib_split: str = "train",
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a training checkpoint (or another export) to ``fmt``; verified exports only land at ``out``.

    A TorchScript/pt2 input is a program and is opened only with ``trust_code``; ONNX cannot be an input.
    ``int8`` (ONNX or OpenVINO) quantizes the export, calibrated on ``calib_images`` images of the ``calib_split``
    split of the prepared dataset ``calibrate``; its verification reports the mask agreement with PyTorch.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if int8 and fmt not in ("onnx", "openvino"):
        raise ConfigError(f"--int8 quantizes ONNX and OpenVINO exports only; use --format onnx or openvino, not {fmt}")
    if int8 and calibrate is None:
        raise ConfigError("--int8 needs --calibrate DATA.h5: a prepared dataset whose images set the activation ranges")
    if calibrate is not None and not int8:
        raise ConfigError("--calibrate applies to --int8 exports only; add --int8 or drop --calibrate")
    if int8 and half:
        raise ConfigError("--int8 and --half exclude each other: an int8 export starts from the float32 graph")
    out = Path(out)
    if fmt == "openvino" and out.suffix.lower() != ".xml":
        raise ConfigError(f"an openvino export is OUT.xml with OUT.bin beside it: give a .xml name, not {out.name}")
    check_output_file(out, "export to", overwrite=overwrite or hash_name)  # before any work
    if fmt == "openvino":
        check_output_file(out.with_suffix(".bin"), "export to", overwrite=overwrite or hash_name)
    ckpt = read_model_file(checkpoint, trust_code=trust_code)
    if "model_config" not in ckpt:
        raise CheckpointError(f"{checkpoint} has no model description (a bare state_dict); export a checkpoint written by encnet")
    try:
        model = model_from_checkpoint(ckpt, checkpoint).eval()
    except EncNetError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    precision = "int8" if int8 else ("fp16" if half else "fp32")
    metadata = replace(ModelMetadata.from_dict(ckpt, checkpoint), export_format=fmt, half=half, precision=precision).to_dict()
    if int8:
        from encnet_core.weights import quantize

        quantize.check_calibration_data(Path(calibrate), calib_split, metadata, calib_images)  # before any work
        if fmt == "openvino":
            quantize.check_nncf()
    half_model = half and fmt != "openvino"  # OpenVINO: float32 graph, float16 weights (compress_to_fp16)
    dtype = torch.float16 if half_model else torch.float32
    if half_model:
        if fmt not in ("weights", "safetensors"):
            log.warning("--half %s export: the model expects float16 input (CUDA); CPU float16 kernels are slow", fmt)
        model = model.half()
    wrapper = ExportWrapper(model).eval()
    sample = _sample(sample_size or min(int(metadata["crop_size"]), 128), dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    file = AtomicFile(out, keep_suffix=True)  # keep the suffix: pt2 needs ".pt2", an IR ".xml"
    tmp = file.tmp
    weights = None  # an IR's .bin: OpenVINO writes it beside the .xml, under the same name
    if fmt == "openvino":
        weights = AtomicFile(out.with_suffix(".bin"))
        weights.tmp = tmp.with_suffix(".bin")
    meta_json = json.dumps(metadata)
    agreement = None
    float_file = AtomicFile(out.with_name(out.stem + "-float.onnx"), keep_suffix=True) if int8 else None
    try:
        try:
            if int8:
                float_meta = json.dumps({**metadata, "precision": "fp32"})
                _write_export(wrapper, "onnx", float_file.tmp, float_meta, sample, metadata)
                batches = quantize.calibration_batches(Path(calibrate), calib_split, metadata, calib_images)
                if fmt == "onnx":
                    quantize.quantize_onnx(float_file.tmp, tmp, batches, progress=progress)
                    quantize.set_metadata(tmp, meta_json)
                else:
                    quantize.quantize_openvino(float_file.tmp, tmp, batches, meta_json, progress=progress)
            else:
                _write_export(wrapper, fmt, tmp, meta_json, sample, metadata)
        except EncNetError:
            raise
        except Exception as exc:  # tracer/exporter/quantizer failures: one line, details with ENCNET_DEBUG=1
            raise EncNetError(f"{fmt} {'int8 ' if int8 else ''}export failed: {exception_reason(exc)}") from exc
        diff = None
        if verify and int8:
            diff, agreement = _verify_int8(wrapper, tmp, batches)
        elif verify:
            diff = _verify(wrapper, tmp, sample, half, tolerance)
        if hash_name:
            digest = _sha256(tmp, *([weights.tmp] if weights else []))[:8]  # an IR: the graph and its weights
            out = file.target = out.with_name(f"{out.stem}-{digest}{out.suffix}")
            if out.exists() and not overwrite:
                raise ConfigError(f"{out} exists; pass --overwrite to replace it")
            if weights is not None:
                weights.target = out.with_suffix(".bin")
                if weights.target.exists() and not overwrite:
                    raise ConfigError(f"{weights.target} exists; pass --overwrite to replace it")
        if weights is not None:
            _commit_pair(file, weights)
        else:
            file.commit()
    finally:
        file.discard()
        if weights is not None:
            weights.discard()
        if float_file is not None:
            float_file.discard()
    size = out.stat().st_size + (weights.target.stat().st_size if weights else 0)  # an IR: both files
    return ExportResult(out, fmt, size, _sha256(out), diff, metadata, agreement)


def _verify_int8(wrapper: ExportWrapper, path: Path, batches: list) -> tuple[float, float]:
    """Reload the int8 export and compare it with the PyTorch model on the calibration images:
    (largest |logit difference|, share of pixels (images, for a classifier) whose argmax agrees)."""
    loaded = load_model(path, torch.device("cpu"))
    worst, same, total = 0.0, 0, 0
    for batch in batches:
        x = torch.from_numpy(batch)
        with torch.no_grad():
            reference = wrapper(x)
            reference = reference[0] if isinstance(reference, tuple) else reference
            got = loaded.forward(x)
        if got.shape != reference.shape:
            raise EncNetError(f"verification failed: export gives shape {tuple(got.shape)}, PyTorch {tuple(reference.shape)}")
        worst = max(worst, (got.float() - reference.float()).abs().max().item())
        agree = got.argmax(1) == reference.argmax(1)
        same, total = same + int(agree.sum()), total + agree.numel()
    return worst, same / total


def _verify(wrapper: ExportWrapper, path: Path, sample: Tensor, half: bool, tolerance: float) -> float:
    """Reload the export the way evaluate/predict do and compare with the PyTorch model on two input sizes."""
    loaded = load_model(path, torch.device("cpu"), trust_code=True)  # the temp file this process just wrote
    worst = 0.0
    other = sample[..., : sample.shape[-2] - 8, : sample.shape[-1] - 16].contiguous()  # a second size: dynamic shapes
    for x in (sample, other):
        with torch.no_grad():
            reference = wrapper(x)
            reference = reference[0] if isinstance(reference, tuple) else reference
            got = loaded.forward(x)
        if got.shape != reference.shape:
            raise EncNetError(f"verification failed: export gives shape {tuple(got.shape)}, PyTorch {tuple(reference.shape)}")
        worst = max(worst, (got.float() - reference.float()).abs().max().item())
    limit = tolerance * (20 if half else 1) * max(1.0, reference.float().abs().max().item())
    if not worst <= limit:
        raise EncNetError(f"verification failed: export differs from PyTorch by {worst:.3g} (limit {limit:.3g})")
    return worst
