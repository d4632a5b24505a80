"""Write docs/cli.md from the Typer app itself, so the CLI reference cannot drift from the code.

    .venv/bin/python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale (run by the tests)
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import typer

from encnet_cli.main import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _option_row(param) -> str:
    names = ", ".join(f"`{n}`" for n in (*param.opts, *param.secondary_opts))
    help_text = " ".join((getattr(param, "help", None) or "").split())
    default = param.default
    if getattr(param, "is_flag", False) and param.secondary_opts:
        shown = f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    elif default is None or default is False or (isinstance(default, (list, tuple)) and not default) or callable(default):
        shown = ""
    else:
        shown = f"`{default}`"
    return f"| {names} | {help_text.replace('|', '/')} | {shown} |"


def _commands(group, ctx, prefix: str = ""):
    """(name, command, ctx) of every command, a sub-app's as "weights pull" after the sub-app itself (in the
    order --help lists them)."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):  # a Typer sub-app (a click group)
            sub_ctx = typer.Context(command, info_name=name, parent=ctx)
            yield f"{prefix}{name}", command, sub_ctx
            yield from _commands(command, sub_ctx, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command, ctx


def render() -> str:
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="encnet")
    lines = [
        "# Command-line reference",
        "",
        "Generated from the Typer app by `scripts/gen_cli_docs.py` (a test fails when it is stale).",
        "Every command also prints this with `--help`. Global options: `encnet [--version] [-v/--verbose] [-q/--quiet] COMMAND`.",
        "`--help`, `--version` and a usage error (exit 2) answer without loading torch; a command loads it when it runs.",
        "Results go to stdout, progress, logs and errors to stderr. On a terminal, lines wrap at its width; written to a "
        "file or a pipe, tables, their titles and log lines are not wrapped (a long path stays on one line), unless "
        "COLUMNS sets a width.",
        "",
    ]
    for name, command, sub_ctx in _commands(group, ctx):
        if hasattr(command, "list_commands"):  # a sub-app: its help and its commands, one line each
            pieces = command.collect_usage_pieces(sub_ctx)
            usage = " ".join([f"encnet {name}", *(p for p in pieces if p != "[OPTIONS]")])
            lines += [f"## `encnet {name}`", "", inspect.cleandoc(command.help or ""), "", f"    {usage}", ""]
            lines += ["| command | meaning |", "| --- | --- |"]
            for sub_name in command.list_commands(sub_ctx):
                sub = command.get_command(sub_ctx, sub_name)
                text = " ".join((sub.short_help or sub.help or "").split())
                lines.append(f"| [`{sub_name}`](#encnet-{name.replace(' ', '-')}-{sub_name}) | {text.replace('|', '/')} |")
            lines.append("")
            continue
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
        usage = " ".join(
            [f"encnet {name}"] + [p.name.upper() + ("..." if p.nargs == -1 else "") for p in arguments] + ["[OPTIONS]"]
        )
        lines += [f"## `encnet {name}`", "", inspect.cleandoc(command.help or ""), "", f"    {usage}", ""]
        if arguments:
            lines += ["| argument | meaning |", "| --- | --- |"]
            lines += [f"| `{p.name.upper()}` | {' '.join((getattr(p, 'help', '') or '').split())} |" for p in arguments]
            lines.append("")
        if options:
            lines += ["| option | meaning | default |", "| --- | --- | --- |"]
            lines += [_option_row(p) for p in options]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from the app")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is stale: run .venv/bin/python scripts/gen_cli_docs.py", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
