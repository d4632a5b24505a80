"""encnet_core.viz: what the pictures show (legend classes, swatch colours, panels, sizes), not only that files exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_synthetic
from PIL import Image

from encnet_core import viz
from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.dataset import read_image_and_mask
from encnet_core.data.hdf5 import read_info
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import voc_palette

CLASSES = ["background", "road", "car", "person"]
PALETTE = voc_palette(4)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("viz"), 4, 6)


def test_legend_entries_are_the_classes_present_most_pixels_first() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[:, 4:] = 3  # 60 px person, 40 px background
    labels[0, :] = IGNORE_INDEX
    entries = viz.legend_entries(labels, CLASSES, PALETTE)
    assert [(e.index, e.name) for e in entries] == [(3, "person"), (0, "background")]
    assert entries[0].colour == tuple(int(v) for v in PALETTE[3])
    both = viz.legend_entries([labels, np.full((2, 2), 2, np.uint8)], CLASSES, PALETTE)
    assert [e.name for e in both] == ["person", "background", "car"]


def test_draw_legend_swatches_have_the_class_colours() -> None:
    labels = np.ones((120, 160), np.uint8)
    labels[60:, :] = 2
    image = Image.new("RGB", (160, 120), (90, 90, 90))
    out, boxes = viz.draw_legend(image, viz.legend_entries(labels, CLASSES, PALETTE))
    assert out.size == image.size
    assert [entry.name for entry, _ in boxes] == ["road", "car"]
    for entry, (x0, y0, x1, y1) in boxes:
        assert out.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == entry.colour
    assert out.getpixel((150, 110)) == (90, 90, 90)  # the rest of the image is untouched
    many = [viz.LegendEntry(i, f"c{i}", (i, i, i)) for i in range(20)]
    _, drawn = viz.draw_legend(Image.new("RGB", (300, 400)), many, max_entries=5)
    assert len(drawn) == 4  # and a fifth line "+16 more"
    small, drawn = viz.draw_legend(Image.new("RGB", (128, 128)), many)
    assert 1 <= len(drawn) < 20 and max(box[3] for _, box in drawn) < 64  # the legend leaves half the image free
    assert np.asarray(small)[70:].max() == 0


def test_blend_keeps_ignored_pixels() -> None:
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[1, IGNORE_INDEX], [0, 1]], np.uint8)
    out = viz.blend(rgb, labels, PALETTE, alpha=1.0)
    assert out[0, 1].tolist() == [100, 100, 100]
    assert out[0, 0].tolist() == PALETTE[1].tolist()


def test_confusion_matrix_up_to_30_classes_has_names_numbers_and_colour_bar(tmp_path: Path) -> None:
    matrix = np.array([[8, 2, 0, 0], [1, 9, 0, 0], [0, 0, 5, 5], [0, 0, 0, 0]])
    figure, shown = viz.confusion_figure(matrix, CLASSES, "model m.pt, data d.h5")
    assert shown["layout"] == "matrix"
    ax, bar = figure.axes  # the matrix and its colour bar
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "label (ground truth)"
    assert "model m.pt, data d.h5" in figure.get_suptitle() and "row-normalised" in figure.get_suptitle()
    cells = sorted(t.get_text() for t in ax.texts)
    assert cells == sorted(["0.80", "0.20", "0", "0", "0.10", "0.90", "0", "0", "0", "0", "0.50", "0.50"])  # empty row: none
    assert bar.get_ylabel() == "share of the label's pixels"
    path = tmp_path / "cm.png"
    viz.write_confusion(matrix, CLASSES, path, "t")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width >= 500 and png.height >= 500
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temp file left


def test_confusion_with_many_classes_shows_top_pairs_and_sorted_iou() -> None:
    C = 40
    matrix = np.eye(C, dtype=np.int64) * 100
    matrix[3, 7] = 300  # class 3 is mostly predicted as 7
    matrix[5, 1] = 50
    names = [f"class{i}" for i in range(C)]
    figure, shown = viz.confusion_figure(matrix, names, "m")
    assert shown["layout"] == "pairs" and len(figure.axes) == 2
    assert [(a, b) for a, b, _ in shown["pairs"]] == [("class3", "class7"), ("class5", "class1")]
    assert shown["pairs"][0][2] == pytest.approx(0.75)
    pairs_ax, iou_ax = figure.axes
    assert [t.get_text() for t in pairs_ax.get_yticklabels()] == ["class3 -> class7", "class5 -> class1"]
    sorted_names = [t.get_text() for t in iou_ax.get_yticklabels()]
    assert sorted_names[0] == "class3" and len(sorted_names) == C  # the worst IoU (0.25) first


def test_names_are_plain_text_in_figures() -> None:
    figure, _ = viz.confusion_figure(np.eye(2), ["$x$", "a\x1bb"], "")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [r"\$x\$", "a\\x1bb"]


def test_dataset_grid_shows_the_picked_images_and_the_classes_present(data: Path, tmp_path: Path) -> None:
    info = read_info(data)
    figure, shown = viz.dataset_grid(data, "val", count=5)
    assert shown["indices"] == [0, 1, 2, 3, 4]
    present = set()
    for i in shown["indices"]:
        present |= {int(c) for c in np.unique(read_image_and_mask(data, "val", i)[1])} - {IGNORE_INDEX}
    assert set(shown["legend"]) == {info.classes[c] for c in present}
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == shown["legend"]
    assert sum(1 for ax in figure.axes if ax.images) == 5
    viz.save_figure(figure, tmp_path / "show.png")
    with Image.open(tmp_path / "show.png") as png:
        assert png.width > 600
    _, one = viz.dataset_grid(data, "val", name=shown["names"][2], count=1)
    assert one["indices"] == [2]
    _, tail = viz.dataset_grid(data, "val", index=4, count=16)
    assert tail["indices"] == [4, 5]


def test_dataset_grid_errors(data: Path) -> None:
    with pytest.raises(DataError, match=r"--index 6 is out of range.*6 images \(0\.\.5\)"):
        viz.dataset_grid(data, "val", index=6)
    with pytest.raises(DataError, match="no image named 'nope'"):
        viz.dataset_grid(data, "val", name="nope")
    with pytest.raises(DataError, match="no split 'test'"):
        viz.dataset_grid(data, "test")
    with pytest.raises(ConfigError, match="not both"):
        viz.dataset_grid(data, "val", index=0, name="x")
    with pytest.raises(ConfigError, match="--count"):
        viz.dataset_grid(data, "val", count=0)


def test_predict_overlay_carries_a_legend_of_the_predicted_classes() -> None:
    from types import SimpleNamespace

    from encnet_core.engine.masks import overlay_image

    labels = np.zeros((100, 140), np.uint8)
    labels[50:, 70:] = 2
    rgb = np.full((100, 140, 3), 200, np.uint8)
    model = SimpleNamespace(classes=CLASSES, palette=PALETTE)
    out = overlay_image(rgb, labels, model, alpha=0.5)
    assert out.size == (140, 100)
    expected, boxes = viz.draw_legend(Image.fromarray(viz.blend(rgb, labels, PALETTE)), viz.legend_entries(labels, CLASSES, PALETTE))
    assert [e.name for e, _ in boxes] == ["background", "car"]
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    for entry, (x0, y0, x1, y1) in boxes:
        assert out.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == entry.colour


def test_confusion_captions_name_what_is_counted() -> None:
    from encnet_core.viz import confusion_figure

    matrix = np.array([[3, 1], [0, 4]])
    for unit in ("pixels", "images"):
        figure, _ = confusion_figure(matrix, ["a", "b"], unit=unit)
        assert figure.axes[1].get_ylabel() == f"share of the label's {unit}"


def _dark_rows(out: Image.Image, x_from: int) -> np.ndarray:
    """Rows holding text pixels (near black) right of ``x_from``."""
    pixels = np.asarray(out.crop((x_from, 0, out.width // 2, out.height // 2)))  # the legend's corner
    return np.flatnonzero((pixels.max(axis=2) < 80).any(axis=1))


def test_legend_text_grows_with_the_image() -> None:
    """The text is 2.5% of the shorter side (9 to 120 px): a 2400 px photo's legend text is four times a
    600 px one's, and 1-3% of the side on both (it was 18 px at most: 0.75% of a 2400 px side)."""
    entry = [viz.LegendEntry(1, "road", (200, 60, 60))]
    heights = {}
    for short_side in (200, 600, 2400):
        image = Image.new("RGB", (short_side * 3 // 2, short_side), (128, 128, 128))
        out, boxes = viz.draw_legend(image, entry)
        (_, (x0, y0, x1, y1)), = boxes
        rows = _dark_rows(out, x1 + 2)
        heights[short_side] = rows.max() - rows.min() + 1
        assert y1 - y0 + 1 == viz.legend_font_size(*image.size)  # the swatch is as tall as the text size
    assert viz.legend_font_size(300, 200) == 9 and viz.legend_font_size(1200, 800) == 20
    assert viz.legend_font_size(6000, 4000) == 100 and viz.legend_font_size(20000, 9000) == 120
    assert 3.5 <= heights[2400] / heights[600] <= 4.5
    assert 0.01 <= heights[600] / 600 <= 0.03 and 0.01 <= heights[2400] / 2400 <= 0.03
    assert heights[200] >= 6  # the 9 px floor: "road" stays readable on a small image


@pytest.mark.parametrize("size", [(128, 128), (128, 96), (96, 128), (200, 128)])
def test_legend_covers_at_most_a_quarter_of_a_small_image(size: tuple[int, int]) -> None:
    """Measured on the pixels that differ from the plain picture: inside the top-left half-width x
    half-height box, so at most 25% of it, even with 14 classes of long names (the old legend took
    24 characters a line and half the height: over 40% of a 128 px image)."""
    entries = [viz.LegendEntry(i, f"a rather long class name {i}", (40 + 10 * i, 200, 90)) for i in range(14)]
    plain = Image.new("RGB", size, (128, 128, 128))
    out, boxes = viz.draw_legend(plain, entries)
    changed = (np.asarray(out) != np.asarray(plain)).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.mean() <= 0.25
    assert xs.max() < size[0] * viz.LEGEND_MAX_SHARE and ys.max() < size[1] * viz.LEGEND_MAX_SHARE
    assert 1 <= len(boxes) < 14  # some classes, then "+N more"
    for entry, (x0, y0, x1, y1) in boxes:
        assert out.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == entry.colour


def test_no_legend_on_an_image_too_small_for_one_line() -> None:
    entries = [viz.LegendEntry(1, "road", (200, 60, 60))]
    for size in ((60, 60), (400, 30)):
        plain = Image.new("RGB", size, (128, 128, 128))
        out, boxes = viz.draw_legend(plain, entries)
        assert boxes == [] and np.array_equal(np.asarray(out), np.asarray(plain))
    assert viz.draw_legend(Image.new("RGB", (70, 70)), entries)[1]  # from about 70 x 34 px on


def test_a_stored_palette_is_what_the_pictures_show(data: Path, tmp_path: Path) -> None:
    """A file prepared before the synthetic colours changed keeps showing its own (VOC) colours."""
    import shutil

    import h5py

    old = tmp_path / "old.h5"
    shutil.copy(data, old)
    info = read_info(data)
    stored = voc_palette(len(info.classes))
    assert not np.array_equal(stored, info.palette)  # today's synthetic colours differ from the VOC map
    with h5py.File(old, "r+") as handle:
        handle.attrs["palette"] = stored
    figure, shown = viz.dataset_grid(old, "val", count=3)
    colours = {t.get_text(): tuple(np.round(np.asarray(h.get_facecolor()[:3]) * 255).astype(int))
               for t, h in zip(figure.legends[0].get_texts(), figure.legends[0].legend_handles, strict=True)}  # fmt: skip
    assert colours == {name: tuple(int(v) for v in stored[info.classes.index(name)]) for name in shown["legend"]}


def test_figure_legend_of_many_long_names_stays_beside_the_pictures() -> None:
    """150 classes of names up to 80 characters: two columns at most, names cut to 28 characters,
    the rest one "+N more" line; constrained layout keeps working (no warning)."""
    import warnings

    entries = [viz.LegendEntry(i, f"class {i}, " + "synonym, " * 8, (i, 255 - i, 100)) for i in range(150)]
    cells = [[("a", np.zeros((8, 8, 3), np.uint8)), ("b", np.zeros((8, 8, 3), np.uint8))]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure, names = viz.grid_figure(cells, entries, "t")
        figure.canvas.draw()
    legend = figure.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    per_column = 8  # one row of 2.2 inch pictures
    assert len(texts) == 2 * per_column and texts[-1] == f"+{150 - 2 * per_column + 1} more (fewer pixels)"
    assert texts[0] == ("class 0, " + "synonym, " * 8)[:27] + "\u2026" and max(len(t) for t in texts) <= viz.LEGEND_NAME_CHARS
    assert len(names) == 150  # what the caller prints: every class
    bbox = legend.get_window_extent()
    assert bbox.x1 <= figure.bbox.x1 + 1 and all(ax.get_window_extent().width > 50 for ax in figure.axes)
