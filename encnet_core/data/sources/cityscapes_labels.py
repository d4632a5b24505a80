"""The Cityscapes label table (cityscapesScripts ``cityscapesscripts/helpers/labels.py``, mcordts/cityscapesScripts
at 0bcc4a7): every labelId with its trainId and colour. The 19 classes encnet trains are the labels whose
trainId is 0..18 (in trainId order); every other labelId maps to 255 (ignored), as in the reference's
``CitySegmentation._class_to_index`` (torch-encoding 1.2.1, encoding/datasets/cityscapes.py). Test-server
files hold labelIds again (``TRAIN_TO_LABEL_ID``): the server evaluates "the original IDs, not the training IDs"
(labels.py)."""

from __future__ import annotations

import numpy as np

__all__ = ["LABELS", "CLASSES", "PALETTE", "LABEL_TO_TRAIN_ID", "TRAIN_TO_LABEL_ID", "labelids_to_trainids", "trainids_to_labelids"]

# (name, labelId, trainId, colour); labels.py's 'license plate' (id -1) never appears in the PNGs (uint8)
LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)

_TRAINED = sorted((train, name, colour, label) for name, label, train, colour in LABELS if train != 255)
CLASSES: list[str] = [name for _, name, _, _ in _TRAINED]
"""The 19 classes, index = trainId."""
PALETTE: np.ndarray = np.array([colour for _, _, colour, _ in _TRAINED], dtype=np.uint8)
"""(19, 3) colours of the classes (labels.py's, as the Cityscapes colour images use them)."""

LABEL_TO_TRAIN_ID: np.ndarray = np.full(256, 255, dtype=np.uint8)
"""labelId (a uint8 PNG value) -> trainId; 255 for every label not evaluated and every unknown value."""
for _name, _label, _train, _ in LABELS:
    LABEL_TO_TRAIN_ID[_label] = _train

TRAIN_TO_LABEL_ID: np.ndarray = np.array([label for _, _, _, label in _TRAINED], dtype=np.uint8)
"""trainId 0..18 -> labelId (what the Cityscapes server takes)."""


def labelids_to_trainids(labelids: np.ndarray) -> np.ndarray:
    """A ``*_gtFine_labelIds.png`` array (uint8 labelIds) -> trainIds 0..18, 255 ignored."""
    return LABEL_TO_TRAIN_ID[np.asarray(labelids, dtype=np.uint8)]


def trainids_to_labelids(trainids: np.ndarray) -> np.ndarray:
    """Predicted trainIds 0..18 -> labelIds, for a Cityscapes submission (values outside 0..18 are an error)."""
    trainids = np.asarray(trainids)
    if trainids.size and (trainids.min() < 0 or trainids.max() >= len(TRAIN_TO_LABEL_ID)):
        raise ValueError(f"trainIds must be 0..{len(TRAIN_TO_LABEL_ID) - 1}, got {trainids.min()}..{trainids.max()}")
    return TRAIN_TO_LABEL_ID[trainids]
