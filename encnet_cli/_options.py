"""Options shared by several commands, defined once: choices as Enums (``--help`` lists them, shell
completion offers them, a typo is a usage error, exit 2), and ``Annotated`` aliases for the options
that evaluate and predict share (inference mode, device, AMP, --trust-code)."""

from __future__ import annotations

import re
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from encnet_core.choices import ENGINES, MIRROR_ENV

if TYPE_CHECKING:  # the engine imports torch: loaded when a command runs, not to parse its options
    from encnet_core.engine.inference import InferenceRequest


class Amp(StrEnum):
    """Mixed precision: off, bfloat16 autocast (CPU and CUDA), float16 autocast (CUDA; training adds a GradScaler)."""

    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


Engine = StrEnum("Engine", {name: name for name in ENGINES})  # type: ignore[misc]  # choices.ENGINES
"""Inference engines (encnet_core/engine/engines.py)."""


class Merge(StrEnum):
    """How the views of multi-scale/flip/sliding inference are merged (engine/inference.py explains each)."""

    prob = "prob"
    reference = "reference"
    logits = "logits"


class Protocol(StrEnum):
    """Evaluation protocols: the options as given, or PyTorch-Encoding's (engine/segmentation.py PROTOCOLS)."""

    none = "none"
    reference = "reference"


class MaskFormat(StrEnum):
    """Mask PNGs written by predict."""

    color = "color"
    index = "index"


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(value: str | None) -> str | None:
    if value is not None and not _DEVICE.match(value):
        raise typer.BadParameter(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    return value


def complete_device(incomplete: str) -> list[str]:
    from encnet_core.engine.device import device_names  # here: completion should not wait for torch at import

    names = device_names()
    return [n for n in names if n.startswith(incomplete)]


def device_option(suffix: str = "") -> typer.models.OptionInfo:
    """``--device`` for an ``Annotated`` parameter: auto, cpu, cuda or cuda:N (checked at parse time,
    completed from the visible GPUs)."""
    return typer.Option(
        "--device", help=f"auto (CUDA when available), cpu, cuda or cuda:N.{suffix}",
        callback=check_device, autocompletion=complete_device,
    )  # fmt: skip


WORKERS_HELP = (
    "DataLoader worker processes (per process) decoding the data: auto picks them from the usable CPUs "
    "(the affinity mask, shared by torchrun's local processes) and the work: none with 2 CPUs or fewer "
    "or under 64 samples to load, else one per CPU but one, at most 8; a number is used as given, at most the usable CPUs"
)


def _parse_workers(value: str | None) -> int | str | None:
    """``--workers``: "auto" or an integer (a negative one is refused by the options' own check, exit 1)."""
    if value is None:
        return None
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a worker count: use auto or a number >= 0") from None


def workers_option(default: str | None, suffix: str = "") -> typer.models.OptionInfo:
    """``--workers/-j`` for a command with DataLoaders: ``auto`` or N (engine/workers.py ``loader_workers``)."""
    return typer.Option(default, "--workers", "-j", help=f"{WORKERS_HELP}{suffix}.", callback=_parse_workers, metavar="auto|N")


def value(choice: Enum | str | None) -> str | None:
    """The plain string of an Enum choice (library functions take strings)."""
    return choice.value if isinstance(choice, Enum) else choice


def inference_request(
    scales: str | None, slide: bool, flip: bool, crop_size: int | None, base_size: int | None,
    stride_rate: float, merge: Merge | str, batch_size: int,
) -> InferenceRequest:  # fmt: skip
    """The shared inference options as the engine takes them (checked, and crop/base size defaulted to the
    model's, once the engine has read the model)."""
    from encnet_core.engine.inference import InferenceRequest

    return InferenceRequest(scales, slide, flip, crop_size, base_size, stride_rate, value(merge), batch_size)


FIXED_BY_PROTOCOL = ("scales", "slide", "flip", "merge", "stride_rate", "crop_size", "base_size")  # set by --protocol reference


def check_protocol_flags(ctx: typer.Context, verb: str) -> None:
    """--protocol reference with an inference option it sets itself is a usage error (exit 2), not a silent
    override (``verb``: the command, in "or VERB without --protocol")."""
    given = [name for name in FIXED_BY_PROTOCOL if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise typer.BadParameter(
            f"--protocol reference sets {flags} itself (as the reference's test.py, with the model's base/crop size); "
            f"drop them, or {verb} without --protocol",
            param_hint="'--protocol'",
        )


SCALES_HELP = "Multi-scale inference, e.g. 0.5,0.75,1.0,1.25,1.5,1.75 (the reference's; long side = base size x scale)."

Scales = Annotated[Optional[str], typer.Option("--scales", help=SCALES_HELP)]
Slide = Annotated[bool, typer.Option("--slide", help="Sliding-window inference at the image's own size.")]
Flip = Annotated[bool, typer.Option("--flip", help="Add horizontally flipped views.")]
Crop = Annotated[Optional[int], typer.Option("--crop-size", help="Window side for sliding/multi-scale (default: the model's training crop).")]
Base = Annotated[Optional[int], typer.Option("--base-size", help="Long side at scale 1.0 (default: the model's training base size).")]
Stride = Annotated[float, typer.Option("--stride-rate", help="Window stride as a fraction of the crop.", show_default="2/3")]
MergeOpt = Annotated[
    Merge,
    typer.Option(
        "--merge",
        help="Merge views: prob averages softmax probabilities (as mmsegmentation); reference is PyTorch-Encoding's "
        "MultiEvalModule (exp of a window's logits plus its flip's, averaged over windows, summed over scales); "
        "logits sums logits the same way without the exp (not the reference's).",
    ),
]
ProtocolOpt = Annotated[
    Protocol,
    typer.Option(
        "--protocol",
        help="reference: evaluate as PyTorch-Encoding's test.py --eval for the data's dataset (scales 0.5..1.75, "
        "flip, --merge reference, stride 2/3, black padding, the model's base/crop size; its mIoU is mIoU_all) and, "
        "for a zoo MODEL, print the published numbers beside; --scales, --slide, --flip, --merge, --stride-rate, "
        "--crop-size and --base-size are refused with it.",
    ),
]
Device = Annotated[str, device_option()]
AmpOpt = Annotated[Amp, typer.Option("--amp", help="Autocast for inference: off, bf16, or fp16 (CUDA); with --engine openvino, bf16 is OpenVINO's bfloat16 precision.")]
EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="What runs the model: torch (eager PyTorch), onnxruntime or openvino (a checkpoint is exported to ONNX once, "
        "into the cache's engines/ folder, and reused), or auto: onnxruntime for an .onnx file, else torch "
        "(docs/export.md, Engines: the CPU measurements and the rule).",
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Run eager PyTorch through torch.compile (torch engine): a slow first pass per input size, "
        "then faster ones (docs/export.md, Engines).",
    ),
]
TrustCode = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Open TorchScript and pt2 models: they are programs, and loading them runs code from the file. "
        "Only for files from a source you trust (weights, safetensors and checkpoints never need it).",
    ),
]

MIRROR_HELP = (
    "Base URL holding models/NAME-SHA.zip, used instead of the reference's when a zoo model is downloaded "
    f"(also ${MIRROR_ENV})."
)
Mirror = Annotated[Optional[str], typer.Option("--mirror", metavar="URL", help=MIRROR_HELP)]
"""``--mirror URL`` of the commands that pull a zoo model by name (weights pull, predict, evaluate)."""

JSON_HELP = (
    "JSON result: a bare --json or --json - prints it on stdout instead of the table; --json FILE writes FILE "
    "(atomically, never over a non-JSON file) and keeps the table. The word after --json is FILE when it ends in .json; --json=FILE names any file."
)
JSON_METAVAR = "[FILE|-]"

JsonOut = Annotated[Optional[Path], typer.Option("--json", metavar=JSON_METAVAR, help=JSON_HELP)]
"""``--json [FILE|-]`` of every command that prints a result table (``_output.emit_json`` writes it).

Typer options take a value or none, not an optional one: ``expand_json_flag`` (called by the root
group on the command line before parsing) turns a bare ``--json`` into ``--json=-``."""


def expand_json_flag(args: list[str]) -> list[str]:
    """The command line with each bare ``--json`` given its value: the next word when it is ``-`` or a
    ``.json`` file name, else ``-`` (stdout). So ``encnet info --json data.h5`` prints JSON about
    data.h5 and ``--json out.json`` writes out.json; ``--json=FILE`` names any file."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":  # everything after is positional
            out.extend(args[i:])
            break
        if word == "--json":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is not None and (following == "-" or following.lower().endswith(".json")):
                out.append(f"--json={following}")
                i += 2
                continue
            out.append("--json=-")
        else:
            out.append(word)
        i += 1
    return out
