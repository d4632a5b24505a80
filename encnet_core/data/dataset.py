"""The torch Datasets over one split of a prepared encnet HDF5 file (the format is defined in hdf5.py).

``HDF5SegmentationDataset`` reads a segmentation file, ``HDF5ClassificationDataset`` a classification
file (``DatasetInfo.task``; each refuses the other kind in one line); ``dataset_task`` says which a
file is and ``open_dataset`` opens a split with the right one.

Images are decoded with torchvision.io from the bytes stored in the file and masks from their PNG,
then wrapped as ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that a ``transforms.v2`` pipeline
(transforms.py) moves both together.

Every sample is checked as it is decoded (the image decodes, the mask is a single-channel 8-bit PNG
of the image's size with labels 0..C-1 or 255); a sample that fails raises ``BadSampleError`` naming
the split, index and name. ``CheckedSamples`` + ``collate_checked`` + ``CheckedBatches`` carry such
a sample out of DataLoader workers as data, so that the main process can stop with that one line or,
with ``--skip-bad``, skip the sample and list it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.hdf5 import (
    MaskError,
    decode_mask_tensor,
    decoder_message,
    invalid_label,
    open_h5,
    read_array,
    read_info,
    read_names,
)
from encnet_core.errors import ConfigError, DataError
from encnet_core.tasks import facts

__all__ = [
    "HDF5SegmentationDataset",
    "HDF5ClassificationDataset",
    "dataset_task",
    "open_dataset",
    "read_image_and_mask",
    "read_image_and_label",
    "BadSample",
    "BadSampleError",
    "CheckedSamples",
    "CheckedBatches",
    "collate_checked",
]

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[Any, Any]]
ImageTransform = Callable[[tv_tensors.Image], Any]


@dataclass(frozen=True)
class BadSample:
    """A sample that cannot be used, and why (plain data: it crosses from DataLoader workers)."""

    split: str
    index: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"split {self.split!r} sample {self.index} ({self.name!r}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BadSampleError(DataError):
    """A sample whose image or mask does not decode or breaks the format (see ``BadSample``)."""

    def __init__(self, sample: BadSample, path: Path | str = "") -> None:
        self.sample, self.path = sample, str(path)
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{sample}; fix the file, or pass --skip-bad to skip bad samples")

    def __reduce__(self) -> tuple[Any, ...]:
        return (BadSampleError, (self.sample, self.path))


class _Unusable(Exception):
    """Why the sample being decoded cannot be used (turned into a BadSampleError by the dataset)."""


def _missing_split(path: Path, split: str, available: list[str]) -> DataError:
    return DataError(
        f"{path} has no split {split!r}; available splits: {', '.join(sorted(available)) or 'none'}"
    )


def _wrong_task(path: Path, task: str, reader: str) -> DataError:
    """One line for a file of the other task: ``reader`` reads the other kind."""
    wanted, other = ("classification", "HDF5SegmentationDataset") if facts(task).per_pixel else ("segmentation", "HDF5ClassificationDataset")
    return DataError(f"{path} is a {task} dataset; {reader} reads {wanted} datasets (use {other}, or open_dataset)")


def _stored(array: h5py.Dataset, index: int, what: str) -> np.ndarray:
    """The stored bytes of ``what`` ("image", "mask") ``index``; ``_Unusable`` if HDF5 cannot read them
    (a damaged chunk: h5py raises OSError, e.g. "filter returned failure during read")."""
    try:
        return array[index]
    except (OSError, RuntimeError, ValueError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        raise _Unusable(f"the stored {what} cannot be read: the file is damaged there (HDF5: {detail})") from None


def _decode_image(images: h5py.Dataset, index: int) -> torch.Tensor:
    """Stored image ``index`` decoded to (3, H, W) uint8 RGB; ``_Unusable`` if it cannot be read or does not decode."""
    data = _stored(images, index, "image")
    try:
        return decode_image(torch.from_numpy(data), mode=ImageReadMode.RGB)  # (3, H, W) uint8
    except (RuntimeError, ValueError, OSError) as exc:
        raise _Unusable(f"the image does not decode ({decoder_message(exc)})") from None


def _read(
    images: h5py.Dataset, masks: h5py.Dataset | None, index: int, num_classes: int, check_labels: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded image (3, H, W) uint8 and mask (H, W) int64; all IGNORE_INDEX without masks (unlabelled).

    Raises ``_Unusable`` for an image that does not decode, a mask that ``decode_mask_tensor`` refuses
    or that is not of the image's size, or (with ``check_labels``) a label that ``invalid_label`` finds.
    """
    image = _decode_image(images, index)
    if masks is None:
        return image, torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.int64)
    try:
        labels = decode_mask_tensor(_stored(masks, index, "mask"))  # (H, W) uint8
    except MaskError as exc:
        if exc.detail is not None:
            raise _Unusable(f"the mask is not a readable PNG ({exc.detail})") from None
        raise _Unusable(
            f"the mask has {exc.channels} channel(s) of {exc.depth}; masks are single-channel 8-bit label maps"
        ) from None
    if labels.shape != image.shape[1:]:
        raise _Unusable(f"the mask is {labels.shape[0]}x{labels.shape[1]} but the image is {image.shape[1]}x{image.shape[2]}")
    bad = invalid_label(labels, num_classes) if check_labels else None
    if bad is not None:
        raise _Unusable(
            f"the mask has label {bad}, but the dataset has {num_classes} classes "
            f"(labels 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)"
        )
    return image, labels.to(torch.int64)


class _HDF5Split(Dataset):
    """What both readers share: one split of a checked file, its metadata, and a per-process handle.

    The HDF5 file is opened lazily by the first read of each process and reopened when the process id
    changes, so the datasets work in DataLoader workers (fork or spawn); the open handle is not pickled.
    """

    TASK = ""  # the task of the files the subclass reads

    def __init__(self, path: Path, split: str, transform: Any, strict: bool) -> None:
        self.path = Path(path)
        self.split = split
        self.transform = transform
        info = read_info(self.path, allow_truncated=not strict)
        if info.task != self.TASK:
            raise _wrong_task(self.path, info.task, type(self).__name__)
        if split not in info.splits:
            raise _missing_split(self.path, split, list(info.splits))
        self.classes: list[str] = info.classes
        self.palette: np.ndarray = info.palette  # (C, 3) uint8
        self.labelled: bool = info.labelled[split]
        self._length = info.splits[split]
        self._stored = info.stored[split]  # samples whose image (and mask) the file holds
        self.names: list[str] = read_names(self.path, split)
        self._handle: h5py.File | None = None
        self._arrays: tuple[h5py.Dataset, h5py.Dataset | None] | None = None  # images, masks in _handle
        self._pid: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self._length

    def _index(self, index: int) -> int:
        """``index`` as a position in 0..N-1 (negative counts from the end); IndexError outside the split."""
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} images")
        return int(index) % self._length

    def bad_sample(self, index: int, reason: str) -> BadSample:
        return BadSample(self.split, index, self.names[index], reason)

    def _split_arrays(self) -> tuple[h5py.Dataset, h5py.Dataset | None]:
        """The split's ``images`` and ``masks`` (None if absent) in this process's own handle.

        Opened on first use; the h5py objects are kept, since looking them up again for every sample
        costs more than reading the sample's bytes.
        """
        if self._arrays is None or self._pid != os.getpid():
            # A handle inherited through fork belongs to the parent: leave it alone, open our own.
            self._handle = open_h5(self.path)
            self._pid = os.getpid()
            group = self._handle[self.split]
            self._arrays = (group["images"], group.get("masks"))
        return self._arrays

    def close(self) -> None:
        """Close this process's handle (reopened on the next read). h5py refuses to open a file for writing
        (``encnet targets``) while a handle of the same process still reads it: a finished run closes its own."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._arrays, self._pid = None, None, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_arrays"] = None
        state["_pid"] = None
        return state


class HDF5SegmentationDataset(_HDF5Split):
    """The images and masks of one split, as ``(image, mask)`` after the optional paired ``transform``.

    Without a transform, ``image`` is a ``tv_tensors.Image`` (3, H, W) uint8 and ``mask`` a
    ``tv_tensors.Mask`` (H, W) int64 holding class indices and IGNORE_INDEX (255); an unlabelled
    split gives a mask of 255 only. A sample that cannot be used raises ``BadSampleError``.

    ``strict=False`` accepts a split whose ``images``/``masks`` arrays are shorter than its names (a
    truncated file): reading one of the missing samples then raises ``BadSampleError`` (for
    ``--skip-bad``) instead of the constructor refusing the file.

    The HDF5 file is opened lazily by the first ``__getitem__`` of each process and reopened when
    the process id changes, so the dataset works in DataLoader workers (fork or spawn); the open
    handle is not pickled.
    """

    TASK = "segmentation"

    def __init__(self, path: Path, split: str, transform: Transform | None = None, strict: bool = True) -> None:
        super().__init__(path, split, transform, strict)
        self._labels_checked: set[int] = set()  # samples whose labels passed (a file does not change: check once)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        index = self._index(index)
        try:
            if index >= self._stored:
                raise _Unusable(f"the file stores no image/mask for it (its arrays end after {self._stored} samples)")
            check = index not in self._labels_checked
            image, mask = _read(*self._split_arrays(), index, len(self.classes), check)
        except _Unusable as exc:
            raise BadSampleError(self.bad_sample(index, str(exc)), self.path) from None
        if check:
            self._labels_checked.add(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def labelled_pixels(self, count: int | None = None) -> int:
        """Labelled (not IGNORE_INDEX) pixels in the first ``count`` samples, from the stored ``class_pixels``."""
        if not self.labelled:
            return 0
        with open_h5(self.path) as handle:
            pixels = read_array(handle, self.path, self.split, "class_pixels", slice(self._length if count is None else count))
        return int(pixels.sum())

    def sample_weights(self, power: float = 1.0) -> torch.Tensor:
        """Per-image weights (N,) float64 summing to 1, for ``WeightedRandomSampler``: rare classes drawn more.

        With ``freq[c]`` the fraction of the split's images that contain class ``c`` (from
        ``se_targets``), image ``i`` weighs ``max over the classes c present in i of (1 / freq[c]) ** power``;
        an image with no class weighs 1, like one holding only a class present everywhere.
        ``power=0`` is uniform sampling; with ``power=1`` every class appears in a drawn image with
        probability at least ``N / sum(unnormalised weights)``, however rare it is.
        """
        if power < 0:
            raise ConfigError(f"sample weight power must be >= 0, got {power}")
        if not self.labelled:
            raise DataError(
                f"split {self.split!r} of {self.path} is unlabelled; class-balanced sampling needs masks"
            )
        with open_h5(self.path) as handle:
            present = torch.from_numpy(read_array(handle, self.path, self.split, "se_targets").astype(bool))  # (N, C)
        frequency = present.double().mean(dim=0)  # (C,) image frequency of each class
        rarity = torch.where(frequency > 0, frequency, 1.0).reciprocal().pow(power)  # (C,)
        weights = torch.where(present, rarity, 1.0).amax(dim=1)  # (N,)
        return weights / weights.sum()


class HDF5ClassificationDataset(_HDF5Split):
    """The images and class labels of one split of a classification file, as ``(image, label)``.

    ``image`` is a ``tv_tensors.Image`` (3, H, W) uint8, or ``transform(image)`` when a transform is
    given (it sees the image only); ``label`` is a 0-dim int64 tensor holding the class index, or
    IGNORE_INDEX (255) for every sample of an unlabelled split (one without ``labels``, as the
    segmentation reader's masks are then all 255). ``labels`` holds the labels of the whole split,
    (N,) int64, for class counts (``class_counts``) and samplers; ``read_info`` has checked that
    each is a class index.

    A sample whose image does not decode raises ``BadSampleError``, so ``CheckedSamples`` and
    ``--skip-bad`` work as for segmentation; ``strict=False`` accepts a truncated ``images`` array
    (reading a missing sample then raises ``BadSampleError``). The HDF5 file is opened lazily by the
    first ``__getitem__`` of each process and reopened when the process id changes; the open handle
    is not pickled. A segmentation file is refused with one `DataError`.
    """

    TASK = "classification"

    def __init__(self, path: Path, split: str, transform: ImageTransform | None = None, strict: bool = True) -> None:
        super().__init__(path, split, transform, strict)
        if self.labelled:
            with open_h5(self.path) as handle:
                self.labels = torch.from_numpy(read_array(handle, self.path, split, "labels").astype(np.int64))  # (N,)
        else:
            self.labels = torch.full((self._length,), IGNORE_INDEX, dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        index = self._index(index)
        try:
            if index >= self._stored:
                raise _Unusable(f"the file stores no image for it (its images end after {self._stored} samples)")
            image = tv_tensors.Image(_decode_image(self._split_arrays()[0], index))
        except _Unusable as exc:
            raise BadSampleError(self.bad_sample(index, str(exc)), self.path) from None
        label = self.labels[index].clone()  # 0-dim int64
        if self.transform is not None:
            return self.transform(image), label
        return image, label

    def class_counts(self) -> torch.Tensor:
        """(C,) int64: the split's images of each class (all zero for an unlabelled split)."""
        if not self.labelled:
            return torch.zeros(self.num_classes, dtype=torch.int64)
        return torch.bincount(self.labels, minlength=self.num_classes)


# ----------------------------------------------------------------------------- bad samples in DataLoaders

Checked = tuple[Any, Any, tuple[BadSample, ...]]  # (image, mask, ()) or (None, None, (bad, ...))


class CheckedSamples(Dataset):
    """``view[i]`` is ``(image, mask, ())``, or ``(None, None, (BadSample,))`` when sample ``i`` is bad.

    An exception raised in a DataLoader worker reaches the main process re-wrapped in a multi-line
    message; a bad sample returned as data lets ``CheckedBatches`` stop with its one line or skip it.
    A classification dataset works the same: ``(image, label, ())``.
    """

    def __init__(self, dataset: HDF5SegmentationDataset | HDF5ClassificationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Checked:
        try:
            image, mask = self.dataset[index]
        except BadSampleError as exc:
            return None, None, (exc.sample,)
        return image, mask, ()


def collate_checked(items: list[Checked]) -> tuple[Any, tuple[BadSample, ...], int]:
    """``(batch of the good items or None, bad samples, number of items without data)``."""
    good = [(image, mask) for image, mask, _ in items if image is not None]
    bad = tuple(sample for _, _, samples in items for sample in samples)
    return (default_collate(good) if good else None), bad, len(items) - len(good)


class CheckedBatches:
    """Iterates a DataLoader of ``collate_checked`` batches, yielding the good ``(images, masks)``.

    The first bad sample raises ``BadSampleError`` (one line naming split, index and name), or with
    ``skip_bad`` is recorded once in ``skipped`` and passed to ``on_skip``. ``require_complete``:
    a batch missing items (every sample of the split is bad) is an error instead of a short batch.
    """

    def __init__(
        self,
        loader: Iterable[tuple[Any, tuple[BadSample, ...], int]],
        path: Path,
        skip_bad: bool,
        require_complete: bool = False,
        on_skip: Callable[[BadSample], None] | None = None,
    ) -> None:
        self.loader, self.path, self.skip_bad = loader, Path(path), skip_bad
        self.require_complete, self.on_skip = require_complete, on_skip
        self.skipped: dict[tuple[str, int], BadSample] = {}

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for batch, bad, missing in self.loader:
            for sample in bad:
                if not self.skip_bad:
                    raise BadSampleError(sample, self.path)
                if (sample.split, sample.index) not in self.skipped:
                    self.skipped[(sample.split, sample.index)] = sample
                    if self.on_skip is not None:
                        self.on_skip(sample)
            if missing and self.require_complete:
                split = bad[0].split if bad else "?"
                raise DataError(f"{self.path}: every sample of split {split!r} is bad; there is nothing left to train on")
            if batch is not None:
                yield batch


def read_image_and_mask(path: Path, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` at full resolution: (H, W, 3) uint8 RGB and (H, W) uint8 labels."""
    info = read_info(path)
    if not facts(info.task).per_pixel:
        raise _wrong_task(Path(path), info.task, "read_image_and_mask")
    if split not in info.splits:
        raise _missing_split(Path(path), split, list(info.splits))
    with open_h5(path) as handle:
        group = handle[split]
        try:
            image, mask = _read(group["images"], group.get("masks"), index, info.num_classes)
        except _Unusable as exc:
            names = group["names"].asstr()
            raise BadSampleError(BadSample(split, index, names[index], str(exc)), path) from None
    return image.permute(1, 2, 0).numpy(), mask.to(torch.uint8).numpy()


def read_image_and_label(path: Path, split: str, index: int) -> tuple[np.ndarray, int | None]:
    """Image ``index`` of a classification file's ``split``: (H, W, 3) uint8 RGB and its class index
    (None in an unlabelled split)."""
    info = read_info(path)
    if facts(info.task).per_pixel:
        raise _wrong_task(Path(path), info.task, "read_image_and_label")
    if split not in info.splits:
        raise _missing_split(Path(path), split, list(info.splits))
    with open_h5(path) as handle:
        group = handle[split]
        try:
            image = _decode_image(group["images"], index)
        except _Unusable as exc:
            names = group["names"].asstr()
            raise BadSampleError(BadSample(split, index, names[index], str(exc)), path) from None
        label = int(group["labels"][index]) if "labels" in group else None
    return image.permute(1, 2, 0).numpy(), label


def dataset_task(path: Path) -> str:
    """``"segmentation"`` or ``"classification"``: what a prepared file holds (checked by ``read_info``;
    a truncated file is not refused here, the dataset decides)."""
    return read_info(path, allow_truncated=True).task


def open_dataset(
    path: Path, split: str, transform: Any = None, strict: bool = True
) -> HDF5SegmentationDataset | HDF5ClassificationDataset:
    """The split as the dataset of the file's task: ``HDF5SegmentationDataset`` (``transform(image, mask)``)
    or ``HDF5ClassificationDataset`` (``transform(image)``)."""
    dataset = HDF5SegmentationDataset if facts(dataset_task(path)).per_pixel else HDF5ClassificationDataset
    return dataset(path, split, transform, strict)
