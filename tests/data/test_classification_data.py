"""The classification layout of the HDF5 format (version 2) and its reader, HDF5ClassificationDataset.

A valid classification file is written with HDF5Writer(task="classification"), then damaged with
h5py: malformed metadata (labels of the wrong type, shape or length, out of range; segmentation
datasets in a classification split) fails in read_info with one line naming file and split; an
image that does not decode raises BadSampleError, also through DataLoader workers. Version 1 files
(no ``task`` attribute) are still read, as segmentation datasets.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from encnet_core.data.dataset import (
    BadSampleError,
    CheckedBatches,
    CheckedSamples,
    HDF5ClassificationDataset,
    HDF5SegmentationDataset,
    collate_checked,
    dataset_task,
    open_dataset,
    read_image_and_label,
    read_image_and_mask,
)
from encnet_core.data.hdf5 import (
    FORMAT_VERSION,
    HDF5Writer,
    Sample,
    class_pixel_counts,
    dataset_statistics,
    encode_mask,
    read_info,
)
from encnet_core.data.prepare import recompute_targets
from encnet_core.errors import DataError

CLASSES = ["cat", "dog", "ship", "frog"]
SIZE = 8
LABELS = [2, 0, 3]  # of train's img0..img2


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """Labelled ``train`` (img0..img2, labels LABELS) and unlabelled ``test`` (t0)."""
    path = tmp_path / "cls.h5"
    with HDF5Writer(path, "handmade", CLASSES, np.zeros((4, 3), np.uint8), task="classification") as writer:
        writer.begin_split("train", 3, labelled=True)
        for i, label in enumerate(LABELS):
            writer.add(Sample(f"img{i}", _png(_image(i)), SIZE, SIZE, label=label))
        writer.begin_split("test", 1, labelled=False)
        writer.add(Sample("t0", _png(_image(9)), SIZE, SIZE))
    return path


@pytest.fixture
def segmentation(tmp_path: Path) -> Path:
    path = tmp_path / "seg.h5"
    labels = np.zeros((SIZE, SIZE), np.uint8)
    with HDF5Writer(path, "handmade", CLASSES, np.zeros((4, 3), np.uint8)) as writer:
        writer.begin_split("train", 1, labelled=True)
        writer.add(Sample("s0", _png(_image(0)), SIZE, SIZE, encode_mask(labels), class_pixel_counts(labels, 4)))
    return path


def _damage(path: Path, change: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


# ----------------------------------------------------------------------------- the layout


def test_the_writer_stores_the_classification_layout(good: Path) -> None:
    with h5py.File(good) as handle:
        assert handle.attrs["format_version"] == FORMAT_VERSION == 2 and handle.attrs["task"] == "classification"
        assert "min_pixels" not in handle.attrs
        assert sorted(handle["train"]) == ["images", "labels", "names", "sizes"]
        assert sorted(handle["test"]) == ["images", "names", "sizes"]
        assert handle["train/labels"].dtype == np.int64 and handle["train/labels"][...].tolist() == LABELS
        assert handle["train/sizes"][...].tolist() == [[SIZE, SIZE]] * 3
    info = read_info(good)
    assert (info.task, info.format_version, info.classes) == ("classification", 2, CLASSES)
    assert info.splits == {"train": 3, "test": 1} == info.stored and info.labelled == {"train": True, "test": False}
    assert dataset_task(good) == "classification"


def test_the_writer_refuses_a_missing_or_out_of_range_label(tmp_path: Path) -> None:
    for label, message in ((None, "a labelled split needs a label"), (4, "label 4 outside 0..3"), (-1, "label -1 outside")):
        path = tmp_path / f"w{label}.h5"
        with pytest.raises(DataError, match=message):
            with HDF5Writer(path, "x", CLASSES, np.zeros((4, 3), np.uint8), task="classification") as writer:
                writer.begin_split("train", 1, labelled=True)
                writer.add(Sample("a", _png(_image(0)), SIZE, SIZE, label=label))
        assert list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(ValueError, match="task must be one of"):
        HDF5Writer(tmp_path / "t.h5", "x", CLASSES, np.zeros((4, 3), np.uint8), task="detection")


def test_statistics_count_the_images_of_each_class(good: Path) -> None:
    stats = dataset_statistics(good)
    assert stats["task"] == "classification" and stats["format_version"] == 2 and stats["min_pixels"] is None
    train = stats["splits"]["train"]
    assert train["images"] == 3 and train["labelled"] is True
    assert [(row["name"], row["images"]) for row in train["classes"]] == [("cat", 1), ("dog", 0), ("ship", 1), ("frog", 1)]
    assert [row["image_fraction"] for row in train["classes"]] == pytest.approx([1 / 3, 0, 1 / 3, 1 / 3])
    assert stats["splits"]["test"] == {"images": 1, "labelled": False}


def test_version_1_files_are_read_as_segmentation(segmentation: Path) -> None:
    def as_version_1(handle: h5py.File) -> None:
        handle.attrs["format_version"] = 1
        del handle.attrs["task"]

    _damage(segmentation, as_version_1)
    info = read_info(segmentation)
    assert (info.task, info.format_version) == ("segmentation", 1)
    assert HDF5SegmentationDataset(segmentation, "train")[0][1].shape == (SIZE, SIZE)
    assert dataset_statistics(segmentation)["format_version"] == 1
    assert recompute_targets(segmentation) == {"train": 1}


# ----------------------------------------------------------------------------- the reader


def test_samples_are_the_stored_images_and_labels(good: Path) -> None:
    dataset = HDF5ClassificationDataset(good, "train")
    assert len(dataset) == 3 and dataset.num_classes == 4 and dataset.classes == CLASSES
    assert dataset.names == ["img0", "img1", "img2"] and dataset.labelled
    assert dataset.labels.dtype == torch.int64 and dataset.labels.tolist() == LABELS
    assert dataset.class_counts().tolist() == [1, 0, 1, 1]
    for i, label in enumerate(LABELS):
        image, target = dataset[i]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), _image(i))
        assert target.dtype == torch.int64 and target.dim() == 0 and int(target) == label
    assert int(dataset[-1][1]) == LABELS[-1]
    with pytest.raises(IndexError):
        dataset[3]
    rgb, label = read_image_and_label(good, "train", 1)
    np.testing.assert_array_equal(rgb, _image(1))
    assert label == LABELS[1]


def test_the_transform_sees_the_image_only(good: Path) -> None:
    seen = []

    def transform(image):
        seen.append(type(image))
        return image.float() / 255

    image, label = HDF5ClassificationDataset(good, "train", transform=transform)[0]
    assert seen == [tv_tensors.Image] and image.dtype == torch.float32 and int(label) == LABELS[0]


def test_an_unlabelled_split_gives_the_ignore_index(good: Path) -> None:
    dataset = HDF5ClassificationDataset(good, "test")
    assert not dataset.labelled and dataset.labels.tolist() == [255] and int(dataset[0][1]) == 255
    assert dataset.class_counts().tolist() == [0, 0, 0, 0]
    assert read_image_and_label(good, "test", 0)[1] is None


def test_each_reader_refuses_the_other_task(good: Path, segmentation: Path) -> None:
    with pytest.raises(DataError, match=r"cls\.h5 is a classification dataset; HDF5SegmentationDataset reads segmentation datasets"):
        HDF5SegmentationDataset(good, "train")
    with pytest.raises(DataError, match=r"seg\.h5 is a segmentation dataset; HDF5ClassificationDataset reads classification"):
        HDF5ClassificationDataset(segmentation, "train")
    with pytest.raises(DataError, match=r"is a classification dataset; read_image_and_mask reads segmentation"):
        read_image_and_mask(good, "train", 0)
    with pytest.raises(DataError, match=r"is a segmentation dataset; read_image_and_label reads classification"):
        read_image_and_label(segmentation, "train", 0)
    with pytest.raises(DataError, match=r"is a classification dataset; `encnet targets` recomputes"):
        recompute_targets(good)
    with pytest.raises(DataError, match=r"has no split 'val'; available splits: test, train"):
        HDF5ClassificationDataset(good, "val")
    assert isinstance(open_dataset(good, "train"), HDF5ClassificationDataset)
    assert isinstance(open_dataset(segmentation, "train"), HDF5SegmentationDataset)


def test_the_dataset_pickles_without_its_handle_and_works_in_workers(good: Path) -> None:
    dataset = HDF5ClassificationDataset(good, "train")
    dataset[0]  # opens the file in this process
    again = pickle.loads(pickle.dumps(dataset))
    assert again._handle is None and int(again[2][1]) == LABELS[2]
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [tuple(images.shape) for images, _ in batches] == [(2, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]
    assert torch.cat([labels for _, labels in batches]).tolist() == LABELS


def _bad_image(handle: h5py.File) -> None:
    handle["train/images"][1] = np.frombuffer(b"\x89PNG\r\n\x1a\nnot a png at all", np.uint8)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_is_one_line_or_skipped(good: Path, workers: int) -> None:
    _damage(good, _bad_image)
    dataset = HDF5ClassificationDataset(good, "train")
    with pytest.raises(BadSampleError, match=r"split 'train' sample 1 \('img1'\): the image does not decode") as caught:
        dataset[1]
    assert "\n" not in str(caught.value) and "--skip-bad" in str(caught.value)
    loader = DataLoader(CheckedSamples(dataset), batch_size=2, num_workers=workers, collate_fn=collate_checked)
    with pytest.raises(BadSampleError, match=r"sample 1 \('img1'\)"):
        list(CheckedBatches(loader, good, skip_bad=False))
    checked = CheckedBatches(loader, good, skip_bad=True)
    labels = [int(label) for _, batch_labels in checked for label in batch_labels]
    assert labels == [LABELS[0], LABELS[2]] and list(checked.skipped) == [("train", 1)]


def test_a_truncated_images_array(good: Path) -> None:
    _damage(good, lambda handle: handle["train/images"].resize((2,)))
    with pytest.raises(DataError, match=r"split 'train' is truncated: it lists 3 samples but stores .* only 2"):
        HDF5ClassificationDataset(good, "train")
    dataset = HDF5ClassificationDataset(good, "train", strict=False)
    assert int(dataset[1][1]) == LABELS[1]
    with pytest.raises(BadSampleError, match=r"sample 2 \('img2'\): the file stores no image for it"):
        dataset[2]
    assert isinstance(open_dataset(good, "train", strict=False), HDF5ClassificationDataset)


# ----------------------------------------------------------------------------- malformed metadata


def _set_labels(data: np.ndarray) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        del handle["train/labels"]
        handle["train/labels"] = data

    return change


def _set_attr(key: str, value) -> Callable[[h5py.File], None]:
    return lambda handle: handle.attrs.__setitem__(key, value)


def _add(key: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    return lambda handle: handle.__setitem__(key, data)


def _delete(key: str) -> Callable[[h5py.File], None]:
    return lambda handle: handle.__delitem__(key)


METADATA = {
    "labels as floats": (_set_labels(np.array([2.0, 0.0, 3.0])), r"train/labels must be 3 integers \(one class index per name\), got float64 of shape \(3,\)"),
    "labels as bools": (_set_labels(np.array([True, False, True])), r"train/labels must be 3 integers .* got bool"),
    "labels 2-D": (_set_labels(np.zeros((3, 1), np.int64)), r"train/labels must be 3 integers .* shape \(3, 1\)"),
    "labels shorter": (_set_labels(np.zeros(2, np.int64)), r"train/labels must be 3 integers .* shape \(2,\)"),
    "labels longer": (_set_labels(np.zeros(4, np.int64)), r"train/labels must be 3 integers .* shape \(4,\)"),
    "labels as strings": (_set_labels(np.array([b"cat", b"dog", b"cat"])), r"train/labels must be 3 integers"),
    "label = C": (_set_labels(np.array([2, 4, 3])), r"train/labels holds 4 for sample 1 \('img1'\); labels must be 0..3 \(the 4 classes\)"),
    "label 255": (_set_labels(np.array([2, 0, 255], np.uint8)), r"train/labels holds 255 for sample 2 \('img2'\)"),
    "label negative": (_set_labels(np.array([-1, 0, 3])), r"train/labels holds -1 for sample 0 \('img0'\)"),
    "masks in a classification split": (lambda h: h.create_dataset("train/masks", (3,), dtype=h5py.vlen_dtype(np.uint8)), r"split 'train' holds 'masks', which a classification dataset has not"),
    "class_pixels in a classification split": (_add("train/class_pixels", np.zeros((3, 4), np.int64)), r"split 'train' holds 'class_pixels'"),
    "se_targets in an unlabelled split": (_add("test/se_targets", np.zeros((1, 4), np.uint8)), r"split 'test' holds 'se_targets'"),
    "images missing": (_delete("train/images"), r"split 'train' has no 'images' dataset"),
    "names shorter than images": (lambda h: h["train/names"].resize((2,)), r"train/names lists 2 samples but train/images holds 3"),
    "sizes wrong": (lambda h: (h.__delitem__("train/sizes"), h.__setitem__("train/sizes", np.ones((3, 3), np.int32))), r"train/sizes must be 3 x 2 integers"),
    "task segmentation": (_set_attr("task", "segmentation"), r"split 'test' has no 'class_pixels' dataset"),  # splits are checked in name order
    "version 1 classification": (_set_attr("format_version", 1), r"format version 1 holds segmentation datasets only, but 'task' is 'classification'"),
    "task as bytes of another name": (_set_attr("task", np.bytes_(b"classify")), r"the attribute 'task' is b'classify', not one of"),
}


@pytest.mark.parametrize("case", list(METADATA))
def test_malformed_classification_metadata_is_one_clear_line(good: Path, case: str) -> None:
    change, message = METADATA[case]
    path = _damage(good, change)
    with pytest.raises(DataError, match=message) as caught:
        read_info(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(DataError, match=message):  # the reader goes through read_info
        HDF5ClassificationDataset(path, "train")


def test_task_attributes_as_bytes_are_read_like_str(good: Path) -> None:
    _damage(good, _set_attr("task", np.bytes_(b"classification")))
    assert read_info(good).task == "classification"
