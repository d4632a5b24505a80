"""Damaged HDF5 storage: a chunk of a dataset that no longer decompresses (h5py raises OSError "filter
returned failure during read") is reported like any other bad sample: one line naming the split, the
index and the name, and with --skip-bad the sample is skipped (or replaced) and listed. Whole arrays
that cannot be read (names, class_pixels, se_targets, labels) are one `DataError` naming the array.

Every damaged file is built here: a valid file, the array stored again with one gzip chunk per sample,
then the bytes of one chunk overwritten on disk at the offset ``get_chunk_info_by_coord`` gives.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from classification_helpers import make_synthetic_classification
from helpers import make_synthetic, one_error_line, train_tiny
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.dataset import (
    BadSampleError,
    CheckedBatches,
    CheckedSamples,
    HDF5ClassificationDataset,
    HDF5SegmentationDataset,
    collate_checked,
    read_image_and_label,
    read_image_and_mask,
)
from encnet_core.data.hdf5 import (
    HDF5Writer,
    Sample,
    class_pixel_counts,
    dataset_statistics,
    encode_mask,
    read_info,
)
from encnet_core.data.prepare import recompute_targets
from encnet_core.engine.sampling import SeededSamples
from encnet_core.errors import DataError

CLASSES = ["background", "road", "car"]
SIZE = 16
DAMAGED = "cannot be read: the file is damaged there (HDF5: "


def corrupt_chunk(path: Path, split: str, key: str, index: int) -> None:
    """Store ``split/key`` again with one gzip chunk per sample, then overwrite sample ``index``'s chunk on disk."""
    with h5py.File(path, "r+") as handle:
        group = handle[split]
        values, dtype, shape = list(group[key][...]), group[key].dtype, group[key].shape
        del group[key]
        array = group.create_dataset(key, shape, dtype=dtype, maxshape=(None, *shape[1:]), chunks=(1, *shape[1:]), compression="gzip")
        for i, value in enumerate(values):
            array[i] = value
        chunk = array.id.get_chunk_info_by_coord((index,) + (0,) * (len(shape) - 1))
        offset, size = chunk.byte_offset, chunk.size
    with open(path, "r+b") as raw:
        raw.seek(offset)
        raw.write(b"\xff" * size)
    with h5py.File(path, "r") as handle:  # the damage is real: h5py itself cannot read that sample any more
        with pytest.raises(OSError):
            handle[split][key][index]
        if index + 1 < shape[0]:
            handle[split][key][index + 1]  # and only that one


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _labels(index: int) -> np.ndarray:
    labels = np.full((SIZE, SIZE), index % len(CLASSES), dtype=np.uint8)
    labels[0] = 255
    return labels


@pytest.fixture
def seg(tmp_path: Path) -> Path:
    """A valid segmentation file: labelled ``train`` of 4 images img0..img3."""
    path = tmp_path / "seg.h5"
    rng = np.random.default_rng(0)
    with HDF5Writer(path, "handmade", CLASSES, np.arange(9, dtype=np.uint8).reshape(3, 3)) as writer:
        writer.begin_split("train", 4, labelled=True)
        for i in range(4):
            labels = _labels(i)
            image = _png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
            writer.add(Sample(f"img{i}", image, SIZE, SIZE, encode_mask(labels), class_pixel_counts(labels, 3)))
    return path


@pytest.fixture
def cls(tmp_path: Path) -> Path:
    """A valid classification file: labelled ``train`` of 4 images c0..c3 with labels 0, 1, 2, 0."""
    path = tmp_path / "cls.h5"
    rng = np.random.default_rng(1)
    with HDF5Writer(path, "handmade", CLASSES, np.zeros((3, 3), np.uint8), task="classification") as writer:
        writer.begin_split("train", 4, labelled=True)
        for i in range(4):
            writer.add(Sample(f"c{i}", _png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)), SIZE, SIZE, label=i % 3))
    return path


def _all(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------- segmentation reader


@pytest.mark.parametrize("key", ["images", "masks"])
def test_a_damaged_chunk_is_a_bad_sample_naming_split_index_and_name(seg: Path, key: str) -> None:
    before = _all(HDF5SegmentationDataset(seg, "train"))
    corrupt_chunk(seg, "train", key, 1)
    dataset = HDF5SegmentationDataset(seg, "train")
    with pytest.raises(BadSampleError) as caught:
        dataset[1]
    what = "image" if key == "images" else "mask"
    sample = caught.value.sample
    assert (sample.split, sample.index, sample.name) == ("train", 1, "img1")
    assert sample.reason == f"the stored {what} {DAMAGED}Can't synchronously read data (filter returned failure during read))"
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{seg}: split 'train' sample 1 ('img1'): the stored {what} cannot be read")
    assert message.endswith("fix the file, or pass --skip-bad to skip bad samples")
    for index in (0, 2, 3):  # the other samples read as before
        assert torch.equal(dataset[index][0], before[index][0]) and torch.equal(dataset[index][1], before[index][1])
    with pytest.raises(BadSampleError, match="sample 1 \\('img1'\\): the stored"):
        read_image_and_mask(seg, "train", 1)  # what `encnet show` reads


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_chunk_through_a_dataloader_stops_or_is_skipped(seg: Path, workers: int) -> None:
    before = _all(HDF5SegmentationDataset(seg, "train"))
    corrupt_chunk(seg, "train", "masks", 2)
    dataset = HDF5SegmentationDataset(seg, "train")

    def batches(skip_bad: bool) -> CheckedBatches:
        loader = DataLoader(CheckedSamples(dataset), batch_size=4, num_workers=workers, collate_fn=collate_checked)
        return CheckedBatches(loader, seg, skip_bad)

    with pytest.raises(BadSampleError, match="split 'train' sample 2 \\('img2'\\): the stored mask cannot be read"):
        list(batches(False))
    checked = batches(True)
    [(images, masks)] = list(checked)
    assert [(s.split, s.index, s.name) for s in checked.skipped.values()] == [("train", 2, "img2")]
    assert torch.equal(images, torch.stack([before[i][0] for i in (0, 1, 3)]))
    assert torch.equal(masks, torch.stack([before[i][1] for i in (0, 1, 3)]))


def test_training_samples_replace_a_damaged_chunk_by_the_next_good_sample(seg: Path) -> None:
    before = _all(HDF5SegmentationDataset(seg, "train"))
    corrupt_chunk(seg, "train", "images", 1)
    dataset = HDF5SegmentationDataset(seg, "train")
    image, mask, bad = SeededSamples(dataset, seed=0, skip_bad=True)[(0, 1)]
    assert torch.equal(image, before[2][0]) and torch.equal(mask, before[2][1])  # no transform: sample 2 itself
    assert [(b.index, b.name) for b in bad] == [(1, "img1")] and bad[0].reason.startswith(f"the stored image {DAMAGED}")
    assert SeededSamples(dataset, seed=0, skip_bad=False)[(0, 1)][:2] == (None, None)


@pytest.mark.parametrize(("key", "call"), [("class_pixels", "labelled_pixels"), ("se_targets", "sample_weights")])
def test_a_damaged_metadata_array_is_one_line(seg: Path, key: str, call: str) -> None:
    corrupt_chunk(seg, "train", key, 3)
    dataset = HDF5SegmentationDataset(seg, "train")
    with pytest.raises(DataError) as caught:
        getattr(dataset, call)()
    assert str(caught.value).startswith(f"{seg}: train/{key} cannot be read, the file is damaged (HDF5: ")
    assert "\n" not in str(caught.value)


def test_damaged_names_are_one_line(seg: Path) -> None:
    corrupt_chunk(seg, "train", "names", 0)
    with pytest.raises(DataError, match="train/names cannot be read, the file is damaged"):
        HDF5SegmentationDataset(seg, "train")


def test_info_and_targets_name_the_sample_of_a_damaged_mask(seg: Path) -> None:
    corrupt_chunk(seg, "train", "masks", 3)
    with pytest.raises(DataError) as caught:
        dataset_statistics(seg)  # `encnet info`: its labelled-pixel figure reads the masks
    assert str(caught.value).startswith(f"{seg}: split 'train' sample 3 ('img3'): the stored mask {DAMAGED}")
    with pytest.raises(DataError, match="mask of train/img3 \\(sample 3\\)"):
        recompute_targets(seg)  # `encnet targets`


# ----------------------------------------------------------------------------- classification reader


def test_classification_reader_names_a_damaged_image(cls: Path) -> None:
    before = _all(HDF5ClassificationDataset(cls, "train"))
    corrupt_chunk(cls, "train", "images", 2)
    dataset = HDF5ClassificationDataset(cls, "train")
    with pytest.raises(BadSampleError) as caught:
        dataset[2]
    sample = caught.value.sample
    assert (sample.split, sample.index, sample.name) == ("train", 2, "c2") and sample.reason.startswith(f"the stored image {DAMAGED}")
    assert torch.equal(dataset[3][0], before[3][0]) and int(dataset[3][1]) == 0
    loader = DataLoader(CheckedSamples(dataset), batch_size=4, num_workers=1, collate_fn=collate_checked)
    checked = CheckedBatches(loader, cls, skip_bad=True)
    [(images, labels)] = list(checked)
    assert labels.tolist() == [0, 1, 0] and [s.index for s in checked.skipped.values()] == [2]
    with pytest.raises(BadSampleError, match="sample 2 \\('c2'\\): the stored image"):
        read_image_and_label(cls, "train", 2)


def test_classification_damaged_labels_are_one_line(cls: Path) -> None:
    corrupt_chunk(cls, "train", "labels", 1)
    with pytest.raises(DataError) as caught:
        read_info(cls)
    assert "split 'train' cannot be read" in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- the commands

runner = CliRunner()
TRAIN = ("-m", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "--device", "cpu",
         "--no-progress", "--iters", "2", "-j", "0")  # fmt: skip
EVAL = ("--device", "cpu", "-j", "0", "--no-progress")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def no_traceback(result) -> None:
    assert "Traceback" not in result.output and "OSError" not in result.output, result.output


def damaged_copy(data: Path, folder: Path, split: str, key: str, index: int) -> Path:
    path = folder / f"damaged-{split}-{key}.h5"
    shutil.copy(data, path)
    corrupt_chunk(path, split, key, index)
    return path


def names(data: Path, split: str) -> list[str]:
    with h5py.File(data, "r") as handle:
        return list(handle[split]["names"].asstr()[:])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dataset, checkpoint): synthetic 8 train / 6 val at 32 px, encnet_tiny after 2 iterations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("corrupt_cli")
    data = make_synthetic(folder, 8, 6, size=32)
    torch.manual_seed(0)
    yield data, train_tiny(data, folder)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("key", ["images", "masks"])
def test_evaluate_names_a_damaged_chunk_or_skips_it(tiny: tuple[Path, Path], tmp_path: Path, key: str) -> None:
    data, ckpt = tiny
    bad = damaged_copy(data, tmp_path, "val", key, 2)
    name = names(data, "val")[2]
    result = run("evaluate", ckpt, bad, *EVAL)
    no_traceback(result)
    what = "image" if key == "images" else "mask"
    assert f"split 'val' sample 2 ('{name}'): the stored {what} cannot be read" in one_error_line(result)
    result = run("evaluate", ckpt, bad, *EVAL, "--skip-bad", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 5 and [(s["split"], s["index"], s["name"]) for s in report["skipped"]] == [("val", 2, name)]
    with h5py.File(data, "r") as handle:  # the pixels scored are those of the other five images
        pixels = handle["val/class_pixels"][...]
    assert report["pixels"] == int(pixels.sum() - pixels[2].sum())


def test_train_names_a_damaged_chunk_or_replaces_it(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    bad = damaged_copy(data, tmp_path, "train", "masks", 5)
    name = names(data, "train")[5]
    result = run("train", bad, *TRAIN, "-o", tmp_path / "stopped")
    assert result.exit_code == 1
    no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"split 'train' sample 5 ('{name}'): the stored mask cannot be read" in errors[0]
    result = run("train", bad, *TRAIN, "-o", tmp_path / "run", "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iteration"] == 2
    assert [(s["split"], s["index"], s["name"]) for s in summary["skipped"]] == [("train", 5, name)]


def test_info_and_show_name_a_damaged_mask(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    bad = damaged_copy(data, tmp_path, "val", "masks", 4)
    name = names(data, "val")[4]
    for args in (("info", bad), ("show", bad, "--split", "val", "--index", 4, "-o", tmp_path / "shown.png")):
        result = run(*args)
        no_traceback(result)
        line = one_error_line(result)
        assert f"split 'val' sample 4 ('{name}'): the stored mask cannot be read" in line
        assert "--skip-bad" not in line  # neither command has that option


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(classification dataset 16 train / 8 val, best.pt of encnet_cifar_tiny after 2 iterations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("corrupt_cls")
    data = make_synthetic_classification(folder, 16, 8)
    result = run("train", data, "-m", "encnet_cifar_tiny", "--batch-size", "8", "-j", "0", "--device", "cpu",
                 "--no-progress", "--iters", "2", "-o", folder / "run")  # fmt: skip
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    yield data, folder / "run" / "last.pt"


def test_classification_commands_name_a_damaged_image(cls_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = cls_run
    bad = damaged_copy(data, tmp_path, "val", "images", 3)
    name = names(data, "val")[3]
    result = run("evaluate", ckpt, bad, *EVAL)
    no_traceback(result)
    assert f"split 'val' sample 3 ('{name}'): the stored image cannot be read" in one_error_line(result)
    result = run("evaluate", ckpt, bad, *EVAL, "--skip-bad", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 7 and [(s["split"], s["index"]) for s in report["skipped"]] == [("val", 3)]
    train_bad = damaged_copy(data, tmp_path, "train", "images", 6)
    common = ("-m", "encnet_cifar_tiny", "--batch-size", "8", "-j", "0", "--device", "cpu", "--no-progress", "--iters", "2")
    result = run("train", train_bad, *common, "-o", tmp_path / "stopped")
    assert result.exit_code == 1
    no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"split 'train' sample 6 ('{names(data, 'train')[6]}'): the stored image" in errors[0]
    result = run("train", train_bad, *common, "-o", tmp_path / "run", "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    assert [(s["split"], s["index"]) for s in json.loads(result.stdout)["skipped"]] == [("train", 6)]
