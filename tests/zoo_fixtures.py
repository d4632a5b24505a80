"""Reference-format zoo files for tests/weights/test_zoo.py and tests/cli/test_cli_weights.py.

A published PyTorch-Encoding model is ``models/{name}-{sha1[:8]}.zip`` holding ``{name}-{sha1[:8]}.pth``,
a ``torch.save``d state_dict under the reference's module names (``pretrained.`` backbone,
``head.`` EncHead, ``auxlayer.conv5.`` FCN head), whose sha1 is the published one. These builders
write such files from a tiny encnet model (renamed to the reference's names, typed here, not taken
from encnet's converter) or from the reference's key/shape tables in tests/data/reference (checked against its own code by
tests/models/test_reference_tables.py), and
register a test-only zoo entry for them; the loopback HTTP server of tests/data/conftest.py serves them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import reference_code
import torch

from encnet_core.weights import zoo

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"

# encnet name prefix -> the reference's (PyTorch-Encoding's EncNet: pretrained, head, auxlayer.conv5)
_TO_REFERENCE = (("backbone.", "pretrained."), ("aux_head.", "auxlayer.conv5."), ("head.", "head."))


def data_fixtures() -> ModuleType:
    """tests/data/conftest.py (loopback HTTP server) as a module of its own (see test_cli_prepare.py)."""
    name = "encnet_tests_data_fixtures"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "data" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def to_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encnet EncNet state_dict under the reference's names."""
    out = {}
    for key, value in state.items():
        for ours, theirs in _TO_REFERENCE:
            if key.startswith(ours):
                out[theirs + key.removeprefix(ours)] = value
                break
        else:
            raise AssertionError(f"unexpected key {key}")
    return out


def read_table(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape from a tests/data/reference/*.tsv table."""
    return reference_code.read_table(REFERENCE / name)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked") else torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }


def pth_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def zip_bytes(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(member, data)
    return buffer.getvalue()


@dataclass
class Published:
    """A registered test-only zoo entry and its published files."""

    entry: zoo.ZooModel
    state: dict[str, torch.Tensor]  # the reference-format state_dict in the .pth
    pth: bytes
    zip: bytes

    @property
    def url_path(self) -> str:
        return f"/models/{self.entry.stem}.zip"


def publish(
    monkeypatch: pytest.MonkeyPatch, name: str, state: dict[str, torch.Tensor], *, base: zoo.ZooModel | None = None, **fields
) -> Published:
    """Register zoo entry ``name`` (``base`` with the sha1 of ``state``'s .pth, or a new one from ``fields``)."""
    pth = pth_bytes(state)
    sha1 = hashlib.sha1(pth).hexdigest()
    entry = dataclasses.replace(base, sha1=sha1) if base is not None else zoo.ZooModel(name=name, sha1=sha1, **fields)
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    return Published(entry, state, pth, zip_bytes(f"{entry.stem}.pth", pth))


def tiny_segmentation(monkeypatch: pytest.MonkeyPatch, dataset: str = "pcontext", num_classes: int = 59, seed: int = 0) -> Published:
    """``encnet_tiny_<dataset>``: encnet_tiny with the lateral branch, random weights, as the reference would save it."""
    from encnet_core.models import create_model

    torch.manual_seed(seed)
    model = create_model("encnet_tiny", num_classes, lateral=True)
    with torch.no_grad():  # BN statistics that matter: eval outputs then depend on them
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    state = to_reference(model.state_dict())
    return publish(
        monkeypatch, f"encnet_tiny_{dataset}", state, kind="segmentation", dataset=dataset, model="encnet_tiny",
        arguments={"lateral": True}, base_size=64, crop_size=48,
    )  # fmt: skip


def tiny_backbone(monkeypatch: pytest.MonkeyPatch, seed: int = 1) -> Published:
    """``tinys``: an ImageNet backbone file as the reference publishes them (plain names, with an fc classifier)."""
    from encnet_core.models.backbones import build_backbone

    torch.manual_seed(seed)
    state = dict(build_backbone("tiny").state_dict())
    state["fc.weight"] = torch.randn(1000, 128)
    state["fc.bias"] = torch.randn(1000)
    return publish(monkeypatch, "tinys", state, kind="backbone", dataset="imagenet", model="tiny")


def serve(server, published: Published, under: str = "/zoo") -> str:
    """Serve the zip at ``{under}/models/{stem}.zip``; returns the mirror URL (``under``)."""
    server.state.files[under + published.url_path] = published.zip
    return server.url(under)


@pytest.fixture
def zoo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ENCNET_CACHE in tmp, no mirror from the environment, no back-off sleeps; returns the cache root."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENCNET_CACHE", str(cache))
    monkeypatch.delenv(zoo.MIRROR_ENV, raising=False)
    monkeypatch.setattr("encnet_core.fetch.download.time.sleep", lambda seconds: None)
    return cache


def cache_files(cache: Path) -> list[str]:
    """Every file under the cache (relative paths) but the empty lock files pulls take, for "nothing
    usable is left" checks."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")
