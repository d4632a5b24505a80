"""benchmarks/heads.py: its pairs and options, the losses it times, and a tiny run of the same-backbone pairs
(encnet_<backbone> vs deeplab_<backbone>; no timing is asserted: the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from encnet_core.models.registry import count_flops

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--size", "32", "--batch", "2", "--repeats", "1", "--warmup", "0"]


def _heads():
    if "encnet_heads" in sys.modules:
        return sys.modules["encnet_heads"]
    spec = importlib.util.spec_from_file_location("encnet_heads", ROOT / "benchmarks" / "heads.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["encnet_heads"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_default_rows_keep_torchvision_and_add_encnet_vs_deeplab_on_the_same_backbone() -> None:
    heads = _heads()
    args = heads.parse_args([])
    assert args.pairs == ["torchvision", "resnet50s", "resnest50"] and args.batch == 2 and args.size == 256
    rows = [(c.pair, c.mode, c.ours, c.theirs, c.goal) for c in heads.comparisons(args.pairs, args.backbones)]
    assert rows == [
        ("torchvision", "train", "encnet", "fcn", 1.05),
        ("torchvision", "inference", "encnet", "deeplabv3", 0.85),
        ("resnet50s", "train", "encnet_resnet50s", "deeplab_resnet50s", None),
        ("resnet50s", "inference", "encnet_resnet50s", "deeplab_resnet50s", None),
        ("resnest50", "train", "encnet_resnest50", "deeplab_resnest50", None),
        ("resnest50", "inference", "encnet_resnest50", "deeplab_resnest50", None),
    ]


def test_pairs_and_backbone_options_and_their_errors(capsys: pytest.CaptureFixture[str]) -> None:
    heads = _heads()
    args = heads.parse_args(
        ["--pairs", " resnest50,torchvision,resnest50", "--backbone", "resnest50=resnest_tiny"]
    )
    assert args.pairs == ["resnest50", "torchvision"]
    assert args.backbones == {"resnet50s": "resnet50s", "resnest50": "resnest_tiny"}
    assert (
        heads.parse_args(["--pairs", "torchvision", "--batch", "1"]).batch == 1
    )  # torchvision's DeepLab only infers
    for argv, message in (
        (
            ["--pairs", "resnet50"],
            "--pairs takes a comma-separated list of torchvision, resnet50s, resnest50",
        ),
        (["--pairs", ","], "--pairs takes a comma-separated list"),
        (
            ["--backbone", "torchvision=tiny"],
            "--backbone takes PAIR=NAME with PAIR one of resnet50s, resnest50",
        ),
        (["--backbone", "resnest50"], "--backbone takes PAIR=NAME"),
        (["--backbone", "resnest50=resnest51"], "unknown backbone 'resnest51'; choose one of: resnet18"),
        (["--batch", "1"], "--batch 1 cannot train DeepLabV3"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            heads.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_losses_deeplab_has_no_se_term_encnet_and_fcn_as_documented() -> None:
    heads = _heads()
    generator = torch.Generator().manual_seed(3)
    out, aux = torch.randn(2, 4, 5, 5, generator=generator), torch.randn(2, 4, 5, 5, generator=generator)
    se = torch.randn(2, 4, generator=generator)
    labels = torch.randint(0, 4, (2, 5, 5), generator=generator)
    labels[0, 0, 0] = 255  # ignored
    ce = F.cross_entropy(out, labels, ignore_index=255) + 0.2 * F.cross_entropy(aux, labels, ignore_index=255)
    present = torch.zeros(2, 4)
    for b in range(2):
        present[b, labels[b][labels[b] != 255].unique()] = 1
    se_term = 0.2 * F.binary_cross_entropy_with_logits(se, present)
    deeplab = heads.loss_for("deeplab_resnest50")({"out": out, "aux": aux}, labels)
    encnet = heads.loss_for("encnet_resnest50")({"out": out, "aux": aux, "se": se}, labels)
    fcn = heads.loss_for("fcn")({"out": out, "aux": aux}, labels)
    torch.testing.assert_close(deeplab, ce)
    torch.testing.assert_close(fcn, ce)
    torch.testing.assert_close(encnet, ce + se_term)
    assert se_term > 0.01  # the SE term is not negligible, so the two assertions above differ


def test_same_backbone_pairs_run_at_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    """Both new pairs, on the tiny test backbones (building and stepping ResNeSt-50 is the slow test's)."""
    heads = _heads()
    argv = [
        *TINY,
        "--pairs",
        "resnet50s,resnest50",
        "--backbone",
        "resnet50s=tiny",
        "--backbone",
        "resnest50=resnest_tiny",
    ]
    results = heads.main(argv)
    text = capsys.readouterr().out
    assert [(r.comparison.mode, r.comparison.ours, r.comparison.theirs) for r in results] == [
        ("train", "encnet_tiny", "deeplab_tiny"), ("inference", "encnet_tiny", "deeplab_tiny"),
        ("train", "encnet_resnest_tiny", "deeplab_resnest_tiny"), ("inference", "encnet_resnest_tiny", "deeplab_resnest_tiny"),
    ]  # fmt: skip
    for result in results:
        t, row, flops = result.timing, result.comparison, result.flops
        assert 0 < t.low <= t.ratio <= t.high and t.seconds > 0
        ours, theirs = flops[row.ours], flops[row.theirs]
        assert ours["backbone"] == theirs["backbone"] > 0  # the same backbone
        assert theirs["head"] > ours["head"] > 0  # ASPP costs more than the EncHead on both tiny backbones
        if row.mode == "train":
            assert ours["aux head"] == theirs["aux head"] > 0
        else:  # eval: no aux head; the totals are count_flops' (batch 1) times the batch
            assert ours["aux head"] == theirs["aux head"] == 0
            assert ours["total"] == 2 * count_flops(row.ours, 21, 32)[1]
            assert theirs["total"] == 2 * count_flops(row.theirs, 21, 32)[1]
        assert f"  time EncNet / DeepLabV3 ({row.ours.removeprefix('encnet_')}) = {t.ratio:.3f}x" in text
    assert "goals:" not in text and "reported (no goal):" in text
    assert "pairs resnet50s, resnest50), batch 2, 3x32x32, 21 classes" in text


@pytest.mark.slow
def test_every_pair_runs_with_the_real_models_at_32_pixels(capsys: pytest.CaptureFixture[str]) -> None:
    heads = _heads()
    results = heads.main(TINY)
    text = capsys.readouterr().out
    names = [(r.comparison.ours, r.comparison.theirs) for r in results]
    assert names == [("encnet", "fcn"), ("encnet", "deeplabv3"), *[(f"encnet_{b}", f"deeplab_{b}") for b in
                     ("resnet50s", "resnet50s", "resnest50", "resnest50")]]  # fmt: skip
    for result in results[2:]:
        ours, theirs = (result.flops[name] for name in (result.comparison.ours, result.comparison.theirs))
        assert ours["backbone"] == theirs["backbone"] and theirs["head"] > ours["head"]
    # ResNeSt-50 and ResNet-50s are different backbones of about the same work
    assert (
        results[2].flops["encnet_resnet50s"]["backbone"] != results[4].flops["encnet_resnest50"]["backbone"]
    )
    assert "goals:" in text and "reported (no goal):" in text and "ours / FCN" in text
