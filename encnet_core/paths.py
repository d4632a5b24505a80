"""Checks on output paths, made before any work so that a bad path fails in a second, not after an hour.

``check_output_file`` and ``check_output_dir`` raise one ``ConfigError`` line when the path cannot be
written: a file where a folder is wanted (or the reverse), a parent that is a file, or a place this
process may not write to (tested by creating and removing a temporary file, which also catches
read-only file systems and, for root, what permission bits do not).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from encnet_core.errors import ConfigError

__all__ = ["check_output_file", "check_output_dir"]


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_writable(folder: Path, path: Path, option: str) -> None:
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".encnet-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None


def check_output_file(path: Path, option: str, overwrite: bool = True) -> None:
    """Raise unless a file can be written at ``path`` (its folder may not exist yet).

    ``overwrite=False`` also refuses an existing file (the caller's ``--overwrite`` option).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{option} {path} exists; pass --overwrite to replace it")
    _check_writable(_nearest_existing(path.parent), path, option)


def check_output_dir(path: Path, option: str) -> None:
    """Raise unless ``path`` is, or can be created as, a folder this process can write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder")
    _check_writable(_nearest_existing(path), path, option)
