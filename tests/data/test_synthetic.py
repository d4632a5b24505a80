"""The synthetic VOC-style dataset: determinism, archive layout, masks, class coverage, context pairs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.synthetic import (
    CLASSES,
    CONTEXT_PAIRS,
    FAR_CLASSES,
    PALETTE,
    SCENES,
    generate_indexed_scene,
    generate_scene,
    layout_classes,
    layout_palette,
    write_voc_archive,
)
from encnet_core.errors import ConfigError
from encnet_core.palette import delta_e76, pil_palette, voc_palette

ROOT = "VOCdevkit/VOC2012"
SMALL = {"num_train": 5, "num_val": 3, "size": 48, "seed": 7}
SMALL_IDS = [f"syn_{index:06d}" for index in range(8)]

Scene = tuple[np.ndarray, np.ndarray, str]


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[tuple[str, int, int]]]:
    """A small archive, its summary and the progress calls made while writing it."""
    path = tmp_path_factory.mktemp("synthetic") / "voc.tar"
    calls: list[tuple[str, int, int]] = []
    summary = write_voc_archive(path, progress=lambda *call, unit: calls.append(call), **SMALL)
    return path, summary, calls


@pytest.fixture(scope="module")
def default_scenes() -> list[Scene]:
    """The 400 scenes (train + val) of the default dataset: seed 0, 128 px."""
    return [generate_indexed_scene(0, index, 128) for index in range(400)]


def read_member(path: Path, name: str) -> bytes:
    """The bytes of one archive member."""
    with tarfile.open(path) as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()


def test_same_arguments_give_a_byte_identical_archive(tmp_path: Path, small_archive) -> None:
    path, _, _ = small_archive
    again = write_voc_archive(tmp_path / "again.tar", **SMALL)
    other = write_voc_archive(tmp_path / "other.tar", **{**SMALL, "seed": 8})
    assert Path(again["path"]).read_bytes() == path.read_bytes()
    assert Path(other["path"]).read_bytes() != path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tar", "other.tar"]  # no temp files left


def test_archive_has_the_voc_layout(small_archive) -> None:
    path, summary, _ = small_archive
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    folders = ["VOCdevkit", ROOT, f"{ROOT}/JPEGImages", f"{ROOT}/SegmentationClass", f"{ROOT}/ImageSets"]
    expected = [*folders, f"{ROOT}/ImageSets/Segmentation"]
    for image_id in SMALL_IDS:
        expected += [f"{ROOT}/JPEGImages/{image_id}.jpg", f"{ROOT}/SegmentationClass/{image_id}.png"]
    expected += [f"{ROOT}/ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "trainval")]
    expected += [f"{ROOT}/classes.txt", f"{ROOT}/scenes.json"]
    assert [m.name for m in members] == expected
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}

    split = f"{ROOT}/ImageSets/Segmentation"
    assert read_member(path, f"{split}/train.txt").decode() == "".join(f"{i}\n" for i in SMALL_IDS[:5])
    assert read_member(path, f"{split}/val.txt").decode() == "".join(f"{i}\n" for i in SMALL_IDS[5:])
    assert read_member(path, f"{split}/trainval.txt").decode() == "".join(f"{i}\n" for i in SMALL_IDS)
    assert read_member(path, f"{ROOT}/classes.txt").decode().splitlines() == list(CLASSES)
    scenes = json.loads(read_member(path, f"{ROOT}/scenes.json"))
    assert scenes == {i: generate_indexed_scene(7, n, 48)[2] for n, i in enumerate(SMALL_IDS)}

    assert summary["path"] == str(path)
    assert summary["splits"] == {"train": 5, "val": 3, "trainval": 8}
    assert summary["classes"] == list(CLASSES)
    assert sum(summary["scenes"].values()) == 8 and set(summary["scenes"]) <= set(SCENES)


def test_masks_and_images_decode_to_the_generated_scenes(small_archive) -> None:
    path, _, _ = small_archive
    for index, image_id in enumerate(SMALL_IDS):
        image, labels, _ = generate_indexed_scene(7, index, 48)
        mask = Image.open(io.BytesIO(read_member(path, f"{ROOT}/SegmentationClass/{image_id}.png")))
        assert mask.mode == "P" and mask.size == (48, 48)
        assert mask.getpalette() == pil_palette(PALETTE)
        decoded = np.asarray(mask)
        np.testing.assert_array_equal(decoded, labels)
        assert set(np.unique(decoded)) <= set(range(len(CLASSES))) | {IGNORE_INDEX}

        jpeg = Image.open(io.BytesIO(read_member(path, f"{ROOT}/JPEGImages/{image_id}.jpg")))
        assert jpeg.format == "JPEG" and jpeg.mode == "RGB" and jpeg.size == (48, 48)
        assert (
            np.abs(np.asarray(jpeg, dtype=np.int16) - image).mean() < 12
        )  # lossy (grain, 4:2:0 chroma) but the same picture


def test_progress_reports_every_image(small_archive) -> None:
    _, _, calls = small_archive
    assert [(done, total) for _, done, total in calls] == [(n, 8) for n in range(1, 9)]


def test_generate_scene_is_deterministic() -> None:
    first = generate_scene(np.random.default_rng(3), 64)
    second = generate_scene(np.random.default_rng(3), 64)
    image, labels, scene = first
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert labels.shape == (64, 64) and labels.dtype == np.uint8
    assert scene in SCENES
    np.testing.assert_array_equal(image, second[0])
    np.testing.assert_array_equal(labels, second[1])
    assert scene == second[2]


def test_class_colours_are_far_apart_in_cielab() -> None:
    """Every two classes of either layout, and each class and the white of ignored pixels, differ by
    deltaE76 >= 39 (the VOC colour map they had before: 8.8 for sea/ground, 11.3 for counter/person)."""
    far = layout_palette("far")
    assert layout_classes("far") == FAR_CLASSES and far.shape == (len(FAR_CLASSES), 3) and far.dtype == np.uint8
    np.testing.assert_array_equal(PALETTE, far[: len(CLASSES)])
    np.testing.assert_array_equal(layout_palette("standard"), PALETTE)
    with_white = np.concatenate([far, [[255, 255, 255]]])
    distance = delta_e76(with_white)
    np.fill_diagonal(distance, np.inf)
    assert distance.min() >= 39.0
    old = delta_e76(voc_palette(len(FAR_CLASSES)))
    np.fill_diagonal(old, np.inf)
    assert old.min() < 10.0  # what the check would have caught
    assert len({tuple(row) for row in with_white.tolist()}) == len(with_white)


def test_prepared_synthetic_file_carries_the_class_colours(tmp_path: Path) -> None:
    from encnet_core.data.hdf5 import read_info
    from encnet_core.data.prepare import PrepareOptions, prepare

    out = tmp_path / "syn.h5"
    prepare("synthetic", PrepareOptions(out=out, root=tmp_path / "cache", workers=1, params={"num_train": 2, "num_val": 1, "size": 48}))
    info = read_info(out)
    assert info.classes == list(CLASSES)
    np.testing.assert_array_equal(info.palette, PALETTE)


def test_every_class_appears_in_the_default_dataset(default_scenes: list[Scene]) -> None:
    present = set().union(*(np.unique(labels).tolist() for _, labels, _ in default_scenes))
    assert present == set(range(len(CLASSES))) | {IGNORE_INDEX}
    for _, labels, scene in default_scenes:
        objects = {CLASSES[v] for v in np.unique(labels) if v != IGNORE_INDEX} & set().union(*SCENES.values())
        assert objects <= set(SCENES[scene])
        ignored = (labels == IGNORE_INDEX).mean()
        assert 0 < ignored < 0.2  # every scene has objects, outlined by a thin band


def pixel_stats(scenes: list[Scene], name: str) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """Mean and std colour (3,) of the pixels labelled ``name``, and the scene types it occurs in."""
    label = CLASSES.index(name)
    pixels = np.concatenate([image[labels == label] for image, labels, _ in scenes])  # (N, 3)
    pixels = pixels.astype(np.float64)
    seen = {scene for _, labels, scene in scenes if (labels == label).any()}
    return pixels.mean(0), pixels.std(0), seen


def allowed(name: str) -> set[str]:
    """The scene types in which object class ``name`` may occur."""
    return {scene for scene, objects in SCENES.items() if name in objects}


@pytest.mark.parametrize("pair", CONTEXT_PAIRS, ids="-".join)
def test_context_pairs_look_alike_but_never_share_a_scene(
    default_scenes: list[Scene], pair: tuple[str, str]
) -> None:
    first, second = pair
    assert allowed(first) and allowed(second) and not allowed(first) & allowed(second)

    mean_a, std_a, seen_a = pixel_stats(default_scenes, first)
    mean_b, std_b, seen_b = pixel_stats(default_scenes, second)
    assert seen_a == allowed(first) and seen_b == allowed(second)
    assert np.abs(mean_a - mean_b).max() < 12  # instance colours are random: ~60 objects each
    assert np.abs(std_a - std_b).max() < 8


def test_classes_outside_a_pair_look_different(default_scenes: list[Scene]) -> None:
    """The tolerance above is tight enough to separate classes that are not drawn alike."""
    (car, _), (umbrella, _) = CONTEXT_PAIRS
    mean_car, _, _ = pixel_stats(default_scenes, car)
    mean_umbrella, _, _ = pixel_stats(default_scenes, umbrella)
    assert np.abs(mean_car - mean_umbrella).max() > 30


@pytest.mark.parametrize(
    ("override", "message"),
    [({"size": 16}, "at least 32"), ({"num_val": 0}, "at least 1"), ({"seed": -1}, "0 or more")],
)
def test_invalid_arguments_raise_a_config_error(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_voc_archive(tmp_path / "voc.tar", **{**SMALL, **override})
    assert list(tmp_path.iterdir()) == []


def test_palette_png_is_the_one_palette_writer() -> None:
    """palette_png writes what the earlier writers (L image converted to P, frombytes P) wrote, byte for byte."""
    import io

    from PIL import Image

    from encnet_core.palette import palette_png

    rng = np.random.default_rng(0)
    for shape, classes in (((17, 23), 4), ((64, 64), 21), ((5, 300), 150)):
        labels = rng.integers(0, classes, shape).astype(np.uint8)
        labels[0, 0] = IGNORE_INDEX
        palette = voc_palette(classes)
        converted = Image.fromarray(labels, mode="L").convert("P")
        converted.putpalette(pil_palette(palette))
        buffer = io.BytesIO()
        converted.save(buffer, format="PNG")
        assert palette_png(labels, palette) == buffer.getvalue()
        with Image.open(io.BytesIO(palette_png(labels, palette))) as image:
            assert image.mode == "P" and np.array_equal(np.asarray(image), labels)
            assert image.getpalette()[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] == [255, 255, 255]


# ----------------------------------------------------------------------------- the far layout


@pytest.fixture(scope="module")
def far_scenes() -> list[Scene]:
    """40 scenes of the far layout at its default (and smallest) size, 256 px."""
    return [generate_indexed_scene(0, index, 256, "far") for index in range(40)]


def test_far_layout_classes_and_default_size() -> None:
    from encnet_core.data.synthetic import DEFAULT_SIZES, FAR_CLASSES, layout_classes

    assert layout_classes("standard") == CLASSES
    assert layout_classes("far") == FAR_CLASSES == (*CLASSES, "ground")
    assert DEFAULT_SIZES == {"standard": 128, "far": 256}
    with pytest.raises(ConfigError, match="at least 256"):
        generate_scene(np.random.default_rng(0), 192, "far")
    with pytest.raises(ConfigError, match="unknown synthetic layout 'near'"):
        generate_scene(np.random.default_rng(0), 256, "near")


def test_far_layout_has_one_twin_class_per_image_and_balanced_twins(far_scenes: list[Scene]) -> None:
    from encnet_core.data.synthetic import FAR_CLASSES

    twins = {name for pair in CONTEXT_PAIRS for name in pair}
    seen: dict[str, int] = {}
    for _, labels, scene in far_scenes:
        present = {FAR_CLASSES[i] for i in np.unique(labels) if i != IGNORE_INDEX}
        image_twins = present & twins
        assert len(image_twins) == 1, (scene, present)  # which twins co-occur tells nothing
        (twin,) = image_twins
        assert scene in allowed(twin)
        assert "ground" in present
        seen[twin] = seen.get(twin, 0) + 1
    assert set(seen) == twins and min(seen.values()) >= 5  # each twin class in about a quarter of the images


def test_far_layout_twins_lie_beyond_the_fcn_receptive_field(far_scenes: list[Scene]) -> None:
    """Every twin pixel is > 100 px (Chebyshev) from any scene pixel: only twins, ground and ignore nearer.

    fcn_tiny's theoretical receptive field reaches 86 px from its centre (benchmarks/receptive_field.py).
    """
    from scipy import ndimage

    from encnet_core.data.synthetic import FAR_CLASSES

    twin_ids = [FAR_CLASSES.index(n) for pair in CONTEXT_PAIRS for n in pair]
    scene_ids = [i for i, n in enumerate(FAR_CLASSES) if i not in twin_ids and n != "ground"]
    nearest = []
    for _, labels, _ in far_scenes:
        distance = ndimage.distance_transform_cdt(~np.isin(labels, scene_ids), metric="chessboard")
        nearest.append(distance[np.isin(labels, twin_ids)].min())
    assert min(nearest) > 100


def test_far_layout_twins_are_drawn_identically() -> None:
    """The same random state draws a car and an oven (an umbrella and a lamp) pixel for pixel alike."""
    from encnet_core.data import synthetic

    for first, second in CONTEXT_PAIRS:
        drawn = []
        for name in (first, second):
            canvas = synthetic._Canvas(np.random.default_rng(3), 256)
            canvas.object_scale = synthetic._FAR_TWIN_SCALE
            synthetic._OBJECTS[name](canvas, name, 128.0, 250.0)
            drawn.append(canvas)
        assert np.array_equal(drawn[0].image, drawn[1].image)
        assert np.array_equal(drawn[0].labels > 0, drawn[1].labels > 0)


def test_far_archive_lists_the_ground_class(tmp_path: Path) -> None:
    summary = write_voc_archive(tmp_path / "far.tar", num_train=2, num_val=1, size=256, seed=0, layout="far")
    assert summary["layout"] == "far" and summary["classes"][-1] == "ground"
    classes = read_member(tmp_path / "far.tar", f"{ROOT}/classes.txt").decode().split()
    assert classes == summary["classes"]
