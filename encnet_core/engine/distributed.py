"""torch.distributed set-up for runs launched with torchrun: NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from encnet_core.config import TrainConfig
from encnet_core.engine.device import is_cuda, process_device, resolve_device
from encnet_core.errors import EncNetError

log = logging.getLogger("encnet")

__all__ = [
    "DistInfo", "init_distributed", "shutdown_distributed", "all_reduce_sum", "broadcast_flag", "gather_lists",
    "max_over_ranks", "PeerLost", "peer_failures",
]  # fmt: skip


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def init_distributed(device_name: str = "auto", timeout_s: float = TrainConfig.dist_timeout) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or run alone.

    Under torchrun each process uses GPU ``LOCAL_RANK`` with NCCL, or the CPU with gloo when no GPU
    is visible or ``--device cpu`` was given. ``timeout_s`` (--dist-timeout): how long a collective
    waits for the other processes. gloo then raises on the waiting ranks (``peer_failures`` turns that
    into one line); NCCL's watchdog aborts the collective after it and, with torchrun's
    TORCH_NCCL_ASYNC_ERROR_HANDLING, ends the process (docs/distributed.md, "When a process hangs or dies").
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = process_device(device_name, local_rank)
    backend = "nccl" if is_cuda(device) else "gloo"
    info = DistInfo(rank, world, local_rank, device, backend)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        with peer_failures(info, timeout_s, lambda: "start-up (joining the other processes)", lambda: "no step was taken"):
            if (store := _attempt_store(rank, timeout)) is not None:
                kwargs.update(store=store, rank=rank, world_size=world)
            dist.init_process_group(backend, timeout=timeout, **kwargs)
    return info


def _attempt_store(rank: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's shared rendezvous store (TORCHELASTIC_USE_AGENT_STORE): that store, under a prefix of
    its own for this attempt of the worker group; None otherwise (init_process_group's env:// store).

    The agents keep one store for the whole job, so after a restart (``--max-restarts``) the new processes
    would read the dead ones' connection keys and fail ("Connection refused") or hang. The attempt is
    counted in the store itself, per rank (every attempt starts every rank once): the agents' own
    TORCHELASTIC_RESTART_COUNT cannot be used, as an agent whose workers were healthy restarts them with its
    count unchanged. (A rank that died before counting itself would leave the ranks' counts apart, and the
    next attempt waiting until ``timeout``: a crash that early, in start-up, comes back on every attempt.)
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    attempt = store.add(f"encnet/starts/rank{rank}", 1)
    return dist.PrefixStore(f"encnet/attempt{attempt}/", store)


def shutdown_distributed(info: DistInfo, completed: bool = False) -> None:
    """Tear the process group down. ``completed``: this rank finished its work normally, so wait for
    every rank first (no rank closes its connections while another still has work in flight on them).
    After an error, no barrier: the rank exits at once and torchrun stops the others."""
    if info.distributed and dist.is_initialized():
        if completed:
            with contextlib.suppress(RuntimeError):  # a peer that already failed: tear down anyway
                dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op when alone)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_lists(items: list, info: DistInfo) -> list:
    """Every process's ``items`` (picklable objects), concatenated in rank order (``items`` when alone)."""
    if not info.distributed:
        return items
    parts: list[list | None] = [None] * info.world_size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part or []]


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every process if any process raised ``flag`` (used to stop together on a signal)."""
    if not info.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def max_over_ranks(value: int, info: DistInfo) -> int:
    """The largest of every process's ``value`` (``value`` when alone)."""
    if not info.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


class PeerLost(EncNetError):
    """A collective failed: another process hung past --dist-timeout, died, or closed its connection."""


class peer_failures:  # noqa: N801 - used as a context manager, like contextlib's lower-case ones
    """Turns a failed collective anywhere inside (DDP's gradient all-reduce, ``all_reduce_sum``,
    ``broadcast_flag``, ``gather_lists``) into one ``PeerLost`` line: "rank R: what at ``where()``
    (why); ``after()``", e.g. "rank 0: no answer from the other processes within 20 s at iteration 7
    (a process hung or died); last.pt is from iteration 5". Other errors pass through unchanged; a run
    alone has no collectives to fail. Reusable: one instance can guard several blocks."""

    def __init__(self, info: DistInfo, timeout_s: float, where: Callable[[], str], after: Callable[[], str]) -> None:
        self.info, self.timeout_s, self.where, self.after = info, timeout_s, where, after

    def __enter__(self) -> peer_failures:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> None:
        if exc is None or not self.info.distributed or not _is_collective_failure(exc):
            return  # nothing failed, or not a collective: the exception (if any) goes on as it is
        if _is_timeout(exc):
            what, why = f"no answer from the other processes within {self.timeout_s:g} s", "a process hung or died"
        else:
            what, why = "lost the connection to the other processes", "a process died or was killed"
        raise PeerLost(f"rank {self.info.rank}: {what} at {self.where()} ({why}); {self.after()}") from exc


def _is_collective_failure(exc: BaseException) -> bool:
    """A torch.distributed error (NCCL with TORCH_NCCL_BLOCKING_WAIT raises DistBackendError); gloo's
    RuntimeError, which names gloo ("[.../gloo/transport/tcp/pair.cc:545] Read error ...: Connection reset
    by peer"), also when autograd re-raises it from DDP's all-reduce in backward; or any RuntimeError a
    collective call itself raised ("Application timeout caused pair closure" from DDP's buffer broadcast
    in forward). DDP's own usage errors (e.g. unused parameters) name neither and pass through."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    if any(mark in str(exc) for mark in ("gloo", "NCCL", "ProcessGroup", "c10d")):
        return True
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code if frame is not None else None
    return code is not None and (code.co_filename.endswith("distributed_c10d.py") or code.co_name in _COLLECTIVE_CALLERS)


_COLLECTIVE_CALLERS = {"_distributed_broadcast_coalesced"}  # torch's DDP: calls the C++ broadcast directly (buffers in forward)


def _is_timeout(exc: BaseException) -> bool:
    """gloo: "Timed out waiting 20000ms for recv operation"; NCCL: "Watchdog caught collective operation timeout"."""
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text
