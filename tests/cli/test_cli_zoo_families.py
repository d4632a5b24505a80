"""A published DeepLabV3-on-ResNeSt model and a ResNeSt ImageNet backbone by name, end to end: reference-format
zips (the reference's key names: ``pretrained.``, ``head.aspp``/``head.block``, ``auxlayer.conv5.``) served from
127.0.0.1, then every command that takes a zoo name: weights pull/list, predict, evaluate --protocol reference,
info, export, train --init-from / --backbone-weights, and Segmenter.load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_fixtures as zf
from helpers import make_synthetic
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.hdf5 import read_info
from encnet_core.models import build_backbone, create_model
from encnet_core.weights import zoo

fx = zf.data_fixtures()
http_server = fx.http_server
zoo_cache = zf.zoo_cache

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _tiny_deeplab(monkeypatch: pytest.MonkeyPatch, dataset: str, classes: int) -> tuple[zf.Published, torch.nn.Module]:
    """``deeplab_resnest_tiny_<dataset>``, saved under the reference's names as its DeepLabV3 would be."""
    torch.manual_seed(3)
    model = create_model("deeplab_resnest_tiny", classes)
    with torch.no_grad():  # BN statistics that matter
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    state = zf.to_reference(model.state_dict())
    assert any(k.startswith("head.aspp.b4.gap.1.") for k in state) and any(k.startswith("auxlayer.conv5.") for k in state)
    published = zf.publish(
        monkeypatch, f"deeplab_resnest_tiny_{dataset}", state, kind="segmentation", dataset=dataset,
        model="deeplab_resnest_tiny", base_size=64, crop_size=48,
    )  # fmt: skip
    return published, model.eval()


def test_a_published_deeplab_by_name_in_every_command(http_server, zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_synthetic(tmp_path, 4, 3, size=40)
    info = read_info(data)
    monkeypatch.setitem(zoo.DATASET_LABELS, "synthetic", lambda: (list(info.classes), info.palette))
    published, reference = _tiny_deeplab(monkeypatch, "synthetic", len(info.classes))
    mirror = zf.serve(http_server, published)
    name = published.entry.name

    result = run("weights", "pull", name, "--mirror", mirror)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(run("weights", "list", "--json").stdout)}
    assert rows[name]["cached"] is True and rows[name]["model"] == "deeplab_resnest_tiny"

    # the cached weights are the published ones: same logits as the model they were saved from
    from encnet_core.segmenter import Segmenter

    image = np.random.default_rng(0).integers(0, 255, (36, 44, 3), dtype=np.uint8)
    segmenter = Segmenter.load(name, device="cpu")
    x = torch.randn(1, 3, 36, 44)
    with torch.no_grad():
        torch.testing.assert_close(segmenter.model.forward(x), reference(x)["out"], rtol=0, atol=1e-5)  # channels-last eager
    assert segmenter.seg(image).labels.shape == (36, 44)

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")
    result = run("predict", name, images, "-o", tmp_path / "masks", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.array(Image.open(tmp_path / "masks" / "a.png")), segmenter.seg(image).labels)

    result = run("evaluate", name, data, "--device", "cpu", "-j", "0", "--protocol", "reference", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 3 and report["model"] == name and len(report["iou"]) == len(info.classes)

    shown = run("info", name)
    assert shown.exit_code == 0 and "deeplab_resnest_tiny" in shown.stdout

    result = run("export", name, tmp_path / "tiny.onnx", "--format", "onnx")
    assert result.exit_code == 0, result.output
    result = run("predict", tmp_path / "tiny.onnx", images, "-o", tmp_path / "onnx-masks", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    agree = np.array(Image.open(tmp_path / "onnx-masks" / "a.png")) == segmenter.seg(image).labels
    assert agree.mean() >= 0.999

    # fine-tuning from the published model: same architecture, another class count (the classifiers are re-initialised)
    result = run("train", data, "--model", "deeplab_resnest_tiny", "--init-from", name, "--iters", "1", "--batch-size", "2",
                 "--crop-size", "32", "--base-size", "40", "-j", "0", "--device", "cpu", "--output-dir", tmp_path / "ft")  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned = torch.load(tmp_path / "ft" / "last.pt", map_location="cpu", weights_only=True)["model"]
    start = published.state["pretrained.layer1.0.conv2.fc1.weight"]
    assert tuned["backbone.layer1.0.conv2.fc1.weight"].shape == start.shape
    assert len(http_server.state.requests) == 1  # one download served every command


def test_resnest_backbone_weights_by_name(http_server, zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(4)
    state = dict(build_backbone("resnest_tiny").state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)  # the ImageNet classifier, dropped
    published = zf.publish(monkeypatch, "resnest_tinys", state, kind="backbone", dataset="imagenet", model="resnest_tiny")
    monkeypatch.setenv(zoo.MIRROR_ENV, zf.serve(http_server, published))
    from encnet_core.weights.builder import build_model

    for name in ("encnet_resnest_tiny", "deeplab_resnest_tiny", "fcn_resnest_tiny"):
        model = build_model(name, 3, backbone_weights="resnest_tinys")  # what train --backbone-weights does
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)
    data = make_synthetic(tmp_path, 4, 2, size=40)
    result = run("train", data, "--model", "deeplab_resnest_tiny", "--backbone-weights", "resnest_tinys", "--iters", "1",
                 "--batch-size", "2", "--crop-size", "32", "--base-size", "40", "-j", "0", "--device", "cpu",
                 "--output-dir", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    with pytest.raises(Exception, match="holds a resnest_tiny backbone, but the model's is tiny"):
        build_model("deeplab_tiny", 3, backbone_weights="resnest_tinys")
