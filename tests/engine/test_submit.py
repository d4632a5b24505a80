"""``encnet submit``'s library (engine/submit.py): each server's layout, PNG mode, palette and values,
equal to the model's argmax as ``encnet predict`` gives it (+1 for ADE20K, labelIds for Cityscapes),
the archives' members, and the refusals (wrong classes, existing outputs, colliding names)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import write_h5, write_images, write_model
from PIL import Image

from encnet_core.choices import SUBMIT_SERVERS
from encnet_core.data.sources.ade20k import ADE20K_CLASSES
from encnet_core.data.sources.cityscapes_labels import CLASSES as CITYSCAPES_CLASSES
from encnet_core.data.sources.cityscapes_labels import TRAIN_TO_LABEL_ID
from encnet_core.data.sources.voc import VOC_CLASSES
from encnet_core.engine.device import resolve_device
from encnet_core.engine.inference import InferenceRequest
from encnet_core.engine.masks import PredictOptions, predict
from encnet_core.engine.segmentation import reference_protocol
from encnet_core.engine.submit import SERVERS, SubmitOptions, run
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import voc_palette
from encnet_core.weights.model_files import load_model

CLASSES = {"voc": list(VOC_CLASSES), "ade20k": list(ADE20K_CLASSES), "cityscapes": list(CITYSCAPES_CLASSES)}
CPU = "cpu"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {server: write_model(folder / f"{server}.pt", classes, seed=i) for i, (server, classes) in enumerate(CLASSES.items())}


def expected_labels(model: Path, images: list[Path], out: Path, inference: InferenceRequest = InferenceRequest(batch_size=1)) -> dict[str, np.ndarray]:
    """``encnet predict``'s index masks (engine/masks.py) for ``images``, by stem."""
    loaded = load_model(model, resolve_device(CPU))
    options = PredictOptions(output=out, inference=inference.config(loaded.crop_size, loaded.base_size), mask_format="index", batch_size=1)
    predict(loaded, images, options)
    return {p.stem: np.asarray(Image.open(out / f"{p.stem}.png")) for p in images}


def options(server: str, output: Path, **kwargs) -> SubmitOptions:
    return SubmitOptions(server=server, output=output, device=CPU, **kwargs)


def test_servers_are_the_cli_choices() -> None:
    assert tuple(SERVERS) == SUBMIT_SERVERS


def test_voc_layout_palette_values_and_tgz(models: dict[str, Path], tmp_path: Path) -> None:
    names = ["2008_000001", "2008_000002", "2009_000003"]
    images = write_images(tmp_path / "images", names, [(40, 56), (40, 56), (33, 47)])
    result = run(models["voc"], tmp_path / "images", options("voc", tmp_path / "out"), InferenceRequest(batch_size=1))
    folder = tmp_path / "out" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert result.folder == folder.resolve() and sorted(p.name for p in folder.iterdir()) == [f"{n}.png" for n in names]
    expected = expected_labels(models["voc"], images, tmp_path / "predict")
    palette = voc_palette(256).reshape(-1).tolist()
    seen = set()
    for name in names:
        with Image.open(folder / f"{name}.png") as png:
            assert png.mode == "P" and png.getpalette() == palette  # the whole VOC colour map, 255 included
            values = np.asarray(png)
        np.testing.assert_array_equal(values, expected[name])
        assert values.max() <= 20
        seen |= set(np.unique(values).tolist())
    assert len(seen) > 1  # the random model predicts several classes: the comparison means something
    assert result.archive == (tmp_path / "out" / "results.tgz").resolve()
    with tarfile.open(result.archive) as tar:
        members = tar.getnames()
        assert members == ["results", "results/VOC2012", "results/VOC2012/Segmentation", "results/VOC2012/Segmentation/comp6_test_cls"] + [
            f"results/VOC2012/Segmentation/comp6_test_cls/{n}.png" for n in names
        ]
        for name in names:
            data = tar.extractfile(f"results/VOC2012/Segmentation/comp6_test_cls/{name}.png").read()
            assert data == (folder / f"{name}.png").read_bytes()


def test_ade20k_values_are_classes_plus_one_and_zip_beside(models: dict[str, Path], tmp_path: Path) -> None:
    names = ["ADE_test_00000001", "ADE_test_00000002"]
    images = write_images(tmp_path / "images", names, [(36, 50), (52, 30)])
    out = tmp_path / "sub" / "ade"
    result = run(models["ade20k"], tmp_path / "images", options("ade20k", out), InferenceRequest(batch_size=1))
    expected = expected_labels(models["ade20k"], images, tmp_path / "predict")
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.png" for n in names]
    for name in names:
        with Image.open(out / f"{name}.png") as png:
            assert png.mode == "L"
            values = np.asarray(png)
        np.testing.assert_array_equal(values, expected[name].astype(np.int64) + 1)
        assert 1 <= values.min() and values.max() <= 150
    assert result.archive == (tmp_path / "sub" / "submission.zip").resolve()
    with zipfile.ZipFile(result.archive) as bundle:
        assert bundle.namelist() == [f"{n}.png" for n in names]
        assert all(bundle.read(f"{n}.png") == (out / f"{n}.png").read_bytes() for n in names)


def test_cityscapes_from_a_prepared_test_split(models: dict[str, Path], tmp_path: Path) -> None:
    """Names from the file get _leftImg8bit; values are labelIds; multi-scale + flip as predict does them."""
    names = ["berlin_000000_000019", "bonn_000001_000019"]
    images = write_images(tmp_path / "images", names, [(32, 64), (32, 64)])
    data = write_h5(tmp_path / "cityscapes.h5", images, names)
    request = InferenceRequest(scales="0.75,1.25", flip=True, batch_size=4)
    out = tmp_path / "out"
    result = run(models["cityscapes"], data, options("cityscapes", out), request)
    expected = expected_labels(models["cityscapes"], images, tmp_path / "predict", request)
    files = [f"{n}_leftImg8bit.png" for n in names]
    assert result.files == files and sorted(p.name for p in out.iterdir()) == files
    assert result.inference["scales"] == [0.75, 1.25] and result.inference["flip"] is True
    for name, file in zip(names, files, strict=True):
        with Image.open(out / file) as png:
            assert png.mode == "L"
            values = np.asarray(png)
        np.testing.assert_array_equal(values, TRAIN_TO_LABEL_ID[expected[name]])
        assert set(np.unique(values).tolist()) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    with zipfile.ZipFile(tmp_path / "submission.zip") as bundle:
        assert bundle.namelist() == files


def test_cityscapes_folder_keeps_the_stem(models: dict[str, Path], tmp_path: Path) -> None:
    write_images(tmp_path / "leftImg8bit" / "test" / "berlin", ["berlin_000000_000019_leftImg8bit"], [(32, 64)])
    write_images(tmp_path / "leftImg8bit" / "test" / "bonn", ["bonn_000001_000019_leftImg8bit"], [(32, 64)])
    result = run(models["cityscapes"], tmp_path / "leftImg8bit", options("cityscapes", tmp_path / "out"), InferenceRequest())
    assert result.files == ["berlin_000000_000019_leftImg8bit.png", "bonn_000001_000019_leftImg8bit.png"]


def test_reference_protocol_uses_the_servers_dataset(models: dict[str, Path], tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["a"], [(24, 30)])
    result = run(models["voc"], tmp_path / "images", options("voc", tmp_path / "out", protocol="reference"), InferenceRequest(batch_size=16))
    assert result.inference == {"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "slide": False, "flip": True, "merge": "reference",
                                "crop_size": 32, "base_size": 48, "stride_rate": 2 / 3}  # fmt: skip
    city = run(models["cityscapes"], tmp_path / "images", options("cityscapes", tmp_path / "city", protocol="reference"), InferenceRequest(batch_size=16))
    assert city.inference["scales"] == list(reference_protocol("cityscapes").scales)  # the citys scales once PROTOCOLS has them


@pytest.mark.parametrize(("server", "model", "message"), [
    ("voc", "ade20k", "the model predicts 150 classes but the PASCAL VOC 2012 server takes 21"),
    ("cityscapes", "voc", "the model predicts 21 classes but the Cityscapes server takes 19"),
])  # fmt: skip
def test_wrong_class_count_is_refused(models: dict[str, Path], tmp_path: Path, server: str, model: str, message: str) -> None:
    write_images(tmp_path / "images", ["a"], [(24, 30)])
    with pytest.raises(ConfigError, match=message):
        run(models[model], tmp_path / "images", options(server, tmp_path / "out"), InferenceRequest())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_wrong_class_names_are_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.pt", [f"class_{i}" for i in range(19)])
    write_images(tmp_path / "images", ["a"], [(24, 30)])
    with pytest.raises(ConfigError, match=r"the model's class 0 is 'class_0' where the Cityscapes server's is 'road' \(19 of 19 names differ\)"):
        run(model, tmp_path / "images", options("cityscapes", tmp_path / "out"), InferenceRequest())


def test_existing_outputs_need_overwrite(models: dict[str, Path], tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["a", "b"], [(24, 30), (24, 30)])
    out = tmp_path / "out"
    run(models["ade20k"], tmp_path / "images", options("ade20k", out), InferenceRequest())
    before = {p.name: p.read_bytes() for p in [*out.iterdir(), tmp_path / "submission.zip"]}
    with pytest.raises(ConfigError, match=r"3 outputs exist already .*; pass --overwrite to replace them"):
        run(models["ade20k"], tmp_path / "images", options("ade20k", out), InferenceRequest())
    (out / "a.png").unlink()
    (out / "b.png").unlink()
    with pytest.raises(ConfigError, match=r"1 outputs exist already \(e.g. .*submission.zip\)"):
        run(models["ade20k"], tmp_path / "images", options("ade20k", out), InferenceRequest())
    run(models["ade20k"], tmp_path / "images", options("ade20k", out, overwrite=True), InferenceRequest())
    assert {p.name: p.read_bytes() for p in [*out.iterdir(), tmp_path / "submission.zip"]} == before


def test_bad_inputs_are_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    write_images(tmp_path / "images" / "x", ["a"], [(24, 30)])
    write_images(tmp_path / "images" / "y", ["a"], [(24, 30)])
    with pytest.raises(DataError, match=r"images 0 and 1 of .* would both write a.png; rename one"):
        run(models["voc"], tmp_path / "images", options("voc", tmp_path / "out"), InferenceRequest())
    data = write_h5(tmp_path / "d.h5", [tmp_path / "images" / "x" / "a.png"], ["a"])
    with pytest.raises(DataError, match=r"has no split 'val'; it has test \(choose one with --split\)"):
        run(models["voc"], data, options("voc", tmp_path / "out", split="val"), InferenceRequest())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "z.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read the image .*z.png .*a submission needs every image"):
        run(models["voc"], tmp_path / "broken", options("voc", tmp_path / "out2"), InferenceRequest())


def test_server_png_bytes(tmp_path: Path) -> None:
    """The PNGs read back as written: VOC palette indices, ADE +1, Cityscapes labelIds (every trainId)."""
    labels = np.arange(19, dtype=np.uint8).reshape(1, 19)
    city = np.asarray(Image.open(io.BytesIO(SERVERS["cityscapes"].encode(labels))))
    np.testing.assert_array_equal(city[0], [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    ade = np.asarray(Image.open(io.BytesIO(SERVERS["ade20k"].encode(np.array([[0, 149]], dtype=np.uint8)))))
    np.testing.assert_array_equal(ade, [[1, 150]])
