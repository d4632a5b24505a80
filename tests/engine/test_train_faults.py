"""A process that hangs or dies in a collective: the others stop with one line, and last.pt stays intact.

Two CPU processes with gloo, started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT) but
without torchrun, so that rank 0's own exit and stderr can be checked (torchrun stops the survivors
itself once a worker dies: the last test checks what a user sees then). The fault comes from the
test-only ENCNET_TEST_FAULT hook (encnet_core/engine/train.py, ``_injected_fault``).

The runs: 16 training images, batch 2 per process: 4 iterations per epoch, last.pt written at
iteration 4 (end of epoch 1); the fault strikes as iteration 6 starts, so rank 0 fails inside that step (DDP's collectives).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_env, run_cli
from helpers import load_checkpoint_file as _load

from encnet_core.config import TrainConfig
from encnet_core.engine.distributed import DistInfo, PeerLost, peer_failures
from encnet_core.errors import ConfigError

FAULT_AT = 6


def _args(data: Path, out: Path, timeout: float) -> list[str]:
    return [str(data), "-m", "encnet_tiny", "--iters", "12", "--batch-size", "2", "--crop-size", "32", "--base-size", "64",
            "--workers", "0", "--val-split", "", "--no-progress", "--dist-timeout", f"{timeout:g}", "-o", str(out)]  # fmt: skip


def _env(fault: str) -> dict[str, str]:
    env = cli_env(COLUMNS="300", ENCNET_TEST_FAULT=fault)
    env.pop("ENCNET_DEBUG", None)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(args: list[str], fault: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Ranks 0 and 1 of a 2-process gloo run (torchrun's environment, no torchrun); rank 0's result and
    the wall-clock time it exited at. Rank 1 is ended (SIGTERM, then SIGKILL) once rank 0 is done."""
    env = {**_env(fault), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}  # fmt: skip
    command = [sys.executable, "-m", "encnet_cli", "train", *args]
    procs = [
        subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=cwd, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        for r in (0, 1)
    ]
    try:
        out, err = procs[0].communicate(timeout=300)
        exited = time.time()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
    return subprocess.CompletedProcess(command, procs[0].returncode, out, err), exited


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_last_intact(run: Path, iteration: int) -> None:
    """last.pt is whole (it loads) and is the one written at ``iteration``; nothing was saved after the failure."""
    payload = _load(run / "last.pt")
    assert payload["iteration"] == iteration
    assert [p.name for p in run.iterdir() if p.name.startswith(("last", "best", "."))] == ["last.pt"]  # no temp file left


@pytest.mark.slow
def test_rank_that_hangs_stops_the_others_within_the_timeout(folder_h5: Path, tmp_path: Path) -> None:
    timeout = 10.0
    result, exited = _two_processes(_args(folder_h5, tmp_path / "run", timeout), f"hang@1:{FAULT_AT}", tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert _error_lines(result.stderr) == [
        f"error: rank 0: no answer from the other processes within 10 s at iteration {FAULT_AT} (a process hung "
        "or died); last.pt is from iteration 4"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    _assert_last_intact(tmp_path / "run", 4)
    # it waited the timeout, not PyTorch's 30 minutes: last.pt is 2 quick iterations before the hang
    waited = exited - (tmp_path / "run" / "last.pt").stat().st_mtime
    assert timeout <= waited < timeout + 30, waited


@pytest.mark.slow
def test_rank_killed_stops_the_others_with_one_line(folder_h5: Path, tmp_path: Path) -> None:
    result, _ = _two_processes(_args(folder_h5, tmp_path / "run", 60), f"kill@1:{FAULT_AT}", tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert _error_lines(result.stderr) == [
        f"error: rank 0: lost the connection to the other processes at iteration {FAULT_AT} (a process died or "
        "was killed); last.pt is from iteration 4"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    _assert_last_intact(tmp_path / "run", 4)


@pytest.mark.slow
def test_rank_killed_under_torchrun(folder_h5: Path, tmp_path: Path) -> None:
    """What the user sees: torchrun fails the job (naming the killed rank) and last.pt is intact."""
    launcher = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "0"]
    result = run_cli(["train", *_args(folder_h5, tmp_path / "run", 60)], tmp_path, launcher, _env(f"kill@1:{FAULT_AT}"), timeout=300)
    assert result.returncode != 0
    assert "Signal 9 (SIGKILL) received by PID" in result.stderr or "exitcode  : -9" in result.stderr, result.stderr[-3000:]
    assert not re.search(r'File ".*encnet_(core|cli)', result.stderr), result.stderr[-3000:]  # torchrun's own traceback only
    # rank 0 usually says why first ("error: rank 0: lost the connection ..."), unless torchrun's SIGTERM comes first
    _assert_last_intact(tmp_path / "run", 4)


def test_peer_that_never_starts_stops_rank_0_at_start_up(folder_h5: Path, tmp_path: Path) -> None:
    """Rank 1 never joins: rank 0 gives up joining after the timeout, with the same kind of line."""
    env = {**_env(""), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "RANK": "0",
           "LOCAL_RANK": "0"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "encnet_cli", "train", *_args(folder_h5, tmp_path / "run", 2)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert _error_lines(result.stderr) == [
        "error: rank 0: no answer from the other processes within 2 s at start-up (joining the other processes) "
        "(a process hung or died); no step was taken"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "encnet_cli", "train", *_args(folder_h5, tmp_path / "run", 2)],
        capture_output=True, text=True, timeout=120, env={**env, "ENCNET_DEBUG": "1"}, cwd=tmp_path,
    )  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "PeerLost: rank 0: no answer" in debug.stderr


# ----------------------------------------------------------------------------- the conversion, in one process


def _failing(exc: BaseException, info: DistInfo) -> BaseException:
    with pytest.raises(BaseException) as caught, peer_failures(info, 20, lambda: "iteration 7", lambda: "last.pt is from iteration 5"):
        raise exc
    return caught.value


def test_peer_failures_turns_collective_errors_into_one_line() -> None:
    two = DistInfo(rank=1, world_size=2, backend="gloo")
    timed_out = _failing(RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation to complete"), two)  # fmt: skip
    assert isinstance(timed_out, PeerLost)
    assert str(timed_out) == (
        "rank 1: no answer from the other processes within 20 s at iteration 7 (a process hung or died); "
        "last.pt is from iteration 5"
    )
    reset = _failing(RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: Connection reset by peer"), two)
    assert str(reset) == (
        "rank 1: lost the connection to the other processes at iteration 7 (a process died or was killed); "
        "last.pt is from iteration 5"
    )
    nccl = _failing(torch.distributed.DistBackendError("Watchdog caught collective operation timeout: WorkNCCL(...)"), two)
    assert isinstance(nccl, PeerLost) and "within 20 s" in str(nccl)


def test_peer_failures_leaves_other_errors_alone() -> None:
    two = DistInfo(rank=0, world_size=2, backend="gloo")
    shape = RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    assert _failing(shape, two) is shape
    interrupted = KeyboardInterrupt()
    assert _failing(interrupted, two) is interrupted
    alone = RuntimeError("[gloo] Timed out")  # a run alone has no collectives: never converted
    assert _failing(alone, DistInfo()) is alone


def test_dist_timeout_is_positive_and_defaults_to_30_minutes() -> None:
    assert TrainConfig().dist_timeout == 1800.0
    with pytest.raises(ConfigError, match="--dist-timeout must be positive"):
        TrainConfig(dist_timeout=0)
