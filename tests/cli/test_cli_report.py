"""`encnet report` and `encnet show` end to end: what the pictures hold, and one-line errors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import make_synthetic, one_error_line
from PIL import Image
from typer.testing import CliRunner

from encnet_cli.main import app
from encnet_core.config import TrainConfig
from encnet_core.report import PANELS, ReportOptions, read_metrics, write_report

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dataset, run folder): encnet_tiny for 2 epochs of 2 iterations, validated after each."""
    from encnet_core.engine.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cli_report")
    data = make_synthetic(folder, 8, 6)
    torch.manual_seed(0)
    config = TrainConfig(data=str(data), output_dir=str(folder / "run"), model="encnet_tiny", iters=4, batch_size=4,
                         crop_size=32, base_size=48, workers=0, device="cpu", log_every=1)  # fmt: skip
    train(config)
    yield data, folder / "run"
    torch.set_num_threads(threads)


def test_report_png_and_html_hold_every_panel(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    train_records, val_records = read_metrics(run_dir)
    assert len(train_records) == 4 and [r["epoch"] for r in val_records] == [1, 2]
    out = tmp_path / "r.png"
    result = run("report", run_dir, "--out", out, "--html", "--device", "cpu", "--images", "2")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "best.pt on 6 images" in result.output
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width == 1600 and png.height > 1000
    page = (tmp_path / "r.html").read_text()
    assert 'src="data:image/png;base64,' in page and "<th>best.pt mIoU</th>" in page
    assert page.count("<tr><td>") == 14  # a per-class IoU row for each synthetic class


def test_report_panels_and_numbers(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    result = write_report(run_dir, ReportOptions(out=tmp_path / "r.png", device="cpu", images=3, limit=4))
    assert [title.split(",")[0] for title in result.panels] == list(PANELS)
    assert result.panels[4] == "per-class IoU (best.pt), 4 val images"
    _, val_records = read_metrics(run_dir)
    assert result.final["last val mIoU"] == val_records[-1]["mIoU"] and result.final["iterations"] == 4
    assert result.best["images"] == 4 and len(result.best["iou"]) == 14 and result.notes == []


def test_report_without_best_checkpoint_says_so(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("metrics.jsonl", "config.toml"):
        shutil.copy(run_dir / name, copy / name)
    result = run("report", copy)
    assert result.exit_code == 0, result.output
    assert "note: no best.pt yet" in result.output and (copy / "report.png").is_file()
    assert "validation images" not in write_report(copy).panels


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    assert "has no metrics.jsonl" in one_error_line(run("report", tmp_path))
    assert "is not a folder" in one_error_line(run("report", tmp_path / "missing"))
    (tmp_path / "metrics.jsonl").write_text("not json\n{}\n")
    assert "line 1 is not JSON" in one_error_line(run("report", tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"type": "skipped"}\n')
    assert "no train or val records yet" in one_error_line(run("report", tmp_path))
    assert "--images" in one_error_line(run("report", tmp_path, "--images", "99"))


def test_show_writes_a_grid_and_names_the_classes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    out = tmp_path / "show.png"
    result = run("show", data, "--out", out)
    assert result.exit_code == 0, result.output
    assert "images 0..5 of split val" in result.output and "classes present:" in result.output
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 600
    one = run("show", data, "--split", "train", "--index", "3", "--out", out)
    assert one.exit_code == 0 and "image 3 of split train" in one.output, one.output


def test_show_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    out = tmp_path / "s.png"
    assert "--index 6 is out of range" in one_error_line(run("show", data, "--index", "6", "--out", out))
    assert "no image named 'nope'" in one_error_line(run("show", data, "--name", "nope", "--out", out))
    assert "no split 'test'" in one_error_line(run("show", data, "--split", "test", "--out", out))
    both = run("show", data, "--index", "0", "--name", "x", "--out", out)
    assert both.exit_code == 2 and "not both" in both.output
    assert not out.exists()


def test_iou_panel_with_many_classes_shows_the_worst_and_best_20() -> None:
    from encnet_core.report import _iou_bars
    from encnet_core.viz import new_figure

    ax = new_figure(8, 4).add_subplot()
    _iou_bars(ax, [f"c{i}" for i in range(60)], [i / 100 for i in range(59)] + [None])
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert len(names) == 41 and names[:2] == ["c0", "c1"] and names[20] == "..." and names[-1] == "c58"


def _saved_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib figures write_report saves (still written to disk)."""
    from encnet_core import viz

    figures: list = []
    original = viz.save_figure

    def keep(figure, path, dpi=100):
        figures.append(figure)
        original(figure, path, dpi)

    monkeypatch.setattr(viz, "save_figure", keep)
    return figures


def _axes(figure) -> dict:
    """Every axes of the report (its subfigures' too) by title."""
    return {ax.get_title(): ax for ax in [*figure.axes, *(a for sub in figure.subfigs for a in sub.axes)]}


def _no_warnings(call, caplog: pytest.LogCaptureFixture):
    """``call()`` with every Python warning an error (torchvision's decoder deprecation aside) and no
    matplotlib log warning."""
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        with caplog.at_level(logging.WARNING):
            result = call()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("matplotlib")] == []
    return result


def test_report_throughput_median_is_of_what_is_plotted(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The panel plots images/s; its median line and legend say images/s (the old note said
    "median N iterations/s" on the images/s axis), with the iterations/s beside it."""
    import numpy as np

    _, run_dir = trained
    figures = _saved_figures(monkeypatch)
    write_report(run_dir, ReportOptions(out=tmp_path / "r.png", device="cpu", images=1, limit=2))
    ax = _axes(figures[0])["throughput"]
    train_records, _ = read_metrics(run_dir)
    images = np.median([r["images_per_s"] for r in train_records])
    iterations = np.median([r["it_per_s"] for r in train_records])
    assert ax.get_ylabel() == "images per second"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "images/s (all processes)", f"median {images:.1f} images/s, {iterations:.2f} iterations/s"]  # fmt: skip
    curve, median = ax.get_lines()
    assert list(curve.get_ydata()) == [r["images_per_s"] for r in train_records]
    assert list(median.get_ydata()) == [images, images] and len(ax.texts) == 0


def test_report_iou_labels_are_readable(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bar's value at 9 pt (was 6 pt: about 8 px at 100 dpi), the class names at 8 pt."""
    _, run_dir = trained
    figures = _saved_figures(monkeypatch)
    result = write_report(run_dir, ReportOptions(out=tmp_path / "r.png", device="cpu", images=0, limit=2))
    ax = _axes(figures[0])[result.panels[4]]
    scored = [v for v in result.best["iou"] if v is not None]
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in scored]
    assert {t.get_fontsize() for t in ax.texts} == {9.0} and {t.get_rotation() for t in ax.texts} == {0.0}
    assert {t.get_fontsize() for t in ax.get_xticklabels()} == {8.0}


def test_report_draws_without_warnings(
    trained: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, run_dir = trained
    result = _no_warnings(
        lambda: write_report(run_dir, ReportOptions(out=tmp_path / "r.png", device="cpu", images=2, limit=2)),
        caplog,
    )
    assert result.panels[-1] == PANELS[5]


def test_report_of_150_long_class_names_keeps_its_layout(trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """An ADE20K-sized run whose predictions hold every class: the legend used to take 5 columns of
    80-character names and matplotlib warned "constrained_layout not applied because axes sizes
    collapsed to zero" (the pictures squeezed away); now two columns, "+N more", no warning."""
    import numpy as np

    from encnet_core import report
    from encnet_core.data.sources.ade20k import ADE20K_CLASSES
    from encnet_core.palette import voc_palette

    classes = list(ADE20K_CLASSES)
    rng = np.random.default_rng(0)

    def fake_best(best, data, split, options):
        samples = [(i, rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), rng.integers(0, 150, (40, 48), dtype=np.uint8),
                    rng.integers(0, 150, (40, 48), dtype=np.uint8)) for i in range(options.images)]  # fmt: skip
        iou = [float(v) for v in rng.uniform(0, 1, len(classes))]
        return {"classes": classes, "iou": iou, "images": 2, "pixAcc": 0.5, "mIoU": float(np.mean(iou)), "dataset": "d",
                "split": "val", "palette": voc_palette(151)[1:]}, samples  # fmt: skip

    monkeypatch.setattr(report, "_evaluate_best", fake_best)
    figures = _saved_figures(monkeypatch)
    _, run_dir = trained
    _no_warnings(
        lambda: write_report(run_dir, ReportOptions(out=tmp_path / "r.png", device="cpu", images=2)), caplog
    )
    legend = figures[0].subfigs[1].legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 34 and texts[-1] == "+117 more (fewer pixels)"  # 2 columns of 17 lines beside 2 rows
    iou = _axes(figures[0])["per-class IoU (best.pt), 2 val images"]
    assert (
        len(iou.texts) == 41
        and iou.texts[20].get_text() == ""
        and {t.get_rotation() for t in iou.texts} == {90.0}
    )


def test_report_shows_a_lone_record_as_a_point(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run shorter than log_every has one train record: a line through one point drew nothing."""
    _, run_dir = trained
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    figures = _saved_figures(monkeypatch)
    write_report(copy, ReportOptions(out=tmp_path / "r.png"))
    axes = _axes(figures[0])
    for title in ("loss", "learning rate", "throughput"):
        assert {line.get_marker() for line in axes[title].get_lines() if len(line.get_xdata()) == 1} == {
            "o"
        }, title
