#!/usr/bin/env bash
# cpu_llamagen.sh - Tessera vs the PyTorch reference (and, optionally, the official LlamaGen
# code) on the CPU, side by side in one run, on the same weights and settings.
#
#   bash bench/cpu_llamagen.sh [--runs N]                      (default 3)
#
# Environment:
#   BENCH_CACHE=DIR          keep the random checkpoints, model folders and per-run files in
#                            DIR and reuse them next time (default: a temp dir, removed at exit)
#   LLAMAGEN_UPSTREAM=DIR    also time the official generate() + decode_code from a checkout of
#                            FoundationVision/LlamaGen (bench/upstream_llamagen.py)
#   BENCH_THREADS=N          threads for every implementation (default: all cores)
#
# Prerequisites (Debian 12): gcc, make and Tessera's build dependencies
# (scripts/install-deps.sh); /usr/bin/python3 with Debian's python3-torch; Debian's OpenBLAS
# for torch, and GNU time for peak RSS:
#   apt-get install -y time libopenblas0-pthread
# The script stops with a message when one is missing; it never skips a measurement.
#
# What it does: builds build/tessera and build/membw; writes random-weight GPT-B + VQ-16
# checkpoints in the official .pt layout (tools/make_random_checkpoints.py) and converts them
# to f32 and bf16 model folders; checks that every implementation produces the same greedy
# (--top-k 1) tokens; then, interleaved, N times each (with the streaming-read bandwidth
# measured before every round and after the last):
#   tessera-f32   build/tessera generate on the f32 folder
#   tessera-bf16  build/tessera generate on the bf16 folder
#   ref-f32       bench/reference_llamagen.py on the f32 folder (fp32 PyTorch)
#   ref-bf16      bench/reference_llamagen.py on the bf16 folder (bf16 weights upcast to fp32)
#   upstream-f32  bench/upstream_llamagen.py on the .pt files   (only with LLAMAGEN_UPSTREAM)
# all for one 256 px image of class 207, seed 0, cfg 4.0, top-k 2000, top-p 1, temperature 1,
# each in a fresh process under /usr/bin/time -v, and prints a markdown report on stdout
# (progress goes to stderr). Keep other heavy work off the machine while it runs.
set -euo pipefail

RUNS=3
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --runs)
        [ $# -ge 2 ] || { echo "cpu_llamagen.sh: --runs needs a value" >&2; exit 2; }
        RUNS=$2
        shift 2
        ;;
    --runs=*) RUNS=${1#--runs=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cpu_llamagen.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$RUNS" in '' | *[!0-9]* | 0) echo "cpu_llamagen.sh: --runs must be a positive integer" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
THREADS=${BENCH_THREADS:-$(nproc)}
CLASS=207 SEED=0 CFG=4.0 TOPK=2000 TOPP=1.0 TEMP=1.0
UPSTREAM=${LLAMAGEN_UPSTREAM:-}

die() { echo "cpu_llamagen.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# --- prerequisites ----------------------------------------------------------------------
[ -x /usr/bin/time ] || die "GNU time (/usr/bin/time) is not installed; it measures peak RSS. Install it: apt-get install -y time"
/usr/bin/time -v true 2>/dev/null || die "/usr/bin/time does not accept -v (not GNU time?); apt-get install -y time"
command -v gcc >/dev/null || die "gcc not found; run scripts/install-deps.sh"
command -v make >/dev/null || die "make not found; run scripts/install-deps.sh"
[ -x "$PY" ] || die "$PY not found (the reference needs Debian's python3 with python3-torch)"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch: apt-get install -y python3-torch"
OPENBLAS_NUM_THREADS=1 "$PY" - <<'EOF' || die "torch is not running on OpenBLAS (it would be measured at far below its best): apt-get install -y libopenblas0-pthread"
import sys, torch
a = torch.randn(64, 64)
a @ a
sys.exit(0 if any("openblas" in l for l in open("/proc/self/maps")) else 1)
EOF
if [ -n "$UPSTREAM" ]; then
    if [ ! -f "$UPSTREAM/autoregressive/models/generate.py" ] || [ ! -f "$UPSTREAM/tokenizer/tokenizer_image/vq_model.py" ]; then
        die "LLAMAGEN_UPSTREAM=$UPSTREAM is not a LlamaGen checkout (no autoregressive/models/generate.py)"
    fi
    UPSTREAM=$(cd "$UPSTREAM" && pwd)
fi

# --- build ------------------------------------------------------------------------------
log "building build/tessera"
make -j"$(nproc)" >&2 || die "make failed"
[ -x build/tessera ] || die "make did not produce build/tessera"
gcc -O2 -mavx2 -pthread -Wall -Wextra -o build/membw bench/membw.c || die "cannot compile bench/membw.c"

# --- weights ----------------------------------------------------------------------------
if [ -n "${BENCH_CACHE:-}" ]; then
    CACHE=$BENCH_CACHE
    mkdir -p "$CACHE"
    CACHE=$(cd "$CACHE" && pwd)
else
    CACHE=$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench.XXXXXX")
    trap 'rm -rf "$CACHE"' EXIT
fi
CKPT=$CACHE/ckpt F32=$CACHE/gpt-b-256-f32 BF16=$CACHE/gpt-b-256-bf16 RES=$CACHE/results
if [ ! -f "$CKPT/gpt.pt" ] || [ ! -f "$CKPT/vq.pt" ] || [ tools/make_random_checkpoints.py -nt "$CKPT/vq.pt" ]; then
    log "writing random GPT-B / VQ-16 checkpoints to $CKPT"
    rm -rf "$CKPT" "$F32" "$BF16"
    "$PY" tools/make_random_checkpoints.py --gpt-model GPT-B --out "$CKPT" --image-size 256 >&2
fi
for pair in "f32:$F32" "bf16:$BF16"; do
    dtype=${pair%%:*} dir=${pair#*:}
    if [ ! -f "$dir/config.json" ] || [ tools/convert.py -nt "$dir/config.json" ] || [ "$CKPT/gpt.pt" -nt "$dir/config.json" ]; then
        log "converting to $dtype: $dir"
        rm -rf "$dir"
        "$PY" tools/convert.py llamagen --gpt "$CKPT/gpt.pt" --vq "$CKPT/vq.pt" --image-size 256 \
            --dtype "$dtype" --out "$dir" >&2
    fi
done
rm -rf "$RES"
mkdir -p "$RES"

# Every process reads its weights from the page cache, not the disk.
cat "$F32"/* "$BF16"/* "$CKPT"/* >/dev/null

# --- commands ---------------------------------------------------------------------------
SAMPLING=(--class "$CLASS" --seed "$SEED" --cfg "$CFG" --top-p "$TOPP" --temperature "$TEMP")
LABELS=(tessera-f32 tessera-bf16 ref-f32 ref-bf16)
if [ -n "$UPSTREAM" ]; then LABELS+=(upstream-f32); fi

# run_label LABEL FILE-STEM EXTRA-ARGS...: one fresh process under /usr/bin/time -v. Tessera
# reports on stderr, the Python drivers print a JSON line on stdout; either lands in STEM.out.
run_label() {
    local label=$1 stem=$2
    shift 2
    case "$label" in
    tessera-f32) /usr/bin/time -v -o "$stem.time" build/tessera generate --model "$F32" "${SAMPLING[@]}" --threads "$THREADS" "$@" >"$stem.log" 2>"$stem.out" ;;
    tessera-bf16) /usr/bin/time -v -o "$stem.time" build/tessera generate --model "$BF16" "${SAMPLING[@]}" --threads "$THREADS" "$@" >"$stem.log" 2>"$stem.out" ;;
    ref-f32) /usr/bin/time -v -o "$stem.time" "$PY" bench/reference_llamagen.py --model "$F32" "${SAMPLING[@]}" --threads "$THREADS" "$@" >"$stem.out" 2>"$stem.log" ;;
    ref-bf16) /usr/bin/time -v -o "$stem.time" "$PY" bench/reference_llamagen.py --model "$BF16" "${SAMPLING[@]}" --threads "$THREADS" "$@" >"$stem.out" 2>"$stem.log" ;;
    upstream-f32) /usr/bin/time -v -o "$stem.time" "$PY" bench/upstream_llamagen.py --upstream "$UPSTREAM" --gpt-ckpt "$CKPT/gpt.pt" --vq-ckpt "$CKPT/vq.pt" --gpt-model GPT-B --image-size 256 "${SAMPLING[@]}" --threads "$THREADS" "$@" >"$stem.out" 2>"$stem.log" ;;
    esac || die "$label failed; see $stem.out and $stem.log$([ -n "${BENCH_CACHE:-}" ] || echo ' (set BENCH_CACHE to keep them)')"
}

# --- 1. same computation: greedy tokens ---------------------------------------------------
log "greedy check (--top-k 1): ${LABELS[*]}"
STATUS=0
for label in "${LABELS[@]}"; do
    case "$label" in
    tessera-*) run_label "$label" "$RES/greedy-$label" --top-k 1 --tokens-out "$RES/greedy-$label.tokens" ;;
    *) run_label "$label" "$RES/greedy-$label" --top-k 1 --tokens-out "$RES/greedy-$label.tokens" --no-decode ;;
    esac
done
GREEDY=()
compare() {
    local a=$1 b=$2 diff
    diff=$(paste -d' ' <(tr ' ' '\n' <"$RES/greedy-$a.tokens") <(tr ' ' '\n' <"$RES/greedy-$b.tokens") |
        awk 'NF && $1 != $2 { n++; if (!f) f = NR } END { if (n) printf "%d of 256 tokens differ, first at index %d", n, f - 1 }')
    if cmp -s "$RES/greedy-$a.tokens" "$RES/greedy-$b.tokens"; then
        GREEDY+=("- greedy tokens, $a vs $b: OK (256 identical tokens)")
    else
        GREEDY+=("- greedy tokens, $a vs $b: MISMATCH (${diff:-files differ})")
        STATUS=1
    fi
    log "${GREEDY[-1]#- }"
}
compare tessera-f32 ref-f32
compare tessera-bf16 ref-bf16
if [ -n "$UPSTREAM" ]; then compare tessera-f32 upstream-f32; fi

# --- 2. memory bandwidth: measured before every round and after the last, because on a
# shared host it moves with the neighbours' load; best = the best pass of all, median = the
# median of the rounds' medians.
MEMBW_ALL=()
measure_membw() {
    local out
    out=$(build/membw --threads "$THREADS" --mib 512 --reps 20) || die "build/membw failed"
    grep -q '^membw_best_gbs=[0-9.]* membw_median_gbs=[0-9.]*$' <<<"$out" ||
        die "build/membw printed no membw_best_gbs/membw_median_gbs line"
    MEMBW_ALL+=("$(tail -1 <<<"$out")")
    log "bandwidth: $(head -1 <<<"$out")"
}

# --- 3. timed runs, interleaved ---------------------------------------------------------
for ((r = 1; r <= RUNS; r++)); do
    measure_membw
    for label in "${LABELS[@]}"; do
        case "$label" in
        tessera-*) run_label "$label" "$RES/$label.$r" --top-k "$TOPK" --out "$RES/$label.$r.png" ;;
        *) run_label "$label" "$RES/$label.$r" --top-k "$TOPK" ;;
        esac
        log "run $r/$RUNS $label: $(grep -h -o 'tokens [0-9.]* s\|"tokens_s": [0-9.]*' "$RES/$label.$r.out" | head -1)"
    done
done

measure_membw
membw_pairs() { printf '%s\n' "${MEMBW_ALL[@]}" | sed 's/membw_best_gbs=//; s/membw_median_gbs=//'; }
MEMBW=$(membw_pairs | sort -g -k1,1 | tail -1 | cut -d' ' -f1)
MEMBW_MEDIAN=$(membw_pairs | sort -g -k2,2 | awk '{ m[NR] = $2 } END { print (NR % 2 ? m[(NR + 1) / 2] : (m[NR / 2] + m[NR / 2 + 1]) / 2) }')
MEMBW_LIST=$(membw_pairs | awk '{ printf "%s%.1f/%.1f", (NR > 1 ? ", " : ""), $1, $2 }')

# --- report -----------------------------------------------------------------------------
os=$(. /etc/os-release && echo "$PRETTY_NAME")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
mem=$(free -g | awk '/^Mem:/ { print $2 }')
echo "## LlamaGen GPT-B on the CPU, $(date +%Y-%m-%d)"
echo
echo "Machine: $cpu, $(nproc) cores, ${mem} GiB memory, $os, $(uname -r)."
echo "Software: $(gcc --version | head -1); torch $("$PY" -c 'import torch; print(torch.__version__)') on Debian OpenBLAS (OPENBLAS_NUM_THREADS=1, $THREADS torch threads); $THREADS threads everywhere."
echo "Workload: GPT-B 256 px (256 tokens, CFG batch 2), VQ-16 decode, one image, class $CLASS, seed $SEED, cfg $CFG, top-k $TOPK, top-p $TOPP, temperature $TEMP; random weights in the official layout."
echo "Streaming read bandwidth ($THREADS-thread 512 MiB AVX2 reads, bench/membw.c, 20 passes before each round and after the last; best/median GB/s per measurement): $MEMBW_LIST."
echo
"$PY" bench/summarize.py --results "$RES" --model-f32 "$F32" --membw-gbs "$MEMBW" --membw-median-gbs "$MEMBW_MEDIAN" --runs "$RUNS" ||
    die "summarize.py failed"
echo
echo "Same computation (--top-k 1, same weights, same settings):"
echo
printf '%s\n' "${GREEDY[@]}"
[ "$STATUS" -eq 0 ] || die "greedy tokens differ between implementations (see above)"
