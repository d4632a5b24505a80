"""``encnet evaluate``: metrics of a model on a prepared split, at the labels' full resolution.

``evaluate_loaded`` checks what every task shares (the model's task fits the file's, the split exists
and is labelled, the class counts agree) and hands the rest to the model's task (engine/tasks.py's

``task_for(model.task).evaluate``): segmentation.py's ``evaluate_segmentation`` (pixAcc/mIoU; its
``protocol="reference"`` evaluates as PyTorch-Encoding's ``experiments/segmentation/test.py --eval``,
``segmentation.PROTOCOLS``), or classification.py's ``evaluate_classifier`` (top-1/top-5 error,
per-class accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from encnet_core.data.hdf5 import read_info
from encnet_core.engine.distributed import DistInfo, init_distributed, shutdown_distributed
from encnet_core.engine.engines import load_with_engine
from encnet_core.engine.inference import InferenceConfig, InferenceRequest
from encnet_core.engine.segmentation import PROTOCOL_NAMES
from encnet_core.engine.tasks import check_task, task_for
from encnet_core.engine.workers import check_workers
from encnet_core.errors import ConfigError, DataError
from encnet_core.paths import check_output_dir, check_output_file
from encnet_core.progress import ProgressCallback
from encnet_core.weights import zoo
from encnet_core.weights.model_files import LoadedModel, check_trusted

__all__ = ["EvaluateOptions", "run", "evaluate", "evaluate_loaded", "check_evaluate_outputs"]


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``encnet evaluate``."""

    split: str = "val"  # split of the dataset to evaluate
    inference: InferenceConfig = InferenceConfig()  # whole / sliding / multi-scale, flip, merge
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # autocast for the forward passes
    engine: str = "auto"  # auto | torch | onnxruntime | openvino (engine/engines.py)
    compile: bool = False  # torch.compile the eager model (torch engine)
    workers: int | str = "auto"  # DataLoader workers decoding images: "auto" or a number (engine/workers.py)
    save_predictions: Path | None = None  # folder for palette PNGs named after the images
    confusion: Path | None = None  # PNG of the row-normalised confusion matrix
    limit: int | None = None  # evaluate only the first N images (quick checks)
    skip_bad: bool = False  # skip (and list) samples that do not decode or break the format, instead of stopping
    trust_code: bool = False  # open TorchScript/pt2 models (programs: loading runs code from the file)
    protocol: str = "none"  # "reference": PyTorch-Encoding's test.py protocol for the data's dataset (replaces `inference` but its batch size)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_NAMES:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOL_NAMES)}, got {self.protocol!r}")
        check_workers(self.workers)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")


def evaluate_loaded(
    model: LoadedModel,
    data: Path,
    options: EvaluateOptions,
    info: DistInfo,
    progress: ProgressCallback | None = None,
    *,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate an already loaded model; this rank's share, confusion matrices summed over ranks.

    ``model_name`` names the model in the --confusion picture's title and in errors (default: its format).
    The scoring is the model's task's (``task_for(model.task).evaluate``).
    """
    if options.limit is not None and options.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {options.limit}")
    dataset_info = read_info(data, allow_truncated=options.skip_bad)
    check_task(model.task, dataset_info.task, data, model_name or f"the {model.source}")
    if options.split not in dataset_info.splits:
        raise DataError(f"{data} has no split {options.split!r}; it has {', '.join(dataset_info.splits) or 'no splits'}")
    if not dataset_info.labelled[options.split]:
        raise DataError(f"split {options.split!r} of {data} has no labels to evaluate against")
    if dataset_info.num_classes != model.num_classes:
        raise ConfigError(
            f"the model predicts {model.num_classes} classes but {data} has {dataset_info.num_classes}; "
            "evaluate on the dataset the model was trained for"
        )
    if list(dataset_info.classes) != list(model.classes):
        import logging

        logging.getLogger("encnet").warning("class names of the model and the dataset differ; comparing by index")
    return task_for(model.task).evaluate(model, data, options, info, progress, dataset_info=dataset_info, model_name=model_name)


def run(
    model: Path,
    data: Path,
    options: EvaluateOptions,
    request: InferenceRequest,
    progress: ProgressCallback | None = None,
    *,
    mirror: str | None = None,
) -> dict[str, Any]:
    """``encnet evaluate``: MODEL as the user gave it (a model file, or a zoo name, pulled now from ``mirror``
    when not cached), refused before any work if it is a program and ``options.trust_code`` is off, then
    ``evaluate`` with ``request``'s inference settings, crop and base size defaulting to the model's."""
    zoo.resolve(model, mirror=mirror, mirror_hint=zoo.MIRROR_HINT)  # a zoo name not cached yet: pulled now
    check_trusted(model, options.trust_code)
    return evaluate(model, data, options, progress, request=request)


def evaluate(
    model_path: Path,
    data: Path,
    options: EvaluateOptions,
    progress: ProgressCallback | None = None,
    *,
    request: InferenceRequest | None = None,
) -> dict[str, Any]:
    """Load ``model_path`` (checkpoint or export) and evaluate it on ``data``; torchrun-aware.

    ``request``, when given, replaces ``options.inference``: checked once the model is loaded, with the
    model's own crop and base size for those not given (the file is read once).
    """
    check_evaluate_outputs(options)
    info = init_distributed(options.device)
    try:
        model = load_with_engine(model_path, info.device, options.engine, options.trust_code, amp=options.amp, compile=options.compile)
        if request is not None:
            options = replace(options, inference=request.config(model.crop_size, model.base_size))
        result = evaluate_loaded(model, data, options, info, progress, model_name=Path(model_path).name)
        result["model"] = str(model_path)
        result["engine"] = model.engine  # what ran it (engine/engines.py): torch, onnxruntime or openvino
        if "protocol" in result:
            result["protocol"]["published"] = _published(model_path)
        return result
    finally:
        shutdown_distributed(info)


def _published(model: Path | str) -> dict[str, Any] | None:
    """The reference's published numbers when ``model`` names a zoo model (a file that exists wins, as in zoo.resolve)."""
    return None if Path(model).exists() else zoo.published(str(model))


def check_evaluate_outputs(options: EvaluateOptions) -> None:
    """Fail before any work when --confusion or --save-predictions cannot be written."""
    if options.confusion is not None:
        check_output_file(options.confusion, "--confusion")
    if options.save_predictions is not None:
        check_output_dir(options.save_predictions, "--save-predictions")
