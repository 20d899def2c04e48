#!/usr/bin/env bash
# gpu_maskgen.sh - MaskGen-VQ throughput on a GPU, for the device machine, one command:
#
#   bash bench/gpu_maskgen.sh [--batch 64] [--sizes "L XL"]
#
# Builds Tessera with CUDA, writes random-weight MaskGen L and XL + TA-TiTok BL128 + CLIP
# ViT-L/14-336 files in the official layouts, converts them to bf16 folders, checks that
# the CUDA fp32 mode gives the CPU's greedy tokens on the tiny fixture (test_cuda), then
# times `tessera generate --n BATCH` (one prompt, 16 steps, CFG, upstream's demo settings)
# on the GPU and prints images/s for the generator alone (the paper's measure: A100 batch 64,
# 30.3 img/s for L and 18.5 for XL), and the text-encoder and decoder times apart.
# Environment: TESSERA and TEST_CUDA name prebuilt binaries (bench/fetch_upstream.sh's pack,
# for a device machine without Tessera's C build dependencies); unset, it builds with make.
set -euo pipefail
BATCH=64 SIZES="L XL"
while [ $# -gt 0 ]; do
    case "$1" in
    --batch) BATCH=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    *) echo "gpu_maskgen.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
WORK=${BENCH_CACHE:-/tmp/tessera_gpu_maskgen}
mkdir -p "$WORK"
if [ -z "${TESSERA:-}" ]; then
    make -s -j"$(nproc)" CUDA=1 build/tessera build/tests/test_cuda >&2
    TESSERA=build/tessera TEST_CUDA=build/tests/test_cuda
fi
[ -z "${TEST_CUDA:-}" ] || "$TEST_CUDA" >&2 || echo "gpu_maskgen.sh: test_cuda failed" >&2
echo "| model | batch | text (s) | 16 steps (s) | generator img/s | decode (s) | paper (A100) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for size in $SIZES; do
    ck=$WORK/ckpt-$size model=$WORK/model-$size
    [ -f "$ck/clip.pt" ] || "$PY" tools/make_random_maskgen.py --size "$size" \
        --tokenizer-size bl128 --clip-size ViT-L-14-336 --format hf --out "$ck" >&2
    [ -f "$model/config.json" ] || "$PY" tools/convert.py maskgen --generator "$ck/generator" \
        --tokenizer "$ck/tokenizer" --clip "$ck/clip.pt" --clip-vocab "$ck/clip_bpe.txt" \
        --dtype bf16 --out "$model" >&2
    args=(--model "$model" --prompt "a photo of a red fox in the snow" --device cuda --seed 0
          --n "$BATCH" --tokens-out "$WORK/tok-$size.txt")
    "$TESSERA" generate "${args[@]}" --n 2 --quiet   # warm-up (graph capture, cuBLAS)
    line=$("$TESSERA" generate "${args[@]}" 2>&1 | grep "image(s) in")
    read -r text steps dec < <(echo "$line" |
        sed -E 's/.*text ([0-9.]+) s, [0-9]+ steps ([0-9.]+) s, decode ([0-9.]+) s.*/\1 \2 \3/')
    paper=$([ "$size" = L ] && echo 30.3 || echo 18.5)
    ips=$(awk -v b="$BATCH" -v s="$steps" 'BEGIN { printf "%.1f", b / s }')
    echo "| MaskGen-$size | $BATCH | $text | $steps | $ips | $dec | $paper |"
done
