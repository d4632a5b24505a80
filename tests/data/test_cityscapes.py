"""`encnet prepare cityscapes`: both zips (and the coarse pair) built here in the real layout, or an unpacked root;
labelIds -> trainIds checked pixel for pixel against the reference's ``CitySegmentation._class_to_index``."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import sys
import types
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import train_tiny
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.hdf5 import decode_mask, read_info
from encnet_core.data.sources.cityscapes_labels import CLASSES
from encnet_core.engine.segmentation import reference_protocol

runner = CliRunner()
H, W = 16, 32
# split -> city -> images in it (test: placeholder masks, never read)
LAYOUT = {
    "train": {"aachen": 3, "bochum": 1},  # 4: one batch of train_tiny
    "val": {"frankfurt": 1, "lindau": 1},
    "test": {"berlin": 1, "bielefeld": 1},
}
EXTRA = {"augsburg": 1, "bad-honnef": 1}
FINE_ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
COARSE_ZIPS = ("leftImg8bit_trainextra.zip", "gtCoarse.zip")
DOWNLOADS = "https://www.cityscapes-dataset.com/downloads/"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _labelids(rng: np.random.Generator) -> np.ndarray:
    """Every labelId 0..33 at least once (ignored ones, trained ones), the rest random."""
    ids = rng.integers(0, 34, (H, W), dtype=np.uint8)
    ids.flat[:34] = rng.permutation(34)
    return ids


def stem(city: str, index: int) -> str:
    return f"{city}_{index:06d}_{19 + index:06d}"


def build(folder: Path, *, coarse: bool = False, mask_override: dict[str, np.ndarray] | None = None,
          extra_members: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> tuple[Path, dict[str, Path]]:
    """The unpacked root ``folder/cityscapes`` and its zips (``FINE_ZIPS``, and ``COARSE_ZIPS`` with ``coarse``)."""
    rng = np.random.default_rng(0)
    root = folder / "cityscapes"
    members: dict[str, dict[str, bytes]] = {name: {} for name in FINE_ZIPS + COARSE_ZIPS}
    members[FINE_ZIPS[0]].update({"README": b"Cityscapes", "license.txt": b"terms"})

    def add(zip_name: str, name: str, data: bytes) -> None:
        if name in drop:
            return
        members[zip_name][name] = data
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    for split, cities in [*LAYOUT.items(), *([("train_extra", EXTRA)] if coarse else [])]:
        image_zip, mask_zip = COARSE_ZIPS if split == "train_extra" else FINE_ZIPS
        kind = "gtCoarse" if split == "train_extra" else "gtFine"
        for city, count in cities.items():
            for i in range(count):
                name = stem(city, i)
                add(image_zip, f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png", _png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
                ids = np.full((H, W), 255, np.uint8) if split == "test" else _labelids(rng)  # test: placeholder (255 would be refused)
                ids = (mask_override or {}).get(name, ids)
                base = f"{kind}/{split}/{city}/{name}_{kind}"
                add(mask_zip, f"{base}_labelIds.png", _png(ids))
                add(mask_zip, f"{base}_color.png", _png(np.zeros((H, W, 3), np.uint8)))  # not used
                add(mask_zip, f"{base}_instanceIds.png", _png(ids.astype(np.uint16) * 1000))  # not used
                add(mask_zip, f"{base}_polygons.json", b"{}")
    if coarse:  # gtCoarse also has train/ and val/ (duplicates of the fine images): not used
        add(COARSE_ZIPS[1], f"gtCoarse/train/aachen/{stem('aachen', 0)}_gtCoarse_labelIds.png", _png(_labelids(rng)))
    zips = {}
    for zip_name in FINE_ZIPS + (COARSE_ZIPS if coarse else ()):
        zips[zip_name] = folder / zip_name
        with zipfile.ZipFile(zips[zip_name], "w") as archive:
            for name, data in {**members[zip_name], **((extra_members or {}) if zip_name == FINE_ZIPS[1] else {})}.items():
                archive.writestr(name, data)
    return root, zips


def prepare(tmp_path: Path, *args: str | Path, out: str = "citys.h5"):
    result = runner.invoke(app, ["prepare", "cityscapes", "-o", str(tmp_path / out), "--root", str(tmp_path / "cache"),
                                 "-j", "1", "--no-progress", *[str(a) for a in args]])  # fmt: skip
    return result, tmp_path / out


def one_error_line(result) -> str:
    """The one error line of a failed run (exit 1); before it only warnings (no checksum is known for the zips,
    none being published; the tiny splits' sizes)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert all(line.startswith(("WARNING  no checksum is known for ", "WARNING  split '")) for line in lines[:-1]), result.output
    assert lines[-1].startswith("error: "), result.output
    return lines[-1]


def archive_args(zips: dict[str, Path]) -> list[str]:
    return [arg for name, path in zips.items() for arg in ("--archive", f"{name}={path}")]


def stored(path: Path) -> dict[str, dict[str, np.ndarray | None]]:
    """split -> name -> stored labels (None when the split is unlabelled)."""
    info = read_info(path)
    result: dict[str, dict[str, np.ndarray | None]] = {}
    with h5py.File(path, "r") as handle:
        for split in info.splits:
            names = [n.decode() for n in handle[split]["names"][:]]
            masks = [decode_mask(m) for m in handle[split]["masks"][:]] if info.labelled[split] else [None] * len(names)
            result[split] = dict(zip(names, masks, strict=True))
    return result


def source_labelids(root: Path, split: str, name: str, kind: str = "gtFine") -> np.ndarray:
    city = name.split("_")[0]
    return np.asarray(Image.open(root / f"{kind}/{split}/{city}/{name}_{kind}_labelIds.png"))


def reference_citys(unpack_to: Path) -> type:
    """torch-encoding 1.2.1's ``encoding.datasets.cityscapes.CitySegmentation``, imported alone: the package's
    ``datasets/__init__`` imports every dataset (coco needs tqdm, not installed); tqdm is a stand-in meanwhile."""
    from reference_code import reference_package

    package = reference_package(unpack_to)
    folder = Path(package.__path__[0]) / "datasets"
    saved = {name: sys.modules.get(name) for name in ("encoding.datasets", "encoding.datasets.base", "tqdm")}
    try:
        datasets = types.ModuleType("encoding.datasets")
        datasets.__path__ = [str(folder)]
        sys.modules["encoding.datasets"] = datasets
        sys.modules.pop("encoding.datasets.base", None)
        if saved["tqdm"] is None and importlib.util.find_spec("tqdm") is None:
            tqdm = types.ModuleType("tqdm")
            tqdm.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
            tqdm.tqdm = tqdm.trange = None  # type: ignore[attr-defined]
            sys.modules["tqdm"] = tqdm
        spec = importlib.util.spec_from_file_location("encoding.datasets.cityscapes", folder / "cityscapes.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return module.CitySegmentation


# labels.py, typed here for a handful of ids: labelId -> trainId
TYPED = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 17: 5, 23: 10, 24: 11, 26: 13, 29: 255, 30: 255, 31: 16, 33: 18}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("citys")
    root, zips = build(folder)
    result, out = prepare(folder, *archive_args(zips))
    assert result.exit_code == 0, result.output
    return root, zips, out


def test_prepare_from_the_zips_stores_trainids_names_and_an_unlabelled_test_split(built: tuple[Path, dict[str, Path], Path]) -> None:
    root, zips, out = built
    info = read_info(out)
    assert info.dataset == "cityscapes" and info.classes == list(CLASSES) and len(CLASSES) == 19
    assert info.splits == {"train": 4, "val": 2, "test": 2}
    assert info.labelled == {"train": True, "val": True, "test": False}
    data = stored(out)
    assert list(data["train"]) == [stem("aachen", 0), stem("aachen", 1), stem("aachen", 2), stem("bochum", 0)]
    assert list(data["val"]) == [stem("frankfurt", 0), stem("lindau", 0)]
    assert list(data["test"]) == [stem("berlin", 0), stem("bielefeld", 0)] and set(map(type, data["test"].values())) == {type(None)}
    checked = 0
    for split in ("train", "val"):
        for name, labels in data[split].items():
            ids = source_labelids(root, split, name)
            assert labels is not None and labels.shape == (H, W)
            for label_id, train_id in TYPED.items():
                assert (labels[ids == label_id] == train_id).all(), (name, label_id)
                checked += int((ids == label_id).sum())
            assert set(np.unique(labels)) <= set(range(19)) | {255}
    assert checked > 0
    # the images are the archive's bytes, unchanged
    with h5py.File(out, "r") as handle, zipfile.ZipFile(zips[FINE_ZIPS[0]]) as archive:
        first = archive.read(f"leftImg8bit/train/aachen/{stem('aachen', 0)}_leftImg8bit.png")
        assert bytes(handle["train"]["images"][0]) == first
    sources = info.sources
    assert [f["file"] for f in sources["files"]] == list(FINE_ZIPS)
    for record in sources["files"]:
        import hashlib

        assert record["sha256"] == hashlib.sha256(zips[record["file"]].read_bytes()).hexdigest()


def test_trainids_match_the_references_class_to_index(built: tuple[Path, dict[str, Path], Path], tmp_path: Path) -> None:
    root, _, out = built
    citys = reference_citys(tmp_path / "ref")
    data = stored(out)
    for split in ("train", "val"):
        reference = citys(root=str(root), split=split, mode="val")  # the reference's own file pairing
        assert len(reference.images) == len(data[split])
        for mask_path in reference.mask_paths:
            name = Path(mask_path).name.removesuffix("_gtFine_labelIds.png")
            expected = reference._class_to_index(np.array(Image.open(mask_path)).astype("int32"))
            expected = np.where(expected == -1, 255, expected)  # the reference's ignore is -1, encnet's 255
            np.testing.assert_array_equal(data[split][name], expected)


def test_prepare_from_an_unpacked_root_stores_the_same(built: tuple[Path, dict[str, Path], Path], tmp_path: Path) -> None:
    root, _, out = built
    result, from_root = prepare(tmp_path, "--from", root)
    assert result.exit_code == 0, result.output
    a, b = stored(out), stored(from_root)
    assert {s: list(v) for s, v in a.items()} == {s: list(v) for s, v in b.items()}
    for split in ("train", "val"):
        for name in a[split]:
            np.testing.assert_array_equal(a[split][name], b[split][name])
    assert read_info(from_root).sources["root"] == str(root)


def test_coarse_adds_train_extra(tmp_path: Path) -> None:
    root, zips = build(tmp_path, coarse=True)
    result, out = prepare(tmp_path, "--coarse", *archive_args(zips))
    assert result.exit_code == 0, result.output
    data = stored(out)
    assert list(data["train_extra"]) == [stem("augsburg", 0), stem("bad-honnef", 0)]
    assert read_info(out).splits == {"train": 4, "val": 2, "test": 2, "train_extra": 2}
    for name, labels in data["train_extra"].items():
        ids = source_labelids(root, "train_extra", name, "gtCoarse")
        for label_id, train_id in TYPED.items():
            assert (labels[ids == label_id] == train_id).all()
    result, from_root = prepare(tmp_path, "--coarse", "--from", root, out="root.h5")
    assert result.exit_code == 0, result.output
    assert list(stored(from_root)["train_extra"]) == list(data["train_extra"])
    # --coarse needs the coarse zips too
    result, _ = prepare(tmp_path, "--coarse", *archive_args({k: zips[k] for k in FINE_ZIPS}), out="missing.h5")
    line = one_error_line(result)
    assert "leftImg8bit_trainextra.zip" in line and DOWNLOADS in line


def test_a_missing_archive_names_the_site_and_archive(tmp_path: Path) -> None:
    _, zips = build(tmp_path)
    result, out = prepare(tmp_path, "--archive", f"{FINE_ZIPS[0]}={zips[FINE_ZIPS[0]]}")
    line = one_error_line(result)
    assert "gtFine_trainvaltest.zip" in line and DOWNLOADS in line and "--archive gtFine_trainvaltest.zip=PATH" in line
    assert not out.exists()


def test_strict_split_sizes(built: tuple[Path, dict[str, Path], Path], tmp_path: Path) -> None:
    _, zips, _ = built
    result, _ = prepare(tmp_path, "--strict", *archive_args(zips))
    assert "split 'train' has 4 images, the reference has 2975 (--strict)" in one_error_line(result)


def test_a_member_escaping_the_target_is_refused(tmp_path: Path) -> None:
    _, zips = build(tmp_path, extra_members={"../x": b"escape"})
    result, _ = prepare(tmp_path, *archive_args(zips))
    line = one_error_line(result)
    assert "unsafe member '../x'" in line and "gtFine_trainvaltest.zip" in line


def test_an_image_without_its_mask_is_an_error(tmp_path: Path) -> None:
    missing = f"gtFine/val/lindau/{stem('lindau', 0)}_gtFine_labelIds.png"
    _, zips = build(tmp_path, drop=(missing,))
    result, _ = prepare(tmp_path, *archive_args(zips))
    line = one_error_line(result)
    assert f"{stem('lindau', 0)}_leftImg8bit.png has no mask {missing}" in line


@pytest.mark.parametrize(
    ("mask", "reason"),
    [(np.full((H // 2, W), 7, np.uint8), f"mask is {W}x{H // 2} but the image is {W}x{H}"),
     (np.full((H, W), 40, np.uint8), "labelId 40 is not a Cityscapes label (0..33)")],
)  # fmt: skip
def test_a_bad_mask_is_refused_naming_the_file_and_skip_bad_skips_it(tmp_path: Path, mask: np.ndarray, reason: str) -> None:
    bad = stem("bochum", 0)
    _, zips = build(tmp_path, mask_override={bad: mask})
    result, _ = prepare(tmp_path, *archive_args(zips))
    line = one_error_line(result)
    assert f"gtFine_trainvaltest.zip:gtFine/train/bochum/{bad}_gtFine_labelIds.png" in line and reason in line
    result, out = prepare(tmp_path, "--skip-bad", *archive_args(zips), out="skipped.h5")
    assert result.exit_code == 0, result.output
    assert list(stored(out)["train"]) == [stem("aachen", 0), stem("aachen", 1), stem("aachen", 2)]
    skipped = json.loads(h5py.File(out, "r").attrs["sources"])["skipped"]
    assert [(s["split"], s["name"]) for s in skipped] == [("train", bad)] and reason in skipped[0]["reason"]


def test_a_bad_from_folder_is_one_line(built: tuple[Path, dict[str, Path], Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result, _ = prepare(tmp_path, "--from", tmp_path / "empty")
    assert "has no leftImg8bit/ folder" in one_error_line(result)
    root, zips, _ = built
    result, _ = prepare(tmp_path, "--from", root, "--coarse")
    assert "has no gtCoarse/ folder: unpack gtCoarse.zip into it" in one_error_line(result)
    result, _ = prepare(tmp_path, "--from", root, *archive_args(zips))
    assert "--from DIR and --archive" in one_error_line(result)


def test_fetch_of_a_login_only_file_says_where_to_get_it(tmp_path: Path) -> None:
    from encnet_core.data.sources.cityscapes import FINE
    from encnet_core.errors import DownloadError
    from encnet_core.fetch.download import fetch

    with pytest.raises(DownloadError) as raised:
        fetch(FINE, tmp_path)
    message = str(raised.value)
    assert DOWNLOADS in message and "--archive gtFine_trainvaltest.zip=PATH" in message and "\n" not in message


def test_from_a_root_whose_path_holds_the_folder_names(built: tuple[Path, dict[str, Path], Path], tmp_path: Path) -> None:
    import shutil

    root, _, out = built
    odd = tmp_path / "gtFine" / "leftImg8bit" / "cityscapes"
    shutil.copytree(root, odd)
    result, copy = prepare(tmp_path, "--from", odd)
    assert result.exit_code == 0, result.output
    assert {s: list(v) for s, v in stored(copy).items()} == {s: list(v) for s, v in stored(out).items()}


def test_protocol_reference_uses_the_citys_scales(built: tuple[Path, dict[str, Path], Path], tmp_path: Path) -> None:
    import torch

    assert reference_protocol("cityscapes").scales == (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25)
    _, _, out = built
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        ckpt = train_tiny(out, tmp_path, iters=1)
        result = runner.invoke(app, ["evaluate", str(ckpt), str(out), "--protocol", "reference", "--json", "-",
                                     "--device", "cpu", "-j", "0", "--limit", "1", "--no-progress"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inference"]["scales"] == [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25] and report["inference"]["flip"]
    assert report["protocol"]["dataset"] == "cityscapes" and report["protocol"]["known_dataset"]
    assert "test.py line 157" in report["protocol"]["source"]
