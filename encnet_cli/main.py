"""The ``encnet`` Typer application: one module per command, errors as one line."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.logging import RichHandler
from rich.text import Text
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from encnet_cli import _options as opt
from encnet_cli import doctor, evaluate, export, info, models, predict, prepare, report, show, train, weights
from encnet_cli._output import err_console, safe_text
from encnet_core import __version__
from encnet_core.errors import EncNetError


class EncNetGroup(TyperGroup):
    """Prints an ``EncNetError`` as one red line and exits 1 (a traceback only with ENCNET_DEBUG=1); a
    usage error of a command (unknown option, bad choice, wrong type) is one line too, exit 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, opt.expand_json_flag(args))  # --json [FILE|-]: a bare --json means stdout

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path  # "encnet weights pull" too
            err_console.print(
                Text.assemble(("error: ", "bold red"), safe_text(exc.format_message(), markup=False), f" (see {command} --help)"),
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
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    handler.setFormatter(_SafeFormatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


app.command("prepare")(prepare.prepare)
app.command("targets")(info.targets)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("info")(info.info)
app.command("show")(show.show)
app.command("report")(report.report)
app.command("models")(models.models)
app.command("doctor")(doctor.doctor)
app.add_typer(weights.app, name="weights")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="encnet")
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
