#!/usr/bin/env bash
# Rebuilds the default model Tessera ships (models/emoji-64) from Debian packages alone:
#   1. the emoji dataset (fonts-noto-color-emoji + unicode-data),
#   2. the VQ tokenizer, 3. the class-conditional GPT (LlamaGen's architectures, smaller),
#   4. the classifier that scores them (tools/quality.py),
#   5. the conversion with tools/convert.py, exactly as for an official checkpoint.
# About 80 minutes on two CPU cores; the same seed and thread count give the same files.
#   usage: tools/train_default.sh [OUT_DIR] [SEED]     (defaults: models/emoji-64, 0)
set -euo pipefail
out=${1:-models/emoji-64}
seed=${2:-0}
py=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-build/train}
mkdir -p "$work" "$out/eval"

"$py" "$here/make_emoji_dataset.py" --out "$work/dataset.npz" --classes-out "$work/classes.txt"
"$py" "$here/train_vq.py" --data "$work/dataset.npz" --out "$work/vq.pt" --seed "$seed"
"$py" "$here/train_gpt.py" --data "$work/dataset.npz" --vq "$work/vq.pt" \
    --out "$work/gpt.pt" --seed "$seed"
"$py" "$here/train_classifier.py" --data "$work/dataset.npz" \
    --out "$out/eval/classifier.safetensors" --seed "$seed" --threads 1
"$py" "$here/convert.py" llamagen --gpt "$work/gpt.pt" --vq "$work/vq.pt" --image-size 64 \
    --n-head 4 --dtype bf16 --classes "$work/classes.txt" --out "$out" \
    --sampling cfg=1,top_p=0.8 \
    --name "Tessera emoji 64px (LlamaGen architecture, trained by tools/train_default.sh)"
# The tokenizer's encoder is not served, but tools/quality.py measures reconstruction with it.
"$py" "$here/export_vq_encoder.py" "$work/vq.pt" "$out/eval/vq_encoder.safetensors"
echo "done: $out (score it with: $py tools/quality.py --model $out)"
