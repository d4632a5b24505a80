"""``encnet evaluate``: metrics of a model on a prepared split, at the labels' full resolution.

A classifier on a classification file is scored by ``classification.evaluate_classifier`` (top-1/top-5
error, per-class accuracy); a model and a file of different tasks are refused in one line.

``protocol="reference"`` evaluates as PyTorch-Encoding's ``experiments/segmentation/test.py --eval``
does (see ``PROTOCOLS``): its scales for the dataset, flip, ``MultiEvalModule``'s merge
(``merge="reference"``), stride 2/3, black padding, the model's base/crop size, and its mIoU over all
classes (``mIoU_all``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from encnet_core.data.dataset import BadSample, BadSampleError, CheckedSamples, HDF5SegmentationDataset
from encnet_core.data.hdf5 import read_info
from encnet_core.engine.classification import evaluate_classifier
from encnet_core.engine.device import pin_memory
from encnet_core.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    gather_lists,
    init_distributed,
    shutdown_distributed,
)
from encnet_core.engine.inference import InferenceConfig, InferenceRequest, infer
from encnet_core.engine.metrics import ConfusionMatrix, metrics_from_confusion
from encnet_core.engine.sampling import ShardSampler
from encnet_core.engine.tasks import check_task
from encnet_core.engine.workers import check_workers, loader_workers
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import palette_png
from encnet_core.paths import atomic_write, check_output_dir, check_output_file
from encnet_core.progress import ProgressCallback
from encnet_core.weights import zoo
from encnet_core.weights.model_files import LoadedModel, check_trusted, load_model

__all__ = [
    "EvaluateOptions",
    "run",
    "evaluate",
    "evaluate_loaded",
    "ReferenceProtocol",
    "PROTOCOLS",
    "PROTOCOL_NAMES",
    "reference_protocol",
    "protocol_inference",
]

PROTOCOL_NAMES = ("none", "reference")  # --protocol choices


@dataclass(frozen=True)
class ReferenceProtocol:
    """How PyTorch-Encoding evaluates one dataset (``experiments/segmentation/test.py --eval``).

    Read from the reference (commit ac748410; the same in 1.2.1): test.py builds
    ``MultiEvalModule(model, nclass, scales=scales)`` with ``scales`` as below and MultiEvalModule's
    defaults ``flip=True`` and ``stride_rate = 2/3`` (``encoding/models/sseg/base.py``); ``pad_image``
    pads with ``-mean/std`` (black); images are resized with ``align_corners=True``; base and crop size
    are the model's (``MultiEvalModule.__init__`` takes ``module.base_size/crop_size``: for the zoo
    models the builders' 520/480, ADE20K ResNet-101s 640/576, as test.py used them when the numbers
    were published, v0.5.0; since v1.0 test.py --model-zoo overwrites them with its --base-size/--crop-size,
    default 520/480); the metric is ``utils.SegmentationMetric``, whose mIoU is ``IoU.mean()`` over all
    classes (``metrics.py``).
    """

    dataset: str  # the prepared file's dataset name this applies to ("*": any other)
    scales: tuple[float, ...]  # test.py's `scales` for the dataset
    source: str  # where the scales were read
    flip: bool = True  # MultiEvalModule(flip=True): test.py keeps the default
    merge: str = "reference"  # MultiEvalModule.forward / module_inference
    stride_rate: float = 2 / 3  # MultiEvalModule.forward
    miou: str = "mIoU_all"  # get_pixacc_miou: IoU.mean() over all classes, an empty one counting 0


_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
_TEST_PY = "PyTorch-Encoding experiments/segmentation/test.py: scales for every dataset but 'citys'"
PROTOCOLS: dict[str, ReferenceProtocol] = {
    name: ReferenceProtocol(name, _SCALES, f"{_TEST_PY} (test.py --dataset {ref})")
    for name, ref in (("pcontext", "pcontext"), ("ade20k", "ade20k"), ("voc", "pascal_voc"), ("voc-aug", "pascal_aug"))
}
"""The reference's protocol per prepared dataset (``DatasetInfo.dataset``). Its only other case,
Cityscapes (``citys``: 0.75 .. 2.25), is a dataset encnet does not prepare."""
_DEFAULT_PROTOCOL = ReferenceProtocol("*", _SCALES, _TEST_PY)


def reference_protocol(dataset: str) -> ReferenceProtocol:
    """The reference's protocol for ``dataset``; test.py's non-Cityscapes one for a dataset it does not know."""
    return PROTOCOLS.get(dataset, _DEFAULT_PROTOCOL)


def protocol_inference(inference: InferenceConfig, protocol: ReferenceProtocol, model: LoadedModel) -> InferenceConfig:
    """``inference`` with all the protocol fixes replaced: scales, flip, merge, stride, the model's
    base/crop size, black padding, ``align_corners``; only ``batch_size`` is kept."""
    return replace(
        inference, scales=protocol.scales, slide=False, flip=protocol.flip, merge=protocol.merge,
        stride_rate=protocol.stride_rate, crop_size=model.crop_size, base_size=model.base_size,
        align_corners=True, pad_value=tuple(model.pad_value),
    )  # fmt: skip


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``encnet evaluate``."""

    split: str = "val"  # split of the dataset to evaluate
    inference: InferenceConfig = InferenceConfig()  # whole / sliding / multi-scale, flip, merge
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # autocast for the forward passes
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


def _image_and_mask(sample: tuple[Any, Any, tuple[BadSample, ...]]) -> tuple[Any, Any, tuple[BadSample, ...]]:
    image, mask, bad = sample
    if image is None:
        return None, None, bad
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor), bad


def _unsafe_name(name: str) -> str | None:
    """Why ``<name>.png`` could land outside the predictions folder (or not be created), or None."""
    if not name or "\x00" in name:
        return "it is empty or holds a NUL character"
    relative = f"{name}.png"
    for pure in (PurePosixPath(relative), PureWindowsPath(relative)):
        if pure.is_absolute() or pure.anchor or pure.drive:
            return "it is an absolute path or names a drive"
        if ".." in pure.parts:
            return "it has a '..' component"
    if any(len(part.encode()) > 255 for part in PurePosixPath(relative).parts):
        return "a path component is longer than 255 bytes"
    return None


def _prediction_paths(dataset: HDF5SegmentationDataset, count: int, folder: Path) -> list[Path]:
    """``folder/<name>.png`` for the first ``count`` samples; names that would leave ``folder`` are refused."""
    root = folder.resolve()
    paths = []
    for index, name in enumerate(dataset.names[:count]):
        why = _unsafe_name(name)
        path = folder / f"{name}.png"
        if why is None and not path.resolve().is_relative_to(root):
            why = "it leads outside the folder through a symbolic link"
        if why is not None:
            raise DataError(
                f"{dataset.path}: split {dataset.split!r} sample {index} is named {name!r}; --save-predictions "
                f"writes <folder>/<name>.png and refuses this name because {why}; evaluate without "
                "--save-predictions or fix the names"
            )
        paths.append(path)
    return paths


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
    A classifier goes to ``evaluate_classifier``.
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
    if model.task == "classification":
        return evaluate_classifier(model, data, options, info, progress, model_name=model_name)
    dataset = HDF5SegmentationDataset(data, options.split, strict=not options.skip_bad)
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    targets = _prediction_paths(dataset, count, options.save_predictions) if options.save_predictions else None
    sampler = ShardSampler(count, info)
    loader = DataLoader(
        CheckedSamples(dataset), batch_size=None, sampler=sampler, num_workers=loader_workers(options.workers, len(sampler)),
        collate_fn=_image_and_mask,
        pin_memory=pin_memory(info.device),
    )  # fmt: skip
    inference = options.inference
    protocol = reference_protocol(dataset_info.dataset) if options.protocol == "reference" else None
    if protocol is not None:
        inference = protocol_inference(inference, protocol, model)
    elif inference.pad_value == (0.0, 0.0, 0.0):
        inference = replace(inference, pad_value=model.pad_value)
    confusion = ConfusionMatrix(model.num_classes, info.device)
    if options.save_predictions is not None:
        options.save_predictions.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    skipped: list[BadSample] = []
    for done, (index, (image, mask, bad)) in enumerate(zip(sampler, loader, strict=True), start=1):
        if bad:  # returned as data by CheckedSamples, so that a DataLoader worker's problem is still one line
            if not options.skip_bad:
                raise BadSampleError(bad[0], data)
            skipped.extend(bad)
        else:
            scores = infer(model.forward, model.normalize(image), model.num_classes, inference)
            prediction = scores.argmax(0)  # (H, W)
            confusion.update(prediction, mask)
            if targets is not None:
                _save_palette_png(prediction, model.palette, targets[index])
        if progress is not None and info.is_main:
            progress(f"evaluating {options.split}", done * info.world_size, count, unit="items")
    all_reduce_sum(confusion.matrix, info)
    skipped = sorted(gather_lists(skipped, info), key=lambda sample: sample.index)  # every rank's
    if skipped and len(skipped) == count:
        raise DataError(f"{data}: all {count} images of split {options.split!r} are bad (skipped); there is nothing to score")
    if int(confusion.matrix.sum()) == 0:
        raise DataError(
            f"{data}: the {count - len(skipped)} evaluated images of split {options.split!r} have no labelled pixel "
            f"(every mask pixel is {dataset_info.ignore_index}, the ignore label); there is nothing to score"
        )
    metrics = metrics_from_confusion(confusion.matrix)
    seconds = time.perf_counter() - start
    result = {
        "dataset": str(data),
        "split": options.split,
        "images": count - len(skipped),
        "skipped": [sample.to_dict() for sample in skipped],
        "classes": model.classes,
        "headline": "mIoU over classes present in labels or predictions; mIoU_all counts absent classes as 0",
        "inference": {
            "scales": list(inference.scales) if inference.scales else None,
            "slide": inference.slide,
            "flip": inference.flip,
            "merge": inference.merge,
            "crop_size": inference.crop_size,
            "base_size": inference.base_size,
            "stride_rate": inference.stride_rate,
        },
        **metrics,
        "seconds": seconds,
        "confusion_matrix": confusion.matrix.cpu().tolist(),
    }
    if protocol is not None:
        result["protocol"] = {
            "name": "reference",
            "dataset": dataset_info.dataset,
            "known_dataset": dataset_info.dataset in PROTOCOLS,
            "source": protocol.source,
            "miou_convention": protocol.miou,
            "pixAcc": metrics["pixAcc"],
            "mIoU": metrics[protocol.miou],  # the reference's mIoU
            "published": None,  # filled by evaluate() when MODEL is a zoo name
        }
    if options.confusion is not None and info.is_main:
        from encnet_core.viz import write_confusion

        title = f"model {model_name or model.source}, data {data.name} split {options.split!r} ({result['images']} images)"
        write_confusion(confusion.matrix.cpu().numpy(), model.classes, options.confusion, title)
    return result


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
        model = load_model(model_path, info.device, options.amp, trust_code=options.trust_code)
        if request is not None:
            options = replace(options, inference=request.config(model.crop_size, model.base_size))
        result = evaluate_loaded(model, data, options, info, progress, model_name=Path(model_path).name)
        result["model"] = str(model_path)
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


def _save_palette_png(prediction: torch.Tensor, palette: np.ndarray, path: Path) -> None:
    with atomic_write(path, fsync=False) as tmp:  # a prediction is cheap to make again: no fsync
        tmp.write_bytes(palette_png(prediction.to(torch.uint8).cpu().numpy(), palette))
