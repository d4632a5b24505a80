"""Which nodes of an int8 export stay float: mask agreement with fp32 and mIoU of each choice, measured.

Exports the float ONNX model of a trained checkpoint once, quantizes it (weights/quantize.py) with each
candidate set of float nodes and each activation type, and evaluates every variant on the val split
(whole-image inference, as ``encnet evaluate``): pixAcc/mIoU, their difference to the fp32 export, and
the share of val pixels whose class matches the fp32 export's. Usage (a tiny model trained on the
synthetic set for a few hundred iterations: nothing bigger trains on a CPU):

    python benchmarks/int8_keep_float.py CHECKPOINT DATA.h5 [--calib-images 64]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from encnet_core.engine.evaluate import EvaluateOptions, evaluate
from encnet_core.weights import quantize
from encnet_core.weights.export import export_model
from encnet_core.weights.model_files import load_model

CANDIDATES = {
    "none (all quantized)": (),
    "Encoding layer": ("/model/head/encmodule/encoding/",),
    "EncModule (Encoding, fc, SE)": ("/model/head/encmodule/",),
    "classifier conv6": ("/model/head/conv6/",),
    "Encoding + conv6": ("/model/head/encmodule/encoding/", "/model/head/conv6/"),
}


def masks(path: Path, data: Path) -> torch.Tensor:
    """Argmax of the model on every val image (whole-image), (N, H, W)."""
    from encnet_core.data.dataset import open_dataset

    model = load_model(path, torch.device("cpu"))
    dataset = open_dataset(data, "val")
    out = []
    for i in range(len(dataset)):
        image = model.normalize(dataset[i][0].as_subclass(torch.Tensor)[None])
        out.append(model.forward(image).argmax(1)[0])
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--calib-images", type=int, default=64)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(1)
    options = EvaluateOptions(device="cpu", workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_model(args.checkpoint, Path(tmp) / "fp32.onnx", "onnx").path
        base = evaluate(fp32, args.data, options)
        reference = masks(fp32, args.data)
        meta = load_model(fp32, torch.device("cpu")).metadata
        batches = quantize.calibration_batches(args.data, "train", meta, args.calib_images)
        print(f"fp32 onnx: pixAcc {base['pixAcc']:.4f} mIoU {base['mIoU']:.4f}")
        print(f"{'float nodes':32s} {'act':5s} {'#float':>6s} {'agree':>7s} {'pixAcc':>7s} {'mIoU':>7s} {'dmIoU':>7s}")
        for activation in ("int8", "uint8"):
            for name, prefixes in CANDIDATES.items():
                out = Path(tmp) / "int8.onnx"
                kept = quantize.quantize_onnx(fp32, out, batches, prefixes, activation)
                quantize.copy_metadata(fp32, out)
                scores = evaluate(out, args.data, options)
                agree = (masks(out, args.data) == reference).float().mean().item()
                print(
                    f"{name:32s} {activation:5s} {len(kept):6d} {agree:7.2%} {scores['pixAcc']:7.4f} "
                    f"{scores['mIoU']:7.4f} {100 * (scores['mIoU'] - base['mIoU']):+7.2f}"
                )


if __name__ == "__main__":
    main()
