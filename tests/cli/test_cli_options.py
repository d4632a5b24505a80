"""Options as a user meets them: choices are usage errors (one line, exit 2), every training setting has a
flag or --set, --help shows each default, and the layering defaults < recipe < --config < --set < flags."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import typer
from helpers import make_synthetic
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.config import TrainConfig

runner = CliRunner()
TINY = ["--model", "encnet_tiny", "--batch-size", "2", "--crop-size", "32", "--base-size", "48", "-j", "0",
        "--device", "cpu", "--no-progress", "--val-split", ""]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("options"), 4, 2, size=32)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def usage_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "m.pt", "in", "-o", "out", "--amp", "fp17"], "'fp17' is not one of 'off', 'bf16', 'fp16'"),
        (["evaluate", "m.pt", "d.h5", "--merge", "mean"], "'mean' is not one of 'prob', 'reference', 'logits'"),
        (["predict", "m.pt", "in", "-o", "out", "--format", "rgb"], "'rgb' is not one of 'color', 'index'"),
        (["export", "m.pt", "out.onnx", "--format", "tflite"], "'tflite' is not one of"),
        (["train", "d.h5", "--amp", "fp8"], "'fp8' is not one of"),
        (["train", "d.h5", "--device", "gpu"], "'gpu' is not a device"),
        (["doctor", "--amp", "bf17"], "is not one of"),
        (["train", "d.h5", "--bogus"], "No such option: --bogus"),
        (["trian"], "No such command 'trian'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    line = usage_line(run(*args))
    assert message in line and "--help" in line


def test_every_training_setting_is_a_flag_or_set(data: Path, tmp_path: Path) -> None:
    command = typer.main.get_command(app).commands["train"]
    flags = {p.name for p in command.params}
    flags |= {"compile"} if "compile_model" in flags else set()
    without_flag = {f for f in TrainConfig.__dataclass_fields__ if f not in flags} - {"data"}
    assert without_flag <= {"mean", "std", "recipe"}, without_flag  # these go through --set (recipe: --recipe)
    out = tmp_path / "run"
    result = run("train", data, *TINY, "--iters", "1", "-o", out, "--set", "mean=[0.5, 0.5, 0.5]",
                 "--set", "std=[0.25,0.25,0.25]", "--set", "head_lr_mult=5", "--set", "amp=bf16")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["mean"] == [0.5, 0.5, 0.5] and saved["std"] == [0.25, 0.25, 0.25]
    assert saved["head_lr_mult"] == 5 and saved["amp"] == "bf16"


def test_each_train_option_is_a_setting_or_listed_as_not_one() -> None:
    """train()'s signature is the one list of its options: every TrainConfig field is a flag or listed in
    NOT_FLAGS (with its reason), every option is a field or listed in CLI_ONLY, never both."""
    from encnet_cli.train import CLI_ONLY, FIELD_OF, NOT_FLAGS

    params = [p.name for p in typer.main.get_command(app).commands["train"].params]
    fields = set(TrainConfig.__dataclass_fields__)
    as_fields = {FIELD_OF.get(name, name) for name in params if name not in CLI_ONLY}
    assert as_fields - fields == set(), "train options that are no TrainConfig field: add the field or list them in CLI_ONLY"
    assert fields - as_fields - set(NOT_FLAGS) == set(), "TrainConfig fields without a flag: add one or list them in NOT_FLAGS"
    assert as_fields & set(NOT_FLAGS) == {"data"}  # DATA is the argument (given to resolve_train_config on its own)
    assert set(CLI_ONLY) - {"ctx"} <= set(params) and set(FIELD_OF) <= set(params)  # no stale entries
    assert all(reason for reason in (*NOT_FLAGS.values(), *CLI_ONLY.values()))


def test_train_passes_every_flag_to_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The flags dict is made from the signature: each field's flag arrives under the field's name."""
    import encnet_cli.train as train_cli
    from encnet_core.errors import ConfigError

    seen: dict = {}

    def capture(data, recipe, config_file, sets, flags, task):
        seen.update(flags=flags, sets=sets, recipe=recipe, config_file=config_file, task=task)
        raise ConfigError("captured")

    monkeypatch.setattr(train_cli, "resolve_train_config", capture)
    result = run("train", tmp_path / "missing.h5", "--lr", "0.5", "--compile", "--no-aux", "--lr-schedule", "cosine",
                 "-o", tmp_path / "run", "--recipe", "synthetic_cpu", "--set", "seed=3", "--json", "-")  # fmt: skip
    assert result.exit_code == 1 and "captured" in result.output
    flags = seen["flags"]
    assert set(flags) == set(TrainConfig.__dataclass_fields__) - set(train_cli.NOT_FLAGS)
    given = {k: v for k, v in flags.items() if v is not None}
    assert given == {"lr": 0.5, "compile": True, "aux": False, "lr_schedule": "cosine", "output_dir": tmp_path / "run"}
    assert seen["recipe"] == "synthetic_cpu" and seen["sets"] == {"seed": 3} and seen["task"] == "segmentation"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["--set", "lr=abc"], "--set: lr must be a number, got 'abc'"),
        (["--set", "nosuch=1"], "--set: unknown setting(s) nosuch"),
        (["--set", "lr"], "--set takes key=value"),
        (["--set", "lr=0.1", "--set", "lr=0.2"], "--set lr is given twice"),
        (["--set", "lr=0.1", "--lr", "0.2"], "lr is given both as --lr and in --set"),
        (["--set", "mean=[1]"], "mean must be a list of 3 numbers"),
    ],
)
def test_bad_set_is_one_line(data: Path, tmp_path: Path, sets: list[str], message: str) -> None:
    result = run("train", data, *TINY, "--iters", "1", "-o", tmp_path / "run", *sets)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_run_length_of_a_higher_layer_replaces_the_lower_one(data: Path, tmp_path: Path) -> None:
    """The synthetic_cpu recipe sets iters = 1200; --epochs on the command line replaces it."""
    out = tmp_path / "run"
    args = ["--recipe", "synthetic_cpu", *TINY, "--epochs", "1", "-o", out]
    result = run("train", data, *args)
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["epochs"] == 1 and "iters" not in saved and saved["model"] == "encnet_tiny"


def test_help_shows_every_default() -> None:
    """Typer prints the default of every option that has one; train's flags default to None ("not given",
    so the recipe/config layers can speak) and say TrainConfig's default in their help instead."""
    group = typer.main.get_command(app)
    missing = []
    leaves = [(f"{name} {sub}", c) for name, g in group.commands.items() for sub, c in getattr(g, "commands", {}).items()]
    for name, command in [*group.commands.items(), *leaves]:  # prepare voc, weights pull ... too
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            help_text = param.help or ""
            if "[default" in help_text:  # rich markup would swallow it
                missing.append(f"{name} {param.opts[0]} (bracketed default in help)")
            if param.default is not None and param.show_default is False:
                missing.append(f"{name} {param.opts[0]} (default hidden)")
            field = TrainConfig.__dataclass_fields__.get(param.name.replace("compile_model", "compile"))
            if name == "train" and field is not None and field.default not in (None, False) and "(default:" not in help_text:
                missing.append(f"train {param.opts[0]} (TrainConfig default {field.default!r} not in help)")
    assert not missing, missing
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "Images per process and step (default: 8; classification data: 128)." in result.output
    assert "(default: runs/MODEL-DATASTEM)" in result.output
    result = runner.invoke(app, ["prepare", "voc", "--help"], env={"COLUMNS": "200"})
    assert "[default: 400.0]" in result.output  # typer's own default display survives


def test_shell_completion_offers_choices_and_recipes() -> None:
    import os
    import subprocess
    import sys

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_ENCNET_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        script = "from encnet_cli.main import main; main()"
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True).stdout.split()

    assert complete("encnet predict m --amp ") == ["off", "bf16", "fp16"]
    assert complete("encnet train d --recipe pcontext_res") == ["pcontext_resnet101s", "pcontext_resnet50s"]
    assert complete("encnet train d --recipe ade20k_deeplab_resnest1") == ["ade20k_deeplab_resnest101"]
    assert complete("encnet eva") == ["evaluate"]


def _help_pages() -> list[list[str]]:
    group = typer.main.get_command(app)
    from encnet_core.choices import SOURCES

    return [["--help"], *([name, "--help"] for name in group.commands), *(["weights", n, "--help"] for n in ("list", "pull", "add")),
            *(["prepare", source, "--help"] for source in SOURCES)]  # fmt: skip


def test_help_shows_no_value_type_for_flags() -> None:
    """A flag takes no value: its row in --help has no type (typer printed <bool> there)."""
    for page in _help_pages():
        result = runner.invoke(app, page, env={"COLUMNS": "250"})
        assert result.exit_code == 0, (page, result.output)
        assert "<bool>" not in result.output, page
    flags = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "250"}).output
    row = next(line for line in flags.splitlines() if "--progress" in line)
    assert row.split("--no-progress")[1].split()[0] == "Show", row  # the help text follows the flag, no type
    assert "<int>" in next(line for line in flags.splitlines() if "--batch-size" in line)  # options keep theirs


def test_top_level_help_lists_each_command_on_one_line() -> None:
    """`encnet --help` lists each command with one sentence of its docstring on one line (rich kept the
    docstring's line breaks there); `encnet CMD --help` shows each paragraph unbroken."""
    from encnet_cli.main import summary
    from encnet_cli.predict import predict

    assert summary(predict) == (
        "Segment images: a palette PNG per image, optional overlays, and predictions.json listing the classes "
        "found by pixel share and by the SE head."
    )
    output = runner.invoke(app, ["--help"], env={"COLUMNS": "300"}).output
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        rows = [line for line in output.splitlines() if line.startswith(f"│ {name} ")]
        listed = command.short_help or command.help  # the weights group's help is one line already
        assert len(rows) == 1 and listed and "\n" not in listed, name
        assert listed in rows[0], (name, rows[0])
    page = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output
    assert "a classification file (encnet prepare cifar10, synthetic --task classification) a classifier (default encnet_cifar14)," in page


def test_usage_error_lists_choices_on_one_line() -> None:
    """A missing choice argument: the parser's tab-indented list of choices reads as one line, not as
    escaped \\x0a\\x09 codes; a control code typed on the command line stays escaped."""
    line = usage_line(run("prepare", "-o", "x.h5"))
    assert "Choose from: voc, voc-aug, pcontext, ade20k, folder, synthetic, cifar10" in line, line
    assert "\\x09" not in line and "\\x0a" not in line and "\t" not in line
    hostile = usage_line(run("prepare", "voc\x1b[2J\tx", "-o", "x.h5"))
    assert "'voc\\x1b[2J\\tx' is not one of" in hostile and "\x1b" not in hostile, hostile  # shown as typed, escaped
