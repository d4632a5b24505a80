"""Rendering helpers shared by the commands: stdout console for results, stderr console for progress and
errors, JSON output."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.text import Text

from encnet_core.errors import ConfigError
from encnet_core.paths import atomic_write, check_output_file

UNWRAPPED_WIDTH = 10_000
"""The width of a console that is not a terminal (and COLUMNS is unset): wide enough that nothing wraps."""


class _Console(Console):
    """rich's Console, except that output to a file or a pipe is not wrapped.

    On a terminal, lines wrap at its width. Elsewhere (a log, a pipe, CI) each line is as long as its
    content, so a long path in a table, in a table's title or in a message stays in one piece (and
    greppable) instead of breaking at 80 columns. COLUMNS, when set, is the width either way.
    """

    def unwrapped(self) -> bool:
        """Whether lines are left whole: not a terminal, and COLUMNS unset."""
        return not self.is_terminal and not self._environ.get("COLUMNS", "").isdigit()

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return ConsoleDimensions(UNWRAPPED_WIDTH, size.height) if self.unwrapped() else size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Strings as rich renders them; unwrapped, also a table's title (rich fits it to the table's width)."""
        rendered = super().render_str(text, **kwargs)
        if self.unwrapped():
            rendered.no_wrap, rendered.overflow = True, "ignore"
        return rendered


console = _Console()  # results (tables, summaries)
err_console = _Console(stderr=True)  # progress, logs, warnings and errors


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


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and its noun: "1 image", "2 images", "0 images"; ``words`` for another plural ("class", "classes")."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def usage_text(message: str) -> str:
    """A usage error's message as one safe line (for a sink without markup).

    The parser lays out a list of choices on tab-indented lines ("Missing argument 'source'. Choose
    from:\n\tvoc,\n\tvoc-aug, ..."): that layout becomes spaces. Any other control code (typed on the
    command line) is shown escaped, as ``safe_text`` shows names read from files.
    """
    return safe_text(message.replace("\n\t", " "), markup=False)


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
