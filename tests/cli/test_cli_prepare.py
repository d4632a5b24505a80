"""`encnet prepare`, `encnet info` and `encnet targets` end to end through typer's CliRunner."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from helpers import one_error_line, usage_error_line
from PIL import Image
from typer.testing import CliRunner

from encnet_cli._output import safe_text
from encnet_cli.main import app
from encnet_core.data import prepare as prepare_module
from encnet_core.data.hdf5 import HDF5Writer, Sample, class_pixel_counts, encode_mask
from encnet_core.errors import DataError


def _data_fixtures() -> ModuleType:
    """tests/data/conftest.py (archive builders, loopback server) as a module of its own.

    Its fixtures only reach tests under tests/data, and every conftest.py outside a package is
    imported by pytest as "conftest": load it by path under its own name instead.
    """
    name = "encnet_tests_data_fixtures"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "data" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fx = _data_fixtures()
Built, Server = fx.Built, fx.Server
http_server, voc_tar, ade_zip = fx.http_server, fx.voc_tar, fx.ade_zip  # the shared fixtures

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])




def decoded_masks(path: Path, split: str) -> list[np.ndarray]:
    with h5py.File(path, "r") as handle:
        masks = []
        for raw in handle[split]["masks"][:]:
            with Image.open(io.BytesIO(raw.tobytes())) as img:
                masks.append(np.asarray(img))
        return masks


# ----------------------------------------------------------------------------- synthetic, info, targets


@pytest.fixture(scope="module")
def synthetic_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("synthetic")
    out = work / "syn.h5"
    result = invoke(
        "prepare", "synthetic", "--out", out, "--num-train", 12, "--num-val", 4, "--size", 48,
        "--root", work / "root", "--workers", 1, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "12" in result.stdout
    return out


def test_info_json_reports_counts_and_class_statistics(synthetic_h5: Path) -> None:
    result = invoke("info", synthetic_h5, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["dataset"] == "synthetic" and stats["ignore_index"] == 255 and stats["min_pixels"] == 1
    assert {split: entry["images"] for split, entry in stats["splits"].items()} == {"train": 12, "val": 4}
    for split, entry in stats["splits"].items():
        masks = decoded_masks(synthetic_h5, split)
        labelled = sum(int((m != 255).sum()) for m in masks)
        assert entry["labelled"] is True
        assert entry["labelled_pixel_fraction"] == pytest.approx(labelled / sum(m.size for m in masks))
        rows = entry["classes"]
        assert len(rows) == stats["num_classes"]
        assert sum(row["pixel_share"] for row in rows) == pytest.approx(1.0)
        for row in rows:
            c = row["index"]
            assert row["pixel_share"] == pytest.approx(sum(int((m == c).sum()) for m in masks) / labelled)
            assert row["image_fraction"] == pytest.approx(np.mean([(m == c).any() for m in masks]))


def test_targets_recomputes_se_targets_with_min_pixels(synthetic_h5: Path, tmp_path: Path) -> None:
    path = tmp_path / "copy.h5"
    shutil.copy(synthetic_h5, path)
    with h5py.File(path, "r") as handle:
        before = {split: handle[split]["se_targets"][:] for split in handle}

    result = invoke("targets", path, "--min-pixels", 50, "--json", "--no-progress")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["updated"] == {"train": 12, "val": 4} and report["min_pixels"] == 50
    changed = 0
    with h5py.File(path, "r") as handle:
        assert handle.attrs["min_pixels"] == 50
        for split in ("train", "val"):
            pixels = handle[split]["class_pixels"][:]
            counts = [
                [int((m == c).sum()) for c in range(pixels.shape[1])] for m in decoded_masks(path, split)
            ]
            assert pixels.tolist() == counts
            np.testing.assert_array_equal(handle[split]["se_targets"][:], (pixels >= 50).astype(np.uint8))
            changed += int((handle[split]["se_targets"][:] != before[split]).sum())
    assert changed > 0  # some classes cover 1..49 pixels: the threshold made a difference


# ----------------------------------------------------------------------------- real layouts


def test_prepare_voc_from_a_local_archive_without_download(voc_tar: Built, tmp_path: Path) -> None:
    out, root = tmp_path / "voc.h5", tmp_path / "cache"
    result = invoke(
        "prepare", "voc", "--archive", voc_tar.path, "--no-download", "--root", root, "--out", out,
        "--checksum", f"{voc_tar.name}=md5:{voc_tar.md5}", "--workers", 1, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"train": 4, "val": 3} and summary["skipped"] == []
    assert "split 'train' has 4 images, the reference has 1464" in summary["warnings"]
    for split, ids in voc_tar.layout.splits.items():
        fx.assert_split_matches(out, split, ids, voc_tar.layout.images, voc_tar.layout.labels, 21)
    assert list(root.iterdir()) == []  # nothing downloaded or copied


def test_prepare_ade20k_from_a_url_override(http_server: Server, ade_zip: Built, tmp_path: Path) -> None:
    url = http_server.serve(ade_zip.path)
    out = tmp_path / "ade.h5"
    result = invoke(
        "prepare", "ade20k", "--url", f"{ade_zip.name}={url}", "--checksum", f"{ade_zip.name}=md5:{ade_zip.md5}",
        "--root", tmp_path / "cache", "--out", out, "--workers", 1, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for split, ids in ade_zip.layout.splits.items():
        fx.assert_split_matches(out, split, ids, ade_zip.layout.images, ade_zip.layout.labels, 150)
    assert (tmp_path / "cache" / ade_zip.name).read_bytes() == ade_zip.path.read_bytes()


def test_official_checksum_mismatch_is_one_line(http_server: Server, ade_zip: Built, tmp_path: Path) -> None:
    url = http_server.serve(ade_zip.path)
    out = tmp_path / "ade.h5"
    result = invoke(
        "prepare",
        "ade20k",
        "--url",
        f"{ade_zip.name}={url}",
        "--root",
        tmp_path / "cache",
        "--out",
        out,
        "--no-progress",
    )
    line = one_error_line(result)
    assert "7328b3957e407ddae1d3cbf487f149ef" in line and ade_zip.md5 in line and "--checksum" in line
    assert not out.exists() and list((tmp_path / "cache").iterdir()) == []


# ----------------------------------------------------------------------------- user errors


def test_bad_checksum_syntax_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "voc.h5"
    result = invoke(
        "prepare", "voc", "--out", out, "--checksum", "VOCtrainval_11-May-2012.tar=6cd6e144", "--no-download"
    )
    assert "bad --checksum value" in one_error_line(result)
    assert not out.exists()


def test_folder_options_are_refused_for_other_sources(tmp_path: Path) -> None:
    """Each source takes only its own options: the parser refuses another's as unknown (exit 2)."""
    result = invoke("prepare", "voc", "--out", tmp_path / "voc.h5", "--images", tmp_path)
    assert "No such option: --images" in usage_error_line(result)
    assert "encnet prepare voc --help" in usage_error_line(result)


def test_prepare_help_lists_each_source_on_one_line() -> None:
    from encnet_cli.prepare import COMMANDS
    from encnet_core.choices import SOURCES

    assert tuple(COMMANDS) == SOURCES
    output = invoke("prepare", "--help").output
    assert "Usage: encnet prepare SOURCE [OPTIONS]" in output
    for source in SOURCES:
        rows = [line for line in output.splitlines() if line.startswith(f"│ {source} ")]
        assert len(rows) == 1, (source, output)
    assert invoke("prepare", "--help").exit_code == 0


SHARED = {"--out", "--root", "--url", "--mirror", "--archive", "--download", "--checksum", "--verify", "--timeout",
          "--max-member-size", "--max-ratio", "--workers", "--skip-bad", "--overwrite", "--json", "--progress"}  # fmt: skip


@pytest.mark.parametrize(
    ("source", "own"),
    [
        ("voc", {"--strict", "--min-pixels"}),
        ("voc-aug", {"--strict", "--min-pixels"}),
        ("pcontext", {"--labels", "--strict", "--min-pixels"}),
        ("ade20k", {"--strict", "--min-pixels"}),
        ("folder", {"--images", "--masks", "--classes", "--val-fraction", "--seed", "--binary", "--reduce-zero-label", "--min-pixels"}),
        ("synthetic", {"--num-train", "--num-val", "--size", "--task", "--layout", "--seed", "--min-pixels"}),
        ("cifar10", {"--strict"}),
        ("coco", {"--strict", "--min-pixels"}),
    ],
)
def test_each_source_takes_its_own_options_and_the_shared_ones(source: str, own: set[str]) -> None:
    import typer

    command = typer.main.get_command(app).commands["prepare"].commands[source]
    assert {param.opts[0] for param in command.params} == SHARED | own
    assert command.params[0].opts[0] == "--out"  # then the source's own options, then the shared ones


def test_info_on_a_file_that_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("just some text\n")
    assert "is not a readable HDF5 file" in one_error_line(invoke("info", path))
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["x"] = np.zeros(3)
    assert "is not an encnet dataset" in one_error_line(invoke("info", tmp_path / "other.h5", "--json"))


# ----------------------------------------------------------------------------- hostile input


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def one_line(result) -> str:
    """The one error line (after any warnings), with rich's wrapping undone; no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and result.output.rstrip().endswith(lines[0].rstrip()), result.output
    return lines[0].rstrip()


SYNTHETIC = ("prepare", "synthetic", "--num-train", 3, "--num-val", 2, "--size", 32, "--workers", 1, "--no-progress")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--size", 0), "synthetic images must be at least 32 and at most 1024 pixels wide, got 0"),
        (("--size", 100_000), "at most 1024 pixels wide, got 100000"),
        (("--workers", -1), "--workers must be 0 (one per core) or more, got -1"),
        (("--num-train", -1), "needs at least 1 train and 1 val image, got -1 and 2"),
        (("--seed", -1), "seed must be 0 or more, got -1"),
        (("--timeout", 0), "--timeout must be a number of seconds above 0, got 0.0"),
        (("--timeout", "nan"), "--timeout must be a number of seconds above 0, got nan"),
        (("--max-ratio", 0.5), "--max-ratio must be at least 1, got 0.5"),
        (("--max-member-size", 0), "--max-member-size must be at least 1 (MiB), got 0"),
        (("--min-pixels", 0), "--min-pixels must be at least 1"),
        (("--mirror", "mirror.example/x"), "bad --mirror value 'mirror.example/x'"),
        (("--layout", "far", "--size", 200), "synthetic far images must be at least 256 and at most 1024 pixels wide, got 200"),
    ],
)
def test_bad_prepare_inputs_are_one_line_before_any_work(tmp_path: Path, args: tuple, message: str) -> None:
    root, out = tmp_path / "root", tmp_path / "out" / "syn.h5"
    # later options win: each case overrides one of the valid SYNTHETIC values
    text = one_line(invoke(*SYNTHETIC, "--root", root, "--out", out, *args))
    assert message in text
    assert not root.exists() and files_under(tmp_path) == []


def test_bad_option_types_are_usage_errors(tmp_path: Path) -> None:
    result = invoke(*SYNTHETIC, "--out", tmp_path / "syn.h5", "--size", "big")
    assert result.exit_code == 2 and "Traceback" not in result.output and "Invalid value for '--size'" in result.output
    assert files_under(tmp_path) == []


def test_bad_out_paths_are_one_line_before_any_work(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = tmp_path / "existing"
    folder.mkdir()
    assert f"--out {folder} is a folder" in one_line(invoke(*SYNTHETIC, "--root", root, "--out", folder, "--overwrite"))
    (tmp_path / "a-file").write_text("x")
    text = one_line(invoke(*SYNTHETIC, "--root", root, "--out", tmp_path / "a-file" / "syn.h5"))
    assert "a-file is a file, not a folder" in text
    assert not root.exists()
    with_progress = invoke("prepare", "synthetic", "--root", root, "--out", folder)  # the progress display is on
    assert with_progress.exit_code == 1 and with_progress.output.startswith("error: --out ")  # not even a blank line


def test_sigterm_stops_prepare_and_removes_its_temp_file(tmp_path: Path) -> None:
    """A real process, a real signal: exit 143 and one line, nothing left beside --out."""
    out, root = tmp_path / "data" / "syn.h5", tmp_path / "root"
    slow = (
        "import sys, time\n"
        "import encnet_core.data.prepare as p\n"
        "real = p.convert_item\n"
        "p.convert_item = lambda *a: (time.sleep(0.05), real(*a))[1]\n"
        "from encnet_cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["prepare", "synthetic", "--out", out, "--root", root, "--num-train", 300, "--num-val", 2, "--size", 32,
            "--workers", 1, "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", slow, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.parent.glob(".syn.h5.*.tmp")):  # conversion has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert " ".join(stderr.split()) == f"interrupted by SIGTERM: {out} was not written"
    assert files_under(out.parent) == []


def test_a_zip_bomb_is_one_line(tmp_path: Path) -> None:
    layout = fx.ade_layout()
    name = f"ADEChallengeData2016/images/training/{fx.ADE_TRAIN[0]}.jpg"
    layout.members[name] += bytes(40 << 20)
    bomb = fx.write_zip(tmp_path / "in" / fx.ADE_ZIP, layout).path
    base = ("prepare", "ade20k", "--archive", bomb, "--no-verify", "--root", tmp_path / "root", "--workers", 1,
            "--no-progress")  # fmt: skip
    text = one_line(invoke(*base, "--out", tmp_path / "ade.h5"))
    assert f"{bomb}: expands to at least 40.0 MiB" in text and "decompression bomb" in text and "--max-ratio" in text
    text = one_line(invoke(*base, "--out", tmp_path / "ade.h5", "--max-ratio", 100_000, "--max-member-size", 16))
    assert f"member '{name}' is 40.0 MiB, more than the 16.0 MiB allowed" in text and "--skip-bad" in text
    assert not (tmp_path / "ade.h5").exists()
    result = invoke(*base, "--out", tmp_path / "ade.h5", "--max-ratio", 100_000, "--max-member-size", 16,
                    "--skip-bad", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"] == {"train": len(fx.ADE_TRAIN) - 1, "val": len(fx.ADE_VAL)}


def test_a_truncated_download_without_checksum_is_not_cached(
    http_server: Server, ade_zip: Built, tmp_path: Path
) -> None:
    data = ade_zip.path.read_bytes()
    http_server.state.files["/mirror/" + ade_zip.name] = data[: len(data) // 2]
    url = http_server.url("/mirror/" + ade_zip.name)
    root, out = tmp_path / "root", tmp_path / "ade.h5"
    base = ("prepare", "ade20k", "--url", f"{ade_zip.name}={url}", "--no-verify", "--root", root, "--out", out,
            "--workers", 1, "--no-progress")  # fmt: skip
    text = one_line(invoke(*base))
    assert f"the file downloaded from {url} was refused, so it was deleted" in text
    assert files_under(root) == [] and not out.exists()
    http_server.state.files["/mirror/" + ade_zip.name] = data  # the next run downloads afresh and succeeds
    assert invoke(*base).exit_code == 0 and (root / ade_zip.name).read_bytes() == data
    (root / ade_zip.name).write_bytes(data[: len(data) // 2])  # a damaged file already in the cache
    text = one_line(invoke(*base, "--overwrite"))
    assert f"{root / ade_zip.name}: not a tar or zip archive" in text and "delete it and run again" in text


def test_timeout_reaches_the_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fetch(*args, **kwargs):
        seen.append(kwargs["timeout"])
        raise DataError("stopped here")

    monkeypatch.setattr(prepare_module, "fetch", fetch)
    text = one_line(invoke("prepare", "voc", "--root", tmp_path, "--out", tmp_path / "voc.h5", "--timeout", 2.5))
    assert text == "error: stopped here" and seen == [2.5]


# ----------------------------------------------------------------------------- names that try to drive the terminal

HOSTILE = ["\x1b]0;pwned\x07title", "\x1b[31mred\x1b[0m", "[bold]markup[/]", "rtl\u202eevil", "[/oops]"]


def test_info_and_targets_escape_class_and_dataset_names(tmp_path: Path) -> None:
    path = tmp_path / "hostile.h5"
    labels = np.arange(len(HOSTILE), dtype=np.uint8).repeat(4).reshape(4, len(HOSTILE))  # every class present
    sample = Sample("x", fx.encode(fx.random_image(np.random.default_rng(0), 4, 5)), 4, 5, encode_mask(labels),
                    class_pixel_counts(labels, len(HOSTILE)))  # fmt: skip
    with HDF5Writer(path, "set\x1b[2J", HOSTILE, np.zeros((len(HOSTILE), 3), np.uint8)) as writer:
        writer.begin_split("train", 1, labelled=True)
        writer.add(sample)
    for args in (("info", path), ("targets", path, "--no-progress")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
        shown = "".join(result.output.split())  # undo the table's wrapping
        for name in HOSTILE + ["set\x1b[2J"]:
            assert safe_text(name, markup=False) in shown  # shown, escaped, markup as written
    assert json.loads(invoke("info", path, "--json").stdout)["dataset"] == "set\x1b[2J"  # JSON keeps the name


def test_prepare_escapes_file_names_in_its_warnings(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    for folder in (images, masks):
        folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("good", "\x1b[31mbad\x07"):
        (images / f"{name}.jpg").write_bytes(fx.encode(fx.random_image(rng, 24, 30)) if name == "good" else b"junk")
        (masks / f"{name}.png").write_bytes(fx.gray_png(np.zeros((24, 30), np.uint8)))
    (tmp_path / "classes.txt").write_text("background\n")
    result = invoke(
        "prepare", "folder", "--images", images, "--masks", masks, "--classes", tmp_path / "classes.txt",
        "--val-fraction", 0, "--skip-bad", "--out", tmp_path / "mine.h5", "--root", tmp_path / "root", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "skipped" in result.output and "\\x1b[31mbad\\x07.jpg" in "".join(result.output.split())


def test_layout_only_applies_to_synthetic(tmp_path: Path) -> None:
    result = invoke("prepare", "voc", "--layout", "far", "--root", tmp_path / "root", "--out", tmp_path / "voc.h5")
    assert "No such option: --layout" in usage_error_line(result)
    assert files_under(tmp_path) == []
