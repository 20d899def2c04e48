#!/usr/bin/env bash
# Makes a small RANDOM-WEIGHT LlamaGen model folder for a first run: the real
# architecture (GPT with 2D RoPE + VQ-16 decoder) at reduced width, converted with
# tools/convert.py exactly like an official checkpoint. Its images are noise-like
# patterns, not pictures; the benchmarks use it for its 256-token images (the trained
# default model, models/emoji-64, has 64).
#   usage: tools/make_demo_model.sh OUT_DIR
set -euo pipefail
out=${1:?usage: tools/make_demo_model.sh OUT_DIR}
py=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
if [ -f "$out/config.json" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" "$here/make_random_checkpoints.py" --out "$tmp" --image-size 256 --seed 0 \
    --dim 256 --n-layer 4 --n-head 4 --vocab 4096 --codebook-size 4096 --num-classes 1000 \
    --ch 32 --ch-mult 1,1,2,2,4 --z-channels 64 --num-res-blocks 1 --std 0.05 >/dev/null
"$py" "$here/convert.py" llamagen --gpt "$tmp/gpt.pt" --vq "$tmp/vq.pt" --image-size 256 \
    --out "$out" --n-head 4
