"""A procedural, seeded VOC-style dataset in which global context matters.

It is the embedded default dataset: the demo and the tests train on it without network. Each image
is one of three scene types, each with its own background layout and its own allowed objects:

    street   sky / road / sidewalk   objects: car, person, plant
    kitchen  wall / counter / floor  objects: oven, lamp, person, plant
    beach    sky / sea / sand        objects: umbrella, person

Background regions are textured (value noise, stripes, tiles, gradients). Objects are built from
ellipses, rectangles, rounded rectangles, polygons and rounded blobs, with varied scales and
positions; nearer objects (lower base) paint over farther ones and the mask follows. As in VOC, a
1-2 px band around every object outline is labelled 255 (ignore).

Context pairs (``CONTEXT_PAIRS``): two classes drawn by the same function with the same colour,
texture, shape and size distributions, that differ only by the scene they occur in:

    car (street)      vs  oven (kitchen)   a rounded box with a dark window and two round parts
    umbrella (beach)  vs  lamp (kitchen)   a striped dome on a thin pole

The object's own pixels do not say which of the two it is; the model must recognise the scene from
the rest of the image, which is what EncNet's Context Encoding module is for.

Generation is deterministic: image ``i`` of an archive is drawn from
``np.random.default_rng([seed, i])`` (see ``generate_indexed_scene``), so images are independent of
each other and of the split sizes, and the same arguments give a byte-identical archive.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from encnet_core.choices import DEFAULT_SIZES, LAYOUTS  # the scene layouts and their default image sides
from encnet_core.constants import IGNORE_INDEX
from encnet_core.errors import ConfigError
from encnet_core.palette import palette_png
from encnet_core.paths import atomic_write
from encnet_core.progress import ProgressCallback

__all__ = [
    "CLASSES",
    "CONTEXT_PAIRS",
    "DEFAULT_SIZES",
    "FAR_CLASSES",
    "FAR_MIN_SIZE",
    "LAYOUTS",
    "PALETTE",
    "layout_classes",
    "layout_palette",
    "CLASS_COLOURS",
    "check_arguments",
    "SCENES",
    "generate_indexed_scene",
    "generate_scene",
    "write_voc_archive",
]

CLASSES = (
    "sky",
    "road",
    "sidewalk",
    "wall",
    "counter",
    "floor",
    "sea",
    "sand",
    "car",
    "oven",
    "umbrella",
    "lamp",
    "person",
    "plant",
)
"""Class names; the index of a name is its label."""

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "sky": (120, 205, 255),
    "road": (65, 75, 60),
    "sidewalk": (230, 30, 225),
    "wall": (105, 105, 170),
    "counter": (135, 85, 25),
    "floor": (245, 190, 140),
    "sea": (0, 45, 175),
    "sand": (230, 240, 125),
    "car": (0, 15, 75),
    "oven": (250, 130, 15),
    "umbrella": (10, 210, 195),
    "lamp": (250, 255, 0),
    "person": (235, 15, 75),
    "plant": (50, 155, 50),
    "ground": (135, 60, 80),
}
"""Mask colour of each class (of both layouts): hues that hint at the class, every two of them (and each
and the white of ignored pixels) at least 39 apart in CIELAB (deltaE76; the VOC colour map that the
dataset used before gave 8.8 for sea/ground and 11.3 for counter/person). tests/data/test_synthetic.py
checks the distances."""

PALETTE = np.array([CLASS_COLOURS[name] for name in CLASSES], dtype=np.uint8)
"""Colour of each class, shape (len(CLASSES), 3), uint8."""

SCENES: dict[str, tuple[str, ...]] = {
    "street": ("car", "person", "plant"),
    "kitchen": ("oven", "lamp", "person", "plant"),
    "beach": ("umbrella", "person"),
}
"""Scene type -> object classes that may occur in it."""

CONTEXT_PAIRS: tuple[tuple[str, str], ...] = (("car", "oven"), ("umbrella", "lamp"))
"""Pairs of classes drawn identically that only the scene tells apart."""

FAR_CLASSES = (*CLASSES, "ground")
"""Class names of the ``far`` layout: ``CLASSES`` and the scene-neutral ``ground`` the twins stand on."""

FAR_MIN_SIZE = 256
"""Smallest ``far`` image side at which every twin pixel lies over 100 px from the scene band."""

_ROOT = "VOCdevkit/VOC2012"
_JPEG_QUALITY = 90
_MIN_SIZE = 32
_MAX_SIZE = 1024  # a 1024 px scene takes about 0.4 s and 150 MB to draw; larger ones grow quadratically
_LABEL = {name: index for index, name in enumerate(FAR_CLASSES)}

_GRAIN_STD = {
    "sky": 2.0, "road": 6.0, "sidewalk": 5.0, "wall": 3.0, "counter": 4.0, "floor": 4.0, "sea": 4.0, "sand": 8.0,
    "car": 3.0, "oven": 3.0, "umbrella": 3.0, "lamp": 3.0, "person": 3.0, "plant": 3.0, "ground": 4.0,
}  # fmt: skip
_GRAIN = np.array([_GRAIN_STD[name] for name in FAR_CLASSES], dtype=np.float32)  # (C,)
"""Standard deviation of the grey per-pixel grain of each class."""

Box = tuple[float, float, float, float]
"""A drawing box (x0, y0, x1, y1) in pixels."""

_BOX_COLOURS = ((200, 40, 40), (40, 70, 180), (190, 190, 195), (235, 235, 228), (45, 45, 50), (225, 180, 40))
_CANOPY_COLOURS = (
    ((220, 50, 50), (240, 240, 240)),
    ((40, 120, 200), (250, 220, 60)),
    ((30, 150, 90), (240, 240, 240)),
    ((240, 140, 30), (60, 60, 160)),
)
_SKIN_COLOURS = ((240, 200, 170), (205, 155, 115), (140, 95, 65), (90, 60, 40))
_PANTS_COLOURS = ((40, 50, 90), (50, 50, 55), (110, 90, 60), (70, 80, 70))
_WALL_COLOURS = ((232, 226, 205), (210, 225, 232), (236, 214, 198), (218, 230, 208))


class _Canvas:
    """One scene being painted back to front: image, labels, instance ids and drawing helpers."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.size = size
        self.unit = size / 128.0  # pixels per unit of the 128x128 reference frame
        self.object_scale = 1.0  # object heights are drawn as fractions of size * object_scale
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (H, W) each
        self.image = np.zeros((size, size, 3), dtype=np.float32)  # (H, W, 3), RGB 0..255
        self.labels = np.zeros((size, size), dtype=np.uint8)  # (H, W)
        self.instances = np.zeros((size, size), dtype=np.int32)  # (H, W), 0 = background region
        self.num_instances = 0

    def new_instance(self) -> int:
        """A fresh object id for ``paint``."""
        self.num_instances += 1
        return self.num_instances

    def paint(self, mask: np.ndarray, colour: np.ndarray, label: str, instance: int = 0) -> None:
        """Paint ``colour`` (broadcast to (H, W, 3)) and ``label`` where ``mask`` ((H, W) bool) is set."""
        np.copyto(self.image, colour, where=mask[..., None])
        self.labels[mask] = _LABEL[label]
        self.instances[mask] = instance

    def _blank(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        """An empty 1-bit image of the canvas size and a drawer on it."""
        image = Image.new("1", (self.size, self.size), 0)
        return image, ImageDraw.Draw(image)

    def rectangle(self, box: Box) -> np.ndarray:
        """(H, W) bool mask of the rectangle ``box`` = (x0, y0, x1, y1)."""
        image, draw = self._blank()
        draw.rectangle(box, fill=1)
        return np.asarray(image)

    def rounded_rectangle(self, box: Box, radius: float) -> np.ndarray:
        """(H, W) bool mask of ``box`` with corners rounded by ``radius``."""
        image, draw = self._blank()
        draw.rounded_rectangle(box, radius=radius, fill=1)
        return np.asarray(image)

    def ellipse(self, box: Box) -> np.ndarray:
        """(H, W) bool mask of the ellipse inscribed in ``box``."""
        image, draw = self._blank()
        draw.ellipse(box, fill=1)
        return np.asarray(image)

    def upper_half_ellipse(self, box: Box) -> np.ndarray:
        """(H, W) bool mask of the upper half of the ellipse inscribed in ``box``."""
        image, draw = self._blank()
        draw.pieslice(box, 180, 360, fill=1)
        return np.asarray(image)

    def polygon(self, points: list[tuple[float, float]]) -> np.ndarray:
        """(H, W) bool mask of the polygon with vertices ``points`` (x, y)."""
        image, draw = self._blank()
        draw.polygon(points, fill=1)
        return np.asarray(image)

    def noise(self, cells: int) -> np.ndarray:
        """Smooth value noise in [0, 1], shape (H, W), with ``cells`` random cells per side."""
        grid = self.rng.random((cells + 1, cells + 1))  # (cells+1, cells+1)
        position = np.linspace(0.0, cells, self.size, endpoint=False)  # (W,)
        index = position.astype(np.int64)
        frac = position - index
        frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep between lattice points
        rows = grid[index] * (1.0 - frac)[:, None] + grid[index + 1] * frac[:, None]  # (H, cells+1)
        field = rows[:, index] * (1.0 - frac)[None, :] + rows[:, index + 1] * frac[None, :]  # (H, W)
        return field.astype(np.float32)

    def jitter(self, colour: tuple[int, int, int], amount: float) -> np.ndarray:
        """``colour`` with each channel moved by up to ``amount``, shape (3,) float."""
        return np.asarray(colour, dtype=np.float32) + self.rng.uniform(-amount, amount, 3).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours ``a`` and ``b`` ((3,) each) by weights ``t`` (H, W) -> (H, W, 3)."""
    return a * (1.0 - t[..., None]) + b * t[..., None]


# --- background regions --------------------------------------------------------------------------


def _paint_sky(canvas: _Canvas, horizon: float) -> None:
    """A vertical blue gradient with soft clouds above ``horizon``."""
    top = canvas.jitter((60, 120, 200), 15)
    low = canvas.jitter((175, 210, 238), 10)
    sky = _mix(top, low, np.clip(canvas.yy / horizon, 0.0, 1.0))
    cloud = np.clip((canvas.noise(4) * 0.6 + canvas.noise(9) * 0.4 - 0.55) * 4.0, 0.0, 1.0)
    sky = sky * (1.0 - cloud[..., None]) + 245.0 * cloud[..., None]
    canvas.paint(canvas.yy < horizon, sky, "sky")


def _paint_street(canvas: _Canvas) -> float:
    """Sky, a road converging to a vanishing point and sidewalks; returns the top of the ground."""
    size, yy, xx = canvas.size, canvas.yy, canvas.xx
    horizon = canvas.rng.uniform(0.3, 0.45) * size
    vanish_x = canvas.rng.uniform(0.3, 0.7) * size
    spread = canvas.rng.uniform(0.9, 1.8)
    _paint_sky(canvas, horizon)
    depth = yy - horizon  # (H, W), > 0 below the horizon
    ground = depth >= 0
    road = ground & (np.abs(xx - vanish_x) <= depth * spread + 1.0)

    tile = canvas.rng.uniform(8.0, 14.0) * canvas.unit
    sidewalk = canvas.jitter((175, 165, 150), 12) + (canvas.noise(12)[..., None] - 0.5) * 25.0
    joints = (xx % tile < 1.2 * canvas.unit) | (yy % tile < 1.2 * canvas.unit)
    sidewalk = sidewalk - 35.0 * joints[..., None]
    canvas.paint(ground & ~road, sidewalk, "sidewalk")

    asphalt = canvas.jitter((95, 95, 100), 15) + (canvas.noise(16)[..., None] - 0.5) * 20.0
    dashes = (np.abs(xx - vanish_x) < 0.03 * depth + 0.5) & (
        np.sqrt(np.maximum(depth, 0.0)) * 1.6 % 2.0 < 1.0
    )
    asphalt = np.where(dashes[..., None], canvas.jitter((235, 230, 200), 10), asphalt)
    canvas.paint(road, asphalt, "road")
    return horizon + 0.1 * size


def _paint_kitchen(canvas: _Canvas) -> float:
    """Tiled wall, a wooden counter on one side and a checkered floor; returns the top of the ground."""
    size, yy, xx = canvas.size, canvas.yy, canvas.xx
    counter_top = canvas.rng.uniform(0.4, 0.55) * size
    floor_top = counter_top + canvas.rng.uniform(0.12, 0.22) * size
    split = canvas.rng.uniform(0.4, 1.0) * size
    counter_side = (xx < split) if canvas.rng.random() < 0.5 else (xx > size - split)

    tile = canvas.rng.uniform(10.0, 18.0) * canvas.unit
    wall = canvas.jitter(_WALL_COLOURS[canvas.rng.integers(len(_WALL_COLOURS))], 8)
    grout = (xx % tile < 1.2 * canvas.unit) | (yy % tile < 1.2 * canvas.unit)
    wall = wall + (canvas.noise(6)[..., None] - 0.5) * 18.0 - 30.0 * grout[..., None]
    canvas.paint(yy < floor_top, wall, "wall")

    wood = canvas.jitter((150, 100, 60), 15)
    rings = np.sin(yy * 0.9 / canvas.unit + 6.0 * canvas.noise(5))  # (H, W) wavy grain
    wood = wood + 22.0 * rings[..., None]
    canvas.paint((yy >= counter_top) & (yy < floor_top) & counter_side, wood, "counter")

    cell = canvas.rng.uniform(10.0, 20.0) * canvas.unit
    checker = ((xx // cell + yy // cell) % 2).astype(np.float32)  # (H, W) in {0, 1}
    floor = _mix(canvas.jitter((205, 203, 195), 10), canvas.jitter((75, 72, 85), 10), checker)
    canvas.paint(yy >= floor_top, floor, "floor")
    return counter_top + 0.05 * size


def _paint_beach(canvas: _Canvas) -> float:
    """Sky, a striped sea with foam along a wavy shoreline and sand; returns the top of the ground."""
    size, yy, xx = canvas.size, canvas.yy, canvas.xx
    horizon = canvas.rng.uniform(0.3, 0.45) * size
    amplitude = canvas.rng.uniform(1.0, 5.0) * canvas.unit
    wavelength = canvas.rng.uniform(30.0, 80.0) * canvas.unit
    shore = horizon + canvas.rng.uniform(0.15, 0.3) * size
    shore = shore + amplitude * np.sin(2.0 * np.pi * xx / wavelength + canvas.rng.uniform(0, 2 * np.pi))
    _paint_sky(canvas, horizon)

    near = np.clip((yy - horizon) / np.maximum(shore - horizon, 1.0), 0.0, 1.0)  # 0 far .. 1 at shore
    sea = _mix(canvas.jitter((20, 75, 135), 12), canvas.jitter((45, 145, 180), 12), near)
    waves = np.sin(yy * 1.3 / canvas.unit + 4.0 * canvas.noise(6)) > 0.8
    foam = (shore - yy) < 3.0 * canvas.unit
    sea = sea + 40.0 * waves[..., None]
    sea = np.where(foam[..., None], canvas.jitter((235, 240, 240), 8), sea)
    canvas.paint((yy >= horizon) & (yy < shore), sea, "sea")

    sand = canvas.jitter((220, 200, 150), 12) + (canvas.noise(10)[..., None] - 0.5) * 25.0
    canvas.paint(yy >= shore, sand, "sand")
    return horizon + 0.15 * size


# --- objects -------------------------------------------------------------------------------------
# Each takes the canvas, the label, the horizontal centre and the base (bottom) of the object and
# draws at a size drawn from its own distribution, independent of the scene.


def _paint_box(canvas: _Canvas, label: str, cx: float, base: float) -> None:
    """Car / oven: a shaded rounded body, a dark glass window with a highlight, two round parts."""
    rng, yy, xx = canvas.rng, canvas.yy, canvas.xx
    h = rng.uniform(0.15, 0.4) * canvas.size * canvas.object_scale
    w = h * rng.uniform(1.2, 1.8)
    instance = canvas.new_instance()
    top, bottom = base - h, base - 0.15 * h

    body_colour = canvas.jitter(_BOX_COLOURS[rng.integers(len(_BOX_COLOURS))], 12)
    shade = np.clip((yy - top) / h, 0.0, 1.0)  # (H, W), 0 top .. 1 bottom
    body = body_colour * (1.15 - 0.4 * shade[..., None])
    body_box = (cx - w / 2, top, cx + w / 2, bottom)
    canvas.paint(canvas.rounded_rectangle(body_box, 0.18 * h), body, label, instance)

    window_box = (cx - 0.36 * w, top + 0.12 * h, cx + 0.36 * w, top + 0.45 * h)
    highlight = np.abs((xx - cx) + (yy - top) - 0.1 * w) < 0.06 * w  # (H, W) diagonal glint
    glass = np.where(
        highlight[..., None], canvas.jitter((150, 175, 195), 10), canvas.jitter((40, 55, 75), 10)
    )
    canvas.paint(canvas.rectangle(window_box), glass, label, instance)

    radius = 0.16 * h
    for side in (-1.0, 1.0):
        x = cx + side * 0.3 * w
        y = base - radius
        outer = canvas.ellipse((x - radius, y - radius, x + radius, y + radius))
        hub = (xx - x) ** 2 + (yy - y) ** 2 < (0.45 * radius) ** 2
        canvas.paint(outer, np.where(hub[..., None], 150.0, 30.0), label, instance)


def _paint_canopy(canvas: _Canvas, label: str, cx: float, base: float) -> None:
    """Umbrella / lamp: a dome with alternating radial stripes on a thin metal pole."""
    rng, yy, xx = canvas.rng, canvas.yy, canvas.xx
    h = rng.uniform(0.3, 0.6) * canvas.size * canvas.object_scale
    width = h * rng.uniform(0.7, 1.1)
    dome = h * rng.uniform(0.25, 0.35)
    instance = canvas.new_instance()
    top = base - h

    pole_half = max(2.0 * canvas.unit, 0.035 * h)
    pole_box = (cx - pole_half, top + 0.5 * dome, cx + pole_half, base)
    metal = canvas.jitter((150, 150, 155), 10) + (np.abs(xx - cx) < pole_half * 0.4)[..., None] * 40.0
    canvas.paint(canvas.rectangle(pole_box), metal, label, instance)

    dome_box = (cx - width / 2, top, cx + width / 2, top + 2.0 * dome)
    mask = canvas.upper_half_ellipse(dome_box)
    stripes = int(rng.integers(3, 7))
    angle = np.arctan2(top + dome - yy, xx - cx)  # (H, W), 0 .. pi over the dome
    stripe = (np.floor(angle / np.pi * 2 * stripes) % 2).astype(np.float32)
    first, second = _CANOPY_COLOURS[rng.integers(len(_CANOPY_COLOURS))]
    cloth = _mix(canvas.jitter(first, 10), canvas.jitter(second, 10), stripe)
    cloth = cloth * (0.8 + 0.3 * canvas.noise(4)[..., None])
    canvas.paint(mask, cloth, label, instance)


def _paint_person(canvas: _Canvas, label: str, cx: float, base: float) -> None:
    """A standing figure: polygon legs, a rounded torso with arms, an elliptical head."""
    rng = canvas.rng
    h = rng.uniform(0.25, 0.6) * canvas.size * canvas.object_scale
    w = h * rng.uniform(0.28, 0.36)
    instance = canvas.new_instance()
    hip, shoulder, chin = base - 0.45 * h, base - 0.78 * h, base - 0.8 * h

    pants = canvas.jitter(_PANTS_COLOURS[rng.integers(len(_PANTS_COLOURS))], 10)
    for side in (-1.0, 1.0):
        leg = [
            (cx + side * 0.05 * w, hip),
            (cx + side * 0.5 * w, hip),
            (cx + side * 0.45 * w, base),
            (cx + side * 0.12 * w, base),
        ]
        canvas.paint(canvas.polygon(leg), pants, label, instance)

    shirt = canvas.rng.uniform(30, 230, 3).astype(np.float32)
    torso = (cx - w / 2, shoulder, cx + w / 2, hip + 0.05 * h)
    arms = (cx - 0.68 * w, shoulder + 0.02 * h, cx + 0.68 * w, hip - 0.05 * h)
    mask = canvas.rounded_rectangle(arms, 0.12 * w) | canvas.rounded_rectangle(torso, 0.25 * w)
    canvas.paint(mask, shirt, label, instance)

    head = (cx - 0.3 * w, chin - 0.2 * h, cx + 0.3 * w, chin + 0.02 * h)
    skin = canvas.jitter(_SKIN_COLOURS[rng.integers(len(_SKIN_COLOURS))], 8)
    canvas.paint(canvas.ellipse(head), skin, label, instance)


def _paint_plant(canvas: _Canvas, label: str, cx: float, base: float) -> None:
    """A potted plant: a trapezoid pot under a rounded blob of overlapping leafy circles."""
    rng = canvas.rng
    h = rng.uniform(0.15, 0.35) * canvas.size * canvas.object_scale
    instance = canvas.new_instance()
    pot_top = base - 0.35 * h

    pot = [(cx - 0.25 * h, pot_top), (cx + 0.25 * h, pot_top), (cx + 0.18 * h, base), (cx - 0.18 * h, base)]
    clay = canvas.jitter((180, 90, 50), 12)
    canvas.paint(canvas.polygon(pot), clay, label, instance)

    count = int(rng.integers(4, 8))
    xs = cx + rng.uniform(-0.3, 0.3, count) * h  # (count,) leaf circle centres and radii
    ys = pot_top - rng.uniform(0.15, 0.45, count) * h
    radii = rng.uniform(0.15, 0.28, count) * h
    inside = (canvas.xx[..., None] - xs) ** 2 + (canvas.yy[..., None] - ys) ** 2 < radii**2  # (H, W, count)
    mask = inside.any(axis=-1)  # (H, W)
    leaves = _mix(canvas.jitter((35, 90, 30), 10), canvas.jitter((95, 170, 60), 10), canvas.noise(16))
    canvas.paint(mask, leaves, label, instance)


_BACKGROUNDS: dict[str, Callable[[_Canvas], float]] = {
    "street": _paint_street,
    "kitchen": _paint_kitchen,
    "beach": _paint_beach,
}
_OBJECTS: dict[str, Callable[[_Canvas, str, float, float], None]] = {
    "car": _paint_box,
    "oven": _paint_box,
    "umbrella": _paint_canopy,
    "lamp": _paint_canopy,
    "person": _paint_person,
    "plant": _paint_plant,
}


def _check_size(size: int, layout: str = "standard") -> None:
    """Raise ConfigError for an unknown layout, or an image size too small to draw it or too large to be useful."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown synthetic layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    smallest = FAR_MIN_SIZE if layout == "far" else _MIN_SIZE
    if not smallest <= size <= _MAX_SIZE:
        raise ConfigError(
            f"synthetic{'' if layout == 'standard' else ' ' + layout} images must be at least {smallest} and at most "
            f"{_MAX_SIZE} pixels wide, got {size}"
        )


def layout_classes(layout: str = "standard") -> tuple[str, ...]:
    """Class names of a layout: ``CLASSES``, plus ``ground`` for ``far``."""
    _check_size(DEFAULT_SIZES.get(layout, _MIN_SIZE), layout)
    return FAR_CLASSES if layout == "far" else CLASSES


def layout_palette(layout: str = "standard") -> np.ndarray:
    """Mask colours of a layout's classes (``CLASS_COLOURS`` in ``layout_classes`` order), (C, 3) uint8."""
    return np.array([CLASS_COLOURS[name] for name in layout_classes(layout)], dtype=np.uint8)


def _object_boundaries(instances: np.ndarray) -> np.ndarray:
    """Pixels (H, W) bool with a 4-neighbour of another instance: a 2 px band around each object."""
    band = np.zeros(instances.shape, dtype=bool)
    vertical = instances[1:, :] != instances[:-1, :]  # (H-1, W)
    horizontal = instances[:, 1:] != instances[:, :-1]  # (H, W-1)
    band[1:, :] |= vertical
    band[:-1, :] |= vertical
    band[:, 1:] |= horizontal
    band[:, :-1] |= horizontal
    return band


def _finish(canvas: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Add the per-class grain and the ignore band around objects: (image (H, W, 3) uint8, labels (H, W) uint8)."""
    size = canvas.size
    noise = canvas.rng.standard_normal((size, size, 1), dtype=np.float32)  # (H, W, 1) grey grain
    image = canvas.image + noise * _GRAIN[canvas.labels][..., None]  # (H, W, 3)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    labels = canvas.labels.copy()  # (H, W)
    labels[_object_boundaries(canvas.instances)] = IGNORE_INDEX
    return image, labels


def _draw_objects(canvas: _Canvas, names: np.ndarray, bases: np.ndarray, centres: np.ndarray) -> None:
    """Paint objects ``names`` at horizontal ``centres`` standing on ``bases``, far (high) ones first."""
    order = np.argsort(bases, kind="stable")
    for i in order:
        _OBJECTS[str(names[i])](canvas, str(names[i]), float(centres[i]), float(bases[i]))


def _generate_standard(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    scene = tuple(SCENES)[rng.integers(len(SCENES))]
    canvas = _Canvas(rng, size)
    ground_top = _BACKGROUNDS[scene](canvas)

    count = int(rng.integers(2, 6))
    names = rng.choice(SCENES[scene], size=count)
    bases = np.sort(rng.uniform(ground_top, 1.02 * size, count))  # far (high) objects first
    centres = rng.uniform(0.05, 0.95, count) * size
    for name, cx, base in zip(names, centres, bases, strict=True):
        _OBJECTS[str(name)](canvas, str(name), float(cx), float(base))
    return (*_finish(canvas), scene)


# The far layout (see generate_scene). Fractions are of the image side.
_FAR_SCENE_WEIGHTS = {"street": 0.25, "kitchen": 0.5, "beach": 0.25}  # each twin class in 1/4 of the images
_FAR_TWINS = {"street": ("car",), "kitchen": ("oven", "lamp"), "beach": ("umbrella",)}
_FAR_BAND = (0.25, 0.32)  # height of the scene band at the top
_FAR_BASES = (0.93, 0.99)  # bottoms of the twins
_FAR_TWIN_SCALE = 0.36  # twins at 0.36x their standard height: a canopy is at most 0.216 of the side
_FAR_TWIN_COUNT = (1, 3)
_FAR_SCENE_OBJECTS = (0, 2)  # people / plants standing in the band


def _paint_neutral_ground(canvas: _Canvas, top: int) -> None:
    """A grey paved ground below row ``top``, drawn from one distribution whatever the scene."""
    yy, xx = canvas.yy, canvas.xx
    paving = canvas.jitter((150, 146, 140), 12) + (canvas.noise(8)[..., None] - 0.5) * 30.0
    slab = canvas.rng.uniform(18.0, 30.0) * canvas.unit
    joints = ((xx + canvas.rng.uniform(0, slab)) % slab < 1.0 * canvas.unit) | (yy % slab < 1.0 * canvas.unit)
    paving = paving - 18.0 * joints[..., None]
    canvas.paint(yy >= top, paving, "ground")


def _generate_far(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    scene = str(rng.choice(tuple(_FAR_SCENE_WEIGHTS), p=tuple(_FAR_SCENE_WEIGHTS.values())))
    canvas = _Canvas(rng, size)
    _BACKGROUNDS[scene](canvas)
    # Squash the whole scene background (every region of it) into the band at the top.
    band = int(round(rng.uniform(*_FAR_BAND) * size))
    rows = np.minimum(((np.arange(band) + 0.5) * size / band).astype(np.int64), size - 1)  # (band,)
    canvas.image[:band] = canvas.image[rows]
    canvas.labels[:band] = canvas.labels[rows]
    _paint_neutral_ground(canvas, band)

    extras = [name for name in SCENES[scene] if name not in _FAR_TWINS[scene]]
    count = int(rng.integers(_FAR_SCENE_OBJECTS[0], _FAR_SCENE_OBJECTS[1] + 1))
    if count:
        canvas.object_scale = band / size  # a person is at most 0.6 of the band high and stands inside it
        _draw_objects(canvas, rng.choice(extras, size=count), rng.uniform(0.7, 1.0, count) * band,
                      rng.uniform(0.05, 0.95, count) * size)  # fmt: skip

    twin = str(rng.choice(_FAR_TWINS[scene]))  # one twin class per image: which twins co-occur says nothing
    count = int(rng.integers(_FAR_TWIN_COUNT[0], _FAR_TWIN_COUNT[1] + 1))
    canvas.object_scale = _FAR_TWIN_SCALE
    _draw_objects(canvas, np.array([twin] * count), rng.uniform(*_FAR_BASES, count) * size,
                  rng.uniform(0.08, 0.92, count) * size)  # fmt: skip
    return (*_finish(canvas), scene)


def generate_scene(
    rng: np.random.Generator, size: int, layout: str = "standard"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Draw one scene: (image (H, W, 3) uint8 RGB, labels (H, W) uint8, scene type).

    Labels index ``layout_classes(layout)``; a 1-2 px band around every object is ``IGNORE_INDEX``.
    The result depends only on the state of ``rng``, ``size`` and ``layout``:

    * ``standard``: the scene background fills the image; 2-5 of the scene's objects stand on its ground.
    * ``far``: context beyond a small receptive field. The whole scene background is squashed into a
      band over the top 25-32% of the image (with 0-2 people or plants standing in it); below it lies
      a scene-neutral paved ``ground``, drawn the same way in every scene. One to three twins of ONE
      context-pair class (a street shows cars, a beach umbrellas, a kitchen ovens or lamps) stand at
      the bottom (bases at 93-99% of the side, at most 0.216 of the side high), so every twin pixel
      is at least 0.394 x size (101 px at 256) below the band: the only evidence of which twin it
      is lies that far away. Kitchens are drawn half of the time, so each twin class is in a quarter
      of the images and the twin's look alone gives even odds. Needs ``size >= FAR_MIN_SIZE``.
    """
    _check_size(size, layout)
    return _generate_far(rng, size) if layout == "far" else _generate_standard(rng, size)


def generate_indexed_scene(
    seed: int, index: int, size: int, layout: str = "standard"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Scene number ``index`` of the dataset generated with ``seed``: see ``generate_scene``."""
    return generate_scene(np.random.default_rng([seed, index]), size, layout)


# --- the VOC archive -----------------------------------------------------------------------------


def _encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes (quality 90) of an (H, W, 3) uint8 RGB image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    """A tar header with fixed owner and timestamp, so the archive depends only on its content."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a regular file ``name`` with content ``data``."""
    tar.addfile(_tar_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))


def check_arguments(num_train: int, num_val: int, size: int, seed: int, layout: str = "standard") -> None:
    """Raise ConfigError for split sizes, image size, seed or layout that cannot make a dataset."""
    if num_train < 1 or num_val < 1:
        raise ConfigError(
            f"the synthetic dataset needs at least 1 train and 1 val image, got {num_train} and {num_val}"
        )
    _check_size(size, layout)
    if seed < 0:
        raise ConfigError(f"the synthetic dataset seed must be 0 or more, got {seed}")


def write_voc_archive(
    out_path: Path,
    *,
    num_train: int = 300,
    num_val: int = 100,
    size: int = 128,
    seed: int = 0,
    layout: str = "standard",
    progress: ProgressCallback | None = None,
) -> dict:
    """Write the synthetic dataset as an uncompressed tar with the VOC 2012 layout.

    Members, under ``VOCdevkit/VOC2012/``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
    (palette PNG, labels as indices, 255 = ignore), ``ImageSets/Segmentation/{train,val,trainval}.txt``,
    ``classes.txt`` (one name per line) and ``scenes.json`` (id -> scene type). Ids are ``syn_000000``
    onwards, train first. ``layout`` is a ``generate_scene`` layout. The archive is written to a temporary file next to ``out_path`` and renamed
    into place; the same arguments give a byte-identical file.

    Returns a summary: ``path``, ``splits`` (image count per split), ``classes``, ``scenes`` (image
    count per scene type), ``size``, ``seed`` and ``layout``.
    """
    check_arguments(num_train, num_val, size, seed, layout)
    classes = layout_classes(layout)
    palette = layout_palette(layout)
    out_path = Path(out_path)
    total = num_train + num_val
    ids = [f"syn_{index:06d}" for index in range(total)]
    splits = {"train": ids[:num_train], "val": ids[num_train:], "trainval": ids}
    scenes: dict[str, str] = {}

    with atomic_write(out_path) as temp_path:
        with (
            open(temp_path, "xb") as stream,
            tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for folder in (
                "VOCdevkit",
                _ROOT,
                f"{_ROOT}/JPEGImages",
                f"{_ROOT}/SegmentationClass",
                f"{_ROOT}/ImageSets",
                f"{_ROOT}/ImageSets/Segmentation",
            ):
                tar.addfile(_tar_info(folder, tarfile.DIRTYPE, 0o755))
            for index, image_id in enumerate(ids):
                image, labels, scenes[image_id] = generate_indexed_scene(seed, index, size, layout)
                _add_file(tar, f"{_ROOT}/JPEGImages/{image_id}.jpg", _encode_jpeg(image))
                _add_file(tar, f"{_ROOT}/SegmentationClass/{image_id}.png", palette_png(labels, palette))
                if progress is not None:
                    progress("Generating synthetic scenes", index + 1, total, unit="items")
            for split, members in splits.items():
                _add_file(
                    tar,
                    f"{_ROOT}/ImageSets/Segmentation/{split}.txt",
                    "".join(f"{i}\n" for i in members).encode(),
                )
            _add_file(tar, f"{_ROOT}/classes.txt", "".join(f"{name}\n" for name in classes).encode())
            _add_file(tar, f"{_ROOT}/scenes.json", (json.dumps(scenes, indent=2) + "\n").encode())
        os.chmod(temp_path, 0o644)

    return {
        "path": str(out_path),
        "splits": {split: len(members) for split, members in splits.items()},
        "classes": list(classes),
        "scenes": dict(sorted(Counter(scenes.values()).items())),
        "size": size,
        "seed": seed,
        "layout": layout,
    }
