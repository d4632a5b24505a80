"""prepare's label checks (encnet_core/data/label_checks.py): 0/255 masks of a 2-class list (--binary),
labels that start at 1 (--reduce-zero-label), values above the class count, colour masks, classes with
no pixel; every error leaves no file behind."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from encnet_core.data.hdf5 import dataset_statistics
from encnet_core.data.label_checks import LabelChecks, empty_classes, empty_classes_message
from encnet_core.data.prepare import PrepareOptions, PrepareResult, convert_item, prepare
from encnet_core.data.sources import Item
from encnet_core.data.sources.folder import decode_folder_mask
from encnet_core.errors import ConfigError, DataError


def _data_fixtures() -> ModuleType:
    """tests/data/conftest.py as a module of its own (see tests/data/test_prepare.py)."""
    name = "encnet_tests_data_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("conftest.py"))
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fx = _data_fixtures()


def run(source: str, tmp_path: Path, **options) -> tuple[PrepareResult, list[str]]:
    warnings: list[str] = []
    defaults = {"out": tmp_path / "out.h5", "root": tmp_path / "cache", "workers": 1}
    result = prepare(source, PrepareOptions(**{**defaults, **options}), warn=warnings.append)
    return result, warnings


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def stored_masks(path: Path, split: str) -> dict[str, np.ndarray]:
    stored = fx.stored_split(path, split)
    return dict(zip(stored["names"], stored["masks"], strict=True))


def make_folder(tmp_path: Path, masks: dict[str, bytes], classes: str) -> dict[str, object]:
    """A flat folder: a random 24x30 JPEG per mask; the folder params (all in train)."""
    rng = np.random.default_rng(3)
    for name, data in masks.items():
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        (tmp_path / "images" / f"{name}.jpg").write_bytes(fx.encode(fx.random_image(rng, 24, 30)))
        (tmp_path / "masks" / f"{name}.png").write_bytes(data)
    (tmp_path / "classes.txt").write_text(classes)
    return {"images": tmp_path / "images", "masks": tmp_path / "masks", "classes": tmp_path / "classes.txt",
            "val_fraction": 0.0}  # fmt: skip


def object_masks(count: int = 12) -> dict[str, np.ndarray]:
    """0/255 object masks (the mmsegmentation trap): a rectangle of 255 on 0."""
    masks = {}
    for i in range(count):
        mask = np.zeros((24, 30), dtype=np.uint8)
        mask[2 + i % 5 : 12 + i % 7, 3 : 10 + i] = 255
        masks[f"m{i:02d}"] = mask
    return masks


# ----------------------------------------------------------------------------- 0/255 masks: --binary


def test_zero_255_masks_with_two_classes_are_an_error_then_binary_works(tmp_path: Path) -> None:
    masks = object_masks()
    params = make_folder(tmp_path, {k: fx.gray_png(v) for k, v in masks.items()}, "background\nobject\n")
    with pytest.raises(DataError) as error:
        run("folder", tmp_path, params=params)
    message = str(error.value)
    assert "\n" not in message
    masks_dir = tmp_path / "masks"
    assert message == (
        f"every mask holds only 0 and 255 (e.g. {masks_dir}/m00.png, {masks_dir}/m01.png, {masks_dir}/m02.png "
        "and 9 more) and the class list has 2 classes (background, object), but 255 is the ignore value, so "
        "'object' would get no pixel: pass --binary to read 255 as class 1 (object)"
    )
    assert not any(name.endswith(".h5") or "out" in name for name in files_under(tmp_path))  # no file, no temp file

    result, warnings = run("folder", tmp_path, params={**params, "binary": True})
    assert warnings == [] and result.empty_classes == [] and result.counts == {"train": 12}
    stored = stored_masks(result.out, "train")
    for name, mask in masks.items():
        np.testing.assert_array_equal(stored[name], (mask == 255).astype(np.uint8))
    train = dataset_statistics(result.out)["splits"]["train"]
    share = sum(int((m == 255).sum()) for m in masks.values()) / sum(m.size for m in masks.values())
    assert train["classes"][1]["name"] == "object" and train["classes"][1]["pixel_share"] == pytest.approx(share)
    assert train["classes"][1]["pixel_share"] > 0 and train["empty_classes"] == []


def test_a_colour_black_and_white_mask_also_needs_binary(tmp_path: Path) -> None:
    """RGB black/white masks: white is ignore, so the same trap; --binary maps it to class 1 as well."""
    masks = object_masks(3)
    rgb = {k: fx.encode(np.repeat(v[..., None], 3, axis=2), "PNG") for k, v in masks.items()}
    params = make_folder(tmp_path, rgb, "background\nobject\n")
    with pytest.raises(DataError, match=r"every mask holds only 0 and 255 .* pass --binary"):
        run("folder", tmp_path, params=params)
    result, _ = run("folder", tmp_path, params={**params, "binary": True})
    for name, mask in masks.items():
        np.testing.assert_array_equal(stored_masks(result.out, "train")[name], (mask == 255).astype(np.uint8))


def test_zero_255_masks_with_an_object_pixel_elsewhere_pass(tmp_path: Path) -> None:
    """One mask that holds class 1 is enough: 255 is then an ignore border, as in VOC."""
    masks = object_masks(3)
    masks["m01"] = masks["m01"].copy()
    masks["m01"][0, 0] = 1
    params = make_folder(tmp_path, {k: fx.gray_png(v) for k, v in masks.items()}, "background\nobject\n")
    result, warnings = run("folder", tmp_path, params=params)
    assert warnings == [] and result.empty_classes == []


def test_a_one_bit_mask_reads_as_0_and_1(tmp_path: Path) -> None:
    mask = object_masks(1)["m00"]
    buffer = io.BytesIO()
    Image.fromarray(mask).convert("1").save(buffer, format="PNG")
    params = make_folder(tmp_path, {"m00": buffer.getvalue()}, "background\nobject\n")
    result, _ = run("folder", tmp_path, params=params)
    np.testing.assert_array_equal(stored_masks(result.out, "train")["m00"], (mask == 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("classes", "extra", "message"),
    [
        ("a\nb\nc\n", {"binary": True}, r"--binary needs a class list of 2 classes \(background, object\); .* lists 3"),
        ("a\nb\n", {"binary": True, "reduce_zero_label": True}, "--binary and --reduce-zero-label do not go together"),
    ],
)
def test_label_options_are_checked_first(tmp_path: Path, classes: str, extra: dict, message: str) -> None:
    params = make_folder(tmp_path, {"m": fx.gray_png(np.zeros((24, 30), np.uint8))}, classes)
    with pytest.raises(ConfigError, match=message):
        run("folder", tmp_path, params={**params, **extra})
    assert not (tmp_path / "out.h5").exists()


# ----------------------------------------------------------------------------- values at or above the class count


def test_labels_that_start_at_1_suggest_reduce_zero_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    masks = {f"m{i}": rng.choice(np.array([1, 2, 3, 255], np.uint8), size=(24, 30)) for i in range(5)}
    params = make_folder(tmp_path, {k: fx.palette_png(v) for k, v in masks.items()}, "road\ncar\nsky\n")
    with pytest.raises(DataError) as error:
        run("folder", tmp_path, params=params)
    m = tmp_path / "masks"
    assert str(error.value) == (
        f"{m}/m0.png: label 3 outside 0..2 (and 255 ignore) (also {m}/m1.png, {m}/m2.png): the labels seem to "
        "start at 1 (values 1..3, no 0 in the 3 masks read, 3 classes): pass --reduce-zero-label to read v as "
        "class v-1 and 0 as ignore"
    )
    assert not any(name.endswith(".h5") or "out" in name for name in files_under(tmp_path))

    result, warnings = run("folder", tmp_path, params={**params, "reduce_zero_label": True})
    assert warnings == [] and result.empty_classes == []
    stored = stored_masks(result.out, "train")
    for name, mask in masks.items():
        expected = np.where(mask == 255, 255, mask.astype(np.int64) - 1).astype(np.uint8)
        np.testing.assert_array_equal(stored[name], expected)


def test_reduce_zero_label_maps_0_to_ignore() -> None:
    raw = fx.gray_png(np.array([[0, 1, 2, 255]], np.uint8))
    palette = zeros_palette(2)
    np.testing.assert_array_equal(decode_folder_mask(raw, palette, reduce_zero_label=True), [[255, 0, 1, 255]])
    np.testing.assert_array_equal(decode_folder_mask(raw, palette, binary=True), [[0, 1, 2, 1]])


def zeros_palette(count: int) -> np.ndarray:
    return np.zeros((count, 3), np.uint8)


def test_a_value_above_the_class_count_names_the_largest_value(tmp_path: Path) -> None:
    masks = {f"m{i}": np.zeros((24, 30), np.uint8) for i in range(4)}
    masks["m2"] = masks["m2"].copy()
    masks["m2"][:4, :4] = 7
    masks["m2"][5, 5] = 4
    params = make_folder(tmp_path, {k: fx.gray_png(v) for k, v in masks.items()}, "a\nb\nc\n")
    with pytest.raises(DataError) as error:
        run("folder", tmp_path, params=params)
    assert str(error.value) == (
        f"{tmp_path}/masks/m2.png: label 7 outside 0..2 (and 255 ignore): the largest mask value is 7 but there "
        "are 3 classes (0..2, 255 = ignore): list every class in the class file, or fix the masks (or pass "
        "--skip-bad to skip such files)"
    )
    assert not (tmp_path / "out.h5").exists()
    result, warnings = run("folder", tmp_path, params=params, skip_bad=True)  # --skip-bad as before
    assert result.counts == {"train": 3} and warnings == [f"skipped {tmp_path}/masks/m2.png: label 7 outside 0..2 (and 255 ignore)"]


def test_a_built_in_source_names_the_largest_value_without_folder_options(tmp_path: Path) -> None:
    layout = fx.voc2012_layout(extra=[])
    labels = layout.labels[fx.VOC_VAL[2]].copy()
    labels[3, 3] = 40
    layout.members[f"VOCdevkit/VOC2012/SegmentationClass/{fx.VOC_VAL[2]}.png"] = fx.palette_png(labels)
    built = fx.write_tar(tmp_path / "in" / fx.VOC2012_TAR, layout)
    with pytest.raises(DataError) as error:
        run("voc", tmp_path, archives={"": built.path}, verify=False)
    assert str(error.value).endswith(
        "label 40 outside 0..20 (and 255 ignore): the largest mask value is 40 but there are 21 classes "
        "(0..20, 255 = ignore): check the archive (or pass --skip-bad to skip such files)"
    )
    assert "--reduce-zero-label" not in str(error.value) and not (tmp_path / "out.h5").exists()


# ----------------------------------------------------------------------------- colour masks


COLOURED = "background 0 0 0\nroad #804080\ncar 0 0 142\n"


def test_colour_masks_map_by_the_class_file_colours(tmp_path: Path) -> None:
    labels = np.zeros((24, 30), np.uint8)
    labels[3:9, 4:20], labels[10:20, 2:6], labels[0, :] = 1, 2, 255
    colours = {0: (0, 0, 0), 1: (128, 64, 128), 2: (0, 0, 142), 255: (255, 255, 255)}
    rgb = np.zeros((24, 30, 3), np.uint8)
    for value, colour in colours.items():
        rgb[labels == value] = colour
    params = make_folder(tmp_path, {"m": fx.encode(rgb, "PNG")}, COLOURED)
    result, _ = run("folder", tmp_path, params=params)
    np.testing.assert_array_equal(stored_masks(result.out, "train")["m"], labels)

    rgb[7, 9] = (10, 20, 30)
    (tmp_path / "masks" / "m.png").write_bytes(fx.encode(rgb, "PNG"))
    with pytest.raises(DataError) as error:
        run("folder", tmp_path, out=tmp_path / "again.h5", params=params)
    assert str(error.value) == (
        f"{tmp_path}/masks/m.png: colour (10, 20, 30) at (7, 9) is not in the class list (pass --skip-bad to skip such files)"
    )
    assert not (tmp_path / "again.h5").exists()


def test_colour_masks_without_class_colours_ask_for_them(tmp_path: Path) -> None:
    rgb = np.zeros((24, 30, 3), np.uint8)
    rgb[2:8, 2:8] = (200, 100, 50)
    params = make_folder(tmp_path, {"m": fx.encode(rgb, "PNG")}, "background\nroof\n")
    with pytest.raises(DataError) as error:
        run("folder", tmp_path, params=params)
    assert str(error.value) == (
        f"{tmp_path}/masks/m.png: mask is a colour (RGB) image and its colour (200, 100, 50) at (2, 2) is not one "
        "of the default class colours (the class file gives none): add 'name R G B' lines to the class file, or "
        "convert the masks to indexed (P or L) PNGs whose values are the labels (pass --skip-bad to skip such files)"
    )
    assert not (tmp_path / "out.h5").exists()
    (tmp_path / "classes.txt").write_text("background 0 0 0\nroof 200 100 50\n")  # the fix it names
    result, _ = run("folder", tmp_path, params=params)
    assert dataset_statistics(result.out)["splits"]["train"]["classes"][1]["pixel_share"] == 36 / (24 * 30)


# ----------------------------------------------------------------------------- classes with no pixel


def test_a_class_never_painted_is_reported(tmp_path: Path) -> None:
    masks = {f"m{i}": np.full((24, 30), i % 2, np.uint8) for i in range(4)}
    params = make_folder(tmp_path, {k: fx.gray_png(v) for k, v in masks.items()}, "sea\nsand\nboat\n")
    result, warnings = run("folder", tmp_path, params=params)
    assert result.empty_classes == ["boat"] and warnings == []  # the CLI prints it (empty_classes_message)
    assert dataset_statistics(result.out)["splits"]["train"]["empty_classes"] == ["boat"]
    assert empty_classes_message(["boat"], 3) == (
        "1 of the 3 classes have no pixel in any split: boat (training never sees them; check the class list and the masks)"
    )


def test_a_built_in_source_reports_the_classes_its_masks_never_hold(voc_tar, tmp_path: Path) -> None:
    result, _ = run("voc", tmp_path, archives={"": voc_tar.path}, verify=False)
    held = set()
    for name in fx.VOC_TRAIN + fx.VOC_VAL:
        held |= set(np.unique(voc_tar.layout.labels[name]).tolist())
    assert result.empty_classes == [c for i, c in enumerate(fx.VOC_CLASSES) if i not in held]
    stats = dataset_statistics(result.out)
    for split, names in (("train", fx.VOC_TRAIN), ("val", fx.VOC_VAL)):
        in_split = set().union(*(np.unique(voc_tar.layout.labels[n]).tolist() for n in names))
        assert stats["splits"][split]["empty_classes"] == [c for i, c in enumerate(fx.VOC_CLASSES) if i not in in_split]


# ----------------------------------------------------------------------------- the pieces


def test_a_worker_returns_the_distinct_mask_values(tmp_path: Path) -> None:
    mask = np.array([[0, 2, 255], [2, 2, 0]], np.uint8)
    (tmp_path / "i.png").write_bytes(fx.encode(np.zeros((2, 3, 3), np.uint8), "PNG"))
    (tmp_path / "m.png").write_bytes(fx.gray_png(mask))
    palette = zeros_palette(3)
    item = Item("i", ("", str(tmp_path / "i.png")), ("", str(tmp_path / "m.png")), lambda raw: decode_folder_mask(raw, palette))
    sample = convert_item(item, 3)
    assert sample.mask_values.tolist() == [0, 2, 255] and sample.class_pixels.tolist() == [2, 0, 3]
    bad = convert_item(item, 2)
    assert bad == {"name": "i", "file": str(tmp_path / "m.png"), "reason": "label 2 outside 0..1 (and 255 ignore)",
                   "values": [0, 2, 255]}  # fmt: skip


def test_label_checks_alone() -> None:
    checks = LabelChecks(["a", "b"], user_masks=True)
    checks.add("train", "x.png", np.array([0, 255]), np.array([5, 0]))
    checks.add("val", "y.png", np.array([0, 3]), np.array([3, 0]))  # 3: not the 0/255 pattern
    assert checks.finish() == ["b"] and checks.with_ignore == ["x.png"]
    only = LabelChecks(["a", "b"], user_masks=True)
    only.add("train", "x.png", np.array([0, 255]), np.array([5, 0]))
    with pytest.raises(DataError, match=r"only 0 and 255 \(e\.g\. x\.png\)"):
        only.finish()
    assert LabelChecks(["a", "b"]).finish() == []  # no mask read (or a built-in source): nothing to say
    assert empty_classes(["a", "b", "c"], np.array([[1, 0, 0], [0, 0, 2]])) == ["b"]
