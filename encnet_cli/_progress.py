"""A rich progress display driven by the library's progress callbacks (encnet_core.progress)."""

from __future__ import annotations

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

from encnet_cli._output import err_console
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
