"""atomic_write / AtomicFile: a target is either its old self or the complete new file, never a temp file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from PIL import Image

from encnet_core.paths import AtomicFile, atomic_write, is_disk_full


def test_writes_and_replaces_leaving_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"one")
        assert not target.exists()  # nothing at the target until the block ends
    assert target.read_bytes() == b"one"
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"two")
    assert target.read_bytes() == b"two" and os.listdir(target.parent) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_leaves_the_target_and_no_temp(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise error
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_no_overwrite_never_replaces_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(FileExistsError), atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")  # another process finished first
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["out.bin"]
    target.unlink()
    with atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"mine")
    assert target.read_bytes() == b"mine" and os.listdir(tmp_path) == ["out.bin"]


def test_no_overwrite_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "out.bin"
    target.symlink_to(tmp_path / "missing")  # a dangling link counts as taken
    with pytest.raises(FileExistsError), atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"mine")
    assert target.is_symlink() and sorted(os.listdir(tmp_path)) == ["out.bin"]
    target.unlink()
    with atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"mine")
    assert target.read_bytes() == b"mine" and os.listdir(tmp_path) == ["out.bin"]


def test_keep_suffix_lets_writers_pick_the_format_by_name(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    with atomic_write(target, keep_suffix=True, fsync=False) as tmp:
        assert tmp.suffix == ".png"
        Image.new("L", (3, 2), 7).save(tmp)
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == (3, 2)


def test_atomic_file_commit_and_discard(tmp_path: Path) -> None:
    file = AtomicFile(tmp_path / "a.h5")
    file.tmp.write_bytes(b"data")
    file.commit(overwrite=False)
    assert file.committed and os.listdir(tmp_path) == ["a.h5"]
    file.discard()  # a no-op once committed
    assert (tmp_path / "a.h5").read_bytes() == b"data"
    other = AtomicFile(tmp_path / "b.h5")
    other.discard()  # nothing written yet: nothing to remove
    other.tmp.write_bytes(b"x")
    other.discard()
    other.discard()
    assert os.listdir(tmp_path) == ["a.h5"]


def test_is_disk_full() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(RuntimeError("Can't write data (file write failed: ..., errno = 28, error message = ...)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
