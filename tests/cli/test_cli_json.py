"""``--json [FILE|-]`` means the same on every command that prints a result: a bare ``--json`` or
``--json -`` puts JSON (alone) on stdout, ``--json FILE`` writes it atomically and keeps the table;
a FILE that cannot be written, or an existing non-JSON file, is refused before the work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import one_error_line, tiny_trained
from PIL import Image
from typer.testing import CliRunner

from encnet_cli._options import expand_json_flag
from encnet_cli.main import app

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dataset, checkpoint): synthetic 8 train / 4 val at 48 px, encnet_tiny after 2 iterations."""
    yield from tiny_trained(tmp_path_factory, "cli_json")


@pytest.fixture(scope="module")
def images(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("json_images")
    for i in range(2):
        Image.new("RGB", (40, 32), (40 * i, 90, 160)).save(folder / f"im{i}.png")
    return folder


def _commands(tiny: tuple[Path, Path], images: Path, work: Path) -> dict[str, tuple[list[object], str]]:
    """command -> (its arguments without --json, a key its JSON must have)."""
    data, ckpt = tiny
    return {
        "models": (["models", "tiny", "--size", "32"], "name"),
        "doctor": (["doctor", "--device", "cpu", "--size", "32"], "status"),
        "info (dataset)": (["info", data], "splits"),
        "info (model)": (["info", ckpt], "classes"),
        "targets": (["targets", data, "--min-pixels", "1"], "updated"),
        "prepare": (["prepare", "synthetic", "--out", work / "p.h5", "--root", work / "cache", "--num-train", "2",
                     "--num-val", "1", "--size", "32", "-j", "1", "--overwrite"], "counts"),  # fmt: skip
        "train": (["train", data, "--model", "encnet_tiny", "--iters", "1", "--batch-size", "2", "--crop-size", "32",
                   "--base-size", "48", "-j", "0", "--device", "cpu", "--val-split", "", "-o", work / "run",
                   "--set", "log_every=1"], "total_iters"),  # fmt: skip
        "evaluate": (["evaluate", ckpt, data, "--device", "cpu", "-j", "0", "--limit", "2"], "mIoU"),
        "predict": (["predict", ckpt, images, "-o", work / "pred", "--device", "cpu", "--overwrite"], "images"),
        "export": (["export", ckpt, work / "m.safetensors", "--format", "safetensors", "--overwrite"], "sha256"),
        "weights list": (["weights", "list"], "name"),
    }


def _key_of(report: object, key: str) -> bool:
    return key in (report[0] if isinstance(report, list) else report)


COMMANDS = ["models", "doctor", "info (dataset)", "info (model)", "targets", "prepare", "train", "evaluate",
            "predict", "export", "weights list"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_json_on_stdout_and_to_a_file(command: str, tiny, images: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ENCNET_CACHE", str(tmp_path / "zoo"))
    args, key = _commands(tiny, images, tmp_path)[command]
    for spelling in (["--json"], ["--json", "-"], ["--json=-"]):  # bare --json last, and '-' given
        result = run(*args, *spelling)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)  # stdout is the JSON alone: no table, no progress
        assert _key_of(report, key), command
    option = next((i for i, a in enumerate(args) if isinstance(a, str) and a.startswith("-")), None)
    if option is not None:  # a bare --json before another option
        result = run(*args[:option], "--json", *args[option:])
        assert result.exit_code == 0, result.output
        assert _key_of(json.loads(result.stdout), key)
    out = tmp_path / "out" / "result.json"
    result = run(*args, "--json", out)
    assert result.exit_code == 0, result.output
    assert _key_of(json.loads(out.read_text()), key)
    assert result.stdout.strip() and not result.stdout.lstrip().startswith(("{", "[")), "the table stays on stdout"
    assert not list(out.parent.glob(".*")), "written atomically: no temp file left"


def test_progress_is_not_on_stdout(tiny, images: Path, tmp_path: Path) -> None:
    """With the progress display on (the default), stdout still parses."""
    _, ckpt = tiny
    result = run("predict", ckpt, images, "-o", tmp_path / "p", "--device", "cpu", "--progress", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["images"]) == ["im0", "im1"] and report["written"] == 2 and report["failed"] == []
    assert report["images"]["im0"]["size"] == [32, 40]
    assert report == {**json.loads((tmp_path / "p" / "predictions.json").read_text()), **{
        k: report[k] for k in ("output", "written", "seconds")}}  # fmt: skip


def test_bad_json_file_refused_before_the_work(tiny, tmp_path: Path) -> None:
    data, ckpt = tiny
    (tmp_path / "folder.json").mkdir()
    line = one_error_line(run("export", ckpt, tmp_path / "m.pt", "--json", tmp_path / "folder.json"))
    assert "--json" in line and "folder.json" in line
    assert not (tmp_path / "m.pt").exists()
    # a bare --json before a positional argument that is not a .json name leaves it positional
    before = data.read_bytes()
    result = run("info", "--json", data)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_classes"] == 14
    # --json=FILE naming an existing file that is not JSON is refused, never replaced
    line = one_error_line(run("info", f"--json={data}", ckpt))
    assert "is not a JSON file" in line
    assert data.read_bytes() == before
    old = tmp_path / "old.json"
    old.write_text("[]\n")  # an earlier JSON result is replaced
    assert run("models", "tiny", "--size", "32", "--json", old).exit_code == 0
    assert json.loads(old.read_text())[0]["name"]


def test_expand_json_flag() -> None:
    assert expand_json_flag(["info", "d.h5", "--json"]) == ["info", "d.h5", "--json=-"]
    assert expand_json_flag(["info", "--json", "-", "x"]) == ["info", "--json=-", "x"]
    assert expand_json_flag(["info", "--json", "--trust-code", "m"]) == ["info", "--json=-", "--trust-code", "m"]
    assert expand_json_flag(["evaluate", "--json", "m.json", "a"]) == ["evaluate", "--json=m.json", "a"]
    assert expand_json_flag(["info", "--json", "d.h5"]) == ["info", "--json=-", "d.h5"]
    assert expand_json_flag(["evaluate", "--json", "OUT.JSON", "m", "d"]) == ["evaluate", "--json=OUT.JSON", "m", "d"]
    assert expand_json_flag(["x", "--json=f", "--", "--json"]) == ["x", "--json=f", "--", "--json"]


def test_help_shows_the_optional_value() -> None:
    for command in (["evaluate"], ["predict"], ["train"], ["weights", "list"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert "--json" in result.output and "[FILE|-]" in result.output, command


def test_every_json_option_is_the_shared_one() -> None:
    """One definition: each command's --json takes [FILE|-] (no flag-only or path-only variant is left)."""
    import typer

    group = typer.main.get_command(app)
    with_json = set()
    for name, command in group.commands.items():
        for sub_name, sub in (getattr(command, "commands", None) or {name: command}).items():
            for param in sub.params:
                if "--json" in param.opts:
                    assert not getattr(param, "is_flag", False) and param.metavar == "[FILE|-]", (name, sub_name)
                    with_json.add(name if sub is command else f"{name} {sub_name}")
    from encnet_core.choices import SOURCES

    assert {*(f"prepare {source}" for source in SOURCES), "targets", "train", "evaluate", "predict", "export", "info",
            "models", "doctor", "weights list", "weights pull", "weights add"} <= with_json  # fmt: skip
