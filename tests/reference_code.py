"""The reference implementation's own model code (PyTorch-Encoding, torch-encoding 1.2.1), importable in tests.

``make test`` downloads ``torch_encoding-1.2.1-py2.py3-none-any.whl`` and sets ``ENCNET_TORCH_ENCODING`` to
it (a wheel or an unpacked copy). ``reference_package`` unpacks it and imports its ``encoding`` package
without its compiled extension: ``encoding.lib`` (which would build C++/CUDA kernels at import) is an empty
stand-in, the download helpers' third-party imports it does not need here (``requests``, ``tqdm``,
``portalocker``) are stand-ins only while it imports and only where they are not installed, and the
segmentation models build their backbones without fetching ImageNet weights. The model code itself
(layers, backbones, heads, ``state_dict`` names) is the reference's, unchanged.

``encoding_kernels`` stands in, only while a test runs the reference's Encoding layer, for the two
compiled CPU kernels that layer calls (``scaled_l2`` and ``aggregate``); ``read_table``/``write_table``
read and write the key/shape tables of ``tests/data/reference/`` (plain ``.tsv`` or ``.tsv.gz``).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

ENV = "ENCNET_TORCH_ENCODING"
_STAND_INS = ("requests", "tqdm", "portalocker")  # imported by encoding/utils/files.py and models/model_store.py


class _StandIn(ModuleType):
    """A module whose every public attribute is an empty class (``from tqdm import tqdm`` works)."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


def wheel_path() -> Path:
    """The wheel (or unpacked folder) named by ENCNET_TORCH_ENCODING; the test is skipped, with the way to
    get it, when the variable is not set (``make test`` always sets it)."""
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(f"set {ENV} to torch-encoding 1.2.1's wheel (make test does: pip download --no-deps torch-encoding==1.2.1)")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{ENV}={value} does not exist")
    return path


def reference_package(unpack_to: Path) -> ModuleType:
    """The reference's ``encoding`` package, imported once per process from ``wheel_path()``."""
    if "encoding" in sys.modules and getattr(sys.modules["encoding"], "__encnet_reference__", False):
        return sys.modules["encoding"]
    source = wheel_path()
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("encoding/") and m.endswith(".py")]
            for member in members:
                target = (unpack_to / member).resolve()
                assert target.is_relative_to(unpack_to.resolve()), member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(member))
        root = unpack_to
    else:
        root = source
    added = []
    for name in _STAND_INS:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            stand_in = _StandIn(name)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = added.append(name) or stand_in
    try:
        package = ModuleType("encoding")
        package.__path__ = [str(root / "encoding")]
        package.__encnet_reference__ = True
        sys.modules["encoding"] = package
        sys.modules["encoding.lib"] = types.ModuleType("encoding.lib")  # the compiled kernels: not needed to build models
        base = importlib.import_module("encoding.models.sseg.base")
        importlib.import_module("encoding.models.sseg")
    finally:
        for name in added:
            del sys.modules[name]
    # BaseNet always asks get_backbone for pretrained=True (it downloads ImageNet weights): build without them
    build = base.get_backbone
    base.get_backbone = lambda name, *args, **kwargs: build(name, *args, **{**kwargs, "pretrained": False})
    return package


def _scaled_l2(X: torch.Tensor, C: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``scaled_l2(X, C, S)[b, i, k] = S[k] * ||X[b, i] - C[k]||^2`` (X: B x N x D, C: K x D, S: K; B x N x K),
    the formula of the reference's docstring (encoding/functions/encoding.py), computed directly."""
    return S.view(1, 1, -1) * (X.unsqueeze(2) - C.view(1, 1, *C.shape)).pow(2).sum(3)


def _aggregate(A: torch.Tensor, X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``aggregate(A, X, C)[b, k] = sum_i A[b, i, k] * (X[b, i] - C[k])`` (A: B x N x K; B x K x D), the
    formula of the reference's docstring, computed directly."""
    return (A.unsqueeze(3) * (X.unsqueeze(2) - C.view(1, 1, *C.shape))).sum(1)


@contextlib.contextmanager
def encoding_kernels(package: ModuleType) -> Iterator[None]:
    """Pure-PyTorch stand-ins for the reference's compiled CPU kernels ``scaled_l2_forward`` and
    ``aggregate_forward`` (``encoding.lib.cpu``), installed only inside the ``with`` block.

    The reference's ``Encoding`` module and its autograd Functions (``encoding.functions.encoding``) run
    unchanged; only the kernel they dispatch to on CPU is replaced (forward only: no backward is needed
    to compare outputs).
    """
    lib = importlib.import_module(f"{package.__name__}.functions.encoding").lib
    assert not hasattr(lib, "cpu"), "encoding.lib.cpu already installed"
    lib.cpu = types.SimpleNamespace(scaled_l2_forward=_scaled_l2, aggregate_forward=_aggregate)
    try:
        yield
    finally:
        del lib.cpu


def read_table(path: Path) -> dict[str, tuple[int, ...]]:
    """key -> shape from a key/shape table (``tests/data/reference/*.tsv`` or ``*.tsv.gz``)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.name.endswith(".gz") else path.read_text()
    shapes = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return shapes


def write_table(path: Path, header: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write a key/shape table (``header``: its comment lines, without ``#``); ``*.gz`` is gzip-compressed
    deterministically (mtime 0, no file name): the same table gives the same bytes."""
    text = "".join(f"# {line}\n" for line in header.splitlines()) + "# key\tshape\n"
    text += "".join(f"{key}\t{shape}\n" for key, shape in shapes.items())
    data = text.encode()
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0) if path.name.endswith(".gz") else data)
