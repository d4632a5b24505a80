"""The ``synthetic`` source: the procedural scenes of ``encnet_core.data.synthetic``, for either task.

``task="segmentation"`` (the default) is ``voc.SYNTHETIC``: the scenes' label maps, written as a
VOC-style tar under ``--root`` and converted from it. ``task="classification"`` labels each image
with its scene type (``SCENE_CLASSES``: street, kitchen, beach, in ``SCENES`` order) and needs no
archive: each conversion worker draws its scenes (``generate_indexed_scene``) and encodes them as
lossless PNG. Scene ``i`` is drawn from ``default_rng([seed, i])`` as in the segmentation set (train
first, then val; names ``syn_000000`` onwards), so the same seed and size give the same pictures in
both tasks and a byte-identical file for the same arguments.

Classification defaults are small, CIFAR-like and quick on a CPU: 1500 train / 300 val images of
32 x 32 pixels (drawing one takes about 1 ms).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from encnet_core.choices import SYNTHETIC_CLASSIFICATION_DEFAULTS, TASKS
from encnet_core.data.sources import voc
from encnet_core.data.sources.base import Item, Source, SourcePlan
from encnet_core.errors import ConfigError
from encnet_core.palette import voc_palette
from encnet_core.tasks import facts

__all__ = ["SCENE_CLASSES", "CLASSIFICATION_DEFAULTS", "TASKS", "SYNTHETIC", "render_scene"]

CLASSIFICATION_DEFAULTS = SYNTHETIC_CLASSIFICATION_DEFAULTS
"""Split sizes and image side of the classification set when not given (choices.py: the CLI shows them in help)."""


def _scene_classes() -> tuple[str, ...]:
    from encnet_core.data.synthetic import SCENES

    return tuple(SCENES)


SCENE_CLASSES: tuple[str, ...] = _scene_classes()
"""The classes of the classification set: the scene types; label ``i`` is ``SCENE_CLASSES[i]``."""


def _task(params: dict[str, Any]) -> str:
    task = params.get("task") or "segmentation"
    if task not in TASKS:
        raise ConfigError(f"the synthetic dataset's task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def _classification_arguments(params: dict[str, Any]) -> tuple[int, int, int, int]:
    """(num_train, num_val, size, seed) of the classification set; a missing or None value takes its default."""
    value = {key: params.get(key) if params.get(key) is not None else default
             for key, default in (*CLASSIFICATION_DEFAULTS.items(), ("seed", 0))}  # fmt: skip
    return int(value["num_train"]), int(value["num_val"]), int(value["size"]), int(value["seed"])


def _segmentation_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters for ``voc.SYNTHETIC``: without ``task``, and without the ones left unset (its defaults)."""
    return {key: value for key, value in params.items() if key != "task" and value is not None}


def render_scene(seed: int, index: int, size: int) -> tuple[bytes, int]:
    """Scene ``index`` of ``seed`` as (PNG bytes of the (size, size, 3) RGB image, scene class index)."""
    from encnet_core.data.synthetic import generate_indexed_scene

    image, _, scene = generate_indexed_scene(seed, index, size)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue(), SCENE_CLASSES.index(scene)


def check(params: dict[str, Any]) -> None:
    """`ConfigError` for a task, split sizes, image size or seed that cannot make a synthetic dataset."""
    if facts(_task(params)).per_pixel:
        assert voc.SYNTHETIC.check is not None
        voc.SYNTHETIC.check(_segmentation_params(params))
        return
    from encnet_core.data import synthetic

    layout = params.get("layout") or "standard"
    if layout != "standard":
        raise ConfigError(f"the layout {layout!r} only applies to the synthetic segmentation set, not to its classification task")
    synthetic.check_arguments(*_classification_arguments(params))


def plan(files: dict[str, Path], workdir: Path, params: dict[str, Any]) -> SourcePlan:
    if facts(_task(params)).per_pixel:
        return voc.SYNTHETIC.plan(files, workdir, _segmentation_params(params))
    num_train, num_val, size, seed = _classification_arguments(params)
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for index in range(num_train + num_val):
        name = f"syn_{index:06d}"
        where = ("", f"synthetic scene {index} (seed {seed}, {size} px)")  # named in messages only
        split = "train" if index < num_train else "val"
        splits[split].append(Item(name, where, None, load=functools.partial(render_scene, seed, index, size)))
    return SourcePlan(
        list(SCENE_CLASSES),
        voc_palette(len(SCENE_CLASSES)),
        splits,
        {"train": num_train, "val": num_val},
        files={"task": "classification", "seed": seed, "size": size},
        task="classification",
    )


SYNTHETIC = Source(
    "synthetic",
    "built-in procedural scenes where context matters (no network); task=classification labels each by its scene type",
    (),
    plan,
    check,
)
