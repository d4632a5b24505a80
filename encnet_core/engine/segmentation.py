"""Semantic segmentation: the segmentation task (``SegmentationTask``, engine/tasks.py's ``Task``) and
``encnet evaluate`` on a segmentation model.

* ``SegmentationTask``: the parts of a training run (EncNet with the head options, the reference's
  augmentation, the paper's loss, pixAcc/mIoU validation), ``evaluate`` (``evaluate_segmentation``) and
  ``predict`` (engine/masks.py: palette masks, overlays);
* ``evaluate_segmentation``: pixAcc, mIoU (two conventions), mean accuracy, fwIoU and per-class IoU at the
  labels' full resolution, single-scale, sliding or multi-scale (engine/inference.py);
* ``PROTOCOLS``: PyTorch-Encoding's evaluation per dataset (``protocol="reference"``): its scales,
  flip, ``MultiEvalModule``'s merge (``merge="reference"``), stride 2/3, black padding, the model's
  base/crop size, and its mIoU over all classes (``mIoU_all``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from encnet_core.config import TrainConfig
from encnet_core.data.dataset import BadSample, BadSampleError, CheckedSamples, HDF5SegmentationDataset
from encnet_core.data.hdf5 import DatasetInfo
from encnet_core.data.transforms import eval_transform, train_transform
from encnet_core.engine.device import autocast_context, pin_memory, resolve_device
from encnet_core.engine.distributed import DistInfo, all_reduce_sum, gather_lists
from encnet_core.engine.events import VAL_METRICS
from encnet_core.engine.images import PredictResult
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.engine.masks import predict_request
from encnet_core.engine.metrics import ConfusionMatrix, metrics_from_confusion
from encnet_core.engine.sampling import ShardSampler
from encnet_core.engine.workers import loader_workers
from encnet_core.errors import ConfigError, DataError
from encnet_core.models import MODELS, create_model, has_encoding_head
from encnet_core.palette import palette_png
from encnet_core.paths import atomic_write
from encnet_core.progress import ProgressCallback
from encnet_core.weights.builder import build_model
from encnet_core.weights.model_files import LoadedModel

__all__ = [
    "SegmentationTask",
    "evaluate_segmentation",
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
PROTOCOLS["cityscapes"] = ReferenceProtocol(
    "cityscapes",
    (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25),
    "PyTorch-Encoding experiments/segmentation/test.py line 157: "
    "scales = [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25] if args.dataset == 'citys' (test.py --dataset citys)",
)
"""The reference's protocol per prepared dataset (``DatasetInfo.dataset``): its test.py scales for every
dataset but Cityscapes (``citys``), and 0.75 .. 2.25 for Cityscapes."""
_DEFAULT_PROTOCOL = ReferenceProtocol("*", _SCALES, _TEST_PY)


def reference_protocol(dataset: str) -> ReferenceProtocol:
    """The reference's protocol for ``dataset``; test.py's scales for every dataset but Cityscapes for one it does not know."""
    return PROTOCOLS.get(dataset, _DEFAULT_PROTOCOL)


def protocol_inference(inference: InferenceConfig, protocol: ReferenceProtocol, model: LoadedModel) -> InferenceConfig:
    """``inference`` with all the protocol fixes replaced: scales, flip, merge, stride, the model's
    base/crop size, black padding, ``align_corners``; only ``batch_size`` is kept."""
    return replace(
        inference, scales=protocol.scales, slide=False, flip=protocol.flip, merge=protocol.merge,
        stride_rate=protocol.stride_rate, crop_size=model.crop_size, base_size=model.base_size,
        align_corners=True, pad_value=tuple(model.pad_value),
    )  # fmt: skip


def _synced_batchnorm(config: TrainConfig) -> bool:
    """Whether the run will use SyncBatchNorm across 2+ processes (torchrun on CUDA; see engine/train.py)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and resolve_device(config.device).type == "cuda"


class SegmentationTask:
    """EncNet segmentation: the paper's loss (CE + aux + SE), the reference's augmentation, pixAcc/mIoU."""

    name = "segmentation"
    val_metrics = VAL_METRICS

    def check(self, config: TrainConfig) -> None:
        # every setting applies (build_model refuses the head options an FCN or DeepLabV3 model lacks), but
        # DeepLabV3's image-pooling branch normalises a 1x1 map: BatchNorm needs 2+ images, or SyncBatchNorm
        # over 2+ processes (torchrun on CUDA), as in the reference and torchvision
        if MODELS.get(config.model, {}).get("head") == "deeplab" and config.batch_size < 2 and not _synced_batchnorm(config):
            raise ConfigError(
                f"{config.model} needs --batch-size 2 or more per process: the image-pooling branch of its ASPP head has "
                "one value per channel and image, and BatchNorm cannot normalise one (SyncBatchNorm under torchrun with "
                "2+ CUDA processes can)"
            )

    def build_model(self, config: TrainConfig, num_classes: int) -> nn.Module:
        if config.model not in MODELS:
            create_model(config.model, num_classes)  # raises the "unknown model" error
        overrides: dict[str, Any] = {"aux": config.aux, "output_stride": config.output_stride, "dropout": config.dropout}
        if has_encoding_head(config.model):
            overrides.update(se_loss=config.se_loss, lateral=config.lateral or None, num_codes=config.num_codes)
        elif config.lateral:
            raise ConfigError(f"--lateral does not apply to {config.model} (no EncHead)")
        # (se_loss: a model without EncHead has no SE head; the SE term of the loss is then 0 whatever --se-loss says)
        return build_model(config.model, num_classes, backbone_weights=config.backbone_weights, **overrides)

    def train_dataset(self, config: TrainConfig) -> HDF5SegmentationDataset:
        dataset = HDF5SegmentationDataset(
            Path(config.data),
            config.train_split,
            train_transform(config.base_size, config.crop_size, (config.scale_min, config.scale_max), config.mean, config.std),
            strict=not config.skip_bad,
        )
        if dataset.labelled_pixels() == 0:
            raise DataError(
                f"{config.data}: the {config.train_split} split has no labelled pixel (no masks, or only 255 by its "
                "class_pixels, which `encnet targets` recomputes): nothing to train on"
            )
        return dataset

    def val_dataset(self, config: TrainConfig) -> HDF5SegmentationDataset:
        dataset = HDF5SegmentationDataset(
            Path(config.data), config.val_split, eval_transform(config.crop_size, config.mean, config.std), strict=not config.skip_bad
        )
        if dataset.labelled_pixels() == 0:
            raise DataError(
                f"{config.data}: the {config.val_split} split has no labelled pixel (every mask pixel is 255 by "
                "its class_pixels); validate on another split or pass --val-split ''"
            )
        return dataset

    def criterion(self, config: TrainConfig) -> nn.Module:
        return SegmentationLoss(config.se_weight if config.se_loss else 0.0, config.aux_weight if config.aux else 0.0)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]:
        """Single-scale validation; confusion matrices are summed over ranks."""
        model.eval()
        confusion = ConfusionMatrix(num_classes, info.device)
        for images, masks in loader:
            images = images.to(info.device, non_blocking=True)
            with autocast_context(info.device, amp):
                logits = model(images)["out"]
            confusion.update(logits.argmax(1), masks)
        all_reduce_sum(confusion.matrix, info)
        if int(confusion.matrix.sum()) == 0:
            raise DataError("the validation images have no labelled pixel (every mask pixel is 255): nothing to score")
        metrics = confusion.compute()
        metrics["score"] = (metrics["pixAcc"] + metrics["mIoU"]) / 2
        return metrics

    def evaluate(
        self, model: LoadedModel, data: Path, options: Any, info: DistInfo, progress: ProgressCallback | None = None, *,
        dataset_info: DatasetInfo, model_name: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return evaluate_segmentation(model, data, options, info, progress, dataset_info=dataset_info, model_name=model_name)

    def predict(self, model: LoadedModel, inputs: list[Path], request: Any, progress: ProgressCallback | None = None) -> PredictResult:
        return predict_request(model, inputs, request, progress)


# ----------------------------------------------------------------------------- encnet evaluate


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


def evaluate_segmentation(
    model: LoadedModel,
    data: Path,
    options: Any,
    info: DistInfo,
    progress: ProgressCallback | None = None,
    *,
    dataset_info: DatasetInfo,
    model_name: str | None = None,
) -> dict[str, Any]:
    """pixAcc/mIoU of a segmentation model on a split already checked by ``evaluate_loaded``
    (``dataset_info``: the file's); this rank's share, confusion matrices summed over ranks."""
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


def _save_palette_png(prediction: torch.Tensor, palette: np.ndarray, path: Path) -> None:
    with atomic_write(path, fsync=False) as tmp:  # a prediction is cheap to make again: no fsync
        tmp.write_bytes(palette_png(prediction.to(torch.uint8).cpu().numpy(), palette))
