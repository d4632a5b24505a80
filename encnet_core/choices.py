"""The names (and their defaults) that the CLI offers as choices, defined once in a module that imports
nothing: ``encnet --help``, ``encnet prepare --help`` and a usage error are answered from these before
torch, numpy or scipy load. The modules that use them import them from here (``export.FORMATS``,
``sources.SOURCES``, ``pcontext.LABEL_SOURCES`` ... are these same objects)."""

from __future__ import annotations

__all__ = [
    "SOURCES", "LABEL_SOURCES", "DEFAULT_LABELS", "TASKS", "SYNTHETIC_CLASSIFICATION_DEFAULTS", "LAYOUTS",
    "DEFAULT_SIZES", "EXPORT_FORMATS", "PRECISIONS", "SUBMIT_SERVERS", "ENGINES", "ENGINE_EXTRAS", "MIRROR_ENV", "TRACKERS", "ARCHIVE_MAX_MEMBER_MIB", "ARCHIVE_MAX_RATIO",
]  # fmt: skip

SOURCES = ("voc", "voc-aug", "pcontext", "ade20k", "folder", "synthetic", "cifar10", "cityscapes", "coco")
"""Dataset sources of ``encnet prepare`` (data/sources/)."""

LABEL_SOURCES = ("json", "mat")
"""PASCAL Context's label sources (the ``labels`` parameter): trainval_merged.json or trainval.tar.gz."""

DEFAULT_LABELS = "json"
"""PASCAL Context's label source when none is given."""

TASKS = ("segmentation", "classification")
"""What a dataset holds and a model predicts: label maps, or one class per image."""

SYNTHETIC_CLASSIFICATION_DEFAULTS = {"num_train": 1500, "num_val": 300, "size": 32}
"""Split sizes and image side of the synthetic classification set when not given."""

TRACKERS = ("tensorboard", "mlflow", "wandb")
"""Experiment trackers of ``encnet train --tracker`` (engine/trackers/; each needs the extra of its name)."""

LAYOUTS = ("standard", "far")
"""Synthetic scene layouts: ``standard`` (the default dataset) and ``far`` (context beyond a small receptive field)."""

DEFAULT_SIZES = {"standard": 128, "far": 256}
"""Default image side of each synthetic layout."""

EXPORT_FORMATS = ("weights", "safetensors", "torchscript", "pt2", "onnx", "openvino")
"""What ``encnet export --format`` writes (weights/export.py)."""

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
"""Inference engines of predict, evaluate, submit and ``Segmenter.load`` (engine/engines.py; auto: its rule)."""

ENGINE_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}
"""The pip extra that installs each engine beyond torch (``pip install 'encnet[EXTRA]'``)."""

PRECISIONS = ("fp32", "fp16", "int8")
"""What a model computes with (its metadata's ``precision``): float32, float16 (``--half``), int8 (``--int8``, ONNX)."""

SUBMIT_SERVERS = ("voc", "ade20k", "cityscapes")
"""Evaluation servers ``encnet submit --server`` writes results for (engine/submit.py ``SERVERS``)."""

ARCHIVE_MAX_MEMBER_MIB = 64
"""Largest archive member read into memory, in MiB (``ArchiveLimits.max_member_bytes``, ``--max-member-size``)."""

ARCHIVE_MAX_RATIO = 400.0
"""Decompressed bytes of a whole archive / its bytes on disk, at most (``ArchiveLimits.max_ratio``, ``--max-ratio``)."""

MIRROR_ENV = "ENCNET_WEIGHTS_MIRROR"
"""Environment variable that replaces the zoo's download URL (``--mirror`` replaces both; zoo.py)."""
