"""A loopback HTTP server for download tests (tests/fetch, tests/data, tests/cli).

It serves ``Server.state.files`` (URL path -> bytes) with HTTP Range support and can drop the first
response after K body bytes, answer 500s, or ignore Range. Conftests re-export the ``http_server`` fixture.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class ServerState:
    """What the server serves and how it misbehaves; ``requests`` records (path, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    drop_after: int | None = None  # first request: send this many body bytes, then close
    errors_500: int = 0  # answer this many requests with `error_code` (500 unless set) first
    error_code: int = 500  # the status of those answers (503: a server that is briefly unavailable)
    ignore_range: bool = False  # answer Range requests with the full body (status 200)
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    """Serves ``ServerState.files`` with Range support and the failures the state asks for."""

    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        if state.errors_500:
            state.errors_500 -= 1
            self.send_error(state.error_code)
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.drop_after is not None:
            body, state.drop_after = body[: state.drop_after], None
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@dataclass
class Server:
    state: ServerState
    base: str

    def url(self, path: str = "/data.bin") -> str:
        return self.base + path

    def serve(self, path: Path, under: str = "/mirror/") -> str:
        """Serve the file at ``path`` under its own name; return its URL."""
        url_path = under + path.name
        self.state.files[url_path] = Path(path).read_bytes()
        return self.url(url_path)


@pytest.fixture
def http_server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
