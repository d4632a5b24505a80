"""A finished training run closes its HDF5 handles: the same process can then open the file for writing
(`encnet targets`, `recompute_targets`), which h5py refuses while a read handle of the process is open."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

from helpers import make_synthetic, train_tiny

from encnet_core.data.dataset import HDF5SegmentationDataset
from encnet_core.data.prepare import recompute_targets


def test_targets_can_rewrite_the_file_right_after_training(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path, 4, 2, size=40)
    train_tiny(data, tmp_path)
    gc.disable()  # no collection may close a leaked handle for us
    try:
        with warnings.catch_warnings():  # isinstance on every live object touches torch's deprecated aliases
            warnings.simplefilter("ignore", FutureWarning)
            still_open = [o for o in gc.get_objects() if isinstance(o, HDF5SegmentationDataset) and o._handle is not None]
        assert still_open == []
        assert recompute_targets(data, min_pixels=2) == {"train": 4, "val": 2}
    finally:
        gc.enable()
