"""Model files from strangers: programs (TorchScript, pt2) are never opened without --trust-code, safetensors
round-trips without pickle, hostile headers and contradictory metadata get one line, --resume needs training state.

Every hostile file is built here; a control test shows that its payload does run under the plain torch
loader, so "the marker file was not created" means something.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from helpers import make_synthetic, one_error_line, train_tiny
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.engine.train import init_from_checkpoint
from encnet_core.errors import CheckpointError
from encnet_core.models import create_model
from encnet_core.weights import checkpoint as checkpoint_module
from encnet_core.weights.export import export_model
from encnet_core.weights.model_files import detect_format, load_model, read_model_file

runner = CliRunner()
CPU = torch.device("cpu")
EVAL = ("--device", "cpu", "-j", "0", "--no-progress", "--json", "-")
TRAIN = ("--model", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "-j", "0",
         "--device", "cpu", "--no-progress", "--iters", "4")  # fmt: skip


class Tiny(NamedTuple):
    data: Path  # synthetic dataset (8 train / 4 val)
    ckpt: Path  # last.pt of a 2-iteration encnet_tiny run (with training state)
    images: Path  # a folder with two PNGs
    exports: dict[str, Path]  # genuine exports per format


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("security")
    data = make_synthetic(folder, 8, 4)
    torch.manual_seed(0)
    ckpt = train_tiny(data, folder)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(images / name)
    suffixes = {"weights": "pt", "safetensors": "safetensors", "torchscript": "ts", "pt2": "pt2"}
    exports = {fmt: export_model(ckpt, folder / f"model.{s}", fmt).path for fmt, s in suffixes.items()}
    yield Tiny(data, ckpt, images, exports)
    torch.set_num_threads(threads)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, what: str) -> str:
    line = one_error_line(result)
    assert what in line and "--trust-code" in line, line
    assert "Traceback" not in result.output
    return line


# ---------------------------------------------------------------------------------------------- hostile files


class _OpenForWriting:
    """Unpickles into ``open(path, "w")``: creates the marker file (what a real payload could do anywhere)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def hostile_pt2(genuine: Path, out: Path, marker: Path) -> Path:
    """A real torch.export archive whose first weight is marked ``use_pickle`` and holds a payload."""
    payload = io.BytesIO()
    torch.save(_OpenForWriting(marker), payload)
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(out, "w") as dst:
        config_name = next(n for n in src.namelist() if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(src.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        target = config_name.rsplit("/", 1)[0] + "/" + first["path_name"]
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == config_name:
                body = json.dumps(config).encode()
            elif info.filename == target:
                body = payload.getvalue()
            dst.writestr(info, body)
    return out


def hostile_torchscript(out: Path, marker: Path, metadata: str) -> Path:
    """A scripted module whose __setstate__ (run by torch.jit.load) and forward create ``marker``."""

    class Evil(torch.nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path
            self.x = torch.zeros(1)

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
            return (self.x, self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
            self.path = state[1]
            self.training = state[2]
            self.x = state[0] + torch.from_file(self.path, shared=True, size=1)  # creates the file

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.from_file(self.path, shared=True, size=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Evil(str(marker))), str(out), _extra_files={"encnet.json": metadata})
    return out


def archive_metadata(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("extra/encnet.json"))).decode()


@pytest.fixture
def hostile(tiny: Tiny, tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """{"pt2", "torchscript", "pt2 as best.pt", "torchscript as best.pt"} -> file, and the marker path."""
    marker = tmp_path / "PWNED"
    meta = archive_metadata(tiny.exports["torchscript"])
    files = {
        "pt2": hostile_pt2(tiny.exports["pt2"], tmp_path / "evil.pt2", marker),
        "torchscript": hostile_torchscript(tmp_path / "evil.ts", marker, meta),
    }
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for fmt in ("pt2", "torchscript"):
        (renamed / fmt).mkdir()
        files[f"{fmt} as best.pt"] = renamed / fmt / "best.pt"
        files[f"{fmt} as best.pt"].write_bytes(files[fmt].read_bytes())
    assert not marker.exists()
    return files, marker


def test_control_the_payloads_run_under_the_plain_torch_loaders(hostile: tuple[dict[str, Path], Path]) -> None:
    files, marker = hostile
    with pytest.raises(Exception):  # noqa: B017 - the archive is broken after the payload ran
        torch.export.load(files["pt2"])
    assert marker.exists(), "the crafted pt2 must run its payload under torch.export.load"
    marker.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(files["torchscript"]))
    assert marker.exists(), "the crafted TorchScript must run its payload under torch.jit.load"


@pytest.mark.parametrize("name", ["pt2", "torchscript", "pt2 as best.pt", "torchscript as best.pt"])
def test_programs_are_not_opened_without_trust_code(tiny: Tiny, hostile: tuple[dict[str, Path], Path], tmp_path: Path, name: str) -> None:
    files, marker = hostile
    path = files[name]
    what = "pt2) program" if name.startswith("pt2") else "TorchScript program"
    assert detect_format(path) == name.split()[0]
    refused(run("predict", path, tiny.images, "-o", tmp_path / "pred", "--device", "cpu", "--no-progress"), what)
    refused(run("evaluate", path, tiny.data, *EVAL), what)
    refused(run("export", path, tmp_path / "out.safetensors", "--format", "safetensors"), what)
    refused(run("train", tiny.data, "-o", tmp_path / "run", *TRAIN, "--init-from", path), what)
    with pytest.raises(CheckpointError, match="runs code from the file"):
        load_model(path, CPU)
    with pytest.raises(CheckpointError, match="runs code from the file"):
        read_model_file(path)
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "pred").exists()
    # info reads the archive's own encnet.json: the metadata, without running anything
    result = run("info", path, "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["runs_code"] is True and meta["format"] == name.split()[0]
    assert meta["classes"] == json.loads(archive_metadata(tiny.exports["torchscript"]))["classes"]
    result = run("info", path)
    assert result.exit_code == 0 and "opening it runs code" in result.output and "no code was run" in result.output
    assert not marker.exists()


def test_resume_never_opens_a_program(tiny: Tiny, hostile: tuple[dict[str, Path], Path], tmp_path: Path) -> None:
    files, marker = hostile
    for name in ("pt2", "torchscript as best.pt"):
        for extra in ((), ("--trust-code",)):
            line = one_error_line(run("train", tiny.data, "-o", tmp_path / "run", *TRAIN, "--resume", files[name], *extra))
            assert "without training state" in line and "use --init-from" in line
    assert not marker.exists()


def test_genuine_programs_load_and_predict_with_trust_code(tiny: Tiny, tmp_path: Path) -> None:
    result = run("predict", tiny.ckpt, tiny.images, "-o", tmp_path / "ckpt", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    reference = np.asarray(Image.open(tmp_path / "ckpt" / "a.png"))
    for fmt in ("torchscript", "pt2"):
        path = tiny.exports[fmt]
        out = tmp_path / fmt
        result = run("predict", path, tiny.images, "-o", out, "--device", "cpu", "--no-progress", "--trust-code")
        assert result.exit_code == 0, result.output
        assert np.array_equal(np.asarray(Image.open(out / "a.png")), reference)
        result = run("evaluate", path, tiny.data, *EVAL, "--trust-code")
        assert result.exit_code == 0, result.output
        result = run("info", path, "--json", "--trust-code")
        assert result.exit_code == 0 and json.loads(result.output)["loaded"] is True
        # a trusted program as the input of another export, and as --init-from
        weights = export_model(path, tmp_path / f"{fmt}.pt", "weights", trust_code=True).path
        original = torch.load(tiny.ckpt, weights_only=True)["model"]
        again = torch.load(weights, weights_only=True)["model"]
        assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


def test_info_caps_the_archive_metadata_it_reads(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/archive_format", "pt2")
        archive.writestr("bomb/extra/encnet.json", " " * (64 << 20))  # 64 MiB of spaces, ~64 kB compressed
    assert bomb.stat().st_size < 1 << 20
    assert "over the" in one_error_line(run("info", bomb))
    missing = tmp_path / "missing.pt2"
    with zipfile.ZipFile(missing, "w") as archive:
        archive.writestr("missing/archive_format", "pt2")
    assert "no encnet metadata" in one_error_line(run("info", missing))


# ---------------------------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_without_trust_code(tiny: Tiny, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = run("export", tiny.ckpt, out, "--format", "safetensors", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_abs_diff"] < 1e-4
    # plain tensors and the metadata in the header; no pickle anywhere
    with safe_open(str(out), "pt") as handle:
        header = handle.metadata()
        stored = {k: handle.get_tensor(k) for k in handle.keys()}
    assert header["format"] == "pt" and json.loads(header["encnet.json"])["export_format"] == "safetensors"
    original = torch.load(tiny.ckpt, weights_only=True)
    assert stored.keys() == original["model"].keys() and all(torch.equal(stored[k], original["model"][k]) for k in stored)
    # renamed, still recognised from the content
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(out.read_bytes())
    assert detect_format(renamed) == "safetensors"
    # info
    result = run("info", renamed, "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["format"] == "safetensors" and meta["runs_code"] is False and meta["classes"] == original["classes"]
    assert meta["training"]["iteration"] == original["iteration"]
    # evaluate: the same numbers as the checkpoint
    ours, theirs = run("evaluate", renamed, tiny.data, *EVAL), run("evaluate", tiny.ckpt, tiny.data, *EVAL)
    assert ours.exit_code == 0 and theirs.exit_code == 0, ours.output + theirs.output
    a, b = json.loads(ours.output), json.loads(theirs.output)
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["mIoU"] == b["mIoU"]
    # predict: the same masks, byte for byte
    for model, folder in ((renamed, "st"), (tiny.ckpt, "ckpt")):
        result = run("predict", model, tiny.images, "-o", tmp_path / folder, "--device", "cpu", "--no-progress")
        assert result.exit_code == 0, result.output
    for name in ("a.png", "b.png"):
        assert (tmp_path / "st" / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes()
    # as an export input, and for fine-tuning
    again = export_model(renamed, tmp_path / "again.pt", "weights").path
    assert all(torch.equal(torch.load(again, weights_only=True)["model"][k], stored[k]) for k in stored)
    model = create_model("encnet_tiny", len(original["classes"]))
    assert init_from_checkpoint(model, renamed, original["classes"]) == []
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


def test_safetensors_half(tiny: Tiny, tmp_path: Path) -> None:
    full = export_model(tiny.ckpt, tmp_path / "full.safetensors", "safetensors")
    half = export_model(tiny.ckpt, tmp_path / "half.safetensors", "safetensors", half=True)
    assert half.max_abs_diff is not None and half.bytes < 0.6 * full.bytes
    with safe_open(str(half.path), "pt") as handle:
        assert handle.get_tensor("head.conv6.1.weight").dtype == torch.float16
    loaded = load_model(half.path, CPU)
    assert loaded.source == "safetensors" and loaded.metadata["half"] is True


def _safetensors(header: bytes, body: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body


def _with_metadata(meta: object) -> bytes:
    return _safetensors(json.dumps({"__metadata__": meta}).encode())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_safetensors(b"{}", length=1 << 40), "header length does not fit"),
        (_safetensors(b"{", length=100), "header length does not fit"),
        (_safetensors(b"{not json at all}"), "not a readable safetensors file"),
        (_safetensors(json.dumps({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}}).encode()), "not a readable safetensors file"),
        (_with_metadata({"encnet.json": 5}), "not a readable safetensors file"),
        (_with_metadata({"encnet.json": "not json"}), "no encnet metadata"),
        (_with_metadata({"encnet.json": "[1, 2]"}), "no encnet metadata"),
        (_with_metadata({"other": "x"}), "no encnet metadata"),
        (_with_metadata({"encnet.json": "[" * 100000 + "]" * 100000}), "no encnet metadata"),
        (b"", "header length does not fit"),
    ],
    ids=["huge-length", "length-past-end", "non-json", "offsets-past-end", "metadata-not-str", "metadata-not-json",
         "metadata-list", "no-metadata", "deep-json", "empty"],  # fmt: skip
)
def test_hostile_safetensors_headers(tiny: Tiny, tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for command in (("info", path), ("predict", path, tiny.images, "-o", tmp_path / "out", "--no-progress")):
        line = one_error_line(run(*command))
        assert message in line and "Traceback" not in line
    with pytest.raises(CheckpointError, match=message):
        load_model(path, CPU)


# ---------------------------------------------------------------------------------------------- metadata


@pytest.fixture
def no_model_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is built: a refusal must come before anything is allocated."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from metadata that should have been refused")

    monkeypatch.setattr(checkpoint_module, "create_model", refuse)


CONTRADICTIONS = [
    ({"classes": ["a", "b"]}, "classes lists 2 names but model_config num_classes is"),
    ({"palette": [[0, 0, 0]] * 3}, "palette has 3 rows for"),
    ({"palette": "red"}, "palette is not a list of [r, g, b] rows"),
    ({"crop_size": -5}, "crop_size is -5"),
    ({"base_size": 0}, "base_size is 0"),
    ({"base_size": 10**7}, "base_size is 10000000"),
    ({"crop_size": 32.5}, "crop_size is 32.5"),
    ({"std": [0.2, 0.0, 0.2]}, "std is"),
    ({"mean": [0.5]}, "mean is [0.5]"),
    ({"model_config": {"num_classes": 10**9}}, "num_classes is 1000000000"),
    ({"model_config": {"num_classes": 1e9}}, "num_classes is 1000000000.0"),
    ({"model_config": {"num_codes": 10**9}}, "num_codes=1000000000 is out of range"),
    ({"model_config": {"backbone_weights": "/etc/passwd"}}, "backbone weights from elsewhere"),
    ({"model_config": "encnet_tiny"}, "model_config is not a table"),
    ({"model": {"w": "not a tensor"}}, "not a state_dict of tensors"),
]


def _contradict(ckpt: dict, change: dict) -> dict:
    ckpt = dict(ckpt)
    for key, value in change.items():
        if key == "model_config" and isinstance(value, dict):
            ckpt["model_config"] = {**ckpt["model_config"], **value}
            if "num_classes" in value:
                ckpt["classes"] = None  # only num_classes: the 1e9 list of default names must not be built either
                ckpt["palette"] = None
        else:
            ckpt[key] = value
    return ckpt


@pytest.mark.parametrize(("change", "message"), CONTRADICTIONS, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(CONTRADICTIONS)])
def test_contradictory_checkpoint_metadata(tiny: Tiny, tmp_path: Path, no_model_building: None, change: dict, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(_contradict(torch.load(tiny.ckpt, weights_only=True), change), path)
    for command in (("info", path), ("evaluate", path, tiny.data, *EVAL), ("export", path, tmp_path / "x.pt")):
        line = one_error_line(run(*command))
        assert message in line and "damaged or was not written by encnet" in line, line
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(("change", "message"), CONTRADICTIONS[:-1], ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(CONTRADICTIONS[:-1])])
def test_contradictory_export_metadata_same_check(tiny: Tiny, tmp_path: Path, no_model_building: None, change: dict, message: str) -> None:
    """The encnet.json of safetensors and of program archives goes through the same validation."""
    meta = json.loads(archive_metadata(tiny.exports["torchscript"]))
    bad = json.dumps(_contradict(meta, change))
    with safe_open(str(tiny.exports["safetensors"]), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    from safetensors.torch import save_file

    st = tmp_path / "bad.safetensors"
    save_file(tensors, str(st), metadata={"format": "pt", "encnet.json": bad})
    ts = tmp_path / "bad.ts"
    with zipfile.ZipFile(tiny.exports["torchscript"]) as src, zipfile.ZipFile(ts, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, bad if info.filename.endswith("extra/encnet.json") else src.read(info.filename))
    for path in (st, ts):
        line = one_error_line(run("info", path))
        assert message in line, line
    assert message in one_error_line(run("predict", st, tiny.images, "-o", tmp_path / "out", "--no-progress"))


# ---------------------------------------------------------------------------------------------- --resume


def test_resume_needs_training_state(tiny: Tiny, tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(tiny.ckpt, weights_only=True)["model"], bare)
    no_optimizer = tmp_path / "no_optimizer.pt"
    ckpt = torch.load(tiny.ckpt, weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, no_optimizer)
    cases = {
        tiny.exports["weights"]: "is a weights export: no training state",
        tiny.exports["safetensors"]: "is a safetensors export without training state",
        bare: "is a bare state_dict: no training state",
        no_optimizer: "is a checkpoint without optimizer",
    }
    for path, message in cases.items():
        line = one_error_line(run("train", tiny.data, "-o", tmp_path / "run", *TRAIN, "--resume", path))
        assert message in line and "use --init-from" in line, line
