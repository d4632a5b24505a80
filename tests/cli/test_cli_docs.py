"""docs/cli.md is generated from the Typer app; it must match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_cli_docs.py"


def test_cli_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    for command in ("prepare", "targets", "info", "train", "evaluate", "predict", "export", "models", "doctor", "weights pull", "show", "report"):
        assert f"## `encnet {command}`" in text
    assert module.DOC.read_text() == text, "docs/cli.md is stale: run .venv/bin/python scripts/gen_cli_docs.py"
