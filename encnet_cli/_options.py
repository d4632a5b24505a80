"""Options shared by several commands (inference modes of evaluate and predict, --trust-code)."""

from __future__ import annotations

import typer

from encnet_core.engine.inference import InferenceConfig, parse_scales

SCALES_HELP = "Multi-scale inference, e.g. 0.5,0.75,1.0,1.25,1.5,1.75 (the reference's; long side = base size x scale)."


def inference_config(
    scales: str | None, slide: bool, flip: bool, crop_size: int | None, base_size: int | None,
    stride_rate: float, merge: str, batch_size: int, default_crop: int, default_base: int,
) -> InferenceConfig:  # fmt: skip
    """Build the InferenceConfig from the shared options (crop/base size default to the model's)."""
    return InferenceConfig(
        scales=parse_scales(scales),
        slide=slide,
        flip=flip,
        crop_size=default_crop if crop_size is None else crop_size,
        base_size=default_base if base_size is None else base_size,
        stride_rate=stride_rate,
        merge=merge,
        batch_size=batch_size,
    )


ScalesOption = typer.Option(None, "--scales", help=SCALES_HELP)
SlideOption = typer.Option(False, "--slide", help="Sliding-window inference at the image's own size.")
FlipOption = typer.Option(False, "--flip", help="Add horizontally flipped views.")
CropOption = typer.Option(None, "--crop-size", help="Window side for sliding/multi-scale [default: the model's training crop].")
BaseOption = typer.Option(None, "--base-size", help="Long side at scale 1.0 [default: the model's training base size].")
StrideOption = typer.Option(2 / 3, "--stride-rate", help="Window stride as a fraction of the crop.")
MergeOption = typer.Option("prob", "--merge", help="Merge views by averaging softmax probabilities (prob) or summing logits like the reference (logits).")
DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
AmpOption = typer.Option("off", "--amp", help="Autocast for inference: off, bf16 or fp16 (CUDA).")
TrustCodeOption = typer.Option(
    False,
    "--trust-code",
    help="Open TorchScript and pt2 models: they are programs, and loading them runs code from the file. "
    "Only for files from a source you trust (weights, safetensors and checkpoints never need it).",
)
