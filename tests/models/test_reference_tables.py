"""The key/shape tables in tests/data/reference/ against the reference's own model code.

tests/models/test_convert.py and tests/zoo_fixtures.py read these tables (so they run anywhere); this test
builds the same models with torch-encoding 1.2.1's code (tests/reference_code.py, on the meta device: no
memory, no weights) and checks every key and shape. ``ENCNET_WRITE_TABLES=1`` rewrites the tables from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from reference_code import read_table, reference_package
from torch import nn

TABLES = Path(__file__).resolve().parents[1] / "data" / "reference"

# table -> the reference's EncNet arguments (nclass 59: PASCAL Context)
CASES = {
    "pytorch-encoding-encnet_resnet50s_lateral.tsv": {"backbone": "resnet50s", "lateral": True},
    "pytorch-encoding-encnet_resnet101s.tsv": {"backbone": "resnet101s", "lateral": False},
}


@pytest.mark.parametrize("table", sorted(CASES))
def test_table_is_the_reference_models_state_dict(table: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    encoding = reference_package(tmp_path_factory.mktemp("torch_encoding"))
    arguments = CASES[table]
    with torch.device("meta"):
        model = encoding.models.sseg.encnet.EncNet(59, aux=True, se_loss=True, norm_layer=nn.BatchNorm2d, **arguments)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if os.environ.get("ENCNET_WRITE_TABLES") == "1":
        header = (
            f"# state_dict keys and shapes of the reference EncNet (torch-encoding 1.2.1), backbone {arguments['backbone']}, "
            f"lateral={arguments['lateral']}, aux=True, se_loss=True, nclass=59\n# key\tshape\n"
        )
        rows = "".join(f"{key}\t{shape}\n" for key, shape in shapes.items())
        (TABLES / table).write_text(header + rows)
    assert read_table(TABLES / table) == shapes
    assert list(read_table(TABLES / table)) == list(shapes)  # the order too: state_dict order
