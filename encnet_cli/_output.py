"""Rendering helpers shared by the commands: stdout console for results, stderr console for progress and
errors, JSON output."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console()  # results (tables, summaries)
err_console = Console(stderr=True)  # progress, logs, warnings and errors


# C0 controls (ESC, BEL, CR, LF, ...), DEL, C1 controls (CSI, OSC, ...), and the bidi overrides and
# isolates that reorder what a terminal shows ("Trojan source")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object, *, markup: bool = True) -> str:
    """``value`` as text that cannot drive the terminal, for printing names read from files.

    Control characters (ESC, BEL, CR, newlines, C1 codes) and bidi overrides become visible escapes
    such as ``\\x1b``; with ``markup`` (the default, for ``console.print`` and table cells) rich
    markup is escaped too, so ``[red]`` prints as written. Pass ``markup=False`` for sinks that do
    not interpret markup (a logger with ``markup=False``, ``Text``, plain ``print``). JSON output
    needs neither: ``json.dumps`` escapes control characters itself.
    """
    text = _UNSAFE.sub(_visible, str(value))
    return escape(text) if markup else text


def emit_json(data: Any, path: Path | None) -> None:
    """Write ``data`` as JSON to ``path``, or to stdout when path is ``-``/None."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    if path is None or str(path) == "-":
        print(text)
    else:
        path.write_text(text + "\n")
