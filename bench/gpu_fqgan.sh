#!/usr/bin/env bash
# gpu_fqgan.sh - FQGAN FAR-B (dual, ds16, 256 px) on one GPU: Tessera's CUDA backend against
# the PyTorch reference in bf16, side by side in one run, and the cost of the k head
# sub-steps against the trunk step. For the device machine, one command:
#
#   bash bench/gpu_fqgan.sh [--quick] [--runs N] [--batches "1 16"] [--no-split]
#                           [--prebuilt auto|yes|no] [--budget 540] [--dry-run]
#
# Options:
#   --runs N          timed runs per configuration (medians; default 3, --quick 1)
#   --batches LIST    images per run, each a [cond, uncond] pair (default "1 16"; --quick "1")
#   --quick           tiny shapes (bench/cpu_fqgan.sh --quick): a smoke test; figures mean nothing
#   --no-split        skip the trunk / head split (no variant folders, no extra runs)
#   --prebuilt MODE   auto (default): build with `make CUDA=1` when this machine has Tessera's C
#                     build dependencies, else unpack bench/upstream/prebuilt.tar.gz (made by
#                     bench/fetch_upstream.sh; refused when the C/CUDA sources changed since);
#                     yes: always the pack; no: never
#   --budget SECONDS  start no timed run after this many seconds from the start (default 540,
#                     for the device tool's 600 s limit); runs left out are listed as skipped
#   --dry-run         no GPU: everything on the CPU (Tessera --device cpu, the reference on
#                     the CPU, its bf16 path included) to check the script itself; figures
#                     mean nothing
#
# Environment: PYTHON (default python3: the one with CUDA torch; it also writes the
# weights), BENCH_CACHE (default build/bench-fqgan, build/bench-fqgan-quick with --quick:
# the folders bench/cpu_fqgan.sh makes, reused), OUT (where the report and logs go; default
# BENCH_CACHE/gpu-report), MAKE_JOBS (16), STEP_TIMEOUT (seconds per process, default 300).
#
# Device call: command `bash bench/gpu_fqgan.sh`, carry ["bench/upstream/prebuilt.tar.gz"]
# if the device machine may lack the C build dependencies (run bash bench/fetch_upstream.sh
# here first), timeout 600. Estimated, not yet timed: 6 to 9 minutes on an H100 with the
# build, the weights (written in the background while it builds) and 3 runs.
#
# What it does:
#  0. checks for a GPU (nvidia-smi) and a CUDA torch, and stops at once without them;
#  1. writes the weights in the background (bench/cpu_fqgan.sh --prepare-only: random FAR-B +
#     FQGAN-Dual ds16 in the official layouts, converted to f32 and bf16 folders, and the
#     split's variants in bf16: head 1 layer instead of 3, trunk 12 layers instead of 24)
#     while it builds build/tessera with CUDA=1 (or unpacks the prebuilt pack);
#  2. greedy parity (--top-k 1): Tessera --device cuda-fp32 on the f32 folder against the
#     reference on CUDA in fp32 with TF32 off; every sub-token compared. A mismatch is
#     reported; the timings still run;
#  3. for each batch, N times, fresh processes: Tessera --device cuda on the bf16 folder (its
#     own "tokens ... s, VQ decode ... s" line; the process's first generation, so one-time
#     costs such as graph capture are included), the two variants (tokens only), and the
#     reference on CUDA in bf16 (bench/reference_fqgan.py --warmup 1: one untimed generation
#     first); then one reference run with --split (a synchronize around every block) for its
#     measured trunk / head split. Class 207, seed 0, cfg 2.0, top-k 0, top-p 1,
#     temperature 1 (upstream's reported setting);
#  4. writes gpu-fqgan-report.md (printed on stdout too) and gpu-fqgan-logs.tar.gz to OUT.
# A failed process is reported in the table and does not stop the others. Exit status 1
# when the greedy check failed or a process failed.
set -euo pipefail

QUICK=0 RUNS='' BATCHES='' SPLIT=1 PREBUILT=auto DRY=0 BUDGET=540
ARGS_GIVEN=("$@")
usage() { sed -n '2,52p' "$0" | sed 's/^# \{0,1\}//'; }
need() { [ $# -ge 2 ] || { echo "gpu_fqgan.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1; shift ;;
    --runs) need "$@"; RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#*=}; shift ;;
    --batches) need "$@"; BATCHES=${2//,/ }; shift 2 ;;
    --batches=*) BATCHES=${1#*=}; BATCHES=${BATCHES//,/ }; shift ;;
    --no-split) SPLIT=0; shift ;;
    --prebuilt) need "$@"; PREBUILT=$2; shift 2 ;;
    --prebuilt=*) PREBUILT=${1#*=}; shift ;;
    --dry-run) DRY=1; shift ;;
    --budget) need "$@"; BUDGET=$2; shift 2 ;;
    --budget=*) BUDGET=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_fqgan.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "gpu_fqgan.sh: $*" >&2; exit 1; }
posint() { case "$2" in '' | *[!0-9]* | 0) die "$1 must be a positive integer (got '$2')" ;; esac; }
[ -n "$RUNS" ] || RUNS=$([ "$QUICK" = 1 ] && echo 1 || echo 3)
[ -n "$BATCHES" ] || BATCHES=$([ "$QUICK" = 1 ] && echo 1 || echo "1 16")
posint --runs "$RUNS"
posint --budget "$BUDGET"
for b in $BATCHES; do posint --batches "$b"; done
case "$PREBUILT" in auto | yes | no) ;; *) die "--prebuilt must be auto, yes or no" ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
posint STEP_TIMEOUT "$STEP_TIMEOUT"
CLASS=207 SEED=0 CFG=2.0 TOPK=0 TOPP=1.0 TEMP=1.0 NSUB=2
if [ "$QUICK" = 1 ]; then DEFAULT_CACHE=build/bench-fqgan-quick HALF_LAYERS=1   # as bench/cpu_fqgan.sh
else DEFAULT_CACHE=build/bench-fqgan HALF_LAYERS=12; fi
CACHE=${BENCH_CACHE:-$DEFAULT_CACHE}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
OUTDIR=${OUT:-$CACHE/gpu-report}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
RES=$CACHE/gpu-results
rm -rf "$RES"
mkdir -p "$RES"
: >"$RES/failures.txt"
log() { echo "== [$(printf '%4d' "$SECONDS") s] $*" | tee -a "$RES/console.log" >&2; }

if [ "$DRY" = 1 ]; then
    TS_DEV=cpu TS_DEV_FP32=cpu REF_DEV=cpu
    GPU_LINE="none: --dry-run on the CPU ($(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores)"
else
    TS_DEV=cuda TS_DEV_FP32=cuda-fp32 REF_DEV=cuda
fi

# --- 0. preflight ---------------------------------------------------------------------------
command -v "$PY" >/dev/null || die "$PY not found (set PYTHON to the python3 that has CUDA torch)"
if [ "$DRY" = 0 ]; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA GPU here (try --dry-run to check the script on a CPU)"
    GPU_LINE=$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null | head -1) ||
        die "nvidia-smi failed: $(nvidia-smi 2>&1 | head -3)"
    [ -n "$GPU_LINE" ] || die "nvidia-smi lists no GPU"
    TORCH_LINE=$("$PY" -c 'import sys, torch
if not torch.cuda.is_available(): sys.exit("torch %s: torch.cuda.is_available() is False" % torch.__version__)
print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1) || die "$PY has no usable CUDA torch: $TORCH_LINE"
    OTHER=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null || true)
else
    TORCH_LINE=$("$PY" -c 'import torch; print("torch", torch.__version__, "(CPU)")' 2>&1) || die "$PY cannot import torch"
    OTHER=''
fi
log "GPU: $GPU_LINE; $TORCH_LINE"

# --- 1. weights in the background, the build in the foreground --------------------------------
PREP=(bash bench/cpu_fqgan.sh --prepare-only --variant-dtypes bf16)
[ "$QUICK" = 0 ] || PREP+=(--quick)
[ "$SPLIT" = 1 ] || PREP+=(--no-split)
log "weights: ${PREP[*]} (background, log in prepare.log)"
PYTHON=$PY BENCH_CACHE=$CACHE "${PREP[@]}" >"$RES/prepare.log" 2>&1 &
PREP_PID=$!

have_build_deps() {
    command -v make >/dev/null && command -v "${CC:-gcc}" >/dev/null || return 1
    local inc
    inc=$(pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
    # shellcheck disable=SC2086 # a flag list
    printf '#include <jansson.h>\n#include <png.h>\n#include <microhttpd.h>\n#include <uv.h>\n#include <cblas.h>\nint main(void) { return 0; }\n' |
        "${CC:-gcc}" -x c $inc - -o /dev/null -ljansson -lpng -lmicrohttpd -luv -lopenblas 2>/dev/null
}
TS_ENV=(env)
if [ "$DRY" = 1 ]; then
    log "building build/tessera (CPU: --dry-run)"
    make -j"$(nproc)" build/tessera >"$RES/build.log" 2>&1 || { tail -n 30 "$RES/build.log" >&2; die "make failed"; }
    TESSERA=build/tessera BUILD_NOTE="built here without CUDA (--dry-run)"
elif [ "$PREBUILT" != yes ] && have_build_deps; then
    log "building build/tessera with CUDA=1 (make -j${MAKE_JOBS:-16})"
    make -j"${MAKE_JOBS:-16}" CUDA=1 build/tessera >"$RES/build.log" 2>&1 ||
        { tail -n 30 "$RES/build.log" >&2; die "the CUDA=1 build failed (log above)"; }
    TESSERA=build/tessera BUILD_NOTE="built here: make CUDA=1"
else
    [ "$PREBUILT" != no ] || die "this machine lacks Tessera's C build dependencies and --prebuilt no was given"
    PACK=$ROOT/bench/upstream/prebuilt.tar.gz
    [ -f "$PACK" ] || die "this machine lacks Tessera's C build dependencies (libjansson, libpng, libmicrohttpd, libuv, OpenBLAS) and there is no $PACK: run 'bash bench/fetch_upstream.sh' on the development machine and carry bench/upstream/prebuilt.tar.gz"
    rm -rf "$CACHE/prebuilt"
    tar -xzf "$PACK" -C "$CACHE"
    PB=$CACHE/prebuilt
    pb() { sed -n "s/^$1=//p" "$PB/MANIFEST"; }
    [ "$(pb cuda)" = 1 ] || die "$PACK was built without CUDA; rebuild it with bash bench/fetch_upstream.sh"
    HASH=$(bash bench/gpu.sh --print-source-hash) || die "bash bench/gpu.sh --print-source-hash failed"
    [ "$(pb source_hash)" = "$HASH" ] ||
        die "$PACK was built from other sources (hash $(pb source_hash), these are $HASH; git $(pb git_rev)): run 'bash bench/fetch_upstream.sh' again"
    TESSERA=$PB/bin/tessera
    LIBS=$PB/lib
    if LD_LIBRARY_PATH="$LIBS" ldd "$TESSERA" | grep -q 'not found'; then
        # libcublas: the toolkit's, else torch's wheels (nvidia/*/lib).
        for d in /usr/local/cuda/lib64 $("$PY" -c 'import nvidia, os
for p in nvidia.__path__:
    for r, _, fs in os.walk(p):
        if any(f.startswith("libcublas") for f in fs): print(r)' 2>/dev/null); do
            [ -d "$d" ] && LIBS=$LIBS:$d
        done
    fi
    TS_ENV=(env "LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    if "${TS_ENV[@]}" ldd "$TESSERA" | grep 'not found' >&2; then die "the prebuilt tessera misses the libraries above"; fi
    BUILD_NOTE="prebuilt on the development machine: git $(pb git_rev), $(pb built)"
fi
log "tessera: $TESSERA ($BUILD_NOTE)"
wait "$PREP_PID" || { tail -n 30 "$RES/prepare.log" >&2; die "writing the weights failed (log above)"; }
log "weights ready under $CACHE"
F32=$CACHE/far-f32 BF16=$CACHE/far-bf16 H1=$CACHE/far-head1-bf16 TH=$CACHE/far-trunkhalf-bf16
for d in "$F32" "$BF16" $([ "$SPLIT" = 0 ] || echo "$H1 $TH"); do
    [ -f "$d/config.json" ] || die "$d was not written (see $RES/prepare.log)"
    cat "$d"/*.safetensors >/dev/null
done

# --- runs -------------------------------------------------------------------------------------
SAMPLING=(--class "$CLASS" --seed "$SEED" --cfg "$CFG" --top-p "$TOPP" --temperature "$TEMP")
FAILED=0
# run_one STEM KIND ARGS...: KIND tessera or ref; output in STEM.out (Tessera's stderr, the
# reference's JSON), logs in STEM.log. A failure is recorded, not fatal.
run_one() {
    local stem=$1 kind=$2 rc=0
    shift 2
    case "$kind" in
    tessera) timeout "$STEP_TIMEOUT" "${TS_ENV[@]}" "$TESSERA" generate "${SAMPLING[@]}" "$@" >"$stem.log" 2>"$stem.out" || rc=$? ;;
    ref) timeout "$STEP_TIMEOUT" "$PY" bench/reference_fqgan.py "${SAMPLING[@]}" "$@" >"$stem.out" 2>"$stem.log" || rc=$? ;;
    esac
    if [ "$kind" = tessera ] && [ "$rc" = 0 ] && [ "$DRY" = 0 ] && ! grep -q '^loaded .* on cuda' "$stem.out"; then
        rc=97   # the CLI fell back to the CPU: not a GPU figure
        echo "gpu_fqgan.sh: not on the GPU: $(grep -m1 'loaded\|notice' "$stem.out")" >>"$stem.out"
    fi
    if [ "$rc" != 0 ]; then
        FAILED=1
        printf '%s\t%s\t%s\n' "$(basename "$stem")" "$rc" "$(tail -n 2 "$stem.out" "$stem.log" 2>/dev/null | grep -v '^==>' | grep . | tail -n 1)" >>"$RES/failures.txt"
        log "FAILED ($rc): $(basename "$stem"); see $stem.out / $stem.log"
        return 1
    fi
    return 0
}

# 2. greedy parity in fp32
log "greedy check (--top-k 1, fp32): tessera --device $TS_DEV_FP32 vs the reference on $REF_DEV"
run_one "$RES/greedy-tessera" tessera --model "$F32" --device "$TS_DEV_FP32" --top-k 1 \
    --tokens-out "$RES/greedy-tessera.tokens" || true
run_one "$RES/greedy-ref" ref --model "$F32" --device "$REF_DEV" --dtype fp32 --top-k 1 --no-decode \
    --tokens-out "$RES/greedy-ref.tokens" || true
if [ -s "$RES/greedy-tessera.tokens" ] && [ -s "$RES/greedy-ref.tokens" ]; then
    GREEDY=$(paste -d' ' <(tr ' ' '\n' <"$RES/greedy-tessera.tokens") <(tr ' ' '\n' <"$RES/greedy-ref.tokens") |
        awk -v k="$NSUB" 'NF == 0 { next } { n++ } NF != 2 { bad++ } NF == 2 && $1 != $2 { d++; if (!f) f = n }
            END { if (bad) printf "MISMATCH (%d sub-tokens, lengths differ)", n;
                  else if (d) printf "MISMATCH (%d of %d sub-tokens differ, the first at position %d, sub-token %d)", d, n, int((f - 1) / k), (f - 1) % k + 1;
                  else printf "OK (%d identical sub-tokens)", n }')
else
    GREEDY="NOT RUN (a process failed)"
fi
case "$GREEDY" in OK*) ;; *) FAILED=1 ;; esac
log "greedy sub-tokens, tessera $TS_DEV_FP32 vs reference $REF_DEV fp32: $GREEDY"

# 3. timed runs; what the budget leaves out is listed in the report
SKIPPED=''
for b in $BATCHES; do
    for ((r = 1; r <= RUNS; r++)); do
        if [ "$SECONDS" -ge "$BUDGET" ]; then
            SKIPPED="$SKIPPED batch $b run $r;"
            log "time budget ($BUDGET s) spent: batch $b run $r skipped"
            continue
        fi
        run_one "$RES/tessera.b$b.$r" tessera --model "$BF16" --device "$TS_DEV" --n "$b" --top-k "$TOPK" \
            --out "$RES/tessera.b$b.$r.png" || true
        if [ "$SPLIT" = 1 ]; then
            run_one "$RES/tessera-head1.b$b.$r" tessera --model "$H1" --device "$TS_DEV" --n "$b" --top-k "$TOPK" \
                --tokens-out "$RES/tessera-head1.b$b.$r.tokens" || true
            run_one "$RES/tessera-trunkhalf.b$b.$r" tessera --model "$TH" --device "$TS_DEV" --n "$b" --top-k "$TOPK" \
                --tokens-out "$RES/tessera-trunkhalf.b$b.$r.tokens" || true
        fi
        run_one "$RES/ref.b$b.$r" ref --model "$BF16" --device "$REF_DEV" --dtype bf16 --n "$b" --top-k "$TOPK" \
            --warmup 1 || true
        log "batch $b run $r/$RUNS: tessera $(grep -h -o 'tokens [0-9.]* s' "$RES/tessera.b$b.$r.out" 2>/dev/null | head -1), reference $(grep -h -o '"tokens_s": [0-9.]*' "$RES/ref.b$b.$r.out" 2>/dev/null | head -1)"
    done
    if [ "$SPLIT" = 1 ] && [ "$SECONDS" -lt "$BUDGET" ]; then
        run_one "$RES/ref-split.b$b" ref --model "$BF16" --device "$REF_DEV" --dtype bf16 --n "$b" --top-k "$TOPK" \
            --warmup 1 --split --no-decode || true
    fi
done

# --- 4. report ----------------------------------------------------------------------------------
CMD="bash bench/gpu_fqgan.sh${ARGS_GIVEN[*]:+ ${ARGS_GIVEN[*]}}"
DATE=$(date -u +%Y-%m-%d)
HOST="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export CMD DATE HOST GIT GPU_LINE TORCH_LINE OTHER BUILD_NOTE RES RUNS BATCHES SPLIT QUICK DRY \
    HALF_LAYERS GREEDY F32 TS_DEV TS_DEV_FP32 REF_DEV SKIPPED BUDGET
"$PY" - >"$OUTDIR/gpu-fqgan-report.md" <<'PYEOF' || die "the report failed"
import json, os, re, statistics

E = os.environ
res, runs, split = E["RES"], int(E["RUNS"]), E["SPLIT"] == "1"
batches = [int(b) for b in E["BATCHES"].split()]
cfg = json.load(open(os.path.join(E["F32"], "config.json")))["gpt"]
d, L, hl, k, ffn, V, P = (cfg[x] for x in ("dim", "n_layer", "head_layers", "n_sub", "ffn_dim",
                                          "vocab_size", "block_size"))
half = int(E["HALF_LAYERS"])
block = 4 * d * d + 3 * d * ffn
w_trunk, w_head, w_out, w_agg = L * block, k * hl * block, k * V * d, k * d * d


def ran(stem):
    return os.path.exists(stem + ".out")


def tessera(stem):
    """The CLI's "N image(s): tokens S s (R tokens/s), VQ decode D s" line. S has two
    decimals; N * positions / R is finer, so the tokens time is taken from R."""
    try:
        t = open(stem + ".out").read()
    except OSError:
        return None
    m = re.search(r"(\d+) image\(s\): tokens ([\d.]+) s \(([\d.]+) tokens/s\), "
                  r"VQ decode ([\d.]+) s", t)
    if not m:
        return None
    n, secs, rate = int(m.group(1)), float(m.group(2)), float(m.group(3))
    return {"tokens_s": n * P / rate if rate > 0 else secs, "decode_s": float(m.group(4))}


def reference(stem):
    try:
        lines = open(stem + ".out").read().strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def med(rows, key):
    vals = [r[key] for r in rows if r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(x, f="%.3f"):
    return "n/a" if x is None else f % x


def ratio(a, b):
    """a / b, None when either is missing or b is 0."""
    return None if a is None or not b else a / b


def collect(fn, name, b):
    return [fn("%s/%s.b%d.%d" % (res, name, b, r)) for r in range(1, runs + 1)]


title = "FQGAN smoke test (--quick, tiny shapes, not a measurement)" if E["QUICK"] == "1" \
    else "FQGAN FAR-B class-to-image"
where = "on the CPU (--dry-run: no GPU, not a measurement)" if E["DRY"] == "1" else "on one GPU"
print("## %s %s, %s\n" % (title, where, E["DATE"]))
print("| | |\n|---|---|")
print("| command | `%s` |" % E["CMD"])
print("| date | %s (UTC) |" % E["DATE"])
print("| GPU | %s |" % E["GPU_LINE"])
if E.get("OTHER"):
    print("| other GPU processes | %s |" % E["OTHER"].replace("\n", "; "))
print("| host | %s |" % E["HOST"])
print("| software | Tessera git %s (%s), `--device %s`; reference: %s, bf16 timed, fp32 "
      "with TF32 off for the greedy check |" % (E["GIT"], E["BUILD_NOTE"], E["TS_DEV"], E["TORCH_LINE"]))
print("| model | FAR: %d layers, dim %d, ffn %d, %d-layer head, %d sub-tokens of %d codes, %d "
      "positions; random weights in the official layout, bf16 folder |" % (L, d, ffn, hl, k, V, P))
print("| workload | class 207, seed 0, cfg 2.0 on every sub-token, top-k 0, top-p 1, "
      "temperature 1; each image a [cond, uncond] pair |")
print()
if E.get("SKIPPED"):
    print("**Time budget (%s s) spent: skipped%s** The medians below are over the runs that "
          "ran.\n" % (E["BUDGET"], E["SKIPPED"].rstrip(";")))
print("Greedy parity (--top-k 1, fp32: Tessera `--device %s` on the f32 folder against the "
      "reference on %s in fp32, TF32 off): %s\n" % (E["TS_DEV_FP32"], E["REF_DEV"], E["GREEDY"]))

print("### Tokens and decode (medians of %d fresh processes)\n" % runs)
print("| images | implementation | tokens (s) | ms / position | images/s (tokens) | VQ decode (s) "
      "| total (s) | speed-up, tokens | speed-up, total |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for b in batches:
    ts = collect(tessera, "tessera", b)
    rf = collect(reference, "ref", b)
    tt, td = med(ts, "tokens_s"), med(ts, "decode_s")
    rt, rd = med(rf, "tokens_s"), med(rf, "decode_s")
    tot_t = None if None in (tt, td) else tt + td
    tot_r = None if None in (rt, rd) else rt + rd
    for name, t, dec, up, upt in (
            ("Tessera (`--device %s`, bf16 weights)" % E["TS_DEV"], tt, td, ratio(rt, tt),
             ratio(tot_r, tot_t)),
            ("PyTorch reference (fqgan_ref.py, %s bf16)" % E["REF_DEV"], rt, rd, None, None)):
        print("| %d | %s | %s | %s | %s | %s | %s | %s | %s |"
              % (b, name, fmt(t), fmt(None if t is None else 1e3 * t / P, "%.2f"),
                 fmt(ratio(b, t), "%.2f"), fmt(dec),
                 fmt(None if None in (t, dec) else t + dec),
                 "" if up is None else "%.2fx" % up, "" if upt is None else "%.2fx" % upt))
print()
print("Each run's tokens / VQ decode in seconds:\n")
for b in batches:
    for name, fn in (("tessera", tessera), ("tessera-head1", tessera),
                     ("tessera-trunkhalf", tessera), ("ref", reference)):
        if not split and name.startswith("tessera-"):
            continue
        rows = collect(fn, name, b)
        stems = ["%s/%s.b%d.%d" % (res, name, b, r) for r in range(1, runs + 1)]
        print("- %s, %d image(s): %s" % (name, b, ", ".join(
            ("failed" if ran(st) else "skipped") if r is None
            else "%.3f/%.3f" % (r["tokens_s"], r["decode_s"]) for r, st in zip(rows, stems))))
print()

if split:
    print("### Per position: the trunk step against the %d head sub-steps\n" % k)
    print("| images | implementation | trunk: %d blocks (ms) | head: %d x %d blocks (ms) | rest (ms) "
          "| head sub-steps (ms) | head sub-steps / trunk step | how |" % (L, k, hl))
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for b in batches:
        t = med(collect(tessera, "tessera", b), "tokens_s")
        th = med(collect(tessera, "tessera-trunkhalf", b), "tokens_s")
        t1 = med(collect(tessera, "tessera-head1", b), "tokens_s")
        if None in (t, th, t1):
            print("| %d | Tessera | n/a (a run failed or was skipped) | | | | | |" % b)
        elif t - th <= 0:
            print("| %d | Tessera | not resolved: the %d-layer trunk was not faster | | | | | |"
                  % (b, half))
        else:
            trunk = L * (t - th) / (L - half)
            head = hl * (t - t1) / (hl - 1)
            rest = t - trunk - head
            print("| %d | Tessera | %.3f | %.3f | %.3f | %.3f | %.2f | estimated: %d vs %d trunk "
                  "layers, %d vs 1 head layers |"
                  % (b, 1e3 * trunk / P, 1e3 * head / P, 1e3 * rest / P, 1e3 * (head + rest) / P,
                     (head + rest) / trunk, L, half, hl))
        r = reference("%s/ref-split.b%d" % (res, b))
        if r is None or r.get("trunk_s") is None:
            print("| %d | PyTorch reference | n/a (the run failed or was skipped) | | | | | |" % b)
        else:
            tr, he, re_ = r["trunk_s"], r["head_s"], r["rest_s"]
            print("| %d | PyTorch reference | %.3f | %.3f | %.3f | %.3f | %.2f | measured: "
                  "synchronized timers around every block (tokens %.3f s in that run) |"
                  % (b, 1e3 * tr / P, 1e3 * he / P, 1e3 * re_ / P, 1e3 * (he + re_) / P,
                     (he + re_) / tr, r["tokens_s"]))
    print("| | weights read (bandwidth model) | %.1f M | %.1f M | %.1f M | %.1f M | %.2f | "
          "counted from the shapes |"
          % (w_trunk / 1e6, w_head / 1e6, (w_out + w_agg) / 1e6,
             (w_head + w_out + w_agg) / 1e6, (w_head + w_out + w_agg) / w_trunk))
    print()
    print("\"rest\": token time outside the trunk's and head's blocks (the k output projections, "
          "final norm, CFG mix and sampling of each head sub-step; the trunk's input embedding "
          "and aggregation_layer). \"head sub-steps\" = head blocks + rest. Tessera's CLI prints "
          "no per-phase times, so its split is estimated from separate runs of the same FAR with "
          "%d instead of %d trunk layers and 1 instead of %d head layers; one-time costs of the "
          "process's first generation cancel in the differences and land in \"rest\". The "
          "reference's split comes from a separate run with a synchronize around every block, "
          "which adds waits that the timed runs do not have." % (half, L, hl))
    print()
fails = [l.split("\t") for l in open(os.path.join(res, "failures.txt")).read().splitlines() if l]
if fails:
    print("Failed processes (logs in gpu-fqgan-logs.tar.gz):\n")
    for name, rc, last in fails:
        print("- %s: exit %s: %s" % (name, rc, last))
PYEOF
tar -czf "$OUTDIR/gpu-fqgan-logs.tar.gz" -C "$CACHE" gpu-results 2>/dev/null || true
cat "$OUTDIR/gpu-fqgan-report.md"
log "report: $OUTDIR/gpu-fqgan-report.md"
[ "$FAILED" = 0 ] || die "a process failed or the greedy check did not pass (see the report)"
