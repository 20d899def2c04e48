#!/usr/bin/env bash
# cpu_t2i.sh - Tessera against the PyTorch reference for LlamaGen text-to-image (GPT-XL t2i
# with a FLAN-T5-XL-shaped text encoder and VQ-16) on the CPU, side by side in one run, on
# the same weights and settings: the prompt's T5 encoding and the generation at 256 and
# 512 px.
#
#   bash bench/cpu_t2i.sh [--runs N] [--sizes 256,512] [--ref-bf16-sizes 256] [--quick]
#   bash bench/cpu_t2i.sh --prepare-only [--quick] [--sizes ...]
#
# Options:
#   --runs N              timed rounds (medians are reported; default 1: this is slow)
#   --sizes LIST          image sizes in px, comma-separated multiples of 16 (default
#                         256,512: 16x16 = 256 and 32x32 = 1024 tokens)
#   --ref-bf16-sizes LIST the sizes at which the reference also runs on the bf16 folder
#                         (bf16-rounded weights, fp32 compute); "none" for none (default
#                         256: at 512 px it would add about 9 minutes per round)
#   --quick               tiny shapes (GPT dim 64, 2 layers; T5 d_model 48, 2 layers; VQ-16
#                         at width 32): a smoke test of the script in about a minute; its
#                         figures mean nothing
#   --prepare-only        write the checkpoints and model folders, then stop
#
# Environment:
#   BENCH_CACHE=DIR   checkpoints, model folders and per-run files (default build/bench-t2i,
#                     or build/bench-t2i-quick with --quick; build/ is ignored by git); the
#                     folders are reused while their recipe and the tools are unchanged
#   BENCH_THREADS=N   threads for every implementation (default: all cores)
#   BENCH_REF_GEMM_THREADS=N|auto   OpenBLAS threads for the reference's large products (the
#                     T5 encoder and the GPT prefill; its decode steps always use 1, the
#                     setting /work/shared/docs/benchmarking.md measured best); auto (the
#                     default) times a T5-sized product with 1 and BENCH_THREADS OpenBLAS
#                     threads first (bench/reference_t2i.py --probe-gemm) and takes
#                     BENCH_THREADS when it is at least 1.2x faster
#   BENCH_QUICK=1     the same as --quick
#   PYTHON=PATH       the python for --prepare-only (default /usr/bin/python3; the timed runs
#                     always use /usr/bin/python3, Debian's torch, per DEVELOPERS.md)
#
# Prerequisites (Debian 12): Tessera's build dependencies (scripts/install-deps.sh),
# /usr/bin/python3 with python3-torch, python3-sentencepiece and python3-bs4 (the caption
# cleaning), Debian's OpenBLAS for torch and GNU time:
#   apt-get install -y time libopenblas0-pthread python3-sentencepiece python3-bs4
#
# What it does: builds build/tessera and build/membw; writes random checkpoints in the
# official layouts at the real shapes (tools/make_random_t2i.py --preset xl: GPT-XL t2i,
# dim 1280, 36 layers, 20 heads, caption_dim 2048, 120 text positions, vocab 16384; the
# standard VQ-16 (vq_ds16_t2i); a T5 encoder Hugging Face folder of FLAN-T5-XL's shape,
# d_model 2048, 24 layers, 32 heads, d_ff 5120, gated-gelu, vocab 32128, with the
# sentencepiece model tests/fixtures/llamagen_t2i_tiny/spiece.model, since T5's own is not
# available offline) and converts them with tools/convert.py llamagen --t5 to an f32 and a
# bf16 folder at 256 px. A folder at another size holds the same files (hard links) with
# the config's image_size and block_size changed, which is all convert.py --image-size
# changes. The checkpoints are deleted once the folders are complete (about 12.5 GB stay
# in the cache; about 21 GB while converting). Then:
#   1. greedy check at 256 px (--top-k 1, cfg 7.5): Tessera f32 vs the reference f32, every
#      token compared;
#   2. N rounds, interleaved, each process fresh under /usr/bin/time -v, streaming-read
#      bandwidth (bench/membw.c) measured before every round and after the last; in every
#      round, for each size:
#        tessera-f32 / tessera-bf16   build/tessera generate --prompt (T5, tokens and the VQ
#                                     decode timed by the CLI)
#        ref-f32                      bench/reference_t2i.py (fp32 PyTorch: caption cleaning,
#                                     sentencepiece, T5 encoder, KV-cached generate, decode)
#        ref-bf16                     the same on the bf16 folder (upcast: the same weight
#                                     values as Tessera bf16), at --ref-bf16-sizes only
#      one image of one prompt ("a portrait photo of a kangaroo wearing an orange hoodie and
#      blue sunglasses"), seed 0, upstream's t2i sampling (sample_t2i.py): cfg 7.5, top-k
#      1000, top-p 1, temperature 1; every model folder is read into the page cache before
#      its run (Tessera maps its weights and pages them in while it computes);
#   3. prints a markdown report on stdout (progress on stderr): command, date, machine,
#      software, model, workload, the T5 / tokens / decode times, peak RSS, speed-ups and
#      the memory-bandwidth floor of the token generation.
# Exit status 1 when the greedy check fails (the report is printed first).
# Keep other heavy work off the machine while it runs (the reference's peak RSS is about
# 13 GB, while it loads; the page cache holds the 12.5 GB of folders). Estimated (not yet
# timed on a quiet machine) at the real shapes with --runs 1 on 2 cores: about 23 minutes
# (the greedy check 3, the 256 px round 6, the 512 px round 14; each further round about
# 20), plus about 3 minutes the first time to write and convert the checkpoints.
set -euo pipefail

RUNS=1 QUICK=${BENCH_QUICK:-0} PREPARE_ONLY=0 SIZES_ARG=256,512 REF_BF16_ARG=256
ARGS_GIVEN=("$@")
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need_value() { [ "$1" -ge 2 ] || { echo "cpu_t2i.sh: $2 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) need_value $# "$1"; RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#--runs=}; shift ;;
    --sizes) need_value $# "$1"; SIZES_ARG=$2; shift 2 ;;
    --sizes=*) SIZES_ARG=${1#--sizes=}; shift ;;
    --ref-bf16-sizes) need_value $# "$1"; REF_BF16_ARG=$2; shift 2 ;;
    --ref-bf16-sizes=*) REF_BF16_ARG=${1#--ref-bf16-sizes=}; shift ;;
    --quick) QUICK=1; shift ;;
    --prepare-only) PREPARE_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cpu_t2i.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$QUICK" in 0 | 1) ;; *) echo "cpu_t2i.sh: BENCH_QUICK must be 0 or 1" >&2; exit 2 ;; esac
case "$RUNS" in '' | *[!0-9]* | 0) echo "cpu_t2i.sh: --runs must be a positive integer" >&2; exit 2 ;; esac
# parse_sizes LIST: the sizes, space-separated, each a positive multiple of 16, no repeats.
parse_sizes() {
    local s out=''
    for s in ${1//,/ }; do
        case "$s" in '' | *[!0-9]* | 0*) echo "cpu_t2i.sh: '$s' is not an image size in px" >&2; exit 2 ;; esac
        [ $((s % 16)) -eq 0 ] || { echo "cpu_t2i.sh: image size $s is not a multiple of 16 (VQ-16)" >&2; exit 2; }
        case " $out " in *" $s "*) ;; *) out="$out $s" ;; esac
    done
    [ -n "$out" ] || { echo "cpu_t2i.sh: no image size given" >&2; exit 2; }
    echo "${out# }"
}
SIZES=$(parse_sizes "$SIZES_ARG")
if [ "$REF_BF16_ARG" = none ] || [ -z "$REF_BF16_ARG" ]; then REF_BF16_SIZES=''; else REF_BF16_SIZES=$(parse_sizes "$REF_BF16_ARG"); fi
for s in $REF_BF16_SIZES; do
    case " $SIZES " in *" $s "*) ;; *) echo "cpu_t2i.sh: --ref-bf16-sizes $s is not one of --sizes ($SIZES)" >&2; exit 2 ;; esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
[ "$PREPARE_ONLY" = 0 ] || PY=${PYTHON:-/usr/bin/python3}
THREADS=${BENCH_THREADS:-$(nproc)}
PROMPT="a portrait photo of a kangaroo wearing an orange hoodie and blue sunglasses"
SEED=0 CFG=7.5 TOPK=1000 TOPP=1.0 TEMP=1.0
GREEDY_SIZE=256
BASE_SIZE=256     # the size convert.py writes; the others are derived from it

die() { echo "cpu_t2i.sh: $*" >&2; exit 1; }
log() { echo "== [$(printf '%4d' "$SECONDS") s] $*" >&2; }

if [ "$QUICK" = 1 ]; then
    PRESET=tiny NAME_FLAGS=(--n-head 4)
    SIZE_NAME="tiny t2i GPT (dim 64, 2 layers, 4 heads, vocab 512, 120 text positions), tiny T5 encoder (d_model 48, 2 layers, 4 heads, gated-gelu, vocab 864), VQ-16 at width 32"
    DEFAULT_CACHE=build/bench-t2i-quick
else
    PRESET=xl NAME_FLAGS=()
    SIZE_NAME="GPT-XL t2i (36 layers, dim 1280, 20 heads, ffn 3584, vocab 16384, caption_dim 2048, 120 text positions), a T5 encoder of FLAN-T5-XL's shape (24 layers, d_model 2048, 32 heads of 64, d_ff 5120, gated-gelu, 32 buckets, max distance 128, vocab 32128), VQ-16 (vq_ds16_t2i)"
    DEFAULT_CACHE=build/bench-t2i
fi

# --- prerequisites ----------------------------------------------------------------------
[ -x "$PY" ] || command -v "$PY" >/dev/null || die "$PY not found"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch: apt-get install -y python3-torch"
"$PY" -c 'import sentencepiece' 2>/dev/null || die "$PY cannot import sentencepiece: apt-get install -y python3-sentencepiece"
if [ "$PREPARE_ONLY" = 0 ]; then
    "$PY" -c 'import bs4' 2>/dev/null || die "$PY cannot import bs4 (the reference's caption cleaning): apt-get install -y python3-bs4"
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
RES=$CACHE/results CKPT=$CACHE/ckpt
RECIPE="make_random_t2i.py --preset $PRESET --seed 0"
# The files whose change makes the cached folders stale.
TOOLS=(tools/make_random_t2i.py tools/make_random_checkpoints.py tests/reference/make_t5_fixtures.py
    tools/convert.py tools/convert_t5.py tools/stfile.py)
folder_of() { echo "$CACHE/t2i-$1-$2"; }   # SIZE DTYPE
newer_tool() {   # newer_tool FILE: a tool is newer than FILE
    local t
    for t in "${TOOLS[@]}"; do [ ! "$t" -nt "$1" ] || return 0; done
    return 1
}
# base_ok DIR: a folder convert.py wrote from the current recipe with the current tools.
base_ok() {
    [ -f "$1/config.json" ] && [ "$(cat "$1/bench-recipe" 2>/dev/null)" = "$RECIPE" ] && ! newer_tool "$1/config.json"
}
# derived_ok DIR BASE SIZE: DIR is BASE at SIZE px, made after BASE, sharing its files.
derived_ok() {
    [ -f "$1/config.json" ] && [ "$(cat "$1/bench-recipe" 2>/dev/null)" = "$RECIPE size $3" ] &&
        [ ! "$2/config.json" -nt "$1/config.json" ] && [ "$1/gpt.safetensors" -ef "$2/gpt.safetensors" ] &&
        [ "$1/t5.safetensors" -ef "$2/t5.safetensors" ]
}
ensure_ckpt() {
    if [ -f "$CKPT/t2i.pt" ] && [ -f "$CKPT/vq.pt" ] && [ -f "$CKPT/t5/model.safetensors" ] &&
        [ "$(cat "$CKPT/recipe" 2>/dev/null)" = "$RECIPE" ] && ! newer_tool "$CKPT/recipe"; then
        return 0
    fi
    log "writing random checkpoints to $CKPT: $RECIPE"
    rm -rf "$CKPT"
    "$PY" tools/make_random_t2i.py --out "$CKPT" --preset "$PRESET" --seed 0 >&2 || die "make_random_t2i.py failed"
    echo "$RECIPE" >"$CKPT/recipe"
}
# derive DIR BASE SIZE: hard links to BASE's files, BASE's config at SIZE px.
derive() {
    local dir=$1 base=$2 size=$3 f
    log "deriving the $size px folder $dir from $base"
    rm -rf "$dir"
    mkdir -p "$dir"
    for f in "$base"/*; do
        case "${f##*/}" in config.json | bench-recipe) continue ;; esac
        ln "$f" "$dir/" 2>/dev/null || ln -s "$f" "$dir/" || die "cannot link $f into $dir"
    done
    "$PY" - "$base" "$dir" "$size" <<'EOF' || die "cannot write $dir/config.json"
import json, os, sys
sys.path.insert(0, "tools")
import convert
base, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.load(open(os.path.join(base, "config.json")))
ds = convert.downsample_factor(cfg["vq"]["ch_mult"])
if size % ds:
    sys.exit("%d px is not a multiple of the VQ's downsample factor %d" % (size, ds))
# What convert.py --image-size changes (checked against a conversion at 512 px): the name,
# image_size and the GPT's block_size.
cfg["name"] = cfg["name"].replace("%dpx" % cfg["image_size"], "%dpx" % size)
cfg["image_size"] = size
cfg["gpt"]["block_size"] = (size // ds) ** 2
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")
EOF
    echo "$RECIPE size $size" >"$dir/bench-recipe"
}

ALL_SIZES=$BASE_SIZE
for s in $SIZES; do [ "$s" = "$BASE_SIZE" ] || ALL_SIZES="$ALL_SIZES $s"; done
for dt in f32 bf16; do
    base=$(folder_of "$BASE_SIZE" "$dt")
    if ! base_ok "$base"; then
        ensure_ckpt
        log "converting to $dt: $base"
        rm -rf "$base"
        for s in $ALL_SIZES; do [ "$s" = "$BASE_SIZE" ] || rm -rf "$(folder_of "$s" "$dt")"; done
        "$PY" tools/convert.py llamagen --gpt "$CKPT/t2i.pt" --vq "$CKPT/vq.pt" --t5 "$CKPT/t5" \
            --image-size "$BASE_SIZE" --dtype "$dt" --out "$base" ${NAME_FLAGS[@]+"${NAME_FLAGS[@]}"} >&2 ||
            die "convert.py llamagen failed for $base"
        echo "$RECIPE" >"$base/bench-recipe"
    fi
    for s in $ALL_SIZES; do
        [ "$s" != "$BASE_SIZE" ] || continue
        derived_ok "$(folder_of "$s" "$dt")" "$base" "$s" || derive "$(folder_of "$s" "$dt")" "$base" "$s"
    done
done
# The checkpoints are only needed to convert; the folders carry the recipe.
if [ "$QUICK" = 0 ] && [ -d "$CKPT" ]; then
    log "removing the checkpoints $CKPT (the folders are complete)"
    rm -rf "$CKPT"
fi
if [ "$PREPARE_ONLY" = 1 ]; then
    log "model folders ready under $CACHE: $(cd "$CACHE" && echo t2i-*)"
    exit 0
fi

# --- build ------------------------------------------------------------------------------
if ! make -q build/tessera 2>/dev/null; then
    log "building build/tessera"
    make -j"$(nproc)" build/tessera >&2 || die "make failed"
fi
[ -x build/tessera ] || die "make did not produce build/tessera"
if [ ! -x build/membw ] || [ bench/membw.c -nt build/membw ]; then
    gcc -O2 -mavx2 -pthread -Wall -Wextra -o build/membw bench/membw.c || die "cannot compile bench/membw.c"
fi

rm -rf "$RES"
mkdir -p "$RES"

# The reference's OpenBLAS threads for its large products (see BENCH_REF_GEMM_THREADS).
REF_GEMM=${BENCH_REF_GEMM_THREADS:-auto} GEMM_PROBE=''
if [ "$REF_GEMM" = auto ]; then
    REF_GEMM=1
    if [ "$THREADS" -gt 1 ]; then
        GEMM_PROBE=$("$PY" bench/reference_t2i.py --probe-gemm --threads "$THREADS") || die "reference_t2i.py --probe-gemm failed"
        REF_GEMM=$("$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); n = sys.argv[2]; print(n if r[n] >= 1.2 * r["1"] else 1)' \
            "$GEMM_PROBE" "$THREADS") || die "cannot read the probe's result: $GEMM_PROBE"
    fi
fi
case "$REF_GEMM" in '' | *[!0-9]* | 0) die "BENCH_REF_GEMM_THREADS must be a positive integer or auto" ;; esac
log "reference: $REF_GEMM OpenBLAS thread(s) for the T5 encoder and the prefill${GEMM_PROBE:+ (probe, GFLOP/s by threads: $GEMM_PROBE)}"

# --- commands ---------------------------------------------------------------------------
SAMPLING=(--prompt "$PROMPT" --seed "$SEED" --cfg "$CFG" --top-p "$TOPP" --temperature "$TEMP")
# run_label LABEL SIZE STEM EXTRA-ARGS...: one fresh process under /usr/bin/time -v, its
# folder read into the page cache first. Tessera reports on stderr, the reference prints a
# JSON line on stdout; either lands in STEM.out.
run_label() {
    local label=$1 size=$2 stem=$3 model
    shift 3
    model=$(folder_of "$size" "${label#*-}")
    cat "$model"/*.safetensors >/dev/null
    case "$label" in
    tessera-*) /usr/bin/time -v -o "$stem.time" build/tessera generate --model "$model" "${SAMPLING[@]}" \
        --threads "$THREADS" --device cpu "$@" >"$stem.log" 2>"$stem.out" ;;
    ref-*) /usr/bin/time -v -o "$stem.time" "$PY" bench/reference_t2i.py --model "$model" "${SAMPLING[@]}" \
        --threads "$THREADS" --gemm-threads "$REF_GEMM" "$@" >"$stem.out" 2>"$stem.log" ;;
    esac || die "$label at $size px failed; see $stem.out and $stem.log"
}

# --- 1. same computation: greedy tokens at 256 px -------------------------------------------
log "greedy check at $GREEDY_SIZE px (--top-k 1): tessera-f32 ref-f32"
run_label tessera-f32 "$GREEDY_SIZE" "$RES/greedy-tessera-f32" --top-k 1 --tokens-out "$RES/greedy-tessera-f32.tokens"
run_label ref-f32 "$GREEDY_SIZE" "$RES/greedy-ref-f32" --top-k 1 --tokens-out "$RES/greedy-ref-f32.tokens" --no-decode
STATUS=0
GREEDY=()
compare() {
    local a=$1 b=$2 line
    line=$(paste -d' ' <(tr ' ' '\n' <"$RES/greedy-$a.tokens") <(tr ' ' '\n' <"$RES/greedy-$b.tokens") |
        awk 'NF == 0 { next } { n++; if (!($1 in seen)) { seen[$1]; k++ } } NF != 2 { bad++ }
            NF == 2 && $1 != $2 { d++; if (!f) f = n }
            END { if (bad || n == 0) printf "MISMATCH (%d tokens, lengths differ)", n;
                  else if (d) printf "MISMATCH (%d of %d tokens differ, the first at index %d)", d, n, f - 1;
                  else printf "OK (%d identical tokens, %d distinct values)", n, k }')
    case "$line" in OK*) ;; *) STATUS=1 ;; esac
    GREEDY+=("- greedy tokens at $GREEDY_SIZE px, $a vs $b: $line")
    log "${GREEDY[-1]#- }"
}
compare tessera-f32 ref-f32

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
labels_at() {   # the labels timed at size $1
    local l=(tessera-f32 tessera-bf16 ref-f32)
    case " $REF_BF16_SIZES " in *" $1 "*) l+=(ref-bf16) ;; esac
    echo "${l[*]}"
}
for ((r = 1; r <= RUNS; r++)); do
    measure_membw
    for s in $SIZES; do
        for label in $(labels_at "$s"); do
            case "$label" in
            tessera-*) run_label "$label" "$s" "$RES/$label.$s.$r" --top-k "$TOPK" --out "$RES/$label.$s.$r.png" ;;
            *) run_label "$label" "$s" "$RES/$label.$s.$r" --top-k "$TOPK" ;;
            esac
            log "run $r/$RUNS $s px $label: $(grep -h -o 'encoded in [0-9.]* s\|tokens [0-9.]* s\|"t5_s": [0-9.]*\|"tokens_s": [0-9.]*' "$RES/$label.$s.$r.out" | tr '\n' ' ')"
        done
    done
done
measure_membw
printf '%s\n' "${MEMBW_ALL[@]}" >"$RES/membw.txt"

# --- report -----------------------------------------------------------------------------
CMD="bash bench/cpu_t2i.sh${ARGS_GIVEN[*]:+ ${ARGS_GIVEN[*]}}"
[ "$QUICK" = 0 ] || case " ${ARGS_GIVEN[*]:-} " in *" --quick "*) ;; *) CMD="BENCH_QUICK=1 $CMD" ;; esac
DATE=$(date +%Y-%m-%d)
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
CORES=$(nproc)
MEM=$(free -g | awk '/^Mem:/ { print $2 }')
# shellcheck disable=SC1091 # the machine's own file
OS="$(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
SOFT="$(gcc --version | head -1); torch $("$PY" -c 'import torch; print(torch.__version__)') on Debian OpenBLAS ($THREADS torch threads; OpenBLAS 1 thread (OPENBLAS_NUM_THREADS=1) for the decode steps, $REF_GEMM for the T5 encoder and the prefill${GEMM_PROBE:+, chosen by a probe of a 120 x 2048 x 5120 product, GFLOP/s by OpenBLAS threads: $GEMM_PROBE})"
GREEDY_LINES=$(printf '%s\n' "${GREEDY[@]}")
F32_BASE=$(folder_of "$BASE_SIZE" f32)
export CMD RES RUNS THREADS QUICK SIZE_NAME SIZES REF_BF16_SIZES F32_BASE DATE CPU CORES MEM OS SOFT PROMPT SEED CFG TOPK TOPP TEMP GREEDY_LINES
"$PY" - <<'PYEOF' || die "the report failed"
import json, os, re, statistics

E = os.environ
res, runs = E["RES"], int(E["RUNS"])
sizes = [int(s) for s in E["SIZES"].split()]
ref_bf16_sizes = [int(s) for s in E["REF_BF16_SIZES"].split()]
cfg = json.load(open(os.path.join(E["F32_BASE"], "config.json")))
g, t5 = cfg["gpt"], cfg["t5"]
d, L, f, V, T = g["dim"], g["n_layer"], g["ffn_dim"], g["vocab_size"], g["cls_token_num"]
ds = 2 ** (len(cfg["vq"]["ch_mult"]) - 1)
# Weights read per decode step, once for both CFG rows: every block's wqkv, wo, w1, w3, w2
# and the output head (norms, embedding rows: < 0.1%, left out).
w_step = L * (4 * d * d + 3 * d * f) + V * d
# The T5 encoder's matrices (the embedding rows it reads are left out).
t5_inner = t5["n_head"] * t5["d_kv"]
w_t5 = t5["n_layer"] * (4 * t5["d_model"] * t5_inner +
                        (3 if t5["ff_gated"] else 2) * t5["d_model"] * t5["d_ff"])


def rss_mib(stem):
    t = open(stem + ".time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024


def tessera(stem, n_tokens):
    """The CLI's lines: "loaded NAME in S s on ...", "prompt: N text tokens, encoded in S s",
    "1 image(s): tokens S s (R tokens/s), VQ decode D s". The tokens time is taken from S
    or from n_tokens / R, whichever is printed more precisely."""
    t = open(stem + ".out").read()
    m = re.search(r"(\d+) image\(s\): tokens ([\d.]+) s \(([\d.]+) tokens/s\), "
                  r"VQ decode ([\d.]+) s", t)
    p = re.search(r"prompt: (\d+) text tokens, encoded in ([\d.]+) s", t)
    if not m or not p:
        raise SystemExit("no timing lines in %s.out" % stem)
    n, secs, rate = int(m.group(1)), float(m.group(2)), float(m.group(3))
    tok = secs
    if rate > 0 and 0.05 / rate < 0.005 / max(secs, 1e-9):
        tok = n * n_tokens / rate
    load = re.search(r"loaded .* in ([\d.]+) s on", t)
    return {"t5_s": float(p.group(2)), "text_tokens": int(p.group(1)), "tokens_s": tok,
            "decode_s": float(m.group(4)), "load_s": float(load.group(1)) if load else None}


def reference(stem):
    return json.loads(open(stem + ".out").read().strip().splitlines()[-1])


def collect(label, size):
    out = []
    for r in range(1, runs + 1):
        stem = "%s/%s.%d.%d" % (res, label, size, r)
        row = (tessera(stem, (size // ds) ** 2) if label.startswith("tessera")
               else reference(stem))
        row["rss"] = rss_mib(stem)
        row["total_s"] = row["t5_s"] + row["tokens_s"] + row["decode_s"]
        out.append(row)
    return out


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


LABELS = ("tessera-f32", "tessera-bf16", "ref-f32", "ref-bf16")
data = {}
for s in sizes:
    for lab in LABELS:
        if lab != "ref-bf16" or s in ref_bf16_sizes:
            data[lab, s] = collect(lab, s)

membw = [tuple(float(x.split("=")[1]) for x in line.split())
         for line in open(os.path.join(res, "membw.txt")).read().split("\n") if line.strip()]
bw_best = max(b for b, _ in membw)
bw_med = statistics.median(m for _, m in membw)


def floor_bytes(n_tokens, text_pos, bpw):
    """Bytes the token generation reads at least: the weights once per token (the prefill
    and n_tokens - 1 decode steps), plus at each decode step the f32 K and V of both CFG
    rows over the text_pos text positions and the image tokens so far."""
    kv_pos = sum(text_pos + s for s in range(1, n_tokens))
    return n_tokens * w_step * bpw + 2 * L * 2 * d * 4 * kv_pos


if E["QUICK"] == "1":
    print("## LlamaGen t2i smoke test on the CPU (--quick: tiny shapes, not a measurement), %s\n"
          % E["DATE"])
else:
    print("## LlamaGen GPT-XL text-to-image on the CPU, %s\n" % E["DATE"])
print("| | |\n|---|---|")
print("| command | `%s` |" % E["CMD"])
print("| date | %s |" % E["DATE"])
print("| machine | %s, %s cores, %s GiB memory, %s |" % (E["CPU"], E["CORES"], E["MEM"], E["OS"]))
print("| software | %s; %s threads everywhere |" % (E["SOFT"], E["THREADS"]))
print("| model | %s; random weights in the official layouts, converted by tools/convert.py "
      "llamagen --t5; T5's sentencepiece model is the test fixture's (800 pieces; T5's own "
      "is not available offline) |" % E["SIZE_NAME"])
print("| workload | one image of the prompt \"%s\", seed %s, cfg %s, top-k %s, top-p %s, "
      "temperature %s (upstream's sample_t2i.py defaults), at %s px |"
      % (E["PROMPT"], E["SEED"], E["CFG"], E["TOPK"], E["TOPP"], E["TEMP"],
         " and ".join(str(s) for s in sizes)))
print("| bandwidth | %s-thread streaming reads (bench/membw.c), best/median GB/s per "
      "measurement: %s |" % (E["THREADS"], ", ".join("%.1f/%.1f" % bm for bm in membw)))
print()
print("### Results (%s)\n" % ("medians of %d runs" % runs if runs > 1 else "one run"))
print("| px | implementation | weights | text tokens | T5 (s) | tokens (s) | ms / token "
      "| VQ decode (s) | total (s) | peak RSS (MiB) | load (s) | tokens / floor |")
print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
NAMES = {"tessera-f32": ("Tessera (C, CPU backend)", "f32", 4),
         "tessera-bf16": ("Tessera (C, CPU backend)", "bf16", 2),
         "ref-f32": ("PyTorch reference", "f32", 4),
         "ref-bf16": ("PyTorch reference", "bf16-rounded, fp32 compute", 4)}
for s in sizes:
    n_tok = (s // ds) ** 2
    for lab in LABELS:
        if (lab, s) not in data:
            continue
        rs = data[lab, s]
        name, w, bpw = NAMES[lab]
        # Tessera keeps the prompt's valid text positions only; the reference (as upstream)
        # all cls_token_num, the padded ones masked.
        text_pos = int(med(rs, "text_tokens")) if lab.startswith("tessera") else T
        fl = floor_bytes(n_tok, text_pos, bpw) / (bw_best * 1e9)
        tok = med(rs, "tokens_s")
        load = med(rs, "load_s")
        print("| %d | %s | %s | %d | %.2f | %.2f | %.1f | %.2f | %.2f | %.0f | %s | %.2fx |"
              % (s, name, w, med(rs, "text_tokens"), med(rs, "t5_s"), tok, 1e3 * tok / n_tok,
                 med(rs, "decode_s"), med(rs, "total_s"), med(rs, "rss"),
                 "%.2f" % load if load is not None else "-", tok / fl))
print()
if runs > 1:
    print("Each run's T5 / tokens / VQ decode in seconds:\n")
    for (lab, s), rs in data.items():
        print("- %d px %s: %s" % (s, lab, ", ".join("%.2f/%.2f/%.2f" % (r["t5_s"], r["tokens_s"],
                                                                     r["decode_s"]) for r in rs)))
    print()
print("| px | speed-up | total / image | T5 encoding | token generation | VQ decode |")
print("|---:|---|---:|---:|---:|---:|")
for s in sizes:
    for name, a, b in (("Tessera f32 vs reference f32", "tessera-f32", "ref-f32"),
                       ("Tessera bf16 vs reference on the same bf16 weights", "tessera-bf16",
                        "ref-bf16"),
                       ("Tessera bf16 vs reference f32", "tessera-bf16", "ref-f32")):
        if (a, s) not in data or (b, s) not in data:
            continue

        def ratio(key):
            x, y = med(data[a, s], key), med(data[b, s], key)
            return "%.2fx" % (y / x) if x > 0 else "-"
        print("| %d | %s | %s | %s | %s | %s |" % (s, name, ratio("total_s"), ratio("t5_s"),
                                                  ratio("tokens_s"), ratio("decode_s")))
print()
missing = [s for s in sizes if s not in ref_bf16_sizes]
if missing and ref_bf16_sizes:
    print("The reference on the bf16 folder (fp32 compute on the bf16-rounded weights) ran at "
          "%s px only, not at %s px (--ref-bf16-sizes), to keep the run short.\n"
          % (" and ".join(str(s) for s in ref_bf16_sizes), " and ".join(str(s) for s in missing)))
elif missing:
    print("The reference on the bf16 folder did not run (--ref-bf16-sizes none).\n")

# Floors and the T5's arithmetic.
print("**Floor of the token generation.** Every token takes one pass over the GPT's "
      "decode-step matrices (%d blocks of wqkv, wo, w1, w3, w2, and the output head: %.1f M "
      "weights, %.2f GB in f32, %.2f GB in bf16) for both CFG rows, plus, at each decode step, "
      "the f32 K and V of both rows over the text positions and the image tokens so far. "
      "Tessera keeps only the prompt's valid text positions; the reference, like upstream, "
      "all %d (the padded ones masked). At the best pass (%.1f GB/s) and the median (%.1f "
      "GB/s):\n" % (L, w_step / 1e6, w_step * 4 / 1e9, w_step * 2 / 1e9, T, bw_best, bw_med))
print("| px | tokens | weights | text positions | GB / image | floor at %.1f GB/s (s) "
      "| floor at %.1f GB/s (s) |" % (bw_best, bw_med))
print("|---:|---:|---|---:|---:|---:|---:|")
for s in sizes:
    n_tok = (s // ds) ** 2
    n_text = int(med(data["tessera-f32", s], "text_tokens"))
    for w, bpw, tp in (("f32 (Tessera)", 4, n_text), ("bf16 (Tessera)", 2, n_text),
                       ("f32 (reference)", 4, T)):
        b = floor_bytes(n_tok, tp, bpw)
        print("| %d | %d | %s | %d | %.1f | %.2f | %.2f |"
              % (s, n_tok, w, tp, b / 1e9, b / (bw_best * 1e9), b / (bw_med * 1e9)))
print()
print("\"tokens / floor\" above uses the best pass. The floor counts bytes only: the "
      "prefill's arithmetic (the text positions, twice for CFG, through the whole GPT) and "
      "sampling are left out.\n")
n_text = int(med(data["tessera-f32", sizes[0]], "text_tokens"))
lines = []
for lab, rows in (("tessera-f32", n_text), ("tessera-bf16", n_text), ("ref-f32", T),
                  ("ref-bf16", T)):
    # The encoding does not depend on the image size: the median over every size's runs.
    secs = [r["t5_s"] for (l, _), rs in data.items() if l == lab for r in rs]
    if secs:
        secs = statistics.median(secs)
        lines.append("%s %s" % (lab, "%.0f" % (2.0 * rows * w_t5 / secs / 1e9) if secs > 0
                                else "- (0.00 s printed)"))
print("**T5 encoding.** The encoder's matrices are %.0f M weights (%.2f GB in f32). Tessera "
      "encodes the prompt's %d valid positions (%.0f GFLOP in the matrices); the reference, "
      "like upstream's T5Embedder (padding=\"max_length\"), all %d (%.0f GFLOP), so the T5 "
      "is arithmetic-bound rather than bandwidth-bound (reading the weights once takes %.2f s "
      "in f32 at %.1f GB/s). Achieved GFLOP/s in the encoder's matrices (medians over all "
      "runs): %s. Tessera's T5 time "
      "(the CLI's \"encoded in\", two decimals) also holds the cleaning, the tokenizer and "
      "cap_proj of the prompt and null rows (%.1f M weights); the reference's holds the "
      "cleaning, the tokenizer, the encoder and the left padding, and runs cap_proj in its "
      "prefill, as upstream does. The sentencepiece model is the test fixture's 800-piece "
      "one, which splits the prompt into %d pieces (</s> included) where T5's own 32k-piece "
      "model gives roughly one piece per word: Tessera's T5 and prefill work scale with that "
      "count, the reference's (120 positions) does not.\n"
      % (w_t5 / 1e6, w_t5 * 4 / 1e9, n_text, 2.0 * n_text * w_t5 / 1e9, T,
         2.0 * T * w_t5 / 1e9, w_t5 * 4 / (bw_best * 1e9), bw_best, "; ".join(lines),
         (t5["d_model"] * d + d * d) / 1e6, n_text))
print("\"Total\" is T5 + tokens + VQ decode and leaves out loading. Tessera maps its weights "
      "(read into the page cache before every run), so they are paged in during the T5 "
      "encoding and the first steps and counted there, and its peak RSS includes those mapped "
      "pages; the reference copies its weights into memory while loading (a bf16 folder upcast "
      "to f32), which \"load\" holds, and reaches its peak RSS there. "
      "The timed runs sample, and the implementations use different random generators, so "
      "their tokens differ; the work per step does not. The reference's KV cache grows by "
      "concatenation (llamagen_ref.llama_block), upstream's is preallocated and every step "
      "attends over its full length: both read about the same bytes.\n")
print("Same computation (--top-k 1, cfg %s, same weights, same settings):\n" % E["CFG"])
print(E["GREEDY_LINES"])
PYEOF
[ "$STATUS" -eq 0 ] || die "greedy tokens differ between implementations (see above)"
