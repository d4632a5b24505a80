"""``encnet report``: one picture of a training run (and an HTML page around it).

From ``RUN_DIR/metrics.jsonl`` (``type`` "train" records: loss terms, lr, throughput; ``type`` "val":
pixAcc / mIoU per epoch) and ``RUN_DIR/best.pt`` evaluated on a few images of the validation split of
``RUN_DIR/config.toml``'s ``data`` (per-class IoU; a grid of image | ground truth | prediction with a
legend of the classes shown). Small and quick: ``limit`` images, the CPU unless CUDA is there.
"""

from __future__ import annotations

import base64
import html
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encnet_core.errors import ConfigError, DataError
from encnet_core.paths import atomic_write

__all__ = ["ReportOptions", "ReportResult", "read_metrics", "write_report", "PANELS"]

PANELS = ("loss", "learning rate", "throughput", "validation", "per-class IoU (best.pt)", "validation images")
"""The report's panels, in order (each is an axes title, the grid a subfigure title)."""

_LOSS_KEYS = ("loss", "seg", "aux", "se")  # the total, then its terms as configured


@dataclass(frozen=True)
class ReportOptions:
    """Options of ``encnet report``."""

    out: Path | None = None  # PNG to write (default RUN_DIR/report.png)
    html: bool = False  # also write report.html beside the PNG, embedding it, with a table of the final numbers
    data: Path | None = None  # prepared dataset (default: config.toml's data)
    device: str = "auto"  # auto: CUDA when there, else the CPU
    limit: int = 32  # validation images evaluated for the per-class IoU
    images: int = 4  # validation images in the grid

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if not 0 <= self.images <= 16:
            raise ConfigError(f"--images must be between 0 and 16, got {self.images}")


@dataclass
class ReportResult:
    """What ``write_report`` wrote and showed."""

    png: Path
    html: Path | None
    panels: list[str]  # titles of the panels drawn
    final: dict[str, Any]  # the last train record's and the best validation's numbers
    best: dict[str, Any] | None = None  # best.pt evaluated: images, pixAcc, mIoU, per-class IoU
    notes: list[str] = field(default_factory=list)  # what was left out and why


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The "train" and "val" records of ``run_dir/metrics.jsonl``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir} is not a folder; give the --output-dir of an encnet train run")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir} has no metrics.jsonl; give the --output-dir of an encnet train run")
    train, val = [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a line cut short by a run that is still writing or was killed
                continue
            raise DataError(f"{path} line {number} is not JSON; is this a metrics.jsonl written by encnet train?") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number} is not a JSON object")
        if record.get("type") == "train" and isinstance(record.get("iteration"), int):
            train.append(record)
        elif record.get("type") == "val" and isinstance(record.get("epoch"), int):
            val.append(record)
    if not train and not val:
        raise DataError(f"{path} has no train or val records yet; report again once the run has logged")
    return train, val


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    return data.get("train", data) if isinstance(data.get("train", data), dict) else {}


def _data_path(run_dir: Path, config: dict[str, Any], given: Path | None) -> Path | None:
    if given is not None:
        if not given.is_file():
            raise ConfigError(f"--data {given} is not a file")
        return given
    value = config.get("data")
    if not isinstance(value, str) or not value:
        return None
    for candidate in (Path(value), run_dir / value, run_dir.parent / value):
        if candidate.is_file():
            return candidate
    return None


def _series(records: list[dict[str, Any]], key: str, by: str = "iteration") -> tuple[list[float], list[float]]:
    pairs = [(r[by], r[key]) for r in records if isinstance(r.get(key), int | float) and isinstance(r.get(by), int | float)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _evaluate_best(best: Path, data: Path, split: str, options: ReportOptions) -> tuple[dict[str, Any], list[tuple]]:
    """best.pt on the first ``limit`` images of ``split``: the metrics, and (rgb, label, prediction) for the grid."""
    import torch

    from encnet_core.data.dataset import read_image_and_mask
    from encnet_core.engine.device import resolve_device
    from encnet_core.engine.distributed import DistInfo
    from encnet_core.engine.evaluate import EvaluateOptions, evaluate_loaded
    from encnet_core.engine.inference import InferenceConfig, infer
    from encnet_core.weights.model_files import load_model

    device = resolve_device(options.device)
    model = load_model(best, device)
    inference = InferenceConfig(crop_size=model.crop_size, base_size=model.base_size)
    result = evaluate_loaded(
        model, data, EvaluateOptions(split=split, inference=inference, workers=0, limit=options.limit), DistInfo(device=device),
        model_name=best.name,
    )  # fmt: skip
    samples = []
    with torch.no_grad():
        for index in range(min(options.images, result["images"])):
            rgb, labels = read_image_and_mask(data, split, index)
            image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # (3, H, W) uint8
            scores = infer(model.forward, model.normalize(image), model.num_classes, inference)
            samples.append((index, rgb, labels, scores.argmax(0).to(torch.uint8).cpu().numpy()))
    return {**result, "palette": model.palette}, samples


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="dimgray", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _refuse_classification(run_dir: Path, config: dict[str, Any]) -> None:
    """The report draws segmentation runs only (``TaskFacts.reported``): one line for a classification run (its model is a classifier)."""
    from encnet_core.errors import ConfigError
    from encnet_core.models import list_models, model_task
    from encnet_core.tasks import facts

    model = config.get("model")
    if model in list_models() and not facts(model_task(model)).reported:
        raise ConfigError(
            f"{run_dir} is a classification run ({model}): encnet report draws segmentation runs; its numbers "
            f"are in {run_dir / 'metrics.jsonl'}, and `encnet evaluate {run_dir / 'best.pt'} DATA` gives per-class accuracy"
        )


def write_report(run_dir: Path, options: ReportOptions = ReportOptions()) -> ReportResult:
    """Draw the run's report as one PNG (and, with ``options.html``, report.html around it)."""
    from encnet_core import viz
    from encnet_core.paths import check_output_file

    run_dir = Path(run_dir)
    train, val = read_metrics(run_dir)
    out = options.out if options.out is not None else run_dir / "report.png"
    check_output_file(out, "--out")
    html_path = out.with_suffix(".html") if options.html else None
    if html_path is not None:
        check_output_file(html_path, "--html")
    config = _config(run_dir)
    _refuse_classification(run_dir, config)
    notes: list[str] = []
    best_path = run_dir / "best.pt"
    split = config.get("val_split", "val") or "val"
    data = _data_path(run_dir, config, options.data)
    best, samples = None, []
    if not best_path.is_file():
        notes.append("no best.pt yet (written at the first validation): per-class IoU and predictions left out")
    elif data is None:
        notes.append(f"the dataset {config.get('data')!r} of config.toml is not there (give --data): per-class IoU and predictions left out")
    else:
        best, samples = _evaluate_best(best_path, data, split, options)

    rows = max(1, len(samples))
    figure = viz.new_figure(16, 8.5 + (2.6 * rows if samples else 0))
    top, bottom = figure.subfigures(2, 1, height_ratios=[8.5, 2.6 * rows]) if samples else (figure, None)
    axes = top.subplot_mosaic([["loss", "lr", "speed"], ["val", "iou", "iou"]])
    panels = []

    ax = axes["loss"]
    for key in _LOSS_KEYS + tuple(sorted({k for r in train for k in r} - set(_LOSS_KEYS) - _NOT_LOSSES)):
        x, y = _series(train, key)
        if x:
            _plot(ax, x, y, label="total" if key == "loss" else key, linewidth=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        _note(ax, "no train records")
    ax.set_title(PANELS[0])

    ax = axes["lr"]
    x, y = _series(train, "lr")
    _plot(ax, x, y, color="tab:purple")
    ax.set_xlabel("iteration")
    ax.set_ylabel("backbone lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title(PANELS[1])

    ax = axes["speed"]
    x, y = _series(train, "images_per_s")
    _plot(ax, x, y, color="tab:green", label="images/s (all processes)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("images per second")
    if y:  # the median of what is plotted, in its unit; iterations/s beside it
        _, its = _series(train, "it_per_s")
        per_iteration = f", {np.median(its):.2f} iterations/s" if its else ""
        ax.axhline(float(np.median(y)), color="gray", linestyle="--", linewidth=1,
                   label=f"median {np.median(y):.1f} images/s{per_iteration}")  # fmt: skip
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(PANELS[2])

    ax = axes["val"]
    for key, style in (("pixAcc", "-o"), ("mIoU", "-s")):
        x, y = _series(val, key, by="epoch")
        if x:
            ax.plot(x, y, style, markersize=3, label=key)
            ax.annotate(f"{y[-1]:.3f}", (x[-1], y[-1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if len(set(x)) == 1:  # one validation (a run shorter than an epoch validates at its end only)
                ax.set_xlim(x[0] - 1, x[0] + 1)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        _note(ax, "no validation records")
    ax.set_title(PANELS[3])

    ax = axes["iou"]
    if best is not None:
        _iou_bars(ax, best["classes"], best["iou"])
    else:
        _note(ax, notes[-1])
    ax.set_title(f"{PANELS[4]}, {best['images']} {split} images" if best else PANELS[4])
    panels = [axes[k].get_title() for k in ("loss", "lr", "speed", "val", "iou")]

    if samples and bottom is not None:
        palette, classes = best["palette"], best["classes"]
        cells = [
            [(f"{split} {i}: image", rgb), ("ground truth (white: ignored)", viz.colour_labels(labels, palette)),
             ("prediction (best.pt)", viz.colour_labels(pred, palette))]
            for i, rgb, labels, pred in samples
        ]  # fmt: skip
        entries = viz.legend_entries([m for _, _, lab, pred in samples for m in (lab, pred)], classes, palette)
        viz.grid_figure(cells, entries, PANELS[5], figure=bottom)
        panels.append(PANELS[5])
    about = f": {config['model']} on {Path(str(config.get('data'))).name}" if config.get("model") else ""
    figure.suptitle(viz.plain(f"encnet report, run {run_dir}{about}"), fontsize=12)
    viz.save_figure(figure, out)

    final = _final(train, val, best)
    result = ReportResult(png=out, html=html_path, panels=panels, final=final, best=_best_summary(best), notes=notes)
    if html_path is not None:
        _write_html(html_path, run_dir, result)
    return result


_NOT_LOSSES = {"type", "iteration", "epoch", "lr", "it_per_s", "images_per_s", "data_share"}


def _plot(ax: Any, x: list[float], y: list[float], **style: Any) -> None:
    """``ax.plot`` with a marker on a series of one point (a line through one point draws nothing)."""
    ax.plot(x, y, **({"marker": "o", "markersize": 4} if len(x) == 1 else {}), **style)


IOU_PANEL_POINTS = 700
"""Width of the per-class IoU panel in points (about 10 of the report's 16 inches): how much room a bar's label has."""


def _iou_bars(ax: Any, classes: list[str], iou: list[float | None]) -> None:
    """Bars of the per-class IoU (the 20 worst and 20 best past 40 classes), each labelled with its value:
    9 pt across the bar where it is over 30 pt wide, else 8 pt turned upright; names cut to 20 characters."""
    from encnet_core.viz import plain, short

    scored = [(plain(c), v) for c, v in zip(classes, iou, strict=True) if v is not None]
    gap = None
    if len(scored) > 40:  # the 20 worst and the 20 best, sorted
        scored = sorted(scored, key=lambda item: item[1])
        scored, gap = scored[:20] + [("...", 0.0)] + scored[-20:], 20
    bars = ax.bar(range(len(scored)), [v for _, v in scored], color="tab:blue")
    labels = ["" if i == gap else f"{v:.2f}" for i, (_, v) in enumerate(scored)]
    if IOU_PANEL_POINTS / max(1, len(scored)) > 30:
        ax.bar_label(bars, labels=labels, fontsize=9, padding=2)
    else:
        ax.bar_label(bars, labels=labels, fontsize=8, padding=2, rotation=90)
    ax.set_xticks(range(len(scored)), [short(n, 20) for n, _ in scored], rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylim(0, 1.12)  # room above a bar of 1.0 for its label
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("IoU")


def _final(train: list[dict[str, Any]], val: list[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, Any]:
    final: dict[str, Any] = {}
    if train:
        last = train[-1]
        final["iterations"] = last["iteration"]
        final.update({f"train {k}": last[k] for k in (*_LOSS_KEYS, "lr", "images_per_s") if isinstance(last.get(k), int | float)})
    if val:
        final.update({"last val epoch": val[-1]["epoch"], "last val pixAcc": val[-1].get("pixAcc"), "last val mIoU": val[-1].get("mIoU")})
        top = max(val, key=lambda r: r.get("score", r.get("mIoU", 0.0)) or 0.0)
        final.update({"best val epoch": top["epoch"], "best val pixAcc": top.get("pixAcc"), "best val mIoU": top.get("mIoU")})
    if best is not None:
        final.update({"best.pt images evaluated": best["images"], "best.pt pixAcc": best["pixAcc"], "best.pt mIoU": best["mIoU"]})
    return final


def _best_summary(best: dict[str, Any] | None) -> dict[str, Any] | None:
    if best is None:
        return None
    return {k: best[k] for k in ("dataset", "split", "images", "pixAcc", "mIoU", "classes", "iou")}


def _write_html(path: Path, run_dir: Path, result: ReportResult) -> None:
    """A self-contained page: the PNG embedded (base64), the final numbers and the per-class IoU as tables."""
    esc = html.escape
    png = base64.b64encode(result.png.read_bytes()).decode("ascii")

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else esc(str(value))

    rows = "".join(f"<tr><th>{esc(k)}</th><td>{cell(v)}</td></tr>" for k, v in result.final.items())
    iou = ""
    if result.best is not None:
        iou_rows = "".join(
            f"<tr><td>{esc(str(c))}</td><td>{'-' if v is None else f'{v:.4f}'}</td></tr>"
            for c, v in zip(result.best["classes"], result.best["iou"], strict=True)
        )
        iou = f"<h2>per-class IoU of best.pt</h2><table><tr><th>class</th><th>IoU</th></tr>{iou_rows}</table>"
    notes = "".join(f"<p class=note>{esc(n)}</p>" for n in result.notes)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>encnet report: {esc(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}
img{{max-width:100%}} .note{{color:#666}}</style></head>
<body><h1>encnet report: {esc(str(run_dir))}</h1>{notes}
<h2>final numbers</h2><table>{rows}</table>
<p><img alt="report panels: {esc(', '.join(result.panels))}" src="data:image/png;base64,{png}"></p>
{iou}</body></html>
"""
    with atomic_write(path) as tmp:
        tmp.write_text(page)
