"""``encnet info`` (dataset statistics) and ``encnet targets`` (recompute SE-loss targets)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, plural, safe_text
from encnet_core.tasks import DEFAULT


def _print_statistics(stats: dict) -> None:
    """The statistics of the file's task (``_STATISTICS``)."""
    _STATISTICS[stats.get("task", DEFAULT)](stats)


def _print_segmentation(stats: dict) -> None:
    """A segmentation file: per split, the pixel share and image fraction of each class."""
    t = safe_text  # names and paths come from the file: no terminal escapes, no rich markup
    console.print(
        f"[bold]{t(stats['path'])}[/]: dataset {t(stats['dataset'])}, {plural(stats['num_classes'], 'class', 'classes')}, "
        f"ignore {stats['ignore_index']}, present when >= {stats['min_pixels']} px, encnet {t(stats['encnet_version'])}"
    )
    for split, entry in stats["splits"].items():
        if "classes" not in entry:
            console.print(f"{t(split)}: {plural(entry['images'], 'image')} (unlabelled)")
            continue
        table = Table(title=f"{t(split)}: {plural(entry['images'], 'image')}, {entry['labelled_pixel_fraction']:.1%} of pixels labelled")
        for column in ("#", "class", "pixel share", "images with it"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in entry["classes"]:
            table.add_row(str(row["index"]), t(row["name"]), f"{row['pixel_share']:.2%}", f"{row['image_fraction']:.1%}")
        console.print(table)
        empty = entry.get("empty_classes") or []
        if empty:
            console.print(
                f"[yellow]{t(split)}: {plural(len(empty), 'class', 'classes')} with no pixel:[/] {t(', '.join(empty))}",
                highlight=False,
            )


def _print_classification(stats: dict) -> None:
    """A classification file: per split, the images of each class."""
    t = safe_text
    console.print(
        f"[bold]{t(stats['path'])}[/]: classification dataset {t(stats['dataset'])}, {plural(stats['num_classes'], 'class', 'classes')}, "
        f"encnet {t(stats['encnet_version'])}"
    )
    for split, entry in stats["splits"].items():
        if "classes" not in entry:
            console.print(f"{t(split)}: {plural(entry['images'], 'image')} (unlabelled)")
            continue
        table = Table(title=f"{t(split)}: {plural(entry['images'], 'image')}")
        for column in ("#", "class", "images", "share"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in entry["classes"]:
            table.add_row(str(row["index"]), t(row["name"]), str(row["images"]), f"{row['image_fraction']:.1%}")
        console.print(table)


_STATISTICS = {"segmentation": _print_segmentation, "classification": _print_classification}  # per task (encnet_core/tasks.py's names)


def _print_model(meta: dict) -> None:
    table = Table(title="model metadata", show_header=False)
    config = meta.get("model_config") or {}
    fmt = meta.get("format", "checkpoint")
    if meta.get("runs_code"):
        fmt = f"{fmt} (a program: needs --trust-code)"
    rows = {
        "format": fmt,
        "task": meta.get("task"),
        "model": ", ".join(f"{k}={v}" for k, v in config.items()),
        "classes": f"{len(meta['classes'])}: {', '.join(meta['classes'][:12])}{' ...' if len(meta['classes']) > 12 else ''}",
        "mean / std": f"{meta['mean']} / {meta['std']}",
        "base / crop size": f"{meta['base_size']} / {meta['crop_size']}",
        "encnet version": meta.get("encnet_version"),
        "precision": meta.get("precision", "fp32"),
        "training": meta.get("training"),
    }
    for key, value in rows.items():
        if value not in (None, "", {}):
            table.add_row(key, safe_text(value))  # metadata comes from the file
    console.print(table)
    if meta.get("runs_code"):
        how = "it was opened (--trust-code)" if meta.get("loaded") else "this metadata was read from the archive, no code was run"
        console.print(
            f"{meta['format']} is a program: opening it runs code from the file, so predict, evaluate, export and "
            f"train --init-from need --trust-code; {how}",
            soft_wrap=True, highlight=False, markup=False,
        )  # fmt: skip


def info(
    path: Path = typer.Argument(..., help="A prepared dataset (.h5), a checkpoint, an exported model, or a zoo name (encnet weights list)."),
    json_out: opt.JsonOut = None,
    trust_code: opt.TrustCode = False,
) -> None:
    """Print a dataset's splits and per-class statistics (pixel shares and the classes with no pixel
    in a split; images per class for a classification dataset), or a model's metadata.

    A TorchScript/pt2 model's metadata is read from its archive without running it; with
    --trust-code the program is also opened (which runs its code), checking that it loads.
    """
    import h5py

    from encnet_core.data.hdf5 import dataset_statistics

    check_json_target(json_out)
    # HDF5 content is a dataset (as detect_format decides): read without loading the model readers (torch)
    is_dataset = path.is_file() and h5py.is_hdf5(path)
    if not is_dataset:
        from encnet_core.weights.model_files import MODEL_FORMATS, detect_format, peek_metadata
    if not is_dataset and detect_format(path) in MODEL_FORMATS:
        meta = peek_metadata(path, trust_code=trust_code)
        if json_out is not None:
            emit_json(meta, json_out)
        if not json_to_stdout(json_out):
            _print_model(meta)
        return
    stats = dataset_statistics(path)
    if json_out is not None:
        emit_json(stats, json_out)
    if not json_to_stdout(json_out):
        _print_statistics(stats)


def targets(
    path: Path = typer.Argument(..., help="A prepared dataset (.h5), updated in place."),
    min_pixels: int = typer.Option(1, "--min-pixels", help="Pixels a class needs in an image to count as present."),
    json_out: opt.JsonOut = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Recompute the SE-loss class-presence targets and class pixel counts from the stored masks."""
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.data.hdf5 import dataset_statistics
    from encnet_core.data.prepare import recompute_targets

    check_json_target(json_out)
    with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
        updated = recompute_targets(path, min_pixels, progress=reporter)
    stats = dataset_statistics(path)
    if json_out is not None:
        emit_json({"updated": updated, **stats}, json_out)
        if json_to_stdout(json_out):
            return
    console.print(f"updated {', '.join(f'{safe_text(s)}: {n}' for s, n in updated.items())} (min pixels {min_pixels})")
    _print_statistics(stats)
