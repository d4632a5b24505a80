"""Model files that are not what encnet wrote: damaged tensor data (the recorded digest), tensors of a dtype the
model does not take, empty reasons in messages, and a dataset and a model given in each other's place.

Every damaged file is built here from a genuine one by flipping bytes inside its tensor data (found through the
zip directory or the safetensors header); a control shows that the plain torch/safetensors readers load it
without a word, so the refusal is the digest's doing.
"""

from __future__ import annotations

import json
import shutil
import struct
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
from safetensors.torch import save as save_safetensors
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.data.hdf5 import read_info
from encnet_core.engine.train_state import init_from_checkpoint
from encnet_core.errors import CheckpointError, DataError
from encnet_core.models import create_model
from encnet_core.segmenter import Segmenter
from encnet_core.weights import checkpoint as checkpoint_module
from encnet_core.weights.checkpoint import exception_reason, tensor_digest
from encnet_core.weights.export import export_model
from encnet_core.weights.model_files import DIGEST_HEADER, detect_format, load_model, peek_metadata

runner = CliRunner()
CPU = torch.device("cpu")
EVAL = ("--device", "cpu", "-j", "0", "--no-progress", "--json", "-")
TRAIN = ("--model", "encnet_tiny", "--batch-size", "4", "--crop-size", "32", "--base-size", "48", "-j", "0",
         "--device", "cpu", "--no-progress", "--iters", "4")  # fmt: skip
FLIPPED = 2000


class Tiny(NamedTuple):
    data: Path  # synthetic dataset (8 train / 4 val)
    ckpt: Path  # last.pt of a 2-iteration encnet_tiny run
    weights: Path  # its weights export
    safetensors: Path  # its safetensors export
    images: Path  # a folder with one PNG


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("digest")
    data = make_synthetic(folder, 8, 4)
    torch.manual_seed(0)
    ckpt = train_tiny(data, folder)
    images = folder / "images"
    images.mkdir()
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(images / "a.png")
    weights = export_model(ckpt, folder / "model.pt", "weights").path
    safetensors = export_model(ckpt, folder / "model.safetensors", "safetensors").path
    yield Tiny(data, ckpt, weights, safetensors, images)
    torch.set_num_threads(threads)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _zip_member_data(path: Path, suffix: str) -> tuple[int, int]:
    """(file offset, size) of the stored bytes of the torch zip member ending in ``suffix`` (torch stores, never deflates)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    assert info.compress_type == zipfile.ZIP_STORED
    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _safetensors_data(path: Path) -> tuple[int, int]:
    """(file offset, size) of a safetensors file's tensor data: everything after the 8-byte length and the header."""
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    return 8 + header_len, path.stat().st_size - 8 - header_len


def _flip(source: Path, target: Path, offset: int, size: int, count: int = FLIPPED) -> Path:
    """A copy of ``source`` with ``count`` bytes inverted from ``offset`` (all of them inside a region of ``size``)."""
    assert size >= count
    content = bytearray(source.read_bytes())
    for i in range(offset, offset + count):
        content[i] ^= 0xFF
    target.write_bytes(bytes(content))
    return target


def damaged(tiny: Tiny, kind: str, folder: Path) -> Path:
    """The file of ``kind`` with 2,000 bytes of its first stored tensor (the first weight) inverted."""
    if kind == "safetensors":
        return _flip(tiny.safetensors, folder / "bad.safetensors", *_safetensors_data(tiny.safetensors))
    source = tiny.ckpt if kind == "checkpoint" else tiny.weights
    return _flip(source, folder / f"bad-{kind}.pt", *_zip_member_data(source, "/data/0"))


# ---------------------------------------------------------------------------------------------- the digest


def test_digest_is_recorded_and_the_same_in_every_format(tiny: Tiny) -> None:
    ckpt = torch.load(tiny.ckpt, weights_only=True)
    weights = torch.load(tiny.weights, weights_only=True)
    with safe_open(str(tiny.safetensors), "pt") as handle:
        recorded = handle.metadata()[DIGEST_HEADER]
        stored = {k: handle.get_tensor(k) for k in handle.keys()}
    expected = tensor_digest(ckpt["model"])
    assert expected.startswith("sha256:") and len(expected) == len("sha256:") + 64
    assert ckpt["tensor_digest"] == weights["tensor_digest"] == recorded == tensor_digest(stored) == expected
    assert ckpt["training_digest"].startswith("sha256:") and "training_digest" not in weights
    assert ckpt["training_digest"] == tensor_digest(checkpoint_module._training_tensors(ckpt))
    assert "'optimizer'/'state'/0/'momentum_buffer'" in checkpoint_module._training_tensors(ckpt)


def test_tensor_digest_covers_values_names_dtypes_and_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(4, dtype=torch.float16)}
    digest = tensor_digest(base)
    assert tensor_digest(dict(reversed(list(base.items())))) == digest  # key order does not matter
    assert tensor_digest({"b": base["b"].t().contiguous().t(), "a": base["a"]}) == digest  # nor memory layout
    changed = [
        {**base, "b": base["b"].clone().index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(5.0000005))},
        {**base, "b": base["b"].reshape(3, 2)},
        {**base, "b": base["b"].double()},
        {"c": base["b"], "a": base["a"]},
        {"b": base["b"]},
    ]
    assert len({digest, *(tensor_digest(t) for t in changed)}) == len(changed) + 1
    # the threaded path (large files) gives the same digest as the serial one
    monkeypatch.setattr(checkpoint_module, "_PARALLEL_DIGEST_BYTES", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert tensor_digest(base) == digest


@pytest.mark.parametrize("kind", ["checkpoint", "weights", "safetensors"])
def test_flipped_tensor_bytes_are_refused_everywhere(tiny: Tiny, tmp_path: Path, kind: str) -> None:
    bad = damaged(tiny, kind, tmp_path)
    # control: the plain readers load the damaged file without complaint (torch's zip reader checks no CRC)
    if kind == "safetensors":
        with safe_open(str(bad), "pt") as handle:
            first = {k: handle.get_tensor(k) for k in handle.keys()}
    else:
        first = torch.load(bad, weights_only=True)["model"]
    original = torch.load(tiny.ckpt, weights_only=True)["model"]
    assert sum(not torch.equal(first[k], original[k]) for k in original) >= 1

    expected = f"{bad} is corrupt: its tensor data (weights) does not match the digest"
    with pytest.raises(CheckpointError) as caught:
        load_model(bad, CPU)
    assert str(caught.value).startswith(expected)
    with pytest.raises(CheckpointError, match="is corrupt: its tensor data"):
        Segmenter.load(bad, device="cpu")
    commands = {
        "evaluate": ("evaluate", bad, tiny.data, *EVAL),
        "predict": ("predict", bad, tiny.images, "-o", tmp_path / "out", "--device", "cpu", "--no-progress"),
        "info": ("info", bad),
        "export": ("export", bad, tmp_path / "again.safetensors", "--format", "safetensors"),
        "init-from": ("train", tiny.data, "-o", tmp_path / "ft", *TRAIN, "--init-from", bad),
    }
    for name, command in commands.items():
        line = one_error_line(run(*command))
        assert line == f"error: {expected} encnet recorded when it wrote the file (damaged on disk or in transfer); " \
                       "use an intact copy or write it again", (name, line)  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "again.safetensors").exists()


def test_resume_refuses_damaged_weights_and_damaged_training_state(tiny: Tiny, tmp_path: Path) -> None:
    bad_weights = damaged(tiny, "checkpoint", tmp_path)
    line = one_error_line(run("train", tiny.data, "-o", tmp_path / "a", *TRAIN, "--resume", bad_weights))
    assert line.startswith(f"error: {bad_weights} is corrupt: its tensor data (weights) does not match"), line
    # the last stored tensor is training state (the RNG's): the weights are intact, so evaluate is fine ...
    with zipfile.ZipFile(tiny.ckpt) as archive:
        last = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: int(i.filename.rsplit("/", 1)[1]))
    offset, size = _zip_member_data(tiny.ckpt, last.filename)
    bad_state = _flip(tiny.ckpt, tmp_path / "bad-state.pt", offset, size, min(size, FLIPPED))
    result = run("evaluate", bad_state, tiny.data, *EVAL)
    assert result.exit_code == 0, result.output
    # ... but resuming would restore the damaged state
    line = one_error_line(run("train", tiny.data, "-o", tmp_path / "b", *TRAIN, "--resume", bad_state))
    assert line.startswith(f"error: {bad_state} is corrupt: its tensor data (training state (optimizer, RNG)) does not match"), line
    assert not (tmp_path / "b" / "last.pt").exists()


def test_files_without_a_digest_still_load(tiny: Tiny, tmp_path: Path) -> None:
    """Older encnet files (and other tools' ones) have no digest: they load as before, with the same outputs."""
    ckpt = torch.load(tiny.ckpt, weights_only=True)
    old = {k: v for k, v in ckpt.items() if k not in ("tensor_digest", "training_digest")}
    torch.save(old, tmp_path / "old.pt")
    with safe_open(str(tiny.safetensors), "pt") as handle:
        header = {k: v for k, v in handle.metadata().items() if k != DIGEST_HEADER}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    (tmp_path / "old.safetensors").write_bytes(save_safetensors(tensors, metadata=header))
    x = torch.randn(1, 3, 32, 40)
    expected = load_model(tiny.ckpt, CPU).forward(x)
    for path in (tmp_path / "old.pt", tmp_path / "old.safetensors"):
        assert torch.equal(load_model(path, CPU).forward(x), expected), path
    result = run("train", tiny.data, "-o", tmp_path / "resumed", *TRAIN, "--resume", tmp_path / "old.pt")
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["tensor_digest"].startswith("sha256:")


@pytest.mark.parametrize("value", ["md5:0123", 12345, "sha256:" + "0" * 64])
def test_a_bad_recorded_digest_is_one_line(tiny: Tiny, tmp_path: Path, value: object) -> None:
    ckpt = torch.load(tiny.ckpt, weights_only=True)
    ckpt["tensor_digest"] = value
    torch.save(ckpt, tmp_path / "x.pt")
    line = one_error_line(run("info", tmp_path / "x.pt"))
    wanted = "is corrupt: its tensor data (weights)" if str(value).startswith("sha256:") else "not a sha256 digest"
    assert str(tmp_path / "x.pt") in line and wanted in line, line


# ---------------------------------------------------------------------------------------------- dtypes


def _int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a naive int8 "quantisation" does: the values rounded into int8, no scale kept."""
    return {k: v.clamp(-128, 127).round().to(torch.int8) if v.is_floating_point() else v for k, v in state.items()}


def test_integer_weights_are_refused_with_the_tensor_and_dtype(tiny: Tiny, tmp_path: Path) -> None:
    with safe_open(str(tiny.safetensors), "pt") as handle:
        header = {k: v for k, v in handle.metadata().items() if k != DIGEST_HEADER}  # a converter drops or redoes it
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    quantized = tmp_path / "int8.safetensors"
    quantized.write_bytes(save_safetensors(_int8(tensors), metadata=header))
    ckpt = torch.load(tiny.weights, weights_only=True)
    pickled = tmp_path / "int8.pt"
    torch.save({**{k: v for k, v in ckpt.items() if k != "tensor_digest"}, "model": _int8(ckpt["model"])}, pickled)
    first = next(iter(create_model("encnet_tiny", len(ckpt["classes"])).state_dict()))  # the model's first tensor
    for path in (quantized, pickled):
        message = f"{path}: tensor {first} is int8, but model encnet_tiny takes floating-point weights there"
        with pytest.raises(CheckpointError) as caught:
            load_model(path, CPU)
        assert str(caught.value).startswith(message)
        line = one_error_line(run("evaluate", path, tiny.data, *EVAL))
        assert line.startswith(f"error: {message}"), line
    # a bare state_dict for --init-from: the same check
    bare = tmp_path / "bare.pt"
    torch.save({**_int8(ckpt["model"]), "backbone.conv1.weight": ckpt["model"]["backbone.conv1.weight"].bool()}, bare)
    model = create_model("encnet_tiny", len(ckpt["classes"]))
    with pytest.raises(CheckpointError, match=r"bare.pt: tensor backbone.conv1.weight is bool, but model encnet_tiny takes"):
        init_from_checkpoint(model, bare, ckpt["classes"])


@pytest.mark.parametrize(
    ("weight", "buffer", "refused"),
    [
        (torch.uint8, torch.int64, "uint8"), (torch.bool, torch.int64, "bool"), (torch.complex64, torch.int64, "complex64"),
        (torch.float64, torch.int64, None), (torch.float16, torch.int8, None), (torch.bfloat16, torch.int32, None),
    ],
)  # fmt: skip
def test_weight_dtype_rule(weight: torch.dtype, buffer: torch.dtype, refused: str | None) -> None:
    own = {"w": torch.zeros(2), "n": torch.zeros((), dtype=torch.int64)}
    state = {"w": torch.zeros(2, dtype=weight), "n": torch.zeros((), dtype=buffer)}
    if refused is None:
        checkpoint_module.check_weight_dtypes(state, own, "f.pt", "m")
    else:
        with pytest.raises(CheckpointError, match=f"^f.pt: tensor w is {refused}, but model m takes floating-point"):
            checkpoint_module.check_weight_dtypes(state, own, "f.pt", "m")


def test_float16_bfloat16_and_integer_buffers_are_accepted(tiny: Tiny, tmp_path: Path) -> None:
    ckpt = torch.load(tiny.weights, weights_only=True)
    x = torch.randn(1, 3, 32, 40)
    reference = load_model(tiny.weights, CPU).forward(x)
    for dtype, tolerance in ((torch.float16, 0.05), (torch.bfloat16, 0.3)):
        state = {k: v.to(dtype) if v.is_floating_point() else v.int() for k, v in ckpt["model"].items()}
        assert state["backbone.bn1.num_batches_tracked"].dtype == torch.int32
        path = tmp_path / f"{dtype}.pt"
        torch.save({**ckpt, "model": state, "tensor_digest": tensor_digest(state)}, path)
        got = load_model(path, CPU).forward(x)
        assert got.dtype == torch.float32 and 0 < (got - reference).abs().max().item() < tolerance, dtype


# ---------------------------------------------------------------------------------------------- empty reasons


def test_reasons_are_never_empty(tiny: Tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert exception_reason(RuntimeError("")) == "RuntimeError"
    assert exception_reason(ValueError("\n   \n  second line  \n")) == "second line"
    assert exception_reason(OSError("first\nsecond")) == "first"

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("\n")

    monkeypatch.setattr(torch.jit, "load", fail)
    ts = tmp_path / "model.ts"
    with zipfile.ZipFile(ts, "w") as archive:
        archive.writestr("model/code/__torch__.py", "")
    with pytest.raises(CheckpointError, match=r"is not a readable TorchScript model \(RuntimeError\)$"):
        load_model(ts, CPU, trust_code=True)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", fail)
    with pytest.raises(CheckpointError, match=r"weights do not fit model encnet_tiny: RuntimeError$"):
        load_model(tiny.weights, CPU)


# ---------------------------------------------------------------------------------------------- swapped arguments


def test_a_dataset_where_the_model_goes(tiny: Tiny, tmp_path: Path) -> None:
    advice = "is a dataset (an HDF5 file), not a model: the model comes first (encnet evaluate MODEL DATA"
    renamed = tmp_path / "data.pt"  # the name does not matter: the content does
    shutil.copy(tiny.data, renamed)
    for data in (tiny.data, renamed):
        for command in (("evaluate", data, tiny.ckpt, *EVAL),
                        ("predict", data, tiny.images, "-o", tmp_path / "out", "--device", "cpu", "--no-progress"),
                        ("export", data, tmp_path / "x.pt")):  # fmt: skip
            line = one_error_line(run(*command))
            assert line.startswith(f"error: {data} {advice}"), (command[0], line)
    assert not (tmp_path / "out").exists()
    # info takes either: it tells them apart by content, whatever the name
    result = run("info", renamed, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["dataset"] == "synthetic", result.output


@pytest.mark.parametrize("kind", ["checkpoint", "weights", "safetensors", "onnx"])
def test_a_model_where_the_dataset_goes(tiny: Tiny, tmp_path: Path, kind: str) -> None:
    if kind == "onnx":
        model = tmp_path / "model.onnx"
        model.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.9.0" + bytes(100))  # an ONNX header: ir_version, producer
        what = "an ONNX model"
    else:
        model = {"checkpoint": tiny.ckpt, "weights": tiny.weights, "safetensors": tiny.safetensors}[kind]
        what = "a safetensors model" if kind == "safetensors" else "a PyTorch checkpoint or export"
    message = f"{model} is {what}, not a dataset: pass a dataset made by `encnet prepare` (.h5) here"
    with pytest.raises(DataError) as caught:
        read_info(model)
    assert str(caught.value).startswith(message)
    line = one_error_line(run("evaluate", tiny.ckpt, model, *EVAL))
    assert line.startswith(f"error: {message}") and "encnet evaluate MODEL DATA" in line, line


def test_a_model_named_like_a_dataset(tiny: Tiny, tmp_path: Path) -> None:
    """info goes by content: a checkpoint renamed .h5 shows its metadata; a damaged .h5 is still a damaged dataset."""
    renamed = tmp_path / "model.h5"
    shutil.copy(tiny.ckpt, renamed)
    assert detect_format(renamed) == "checkpoint"
    assert peek_metadata(renamed)["model_config"]["name"] == "encnet_tiny"
    result = run("info", renamed, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["format"] == "checkpoint", result.output
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 and not a model" * 10)
    assert detect_format(garbage) == "dataset"
    line = one_error_line(run("info", garbage))
    assert f"{garbage} is not a readable HDF5 file" in line, line
