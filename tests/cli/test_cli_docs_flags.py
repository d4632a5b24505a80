"""The docs mention no flag that does not exist: every `encnet CMD ... --flag` in README.md and docs/*.md is
an option of CMD, and every other backticked `--flag` is an option of some command (or of a tool the
docs show with it: torchrun, pip, pytest, make)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from encnet_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = {  # flags of other programs the docs show with encnet (torchrun, pip, pytest, tensorboard, mlflow)
    "--nproc-per-node", "--nproc_per_node", "--nnodes", "--node-rank", "--node_rank", "--rdzv-backend",
    "--rdzv-endpoint", "--rdzv-id", "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id", "--master-addr",
    "--master-port", "--standalone", "--max-restarts", "--no-deps", "--upgrade", "--durations", "--logdir",
    "--backend-store-uri", "--local-addr", "--rdzv-conf",
}  # fmt: skip
# the benchmark and helper scripts' own argparse flags
SCRIPTS = {
    flag
    for path in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    for flag in re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", path.read_text())
}
OTHER_TOOLS = TOOLS | SCRIPTS


def _options() -> tuple[dict[str, set[str]], set[str]]:
    group = typer.main.get_command(app)
    per_command: dict[str, set[str]] = {}
    for name, command in group.commands.items():
        flags = {"--help", "-h"}
        for sub_name, sub in getattr(command, "commands", {}).items() or [("", command)]:  # a sub-app: its commands' flags
            sub_flags = {"--help", "-h"}
            for param in sub.params:
                sub_flags |= set(param.opts) | set(param.secondary_opts)
            flags |= sub_flags
            if sub_name:
                per_command[f"{name} {sub_name}"] = sub_flags  # "prepare voc": only voc's own flags
        per_command[name] = flags
    root = {o for p in group.params for o in (*p.opts, *p.secondary_opts)}
    return per_command, root


def _command_lines(text: str) -> list[str]:
    """Shell lines that run encnet (code blocks and inline code), continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    lines += re.findall(r"`(encnet [^`]+)`", joined)
    found = []
    for line in lines:
        line = re.sub(r"^\$\s*", "", line.split(" #")[0])
        for start in ("encnet ", "python -m encnet_cli ", "torchrun "):
            if line.startswith(start) or " -m encnet_cli " in line:
                found.append(line)
                break
    return found


def test_docs_mention_only_existing_flags() -> None:
    per_command, root = _options()
    every = set().union(*per_command.values()) | root
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        for line in _command_lines(text):
            try:
                words = shlex.split(line)
            except ValueError:
                words = line.split()
            if "encnet_cli" in words:
                words = words[words.index("encnet_cli") :]
            at = next((i for i, w in enumerate(words[1:], 1) if w in per_command), None)
            if at is None:
                continue
            command = words[at]
            if at + 1 < len(words) and f"{command} {words[at + 1]}" in per_command:  # prepare voc, weights pull
                command = f"{command} {words[at + 1]}"
            for word in words:
                flag = word.split("=")[0]
                if flag.startswith("--") and flag not in per_command[command] | root | OTHER_TOOLS:
                    problems.append(f"{doc.name}: `encnet {command}` has no {flag} ({line[:80]})")
        for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", text):
            if flag not in every | OTHER_TOOLS:
                problems.append(f"{doc.name}: no command has {flag}")
    assert not problems, "\n".join(sorted(set(problems)))
