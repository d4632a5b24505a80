"""The format's rules have one owner (hdf5.py), so that every writer and reader agrees: mask decoding
(the dataset and `encnet targets`), the label check (prepare and the dataset), the presence rule
(HDF5Writer and `encnet targets`) and the statistics' format version."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from encnet_core.data.dataset import BadSampleError, HDF5SegmentationDataset
from encnet_core.data.hdf5 import (
    FORMAT_VERSION,
    HDF5Writer,
    MaskError,
    Sample,
    class_pixel_counts,
    class_presence,
    dataset_statistics,
    decode_mask,
    decode_mask_tensor,
    encode_mask,
    invalid_label,
)
from encnet_core.data.prepare import recompute_targets
from encnet_core.errors import DataError

SIZE = 8
CLASSES = ["a", "b", "c", "d"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _palette(labels: np.ndarray, bits: int = 8) -> bytes:
    image = Image.fromarray(labels, mode="P")
    image.putpalette([v % 256 for v in range(768)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", bits=bits) if bits != 8 else image.save(buffer, format="PNG")
    return buffer.getvalue()


LABELS = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3).astype(np.uint8)
ACCEPTED = {
    "encode_mask (grayscale)": encode_mask(LABELS),
    "8-bit palette PNG": _palette(LABELS),
}
REFUSED = {
    "RGB": _png(Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8))),
    "grayscale + alpha": _png(Image.fromarray(np.zeros((SIZE, SIZE, 2), np.uint8), mode="LA")),
    "16-bit": _png(Image.fromarray(np.full((SIZE, SIZE), 300, np.uint16))),
    "1-bit": _png(Image.fromarray(np.zeros((SIZE, SIZE), bool))),
    "2-bit palette": _palette(LABELS, bits=2),
    "JPEG": (lambda b: (Image.fromarray(LABELS * 60, mode="L").save(b, format="JPEG"), b.getvalue())[1])(io.BytesIO()),
    "garbage": b"garbage",
    "truncated": encode_mask(LABELS)[:40],
}


def _file(tmp_path: Path, masks: list[bytes]) -> Path:
    path = tmp_path / "m.h5"
    image = _png(Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)))
    with HDF5Writer(path, "toy", CLASSES, np.zeros((4, 3), np.uint8)) as writer:
        writer.begin_split("train", len(masks), labelled=True)
        for i in range(len(masks)):
            writer.add(Sample(f"s{i}", image, SIZE, SIZE, encode_mask(LABELS), class_pixel_counts(LABELS, 4)))
    with h5py.File(path, "r+") as handle:
        for i, mask in enumerate(masks):
            handle["train/masks"][i] = np.frombuffer(mask, np.uint8)
    return path


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_masks_decode_alike_everywhere(tmp_path: Path, case: str) -> None:
    data = ACCEPTED[case]
    assert np.array_equal(decode_mask(data), LABELS)
    assert decode_mask_tensor(np.frombuffer(data, np.uint8)).dtype == torch.uint8
    path = _file(tmp_path, [data])
    assert np.array_equal(HDF5SegmentationDataset(path, "train")[0][1].numpy(), LABELS)
    assert recompute_targets(path) == {"train": 1}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_masks_are_refused_everywhere(tmp_path: Path, case: str) -> None:
    data = REFUSED[case]
    with pytest.raises(MaskError) as caught:
        decode_mask(data)
    assert "\n" not in str(caught.value) and "decode_png.cpp" not in str(caught.value)
    path = _file(tmp_path, [data])
    with pytest.raises(BadSampleError, match=r"sample 0 \('s0'\): the mask (is not a readable PNG|has \d channel)"):
        HDF5SegmentationDataset(path, "train")[0]
    with pytest.raises(DataError, match=r"mask of train/s0 \(sample 0\): the mask (does not decode|is a .* image)"):
        recompute_targets(path)


def test_mask_error_wording_and_pickling() -> None:
    with pytest.raises(MaskError) as caught:
        decode_mask(REFUSED["16-bit"])
    error = caught.value
    assert str(error) == "the mask is a 16-bit grayscale image, not a single-channel label map"
    assert (error.detail, error.channels, error.depth) == (None, 1, "uint16")
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.channels, again.depth) == (str(error), 1, "uint16")
    with pytest.raises(MaskError, match=r"^the mask does not decode \(a JPEG file, not a PNG\)$"):
        decode_mask(REFUSED["JPEG"])
    with pytest.raises(MaskError, match=r"^the mask does not decode \(it is empty\)$"):
        decode_mask(b"")


def test_invalid_label_numpy_and_torch_agree() -> None:
    rng = np.random.default_rng(0)
    for classes in (1, 4, 21, 150, 255):
        for _ in range(20):
            labels = rng.integers(0, 256, (5, 7)).astype(np.uint8)
            labels[rng.random(labels.shape) < 0.5] = rng.integers(0, classes)
            bad = (labels >= classes) & (labels != 255)
            expected = int(labels[bad].max()) if bad.any() else None
            assert invalid_label(labels, classes) == expected
            assert invalid_label(torch.from_numpy(labels), classes) == expected
            assert invalid_label(labels.astype(np.int32), classes) == expected  # other integer types
    assert invalid_label(np.full((2, 2), 255, np.uint8), 4) is None
    assert invalid_label(np.zeros((0, 3), np.uint8), 4) is None


def test_presence_rule_is_the_same_for_the_writer_and_targets(tmp_path: Path) -> None:
    pixels = np.array([0, 1, 2, 5], np.int64)
    assert class_presence(pixels, 2).tolist() == [0, 0, 1, 1]
    assert class_presence(pixels[None], 1).dtype == np.uint8
    labels = np.array([[0, 0, 1, 255], [2, 2, 2, 0]], np.uint8)  # class pixels 3, 1, 3, 0
    path = tmp_path / "p.h5"
    image = _png(Image.fromarray(np.zeros((2, 4, 3), np.uint8)))
    with HDF5Writer(path, "toy", CLASSES, np.zeros((4, 3), np.uint8), min_pixels=2) as writer:
        writer.begin_split("train", 1, labelled=True)
        writer.add(Sample("x", image, 2, 4, encode_mask(labels), class_pixel_counts(labels, 4)))
    with h5py.File(path) as handle:
        written = handle["train/se_targets"][...].tolist()
    recompute_targets(path, min_pixels=2)
    with h5py.File(path) as handle:
        assert handle["train/se_targets"][...].tolist() == written == [[1, 0, 1, 0]]


def test_statistics_report_the_format_version(tmp_path: Path) -> None:
    stats = dataset_statistics(_file(tmp_path, [encode_mask(LABELS)]))
    assert stats["format_version"] == FORMAT_VERSION and stats["splits"]["train"]["images"] == 1


def test_writer_block_writes_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples are written a block at a time: blocks of equal-length and ragged blobs, a block cut short by its
    bytes, a split that outgrows its capacity, and the final short block all read back sample by sample."""
    import encnet_core.data.hdf5 as hdf5

    monkeypatch.setattr(hdf5, "WRITE_BLOCK", 8)
    monkeypatch.setattr(hdf5, "WRITE_BLOCK_BYTES", 400)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(29):
        labels = rng.integers(0, 3, (2, 3)).astype(np.uint8)
        image = bytes([i]) * (5 if i < 12 else 5 + i)  # the first blocks: every blob the same length
        if i == 20:
            image = bytes(300)  # cuts its block short by bytes
        samples.append(hdf5.Sample(f"s{i}", image, 2, 3, hdf5.encode_mask(labels), hdf5.class_pixel_counts(labels, 3)))
    out = tmp_path / "blocks.h5"
    with hdf5.HDF5Writer(out, "blocks", ["a", "b", "c"], np.zeros((3, 3), np.uint8), min_pixels=2) as writer:
        writer.begin_split("train", capacity=10, labelled=True)
        writer.add_all(samples)
        writer.begin_split("val", capacity=3, labelled=False)
        writer.add(hdf5.Sample("u0", b"xyz", 1, 1))
    with h5py.File(out, "r") as handle:
        train = handle["train"]
        assert train["names"].shape == (29,) and train["images"].chunks == (10,)
        for i, sample in enumerate(samples):
            assert train["names"][i].decode() == sample.name
            assert bytes(train["images"][i]) == sample.image and bytes(train["masks"][i]) == sample.mask
            assert train["sizes"][i].tolist() == [2, 3]
            assert train["class_pixels"][i].tolist() == sample.class_pixels.tolist()
            assert train["se_targets"][i].tolist() == (sample.class_pixels >= 2).astype(int).tolist()
        assert bytes(handle["val"]["images"][0]) == b"xyz" and handle["val"]["names"].shape == (1,)
        assert "masks" not in handle["val"]
