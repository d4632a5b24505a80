"""What every ``encnet prepare SOURCE`` shares: its options (`Shared`, defined once), the decorator that
adds them to a source's own (`source_command`), and `run`, which builds ``PrepareOptions``, calls the
library's ``prepare`` and prints its result.

No ``from __future__ import annotations`` here: Typer reads `Shared`'s fields (their ``Annotated`` types
and defaults) through ``inspect.signature``, so they must be objects, not strings."""

import dataclasses
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import (
    check_json_target,
    console,
    emit_json,
    err_console,
    json_to_stdout,
    plural,
    safe_text,
)
from encnet_core.choices import ARCHIVE_MAX_MEMBER_MIB, ARCHIVE_MAX_RATIO
from encnet_core.errors import ConfigError

log = logging.getLogger("encnet")

DOWNLOAD = "Download and verification"


@dataclasses.dataclass(frozen=True)
class Shared:
    """The options of every ``encnet prepare SOURCE`` (each field is one option; Typer reads them)."""

    out: Annotated[Path, typer.Option("--out", "-o", help="HDF5 file to write (written to a temp file, renamed at the end).")]
    root: Annotated[Path | None, typer.Option("--root", help="Folder for downloaded archives (default: $ENCNET_CACHE, else $XDG_CACHE_HOME/encnet, else ~/.cache/encnet).", rich_help_panel=DOWNLOAD)] = None
    url: Annotated[list[str], typer.Option("--url", help="NAME=URL: download file NAME from URL (repeatable).", rich_help_panel=DOWNLOAD)] = ()  # type: ignore[assignment]
    mirror: Annotated[str | None, typer.Option("--mirror", help="Base URL of a mirror holding the archives under their file names.", rich_help_panel=DOWNLOAD)] = None
    archive: Annotated[list[str], typer.Option("--archive", help="PATH or NAME=PATH: use an archive you already have (repeatable).", rich_help_panel=DOWNLOAD)] = ()  # type: ignore[assignment]
    download: Annotated[bool, typer.Option("--download/--no-download", help="Download missing archives.", rich_help_panel=DOWNLOAD)] = True
    checksum: Annotated[list[str], typer.Option("--checksum", help="FILE=ALGO:HEX: expected checksum of FILE (md5, sha1, sha256).", rich_help_panel=DOWNLOAD)] = ()  # type: ignore[assignment]
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify archive checksums (skipping warns; an unverified archive must still open and list to its end).", rich_help_panel=DOWNLOAD)] = True
    timeout: Annotated[float, typer.Option("--timeout", help="Network timeout in seconds, per connection attempt and per read.", rich_help_panel=DOWNLOAD)] = 30.0
    max_member_size: Annotated[int, typer.Option("--max-member-size", help="Largest archive member read into memory, in MiB.", rich_help_panel=DOWNLOAD)] = ARCHIVE_MAX_MEMBER_MIB
    max_ratio: Annotated[float, typer.Option("--max-ratio", help="Refuse an archive that expands more than this many times its size on disk (whole archive).", rich_help_panel=DOWNLOAD)] = ARCHIVE_MAX_RATIO
    workers: Annotated[int, typer.Option("--workers", "-j", help="Conversion processes; 0 = one per core (never more than the cores).")] = 0
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip (and record) corrupt images and bad masks instead of stopping.")] = False
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False
    json_out: opt.JsonOut = None
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True


# The options more than one source takes, but not every one (a source's own options are in its module).
Strict = Annotated[bool, typer.Option("--strict", help="Make a split size that differs from the reference an error.")]
MinPixels = Annotated[int, typer.Option("--min-pixels", help="Pixels a class needs in an image to count as present (se_targets).")]

_SHARED = list(inspect.signature(Shared).parameters.values())


def source_command(function: Callable[..., None]) -> Callable[..., None]:
    """``function(shared: Shared, **own_options)`` as a Typer command: its own options follow ``--out``, the
    shared ones come after, and they reach ``function`` as one `Shared`."""
    own = list(inspect.signature(function, eval_str=True).parameters.values())[1:]
    shared_names = [p.name for p in _SHARED]

    def command(**kwargs: Any) -> None:
        shared = Shared(**{name: kwargs.pop(name) for name in shared_names})
        function(shared, **kwargs)

    params = [_SHARED[0], *own, *_SHARED[1:]]
    command.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])  # type: ignore[attr-defined]
    command.__name__, command.__qualname__ = function.__name__, function.__qualname__
    command.__doc__, command.__module__ = function.__doc__, function.__module__
    return command


def _archive_option(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    return (name, Path(path)) if sep and not Path(text).exists() else ("", Path(text))


def run(source: str, shared: Shared, params: dict[str, Any], *, strict: bool = False, min_pixels: int = 1) -> None:
    """Check the options, prepare ``source`` with the library and print what was written."""
    # numpy, PIL, h5py and scipy: when the command runs, not to parse its options or print --help
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.data.prepare import PrepareOptions, check_options
    from encnet_core.data.prepare import prepare as run_prepare
    from encnet_core.fetch.archives import ArchiveLimits, MiB
    from encnet_core.fetch.download import parse_checksum_option, parse_url_option

    s = shared
    if s.max_member_size < 1:
        raise ConfigError(f"--max-member-size must be at least 1 (MiB), got {s.max_member_size}")
    if not s.max_ratio >= 1:  # also refuses nan
        raise ConfigError(f"--max-ratio must be at least 1, got {s.max_ratio}")
    limits = ArchiveLimits(max_member_bytes=s.max_member_size * MiB, max_ratio=s.max_ratio)
    checksums: dict[str, dict[str, str]] = {}
    for text in s.checksum:
        file, algo, digest = parse_checksum_option(text)
        checksums.setdefault(file, {})[algo] = digest
    options = PrepareOptions(
        out=s.out,
        root=s.root,
        overwrite=s.overwrite,
        urls=dict(parse_url_option(text) for text in s.url),
        mirror=s.mirror,
        archives=dict(_archive_option(text) for text in s.archive),
        checksums=checksums,
        download=s.download,
        verify=s.verify,
        workers=s.workers,
        strict=strict,
        skip_bad=s.skip_bad,
        min_pixels=min_pixels,
        params=params,
        timeout=s.timeout,
        limits=limits,
    )
    check_options(source, options)  # a bad input is one line, before the progress display starts
    check_json_target(s.json_out)
    try:
        with ProgressReporter(enabled=s.progress and not json_to_stdout(s.json_out)) as reporter:
            result = run_prepare(source, options, progress=reporter, warn=lambda m: log.warning(safe_text(m, markup=False)))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (prepare's Interrupted): temp files are gone
        signal_name = getattr(exc, "signal_name", "SIGINT")
        err_console.print(f"[bold red]interrupted[/] by {signal_name}: {safe_text(s.out)} was not written", highlight=False)
        raise typer.Exit(143 if signal_name == "SIGTERM" else 130) from None
    if result.empty_classes:
        from encnet_core.data.label_checks import empty_classes_message

        log.warning(safe_text(empty_classes_message(result.empty_classes, len(result.classes)), markup=False))
    summary = dataclasses.asdict(result)
    if s.json_out is not None:
        emit_json(summary, s.json_out)
        if json_to_stdout(s.json_out):
            return
    table = Table(title=f"{safe_text(result.dataset)} -> {safe_text(result.out)}")
    table.add_column("split")
    table.add_column("images", justify="right")
    for split, count in result.counts.items():
        table.add_row(safe_text(split), str(count))
    console.print(table)
    filtered = sum(result.filtered.values())
    left_out = f", {filtered} left out by the source's filter" if filtered else ""
    console.print(f"{plural(len(result.classes), 'class', 'classes')}, {len(result.skipped)} skipped{left_out}, {result.seconds:.1f}s")
