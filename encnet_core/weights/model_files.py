"""Loading saved models: a model ready for inference, from any saved form (what ``evaluate`` and ``predict`` run).

``load_model(path, device)`` reads a training checkpoint (``last.pt``/``best.pt``) or an export
(weights, safetensors, TorchScript, pt2, ONNX, OpenVINO IR; the format is detected from the
content, not the name) and returns a ``LoadedModel`` carrying the forward function and the metadata inference needs
(classes, palette, normalisation, sizes). ``read_model_file`` gives the weights and metadata of any
of them as a checkpoint-shaped dict (what ``export`` and ``train --init-from`` start from).

Which files are opened how:

* checkpoints and ``weights`` exports: ``torch.load(weights_only=True)`` (tensors and plain data only);
* ``safetensors``: the ``safetensors`` reader (a JSON header and raw tensor bytes, no pickle at all);
* ``torchscript`` and ``pt2`` are programs: loading them runs code from the file, so they are opened
  only with ``trust_code=True`` (``--trust-code``). Their metadata can be read without that, from the
  archive's own ``extra/encnet.json`` member;
* ``onnx``: an onnxruntime session (a graph interpreted by native code; no Python runs), after
  ``check_onnx_file``: external data outside the model's folder is refused before any runtime opens it;
* ``openvino``: an IR (``.xml`` graph, ``.bin`` weights beside it) compiled by OpenVINO for the CPU
  (weights/openvino.py; built-in operations only, no code from the file).

The tensors of checkpoints, ``weights`` and ``safetensors`` files written by encnet are checked against
the digest recorded in the file (weights/checkpoint.py ``tensor_digest``; safetensors: the header key
``encnet.tensor_digest``); files without one (older encnet files, other tools' files) load as before.
A dataset given where a model goes is refused as such (``model_format``).

Every metadata dict, whatever the format, goes through ``ModelMetadata.from_dict`` (weights/metadata.py).
``detect_format`` also tells a prepared dataset (HDF5) from a model file (what ``encnet info`` dispatches on).
Each reader first passes its path through ``model_path``: a zoo name (``encnet_resnet50s_pcontext``)
becomes the cached safetensors file, pulled on first use; a file that exists always wins.
"""

from __future__ import annotations

import json
import logging
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from encnet_core.data.transforms import normalize_image
from encnet_core.engine.device import autocast_context, inference_channels_last, onnx_providers
from encnet_core.errors import CheckpointError
from encnet_core.tasks import facts
from encnet_core.weights import zoo
from encnet_core.weights.checkpoint import (
    DIGEST_HEADER,
    check_tensor_digest,
    check_training_digest,
    exception_reason,
    load_checkpoint,
    model_from_checkpoint,
)
from encnet_core.weights.metadata import METADATA_NAME, ModelMetadata

__all__ = [
    "LoadedModel",
    "load_model",
    "load_onnx",
    "peek_metadata",
    "detect_format",
    "model_path",
    "model_format",
    "read_model_file",
    "check_trusted",
    "load_training_checkpoint",
    "CODE_FORMATS",
    "MODEL_FORMATS",
    "METADATA_NAME",
    "DIGEST_HEADER",
    "read_safetensors",
    "check_onnx_file",
    "no_openvino_telemetry",
    "load_openvino",
    "read_openvino_metadata",
    "weights_file",
    "OPENVINO_DEVICE",
]

log = logging.getLogger("encnet")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_METADATA_BYTES = 4 << 20  # the largest encnet.json member read from an archive (real ones are a few kB)

CODE_FORMATS = {"torchscript": "a TorchScript program", "pt2": "a torch.export (pt2) program"}
"""Formats whose loaders run code stored in the file; opened only with ``trust_code=True``."""

MODEL_FORMATS = ("checkpoint", "safetensors", "torchscript", "pt2", "onnx", "openvino")
"""What ``model_format`` answers (weights exports are ``torch.save`` files: "checkpoint")."""

_FORMAT_NAMES = {"checkpoint": "a checkpoint", "safetensors": "a safetensors export", "onnx": "an ONNX model",
                 "openvino": "an OpenVINO IR", **CODE_FORMATS}  # fmt: skip


@dataclass
class LoadedModel:
    """A callable model plus its metadata: a segmentation model, or a classifier (``task`` "classification")."""

    run: Callable[[Tensor], tuple[Tensor, Tensor | None]]  # (N, 3, h, w) normalised -> (logits (N, C, h, w) or, classifiers, (N, C); SE logits (N, C) or None)
    classes: list[str]
    palette: np.ndarray  # (C, 3) uint8
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    base_size: int
    crop_size: int
    device: torch.device
    source: str  # "checkpoint", "weights", "safetensors", "torchscript", "pt2", "onnx", "openvino"
    has_se: bool = False  # whether run() returns SE logits
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "segmentation"  # what forward() gives: "segmentation" (N, C, h, w) or "classification" (N, C) logits
    # segmentation checkpoints and weights/safetensors files only (None for graph exports): run() with the logits
    # left at the head's resolution, and the model's own resizing that run() applies to them (logits, (H, W)) -> logits
    run_lowres: Callable[[Tensor], tuple[Tensor, Tensor | None]] | None = None
    upsample: Callable[[Tensor, tuple[int, int]], Tensor] | None = None
    engine: str = "torch"  # what runs run(): "torch" (eager or a TorchScript/pt2 program), "onnxruntime" or "openvino"

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, h, w) normalised -> (N, C, h, w) logits ((N, C) for a classifier)."""
        return self.run(x)[0]

    def se_forward(self, x: Tensor) -> Tensor | None:
        """(N, 3, h, w) normalised -> (N, C) SE logits, or None for models without the SE head."""
        return self.run(x)[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 (3, H, W) or (N, 3, H, W) RGB -> normalised float32 on the model's device (as in training)."""
        return normalize_image(image.to(self.device, non_blocking=True), self.mean, self.std)

    @property
    def pad_value(self) -> tuple[float, float, float]:
        """Normalised value of a black pixel (the reference pads with it)."""
        return tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))  # type: ignore[return-value]


def model_path(path: Path | str) -> Path:
    """The file a MODEL argument names: an existing path as is, a zoo name (``encnet weights list``) as
    its cached file, pulled on first use (encnet_core/weights/zoo.py). Every reader below starts here, so
    each command that takes a MODEL accepts a zoo name without code of its own."""
    return zoo.resolve(path)


def detect_format(path: Path) -> str:
    """What ``path`` holds: "dataset" (a prepared dataset: HDF5), one of ``MODEL_FORMATS``, or "unknown" (no file).

    HDF5 content is a dataset; so is a ``.h5``/``.hdf5`` name unless the content is a torch zip or
    safetensors file (a renamed model). Any other file is a model file, its format decided from the
    content (see ``model_format``).
    """
    path = model_path(path)
    if not path.is_file():
        return "unknown"
    if h5py.is_hdf5(path):
        return "dataset"
    if path.suffix.lower() in (".h5", ".hdf5"):
        with path.open("rb") as handle:
            head = handle.read(9)
        if not (head[:2] == b"PK" or head[8:9] == b"{"):
            return "dataset"
    return model_format(path)


def model_format(path: Path) -> str:
    """"checkpoint" (torch.save: checkpoints and weights exports), "safetensors", "torchscript", "pt2",
    "onnx" or "openvino" (an IR's .xml: XML text, or a .xml name).

    Decided from the content (a renamed file is recognised); reads the first bytes and, for zip
    archives, the member list only.
    """
    path = model_path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(9)
        text_head = head + handle.read(256 - len(head))
    if head[:8] == HDF5_SIGNATURE or (head[:2] != b"PK" and head[8:9] != b"{" and h5py.is_hdf5(path)):
        raise CheckpointError(
            f"{path} is a dataset (an HDF5 file), not a model: the model comes first "
            "(encnet evaluate MODEL DATA, encnet predict MODEL IMAGES...)"
        )
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint/export (a damaged zip archive)") from None
        # TorchScript: code/ and constants.pkl (torch.load dispatches to torch.jit.load on constants.pkl alone)
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("archive_format") for n in names):
            return "pt2"
        return "checkpoint"
    # safetensors: u64 little-endian header length, then the JSON header
    if head[8:9] == b"{" or path.suffix.lower() == ".safetensors":
        return "safetensors"
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":  # ONNX protobuf: field 1 (ir_version) first
        return "onnx"
    if text_head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<?xml", b"<net")) or path.suffix.lower() == ".xml":
        return "openvino"  # an IR's graph (its weights are the .bin beside it)
    return "checkpoint"


def check_trusted(path: Path, trust_code: bool) -> None:
    """Refuse a TorchScript/pt2 file without ``trust_code`` (an early check, before any work starts)."""
    _refuse_untrusted(Path(path), model_format(path), trust_code)


def _refuse_untrusted(path: Path, fmt: str, trust_code: bool) -> None:
    """No torch loader opens a program unless the user said they trust it."""
    if fmt in CODE_FORMATS and not trust_code:
        raise CheckpointError(
            f"{path} is {CODE_FORMATS[fmt]}: opening it runs code from the file; pass --trust-code if you "
            "trust its source, or ask for a weights/safetensors export"
        )


def _metadata_from_json(text: str | bytes, path: Path) -> ModelMetadata:
    try:
        meta = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or "classes" not in meta:
        raise CheckpointError(f"{path} has no encnet metadata ({METADATA_NAME}); export it with `encnet export`")
    return ModelMetadata.from_dict(meta, path)


def _archive_metadata(path: Path) -> ModelMetadata:
    """The ``<archive>/extra/encnet.json`` member of a TorchScript/pt2 zip, read without loading anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist() if i.filename.split("/")[1:] == ["extra", METADATA_NAME]]
            if not members:
                raise CheckpointError(f"{path} has no encnet metadata ({METADATA_NAME}); export it with `encnet export`")
            if members[0].file_size > MAX_METADATA_BYTES:
                raise CheckpointError(f"{path}: its {METADATA_NAME} is {members[0].file_size} bytes, over the {MAX_METADATA_BYTES} limit")
            with archive.open(members[0]) as handle:
                text = handle.read(MAX_METADATA_BYTES + 1)  # the recorded size may lie: never read past the cap
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile/zlib raise several types on damaged members
        raise CheckpointError(f"{path} is corrupt ({METADATA_NAME} unreadable: {exception_reason(exc)})") from None
    if len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: its {METADATA_NAME} is over the {MAX_METADATA_BYTES}-byte limit")
    return _metadata_from_json(text, path)


def read_safetensors(path: Path, tensors: bool = True) -> dict[str, Any]:
    """A safetensors export as a checkpoint-shaped dict (``tensors=False``: metadata only, no tensor read).

    The tensors are checked against the digest in the header (``DIGEST_HEADER``) when it has one.
    """
    from safetensors import safe_open

    with path.open("rb") as handle:
        head = handle.read(8)
    size = path.stat().st_size
    if len(head) < 8 or struct.unpack("<Q", head)[0] > size - 8:
        raise CheckpointError(f"{path} is not a readable safetensors file (its header length does not fit the {size}-byte file)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except Exception as exc:  # SafetensorError and friends: bad JSON, offsets, dtypes
        raise CheckpointError(f"{path} is not a readable safetensors file ({exception_reason(exc)})") from None
    if tensors:
        check_tensor_digest(header.get(DIGEST_HEADER), state, path)
    meta = _metadata_from_json(header.get(METADATA_NAME, ""), path)
    return {"kind": "safetensors", "model": state, **meta.to_dict()}


def _split_outputs(result: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(result, (tuple, list)):
        return result[0], result[1] if len(result) > 1 else None
    return result, None


def _from_metadata(run, has_se: bool, meta: ModelMetadata, device: torch.device, source: str) -> LoadedModel:
    return LoadedModel(
        run=run,
        classes=list(meta.classes),
        palette=np.asarray(meta.palette, dtype=np.uint8),
        mean=meta.mean,
        std=meta.std,
        base_size=meta.base_size,
        crop_size=meta.crop_size,
        device=device,
        source=source,
        has_se=has_se,
        metadata=meta.to_dict(),
        task=meta.task,
    )


def _load_program(path: Path, fmt: str, device: torch.device) -> tuple[Any, ModelMetadata]:
    """Open a TorchScript/pt2 program (runs code from the file: callers check trust first)."""
    extra = {METADATA_NAME: ""}
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except Exception as exc:  # RuntimeError mostly; damaged archives raise others
            raise CheckpointError(f"{path} is not a readable TorchScript model ({exception_reason(exc)})") from None
    else:
        try:
            module = torch.export.load(path, extra_files=extra).module().to(device)
        except Exception as exc:  # the pt2 loader raises several types
            raise CheckpointError(f"{path} is not a readable pt2 program ({exception_reason(exc)})") from None
    return module, _metadata_from_json(extra[METADATA_NAME], path)


def _graph_model(module: Any, meta: ModelMetadata, device: torch.device, source: str) -> LoadedModel:
    """TorchScript/pt2 modules return (out, se) or out."""
    dtype = torch.float16 if meta.half else torch.float32

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.inference_mode():
            return _split_outputs(module(x.to(device, dtype)))

    return _from_metadata(run, meta.has_se, meta, device, source)


def _outside(location: str, folder: Path) -> bool:
    """Whether an external-data ``location`` leaves ``folder``: absolute (POSIX or Windows), '..', or a link out of it."""
    if not location or "\0" in location:
        return True
    pure = Path(location)
    if pure.is_absolute() or PureWindowsPath(location).drive or PureWindowsPath(location).is_absolute() or ".." in PureWindowsPath(location).parts:
        return True
    return not (folder / pure).resolve().is_relative_to(folder.resolve())


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph or function and its subgraphs (initializers, sparse initializers, attributes)."""
    yield from getattr(graph, "initializer", ())
    for sparse in getattr(graph, "sparse_initializer", ()):
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_tensors(sub)


def check_onnx_file(path: Path) -> dict[str, str]:
    """Check an ONNX file before a runtime opens it; return its ``metadata_props``.

    The graph is parsed by the onnx package without its external data; a tensor stored outside the
    file must lie in the model's folder: an absolute location, '..' or a link leaving the folder is
    refused (a model must not make a runtime read other files of this machine).
    """
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX model: install the onnx extra (pip install 'encnet[onnx]')") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise CheckpointError(f"{path} is not a readable ONNX model ({exception_reason(exc)})") from None
    folder = Path(path).parent
    for graph in (proto.graph, *proto.functions):
        for tensor in _all_tensors(graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            if _outside(location, folder):
                raise CheckpointError(
                    f"{path} refers to external data outside its folder ({location[:200]!r}, tensor "
                    f"{tensor.name[:100]!r}); refusing to open it"
                )
    return {entry.key: entry.value for entry in proto.metadata_props}


def _load_onnx(path: Path, device: torch.device) -> LoadedModel:
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX model: install onnxruntime (pip install 'encnet[onnx]')") from None
    check_onnx_file(path)
    providers = onnx_providers(device)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CheckpointError(f"{path} is not a readable ONNX model ({exception_reason(exc)})") from None
    meta = _metadata_from_json(session.get_modelmeta().custom_metadata_map.get(METADATA_NAME, ""), path)
    names = [o.name for o in session.get_outputs()]
    dtype = np.float16 if meta.half else np.float32

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        outputs = session.run(None, {"image": x.detach().cpu().numpy().astype(dtype)})
        se = torch.from_numpy(outputs[names.index("se")]).to(device) if "se" in names else None
        return torch.from_numpy(outputs[names.index("out")]).to(device), se

    loaded = _from_metadata(run, meta.has_se, meta, device, "onnx")
    loaded.engine = "onnxruntime"
    return loaded


def load_onnx(path: Path, device: torch.device) -> LoadedModel:
    """An ONNX file in an onnxruntime session on ``device`` (its CUDA provider on a GPU): what ``load_model``
    does with one, and what engine/engines.py runs a checkpoint's cached ONNX export with."""
    return _load_onnx(model_path(path), device)


def read_model_file(path: Path, trust_code: bool = False) -> dict[str, Any]:
    """Weights and metadata of a checkpoint or export as a checkpoint-shaped dict (``model``: state_dict).

    A bare state_dict comes back as ``{"model": sd}``. TorchScript/pt2 programs need ``trust_code``;
    ONNX files cannot be read back into weights.
    """
    path = model_path(path)
    fmt = model_format(path)
    if fmt == "checkpoint":
        return load_checkpoint(path)
    if fmt == "safetensors":
        return read_safetensors(path)
    if fmt in ("onnx", "openvino"):
        raise CheckpointError(f"{path} is {_FORMAT_NAMES[fmt]}: its weights cannot be read back; use the checkpoint or a weights/safetensors export")
    _refuse_untrusted(path, fmt, trust_code)
    module, meta = _load_program(path, fmt, torch.device("cpu"))
    state = {key.removeprefix("model."): value for key, value in module.state_dict().items()}
    return {"kind": fmt, "model": state, **meta.to_dict()}


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint with its optimizer, scheduler, iteration and RNG state (what --resume needs).

    Only ``torch.save`` checkpoints carry training state, so no program is ever opened here.
    """
    path = Path(path)
    fmt = model_format(path)
    if fmt != "checkpoint":
        raise CheckpointError(
            f"{path} is {_FORMAT_NAMES[fmt]} without training state; --resume needs a "
            "run's last.pt (use --init-from to fine-tune from it)"
        )
    ckpt = load_checkpoint(path)
    what = "a weights export" if ckpt.get("kind") == "weights" else ("a bare state_dict" if "model_config" not in ckpt else "")
    if not what:
        missing = [key for key, kind in (("optimizer", dict), ("scheduler", dict), ("rng", dict), ("iteration", int)) if not isinstance(ckpt.get(key), kind)]
        if not missing:
            check_training_digest(ckpt, path)
            return ckpt
        what = f"a checkpoint without {', '.join(missing)}"
    raise CheckpointError(f"{path} is {what}: no training state to resume; use --init-from to fine-tune from it")


def load_model(
    path: Path, device: torch.device, amp: str = "off", *, trust_code: bool = False, compile: bool = False
) -> LoadedModel:
    """Load a checkpoint or a weights, safetensors, TorchScript, pt2, ONNX or OpenVINO export for inference on ``device``.

    TorchScript and pt2 files are programs: without ``trust_code`` they are refused before any loader
    touches them. ``compile``: checkpoints and weights/safetensors files run through ``torch.compile``
    (compiled on the first call of each input shape; see docs/export.md "Engines" for what it costs and gains).
    """
    path = model_path(path)
    fmt = model_format(path)
    if fmt in CODE_FORMATS:
        _refuse_untrusted(path, fmt, trust_code)
        module, meta = _load_program(path, fmt, device)
        return _graph_model(module, meta, device, fmt)
    if fmt == "onnx":
        return _load_onnx(path, device)
    if fmt == "openvino":
        return load_openvino(path, device)
    ckpt = load_checkpoint(path) if fmt == "checkpoint" else read_safetensors(path)
    if "model_config" not in ckpt:
        raise CheckpointError(
            f"{path} is a bare state_dict without model metadata; train or export with encnet, or fine-tune from it with --init-from"
        )
    meta = ModelMetadata.from_dict(ckpt, path)
    model = model_from_checkpoint(ckpt, path).float().to(device).eval()
    if inference_channels_last(device, amp):  # the input follows: convolutions keep the layout of their weights
        model.to(memory_format=torch.channels_last)
    has_se = getattr(model, "has_se", False)  # classifiers have no SE head
    if compile:
        model = torch.compile(model)  # its attributes (_upsample) stay reachable through the wrapper

    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.inference_mode(), autocast_context(device, amp):
            if not facts(meta.task).per_pixel:
                return model(x.to(device, torch.float32)), None  # (N, C)
            outputs = model(x.to(device, torch.float32), with_se=has_se)
        return outputs["out"], outputs.get("se")

    source = fmt if fmt == "safetensors" else ("weights" if ckpt.get("kind") == "weights" else "checkpoint")
    loaded = _from_metadata(run, has_se, meta, device, source)
    if facts(meta.task).per_pixel and hasattr(model, "_upsample"):  # predict resizes large logit maps in parts

        def run_lowres(x: Tensor) -> tuple[Tensor, Tensor | None]:
            with torch.inference_mode(), autocast_context(device, amp):
                outputs = model(x.to(device, torch.float32), with_se=has_se, upsample=False)
            return outputs["out"], outputs.get("se")

        def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
            with torch.inference_mode(), autocast_context(device, amp):
                return model._upsample(logits, size)

        loaded.run_lowres, loaded.upsample = run_lowres, upsample
    return loaded


def peek_metadata(path: Path, trust_code: bool = False) -> dict[str, Any]:
    """Metadata of a checkpoint or export (format detected from the file), without running its code.

    ``runs_code`` says whether opening the file for inference runs code from it. For TorchScript/pt2
    the metadata comes from the archive's ``extra/encnet.json``; with ``trust_code`` the program is
    also opened, which checks that it loads.
    """
    path = model_path(path)
    fmt = model_format(path)
    if fmt == "checkpoint":
        ckpt = load_checkpoint(path)
        kind = ckpt.get("kind", "checkpoint") if "model_config" in ckpt else "state_dict"
        return {"format": kind, "runs_code": False, **ModelMetadata.from_dict(ckpt, path).to_dict()}
    if fmt == "safetensors":
        meta = read_safetensors(path)  # the tensors too: their digest is checked, as for a checkpoint
        meta.pop("model")
        return {"format": meta.pop("kind"), "runs_code": False, **meta}
    if fmt == "onnx":
        return {"format": "onnx", "runs_code": False, **_load_onnx(path, torch.device("cpu")).metadata}
    if fmt == "openvino":
        return {"format": "openvino", "runs_code": False, **read_openvino_metadata(path)}
    meta = _archive_metadata(path).to_dict()
    if trust_code:
        meta = _load_program(path, fmt, torch.device("cpu"))[1].to_dict() | {"loaded": True}
    return {"format": fmt, "runs_code": True, **meta}


# ----------------------------------------------------------------------------- OpenVINO
# (weights/openvino.py is the public face of this part; the code lives here, beside the other formats' readers)

OPENVINO_DEVICE = "CPU"
"""The OpenVINO device models are compiled for."""

_OV_INSTALL = "pip install 'encnet[openvino]'"


def _ov_module() -> Any:
    try:
        import openvino
    except ImportError:
        raise CheckpointError(f"OpenVINO models need the openvino package: {_OV_INSTALL}") from None
    return openvino


def no_openvino_telemetry() -> None:
    """Stop OpenVINO's tools from sending usage data from this process.

    OpenVINO's converter (``ov.convert_model``) and NNCF report usage to Google Analytics through
    ``openvino_telemetry`` unless the user has run its ``opt_in_out --opt_out`` (no consent file counts as
    consent; it also writes an id under ~/intel). encnet never sends anything on a user's behalf: the
    consent check answers "declined" in this process (the user's own settings and files are untouched).
    Called before each conversion and before NNCF is imported."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no telemetry package: nothing is sent
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


def _ov_reason(exc: BaseException) -> str:
    """OpenVINO's messages start with the C++ source location; the last non-blank line says what is wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def weights_file(xml: Path) -> Path:
    """The weights file of an IR: the ``.xml``'s name with ``.bin`` (where OpenVINO looks for it)."""
    return Path(xml).with_suffix(".bin")


def _ov_read(path: Path, fmt: str) -> tuple[Any, Any, ModelMetadata]:
    """(openvino module, ov.Model, metadata) of an IR or an ONNX file, checked first; errors are one line naming the file."""
    ov = _ov_module()
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
        raise CheckpointError(f"{path} is not a readable {what} ({_ov_reason(exc)})") from None
    if props is not None:
        text = props.get(METADATA_NAME, "")
    else:
        text = model.get_rt_info([METADATA_NAME]).astype(str) if model.has_rt_info([METADATA_NAME]) else ""
    if len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: its {METADATA_NAME} is over the {MAX_METADATA_BYTES}-byte limit")
    return ov, model, _metadata_from_json(text, path)


def _ov_check_format(path: Path) -> str:
    fmt = model_format(path)
    if fmt not in ("openvino", "onnx"):
        raise CheckpointError(f"{path} is not an OpenVINO IR (.xml with its .bin) or an ONNX model; OpenVINO cannot run it")
    return fmt


def read_openvino_metadata(path: Path) -> dict[str, Any]:
    """The encnet metadata of an IR (or ONNX file) as ``ModelMetadata.to_dict()``; reads the graph and
    checks the weights file fits it, compiles nothing."""
    path = Path(path)
    fmt = _ov_check_format(path)
    return _ov_read(path, fmt)[2].to_dict()


def load_openvino(path: Path, device: torch.device, precision: str = "fp32") -> LoadedModel:
    """An OpenVINO IR (``.xml`` + ``.bin``) or ONNX file, compiled for OpenVINO's CPU, as a ``LoadedModel``
    whose outputs land on ``device`` (a CUDA device: OpenVINO still runs on the CPU, with a warning).

    ``precision``: the CPU plugin's inference precision, "fp32" (default: it would otherwise pick bf16 on
    CPUs that have it) or "bf16" (``--engine openvino --amp bf16``); inputs and outputs stay float32."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    path = Path(path)
    fmt = _ov_check_format(path)
    ov, model, meta = _ov_read(path, fmt)
    if device.type != "cpu":
        log.warning("OpenVINO runs on the CPU here; its outputs are moved to %s", device)
    if fmt == "onnx" and meta.precision == "int8":
        log.warning(
            "%s is ONNX Runtime's int8 graph: OpenVINO runs it, but its masks drifted from PyTorch's on EncNet "
            "(docs/export.md); for OpenVINO export --format openvino --int8, or run this file with onnxruntime", path.name,
        )  # fmt: skip
    import openvino.properties as props
    import openvino.properties.hint as hints

    inference = ov.Type.bf16 if precision == "bf16" else ov.Type.f32
    config = {hints.inference_precision: inference, props.inference_num_threads: torch.get_num_threads()}
    try:
        compiled = ov.Core().compile_model(model, OPENVINO_DEVICE, config)
    except Exception as exc:
        raise CheckpointError(f"{path}: OpenVINO cannot compile it for the CPU ({_ov_reason(exc)})") from None
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
