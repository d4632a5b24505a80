"""Read tar and zip archives in place, and extract them safely.

Datasets are converted straight from their archives: `open_archive` returns an `Archive` that lists
the regular files (as normalised posix paths) and reads any of them into memory, without extracting
anything to disk. The format is detected from the content (tar, optionally gzip/bz2/xz-compressed,
or zip), not from the file name.

Every member is checked when the archive is opened: an absolute path, a drive letter, a ``..``
component, or (in a tar, or a zip made on Unix) a symbolic or hard link, device file or FIFO makes
the whole archive refused with `ArchiveError` naming the member; nothing is skipped silently.

Cost: opening reads the member index. For a zip that is the central directory (fast); for a tar it
is a scan of every header, which for a compressed tar means decompressing the whole archive once
(about 10 s per GB). Reads from a plain tar or a zip seek straight to the member; in a compressed
tar, reading forward (in `Archive.names` order) only decompresses the gap, while reading backwards
restarts decompression from the beginning, so read members in archive order. `Archive.read` loads a
whole member into memory (dataset members are images and label files of a few MB at most).

A truncated archive raises `ArchiveError` when it is opened or read, except a tar cut exactly
between two members, which looks complete: only the archive's checksum (see `download`) catches that.

An `Archive` is not thread-safe. It pickles by path: a worker process that receives one (or calls
`open_archive` itself) reopens the file and pays the opening cost again, so give each worker a long,
contiguous run of names rather than one name at a time.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import tarfile
import uuid
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from encnet_core.data.download import ProgressCallback, ThrottledProgress
from encnet_core.errors import ArchiveError, DataError

__all__ = ["Archive", "check_member_name", "open_archive", "safe_extract"]

# Errors that a corrupt or truncated archive raises from the standard library's readers.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    RuntimeError,
)
_DRIVE = re.compile(r"[A-Za-z]:")


def _normalise(name: str) -> str:
    """Posix form of a member name: backslashes become slashes; empty and ``.`` components are dropped."""
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


def _unsafe(archive: Path | str | None, member: str, reason: str) -> str:
    where = f"{archive}: " if archive is not None else ""
    return f"{where}unsafe member {member!r} ({reason}); refusing to use this archive"


def check_member_name(name: str, *, archive: Path | str | None = None) -> str:
    """Return the normalised posix form of a member name, or raise `ArchiveError` if it could escape.

    Refuses absolute paths, drive letters and ``..`` components (``\\`` counts as a separator).
    ``archive`` names the archive in the error message.
    """
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        raise ArchiveError(_unsafe(archive, name, "absolute path"))
    if _DRIVE.match(posix):
        raise ArchiveError(_unsafe(archive, name, "drive letter"))
    if ".." in posix.split("/"):
        raise ArchiveError(_unsafe(archive, name, "'..' component"))
    return _normalise(name)


class Archive(ABC):
    """Read-only view of the regular files of a tar or zip archive; create it with `open_archive`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._members: dict[str, Any] = {}  # normalised name -> TarInfo / ZipInfo, in archive order

    def _add(self, name: str, member: Any) -> None:
        """Index a regular file; a later member with the same name replaces the earlier one."""
        if not name:
            raise ArchiveError(f"{self.path}: a file member has an empty name; refusing to use this archive")
        self._members[name] = member

    def names(self) -> list[str]:
        """Normalised posix paths of the regular files, in archive order."""
        return list(self._members)

    def exists(self, name: str) -> bool:
        """Whether ``name`` (normalised first, so ``./a/b`` finds ``a/b``) is a regular file here."""
        return _normalise(name) in self._members

    def read(self, name: str) -> bytes:
        """The bytes of regular file ``name``; `ArchiveError` if it is missing, corrupt or truncated."""
        member = self._members.get(_normalise(name))
        if member is None:
            raise ArchiveError(f"{self.path}: no file {name!r} in this archive")
        try:
            return self._read(member)
        except _READ_ERRORS as exc:
            raise ArchiveError(
                f"{self.path}: cannot read {name!r}, the archive is corrupt or truncated ({exc})"
            ) from None

    @abstractmethod
    def _read(self, member: Any) -> bytes:
        """Bytes of an indexed member."""

    @abstractmethod
    def close(self) -> None:
        """Release the open file."""

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        """Pickle by path: unpickling reopens (and rescans) the archive."""
        return open_archive, (self.path,)


def _tar_kind(member: tarfile.TarInfo) -> str:
    """Why a non-regular, non-directory tar member is refused."""
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return "not a regular file or directory"


class _TarArchive(Archive):
    """A tar archive, plain or compressed; the member index comes from one scan at open time."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._tar = tarfile.open(path, mode="r:*")
        try:
            for member in self._tar:  # reads every header: decompresses a compressed tar once
                name = check_member_name(member.name, archive=path)
                if member.isreg():
                    self._add(name, member)
                elif not member.isdir():
                    raise ArchiveError(_unsafe(path, member.name, _tar_kind(member)))
        except BaseException:
            self._tar.close()
            raise

    def _read(self, member: tarfile.TarInfo) -> bytes:
        stream = self._tar.extractfile(member)
        data = stream.read() if stream is not None else b""
        if len(data) != member.size:
            raise ArchiveError(
                f"{self.path}: {member.name!r} is truncated ({len(data)} of {member.size} bytes)"
            )
        return data

    def close(self) -> None:
        self._tar.close()


class _ZipArchive(Archive):
    """A zip archive; the member index is its central directory."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._zip = zipfile.ZipFile(path)
        try:
            for info in self._zip.infolist():
                name = check_member_name(info.filename, archive=path)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 unless made on Unix
                if kind == stat.S_IFLNK:
                    raise ArchiveError(_unsafe(path, info.filename, "symbolic link"))
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise ArchiveError(_unsafe(path, info.filename, "not a regular file or directory"))
                if not (info.is_dir() or kind == stat.S_IFDIR):
                    self._add(name, info)
        except BaseException:
            self._zip.close()
            raise

    def _read(self, member: zipfile.ZipInfo) -> bytes:
        return self._zip.read(member)  # checks the CRC

    def close(self) -> None:
        self._zip.close()


def open_archive(path: Path) -> Archive:
    """Open a tar (plain, .gz, .bz2, .xz) or zip archive for reading, detected by its content.

    Raises `ArchiveError` naming the file if it is missing, not an archive, unreadable, truncated,
    or holds an unsafe member (see the module docstring). Use as a context manager, or call `close`.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file")
    try:
        if tarfile.is_tarfile(path):
            return _TarArchive(path)
        if zipfile.is_zipfile(path):
            return _ZipArchive(path)
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{path}: unreadable or truncated archive ({exc})") from None
    raise ArchiveError(f"{path}: not a tar or zip archive (or a truncated one)")


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``target``, then rename it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def safe_extract(
    path: Path,
    dest_dir: Path,
    members: Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Extract regular files of an archive (all, or ``members``) under ``dest_dir``; return their paths.

    Archives with links or unsafe names are refused when opened; in addition every target is resolved
    (following any symlink already under ``dest_dir``) and must lie inside ``dest_dir``. Each file is
    read into memory, written to a temporary name and renamed, so a target is never half-written.
    ``progress`` counts members, not bytes.
    """
    root = Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open_archive(path) as archive:
        names = archive.names() if members is None else list(members)
        report = ThrottledProgress(progress, f"extracting {archive.path.name}")
        for done, name in enumerate(names, start=1):
            target = (root / _normalise(name)).resolve()
            if not target.is_relative_to(root):
                raise ArchiveError(f"{archive.path}: member {name!r} would be written outside {root}")
            data = archive.read(name)
            try:
                _write_atomic(target, data)
            except OSError as exc:
                raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None
            written.append(target)
            report(done, len(names))
        report(len(names), len(names), final=True)
    return written
