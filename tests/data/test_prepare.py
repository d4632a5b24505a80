"""`prepare()` end to end on small archives in the real layouts (tests/data/conftest.py builds them).

Every converted sample is compared with its source file: stored image bytes equal the source bytes,
the stored mask equals the source labels after the documented mapping, and class_pixels/se_targets
agree with that mask. torchvision's own VOC and SBD readers serve as an independent reference.
"""

from __future__ import annotations

import errno
import gc
import importlib.util
import io
import json
import multiprocessing
import os
import signal
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from PIL import Image
from small_disk import small_disk
from torchvision.datasets import SBDataset, VOCSegmentation

from encnet_core.data import prepare as prepare_module
from encnet_core.data import sources
from encnet_core.data.dataset import read_image_and_mask
from encnet_core.data.hdf5 import HDF5Writer, read_info
from encnet_core.data.prepare import Interrupted, PrepareOptions, PrepareResult, prepare
from encnet_core.errors import ArchiveError, ChecksumError, ConfigError, DataError
from encnet_core.fetch.archives import ArchiveLimits, MiB


def _data_fixtures() -> ModuleType:
    """tests/data/conftest.py as a module of its own.

    pytest imports every conftest.py outside a package under the one name "conftest", so
    ``from conftest import ...`` would get whichever it loaded last: load this one by path instead.
    """
    name = "encnet_tests_data_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("conftest.py"))
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


fx = _data_fixtures()
Built, Layout, Server = fx.Built, fx.Layout, fx.Server

VOC_MISMATCH = [
    "split 'train' has 4 images, the reference has 1464",
    "split 'val' has 3 images, the reference has 1449",
]


def run(source: str, tmp_path: Path, **options) -> tuple[PrepareResult, list[str]]:
    """prepare() into tmp_path/out.h5 with a cache in tmp_path/cache, one worker; returns (result, warnings)."""
    warnings: list[str] = []
    defaults = {"out": tmp_path / "out.h5", "root": tmp_path / "cache", "workers": 1}
    result = prepare(source, PrepareOptions(**{**defaults, **options}), warn=warnings.append)
    return result, warnings


def md5(built: Built) -> dict[str, dict[str, str]]:
    return {built.name: {"md5": built.md5}}


def assert_voc_like(path: Path, built: Built, splits: dict[str, list[str]] | None = None) -> None:
    for split, ids in (splits or built.layout.splits).items():
        fx.assert_split_matches(path, split, ids, built.layout.images, built.layout.labels, 21)


def sources_attr(path: Path) -> dict:
    with h5py.File(path, "r") as handle:
        return json.loads(handle.attrs["sources"])


# ----------------------------------------------------------------------------- each source, downloaded


def test_voc_downloaded_from_a_url_override(http_server: Server, voc_tar: Built, tmp_path: Path) -> None:
    url = http_server.serve(voc_tar.path)
    result, warnings = run("voc", tmp_path, urls={fx.VOC2012_TAR: url}, checksums=md5(voc_tar))

    assert result.counts == {"train": 4, "val": 3}
    assert result.classes == fx.VOC_CLASSES and result.skipped == []
    assert warnings == VOC_MISMATCH == result.warnings
    assert (tmp_path / "cache" / fx.VOC2012_TAR).read_bytes() == voc_tar.path.read_bytes()
    assert http_server.state.requests == [(f"/mirror/{fx.VOC2012_TAR}", None)]
    assert_voc_like(result.out, voc_tar)
    with h5py.File(result.out, "r") as handle:
        assert handle.attrs["dataset"] == "voc" and json.loads(handle.attrs["classes"]) == fx.VOC_CLASSES
        assert handle.attrs["ignore_index"] == 255 and handle.attrs["min_pixels"] == 1
    (provenance,) = sources_attr(result.out)["files"]
    assert provenance["url"] == url and provenance["md5"] == voc_tar.md5 and provenance["verified"] is True


def test_official_checksum_mismatch_leaves_no_file(
    http_server: Server, voc_tar: Built, tmp_path: Path
) -> None:
    url = http_server.serve(voc_tar.path)
    with pytest.raises(ChecksumError) as info:
        run("voc", tmp_path, urls={fx.VOC2012_TAR: url})
    message = str(info.value)
    assert "\n" not in message
    assert (
        "6cd6e144f989b92b3379bac3b3de84fd" in message and voc_tar.md5 in message and "--checksum" in message
    )
    assert not (tmp_path / "out.h5").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # neither the archive nor its .part
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"]


def test_voc_aug_trainaug_membership_and_label_origin(
    http_server: Server, voc_tar: Built, sbd_tgz: Built, tmp_path: Path
) -> None:
    http_server.serve(voc_tar.path)
    http_server.serve(sbd_tgz.path)
    result, warnings = run(
        "voc-aug", tmp_path, mirror=http_server.url("/mirror/"), checksums={**md5(voc_tar), **md5(sbd_tgz)}
    )

    trainaug = sorted(fx.TRAINAUG_ORIGIN)
    assert result.counts == {"train": len(trainaug), "val": len(fx.VOC_VAL)}
    assert warnings == ["split 'train' has 7 images, the reference has 10582", VOC_MISMATCH[1]]
    labels = {
        i: (sbd_tgz if origin == "sbd" else voc_tar).layout.labels[i]
        for i, origin in fx.TRAINAUG_ORIGIN.items()
    }
    fx.assert_split_matches(result.out, "train", trainaug, voc_tar.layout.images, labels, 21)
    fx.assert_split_matches(result.out, "val", fx.VOC_VAL, voc_tar.layout.images, voc_tar.layout.labels, 21)
    # the VOC val images that SBD also lists stay out of training
    assert not {"2008_000101", "2008_000102"} & set(fx.stored_split(result.out, "train")["names"])


def test_pcontext_maps_label_ids_to_59_classes(
    http_server: Server, voc2010_tar: Built, context_tgz: Built, tmp_path: Path
) -> None:
    urls = {built.name: http_server.serve(built.path) for built in (voc2010_tar, context_tgz)}
    result, warnings = run(
        "pcontext", tmp_path, urls=urls, checksums={**md5(voc2010_tar), **md5(context_tgz)}, params={"labels": "mat"}
    )

    assert result.classes == [name for _, name in fx.CONTEXT59]
    assert result.counts == {"train": 3, "val": 2}
    assert warnings == [
        "split 'train' has 3 images, the reference has 4998",
        "split 'val' has 2 images, the reference has 5105",
    ]
    for split, ids in context_tgz.layout.splits.items():
        fx.assert_split_matches(
            result.out, split, ids, context_tgz.layout.images, context_tgz.layout.labels, 59
        )
    first = fx.stored_split(result.out, "train")["masks"][0]
    assert (first[0, 0], first[0, 1], first[1, 0]) == (58, 0, 255)  # id 458 wood, id 2 aeroplane, id 0


def test_pcontext_refuses_a_different_label_file(
    voc2010_tar: Built, context_tgz: Built, tmp_path: Path
) -> None:
    layout = context_tgz.layout
    text = layout.members["labels.txt"].decode().replace("284: person", "284: people")
    other = fx.write_tar(
        tmp_path / "trainval.tar.gz", Layout({**layout.members, "labels.txt": text.encode()}), "w:gz"
    )
    with pytest.raises(DataError, match="labels.txt names id 284 'people', expected 'person'"):
        run(
            "pcontext", tmp_path, archives={"": voc2010_tar.path, "trainval.tar.gz": other.path}, verify=False,
            params={"labels": "mat"},
        )
    assert not (tmp_path / "out.h5").exists()


def test_ade20k_shifts_labels_and_ignores_other(http_server: Server, ade_zip: Built, tmp_path: Path) -> None:
    url = http_server.serve(ade_zip.path)
    result, _ = run("ade20k", tmp_path, urls={ade_zip.name: url}, checksums=md5(ade_zip), min_pixels=40)

    assert result.classes == fx.ADE_NAMES and len(result.classes) == 150
    assert result.counts == {"train": 3, "val": 2}
    for split, ids in ade_zip.layout.splits.items():
        fx.assert_split_matches(
            result.out, split, ids, ade_zip.layout.images, ade_zip.layout.labels, 150, min_pixels=40
        )
    mask = fx.stored_split(result.out, "train")["masks"][0]
    assert (mask[0, 0], mask[0, 1], mask[0, 2]) == (255, 0, 149)


def test_voc_matches_torchvision_voc_segmentation(voc_tar: Built, tmp_path: Path) -> None:
    result, _ = run("voc", tmp_path, archives={"": voc_tar.path}, checksums=md5(voc_tar))
    with tarfile.open(voc_tar.path) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    for split in ("train", "val"):
        reference = VOCSegmentation(tmp_path / "extracted", year="2012", image_set=split, download=False)
        ours = fx.stored_split(result.out, split)
        assert len(reference) == len(ours["names"]) > 0
        for index, name in enumerate(ours["names"]):
            image, target = reference[index]
            assert Path(reference.images[index]).stem == name
            with Image.open(io.BytesIO(ours["images"][index])) as stored:
                np.testing.assert_array_equal(np.asarray(stored.convert("RGB")), np.asarray(image))
            np.testing.assert_array_equal(ours["masks"][index], np.array(target))


def test_voc_aug_matches_torchvision_sbdataset(voc_tar: Built, sbd_tgz: Built, tmp_path: Path) -> None:
    result, _ = run(
        "voc-aug",
        tmp_path,
        archives={fx.VOC2012_TAR: voc_tar.path, fx.SBD_TGZ: sbd_tgz.path},
        checksums={**md5(voc_tar), **md5(sbd_tgz)},
    )
    with tarfile.open(sbd_tgz.path) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    reference = SBDataset(
        tmp_path / "extracted" / "benchmark_RELEASE" / "dataset", image_set="train", mode="segmentation"
    )
    ours = fx.stored_split(result.out, "train")
    position = {name: i for i, name in enumerate(ours["names"])}
    compared = 0
    for index, image_id in enumerate(fx.SBD_TRAIN):
        if image_id in fx.VOC_VAL:
            assert image_id not in position
            continue
        image, target = reference[index]
        i = position[image_id]
        with Image.open(io.BytesIO(ours["images"][i])) as stored:
            np.testing.assert_array_equal(np.asarray(stored.convert("RGB")), np.asarray(image))
        np.testing.assert_array_equal(ours["masks"][i], np.array(target))
        compared += 1
    assert compared == 3


# ----------------------------------------------------------------------------- checks and failures


def test_strict_split_size_mismatch_is_an_error(voc_tar: Built, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"split 'train' has 4 images, the reference has 1464 \(--strict\)"):
        run("voc", tmp_path, archives={"": voc_tar.path}, checksums=md5(voc_tar), strict=True)
    assert not (tmp_path / "out.h5").exists()


def test_download_resumes_after_a_dropped_connection(
    http_server: Server, voc_tar: Built, tmp_path: Path
) -> None:
    url = http_server.serve(voc_tar.path)
    http_server.state.drop_after = 10_000
    result, _ = run("voc", tmp_path, urls={fx.VOC2012_TAR: url}, checksums=md5(voc_tar))
    assert http_server.state.requests == [
        (f"/mirror/{fx.VOC2012_TAR}", None),
        (f"/mirror/{fx.VOC2012_TAR}", "bytes=10000-"),
    ]
    assert (tmp_path / "cache" / fx.VOC2012_TAR).read_bytes() == voc_tar.path.read_bytes()
    assert_voc_like(result.out, voc_tar)


@pytest.mark.parametrize("which", ["voc", "sbd"])
def test_archive_with_a_parent_member_is_refused(
    which: str, voc_tar: Built, sbd_tgz: Built, tmp_path: Path
) -> None:
    voc_layout, sbd = voc_tar.layout, sbd_tgz.layout
    if which == "voc":
        voc_layout = Layout({**voc_layout.members, "../evil.txt": b"pwned"})
    else:
        sbd = Layout({**sbd.members, "benchmark_RELEASE/../../evil.txt": b"pwned"})
    bad_voc = fx.write_tar(tmp_path / "in" / fx.VOC2012_TAR, voc_layout)
    bad_sbd = fx.write_tar(tmp_path / "in" / fx.SBD_TGZ, sbd, "w:gz")
    out = tmp_path / "work" / "out.h5"
    with pytest.raises(ArchiveError, match=r"unsafe member .*evil\.txt.*'\.\.' component"):
        run("voc-aug", tmp_path, out=out, archives={"": bad_voc.path, fx.SBD_TGZ: bad_sbd.path}, verify=False)
    assert (
        not out.exists()
        and not (tmp_path / "evil.txt").exists()
        and not (tmp_path.parent / "evil.txt").exists()
    )
    assert not list(tmp_path.rglob("evil.txt"))


def test_voc_aug_sbd_id_without_labels_is_an_error(voc_tar: Built, tmp_path: Path) -> None:
    layout = fx.sbd_layout(voc_tar.layout)
    del layout.members["benchmark_RELEASE/dataset/cls/2009_000202.mat"]
    sbd = fx.write_tar(tmp_path / fx.SBD_TGZ, layout, "w:gz")
    with pytest.raises(DataError, match=r"SBD lists 2009_000202 but has no cls/2009_000202\.mat"):
        run("voc-aug", tmp_path, archives={"": voc_tar.path, fx.SBD_TGZ: sbd.path}, verify=False)


@pytest.fixture
def voc_with_corrupt_jpeg(tmp_path: Path) -> tuple[Built, str]:
    layout = fx.voc2012_layout(extra=[])
    bad = fx.VOC_TRAIN[1]
    member = f"VOCdevkit/VOC2012/JPEGImages/{bad}.jpg"
    layout.members[member] = layout.members[member][: len(layout.members[member]) // 2]  # truncated
    return fx.write_tar(tmp_path / "in" / fx.VOC2012_TAR, layout), bad


def test_corrupt_jpeg_stops_with_its_name(voc_with_corrupt_jpeg: tuple[Built, str], tmp_path: Path) -> None:
    built, bad = voc_with_corrupt_jpeg
    with pytest.raises(
        DataError, match=rf"{fx.VOC2012_TAR}:VOCdevkit/VOC2012/JPEGImages/{bad}\.jpg: .*--skip-bad"
    ):
        run("voc", tmp_path, archives={"": built.path}, checksums=md5(built))
    assert not (tmp_path / "out.h5").exists()


def test_skip_bad_skips_and_records_a_corrupt_jpeg(
    voc_with_corrupt_jpeg: tuple[Built, str], tmp_path: Path
) -> None:
    built, bad = voc_with_corrupt_jpeg
    result, warnings = run("voc", tmp_path, archives={"": built.path}, checksums=md5(built), skip_bad=True)

    assert result.counts == {"train": 3, "val": 3}
    (skipped,) = result.skipped
    assert skipped["split"] == "train" and skipped["name"] == bad
    assert skipped["file"] == f"{built.path}:VOCdevkit/VOC2012/JPEGImages/{bad}.jpg" and skipped["reason"]
    assert sources_attr(result.out)["skipped"] == result.skipped
    assert any(w.startswith(f"skipped {skipped['file']}") for w in warnings)
    assert_voc_like(result.out, built, {"train": [i for i in fx.VOC_TRAIN if i != bad], "val": fx.VOC_VAL})


def test_out_of_range_label_stops_with_the_mask_name(tmp_path: Path) -> None:
    layout = fx.voc2012_layout(extra=[])
    labels = layout.labels[fx.VOC_VAL[2]].copy()
    labels[3, 3] = 40
    layout.members[f"VOCdevkit/VOC2012/SegmentationClass/{fx.VOC_VAL[2]}.png"] = fx.palette_png(labels)
    built = fx.write_tar(tmp_path / "in" / fx.VOC2012_TAR, layout)
    match = rf"SegmentationClass/{fx.VOC_VAL[2]}\.png: label 40 outside 0\.\.20"
    with pytest.raises(DataError, match=match):
        run("voc", tmp_path, archives={"": built.path}, checksums=md5(built))
    assert not (tmp_path / "out.h5").exists()


def test_existing_out_is_kept_without_overwrite(voc_tar: Built, tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier dataset")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        run("voc", tmp_path, archives={"": voc_tar.path}, checksums=md5(voc_tar))
    assert out.read_bytes() == b"an earlier dataset"
    run("voc", tmp_path, archives={"": voc_tar.path}, checksums=md5(voc_tar), overwrite=True)
    assert_voc_like(out, voc_tar)


def test_interrupted_conversion_leaves_no_file(
    voc_tar: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sources.decode_index_png
    calls = []

    def interrupted(raw: bytes) -> np.ndarray:
        calls.append(raw)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(raw)

    monkeypatch.setattr(sources.voc, "decode_index_png", interrupted)
    out_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run("voc", tmp_path, out=out_dir / "voc.h5", archives={"": voc_tar.path}, checksums=md5(voc_tar))
    assert len(calls) == 3
    assert list(out_dir.iterdir()) == []  # neither voc.h5 nor its temporary file


@pytest.fixture
def voc_for_the_pool(tmp_path: Path) -> Built:
    """A VOC tar whose train split is converted in-process (< 16 images) and val split by the pool."""
    ids = [f"2011_{i:06d}" for i in range(45)]
    return fx.write_tar(tmp_path / "in" / fx.VOC2012_TAR, fx.voc2012_layout(ids[:5], ids[5:], []))


def test_two_workers_write_the_same_file_as_one(voc_for_the_pool: Built, tmp_path: Path) -> None:
    built = voc_for_the_pool
    one, _ = run("voc", tmp_path, out=tmp_path / "one.h5", archives={"": built.path}, checksums=md5(built))
    two, _ = run(
        "voc", tmp_path, out=tmp_path / "two.h5", archives={"": built.path}, checksums=md5(built), workers=2
    )
    assert one.counts == two.counts == {"train": 5, "val": 40}
    assert_voc_like(two.out, built)
    with h5py.File(one.out, "r") as a, h5py.File(two.out, "r") as b:
        assert dict(a.attrs.items()).keys() == dict(b.attrs.items()).keys()
        for key, value in a.attrs.items():
            np.testing.assert_array_equal(value, b.attrs[key], err_msg=key)
        assert set(a) == set(b) == {"train", "val"}
        for split in a:
            assert set(a[split]) == set(b[split])
            for name, dataset in a[split].items():
                left, right = dataset[...], b[split][name][...]
                assert left.shape == right.shape and left.dtype == right.dtype, f"{split}/{name}"
                if left.dtype == object:
                    assert [bytes(x) for x in left] == [bytes(x) for x in right], f"{split}/{name}"
                else:
                    np.testing.assert_array_equal(left, right, err_msg=f"{split}/{name}")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_pool_workers_do_not_read_through_the_parents_archive(
    voc_for_the_pool: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked worker reusing the archive the parent opened (for the train split) would share its file
    offset with the other workers, and read the wrong bytes: every worker must open its own."""
    log = tmp_path / "opened-by.txt"
    real = prepare_module.open_archive

    def logged(path: Path, limits=None):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return real(path, limits)

    monkeypatch.setattr(prepare_module, "open_archive", logged)
    built = voc_for_the_pool
    result, _ = run("voc", tmp_path, archives={"": built.path}, checksums=md5(built), workers=2)
    pids = set(log.read_text().split())
    assert str(os.getpid()) in pids and len(pids) > 1
    assert_voc_like(result.out, built)


def test_a_later_run_reads_the_archive_now_at_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "in" / fx.VOC2012_TAR
    fx.write_tar(path, fx.voc2012_layout(extra=[]))
    run("voc", tmp_path, out=tmp_path / "first.h5", archives={"": path}, verify=False)
    ids = [f"2012_{i:06d}" for i in range(5)]
    replaced = fx.write_tar(tmp_path / "new.tar", fx.voc2012_layout(ids[:3], ids[3:], []))
    os.replace(replaced.path, path)
    result, _ = run("voc", tmp_path, out=tmp_path / "second.h5", archives={"": path}, verify=False)
    assert_voc_like(result.out, replaced)


# ----------------------------------------------------------------------------- the folder source


def save(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_bytes(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def test_folder_with_split_subfolders(tmp_path: Path) -> None:
    """Palette and L-mode masks; RGB, grayscale JPEG, RGBA PNG and BMP images; an unlabelled test split."""
    rng = np.random.default_rng(5)
    images, masks = tmp_path / "images", tmp_path / "masks"
    classes = save(tmp_path / "classes.txt", b"# my classes\nbackground\ncat\n\ndog\n")
    cases = {  # name -> (image file, image format, PIL mode, mask format)
        "train/a": ("a.jpg", "JPEG", None, "P"),
        "train/gray": ("gray.jpg", "JPEG", "L", "L"),
        "train/sub/rgba": ("sub/rgba.png", "PNG", "RGBA", "P"),
        "val/b": ("b.bmp", "BMP", None, "L"),
        "val/c": ("c.jpg", "JPEG", None, "P"),
    }
    sources_bytes: dict[str, bytes] = {}
    labels: dict[str, np.ndarray] = {}
    for key, (file, fmt, mode, mask_mode) in cases.items():
        split, name = key.split("/", 1)
        height, width = int(rng.integers(24, 41)), int(rng.integers(24, 41))
        sources_bytes[name] = save(
            images / split / file, image_bytes(fx.random_image(rng, height, width), fmt, mode)
        ).read_bytes()
        label = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=(height, width))
        labels[name] = label
        save(
            (masks / split / file).with_suffix(".png"),
            fx.palette_png(label) if mask_mode == "P" else fx.gray_png(label),
        )
    save(images / "test" / "t.jpg", fx.encode(fx.random_image(rng, 30, 30)))

    result, _ = run("folder", tmp_path, params={"images": images, "masks": masks, "classes": classes})

    assert result.classes == ["background", "cat", "dog"]
    assert result.counts == {"train": 3, "val": 2, "test": 1}
    train = {k: v for k, v in sources_bytes.items() if k != "b"}
    fx.assert_split_matches(result.out, "train", ["a", "gray", "sub/rgba"], train, labels, 3)
    val = fx.stored_split(result.out, "val")
    assert val["names"] == ["b", "c"] and val["images"][1] == sources_bytes["c"]
    assert val["images"][0].startswith(b"\x89PNG\r\n\x1a\n")  # BMP re-encoded as PNG, pixels unchanged
    np.testing.assert_array_equal(pil_rgb(val["images"][0]), pil_rgb(sources_bytes["b"]))
    for i, name in enumerate(["b", "c"]):
        np.testing.assert_array_equal(val["masks"][i], labels[name])
    test = fx.stored_split(result.out, "test")
    assert test["names"] == ["t"] and test["masks"] == [] and not test["class_pixels"].any()
    # the training reader decodes every stored kind of image to RGB
    for split, index, name in (("train", 1, "gray"), ("train", 2, "sub/rgba"), ("val", 0, "b")):
        image, mask = read_image_and_mask(result.out, split, index)
        assert image.shape == (*labels[name].shape, 3)
        np.testing.assert_array_equal(mask, labels[name])
        expected = pil_rgb(sources_bytes[name])
        tolerance = 3 if name == "gray" else 0  # JPEG decoders may round differently
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= tolerance


def colour_mask(labels: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> bytes:
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for value, colour in colours.items():
        rgb[labels == value] = colour
    return fx.encode(rgb, "PNG")


COLOURS = {0: (0, 0, 0), 1: (128, 64, 128), 2: (0, 0, 142), 255: (255, 255, 255)}


def test_flat_folder_with_colour_masks_and_val_fraction(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    images, masks = tmp_path / "images", tmp_path / "masks"
    classes = save(tmp_path / "classes.txt", b"background 0 0 0\nroad #804080\ncar 0 0 142\n")
    names = [f"img{i}" for i in range(7)] + ["more/img7"]
    sources_bytes, labels = {}, {}
    for name in names:
        height, width = int(rng.integers(24, 41)), int(rng.integers(24, 41))
        sources_bytes[name] = save(
            images / f"{name}.jpg", fx.encode(fx.random_image(rng, height, width))
        ).read_bytes()
        labels[name] = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=(height, width))
        save(masks / f"{name}.png", colour_mask(labels[name], COLOURS))

    params = {"images": images, "masks": masks, "classes": classes, "val_fraction": 0.25, "seed": 3}
    result, _ = run("folder", tmp_path, params=params)

    assert result.counts == {"train": 6, "val": 2}
    train, val = fx.stored_split(result.out, "train")["names"], fx.stored_split(result.out, "val")["names"]
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    fx.assert_split_matches(result.out, "train", train, sources_bytes, labels, 3)
    fx.assert_split_matches(result.out, "val", val, sources_bytes, labels, 3)
    with h5py.File(result.out, "r") as handle:
        assert handle.attrs["palette"].tolist() == [[0, 0, 0], [128, 64, 128], [0, 0, 142]]
    again, _ = run("folder", tmp_path, out=tmp_path / "again.h5", params=params)
    assert fx.stored_split(again.out, "val")["names"] == val  # the split is seeded


def test_folder_colour_mask_with_an_unknown_colour(tmp_path: Path) -> None:
    classes = save(tmp_path / "classes.txt", b"background 0 0 0\nroad #804080\ncar 0 0 142\n")
    labels = np.zeros((24, 30), dtype=np.uint8)
    save(tmp_path / "images" / "x.jpg", fx.encode(fx.random_image(np.random.default_rng(7), 24, 30)))
    rgb = np.zeros((24, 30, 3), dtype=np.uint8)
    rgb[5, 7] = (1, 2, 3)
    save(tmp_path / "masks" / "x.png", fx.encode(rgb, "PNG"))
    assert labels.shape == rgb.shape[:2]
    params = {
        "images": tmp_path / "images",
        "masks": tmp_path / "masks",
        "classes": classes,
        "val_fraction": 0.0,
    }
    with pytest.raises(
        DataError, match=r"masks/x\.png: colour \(1, 2, 3\) at \(5, 7\) is not in the class list"
    ):
        run("folder", tmp_path, params=params)
    assert not (tmp_path / "out.h5").exists()


# ----------------------------------------------------------------------------- hostile input and failures

SYNTHETIC = {"num_train": 3, "num_val": 2, "size": 32}


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden temp files included), relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_file_that_appears_at_out_meanwhile_is_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs to the same --out: the one that finishes second must not replace the first one's file."""
    out = tmp_path / "data" / "syn.h5"
    real_add = HDF5Writer.add

    def add_while_another_run_finishes(self: HDF5Writer, sample) -> None:
        real_add(self, sample)
        if not out.exists():
            out.write_bytes(b"the other run's dataset")

    monkeypatch.setattr(HDF5Writer, "add", add_while_another_run_finishes)
    with pytest.raises(DataError) as info:
        run("synthetic", tmp_path, out=out, params=SYNTHETIC)
    assert str(info.value) == (
        f"{out} appeared while this dataset was being prepared (another `encnet prepare` run?); "
        "it was left as it is and this run's result was removed: pass --overwrite to replace it"
    )
    assert out.read_bytes() == b"the other run's dataset"
    assert files_under(out.parent) == ["syn.h5"]  # no temp file left
    out.unlink()
    result, _ = run("synthetic", tmp_path, out=out, params=SYNTHETIC, overwrite=True)  # --overwrite replaces it
    assert read_info(result.out).splits == {"train": 3, "val": 2} and files_under(out.parent) == ["syn.h5"]


def test_without_hard_links_an_existing_out_is_still_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "syn.h5"
    writer = HDF5Writer(out, "toy", ["a"], np.zeros((1, 3), np.uint8))
    out.write_bytes(b"someone else's")
    with pytest.raises(DataError, match="appeared while"):
        writer.close()
    assert out.read_bytes() == b"someone else's" and files_under(tmp_path) == ["syn.h5"]
    out.unlink()
    HDF5Writer(out, "toy", ["a"], np.zeros((1, 3), np.uint8)).close()
    assert read_info(out).dataset == "toy" and files_under(tmp_path) == ["syn.h5"]


def test_disk_full_during_conversion_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    params = {"num_train": 60, "num_val": 2, "size": 64}  # about 240 kB of images and masks
    with small_disk(tmp_path / "disk", "128k") as disk:
        out = disk / "syn.h5"
        with pytest.raises(DataError) as info:
            run("synthetic", tmp_path, out=out, params=params)
        assert str(info.value) == f"no space left on {disk}: syn.h5 was not written"
        assert files_under(disk) == []
        assert os.statvfs(disk).f_bfree == os.statvfs(disk).f_blocks  # all the space is back


def test_disk_full_while_generating_the_synthetic_archive(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "64k") as disk:
        with pytest.raises(DataError, match=rf"^no space left on {disk}: cannot write synthetic-s0-64px-60-2\.tar$"):
            run("synthetic", tmp_path, root=disk, params={"num_train": 60, "num_val": 2, "size": 64})
        assert files_under(disk) == []
    assert files_under(tmp_path) == []


def test_disk_full_on_write_patched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no small file system can be mounted: h5py's writes fail with ENOSPC after a few samples."""
    real = h5py.Dataset.__setitem__
    writes = []

    def fills_up(self: h5py.Dataset, key: object, value: object) -> None:
        writes.append(key)
        if len(writes) > 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", fills_up)
    out = tmp_path / "data" / "syn.h5"
    with pytest.raises(DataError) as info:
        run("synthetic", tmp_path, out=out, params=SYNTHETIC)
    assert str(info.value) == f"no space left on {out.parent}: syn.h5 was not written"
    assert files_under(out.parent) == []


def test_sigterm_during_conversion_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = prepare_module.convert_item
    calls = []

    def terminated_on_the_third(item, num_classes, limits=None):
        calls.append(item.name)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by prepare: Interrupted, not death
        return real(item, num_classes, limits)

    monkeypatch.setattr(prepare_module, "convert_item", terminated_on_the_third)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "data" / "syn.h5"
    with pytest.raises(Interrupted) as info:
        run("synthetic", tmp_path, out=out, params=SYNTHETIC)
    assert info.value.signal_name == "SIGTERM" and len(calls) == 3
    assert files_under(out.parent) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was put back


def ade_zip_with(tmp_path: Path, member_bytes: bytes) -> Path:
    """An ADE20K-layout zip whose first training image is a valid JPEG followed by ``member_bytes``."""
    layout = fx.ade_layout()
    name = f"ADEChallengeData2016/images/training/{fx.ADE_TRAIN[0]}.jpg"
    layout.members[name] = layout.members[name] + member_bytes
    return fx.write_zip(tmp_path / "in" / fx.ADE_ZIP, layout).path


def test_a_zip_bomb_is_refused_before_conversion(tmp_path: Path) -> None:
    """The issue's case: a small zip whose image member inflates to hundreds of MB (here 40 MiB)."""
    bomb = ade_zip_with(tmp_path, bytes(40 * MiB))
    assert bomb.stat().st_size < 200_000
    digest = {fx.ADE_ZIP: {"md5": fx.md5_of(bomb)}}
    for options in ({"checksums": digest}, {"verify": False}):  # verified or not, the plan opens it
        with pytest.raises(ArchiveError, match=rf"^{bomb}: expands to at least 40\.\d MiB .*--max-ratio"):
            run("ade20k", tmp_path, archives={"": bomb}, **options)
        assert files_under(tmp_path / "cache") == [] and not (tmp_path / "out.h5").exists()


def test_a_member_over_the_size_limit_stops_or_is_skipped(tmp_path: Path) -> None:
    bomb = ade_zip_with(tmp_path, bytes(2 * MiB))
    limits = ArchiveLimits(max_member_bytes=MiB)
    name = f"{bomb}:ADEChallengeData2016/images/training/{fx.ADE_TRAIN[0]}.jpg"
    with pytest.raises(DataError, match=rf"^{name}: member .* is 2\.0 MiB, more than the 1\.0 MiB allowed .*--skip-bad"):
        run("ade20k", tmp_path, archives={"": bomb}, verify=False, limits=limits)
    assert not (tmp_path / "out.h5").exists()
    result, _ = run("ade20k", tmp_path, archives={"": bomb}, verify=False, limits=limits, skip_bad=True)
    assert result.counts == {"train": len(fx.ADE_TRAIN) - 1, "val": len(fx.ADE_VAL)}
    assert [s["file"] for s in result.skipped] == [name]


def test_the_default_limits_pass_every_dataset_layout(
    voc_tar: Built, sbd_tgz: Built, voc2010_tar: Built, context_tgz: Built, ade_zip: Built
) -> None:
    """The builders' archives in the real layouts open and read within the defaults."""
    for built in (voc_tar, sbd_tgz, voc2010_tar, context_tgz, ade_zip):
        prepare_module.verify_archive(built.path)
        with prepare_module.open_archive(built.path) as archive:
            for name in archive.names():
                archive.read(name)


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("synthetic", {"workers": -1}, "--workers must be 0 (one per core) or more, got -1"),
        ("synthetic", {"timeout": 0}, "--timeout must be a number of seconds above 0"),
        ("synthetic", {"min_pixels": 0}, "--min-pixels must be at least 1"),
        ("synthetic", {"params": {"size": 0}}, "at least 32 and at most 1024 pixels wide, got 0"),
        ("synthetic", {"params": {"size": 100_000}}, "at most 1024 pixels wide, got 100000"),
        ("synthetic", {"params": {"num_train": -1}}, "at least 1 train and 1 val image"),
        ("synthetic", {"params": {"seed": -1}}, "seed must be 0 or more"),
        ("voc", {"mirror": "mirror.example/voc"}, "bad --mirror value 'mirror.example/voc'"),
        ("voc", {"archives": {"": Path("/nonexistent/VOC.tar")}}, "archive /nonexistent/VOC.tar does not exist"),
        ("voc", {"urls": {"other.tar": "http://x/y"}}, "--url names 'other.tar'"),
        ("folder", {"params": {"images": Path("/nonexistent")}}, "needs --images DIR and --classes FILE"),
        ("folder", {"params": {"images": Path("/"), "classes": Path("/nonexistent.txt")}}, "class list file not found"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path: Path, source: str, options: dict, message: str) -> None:
    with pytest.raises((ConfigError, DataError), match=message.replace("(", r"\(").replace(")", r"\)")):
        run(source, tmp_path, **options)
    assert files_under(tmp_path) == [] and not (tmp_path / "cache").exists()  # not even the cache folder


def test_a_bad_out_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "existing"
    folder.mkdir()
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=rf"--out {folder} is a folder"):
            run("synthetic", tmp_path, out=folder, params=SYNTHETIC, overwrite=overwrite)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match=r"a-file is a file, not a folder"):
        run("synthetic", tmp_path, out=tmp_path / "a-file" / "syn.h5", params=SYNTHETIC)
    with pytest.raises(ConfigError, match=r"--out should end in \.h5 or \.hdf5"):
        run("synthetic", tmp_path, out=tmp_path / "syn.txt", params=SYNTHETIC)
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_out_is_refused_before_any_work(tmp_path: Path) -> None:
    with small_disk(tmp_path / "ro", "64k", read_only=True) as ro:
        with pytest.raises(ConfigError, match=rf"--out {ro}/syn\.h5: cannot write in {ro} \(Read-only file system\)"):
            run("synthetic", tmp_path, out=ro / "syn.h5", params=SYNTHETIC)
    assert not (tmp_path / "cache").exists()


def test_workers_are_capped_at_the_core_count(
    voc_for_the_pool: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = prepare_module.cf.ProcessPoolExecutor
    sizes = []

    def recording(workers: int, **kwargs):
        sizes.append(workers)
        return real(workers, **kwargs)

    monkeypatch.setattr(prepare_module.cf, "ProcessPoolExecutor", recording)
    monkeypatch.setattr(prepare_module.os, "cpu_count", lambda: 2)
    run("voc", tmp_path, archives={"": voc_for_the_pool.path}, checksums=md5(voc_for_the_pool), workers=10_000)
    assert sizes == [2]


def test_one_pool_serves_every_split_and_the_collector_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two splits big enough for the pool: one pool (forked once, after gc.freeze), the same file as one
    worker writes, and afterwards nothing is left frozen."""
    ids = [f"2011_{i:06d}" for i in range(45)]
    built = fx.write_tar(tmp_path / "in" / fx.VOC2012_TAR, fx.voc2012_layout(ids[:20], ids[20:], []))
    real = prepare_module.cf.ProcessPoolExecutor
    pools, frozen = [], []

    def recording(workers: int, **kwargs):
        pools.append(workers)
        frozen.append(gc.get_freeze_count())
        return real(workers, **kwargs)

    monkeypatch.setattr(prepare_module.cf, "ProcessPoolExecutor", recording)
    monkeypatch.setattr(prepare_module.os, "cpu_count", lambda: 2)
    one, _ = run("voc", tmp_path, out=tmp_path / "one.h5", archives={"": built.path}, checksums=md5(built))
    two, _ = run("voc", tmp_path, out=tmp_path / "two.h5", archives={"": built.path}, checksums=md5(built), workers=2)
    assert one.counts == two.counts == {"train": 20, "val": 25}
    assert pools == [2] and gc.get_freeze_count() == 0
    if "fork" in multiprocessing.get_all_start_methods():
        assert frozen[0] > 0  # the plan was frozen before the workers were forked
    with h5py.File(one.out, "r") as a, h5py.File(two.out, "r") as b:
        for split in ("train", "val"):
            assert [bytes(x) for x in a[split]["images"][...]] == [bytes(x) for x in b[split]["images"][...]]
            assert [bytes(x) for x in a[split]["masks"][...]] == [bytes(x) for x in b[split]["masks"][...]]
            assert a[split]["names"][...].tolist() == b[split]["names"][...].tolist()
            np.testing.assert_array_equal(a[split]["class_pixels"][...], b[split]["class_pixels"][...])
