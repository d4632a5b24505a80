"""The key/shape tables in tests/data/reference/ against the reference's own model code.

tests/models/test_convert.py and tests/zoo_fixtures.py read these tables (so they run anywhere); this test
builds the same models with torch-encoding 1.2.1's code (tests/reference_code.py, on the meta device: no
memory, no weights) and checks every key and shape. ``ENCNET_WRITE_TABLES=1`` rewrites the tables from it.

Besides the two EncNet tables of the first models, one gzip-compressed table per published zoo model
(``pytorch-encoding-{zoo name}.tsv.gz``): each segmentation model as the reference's builder makes it
(``get_encnet_*``, ``get_fcn_*``, ``get_deeplab_*``: class count of its dataset, ``aux=True``, lateral
branch for EncNet on PASCAL Context), each ImageNet backbone as its ``resnet*s``/``resnest*`` function
makes it (undilated, with its ``fc`` classifier).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from reference_code import read_table, reference_package, write_table
from torch import nn

TABLES = Path(__file__).resolve().parents[1] / "data" / "reference"

NUM_CLASS = {"pcontext": 59, "ade": 150}  # NUM_CLASS of encoding/datasets/pcontext.py and ade20k.py


def _published(name: str) -> dict:
    """The reference's builder of zoo model ``name`` (encnet.py, fcn.py, deeplab.py) as arguments: every one
    has aux=True (FCN's default, passed explicitly by the others); get_encnet sets lateral for 'p...' datasets."""
    family, backbone, dataset = name.split("_")
    arguments = {"family": family, "backbone": backbone, "nclass": NUM_CLASS[dataset]}
    if family == "encnet":
        arguments["lateral"] = dataset == "pcontext"
    return arguments


# table -> what the reference builds: family (encnet/fcn/deeplab: the segmentation model, aux=True;
# backbone: the ImageNet network) and its arguments
CASES = {
    "pytorch-encoding-encnet_resnet50s_lateral.tsv": {"family": "encnet", "backbone": "resnet50s", "lateral": True, "nclass": 59},
    "pytorch-encoding-encnet_resnet101s.tsv": {"family": "encnet", "backbone": "resnet101s", "lateral": False, "nclass": 59},
    **{
        f"pytorch-encoding-{name}.tsv.gz": _published(name)
        for name in (
            "encnet_resnet50s_pcontext", "encnet_resnet101s_pcontext", "encnet_resnet50s_ade", "encnet_resnet101s_ade",
            "fcn_resnet50s_ade", "fcn_resnest50_ade", "fcn_resnest50_pcontext",
            *(f"deeplab_resnest{depth}_{dataset}" for dataset in ("ade", "pcontext") for depth in (50, 101, 200, 269)),
        )
    },
    **{
        f"pytorch-encoding-{name}.tsv.gz": {"family": "backbone", "backbone": name}
        for name in ("resnet50s", "resnet101s", "resnet152s", "resnest50", "resnest101", "resnest200", "resnest269")
    },
}  # fmt: skip


def _build(encoding, arguments: dict) -> nn.Module:
    family, backbone = arguments["family"], arguments["backbone"]
    if family == "backbone":
        return getattr(encoding.models.backbone, backbone)()  # ImageNet: undilated, with fc; nn.BatchNorm2d
    sseg, common = encoding.models.sseg, {"aux": True, "norm_layer": nn.BatchNorm2d}
    if family == "encnet":
        return sseg.encnet.EncNet(arguments["nclass"], backbone, se_loss=True, lateral=arguments["lateral"], **common)
    model = {"fcn": sseg.fcn.FCN, "deeplab": sseg.deeplab.DeepLabV3}[family]
    return model(arguments["nclass"], backbone, **common)


def _header(arguments: dict) -> str:
    family, backbone = arguments["family"], arguments["backbone"]
    if family == "backbone":
        return f"state_dict keys and shapes of the reference's ImageNet {backbone} (torch-encoding 1.2.1), with its fc"
    model = {"encnet": "EncNet", "fcn": "FCN", "deeplab": "DeepLabV3"}[family]
    extra = f"lateral={arguments['lateral']}, aux=True, se_loss=True" if family == "encnet" else "aux=True"
    return f"state_dict keys and shapes of the reference {model} (torch-encoding 1.2.1), backbone {backbone}, {extra}, nclass={arguments['nclass']}"


@pytest.mark.parametrize("table", sorted(CASES))
def test_table_is_the_reference_models_state_dict(table: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    encoding = reference_package(tmp_path_factory.mktemp("torch_encoding"))
    with torch.device("meta"):
        model = _build(encoding, CASES[table])
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if os.environ.get("ENCNET_WRITE_TABLES") == "1":
        write_table(TABLES / table, _header(CASES[table]), shapes)
    assert read_table(TABLES / table) == shapes
    assert list(read_table(TABLES / table)) == list(shapes)  # the order too: state_dict order


def test_gzip_tables_are_written_deterministically(tmp_path: Path) -> None:
    shapes = {"pretrained.conv1.0.weight": (64, 3, 3, 3), "head.conv5.1.num_batches_tracked": ()}
    write_table(tmp_path / "a.tsv.gz", "a table", shapes)
    write_table(tmp_path / "b.tsv.gz", "a table", shapes)
    write_table(tmp_path / "c.tsv", "a table", shapes)
    data = (tmp_path / "a.tsv.gz").read_bytes()
    assert data == (tmp_path / "b.tsv.gz").read_bytes() and data[:2] == b"\x1f\x8b" and data[4:8] == bytes(4)  # mtime 0
    assert read_table(tmp_path / "a.tsv.gz") == read_table(tmp_path / "c.tsv") == shapes
    assert (tmp_path / "c.tsv").read_text().startswith("# a table\n# key\tshape\npretrained.conv1.0.weight\t(64, 3, 3, 3)\n")
