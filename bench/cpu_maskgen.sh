#!/usr/bin/env bash
# cpu_maskgen.sh - Tessera against the PyTorch reference for MaskGen-VQ text-to-image on
# the CPU, side by side in one run, on the same weights and settings.
#
#   bash bench/cpu_maskgen.sh [--size L|XL] [--runs N] [--dtype bf16|f32]
#
# Environment:
#   BENCH_CACHE=DIR    keep the random checkpoints and model folder in DIR (default: a temp
#                      dir, removed at exit); the L files are ~4.4 GB in fp32
#   BENCH_THREADS=N    threads for both implementations (default: all cores)
#
# Writes random-weight MaskGen (default L) + TA-TiTok BL128 + CLIP ViT-L/14-336 files in the
# official layouts (tools/make_random_maskgen.py), converts them (tools/convert.py maskgen),
# checks that both implementations give the same tokens for one prompt with
# --randomize-temperature 0 (nothing random), then times, interleaved, N runs each of
#   tessera    build/tessera generate --prompt ... (text, steps and decode timed inside)
#   reference  bench/reference_maskgen.py          (fp32 PyTorch, OpenBLAS 1 thread)
# one 256 px image, 16 steps, guidance 12, aesthetic 6.5, each in a fresh process under
# /usr/bin/time -v, and prints a markdown table on stdout (progress on stderr).
set -euo pipefail

SIZE=L RUNS=1 DTYPE=bf16
while [ $# -gt 0 ]; do
    case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cpu_maskgen.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$SIZE" in L | XL) ;; *) echo "cpu_maskgen.sh: --size is L or XL" >&2; exit 2 ;; esac
case "$RUNS" in '' | *[!0-9]* | 0) echo "cpu_maskgen.sh: --runs must be a positive integer" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
THREADS=${BENCH_THREADS:-$(nproc)}
PROMPT="a photo of a red fox in the snow, highly detailed"
die() { echo "cpu_maskgen.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
/usr/bin/time -v true 2>/dev/null || die "/usr/bin/time -v is missing: apt-get install -y time"

if [ -n "${BENCH_CACHE:-}" ]; then WORK=$BENCH_CACHE; mkdir -p "$WORK"
else WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
CKPT=$WORK/ckpt-$SIZE MODEL=$WORK/model-$SIZE-$DTYPE

log "building"
make -s -j"$(nproc)" build/tessera >&2
if [ ! -f "$CKPT/clip.pt" ]; then
    log "random MaskGen-$SIZE + TA-TiTok BL128 + CLIP ViT-L/14-336 checkpoints (official layouts)"
    "$PY" tools/make_random_maskgen.py --size "$SIZE" --tokenizer-size bl128 \
        --clip-size ViT-L-14-336 --format hf --out "$CKPT" >&2
fi
if [ ! -f "$MODEL/config.json" ]; then
    log "converting to $DTYPE"
    "$PY" tools/convert.py maskgen --generator "$CKPT/generator" --tokenizer "$CKPT/tokenizer" \
        --clip "$CKPT/clip.pt" --clip-vocab "$CKPT/clip_bpe.txt" --dtype "$DTYPE" \
        --out "$MODEL" >&2
fi
SAMPLING=(--prompt "$PROMPT" --steps 16 --guidance 12 --randomize-temperature 0 --aesthetic 6.5)

run() {   # run LABEL STEM: one fresh, timed process
    case "$1" in
    tessera) /usr/bin/time -v -o "$2.time" build/tessera generate --model "$MODEL" "${SAMPLING[@]}" \
        --threads "$THREADS" --device cpu --seed 0 --out "$2.png" --tokens-out "$2.tok" 2>"$2.out" >/dev/null ;;
    reference) /usr/bin/time -v -o "$2.time" "$PY" bench/reference_maskgen.py --model "$MODEL" \
        "${SAMPLING[@]}" --threads "$THREADS" --tokens-out "$2.tok" >"$2.out" 2>"$2.log" ;;
    esac
}

for r in $(seq 1 "$RUNS"); do
    for impl in tessera reference; do
        log "run $r: $impl"
        run "$impl" "$WORK/$impl-$r"
    done
done
cmp -s "$WORK/tessera-1.tok" "$WORK/reference-1.tok" && SAME=yes || SAME=NO

"$PY" - "$WORK" "$RUNS" "$SAME" "$SIZE" "$DTYPE" "$THREADS" <<'PYEOF'
import json, re, statistics, sys
work, runs, same, size, dtype, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:]
def rss(stem):
    t = open(stem + ".time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
rows = []
for impl in ("tessera", "reference"):
    parts = []
    for r in range(1, runs + 1):
        stem = "%s/%s-%d" % (work, impl, r)
        if impl == "tessera":
            m = re.search(r"text ([\d.]+) s, \d+ steps ([\d.]+) s, decode ([\d.]+) s",
                          open(stem + ".out").read())
            text, steps, dec = map(float, m.groups())
        else:
            j = json.loads(open(stem + ".out").read())
            text, steps, dec = j["text_s"], j["steps_s"], j["decode_s"]
        parts.append((text, steps, dec, rss(stem)))
    med = [statistics.median(p[i] for p in parts) for i in range(4)]
    rows.append((impl, *med))
print("MaskGen-%s %s weights, %s threads, one 256 px image, 16 steps with CFG; "
      "same tokens: %s; medians of %d\n" % (size, dtype, threads, same, runs))
print("| implementation | text (s) | 16 steps (s) | s / step | decode (s) | total (s) | peak RSS (MiB) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for impl, text, steps, dec, mib in rows:
    print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f |"
          % (impl, text, steps, steps / 16, dec, text + steps + dec, mib))
PYEOF
