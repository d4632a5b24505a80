"""`encnet prepare`, `encnet info` and `encnet targets` end to end through typer's CliRunner."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from helpers import one_error_line
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app


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
    result = invoke("prepare", "voc", "--out", tmp_path / "voc.h5", "--images", tmp_path)
    assert "--images only apply to `prepare folder`" in one_error_line(result)


def test_info_on_a_file_that_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("just some text\n")
    assert "is not a readable HDF5 file" in one_error_line(invoke("info", path))
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["x"] = np.zeros(3)
    assert "is not an encnet dataset" in one_error_line(invoke("info", tmp_path / "other.h5", "--json"))
