"""Rendering helpers shared by the commands: stdout console for results, stderr console for progress and
errors, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()  # results (tables, summaries)
err_console = Console(stderr=True)  # progress, logs, warnings and errors


def emit_json(data: Any, path: Path | None) -> None:
    """Write ``data`` as JSON to ``path``, or to stdout when path is ``-``/None."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    if path is None or str(path) == "-":
        print(text)
    else:
        path.write_text(text + "\n")
