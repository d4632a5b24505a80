"""Downloads against a loopback HTTP server: resume, retries, fail-fast errors, checksums and `fetch`."""

from __future__ import annotations

import hashlib
import io
import math
import random
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from encnet_core.errors import ArchiveError, ChecksumError, ConfigError, DataError, DownloadError
from encnet_core.fetch.archives import verify_archive
from encnet_core.fetch.download import (
    RemoteFile,
    check_timeout,
    default_cache_dir,
    download,
    fetch,
    file_hashes,
    parse_checksum_option,
    parse_url_option,
    verify_file,
)

if TYPE_CHECKING:
    from loopback import Server  # tests/loopback.py: the loopback HTTP server

DATA = random.Random(0).randbytes(300_000)
FAST = {"backoff": 0.01, "timeout": 5.0}  # keep retries and stalls short in tests


def hashes_of(data: bytes) -> dict[str, str]:
    return {algo: hashlib.new(algo, data).hexdigest() for algo in ("md5", "sha1", "sha256")}


@pytest.fixture
def server(http_server: Server) -> Server:
    """The shared loopback server of conftest.py, serving DATA at /data.bin."""
    http_server.state.files["/data.bin"] = DATA
    return http_server


def test_download_verifies_md5_and_sha1_and_reports_progress(server: Server, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    units: set[str] = set()
    dest = tmp_path / "sub" / "data.bin"
    expected = hashes_of(DATA)
    got = download(
        server.url(),
        dest,
        expected={"md5": expected["md5"], "SHA1": expected["sha1"].upper()},
        progress=lambda *call, unit: (calls.append(call), units.add(unit)),
        **FAST,
    )
    assert got == expected
    assert dest.read_bytes() == DATA
    assert not dest.with_name("data.bin.part").exists()
    assert calls[-1] == ("downloading data.bin", len(DATA), len(DATA))
    assert units == {"bytes"}
    assert server.state.requests == [("/data.bin", None)]


def test_download_resumes_after_dropped_connection(server: Server, tmp_path: Path) -> None:
    server.state.drop_after = 100_000
    dest = tmp_path / "data.bin"
    assert download(server.url(), dest, expected={"sha256": hashes_of(DATA)["sha256"]}, **FAST) == hashes_of(
        DATA
    )
    assert server.state.requests == [("/data.bin", None), ("/data.bin", "bytes=100000-")]
    assert dest.read_bytes() == DATA


def test_download_resumes_a_part_file_left_by_an_earlier_run(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(DATA[:123_456])
    assert download(server.url(), dest, expected={"md5": hashes_of(DATA)["md5"]}, **FAST) == hashes_of(DATA)
    assert server.state.requests == [("/data.bin", "bytes=123456-")]
    assert dest.read_bytes() == DATA


def test_download_restarts_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    server.state.ignore_range = True
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(b"stale bytes that must not survive")
    assert download(server.url(), dest, expected={"md5": hashes_of(DATA)["md5"]}, **FAST) == hashes_of(DATA)
    assert dest.read_bytes() == DATA


def test_download_treats_416_on_a_complete_part_as_done(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(DATA)
    assert download(server.url(), dest, expected={"sha1": hashes_of(DATA)["sha1"]}, **FAST) == hashes_of(DATA)
    assert server.state.requests == [("/data.bin", f"bytes={len(DATA)}-")]
    assert dest.read_bytes() == DATA


def test_download_retries_after_500(server: Server, tmp_path: Path) -> None:
    server.state.errors_500 = 1
    dest = tmp_path / "data.bin"
    download(server.url(), dest, expected=None, **FAST)
    assert len(server.state.requests) == 2
    assert dest.read_bytes() == DATA


def test_download_gives_up_after_its_retries(server: Server, tmp_path: Path) -> None:
    server.state.errors_500 = 100
    with pytest.raises(DownloadError, match=r"HTTP 500.*3 attempts"):
        download(server.url(), tmp_path / "data.bin", expected=None, retries=2, **FAST)
    assert len(server.state.requests) == 3


def test_download_404_fails_at_once(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404") as info:
        download(server.url("/missing.bin"), tmp_path / "missing.bin", expected=None, **FAST)
    assert "\n" not in str(info.value)
    assert len(server.state.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_download_checksum_mismatch_leaves_no_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with pytest.raises(ChecksumError, match="md5 " + hashes_of(DATA)["md5"]):
        download(server.url(), dest, expected={"md5": "0" * 32}, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_download_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(DATA)
    assert download(source.as_uri(), tmp_path / "out" / "copy.bin", expected=hashes_of(DATA)) == hashes_of(
        DATA
    )
    assert (tmp_path / "out" / "copy.bin").read_bytes() == DATA
    with pytest.raises(DownloadError, match="cannot read"):
        download((tmp_path / "nope.bin").as_uri(), tmp_path / "nope.bin", expected=None, **FAST)


def test_file_hashes_and_verify_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert file_hashes(path) == hashes_of(DATA)
    assert file_hashes(path, algos=("sha1",)) == {"sha1": hashes_of(DATA)["sha1"]}
    assert verify_file(path, {"sha256": hashes_of(DATA)["sha256"]}) == hashes_of(DATA)
    with pytest.raises(ChecksumError) as info:
        verify_file(path, {"md5": hashes_of(DATA)["md5"], "sha1": "1" * 40})
    message = str(info.value)
    assert "\n" not in message
    assert all(
        part in message for part in (str(path), "sha1", "1" * 40, hashes_of(DATA)["sha1"], "--checksum")
    )
    with pytest.raises(ConfigError, match="unknown checksum algorithm"):
        verify_file(path, {"crc32": "00000000"})


def remote_for(url: str, data: bytes = DATA, **overrides: str | None) -> RemoteFile:
    digests = hashes_of(data)
    fields: dict[str, str | None] = {"md5": digests["md5"], "sha1": digests["sha1"], **overrides}
    return RemoteFile(name="data.bin", url=url, **fields)


def test_fetch_downloads_into_the_cache(server: Server, tmp_path: Path) -> None:
    warnings: list[str] = []
    remote = remote_for("http://127.0.0.1:9/unreachable.bin")
    path, got = fetch(remote, tmp_path / "cache", url_override=server.url(), warn=warnings.append)
    assert path == tmp_path / "cache" / "data.bin"
    assert path.read_bytes() == DATA and got == hashes_of(DATA)
    assert warnings == []


def test_fetch_uses_a_local_archive(tmp_path: Path) -> None:
    archive = tmp_path / "elsewhere.bin"
    archive.write_bytes(DATA)
    remote = remote_for("http://127.0.0.1:9/unreachable.bin")
    assert fetch(remote, tmp_path / "cache", archive=archive) == (archive, hashes_of(DATA))
    with pytest.raises(DataError, match="does not exist"):
        fetch(remote, tmp_path / "cache", archive=tmp_path / "missing.tar")
    with pytest.raises(ChecksumError, match="archive"):
        fetch(remote_for("http://127.0.0.1:9/x", md5="0" * 32), tmp_path / "cache", archive=archive)


def test_fetch_uses_the_cached_file_without_network(server: Server, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(DATA)
    path, got = fetch(remote_for(server.url()), tmp_path, allow_download=False)
    assert path == tmp_path / "data.bin" and got == hashes_of(DATA)
    assert server.state.requests == []


def test_fetch_refuses_a_bad_cached_file(server: Server, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(DATA[:-1])
    with pytest.raises(ChecksumError, match=r"cached file .*delete it"):
        fetch(remote_for(server.url()), tmp_path)
    assert server.state.requests == []


def test_fetch_without_download_and_nothing_cached(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"not found in .* and --no-download was given"):
        fetch(remote_for("http://127.0.0.1:9/data.bin"), tmp_path, allow_download=False)


def test_fetch_checksum_override_replaces_the_published_ones(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(DATA)
    stale = remote_for("http://127.0.0.1:9/data.bin", md5="0" * 32, sha1="0" * 40)
    override = {"sha256": hashes_of(DATA)["sha256"]}
    assert fetch(stale, tmp_path, checksum_override=override) == (tmp_path / "data.bin", hashes_of(DATA))


def test_fetch_warns_when_verification_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(DATA)
    warnings: list[str] = []
    bad = remote_for("http://127.0.0.1:9/data.bin", md5="0" * 32)
    assert fetch(bad, tmp_path, verify=False, warn=warnings.append)[1] == hashes_of(DATA)
    assert len(warnings) == 1 and "checksum verification skipped" in warnings[0]


def test_fetch_warns_with_the_sha256_when_no_checksum_is_known(server: Server, tmp_path: Path) -> None:
    warnings: list[str] = []
    remote = RemoteFile(name="data.bin", url=server.url())
    fetch(remote, tmp_path, warn=warnings.append, progress=None)
    sha256 = hashes_of(DATA)["sha256"]
    assert len(warnings) == 1 and f"--checksum data.bin=sha256:{sha256}" in warnings[0]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENCNET_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ENCNET_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "encnet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "encnet"


def test_parse_checksum_option() -> None:
    md5 = "6cd6e144f989b92b3379bac3b3de84fd"
    assert parse_checksum_option(f"VOCtrainval_11-May-2012.tar=MD5:{md5.upper()}") == (
        "VOCtrainval_11-May-2012.tar",
        "md5",
        md5,
    )
    for bad in ("no-equals", f"f.tar={md5}", f"f.tar=crc32:{md5}", "f.tar=md5:xyz", f"=md5:{md5}"):
        with pytest.raises(ConfigError):
            parse_checksum_option(bad)


def test_parse_url_option() -> None:
    assert parse_url_option("benchmark.tgz=https://mirror.example/b.tgz?a=1") == (
        "benchmark.tgz",
        "https://mirror.example/b.tgz?a=1",
    )
    for bad in ("benchmark.tgz", "=https://x/y", "benchmark.tgz=mirror/b.tgz"):
        with pytest.raises(ConfigError):
            parse_url_option(bad)


# ----------------------------------------------------------------------------- archives no checksum vouches for


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ADEChallengeData2016/objectInfo150.txt", random.Random(3).randbytes(20_000))
    return buffer.getvalue()


ZIP = zip_bytes()
TRUNCATED_ZIP = ZIP[: len(ZIP) * 2 // 3]  # the central directory is gone


def zip_remote(url: str, **checksums: str) -> RemoteFile:
    return RemoteFile(name="ADEChallengeData2016.zip", url=url, **checksums)


def test_a_damaged_download_without_checksum_is_deleted_before_the_cache_accepts_it(
    server: Server, tmp_path: Path
) -> None:
    server.state.files["/a.zip"] = TRUNCATED_ZIP
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as info:
        fetch(zip_remote(server.url("/a.zip")), cache, check=verify_archive, warn=lambda m: None, timeout=5.0)
    message = str(info.value)
    assert message.startswith(f"the file downloaded from {server.url('/a.zip')} was refused, so it was deleted: ")
    assert "not a tar or zip archive" in message and "\n" not in message
    assert list(cache.iterdir()) == []  # neither the file nor its .part: the next run downloads afresh
    server.state.files["/a.zip"] = ZIP
    path, _ = fetch(zip_remote(server.url("/a.zip")), cache, check=verify_archive, warn=lambda m: None, timeout=5.0)
    assert path.read_bytes() == ZIP


def test_no_verify_download_is_checked_too(server: Server, tmp_path: Path) -> None:
    server.state.files["/a.zip"] = TRUNCATED_ZIP
    remote = zip_remote(server.url("/a.zip"), md5=hashlib.md5(ZIP).hexdigest())
    with pytest.raises(DownloadError, match="was refused, so it was deleted"):
        fetch(remote, tmp_path, verify=False, check=verify_archive, warn=lambda m: None, timeout=5.0)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cached_file_without_checksum_is_refused_with_the_file_to_delete(
    server: Server, tmp_path: Path
) -> None:
    cached = tmp_path / "ADEChallengeData2016.zip"
    cached.write_bytes(TRUNCATED_ZIP)
    with pytest.raises(ArchiveError) as info:
        fetch(zip_remote(server.url("/a.zip")), tmp_path, check=verify_archive, warn=lambda m: None)
    assert str(info.value) == (
        f"{cached}: not a tar or zip archive (or a truncated one) "
        "(a cached file: delete it and run again to download a fresh copy)"
    )
    assert cached.read_bytes() == TRUNCATED_ZIP and server.state.requests == []


def test_a_damaged_local_archive_without_checksum_is_refused(tmp_path: Path) -> None:
    local = tmp_path / "mine.zip"
    local.write_bytes(TRUNCATED_ZIP)
    with pytest.raises(ArchiveError, match=rf"^{local}: not a tar or zip archive"):
        fetch(zip_remote("http://127.0.0.1:9/a.zip"), tmp_path / "cache", archive=local, check=verify_archive)


def test_the_check_is_skipped_for_a_file_its_checksum_vouches_for(tmp_path: Path) -> None:
    """A verified file is exactly the published one: no need to scan it (a check that fails would say so)."""
    (tmp_path / "data.bin").write_bytes(DATA)

    def refuse(path: Path) -> None:
        raise ArchiveError(f"{path}: checked")

    assert fetch(remote_for("http://127.0.0.1:9/data.bin"), tmp_path, check=refuse)[1] == hashes_of(DATA)
    with pytest.raises(ArchiveError, match="checked"):
        fetch(remote_for("http://127.0.0.1:9/data.bin"), tmp_path, check=refuse, verify=False, warn=lambda m: None)


# ----------------------------------------------------------------------------- the network timeout


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts the connection and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/data.bin"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_the_timeout_bounds_a_server_that_never_answers(silent_server: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out \(1 attempts in a row failed\)"):
        download(silent_server, tmp_path / "data.bin", retries=0, timeout=0.3, backoff=0.01)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_a_timeout_must_be_positive_and_finite(bad: float, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--timeout must be a number of seconds above 0"):
        check_timeout(bad)
    with pytest.raises(ConfigError, match="--timeout"):
        fetch(remote_for("http://127.0.0.1:9/data.bin"), tmp_path, timeout=bad)
    assert check_timeout(2) == 2.0
