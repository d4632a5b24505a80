"""What a plain `pip install .` user gets: a wheel with the recipes as package data and the `encnet` script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import make_synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_recipes_and_runs_one(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("encnet_core", "encnet_cli"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("encnet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    shipped = sorted(Path(n).stem for n in names if n.startswith("encnet_core/recipes/") and n.endswith(".toml"))
    assert shipped == sorted(p.stem for p in (ROOT / "encnet_core" / "recipes").glob("*.toml"))
    assert "synthetic_cpu" in shipped
    assert "encnet = encnet_cli.main:main" in entry_points
    assert "License-Expression: MIT" in metadata

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    data = make_synthetic(tmp_path, 4, 2, size=32)
    work = tmp_path / "work"  # not the repository: nothing imports from the checkout
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import encnet_core; print(encnet_core.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(str(site)), where
    result = subprocess.run(
        [sys.executable, "-m", "encnet_cli", "train", str(data), "--recipe", "synthetic_cpu", "--iters", "1",
         "--batch-size", "2", "--crop-size", "32", "--base-size", "32", "--workers", "0", "--device", "cpu",
         "--val-split", "", "-o", str(work / "run"), "--no-progress", "--json"],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = (work / "run" / "config.toml").read_text()
    assert 'recipe = "synthetic_cpu"' in config and 'model = "encnet_tiny"' in config and "lr = 0.1" in config
