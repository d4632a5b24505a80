"""The task registry: each task's name and its plain facts, in a module that imports nothing heavy.

A task is what a dataset holds and a model predicts (``choices.TASKS``): label maps (segmentation) or one
class per image (classification). The layers below the engine (data/, weights/) and the CLI (which must
answer ``--help`` without torch) ask this registry (``facts(name)``) for what differs by task; the engine's
parts of a task (model, loss, metrics, evaluate, predict, views) hang off engine/tasks.py's ``task_for(name)``.

Adding a task: one ``TaskFacts`` here (and its name in ``choices.TASKS``), one engine ``Task`` object
registered in engine/tasks.py, and the rest docs/architecture.md lists under "Tasks".
"""

from __future__ import annotations

from dataclasses import dataclass

from encnet_core.choices import TASKS

__all__ = ["TaskFacts", "FACTS", "DEFAULT", "facts", "predict_flags", "foreign_predict_flags"]


@dataclass(frozen=True)
class TaskFacts:
    """What a task is, as plain data."""

    name: str  # the task's name: DatasetInfo.task, model.task, metadata["task"]
    predict_flags: tuple[str, ...]  # encnet predict's options only a model of this task uses
    predict_model: str  # how a predict refusal names a model of this task (and what it does not do)
    per_pixel: bool  # labels are maps (HDF5 masks, class_pixels, se_targets; logit maps out; EncNet's head options, head LR)
    label_field: str  # the HDF5 dataset of a split holding its labels (data/hdf5.py)
    head_flags: str  # the train options that change the model's weights' shapes (named when a checkpoint does not fit)
    example_models: str  # registered models of this task, named when a model of another task is given
    gflops_digits: int  # decimals of GFLOPs in `encnet models` (a CIFAR classifier's are small)
    reported: bool  # whether `encnet report` draws a training run of this task


FACTS: dict[str, TaskFacts] = {
    "segmentation": TaskFacts(
        name="segmentation",
        predict_flags=("--format", "--overlay", "--alpha", "--se-threshold", "--scales", "--slide", "--flip", "--crop-size",
                       "--base-size", "--stride-rate", "--merge"),  # fmt: skip
        predict_model="a segmentation model (it is for classifiers)",
        per_pixel=True,
        label_field="masks",
        head_flags="--lateral/--aux/--se-loss",
        example_models="encnet_resnet50s or encnet_tiny",
        gflops_digits=1,
        reported=True,
    ),
    "classification": TaskFacts(
        name="classification",
        predict_flags=("--top-k",),
        predict_model="a classification model (it writes no masks or overlays, only classes and scores)",
        per_pixel=False,
        label_field="labels",
        head_flags="--num-codes",
        example_models="encnet_cifar14 or encnet_cifar_tiny",
        gflops_digits=3,
        reported=False,
    ),
}
DEFAULT = "segmentation"
"""The task of a file, model or result that names none (HDF5 version 1, older metadata, evaluate's segmentation JSON)."""

assert tuple(FACTS) == TASKS  # one definition of the task names: choices.TASKS


def facts(name: str) -> TaskFacts:
    """The facts of task ``name`` (a ``choices.TASKS`` entry)."""
    return FACTS[name]


def predict_flags() -> tuple[str, ...]:
    """Every task's own ``encnet predict`` options, in registry order."""
    return tuple(flag for task in FACTS.values() for flag in task.predict_flags)


def foreign_predict_flags(name: str) -> tuple[str, ...]:
    """``encnet predict``'s options of the other tasks: those a model of task ``name`` refuses."""
    own = facts(name).predict_flags
    return tuple(flag for task in FACTS.values() if task.name != name for flag in task.predict_flags if flag not in own)
