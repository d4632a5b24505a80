"""Outputs that are not regular files: ``--json FIFO`` and ``--json /dev/null`` are written in place (a FIFO
stays a FIFO, a device stays a device), a symbolic link or a socket is refused in one line before the work."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from helpers import make_synthetic, one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("special_outputs"), 2, 1, size=32)


def test_json_into_a_fifo(data: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = runner.invoke(app, ["info", str(data), f"--json={fifo}"])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert json.loads(received[0])["splits"]["train"]["images"] == 2
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["report.fifo"]


def test_json_into_dev_null(data: Path) -> None:
    result = runner.invoke(app, ["info", str(data), "--json=/dev/null"])
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_json_through_a_link_is_refused(data: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.json"
    real.write_text("{}")
    (tmp_path / "out.json").symlink_to(real)
    line = one_error_line(runner.invoke(app, ["info", str(data), f"--json={tmp_path / 'out.json'}"]))
    assert "is a symbolic link" in line and "does not write through links" in line
    assert real.read_text() == "{}" and (tmp_path / "out.json").is_symlink()


def test_json_onto_a_socket_is_refused(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        line = one_error_line(runner.invoke(app, ["info", str(data), f"--json={path}"]))
        assert "is a socket" in line and stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()
