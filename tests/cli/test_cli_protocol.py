"""`encnet evaluate --protocol reference`: one flag for the reference's evaluation, published numbers for zoo names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import make_synthetic, train_tiny
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.weights import zoo

runner = CliRunner()
EVAL = ("--device", "cpu", "-j", "0", "--limit", "2", "--no-progress")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cli_protocol")
    data = make_synthetic(folder, 8, 4)
    torch.manual_seed(0)
    yield data, train_tiny(data, folder)
    torch.set_num_threads(threads)


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_protocol_reference_sets_the_references_evaluation(tiny: tuple[Path, Path]) -> None:
    data, ckpt = tiny
    result = run("evaluate", ckpt, data, "--protocol", "reference", "--json", "-", *EVAL)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inference"] == {
        "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "slide": False, "flip": True, "merge": "reference",
        "crop_size": 32, "base_size": 48, "stride_rate": 2 / 3,
    }  # fmt: skip  (the checkpoint's crop/base size)
    assert report["protocol"]["mIoU"] == report["mIoU_all"] and report["protocol"]["pixAcc"] == report["pixAcc"]
    assert report["protocol"]["published"] is None  # a file, not a zoo name
    plain = json.loads(run("evaluate", ckpt, data, "--json", "-", *EVAL).stdout)
    assert "protocol" not in plain and plain["inference"]["scales"] is None  # --protocol none: the options as given


@pytest.mark.parametrize(
    "flag",
    [["--scales", "1.0"], ["--slide"], ["--flip"], ["--merge", "prob"], ["--stride-rate", "0.5"], ["--crop-size", "64"], ["--base-size", "64"]],
)
def test_protocol_refuses_the_options_it_sets(tiny: tuple[Path, Path], flag: list[str]) -> None:
    data, ckpt = tiny
    result = run("evaluate", ckpt, data, "--protocol", "reference", *flag, *EVAL)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--protocol reference sets {flag[0]} itself" in lines[0], result.output
    assert "Traceback" not in result.output


def test_protocol_with_a_zoo_name_prints_the_published_numbers(tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, ckpt = tiny
    name = "encnet_resnet50s_pcontext"
    real = zoo.resolve
    monkeypatch.setattr(zoo, "resolve", lambda what, *a, **k: ckpt if str(what) == name else real(what, *a, **k))  # no download
    result = run("evaluate", name, data, "--protocol", "reference", *EVAL)
    assert result.exit_code == 0, result.output
    assert "published (val)" in result.output and "79.2" in result.output and "51.0" in result.output
    assert "measured" in result.output and "mIoU_all" in result.output
    report = json.loads(run("evaluate", name, data, "--protocol", "reference", "--json", "-", *EVAL).stdout)
    assert report["protocol"]["published"] == zoo.published(name)
    assert report["protocol"]["published"]["pixAcc"] == 0.792 and report["protocol"]["published"]["mIoU"] == 0.510
