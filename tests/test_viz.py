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

    from encnet_core.engine.predict import overlay_image

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
