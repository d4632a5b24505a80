"""Offline and unreachable hosts: downloads fail at once (no retries, no back-off) with the ways out the
command offers, transient errors are still retried, and a ``.part`` file is named only when it holds bytes.

``encnet-test.invalid``: the ``.invalid`` top-level domain never resolves (RFC 2606), so these tests need
no network and never reach one. Sleeps are recorded instead of slept; no test asserts wall time.
"""

from __future__ import annotations

import errno
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.fetch import download as download_module
from encnet_core.fetch.download import NetworkError, RemoteFile, download, fetch

if TYPE_CHECKING:
    from loopback import Server  # tests/loopback.py: the loopback HTTP server

INVALID = "http://encnet-test.invalid"
DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits a download asks for (none is slept)."""
    waits: list[float] = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    return waits


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs of every connection attempt (urlopen still does the work)."""
    urls: list[str] = []
    real = download_module.urlopen

    def counting(request, *args, **kwargs):
        urls.append(request.full_url)
        return real(request, *args, **kwargs)

    monkeypatch.setattr(download_module, "urlopen", counting)
    return urls


def free_port() -> int:
    """A loopback port nobody listens on (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unresolvable_host_fails_at_once(tmp_path: Path, sleeps: list[float], attempts: list[str]) -> None:
    url = f"{INVALID}/data.bin"
    with pytest.raises(NetworkError) as info:
        download(url, tmp_path / "data.bin")  # the defaults: 5 retries, back-off from 1 s
    assert str(info.value) == f"cannot download {url}: could not resolve encnet-test.invalid (offline?)"
    assert info.value.unreachable and info.value.attempts == 1 and info.value.part is None
    assert attempts == [url] and sleeps == []  # the old code tried 6 times, sleeping 1+2+4+8+16 s
    assert list(tmp_path.iterdir()) == []  # no (empty) .part to "resume"


def test_a_temporary_resolver_failure_is_offline_too(
    tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EAI_AGAIN ("Temporary failure in name resolution") is what an offline machine's resolver says."""

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(NetworkError, match=r"^cannot download https://example\.org/a\.tar: could not resolve example\.org \(offline\?\)$"):
        download("https://example.org/a.tar", tmp_path / "a.tar")
    assert sleeps == []


def test_a_refused_connection_fails_at_once(tmp_path: Path, sleeps: list[float], attempts: list[str]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(NetworkError) as info:
        download(url, tmp_path / "data.bin")
    assert str(info.value) == (
        f"cannot download {url}: 127.0.0.1:{port} refused the connection (is the server down, or the URL wrong?)"
    )
    assert len(attempts) == 1 and sleeps == []


def test_503_then_200_still_succeeds_with_backoff(http_server: Server, tmp_path: Path, sleeps: list[float]) -> None:
    http_server.state.files["/data.bin"] = DATA
    http_server.state.errors_500, http_server.state.error_code = 2, 503
    dest = tmp_path / "data.bin"
    download(http_server.url(), dest)  # the defaults: backoff 1 s, doubling
    assert dest.read_bytes() == DATA
    assert [path for path, _ in http_server.state.requests] == ["/data.bin"] * 3
    assert sleeps == [1.0, 2.0]


def test_out_of_retries_without_bytes_names_no_part_file(http_server: Server, tmp_path: Path, sleeps: list[float]) -> None:
    http_server.state.files["/data.bin"] = DATA
    http_server.state.errors_500, http_server.state.error_code = 100, 503
    with pytest.raises(NetworkError) as info:
        download(http_server.url(), tmp_path / "data.bin", retries=2)
    assert str(info.value) == (
        f"cannot download {http_server.url()}: HTTP 503 Service Unavailable (3 attempts in a row failed); try again later"
    )
    assert sleeps == [1.0, 2.0] and list(tmp_path.iterdir()) == []


def test_out_of_retries_names_the_part_file_that_holds_bytes(
    http_server: Server, tmp_path: Path, sleeps: list[float]
) -> None:
    http_server.state.files["/data.bin"] = DATA
    http_server.state.errors_500 = 100
    part = tmp_path / "data.bin.part"
    part.write_bytes(DATA[:1000])  # an earlier run's bytes
    with pytest.raises(NetworkError) as info:
        download(http_server.url(), tmp_path / "data.bin", retries=1)
    assert str(info.value).endswith(f"(2 attempts in a row failed); run the command again to resume from {part}")
    assert info.value.part == part and part.read_bytes() == DATA[:1000]
    assert http_server.state.requests == [("/data.bin", "bytes=1000-")] * 2


def test_offline_with_a_part_file_keeps_it_and_says_so(tmp_path: Path, sleeps: list[float]) -> None:
    part = tmp_path / "data.bin.part"
    part.write_bytes(DATA[:500])
    with pytest.raises(NetworkError) as info:
        download(f"{INVALID}/data.bin", tmp_path / "data.bin")
    assert str(info.value).endswith(f"(offline?): run the command again once online to resume from {part}")
    assert part.read_bytes() == DATA[:500] and sleeps == []


def test_an_empty_part_file_is_not_offered_for_resuming(tmp_path: Path, sleeps: list[float]) -> None:
    part = tmp_path / "data.bin.part"
    part.write_bytes(b"")
    with pytest.raises(NetworkError) as info:
        download(f"{INVALID}/data.bin", tmp_path / "data.bin")
    assert "resume" not in str(info.value) and not part.exists()


def test_fetch_says_what_prepare_offers(tmp_path: Path, sleeps: list[float]) -> None:
    name = "cifar-10-binary.tar.gz"
    with pytest.raises(NetworkError) as info:
        fetch(RemoteFile(name=name, url=f"{INVALID}/{name}"), tmp_path)
    assert str(info.value) == (
        f"cannot download {INVALID}/{name}: could not resolve encnet-test.invalid (offline?): "
        f"download {name} yourself and pass --archive {name}=PATH, or --mirror URL (a server holding {name})"
    )
    assert list(tmp_path.iterdir()) == [] and sleeps == []


def _flags_outside_commands(line: str) -> set[str]:
    """The --flags a message tells the user to pass (not those inside a `command` to run)."""
    return set(re.findall(r"--[a-z][a-z-]*", re.sub(r"`[^`]*`", "", line)))


def _options_of(*command: str) -> set[str]:
    from typer.main import get_command

    group = get_command(app)
    cmd = group
    for word in command:
        cmd = cmd.commands[word]  # type: ignore[attr-defined]
    return {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("source", ["cifar10", "pcontext"])
def test_prepare_offline_is_one_line_with_its_own_flags(source: str, tmp_path: Path, sleeps: list[float]) -> None:
    result = CliRunner().invoke(app, ["prepare", source, "--out", str(tmp_path / "x.h5"), "--root", str(tmp_path / "cache"),
                                      "--mirror", INVALID, "--no-progress"])  # fmt: skip
    line = one_error_line(result)
    assert f"cannot download {INVALID}/" in line and "could not resolve encnet-test.invalid (offline?)" in line
    assert "--archive" in line and "--mirror URL" in line and "resume" not in line
    assert _flags_outside_commands(line) <= _options_of("prepare", source)
    assert sleeps == [] and not (tmp_path / "x.h5").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "could not resolve example.org (offline?)"),
        (ConnectionRefusedError(111, "Connection refused"), "example.org:8080 refused the connection (is the server down, or the URL wrong?)"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "no route to the network for example.org (offline?)"),
        (ConnectionResetError(104, "Connection reset by peer"), None),  # transient: retried
        (TimeoutError("timed out"), None),
        (OSError(errno.EHOSTUNREACH, "No route to host"), None),  # one host, maybe briefly: retried
    ],
)
def test_which_failures_are_not_retried(reason: OSError, expected: str | None) -> None:
    assert download_module._unreachable_reason("http://example.org:8080/a.tar", reason) == expected
