"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 0 ("other") ignored, labels stored as id - 1."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.data.sources.base import Item, Source, SourcePlan, find_prefix
from encnet_core.errors import DataError
from encnet_core.fetch.archives import open_archive
from encnet_core.fetch.download import RemoteFile
from encnet_core.palette import voc_palette

ADE20K_ZIP = RemoteFile(
    name="ADEChallengeData2016.zip",
    url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    md5="7328b3957e407ddae1d3cbf487f149ef",
    sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
    size=967_033_700,
)
_SPLITS = {"train": "training", "val": "validation"}

# objectInfo150.txt's Name column (stripped), class index = position: label value = ADE id - 1.
# The class names a model trained on ADE20K carries when no prepared dataset is at hand (the zoo).
ADE20K_CLASSES = (
    "wall", "building, edifice", "sky", "floor, flooring", "tree", "ceiling", "road, route", "bed",
    "windowpane, window", "grass", "cabinet", "sidewalk, pavement",
    "person, individual, someone, somebody, mortal, soul", "earth, ground", "door, double door", "table",
    "mountain, mount", "plant, flora, plant life", "curtain, drape, drapery, mantle, pall", "chair",
    "car, auto, automobile, machine, motorcar", "water", "painting, picture", "sofa, couch, lounge", "shelf", "house",
    "sea", "mirror", "rug, carpet, carpeting", "field", "armchair", "seat", "fence, fencing", "desk", "rock, stone",
    "wardrobe, closet, press", "lamp", "bathtub, bathing tub, bath, tub", "railing, rail", "cushion",
    "base, pedestal, stand", "box", "column, pillar", "signboard, sign", "chest of drawers, chest, bureau, dresser",
    "counter", "sand", "sink", "skyscraper", "fireplace, hearth, open fireplace", "refrigerator, icebox",
    "grandstand, covered stand", "path", "stairs, steps", "runway", "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table", "pillow", "screen door, screen", "stairway, staircase", "river",
    "bridge, span", "bookcase", "blind, screen", "coffee table, cocktail table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill", "bench", "countertop",
    "stove, kitchen stove, range, kitchen range, cooking stove", "palm, palm tree", "kitchen island",
    "computer, computing machine, computing device, data processor, electronic computer, information processing system",
    "swivel chair", "boat", "bar", "arcade machine", "hovel, hut, hutch, shack, shanty",
    "bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle",
    "towel", "light, light source", "truck, motortruck", "tower", "chandelier, pendant, pendent",
    "awning, sunshade, sunblind", "streetlight, street lamp", "booth, cubicle, stall, kiosk",
    "television receiver, television, television set, tv, tv set, idiot box, boob tube, telly, goggle box",
    "airplane, aeroplane, plane", "dirt track", "apparel, wearing apparel, dress, clothes", "pole",
    "land, ground, soil", "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock", "bottle",
    "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card", "stage", "van", "ship", "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "canopy",
    "washer, automatic washer, washing machine", "plaything, toy", "swimming pool, swimming bath, natatorium",
    "stool", "barrel, cask", "basket, handbasket", "waterfall, falls", "tent, collapsible shelter", "bag",
    "minibike, motorbike", "cradle", "oven", "ball", "food, solid food", "step, stair", "tank, storage tank",
    "trade name, brand name, brand, marque", "microwave, microwave oven", "pot, flowerpot",
    "animal, animate being, beast, brute, creature, fauna", "bicycle, bike, wheel, cycle", "lake",
    "dishwasher, dish washer, dishwashing machine", "screen, silver screen, projection screen", "blanket, cover",
    "sculpture", "hood, exhaust hood", "sconce", "vase", "traffic light, traffic signal, stoplight", "tray",
    "ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin", "fan",
    "pier, wharf, wharfage, dock", "crt screen", "plate", "monitor, monitoring device",
    "bulletin board, notice board", "shower", "radiator", "glass, drinking glass", "clock", "flag",
)  # fmt: skip


def decode_ade_png(raw: bytes) -> np.ndarray:
    """Annotation PNG (0 = other, 1..150) -> labels 0..149, 0 -> 255."""
    with Image.open(io.BytesIO(raw)) as img:
        if img.mode not in ("L", "P"):
            raise DataError(f"annotation has mode {img.mode}, expected single-channel")
        values = np.asarray(img, dtype=np.uint8)
    return values - np.uint8(1)  # uint8 arithmetic wraps 0 -> 255


def parse_object_info(text: str) -> list[str]:
    """Class names, in order, from objectInfo150.txt (tab-separated, Name is the last column)."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or rows[0][-1].strip() != "Name":
        raise DataError("objectInfo150.txt has no Name column header")
    names = [row[-1].strip() for row in rows[1:]]
    if len(names) != 150:
        raise DataError(f"objectInfo150.txt lists {len(names)} classes, expected 150")
    return names


def plan_ade20k(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    archive = files[ADE20K_ZIP.name]
    with open_archive(archive, params.get("_limits")) as arc:
        names = arc.names()
        prefix = find_prefix(names, "objectInfo150.txt", str(archive))
        classes = parse_object_info(arc.read(f"{prefix}objectInfo150.txt").decode("utf-8", "replace"))
        available = set(names)
    splits = {}
    for split, folder in _SPLITS.items():
        image_dir = f"{prefix}images/{folder}/"
        items = []
        for name in sorted(n for n in names if n.startswith(image_dir) and n.endswith(".jpg")):
            stem = Path(name).stem
            mask = f"{prefix}annotations/{folder}/{stem}.png"
            if mask not in available:
                raise DataError(f"{archive}: {name} has no annotation {mask}")
            items.append(Item(stem, (str(archive), name), (str(archive), mask), decode_ade_png))
        splits[split] = items
    return SourcePlan(classes, voc_palette(151)[1:], splits, {"train": 20210, "val": 2000})


ADE20K = Source("ade20k", "ADE20K SceneParsing (train 20210 / val 2000, 150 classes)", (ADE20K_ZIP,), plan_ade20k)
