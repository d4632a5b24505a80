"""The label checks of ``encnet prepare``: what every converted mask tells about the dataset as a whole.

A conversion worker checks each mask alone (values 0..C-1 or 255) and hands back the distinct values
it holds; `LabelChecks` gathers them in the main process, in item order, and turns the patterns that
can only be seen across masks into one clear line:

- values at or above the class count: with no 0 in any mask read and every value in 1..C, the labels
  start at 1 (``--reduce-zero-label`` for a user's own masks); otherwise the largest value and the
  class count are named;
- every mask holding only 0 and 255 with a 2-class list: 255 is the ignore value, so the second class
  would get no pixel at all (``--binary`` maps 255 to 1);
- a class with no pixel in any split: reported in ``PrepareResult.empty_classes``; ``encnet prepare``
  prints `empty_classes_message` as a warning.

Each message names up to `EXAMPLES` files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from encnet_core.constants import IGNORE_INDEX
from encnet_core.errors import DataError

__all__ = ["EXAMPLES", "LabelChecks", "empty_classes", "empty_classes_message"]

EXAMPLES = 3  # files named in a message


def _files(files: list[str], total: int) -> str:
    more = total - len(files)
    return ", ".join(files) + (f" and {more} more" if more > 0 else "")


def empty_classes(classes: list[str], pixels: np.ndarray) -> list[str]:
    """The names of the classes whose pixel count in ``pixels`` ((C,) or (N, C)) is 0, in class order."""
    totals = np.asarray(pixels).reshape(-1, len(classes)).sum(axis=0)
    return [name for name, count in zip(classes, totals, strict=True) if count == 0]


@dataclass
class LabelChecks:
    """The label facts of one ``prepare`` run; ``user_masks``: the source takes ``--binary`` and
    ``--reduce-zero-label`` (the folder source), so the messages suggest them."""

    classes: list[str]
    user_masks: bool = False
    masks: int = 0  # masks read (good and bad)
    seen: set[int] = field(default_factory=set)  # every value of every mask read
    with_ignore: list[str] = field(default_factory=list)  # example files holding 255
    ignore_masks: int = 0  # masks holding 255
    out_of_range: list[tuple[str, str, list[int]]] = field(default_factory=list)  # (file, reason, values)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (C,) pixel totals

    def add(self, split: str, file: str, values: np.ndarray, class_pixels: np.ndarray) -> None:
        """A good mask: its distinct ``values`` and its per-class pixel counts."""
        self._saw(file, values)
        total = self.pixels.setdefault(split, np.zeros(len(self.classes), dtype=np.int64))
        total += class_pixels

    def add_out_of_range(self, file: str, reason: str, values: list[int]) -> bool:
        """A mask with values at or above the class count; True once enough examples are in to stop."""
        self._saw(file, np.asarray(values))
        self.out_of_range.append((file, reason, values))
        return len(self.out_of_range) >= EXAMPLES

    def _saw(self, file: str, values: np.ndarray) -> None:
        self.masks += 1
        distinct = {int(v) for v in values}
        self.seen |= distinct
        if IGNORE_INDEX in distinct:
            self.ignore_masks += 1
            if len(self.with_ignore) < EXAMPLES:
                self.with_ignore.append(file)

    def out_of_range_error(self) -> DataError:
        """One line for the masks with values at or above the class count (call when there are any)."""
        C = len(self.classes)
        first, reason, _ = self.out_of_range[0]
        files = [file for file, _, _ in self.out_of_range]
        also = f" (also {', '.join(files[1:])})" if len(files) > 1 else ""
        bad = {v for _, _, values in self.out_of_range for v in values if v != IGNORE_INDEX}
        if 0 not in self.seen and bad and min(bad) >= 1 and max(bad) <= C:
            fix = (
                "pass --reduce-zero-label to read v as class v-1 and 0 as ignore"
                if self.user_masks
                else "the masks do not match this dataset's label mapping"
            )
            return DataError(
                f"{first}: {reason}{also}: the labels seem to start at 1 (values 1..{max(bad)}, no 0 in the "
                f"{self.masks} masks read, {C} classes): {fix}"
            )
        largest = max(v for _, _, values in self.out_of_range for v in values if v != IGNORE_INDEX)
        fix = "list every class in the class file, or fix the masks" if self.user_masks else "check the archive"
        return DataError(
            f"{first}: {reason}{also}: the largest mask value is {largest} but there are {C} classes "
            f"(0..{C - 1}, {IGNORE_INDEX} = ignore): {fix} (or pass --skip-bad to skip such files)"
        )

    def finish(self) -> list[str]:
        """After every split: raise for a result that can only be wrong, else the classes with no pixel
        in any split (for `empty_classes_message`)."""
        C = len(self.classes)
        if self.user_masks and C == 2 and self.masks and self.seen <= {0, IGNORE_INDEX} and IGNORE_INDEX in self.seen:
            raise DataError(
                f"every mask holds only 0 and {IGNORE_INDEX} (e.g. {_files(self.with_ignore, self.ignore_masks)}) "
                f"and the class list has 2 classes ({', '.join(self.classes)}), but {IGNORE_INDEX} is the ignore "
                f"value, so {self.classes[1]!r} would get no pixel: pass --binary to read {IGNORE_INDEX} as "
                f"class 1 ({self.classes[1]})"
            )
        if not self.pixels:
            return []
        return empty_classes(self.classes, np.stack(list(self.pixels.values())))


def empty_classes_message(empty: list[str], num_classes: int) -> str:
    """The warning for classes with no pixel in any split (``prepare``'s ``empty_classes``)."""
    shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    return (
        f"{len(empty)} of the {num_classes} classes have no pixel in any split: {shown} (training never sees "
        "them; check the class list and the masks)"
    )
