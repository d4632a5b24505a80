"""The model zoo (encnet_core/weights/zoo.py): the published table, pull/add/resolve over reference-format zips
served from 127.0.0.1, and zoo names wherever a model or backbone weights are taken."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_fixtures as zf

from encnet_core.errors import ArchiveError, ChecksumError, ConfigError, DownloadError, ModelError
from encnet_core.models import create_model
from encnet_core.weights import zoo
from encnet_core.weights.builder import build_model
from encnet_core.weights.model_files import load_model, peek_metadata, read_model_file

fx = zf.data_fixtures()
http_server = fx.http_server
zoo_cache = zf.zoo_cache

# The published facts, typed here from the reference (PyTorch-Encoding): sha1 from
# encoding/models/model_store.py, numbers (pixAcc, mIoU in %, as printed there) from
# docs/source/model_zoo/segmentation.rst, builders' arguments from encoding/models/sseg/{encnet,fcn,deeplab}.py.
PUBLISHED = {
    "encnet_resnet50s_pcontext": ("4de91d5922d4d3264f678b663f874da72e82db00", 79.2, 51.0, 59, True, 520, 480),
    "encnet_resnet101s_pcontext": ("9f27ea13d514d7010e59988341bcbd4140fcc33d", 80.7, 54.1, 59, True, 520, 480),
    "encnet_resnet50s_ade": ("07ac287cd77e53ea583f37454e17d30ce1509a4a", 80.1, 41.5, 150, False, 520, 480),
    "encnet_resnet101s_ade": ("3f54fa3b67bac7619cd9b3673f5c8227cf8f4718", 81.3, 44.4, 150, False, 640, 576),
    "fcn_resnet50s_ade": ("662e979de25a389f11c65e9f1df7e06c2c356381", 78.7, 38.5, 150, False, 520, 480),
    "fcn_resnest50_ade": ("4aba491aaf8e4866a9c9981b210e3e3266ac1f2a", 80.18, 42.94, 150, False, 520, 480),
    "deeplab_resnest50_ade": ("2225f09d0f40b9a168d9091652194bc35ec2a5a9", 81.17, 45.12, 150, False, 520, 480),
    "deeplab_resnest101_ade": ("06ca799c8cc148fe0fafb5b6d052052935aa3cc8", 82.07, 46.91, 150, False, 520, 480),
    "deeplab_resnest200_ade": ("7b9e7d3e6f0e2c763c7d77cad14d306c0a31fe05", 82.45, 48.36, 150, False, 520, 480),
    "deeplab_resnest269_ade": ("0074dd10a6e6696f6f521653fb98224e75955496", 82.62, 47.60, 150, False, 520, 480),
    "fcn_resnest50_pcontext": ("77a2161deeb1564e8b9c41a4bb7a3f33998b00ad", 79.19, 51.98, 59, False, 520, 480),
    "deeplab_resnest50_pcontext": ("08dccbc4f4694baab631e037a374d76d8108c61f", 80.41, 53.19, 59, False, 520, 480),
    "deeplab_resnest101_pcontext": ("faf5841853aae64bd965a7bdc2cdc6e7a2b5d898", 81.91, 56.49, 59, False, 520, 480),
    "deeplab_resnest200_pcontext": ("fe76a26551dd5dcf2d474fd37cba99d43f6e984e", 82.50, 58.37, 59, False, 520, 480),
    "deeplab_resnest269_pcontext": ("b661fd26c49656e01e9487cd9245babb12f37449", 83.06, 58.92, 59, False, 520, 480),
}
BACKBONES = {
    "resnet50s": "a75c83cfc89a56a4e8ba71b14f1ec67e923787b3",
    "resnet101s": "03a0f310d6447880f1b22a83bd7d1aa7fc702c6e",
    "resnet152s": "36670e8bc2428ecd5b7db1578538e2dd23872813",
    "resnest50": "fb9de5b360976e3e8bd3679d3e93c5409a5eff3c",
    "resnest101": "966fb78c22323b0c68097c5c1242bd16d3e07fd5",
    "resnest200": "d7fd712f5a1fcee5b3ce176026fbb6d0d278454a",
    "resnest269": "51ae5f19032e22af4ec08e695496547acdba5ce5",
}


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_segmentation_entries_match_the_reference(name: str) -> None:
    sha1, pixacc, miou, classes, lateral, base, crop = PUBLISHED[name]
    entry = zoo.ZOO[name]
    assert (entry.kind, entry.sha1, entry.base_size, entry.crop_size) == ("segmentation", sha1, base, crop)
    assert entry.arguments == ({"lateral": True} if lateral else {})
    head, backbone, _ = name.split("_")
    assert entry.model == f"{head}_{backbone}"
    assert zoo.describe(entry)["classes"] == classes
    assert entry.url(zoo.REFERENCE_REPO) == f"https://s3.us-west-1.wasabisys.com/encoding/models/{name}-{sha1[:8]}.zip"
    numbers = zoo.published(name)
    assert numbers is not None
    assert (round(numbers["pixAcc"] * 100, 2), round(numbers["mIoU"] * 100, 2)) == (pixacc, miou)
    assert numbers["miou_convention"] == "mIoU_all" and numbers["flip"] is True
    assert numbers["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert (numbers["base_size"], numbers["crop_size"], numbers["split"]) == (base, crop, "val")
    assert "segmentation.rst" in numbers["source"]
    table = "ResNeSt Backbone Models" if backbone.startswith("resnest") else "ResNet Backbone Models"
    assert f"({table})" in numbers["source"]


def test_backbone_entries_and_lookup() -> None:
    for name, sha1 in BACKBONES.items():
        entry = zoo.ZOO[name]
        assert (entry.kind, entry.sha1, entry.model, entry.dataset) == ("backbone", sha1, name, "imagenet")
        assert zoo.published(name) is None
    assert zoo.published("nope") is None and zoo.get("EncNet_ResNet50s_PContext") is zoo.ZOO["encnet_resnet50s_pcontext"]
    assert [e.name for e in zoo.list_models()] == list(PUBLISHED) + list(BACKBONES)
    assert zoo.ZOO["resnet50s"].url("https://mirror.example/x/") == "https://mirror.example/x/models/resnet50s-a75c83cf.zip"


def test_class_lists_of_the_datasets() -> None:
    classes, palette = zoo.DATASET_LABELS["pcontext"]()
    assert len(classes) == 59 and classes[:3] == ["aeroplane", "bag", "bed"] and classes[-1] == "wood"
    ade, ade_palette = zoo.DATASET_LABELS["ade20k"]()
    assert len(ade) == len(set(ade)) == 150 and ade[:2] == ["wall", "building, edifice"] and ade[-1] == "flag"
    assert ade[7] == "bed" and ade[8] == "windowpane, window"  # objectInfo150's trailing spaces stripped
    assert palette.shape == (59, 3) and ade_palette.shape == (150, 3)
    assert palette[0].tolist() == [128, 0, 0]  # VOC colour 1: index 0 is a class, not background


# ----------------------------------------------------------------------------- pull


def test_pull_converts_and_caches_with_metadata(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    mirror = zf.serve(http_server, published)
    name = published.entry.name
    assert not zoo.is_cached(name)
    seen = []
    path = zoo.pull(name, mirror=mirror, progress=lambda d, done, total, *, unit: seen.append((d, unit)))
    assert path == zoo_cache / "weights" / f"{published.entry.stem}.safetensors" and zoo.is_cached(name)
    assert zf.cache_files(zoo_cache) == [f"weights/{published.entry.stem}.safetensors"]  # zip and .pth deleted
    assert (f"downloading {published.entry.stem}.zip", "bytes") in seen
    assert http_server.state.requests == [(f"/zoo{published.url_path}", None)]

    meta = peek_metadata(path)
    classes, palette = zoo.DATASET_LABELS["pcontext"]()
    assert meta["model_config"] == {"name": "encnet_tiny", "num_classes": 59, "lateral": True}
    assert meta["classes"] == classes and np.array_equal(np.asarray(meta["palette"]), palette)
    assert (meta["base_size"], meta["crop_size"], meta["mean"], meta["std"]) == (64, 48, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        provenance = json.loads(handle.metadata()[zoo.ZOO_HEADER])
    assert provenance["sha1"] == published.entry.sha1 and provenance["origin"].endswith(published.url_path)

    # the weights are the reference's, under encnet's names, and give the same logits
    reference = create_model("encnet_tiny", 59, lateral=True)
    reference.load_state_dict({k.replace("pretrained.", "backbone.", 1).replace("auxlayer.conv5.", "aux_head.", 1): v
                               for k, v in published.state.items()})  # fmt: skip
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        expected = reference.eval()(x)["out"]
    loaded = load_model(name, torch.device("cpu"))  # by name: the cached file
    assert loaded.source == "safetensors" and loaded.classes == classes
    # eager CPU inference runs channels-last (engine/device.inference_channels_last): same weights, other summation order
    torch.testing.assert_close(loaded.forward(x), expected, rtol=0, atol=1e-5)


def test_cache_is_reused_without_a_request(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    mirror = zf.serve(http_server, published)
    first = zoo.pull(published.entry.name, mirror=mirror)
    stamp = first.stat().st_mtime_ns
    assert zoo.pull(published.entry.name, mirror=mirror) == first
    assert zoo.resolve(published.entry.name) == first
    read_model_file(published.entry.name)
    assert len(http_server.state.requests) == 1 and first.stat().st_mtime_ns == stamp
    zoo.pull(published.entry.name, mirror=mirror, force=True)
    assert len(http_server.state.requests) == 2


def test_concurrent_pulls_download_once(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks of one torchrun job resolving the same name: one download, the others wait and reuse it."""
    import threading

    published = zf.tiny_segmentation(monkeypatch)
    mirror = zf.serve(http_server, published)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(zoo.pull(published.entry.name, mirror=mirror))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 3 and len(set(results)) == 1 and len(http_server.state.requests) == 1


def test_mirror_from_the_environment(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    monkeypatch.setenv(zoo.MIRROR_ENV, zf.serve(http_server, published, under="/env-mirror"))
    assert zoo.repo_url() == http_server.url("/env-mirror")
    path = zoo.resolve(published.entry.name)  # first use pulls
    assert path.is_file() and http_server.state.requests[0][0] == f"/env-mirror{published.url_path}"
    # --mirror wins over the environment
    other = zf.serve(http_server, published, under="/flag")
    zoo.pull(published.entry.name, mirror=other, force=True)
    assert http_server.state.requests[-1][0] == f"/flag{published.url_path}"


def test_segmenter_load_takes_a_mirror(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from encnet_core import Segmenter
    from encnet_core.fetch.download import NetworkError

    published = zf.tiny_segmentation(monkeypatch)
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://encnet-test.invalid")  # the argument wins over the environment
    with pytest.raises(NetworkError) as info:  # .invalid never resolves: offline, at once
        Segmenter.load(published.entry.name, device="cpu", mirror="http://encnet-test.invalid/api")
    text = str(info.value)
    assert "could not resolve encnet-test.invalid (offline?)" in text and "pass mirror=URL" in text and "--" not in text
    seg = Segmenter.load(published.entry.name, device="cpu", mirror=zf.serve(http_server, published, under="/api"))
    assert http_server.state.requests == [(f"/api{published.url_path}", None)]
    assert seg.classes == zoo.DATASET_LABELS["pcontext"]()[0] and zoo.is_cached(published.entry.name)


def test_interrupted_download_resumes(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    mirror = zf.serve(http_server, published)
    http_server.state.drop_after = 1000
    assert zoo.pull(published.entry.name, mirror=mirror).is_file()
    assert http_server.state.requests[1][1] == "bytes=1000-"


def test_wrong_checksum_leaves_nothing_usable(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    other = zf.pth_bytes({k: v + 1 if v.is_floating_point() else v for k, v in published.state.items()})
    http_server.state.files[f"/zoo{published.url_path}"] = zf.zip_bytes(f"{published.entry.stem}.pth", other)
    with pytest.raises(ChecksumError, match=f"but the reference publishes {published.entry.sha1}") as info:
        zoo.pull(published.entry.name, mirror=http_server.url("/zoo"))
    assert "nothing was cached" in str(info.value) and "\n" not in str(info.value)
    assert zf.cache_files(zoo_cache) == [] and not zoo.is_cached(published.entry.name)
    import hashlib

    digest = hashlib.sha1(other).hexdigest()
    assert f"--checksum sha1:{digest}" in str(info.value)
    # the user vouches for the file: accepted, and the provenance records its real sha1
    path = zoo.pull(published.entry.name, mirror=http_server.url("/zoo"), checksum=f"sha1:{digest}")
    assert path.is_file()
    with pytest.raises(ConfigError, match="40 hexadecimal"):
        zoo.pull(published.entry.name, checksum="sha1:abc")


def test_weights_that_do_not_fit_are_refused(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    state = {k: v for k, v in published.state.items() if not k.startswith("head.connect.")}  # no lateral branch
    bad = zf.publish(monkeypatch, published.entry.name, state, base=published.entry)
    with pytest.raises(ModelError, match="does not fit encnet_tiny .*lateral.*missing"):
        zoo.pull(bad.entry.name, mirror=zf.serve(http_server, bad))
    assert zf.cache_files(zoo_cache) == []
    state = dict(published.state, **{"head.conv6.1.bias": torch.zeros(21)})  # another class count
    bad = zf.publish(monkeypatch, published.entry.name, state, base=published.entry)
    with pytest.raises(ModelError, match=r"head.conv6.1.bias has shape \(21,\), expected \(59,\)"):
        zoo.pull(bad.entry.name, mirror=zf.serve(http_server, bad))
    assert zf.cache_files(zoo_cache) == []


def test_a_zip_without_the_member_is_refused(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    http_server.state.files[f"/zoo{published.url_path}"] = zf.zip_bytes("README.txt", b"moved")
    with pytest.raises(ArchiveError, match=f"holds no {published.entry.stem}.pth"):
        zoo.pull(published.entry.name, mirror=http_server.url("/zoo"))
    assert zf.cache_files(zoo_cache) == []


def test_offline_names_the_url_and_the_ways_out(zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = "encnet_resnet50s_pcontext"
    with pytest.raises(DownloadError) as info:
        zoo.pull(name, mirror=f"http://127.0.0.1:{port}/enc", retries=1, timeout=2)
    text = str(info.value)
    assert text.startswith(
        f"cannot download http://127.0.0.1:{port}/enc/models/{name}-4de91d59.zip: 127.0.0.1:{port} refused the connection"
    )
    assert "--mirror URL" in text and zoo.MIRROR_ENV in text and f"encnet weights add {name} FILE.pth" in text
    assert "attempts" not in text and "resume" not in text  # refused: no retries, and nothing to resume
    assert "\n" not in text and not zoo.is_cached(name)


def test_missing_file_on_the_mirror(http_server, zoo_cache: Path) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 404.*--mirror URL"):
        zoo.pull("resnet101s", mirror=http_server.url("/empty"))
    assert zf.cache_files(zoo_cache) == []


def test_unknown_names() -> None:
    with pytest.raises(ModelError, match="unknown zoo model 'encnet_resnet9s'.*encnet_resnet50s_pcontext"):
        zoo.pull("encnet_resnet9s")
    with pytest.raises(ModelError, match="unknown zoo model"):
        zoo.add("nope", Path("x.pth"))


# ----------------------------------------------------------------------------- the reference's real key table


@pytest.mark.slow
def test_real_encnet_resnet50s_pcontext_table_converts_strictly(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .pth with every key and shape of the reference's encnet_resnet50s (lateral, 59 classes), as published."""
    state = zf.random_state(zf.read_table("pytorch-encoding-encnet_resnet50s_lateral.tsv"))
    published = zf.publish(monkeypatch, "encnet_resnet50s_pcontext", state, base=zoo.ZOO["encnet_resnet50s_pcontext"])
    path = zoo.pull(published.entry.name, mirror=zf.serve(http_server, published))
    checkpoint = read_model_file(path)
    assert checkpoint["model_config"] == {"name": "encnet_resnet50s", "num_classes": 59, "lateral": True}
    with torch.device("meta"):
        own = create_model("encnet_resnet50s", 59, lateral=True).state_dict()
    assert {k: tuple(v.shape) for k, v in checkpoint["model"].items()} == {k: tuple(v.shape) for k, v in own.items()}
    for ours, theirs in (("backbone.conv1.0.weight", "pretrained.conv1.0.weight"), ("aux_head.4.bias", "auxlayer.conv5.4.bias"),
                         ("head.encmodule.encoding.3.codewords", "head.encmodule.encoding.3.codewords")):  # fmt: skip
        assert torch.equal(checkpoint["model"][ours], state[theirs])
    assert len(checkpoint["classes"]) == 59 and checkpoint["crop_size"] == 480


# ----------------------------------------------------------------------------- add and resolve


def test_add_a_local_pth_or_zip(tmp_path: Path, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    pth = tmp_path / f"{published.entry.stem}.pth"
    pth.write_bytes(published.pth)
    path = zoo.add(published.entry.name, pth)
    assert path == zoo.cache_path(published.entry.name) and pth.read_bytes() == published.pth  # kept as it was
    assert peek_metadata(published.entry.name)["model_config"]["name"] == "encnet_tiny"
    path.unlink()
    archive = tmp_path / "download.zip"
    archive.write_bytes(published.zip)
    assert zoo.add(published.entry.name, archive).is_file()
    assert zf.cache_files(zoo_cache) == [f"weights/{published.entry.stem}.safetensors"]


def test_cache_files_record_a_digest_checked_on_read(tmp_path: Path, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache file damaged after the pull (its tensor bytes changed) is refused, model and backbone alike."""
    import struct

    from safetensors import safe_open

    from encnet_core.errors import CheckpointError
    from encnet_core.weights.checkpoint import tensor_digest

    for published in (zf.tiny_segmentation(monkeypatch), zf.tiny_backbone(monkeypatch)):
        pth = tmp_path / f"{published.entry.stem}.pth"
        pth.write_bytes(published.pth)
        path = zoo.add(published.entry.name, pth)
        with safe_open(str(path), "pt") as handle:
            recorded = handle.metadata()["encnet.tensor_digest"]
            assert recorded == tensor_digest({k: handle.get_tensor(k) for k in handle.keys()})
        content = bytearray(path.read_bytes())
        start = 8 + struct.unpack("<Q", content[:8])[0]
        content[start : start + 2000] = bytes(b ^ 0xFF for b in content[start : start + 2000])
        path.write_bytes(bytes(content))
        if published.entry.kind == "segmentation":
            with pytest.raises(CheckpointError, match=f"^{path} is corrupt: its tensor data"):
                load_model(published.entry.name, torch.device("cpu"))
        else:
            with pytest.raises(ModelError, match=f"^cached backbone {path} is corrupt .*delete it and run again"):
                build_model("encnet_tiny", 3, backbone_weights="tinys")


def test_add_refuses_a_different_file(tmp_path: Path, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_segmentation(monkeypatch)
    other = tmp_path / "other.pth"
    other.write_bytes(zf.pth_bytes({k: v * 2 for k, v in published.state.items()}))
    with pytest.raises(ChecksumError, match=f"{other} has sha1 .* but the reference publishes {published.entry.sha1}"):
        zoo.add(published.entry.name, other)
    assert zf.cache_files(zoo_cache) == []
    with pytest.raises(ConfigError, match="does not exist"):
        zoo.add(published.entry.name, tmp_path / "missing.pth")


def test_resolve_prefers_an_existing_path(tmp_path: Path, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("encnet_resnet50s_pcontext").write_bytes(b"a file that happens to have the name")
    assert zoo.resolve("encnet_resnet50s_pcontext") == Path("encnet_resnet50s_pcontext")
    assert zoo.resolve("runs/x/best.pt") == Path("runs/x/best.pt")  # not a name: left to the caller
    assert zoo.resolve("best.pt") == Path("best.pt")
    with pytest.raises(ModelError, match="resnet101s is an ImageNet backbone.*--backbone-weights resnet101s"):
        zoo.resolve("resnet101s")
    with pytest.raises(ModelError, match="is a segmentation model, not a backbone"):
        zoo.resolve("encnet_resnet50s_ade", kind="backbone")
    assert zf.cache_files(zoo_cache) == []


# ----------------------------------------------------------------------------- backbones by name


def test_backbone_weights_by_name(http_server, zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = zf.tiny_backbone(monkeypatch)
    monkeypatch.setenv(zoo.MIRROR_ENV, zf.serve(http_server, published))
    model = build_model("encnet_tiny", 3, backbone_weights="tinys")  # what train --backbone-weights does
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, published.state[key]), key
    cached = zoo.cache_path("tinys")
    from safetensors.torch import load_file

    assert set(load_file(str(cached))) == set(model.backbone.state_dict())  # fc dropped, nothing else
    build_model("encnet_tiny", 3, backbone_weights="tinys")
    assert len(http_server.state.requests) == 1  # cached
    with pytest.raises(ModelError, match="holds a tiny backbone, but the model's is resnet18"):
        build_model("encnet_resnet18", 3, backbone_weights="tinys")
    # a .safetensors file works as a FILE too, and 'imagenet' for a deep-stem backbone points at the zoo
    assert build_model("encnet_tiny", 3, backbone_weights=str(cached)).config["name"] == "encnet_tiny"
    with pytest.raises(ModelError, match="--backbone-weights resnet50s"):
        build_model("encnet_resnet50s", 3, backbone_weights="imagenet")


def test_cache_root_is_encnet_cache(zoo_cache: Path) -> None:
    assert zoo.cache_dir() == zoo_cache / "weights"
    assert os.environ["ENCNET_CACHE"] == str(zoo_cache)


def test_bad_mirror_url(zoo_cache: Path) -> None:
    with pytest.raises(ConfigError, match="--mirror"):
        zoo.pull("resnet50s", mirror="mirror.example/encoding")


def test_entry_fields_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        zoo.ZOO["resnet50s"].sha1 = "0" * 40  # type: ignore[misc]


def test_init_from_and_export_take_a_name(http_server, zoo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from encnet_core.engine.train_state import init_from_checkpoint
    from encnet_core.weights.export import export_model

    published = zf.tiny_segmentation(monkeypatch)
    monkeypatch.setenv(zoo.MIRROR_ENV, zf.serve(http_server, published))
    classes, _ = zoo.DATASET_LABELS["pcontext"]()
    model = create_model("encnet_tiny", 59, lateral=True)
    assert init_from_checkpoint(model, Path(published.entry.name), classes) == []  # train --init-from NAME
    assert torch.equal(model.backbone.conv1.weight, published.state["pretrained.conv1.weight"])
    fine_tune = create_model("encnet_tiny", 3, lateral=True)  # onto another class count: classifiers re-initialised
    assert "head.conv6.1" in init_from_checkpoint(fine_tune, Path(published.entry.name), ["a", "b", "c"])
    result = export_model(Path(published.entry.name), tmp_path / "tiny.pt", "weights")
    assert result.metadata["model_config"]["name"] == "encnet_tiny" and result.max_abs_diff <= 1e-5  # channels-last reload
    assert len(http_server.state.requests) == 1
