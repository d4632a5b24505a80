#!/usr/bin/env bash
# The main job end to end on built-in data, no network. Called by `make demo` with the venv installed.
set -euo pipefail
out=${1:-demo-run}
encnet=".venv/bin/encnet"
mkdir -p "$out"
start=$(date +%s)
echo "== encnet doctor: environment + one training step of a tiny EncNet"
$encnet doctor --model encnet_tiny --device auto
echo "== encnet models"
$encnet models --size 480
echo "== demo finished in $(( $(date +%s) - start ))s (output folder: $out)"
