"""Which engine runs a model: eager PyTorch, onnxruntime or OpenVINO (``--engine``, ``Segmenter.load(engine=)``).

``load_with_engine(path, device, engine)`` returns the same ``LoadedModel`` whatever the engine, so
whole-image, sliding-window and multi-scale/flip inference (engine/inference.py, engine/masks.py) run
unchanged on it; ``LoadedModel.engine`` says which engine runs it.

* ``torch``: ``load_model`` (checkpoints, weights, safetensors, and with ``trust_code`` TorchScript/pt2
  programs). An ONNX file is not a PyTorch program: one line says to use onnxruntime or openvino.
* ``onnxruntime``: an ONNX file as is; a checkpoint-like file is exported once to ONNX (``export_model``:
  opset 18, dynamic batch/height/width) into ``<cache>/engines/`` and that file is run. The cached
  name is the source file's sha256, the encnet version and the opset, so a changed file, another
  encnet or another opset exports anew, and an unchanged one never does. It is written atomically.
* ``openvino``: weights/openvino.py ``load_openvino`` on an OpenVINO IR (.xml) or ONNX file; a
  checkpoint-like file goes through the same cached ONNX export first.
* ``auto``: ``auto_engine``'s rule, written down from benchmarks/engines_cpu.py's measurements
  (docs/export.md "Engines"), not a benchmark at run time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

import torch

from encnet_core.choices import ENGINE_EXTRAS, ENGINES
from encnet_core.engine.device import is_cuda
from encnet_core.errors import ConfigError
from encnet_core.fetch.download import default_cache_dir
from encnet_core.version import __version__
from encnet_core.weights.model_files import LoadedModel, load_model, load_onnx, model_format, model_path

__all__ = ["ENGINES", "installed_engines", "auto_engine", "load_with_engine", "onnx_cache_path", "cached_onnx", "missing_engine"]

_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "openvino": ("openvino",)}
_GRAPH_FORMATS = ("onnx", "openvino")  # files only a graph engine runs (model_format's "onnx"; an OpenVINO IR .xml)


def installed_engines() -> dict[str, str | None]:
    """Each engine (torch, onnxruntime, openvino) -> its installed version, or None when it is not installed.

    Read from the installed distributions, without importing the engines."""
    found: dict[str, str | None] = {"torch": torch.__version__}
    for engine, names in _DISTRIBUTIONS.items():
        version = None
        if importlib.util.find_spec(engine) is not None:
            for name in names:
                try:
                    version = importlib.metadata.version(name)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
            version = version or "unknown version"
        found[engine] = version
    return found


def missing_engine(engine: str) -> str:
    """The one line for an engine that is not installed: what to install."""
    return f"the {engine} engine is not installed: pip install 'encnet[{ENGINE_EXTRAS[engine]}]'"


def auto_engine(model_format: str, device: torch.device, installed: dict[str, str | None] | None = None) -> str:
    """The engine ``--engine auto`` picks for a file of ``model_format`` (``model_files.model_format``'s
    answer, or "openvino" for an IR .xml) on ``device``:

    * an ONNX file: onnxruntime (on CUDA its CUDA provider); OpenVINO when onnxruntime is missing and
      OpenVINO is installed, on the CPU; an IR file: openvino;
    * a checkpoint, weights, safetensors, TorchScript or pt2 file: torch. On CUDA eager PyTorch is what
      the model was trained with. On the CPU, benchmarks/engines_cpu.py measured onnxruntime on the
      exported file faster than eager fp32 PyTorch at 480 x 480, but within the noise of channels-last
      PyTorch (0.87x to 1.29x as fast on encnet_resnet50s; docs/export.md "Engines"); torch stays the pick there
      because only eager PyTorch resizes the logits of large images in parts (``run_lowres``: a graph
      returns full-size logits of every class) and it needs no export. ``--engine onnxruntime`` asks
      for the export.
    """
    installed = installed_engines() if installed is None else installed
    if model_format == "openvino":
        return "openvino"
    if model_format == "onnx":
        if installed.get("onnxruntime") is None and installed.get("openvino") is not None and not is_cuda(device):
            return "openvino"
        return "onnxruntime"
    return "torch"


def onnx_cache_path(path: Path) -> Path:
    """Where the ONNX export of ``path`` is cached: ``<cache>/engines/<sha256 of the file>-encnet<version>-opset<N>.onnx``
    (``<cache>``: ``$ENCNET_CACHE``, else ``$XDG_CACHE_HOME/encnet``, else ``~/.cache/encnet``)."""
    from encnet_core.weights.export import ONNX_OPSET

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return default_cache_dir() / "engines" / f"{digest.hexdigest()}-encnet{__version__}-opset{ONNX_OPSET}.onnx"


def cached_onnx(path: Path, trust_code: bool = False) -> Path:
    """The ONNX export of the checkpoint-like file ``path``: exported on first use (verified against
    PyTorch, written atomically), then reused as long as the file, encnet and the opset are unchanged."""
    from encnet_core.weights.export import export_model

    target = onnx_cache_path(path)
    if not target.is_file():
        export_model(path, target, "onnx", overwrite=True, trust_code=trust_code)
    return target


def _file_format(path: Path) -> str:
    """``model_format``, with an OpenVINO IR (.xml beside its .bin) as "openvino"."""
    if path.suffix.lower() == ".xml" and path.is_file():
        return "openvino"
    return model_format(path)


def load_with_engine(
    path: Path | str, device: torch.device, engine: str = "auto", trust_code: bool = False, *, amp: str = "off", compile: bool = False
) -> LoadedModel:
    """Load ``path`` (a model file or a zoo name) for inference on ``device`` with ``engine`` (``ENGINES``).

    ``amp`` and ``compile`` are eager PyTorch's (``load_model``): with them, auto picks torch for a
    checkpoint-like file, and an engine asked for by name (onnxruntime, openvino) refuses them; auto on an
    ONNX file ignores them, as ``load_model`` always did. The one exception: ``--engine openvino --amp
    bf16`` compiles with OpenVINO's bfloat16 inference precision (measured 2.2x eager fp32 on this CPU,
    docs/export.md); OpenVINO emulates bf16 on a CPU without it, slowly.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    path = model_path(path)
    fmt = _file_format(path)
    named = engine != "auto"
    if engine == "auto":
        engine = "torch" if fmt not in _GRAPH_FORMATS and (amp != "off" or compile) else auto_engine(fmt, device)
    if engine == "torch":
        if fmt in _GRAPH_FORMATS:
            what = "an ONNX file runs with onnxruntime or openvino" if fmt == "onnx" else "an OpenVINO IR runs with openvino"
            raise ConfigError(f"{path} is not a PyTorch model: {what} (--engine auto picks one)")
        return load_model(path, device, amp, trust_code=trust_code, compile=compile)
    openvino_bf16 = engine == "openvino" and amp == "bf16" and not compile
    if named and (amp != "off" or compile) and not openvino_bf16:
        raise ConfigError(
            f"--amp and --compile apply to the torch engine, not {engine} (openvino takes --amp bf16 only); "
            "drop them or use --engine torch"
        )
    if engine == "onnxruntime":
        if fmt == "openvino":
            raise ConfigError(f"{path} is an OpenVINO IR model: it runs with --engine openvino")
        if installed_engines()["onnxruntime"] is None:
            raise ConfigError(missing_engine("onnxruntime"))
        loaded = load_onnx(path if fmt == "onnx" else cached_onnx(path, trust_code), device)
    else:
        try:
            from encnet_core.weights import openvino as ov_loader
        except ImportError:
            raise ConfigError(missing_engine("openvino")) from None
        if fmt not in _GRAPH_FORMATS and installed_engines()["openvino"] is None:
            raise ConfigError(missing_engine("openvino"))  # before the export, not after it
        source = path if fmt in _GRAPH_FORMATS else cached_onnx(path, trust_code)
        loaded = ov_loader.load_openvino(source, device, precision="bf16" if openvino_bf16 else "fp32")
    if fmt not in _GRAPH_FORMATS:
        loaded.source = fmt  # what the user gave, not the cached export
    loaded.engine = engine
    return loaded
