"""How many DataLoader worker processes a command starts: ``loader_workers``, the one rule for every
DataLoader of encnet (``train``'s training and validation loaders, ``evaluate`` for segmentation and
classification).

``--workers auto`` (every command's default) starts none, decoding in the main process, when the
process has at most 2 usable CPUs (its affinity mask: ``taskset``, a cgroup cpuset; under torchrun the
CPUs divided by the local processes, ``LOCAL_WORLD_SIZE``) or when the loader reads fewer than
``SMALL_SPLIT`` samples; otherwise one per usable CPU but one (the main process runs the model), at
most ``MAX_AUTO`` and at most one per ``SMALL_SPLIT // 2`` samples. On 2 CPUs, worker processes
only compete with the main process for the same cores: ``evaluate --workers 2`` took 1.27x as long
as ``--workers 0`` on a quiet 2-core machine and up to 4.9x under load (docs/benchmarks.md, "Loader
workers"). Starting a worker costs about 0.1-0.2 s there, about the time to decode 64 small samples
in the main process.

An explicit number is used as given, but never more than the usable CPUs (more processes than cores
only adds contention).
"""

from __future__ import annotations

import os

from encnet_core.errors import ConfigError

__all__ = ["AUTO", "SMALL_SPLIT", "MAX_AUTO", "usable_cpus", "local_processes", "check_workers", "loader_workers"]

AUTO = "auto"
SMALL_SPLIT = 64  # samples: below this a loader decodes in the main process (worker start-up costs more)
MAX_AUTO = 8  # the most workers ``auto`` starts per process


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one, else ``os.cpu_count()``."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def local_processes() -> int:
    """The training/evaluation processes on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def check_workers(value: int | str) -> int | str:
    """``value`` if it is ``"auto"`` or an integer >= 0 (a string of digits is read as one); else `ConfigError`."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"--workers must be >= 0 or auto, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"--workers must be >= 0 or auto, got {value!r}")
    return value


def loader_workers(requested: int | str, samples: int, *, cpus: int | None = None, processes: int | None = None) -> int:
    """DataLoader workers for a loader that reads ``samples`` samples in this process.

    ``requested``: ``"auto"`` or a number (see the module's docstring); ``cpus`` and ``processes``
    default to ``usable_cpus()`` and ``local_processes()``.
    """
    requested = check_workers(requested)
    cpus = usable_cpus() if cpus is None else max(cpus, 1)
    if requested != AUTO:
        return min(int(requested), cpus)
    per_process = cpus // (local_processes() if processes is None else max(processes, 1))
    if per_process <= 2 or samples < SMALL_SPLIT:
        return 0
    return max(min(per_process - 1, MAX_AUTO, samples // (SMALL_SPLIT // 2)), 0)
