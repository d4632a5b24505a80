"""Which samples each process sees, in which order, with which augmentation seed.

Training data is a pure function of (seed, epoch, position): ``EpochSampler`` deals each rank its
share of a seeded per-epoch permutation and ``SeededSamples`` seeds each sample's augmentation by
(seed, epoch, index), which is what makes an interrupted and resumed run equal one run in one go.
``ShardSampler`` splits evaluation data over ranks without padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Sampler

from encnet_core.data.dataset import BadSample, BadSampleError, HDF5SegmentationDataset

if TYPE_CHECKING:  # only for annotations: sampling needs no process group
    from encnet_core.engine.distributed import DistInfo

__all__ = ["EpochSampler", "SeededSamples", "ShardSampler"]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for this rank's share of a seeded per-epoch permutation.

    Rank r takes positions r, r + W, r + 2W, ... (as DistributedSampler), whole batches only;
    ``start_batch`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, size: int, batch_size: int, info: DistInfo, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world = info.rank, info.world_size
        self.batches_per_epoch = size // (batch_size * self.world)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        used = self.batches_per_epoch * self.batch_size * self.world
        mine = order[self.rank : used : self.world][self.start_batch * self.batch_size :]
        return iter([(self.epoch, int(i)) for i in mine])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededSamples(Dataset):
    """Wraps a dataset so that ``view[(epoch, index)]`` draws its augmentation from a fixed seed.

    Items are ``(image, mask, bad)`` for ``collate_checked``: a sample that raises ``BadSampleError``
    comes back in ``bad`` as data (a DataLoader worker would re-raise it wrapped in a traceback). With
    ``skip_bad`` the next good sample of the split takes its place, with the same seed, so batches keep
    their size and the data a step sees stays a pure function of (seed, epoch, position).
    """

    def __init__(self, dataset: HDF5SegmentationDataset, seed: int, skip_bad: bool = False) -> None:
        self.dataset, self.seed, self.skip_bad = dataset, seed, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any, tuple[BadSample, ...]]:
        epoch, index = key
        bad: list[BadSample] = []
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG (dropout) untouched
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63))
            for step in range(len(self.dataset)):  # a bad sample fails while decoding, before any random draw
                try:
                    image, mask = self.dataset[(index + step) % len(self.dataset)]
                    return image, mask, tuple(bad)
                except BadSampleError as exc:
                    bad.append(exc.sample)
                    if not self.skip_bad:
                        break
        return None, None, tuple(bad)


class ShardSampler(Sampler):
    """Indices rank, rank + W, ... without padding: every sample is seen exactly once over all ranks."""

    def __init__(self, size: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, size, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
