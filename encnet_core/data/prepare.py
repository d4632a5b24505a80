"""``encnet prepare`` and ``encnet targets``: fetch, verify, convert; recompute the stored targets.

Conversion runs in one process pool that every split shares (one worker per core by default; see
`_Converter` for how it stays small at scale). Each worker reads its items
straight from the archives (or extracted files), checks them (decodable image, mask of the same size
with labels 0..C-1 or 255; for a classification source, a class index 0..C-1, the image made by the
item's ``load`` where it has one) and hands back a ``Sample``; the main process writes them in order with
``HDF5Writer``, which moves the file into place only when everything succeeded, and never over a
file that appeared meanwhile unless ``overwrite`` is set. The main process also gathers each mask's
distinct values for `LabelChecks` (label_checks.py), whose errors come before that move.

Every option is checked before any work (a bad ``--out`` is found before a download, not after a
conversion). SIGTERM unwinds ``prepare`` like Ctrl-C (`Interrupted`, a KeyboardInterrupt), so the
temporary files it was writing are removed; a download's ``.part`` file is kept on purpose, so the
next run resumes it.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import gc
import io
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.hdf5 import (
    HDF5Writer,
    Sample,
    class_pixel_counts,
    class_presence,
    decode_mask,
    encode_mask,
    invalid_label,
    open_h5,
    read_info,
)
from encnet_core.data.label_checks import LabelChecks
from encnet_core.data.sources import Item, Ref, get_source
from encnet_core.errors import ConfigError, DataError, EncNetError
from encnet_core.fetch.archives import Archive, ArchiveLimits, open_archive, verify_archive
from encnet_core.fetch.download import (
    check_timeout,
    check_url,
    default_cache_dir,
    fetch,
    manual_download_message,
)
from encnet_core.paths import check_output_file
from encnet_core.progress import ProgressCallback
from encnet_core.tasks import facts

log = logging.getLogger("encnet")

__all__ = [
    "Interrupted",
    "PrepareOptions",
    "check_options",
    "PrepareResult",
    "prepare",
    "recompute_targets",
    "convert_item",
]


@dataclass(frozen=True)
class PrepareOptions:
    """Options of ``encnet prepare`` (see its --help)."""

    out: Path  # the HDF5 file to write
    root: Path | None = None  # archive cache folder (default: default_cache_dir())
    overwrite: bool = False  # replace an existing --out
    urls: dict[str, str] = field(default_factory=dict)  # remote file name -> URL override
    mirror: str | None = None  # base URL replacing every remote's folder
    archives: dict[str, Path] = field(default_factory=dict)  # remote file name -> local file
    checksums: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> {algo: hex} overrides
    download: bool = True  # allow downloading missing archives
    verify: bool = True  # verify checksums
    workers: int = 0  # conversion processes (0 = one per core)
    strict: bool = False  # split size mismatch is an error instead of a warning
    skip_bad: bool = False  # skip and record unusable images instead of stopping
    min_pixels: int = 1  # pixels for a class to count as present in se_targets
    params: dict[str, Any] = field(default_factory=dict)  # source-specific parameters
    timeout: float = 30.0  # network timeout in seconds, per connection attempt and per read
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)  # largest member, largest expansion ratio


@dataclass
class PrepareResult:
    """What ``prepare`` wrote."""

    out: Path
    dataset: str
    classes: list[str]
    counts: dict[str, int]
    skipped: list[dict[str, str]]
    warnings: list[str]
    seconds: float
    empty_classes: list[str] = field(default_factory=list)  # classes with no pixel in any split (segmentation)
    filtered: dict[str, int] = field(default_factory=dict)  # images per split the source's filter left out (COCO)


# ----------------------------------------------------------------------------- conversion (workers)

_OPEN_ARCHIVES: dict[str, Archive] = {}


def _read(ref: Ref, limits: ArchiveLimits) -> bytes:
    container, member = ref
    if not container:
        return Path(member).read_bytes()
    archive = _OPEN_ARCHIVES.get(container)
    if archive is None or archive.limits != limits:
        if archive is not None:
            archive.close()
        archive = _OPEN_ARCHIVES[container] = open_archive(Path(container), limits)
    return archive.read(member)


def _close_archives() -> None:
    """Close the archives ``_read`` opened: a later run may find another file at the same path."""
    while _OPEN_ARCHIVES:
        _OPEN_ARCHIVES.popitem()[1].close()


def _init_worker() -> None:
    """Pool initializer: fresh archives (inherited ones share the parent's file offset) and plain signals.

    A worker stops at SIGTERM (the parent removes the temp files) and ignores Ctrl-C, which the
    parent handles by shutting the pool down.
    """
    _OPEN_ARCHIVES.clear()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _where(ref: Ref) -> str:
    return f"{ref[0]}:{ref[1]}" if ref[0] else ref[1]


def _label_reason(bad: int, num_classes: int) -> str:
    return f"label {bad} outside 0..{num_classes - 1} (and {IGNORE_INDEX} ignore)"


def convert_item(
    item: Item, num_classes: int, limits: ArchiveLimits | None = None
) -> Sample | dict[str, str] | None:
    """Read, check and encode one item; a problem comes back as ``{"name", "file", "reason"}`` (a mask
    value at or above the class count adds ``"values"``, the mask's distinct values).

    None: the item's ``make_mask`` left it out (the source's filter, e.g. COCO's 1000 labelled pixels);
    its labels are made before the image is read, so a filtered item costs no image read.
    """
    limits = limits or ArchiveLimits()
    ref = item.image
    try:
        made = None
        if item.make_mask is not None:  # its problems are named by the image (``mask`` may be a whole annotation file)
            made = item.make_mask()
            if made is None:
                return None
        label = item.label
        if item.load is not None:
            raw, label = item.load()
        else:
            raw = _read(item.image, limits)
        if label is not None and not (isinstance(label, (int, np.integer)) and 0 <= label < num_classes):
            raise DataError(f"label {label} outside 0..{num_classes - 1} (the {num_classes} classes)")
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            width, height = img.size
            if img.format not in ("JPEG", "PNG"):  # stored bytes must decode with torchvision.io
                buffer = io.BytesIO()
                img.convert("RGB").save(buffer, format="PNG")
                raw = buffer.getvalue()
        sample = Sample(item.name, raw, height, width, label=None if label is None else int(label))
        if made is not None or (item.mask is not None and item.decode_mask is not None):
            ref = item.image if made is not None else item.mask  # type: ignore[assignment]
            labels = made if made is not None else item.decode_mask(_read(item.mask, limits))  # type: ignore[misc,arg-type]
            if labels.shape != (height, width):
                raise DataError(f"mask is {labels.shape[1]}x{labels.shape[0]} but the image is {width}x{height}")
            bad = invalid_label(labels, num_classes)
            if bad is not None:  # the distinct values go back too: LabelChecks names the likely cause
                return {"name": item.name, "file": _where(ref), "reason": _label_reason(bad, num_classes),
                        "values": [int(v) for v in np.unique(labels)]}  # fmt: skip
            sample.mask = encode_mask(labels)
            counts = np.bincount(labels.reshape(-1), minlength=IGNORE_INDEX + 1)  # one pass: 0..C-1 and 255
            sample.class_pixels = counts[:num_classes].astype(np.int64)  # = class_pixel_counts(labels, C)
            sample.mask_values = np.flatnonzero(counts).astype(np.uint8)
        return sample
    except (OSError, ValueError, EncNetError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL: corrupt data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if ref[0]:
            reason = reason.removeprefix(f"{ref[0]}: ")  # the archive is named in "file" already
        return {"name": item.name, "file": _where(ref), "reason": reason}


def _convert_chunk(chunk: list[Item], num_classes: int, limits: ArchiveLimits) -> list[Sample | dict[str, str] | None]:
    return [convert_item(item, num_classes, limits) for item in chunk]


class _Converter:
    """Converts a split's items, in item order, in one process pool that every split shares.

    The pool starts at the first split with 16 items or more (smaller ones, and ``workers <= 1``, are
    converted in this process). Its workers are forked from this process, plan and all, right after
    ``gc.freeze()``: the collector in a worker then never walks (and so never copies) the objects it
    inherited, so a plan of 118k items is held once, not once per worker. Chunks of consecutive items
    keep archive reads sequential per worker; at most ``4 x workers`` chunks are in flight, made as
    they are sent, so nothing here grows with the number of items.
    """

    def __init__(self, num_classes: int, workers: int, limits: ArchiveLimits) -> None:
        self.num_classes, self.workers, self.limits = num_classes, workers, limits
        self._pool: cf.ProcessPoolExecutor | None = None
        self._froze = False

    def _start(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            if method == "fork" and gc.get_freeze_count() == 0:  # (a caller's own freeze is left alone)
                gc.freeze()
                self._froze = True
            self._pool = cf.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker
            )
        return self._pool

    def results(self, items: Sequence[Item]) -> Iterator[Sample | dict[str, str] | None]:
        """The result of every item, in order (None: an item the source's filter left out)."""
        if self.workers <= 1 or len(items) < 16:
            for item in items:
                yield convert_item(item, self.num_classes, self.limits)
            return
        pool = self._start()
        size = max(4, min(64, len(items) // (self.workers * 8) or 1))
        starts = iter(range(0, len(items), size))

        def submit() -> cf.Future | None:
            begin = next(starts, None)
            if begin is None:
                return None
            return pool.submit(_convert_chunk, items[begin : begin + size], self.num_classes, self.limits)

        pending = collections.deque(f for f in (submit() for _ in range(self.workers * 4)) if f is not None)
        while pending:
            try:
                results = pending.popleft().result()
            except cf.process.BrokenProcessPool:
                raise DataError("a conversion process died (out of memory, or killed); try fewer --workers") from None
            following = submit()
            if following is not None:
                pending.append(following)
            yield from results

    def close(self) -> None:
        """Stop the workers (queued chunks are cancelled) and let the collector see the plan again."""
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._pool = None
            if self._froze:
                gc.unfreeze()
                self._froze = False


# ----------------------------------------------------------------------------- prepare


class Interrupted(KeyboardInterrupt):
    """``prepare`` was stopped by a signal (SIGTERM); the temporary files it was writing were removed."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While preparing, SIGTERM raises `Interrupted` so that ``finally`` blocks remove temp files.

    Only from the main thread (elsewhere signals cannot be handled; they are left alone).
    """

    def handle(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, handle) if installed else None
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _check_out(out: Path, overwrite: bool) -> None:
    """``--out`` must be a new (or, with overwrite, an existing) .h5 file in a folder we can write."""
    check_output_file(out, "--out")  # a folder, a parent that is a file, a place we cannot write
    if os.path.lexists(out) and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"--out should end in .h5 or .hdf5, got {out.name}")


def _check_options(source: Any, options: PrepareOptions) -> None:
    """Every user input of ``prepare``, before any download, extraction or conversion."""
    if options.min_pixels < 1:
        raise ConfigError("--min-pixels must be at least 1")
    if options.workers < 0:
        raise ConfigError(f"--workers must be 0 (one per core) or more, got {options.workers}")
    check_timeout(options.timeout)
    if options.mirror:
        check_url(options.mirror, "--mirror")
    for path in options.archives.values():
        if not Path(path).is_file():
            raise DataError(f"archive {path} does not exist: check the --archive path")
    if source.check is not None:
        source.check(options.params)
    _check_out(Path(options.out), options.overwrite)


def _resolve_remote_options(remotes: tuple, options: PrepareOptions) -> dict[str, dict[str, Any]]:
    """Per remote file: its URL override, local archive and checksum override."""
    names = {r.name for r in remotes}
    for kind, mapping in (("--url", options.urls), ("--checksum", options.checksums)):
        unknown = set(mapping) - names
        if unknown:
            raise ConfigError(f"{kind} names {sorted(unknown)[0]!r}, which is not a file of this dataset ({', '.join(sorted(names)) or 'none'})")
    archives: dict[str, Path] = {}
    for key, path in options.archives.items():
        if key in names:
            archives[key] = path
        elif key == "" and len(remotes) == 1:
            archives[remotes[0].name] = path
        elif key == "" and Path(path).name in names:
            archives[Path(path).name] = path
        else:
            raise ConfigError(
                f"cannot tell which file --archive {path} is; use NAME=PATH with NAME one of {', '.join(sorted(names)) or 'none'}"
            )
    resolved = {}
    for remote in remotes:
        url = options.urls.get(remote.name)
        if url is None and options.mirror:
            url = options.mirror.rstrip("/") + "/" + remote.name
        if not (url or remote.url or remote.name in archives):  # a login-only file: say so before any work
            root = Path(options.root) if options.root else default_cache_dir()
            if not (root / remote.name).is_file():
                raise DataError(manual_download_message(remote, root))
        resolved[remote.name] = {
            "url": url,
            "archive": archives.get(remote.name),
            "checksum": options.checksums.get(remote.name),
        }
    return resolved


def check_options(source_name: str, options: PrepareOptions) -> None:
    """Check every user input of ``prepare`` without doing any work (``prepare`` runs this first too)."""
    source = get_source(source_name)
    _check_options(source, options)
    _resolve_remote_options(source.files(options.params), options)


@_sigterm_unwinds()
def prepare(
    source_name: str,
    options: PrepareOptions,
    progress: ProgressCallback | None = None,
    warn: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Fetch and verify a dataset's files, convert it, and write ``options.out`` atomically.

    Raises an `EncNetError` for anything the user can fix (checked before any work where possible),
    and `Interrupted` on SIGTERM; either way no temporary file is left behind.
    """
    start = time.perf_counter()
    warnings: list[str] = []

    def _warn(message: str) -> None:
        warnings.append(message)
        (warn or log.warning)(message)

    source = get_source(source_name)
    _check_options(source, options)
    remotes = source.files(options.params)
    remote_options = _resolve_remote_options(remotes, options)
    out = Path(options.out)
    root = Path(options.root) if options.root else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the archive folder {root} (--root): {exc.strerror or exc}") from None
    limits = options.limits

    def check(path: Path) -> None:
        verify_archive(path, limits)

    files: dict[str, Path] = {}
    provenance: list[dict[str, Any]] = []
    hashes_by_file: dict[str, dict[str, str]] = {}
    for remote in remotes:
        opts = remote_options[remote.name]
        path, hashes = fetch(
            remote,
            root,
            url_override=opts["url"],
            archive=opts["archive"],
            checksum_override=opts["checksum"],
            allow_download=options.download,
            verify=options.verify,
            progress=progress,
            warn=_warn,
            check=source.file_checks.get(remote.name, check),  # an archive unless the source says otherwise
            timeout=options.timeout,
        )
        files[remote.name] = path
        hashes_by_file[remote.name] = hashes
        provenance.append({"file": remote.name, "url": opts["url"] or remote.url, "path": str(path), **hashes,
                           "verified": options.verify})  # fmt: skip

    params = dict(options.params)
    params["_hashes"] = hashes_by_file
    params["_progress"] = progress
    params["_limits"] = limits
    plan = source.plan(files, root, params)
    num_classes = len(plan.classes)

    for split, expected in plan.expected.items():
        found = len(plan.splits.get(split, []))
        if found != expected:
            message = f"split {split!r} has {found} images, the reference has {expected}"
            if options.strict:
                raise DataError(message + " (--strict)")
            _warn(message)

    cores = os.cpu_count() or 1
    workers = min(options.workers or cores, cores)  # more processes than cores only adds contention
    skipped: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    filtered: dict[str, int] = {}
    sources_attr = {"source": source_name, "files": provenance, **plan.files}
    checks = LabelChecks(list(plan.classes), user_masks=plan.user_masks)
    converter = _Converter(num_classes, workers, limits)
    try:
        with HDF5Writer(
            out, source_name, plan.classes, plan.palette, sources_attr, options.min_pixels, overwrite=options.overwrite,
            task=plan.task,
        ) as writer:
            for split, items in plan.splits.items():
                if not facts(plan.task).per_pixel:
                    labelled = any(item.label is not None or item.load is not None for item in items)
                else:
                    labelled = any(item.mask is not None for item in items)
                writer.begin_split(split, len(items), labelled)
                done = 0
                filtered[split] = 0
                for item, result in zip(items, converter.results(items), strict=True):
                    done += 1
                    if result is None:  # the source's filter (not a problem: neither stored nor skipped)
                        filtered[split] += 1
                    elif isinstance(result, dict):
                        values = result.pop("values", None)
                        if values is not None and not options.skip_bad:  # out of range: gather examples first
                            if checks.add_out_of_range(result["file"], result["reason"], values):
                                raise checks.out_of_range_error()
                            continue
                        if not options.skip_bad:
                            raise DataError(f"{result['file']}: {result['reason']} (pass --skip-bad to skip such files)")
                        skipped.append({"split": split, **result})
                        _warn(f"skipped {result['file']}: {result['reason']}")
                    else:
                        mask_ref = item.image if item.make_mask is not None else item.mask  # a made mask is named by its image
                        if result.mask_values is not None and mask_ref is not None:
                            checks.add(split, _where(mask_ref), result.mask_values, result.class_pixels)
                        if not checks.out_of_range:  # after one, only the examples are gathered
                            writer.add(result)
                    if progress:
                        progress(f"converting {split}", done, len(items), unit="items")
                counts[split] = done - filtered[split] - sum(1 for s in skipped if s["split"] == split)
            if any(filtered.values()):
                sources_attr["filtered"] = filtered
            if checks.out_of_range:
                raise checks.out_of_range_error()
            empty = checks.finish()  # raises before the file is moved into place
            writer.set_attribute("sources", json.dumps({**sources_attr, "skipped": skipped}))
    finally:
        try:
            converter.close()
        finally:
            _close_archives()
    seconds = time.perf_counter() - start
    return PrepareResult(out, source_name, plan.classes, counts, skipped, warnings, seconds, empty, filtered)


# ----------------------------------------------------------------------------- targets and info


def recompute_targets(path: Path, min_pixels: int = 1, progress: ProgressCallback | None = None) -> dict[str, int]:
    """Recompute ``class_pixels`` and ``se_targets`` of every labelled split from the stored masks.

    Every mask is decoded before anything is written, so an error leaves the file untouched.
    Returns the number of images per split that were updated.
    """
    if min_pixels < 1:
        raise ConfigError("--min-pixels must be at least 1")
    info = read_info(path)
    if not facts(info.task).per_pixel:
        raise DataError(
            f"{path} is a {info.task} dataset; `encnet targets` recomputes the class-presence targets of segmentation masks"
        )
    new: dict[str, np.ndarray] = {}
    with open_h5(path) as handle:
        for split, count in info.splits.items():
            if not info.labelled[split]:
                continue
            masks = handle[split]["masks"]
            pixels = np.zeros((count, info.num_classes), dtype=np.int64)
            names = handle[split]["names"]
            for i in range(count):
                try:
                    labels = decode_mask(masks[i])
                except (DataError, OSError) as exc:  # OSError: a damaged HDF5 chunk that cannot be read
                    raise DataError(f"{path}: mask of {split}/{names[i].decode()} (sample {i}): {exc}") from None
                bad = invalid_label(labels, info.num_classes)
                if bad is not None:
                    raise DataError(f"{path}: mask of {split}/{names[i].decode()} has label {bad} >= {info.num_classes}")
                pixels[i] = class_pixel_counts(labels, info.num_classes)
                if progress:
                    progress(f"targets {split}", i + 1, count, unit="items")
            new[split] = pixels
    with open_h5(path, "r+") as handle:
        for split, pixels in new.items():
            handle[split]["class_pixels"][...] = pixels
            handle[split]["se_targets"][...] = class_presence(pixels, min_pixels)
        handle.attrs["min_pixels"] = min_pixels
    return {split: len(pixels) for split, pixels in new.items()}

