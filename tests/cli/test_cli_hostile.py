"""Hostile inputs end to end: bad samples and malformed files in `train`/`evaluate` (one line naming the
sample, or --skip-bad listing it), image names that would write outside --save-predictions, predict
outputs that would mix with the inputs, and decompression-bomb PNGs. Every hostile file is built here.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import make_synthetic, one_error_line, train_tiny
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.hdf5 import encode_mask

runner = CliRunner()
EVAL = ("--device", "cpu", "-j", "0", "--no-progress")
TRAIN = ("-m", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "--device", "cpu",
         "--no-progress", "--iters", "2")  # fmt: skip
SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dataset, checkpoint): synthetic 8 train / 6 val at 32 px, encnet_tiny after 2 iterations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cli_hostile")
    data = make_synthetic(folder, 8, 6, size=SIZE)
    torch.manual_seed(0)
    yield data, train_tiny(data, folder)
    torch.set_num_threads(threads)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def no_traceback(result) -> None:
    assert "Traceback" not in result.output and "DataLoader worker" not in result.output, result.output


def damaged(data: Path, folder: Path, change: Callable[[h5py.File], None], name: str = "damaged.h5") -> Path:
    path = folder / name
    shutil.copy(data, path)
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


def set_mask(split: str, index: int, labels: np.ndarray) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        handle[f"{split}/masks"][index] = np.frombuffer(encode_mask(labels), np.uint8)

    return change


def names(data: Path, split: str) -> list[str]:
    with h5py.File(data, "r") as handle:
        return list(handle[split]["names"].asstr()[:])


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- evaluate


def test_evaluate_label_above_class_count_stops_or_is_skipped(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    bad = damaged(data, tmp_path, set_mask("val", 2, np.full((SIZE, SIZE), 20, np.uint8)))
    name = names(data, "val")[2]
    line = one_error_line(run("evaluate", ckpt, bad, *EVAL))
    assert f"split 'val' sample 2 ('{name}'): the mask has label 20, but the dataset has 14 classes" in line
    assert "--skip-bad" in line
    result = run("evaluate", ckpt, bad, *EVAL, "--skip-bad", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 5 and [(s["split"], s["index"], s["name"]) for s in report["skipped"]] == [("val", 2, name)]
    with h5py.File(data, "r") as handle:  # the pixels scored are those of the other five images
        pixels = handle["val/class_pixels"][...]
    assert report["pixels"] == int(pixels.sum() - pixels[2].sum())
    table = run("evaluate", ckpt, bad, *EVAL, "--skip-bad")
    assert table.exit_code == 0 and "skipped 1 bad sample, not scored:" in table.stdout
    assert f"split 'val' sample 2 ('{name}'): the mask has label 20" in table.stdout


HOSTILE_CLASS = "\x1b]0;owned\x07\x1b[31mred[bold]x[/]"


def test_evaluate_table_escapes_class_names_and_counts_in_words(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Class names come from the files: evaluate's per-class table shows their terminal codes (OSC, CSI,
    BEL) and rich markup escaped, as `info` does; the title counts "1 image", not "1 images"."""
    from encnet_core.weights.checkpoint import save_checkpoint

    data, ckpt = tiny
    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    payload["classes"] = [HOSTILE_CLASS, *payload["classes"][1:]]
    hostile = tmp_path / "hostile.pt"
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "version", "encnet_version")}, hostile)
    result = run("evaluate", hostile, data, *EVAL, "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout, result.stdout
    row = next(line for line in result.stdout.splitlines() if "owned" in line)
    assert "\\x1b]0;owned\\x07\\x1b[31mred[bold]x[/]" in row, row  # every code visible, the markup as written
    assert "hostile.pt on synthetic.h5/val (1 image, whole image)" in result.stdout


def test_evaluate_undecodable_image_in_a_worker_is_one_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny

    def garbage(handle: h5py.File) -> None:
        handle["val/images"][1] = np.frombuffer(b"\xff\xd8\xff not a jpeg", np.uint8)

    bad = damaged(data, tmp_path, garbage)
    result = run("evaluate", ckpt, bad, "--device", "cpu", "-j", "1", "--no-progress")
    line = one_error_line(result)
    no_traceback(result)
    assert f"split 'val' sample 1 ('{names(data, 'val')[1]}'): the image does not decode" in line


def test_evaluate_mask_of_another_size_is_one_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    bad = damaged(data, tmp_path, set_mask("val", 4, np.zeros((SIZE, SIZE + 8), np.uint8)))
    line = one_error_line(run("evaluate", ckpt, bad, *EVAL))
    assert "split 'val' sample 4" in line and "the mask is 32x40 but the image is 32x32" in line


def test_evaluate_truncated_images_array(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny

    def truncate(handle: h5py.File) -> None:
        handle["val/images"].resize((4,))

    bad = damaged(data, tmp_path, truncate)
    line = one_error_line(run("evaluate", ckpt, bad, *EVAL))
    assert "split 'val' is truncated" in line and f"the first missing is sample 4 '{names(data, 'val')[4]}'" in line
    result = run("evaluate", ckpt, bad, *EVAL, "--skip-bad", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 4 and [s["index"] for s in report["skipped"]] == [4, 5]


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("format_version", "abc", "format_version is 'abc', not an integer"),
        ("format_version", np.array([1, 2]), "format_version is [1, 2], not an integer"),
        ("classes", "sky,road", "'classes' is 'sky,road', not a JSON list"),
    ],
)
def test_evaluate_malformed_metadata_is_one_line(tiny: tuple[Path, Path], tmp_path: Path, attr, value, message) -> None:
    data, ckpt = tiny
    bad = damaged(data, tmp_path, lambda handle: handle.attrs.__setitem__(attr, value))
    result = run("evaluate", ckpt, bad, *EVAL)
    assert message in one_error_line(result)
    no_traceback(result)


def test_evaluate_split_without_labelled_pixels(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny

    def all_ignore(handle: h5py.File) -> None:
        for i in range(6):
            set_mask("val", i, np.full((SIZE, SIZE), 255, np.uint8))(handle)

    bad = damaged(data, tmp_path, all_ignore)
    line = one_error_line(run("evaluate", ckpt, bad, *EVAL))
    assert "the 6 evaluated images of split 'val' have no labelled pixel" in line

    def all_bad(handle: h5py.File) -> None:
        for i in range(6):
            handle["val/images"][i] = np.zeros(4, np.uint8)

    bad = damaged(data, tmp_path, all_bad, "all_bad.h5")
    line = one_error_line(run("evaluate", ckpt, bad, *EVAL, "--skip-bad"))
    assert "all 6 images of split 'val' are bad (skipped)" in line


@pytest.mark.parametrize("hostile", ["../escape", "ABSOLUTE", "sub/../../escape", "..\\escape", "C:escape", ""])
def test_save_predictions_never_writes_outside_the_folder(tiny: tuple[Path, Path], tmp_path: Path, hostile: str) -> None:
    data, ckpt = tiny
    work = tmp_path / "work"
    work.mkdir()
    hostile = str(tmp_path / "abs" / "escape") if hostile == "ABSOLUTE" else hostile
    bad = damaged(data, work, lambda handle: handle["val/names"].__setitem__(3, hostile))
    before = files_under(tmp_path)
    result = run("evaluate", ckpt, bad, *EVAL, "--save-predictions", work / "preds")
    line = one_error_line(result)
    assert f"split 'val' sample 3 is named {hostile!r}" in line and "refuses this name" in line
    assert files_under(tmp_path) == before  # nothing written anywhere, inside or outside the folder


def test_save_predictions_refuses_a_link_out_of_the_folder(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    outside, preds = tmp_path / "outside", tmp_path / "preds"
    outside.mkdir()
    preds.mkdir()
    (preds / "link").symlink_to(outside, target_is_directory=True)
    bad = damaged(data, tmp_path, lambda handle: handle["val/names"].__setitem__(0, "link/x"))
    line = one_error_line(run("evaluate", ckpt, bad, *EVAL, "--save-predictions", preds))
    assert "symbolic link" in line and list(outside.iterdir()) == []


def test_save_predictions_keeps_safe_nested_names(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = tiny
    nested = damaged(data, tmp_path, lambda handle: handle["val/names"].__setitem__(0, "sub/dir/first"))
    result = run("evaluate", ckpt, nested, *EVAL, "--save-predictions", tmp_path / "preds", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert sorted(files_under(tmp_path / "preds")) == sorted(["sub/dir/first.png", f"{names(data, 'val')[1]}.png"])


# ---------------------------------------------------------------------------------------------- train


def test_train_label_above_class_count(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny
    bad = damaged(data, tmp_path, set_mask("train", 5, np.full((SIZE, SIZE), 30, np.uint8)))
    name = names(data, "train")[5]
    result = run("train", bad, *TRAIN, "-j", "0", "-o", tmp_path / "run")
    assert result.exit_code == 1
    no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"split 'train' sample 5 ('{name}'): the mask has label 30" in errors[0]


def test_train_skip_bad_with_a_worker_lists_the_sample(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = tiny

    def two_bad(handle: h5py.File) -> None:
        handle["train/images"][5] = np.frombuffer(b"broken", np.uint8)
        set_mask("val", 1, np.full((SIZE, SIZE), 99, np.uint8))(handle)

    bad = damaged(data, tmp_path, two_bad)
    run_dir = tmp_path / "run"
    result = run("train", bad, *TRAIN, "-j", "1", "-o", run_dir, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    no_traceback(result)
    summary = json.loads(result.stdout)
    assert summary["iteration"] == 2
    listed = [(s["split"], s["index"], s["name"]) for s in summary["skipped"]]
    assert listed == [("train", 5, names(data, "train")[5]), ("val", 1, names(data, "val")[1])]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["type"] == "skipped"]
    assert [(r["split"], r["index"]) for r in skipped] == [("train", 5), ("val", 1)]
    assert "does not decode" in skipped[0]["reason"] and "label 99" in skipped[1]["reason"]
    assert "skipped bad sample: split 'train' sample 5" in result.stderr


@pytest.mark.parametrize("split", ["train", "val"])
def test_train_without_labelled_pixels(tiny: tuple[Path, Path], tmp_path: Path, split: str) -> None:
    data, _ = tiny

    def no_labels(handle: h5py.File) -> None:
        handle[f"{split}/class_pixels"][...] = 0

    bad = damaged(data, tmp_path, no_labels)
    result = run("train", bad, *TRAIN, "-j", "0", "-o", tmp_path / "run")
    assert result.exit_code == 1 and f"the {split} split has no labelled pixel" in result.output
    no_traceback(result)
    assert not (tmp_path / "run").exists()  # refused before the run folder is written


# ---------------------------------------------------------------------------------------------- predict


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / "nested" / "b.jpg")
    return root


PREDICT = ("--device", "cpu", "--no-progress")


def test_predict_refuses_outputs_among_the_inputs(tiny: tuple[Path, Path], photos: Path, tmp_path: Path) -> None:
    _, ckpt = tiny
    before = files_under(tmp_path)
    (tmp_path / "link").symlink_to(photos, target_is_directory=True)
    cases = [
        ((photos,), photos, "is the input folder"),
        ((photos,), tmp_path / "link", "is the input folder"),  # the same folder through a link
        ((photos,), photos / "nested" / "..", "is the input folder"),
        ((photos,), tmp_path, "contains the input folder"),
        ((photos / "nested",), photos, "contains the input folder"),
        ((photos / "a.png",), photos, "is the folder of the input"),
    ]
    for inputs, output, message in cases:
        line = one_error_line(run("predict", ckpt, *inputs, "-o", output, "--overwrite", *PREDICT))
        assert message in line and "choose" in line, (inputs, output)
    assert files_under(tmp_path) == before  # inputs untouched, nothing written


def test_predict_never_reads_its_own_output_folder(tiny: tuple[Path, Path], photos: Path) -> None:
    _, ckpt = tiny
    out = photos / "out"
    inputs = files_under(photos)
    first = run("predict", ckpt, photos, "-o", out, *PREDICT)
    assert first.exit_code == 0 and "2 images segmented, 0 failed" in first.stdout, first.output
    second = run("predict", ckpt, photos, "-o", out, "--overwrite", *PREDICT)
    assert second.exit_code == 0 and "2 images segmented, 0 failed" in second.stdout, second.output
    assert sorted(json.loads((out / "predictions.json").read_text())["images"]) == ["a", "nested/b"]
    assert sorted(files_under(out)) == ["a.png", "nested/b.png", "predictions.json"]
    assert {k: v for k, v in files_under(photos).items() if not k.startswith("out/")} == inputs


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height 1-bit pixels (PIL refuses or warns before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_predict_skips_decompression_bombs(tiny: tuple[Path, Path], photos: Path, tmp_path: Path) -> None:
    _, ckpt = tiny
    bomb_png(photos / "bomb.png", 20_000, 20_000)  # 400 M pixels: over twice PIL's limit (an error)
    bomb_png(photos / "nested" / "big.png", 10_000, 10_000)  # 100 M pixels: over the limit (a warning)
    out = tmp_path / "out"
    result = run("predict", ckpt, photos, "-o", out, *PREDICT)
    assert result.exit_code == 1
    no_traceback(result)
    assert "2 images segmented, 2 failed" in result.stdout
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert stderr.count("skipped ") == 2 and stderr.count("could be decompression bomb") == 2, result.stderr
    assert sorted(files_under(out)) == ["a.png", "nested/b.png", "predictions.json"]
    failed = json.loads((out / "predictions.json").read_text())["failed"]
    assert sorted(Path(f["file"]).name for f in failed) == ["big.png", "bomb.png"]
    alone = run("predict", ckpt, photos / "bomb.png", "-o", tmp_path / "alone", *PREDICT)  # named explicitly
    assert alone.exit_code == 1 and "0 images segmented, 1 failed" in alone.stdout
    no_traceback(alone)
    assert "exceeds limit" in alone.stderr


def test_predict_explicit_unreadable_file(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = tiny
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = run("predict", ckpt, empty, "-o", tmp_path / "out", *PREDICT)
    assert result.exit_code == 1 and "0 images segmented, 1 failed" in result.stdout
    no_traceback(result)
    line = one_error_line(run("predict", ckpt, fifo, "-o", tmp_path / "out2", *PREDICT))
    assert "is neither a file nor a folder" in line
