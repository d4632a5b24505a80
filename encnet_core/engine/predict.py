"""``encnet predict``: the options as given (``PredictRequest``), checked against the model once it is read,
then the model's task predicts (engine/tasks.py's ``task_for(task).predict``): masks from a segmentation
model (engine/masks.py), classes from a classifier (engine/classification.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from encnet_core.engine.device import resolve_device
from encnet_core.engine.engines import load_with_engine
from encnet_core.engine.images import PredictResult
from encnet_core.engine.inference import InferenceRequest
from encnet_core.engine.tasks import task_for
from encnet_core.errors import ConfigError
from encnet_core.progress import ProgressCallback
from encnet_core.tasks import facts, foreign_predict_flags
from encnet_core.weights import zoo

__all__ = ["PredictRequest", "PredictRun", "run", "check_task_options"]


@dataclass(frozen=True)
class PredictRequest:
    """``encnet predict``'s options as given, before the model is read (which decides the task and the
    default crop/base size); ``run`` checks them against the model and builds ``PredictOptions`` (a
    segmentation model) or ``ClassifyOptions`` (a classifier)."""

    output: Path  # output folder
    inference: InferenceRequest = InferenceRequest(batch_size=4)  # whole / sliding / multi-scale (segmentation)
    mask_format: str = "color"  # "color" or "index" (segmentation)
    overlay: bool = False  # also write <name>_overlay.jpg (segmentation)
    alpha: float = 0.5  # overlay opacity (segmentation)
    se_threshold: float = 0.5  # SE-head probability to report a class (segmentation)
    top_k: int = 1  # classes reported per image (classification)
    overwrite: bool = False  # replace existing outputs
    batch_size: int = 4  # images (or views) per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # autocast for the forward passes
    engine: str = "auto"  # auto | torch | onnxruntime | openvino (engine/engines.py)
    compile: bool = False  # torch.compile the eager model (torch engine)
    trust_code: bool = False  # open TorchScript/pt2 models (programs: loading runs code from the file)
    mirror: str | None = None  # where a zoo name not cached yet is pulled from (None: the default)
    given: frozenset[str] = frozenset()  # the options set explicitly, as flags: those of the other task are refused


@dataclass
class PredictRun:
    """What ``run`` did: the model's task and classes, and the result of ``predict`` or ``predict_classes``."""

    task: str  # "segmentation" or "classification": the model's
    classes: list[str]  # the model's class names
    result: PredictResult  # what the task's predict wrote (masks or classes)


def check_task_options(task: str, given: frozenset[str] | set[str]) -> None:
    """Options of the other tasks (``given``: flags set explicitly): one line naming them, before any image is read."""
    flags = [f for f in foreign_predict_flags(task) if f in given]
    if flags:
        what = facts(task).predict_model
        raise ConfigError(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply to {what}; drop {'it' if len(flags) == 1 else 'them'}")


def run(model: Path, inputs: list[Path], request: PredictRequest, progress: ProgressCallback | None = None) -> PredictRun:
    """``encnet predict``: MODEL as the user gave it (a model file, or a zoo name, pulled now when not
    cached), read once, then the model's task predicts (``task_for(task).predict``): a segmentation model
    writes masks (``predict``), a classifier predictions.json of its top classes
    (``classification.predict_classes``)."""
    zoo.resolve(model, mirror=request.mirror, mirror_hint=zoo.MIRROR_HINT)  # a zoo name not cached yet: pulled now
    loaded = load_with_engine(
        model, resolve_device(request.device), request.engine, request.trust_code, amp=request.amp, compile=request.compile
    )
    check_task_options(loaded.task, request.given)
    return PredictRun(loaded.task, loaded.classes, task_for(loaded.task).predict(loaded, inputs, request, progress))
