"""HDF5SegmentationDataset and read_image_and_mask: decoding, masks, splits, workers and sample weights."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.io import decode_jpeg

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.dataset import HDF5SegmentationDataset, read_image_and_mask
from encnet_core.data.hdf5 import HDF5Writer, Sample, class_pixel_counts, encode_mask
from encnet_core.data.transforms import eval_transform
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import voc_palette

CLASSES = ["background", "road", "car", "boat"]
NUM_TRAIN = 6
RARE_IMAGE = 5  # the only training image containing class 3 ("boat")
FORMATS = ["PNG", "JPEG", "PNG", "JPEG", "PNG", "JPEG"]  # encoding of each training image


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Sample], list[np.ndarray]]:
    """A small file: a labelled ``train`` split of PNG and JPEG images and an unlabelled ``test`` split."""
    path = tmp_path_factory.mktemp("hdf5") / "small.h5"
    rng = np.random.default_rng(0)
    samples: list[Sample] = []
    labels: list[np.ndarray] = []
    for index, fmt in enumerate(FORMATS):
        height, width = 20 + 3 * index, 32 - 2 * index
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        label = rng.integers(0, 3, (height, width), dtype=np.uint8)  # classes 0..2 in every image
        label[rng.random((height, width)) < 0.1] = IGNORE_INDEX
        if index == RARE_IMAGE:
            label[:4, :4] = 3
        encoded = _encode(image, fmt)
        samples.append(
            Sample(
                f"img_{index}",
                encoded,
                height,
                width,
                encode_mask(label),
                class_pixel_counts(label, len(CLASSES)),
            )
        )
        labels.append(label)
    test = [_encode(rng.integers(0, 256, (18, 25, 3), dtype=np.uint8), "JPEG") for _ in range(2)]
    with HDF5Writer(path, "toy", CLASSES, voc_palette(len(CLASSES))) as writer:
        writer.begin_split("train", capacity=NUM_TRAIN, labelled=True)
        writer.add_all(samples)
        writer.begin_split("test", capacity=2, labelled=False)
        writer.add_all(Sample(f"test_{i}", data, 18, 25) for i, data in enumerate(test))
    return path, samples, labels


def test_length_names_and_metadata(prepared) -> None:
    path, samples, _ = prepared
    dataset = HDF5SegmentationDataset(path, "train")
    assert len(dataset) == NUM_TRAIN
    assert dataset.names == [sample.name for sample in samples]
    assert dataset.classes == CLASSES
    assert dataset.num_classes == 4
    np.testing.assert_array_equal(dataset.palette, voc_palette(4))
    assert len(HDF5SegmentationDataset(path, "test")) == 2


def test_png_images_equal_pil_decode(prepared) -> None:
    path, samples, _ = prepared
    dataset = HDF5SegmentationDataset(path, "train")
    for index in (i for i, fmt in enumerate(FORMATS) if fmt == "PNG"):
        image, _ = dataset[index]
        assert isinstance(image, tv_tensors.Image)
        assert image.dtype == torch.uint8 and image.shape == (3, samples[index].height, samples[index].width)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), _pil_decode(samples[index].image))


def test_jpeg_images_equal_torchvision_decode(prepared) -> None:
    """Exactly torchvision's libjpeg decode; PIL's own libjpeg build agrees within rounding.

    In this environment both give identical pixels, but PIL and torchvision ship separate libjpeg
    builds whose IDCT / chroma upsampling may round differently, so only +-2 is required of PIL.
    """
    path, samples, _ = prepared
    dataset = HDF5SegmentationDataset(path, "train")
    for index in (i for i, fmt in enumerate(FORMATS) if fmt == "JPEG"):
        image, _ = dataset[index]
        data = samples[index].image
        assert torch.equal(
            image.as_subclass(torch.Tensor), decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        )
        difference = np.abs(image.permute(1, 2, 0).numpy().astype(int) - _pil_decode(data))
        assert difference.max() <= 2


def test_masks_equal_written_labels(prepared) -> None:
    path, _, labels = prepared
    dataset = HDF5SegmentationDataset(path, "train")
    for index, label in enumerate(labels):
        _, mask = dataset[index]
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), label)
    np.testing.assert_array_equal(dataset[-1][1].numpy(), labels[-1])
    with pytest.raises(IndexError):
        dataset[NUM_TRAIN]


def test_unlabelled_split_gives_ignore_masks(prepared) -> None:
    dataset = HDF5SegmentationDataset(prepared[0], "test")
    image, mask = dataset[1]
    assert mask.shape == (18, 25) and image.shape == (3, 18, 25)
    assert bool((mask == IGNORE_INDEX).all())
    with pytest.raises(DataError, match="unlabelled"):
        dataset.sample_weights()


def test_missing_split_lists_available_ones(prepared) -> None:
    with pytest.raises(DataError, match=r"no split 'val'.*test, train"):
        HDF5SegmentationDataset(prepared[0], "val")
    with pytest.raises(DataError, match=r"no split 'val'.*test, train"):
        read_image_and_mask(prepared[0], "val", 0)


def test_foreign_files_are_rejected(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DataError, match="not an encnet dataset"):
        HDF5SegmentationDataset(other, "train")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        HDF5SegmentationDataset(text, "train")


def test_dataloader_workers_match_single_process(prepared) -> None:
    dataset = HDF5SegmentationDataset(prepared[0], "train", transform=eval_transform(16))
    dataset[0]  # open the handle in the parent first: forked workers must open their own
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored._handle is None
    torch.testing.assert_close(restored[2], dataset[2], rtol=0, atol=0)

    def batches(workers: int) -> list[list[torch.Tensor]]:
        return list(DataLoader(dataset, batch_size=2, num_workers=workers))

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == NUM_TRAIN // 2
    for (image_a, mask_a), (image_b, mask_b) in zip(serial, parallel, strict=True):
        assert image_a.shape == (2, 3, 16, 16) and mask_a.shape == (2, 16, 16)
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def test_sample_weights_favour_rare_classes(prepared) -> None:
    dataset = HDF5SegmentationDataset(prepared[0], "train")
    weights = dataset.sample_weights()
    # classes 0..2 are in all 6 images (frequency 1), class 3 in one (frequency 1/6): weights 1 and 6
    expected = torch.tensor([1.0] * 5 + [6.0], dtype=torch.float64) / 11
    torch.testing.assert_close(weights, expected)
    assert float(dataset.sample_weights(power=0.5)[RARE_IMAGE]) == pytest.approx(6**0.5 / (5 + 6**0.5))
    torch.testing.assert_close(
        dataset.sample_weights(power=0.0), torch.full((6,), 1 / 6, dtype=torch.float64)
    )
    with pytest.raises(ConfigError):
        dataset.sample_weights(power=-1.0)
    drawn = list(WeightedRandomSampler(weights, num_samples=2000, generator=torch.Generator().manual_seed(0)))
    assert 0.45 < drawn.count(RARE_IMAGE) / 2000 < 0.65  # expected 6/11 = 0.545


def test_read_image_and_mask_at_full_resolution(prepared) -> None:
    path, samples, labels = prepared
    image, mask = read_image_and_mask(path, "train", 2)
    assert image.dtype == np.uint8 and image.shape == (samples[2].height, samples[2].width, 3)
    np.testing.assert_array_equal(image, _pil_decode(samples[2].image))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, labels[2])
    _, empty = read_image_and_mask(path, "test", 0)
    assert empty.shape == (18, 25) and bool((empty == IGNORE_INDEX).all())
