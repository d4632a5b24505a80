"""Image classification: the classification task of a training run, and ``encnet evaluate``/``predict`` on a classifier.

A classifier maps a normalised (B, 3, H, W) image batch to (B, C) logits (models/cifar.py). This module
holds everything that differs from segmentation:

* ``ClassificationLoss``: cross-entropy on the logits (the reference's ``nn.CrossEntropyLoss()``);
* ``ClassCounts``: a (C, C) confusion matrix, top-k hits and the summed loss, accumulated on the
  device and summed over ranks; ``classification_metrics`` turns them into top-1/top-5 error,
  accuracy and per-class accuracy;
* ``ClassificationTask``: the parts of a training run (engine/tasks.py's ``Task``): model, datasets
  with the CIFAR augmentation (data/classification_transforms.py), loss, validation;
* ``evaluate_classifier``: ``encnet evaluate`` on a classification file;
* ``classify`` and ``predict_classes``: ``encnet predict`` with a classifier (classes and scores per
  image, predictions.json).

Top-5 is "the label is among the 5 highest logits"; with fewer than 5 classes it uses k = C (and its
error is 0). Images are scored at the model's crop size (``fit_transform``: resized and centre-cropped
when they are not already that size).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from encnet_core.config import TrainConfig
from encnet_core.data import classification_transforms as cls_transforms
from encnet_core.data.dataset import (
    BadSample,
    CheckedBatches,
    CheckedSamples,
    HDF5ClassificationDataset,
    collate_checked,
)
from encnet_core.engine.device import autocast_context, pin_memory
from encnet_core.engine.distributed import DistInfo, all_reduce_sum, gather_lists
from encnet_core.engine.events import CLASSIFICATION_VAL_METRICS
from encnet_core.engine.images import PredictResult, collect_inputs, load_rgb, read_error_reason
from encnet_core.engine.sampling import ShardSampler
from encnet_core.engine.workers import loader_workers
from encnet_core.errors import ConfigError, DataError
from encnet_core.models import create_model
from encnet_core.paths import atomic_write, check_output_dir
from encnet_core.progress import ProgressCallback
from encnet_core.weights.model_files import LoadedModel

log = logging.getLogger("encnet")

__all__ = [
    "TOP_K",
    "ClassificationLoss",
    "ClassCounts",
    "classification_metrics",
    "ClassificationTask",
    "evaluate_classifier",
    "check_whole_image",
    "classify",
    "ClassifyOptions",
    "predict_classes",
]

TOP_K = 5  # the k of the top-k error (k = C when a dataset has fewer classes)


class ClassificationLoss(nn.Module):
    """``forward(logits (B, C), labels (B,))`` -> ``(mean cross-entropy, {})``: the loop's ``(total, parts)`` contract
    with no further terms."""

    def forward(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return F.cross_entropy(logits.float(), labels.long()), {}


class ClassCounts:
    """Counts over scored images, on one device: confusion (C, C) int64 (rows: label, columns: top-1
    prediction), top-k hits and the summed cross-entropy. Labels outside 0..C-1 (255: unlabelled) are left out."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", k: int = TOP_K) -> None:
        self.num_classes, self.k = num_classes, min(k, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)  # top-k hits, summed loss

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch: ``logits`` (B, C), ``labels`` (B,) integer class indices."""
        C = self.num_classes
        labels = labels.to(self.confusion.device).reshape(-1).long()
        logits = logits.to(self.confusion.device).float()
        keep = (labels >= 0) & (labels < C)
        logits, labels = logits[keep], labels[keep]
        if labels.numel() == 0:
            return
        top1 = logits.argmax(1)  # (B,)
        self.confusion += torch.bincount(labels * C + top1, minlength=C * C).view(C, C)
        in_top_k = (logits.topk(self.k, dim=1).indices == labels[:, None]).any(1)  # (B,)
        self.totals[0] += in_top_k.sum()
        self.totals[1] += F.cross_entropy(logits, labels, reduction="sum").double()

    def all_reduce(self, info: DistInfo) -> None:
        all_reduce_sum(self.confusion, info)
        all_reduce_sum(self.totals, info)

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    def compute(self) -> dict[str, Any]:
        return classification_metrics(self.confusion, int(self.totals[0].item()), float(self.totals[1].item()), self.k)


def classification_metrics(confusion: Tensor, top_k_hits: int, loss_sum: float, k: int) -> dict[str, Any]:
    """Top-1/top-k error, accuracy, mean and per-class accuracy from the counts of ``ClassCounts``.

    ``score`` (what best.pt keeps the best of) is the top-1 accuracy. Per-class accuracy is None for a
    class without images.
    """
    m = confusion.double().cpu()
    per_class = m.sum(1)  # images per label
    images = int(per_class.sum().item())
    correct = m.diag()
    accuracy = correct.sum().item() / images if images else 0.0
    class_acc = [correct[c].item() / per_class[c].item() if per_class[c] > 0 else None for c in range(len(per_class))]
    present = [a for a in class_acc if a is not None]
    return {
        "top1_error": 1.0 - accuracy,
        "top5_error": 1.0 - top_k_hits / images if images else 1.0,
        "top5_k": k,
        "accuracy": accuracy,
        "mean_class_accuracy": sum(present) / len(present) if present else 0.0,
        "loss": loss_sum / images if images else 0.0,
        "score": accuracy,
        "images": images,
        "class_accuracy": class_acc,
        "class_images": [int(n) for n in per_class.tolist()],
    }


# ----------------------------------------------------------------------------- the training run's task


_REFUSED = (  # settings a classification run refuses when they differ from TrainConfig's defaults
    ("lateral", "--lateral"),
    ("output_stride", "--output-stride"),
    ("freeze_backbone", "--freeze-backbone"),
    ("backbone_weights", "--backbone-weights"),
)


class ClassificationTask:
    """The classification parts of a training run (engine/tasks.py's ``Task``).

    The segmentation-only settings se_loss, se_weight, aux, aux_weight, head_lr_mult, base_size and
    scale_min/scale_max are not used; lateral, output_stride, freeze_backbone and backbone_weights are
    refused when set.
    """

    name = "classification"
    val_metrics = CLASSIFICATION_VAL_METRICS

    def check(self, config: TrainConfig) -> None:
        defaults = TrainConfig()
        given = [flag for key, flag in _REFUSED if getattr(config, key) != getattr(defaults, key)]
        if given:
            raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to classification models ({config.model})")

    def build_model(self, config: TrainConfig, num_classes: int) -> nn.Module:
        return create_model(config.model, num_classes, num_codes=config.num_codes, dropout=config.dropout)

    def train_dataset(self, config: TrainConfig) -> HDF5ClassificationDataset:
        transform = cls_transforms.train_transform(config.crop_size, config.mean, config.std)
        dataset = HDF5ClassificationDataset(Path(config.data), config.train_split, transform, strict=not config.skip_bad)
        if not dataset.labelled:
            raise DataError(f"{config.data}: the {config.train_split} split has no labels: nothing to train on")
        return dataset

    def val_dataset(self, config: TrainConfig) -> HDF5ClassificationDataset:
        transform = cls_transforms.eval_transform(config.crop_size, config.mean, config.std)
        return HDF5ClassificationDataset(Path(config.data), config.val_split, transform, strict=not config.skip_bad)

    def criterion(self, config: TrainConfig) -> nn.Module:
        return ClassificationLoss()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, amp: str) -> dict[str, Any]:
        """Top-1/top-5 error and accuracy on the validation split; counts are summed over ranks."""
        model.eval()
        counts = ClassCounts(num_classes, info.device)
        for images, labels in loader:
            images = images.to(info.device, non_blocking=True)
            with autocast_context(info.device, amp):
                logits = model(images)
            counts.update(logits, labels)
        counts.all_reduce(info)
        if counts.images == 0:
            raise DataError("the validation split has no labelled image: nothing to score")
        return counts.compute()

    def evaluate(
        self, model: LoadedModel, data: Path, options: Any, info: DistInfo, progress: ProgressCallback | None = None, *,
        dataset_info: Any, model_name: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return evaluate_classifier(model, data, options, info, progress, model_name=model_name)

    def predict(self, model: LoadedModel, inputs: list[Path], request: Any, progress: ProgressCallback | None = None) -> PredictResult:
        return predict_request(model, inputs, request, progress)


# ----------------------------------------------------------------------------- encnet evaluate


def check_whole_image(options: Any) -> None:
    """One `ConfigError` naming the ``EvaluateOptions`` of segmentation that a classifier cannot use."""
    inference = options.inference
    given = [
        flag
        for flag, used in (
            ("--scales", inference.scales is not None),
            ("--slide", inference.slide),
            ("--flip", inference.flip),
            ("--protocol reference", options.protocol != "none"),
            ("--save-predictions", options.save_predictions is not None),
        )
        if used
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a classification model "
            "(it scores each whole image once, at its training size); drop them"
        )


def evaluate_classifier(
    model: LoadedModel,
    data: Path,
    options: Any,
    info: DistInfo,
    progress: ProgressCallback | None = None,
    *,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 error, accuracy and per-class accuracy of a classifier on a split (``EvaluateOptions``).

    This rank's share of the images (``ShardSampler``), counts summed over ranks. ``options.inference``
    gives the batch size; a multi-scale, sliding or flip setting is refused (``check_whole_image``).
    """
    check_whole_image(options)  # the split, its labels and the class count were checked by ``evaluate.evaluate_loaded``
    dataset = HDF5ClassificationDataset(data, options.split, cls_transforms.fit_transform(model.crop_size), strict=not options.skip_bad)
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    sampler = ShardSampler(count, info)
    batches = CheckedBatches(
        DataLoader(CheckedSamples(dataset), batch_size=options.inference.batch_size, sampler=sampler,
                   num_workers=loader_workers(options.workers, len(sampler)),
                   collate_fn=collate_checked, pin_memory=pin_memory(info.device)),
        data, options.skip_bad,
    )  # fmt: skip
    counts = ClassCounts(model.num_classes, info.device)
    start, done = time.perf_counter(), 0
    for images, labels in batches:
        logits = model.forward(model.normalize(images))  # (B, C)
        counts.update(logits, labels)
        done = min(count, done + len(labels) * info.world_size)
        if progress is not None and info.is_main:
            progress(f"evaluating {options.split}", done, count, unit="items")
    counts.all_reduce(info)
    skipped: list[BadSample] = sorted(gather_lists(list(batches.skipped.values()), info), key=lambda sample: sample.index)
    if skipped and len(skipped) == count:
        raise DataError(f"{data}: all {count} images of split {options.split!r} are bad (skipped); there is nothing to score")
    metrics = counts.compute()
    result = {
        "task": "classification",
        "dataset": str(data),
        "split": options.split,
        "images": metrics.pop("images"),
        "skipped": [sample.to_dict() for sample in skipped],
        "classes": model.classes,
        **metrics,
        "seconds": time.perf_counter() - start,
        "confusion_matrix": counts.confusion.cpu().tolist(),
    }
    if options.confusion is not None and info.is_main:
        from encnet_core.viz import write_confusion

        title = f"model {model_name or model.source}, data {data.name} split {options.split!r} ({result['images']} images)"
        write_confusion(counts.confusion.cpu().numpy(), model.classes, options.confusion, title, unit="images")
    return result


# ----------------------------------------------------------------------------- encnet predict


def classify(model: LoadedModel, images: list[Tensor], top_k: int = 1, batch_size: int = 32) -> list[list[dict[str, Any]]]:
    """The ``top_k`` most probable classes of each (3, H, W) uint8 image: ``[{"class", "index", "score"}, ...]``
    per image, most probable first (``score``: softmax probability). Images are brought to the model's
    crop size as in evaluation (``fit_transform``)."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    k = min(top_k, model.num_classes)
    fit = cls_transforms.fit_transform(model.crop_size)
    out: list[list[dict[str, Any]]] = []
    for begin in range(0, len(images), batch_size):
        batch = torch.stack([fit(image) for image in images[begin : begin + batch_size]])  # (N, 3, crop, crop)
        probs = model.forward(model.normalize(batch)).float().softmax(1).cpu()  # (N, C)
        scores, indices = probs.topk(k, dim=1)
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True):
            out.append([{"class": model.classes[c], "index": int(c), "score": round(float(s), 5)}
                        for s, c in zip(row_scores, row_indices, strict=True)])  # fmt: skip
    return out


@dataclass(frozen=True)
class ClassifyOptions:
    """Options of ``encnet predict`` with a classification model."""

    output: Path  # output folder (predictions.json)
    top_k: int = 1  # classes reported per image, most probable first
    overwrite: bool = False  # replace an existing predictions.json
    batch_size: int = 4  # images per forward pass

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def predict_request(model: LoadedModel, inputs: list[Path], request: Any, progress: ProgressCallback | None = None) -> PredictResult:
    """``predict_classes`` with the classifier's options of ``request`` (engine/predict.py's ``PredictRequest``)."""
    options = ClassifyOptions(output=request.output, top_k=request.top_k, overwrite=request.overwrite, batch_size=request.batch_size)
    return predict_classes(model, inputs, options, progress=progress)


def predict_classes(
    model: LoadedModel, inputs: list[Path], options: ClassifyOptions, progress: ProgressCallback | None = None
) -> PredictResult:
    """Classify every image file (folders searched recursively) and write ``predictions.json``; an
    unreadable file is recorded in ``failed`` and the rest go on."""
    check_output_dir(options.output, "--output")
    files = collect_inputs(inputs, options.output)
    target = options.output / "predictions.json"
    if target.exists() and not options.overwrite:
        raise ConfigError(f"{target} exists already; pass --overwrite to replace it")
    options.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = PredictResult(written=0)
    for begin in range(0, len(files), options.batch_size):
        loaded: list[tuple[Path, str, Tensor]] = []
        for path, stem in files[begin : begin + options.batch_size]:
            try:
                loaded.append((path, stem, torch.from_numpy(np.array(load_rgb(path), copy=True, order="C")).permute(2, 0, 1)))
            except Exception as exc:  # noqa: BLE001 - PIL raises many types on crafted files; skip the file, go on
                result.failed.append({"file": str(path), "reason": read_error_reason(exc)})
        if loaded:
            tops = classify(model, [image for _, _, image in loaded], options.top_k, options.batch_size)
            for (path, stem, image), top in zip(loaded, tops, strict=True):
                result.predictions[stem] = {"file": str(path), "size": [int(image.shape[1]), int(image.shape[2])], "top": top}
                result.written += 1
        if progress:
            progress("classifying", min(begin + options.batch_size, len(files)), len(files), unit="items")
    with atomic_write(target) as tmp:
        tmp.write_text(json.dumps({
            "task": "classification", "classes": model.classes, "top_k": options.top_k, "images": result.predictions,
            "failed": result.failed}, indent=2) + "\n")  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result
