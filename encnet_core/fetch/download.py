"""Fetch dataset archives: resumable downloads with retries, checksums, a local cache and overrides.

`fetch` is the one entry point of `encnet prepare`: it takes a user-supplied archive, else the cached
copy in the cache directory, else downloads the file. A file whose checksum differs from the expected
one is never used: a bad download is deleted before it gets its final name, a bad cached or local file
raises `ChecksumError`. A file that no checksum vouches for (none is published, or verification is
off) must pass the caller's ``check`` instead (``encnet prepare`` checks that the archive opens and
its listing reads to the end): a download that fails it is deleted before the cache accepts it, a
cached or local file that fails it is refused with the path to delete. Downloads use urllib only (http, https, ftp and file URLs); they stream into
``<name>.part``, resume it with an HTTP Range request after a dropped connection, and retry transient
failures (timeouts, resets, HTTP 5xx and 429) with exponential back-off. A host that cannot be
reached at all fails at once, without retries: its name does not resolve (offline, or a typo), it
refuses the connection (nothing listens on that port: a wrong mirror URL, or a server that is down;
retrying within the same minute rarely helps, and a rerun resumes anyway), or there is no route to
the network. Such failures raise `NetworkError`, which callers extend with the ways out their
command offers. Progress goes through a `ProgressCallback` (in bytes), never to the terminal.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, InvalidURL
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from encnet_core.errors import ChecksumError, ConfigError, DataError, DownloadError, EncNetError
from encnet_core.paths import is_disk_full
from encnet_core.progress import ProgressCallback, ThrottledProgress
from encnet_core.version import __version__

__all__ = [
    "HASH_ALGOS",
    "FileCheck",
    "NetworkError",
    "RemoteFile",
    "default_cache_dir",
    "download",
    "fetch",
    "file_hashes",
    "manual_download_message",
    "check_timeout",
    "check_url",
    "parse_checksum_option",
    "parse_url_option",
    "verify_file",
]

FileCheck = Callable[[Path], None]
"""Checks a file that no checksum vouches for; raises an `EncNetError` whose message says what is wrong."""

HASH_ALGOS = ("md5", "sha1", "sha256")  # every hash the functions below compute and return
_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file
_NET_CHUNK = 1 << 16  # bytes read at a time from a connection (small, so progress stays live)
_MAX_BACKOFF = 60.0  # seconds: cap of the exponential back-off between retries
_URL_SCHEMES = ("http", "https", "ftp", "file")
_USER_AGENT = f"encnet/{__version__} (+urllib)"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    """A file that a dataset is built from, and where to get it."""

    name: str  # file name in the cache directory, e.g. "VOCtrainval_11-May-2012.tar"
    url: str  # official download URL (a mirror can be given to `fetch` instead)
    md5: str | None = None  # published md5 hex digest, if any
    sha1: str | None = None  # published sha1 hex digest, if any
    size: int | None = None  # approximate size in bytes, for messages only
    manual: str | None = None  # where to get the file by hand when ``url`` is "" (no URL works without a login)

    def checksums(self) -> dict[str, str]:
        """The published checksums as ``{algo: hex}`` (empty when none is known)."""
        return {algo: digest for algo, digest in (("md5", self.md5), ("sha1", self.sha1)) if digest}


def _new_hashers(algos: Iterable[str] = HASH_ALGOS) -> dict[str, hashlib._Hash]:
    return {algo: hashlib.new(algo, usedforsecurity=False) for algo in algos}


def _hash_into(path: Path, hashers: Mapping[str, hashlib._Hash], report: ThrottledProgress) -> int:
    """Feed the bytes of ``path`` to every hasher in 1 MiB chunks; return the number of bytes read."""
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
            done += len(chunk)
            report(done, total)
    report(done, total, final=True)
    return done


def file_hashes(
    path: Path, algos: Iterable[str] = HASH_ALGOS, progress: ProgressCallback | None = None
) -> dict[str, str]:
    """Hex digests ``{algo: hex}`` of a file, reading it once in 1 MiB chunks."""
    path = Path(path)
    hashers = _new_hashers(algos)
    _hash_into(path, hashers, ThrottledProgress(progress, f"hashing {path.name}", "bytes"))
    return {algo: hasher.hexdigest() for algo, hasher in hashers.items()}


def _normalise_checksums(expected: Mapping[str, str]) -> dict[str, str]:
    """``{algo: hex}`` with lower-case names and digests, in `HASH_ALGOS` order; `ConfigError` if malformed."""
    checks = {algo.strip().lower(): digest.strip().lower() for algo, digest in expected.items()}
    for algo, digest in checks.items():
        if algo not in HASH_ALGOS:
            raise ConfigError(f"unknown checksum algorithm {algo!r}: use one of {', '.join(HASH_ALGOS)}")
        length = hashlib.new(algo, usedforsecurity=False).digest_size * 2
        if not re.fullmatch(rf"[0-9a-f]{{{length}}}", digest):
            raise ConfigError(f"bad {algo} checksum {digest!r}: expected {length} hexadecimal digits")
    return {algo: checks[algo] for algo in HASH_ALGOS if algo in checks}


def _first_mismatch(hashes: Mapping[str, str], expected: Mapping[str, str]) -> tuple[str, str, str] | None:
    """``(algo, expected, actual)`` of the first differing checksum, or None if all match."""
    for algo, digest in expected.items():
        if hashes[algo] != digest:
            return algo, digest, hashes[algo]
    return None


def verify_file(
    path: Path,
    expected: Mapping[str, str],
    *,
    what: str = "file",
    progress: ProgressCallback | None = None,
) -> dict[str, str]:
    """Check a file against ``expected`` (``{algo: hex}``, any of md5/sha1/sha256) in one read.

    ``what`` names the file in the error message ("cached file", "archive"). Returns every hash in
    `HASH_ALGOS`; raises `ChecksumError` (one line: file, algorithm, expected and actual digest, and
    what to do) on a mismatch.
    """
    path = Path(path)
    checks = _normalise_checksums(expected)
    hashes = file_hashes(path, progress=progress)
    mismatch = _first_mismatch(hashes, checks)
    if mismatch:
        algo, want, got = mismatch
        raise ChecksumError(
            f"{what} {path} has {algo} {got} but {want} was expected: delete it and run again to "
            f"download a fresh copy, or pass --checksum {path.name}={algo}:{got} if you trust this file"
        )
    return hashes


class _RetryableError(Exception):
    """A transient failure of one download attempt; the bytes received so far are kept."""


class _UnreachableError(Exception):
    """The host cannot be reached at all (no such name, connection refused, no network): do not retry."""


class NetworkError(DownloadError):
    """A download that failed on the network: at once for an unreachable host, else after its retries.

    ``url``: what failed; ``reason``: why (one line); ``unreachable``: the host name did not resolve,
    the host refused the connection or the network is unreachable (no retries were made);
    ``attempts``: attempts made; ``part``: the ``.part`` file holding the bytes received so far
    (a later run resumes it), or None when there is none. ``advice`` (the ways out the calling
    command offers: other flags, another command) ends the message; `with_advice` adds it.
    """

    def __init__(
        self, url: str, reason: str, *, unreachable: bool, attempts: int, part: Path | None, advice: str | None = None
    ) -> None:
        self.url, self.reason, self.unreachable, self.attempts, self.part = url, reason, unreachable, attempts, part
        self.advice = advice
        text = f"cannot download {url}: {reason}"
        if not unreachable:
            text += f" ({attempts} attempts in a row failed)"
        ways = []
        if part is not None:
            ways.append(f"run the command again {'once online ' if unreachable else ''}to resume from {part}")
        elif not unreachable and advice is None:
            ways.append("try again later")
        if advice:
            ways.append(advice)
        super().__init__(text + ((": " if unreachable else "; ") + ", or ".join(ways) if ways else ""))

    def with_advice(self, advice: str) -> NetworkError:
        """The same failure, its message ending with ``advice``."""
        return NetworkError(
            self.url, self.reason, unreachable=self.unreachable, attempts=self.attempts, part=self.part, advice=advice
        )


def _unreachable_reason(url: str, reason: object) -> str | None:
    """Why the host of ``url`` cannot be reached at all, or None for a failure worth retrying."""
    parts = urlsplit(url)
    host = parts.hostname or parts.netloc
    if isinstance(reason, socket.gaierror):  # EAI_NONAME, and EAI_AGAIN as an offline resolver says
        return f"could not resolve {host} (offline?)"
    if isinstance(reason, ConnectionRefusedError):
        return f"{parts.netloc} refused the connection (is the server down, or the URL wrong?)"
    if isinstance(reason, OSError) and reason.errno == errno.ENETUNREACH:
        return f"no route to the network for {host} (offline?)"
    return None


class _PartFile:
    """The ``.part`` file of a download and running hashes of exactly the bytes it holds."""

    def __init__(self, path: Path, progress: ProgressCallback | None) -> None:
        self.path = path
        self.hashers = _new_hashers()
        self.size = 0
        if path.is_file():  # a previous run left a partial download: hash what it holds, then resume
            self.size = _hash_into(path, self.hashers, ThrottledProgress(progress, f"checking {path.name}", "bytes"))

    def reset(self) -> None:
        """Drop the bytes received so far (the next attempt starts from the first byte)."""
        self.path.unlink(missing_ok=True)
        self.hashers = _new_hashers()
        self.size = 0

    def hexdigests(self) -> dict[str, str]:
        """``{algo: hex}`` of the bytes received so far."""
        return {algo: hasher.hexdigest() for algo, hasher in self.hashers.items()}


def _content_range_total(header: str | None) -> int | None:
    """Total size from a ``Content-Range: bytes a-b/N`` or ``bytes */N`` header, if the server gave it."""
    match = re.fullmatch(r"\s*bytes\s+(?:\d+-\d+|\*)/(\d+)\s*", header or "")
    return int(match.group(1)) if match else None


def _content_range_start(header: str | None) -> int | None:
    """First byte position of a ``Content-Range: bytes a-b/N`` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", header or "")
    return int(match.group(1)) if match else None


def _attempt(url: str, part: _PartFile, report: ThrottledProgress, timeout: float) -> None:
    """One request: resume ``part`` from its current size and stream the rest of the body into it.

    Returns when the file is complete; raises `_RetryableError` for a failure worth retrying and
    `DownloadError` for one that is not (a 4xx status, a missing local file).
    """
    offset = part.size
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except InvalidURL as exc:
        raise DownloadError(f"cannot download {url!r}: {exc}") from None
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left to send: the part is complete, or stale
            total = _content_range_total(exc.headers.get("Content-Range"))
            if total is None or total == offset:
                return
            part.reset()
            raise _RetryableError(f"partial file has {offset} bytes but the server has {total}") from None
        if exc.code == 429 or exc.code >= 500:
            raise _RetryableError(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, HTTPException) as exc:
        if urlsplit(url).scheme == "file":
            raise DownloadError(f"cannot read {url}: {getattr(exc, 'reason', exc)}") from None
        reason = exc.reason if isinstance(exc, URLError) else exc
        unreachable = _unreachable_reason(url, reason)
        if unreachable:
            raise _UnreachableError(unreachable) from None
        raise _RetryableError(str(reason) or type(exc).__name__) from None

    with response:
        status = getattr(response, "status", None)  # None for file: URLs
        if status == 206:
            content_range = response.headers.get("Content-Range")
            if _content_range_start(content_range) != offset:
                part.reset()
                raise _RetryableError(f"server sent range {content_range!r} instead of bytes {offset}-")
            total = _content_range_total(content_range)
        else:  # a full body: the server ignored the Range header (or none was sent)
            if offset:
                part.reset()
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part.path, "ab") as out:
            while True:
                try:
                    chunk = response.read(_NET_CHUNK)
                except (OSError, HTTPException) as exc:
                    raise _RetryableError(f"connection lost after {part.size} bytes ({exc!r})") from None
                if not chunk:
                    break
                out.write(chunk)
                for hasher in part.hashers.values():
                    hasher.update(chunk)
                part.size += len(chunk)
                report(part.size, total)
            out.flush()
            os.fsync(out.fileno())
    if total is not None and part.size < total:
        raise _RetryableError(f"connection closed after {part.size} of {total} bytes")
    if total is not None and part.size > total:
        part.reset()
        raise _RetryableError(f"received more than the announced {total} bytes")


def download(
    url: str,
    dest: Path,
    *,
    expected: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    verify: bool = True,
    check: FileCheck | None = None,
) -> dict[str, str]:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming and retrying; return its hashes.

    An existing ``.part`` file is resumed with an HTTP Range request (a server that answers 200 makes
    the download restart from the first byte). Transient failures (network errors, timeouts, HTTP
    5xx and 429, a body shorter than its Content-Length) are retried after ``backoff * 2**k`` seconds,
    keeping the bytes already received; ``retries`` is how many attempts in a row may fail without
    receiving new bytes before `NetworkError` is raised. A host that cannot be reached at all (its
    name does not resolve, it refuses the connection, no network) raises `NetworkError` at once, and
    other HTTP errors `DownloadError`. Either message names the ``.part`` file only if one holds
    bytes to resume (an empty one is removed). With
    ``verify`` and ``expected`` (``{algo: hex}``) the complete file is checked before it is renamed
    to ``dest``: on a mismatch the ``.part`` file is deleted and `ChecksumError` raised. When no
    checksum was checked, ``check`` (if given) runs on the complete ``.part`` file instead; if it
    fails the file is deleted and `DownloadError` raised. ``timeout`` (seconds) is per connection
    attempt and per read. Returns ``{algo: hex}`` for every algorithm in `HASH_ALGOS`.
    """
    dest = Path(dest)
    if urlsplit(url).scheme not in _URL_SCHEMES:
        raise DownloadError(
            f"cannot download {url!r}: the URL must start with http://, https://, ftp:// or file://"
        )
    check_timeout(timeout)
    checks = _normalise_checksums(expected) if verify and expected else {}
    dest.parent.mkdir(parents=True, exist_ok=True)
    part_path = dest.with_name(dest.name + ".part")
    report = ThrottledProgress(progress, f"downloading {dest.name}", "bytes")
    try:
        part = _PartFile(part_path, progress)
        best, failures = part.size, 0
        while True:
            try:
                _attempt(url, part, report, timeout)
                break
            except (_RetryableError, _UnreachableError) as exc:
                if part.size > best:  # this attempt made progress: start counting failures afresh
                    best, failures = part.size, 0
                failures += 1
                unreachable = isinstance(exc, _UnreachableError)
                if unreachable or failures > retries:
                    if not part.size:  # nothing to resume: no empty .part is left behind either
                        part_path.unlink(missing_ok=True)
                    raise NetworkError(
                        url, str(exc), unreachable=unreachable, attempts=failures, part=part_path if part.size else None
                    ) from None
                time.sleep(min(backoff * 2 ** (failures - 1), _MAX_BACKOFF))
    except OSError as exc:  # network errors became _RetryableError above: this one is local
        if is_disk_full(exc):
            raise DownloadError(
                f"no space left on {part_path.parent}: free some space and run again to resume from {part_path}"
            ) from None
        raise DownloadError(f"cannot write {part_path}: {exc.strerror or exc}") from None
    report(part.size, part.size, final=True)
    hashes = part.hexdigests()
    mismatch = _first_mismatch(hashes, checks)
    if mismatch:
        algo, want, got = mismatch
        part_path.unlink(missing_ok=True)
        raise ChecksumError(
            f"the file downloaded from {url} has {algo} {got} but {want} was expected, so it was deleted: "
            f"try again or another mirror (--url), or pass --checksum {dest.name}={algo}:{got} if you trust it"
        )
    if check is not None and not checks:
        try:
            check(part_path)
        except EncNetError as exc:
            part_path.unlink(missing_ok=True)
            detail = str(exc).removeprefix(f"{part_path}: ")
            raise DownloadError(
                f"the file downloaded from {url} was refused, so it was deleted: {detail}; "
                "try again or another mirror (--url)"
            ) from None
    os.replace(part_path, dest)
    return hashes


def _warn_unverified(
    path: Path,
    hashes: Mapping[str, str],
    expected: Mapping[str, str],
    verify: bool,
    warn: Callable[[str], None],
) -> None:
    """Tell the user when a file was not checked against any checksum."""
    if not verify:
        warn(f"checksum verification skipped for {path}")
    elif not expected:
        sha256 = hashes["sha256"]
        warn(
            f"no checksum is known for {path.name}; its sha256 is {sha256} "
            f"(pin it with --checksum {path.name}=sha256:{sha256})"
        )


def fetch(
    remote: RemoteFile,
    root: Path,
    *,
    url_override: str | None = None,
    archive: Path | None = None,
    checksum_override: Mapping[str, str] | None = None,
    allow_download: bool = True,
    verify: bool = True,
    progress: ProgressCallback | None = None,
    warn: Callable[[str], None] | None = None,
    check: FileCheck | None = None,
    timeout: float = 30.0,
) -> tuple[Path, dict[str, str]]:
    """Return ``(path, hashes)`` of a verified local copy of ``remote``, downloading it if needed.

    Sources, first match wins: ``archive`` (a local file given by the user), ``root / remote.name``
    (the cache), then a download from ``url_override`` or ``remote.url`` into the cache. The expected
    checksums are ``checksum_override`` if given, else every checksum ``remote`` publishes. A file
    that does not match is never returned. Where no checksum is checked, ``check`` (if given) must
    accept the file: a download that fails it is deleted, a cached or local one is refused with a
    message naming the file. ``warn`` (default: this module's logger) hears about skipped
    verification and about files without a known checksum, with their sha256 to pin. ``timeout``
    is the network timeout in seconds (per connection attempt and per read). A `NetworkError` from
    the download ends with ``encnet prepare``'s ways out: ``--archive NAME=PATH`` or ``--mirror URL``.
    """
    warn = warn or _log.warning
    root = Path(root)
    expected = _normalise_checksums(
        checksum_override if checksum_override is not None else remote.checksums()
    )
    checks = expected if verify else {}

    check_timeout(timeout)

    def _check_local(path: Path, advice: str | None) -> None:
        """Run ``check`` on a file no checksum vouched for; its error gets ``advice`` appended."""
        if check is None or checks:
            return
        try:
            check(path)
        except EncNetError as exc:
            if advice is None:
                raise
            raise type(exc)(f"{exc} ({advice})") from None

    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise DataError(f"archive {path} does not exist: check the --archive path")
        hashes = verify_file(path, checks, what="archive", progress=progress)
        _check_local(path, None)  # the error names the file the user gave
    else:
        path = root / remote.name
        if path.is_file():
            hashes = verify_file(path, checks, what="cached file", progress=progress)
            _check_local(path, "a cached file: delete it and run again to download a fresh copy")
        elif not (url_override or remote.url):
            raise DownloadError(manual_download_message(remote, root))
        elif not allow_download:
            raise DownloadError(
                f"{remote.name} not found in {root} and --no-download was given; download it from "
                f"{url_override or remote.url} into {root}, or pass --archive PATH"
            )
        else:
            try:
                hashes = download(
                    url_override or remote.url, path, expected=checks, progress=progress, check=check, timeout=timeout
                )
            except NetworkError as exc:  # the ways out `encnet prepare` offers (it has --archive and --mirror)
                raise exc.with_advice(
                    f"download {remote.name} yourself and pass --archive {remote.name}=PATH, "
                    f"or --mirror URL (a server holding {remote.name})"
                ) from None
    _warn_unverified(path, hashes, expected, verify, warn)
    return path, hashes


def manual_download_message(remote: RemoteFile, root: Path) -> str:
    """One line for a file that cannot be downloaded (no URL): where to get it and how to pass it."""
    return (
        f"{remote.name} is not in {root} and encnet cannot download it ({remote.manual or 'no download URL is known'}); "
        f"pass --archive {remote.name}=PATH"
    )


def default_cache_dir() -> Path:
    """Where archives are kept: ``$ENCNET_CACHE``, else ``$XDG_CACHE_HOME/encnet``, else ``~/.cache/encnet``."""
    if os.environ.get("ENCNET_CACHE"):
        return Path(os.environ["ENCNET_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "encnet"
    return Path.home() / ".cache" / "encnet"


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a usable network timeout in seconds (finite, above 0), else `ConfigError`."""
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout must be a number of seconds above 0, got {timeout!r}")
    return float(timeout)


def check_url(url: str, option: str) -> str:
    """``url`` if it has a scheme downloads support, else `ConfigError` naming ``option``."""
    if urlsplit(url).scheme not in _URL_SCHEMES:
        raise ConfigError(f"bad {option} value {url!r}: the URL must start with http://, https://, ftp:// or file://")
    return url


def parse_checksum_option(text: str) -> tuple[str, str, str]:
    """Parse a ``--checksum FILE=ALGO:HEX`` value into ``(file, algo, hex)`` (lower-case algo and hex)."""
    name, sep, check = text.rpartition("=")
    algo, colon, digest = check.partition(":")
    if not (sep and colon and name.strip() and digest.strip()):
        raise ConfigError(
            f"bad --checksum value {text!r}: expected FILE=ALGO:HEX, "
            "e.g. VOCtrainval_11-May-2012.tar=md5:6cd6e144f989b92b3379bac3b3de84fd"
        )
    ((algo, digest),) = _normalise_checksums({algo: digest}).items()
    return name.strip(), algo, digest


def parse_url_option(text: str) -> tuple[str, str]:
    """Parse a ``--url NAME=URL`` value into ``(name, url)``; the URL may itself contain ``=``."""
    name, sep, url = text.partition("=")
    name, url = name.strip(), url.strip()
    if not (sep and name and url):
        raise ConfigError(
            f"bad --url value {text!r}: expected NAME=URL, e.g. benchmark.tgz=https://mirror/benchmark.tgz"
        )
    check_url(url, "--url")
    return name, url
