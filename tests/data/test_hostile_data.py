"""Hostile dataset files: malformed HDF5 metadata fails in read_info with one line; a bad sample (image or
mask that does not decode, wrong size or channels, labels above the class count, a truncated array)
raises BadSampleError naming split, index and name, also through DataLoader workers.

Every hostile file is built here: a valid 3-image file written with HDF5Writer, then damaged with h5py.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from encnet_core.data.dataset import (
    BadSample,
    BadSampleError,
    CheckedBatches,
    CheckedSamples,
    HDF5SegmentationDataset,
    collate_checked,
    read_image_and_mask,
)
from encnet_core.data.hdf5 import HDF5Writer, Sample, class_pixel_counts, decode_mask, encode_mask, read_info
from encnet_core.errors import DataError

CLASSES = ["background", "road", "car", "boat"]
SIZE = 16


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _labels(index: int) -> np.ndarray:
    labels = np.full((SIZE, SIZE), index % len(CLASSES), dtype=np.uint8)
    labels[0] = 255  # an ignore row: 255 is always allowed
    labels[1, 0] = len(CLASSES) - 1  # the last class, allowed
    return labels


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid file: labelled ``train`` (3 images img0..img2) and unlabelled ``test`` (1 image)."""
    path = tmp_path / "good.h5"
    rng = np.random.default_rng(0)
    with HDF5Writer(path, "handmade", CLASSES, np.arange(12, dtype=np.uint8).reshape(4, 3)) as writer:
        writer.begin_split("train", 3, labelled=True)
        for i in range(3):
            labels = _labels(i)
            image = _png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
            writer.add(Sample(f"img{i}", image, SIZE, SIZE, encode_mask(labels), class_pixel_counts(labels, 4)))
        writer.begin_split("test", 1, labelled=False)
        writer.add(Sample("t0", _png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)), SIZE, SIZE))
    return path


def _damage(path: Path, change: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


def _set_attr(key: str, value) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        handle.attrs[key] = value

    return change


def _del(key: str) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        if "/" in key:
            del handle[key]
        else:
            del handle.attrs[key]

    return change


def _resize(key: str, length: int) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        ds = handle[key]
        ds.resize((length,) + ds.shape[1:])

    return change


def _replace(key: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        del handle[key]
        handle[key] = data

    return change


def _add(key: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        handle[key] = data

    return change


def _rgb_mask_array(handle: h5py.File) -> None:
    del handle["train/masks"]
    handle["train/masks"] = np.zeros((3, SIZE, SIZE, 3), np.uint8)  # masks as an RGB array, not PNGs


def _split_as_dataset(handle: h5py.File) -> None:
    handle["extra"] = np.zeros(3)


def _negative_size(handle: h5py.File) -> None:
    handle["train/sizes"][1] = (-5, SIZE)


METADATA = {
    "format_version 'abc'": (_set_attr("format_version", "abc"), r"format_version is 'abc', not an integer"),
    "format_version array": (_set_attr("format_version", np.array([1, 1])), r"format_version is \[1, 1\], not an integer"),
    "format_version float": (_set_attr("format_version", 1.0), r"format_version is 1.0, not an integer"),
    "format_version 3": (_set_attr("format_version", 3), r"has format version 3; this encnet reads versions 1 and 2"),
    "task missing": (_del("task"), r"the file attribute 'task' is missing"),
    "task unknown": (_set_attr("task", "detection"), r"the attribute 'task' is 'detection', not one of 'segmentation', 'classification'"),
    "task a number": (_set_attr("task", 1), r"the attribute 'task' is 1, not one of"),
    "labels in a segmentation split": (_add("train/labels", np.zeros(3, np.int64)), r"split 'train' holds 'labels', which a segmentation dataset has not"),
    "format missing": (_del("format"), r"is not an encnet dataset \(format attribute missing\)"),
    "format wrong": (_set_attr("format", "other"), r"is not an encnet dataset \(format attribute 'other'\)"),
    "classes not JSON": (_set_attr("classes", "background, road"), r"'classes' is 'background, road', not a JSON list"),
    "classes a dict": (_set_attr("classes", '{"a": 1}'), r"'classes' is .*not a JSON list"),
    "classes numbers": (_set_attr("classes", "[1, 2, 3, 4]"), r"'classes' must be a non-empty JSON list of names"),
    "classes empty": (_set_attr("classes", "[]"), r"'classes' must be a non-empty JSON list of names"),
    "classes an array": (_set_attr("classes", np.array([1, 2])), r"'classes' is \[1, 2\], not a JSON list"),
    "dataset missing": (_del("dataset"), r"the file attribute 'dataset' is missing"),
    "encnet_version missing": (_del("encnet_version"), r"the file attribute 'encnet_version' is missing"),
    "palette missing": (_del("palette"), r"the file attribute 'palette' is missing"),
    "palette wrong shape": (_set_attr("palette", np.zeros((3, 3), np.uint8)), r"'palette' must be 4 x 3 integers .* shape \(3, 3\)"),
    "palette floats": (_set_attr("palette", np.full((4, 3), 0.5)), r"'palette' must be 4 x 3 integers .*float64"),
    "palette above 255": (_set_attr("palette", np.full((4, 3), 300)), r"'palette' must be 4 x 3 integers 0..255"),
    "ignore_index 0": (_set_attr("ignore_index", 0), r"ignore_index is 0; encnet datasets use 255"),
    "sources not JSON": (_set_attr("sources", "{oops"), r"'sources' is '\{oops', not a JSON dict"),
    "min_pixels negative": (_set_attr("min_pixels", -1), r"min_pixels is -1, not a non-negative integer"),
    "names missing": (_del("train/names"), r"split 'train' has no 'names' dataset"),
    "images missing": (_del("train/images"), r"split 'train' has no 'images' dataset"),
    "sizes missing": (_del("train/sizes"), r"split 'train' has no 'sizes' dataset"),
    "class_pixels missing": (_del("train/class_pixels"), r"split 'train' has no 'class_pixels' dataset"),
    "names shorter than images": (_resize("train/names", 2), r"train/names lists 2 samples but train/images holds 3"),
    "sizes shorter": (_resize("train/sizes", 2), r"train/sizes must be 3 x 2 integers .* shape \(2, 2\)"),
    "negative size": (_negative_size, r"train/sizes holds \(-5, 16\) for sample 1; sizes must be positive"),
    "se_targets wrong width": (_replace("train/se_targets", np.zeros((3, 2), np.uint8)), r"train/se_targets must be 3 x 4"),
    "masks as an RGB array": (_rgb_mask_array, r"train/masks must be a 1-D array of variable-length bytes"),
    "names as numbers": (_replace("test/names", np.zeros(1)), r"test/names must be a 1-D array of strings"),
    "a dataset at the top level": (_split_as_dataset, r"'extra' at the top level is not a split"),
}


@pytest.mark.parametrize("case", list(METADATA))
def test_malformed_metadata_is_one_clear_line(good: Path, case: str) -> None:
    change, message = METADATA[case]
    path = _damage(good, change)
    with pytest.raises(DataError, match=message) as caught:
        read_info(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(DataError, match=message):  # every reader goes through read_info
        HDF5SegmentationDataset(path, "train")


def test_valid_file_reads_and_reports_what_it_stores(good: Path) -> None:
    info = read_info(good)
    assert info.classes == CLASSES and info.splits == {"train": 3, "test": 1} == info.stored
    assert info.labelled == {"train": True, "test": False} and info.ignore_index == 255
    np.testing.assert_array_equal(info.palette, np.arange(12).reshape(4, 3))


def test_bytes_attributes_are_read_like_str(good: Path) -> None:
    """Other HDF5 writers store fixed-length byte strings; they mean the same text."""
    _damage(good, _set_attr("classes", np.bytes_(json.dumps(CLASSES))))
    _damage(good, _set_attr("format", np.bytes_(b"encnet-hdf5")))
    assert read_info(good).classes == CLASSES


def test_truncated_images_array_names_the_first_missing_sample(good: Path) -> None:
    _damage(good, _resize("train/images", 1))
    with pytest.raises(DataError, match=r"split 'train' is truncated: it lists 3 samples but stores .* only 1 "
                       r"\(the first missing is sample 1 'img1'\).*--skip-bad"):  # fmt: skip
        HDF5SegmentationDataset(good, "train")
    assert read_info(good, allow_truncated=True).stored["train"] == 1
    dataset = HDF5SegmentationDataset(good, "train", strict=False)
    assert len(dataset) == 3 and dataset[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(BadSampleError, match=r"split 'train' sample 2 \('img2'\): the file stores no image") as caught:
        dataset[2]
    assert caught.value.sample == BadSample("train", 2, "img2", caught.value.sample.reason)


def _bad_image(handle: h5py.File) -> None:
    handle["train/images"][1] = np.frombuffer(b"\x89PNG\r\n\x1a\nnot a png at all", np.uint8)


def _empty_image(handle: h5py.File) -> None:
    handle["train/images"][1] = np.zeros(0, np.uint8)


def _bad_mask(handle: h5py.File) -> None:
    handle["train/masks"][1] = np.frombuffer(b"garbage", np.uint8)


def _mask(array: np.ndarray, mode: str | None = None) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        handle["train/masks"][1] = np.frombuffer(_png(array, mode), np.uint8)

    return change


SAMPLES = {
    "undecodable image": (_bad_image, r"the image does not decode"),
    "empty image": (_empty_image, r"the image does not decode"),
    "undecodable mask": (_bad_mask, r"the mask is not a readable PNG"),
    "mask of another size": (_mask(np.zeros((SIZE, SIZE + 4), np.uint8)), r"the mask is 16x20 but the image is 16x16"),
    "RGB mask": (_mask(np.zeros((SIZE, SIZE, 3), np.uint8)), r"the mask has 3 channel\(s\) of uint8"),
    "16-bit mask": (_mask(np.full((SIZE, SIZE), 300, np.uint16)), r"the mask has 1 channel\(s\) of uint16"),
    "label 4 of 4 classes": (_mask(np.full((SIZE, SIZE), 4, np.uint8)), r"the mask has label 4, but the dataset has 4 classes \(labels 0..3, 255 = ignore\)"),
    "label 254": (_mask(np.full((SIZE, SIZE), 254, np.uint8)), r"the mask has label 254"),
}


@pytest.mark.parametrize("case", list(SAMPLES))
def test_bad_sample_names_split_index_and_name(good: Path, case: str) -> None:
    change, message = SAMPLES[case]
    _damage(good, change)
    dataset = HDF5SegmentationDataset(good, "train")
    assert dataset[0][1].max() == 255 and dataset[2][0].shape == (3, SIZE, SIZE)  # the others are fine
    with pytest.raises(BadSampleError, match=r"split 'train' sample 1 \('img1'\): " + message) as caught:
        dataset[1]
    text = str(caught.value)
    assert "\n" not in text and str(good) in text and "--skip-bad" in text
    assert "decode_image.cpp" not in text and "decode_png.cpp" not in text  # torchvision's source location
    assert (caught.value.sample.split, caught.value.sample.index, caught.value.sample.name) == ("train", 1, "img1")
    with pytest.raises(BadSampleError, match=r"sample 1 \('img1'\)"):
        read_image_and_mask(good, "train", 1)


def test_decode_mask_refuses_rgb(good: Path) -> None:
    with pytest.raises(DataError, match="the mask is a RGB image, not a single-channel label map"):
        decode_mask(_png(np.zeros((4, 4, 3), np.uint8)))
    assert decode_mask(_png(np.full((4, 4), 3, np.uint8))).tolist() == [[3] * 4] * 4
    with pytest.raises(DataError, match=r"^the mask does not decode \(not an image file\)$"):
        decode_mask(b"garbage")
    with pytest.raises(DataError, match=r"^the mask does not decode \("):
        decode_mask(_png(np.zeros((4, 4), np.uint8))[:40])  # truncated


def _loader(dataset: HDF5SegmentationDataset, workers: int) -> DataLoader:
    return DataLoader(CheckedSamples(dataset), batch_size=2, num_workers=workers, collate_fn=collate_checked)


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_sample_in_dataloader_is_one_line_or_skipped(good: Path, workers: int) -> None:
    """A worker's exception would be re-raised wrapped in its traceback; CheckedBatches raises the one line."""
    _damage(good, _mask(np.full((SIZE, SIZE), 9, np.uint8)))
    dataset = HDF5SegmentationDataset(good, "train")
    with pytest.raises(BadSampleError) as caught:
        list(CheckedBatches(_loader(dataset, workers), good, skip_bad=False))
    text = str(caught.value)
    assert text.startswith(f"{good}: split 'train' sample 1 ('img1'): the mask has label 9")
    assert "\n" not in text and "Traceback" not in text and "worker" not in text
    seen: list[BadSample] = []
    checked = CheckedBatches(_loader(dataset, workers), good, skip_bad=True, on_skip=seen.append)
    batches = [list(batch) for batch in checked] + [list(batch) for batch in checked]  # two epochs
    assert [images.shape[0] for images, _ in batches] == [1, 1, 1, 1]  # (img0, -), (img2) per epoch
    assert [int(masks[0, 2, 2]) for _, masks in batches] == [0, 2, 0, 2]  # labels of img0 and img2
    assert list(checked.skipped) == [("train", 1)] and len(seen) == 1  # reported once, not once per epoch
    assert seen[0].name == "img1" and "label 9" in seen[0].reason


def test_every_sample_bad_with_require_complete(good: Path) -> None:
    for i in range(3):
        _damage(good, lambda handle, i=i: handle["train/images"].__setitem__(i, np.zeros(3, np.uint8)))
    dataset = HDF5SegmentationDataset(good, "train")
    checked = CheckedBatches(_loader(dataset, 0), good, skip_bad=True, require_complete=True)
    with pytest.raises(DataError, match="every sample of split 'train' is bad"):
        list(checked)
    assert list(CheckedBatches(_loader(dataset, 0), good, skip_bad=True)) == []


def test_labelled_pixels_from_class_pixels(good: Path) -> None:
    dataset = HDF5SegmentationDataset(good, "train")
    assert dataset.labelled_pixels() == 3 * (SIZE * SIZE - SIZE)  # one ignore row per image
    assert dataset.labelled_pixels(1) == SIZE * SIZE - SIZE
    assert HDF5SegmentationDataset(good, "test").labelled_pixels() == 0


def test_checks_do_not_change_good_samples(good: Path) -> None:
    dataset = HDF5SegmentationDataset(good, "train")
    for i in range(3):
        image, mask = dataset[i]
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), _labels(i))


def test_names_that_are_not_utf8(good: Path) -> None:
    def latin1(handle: h5py.File) -> None:
        del handle["train/names"]
        handle.create_dataset("train/names", data=[b"img0", b"caf\xe9", b"img2"], dtype=h5py.string_dtype("ascii"))

    _damage(good, latin1)
    with pytest.raises(DataError, match=r"train/names holds a name that is not UTF-8 text"):
        HDF5SegmentationDataset(good, "train")


def test_targets_names_the_sample_of_an_undecodable_mask(good: Path) -> None:
    from encnet_core.data.prepare import recompute_targets

    path = _damage(good, _bad_mask)
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"mask of train/\S+ \(sample 1\): the mask does not decode"):
        recompute_targets(path)
    assert path.read_bytes() == before  # nothing written
