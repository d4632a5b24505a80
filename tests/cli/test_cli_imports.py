"""Every command module imports on its own (no cycle through main.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "encnet_cli").glob("*.py") if p.stem != "__main__")

SCRIPT = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "encnet_cli" or m.startswith("encnet_cli.")]:
        del sys.modules[loaded]
    importlib.import_module("encnet_cli." + name)
    print("ok", name)
"""


def test_each_command_module_imports_alone() -> None:
    assert {"main", "train", "evaluate", "predict", "_progress", "_output"} <= set(MODULES)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *MODULES], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [w for name in MODULES for w in ("ok", name)]
