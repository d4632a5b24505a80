"""atomic_write / AtomicFile: a target is either its old self or the complete new file, never a temp file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from encnet_core.errors import ConfigError
from encnet_core.paths import AtomicFile, atomic_write, check_output_file, is_disk_full, output_kind


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
    with pytest.raises(FileExistsError), atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"mine")
        target.symlink_to(tmp_path / "missing")  # appeared meanwhile: a dangling link counts as taken
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


# ------------------------------------------------------------------------ targets that are not regular files


def test_a_fifo_is_written_in_place_never_renamed_over(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    with atomic_write(fifo) as tmp:
        assert tmp.parent != tmp_path  # the complete output is staged elsewhere, not beside the FIFO
        tmp.write_bytes(b'{"ok": 1}\n')
    reader.join(timeout=30)
    assert received == [b'{"ok": 1}\n']
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]
    check_output_file(fifo, "--json")  # writable in place: accepted before any work


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root (CAP_MKNOD)")
def test_a_character_device_is_written_in_place(tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, in a folder of the test's own
    with atomic_write(null) as tmp:
        tmp.write_bytes(b"x" * 1000)
    mode = os.lstat(null).st_mode
    assert stat.S_ISCHR(mode) and os.major(os.lstat(null).st_rdev) == 1 and os.listdir(tmp_path) == ["null"]


def test_dev_null_is_a_special_target_and_stays_one() -> None:
    assert output_kind(Path("/dev/null")) == "special"
    with atomic_write(Path("/dev/null")) as tmp:
        tmp.write_bytes(b"discarded")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@pytest.mark.parametrize("points_to", ["file", "nothing"])
def test_a_symbolic_link_is_refused_and_left_alone(tmp_path: Path, points_to: str) -> None:
    real = tmp_path / "real.json"
    if points_to == "file":
        real.write_text("{}")
    link = tmp_path / "out.json"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match=r"out\.json is a symbolic link .*does not write through links"):
        check_output_file(link, "--json")
    with pytest.raises(ConfigError, match="symbolic link"), atomic_write(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real.read_text() == "{}") if points_to == "file" else not real.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["out.json"] + (["real.json"] if points_to == "file" else []))


def test_a_socket_is_refused(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(ConfigError, match="is a socket"):
            check_output_file(path, "--json")
        with pytest.raises(ConfigError, match="is a socket"), atomic_write(path) as tmp:
            tmp.write_text("x")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()


def test_output_kinds(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "d")
    assert [output_kind(tmp_path / n) for n in ("f", "d", "l", "missing")] == ["regular", "folder", "link", "missing"]
