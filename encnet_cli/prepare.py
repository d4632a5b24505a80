"""``encnet prepare``: download, verify and convert a dataset to one HDF5 file."""

from __future__ import annotations

import dataclasses
import logging
from enum import Enum
from pathlib import Path

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
from encnet_core.choices import (
    ARCHIVE_MAX_MEMBER_MIB,
    ARCHIVE_MAX_RATIO,
    DEFAULT_LABELS,
    DEFAULT_SIZES,
    LABEL_SOURCES,
    LAYOUTS,
    SOURCES,
    TASKS,
)
from encnet_core.choices import SYNTHETIC_CLASSIFICATION_DEFAULTS as CLASSIFICATION_DEFAULTS
from encnet_core.errors import ConfigError

log = logging.getLogger("encnet")

SourceName = Enum("SourceName", {name.replace("-", "_"): name for name in SOURCES}, type=str)  # type: ignore[misc]
LabelSource = Enum("LabelSource", {name: name for name in LABEL_SOURCES}, type=str)  # type: ignore[misc]
Layout = Enum("Layout", {name: name for name in LAYOUTS}, type=str)  # type: ignore[misc]
Task = Enum("Task", {name: name for name in TASKS}, type=str)  # type: ignore[misc]
_CLS = CLASSIFICATION_DEFAULTS


def _archive_option(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    return (name, Path(path)) if sep and not Path(text).exists() else ("", Path(text))


def prepare(
    source: SourceName = typer.Argument(..., help="Dataset: voc, voc-aug, pcontext, ade20k, folder, synthetic or cifar10 (classification)."),
    out: Path = typer.Option(..., "--out", "-o", help="HDF5 file to write (written to a temp file, renamed at the end)."),
    root: Path = typer.Option(None, "--root", help="Folder for downloaded archives (default: $ENCNET_CACHE, else $XDG_CACHE_HOME/encnet, else ~/.cache/encnet)."),
    url: list[str] = typer.Option([], "--url", help="NAME=URL: download file NAME from URL (repeatable)."),
    mirror: str = typer.Option(None, "--mirror", help="Base URL of a mirror holding the archives under their file names."),
    archive: list[str] = typer.Option([], "--archive", help="PATH or NAME=PATH: use an archive you already have (repeatable)."),
    download: bool = typer.Option(True, "--download/--no-download", help="Download missing archives."),
    checksum: list[str] = typer.Option([], "--checksum", help="FILE=ALGO:HEX: expected checksum of FILE (md5, sha1, sha256)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Verify archive checksums (skipping warns; an unverified archive must still open and list to its end)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Network timeout in seconds, per connection attempt and per read."),
    max_member_size: int = typer.Option(ARCHIVE_MAX_MEMBER_MIB, "--max-member-size", help="Largest archive member read into memory, in MiB."),
    max_ratio: float = typer.Option(ARCHIVE_MAX_RATIO, "--max-ratio", help="Refuse an archive that expands more than this many times its size on disk (whole archive)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Conversion processes; 0 = one per core (never more than the cores)."),
    strict: bool = typer.Option(False, "--strict", help="Make a split size that differs from the reference an error."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and record) corrupt images and bad masks instead of stopping."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    min_pixels: int = typer.Option(1, "--min-pixels", help="Pixels a class needs in an image to count as present (se_targets)."),
    labels: LabelSource = typer.Option(None, "--labels", help=f"pcontext: label source, json (trainval_merged.json painted as the reference's detail API does; PyTorch-Encoding's masks) or mat (trainval.tar.gz's .mat label maps). Default {DEFAULT_LABELS}; see docs/datasets.md."),
    images: Path = typer.Option(None, "--images", help="folder: image folder (with train, val and optional test subfolders, or flat)."),
    masks: Path = typer.Option(None, "--masks", help="folder: mask folder mirroring --images (.png)."),
    classes: Path = typer.Option(None, "--classes", help="folder: class list file, one 'name [R G B]' per line."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="folder: share of a flat folder used for val."),
    num_train: int = typer.Option(None, "--num-train", help=f"synthetic: training images (default 300; {_CLS['num_train']} with --task classification).", show_default=False),
    num_val: int = typer.Option(None, "--num-val", help=f"synthetic: validation images (default 100; {_CLS['num_val']} with --task classification).", show_default=False),
    size: int = typer.Option(None, "--size", help=f"synthetic: image side in pixels (default {DEFAULT_SIZES['standard']}; {DEFAULT_SIZES['far']} with --layout far, which needs at least that; {_CLS['size']} with --task classification).", show_default=False),
    task: Task = typer.Option("segmentation", "--task", help="synthetic: segmentation (label maps), or classification (each image labelled with its scene type: street, kitchen, beach)."),
    layout: Layout = typer.Option("standard", "--layout", help="synthetic: standard, or far: the scene in a band at the top, the context-pair twins on scene-neutral ground far below it (beyond a small model's receptive field; see docs/ablation.md)."),
    seed: int = typer.Option(0, "--seed", help="synthetic: scene seed; folder: split seed."),
    json_out: opt.JsonOut = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Download, verify and convert a dataset to one HDF5 file (see docs/dataset-format.md)."""
    # numpy, PIL, h5py and scipy: when the command runs, not to parse its options or print --help
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.data.prepare import PrepareOptions, check_options
    from encnet_core.data.prepare import prepare as run_prepare
    from encnet_core.fetch.archives import ArchiveLimits, MiB
    from encnet_core.fetch.download import parse_checksum_option, parse_url_option

    name = source.value
    if max_member_size < 1:
        raise ConfigError(f"--max-member-size must be at least 1 (MiB), got {max_member_size}")
    if not max_ratio >= 1:  # also refuses nan
        raise ConfigError(f"--max-ratio must be at least 1, got {max_ratio}")
    limits = ArchiveLimits(max_member_bytes=max_member_size * MiB, max_ratio=max_ratio)
    folder_opts = {"--images": images, "--masks": masks, "--classes": classes}
    if name != "folder" and any(v is not None for v in folder_opts.values()):
        raise ConfigError(f"{', '.join(k for k, v in folder_opts.items() if v is not None)} only apply to `prepare folder`")
    if labels is not None and name != "pcontext":
        raise ConfigError("--labels only applies to `prepare pcontext`")
    if task.value != "segmentation" and name != "synthetic":
        raise ConfigError("--task only applies to `prepare synthetic` (the other datasets have one task each)")
    if layout.value != "standard" and name != "synthetic":
        raise ConfigError(f"--layout {layout.value} only applies to `prepare synthetic`")
    if task.value == "classification" and layout.value != "standard":
        raise ConfigError(f"--layout {layout.value} only applies to the synthetic segmentation set, not to --task classification")
    params: dict = {}
    if name == "pcontext":
        params = {"labels": labels.value if labels is not None else DEFAULT_LABELS}
    elif name == "folder":
        params = {"images": images, "masks": masks, "classes": classes, "val_fraction": val_fraction, "seed": seed}
    elif name == "synthetic":
        params = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed, "layout": layout.value}
        if task.value == "classification":
            params = {"task": task.value, "num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    checksums: dict[str, dict[str, str]] = {}
    for text in checksum:
        file, algo, digest = parse_checksum_option(text)
        checksums.setdefault(file, {})[algo] = digest
    options = PrepareOptions(
        out=out,
        root=root,
        overwrite=overwrite,
        urls=dict(parse_url_option(text) for text in url),
        mirror=mirror,
        archives=dict(_archive_option(text) for text in archive),
        checksums=checksums,
        download=download,
        verify=verify,
        workers=workers,
        strict=strict,
        skip_bad=skip_bad,
        min_pixels=min_pixels,
        params=params,
        timeout=timeout,
        limits=limits,
    )
    check_options(name, options)  # a bad input is one line, before the progress display starts
    check_json_target(json_out)
    try:
        with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
            result = run_prepare(name, options, progress=reporter, warn=lambda m: log.warning(safe_text(m, markup=False)))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (prepare's Interrupted): temp files are gone
        signal_name = getattr(exc, "signal_name", "SIGINT")
        err_console.print(f"[bold red]interrupted[/] by {signal_name}: {safe_text(out)} was not written", highlight=False)
        raise typer.Exit(143 if signal_name == "SIGTERM" else 130) from None
    summary = dataclasses.asdict(result)
    if json_out is not None:
        emit_json(summary, json_out)
        if json_to_stdout(json_out):
            return
    table = Table(title=f"{safe_text(result.dataset)} -> {safe_text(result.out)}")
    table.add_column("split")
    table.add_column("images", justify="right")
    for split, count in result.counts.items():
        table.add_row(safe_text(split), str(count))
    console.print(table)
    console.print(f"{plural(len(result.classes), 'class', 'classes')}, {len(result.skipped)} skipped, {result.seconds:.1f}s")
