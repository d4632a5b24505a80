"""``encnet submit``: a model's predictions on a test split, written exactly as an evaluation server takes them.

``SERVERS`` holds one ``Server`` per server: the classes a model must predict (by count and names, the
lists the dataset sources already hold), where the PNGs go, how a predicted class index becomes a pixel
value, and the archive to upload:

* ``voc`` (PASCAL VOC 2012 segmentation, comp6): ``results/VOC2012/Segmentation/comp6_test_cls/<name>.png``,
  8-bit palette PNGs of the class indices 0..20 with the full VOC colour map (the reference's
  ``pascal_voc`` ``make_pred``: the index itself; ``get_mask_pallete``), and ``results.tgz`` of ``results/``;
* ``ade20k`` (the MIT scene-parsing benchmark): ``<name>.png`` grayscale, class index + 1 (1..150; 0,
  "other", is never predicted: the reference's ``ade20k`` ``make_pred``), and ``../submission.zip``;
* ``cityscapes`` (pixel-level semantic labelling): ``<city>_<seq>_<frame>_leftImg8bit.png`` grayscale
  labelIds (``cityscapes_labels.trainids_to_labelids``, as cityscapesScripts' evaluation reads them),
  and ``../submission.zip``.

The input is a prepared file's split (``test`` by default; names from the file) or a folder of images
(names from the file stems). Inference is the one of ``encnet predict``/``evaluate``: whole image,
sliding window, multi-scale, flip, merges (engine/inference.py), or ``protocol="reference"``, the
reference's test.py settings for the server's dataset (engine/segmentation.py ``PROTOCOLS``).
Every image must be predicted: a submission with a missing image is refused by the server, so an
unreadable image stops the run. Nothing that exists is replaced without ``overwrite``; each PNG and
the archive are written atomically.
"""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from encnet_core.data.dataset import HDF5SegmentationDataset
from encnet_core.data.hdf5 import read_info, read_names
from encnet_core.engine.device import resolve_device
from encnet_core.engine.engines import load_with_engine
from encnet_core.engine.images import collect_inputs, load_rgb, read_error_reason
from encnet_core.engine.inference import InferenceConfig, InferenceRequest, infer
from encnet_core.engine.masks import upsampled_labels
from encnet_core.engine.segmentation import PROTOCOL_NAMES, protocol_inference, reference_protocol
from encnet_core.errors import ConfigError, DataError
from encnet_core.palette import voc_palette
from encnet_core.paths import atomic_write, check_output_dir
from encnet_core.progress import ProgressCallback
from encnet_core.tasks import facts
from encnet_core.weights import zoo
from encnet_core.weights.model_files import LoadedModel

__all__ = ["Server", "SERVERS", "SubmitOptions", "SubmitResult", "check_classes", "server_png", "run"]


def _png(labels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of (H, W) uint8 values: grayscale ("L"), or palette ("P") with a 256-row ``palette``."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("L" if palette is None else "P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    if palette is not None:
        image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _voc_classes() -> list[str]:
    from encnet_core.data.sources.voc import VOC_CLASSES

    return list(VOC_CLASSES)


def _ade20k_classes() -> list[str]:
    from encnet_core.data.sources.ade20k import ADE20K_CLASSES

    return list(ADE20K_CLASSES)


def _cityscapes_classes() -> list[str]:
    from encnet_core.data.sources.cityscapes_labels import CLASSES

    return list(CLASSES)


def _voc_png(labels: np.ndarray) -> bytes:
    return _png(labels, voc_palette(256))  # the reference's get_mask_pallete(pascal_voc): the 256-entry VOC map


def _ade20k_png(labels: np.ndarray) -> bytes:
    return _png(labels + 1)  # make_pred: pred_offset 1 (0 is "other", never predicted)


def _cityscapes_png(labels: np.ndarray) -> bytes:
    from encnet_core.data.sources.cityscapes_labels import trainids_to_labelids

    return _png(trainids_to_labelids(labels))


def _cityscapes_name(name: str) -> str:
    """A prepared file stores ``berlin_000000_000019``; the server matches ``*_leftImg8bit.png``-style names."""
    return name if name.endswith("_leftImg8bit") else f"{name}_leftImg8bit"


@dataclass(frozen=True)
class Server:
    """What one evaluation server takes."""

    name: str  # --server
    title: str  # in messages
    dataset: str  # the prepared dataset whose reference protocol applies (segmentation.PROTOCOLS)
    classes: Callable[[], list[str]]  # the class list a model must predict, index = class
    encode: Callable[[np.ndarray], bytes]  # (H, W) uint8 class indices -> the PNG the server reads
    folder: str  # where the PNGs go, relative to --output
    archive: str  # the archive to upload, relative to --output; its member names are relative to --output
    stored_name: Callable[[str], str] = lambda name: name  # a prepared file's image name -> the PNG's stem


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server("voc", "PASCAL VOC 2012", "voc", _voc_classes, _voc_png, "results/VOC2012/Segmentation/comp6_test_cls",
               "results.tgz"),
        Server("ade20k", "ADE20K scene-parsing", "ade20k", _ade20k_classes, _ade20k_png, ".", "../submission.zip"),
        Server("cityscapes", "Cityscapes", "cityscapes", _cityscapes_classes, _cityscapes_png, ".", "../submission.zip",
               stored_name=_cityscapes_name),
    )
}  # fmt: skip
"""--server name -> ``Server`` (``choices.SUBMIT_SERVERS`` names them, in this order, for the CLI)."""


@dataclass(frozen=True)
class SubmitOptions:
    """Options of ``encnet submit`` besides the inference settings (``InferenceRequest``)."""

    server: str  # one of SERVERS
    output: Path  # the folder the server's layout is written under
    split: str = "test"  # split of a prepared file (a folder of images has none)
    protocol: str = "none"  # "reference": the reference's test.py settings for the server's dataset
    overwrite: bool = False  # replace existing PNGs and the archive
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # autocast for the forward passes
    engine: str = "auto"  # auto | torch | onnxruntime | openvino (engine/engines.py)
    trust_code: bool = False  # open TorchScript/pt2 models (programs: loading runs code from the file)
    mirror: str | None = None  # where a zoo name not cached yet is pulled from (None: the default)

    def __post_init__(self) -> None:
        if self.server not in SERVERS:
            raise ConfigError(f"--server must be one of {', '.join(SERVERS)}, got {self.server!r}")
        if self.protocol not in PROTOCOL_NAMES:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOL_NAMES)}, got {self.protocol!r}")


@dataclass
class SubmitResult:
    """What ``run`` wrote."""

    server: str  # --server
    output: Path  # the --output folder
    folder: Path  # where the PNGs are
    archive: Path  # the archive to upload
    files: list[str] = field(default_factory=list)  # the PNGs' names, in input order
    inference: dict[str, Any] = field(default_factory=dict)  # the settings used
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server, "output": str(self.output), "folder": str(self.folder), "archive": str(self.archive),
            "images": len(self.files), "files": self.files, "inference": self.inference, "seconds": round(self.seconds, 2),
        }  # fmt: skip


def check_classes(server: Server, classes: list[str]) -> None:
    """The model's classes must be the server's, by count and by name (case and spaces aside): one line if not."""
    expected = server.classes()
    if len(classes) != len(expected):
        raise ConfigError(
            f"the model predicts {len(classes)} classes but the {server.title} server takes {len(expected)} "
            f"({', '.join(expected[:3])}, ...); submit a model trained on {server.dataset}"
        )
    differ = [i for i, (a, b) in enumerate(zip(classes, expected, strict=True)) if " ".join(a.split()).casefold() != " ".join(b.split()).casefold()]
    if differ:
        i = differ[0]
        raise ConfigError(
            f"the model's class {i} is {classes[i]!r} where the {server.title} server's is {expected[i]!r} "
            f"({len(differ)} of {len(expected)} names differ); submit a model trained on {server.dataset}"
        )


def server_png(server: str, labels: np.ndarray) -> bytes:
    """The PNG ``server`` takes for (H, W) predicted class indices."""
    return SERVERS[server].encode(np.asarray(labels, dtype=np.uint8))


def _flat_name(name: str, where: str) -> str:
    """The last component of ``name``, refused (one line) when it cannot be a file name."""
    flat = PurePosixPath(name.replace("\\", "/")).name
    if not flat or flat in (".", "..") or "\x00" in flat or len(flat.encode()) > 250:
        raise DataError(f"{where} is named {name!r}, which cannot name a result file; fix the names")
    return flat


@dataclass(frozen=True)
class _Inputs:
    """The images to predict: their result names, and a reader of image ``i`` as (3, H, W) uint8."""

    names: list[str]  # PNG stems, in order
    read: Callable[[int], Tensor]


def _h5_inputs(data: Path, split: str, server: Server) -> _Inputs:
    info = read_info(data)
    if not facts(info.task).per_pixel:
        raise ConfigError(f"{data} is a {info.task} dataset; submit predicts label maps of a segmentation dataset's images")
    if split not in info.splits:
        raise DataError(f"{data} has no split {split!r}; it has {', '.join(info.splits) or 'no splits'} (choose one with --split)")
    names = [server.stored_name(_flat_name(name, f"{data} split {split!r} sample {i}")) for i, name in enumerate(read_names(data, split))]
    dataset = HDF5SegmentationDataset(data, split, strict=True)

    def read(index: int) -> Tensor:
        return dataset[index][0].as_subclass(torch.Tensor)  # (3, H, W) uint8; a bad sample: one line

    return _Inputs(names, read)


def _folder_inputs(data: Path, output: Path) -> _Inputs:
    files = collect_inputs([data], output)
    names = [_flat_name(stem, str(path)) for path, stem in files]

    def read(index: int) -> Tensor:
        path = files[index][0]
        try:
            rgb = load_rgb(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on crafted files
            raise DataError(f"cannot read the image {path} ({read_error_reason(exc)}); a submission needs every image: fix or remove it") from None
        return torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy()).permute(2, 0, 1)  # PIL's buffer is read-only

    return _Inputs(names, read)


def _inputs(data: Path, options: SubmitOptions, server: Server) -> _Inputs:
    """DATA as a prepared file (HDF5) or a folder of images; names that would collide are refused."""
    if not data.exists():
        raise ConfigError(f"input not found: {data}")
    inputs = _h5_inputs(data, options.split, server) if data.is_file() and h5py.is_hdf5(data) else _folder_inputs(data, options.output)
    if not inputs.names:
        raise DataError(f"{data} has no images to predict" + (f" in split {options.split!r}" if data.is_file() else ""))
    seen: dict[str, int] = {}
    for i, name in enumerate(inputs.names):
        if name.casefold() in seen:
            raise DataError(f"images {seen[name.casefold()]} and {i} of {data} would both write {name}.png; rename one")
        seen[name.casefold()] = i
    return inputs


def _layout(server: Server, output: Path) -> tuple[Path, Path, Path]:
    """(the PNGs' folder, the archive, the folder the archive's member names are relative to: --output)."""
    base = output.resolve()
    return (base / server.folder).resolve(), (base / server.archive).resolve(), base


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise ConfigError(f"{len(existing)} outputs exist already (e.g. {existing[0]}); pass --overwrite to replace them")


@torch.no_grad()
def predicted_labels(model: LoadedModel, image: Tensor, inference: InferenceConfig) -> np.ndarray:
    """(H, W) uint8 class indices for one (3, H, W) uint8 image, as ``encnet predict`` gives them: one pass
    with the logits resized and reduced as predict does (whole image, no flip), else ``infer``'s merged scores."""
    x = model.normalize(image[None])  # (1, 3, H, W)
    if inference.scales is None and not inference.slide and not inference.flip:
        if model.run_lowres is not None:
            lowres, _ = model.run_lowres(x)
            labels = upsampled_labels(model, lowres, (x.shape[-2], x.shape[-1]))[0]
        else:
            labels = model.forward(x).argmax(1)[0]
    else:
        labels = infer(model.forward, x[0], model.num_classes, inference).argmax(0)
    return labels.to(torch.uint8).cpu().numpy()


def _archive_members(files: list[Path], root: Path) -> Iterator[tuple[str, Path | None]]:
    """(member name, file or None for a folder): the folders above the files first, as ``tar`` lists them."""
    folders: list[str] = []
    for path in files:
        for parent in reversed(PurePosixPath(path.relative_to(root).as_posix()).parents):
            if str(parent) != "." and f"{parent}/" not in folders:
                folders.append(f"{parent}/")
    yield from ((name, None) for name in folders)
    yield from ((path.relative_to(root).as_posix(), path) for path in files)


def write_archive(archive: Path, files: list[Path], root: Path) -> None:
    """``files`` (named relative to ``root``) as a .zip or .tgz at ``archive``, written atomically."""
    with atomic_write(archive, keep_suffix=True) as tmp:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
                for name, path in _archive_members(files, root):
                    if path is not None:
                        bundle.write(path, name)
        else:
            with tarfile.open(tmp, "w:gz") as bundle:
                for name, path in _archive_members(files, root):
                    if path is None:
                        bundle.add(root / name.rstrip("/"), arcname=name.rstrip("/"), recursive=False)
                    else:
                        bundle.add(path, arcname=name, recursive=False)


def _inference_used(inference: InferenceConfig) -> dict[str, Any]:
    return {
        "scales": list(inference.scales) if inference.scales else None, "slide": inference.slide, "flip": inference.flip,
        "merge": inference.merge, "crop_size": inference.crop_size, "base_size": inference.base_size,
        "stride_rate": inference.stride_rate,
    }  # fmt: skip


def run(
    model_path: Path, data: Path, options: SubmitOptions, request: InferenceRequest, progress: ProgressCallback | None = None
) -> SubmitResult:
    """``encnet submit``: predict every image of ``data`` (a prepared file's ``options.split``, or a folder
    of images) with MODEL (a model file or a zoo name, pulled now when not cached) and write the server's
    PNGs and archive under ``options.output``. The inputs, the outputs and the model's classes are checked
    before the first image is predicted."""
    server = SERVERS[options.server]
    check_output_dir(options.output, "--output")
    folder, archive, members_root = _layout(server, options.output)
    inputs = _inputs(data, options, server)
    targets = [folder / f"{name}.png" for name in inputs.names]
    _check_outputs([*targets, archive], options.overwrite)
    zoo.resolve(model_path, mirror=options.mirror, mirror_hint=zoo.MIRROR_HINT)  # a zoo name not cached yet: pulled now
    model = load_with_engine(model_path, resolve_device(options.device), options.engine, options.trust_code, amp=options.amp)
    if not facts(model.task).per_pixel:
        raise ConfigError(f"{model_path} is a {model.task} model; a server takes the label maps of a segmentation model")
    check_classes(server, model.classes)
    inference = request.config(model.crop_size, model.base_size)
    if options.protocol == "reference":
        inference = protocol_inference(inference, reference_protocol(server.dataset), model)
    elif inference.pad_value == (0.0, 0.0, 0.0):
        inference = replace(inference, pad_value=model.pad_value)
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for done, target in enumerate(targets, start=1):
        png = server.encode(predicted_labels(model, inputs.read(done - 1), inference))
        with atomic_write(target, fsync=False) as tmp:  # a PNG is cheap to make again; the archive is fsynced
            tmp.write_bytes(png)
        if progress is not None:
            progress(f"predicting for {server.name}", done, len(targets), unit="items")
    write_archive(archive, targets, members_root)
    return SubmitResult(
        server=server.name, output=options.output, folder=folder, archive=archive, files=[t.name for t in targets],
        inference=_inference_used(inference), seconds=time.perf_counter() - start,
    )  # fmt: skip
