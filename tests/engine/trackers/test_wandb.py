"""``train --tracker wandb`` (engine/trackers/wandb.py) in W&B's offline mode (no account, no network): the
offline run's log (RUN/wandb/offline-run-*/run-*.wandb) holds the settings as its config, metrics.jsonl's
numbers as its history and the best and last validation in its summary.

wandb 0.31 writes an offline run only as that log (no files/wandb-summary.json, no Python reader for it):
``_read_wandb`` reads its records (LevelDB's log format, ``:W&B`` header) with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import one_error_line
from typer.testing import CliRunner

from encnet_cli.main import app

ARGS = ["-m", "encnet_tiny", "--iters", "6", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "-j", "0",
        "--device", "cpu", "--log-every", "2", "--val-every", "1", "--no-progress"]  # fmt: skip


def _read_wandb(path: Path) -> tuple[dict, dict, list[dict]]:
    """The config, the final summary and the history rows of a .wandb log."""
    import wandb
    from wandb.proto import wandb_internal_pb2

    wandb.teardown()  # wandb-core writes the log behind run.finish(): its shutdown (at exit in the CLI) flushes it

    raw, block = path.read_bytes(), 32768
    assert raw[:4] == b":W&B"
    pos, part, records = 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's zero padding
            pos += left
            continue
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        part = data if kind in (1, 2) else part + data  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(part))
    config, summary, history = {}, {}, []

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
    return config, summary, history


def _offline(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "encnet-tests")
    if folder is None:
        monkeypatch.setenv("WANDB_DIR", "")
        monkeypatch.delenv("WANDB_DIR")
    else:
        monkeypatch.setenv("WANDB_DIR", str(folder))


def test_cli_wandb_offline_run_reads_back(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'encnet[wandb]')")
    _offline(monkeypatch, tmp_path / "wandb-dir")
    out = tmp_path / "tiny-run"
    result = CliRunner().invoke(app, ["train", str(synthetic_h5), *ARGS, "-o", str(out), "--tracker", "wandb"])
    assert result.exit_code == 0, result.output
    [log] = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"))  # WANDB_DIR wins over RUN/
    assert not (out / "wandb").exists()
    config, summary, history = _read_wandb(log)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    [val] = [r for r in records if r["type"] == "val"]
    train_records = [r for r in records if r["type"] == "train"]
    last_train = train_records[-1]
    rows = {}
    for row in history:  # one row per step (a step's scalars may come in several rows)
        rows.setdefault(row["_step"], {}).update(row)
    assert sorted(rows) == [2, 4, 6]
    for record in train_records:
        row = rows[record["iteration"]]
        assert row["loss/total"] == pytest.approx(record["loss"], rel=1e-9)
        for term in ("seg", "aux", "se"):
            assert row[f"loss/{term}"] == pytest.approx(record[term], rel=1e-9)
        assert row["lr"] == pytest.approx(record["lr"], rel=1e-9, abs=1e-15)
        assert row["throughput/images_per_s"] == pytest.approx(record["images_per_s"], rel=1e-9)
    for metric in ("pixAcc", "mIoU", "mIoU_all", "mean_acc", "fwIoU", "score"):
        assert summary[f"best/{metric}"] == pytest.approx(val[metric], rel=1e-9, abs=1e-12)
        assert summary[f"last/{metric}"] == pytest.approx(val[metric], rel=1e-9, abs=1e-12)
        assert summary[f"val/{metric}"] == pytest.approx(val[metric], rel=1e-9, abs=1e-12)  # the last logged value
        assert rows[6][f"val/{metric}"] == pytest.approx(val[metric], rel=1e-9, abs=1e-12)
    assert summary["best/iteration"] == 6 and summary["iterations"] == 6
    assert summary["loss/total"] == pytest.approx(last_train["loss"], rel=1e-9)
    assert summary["lr"] == pytest.approx(last_train["lr"], rel=1e-9, abs=1e-15)

    saved = tomllib.loads((out / "config.toml").read_text())
    for key, value in saved.items():
        assert config[key] == value, key
    assert config["model"] == "encnet_tiny" and config["recipe"] is None and config["run"]["total_iters"] == 6


def test_wandb_files_default_to_the_run_folder(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'encnet[wandb]')")
    _offline(monkeypatch, None)
    out = tmp_path / "run"
    args = ["train", str(synthetic_h5), *ARGS[:2], "--iters", "1", *ARGS[4:], "--val-split", "", "-o", str(out), "--tracker", "wandb"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [log] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    config, summary, _ = _read_wandb(log)
    assert summary["iterations"] == 1 and config["iters"] == 1


def test_missing_wandb_is_one_line(synthetic_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import raises ImportError
    result = CliRunner().invoke(app, ["train", str(synthetic_h5), "-m", "encnet_tiny", "--iters", "1", "--device", "cpu",
                                      "-o", str(tmp_path / "run"), "--tracker", "mlflow", "--tracker", "wandb"])  # fmt: skip
    line = one_error_line(result)
    assert "pip install 'encnet[wandb]'" in line
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"
