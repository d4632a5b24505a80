"""Rendering helpers shared by the commands: stdout console for results, stderr console for progress and
errors, JSON output."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from encnet_core.errors import ConfigError
from encnet_core.paths import atomic_write, check_output_file

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


def json_to_stdout(target: Path | None) -> bool:
    """Whether ``--json`` asks for JSON on stdout (``--json`` or ``--json -``): then the table is left out
    and nothing else may be printed on stdout."""
    return target is not None and str(target) == "-"


def check_json_target(target: Path | None) -> None:
    """Refuse a ``--json FILE`` that cannot be written, or that exists and is not JSON (a dataset or model
    named by mistake, as in ``encnet info --json data.h5``), before the command does its work."""
    if target is None or json_to_stdout(target):
        return
    check_output_file(target, "--json")
    if target.is_file() and target.stat().st_size > 0:
        with open(target, "rb") as f:
            start = f.read(256).lstrip()
        if start[:1] not in (b"{", b"["):
            raise ConfigError(
                f"--json {target} exists and is not a JSON file; refusing to replace it (a bare --json goes after "
                "the arguments or before another option; give a new FILE or remove this one)"
            )


def emit_json(data: Any, target: Path | None) -> None:
    """Write ``data`` as JSON for ``--json [FILE|-]``: to stdout for ``-``/None, else atomically to FILE."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    if target is None or json_to_stdout(target):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_write(Path(target)) as tmp:
        tmp.write_text(text)
