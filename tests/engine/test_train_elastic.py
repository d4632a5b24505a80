"""Checkpoints within an epoch (--save-every, --save-every-minutes), elastic restarts under torchrun
(--max-restarts) and multi-node runs (two torchrun agents on one machine, c10d rendezvous, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_same as _assert_same
from helpers import cli_env
from helpers import load_checkpoint_file as _load
from helpers import run_records as _records

from encnet_core.config import TrainConfig
from encnet_core.engine import train as train_module
from encnet_core.engine.events import Message, TrainEvent, TrainLog, TrainStep
from encnet_core.engine.train import train
from encnet_core.engine.train_state import elastic_restart, restart_resume
from encnet_core.errors import ConfigError


class _Crash(Exception):
    """A process dying mid-epoch (no SIGTERM: nothing is saved on the way out)."""


def _crash_at(iteration: int) -> Callable[[TrainEvent], None]:
    def callback(event: TrainEvent) -> None:
        if isinstance(event, (TrainStep, TrainLog)) and event.iteration == iteration:
            raise _Crash(iteration)

    return callback


# ----------------------------------------------------------------------------- --save-every


def test_save_every_checkpoint_resumes_exactly(make_config: Callable[..., TrainConfig]) -> None:
    """18 iterations (3 epochs of 6) in one go == a run that dies at iteration 10 (mid-epoch 2, nothing saved
    on the way out) + ``resume="auto"`` from the --save-every 4 checkpoint of iteration 8, bit for bit."""
    one_go = train(make_config("one_go", iters=18))
    config = make_config("crashed", iters=18, save_every=4, save_every_minutes=0.0)
    with pytest.raises(_Crash):
        train(config, callback=_crash_at(10))
    last = Path(config.output_dir) / "last.pt"
    assert _load(last)["iteration"] == 8 and _load(last)["epoch"] == 2  # saved mid-epoch 2 (iterations 7..12)

    messages: list[str] = []
    resumed = train(config, resume="auto", callback=lambda e: messages.append(e.text) if isinstance(e, Message) else None)
    assert resumed.iteration == 18 and any("resumed from" in m and "iteration 8/18" in m for m in messages)
    a, b = _load(one_go.last_checkpoint), _load(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a.keys() - {"train_config"}:  # weights, optimizer, scheduler, RNG, metrics, counters
        _assert_same(a[key], b[key], key)


def test_save_every_minutes_saves_within_the_epoch(make_config: Callable[..., TrainConfig]) -> None:
    """A period shorter than a step: last.pt after every step; the crash at 5 (of a 6-step epoch) keeps 4."""
    config = make_config("minutes", iters=12, save_every_minutes=1e-9)
    with pytest.raises(_Crash):
        train(config, callback=_crash_at(5))
    assert _load(Path(config.output_dir) / "last.pt")["iteration"] == 4
    off = make_config("off", iters=12, save_every=0, save_every_minutes=0.0)
    with pytest.raises(_Crash):
        train(off, callback=_crash_at(5))
    assert not (Path(off.output_dir) / "last.pt").exists()  # off: the epoch-end save only


def test_save_settings_are_checked() -> None:
    assert TrainConfig.save_every == 0 and TrainConfig.save_every_minutes == 30.0
    with pytest.raises(ConfigError, match="--save-every must be >= 0"):
        TrainConfig(save_every=-1)
    with pytest.raises(ConfigError, match="--save-every-minutes must be >= 0"):
        TrainConfig(save_every_minutes=-0.5)


# ----------------------------------------------------------------------------- elastic restarts (no torchrun)


def test_restart_resumes_from_the_run_folders_last_pt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert elastic_restart() == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert elastic_restart() == 2
    assert restart_resume(None, tmp_path, 0, said.append) is None and restart_resume("x.pt", tmp_path, 0) == "x.pt"
    (tmp_path / "old").mkdir()
    assert restart_resume("auto", tmp_path / "old", 0, said.append) == "auto" and said == []  # a first attempt

    assert restart_resume(None, tmp_path, 2, said.append) is None  # nothing saved yet: from scratch
    assert restart_resume("other/best.pt", tmp_path, 2, said.append) == "other/best.pt"  # ... or as the first attempt
    (tmp_path / "last.pt").write_bytes(b"")
    for given in (None, "auto", "other/best.pt"):  # the run folder's last.pt is newer than any --resume
        assert restart_resume(given, tmp_path, 2, said.append) == str(tmp_path / "last.pt")
    assert said == [
        f"restart 2 of torchrun: no {tmp_path / 'last.pt'} yet, starting from scratch",
        f"restart 2 of torchrun: no {tmp_path / 'last.pt'} yet, resuming from other/best.pt",
        *[f"restart 2 of torchrun: resuming from {tmp_path / 'last.pt'}"] * 3,
    ]


def test_restart_forgets_the_records_after_the_checkpoint(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    entries = [{"type": "train", "iteration": i} for i in (2, 4, 6)] + [{"type": "val", "iteration": 4}]
    metrics.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"type": "train", "iter')  # cut mid-write
    train_module._forget_lost_records(metrics, 4)
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == [entries[0], entries[1], entries[3]]
    assert _records(tmp_path) == entries[:2]
    train_module._forget_lost_records(tmp_path / "none.jsonl", 4)  # no file: nothing to do


def test_save_every_never_saves_a_non_finite_state(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss turns NaN at iteration 8: --save-every 1 saves nothing from there on (rank 0 alone decides a save,
    so it does not stop the run alone), the next record (iteration 12) stops the run, last.pt of iteration 7 stays."""
    import math

    import torch

    from encnet_core.engine import segmentation as segmentation_module
    from encnet_core.engine.train import NonFiniteLoss

    class NaNFromIteration8(segmentation_module.SegmentationLoss):
        calls = 0

        def forward(self, outputs, labels):
            total, parts = super().forward(outputs, labels)
            NaNFromIteration8.calls += 1
            return (total * math.nan if NaNFromIteration8.calls >= 8 else total), parts

    monkeypatch.setattr(segmentation_module, "SegmentationLoss", NaNFromIteration8)
    config = make_config("nan", iters=18, log_every=6, val_split="", save_every=1)
    with pytest.raises(NonFiniteLoss, match=r"non-finite near iteration 12; last\.pt keeps the last good state"):
        train(config)
    ckpt = _load(Path(config.output_dir) / "last.pt")
    assert ckpt["iteration"] == 7 and all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())


# ----------------------------------------------------------------------------- torchrun: restarts and two nodes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
LIMIT = 300  # seconds for any one torchrun


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _train_args(data: Path, out: Path, iters: int = 6) -> list[str]:
    """encnet_tiny, 2 ranks x batch 2 on the 16-image folder set (4 iterations per epoch), --save-every 2;
    what makes ranks comparable to each other is test_train.py's two-process test's (freeze-bn, dropout 0)."""
    return ["-m", "encnet_cli", "train", str(data), "-m", "encnet_tiny", "--iters", str(iters), "--dropout", "0",
            "--crop-size", "32", "--base-size", "64", "--workers", "0", "--lr", "0.1", "--freeze-bn", "--val-split", "",
            "--log-every", "1", "--no-progress", "--batch-size", "2", "--save-every", "2", "-o", str(out)]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return cli_env(**extra)


def _one_node(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=LIMIT, env=_env(**env), cwd=cwd)


def _two_nodes(
    args: list[str], cwd: Path, node_env: tuple[dict[str, str], dict[str, str]] = ({}, {}),
    prefixes: tuple[list[str], list[str]] = ([], []), addresses: tuple[str, str] = ("127.0.0.1", "127.0.0.1"),
) -> list[subprocess.CompletedProcess]:  # fmt: skip
    """Two torchrun agents ("nodes"), one worker each, c10d rendezvous at the first's address; ``prefixes``
    run each agent elsewhere (``ip netns exec NS``), ``node_env`` adds to its environment."""
    port, run_id = _free_port(addresses[0] if addresses[0] == "127.0.0.1" else "0.0.0.0"), f"encnet-test-{os.getpid()}"
    agents = []
    for node, (prefix, env, address) in enumerate(zip(prefixes, node_env, addresses, strict=True)):
        # is_host: the first agent serves the rendezvous store (torchrun guesses it from the host name, which
        # inside a network namespace names no address of it)
        command = [*prefix, *TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"{addresses[0]}:{port}", "--rdzv-id", run_id, "--local-addr", address,
                   "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}", "--max-restarts", "1", *args]  # fmt: skip
        agents.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=_env(**env), cwd=cwd))  # fmt: skip
    results = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=LIMIT)
            results.append(subprocess.CompletedProcess(agent.args, agent.returncode, out, err))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    return results


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def one_node_run(folder_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted reference: one node, 2 processes, 6 iterations (1.5 epochs)."""
    folder = tmp_path_factory.mktemp("one_node")
    _check(_one_node(_train_args(folder_h5, folder / "run"), folder))
    return folder / "run"


def _same_run(a: Path, b: Path, exact: bool) -> None:
    """Same final state (bit for bit, or up to float reduction order) and the same metrics records."""
    x, y = _load(a / "last.pt"), _load(b / "last.pt")
    assert x["iteration"] == y["iteration"] == 6
    if exact:  # numpy's and Python's RNG are each CLI process's own (encnet seeds and draws from torch's only),
        # and the training digest covers them: everything else, bit for bit
        assert x.keys() == y.keys()
        for key in x.keys() - {"train_config", "training_digest", "rng"}:
            _assert_same(x[key], y[key], key)
        _assert_same(x["rng"]["torch"], y["rng"]["torch"], "rng.torch")
    else:
        for key, value in x["model"].items():
            torch.testing.assert_close(y["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    ra, rb = _records(a), _records(b)
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb] == [1, 2, 3, 4, 5, 6]  # each once
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], rel=0 if exact else 1e-5)


@pytest.mark.slow
def test_killed_worker_restarts_and_finishes_the_same_run(one_node_run: Path, folder_h5: Path, tmp_path: Path) -> None:
    """torchrun --max-restarts 1: local rank 1 is SIGKILLed after iteration 3 (last.pt of iteration 2); the
    restarted group continues from it without being told and ends bit for bit as the uninterrupted run."""
    result = _one_node(_train_args(folder_h5, tmp_path / "run"), tmp_path, ENCNET_TEST_FAULT="kill@l1:4")
    _check(result)
    stderr = " ".join(result.stderr.split())
    assert "restart 1 of torchrun: resuming from" in stderr and "resumed from" in stderr and "iteration 2/6" in stderr
    assert "exitcode: -9" in stderr  # it did die (SIGKILL)
    _same_run(one_node_run, tmp_path / "run", exact=True)


@pytest.mark.slow
def test_two_nodes_equal_one_node_and_survive_a_killed_node(one_node_run: Path, folder_h5: Path, tmp_path: Path) -> None:
    """Two torchrun agents (one process each, c10d rendezvous on 127.0.0.1, gloo) == one node of two
    processes; and when the second node's worker is SIGKILLed after iteration 3, both restart from
    last.pt of iteration 2 and end bit for bit as the uninterrupted two-node run."""
    nodes = _two_nodes(_train_args(folder_h5, tmp_path / "two"), tmp_path)
    for node in nodes:
        _check(node)
    _same_run(one_node_run, tmp_path / "two", exact=False)

    kill = {"ENCNET_TEST_FAULT": "kill@l0:4"}  # this node's process, as iteration 4 starts
    nodes = _two_nodes(_train_args(folder_h5, tmp_path / "killed"), tmp_path, node_env=({}, kill))
    for node in nodes:
        _check(node)
    assert "exitcode: -9" in nodes[1].stderr  # SIGKILL
    _same_run(tmp_path / "two", tmp_path / "killed", exact=True)


@pytest.mark.slow
def test_two_nodes_in_network_namespaces(one_node_run: Path, folder_h5: Path, tmp_path: Path) -> None:
    """The same two-node run with each agent in its own network namespace, joined by a veth pair
    (10.77.0.1/24 and 10.77.0.2/24), gloo on the veth (GLOO_SOCKET_IFNAME)."""
    tag = f"enc{os.getpid() % 100000}"
    names, links = (f"{tag}a", f"{tag}b"), (f"{tag}va", f"{tag}vb")
    addresses = ("10.77.0.1", "10.77.0.2")

    def ip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)

    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to create network namespaces")
    made = ip("netns", "add", names[0])
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    try:
        steps = [("netns", "add", names[1]), ("link", "add", links[0], "type", "veth", "peer", "name", links[1])]
        for ns, link, address in zip(names, links, addresses, strict=True):
            steps += [("link", "set", link, "netns", ns), ("-n", ns, "addr", "add", f"{address}/24", "dev", link),
                      ("-n", ns, "link", "set", link, "up"), ("-n", ns, "link", "set", "lo", "up")]  # fmt: skip
        for step in steps:
            done = ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        nodes = _two_nodes(
            _train_args(folder_h5, tmp_path / "netns"), tmp_path, addresses=addresses,
            node_env=({"GLOO_SOCKET_IFNAME": links[0]}, {"GLOO_SOCKET_IFNAME": links[1]}),
            prefixes=(["ip", "netns", "exec", names[0]], ["ip", "netns", "exec", names[1]]),
        )  # fmt: skip
        for node in nodes:
            _check(node)
        _same_run(one_node_run, tmp_path / "netns", exact=False)
    finally:
        for ns in names:  # deleting a namespace deletes the veth end in it, and with it the pair
            ip("netns", "del", ns)
