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

Limits (`ArchiveLimits`, checked before anything is decompressed into memory): a member larger than
``max_member_bytes`` (64 MiB) is refused when it is read, and an archive that expands more than
``max_ratio`` (400) times is refused when it is opened. The ratio is always taken over the whole
archive: the bytes it holds once decompressed (for a zip, the sum of its members' sizes from the
central directory; for a compressed tar, the length of the decompressed tar stream, headers
included, which the opening scan measures as it goes and stops at as soon as the limit is passed)
divided by the archive's size on disk. A tar.gz has no per-member compressed sizes, so a per-member
ratio would mean nothing there; the whole-archive ratio treats both formats alike. Archives that
expand to less than ``ratio_floor`` (32 MiB) are never refused for their ratio (they cannot hurt).
Dataset members are images and label files of a few MB at most. Archives of JPEG and PNG files
barely expand; the most compressible official one we know is PASCAL Context's trainval.tar.gz, whose
10103 uint16 label maps (about 375 kB each, apparently saved without compression by scipy) fit in
30.7 MB: about 120 times (an estimate; a simulated archive with the same compressed size per file
expands 117 times). A deflate stream of zeros expands about 1000 times; bzip2 and xz bombs far more.

A truncated archive raises `ArchiveError` when it is opened or read, except a tar cut exactly
between two members, which looks complete: only the archive's checksum (see `download`) catches that
in a plain tar; `verify_archive` also reads a compressed tar to the end of its stream, whose trailer
(CRC and length) catches it there.

An `Archive` is not thread-safe. It pickles by path: a worker process that receives one (or calls
`open_archive` itself) reopens the file and pays the opening cost again, so give each worker a long,
contiguous run of names rather than one name at a time.
"""

from __future__ import annotations

import io
import lzma
import math
import re
import stat
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from encnet_core.choices import ARCHIVE_MAX_MEMBER_MIB, ARCHIVE_MAX_RATIO  # the defaults; the CLI shows them
from encnet_core.errors import ArchiveError, ConfigError, DataError
from encnet_core.paths import atomic_write, is_disk_full
from encnet_core.progress import ProgressCallback, ThrottledProgress

__all__ = ["Archive", "ArchiveLimits", "check_member_name", "open_archive", "safe_extract", "verify_archive"]

MiB = 1 << 20

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
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may expand (see the module docstring); real datasets stay far below."""

    max_member_bytes: int = ARCHIVE_MAX_MEMBER_MIB * MiB  # largest member read into memory
    max_ratio: float = ARCHIVE_MAX_RATIO  # decompressed bytes of the whole archive / its bytes on disk
    ratio_floor: int = 32 * MiB  # decompressed bytes below which the ratio is not checked

    def __post_init__(self) -> None:
        if not (isinstance(self.max_member_bytes, int) and self.max_member_bytes > 0):
            raise ConfigError(f"the member size limit must be a positive number of bytes, got {self.max_member_bytes!r}")
        if not (math.isfinite(self.max_ratio) and self.max_ratio >= 1):
            raise ConfigError(f"the compression ratio limit must be a number of at least 1, got {self.max_ratio!r}")
        if self.ratio_floor < 0:
            raise ConfigError(f"the ratio floor must be 0 or more bytes, got {self.ratio_floor!r}")

    def expanded_limit(self, disk_bytes: int) -> float:
        """Most decompressed bytes an archive of ``disk_bytes`` on disk may hold."""
        return max(float(self.ratio_floor), self.max_ratio * disk_bytes)


def _mib(size: float) -> str:
    """A byte count for messages: ``12.3 MiB``, ``257.4 KiB`` or ``12 bytes``."""
    if size >= MiB:
        return f"{size / MiB:.1f} MiB"
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{int(size)} bytes"


def _bomb(path: Path, expanded: float, disk: int, limits: ArchiveLimits) -> ArchiveError:
    return ArchiveError(
        f"{path}: expands to at least {_mib(expanded)} from {_mib(disk)} on disk, more than {limits.max_ratio:g} "
        "times its size; refusing it as a likely decompression bomb (raise --max-ratio if you trust this archive)"
    )


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

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.path = path
        self.limits = limits
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
        """The bytes of regular file ``name``; `ArchiveError` if it is missing, corrupt, truncated or too large.

        The size the archive declares is checked against ``limits.max_member_bytes`` before anything
        is decompressed, and the readers never return more than that declared size.
        """
        member = self._members.get(_normalise(name))
        if member is None:
            raise ArchiveError(f"{self.path}: no file {name!r} in this archive")
        size = self._size(member)
        if size > self.limits.max_member_bytes:
            raise ArchiveError(
                f"{self.path}: member {name!r} is {_mib(size)}, more than the {_mib(self.limits.max_member_bytes)} "
                "allowed for one member; refusing to read it (raise --max-member-size if you trust this archive)"
            )
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
    def _size(self, member: Any) -> int:
        """Declared (decompressed) size of an indexed member."""

    def _verify_end(self) -> None:
        """Read what follows the listing to the end of the file, where a format has a trailer to check."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the open file."""

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Path, ArchiveLimits]]:
        """Pickle by path: unpickling reopens (and rescans) the archive."""
        return open_archive, (self.path, self.limits)


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

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        super().__init__(path, limits)
        with open(path, "rb") as head:
            compressed = head.read(6).startswith(_COMPRESSED_MAGIC)
        disk = path.stat().st_size
        allowed = limits.expanded_limit(disk) if compressed else math.inf  # a plain tar cannot expand
        self._tar = tarfile.open(path, mode="r:*")
        try:
            for member in self._tar:  # reads every header: decompresses a compressed tar once
                end = member.offset_data + member.size  # position in the decompressed stream after it
                if end > allowed:  # checked before the next header is looked for past this member
                    raise _bomb(path, end, disk, limits)
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

    def _size(self, member: tarfile.TarInfo) -> int:
        return member.size

    def _verify_end(self) -> None:
        stream = self._tar.fileobj  # a GzipFile/BZ2File/LZMAFile for a compressed tar
        if stream is not None and not isinstance(stream, io.BufferedReader | io.FileIO):
            while stream.read(1 << 20):  # the rest of the stream and its trailer (CRC, length)
                pass

    def close(self) -> None:
        self._tar.close()


class _ZipArchive(Archive):
    """A zip archive; the member index is its central directory."""

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        super().__init__(path, limits)
        self._zip = zipfile.ZipFile(path)
        try:
            disk = path.stat().st_size
            expanded = sum(info.file_size for info in self._zip.infolist())
            if expanded > limits.expanded_limit(disk):
                raise _bomb(path, expanded, disk, limits)
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
        return self._zip.read(member)  # checks the CRC; never returns more than member.file_size bytes

    def _size(self, member: zipfile.ZipInfo) -> int:
        return member.file_size

    def close(self) -> None:
        self._zip.close()


def open_archive(path: Path, limits: ArchiveLimits | None = None) -> Archive:
    """Open a tar (plain, .gz, .bz2, .xz) or zip archive for reading, detected by its content.

    Raises `ArchiveError` naming the file if it is missing, not an archive, unreadable, truncated,
    holds an unsafe member, or expands beyond ``limits`` (default `ArchiveLimits()`; see the module
    docstring). Use as a context manager, or call `close`.
    """
    path = Path(path)
    limits = limits or ArchiveLimits()
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file")
    try:
        if tarfile.is_tarfile(path):
            return _TarArchive(path, limits)
        if zipfile.is_zipfile(path):
            return _ZipArchive(path, limits)
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{path}: unreadable or truncated archive ({exc})") from None
    raise ArchiveError(f"{path}: not a tar or zip archive (or a truncated one)")


def verify_archive(path: Path, limits: ArchiveLimits | None = None) -> None:
    """Check that ``path`` is a whole, safe archive: it opens, its listing reads to the end, and the
    rest of a compressed tar's stream decompresses up to its trailer (whose CRC and length are checked).

    This is what can be checked without a published checksum; it does not decompress a zip's members.
    Raises `ArchiveError` as `open_archive` does.
    """
    path = Path(path)
    with open_archive(path, limits) as archive:
        try:
            archive._verify_end()
        except _READ_ERRORS as exc:
            raise ArchiveError(f"{path}: truncated or corrupt archive ({exc})") from None


def safe_extract(
    path: Path,
    dest_dir: Path,
    members: Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
    limits: ArchiveLimits | None = None,
) -> list[Path]:
    """Extract regular files of an archive (all, or ``members``) under ``dest_dir``; return their paths.

    Archives with links or unsafe names are refused when opened; in addition every target is resolved
    (following any symlink already under ``dest_dir``) and must lie inside ``dest_dir``. Each file is
    read into memory (within ``limits``), written to a temporary name and renamed, so a target is
    never half-written. ``progress`` counts members (items), not bytes.
    """
    root = Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open_archive(path, limits) as archive:
        names = archive.names() if members is None else list(members)
        report = ThrottledProgress(progress, f"extracting {archive.path.name}", "items")
        for done, name in enumerate(names, start=1):
            target = (root / _normalise(name)).resolve()
            if not target.is_relative_to(root):
                raise ArchiveError(f"{archive.path}: member {name!r} would be written outside {root}")
            data = archive.read(name)
            try:
                with atomic_write(target, fsync=False) as tmp:  # extracted files can be extracted again
                    tmp.write_bytes(data)
            except OSError as exc:
                if is_disk_full(exc):
                    raise DataError(f"no space left on {target.parent}: cannot extract {name!r} there") from None
                raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None
            written.append(target)
            report(done, len(names))
        report(len(names), len(names), final=True)
    return written
