"""Output paths: checked before any work, written atomically.

``check_output_file`` and ``check_output_dir`` run before any work, so that a bad path fails in a
second, not after an hour: they raise one ``ConfigError`` line when the path cannot be written (a file
where a folder is wanted or the reverse, a parent that is a file, or a place this process may not
write to, tested by creating and removing a temporary file, which also catches read-only file
systems and, for root, what permission bits do not).

``atomic_write`` (and ``AtomicFile`` underneath it) is how every output file is written: into a
uniquely named hidden temp file in the target's folder, flushed to disk, then renamed over the target
(or, with ``overwrite=False``, linked to it so that a file that appeared meanwhile is never replaced);
on any error or interruption the temp file is removed and the target is left as it was.
What is not a regular file is never renamed over: a character or block device or a FIFO
(``--json /dev/null``, a named pipe) is written in place, through an ordinary open, after the
complete output was written to a temp file; a socket and a symbolic link are refused in one line
(encnet writes a file under its own name only, so a link placed in an output folder cannot redirect
a write elsewhere; give the file the link points to).
``is_disk_full`` says whether an error means a full disk (or quota), for the callers' one-line messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from encnet_core.errors import ConfigError

__all__ = ["check_output_file", "check_output_dir", "AtomicFile", "atomic_write", "is_disk_full", "output_kind"]


def output_kind(path: Path) -> str:
    """What is at ``path``: "missing", "regular", "folder", "link" (a symbolic link to a regular file,
    to nothing, or to a folder), "special" (a character or block device or a FIFO, itself or behind a
    link such as /dev/stdout) or "socket"."""
    try:
        mode = os.stat(path).st_mode  # follows links
    except FileNotFoundError:
        return "link" if os.path.islink(path) else "missing"
    except OSError:
        return "missing" if not os.path.lexists(path) else "regular"  # unreadable: let the write report it
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        return "special"
    if os.path.islink(path):
        return "link"
    return "folder" if stat.S_ISDIR(mode) else "regular"


def _refuse_kind(path: Path, kind: str, option: str | None = None) -> None:
    prefix = f"{option} {path}" if option else str(path)
    if kind == "socket":
        raise ConfigError(f"{prefix} is a socket; give a file name")
    if kind == "link":
        raise ConfigError(
            f"{prefix} is a symbolic link (to {os.path.realpath(path)}); encnet does not write through links: "
            "give the file it points to, or another name"
        )

def _exists(path: Path) -> bool:
    """``path.exists()``, False where a folder on the way may not be looked into (``PermissionError``):
    the caller then climbs to that folder, and the write check names it in one line."""
    try:
        return path.exists()
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (and that this process may look at)."""
    current = path.absolute()
    while not _exists(current) and current != current.parent:
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
    kind = output_kind(path)
    _refuse_kind(path, kind, option)
    if kind == "folder":
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    if kind != "missing" and not overwrite:
        raise ConfigError(f"{option} {path} exists; pass --overwrite to replace it")
    if kind == "special":  # written in place (a device, a FIFO): its own permission is what counts
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{option} {path}: not writable by this process")
        return
    _check_writable(_nearest_existing(path.parent), path, option)


def check_output_dir(path: Path, option: str) -> None:
    """Raise unless ``path`` is, or can be created as, a folder this process can write in."""
    path = Path(path)
    if _exists(path) and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder")
    _check_writable(_nearest_existing(path), path, option)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` reports a full disk or an exceeded quota (an OSError, or h5py's RuntimeError text)."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "errno = 28," in text or "No space left" in text or "Disk quota exceeded" in text


# Hard links are refused by some file systems (FAT, some network shares, some container overlays).
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)


class AtomicFile:
    """A hidden temp file beside ``target`` (``.<name>.<pid>.<random>.tmp``) that becomes ``target``
    only when committed; ``discard`` removes it. Nothing is created until the caller writes ``tmp``.

    ``keep_suffix`` ends the temp name with the target's suffix too, for writers that pick the format
    from the name (PIL, ``torch.export``). For objects that write over many calls (``HDF5Writer``);
    a single write is simpler with ``atomic_write``.

    A ``target`` that is a device or a FIFO (``in_place``) is never renamed over: the temp file lies in
    the system's temp folder and ``commit`` copies it into the target through an ordinary open. A
    symbolic link or a socket at ``target`` raises ``ConfigError``.
    """

    def __init__(self, target: Path, *, keep_suffix: bool = False) -> None:
        self.target = Path(target)
        kind = output_kind(self.target)
        _refuse_kind(self.target, kind)
        self.in_place = kind == "special"
        suffix = self.target.suffix if keep_suffix else ""
        name = f".{self.target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
        self.tmp = Path(tempfile.gettempdir()) / name if self.in_place else self.target.with_name(name)
        self.committed = False

    def commit(self, *, overwrite: bool = True, fsync: bool = True) -> None:
        """Give the written temp file the target's name (``fsync``: its data reaches the disk first).

        Without ``overwrite`` an existing target is never replaced: the temp file is hard-linked to the
        target (atomic, and it fails if the target exists, even as a dangling link), and
        ``FileExistsError`` is raised if a file is there; on file systems without hard links the target
        is checked, then renamed over. The temp file is left for ``discard`` on an error.
        """
        if self.in_place:
            if not overwrite:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self.target))
            with open(self.tmp, "rb") as source, open(self.target, "wb") as sink:  # the device or FIFO itself
                shutil.copyfileobj(source, sink)
            self.committed = True
            self.tmp.unlink(missing_ok=True)
            return
        if fsync:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if overwrite:
            os.replace(self.tmp, self.target)
            self.committed = True
            return
        try:
            os.link(self.tmp, self.target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if os.path.lexists(self.target):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self.target)) from None
            os.replace(self.tmp, self.target)
            self.committed = True
            return
        self.committed = True
        self.tmp.unlink(missing_ok=True)  # the second name of the published file

    def discard(self) -> None:
        """Remove the temp file unless it was committed; safe to call more than once."""
        if not self.committed and os.path.lexists(self.tmp):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_write(
    target: Path, *, overwrite: bool = True, fsync: bool = True, keep_suffix: bool = False
) -> Iterator[Path]:
    """Write ``target`` all at once: the block writes the yielded temp path, which then replaces ``target``.

    ``target``'s folder is created if needed. On any error in the block (or in the commit) the temp
    file is removed and ``target`` is untouched; ``overwrite=False`` raises ``FileExistsError`` instead
    of replacing a file that exists when the block ends. ``fsync=False`` skips the flush to disk, for
    outputs that are cheap to make again (one mask per predicted image). See ``AtomicFile``.

        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    """
    file = AtomicFile(target, keep_suffix=keep_suffix)
    try:
        if not file.in_place:
            file.target.parent.mkdir(parents=True, exist_ok=True)
        yield file.tmp
        file.commit(overwrite=overwrite, fsync=fsync)
    finally:
        file.discard()
