"""Training configuration: one frozen dataclass, filled from defaults < recipe/config TOML < CLI flags."""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encnet_core.constants import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR_CROP_SIZE,
    DEFAULT_BASE_SIZE,
    DEFAULT_CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from encnet_core.errors import ConfigError

__all__ = [
    "TrainConfig", "CLASSIFICATION_DEFAULTS", "LR_SCHEDULES", "check_settings", "resolve_train_config",
    "parse_set_option", "default_output_dir", "load_toml", "recipe_path", "list_recipes",
]  # fmt: skip

LR_SCHEDULES = ("poly", "cosine", "step")  # engine/optim.py: the lr factor per iteration



@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as config.toml in the run folder and in checkpoints)."""

    data: str = ""  # prepared HDF5 dataset
    output_dir: str = "runs/encnet"  # run folder: config, metrics.jsonl, last.pt, best.pt
    model: str = "encnet_resnet50s"  # registered model name (see `encnet models`)
    train_split: str = "train"  # split to train on
    val_split: str = "val"  # split to validate on ("" to skip validation)
    epochs: int | None = None  # run length in epochs (total, also when resuming)
    iters: int | None = None  # run length in iterations (overrides epochs)
    batch_size: int = 8  # images per process and micro-batch
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation): batch_size x processes x accumulate images a step
    lr: float = 0.01  # base learning rate per 16 images; the run uses lr * global_batch / 16 (images per optimizer step)
    head_lr_mult: float = 10.0  # heads (EncHead, aux) learn at this multiple of the lr
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay
    poly_power: float = 0.9  # lr * (1 - it / total) ** power
    lr_schedule: str = "poly"  # poly | cosine | step: how the lr decays over the run (engine/optim.py)
    lr_step: int = 40  # step schedule: epochs between the x0.1 decays (the reference's --lr-step)
    warmup_iters: int = 0  # linear warm-up iterations (0 = none, as the reference)
    crop_size: int = DEFAULT_CROP_SIZE  # training crop (square)
    base_size: int = DEFAULT_BASE_SIZE  # long side before random scaling
    scale_min: float = 0.5  # random long side from scale_min * base_size ...
    scale_max: float = 2.0  # ... to scale_max * base_size
    workers: int | str = "auto"  # DataLoader worker processes per training process: "auto" or a number (engine/workers.py)
    num_codes: int | None = None  # codewords K (None: the model's default, 32 for the ResNet models)
    se_loss: bool = True  # Semantic Encoding loss
    se_weight: float = 0.2  # weight of the SE loss
    aux: bool = True  # auxiliary FCN head
    aux_weight: float = 0.2  # weight of the aux loss
    lateral: bool = False  # EncHead lateral branch
    dropout: float | None = None  # dropout before the classifiers (None: the model's default, 0.1)
    output_stride: int = 8  # backbone output stride
    amp: str = "off"  # off | bf16 | fp16 (fp16 uses a GradScaler)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dist_timeout: float = 1800.0  # under torchrun: seconds a collective waits for the other processes before the run stops (PyTorch's 30 min)
    seed: int = 0  # seeds model init, data order and augmentation
    val_every: int = 1  # validate every N epochs (0 = only at the end)
    log_every: int = 10  # iterations per metrics.jsonl record and progress refresh
    save_every: int = 0  # rank 0 also writes last.pt every N iterations within an epoch (0 = off)
    save_every_minutes: float = 30.0  # ... and when M minutes passed since the last save (0 = off)
    skip_bad: bool = False  # replace bad training samples by the next good one and skip bad validation samples (listed)
    init_from: str | None = None  # encnet or PyTorch-Encoding checkpoint to start from
    freeze_backbone: bool = False  # train only the heads (backbone weights and BN statistics fixed)
    freeze_bn: bool = False  # keep every BatchNorm in eval mode (fixed statistics), e.g. for tiny batches
    backbone_weights: str | None = None  # local ImageNet state_dict file, "imagenet", or a zoo backbone name (resnet50s, ...)
    compile: bool = False  # torch.compile the model
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation mean (RGB, 0..1)
    std: tuple[float, float, float] = IMAGENET_STD  # normalisation std
    recipe: str | None = field(default=None)  # recipe the run started from (informational)

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.accumulate >= 1, "--accumulate must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.crop_size >= 16, "--crop-size must be at least 16"),
            (self.base_size >= 16, "--base-size must be at least 16"),
            (0 < self.scale_min <= self.scale_max, "scale_min must be positive and <= scale_max"),
            (self.workers == "auto" or (type(self.workers) is int and self.workers >= 0), "--workers must be >= 0 or auto"),
            (self.amp in ("off", "bf16", "fp16"), "--amp must be off, bf16 or fp16"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.lr_step >= 1, "--lr-step must be at least 1"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.iters is None or self.iters >= 1, "--iters must be at least 1"),
            (self.val_every >= 0, "--val-every must be >= 0"),
            (self.log_every >= 1, "--log-every must be at least 1"),
            (self.save_every >= 0, "--save-every must be >= 0"),
            (self.save_every_minutes >= 0, "--save-every-minutes must be >= 0"),
            (self.dist_timeout > 0, "--dist-timeout must be positive (seconds)"),
            (self.dropout is None or 0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)"),
            (self.num_codes is None or self.num_codes >= 1, "--num-codes must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def to_toml(self) -> str:
        """TOML text of the resolved configuration (None values are left out)."""
        lines = ["# resolved encnet training configuration"]
        for key, value in self.to_dict().items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "configuration") -> TrainConfig:
        check_settings(values, where)
        values = {k: tuple(v) if k in ("mean", "std") else v for k, v in values.items()}
        return cls(**values)


CLASSIFICATION_DEFAULTS: dict[str, Any] = {
    "model": "encnet_cifar14",  # the paper's CIFAR-10 network
    "batch_size": 128,  # the reference's --batch-size
    "lr": 0.0125,  # per 16 images: 0.1 at the reference's batch 128
    "weight_decay": 5e-4,  # the reference's --weight-decay
    "lr_schedule": "cosine",  # the reference's CIFAR-10 command (--lr-scheduler cos)
    "crop_size": CIFAR_CROP_SIZE,  # CIFAR images are 32 x 32
    "mean": CIFAR10_MEAN,  # the reference's CIFAR-10 normalisation
    "std": CIFAR10_STD,
}
"""The defaults that differ for a classification dataset (``resolve_train_config(task="classification")``):
PyTorch-Encoding v0.2.0's experiments/recognition (option.py, dataset/cifar10.py and the CIFAR-10
training command of docs/source/experiments/cifar.rst). They sit under every recipe, file and flag."""
_TASK_DEFAULTS: dict[str, dict[str, Any]] = {"classification": CLASSIFICATION_DEFAULTS}
"""TrainConfig defaults that differ per task (a task not here uses TrainConfig's own)."""


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _check_value(key: str, kind: Any, value: Any) -> str | None:
    """Why ``value`` does not fit the field type ``kind``, or None."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        problems = [_check_value(key, a, value) for a in kinds]  # fits if it fits one of them (workers: int | str)
        if len(kinds) > 1:
            return None if None in problems else "must be " + " or ".join(p.removeprefix("must be ") for p in problems)
        kind = kinds[0]
        args = typing.get_args(kind)
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if kind is str:
        return None if isinstance(value, str) else "must be a string"
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return f"must be a list of {len(args)} numbers"
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                return f"must be a list of {len(args)} numbers"
        return None
    return None


def check_settings(values: dict[str, Any], where: str = "configuration") -> None:
    """Raise ConfigError naming ``where`` for unknown keys or values of the wrong type."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    for key, value in values.items():
        problem = _check_value(key, hints[key], value)
        if problem:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ConfigError(f"{where}: {key} {problem}, got {shown} ({_type_name(value)})")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _recipes() -> Any:
    """The package's recipes folder, through importlib.resources (works from a wheel or a zip)."""
    return importlib.resources.files("encnet_core") / "recipes"


def list_recipes() -> list[str]:
    """Names of the recipes shipped in the package (encnet_core/recipes/)."""
    return sorted(p.name[: -len(".toml")] for p in _recipes().iterdir() if p.name.endswith(".toml"))


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name``."""
    path = _recipes() / f"{name}.toml"
    if name not in list_recipes():
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(list_recipes()) or 'none'}")
    return path


def load_toml(path: Path) -> dict[str, Any]:
    """Settings of a TOML recipe/config file (a [train] table or top-level keys)."""
    try:
        data = tomllib.loads((path if hasattr(path, "read_text") else Path(path)).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path} ({exc})") from None
    settings = data.get("train", data)
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: [train] must be a table of settings")
    check_settings(settings, str(path))
    return settings


_RUN_LENGTH = ("epochs", "iters")


def _layer(settings: dict[str, Any], layer: dict[str, Any]) -> None:
    """Put ``layer`` over ``settings``; a layer that gives the run length replaces the lower layers' one."""
    if any(k in layer for k in _RUN_LENGTH):
        for key in _RUN_LENGTH:
            settings.pop(key, None)
    settings.update(layer)


def parse_set_option(items: list[str]) -> dict[str, Any]:
    """``["lr=0.02", "amp=bf16", "mean=[0.5, 0.5, 0.5]"]`` -> settings, each value read as a TOML value
    (a bare word that is not one is a string), then type-checked against TrainConfig."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        if key in values:
            raise ConfigError(f"--set {key} is given twice")
        values[key] = value
    check_settings(values, "--set")
    return values


def _plain(value: Any) -> Any:
    """A command-line value as TOML would hold it (paths as strings, enum choices as their value)."""
    if isinstance(value, enum.Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def default_output_dir(model: str, data: str | Path) -> str:
    """The run folder when none is given: ``runs/<model>-<dataset file stem>``."""
    return str(Path("runs") / f"{model}-{Path(data).stem}")


def resolve_train_config(
    data: str | Path,
    recipe: str | None = None,
    config_file: str | Path | None = None,
    sets: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    task: str = "segmentation",
) -> TrainConfig:
    """The run's settings: defaults < ``recipe`` < ``config_file`` < ``sets`` (``--set``) < ``flags``.

    ``task`` is what the dataset holds (``DatasetInfo.task``): for "classification" the defaults are
    TrainConfig's with ``CLASSIFICATION_DEFAULTS`` over them.

    ``flags`` are the named command-line options (None = not given). Each layer is type-checked and
    named in its errors; a layer that gives the run length (epochs or iters) replaces the lower
    layers' one. ``output_dir`` defaults to ``default_output_dir(model, data)``.
    """
    settings: dict[str, Any] = dict(_TASK_DEFAULTS.get(task, {}))
    if recipe:
        _layer(settings, {**load_toml(recipe_path(recipe)), "recipe": recipe})
    if config_file:
        _layer(settings, load_toml(Path(config_file)))
    if sets:
        check_settings(sets, "--set")
        _layer(settings, sets)
    given = {k: _plain(v) for k, v in (flags or {}).items() if v is not None}
    clash = sorted(set(given) & set(sets or {}))
    if clash:
        raise ConfigError(f"{clash[0]} is given both as --{clash[0].replace('_', '-')} and in --set; give it once")
    check_settings(given, "command line")
    _layer(settings, given)
    settings["data"] = str(data)
    settings.setdefault("output_dir", default_output_dir(settings.get("model", TrainConfig.model), data))
    return TrainConfig.from_dict(settings)
