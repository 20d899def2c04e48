#!/usr/bin/env bash
# cpu_fqgan.sh - Tessera against the PyTorch reference for FQGAN class-to-image (FAR-B, dual,
# ds16, 256 px) on the CPU, side by side in one run, on the same weights and settings.
#
#   bash bench/cpu_fqgan.sh [--runs N] [--quick] [--no-split]     (default: 3 runs)
#   bash bench/cpu_fqgan.sh --prepare-only [--quick] [--no-split] [--variant-dtypes bf16]
#
# Options:
#   --runs N        timed rounds (medians are reported; default 3, --quick 1)
#   --quick         tiny shapes (FAR dim 64, 2+3 layers, 16 positions, 512-entry codebooks):
#                   a smoke test of the script in about a minute; its figures mean nothing
#   --no-split      skip the trunk / head cost split (no extra model folders, no extra runs)
#   --prepare-only  write the checkpoints and model folders, then stop (no torch/OpenBLAS
#                   checks; bench/gpu_fqgan.sh uses this on the device machine)
#   --variant-dtypes "f32 bf16"   with --prepare-only: the dtypes of the split's variant
#                   folders (default both; bench/gpu_fqgan.sh needs bf16 only)
#
# Environment:
#   BENCH_CACHE=DIR   checkpoints, model folders and per-run files (default build/bench-fqgan,
#                     or build/bench-fqgan-quick with --quick; build/ is ignored by git); the
#                     folders are reused while their recipe and the tools are unchanged
#   BENCH_THREADS=N   threads for every implementation (default: all cores)
#   BENCH_QUICK=1     the same as --quick
#   PYTHON=PATH       the python for --prepare-only (default /usr/bin/python3; the timed runs
#                     always use /usr/bin/python3, Debian's torch, per DEVELOPERS.md)
#
# Prerequisites (Debian 12): Tessera's build dependencies (scripts/install-deps.sh),
# /usr/bin/python3 with python3-torch, Debian's OpenBLAS for torch and GNU time:
#   apt-get install -y time libopenblas0-pthread
#
# What it does: builds build/tessera and build/membw; writes random FAR-B (LlamaGen GPT-L
# trunk: 24 layers, dim 1024, 16 heads, ffn 2816; 3-layer AR head) + FQGAN-Dual ds16
# tokenizer checkpoints in the official .pt layouts (tools/make_random_fqgan.py) and
# converts them to an f32 and a bf16 folder (tools/convert.py fqgan). For the split it also
# converts two variants of the same FAR: head 1 layer instead of 3, and trunk 12 layers
# instead of 24. Then:
#   1. greedy check (--top-k 1): Tessera f32 vs the reference on the f32 folder, Tessera bf16
#      vs the reference on the bf16 folder (upcast to fp32: the same weight values); every
#      sub-token compared;
#   2. N rounds, interleaved, each process fresh under /usr/bin/time -v, streaming-read
#      bandwidth (bench/membw.c) measured before every round and after the last:
#        tessera-f32 / tessera-bf16     build/tessera generate (tokens and VQ decode timed)
#        ref-f32 / ref-bf16             bench/reference_fqgan.py (fp32 PyTorch, KV-cached
#                                       generate + decode; trunk/head blocks timed inside)
#        tessera-{f32,bf16}-head1       the head-1 variant      (tokens only, for the split)
#        tessera-{f32,bf16}-trunkhalf   the 12-layer variant    (tokens only, for the split)
#      one 256 px image: class 207, seed 0, cfg 2.0 on every sub-token, top-k 0, top-p 1,
#      temperature 1 (the setting upstream reports FAR with);
#   3. prints a markdown report on stdout (progress on stderr): command, machine, date,
#      timings, speed-ups, floors and the per-position split: trunk step against the k head
#      sub-steps. Tessera's CLI prints tokens and decode time only, so its split is an
#      estimate from differences between runs (24 vs 12 trunk layers, 3 vs 1 head layers);
#      the reference's is measured by timers around its blocks.
# Exit status 1 when a greedy check fails (the report is printed first).
# Keep other heavy work off the machine while it runs. Estimated (not yet timed) at FAR-B
# with 3 runs on 2 cores: about 25 minutes, plus a few minutes the first time to write the
# ~10 GB of checkpoints and folders under the cache.
set -euo pipefail

RUNS='' QUICK=${BENCH_QUICK:-0} SPLIT=1 PREPARE_ONLY=0 VARIANT_DTYPES='f32 bf16'
ARGS_GIVEN=("$@")
usage() { sed -n '2,57p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --runs)
        [ $# -ge 2 ] || { echo "cpu_fqgan.sh: --runs needs a value" >&2; exit 2; }
        RUNS=$2
        shift 2
        ;;
    --runs=*) RUNS=${1#--runs=}; shift ;;
    --quick) QUICK=1; shift ;;
    --no-split) SPLIT=0; shift ;;
    --prepare-only) PREPARE_ONLY=1; shift ;;
    --variant-dtypes)
        [ $# -ge 2 ] || { echo "cpu_fqgan.sh: --variant-dtypes needs a value" >&2; exit 2; }
        VARIANT_DTYPES=${2//,/ }
        shift 2
        ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cpu_fqgan.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$QUICK" in 0 | 1) ;; *) echo "cpu_fqgan.sh: BENCH_QUICK must be 0 or 1" >&2; exit 2 ;; esac
[ -n "$RUNS" ] || RUNS=$([ "$QUICK" = 1 ] && echo 1 || echo 3)
case "$RUNS" in '' | *[!0-9]* | 0) echo "cpu_fqgan.sh: --runs must be a positive integer" >&2; exit 2 ;; esac
for dt in $VARIANT_DTYPES; do
    case "$dt" in f32 | bf16) ;; *) echo "cpu_fqgan.sh: --variant-dtypes takes f32 and/or bf16" >&2; exit 2 ;; esac
done
if [ "$PREPARE_ONLY" = 0 ] && [ "$VARIANT_DTYPES" != 'f32 bf16' ]; then
    echo "cpu_fqgan.sh: --variant-dtypes goes with --prepare-only (the timed runs use both)" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
[ "$PREPARE_ONLY" = 0 ] || PY=${PYTHON:-/usr/bin/python3}
THREADS=${BENCH_THREADS:-$(nproc)}
CLASS=207 SEED=0 CFG=2.0 TOPK=0 TOPP=1.0 TEMP=1.0
NSUB=2   # dual: sub-tokens per position

die() { echo "cpu_fqgan.sh: $*" >&2; exit 1; }
log() { echo "== [$(printf '%4d' "$SECONDS") s] $*" >&2; }

# --- shapes -------------------------------------------------------------------------------
# MAIN_*: make_random_fqgan.py flags of the benchmarked model; *_FAR the FAR part, which the
# split variants repeat with one field changed. VAR_TOK: the tokenizer written next to a
# variant's far.pt, which is never used (variants convert with the main tokenizer), so it is
# small; its codebook size sets the variant's vocabulary and must stay the main one's.
if [ "$QUICK" = 1 ]; then
    SIZE_NAME="tiny FAR (dim 64, 2 trunk + 3 head layers), dual ds16 at 64 px (16 positions), 512-entry codebooks"
    IMAGE=64 N_LAYER=2 HEAD_LAYERS=3 HALF_LAYERS=1
    # shellcheck disable=SC2054 # --ch-mult takes one comma-separated value
    MAIN_TOK=(--variant dual --ds 16 --ch-mult 1,1,1,1,2 --image-size "$IMAGE" --ch 32 --z-channels 32
        --num-res-blocks 1 --codebook-size 512 --adapter-layers 1 --feat-layers 1 --feat-width 32)
    MAIN_FAR=(--dim 64 --n-layer 2 --n-head 4 --head-layers 3 --ffn-dim 128 --num-classes 1000 --std 0.2)
    VAR_TOK=("${MAIN_TOK[@]}")
    NAME_FLAGS=(--n-head 4)
    VAR_NAME_FLAGS=(--n-head 4)
    DEFAULT_CACHE=build/bench-fqgan-quick
else
    SIZE_NAME="FAR-B (24 layers, dim 1024, 16 heads, ffn 2816, 3-layer head), FQGAN-Dual ds16 at 256 px (256 positions, 2 x 16384-entry codebooks)"
    IMAGE=256 N_LAYER=24 HEAD_LAYERS=3 HALF_LAYERS=12
    MAIN_TOK=(--variant dual --ds 16 --image-size "$IMAGE")
    MAIN_FAR=(--far-model FAR-B)
    VAR_TOK=(--variant dual --ds 16 --image-size "$IMAGE" --ch 32 --z-channels 32 --num-res-blocks 1
        --adapter-layers 1 --feat-layers 1 --feat-width 32)
    NAME_FLAGS=(--far-model FAR-B)
    VAR_NAME_FLAGS=(--n-head 16)
    DEFAULT_CACHE=build/bench-fqgan
fi

# --- prerequisites ----------------------------------------------------------------------
[ -x "$PY" ] || command -v "$PY" >/dev/null || die "$PY not found"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch: apt-get install -y python3-torch"
if [ "$PREPARE_ONLY" = 0 ]; then
    [ -x /usr/bin/time ] || die "GNU time (/usr/bin/time) is not installed; it measures peak RSS. Install it: apt-get install -y time"
    /usr/bin/time -v true 2>/dev/null || die "/usr/bin/time does not accept -v (not GNU time?); apt-get install -y time"
    command -v gcc >/dev/null || die "gcc not found; run scripts/install-deps.sh"
    command -v make >/dev/null || die "make not found; run scripts/install-deps.sh"
    OPENBLAS_NUM_THREADS=1 "$PY" - <<'EOF' || die "torch is not running on OpenBLAS (it would be measured at far below its best): apt-get install -y libopenblas0-pthread"
import sys, torch
a = torch.randn(64, 64)
a @ a
sys.exit(0 if any("openblas" in l for l in open("/proc/self/maps")) else 1)
EOF
fi

# --- weights ------------------------------------------------------------------------------
CACHE=${BENCH_CACHE:-$DEFAULT_CACHE}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
RES=$CACHE/results
F32=$CACHE/far-f32 BF16=$CACHE/far-bf16
H1_F32=$CACHE/far-head1-f32 H1_BF16=$CACHE/far-head1-bf16
TH_F32=$CACHE/far-trunkhalf-f32 TH_BF16=$CACHE/far-trunkhalf-bf16

# ensure_ckpt DIR FLAGS...: DIR/tokenizer.pt + far.pt from make_random_fqgan.py FLAGS, unless
# DIR already holds them from the same flags and a tool no newer than they are.
ensure_ckpt() {
    local dir=$1
    shift
    local want="$*"
    if [ -f "$dir/far.pt" ] && [ -f "$dir/tokenizer.pt" ] && [ "$(cat "$dir/flags" 2>/dev/null)" = "$want" ] &&
        [ ! tools/make_random_fqgan.py -nt "$dir/far.pt" ]; then
        return 0
    fi
    log "writing random checkpoints to $dir: make_random_fqgan.py $want"
    rm -rf "$dir"
    "$PY" tools/make_random_fqgan.py --out "$dir" "$@" >&2 || die "make_random_fqgan.py failed"
    echo "$want" >"$dir/flags"
}
# folder_ok OUT RECIPE: OUT is a converted folder made from RECIPE by the current tools.
folder_ok() {
    [ -f "$1/config.json" ] && [ "$(cat "$1/bench-recipe" 2>/dev/null)" = "$2" ] &&
        [ ! tools/convert.py -nt "$1/config.json" ] && [ ! tools/make_random_fqgan.py -nt "$1/config.json" ]
}
# convert_to OUT DTYPE TOKENIZER FAR RECIPE FLAGS...
convert_to() {
    local out=$1 dtype=$2 tok=$3 far=$4 recipe=$5
    shift 5
    log "converting to $dtype: $out"
    rm -rf "$out"
    "$PY" tools/convert.py fqgan --tokenizer "$tok" --gpt "$far" --image-size "$IMAGE" \
        --dtype "$dtype" --out "$out" "$@" >&2 || die "convert.py fqgan failed for $out"
    echo "$recipe" >"$out/bench-recipe"
}

MAIN_CKPT=$CACHE/ckpt
MAIN_RECIPE="${MAIN_TOK[*]} ${MAIN_FAR[*]}"
# WANT: VARIANT:DTYPE:FOLDER for every folder this run needs. "main" is the benchmarked FAR;
# head1 and trunkhalf are the split's variants (convert.py with the main tokenizer.pt).
WANT=("main:f32:$F32" "main:bf16:$BF16")
if [ "$SPLIT" = 1 ]; then
    for dt in $VARIANT_DTYPES; do WANT+=("head1:$dt:$CACHE/far-head1-$dt" "trunkhalf:$dt:$CACHE/far-trunkhalf-$dt"); done
fi
recipe_of() { if [ "$1" = main ]; then echo "$MAIN_RECIPE"; else echo "$MAIN_RECIPE $1"; fi; }
MISSING=()
for w in "${WANT[@]}"; do
    IFS=: read -r var dt dir <<<"$w"
    folder_ok "$dir" "$(recipe_of "$var")" || MISSING+=("$w")
done
[ ${#MISSING[@]} -eq 0 ] || ensure_ckpt "$MAIN_CKPT" "${MAIN_TOK[@]}" "${MAIN_FAR[@]}"
for var in main head1 trunkhalf; do
    todo=()
    for w in ${MISSING[@]+"${MISSING[@]}"}; do [ "${w%%:*}" != "$var" ] || todo+=("$w"); done
    [ ${#todo[@]} -gt 0 ] || continue
    case $var in
    main) ckpt=$MAIN_CKPT name_flags=("${NAME_FLAGS[@]}") ;;
    head1 | trunkhalf)
        ckpt=$CACHE/ckpt-$var name_flags=("${VAR_NAME_FLAGS[@]}")
        if [ "$var" = head1 ]; then vflags=(--head-layers 1); else vflags=(--n-layer "$HALF_LAYERS"); fi
        ensure_ckpt "$ckpt" "${VAR_TOK[@]}" "${MAIN_FAR[@]}" "${vflags[@]}" --seed 1
        ;;
    esac
    for w in "${todo[@]}"; do
        IFS=: read -r _ dt dir <<<"$w"
        convert_to "$dir" "$dt" "$MAIN_CKPT/tokenizer.pt" "$ckpt/far.pt" "$(recipe_of "$var")" "${name_flags[@]}"
    done
    # A variant's .pt files are only needed to convert; its folders carry the recipe.
    [ "$var" = main ] || [ "$QUICK" = 1 ] || rm -rf "$ckpt"
done
if [ "$PREPARE_ONLY" = 1 ]; then
    log "model folders ready under $CACHE"
    exit 0
fi

# --- build ------------------------------------------------------------------------------
log "building build/tessera"
make -j"$(nproc)" >&2 || die "make failed"
[ -x build/tessera ] || die "make did not produce build/tessera"
gcc -O2 -mavx2 -pthread -Wall -Wextra -o build/membw bench/membw.c || die "cannot compile bench/membw.c"

rm -rf "$RES"
mkdir -p "$RES"
# Every process reads its weights from the page cache, not the disk.
MODELS=("$F32" "$BF16")
[ "$SPLIT" = 0 ] || MODELS+=("$H1_F32" "$H1_BF16" "$TH_F32" "$TH_BF16")
for d in "${MODELS[@]}"; do cat "$d"/*.safetensors >/dev/null; done

# --- commands ---------------------------------------------------------------------------
SAMPLING=(--class "$CLASS" --seed "$SEED" --cfg "$CFG" --top-p "$TOPP" --temperature "$TEMP")
LABELS=(tessera-f32 tessera-bf16 ref-f32 ref-bf16)
[ "$SPLIT" = 0 ] || LABELS+=(tessera-f32-head1 tessera-bf16-head1 tessera-f32-trunkhalf tessera-bf16-trunkhalf)
model_of() {
    case "$1" in
    *-f32) echo "$F32" ;; *-bf16) echo "$BF16" ;;
    *-f32-head1) echo "$H1_F32" ;; *-bf16-head1) echo "$H1_BF16" ;;
    *-f32-trunkhalf) echo "$TH_F32" ;; *-bf16-trunkhalf) echo "$TH_BF16" ;;
    esac
}
# run_label LABEL STEM EXTRA-ARGS...: one fresh process under /usr/bin/time -v. Tessera
# reports on stderr, the reference prints a JSON line on stdout; either lands in STEM.out.
run_label() {
    local label=$1 stem=$2 model
    shift 2
    model=$(model_of "$label")
    case "$label" in
    tessera-*) /usr/bin/time -v -o "$stem.time" build/tessera generate --model "$model" "${SAMPLING[@]}" \
        --threads "$THREADS" --device cpu "$@" >"$stem.log" 2>"$stem.out" ;;
    ref-*) /usr/bin/time -v -o "$stem.time" "$PY" bench/reference_fqgan.py --model "$model" "${SAMPLING[@]}" \
        --threads "$THREADS" "$@" >"$stem.out" 2>"$stem.log" ;;
    esac || die "$label failed; see $stem.out and $stem.log"
}

# --- 1. same computation: greedy sub-tokens ------------------------------------------------
log "greedy check (--top-k 1): tessera-f32 ref-f32 tessera-bf16 ref-bf16"
for label in tessera-f32 ref-f32 tessera-bf16 ref-bf16; do
    case "$label" in
    tessera-*) run_label "$label" "$RES/greedy-$label" --top-k 1 --tokens-out "$RES/greedy-$label.tokens" ;;
    *) run_label "$label" "$RES/greedy-$label" --top-k 1 --tokens-out "$RES/greedy-$label.tokens" --no-decode ;;
    esac
done
STATUS=0
GREEDY=()
# compare A B: the two sub-token lines, position-major, sub-token 1 first.
compare() {
    local a=$1 b=$2 line
    line=$(paste -d' ' <(tr ' ' '\n' <"$RES/greedy-$a.tokens") <(tr ' ' '\n' <"$RES/greedy-$b.tokens") |
        awk -v k="$NSUB" 'NF == 0 { next } { n++ } NF != 2 { bad++ } NF == 2 && $1 != $2 { d++; if (!f) f = n }
            END { if (bad) printf "MISMATCH (%d sub-tokens, lengths differ)", n;
                  else if (d) printf "MISMATCH (%d of %d sub-tokens differ, the first at position %d, sub-token %d)", d, n, int((f - 1) / k), (f - 1) % k + 1;
                  else printf "OK (%d identical sub-tokens)", n }')
    case "$line" in OK*) ;; *) STATUS=1 ;; esac
    GREEDY+=("- greedy sub-tokens, $a vs $b: $line")
    log "${GREEDY[-1]#- }"
}
compare tessera-f32 ref-f32
compare tessera-bf16 ref-bf16

# --- 2. timed runs, interleaved, bandwidth before each round and after the last -----------
MEMBW_ALL=()
measure_membw() {
    local out
    out=$(build/membw --threads "$THREADS" --mib 512 --reps 20) || die "build/membw failed"
    grep -q '^membw_best_gbs=[0-9.]* membw_median_gbs=[0-9.]*$' <<<"$out" ||
        die "build/membw printed no membw_best_gbs/membw_median_gbs line"
    MEMBW_ALL+=("$(tail -1 <<<"$out")")
    log "bandwidth: $(head -1 <<<"$out")"
}
for ((r = 1; r <= RUNS; r++)); do
    measure_membw
    for label in "${LABELS[@]}"; do
        case "$label" in
        tessera-f32 | tessera-bf16) run_label "$label" "$RES/$label.$r" --top-k "$TOPK" --out "$RES/$label.$r.png" ;;
        tessera-*) run_label "$label" "$RES/$label.$r" --top-k "$TOPK" --tokens-out "$RES/$label.$r.tokens" ;;
        *) run_label "$label" "$RES/$label.$r" --top-k "$TOPK" ;;
        esac
        log "run $r/$RUNS $label: $(grep -h -o 'tokens [0-9.]* s\|"tokens_s": [0-9.]*' "$RES/$label.$r.out" | head -1)"
    done
done
measure_membw
printf '%s\n' "${MEMBW_ALL[@]}" >"$RES/membw.txt"

# --- report -----------------------------------------------------------------------------
CMD="bash bench/cpu_fqgan.sh${ARGS_GIVEN[*]:+ ${ARGS_GIVEN[*]}}"
[ "$QUICK" = 0 ] || case " ${ARGS_GIVEN[*]:-} " in *" --quick "*) ;; *) CMD="BENCH_QUICK=1 $CMD" ;; esac
DATE=$(date +%Y-%m-%d)
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
CORES=$(nproc)
MEM=$(free -g | awk '/^Mem:/ { print $2 }')
# shellcheck disable=SC1091 # the machine's own file
OS="$(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
SOFT="$(gcc --version | head -1); torch $("$PY" -c 'import torch; print(torch.__version__)') on Debian OpenBLAS (OPENBLAS_NUM_THREADS=1, $THREADS torch threads)"
WORKLOAD="one image, class $CLASS, seed $SEED, cfg $CFG on every sub-token, top-k $TOPK, top-p $TOPP, temperature $TEMP"
GREEDY_LINES=$(printf '%s\n' "${GREEDY[@]}")
export CMD RES RUNS THREADS SPLIT QUICK SIZE_NAME N_LAYER HEAD_LAYERS HALF_LAYERS F32 DATE CPU CORES MEM OS SOFT WORKLOAD GREEDY_LINES
"$PY" - <<'PYEOF' || die "the report failed"
import json, os, re, statistics

E = os.environ
res, runs, split = E["RES"], int(E["RUNS"]), E["SPLIT"] == "1"
cfg = json.load(open(os.path.join(E["F32"], "config.json")))["gpt"]
d, L, hl, k, ffn, V, P = (cfg[x] for x in ("dim", "n_layer", "head_layers", "n_sub", "ffn_dim",
                                          "vocab_size", "block_size"))
half = int(E["HALF_LAYERS"])


def rss_mib(stem):
    t = open(stem + ".time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024


def tessera(stem):
    """The CLI's "1 image(s): tokens S s (R tokens/s), VQ decode D s" line; S has two
    decimals, positions / R is finer, so the tokens time is taken from R."""
    t = open(stem + ".out").read()
    m = re.search(r"(\d+) image\(s\): tokens ([\d.]+) s \(([\d.]+) tokens/s\), "
                  r"VQ decode ([\d.]+) s", t)
    if not m:
        raise SystemExit("no timing line in %s.out" % stem)
    n, secs, rate = int(m.group(1)), float(m.group(2)), float(m.group(3))
    load = re.search(r"loaded .* in ([\d.]+) s on", t)
    return {"tokens_s": n * P / rate if rate > 0 else secs, "decode_s": float(m.group(4)),
            "load_s": float(load.group(1)) if load else float("nan")}


def reference(stem):
    return json.loads(open(stem + ".out").read().strip().splitlines()[-1])


def collect(label):
    out = []
    for r in range(1, runs + 1):
        stem = "%s/%s.%d" % (res, label, r)
        row = tessera(stem) if label.startswith("tessera") else reference(stem)
        row["rss"] = rss_mib(stem)
        out.append(row)
    return out


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


data = {lab: collect(lab) for lab in ("tessera-f32", "tessera-bf16", "ref-f32", "ref-bf16")}
if split:
    for lab in ("tessera-f32-head1", "tessera-bf16-head1", "tessera-f32-trunkhalf",
                "tessera-bf16-trunkhalf"):
        data[lab] = collect(lab)

# Weights read per position (every matrix once for both CFG rows): the trunk's blocks, the
# head's blocks once per sub-step, the k output projections, the aggregation layer; the
# embedding rows and norms are left out (< 0.1%). The CPU backend's KV cache is f32.
block = 4 * d * d + 3 * d * ffn
w_trunk, w_head, w_out, w_agg = L * block, k * hl * block, k * V * d, k * d * d
w_step = w_trunk + w_head + w_out + w_agg
kv_bytes = 2 * L * 2 * d * 4 * P * (P + 1) // 2
membw = [tuple(float(x.split("=")[1]) for x in line.split())
         for line in open(os.path.join(res, "membw.txt")).read().split("\n") if line.strip()]
bw_best = max(b for b, _ in membw)
bw_med = statistics.median(m for _, m in membw)


def floor_s(bytes_per_weight, gbs):
    return (P * w_step * bytes_per_weight + kv_bytes) / (gbs * 1e9)


if E["QUICK"] == "1":
    print("## FQGAN smoke test on the CPU (--quick: tiny shapes, not a measurement), %s\n"
          % E["DATE"])
else:
    print("## FQGAN FAR-B class-to-image on the CPU, %s\n" % E["DATE"])
print("| | |\n|---|---|")
print("| command | `%s` |" % E["CMD"])
print("| date | %s |" % E["DATE"])
print("| machine | %s, %s cores, %s GiB memory, %s |" % (E["CPU"], E["CORES"], E["MEM"], E["OS"]))
print("| software | %s; %s threads everywhere |" % (E["SOFT"], E["THREADS"]))
print("| model | %s; random weights in the official layout |" % E["SIZE_NAME"])
print("| workload | %s |" % E["WORKLOAD"])
print("| bandwidth | %s-thread streaming reads (bench/membw.c), best/median GB/s per measurement: %s |"
      % (E["THREADS"], ", ".join("%.1f/%.1f" % bm for bm in membw)))
print()
print("### Results (medians of %d)\n" % runs)
print("| implementation | weights | tokens (s) | ms / position | VQ decode (s) | total (s) "
      "| peak RSS (MiB) | load (s) | tokens / floor |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
rows = [("Tessera (C, CPU backend)", "f32", "tessera-f32", 4),
        ("Tessera (C, CPU backend)", "bf16", "tessera-bf16", 2),
        ("PyTorch reference (fqgan_ref.py)", "f32", "ref-f32", 4),
        ("PyTorch reference (fqgan_ref.py)", "bf16-rounded, fp32 compute", "ref-bf16", 4)]
for name, w, lab, bpw in rows:
    rs = data[lab]
    t, dec = med(rs, "tokens_s"), med(rs, "decode_s")
    print("| %s | %s | %.2f | %.1f | %.2f | %.2f | %.0f | %.2f | %.2fx |"
          % (name, w, t, 1e3 * t / P, dec, t + dec, med(rs, "rss"), med(rs, "load_s"),
             t / floor_s(bpw, bw_best)))
print()
print("Each run's tokens / VQ decode in seconds (the split variants: tokens only):\n")
for lab in data:
    if lab.endswith(("head1", "trunkhalf")):   # tokens only
        print("- %s: %s" % (lab, ", ".join("%.2f" % r["tokens_s"] for r in data[lab])))
    else:
        print("- %s: %s" % (lab, ", ".join("%.2f/%.2f" % (r["tokens_s"], r["decode_s"])
                                            for r in data[lab])))
print()
print("| speed-up | total / image | token generation |\n|---|---:|---:|")
for name, a, b in (("Tessera f32 vs reference f32", "tessera-f32", "ref-f32"),
                   ("Tessera bf16 vs reference on the same bf16 weights", "tessera-bf16", "ref-bf16"),
                   ("Tessera bf16 vs reference f32", "tessera-bf16", "ref-f32")):
    ta, tb = med(data[a], "tokens_s"), med(data[b], "tokens_s")
    da, db = med(data[a], "decode_s"), med(data[b], "decode_s")
    print("| %s | %.2fx | %.2fx |" % (name, (tb + db) / (ta + da), tb / ta))
print()
print("Floor: every position reads %.2f M weights (trunk %.2f M, head blocks %d x %.2f M, "
      "output projections %.2f M, aggregation %.2f M) for both CFG rows, plus the f32 KV cache "
      "(%.3g GB over the image): %.3g GB per image in f32, %.3g GB in bf16; at the best pass "
      "(%.1f GB/s) %.3g s and %.3g s, at the median (%.1f GB/s) %.3g s and %.3g s. "
      "\"tokens / floor\" uses the best pass."
      % (w_step / 1e6, w_trunk / 1e6, k, hl * block / 1e6, w_out / 1e6, w_agg / 1e6,
         kv_bytes / 1e9, (P * w_step * 4 + kv_bytes) / 1e9, (P * w_step * 2 + kv_bytes) / 1e9,
         bw_best, floor_s(4, bw_best), floor_s(2, bw_best), bw_med, floor_s(4, bw_med),
         floor_s(2, bw_med)))
print()

if split:
    print("### Per position: the trunk step against the %d head sub-steps\n" % k)
    print("| implementation | weights | trunk: %d blocks (ms) | head: %d x %d blocks (ms) "
          "| rest (ms) | head sub-steps (ms) | head sub-steps / trunk step | how |" % (L, k, hl))
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for w in ("f32", "bf16"):
        t = med(data["tessera-%s" % w], "tokens_s")
        th = med(data["tessera-%s-trunkhalf" % w], "tokens_s")
        t1 = med(data["tessera-%s-head1" % w], "tokens_s")
        trunk = L * (t - th) / (L - half)
        head = hl * (t - t1) / (hl - 1)
        rest = t - trunk - head
        if trunk <= 0:
            print("| Tessera | %s | not resolved: the %d-layer trunk was not faster | | | | | |"
                  % (w, half))
            continue
        print("| Tessera | %s | %.1f | %.1f | %.1f | %.1f | %.2f | estimated: %d vs %d trunk "
              "layers, %d vs 1 head layers |"
              % (w, 1e3 * trunk / P, 1e3 * head / P, 1e3 * rest / P, 1e3 * (head + rest) / P,
                 (head + rest) / trunk, L, half, hl))
    for w in ("f32", "bf16"):
        rs = data["ref-%s" % w]
        trunk, head, rest = med(rs, "trunk_s"), med(rs, "head_s"), med(rs, "rest_s")
        print("| PyTorch reference | %s | %.1f | %.1f | %.1f | %.1f | %.2f | measured: timers "
              "around every block |"
              % (w if w == "f32" else "bf16-rounded", 1e3 * trunk / P, 1e3 * head / P,
                 1e3 * rest / P, 1e3 * (head + rest) / P, (head + rest) / trunk))
    print("| weights read (bandwidth model) | | %.1f M | %.1f M | %.1f M | %.1f M | %.2f | "
          "counted from the shapes |"
          % (w_trunk / 1e6, w_head / 1e6, (w_out + w_agg) / 1e6, (w_head + w_out + w_agg) / 1e6,
             (w_head + w_out + w_agg) / w_trunk))
    print()
    print("\"rest\" is the token time outside the trunk's and the head's blocks: the k output "
          "projections and the final norm, sampling and the CFG mix (all per head sub-step), "
          "and the trunk's input embedding and aggregation_layer (%.1f M weights, %.1f%% of "
          "the trunk's). \"head sub-steps\" = head blocks + rest, so it slightly overstates "
          "the head. Tessera's CLI prints no per-phase times and has no switch for them: its "
          "split is estimated from separate runs of the same FAR with %d instead of %d trunk "
          "layers and with 1 instead of %d head layers (per-layer costs taken as independent "
          "of depth; the variants' sampled tokens differ, not the work per position)."
          % (w_agg / 1e6, 100.0 * w_agg / w_trunk, half, L, hl))
    print()
print("Same computation (--top-k 1, same weights, same settings):\n")
print(E["GREEDY_LINES"])
PYEOF
[ "$STATUS" -eq 0 ] || die "greedy sub-tokens differ between implementations (see above)"
