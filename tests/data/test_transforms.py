"""Paired transforms: output contract, right/bottom padding, image/mask alignment, scale range, eval sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from encnet_core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from encnet_core.data.transforms import (
    PlainMask,
    RandomLongSideResize,
    eval_transform,
    normalize_only,
    train_transform,
)
from encnet_core.errors import ConfigError
from encnet_core.palette import voc_palette

PALETTE = torch.from_numpy(voc_palette(256)).to(torch.int64)  # (256, 3): a distinct colour per label
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _sample(
    height: int, width: int, num_labels: int = 5, seed: int = 0
) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A random uint8 image and a random mask with labels 0..num_labels-1 and about 10 % 255."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    mask = torch.randint(0, num_labels, (height, width), generator=generator)
    mask[torch.rand(height, width, generator=generator) < 0.1] = IGNORE_INDEX
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def _painted(height: int, width: int, block: int, seed: int = 0) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Blocks of random labels (some 255) and an image whose colour at each pixel is PALETTE[label]."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 8, (height // block, width // block))
    blocks[rng.random(blocks.shape) < 0.15] = IGNORE_INDEX
    labels = torch.from_numpy(np.kron(blocks, np.ones((block, block), dtype=np.int64)))  # (H, W)
    image = PALETTE[labels].permute(2, 0, 1).to(torch.uint8)  # (3, H, W)
    return tv_tensors.Image(image), tv_tensors.Mask(labels)


def test_train_output_contract() -> None:
    image, mask = _sample(50, 70)
    transform = train_transform(base_size=40, crop_size=32)
    for _ in range(10):
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.float32
        assert type(out_mask) is torch.Tensor and out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {IGNORE_INDEX}


def test_padding_is_right_bottom_with_black_image_and_ignore_mask() -> None:
    image, mask = _sample(10, 14)
    # scale (1, 1): the long side stays 14, so only padding to 20 x 20 and a crop at (0, 0) happen
    out_image, out_mask = train_transform(base_size=14, crop_size=20, scale_range=(1.0, 1.0), flip=False)(
        image, mask
    )
    assert torch.equal(out_mask[:10, :14], mask.as_subclass(torch.Tensor))
    assert bool((out_mask[10:] == IGNORE_INDEX).all()) and bool((out_mask[:, 14:] == IGNORE_INDEX).all())
    torch.testing.assert_close(out_image[:, :10, :14], (image.float() / 255 - MEAN) / STD)
    padding = ((0 - MEAN) / STD).expand(3, 20, 20)
    torch.testing.assert_close(out_image[:, 10:], padding[:, 10:])
    torch.testing.assert_close(out_image[:, :, 14:], padding[:, :, 14:])


def test_mask_stays_aligned_with_image() -> None:
    """After flip, resize and crop each pixel's nearest label colour is its mask label, except near boundaries.

    Bilinear resizing blends colours across label boundaries while the mask is resized with nearest
    neighbour, so a thin fraction of pixels may disagree; a mirrored mask disagrees almost everywhere.
    """
    image, mask = _painted(96, 128, block=16)
    labels = mask.unique()  # (L,) the labels present, 255 included
    transform = train_transform(base_size=128, crop_size=96, mean=(0, 0, 0), std=(1, 1, 1))
    mismatched = mirrored = total = 0
    for _ in range(12):
        out_image, out_mask = transform(image, mask)
        colour = (out_image * 255).round().to(torch.int64).permute(1, 2, 0)  # (H, W, 3)
        distance = (colour[:, :, None] - PALETTE[labels]).abs().sum(dim=-1)  # (H, W, L)
        seen = labels[distance.argmin(dim=-1)]  # (H, W) the label whose colour is nearest
        inside = ~((out_mask == IGNORE_INDEX) & (colour == 0).all(dim=-1))  # not padding
        mismatched += int(((seen != out_mask) & inside).sum())
        mirrored += int(((seen != out_mask.flip(-1)) & inside).sum())
        total += int(inside.sum())
    assert total > 0 and mismatched / total < 0.05
    assert mirrored / total > 0.5


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = _sample(16, 16)
    transform = train_transform(
        base_size=16, crop_size=16, scale_range=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1)
    )
    flipped = 0
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        is_flipped = torch.equal(out_mask, mask.flip(-1).as_subclass(torch.Tensor))
        assert is_flipped or torch.equal(out_mask, mask.as_subclass(torch.Tensor))
        reference = image.flip(-1) if is_flipped else image
        torch.testing.assert_close(out_image, reference.float() / 255)
        flipped += is_flipped
    assert 0 < flipped < 20


def test_long_side_stays_in_scale_range() -> None:
    """The resized image (non-255 mask area in an oversized crop) has its long side in [20, 80], aspect kept."""
    mask = tv_tensors.Mask(torch.zeros(30, 40, dtype=torch.int64))
    image = tv_tensors.Image(torch.zeros(3, 30, 40, dtype=torch.uint8))
    transform = train_transform(base_size=40, crop_size=80, scale_range=(0.5, 2.0), flip=False)
    long_sides = []
    for _ in range(30):
        _, out_mask = transform(image, mask)
        height = int((out_mask[:, 0] != IGNORE_INDEX).sum())
        width = int((out_mask[0] != IGNORE_INDEX).sum())
        assert 20 <= width <= 80 and height == int(30 * width / 40 + 0.5)
        long_sides.append(width)
    assert min(long_sides) < 35 and max(long_sides) > 65  # draws spread over the range


def test_random_long_side_resize_keeps_portrait_aspect() -> None:
    image, mask = _sample(60, 25)
    out_image, out_mask = RandomLongSideResize(90, 90)(image, mask)
    assert out_image.shape == (3, 90, 38) and out_mask.shape == (90, 38)  # 25 * 90 / 60 = 37.5 -> 38
    assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())


def test_eval_transform_resizes_short_side_and_centre_crops() -> None:
    image, mask = _sample(50, 70)
    out_image, out_mask = eval_transform(crop_size=32)(image, mask)
    assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.float32
    assert type(out_mask) is torch.Tensor and out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())


def test_normalize_only_keeps_size_and_labels() -> None:
    image, mask = _sample(23, 31)
    out_image, out_mask = normalize_only()(image, mask)
    torch.testing.assert_close(out_image, (image.float() / 255 - MEAN) / STD)
    assert type(out_mask) is torch.Tensor and torch.equal(out_mask, mask.as_subclass(torch.Tensor))


def test_plain_mask_squeezes_channel() -> None:
    mask = tv_tensors.Mask(torch.ones(1, 4, 5, dtype=torch.uint8))
    out = PlainMask()(mask)
    assert type(out) is torch.Tensor and out.shape == (4, 5) and out.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs", [{"scale_range": (2.0, 0.5)}, {"crop_size": 0}, {"scale_range": (0.0, 1.0)}]
)
def test_train_transform_rejects_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        train_transform(**kwargs)


def test_one_normalisation_for_training_and_inference() -> None:
    """normalize_image is what the training pipelines and LoadedModel.normalize compute: the earlier
    inference formula exactly, torchvision's ToDtype + Normalize (training until now) to float rounding."""
    from encnet_core.data.transforms import normalize_image
    from encnet_core.weights.model_files import LoadedModel

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8, generator=generator)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ours = normalize_image(image, mean, std)
    assert ours.dtype == torch.float32 and ours.shape == image.shape
    earlier_inference = (image.float() / 255.0 - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert torch.equal(ours, earlier_inference)
    earlier_training = v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(image))
    torch.testing.assert_close(ours, earlier_training, rtol=1e-6, atol=1e-6)
    model = LoadedModel(run=lambda x: (x, None), classes=["a"], palette=np.zeros((1, 3), np.uint8), mean=mean,
                        std=std, base_size=8, crop_size=8, device=torch.device("cpu"), source="checkpoint")  # fmt: skip
    assert torch.equal(model.normalize(image), ours)
    float_image = image.float()
    normalize_image(float_image, mean, std)
    assert torch.equal(float_image, image.float())  # the input is left as it is
    pipeline, _ = normalize_only(mean, std)(tv_tensors.Image(image[0]), tv_tensors.Mask(torch.zeros(9, 11, dtype=torch.int64)))
    assert torch.equal(pipeline.as_subclass(torch.Tensor), ours[0])
