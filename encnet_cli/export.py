"""``encnet export``: slim, self-describing models (weights, safetensors, TorchScript, pt2, ONNX, OpenVINO IR)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, safe_text
from encnet_core.choices import EXPORT_FORMATS

_Format = StrEnum("Format", {name: name for name in EXPORT_FORMATS})  # choices from the library's list of formats


def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (best.pt/last.pt), an export (not ONNX/OpenVINO), or a zoo name (encnet weights list)."),
    out: Path = typer.Argument(..., help="File to write (openvino: OUT.xml, with OUT.bin beside it)."),
    fmt: _Format = typer.Option("weights", "--format", "-f", help="Export format (safetensors: no pickle, no code; torchscript/pt2: programs; openvino: an IR, .xml + .bin)."),
    half: bool = typer.Option(False, "--half", help="Store float16 weights (half the size; fp16 inference on GPUs; openvino: float16 weights, float32 input)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Reload the export and compare it with the PyTorch model."),
    hash_name: bool = typer.Option(False, "--hash-name", help="Append the first 8 hex digits of the file's sha256 to its name."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    int8: bool = typer.Option(False, "--int8", help="onnx or openvino: quantize to int8 (ONNX Runtime's static QDQ quantizer; needs --calibrate)."),
    calibrate: Path | None = typer.Option(None, "--calibrate", help="Prepared dataset (.h5) whose images calibrate the --int8 activation ranges."),
    calib_images: int = typer.Option(32, "--calib-images", help="Images of the split used to calibrate --int8, spread over it (one at a time: memory does not grow with the count).", min=1),
    calib_split: str = typer.Option("train", "--calib-split", help="Split of --calibrate to take the images from."),
    json_out: opt.JsonOut = None,
    trust_code: opt.TrustCode = False,
) -> None:
    """Export a trained model with its metadata (classes, palette, normalisation, sizes, training summary).

    evaluate and predict accept every format; ONNX needs `pip install 'encnet[onnx]'`, OpenVINO
    `pip install 'encnet[openvino]'`. safetensors
    (no pickle, no code) is the format to share weights; TorchScript and pt2 are programs that
    others open only with --trust-code. --int8 --calibrate DATA.h5 writes an int8 ONNX model or
    OpenVINO IR (NNCF, pip install 'encnet[nncf]'); the IR ran 4.7x as fast as eager PyTorch on a
    2-core AVX-512 VNNI CPU (docs/export.md); the agreement with the float model is reported.
    """
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.weights.export import export_model  # torch: when the command runs, not for --help

    check_json_target(json_out)
    with ProgressReporter(enabled=not json_to_stdout(json_out)) as progress:  # --int8: the calibration images
        result = export_model(
            checkpoint, out, opt.value(fmt), half=half, verify=verify, hash_name=hash_name, overwrite=overwrite, trust_code=trust_code,
            int8=int8, calibrate=calibrate, calib_images=calib_images, calib_split=calib_split, progress=progress,
        )  # fmt: skip
    summary = {
        "path": str(result.path),
        "format": result.format,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "max_abs_diff": result.max_abs_diff,
        "model": (result.metadata.get("model_config") or {}).get("name"),
        "classes": len(result.metadata["classes"]),
        "precision": result.metadata.get("precision", "fp32"),
    }
    if result.mask_agreement is not None:
        summary["mask_agreement"] = result.mask_agreement
    if json_out is not None:
        emit_json(summary, json_out)
        if json_to_stdout(json_out):
            return
    table = Table(title=f"encnet export -> {safe_text(result.path)}", show_header=False)
    for key, value in summary.items():
        if key == "max_abs_diff" and result.mask_agreement is not None:
            value = f"{value:.3g} (int8 vs PyTorch logits)"
        elif key == "max_abs_diff":
            value = "not verified (--no-verify)" if value is None else f"{value:.3g} (verified against PyTorch)"
        elif key == "mask_agreement":
            value = f"{value:.2%} of calibration pixels get PyTorch's class"
        elif key == "bytes":
            value = f"{value / 1e6:.2f} MB"
        table.add_row(key, safe_text(value))
    console.print(table)
