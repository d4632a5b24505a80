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
