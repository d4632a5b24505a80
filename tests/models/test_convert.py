"""Loading PyTorch-Encoding's EncNet state_dicts (key names and shapes from the reference tables)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from reference_code import read_table as _read

from encnet_core.errors import ModelError
from encnet_core.models import convert_pytorch_encoding_state_dict, create_model
from encnet_core.models.backbones import build_backbone
from encnet_core.weights import zoo

# the reference's key/shape tables, checked against its own code by tests/models/test_reference_tables.py
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"


def read_table(name: str) -> dict[str, tuple[int, ...]]:
    return _read(REFERENCE / name)


def random_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked") else torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }


CASES = [
    ("pytorch-encoding-encnet_resnet50s_lateral.tsv", "encnet_resnet50s", True),
    ("pytorch-encoding-encnet_resnet101s.tsv", "encnet_resnet101s", False),
]


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.mark.parametrize("table,name,lateral", CASES)
def test_parameter_count_equals_reference(table: str, name: str, lateral: bool) -> None:
    shapes = read_table(table)
    model = create_model(name, 59, lateral=lateral)
    expected_params = sum(math.prod(s) for k, s in shapes.items() if not _is_buffer(k))
    assert sum(p.numel() for p in model.parameters()) == expected_params
    assert sum(t.numel() for t in model.state_dict().values()) == sum(math.prod(s) for s in shapes.values())


@pytest.mark.parametrize("table,name,lateral", CASES)
def test_converted_reference_loads_strictly(table: str, name: str, lateral: bool) -> None:
    reference = random_state_dict(read_table(table))
    reference["pretrained.fc.weight"] = torch.randn(1000, 2048)  # the ImageNet classifier, dropped
    reference["pretrained.fc.bias"] = torch.randn(1000)
    converted = convert_pytorch_encoding_state_dict({"module." + k: v for k, v in reference.items()})
    model = create_model(name, 59, lateral=lateral)
    model.load_state_dict(converted, strict=True)
    state = model.state_dict()
    assert torch.equal(state["backbone.conv1.6.weight"], reference["pretrained.conv1.6.weight"])
    assert torch.equal(state["head.encmodule.encoding.3.codewords"], reference["head.encmodule.encoding.3.codewords"])
    assert torch.equal(state["aux_head.4.weight"], reference["auxlayer.conv5.4.weight"])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["out"].shape == (1, 59, 32, 32)


def meta_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors of the table's shapes on the meta device: no memory, no time (ResNeSt-269 included)."""
    return {k: torch.empty(s, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32) for k, s in shapes.items()}


SEGMENTATION = [e.name for e in zoo.list_models() if e.kind == "segmentation"]
BACKBONES = [e.name for e in zoo.list_models() if e.kind == "backbone"]


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_published_segmentation_model_loads_strictly(name: str) -> None:
    """The reference's state_dict of zoo model ``name`` (its key/shape table: tests/models/test_reference_tables.py
    builds it with the reference's builder) converts and loads strictly into the model the zoo builds for it."""
    entry = zoo.ZOO[name]
    shapes = read_table(f"pytorch-encoding-{name}.tsv.gz")
    classes = len(zoo.DATASET_LABELS[entry.dataset]()[0])
    assert classes == {"pcontext": 59, "ade20k": 150}[entry.dataset]
    with torch.device("meta"):
        model = create_model(entry.model, classes, **entry.arguments)
    converted = convert_pytorch_encoding_state_dict(meta_state_dict(shapes))
    assert len(converted) == len(shapes)  # nothing dropped: the segmentation models have no pretrained.fc
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(converted, strict=True, assign=True)
    expected_params = sum(math.prod(s) for k, s in shapes.items() if not _is_buffer(k))
    assert sum(p.numel() for p in model.parameters()) == expected_params
    assert sum(t.numel() for t in model.state_dict().values()) == sum(math.prod(s) for s in shapes.values())


@pytest.mark.parametrize("name", BACKBONES)
def test_every_published_backbone_fits_after_dropping_fc(name: str) -> None:
    entry = zoo.ZOO[name]
    shapes = read_table(f"pytorch-encoding-{name}.tsv.gz")
    assert shapes.pop("fc.weight") == (1000, 2048) and shapes.pop("fc.bias") == (1000,)  # the ImageNet classifier
    with torch.device("meta"):
        backbone = build_backbone(entry.model)
    assert {k: tuple(v.shape) for k, v in backbone.state_dict().items()} == shapes
    assert list(backbone.state_dict()) == list(shapes)
    backbone.load_state_dict(meta_state_dict(shapes), strict=True, assign=True)
    assert sum(p.numel() for p in backbone.parameters()) == sum(math.prod(s) for k, s in shapes.items() if not _is_buffer(k))


def test_the_tables_cover_the_zoo() -> None:
    assert len(SEGMENTATION) == 15 and len(BACKBONES) == 7
    tables = {p.name for p in REFERENCE.glob("*.tsv.gz")}
    assert tables == {f"pytorch-encoding-{name}.tsv.gz" for name in SEGMENTATION + BACKBONES}


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ModelError, match="unexpected key"):
        convert_pytorch_encoding_state_dict({"encoder.weight": torch.zeros(1)})
