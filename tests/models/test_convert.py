"""Loading PyTorch-Encoding's EncNet state_dicts (key names and shapes from the reference tables)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from reference_code import read_table as _read

from encnet_core.errors import ModelError
from encnet_core.models import convert_pytorch_encoding_state_dict, create_model

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


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ModelError, match="unexpected key"):
        convert_pytorch_encoding_state_dict({"encoder.weight": torch.zeros(1)})
