"""What the commands print when the output is not a terminal (a log, a pipe, CI): whole lines, however
long (COLUMNS still sets a width), log records on one line; counts in words ("1 image"); `doctor
--device cuda` without a GPU still shows the environment."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch
from typer.testing import CliRunner

from encnet_cli._output import _Console, plural, usage_text
from encnet_cli.main import _LineHandler, _SafeFormatter, app

runner = CliRunner()
LONG = "/data/" + "/".join(f"folder_{i:02d}_with_a_long_name" for i in range(8)) + "/voc_aug_train_and_val.h5"


def _table_output(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> str:
    from rich.table import Table

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    console = _Console(file=io.StringIO())  # a file: not a terminal
    table = Table(title=f"synthetic -> {LONG}")
    table.add_column("split")
    table.add_column("file")
    table.add_row("train", LONG)
    console.print(table)
    console.print(f"wrote {LONG}")
    return console.file.getvalue()


def test_a_file_or_pipe_gets_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal and COLUMNS unset: a long path stays whole in a table's title, a cell and a message
    (rich wrapped each at 80 columns), and lines are not padded."""
    out = _table_output(monkeypatch, None)
    lines = out.splitlines()
    assert lines[0] == f"synthetic -> {LONG}"  # the title, longer than the table, on its own line
    assert any(f"│ train │ {LONG} │" == line for line in lines), out
    assert lines[-1] == f"wrote {LONG}"
    assert all(line == line.rstrip() for line in lines)


def test_columns_still_sets_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _table_output(monkeypatch, "60")
    assert max(len(line) for line in out.splitlines()) <= 60
    assert LONG not in out  # wrapped, as asked


def test_prepare_title_keeps_a_long_path_whole(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end (CliRunner's output is not a terminal): the result table's title names the output file whole."""
    monkeypatch.delenv("COLUMNS", raising=False)
    out = tmp_path.joinpath(*(f"a_rather_long_folder_name_{i}" for i in range(4)), "synthetic_dataset.h5")
    out.parent.mkdir(parents=True)
    args = ["prepare", "synthetic", "-o", str(out), "--num-train", "2", "--num-val", "1", "--size", "32", "-j", "1", "--no-progress", "--root", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"synthetic -> {out}" in result.stdout.splitlines(), result.stdout
    assert "14 classes, 0 skipped" in result.stdout


def test_log_records_are_whole_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """Where stderr is not a terminal, a record is one line "LEVEL    message" (rich's handler wrapped the
    message in a column and padded it to the console's width); control codes stay escaped."""
    handler = _LineHandler()
    handler.setFormatter(_SafeFormatter("%(message)s"))
    record = logging.LogRecord("encnet", logging.WARNING, __file__, 1, "class %s missing from %s", ("\x1b[2Jx", LONG), None)
    handler.emit(record)
    assert capsys.readouterr().err == f"WARNING  class \\x1b[2Jx missing from {LONG}\n"


def test_plural() -> None:
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(1, "class", "classes") == "1 class" and plural(21, "class", "classes") == "21 classes"


def test_usage_text() -> None:
    assert usage_text("Missing argument 'source'. Choose from:\n\tvoc,\n\tvoc-aug") == "Missing argument 'source'. Choose from: voc, voc-aug"
    assert usage_text("'a\x1b[31m\tb'") == "'a\\x1b[31m\\x09b'"  # anything else stays visible


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_doctor_without_gpu_shows_the_environment_then_the_error() -> None:
    result = runner.invoke(app, ["doctor", "--device", "cuda"])
    assert result.exit_code == 1
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.stdout.splitlines() if line.count("│") == 3}
    assert rows["torch"] == torch.__version__ and rows["cuda_available"] == "False" and rows["status"] == "error"
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda was given but no CUDA GPU is visible to PyTorch; use --device cpu"
    ]
    as_json = runner.invoke(app, ["doctor", "--device", "cuda", "--json"])
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["status"] == "error" and report["cuda_available"] is False and "no CUDA GPU" in report["error"]
