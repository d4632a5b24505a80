"""``encnet prepare SOURCE``: download, verify and convert a dataset to one HDF5 file, one subcommand per
source. Each source's module declares only its own options; the shared ones (download, verification,
archive limits, output, workers, progress, --json) are `_common.Shared`, added by ``source_command``.

A new source: a module here with one function ``name(shared: Shared, **its options)`` that calls
``_common.run``, and its line in ``COMMANDS`` (the names are ``encnet_core.choices.SOURCES``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from encnet_cli.prepare import ade20k, cifar10, cityscapes, coco, folder, pcontext, synthetic, voc
from encnet_cli.prepare._common import source_command
from encnet_core.choices import SOURCES

COMMANDS: dict[str, Callable[..., None]] = {
    "voc": voc.voc,
    "voc-aug": voc.voc_aug,
    "pcontext": pcontext.pcontext,
    "ade20k": ade20k.ade20k,
    "folder": folder.folder,
    "synthetic": synthetic.synthetic,
    "cifar10": cifar10.cifar10,
    "cityscapes": cityscapes.cityscapes,
    "coco": coco.coco,
}
"""One subcommand per source of ``encnet_core.data.sources``, in the order of ``SOURCES`` (a test checks)."""


class SourceGroup(TyperGroup):
    """``encnet prepare``: a missing or unknown SOURCE is a usage error that lists the sources on one line
    (as a choice argument's would), not click's "No such command" or "No such option: --out"."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return ["SOURCE [OPTIONS]"]  # "encnet prepare SOURCE [OPTIONS]": the options are the source's

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            raise UsageError(f"Missing argument 'SOURCE'. Choose from: {', '.join(SOURCES)}", ctx)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] not in self.commands:
            choices = ", ".join(repr(name) for name in SOURCES)
            raise UsageError(f"Invalid value for 'SOURCE': {args[0]!r} is not one of {choices}.", ctx)
        return super().resolve_command(ctx, args)


app = typer.Typer(name="prepare", cls=SourceGroup, no_args_is_help=False, add_completion=False)


@app.callback()
def prepare() -> None:
    """Download, verify and convert a dataset to one HDF5 file (see docs/dataset-format.md).

    One subcommand per source, each with its own options: encnet prepare SOURCE --help."""


for _name, _function in COMMANDS.items():
    app.command(_name, rich_help_panel="Sources")(source_command(_function))
