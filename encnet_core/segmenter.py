"""The Python API: ``Segmenter.load(model).seg(image)``, the library call behind ``encnet predict``
without the files.

    from encnet_core import Segmenter

    seg = Segmenter.load("encnet_resnet50s_pcontext")  # a zoo name, a checkpoint or an export
    result = seg("street.jpg")  # a Segmentation: labels (H, W), classes, pixel_share, se_classes, ...

Inputs (one, or a list: same-size images run as one batch in whole-image mode):

* a path (``str`` or ``pathlib.Path``), read as ``encnet predict`` reads files (EXIF orientation,
  16-bit grayscale scaled to 8 bits, any PIL mode converted to RGB);
* a PIL image (converted to RGB; EXIF orientation applied);
* a numpy array (H, W, 3) uint8 RGB, or (H, W) uint8 grayscale;
* a torch tensor (3, H, W): uint8 0..255, or floating point 0..1 (kept at full precision).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from encnet_core.engine.device import resolve_device
from encnet_core.engine.engines import load_with_engine
from encnet_core.engine.images import load_rgb, read_error_reason
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.errors import ConfigError
from encnet_core.tasks import facts
from encnet_core.weights import zoo
from encnet_core.weights.model_files import LoadedModel

__all__ = ["Segmenter", "Segmentation", "ImageInput"]

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Segmentation:
    """The result of segmenting one image."""

    labels: np.ndarray  # (H, W) class index per pixel: uint8 (int64 for models with over 256 classes)
    classes: list[str]  # the model's class names; labels index into it
    pixel_share: np.ndarray  # (C,) float: fraction of the image's pixels labelled with each class (sums to 1)
    mean_probability: np.ndarray | None  # (C,) float: softmax probability averaged over pixels (merge "prob" only)
    se_probability: np.ndarray | None  # (C,) float: SE head's sigmoid per class (None: model without the SE head)
    se_classes: list[str]  # classes whose SE probability is at least the threshold, most probable first
    palette: np.ndarray  # (C, 3) uint8 colour per class

    def classes_by_pixels(self, min_share: float = 0.001) -> list[tuple[str, float]]:
        """(class, pixel share) for classes covering at least ``min_share`` of the image, largest first."""
        order = np.argsort(-self.pixel_share, kind="stable")
        return [(self.classes[c], float(self.pixel_share[c])) for c in order if self.pixel_share[c] >= min_share]

    def color(self) -> Image.Image:
        """The label map in the model's palette colours, as an RGB image."""
        return Image.fromarray(self.palette[self.labels])


class Segmenter:
    """A loaded model plus the inference options (``InferenceConfig``) it runs with."""

    def __init__(self, model: LoadedModel, inference: InferenceConfig | None = None, se_threshold: float = 0.5) -> None:
        if not facts(model.task).per_pixel:
            raise ConfigError(
                f"this {model.source} holds a {model.task} model: Segmenter segments; classify images with "
                "encnet_core.engine.classification.classify(load_model(...), images)"
            )
        if not 0.0 <= se_threshold <= 1.0:
            raise ConfigError(f"se_threshold must be between 0 and 1, got {se_threshold}")
        self.model = model
        inference = inference or InferenceConfig(crop_size=model.crop_size, base_size=model.base_size)
        if inference.pad_value == (0.0, 0.0, 0.0):  # as predict: pad with black, in the model's normalisation
            inference = replace(inference, pad_value=model.pad_value)
        self.inference = inference
        self.se_threshold = se_threshold

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        device: str = "auto",
        trust_code: bool = False,
        amp: str = "off",
        *,
        scales: Sequence[float] | None = None,
        slide: bool = False,
        flip: bool = False,
        merge: str = "prob",
        crop_size: int | None = None,
        base_size: int | None = None,
        stride_rate: float = 2 / 3,
        batch_size: int = 4,
        se_threshold: float = 0.5,
        mirror: str | None = None,
        engine: str = "auto",
        compile: bool = False,
    ) -> Segmenter:
        """Load a zoo name (``encnet weights list``; pulled on first use), a checkpoint or an export.

        ``device``: auto, cpu, cuda or cuda:N. ``trust_code``: allow TorchScript/pt2 files (programs).
        ``amp``: off, bf16 or fp16. The inference options mean what ``encnet predict``'s do; crop and
        base size default to the model's training sizes. ``batch_size``: images per pass in
        whole-image mode, views per pass otherwise. ``mirror``: base URL holding ``models/NAME-SHA.zip``,
        used instead of the reference's (and of ``$ENCNET_WEIGHTS_MIRROR``) when a zoo name is downloaded.
        ``engine``: auto, torch, onnxruntime or openvino (engine/engines.py; ``model.engine`` says which one runs).
        ``compile``: run eager PyTorch through ``torch.compile`` (torch engine only).
        """
        zoo.resolve(name_or_path, mirror=mirror, mirror_hint="pass mirror=URL")  # a zoo name not cached yet: pulled now
        model = load_with_engine(name_or_path, resolve_device(device), engine, trust_code, amp=amp, compile=compile)
        inference = InferenceConfig(
            scales=tuple(float(s) for s in scales) if scales is not None else None, slide=slide, flip=flip, merge=merge,
            crop_size=model.crop_size if crop_size is None else crop_size,
            base_size=model.base_size if base_size is None else base_size,
            stride_rate=stride_rate, batch_size=batch_size,
        )  # fmt: skip
        return cls(model, inference, se_threshold)

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def __call__(self, images: ImageInput | list[ImageInput]) -> Segmentation | list[Segmentation]:
        return self.seg(images)

    def seg(self, images: ImageInput | list[ImageInput]) -> Segmentation | list[Segmentation]:
        """Segment one image (returns a Segmentation) or a list (returns a list, in order)."""
        if isinstance(images, (list, tuple)):
            return self._seg_many([_as_chw(image) for image in images])
        return self._seg_many([_as_chw(images)])[0]

    def _seg_many(self, images: list[torch.Tensor]) -> list[Segmentation]:
        config = self.inference
        whole = config.scales is None and not config.slide and not config.flip
        results: list[Segmentation | None] = [None] * len(images)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[(tuple(image.shape), image.dtype) if whole else (i,)].append(i)
        for indices in groups.values():
            for begin in range(0, len(indices), config.batch_size):
                chunk = indices[begin : begin + config.batch_size]
                batch = self.model.normalize(torch.stack([images[i] for i in chunk]))  # (N, 3, H, W)
                if whole:
                    logits, se_logits = self.model.run(batch)
                    scores = logits.float().softmax(1) if config.merge == "prob" else logits.float()  # (N, C, H, W)
                else:
                    scores = torch.stack([infer(self.model.forward, img, self.model.num_classes, config) for img in batch])
                    se_logits = self.model.se_forward(batch) if self.model.has_se else None
                se_probs = torch.sigmoid(se_logits.float()).cpu().numpy() if se_logits is not None else None
                for j, i in enumerate(chunk):
                    results[i] = self._result(scores[j], None if se_probs is None else se_probs[j])
        return results  # type: ignore[return-value]

    def _result(self, scores: torch.Tensor, se_probs: np.ndarray | None) -> Segmentation:
        """A Segmentation from merged class scores (C, H, W) and the SE head's probabilities (C,)."""
        classes = self.classes
        dtype = torch.uint8 if len(classes) <= 256 else torch.int64
        labels = scores.argmax(0).to(dtype).cpu().numpy()  # (H, W)
        counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=len(classes))[: len(classes)]
        mean_prob = scores.mean((1, 2)).cpu().numpy() if self.inference.merge == "prob" else None
        se_classes = []
        if se_probs is not None:
            se_classes = [classes[c] for c in np.argsort(-se_probs, kind="stable") if se_probs[c] >= self.se_threshold]
        return Segmentation(
            labels=labels, classes=classes, pixel_share=counts / max(labels.size, 1), mean_probability=mean_prob,
            se_probability=se_probs, se_classes=se_classes, palette=self.model.palette,
        )  # fmt: skip


def _from_hwc(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) tensor (copied when read-only, as PIL's arrays are)."""
    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, copy=True, order="C")
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _as_chw(image: Any) -> torch.Tensor:
    """One input as a (3, H, W) tensor: uint8 0..255, or float32 0..255 for floating-point tensors."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"image not found: {path}")
        try:
            return _from_hwc(load_rgb(path))
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on bad files: one clear error
            raise ConfigError(f"cannot read image {path}: {read_error_reason(exc)}") from exc
    if isinstance(image, Image.Image):
        return _from_hwc(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ConfigError(f"a numpy image must be uint8 (H, W, 3) RGB or (H, W) grayscale, got {image.dtype} {image.shape}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return _from_hwc(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"a tensor image must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.cpu()
        if image.is_floating_point():
            return image.detach().cpu().float().clamp(0, 1) * 255  # normalize_image divides by 255
        raise ConfigError(f"a tensor image must be uint8 (0..255) or floating point (0..1), got {image.dtype}")
    raise ConfigError(f"cannot segment a {type(image).__name__}: give a path, PIL image, numpy array or tensor")
