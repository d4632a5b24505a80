"""OpenVINO: export to an IR (.xml + .bin), load it (and ONNX files) with OpenVINO's CPU runtime, refuse
damaged IRs and ONNX files whose external data lies outside their folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_error_line
from typer.testing import CliRunner

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'encnet[openvino]'")
onnx = pytest.importorskip("onnx", reason="the ONNX checks need the onnx extra: pip install 'encnet[onnx]'")

from encnet_cli.main import app  # noqa: E402
from encnet_core.engine.inference import InferenceConfig, infer  # noqa: E402
from encnet_core.errors import CheckpointError, ConfigError, EncNetError  # noqa: E402
from encnet_core.models import create_model  # noqa: E402
from encnet_core.segmenter import Segmenter  # noqa: E402
from encnet_core.weights.checkpoint import save_checkpoint  # noqa: E402
from encnet_core.weights.export import export_model  # noqa: E402
from encnet_core.weights.metadata import METADATA_NAME  # noqa: E402
from encnet_core.weights.model_files import detect_format, load_model, peek_metadata  # noqa: E402
from encnet_core.weights.openvino import load_openvino  # noqa: E402

CLASSES = ["sky", "road", "car", "person"]
PALETTE = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("encnet_tiny", len(CLASSES))
    model.train()  # non-trivial BatchNorm statistics: a format that dropped them would show
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, 48, 48) * 2 + 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(
        {
            "model_config": model.config, "model": model.state_dict(), "classes": CLASSES, "palette": PALETTE,
            "mean": MEAN, "std": STD, "base_size": 64, "crop_size": 48, "iteration": 7, "epoch": 1,
            "train_config": {"data": "x.h5"},
        },
        path,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ir") / "model.xml"
    result = export_model(checkpoint, out, "openvino")
    assert result.path == out and result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert result.bytes == out.stat().st_size + out.with_suffix(".bin").stat().st_size
    return out


def test_export_writes_xml_and_bin_float32_with_metadata(checkpoint: Path, ir: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in ir.parent.iterdir()) == ["model.bin", "model.xml"]  # no temp files left
    assert detect_format(ir) == "openvino"
    text = ir.read_text()
    assert 'element_type="f16"' not in text and 'element_type="f32"' in text  # compress_to_fp16=False
    # the rt_info JSON is the same JSON as the ONNX export's metadata_props (apart from export_format)
    onnx_file = export_model(checkpoint, tmp_path / "model.onnx", "onnx").path
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    ir_meta = json.loads(ov.Core().read_model(str(ir)).get_rt_info([METADATA_NAME]).astype(str))
    assert ir_meta == {**json.loads(props[METADATA_NAME]), "export_format": "openvino"}
    meta = peek_metadata(ir)
    assert meta["format"] == "openvino" and meta["runs_code"] is False
    assert meta["classes"] == CLASSES and meta["palette"] == PALETTE and meta["mean"] == MEAN and meta["std"] == STD
    assert meta["base_size"] == 64 and meta["crop_size"] == 48 and meta["training"]["iteration"] == 7
    assert meta["export_format"] == "openvino" and meta["half"] is False


def test_outputs_and_masks_agree_with_eager_torch(checkpoint: Path, ir: Path) -> None:
    source = load_model(checkpoint, CPU)
    exported = load_model(ir, CPU)
    assert exported.source == "openvino" and exported.has_se and exported.classes == CLASSES
    assert exported.palette.tolist() == PALETTE and exported.crop_size == 48 and exported.base_size == 64
    x = torch.randn(3, 3, 40, 72)  # another batch and size than the export's sample: dynamic shapes
    torch.testing.assert_close(exported.forward(x), source.forward(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(exported.se_forward(x), source.se_forward(x), rtol=1e-4, atol=1e-4)
    generator = torch.Generator().manual_seed(1)
    image = exported.normalize((torch.rand(3, 57, 83, generator=generator) * 255).to(torch.uint8))
    whole = InferenceConfig(crop_size=48, base_size=64, pad_value=source.pad_value)
    multi = InferenceConfig(scales=(0.75, 1.0, 1.25), flip=True, crop_size=48, base_size=64, pad_value=source.pad_value)
    for config in (whole, multi):
        expected = infer(source.forward, image, len(CLASSES), config).argmax(0)
        got = infer(exported.forward, image, len(CLASSES), config).argmax(0)
        assert (got == expected).float().mean().item() >= 0.999


def test_onnx_files_load_through_openvino(checkpoint: Path, tmp_path: Path) -> None:
    onnx_file = export_model(checkpoint, tmp_path / "model.onnx", "onnx").path
    via_openvino, via_ort = load_openvino(onnx_file, CPU), load_model(onnx_file, CPU)
    assert via_openvino.source == "openvino" and via_openvino.classes == CLASSES and via_openvino.has_se
    x = torch.randn(2, 3, 36, 52)
    torch.testing.assert_close(via_openvino.forward(x), via_ort.forward(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="not an OpenVINO IR"):
        load_openvino(checkpoint, CPU)


def test_cuda_request_runs_on_cpu_with_a_warning(ir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="encnet"):
        model = load_openvino(ir, torch.device("meta"))  # any non-CPU torch device: "meta" needs no GPU
    assert [r.getMessage() for r in caplog.records] == ["OpenVINO runs on the CPU here; its outputs are moved to meta"]
    out = model.forward(torch.randn(1, 3, 32, 32))
    assert out.device.type == "meta" and out.shape == (1, len(CLASSES), 32, 32)


def test_half_compresses_weights_only(checkpoint: Path, ir: Path, tmp_path: Path) -> None:
    result = export_model(checkpoint, tmp_path / "half.xml", "openvino", half=True)
    assert result.max_abs_diff is not None and result.max_abs_diff < 2e-2
    assert (tmp_path / "half.bin").stat().st_size < 0.6 * ir.with_suffix(".bin").stat().st_size
    model = load_model(result.path, CPU)
    assert model.metadata["half"] is True
    assert model.forward(torch.randn(1, 3, 32, 40)).dtype == torch.float32  # float32 input and output


def test_export_is_both_files_or_neither(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(EncNetError, match="verification failed"):
        export_model(checkpoint, tmp_path / "a.xml", "openvino", tolerance=0.0, sample_size=32)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="give a .xml name"):
        export_model(checkpoint, tmp_path / "a.ir", "openvino")
    (tmp_path / "b.bin").write_bytes(b"old")
    with pytest.raises(ConfigError, match="b.bin exists; pass --overwrite"):
        export_model(checkpoint, tmp_path / "b.xml", "openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]
    result = export_model(checkpoint, tmp_path / "b.xml", "openvino", overwrite=True, hash_name=True, verify=False)
    assert result.path.name.startswith("b-") and result.path.with_suffix(".bin").is_file()
    assert load_model(result.path, CPU).classes == CLASSES


def test_cli_export_info_predict_and_segmenter(checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "model.xml"
    result = runner.invoke(app, ["export", str(checkpoint), str(out), "--format", "openvino", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["format"] == "openvino" and summary["max_abs_diff"] < 1e-4 and summary["classes"] == 4
    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["format"] == "openvino" and meta["classes"] == CLASSES and meta["export_format"] == "openvino"
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "openvino" in result.output and "sky, road, car, person" in result.output
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(images / "a.png")
    result = runner.invoke(app, ["predict", str(out), str(images), "-o", str(tmp_path / "pred"), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    mask = Image.open(tmp_path / "pred" / "a.png")
    assert mask.mode == "P" and mask.size == (40, 30) and mask.getpalette()[:6] == PALETTE[0] + PALETTE[1]
    eager = Segmenter.load(checkpoint, device="cpu")(images / "a.png")
    segmentation = Segmenter.load(out, device="cpu")(images / "a.png")
    assert segmentation.classes == CLASSES and np.array_equal(np.asarray(mask), segmentation.labels)
    assert (segmentation.labels == eager.labels).mean() >= 0.999


def _copy_ir(ir: Path, folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    xml = folder / f"{name}.xml"
    xml.write_bytes(ir.read_bytes())
    xml.with_suffix(".bin").write_bytes(ir.with_suffix(".bin").read_bytes())
    return xml


def test_damaged_ir_is_one_line_naming_the_file(ir: Path, tmp_path: Path) -> None:
    truncated_bin = _copy_ir(ir, tmp_path, "short_bin")
    truncated_bin.with_suffix(".bin").write_bytes(ir.with_suffix(".bin").read_bytes()[:100_000])
    truncated_xml = _copy_ir(ir, tmp_path, "short_xml")
    truncated_xml.write_bytes(ir.read_bytes()[:20_000])
    garbage = _copy_ir(ir, tmp_path, "garbage")
    garbage.write_bytes(b"\x00\xff not xml at all" * 10)
    no_bin = _copy_ir(ir, tmp_path, "no_bin")
    no_bin.with_suffix(".bin").unlink()
    cases = {
        truncated_bin: "not a readable OpenVINO IR (Incorrect weights in bin file!)",
        truncated_xml: "not a readable OpenVINO IR",
        garbage: "not a readable OpenVINO IR",
        no_bin: f"its weights file {no_bin.with_suffix('.bin')} is missing",
    }
    runner = CliRunner()
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=None) as caught:
            load_model(path, CPU)
        assert str(caught.value).startswith(str(path)) and message in str(caught.value) and "\n" not in str(caught.value)
        for command in (["info", str(path)], ["predict", str(path), str(tmp_path), "-o", str(tmp_path / "p"), "--device", "cpu"]):
            line = one_error_line(runner.invoke(app, command))
            assert str(path) in line and message in line


def _onnx_with_external(folder: Path, location: str) -> Path:
    """A one-node ONNX model (y = x + w) whose initializer w is stored in an external file at ``location``."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["image", "w"], ["out"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])], initializer=[weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = model.metadata_props.add()
    meta.key, meta.value = METADATA_NAME, json.dumps({"classes": ["a"]})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "crafted.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.float32([41.0]).tobytes())
    (tmp_path / "models" / "link.bin").parent.mkdir()
    (tmp_path / "models" / "link.bin").symlink_to(secret)
    for location in ("../secret.bin", str(secret), "sub/../../secret.bin", "link.bin"):
        path = _onnx_with_external(tmp_path / "models", location)
        for load in (load_model, load_openvino, lambda p, _d: peek_metadata(p)):
            with pytest.raises(CheckpointError, match="refers to external data outside its folder") as caught:
                load(path, CPU)
            assert str(caught.value).startswith(str(path)) and location in str(caught.value)
    # inside the folder, the same file is opened by both runtimes (the check refuses only what leaves it)
    (tmp_path / "models" / "w.bin").write_bytes(np.float32([41.0]).tobytes())
    path = _onnx_with_external(tmp_path / "models", "w.bin")
    from encnet_core.weights.model_files import check_onnx_file

    assert json.loads(check_onnx_file(path)[METADATA_NAME]) == {"classes": ["a"]}
    model = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU")
    assert model(np.float32([1.0]))[model.outputs[0]].tolist() == [42.0]
    line = one_error_line(CliRunner().invoke(app, ["info", str(_onnx_with_external(tmp_path / "other", "../secret.bin"))]))
    assert "refers to external data outside its folder" in line
