"""The ``encnet`` Typer application: one module per command, errors as one line."""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.text import Text
from typer._click.exceptions import UsageError
from typer.core import TyperCommand, TyperGroup

from encnet_cli import _options as opt
from encnet_cli import (
    doctor,
    evaluate,
    export,
    info,
    models,
    predict,
    prepare,
    report,
    show,
    submit,
    train,
    weights,
)
from encnet_cli._output import err_console, safe_text, usage_text
from encnet_core import __version__
from encnet_core.errors import EncNetError


class _FlagHelp:
    """Help pages show no value type for a flag (typer prints ``<bool>``, but a flag takes no value)."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # the type column then stays empty
        super().format_help(ctx, formatter)  # type: ignore[misc]


class EncNetCommand(_FlagHelp, TyperCommand):
    """A command of the encnet app (see ``_FlagHelp``)."""


class EncNetSubGroup(_FlagHelp, TyperGroup):
    """A group of commands under encnet (``encnet weights``); its errors reach ``EncNetGroup``."""


class EncNetGroup(_FlagHelp, TyperGroup):
    """Prints an ``EncNetError`` as one red line and exits 1 (a traceback only with ENCNET_DEBUG=1); a
    usage error of a command (unknown option, bad choice, wrong type) is one line too, exit 2."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda name: name != "prepare")  # the sub-apps come last, but prepare is the first step

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, opt.expand_json_flag(args))  # --json [FILE|-]: a bare --json means stdout

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path  # "encnet weights pull" too
            err_console.print(
                Text.assemble(("error: ", "bold red"), usage_text(exc.format_message()), f" (see {command} --help)"),
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            ctx.exit(2)
        except EncNetError as exc:
            if os.environ.get("ENCNET_DEBUG") == "1":
                raise
            err_console.print(Text.assemble(("error: ", "bold red"), safe_text(exc, markup=False)), highlight=False, soft_wrap=True)
            ctx.exit(1)


app = typer.Typer(
    cls=EncNetGroup,
    name="encnet",
    help="EncNet semantic segmentation: prepare datasets, train, evaluate, predict and export.",
    no_args_is_help=True,
    add_completion=True,  # encnet --install-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _SafeFormatter(logging.Formatter):
    """Log messages carry names read from files: control codes become visible escapes."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), markup=False)


class _LineHandler(logging.Handler):
    """Log records as whole lines ("WARNING  message") where stderr is not a terminal: rich's handler
    wraps a message in a column at the console's width (and pads it to that width)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = Text(f"{record.levelname:<8}", style=f"logging.level.{record.levelname.lower()}")
            err_console.print(Text.assemble(level, " ", self.format(record)), highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must not raise (logging.Handler's convention)
            self.handleError(record)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"encnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
) -> None:
    """EncNet semantic segmentation: prepare datasets, train, evaluate, predict and export."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("encnet")
    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    else:
        handler = _LineHandler()
    handler.setFormatter(_SafeFormatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def help_text(function: Callable[..., Any]) -> str:
    """A command's docstring as its help: each paragraph on one line, for rich to wrap at the terminal's
    width (typer's rich help keeps the docstring's own line breaks, mid-sentence)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(function.__doc__ or "").split("\n\n"))


def summary(function: Callable[..., Any]) -> str:
    """A command's line in ``encnet --help``: the first sentence of its docstring, on one line.
    ``encnet CMD --help`` shows the whole docstring."""
    return re.split(r"(?<=\.) (?=[A-Z])", help_text(function).split("\n\n")[0])[0]


for _name, _function in (
    ("targets", info.targets), ("train", train.train), ("evaluate", evaluate.evaluate),
    ("predict", predict.predict), ("submit", submit.submit), ("export", export.export), ("info", info.info), ("show", show.show),
    ("report", report.report), ("models", models.models), ("doctor", doctor.doctor),
):  # fmt: skip
    app.command(_name, cls=EncNetCommand, help=help_text(_function), short_help=summary(_function))(_function)
for _command in (*prepare.app.registered_commands, *weights.app.registered_commands):  # prepare voc/..., weights list/pull/add
    _command.cls, _command.help, _command.short_help = EncNetCommand, help_text(_command.callback), summary(_command.callback)
app.add_typer(
    prepare.app, name="prepare", cls=type("PrepareGroup", (_FlagHelp, prepare.SourceGroup), {}),
    help=help_text(prepare.prepare), short_help=summary(prepare.prepare),
)  # fmt: skip
app.add_typer(weights.app, name="weights", cls=EncNetSubGroup)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="encnet")
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
