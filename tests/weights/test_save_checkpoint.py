"""save_checkpoint on a full disk and when interrupted: one line, the previous file intact, no temp file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from small_disk import small_disk

from encnet_core.errors import CheckpointError
from encnet_core.weights import checkpoint as checkpoint_module
from encnet_core.weights.checkpoint import load_checkpoint, save_checkpoint


def payload(values: int) -> dict:
    return {"model": {"weight": torch.arange(values, dtype=torch.float32)}, "iteration": values}


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        last = disk / "run" / "last.pt"
        save_checkpoint(payload(1000), last)  # about 5 kB
        before = last.read_bytes()
        with pytest.raises(CheckpointError) as info:
            save_checkpoint(payload(200_000), last)  # about 800 kB
        assert str(info.value) == f"no space left on {last.parent}: last.pt was not saved (the previous one is intact)"
        assert last.read_bytes() == before and os.listdir(last.parent) == ["last.pt"]
        assert load_checkpoint(last)["iteration"] == 1000
        with pytest.raises(CheckpointError, match=r"best\.pt was not saved \(nothing was written\)"):
            save_checkpoint(payload(200_000), disk / "run" / "best.pt")
        assert os.listdir(last.parent) == ["last.pt"]


def test_a_full_disk_patched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no small file system can be mounted: the file's writes fail with ENOSPC."""
    last = tmp_path / "last.pt"
    save_checkpoint(payload(10), last)
    before = last.read_bytes()

    def full(self: checkpoint_module._RecordingFile, data: object) -> int:
        self.error = OSError(errno.ENOSPC, "No space left on device")
        raise self.error

    monkeypatch.setattr(checkpoint_module._RecordingFile, "write", full)
    with pytest.raises(CheckpointError, match=rf"^no space left on {tmp_path}: last\.pt was not saved"):
        save_checkpoint(payload(10), last)
    assert last.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


def test_an_interrupted_save_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = tmp_path / "last.pt"
    save_checkpoint(payload(10), last)
    before = last.read_bytes()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(payload(10), last)
    assert last.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


def test_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match=r"^cannot write .*a-file/last\.pt: "):
        save_checkpoint(payload(10), tmp_path / "a-file" / "last.pt")
