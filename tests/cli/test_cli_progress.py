"""The CLI's progress display shows bytes or counts by the unit the library reports, not by the task's name."""

from __future__ import annotations

from encnet_cli._progress import ProgressReporter
from encnet_core.progress import ThrottledProgress


def test_the_unit_decides_bytes_or_counts() -> None:
    with ProgressReporter(enabled=False) as reporter:
        reporter("downloading a.tar", 10, 100, unit="bytes")
        reporter("downloading lists", 1, 3, unit="items")  # a count, whatever its first word
        reporter("converting train", 2, 5, unit="items")
        tasks = {task.description: task for task in reporter.progress.tasks}
    assert {name: task.fields["bytes"] for name, task in tasks.items()} == {
        "downloading a.tar": True,
        "downloading lists": False,
        "converting train": False,
    }
    assert (tasks["downloading a.tar"].completed, tasks["downloading a.tar"].total) == (10, 100)


def test_throttled_progress_passes_its_unit() -> None:
    calls: list[tuple[str, int, int | None, str]] = []
    report = ThrottledProgress(lambda *call, unit: calls.append((*call, unit)), "hashing x", "bytes", interval=3600)
    report(1, 10)
    report(5, 10)  # within the interval: dropped
    report(10, 10, final=True)
    assert calls == [("hashing x", 1, 10, "bytes"), ("hashing x", 10, 10, "bytes")]
    ThrottledProgress(None, "nothing", "items")(1, 1, final=True)  # no callback: nothing to do
