"""A finished training run closes its HDF5 handles: the same process can then open the file for writing
(`encnet targets`, `recompute_targets`), which h5py refuses while a read handle of the process is open."""

from __future__ import annotations

import gc
from pathlib import Path

from helpers import make_synthetic, train_tiny

from encnet_core.data.dataset import HDF5SegmentationDataset
from encnet_core.data.prepare import recompute_targets


def test_targets_can_rewrite_the_file_right_after_training(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path, 4, 2, size=40)
    train_tiny(data, tmp_path)
    gc.disable()  # no collection may close a leaked handle for us
    try:
        still_open = [obj for obj in gc.get_objects() if isinstance(obj, HDF5SegmentationDataset) and obj._handle is not None]
        assert still_open == []
        assert recompute_targets(data, min_pixels=2) == {"train": 4, "val": 2}
    finally:
        gc.enable()
