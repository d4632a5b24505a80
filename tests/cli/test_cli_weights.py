"""`encnet weights list/pull/add`, and zoo names as the MODEL of predict, evaluate and info, end to end
through typer's CliRunner against reference-format zips served from 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import zoo_fixtures as zf
from helpers import make_synthetic, one_error_line
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from encnet_cli import _options as opt
from encnet_cli.main import app
from encnet_core.data.hdf5 import read_info
from encnet_core.weights import zoo

fx = zf.data_fixtures()
http_server = fx.http_server
zoo_cache = zf.zoo_cache

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def tiny(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[zf.Published, str]:
    """(published tiny PASCAL Context model, mirror URL serving it)."""
    published = zf.tiny_segmentation(monkeypatch)
    return published, zf.serve(http_server, published)


def _listed(name: str) -> dict:
    result = run("weights", "list", "--json")
    assert result.exit_code == 0, result.output
    return next(row for row in json.loads(result.stdout) if row["name"] == name)


def test_list_shows_the_published_models(zoo_cache: Path) -> None:
    result = run("weights", "list")
    assert result.exit_code == 0, result.output
    for name in ("encnet_resnet50s_pcontext", "encnet_resnet101s_pcontext", "encnet_resnet50s_ade",
                 "encnet_resnet101s_ade", "resnet50s", "resnet101s", "resnet152s"):  # fmt: skip
        assert name in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("encnet_resnet101s_ade "))
    assert row.split() == ["encnet_resnet101s_ade", "ade20k", "150", "81.3/44.4", "3f54fa3b", "no"]
    row = next(line for line in result.stdout.splitlines() if line.startswith("deeplab_resnest269_pcontext "))
    assert row.split() == ["deeplab_resnest269_pcontext", "pcontext", "59", "83.06/58.92", "b661fd26", "no"]  # the published digits
    assert "resnest101 " in result.stdout and "fcn_resnet50s_ade " in result.stdout
    rows = json.loads(run("weights", "list", "--json").stdout)
    assert {r["name"]: (r["pixAcc"], r["mIoU"], r["cached"]) for r in rows}["encnet_resnet50s_pcontext"] == (0.792, 0.51, False)


def test_pull_then_list_says_cached_and_reuses_the_cache(tiny, http_server) -> None:
    published, mirror = tiny
    name = published.entry.name
    assert _listed(name)["cached"] is False
    result = run("weights", "pull", name, "--mirror", mirror, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"cached {name}: " in result.stdout and zoo.is_cached(name)
    assert _listed(name)["cached"] is True
    listed = run("weights", "list").stdout
    assert next(line for line in listed.splitlines() if line.startswith(name + " ")).split()[-1] == "yes"
    again = run("weights", "pull", name, "--mirror", mirror, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["path"] == str(zoo.cache_path(name))
    assert "already cached" in run("weights", "pull", name).stdout
    assert len(http_server.state.requests) == 1  # one download for all of them


def test_pull_with_the_mirror_from_the_environment(tiny, http_server, monkeypatch: pytest.MonkeyPatch) -> None:
    published, mirror = tiny
    monkeypatch.setenv(zoo.MIRROR_ENV, mirror)
    result = run("weights", "pull", published.entry.name, "--timeout", "5")
    assert result.exit_code == 0, result.output
    assert http_server.state.requests == [(f"/zoo{published.url_path}", None)]


def test_checksum_failure_is_one_line_and_caches_nothing(tiny, http_server, zoo_cache: Path) -> None:
    published, mirror = tiny
    other = zf.pth_bytes({k: v * 3 for k, v in published.state.items()})
    http_server.state.files[f"/zoo{published.url_path}"] = zf.zip_bytes(f"{published.entry.stem}.pth", other)
    line = one_error_line(run("weights", "pull", published.entry.name, "--mirror", mirror, "--no-progress"))
    assert f"but the reference publishes {published.entry.sha1}" in line and "nothing was cached" in line
    assert zf.cache_files(zoo_cache) == [] and _listed(published.entry.name)["cached"] is False
    suggested = line.split("`")[1].split()  # the command the message offers for a file the user trusts
    assert suggested[:4] == ["encnet", "weights", "pull", published.entry.name] and suggested[4] == "--checksum"
    result = run(*suggested[1:], "--mirror", mirror, "--no-progress")
    assert result.exit_code == 0, result.output
    assert _listed(published.entry.name)["cached"] is True
    line = one_error_line(run("weights", "pull", published.entry.name, "--checksum", "sha1:xyz"))
    assert "bad --checksum value" in line


def test_offline_message(zoo_cache: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run("weights", "pull", "resnet50s", "--mirror", f"http://127.0.0.1:{port}", "--retries", "0", "--no-progress")
    line = one_error_line(result)
    assert f"cannot download http://127.0.0.1:{port}/models/resnet50s-a75c83cf.zip" in line
    assert "--mirror URL" in line and "encnet weights add resnet50s FILE.pth" in line


def test_add_from_a_local_pth(tiny, tmp_path: Path, http_server) -> None:
    published, _ = tiny
    pth = tmp_path / "downloaded elsewhere.pth"
    pth.write_bytes(published.pth)
    result = run("weights", "add", published.entry.name, pth, "--no-progress")
    assert result.exit_code == 0, result.output
    assert zoo.is_cached(published.entry.name) and http_server.state.requests == []
    line = one_error_line(run("weights", "add", "encnet_resnet50s_pcontext", pth, "--no-progress"))
    assert "but the reference publishes 4de91d5922d4d3264f678b663f874da72e82db00" in line


def test_usage_errors_name_the_subcommand() -> None:
    result = run("weights", "pull")
    assert result.exit_code == 2 and "encnet weights pull --help" in result.output
    assert one_error_line(run("weights", "pull", "nope")).startswith("error: unknown zoo model 'nope'")


# ----------------------------------------------------------------------------- a zoo name as the MODEL


def test_predict_by_name_pulls_on_first_use(tiny, tmp_path: Path, http_server, monkeypatch: pytest.MonkeyPatch) -> None:
    published, mirror = tiny
    monkeypatch.setenv(zoo.MIRROR_ENV, mirror)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(photos / f"{i}.jpg")
    out = tmp_path / "out"
    result = run("predict", published.entry.name, photos, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    masks = sorted(p.name for p in out.rglob("*.png"))
    assert len(masks) == 2 and zoo.is_cached(published.entry.name)
    result = run("predict", published.entry.name, photos, "-o", tmp_path / "again", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(http_server.state.requests) == 1


def test_evaluate_and_info_by_name(http_server, zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_synthetic(tmp_path, 2, 3, size=40)
    info = read_info(data)
    monkeypatch.setitem(zoo.DATASET_LABELS, "synthetic", lambda: (list(info.classes), info.palette))
    published = zf.tiny_segmentation(monkeypatch, dataset="synthetic", num_classes=len(info.classes))
    monkeypatch.setenv(zoo.MIRROR_ENV, zf.serve(http_server, published))
    name = published.entry.name
    result = run("evaluate", name, data, "--device", "cpu", "-j", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 3 and len(report["iou"]) == len(info.classes) and report["model"] == name
    shown = run("info", name)
    assert shown.exit_code == 0, shown.output
    assert "encnet_tiny" in shown.stdout and "safetensors" in shown.stdout
    assert len(http_server.state.requests) == 1


# ----------------------------------------------------------------------------- --mirror of predict and evaluate; offline

INVALID = "http://encnet-test.invalid"  # .invalid never resolves (RFC 2606): offline, without a network


def _flags_to_pass(line: str) -> set[str]:
    """The --flags a message tells the user to pass (not those inside a `command` it suggests running)."""
    return set(re.findall(r"--[a-z][a-z-]*", re.sub(r"`[^`]*`", "", line)))


def _options_of(*command: str) -> set[str]:
    cmd = get_command(app)
    for word in command:
        cmd = cmd.commands[word]  # type: ignore[attr-defined]
    return {name for param in cmd.params for name in (*param.opts, *param.secondary_opts)}


def test_predict_and_evaluate_pull_from_their_mirror(http_server, zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_synthetic(tmp_path, 2, 3, size=40)
    info = read_info(data)
    monkeypatch.setitem(zoo.DATASET_LABELS, "synthetic", lambda: (list(info.classes), info.palette))
    published = zf.tiny_segmentation(monkeypatch, dataset="synthetic", num_classes=len(info.classes))
    mirror = zf.serve(http_server, published, under="/predict-mirror")
    name = published.entry.name
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(images / "a.png")
    result = run("predict", name, images, "-o", tmp_path / "out", "--device", "cpu", "--mirror", mirror, "--no-progress")
    assert result.exit_code == 0, result.output
    assert http_server.state.requests == [(f"/predict-mirror{published.url_path}", None)] and zoo.is_cached(name)
    assert (tmp_path / "out" / "a.png").is_file()
    zoo.cache_path(name).unlink()  # evaluate pulls it again, from its own --mirror
    mirror = zf.serve(http_server, published, under="/evaluate-mirror")
    result = run("evaluate", name, data, "--device", "cpu", "-j", "0", "--mirror", mirror, "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 3
    assert http_server.state.requests[1:] == [(f"/evaluate-mirror{published.url_path}", None)]
    assert opt.MIRROR_HELP.endswith(f"(also ${zoo.MIRROR_ENV}).")


def test_an_unreachable_mirror_is_one_line_naming_only_the_commands_flags(zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("encnet_core.fetch.download.time.sleep", sleeps.append)
    data = make_synthetic(tmp_path, 2, 3, size=40)
    name, url = "encnet_resnet101s_pcontext", f"{INVALID}/models/encnet_resnet101s_pcontext-9f27ea13.zip"
    assert zoo.get(name).url(INVALID) == url
    for command, args in (("predict", (tmp_path, "-o", tmp_path / "out")), ("evaluate", (data,))):
        # -q: without it the log line "... is not cached yet: downloading URL" comes first
        line = one_error_line(run("-q", command, name, *args, "--device", "cpu", "--mirror", INVALID, "--no-progress"))
        assert line.startswith(f"error: cannot download {url}: could not resolve encnet-test.invalid (offline?): ")
        assert "pass --mirror URL" in line and f"encnet weights add {name} FILE.pth" in line and "resume" not in line
        assert _flags_to_pass(line) <= _options_of(command), line
    monkeypatch.setenv(zoo.MIRROR_ENV, INVALID)  # a command without --mirror: the message points to `weights pull`
    line = one_error_line(run("-q", "info", name))
    assert f"run `encnet weights pull {name} --mirror URL` first (or set {zoo.MIRROR_ENV}=URL)" in line
    assert "pass --mirror" not in line and _flags_to_pass(line) <= _options_of("info"), line
    assert sleeps == [] and not zoo.is_cached(name)
