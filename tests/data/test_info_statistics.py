"""`encnet info`'s share of labelled pixels comes from the stored masks themselves (each PNG's size),
not from the ``sizes`` array: a file whose ``sizes`` lie still gets the right figure, and a mask that
is not a PNG is one line naming its sample. Every file is built here with known pixel counts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.hdf5 import HDF5Writer, Sample, class_pixel_counts, dataset_statistics, encode_mask
from encnet_core.errors import DataError

CLASSES = ["background", "road", "car"]
runner = CliRunner()


def _jpeg(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def known(tmp_path: Path) -> Path:
    """``val``: a 10 x 20 image with its first 3 rows ignored (140 of 200 pixels labelled) and a 16 x 16
    one labelled everywhere (256 of 256): 396 labelled of 456 pixels. ``test``: one unlabelled image."""
    path = tmp_path / "known.h5"
    first = np.ones((10, 20), np.uint8)
    first[:3] = 255
    second = np.full((16, 16), 2, np.uint8)
    with HDF5Writer(path, "handmade", CLASSES, np.zeros((3, 3), np.uint8)) as writer:
        writer.begin_split("val", 2, labelled=True)
        for name, labels in (("a", first), ("b", second)):
            height, width = labels.shape
            writer.add(Sample(name, _jpeg(height, width), height, width, encode_mask(labels), class_pixel_counts(labels, 3)))
        writer.begin_split("test", 1, labelled=False)
        writer.add(Sample("t", _jpeg(8, 8), 8, 8))
    return path


def _set_sizes(path: Path, sizes: list[tuple[int, int]]) -> None:
    with h5py.File(path, "r+") as handle:
        handle["val/sizes"][...] = np.array(sizes, np.int32)


def test_labelled_share_of_a_valid_file(known: Path) -> None:
    stats = dataset_statistics(known)
    assert stats["splits"]["val"]["labelled_pixel_fraction"] == 396 / 456
    assert "labelled_pixel_fraction" not in stats["splits"]["test"]  # unlabelled: no masks, no figure


@pytest.mark.parametrize("sizes", [[(40, 40), (40, 40)], [(1, 1), (2, 3)], [(20, 10), (16, 16)]])
def test_sizes_that_disagree_with_the_masks_do_not_change_the_share(known: Path, sizes: list[tuple[int, int]]) -> None:
    _set_sizes(known, sizes)  # bigger, smaller, or height/width swapped: all lies about the masks
    assert dataset_statistics(known)["splits"]["val"]["labelled_pixel_fraction"] == 396 / 456
    result = runner.invoke(app, ["info", str(known), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["splits"]["val"]["labelled_pixel_fraction"] == 396 / 456
    table = runner.invoke(app, ["info", str(known)])
    assert table.exit_code == 0 and "val: 2 images, 86.8% of pixels labelled" in table.stdout


def test_no_labelled_pixel_is_a_share_of_zero(known: Path) -> None:
    with h5py.File(known, "r+") as handle:
        handle["val/class_pixels"][...] = 0
    assert dataset_statistics(known)["splits"]["val"]["labelled_pixel_fraction"] == 0.0


def test_a_mask_that_is_not_a_png_is_one_line_naming_it(known: Path) -> None:
    with h5py.File(known, "r+") as handle:
        handle["val/masks"][1] = np.frombuffer(_jpeg(16, 16), np.uint8)
    with pytest.raises(DataError) as caught:
        dataset_statistics(known)
    assert str(caught.value) == f"{known}: split 'val' sample 1 ('b'): the mask is not a readable PNG; fix the file (run `encnet prepare` again)"
