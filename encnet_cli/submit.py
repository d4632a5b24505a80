"""``encnet submit``: a model's predictions on a test split, laid out and archived as an evaluation server takes them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from encnet_cli import _options as opt
from encnet_cli._output import check_json_target, console, emit_json, json_to_stdout, plural, safe_text
from encnet_core.choices import SUBMIT_SERVERS

Server = StrEnum("Server", {name: name for name in SUBMIT_SERVERS})  # type: ignore[misc]
"""--server choices (engine/submit.py SERVERS)."""


def submit(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Training checkpoint, exported model, or a zoo name (encnet weights list; pulled on first use)."),
    data: Path = typer.Argument(..., help="Prepared dataset (.h5; its --split, names from the file) or a folder of images (searched recursively; names from the file stems)."),
    server: Server = typer.Option(..., "--server", help="Evaluation server: voc (PASCAL VOC 2012), ade20k (ADE20K scene parsing) or cityscapes; docs/submission.md shows each layout."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder the server's layout is written under (the .zip of ade20k and cityscapes goes beside it)."),
    split: str = typer.Option("test", "--split", help="Split of a prepared dataset."),
    scales: opt.Scales = None,
    slide: opt.Slide = False,
    flip: opt.Flip = False,
    crop_size: opt.Crop = None,
    base_size: opt.Base = None,
    stride_rate: opt.Stride = 2 / 3,
    merge: opt.MergeOpt = opt.Merge.prob,
    protocol: opt.Protocol = typer.Option(
        opt.Protocol.none, "--protocol",
        help="reference: predict as PyTorch-Encoding's test.py for the server's dataset (its scales, flip, --merge reference, "
        "stride 2/3, black padding, the model's base/crop size); --scales, --slide, --flip, --merge, --stride-rate, "
        "--crop-size and --base-size are refused with it.",
    ),  # fmt: skip
    batch_size: int = typer.Option(8, "--batch-size", help="Views per forward pass."),
    device: opt.Device = "auto",
    amp: opt.AmpOpt = opt.Amp.off,
    engine: opt.EngineOpt = opt.Engine.auto,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing result PNGs and the archive."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    trust_code: opt.TrustCode = False,
    mirror: opt.Mirror = None,
    json_out: opt.JsonOut = None,
) -> None:
    """Write a model's test-set predictions exactly as an evaluation server takes them: PASCAL VOC 2012
    (comp6 palette PNGs, results.tgz), ADE20K scene parsing (class + 1 PNGs, submission.zip) or Cityscapes
    (labelId PNGs named *_leftImg8bit.png, submission.zip).

    The model's classes must be the server's (21 VOC, 150 ADE20K, 19 Cityscapes classes, by name).
    Inference is predict's and evaluate's: whole image by default, --slide, --scales, --flip, --merge, or
    --protocol reference. Every image is predicted (an unreadable one stops the run); nothing is replaced
    without --overwrite, and the archive appears only when complete.
    """
    from encnet_cli._progress import ProgressReporter  # rich.progress: when the command runs
    from encnet_core.engine.submit import SubmitOptions
    from encnet_core.engine.submit import run as run_submit

    if protocol is opt.Protocol.reference:
        opt.check_protocol_flags(ctx, "submit")
    check_json_target(json_out)
    options = SubmitOptions(
        server=opt.value(server), output=output, split=split, protocol=opt.value(protocol), overwrite=overwrite,
        device=device, amp=opt.value(amp), engine=opt.value(engine), trust_code=trust_code, mirror=mirror,
    )  # fmt: skip
    request = opt.inference_request(scales, slide, flip, crop_size, base_size, stride_rate, merge, batch_size)
    with ProgressReporter(enabled=progress and not json_to_stdout(json_out)) as reporter:
        result = run_submit(model, data, options, request, progress=reporter)
    if json_out is not None:
        emit_json(result.to_dict(), json_out)
        if json_to_stdout(json_out):
            return
    console.print(
        safe_text(f"{plural(len(result.files), 'image')} for {result.server} in {result.folder}, {result.seconds:.1f}s -> upload {result.archive}"),
        highlight=False, soft_wrap=True,
    )  # fmt: skip
