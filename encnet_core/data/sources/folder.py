"""A user's own folders: images, masks (index/palette PNGs, or colour PNGs mapped by the class colours)
and a class list file.

Layout: ``IMAGES/<split>/**/*.jpg`` with ``MASKS/<split>/**/*.png`` when IMAGES has split folders
(``train``, ``val``, ``test``: a split without a mask folder is stored unlabelled); otherwise every
image under IMAGES is split randomly (``val_fraction``, seeded). A mask has the image's relative path
with the extension ``.png``.

Class file: one class per line, in label order, ``name`` or ``name R G B`` or ``name #RRGGBB``
(colours for palette output and for colour masks; default the VOC palette). Blank lines and lines
starting with ``#`` are skipped.

Label options: ``binary`` (255 -> 1, for 0/255 masks of a 2-class list) and ``reduce_zero_label``
(index masks whose labels start at 1: v -> v-1, 0 -> 255). `LabelChecks` (prepare) suggests them.
"""

from __future__ import annotations

import functools
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.sources.base import Item, ItemList, Source, SourcePlan
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import voc_palette

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
SPLIT_NAMES = ("train", "val", "test")


def parse_class_file(path: Path) -> tuple[list[str], np.ndarray]:
    """Class names and (C, 3) uint8 palette from a class list file."""
    names, palette, _ = read_class_file(path)
    return names, palette


def read_class_file(path: Path) -> tuple[list[str], np.ndarray, bool]:
    """Class names, (C, 3) uint8 palette, and whether any line gave a colour."""
    if not path.is_file():
        raise ConfigError(f"class list file not found: {path}")
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        colour: tuple[int, int, int] | None = None
        try:
            if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
                colour = tuple(int(p) for p in parts[-3:])  # type: ignore[assignment]
                parts = parts[:-3]
            elif len(parts) >= 2 and parts[-1].startswith("#") and len(parts[-1]) == 7:
                colour = tuple(int(parts[-1][i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[assignment]
                parts = parts[:-1]
        except ValueError:
            raise ConfigError(f"{path}:{number}: bad colour in {line!r}") from None
        if colour is not None and max(colour) > 255:
            raise ConfigError(f"{path}:{number}: colour values must be 0..255")
        names.append(" ".join(parts))
        colours.append(colour)
    if not names:
        raise ConfigError(f"{path} lists no classes")
    if len(names) > 255:
        raise ConfigError(f"{path} lists {len(names)} classes; at most 255 are supported (255 is ignore)")
    palette = voc_palette(len(names))
    for index, colour in enumerate(colours):
        if colour is not None:
            palette[index] = colour
    return names, palette, any(colour is not None for colour in colours)


def decode_folder_mask(
    raw: bytes, palette: np.ndarray, coloured: bool = True, binary: bool = False, reduce_zero_label: bool = False
) -> np.ndarray:
    """Index/palette PNG -> its values; RGB PNG -> class by exact colour (white = ignore).

    ``coloured``: the class file gave colours (else ``palette`` is the default one, and a colour not in
    it asks for colours or indexed masks). ``reduce_zero_label`` (index masks): v -> v-1, 0 -> 255, as
    mmsegmentation's ``reduce_zero_label``. ``binary`` (any mask, after decoding): 255 -> 1.
    """
    with Image.open(io.BytesIO(raw)) as img:
        if img.mode in ("P", "L", "1"):  # "1": a 1-bit PNG, values 0 and 1
            labels = np.asarray(img, dtype=np.uint8)
        elif img.mode == "I;16" or img.mode == "I":
            values = np.asarray(img)
            if values.max() > 255:
                raise DataError(f"mask value {int(values.max())} does not fit 0..255")
            labels = values.astype(np.uint8)
        else:
            labels = _colour_labels(np.asarray(img.convert("RGB"), dtype=np.int64), palette, coloured, img.mode)
            return _binary(labels) if binary else labels
    if reduce_zero_label:
        labels = labels - np.uint8(1)  # uint8: 0 -> 255 (ignore), 255 -> 254
        labels[labels == 254] = IGNORE_INDEX
    return _binary(labels) if binary else labels


def _binary(labels: np.ndarray) -> np.ndarray:
    return np.where(labels == IGNORE_INDEX, np.uint8(1), labels).astype(np.uint8)


def _colour_labels(rgb: np.ndarray, palette: np.ndarray, coloured: bool, mode: str) -> np.ndarray:
    """(H, W, 3) colours -> class indices by exact colour; white is ignore."""
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W)
    keys = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8) | palette[:, 2]
    labels = np.full(codes.shape, IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(codes.shape, dtype=bool)
    for index, key in enumerate(keys):
        hit = codes == key
        labels[hit] = index
        known |= hit
    unknown = ~known & (codes != 0xFFFFFF)
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        colour = tuple(int(v) for v in rgb[y, x])
        if not coloured:
            raise DataError(
                f"mask is a colour ({mode}) image and its colour {colour} at ({y}, {x}) is not one of the default "
                "class colours (the class file gives none): add 'name R G B' lines to the class file, or convert "
                "the masks to indexed (P or L) PNGs whose values are the labels"
            )
        raise DataError(f"colour {colour} at ({y}, {x}) is not in the class list")
    return labels


def _images_under(folder: Path) -> list[str]:
    """The images under ``folder``, as relative POSIX paths, in path order (by component, as paths sort).

    Found as ``Path.rglob`` finds them (hidden files too, symlinked folders not entered), but as plain
    strings: pathlib interns every name it parses, and with every path alive at once the interpreter's
    table of interned strings grows to hold them all (about 190 bytes per image), and never shrinks.
    """
    found = []
    for directory, _, names in os.walk(folder):
        prefix = os.path.relpath(directory, folder).replace(os.sep, "/") + "/"
        prefix = "" if prefix == "./" else prefix
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and os.path.isfile(os.path.join(directory, name)):
                found.append(prefix + name)
    found.sort(key=lambda relative: [os.path.normcase(part) for part in relative.split("/")])
    return found


def _under(root: str, relative: str) -> str:
    """``str(Path(root) / relative)`` without pathlib, which would intern ``relative`` (see `_images_under`)."""
    relative = relative.replace("/", os.sep)
    return relative if root == "." else os.path.join(root, relative)


def _mask_of(relative: str) -> str:
    """The mask's relative path: the image's with the extension .png."""
    return os.path.splitext(relative)[0] + ".png"


def check_masks(image_root: Path, mask_root: Path | None, images: list[str]) -> None:
    """`DataError` for the first image (in path order) without its mask, before any conversion."""
    if mask_root is None:
        return
    for relative in images:
        mask_path = _under(str(mask_root), _mask_of(relative))
        if not os.path.isfile(mask_path):
            raise DataError(f"no mask for {_under(str(image_root), relative)}: expected {mask_path}")


def check_folder(params: dict[str, Any]) -> None:
    """`ConfigError` for missing folders, a missing or bad class file, or a bad --val-fraction."""
    images_dir, masks_dir, classes_file = params.get("images"), params.get("masks"), params.get("classes")
    if images_dir is None or classes_file is None:
        raise ConfigError("`encnet prepare folder` needs --images DIR and --classes FILE (and --masks DIR)")
    if not Path(images_dir).is_dir():
        raise ConfigError(f"image folder not found: {images_dir}")
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise ConfigError(f"mask folder not found: {masks_dir}")
    names, _ = parse_class_file(Path(classes_file))
    if params.get("binary") and params.get("reduce_zero_label"):
        raise ConfigError("--binary and --reduce-zero-label do not go together: pick the one your masks need")
    if params.get("binary") and len(names) != 2:
        raise ConfigError(f"--binary needs a class list of 2 classes (background, object); {classes_file} lists {len(names)}")
    fraction = float(params.get("val_fraction", 0.1))
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {fraction}")


def plan_folder(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    check_folder(params)
    images_dir, classes_file = Path(params["images"]), Path(params["classes"])
    masks_dir = Path(params["masks"]) if params.get("masks") else None
    classes, palette, coloured = read_class_file(classes_file)
    decoder = functools.partial(
        decode_folder_mask, palette=palette, coloured=coloured, binary=bool(params.get("binary")),
        reduce_zero_label=bool(params.get("reduce_zero_label")),
    )  # fmt: skip

    def items_for(image_root: Path, mask_root: Path | None, images: list[str] | None = None) -> ItemList:
        """The items of ``images`` (relative paths; default: every image under ``image_root``, whose masks
        are checked here), made on demand."""
        if images is None:
            images = _images_under(image_root)
            check_masks(image_root, mask_root, images)

        image_dir, mask_dir = str(image_root), None if mask_root is None else str(mask_root)

        def make(relative: str) -> Item:
            name, image = os.path.splitext(relative)[0], ("", _under(image_dir, relative))
            if mask_dir is None:
                return Item(name, image, None, None)
            return Item(name, image, ("", _under(mask_dir, _mask_of(relative))), decoder)

        return ItemList(images, make)

    split_dirs = [s for s in SPLIT_NAMES if (images_dir / s).is_dir()]
    splits: dict[str, ItemList] = {}
    if split_dirs:
        for split in split_dirs:
            mask_root = masks_dir / split if masks_dir is not None and (masks_dir / split).is_dir() else None
            if mask_root is None and split != "test":
                raise DataError(f"split {split!r} has images but no mask folder {masks_dir}/{split}")
            splits[split] = items_for(images_dir / split, mask_root)
    else:
        if masks_dir is None:
            raise ConfigError("--masks DIR is required when the image folder has no train/val/test subfolders")
        images = _images_under(images_dir)
        check_masks(images_dir, masks_dir, images)
        fraction = float(params.get("val_fraction", 0.1))
        order = list(range(len(images)))
        random.Random(int(params.get("seed", 0))).shuffle(order)
        num_val = round(len(images) * fraction)
        val = set(order[:num_val])
        del order
        splits["train"] = items_for(images_dir, masks_dir, [r for i, r in enumerate(images) if i not in val])
        if num_val:
            splits["val"] = items_for(images_dir, masks_dir, [r for i, r in enumerate(images) if i in val])
    if not any(splits.values()):
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {images_dir}")
    return SourcePlan(classes, palette, splits, files={"images": str(images_dir), "masks": str(masks_dir)}, user_masks=True)


FOLDER = Source("folder", "your own images + masks + class list", (), plan_folder, check_folder)
