"""Every command module imports on its own (no cycle through main.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_CLI = Path(__file__).resolve().parents[2] / "encnet_cli"
MODULES = sorted(
    ".".join(p.relative_to(_CLI).with_suffix("").parts).removesuffix(".__init__")
    for p in _CLI.rglob("*.py") if p.stem != "__main__"
)  # fmt: skip

SCRIPT = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "encnet_cli" or m.startswith("encnet_cli.")]:
        del sys.modules[loaded]
    importlib.import_module("encnet_cli." + name)
    print("ok", name)
"""


def test_each_command_module_imports_alone() -> None:
    assert {"main", "train", "evaluate", "predict", "_progress", "_output", "prepare", "prepare.voc"} <= set(MODULES)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *MODULES], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [w for name in MODULES for w in ("ok", name)]


HEAVY = ("torch", "torchvision", "h5py", "scipy", "matplotlib", "tensorboard", "mlflow", "wandb")

LOADED_SCRIPT = """
import json, sys
from encnet_cli.main import main
heavy = json.loads(sys.argv[1])
for argv in json.loads(sys.argv[2]):
    code = None
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"argv": argv, "exit": code, "loaded": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def _loaded(argvs: list[list[str]], heavy: tuple[str, ...] = HEAVY) -> list[dict]:
    """Run each command line in turn in one fresh interpreter; per line: its exit code and the heavy modules
    loaded so far (a module, once loaded, stays: the first line that loads one is the culprit)."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED_SCRIPT, json.dumps(heavy), json.dumps(argvs)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith('{"argv"')]


def test_help_version_and_usage_errors_load_no_heavy_library() -> None:
    """--version, --help, every command's --help and usage errors are answered before torch (or h5py,
    scipy, matplotlib) loads: they took seconds when every command imported torch to declare its options."""
    import typer

    from encnet_cli.main import app

    group = typer.main.get_command(app)
    helps = [[name, "--help"] for name in group.commands] + [["weights", name, "--help"] for name in ("list", "pull", "add")]
    helps += [["prepare", name, "--help"] for name in group.commands["prepare"].commands]  # prepare voc --help ...
    usage_errors = [
        ["evaluate", "--bogus"],  # unknown option
        ["prepare", "nope", "-o", "x.h5"],  # bad choice
        ["prepare", "voc", "--images", "x"],  # another source's option
        ["export", "a.pt", "b.pt", "--format", "zip"],  # bad choice of an option
        ["predict"],  # missing argument
        ["weights", "pull"],  # missing argument of a sub-command
        ["doctor", "--device", "tpu"],  # refused by an option's callback
    ]
    runs = _loaded([["--version"], ["--help"], *helps, *usage_errors])
    assert len(runs) == 2 + len(helps) + len(usage_errors)
    for run in runs:
        assert run["loaded"] == [], run
    assert [r["exit"] for r in runs] == [0] * (2 + len(helps)) + [2] * len(usage_errors)


def test_info_on_a_dataset_does_not_load_torch(tmp_path: Path) -> None:
    """`encnet info data.h5` reads the file with h5py; the model readers (torch, torchvision, torch._dynamo)
    stay unloaded."""
    from helpers import make_synthetic

    data = make_synthetic(tmp_path, 2, 1, size=32)
    [run] = _loaded([["info", str(data)]], ("torch", "torchvision", "torch._dynamo", "scipy", "matplotlib"))
    assert run == {"argv": ["info", str(data)], "exit": 0, "loaded": []}


def test_choices_have_one_home() -> None:
    """The names the CLI declares as choices (from encnet_core.choices, which imports nothing) are the very
    objects the library uses."""
    from encnet_core import choices
    from encnet_core.data import hdf5, sources, synthetic
    from encnet_core.data.sources import pcontext, synthetic_cls
    from encnet_core.engine import trackers
    from encnet_core.fetch import archives
    from encnet_core.weights import export, zoo

    assert export.FORMATS is choices.EXPORT_FORMATS
    assert sources.SOURCES is choices.SOURCES and set(sources._registry()) == set(choices.SOURCES)
    assert pcontext.LABEL_SOURCES is choices.LABEL_SOURCES and pcontext.DEFAULT_LABELS == choices.DEFAULT_LABELS
    assert hdf5.TASKS is choices.TASKS is synthetic_cls.TASKS
    assert synthetic_cls.CLASSIFICATION_DEFAULTS is choices.SYNTHETIC_CLASSIFICATION_DEFAULTS
    assert synthetic.LAYOUTS is choices.LAYOUTS and synthetic.DEFAULT_SIZES is choices.DEFAULT_SIZES
    assert zoo.MIRROR_ENV == choices.MIRROR_ENV
    assert trackers.TRACKERS is choices.TRACKERS
    limits = archives.ArchiveLimits()
    assert (limits.max_member_bytes, limits.max_ratio) == (choices.ARCHIVE_MAX_MEMBER_MIB * archives.MiB, choices.ARCHIVE_MAX_RATIO)
    code = "import json, sys, encnet_core.choices; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not {"torch", "numpy", "h5py", "scipy", "PIL"} & set(json.loads(result.stdout))
