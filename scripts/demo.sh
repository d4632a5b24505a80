#!/usr/bin/env bash
# The main job end to end on the built-in synthetic data, no network: prepare -> train -> evaluate
# (single- and multi-scale) -> predict -> export -> report -> summary. Called by `make demo` after the install.
# Set DEVICE=cuda for the GPU quick start; DEMO_ITERS to change the training length.
set -euo pipefail
out=${1:-demo-run}
device=${DEVICE:-auto}
iters=${DEMO_ITERS:-1200}
bin=".venv/bin"
encnet="$bin/encnet"
mkdir -p "$out"
start=$(date +%s)
steps=7 step_no=0 step_start=$start

minsec() { echo "$(( $1 / 60 )) min $(( $1 % 60 )) s"; }
step() {  # the time the previous step took, then the next step's heading
    local now
    now=$(date +%s)
    if (( step_no > 0 )); then
        echo "   step $step_no/$steps took $(minsec $(( now - step_start ))) ($(minsec $(( now - start ))) so far)"
    fi
    step_no=$(( step_no + 1 )) step_start=$now
    echo "== step $step_no/$steps: $*"
}

step "prepare: built-in synthetic dataset (VOC-style archive -> HDF5)"
$encnet prepare synthetic --out "$out/synthetic.h5" --root "$out/cache" --overwrite
$encnet info "$out/synthetic.h5" --json > "$out/dataset-info.json"

step "train: a small EncNet from scratch ($iters iterations, recipe synthetic_cpu, device $device);" \
    "most of the demo's time: the progress bar shows the time left"
rm -rf "$out/run"
$encnet train "$out/synthetic.h5" --recipe synthetic_cpu --iters "$iters" --device "$device" --output-dir "$out/run"

step "evaluate: single scale, then multi-scale + flip"
$encnet evaluate "$out/run/best.pt" "$out/synthetic.h5" --device "$device" --json "$out/eval-single.json" --confusion "$out/confusion.png"
$encnet evaluate "$out/run/best.pt" "$out/synthetic.h5" --device "$device" --scales 0.75,1.0,1.25 --flip --json "$out/eval-multiscale.json"

step "predict: a folder of images"
rm -rf "$out/images" "$out/predictions"
$bin/python - "$out/synthetic.h5" "$out/images" <<'PY'
import sys
from pathlib import Path
import h5py
data, folder = Path(sys.argv[1]), Path(sys.argv[2])
with h5py.File(data) as f:
    for i in range(8):
        target = folder / ("street" if i < 4 else "more") / f"{f['val/names'][i].decode()}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f["val/images"][i].tobytes())
PY
$encnet predict "$out/run/best.pt" "$out/images" --output "$out/predictions" --overlay --device "$device"

step "export: safetensors (code-free, safe to share), checked against PyTorch"
$encnet export "$out/run/best.pt" "$out/encnet_demo.safetensors" --format safetensors --overwrite
# safetensors holds tensors and JSON only: every command opens it without --trust-code
$encnet evaluate "$out/encnet_demo.safetensors" "$out/synthetic.h5" --device "$device" --json "$out/eval-export.json" --no-progress > /dev/null

step "report: curves, per-class IoU of best.pt, validation images | ground truth | prediction"
$encnet report "$out/run" --html --device "$device"

step "summary"
$bin/python - "$out" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
single = json.loads((out / "eval-single.json").read_text())
multi = json.loads((out / "eval-multiscale.json").read_text())
export = json.loads((out / "eval-export.json").read_text())
print(f"dataset      {out / 'synthetic.h5'}")
print(f"checkpoint   {out / 'run' / 'best.pt'}")
print(f"single scale pixAcc {single['pixAcc']:.4f}  mIoU {single['mIoU']:.4f}")
print(f"multi-scale  pixAcc {multi['pixAcc']:.4f}  mIoU {multi['mIoU']:.4f}  (scales 0.75,1.0,1.25 + flip)")
print(f"export       {out / 'encnet_demo.safetensors'}  mIoU {export['mIoU']:.4f} (same model, safetensors)")
print(f"predictions  {out / 'predictions'} (masks, overlays, predictions.json)")
print(f"report       {out / 'run' / 'report.png'} and {out / 'run' / 'report.html'} (curves, per-class IoU, predictions)")
print(f"confusion    {out / 'confusion.png'}")
stored = Path("benchmarks/results/ablation-far.json")  # a stored result of benchmarks/ablation.py, not a new run
if stored.is_file():
    runs = json.loads(stored.read_text())["runs"]
    by = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted(s for v, s in by if v == "enc-se-k32" and ("fcn", s) in by)
    mean = lambda xs: sum(xs) / len(xs)
    fcn = mean([by["fcn", s]["mIoU"] for s in seeds])
    enc = mean([by["enc-se-k32", s]["mIoU"] for s in seeds])
    ctx = mean([by["enc-se-k32", s]["context_mIoU"] - by["fcn", s]["context_mIoU"] for s in seeds])
    swap = (mean([by["fcn", s]["pair_swap"] for s in seeds]), mean([by["enc-se-k32", s]["pair_swap"] for s in seeds]))
    print(f"ablation     stored result ({stored}, {len(seeds)} seeds, far layout: context beyond the FCN's receptive field):")
    print(f"             dilated FCN mIoU {fcn:.4f}, EncNet + SE-loss {enc:.4f} ({100 * (enc - fcn):+.1f} points, "
          f"context classes {100 * ctx:+.1f}); twin mix-ups {100 * swap[0]:.1f}% -> {100 * swap[1]:.1f}%")
    print("             re-run (about 40 min on 2 cores): .venv/bin/python benchmarks/ablation.py --layout far "
          "--seeds 0,1,2 --sweep-seeds 0 --out /tmp/encnet-ablation-far   (docs/ablation.md)")
print(f"time         {seconds // 60} min {seconds % 60} s")
PY
