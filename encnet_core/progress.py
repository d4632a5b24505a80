"""Progress reports from the library to whoever shows them (the CLI's rich display, a test's list).

Every long-running library function (download, extract, prepare, targets, evaluate, predict) takes
an optional `ProgressCallback` and calls it as ``progress(description, done, total, unit=...)``:
``description`` names the task (one display row per description), ``done`` of ``total`` (None when
unknown) counts ``unit``: ``"bytes"`` (downloads, hashing) or ``"items"`` (files, images, samples).
The library never prints progress itself.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

__all__ = ["Unit", "ProgressCallback", "ThrottledProgress"]

Unit = Literal["bytes", "items"]
"""What ``done`` and ``total`` count."""


class ProgressCallback(Protocol):
    """``progress(description, done, total, unit=...)``: ``done`` of ``total`` (None: unknown) ``unit``."""

    def __call__(self, description: str, done: int, total: int | None, *, unit: Unit) -> None: ...


class ThrottledProgress:
    """One task's reports to a `ProgressCallback` (which may be None), at most once per ``interval`` seconds."""

    def __init__(self, progress: ProgressCallback | None, description: str, unit: Unit, interval: float = 0.1) -> None:
        self._progress = progress
        self._description = description
        self._unit: Unit = unit
        self._interval = interval
        self._last = float("-inf")

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        """Report ``done`` of ``total``; ``final`` reports even if the last call was recent."""
        if self._progress is None:
            return
        now = time.monotonic()
        if final or now - self._last >= self._interval:
            self._last = now
            self._progress(self._description, done, total, unit=self._unit)
