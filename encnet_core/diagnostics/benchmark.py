"""The GPU benchmark: ratios measured in one run, each with its goal (``benchmarks/gpu.py``, and the
short version in ``encnet doctor --bench``).

Every row compares two things measured in the same process, on the same device:

* the Encoding layer against the broadcast formulation (time and extra peak memory, outputs equal);
* EncNet-ResNet50s (lateral, 59 classes) training images/s in encnet's own training step
  (``train.setup`` + ``train.train_step``): fp32, AMP bf16, AMP fp16 + GradScaler, bf16 +
  channels_last, and bf16 + channels_last + ``torch.compile``, each against fp32;
* EncNet-ResNet50 against torchvision's FCN-ResNet50 (training step) and DeepLabV3-ResNet50
  (inference), as ``benchmarks/heads.py`` does on CPU;
* multi-scale + flip ``infer()`` against the pure forward passes of the same views, with views
  batched and one at a time (as ``benchmarks/evaluate.py``);
* the training DataLoader (encnet's, N workers) against the step's consumption, and the data share
  of a loop of loader + step;
* a one-process DistributedDataParallel step (NCCL, SyncBatchNorm converted, as under torchrun).

Peak GPU memory (``torch.cuda.max_memory_allocated``) is reported per configuration. Timings on
CUDA are synchronised. Without CUDA the same code paths run at tiny sizes on the CPU: 32 px crops,
batch 2, ``encnet_tiny`` (lateral, 59 classes) where the rows above use EncNet-ResNet50s, gloo
instead of NCCL, bf16 autocast on the CPU; the fp16 row (``--amp fp16`` needs CUDA), the compile
row (the compiler's C++ build takes minutes on a CPU) and the GPU-memory row say why they are
skipped. That run checks the code; its figures are no claims and get no verdicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from encnet_core.config import TrainConfig
from encnet_core.constants import IGNORE_INDEX
from encnet_core.data.dataset import HDF5SegmentationDataset
from encnet_core.data.hdf5 import HDF5Writer, Sample, class_pixel_counts, encode_mask
from encnet_core.data.synthetic import generate_indexed_scene
from encnet_core.data.transforms import train_transform
from encnet_core.engine import train as train_engine
from encnet_core.engine.device import is_cuda, resolve_device, synchronize
from encnet_core.engine.distributed import DistInfo, shutdown_distributed
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.engine.losses import SegmentationLoss
from encnet_core.errors import ConfigError
from encnet_core.models import Encoding, create_model
from encnet_core.palette import voc_palette

__all__ = ["PROFILES", "BenchConfig", "BenchRow", "BenchReport", "BroadcastEncoding", "run_benchmark"]

PROFILES = ("full", "short")  # full: benchmarks/gpu.py (sized for ~5 min on a GPU); short: encnet doctor --bench


@dataclass(frozen=True)
class Sizes:
    """What one profile measures, and at which sizes."""

    model: str  # the EncNet of the training, loader, evaluation and DDP rows (lateral, 59 classes)
    crop: int  # training crop (square) and evaluation window
    base: int  # base size (long side at scale 1.0)
    batch: int  # training batch
    warmup: int  # untimed steps per configuration
    steps: int  # timed steps per configuration
    encoding: tuple[int, int, int, int]  # Encoding layer B, C, K, feature side
    rounds: int  # interleaved rounds of the paired timings (median of per-round ratios)
    eval_image: tuple[int, int]  # (H, W) of the multi-scale evaluation image
    images: int  # images in the benchmark's dataset (loader rows)
    image_side: int  # side of those images
    loader_batches: int  # timed batches of the loader and data-share rows
    heads: bool  # EncNet vs torchvision rows
    compile: bool  # torch.compile row


SIZES = {
    "full": Sizes(model="encnet_resnet50s", crop=480, base=520, batch=8, warmup=3, steps=10, encoding=(8, 512, 32, 60), rounds=5,
                  eval_image=(375, 500), images=96, image_side=512, loader_batches=24, heads=True, compile=True),
    "short": Sizes(model="encnet_resnet50s", crop=480, base=520, batch=8, warmup=2, steps=5, encoding=(8, 512, 32, 60), rounds=3,
                   eval_image=(375, 500), images=48, image_side=512, loader_batches=12, heads=False, compile=False),
    # the CPU fallback: the same code paths with EncNet's tiny backbone (ResNet-50 only where torchvision's models are)
    "tiny": Sizes(model="encnet_tiny", crop=32, base=40, batch=2, warmup=1, steps=2, encoding=(2, 64, 32, 16), rounds=1,
                  eval_image=(30, 40), images=8, image_side=48, loader_batches=4, heads=True, compile=False),
}  # fmt: skip

NUM_CLASSES = 59  # PASCAL Context (the models use the lateral branch, as the reference's PASCAL models)
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the reference's multi-scale evaluation
AUX_WEIGHT = 0.2  # aux CE weight of torchvision's reference script and PyTorch-Encoding
COMPILE_ON_CPU = (
    "torch.compile on a CPU first builds C++ kernels with a compiler (EncNet-ResNet50s: 77 s for the first 64 px "
    "step on the project's 2-core CPU): CUDA only"
)

# (name, amp, channels_last, compile): the training configurations, compared with the first
TRAIN_CONFIGS = (
    ("fp32", "off", False, False),
    ("AMP bf16", "bf16", False, False),
    ("AMP fp16 + GradScaler", "fp16", False, False),
    ("bf16 + channels_last", "bf16", True, False),
    ("bf16 + channels_last + torch.compile", "bf16", True, True),
)


@dataclass(frozen=True)
class BenchConfig:
    """What ``run_benchmark`` runs."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N; without CUDA everything runs at tiny sizes
    profile: str = "full"  # full (benchmarks/gpu.py) or short (encnet doctor --bench)
    workers: int | None = None  # DataLoader workers of the loader rows (None: min(8, CPU count))
    compile: bool = True  # include the torch.compile row (full profile, CUDA only)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("--workers must be >= 0")


@dataclass(frozen=True)
class BenchRow:
    """One measured ratio and its goal."""

    section: str  # what is measured: "Encoding layer", "training step", ...
    name: str  # the comparison, "ours / baseline"
    ratio: float | None  # None: skipped (see detail)
    goal: str  # ">= 20x", "<= 1.05x", or "report" (no pass/fail goal)
    passed: bool | None  # None: no pass/fail goal, skipped, or a tiny CPU run (no claim)
    detail: str = ""  # this machine's absolute figures, or why the row was skipped
    peak_mib: float | None = None  # peak GPU memory of the configuration (CUDA only)

    def verdict(self) -> str:
        if self.ratio is None:
            return "skipped"
        return "-" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def value(self) -> str:
        """The ratio as the goal reads it: 21.3x, 0.4%, 7.0e-07, or a rate."""
        if self.ratio is None:
            return "skipped"
        if self.goal.endswith("%"):
            return f"{self.ratio:.1%}"
        if "e-" in self.goal:
            return f"{self.ratio:.1e}"
        if self.name.endswith("/s"):
            return f"{self.ratio:.2f}"
        return f"{self.ratio:.2f}x"


@dataclass
class BenchReport:
    """The rows of one run, and the machine they were measured on."""

    device: str  # "cuda:0" or "cpu"
    device_name: str  # the GPU's name, or the CPU's
    tiny: bool  # True: no CUDA, the code paths ran at tiny sizes on the CPU (no claims)
    profile: str
    environment: dict[str, Any]  # torch, CUDA, cuDNN, TF32 settings, load average, CPUs
    rows: list[BenchRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; each row also has its ``value`` and ``verdict`` as printed."""
        rows = [{**asdict(r), "value": r.value(), "verdict": r.verdict()} for r in self.rows]
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "rows": rows}


# ----------------------------------------------------------------------------- goals and rows


def _check(ratio: float, goal: str) -> bool | None:
    """Whether ``ratio`` meets ``goal`` (">= 20x", "<= 1.05x", "> 1x"); None for "report"."""
    if goal == "report":
        return None
    op, value = goal.split()
    threshold = float(value.rstrip("x%")) / (100 if value.endswith("%") else 1)
    return {">=": ratio >= threshold, "<=": ratio <= threshold, ">": ratio > threshold, "<": ratio < threshold}[op]


class _Rows:
    """Collects rows; a tiny CPU run records no verdicts."""

    def __init__(self, report: BenchReport, say: Callable[[str], None]) -> None:
        self.report, self.say = report, say

    def add(self, section: str, name: str, ratio: float | None, goal: str, detail: str = "", peak: float | None = None) -> None:
        passed = None if ratio is None or self.report.tiny else _check(ratio, goal)
        row = BenchRow(section, name, ratio, goal, passed, detail, peak)
        self.report.rows.append(row)
        self.say(f"{section}: {name} = {row.value()} (goal {goal}) {detail}".rstrip())

    def skip(self, section: str, name: str, goal: str, reason: str) -> None:
        self.add(section, name, None, goal, reason)


@contextlib.contextmanager
def _section(rows: _Rows, section: str, names: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Run a section; an out-of-memory error or a failure skips its rows (``names``: (name, goal)) with the reason."""
    done = len(rows.report.rows)
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        reason = "out of GPU memory"
    except (ConfigError, RuntimeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    else:
        return
    finally:
        _free()
    recorded = {row.name for row in rows.report.rows[done:] if row.section == section}
    for name, goal in names:
        if name not in recorded:
            rows.skip(section, name, goal, reason)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- timing and memory


def _peak_reset(device: torch.device) -> int:
    """Reset the peak-memory counter; the bytes allocated now (0 on CPU)."""
    if not is_cuda(device):
        return 0
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_mib(device: torch.device, before: int = 0) -> float | None:
    """Peak GPU memory since ``_peak_reset`` above ``before``, in MiB (None on CPU)."""
    if not is_cuda(device):
        return None
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _seconds(fn: Callable[[], Any], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls, synchronised."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def _paired(ours: Callable[[], Any], theirs: Callable[[], Any], device: torch.device, rounds: int, warmup: int = 1) -> tuple[float, float]:
    """Median over rounds of time(ours) / time(theirs) within a round (order alternating), and ours' median seconds."""
    for _ in range(warmup):
        ours()
        theirs()
    ratios, times = [], []
    for index in range(rounds):
        pair = (ours, theirs) if index % 2 == 0 else (theirs, ours)
        first, second = (_seconds(fn, device) for fn in pair)
        a, b = (first, second) if index % 2 == 0 else (second, first)
        ratios.append(a / b)
        times.append(a)
    return statistics.median(ratios), statistics.median(times)


# ----------------------------------------------------------------------------- Encoding layer


class BroadcastEncoding(nn.Module):
    """The Encoding layer as mmsegmentation writes it: residuals expanded to (B, N, K, C). The baseline."""

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))  # (K, C)
        self.scale = nn.Parameter(torch.empty(num_codes))  # (K,)

    def forward(self, x: Tensor) -> Tensor:
        feats = x.flatten(2).transpose(1, 2).contiguous()  # (B, N, C)
        residuals = feats.unsqueeze(2) - self.codewords  # (B, N, K, C)
        scaled_l2 = self.scale * residuals.pow(2).sum(3)  # (B, N, K)
        assign = torch.softmax(scaled_l2, dim=2)  # (B, N, K)
        return (assign.unsqueeze(3) * residuals).sum(1)  # (B, K, C)


def _encoding_rows(rows: _Rows, sizes: Sizes, device: torch.device) -> None:
    """Our Encoding layer against the broadcast formulation: time, extra peak memory (CUDA), equality."""
    section = "Encoding layer"
    B, C, K, side = sizes.encoding
    ratio, seconds, memory, worst = _encoding_measure(sizes, device)
    shape = f"B={B} C={C} K={K} {side}x{side}, forward + backward"
    rows.add(section, "time, broadcast / ours", ratio, ">= 20x", f"{shape}; ours {seconds * 1e3:.1f} ms")
    if memory[0] is None or memory[1] is None:
        rows.skip(section, "extra peak memory, broadcast / ours", ">= 15x",
                  "GPU allocator only (on CPU: benchmarks/encoding_layer.py measures resident memory)")  # fmt: skip
    else:
        rows.add(section, "extra peak memory, broadcast / ours", memory[1] / memory[0], ">= 15x",
                 f"ours {memory[0]:.0f} MiB, broadcast {memory[1]:.0f} MiB", memory[0])  # fmt: skip
    rows.add(section, "max relative difference, ours vs broadcast", worst, "<= 1e-4", "output and the gradients of x, codewords, scale")


def _encoding_measure(sizes: Sizes, device: torch.device) -> tuple[float, float, list[float | None], float]:
    """(broadcast time / ours, our seconds per call, [our, broadcast] extra peak MiB, max relative difference)."""
    B, C, K, side = sizes.encoding
    torch.manual_seed(0)
    ours = Encoding(C, K).to(device)
    broadcast = BroadcastEncoding(C, K).to(device)
    broadcast.load_state_dict(ours.state_dict())
    x = torch.randn(B, C, side, side, device=device).relu_().requires_grad_(True)  # (what the EncModule hands it)
    grad = torch.randn(B, K, C, device=device)

    def step(module: nn.Module) -> list[Tensor]:
        x.grad = None
        module.zero_grad(set_to_none=True)
        out = module(x)
        out.backward(grad)
        return [out.detach(), x.grad, module.codewords.grad, module.scale.grad]

    results = [step(m) for m in (ours, broadcast)]
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(*results, strict=True))
    results.clear()
    memory = []
    for module in (ours, broadcast):
        before = _peak_reset(device)
        step(module)
        memory.append(_peak_mib(device, before))
    ratio, seconds = _paired(lambda: step(broadcast), lambda: step(ours), device, sizes.rounds)
    return ratio, seconds / ratio, memory, worst


# ----------------------------------------------------------------------------- data and training


def write_dataset(path: Path, count: int, side: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> Path:
    """An encnet HDF5 dataset of ``count`` synthetic JPEG scenes (``side`` px) with ``num_classes`` classes."""
    classes = [f"class{i}" for i in range(num_classes)]
    with HDF5Writer(path, "benchmark", classes, voc_palette(num_classes), {"synthetic": {"seed": seed}}) as writer:
        writer.begin_split("train", capacity=count, labelled=True)
        for index in range(count):
            image, labels, _ = generate_indexed_scene(seed, index, side)
            labels = np.where(labels == IGNORE_INDEX, labels, labels % num_classes).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            writer.add(Sample(f"scene{index:04d}", buffer.getvalue(), side, side, encode_mask(labels),
                              class_pixel_counts(labels, num_classes)))  # fmt: skip
    return path


def _train_config(data: Path, out: Path, sizes: Sizes, device: torch.device, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "data": str(data), "output_dir": str(out), "model": sizes.model, "lateral": True, "iters": 1000,
        "batch_size": sizes.batch, "crop_size": sizes.crop, "base_size": sizes.base, "workers": 0,
        "val_split": "", "device": str(device), "log_every": 1000,
    }  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def _rate(
    config: TrainConfig, info: DistInfo, batch: tuple[Tensor, Tensor], device: torch.device, sizes: Sizes,
    channels_last: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Images/s of encnet's training step (``setup`` + ``train_step``) on one fixed batch, after warm-up steps:
    {rate, warmup (seconds of the warm-up steps), peak (MiB, CUDA), finite (last loss), sync_bn (layers)}.
    ``channels_last``: NHWC or not; None: the library's choice for the device (``device.channels_last``:
    always on CUDA, never on CPU), which the layout rows measure."""
    run = train_engine.setup(config, None, lambda event: None, info, channels_last=channels_last)
    images, masks = (t.to(device) for t in batch)
    before = _peak_reset(device)
    losses: list[Tensor] = []

    def step() -> None:
        losses[:] = [train_engine.train_step(run, images, masks, device)[0]]

    warmup = _seconds(step, device, sizes.warmup) * sizes.warmup
    seconds = _seconds(step, device, sizes.steps)
    return {
        "rate": images.shape[0] / seconds,
        "warmup": warmup,
        "peak": _peak_mib(device, before),
        "finite": bool(torch.isfinite(losses[0].detach())),
        "sync_bn": sum(isinstance(m, nn.SyncBatchNorm) for m in run.model.modules()),
    }


def _training_rows(
    rows: _Rows, sizes: Sizes, device: torch.device, data: Path, work: Path, batch: tuple[Tensor, Tensor], allow_compile: bool
) -> dict[str, float]:
    """Training images/s per configuration (each vs fp32); returns images/s by configuration name."""
    section = f"training step ({sizes.model} lateral, {NUM_CLASSES} classes, crop {sizes.crop}, batch {sizes.batch})"
    rates: dict[str, float] = {}
    for index, (name, amp, layout, compiled) in enumerate(TRAIN_CONFIGS):
        label = f"{name} / fp32" if name != "fp32" else "fp32 images/s"
        goal = "report" if name == "fp32" else "> 1x"
        if compiled and not allow_compile:
            reason = (COMPILE_ON_CPU if not is_cuda(device) else "left out (--no-compile, or the short profile)")
            rows.skip(section, label, goal, reason)
            continue
        with _section(rows, section, ((label, goal),)):
            torch.manual_seed(0)
            config = _train_config(data, work / f"train-{index}", sizes, device, amp=amp, compile=compiled)
            result = _rate(config, DistInfo(device=device), batch, device, sizes, channels_last=layout)
            rates[name] = rate = result["rate"]
            detail = f"{rate:.2f} images/s"
            detail += f", first {sizes.warmup} steps {result['warmup']:.1f} s (compilation)" if compiled else ""
            detail += "" if result["finite"] else ", non-finite loss"
            if name == "fp32":
                rows.add(section, label, rate, goal, detail, result["peak"])
            elif "fp32" in rates:
                rows.add(section, label, rate / rates["fp32"], goal, detail, result["peak"])
            else:
                rows.skip(section, label, goal, "no fp32 figure to compare with")
    return rates


def _first_batch(data: Path, sizes: Sizes) -> tuple[Tensor, Tensor]:
    """One training batch of encnet's training dataset and augmentation (the step rows reuse it)."""
    dataset = HDF5SegmentationDataset(data, "train", train_transform(sizes.base, sizes.crop))
    torch.manual_seed(0)
    samples = [dataset[index] for index in range(sizes.batch)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _loader_rows(rows: _Rows, sizes: Sizes, device: torch.device, data: Path, work: Path, workers: int, rates: dict[str, float]) -> None:
    """The training DataLoader alone against the fastest eager step's consumption, and a loop of loader + that step."""
    section = f"data loading ({workers} worker{'' if workers == 1 else 's'}, crop {sizes.crop})"
    names = (("loader samples/s / step images/s", ">= 1x"), ("data share of a loader + step loop", "<= 5%"))
    eager = {name: rate for name, rate in rates.items() if "compile" not in name}
    fastest = max(eager, key=eager.__getitem__) if eager else None
    amp, layout = next(((a, cl) for n, a, cl, _ in TRAIN_CONFIGS if n == fastest), ("off", is_cuda(device)))
    loader_rate, waited, total = None, 0.0, 0.0
    with _section(rows, section, names):
        torch.manual_seed(0)
        config = _train_config(data, work / "loader", sizes, device, workers=workers, amp=amp)
        loader_rate, waited, total = _loader_and_loop(config, sizes, device, layout)
    if loader_rate is None:
        return
    detail = f"loader {loader_rate:.1f} samples/s"
    if fastest is None:
        rows.skip(section, names[0][0], names[0][1], f"{detail}; no step figure to compare with")
    else:
        step_rate = eager[fastest]
        needed = math.ceil(max(workers, 1) * step_rate / loader_rate)
        rows.add(section, names[0][0], loader_rate / step_rate, names[0][1],
                 f"{detail}, {fastest} step {step_rate:.1f} images/s: about {needed} worker{'' if needed == 1 else 's'} would keep up")  # fmt: skip
    per_step = sizes.loader_batches
    rows.add(section, names[1][0], waited / total, names[1][1],
             f"waiting {waited / per_step * 1e3:.0f} ms of {total / per_step * 1e3:.0f} ms per step ({fastest or 'fp32'})")  # fmt: skip


def _loader_and_loop(config: TrainConfig, sizes: Sizes, device: torch.device, channels_last: bool) -> tuple[float, float, float]:
    """(loader samples/s, seconds waited for data, seconds in all) of encnet's training loader and of a
    loop of that loader + ``train_step`` (the loop of ``train._train``, synchronised after each step)."""
    run = train_engine.setup(config, None, lambda event: None, DistInfo(device=device), channels_last=channels_last)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        epoch = 0
        while True:
            run.sampler.set_epoch(epoch)
            yield from run.train_loader
            epoch += 1

    stream = batches()
    for _ in range(min(2, sizes.loader_batches)):  # worker start-up, page cache
        next(stream)
    start = time.perf_counter()
    samples = sum(next(stream)[0].shape[0] for _ in range(sizes.loader_batches))
    loader_rate = samples / (time.perf_counter() - start)
    waited = total = 0.0
    for index in range(sizes.warmup + sizes.loader_batches):
        start = time.perf_counter()
        images, masks = next(stream)
        fetched = time.perf_counter()
        train_engine.train_step(run, images, masks, device)
        synchronize(device)
        if index >= sizes.warmup:
            waited += fetched - start
            total += time.perf_counter() - start
    return loader_rate, waited, total


def _ddp_rows(rows: _Rows, sizes: Sizes, device: torch.device, data: Path, work: Path, batch: tuple[Tensor, Tensor]) -> None:
    """One process of DistributedDataParallel (SyncBatchNorm converted on CUDA) against the plain step (fp32, the library's layout)."""
    section = "distributed (one process)"
    backend = "nccl" if is_cuda(device) else "gloo"
    name = f"DDP ({backend}) step / plain step"
    with _section(rows, section, ((name, "<= 1.1x"),)):
        torch.manual_seed(0)
        plain = _rate(_train_config(data, work / "plain", sizes, device), DistInfo(device=device), batch, device, sizes)
        if dist.is_initialized():
            raise RuntimeError("a process group is already initialised in this process")
        kwargs = {"device_id": device} if backend == "nccl" else {}
        store = work / f"ddp-store-{os.getpid()}"  # a file store: no free-port race with other processes
        store.unlink(missing_ok=True)
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, **kwargs)
        info = DistInfo(0, 1, 0, device, backend)
        completed = False
        try:
            torch.manual_seed(0)
            ddp = _rate(_train_config(data, work / "ddp", sizes, device), info, batch, device, sizes)
            completed = True
        finally:
            shutdown_distributed(info, completed)
        synced = ddp["sync_bn"]
        sync = f"{synced} SyncBatchNorm layers" if synced else "no SyncBatchNorm (PyTorch's needs a GPU; encnet skips it on CPU)"
        rows.add(section, name, plain["rate"] / ddp["rate"], "<= 1.1x",
                 f"{sync}; world size 1{'' if ddp['finite'] else ', non-finite loss'}", ddp["peak"])  # fmt: skip


# ----------------------------------------------------------------------------- heads and evaluation


def _torchvision(name: str, classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

    if name == "fcn":
        return fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=classes)
    return deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=classes)


def _heads_rows(rows: _Rows, sizes: Sizes, device: torch.device) -> None:
    """EncNet-ResNet50 vs torchvision (21 classes, fp32), as benchmarks/heads.py on CPU."""
    section = f"EncNet-ResNet50 vs torchvision (fp32, batch {sizes.batch}, {sizes.crop}x{sizes.crop})"
    for name, goal, train in (("train step, EncNet / FCN", "<= 1.05x", True), ("inference, EncNet / DeepLabV3", "<= 0.85x", False)):
        with _section(rows, section, ((name, goal),)):
            ratio, seconds = _heads_pair(sizes, device, train)
            rows.add(section, name, ratio, goal, f"EncNet {seconds * 1e3:.0f} ms per {'step' if train else 'batch'}")


def _heads_pair(sizes: Sizes, device: torch.device, train: bool) -> tuple[float, float]:
    """EncNet / FCN training step (forward + loss + backward) or EncNet / DeepLabV3 inference, interleaved rounds."""
    classes = 21
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, sizes.crop, sizes.crop, generator=generator).to(device)
    y = torch.randint(0, classes, (sizes.batch, sizes.crop, sizes.crop), generator=generator).to(device)
    torch.manual_seed(0)
    encnet = create_model("encnet_resnet50", classes, lateral=False, aux=True, se_loss=True).to(device).train(train)
    theirs = _torchvision("fcn" if train else "deeplabv3", classes).to(device).train(train)
    ours_loss = SegmentationLoss(aux_weight=AUX_WEIGHT)

    def tv_loss(outputs: dict[str, Tensor], labels: Tensor) -> Tensor:
        loss = F.cross_entropy(outputs["out"], labels, ignore_index=IGNORE_INDEX)
        return loss + AUX_WEIGHT * F.cross_entropy(outputs["aux"], labels, ignore_index=IGNORE_INDEX)

    def call(model: nn.Module, loss_fn: Callable[[dict[str, Tensor], Tensor], Tensor]) -> Callable[[], None]:
        def step() -> None:
            if train:
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
            else:
                with torch.inference_mode():
                    model(x)["out"]

        return step

    return _paired(call(encnet, lambda o, t: ours_loss(o, t)[0]), call(theirs, tv_loss), device, sizes.rounds)


def _evaluation_rows(rows: _Rows, sizes: Sizes, device: torch.device) -> None:
    """Multi-scale + flip ``infer()`` against the pure forwards of the views it runs (batched 8 and 1 at a time)."""
    section = f"multi-scale + flip evaluation ({sizes.model}, 6 scales, base {sizes.base}, crop {sizes.crop})"
    names = (("infer() / pure forwards, batch 8", "<= 10%"), ("one view per forward / batch 8", ">= 1x"))
    with _section(rows, section, names):
        t_ours, t_pure, t_one, views = _evaluation_times(sizes, device)
        image = f"{sizes.eval_image[0]}x{sizes.eval_image[1]}"
        rows.add(section, names[0][0], t_ours / t_pure - 1, names[0][1], f"{views} views of one {image} image; infer() {t_ours * 1e3:.0f} ms")
        rows.add(section, names[1][0], t_one / t_ours, names[1][1], f"{t_one * 1e3:.0f} ms one at a time")


def _evaluation_times(sizes: Sizes, device: torch.device) -> tuple[float, float, float, int]:
    """Median seconds of infer() batched, of the replayed forwards alone, of infer() one view at a time; the views."""
    torch.manual_seed(0)
    model = create_model(sizes.model, NUM_CLASSES, lateral=True).to(device).eval()

    def forward(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(x)["out"]

    image = torch.randn(3, *sizes.eval_image, device=device)
    config = InferenceConfig(scales=SCALES, flip=True, crop_size=sizes.crop, base_size=sizes.base, batch_size=8)
    single = InferenceConfig(**{**config.__dict__, "batch_size": 1})
    recorded: list[Tensor] = []

    def recording(x: Tensor) -> Tensor:
        recorded.append(x.clone())
        return forward(x)

    infer(recording, image, NUM_CLASSES, config)  # records the views; also the warm-up
    infer(forward, image, NUM_CLASSES, single)

    def replay() -> None:
        for views in recorded:
            forward(views)

    ours, pure, one = [], [], []
    for _ in range(max(sizes.rounds, 3)):  # interleaved
        ours.append(_seconds(lambda: infer(forward, image, NUM_CLASSES, config), device))
        pure.append(_seconds(replay, device))
        one.append(_seconds(lambda: infer(forward, image, NUM_CLASSES, single), device))
    medians = [statistics.median(v) for v in (ours, pure, one)]
    return medians[0], medians[1], medians[2], sum(v.shape[0] for v in recorded)


# ----------------------------------------------------------------------------- the run


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
    }
    if is_cuda(device):
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)  # fmt: skip
    return env


def _device_name(device: torch.device) -> str:
    if is_cuda(device):
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "CPU"


def run_benchmark(config: BenchConfig, say: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every row of the profile on ``config.device`` (tiny sizes on a CPU); ``say`` gets progress lines."""
    say = say or (lambda text: None)
    start = time.perf_counter()
    device = resolve_device(config.device)
    if is_cuda(device) and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    tiny = not is_cuda(device)
    sizes = SIZES[config.profile]
    if tiny:  # the profile's rows at the tiny sizes
        sizes = dataclasses.replace(SIZES["tiny"], heads=sizes.heads)
    report = BenchReport(str(device), _device_name(device), tiny, config.profile, _environment(device))
    if tiny:
        say("no CUDA device: running the same code paths at tiny sizes on the CPU (the figures are no claims)")
    rows = _Rows(report, say)
    workers = config.workers if config.workers is not None else min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="encnet-bench-") as temp:
        work = Path(temp)
        names = (("time, broadcast / ours", ">= 20x"), ("extra peak memory, broadcast / ours", ">= 15x"),
                 ("max relative difference, ours vs broadcast", "<= 1e-4"))  # fmt: skip
        with _section(rows, "Encoding layer", names):
            _encoding_rows(rows, sizes, device)
        say(f"writing a {sizes.images}-image dataset ({sizes.image_side} px, {NUM_CLASSES} classes)")
        data = write_dataset(work / "bench.h5", sizes.images, sizes.image_side)
        batch = _first_batch(data, sizes)
        rates = _training_rows(rows, sizes, device, data, work, batch, config.compile and sizes.compile and not tiny)
        _loader_rows(rows, sizes, device, data, work, workers, rates)
        if sizes.heads:
            _heads_rows(rows, sizes, device)
            _evaluation_rows(rows, sizes, device)
        _ddp_rows(rows, sizes, device, data, work, batch)
    report.environment["load_average_end"] = round(os.getloadavg()[0], 2)
    report.seconds = time.perf_counter() - start
    return report
