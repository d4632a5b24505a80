"""benchmarks/ablation.py and benchmarks/receptive_field.py run, and the stored far-layout result is what the docs quote."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from encnet_core.data.prepare import PrepareOptions, prepare

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "benchmarks" / "results" / "ablation-far.json"


def _ablation():
    if "encnet_ablation" in sys.modules:
        return sys.modules["encnet_ablation"]
    spec = importlib.util.spec_from_file_location("encnet_ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["encnet_ablation"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _record(variant: str, seed: int, miou: float, ctx: float, swap: float, speed: float = 6.0) -> dict:
    v = _ablation().VARIANTS[variant]
    return {"variant": variant, "label": v.label, "num_codes": v.num_codes, "se_loss": v.se_loss, "seed": seed,
            "params": 1000, "pixAcc": 0.9, "mIoU": miou, "context_mIoU": ctx, "pair_swap": swap,
            "wall_seconds": 100.0, "median_it_per_s": speed}  # fmt: skip


def test_table_gives_paired_differences_and_per_variant_seeds() -> None:
    ablation = _ablation()
    records = [
        _record("fcn", 0, 0.60, 0.30, 0.40), _record("fcn", 1, 0.70, 0.40, 0.40),
        _record("enc-se-k32", 0, 0.80, 0.80, 0.0, speed=5.0), _record("enc-se-k32", 1, 0.85, 0.90, 0.0, speed=5.0),
        _record("enc-se-k8", 0, 0.75, 0.70, 0.1),
    ]  # fmt: skip
    text = ablation.table(records, ["fcn", "enc-se-k32", "enc-se-k8"], {"fcn": [0, 1], "enc-se-k32": [0, 1], "enc-se-k8": [0]})
    rows = {line.split(" | ")[0].strip("| *"): line for line in text.splitlines()[2:]}
    mean_row = rows["enc-se-k32 mean ± std"].split(" | ")
    # paired: (0.80 - 0.60, 0.85 - 0.70) = (+20, +15) points -> +17.50 ± 3.54
    assert "+17.50 ± 3.54" in mean_row and "+50.00 ± 0.00" in mean_row and mean_row[-1].strip(" |") == "1.20"
    assert "enc-se-k8 mean ± std" not in rows  # one seed: no mean row
    assert sum(line.startswith("| enc-se-k8 (") for line in text.splitlines()) == 1


@pytest.mark.slow
def test_ablation_and_receptive_field_run_end_to_end_on_a_tiny_far_dataset(tmp_path: Path) -> None:
    data = tmp_path / "far.h5"
    prepare("synthetic", PrepareOptions(out=data, root=tmp_path / "cache", workers=1,
                                        params={"layout": "far", "num_train": 4, "num_val": 2}))  # fmt: skip
    out = tmp_path / "abl"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--layout", "far", "--iters", "2",
         "--variants", "fcn,enc-se-k8", "--seeds", "0,1", "--sweep-seeds", "1", "--data", str(data),
         "--out", str(out), "--report", "tiny"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "tiny.json").read_text())
    assert report["layout"] == "far" and report["seeds_of"] == {"fcn": [0, 1], "enc-se-k8": [1]}
    assert sorted((r["variant"], r["seed"]) for r in report["runs"]) == [("enc-se-k8", 1), ("fcn", 0), ("fcn", 1)]
    assert all(r["config"]["recipe"] == "synthetic_far_cpu" and r["config"]["crop_size"] == 256 for r in report["runs"])

    rf = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "receptive_field.py"), "--data", str(data), "--images", "2",
         "--checkpoint", f"fcn={out / 'runs' / 'fcn-seed0' / 'last.pt'}",
         "--checkpoint", f"enc={out / 'runs' / 'enc-se-k8-seed1' / 'last.pt'}", "--json", str(tmp_path / "rf.json")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert rf.returncode == 0, rf.stderr[-3000:]
    result = json.loads((tmp_path / "rf.json").read_text())
    fcn = result["models"]["fcn_tiny"]["theoretical"]
    assert 150 < fcn["width"] < 200 and result["models"]["encnet_tiny"]["theoretical"]["width"] == 512
    assert result["twins"]["min"] > fcn["half_width"] and result["twins"]["within_rf"] == 0.0
    # the FCN's twin decision has no gradient at all on the scene; EncNet's global context has some
    assert result["checkpoints"]["fcn"]["evidence_on_scene"] == 0.0
    assert result["checkpoints"]["enc"]["evidence_on_scene"] > 0.0


def test_stored_far_ablation_is_complete_and_its_table_regenerates() -> None:
    """The stored result the docs and the demo quote: 3+ seeds for FCN vs EncNet+SE, the far recipe, its own table."""
    report = json.loads(STORED.read_text())
    assert report["layout"] == "far" and report["recipe"] == "synthetic_far_cpu"
    seeds_of = {k: list(v) for k, v in report["seeds_of"].items()}
    assert len(seeds_of["fcn"]) >= 3 and seeds_of["enc-se-k32"] == seeds_of["fcn"]
    assert set(seeds_of) == set(_ablation().VARIANTS)
    configs = {json.dumps({k: v for k, v in r["config"].items() if k not in ("model", "se_loss", "num_codes",
               "seed", "output_dir")}, sort_keys=True) for r in report["runs"]}  # fmt: skip
    assert len(configs) == 1  # equal budget: iterations, batch, lr, crop, augmentation
    table = _ablation().table(report["runs"], report["variants"], seeds_of)
    assert table in (STORED.with_suffix(".md")).read_text()
