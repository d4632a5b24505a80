"""The torch Dataset over one split of a prepared encnet HDF5 file (the format is defined in hdf5.py).

Images are decoded with torchvision.io from the bytes stored in the file and masks from their PNG,
then wrapped as ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that a ``transforms.v2`` pipeline
(transforms.py) moves both together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, decode_png

from encnet_core.data.hdf5 import open_h5, read_info
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import IGNORE_INDEX

__all__ = ["HDF5SegmentationDataset", "read_image_and_mask"]

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[Any, Any]]


def _missing_split(path: Path, split: str, available: list[str]) -> DataError:
    return DataError(
        f"{path} has no split {split!r}; available splits: {', '.join(sorted(available)) or 'none'}"
    )


def _decode_image(data: np.ndarray) -> torch.Tensor:
    """(3, H, W) uint8 RGB image from the encoded file bytes (JPEG, PNG, ...)."""
    return decode_image(torch.from_numpy(data), mode=ImageReadMode.RGB)


def _decode_mask(data: np.ndarray) -> torch.Tensor:
    """(H, W) int64 label map from the PNG written by ``hdf5.encode_mask``."""
    return decode_png(torch.from_numpy(data), mode=ImageReadMode.UNCHANGED)[0].to(torch.int64)


def _read(images: h5py.Dataset, masks: h5py.Dataset | None, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded image (3, H, W) uint8 and mask (H, W) int64; all IGNORE_INDEX without masks (unlabelled)."""
    image = _decode_image(images[index])
    if masks is not None:
        mask = _decode_mask(masks[index])
    else:
        mask = torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.int64)
    return image, mask


class HDF5SegmentationDataset(Dataset):
    """The images and masks of one split, as ``(image, mask)`` after the optional paired ``transform``.

    Without a transform, ``image`` is a ``tv_tensors.Image`` (3, H, W) uint8 and ``mask`` a
    ``tv_tensors.Mask`` (H, W) int64 holding class indices and IGNORE_INDEX (255); an unlabelled
    split gives a mask of 255 only.

    The HDF5 file is opened lazily by the first ``__getitem__`` of each process and reopened when
    the process id changes, so the dataset works in DataLoader workers (fork or spawn); the open
    handle is not pickled.
    """

    def __init__(self, path: Path, split: str, transform: Transform | None = None) -> None:
        self.path = Path(path)
        self.split = split
        self.transform = transform
        info = read_info(self.path)
        if split not in info.splits:
            raise _missing_split(self.path, split, list(info.splits))
        self.classes: list[str] = info.classes
        self.palette: np.ndarray = info.palette  # (C, 3) uint8
        self.labelled: bool = info.labelled[split]
        self._length = info.splits[split]
        with open_h5(self.path) as handle:
            self.names: list[str] = list(handle[split]["names"].asstr()[:])
        self._handle: h5py.File | None = None
        self._arrays: tuple[h5py.Dataset, h5py.Dataset | None] | None = None  # images, masks in _handle
        self._pid: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} images")
        image, mask = _read(*self._split_arrays(), int(index) % self._length)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def _split_arrays(self) -> tuple[h5py.Dataset, h5py.Dataset | None]:
        """The split's ``images`` and ``masks`` (None if unlabelled) in this process's own handle.

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

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_arrays"] = None
        state["_pid"] = None
        return state

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
            present = torch.from_numpy(handle[self.split]["se_targets"][:].astype(bool))  # (N, C)
        frequency = present.double().mean(dim=0)  # (C,) image frequency of each class
        rarity = torch.where(frequency > 0, frequency, 1.0).reciprocal().pow(power)  # (C,)
        weights = torch.where(present, rarity, 1.0).amax(dim=1)  # (N,)
        return weights / weights.sum()


def read_image_and_mask(path: Path, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` at full resolution: (H, W, 3) uint8 RGB and (H, W) uint8 labels."""
    with open_h5(path) as handle:
        if split not in handle:
            raise _missing_split(Path(path), split, list(handle))
        group = handle[split]
        image, mask = _read(group["images"], group.get("masks"), index)
    return image.permute(1, 2, 0).numpy(), mask.to(torch.uint8).numpy()
