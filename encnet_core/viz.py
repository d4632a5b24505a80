"""Pictures: the confusion matrix, overlays with a class legend, dataset grids and the run report's panels.

Figures are drawn with matplotlib's object API on the Agg canvas (``matplotlib.figure.Figure``, never
pyplot's global state), imported lazily so that the rest of the library does not need it; the small
legend of ``predict --overlay`` is drawn with PIL (one per image, fast). Every PNG is written through
``paths.atomic_write``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from encnet_core.constants import IGNORE_INDEX
from encnet_core.paths import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "LegendEntry",
    "legend_entries",
    "draw_legend",
    "legend_font_size",
    "LEGEND_FONT_SHARE",
    "LEGEND_FONT_PX",
    "LEGEND_MAX_SHARE",
    "blend",
    "colour_labels",
    "new_figure",
    "save_figure",
    "confusion_figure",
    "write_confusion",
    "grid_figure",
    "MAX_ANNOTATED_CLASSES",
    "plain",
    "short",
    "LEGEND_COLUMNS_MAX",
    "LEGEND_NAME_CHARS",
    "dataset_grid",
]

MAX_ANNOTATED_CLASSES = 30  # a full matrix with numbers in its cells up to this many classes; above, the top confusions


@dataclass(frozen=True)
class LegendEntry:
    """One class of a legend: its index, name and colour."""

    index: int
    name: str
    colour: tuple[int, int, int]


def legend_entries(labels: np.ndarray | Sequence[np.ndarray], classes: Sequence[str], palette: np.ndarray) -> list[LegendEntry]:
    """The classes present in ``labels`` (one label map or several; IGNORE_INDEX left out), most pixels first."""
    maps = [labels] if isinstance(labels, np.ndarray) else list(labels)
    counts = np.zeros(len(classes), dtype=np.int64)
    for m in maps:
        counts += np.bincount(np.asarray(m, dtype=np.int64).reshape(-1), minlength=256)[: len(classes)]
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    return [LegendEntry(c, str(classes[c]), tuple(int(v) for v in palette[c])) for c in order]


def colour_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) labels as (H, W, 3) uint8 palette colours; IGNORE_INDEX (and labels past the palette) white."""
    full = np.full((256, 3), 255, dtype=np.uint8)
    count = min(len(palette), IGNORE_INDEX)
    full[:count] = palette[:count]
    return full[np.asarray(labels, dtype=np.uint8)]


def blend(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The class colours over ``rgb`` at opacity ``alpha``; ignored pixels keep the image."""
    colours = colour_labels(labels, palette).astype(np.float32)
    weight = np.where((np.asarray(labels) == IGNORE_INDEX)[..., None], 0.0, alpha).astype(np.float32)
    return (rgb.astype(np.float32) * (1 - weight) + colours * weight).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an older Pillow or one without FreeType: the fixed bitmap font
        return ImageFont.load_default()


LEGEND_FONT_SHARE = 0.025
"""Legend text size of ``draw_legend``: this share of the image's shorter side (clamped to LEGEND_FONT_PX)."""
LEGEND_FONT_PX = (9, 120)
"""Smallest and largest legend text size in pixels (9: still readable; 120: a 4800 px shorter side)."""
LEGEND_MAX_SHARE = 0.5
"""The legend's box is at most this share of the image's width and of its height (so at most a quarter of it)."""


def legend_font_size(width: int, height: int) -> int:
    """The legend's text size in pixels for a ``width`` x ``height`` image (see LEGEND_FONT_SHARE)."""
    low, high = LEGEND_FONT_PX
    return int(min(high, max(low, round(min(width, height) * LEGEND_FONT_SHARE))))


def _fit(text: str, room: float, measure: Callable[[str], float]) -> str:
    """``text``, or as much of it as fits in ``room`` pixels followed by an ellipsis ("" if not even one character)."""
    if measure(text) <= room:
        return text
    for cut in range(len(text) - 1, 0, -1):
        if measure(text[:cut] + "\u2026") <= room:
            return text[:cut] + "\u2026"
    return ""


def draw_legend(
    image: Image.Image, entries: Sequence[LegendEntry], *, max_entries: int = 12
) -> tuple[Image.Image, list[tuple[LegendEntry, tuple[int, int, int, int]]]]:
    """``image`` (RGB) with a legend in its top-left corner: a colour swatch and a name per entry.

    The text is ``legend_font_size`` pixels (2.5% of the shorter side, 9 to 120 px), the swatch as
    tall and the padding in proportion, so the legend reads the same on a 128 px thumbnail and on a
    6000 x 4000 photo. Its box stays within LEGEND_MAX_SHARE of the image's width and height (at
    most a quarter of the picture): longer names are cut short with an ellipsis, and past the lines
    that fit (or ``max_entries``) the last line reads "+N more". An image too small for one line at
    the smallest size (under about 40 px) is returned without a legend.

    Returns the new image and, for each entry drawn, its swatch box (x0, y0, x1, y1), so callers and
    tests can see what the legend says.
    """
    out = image.convert("RGB").copy()
    if not entries:
        return out, []
    size = legend_font_size(*out.size)
    font = _font(size)
    draw = ImageDraw.Draw(out, "RGBA")
    pad, gap, swatch = max(2, round(size * 0.3)), max(1, round(size * 0.15)), size
    row = max(swatch, font.getbbox("Ag")[3])  # a line: the swatch and the text with its descenders
    max_width, max_height = int(out.width * LEGEND_MAX_SHARE), int(out.height * LEGEND_MAX_SHARE)
    room = max_width - (3 * pad + swatch)  # for the text

    def measure(text: str) -> float:
        return draw.textlength(text, font=font)

    lines_max = min(max_entries, (max_height - 2 * pad + gap) // (row + gap))
    if lines_max < 1 or room < measure("ab\u2026"):
        return out, []
    shown = list(entries[: lines_max if len(entries) <= lines_max else max(1, lines_max - 1)])
    lines = [_fit(entry.name, room, measure) for entry in shown]
    if len(entries) > len(shown):
        lines.append(_fit(f"+{len(entries) - len(shown)} more", room, measure))
    text_width = max(int(math.ceil(measure(line))) for line in lines)
    width = min(max_width, 3 * pad + swatch + text_width)
    height = 2 * pad + len(lines) * row + (len(lines) - 1) * gap
    draw.rectangle([0, 0, width - 1, height - 1], fill=(255, 255, 255, 200))
    boxes = []
    for index, line in enumerate(lines):
        y = pad + index * (row + gap)
        if index < len(shown):
            top = y + (row - swatch) // 2
            box = (pad, top, pad + swatch - 1, top + swatch - 1)
            draw.rectangle(box, fill=shown[index].colour, outline=(0, 0, 0), width=max(1, size // 12))
            boxes.append((shown[index], box))
        draw.text((2 * pad + swatch, y), line, fill=(0, 0, 0), font=font)
    return out, boxes


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A matplotlib Figure on its own Agg canvas (no pyplot, nothing global)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    """Write ``figure`` as a PNG at ``path`` atomically."""
    with atomic_write(Path(path), keep_suffix=True) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, facecolor="white")


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def plain(text: object) -> str:
    """A name read from a file as literal text for matplotlib: control characters shown as escapes,
    ``$`` escaped so that it is not read as mathtext."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)).replace("$", r"\$")


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    rows = matrix.sum(1, keepdims=True)
    return np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)


def _iou(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return np.divide(tp, union, out=np.full(tp.shape, np.nan), where=union > 0)


def confusion_figure(
    matrix: np.ndarray, classes: Sequence[str], title: str = "", top: int = 25, unit: str = "pixels"
) -> tuple[Figure, dict[str, Any]]:
    """The row-normalised confusion matrix (rows: label, columns: prediction) as a figure.

    Up to MAX_ANNOTATED_CLASSES classes: the matrix with class names on both axes, the rates in the
    cells and a colour bar. Above: the ``top`` most confused pairs ("label -> predicted", share of the
    label's pixels; ``unit`` names what is counted, "images" for classification) and every class's
    IoU, sorted. Returns the figure and what it shows (``layout``,
    the axes titles, the pairs).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    names = [plain(c) for c in classes]
    C = len(names)
    norm = _normalise_rows(matrix)
    heading = f"{title}\nrow-normalised: each row (label) sums to 1" if title else "row-normalised: each row (label) sums to 1"
    if C <= MAX_ANNOTATED_CLASSES:
        side = max(5.0, 0.42 * C + 2.5)
        figure = new_figure(side + 1.2, side)
        ax = figure.add_subplot()
        image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(C), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(C), names, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("label (ground truth)")
        ax.set_title("confusion matrix", fontsize=10)
        figure.suptitle(heading, fontsize=10)
        fontsize = 8 if C <= 12 else 7 if C <= 20 else 5
        for r in range(C):
            if matrix[r].sum() == 0:
                continue
            for c in range(C):
                value = norm[r, c]
                text = f"{value:.2f}" if value >= 0.005 else ("0" if value == 0 else "<.01")
                ax.text(c, r, text, ha="center", va="center", fontsize=fontsize, color="white" if value > 0.55 else "black")
        figure.colorbar(image, ax=ax, label=f"share of the label's {unit}", shrink=0.8)
        return figure, {"layout": "matrix", "titles": [ax.get_title()], "classes": C, "pairs": []}
    off = norm.copy()
    np.fill_diagonal(off, 0.0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(int(i // C), int(i % C), float(off.flat[i])) for i in flat if off.flat[i] > 0]
    iou = _iou(matrix)
    scored = [(names[c], float(iou[c])) for c in np.argsort(np.nan_to_num(iou, nan=-1.0)) if not np.isnan(iou[c])]
    height = max(6.0, 0.125 * max(len(scored), len(pairs)) + 1.5)
    figure = new_figure(14, height)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1])
    labels = [f"{names[r]} -> {names[c]}" for r, c, _ in pairs]
    bars = left.barh(range(len(pairs)), [v for _, _, v in pairs], color="tab:red")
    left.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    left.set_yticks(range(len(pairs)), labels, fontsize=7)
    left.set_xlim(0, min(1.0, max([v for _, _, v in pairs], default=0.0) * 1.15 + 0.02))
    left.invert_yaxis()
    left.set_xlabel(f"share of the label's {unit} predicted as the other class")
    left.set_title(f"the {len(pairs)} most confused pairs (label -> predicted)", fontsize=10)
    right.barh(range(len(scored)), [v for _, v in scored], color="tab:blue")
    right.set_yticks(range(len(scored)), [n for n, _ in scored], fontsize=6)
    right.set_ylim(len(scored) - 0.5, -0.5)  # the worst class on top
    right.set_xlim(0, 1)
    right.grid(axis="x", alpha=0.3)
    right.set_xlabel("IoU")
    right.set_title(f"per-class IoU, sorted ({len(scored)} of {C} classes scored)", fontsize=10)
    figure.suptitle(f"{heading}; {C} classes: too many for a readable matrix", fontsize=10)
    return figure, {"layout": "pairs", "titles": [left.get_title(), right.get_title()], "classes": C,
                    "pairs": [(names[r], names[c], v) for r, c, v in pairs]}  # fmt: skip


def write_confusion(
    matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "", unit: str = "pixels"
) -> dict[str, Any]:
    """Draw ``confusion_figure`` and write it to ``path`` (PNG); returns what it shows."""
    figure, shown = confusion_figure(matrix, classes, title, unit=unit)
    save_figure(figure, path)
    return shown


LEGEND_COLUMNS_MAX = 2
"""A figure legend (``grid_figure``) has at most this many columns; classes past them are one "+N more" line."""
LEGEND_NAME_CHARS = 28
"""Class names in a figure legend are cut to this many characters (ADE20K's run to 80), with an ellipsis."""


def short(text: str, limit: int = LEGEND_NAME_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last an ellipsis, when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _legend_plan(entries: Sequence[LegendEntry], per_column: int) -> tuple[list[Any], int, float]:
    """The handles of a figure legend of ``entries`` in at most LEGEND_COLUMNS_MAX columns of ``per_column``
    lines (the classes that do not fit: one "+N more" line), its column count and its width in inches."""
    from matplotlib.patches import Patch

    columns = max(1, min(LEGEND_COLUMNS_MAX, -(-len(entries) // per_column)))
    capacity = columns * per_column
    shown = list(entries) if len(entries) <= capacity else list(entries[: capacity - 1])
    handles = [Patch(facecolor=np.asarray(e.colour) / 255.0, edgecolor="black", label=short(plain(e.name))) for e in shown]
    if len(entries) > len(shown):
        handles.append(Patch(facecolor="none", edgecolor="none", label=f"+{len(entries) - len(shown)} more (fewer pixels)"))
    longest = max(len(h.get_label()) for h in handles)
    return handles, columns, columns * (0.6 + 0.062 * longest)  # 8 pt text: about 0.062 inch a character


def grid_figure(
    cells: Sequence[Sequence[tuple[str, np.ndarray]]],
    entries: Sequence[LegendEntry],
    title: str = "",
    figure: Any = None,
    cell_inches: float = 2.2,
) -> tuple[Any, list[str]]:
    """A grid of pictures (rows of (caption, (H, W, 3) uint8)) with a legend of ``entries`` beside it.

    ``figure`` may be a subfigure of a larger figure; without it a new figure is made, as wide as the
    pictures and the legend. The legend has as many lines a column as fit beside the grid and at most
    LEGEND_COLUMNS_MAX columns (names cut to LEGEND_NAME_CHARS); the classes with the fewest pixels
    past that are one "+N more" line, so a dataset of 150 classes still leaves the pictures their room.
    Returns the figure and the legend's class names in order (all of them).
    """
    rows = len(cells)
    cols = max(len(row) for row in cells)
    per_column = max(8, int(rows * cell_inches * 4))  # about as many lines as fit beside the grid
    handles, columns, legend_inches = _legend_plan(entries, per_column) if entries else ([], 0, 0.0)
    if figure is None:
        figure = new_figure(cols * cell_inches + max(0.4, legend_inches + 0.2), rows * cell_inches + 0.6)
    axes = np.atleast_2d(np.asarray(figure.subplots(rows, cols, squeeze=False)))
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(cells[r]):
                caption, picture = cells[r][c]
                ax.imshow(picture, interpolation="nearest")
                ax.set_title(plain(caption), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    if handles:
        figure.legend(handles=handles, loc="outside right upper", fontsize=8, title="classes", title_fontsize=8, ncols=columns)
    return figure, [e.name for e in entries]


def _pick(data: Path, split: str, size: int, index: int | None, name: str | None, count: int) -> list[int]:
    """The indices of the images to show: ``count`` from ``index`` (or the image named ``name``, or 0)."""
    from encnet_core.data.hdf5 import read_names
    from encnet_core.errors import ConfigError, DataError

    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    if index is not None and name is not None:
        raise ConfigError("give --index or --name, not both")
    if size == 0:
        raise DataError(f"split {split!r} of {data} has no images")
    if name is not None:
        names = read_names(data, split)
        if name not in names:
            some = ", ".join(repr(n) for n in names[:3])
            raise DataError(f"split {split!r} of {data} has no image named {name!r} (its {size} names start {some})")
        index = names.index(name)
    start = 0 if index is None else index
    if not 0 <= start < size:
        raise DataError(f"--index {start} is out of range: split {split!r} of {data} has {size} images (0..{size - 1})")
    return list(range(start, min(size, start + count)))


def dataset_grid(
    data: Path, split: str = "val", *, index: int | None = None, name: str | None = None, count: int = 16, alpha: float = 0.5
) -> tuple[Figure, dict[str, Any]]:
    """A grid of a prepared split's images with their masks overlaid (the file's palette) and a legend
    of the classes present in them; ``count`` images from ``index`` (or the image named ``name``).
    For a classification file: the images as stored, each captioned with its class name, no legend.

    Returns the figure and what it shows: ``indices``, ``names``, ``legend`` (class names, most pixels
    first; for classification, the classes of the images shown, in class order).
    """
    from encnet_core.data.dataset import BadSampleError
    from encnet_core.data.hdf5 import read_info, read_names
    from encnet_core.errors import DataError

    info = read_info(data)
    if split not in info.splits:
        raise DataError(f"{data} has no split {split!r}; it has {', '.join(info.splits) or 'no splits'}")
    indices = _pick(data, split, info.splits[split], index, name, count)
    names = read_names(data, split)
    try:
        return _grid(data, split, info, indices, names, alpha)
    except BadSampleError as exc:  # show has no --skip-bad: name the sample and the options that avoid it
        raise DataError(f"{data}: {exc.sample}; fix the file, or show other images (--index, --name, --count)") from None


def _grid(data: Path, split: str, info: Any, indices: list[int], names: list[str], alpha: float) -> tuple[Figure, dict[str, Any]]:
    """``dataset_grid`` once the images are chosen: the grid of the file's task."""
    return _GRIDS[info.task](data, split, info, indices, names, alpha)


def _segmentation_grid(data: Path, split: str, info: Any, indices: list[int], names: list[str], alpha: float) -> tuple[Figure, dict[str, Any]]:
    """``dataset_grid`` of a segmentation file: each image with its mask overlaid at ``alpha``, a legend of the classes."""
    from encnet_core.data.dataset import read_image_and_mask

    cells, masks = [], []
    for i in indices:
        rgb, labels = read_image_and_mask(data, split, i)
        masks.append(labels)
        cells.append((f"{i}: {names[i]}", blend(rgb, labels, info.palette, alpha)))
    entries = legend_entries(masks, info.classes, info.palette)
    cols = min(len(cells), 4 if len(cells) <= 16 else 6)
    rows = [cells[r : r + cols] for r in range(0, len(cells), cols)]
    labelled = "masks overlaid" if info.labelled[split] else "unlabelled: no masks"
    title = f"{data.name}: split {split!r}, images {indices[0]}..{indices[-1]} of {info.splits[split]} ({labelled})"
    figure, legend = grid_figure(rows, entries, title, cell_inches=3.0 if len(cells) <= 4 else 2.2)
    return figure, {"indices": indices, "names": [names[i] for i in indices], "legend": legend, "split": split}


def _classification_grid(
    data: Path, split: str, info: Any, indices: list[int], names: list[str], alpha: float
) -> tuple[Figure, dict[str, Any]]:
    """``dataset_grid`` of a classification file: each image captioned "index: name (class)" (``alpha``: unused, no masks)."""
    from encnet_core.data.dataset import read_image_and_label

    cells, shown = [], set()
    for i in indices:
        rgb, label = read_image_and_label(data, split, i)
        caption = f"{i}: {names[i]}" + (f" ({info.classes[label]})" if label is not None else "")
        if label is not None:
            shown.add(label)
        cells.append((caption, rgb))
    cols = min(len(cells), 4 if len(cells) <= 16 else 6)
    rows = [cells[r : r + cols] for r in range(0, len(cells), cols)]
    labelled = "class names in the captions" if info.labelled[split] else "unlabelled: no classes"
    title = f"{data.name}: split {split!r}, images {indices[0]}..{indices[-1]} of {info.splits[split]} ({labelled})"
    figure, _ = grid_figure(rows, [], title, cell_inches=3.0 if len(cells) <= 4 else 2.2)
    legend = [info.classes[c] for c in sorted(shown)]
    return figure, {"indices": indices, "names": [names[i] for i in indices], "legend": legend, "split": split}


_GRIDS = {"segmentation": _segmentation_grid, "classification": _classification_grid}  # encnet show's picture per task (tasks.py's names)
