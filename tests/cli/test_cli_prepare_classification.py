"""`encnet prepare cifar10` and `encnet prepare synthetic --task classification` end to end through the CLI.

The CIFAR-10 archive is a small fake in the real layout of ``cifar-10-binary.tar.gz``
(``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``,
``batches.meta.txt``, ``readme.html``), served from a loopback HTTP server. The record format is typed
here from the dataset's page, not imported from encnet_core: 1 label byte, then 1024 red, 1024 green
and 1024 blue bytes of a 32 x 32 image, row-major; every stored image is compared pixel for pixel
with that independent decoding of the records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from helpers import one_error_line, usage_error_line
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.dataset import HDF5ClassificationDataset
from encnet_core.data.hdf5 import read_info
from encnet_core.data.sources import synthetic_cls
from encnet_core.data.synthetic import generate_indexed_scene


def _data_fixtures() -> ModuleType:
    """tests/data/conftest.py (archive builders, loopback server), loaded by path as test_cli_prepare.py does."""
    name = "encnet_tests_data_fixtures"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "data" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fx = _data_fixtures()
http_server = fx.http_server

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one error line, after any warnings (split sizes differ from the reference); no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert all(line.startswith("WARNING ") for line in lines[:-1]), result.output
    return errors[0]


# ----------------------------------------------------------------------------- the fake CIFAR-10 archive

ARCHIVE = "cifar-10-binary.tar.gz"
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # the dataset page's md5 of the binary version
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-bin"
TRAIN_COUNTS = (3, 4, 2, 3, 4)  # records of data_batch_1..5: 16 train images (enough for the process pool)
VAL_COUNT = 5
RECORD = 3073


def records(seed: int, labels: list[int]) -> bytes:
    """CIFAR records: each one label byte and 3072 random pixel bytes."""
    rng = np.random.default_rng(seed)
    return b"".join(bytes([label]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for label in labels)


def decode_records(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The independent decoding: (N, 32, 32, 3) uint8 images and (N,) labels."""
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    return rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rows[:, 0]


def cifar_members(seed: int = 0) -> dict[str, bytes]:
    members = {f"{FOLDER}/batches.meta.txt": ("\n".join(CIFAR_CLASSES) + "\n\n").encode()}  # the real one ends in a blank line
    for i, count in enumerate(TRAIN_COUNTS, start=1):
        members[f"{FOLDER}/data_batch_{i}.bin"] = records(seed + i, [(i * 3 + k) % 10 for k in range(count)])
    members[f"{FOLDER}/test_batch.bin"] = records(seed + 9, [(7 * k) % 10 for k in range(VAL_COUNT)])
    members[f"{FOLDER}/readme.html"] = b"<html>not used</html>"
    return members


def write_cifar(path: Path, members: dict[str, bytes]):
    return fx.write_tar(path, fx.Layout(members, dirs=[FOLDER]), mode="w:gz")


@pytest.fixture
def cifar(tmp_path: Path):
    return write_cifar(tmp_path / "in" / ARCHIVE, cifar_members())


def prepare_cifar(server, built, tmp_path: Path, *extra: str | Path, checksum: str | None = "own"):
    url = server.serve(built.path)
    args = ["prepare", "cifar10", "--url", f"{ARCHIVE}={url}", "--root", tmp_path / "cache", "--out", tmp_path / "cifar.h5",
            "--no-progress", *extra]  # fmt: skip
    if checksum == "own":
        args += ["--checksum", f"{ARCHIVE}=md5:{built.md5}"]
    return invoke(*args)


def stored(path: Path, split: str) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    with h5py.File(path) as handle:
        group = handle[split]
        images = [np.asarray(Image.open(io.BytesIO(raw.tobytes())).convert("RGB")) for raw in group["images"][:]]
        return list(group["names"].asstr()[:]), group["labels"][:], images


# ----------------------------------------------------------------------------- cifar10


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_cifar10_decodes_every_record_exactly(http_server, cifar, tmp_path: Path, workers: int) -> None:
    result = prepare_cifar(http_server, cifar, tmp_path, "--workers", workers, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"train": sum(TRAIN_COUNTS), "val": VAL_COUNT} and summary["classes"] == CIFAR_CLASSES
    assert "split 'train' has 16 images, the reference has 50000" in summary["warnings"]
    out = tmp_path / "cifar.h5"
    members = cifar.layout.members
    for split, batches in (("train", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("val", ["test_batch.bin"])):
        images, labels = decode_records(b"".join(members[f"{FOLDER}/{b}"] for b in batches))
        names, stored_labels, stored_images = stored(out, split)
        assert names == [f"{split}_{i:05d}" for i in range(len(labels))]
        assert stored_labels.tolist() == labels.tolist()
        assert len(stored_images) == len(images)
        for got, expected in zip(stored_images, images, strict=True):
            np.testing.assert_array_equal(got, expected)
        dataset = HDF5ClassificationDataset(out, split)
        np.testing.assert_array_equal(dataset[len(labels) - 1][0].permute(1, 2, 0).numpy(), images[-1])
        assert dataset.labels.tolist() == labels.tolist()
    with h5py.File(out) as handle:
        assert handle.attrs["task"] == "classification" and handle.attrs["format_version"] == 2
        assert handle["train/images"][0].tobytes().startswith(b"\x89PNG") and handle["train/sizes"][0].tolist() == [32, 32]
        sources = json.loads(handle.attrs["sources"])
        assert sources["files"][0]["file"] == ARCHIVE and sources["files"][0]["md5"] == cifar.md5
    info = read_info(out)
    assert info.dataset == "cifar10" and info.classes == CIFAR_CLASSES


def test_a_second_run_reuses_the_download_and_the_extraction(http_server, cifar, tmp_path: Path) -> None:
    assert prepare_cifar(http_server, cifar, tmp_path, "--workers", 1).exit_code == 0
    extracted = tmp_path / "cache" / "cifar10" / FOLDER / "data_batch_1.bin"
    before = extracted.stat().st_mtime_ns
    result = prepare_cifar(http_server, cifar, tmp_path, "--workers", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(http_server.state.requests) == 1 and extracted.stat().st_mtime_ns == before


def test_a_dropped_download_resumes(http_server, cifar, tmp_path: Path) -> None:
    http_server.state.drop_after = cifar.path.stat().st_size // 2
    result = prepare_cifar(http_server, cifar, tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert [r[1] for r in http_server.state.requests] == [None, f"bytes={cifar.path.stat().st_size // 2}-"]
    assert (tmp_path / "cache" / ARCHIVE).read_bytes() == cifar.path.read_bytes()


def test_the_official_checksum_is_checked(http_server, cifar, tmp_path: Path) -> None:
    line = error_line(prepare_cifar(http_server, cifar, tmp_path, checksum=None))
    assert OFFICIAL_MD5 in line and cifar.md5 in line and "--checksum" in line
    assert not (tmp_path / "cifar.h5").exists() and list((tmp_path / "cache").iterdir()) == []


def test_a_truncated_record_file_is_one_line(http_server, tmp_path: Path) -> None:
    members = cifar_members()
    members[f"{FOLDER}/data_batch_2.bin"] = members[f"{FOLDER}/data_batch_2.bin"][:-100]
    built = write_cifar(tmp_path / "in" / ARCHIVE, members)
    line = error_line(prepare_cifar(http_server, built, tmp_path, "--workers", 1))
    size = TRAIN_COUNTS[1] * RECORD - 100
    assert f"{FOLDER}/data_batch_2.bin is {size} bytes, not a whole number of 3073-byte records" in line
    assert "the archive is corrupt" in line and not (tmp_path / "cifar.h5").exists()


def test_a_label_outside_the_classes_is_one_line_or_skipped(http_server, tmp_path: Path) -> None:
    members = cifar_members()
    batch = bytearray(members[f"{FOLDER}/data_batch_3.bin"])
    batch[RECORD] = 11  # the label byte of record 1
    members[f"{FOLDER}/data_batch_3.bin"] = bytes(batch)
    built = write_cifar(tmp_path / "in" / ARCHIVE, members)
    line = error_line(prepare_cifar(http_server, built, tmp_path, "--workers", 1))
    assert "data_batch_3.bin, record 1: label 11 outside 0..9 (the 10 classes)" in line and "--skip-bad" in line
    assert not (tmp_path / "cifar.h5").exists()
    result = prepare_cifar(http_server, built, tmp_path, "--workers", 1, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["train"] == sum(TRAIN_COUNTS) - 1
    assert [s["name"] for s in summary["skipped"]] == [f"train_{TRAIN_COUNTS[0] + TRAIN_COUNTS[1] + 1:05d}"]


def test_a_member_escaping_the_folder_is_refused(http_server, tmp_path: Path) -> None:
    members = cifar_members()
    members["../evil.bin"] = b"x"
    built = write_cifar(tmp_path / "in" / ARCHIVE, members)
    line = error_line(prepare_cifar(http_server, built, tmp_path, "--workers", 1))
    assert "unsafe member '../evil.bin' ('..' component); refusing to use this archive" in line
    assert not (tmp_path / "evil.bin").exists() and not (tmp_path / "cache" / "evil.bin").exists()
    assert not (tmp_path / "cifar.h5").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop(f"{FOLDER}/test_batch.bin"), f"no {FOLDER}/test_batch.bin; is this CIFAR-10's binary version"),
        (lambda m: m.pop(f"{FOLDER}/batches.meta.txt"), f"no {FOLDER}/batches.meta.txt found; is this the right archive?"),
        (lambda m: m.__setitem__(f"{FOLDER}/batches.meta.txt", b"cat\ndog\n"), "lists 2 class names (cat, dog); CIFAR-10 has 10 different ones"),
        (lambda m: m.__setitem__(f"{FOLDER}/data_batch_4.bin", b""), "data_batch_4.bin is 0 bytes, not a whole number"),
    ],
)
def test_an_incomplete_archive_is_one_line(http_server, tmp_path: Path, change, message: str) -> None:
    members = cifar_members()
    change(members)
    built = write_cifar(tmp_path / "in" / ARCHIVE, members)
    assert message in error_line(prepare_cifar(http_server, built, tmp_path, "--workers", 1))
    assert not (tmp_path / "cifar.h5").exists()


# ----------------------------------------------------------------------------- synthetic --task classification

SCENE_CLASSES = ["street", "kitchen", "beach"]  # the scene types, in the generator's documented order


def test_synthetic_classification_labels_each_scene_by_its_type(tmp_path: Path) -> None:
    out, root = tmp_path / "syn.h5", tmp_path / "root"
    base = ("prepare", "synthetic", "--task", "classification", "--num-train", 10, "--num-val", 4, "--seed", 3,
            "--root", root, "--no-progress", "--json")  # fmt: skip
    result = invoke(*base, "--out", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"train": 10, "val": 4} and summary["classes"] == SCENE_CLASSES
    assert summary["warnings"] == [] and list(root.iterdir()) == []  # no archive: the workers draw the scenes
    info = read_info(out)
    assert (info.task, info.dataset) == ("classification", "synthetic")
    index = 0
    for split, count in (("train", 10), ("val", 4)):
        names, labels, images = stored(out, split)
        assert names == [f"syn_{i:06d}" for i in range(index, index + count)]
        for name, label, image in zip(names, labels, images, strict=True):
            expected, _, scene = generate_indexed_scene(3, int(name[4:]), 32)
            assert SCENE_CLASSES[label] == scene
            np.testing.assert_array_equal(image, expected)  # lossless PNG
        index += count
    again = invoke(*base, "--out", tmp_path / "again.h5", "--workers", 2)  # deterministic, whatever the workers
    assert again.exit_code == 0, again.output
    for split in ("train", "val"):
        with h5py.File(out) as a, h5py.File(tmp_path / "again.h5") as b:
            assert a[split]["labels"][:].tolist() == b[split]["labels"][:].tolist()
            assert [x.tobytes() for x in a[split]["images"][:]] == [x.tobytes() for x in b[split]["images"][:]]


def test_synthetic_classification_defaults_are_small(tmp_path: Path) -> None:
    plan = synthetic_cls.plan({}, tmp_path, {"task": "classification", "num_train": None, "size": None})
    assert {split: len(items) for split, items in plan.splits.items()} == {"train": 1500, "val": 300}
    assert plan.task == "classification" and plan.classes == SCENE_CLASSES
    image, label = plan.splits["val"][0].load()
    assert Image.open(io.BytesIO(image)).size == (32, 32) and 0 <= label < 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prepare", "synthetic", "--task", "classification", "--layout", "far"), "--layout far only applies to the synthetic segmentation set"),
        (("prepare", "synthetic", "--task", "classification", "--size", 16), "images must be at least 32 and at most 1024 pixels wide, got 16"),
        (("prepare", "synthetic", "--task", "classification", "--num-val", 0), "needs at least 1 train and 1 val image, got 1500 and 0"),
    ],
)
def test_bad_classification_options_are_one_line_before_any_work(tmp_path: Path, args: tuple, message: str) -> None:
    line = one_error_line(invoke(*args, "--root", tmp_path / "root", "--out", tmp_path / "x.h5", "--no-progress"))
    assert message in line and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", ["voc", "cifar10"])
def test_task_is_refused_by_the_other_sources(tmp_path: Path, source: str) -> None:
    """--task is synthetic's option: the other sources' parsers refuse it as unknown (exit 2), before any work."""
    args = ("prepare", source, "--task", "classification", "--root", tmp_path / "root", "--out", tmp_path / "x.h5", "--no-progress")
    assert "No such option: --task" in usage_error_line(invoke(*args)) and list(tmp_path.iterdir()) == []


def test_info_and_show_on_a_classification_file(tmp_path: Path) -> None:
    out = tmp_path / "syn.h5"
    result = invoke("prepare", "synthetic", "--task", "classification", "--num-train", 6, "--num-val", 3,
                    "--out", out, "--root", tmp_path / "root", "--workers", 1, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        counts = {split: np.bincount(handle[split]["labels"][:], minlength=3).tolist() for split in ("train", "val")}
    stats = json.loads(invoke("info", out, "--json").stdout)
    assert stats["task"] == "classification"
    for split in ("train", "val"):
        assert [row["images"] for row in stats["splits"][split]["classes"]] == counts[split]
    text = invoke("info", out)
    assert text.exit_code == 0 and "classification dataset synthetic, 3 classes" in text.output
    assert all(name in text.output for name in SCENE_CLASSES)
    shown = invoke("show", out, "--split", "train", "--count", 4, "--out", tmp_path / "grid.png")
    assert shown.exit_code == 0, shown.output
    assert "images 0..3 of split train" in shown.output and Image.open(tmp_path / "grid.png").format == "PNG"
    assert "classification dataset" in one_error_line(invoke("targets", out, "--no-progress"))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert invoke("info", out).exit_code == 0 and hashlib.sha256(out.read_bytes()).hexdigest() == digest  # read only
