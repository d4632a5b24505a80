"""Progress displays on stderr: one driven by the library's progress callbacks (encnet_core.progress), one
by a training run's events (encnet_core.engine.events)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from encnet_cli._output import err_console, plural, safe_text

if TYPE_CHECKING:  # the engine imports torch: loaded by a training run, not by every command that shows progress
    from encnet_core.engine.events import TrainEvent, TrainLog, TrainStart
    from encnet_core.progress import Unit


class _AmountColumn(ProgressColumn):
    """Bytes and speed for transfers, n/N and items/s for everything else."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._speed, self._count = DownloadColumn(), TransferSpeedColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))
        rate = f" {task.speed:.1f}/s" if task.speed else ""
        return Text.assemble(self._count.render(task), rate)


class ProgressReporter:
    """A `ProgressCallback` for library functions; one progress row per description, bytes or counts by its unit."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _AmountColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
        )
        self._tasks: dict[str, int] = {}
        self._started = False

    def __call__(self, description: str, done: int, total: int | None, *, unit: Unit) -> None:
        if not self._started:  # started by the first report: an error before any work prints no blank line
            self.progress.start()
            self._started = True
        task = self._tasks.get(description)
        if task is None:
            task = self.progress.add_task(description, total=total, bytes=unit == "bytes")
            self._tasks[description] = task
        self.progress.update(task, completed=done, total=total)

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.progress.stop()


# ----------------------------------------------------------------------------- training


def duration(seconds: float) -> str:
    """Seconds as H:MM:SS, as rich's time columns show them."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def val_text(metrics: dict[str, Any]) -> str:
    """A validation record in words: pixAcc/mIoU (segmentation) or top-1/top-5 error (classification)."""
    if "top1_error" in metrics:
        return f"top-1 error {metrics['top1_error']:.2%}, top-5 error {metrics['top5_error']:.2%} (accuracy {metrics['accuracy']:.4f})"
    return f"pixAcc {metrics['pixAcc']:.4f} mIoU {metrics['mIoU']:.4f} (all-classes {metrics['mIoU_all']:.4f})"


def start_text(event: TrainStart) -> str:
    """The run's first line: device, length in iterations and epochs (the last one's length when partial), batch, lr."""
    last = event.total_iters - (event.epochs - 1) * event.iters_per_epoch
    partial = ""
    if 0 < last < event.iters_per_epoch:
        partial = ", partial" if event.epochs == 1 else f", the last one of {plural(last, 'iteration')}"
    return (
        f"training on {event.device} x{event.world_size}: {plural(event.total_iters, 'iteration')} "
        f"({event.iters_per_epoch}/epoch, {plural(event.epochs, 'epoch')}{partial}), global batch {event.global_batch}, "
        f"lr {event.lr:.3g}, {event.params / 1e6:.2f}M parameters"
    )


def _loss_text(event: TrainLog) -> str:
    losses = event.losses
    parts = " ".join(f"{k} {losses[k]:.3f}" for k in ("seg", "aux", "se") if k in losses)
    return f"loss {losses['loss']:.3f}{f' ({parts})' if parts else ''} lr {event.lr:.2e} {event.it_per_s:.2f} it/s data {event.data_share:.0%}"


class _TimeColumn(ProgressColumn):
    """"0:01:02 elapsed, 0:03:10 left" (left: an estimate at the speed of the last 30 s; "?" until known)."""

    def render(self, task: Task) -> Text:
        left = task.time_remaining
        return Text(f"{duration(task.elapsed or 0.0)} elapsed, {duration(left) if left is not None else '?'} left", style="progress.remaining")


class _TrainProgress(Progress):
    """The bar, then a line of the latest losses and speeds (cut at the terminal's width, never wrapped)."""

    stats = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.stats:
            yield Text(self.stats, no_wrap=True, overflow="ellipsis")


class TrainDisplay:
    """A training run's events on stderr (rank 0 only): set-up messages, validations, skipped samples, and
    its progress with the time elapsed and an estimate of the time left.

    On a terminal the progress is a rich bar (epoch N/M, iterations, the latest losses, times). Elsewhere
    (a log file, a pipe, CI) a bar cannot redraw, so it is a plain line at the first metrics record, then
    at most every ``interval`` seconds, and at the last iteration: "it 300/1200 (25%), epoch 9/33: loss
    ...; 0:00:24 elapsed, 0:01:13 left", the time left estimated at the run's average speed so far. With
    ``enabled`` False (``--no-progress``, ``--json`` to stdout) only the messages are printed.
    """

    def __init__(
        self, enabled: bool, console: Console | None = None, interval: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console or err_console
        self.bar = enabled and self.console.is_terminal
        self.lines = enabled and not self.console.is_terminal
        self.interval, self.clock = interval, clock
        self.progress = _TrainProgress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            _TimeColumn(),
            console=self.console,
            disable=not self.bar,
        )
        self.task: Any = None
        self.start: TrainStart | None = None
        self._started_at = 0.0
        self._last: tuple[float, int] | None = None  # (time, iteration) of the last plain line

    def _epoch(self, iteration: int) -> str:
        """"N/M": the epoch of ``iteration`` (at least the first) of the run's."""
        assert self.start is not None
        from encnet_core.engine.train import epoch_of

        return f"{max(1, epoch_of(iteration, self.start.iters_per_epoch))}/{self.start.epochs}"

    def __call__(self, event: TrainEvent) -> None:
        from encnet_core.engine.events import (
            Message,
            SampleSkipped,
            TrainLog,
            TrainStart,
            TrainStep,
            Validated,
        )

        match event:
            case TrainStart():
                self.start = event
                self.console.print(start_text(event), soft_wrap=True)
                self._started_at = self.clock()
                self._last = None
                if self.bar:
                    self.progress.start()
                    self.task = self.progress.add_task(
                        "train", total=event.total_iters, completed=event.iteration, epoch=self._epoch(event.iteration + 1)
                    )
            case TrainStep() if self.task is not None:
                self.progress.update(self.task, completed=event.iteration, epoch=self._epoch(event.iteration))
            case TrainLog() if self.start is not None:
                if self.task is not None:
                    self.progress.update(self.task, completed=event.iteration, epoch=self._epoch(event.iteration))
                    self.progress.stats = _loss_text(event)
                if self.lines:
                    self._line(event)
            case Validated():
                self.console.print(f"val epoch {event.epoch} (it {event.iteration}): {val_text(event.metrics)}", soft_wrap=True)
            case Message():
                self.console.print(safe_text(event.text), soft_wrap=True)  # messages hold paths and names from files
            case SampleSkipped():
                self.console.print(f"skipped bad sample: {safe_text(event.sample)}", soft_wrap=True)

    def _line(self, event: TrainLog) -> None:
        """A plain progress line, when due: the first record, ``interval`` seconds after the last line, the end."""
        assert self.start is not None
        now = self.clock()
        since = self._last[0] if self._last else self._started_at
        last = event.iteration >= event.total_iters
        if self._last is not None and now - since < self.interval and not last:
            return
        self._last = (now, event.iteration)
        done, total = event.iteration, event.total_iters
        if last:
            left = "done"
        elif now > self._started_at and done > self.start.iteration:  # the run's average speed: steadier on a busy machine
            left = f"{duration((total - done) * (now - self._started_at) / (done - self.start.iteration))} left"
        else:
            left = "? left"
        self.console.print(
            f"it {done}/{total} ({done / total:.0%}), epoch {self._epoch(done)}: {_loss_text(event)}; "
            f"{duration(now - self._started_at)} elapsed, {left}",
            highlight=False,
            soft_wrap=True,  # one line per report in a log, whatever its width
        )

    def close(self) -> None:
        self.progress.stop()
