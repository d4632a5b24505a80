"""`encnet prepare folder`'s label checks and `encnet info`'s empty classes, end to end: each error is
one line and leaves no file; the 0/255 trap of mmsegmentation issues 1609, 1714 and 964."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    """The one error line (after any warnings), with rich's wrapping undone; no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and result.output.rstrip().endswith(lines[0].rstrip()), result.output
    return lines[0].rstrip()


def write_folder(tmp_path: Path, masks: dict[str, np.ndarray], classes: str) -> list[str]:
    """images/NAME.png (grey) and masks/NAME.png (L mode, or RGB for (H, W, 3)); the prepare folder arguments."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir(exist_ok=True)
    for name, mask in masks.items():
        Image.fromarray(np.full((24, 30, 3), 90, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    (tmp_path / "classes.txt").write_text(classes)
    return ["prepare", "folder", "--images", tmp_path / "images", "--masks", tmp_path / "masks",
            "--classes", tmp_path / "classes.txt", "--val-fraction", 0.25, "--workers", 1, "--no-progress",
            "--root", tmp_path / "root"]  # fmt: skip


def h5_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".h5" in p.name)  # the result or a temp file


def test_twelve_0_255_masks_stop_then_binary_gives_object_pixels(tmp_path: Path) -> None:
    masks = {}
    for i in range(12):
        mask = np.zeros((24, 30), np.uint8)
        mask[4:16, 2 + i : 14 + i] = 255
        masks[f"m{i:02d}"] = mask
    args = write_folder(tmp_path, masks, "background\nobject\n")
    out = tmp_path / "mine.h5"

    line = one_line(invoke(*args, "--out", out))
    assert line.startswith("error: every mask holds only 0 and 255 (e.g. ") and line.endswith(
        "and the class list has 2 classes (background, object), but 255 is the ignore value, so 'object' would "
        "get no pixel: pass --binary to read 255 as class 1 (object)"
    )
    assert h5_files(tmp_path) == []

    result = invoke(*args, "--binary", "--out", out)
    assert result.exit_code == 0, result.output
    assert "no pixel" not in result.output
    stats = json.loads(invoke("info", out, "--json").stdout)
    share = 144 / (24 * 30)  # every mask: 12 x 12 object pixels
    for split, entry in stats["splits"].items():
        assert entry["classes"][1]["name"] == "object", split
        assert entry["classes"][1]["pixel_share"] == share and entry["empty_classes"] == []
    shown = invoke("info", out)
    assert shown.exit_code == 0 and "20.00%" in shown.stdout and "with no pixel" not in shown.stdout


def test_labels_from_1_stop_then_reduce_zero_label_works(tmp_path: Path) -> None:
    masks = {f"m{i}": np.full((24, 30), 1 + i % 3, np.uint8) for i in range(6)}
    args = write_folder(tmp_path, masks, "road\ncar\nsky\n")
    out = tmp_path / "mine.h5"
    line = one_line(invoke(*args, "--out", out))
    assert "the labels seem to start at 1 (values 1..3, no 0 in the" in line
    assert line.endswith("pass --reduce-zero-label to read v as class v-1 and 0 as ignore")
    assert h5_files(tmp_path) == []
    result = invoke(*args, "--reduce-zero-label", "--out", out, "--json", "-")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["empty_classes"] == [] and sum(summary["counts"].values()) == 6


def test_colour_masks_with_and_without_class_colours(tmp_path: Path) -> None:
    rgb = np.zeros((24, 30, 3), np.uint8)
    rgb[:, 15:] = (250, 200, 10)
    args = write_folder(tmp_path, {f"m{i}": rgb for i in range(4)}, "background\nflower\n")
    out = tmp_path / "mine.h5"
    line = one_line(invoke(*args, "--out", out))
    assert line.endswith(
        "mask is a colour (RGB) image and its colour (250, 200, 10) at (0, 15) is not one of the default class "
        "colours (the class file gives none): add 'name R G B' lines to the class file, or convert the masks to "
        "indexed (P or L) PNGs whose values are the labels (pass --skip-bad to skip such files)"
    )
    assert h5_files(tmp_path) == []
    (tmp_path / "classes.txt").write_text("background 0 0 0\nflower 250 200 10\n")
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, result.output
    stats = json.loads(invoke("info", out, "--json").stdout)
    assert [e["classes"][1]["pixel_share"] for e in stats["splits"].values()] == [0.5, 0.5]


def test_a_class_never_painted_warns_and_info_flags_it(tmp_path: Path) -> None:
    masks = {f"m{i}": np.full((24, 30), i % 2, np.uint8) for i in range(8)}
    masks["m0"][0, :] = 2  # 'dog' only in m0, which the seeded split puts in one split only
    args = write_folder(tmp_path, masks, "background\ncat\ndog\nbird\n")
    out = tmp_path / "mine.h5"
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, result.output
    assert (
        "1 of the 4 classes have no pixel in any split: bird (training never sees them; check the class list "
        "and the masks)" in " ".join(result.output.split())
    )
    stats = json.loads(invoke("info", out, "--json").stdout)
    dog_split = next(split for split, e in stats["splits"].items() if e["classes"][2]["pixel_share"] > 0)
    for split, entry in stats["splits"].items():
        assert entry["empty_classes"] == (["bird"] if split == dog_split else ["dog", "bird"])
    shown = " ".join(invoke("info", out).stdout.split())
    other = "val" if dog_split == "train" else "train"
    assert f"{dog_split}: 1 class with no pixel: bird" in shown
    assert f"{other}: 2 classes with no pixel: dog, bird" in shown


def test_binary_with_three_classes_is_one_line_before_any_work(tmp_path: Path) -> None:
    args = write_folder(tmp_path, {"m": np.zeros((24, 30), np.uint8)}, "a\nb\nc\n")
    line = one_line(invoke(*args, "--binary", "--out", tmp_path / "mine.h5"))
    assert line == f"error: --binary needs a class list of 2 classes (background, object); {tmp_path}/classes.txt lists 3"
    assert h5_files(tmp_path) == []
