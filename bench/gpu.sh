#!/usr/bin/env bash
# gpu.sh - Tessera's CUDA backend against the official LlamaGen PyTorch code, side by side on
# one GPU, in one command for the device machine.
#
#   bash bench/gpu.sh [--quick] [--models B,L,XL] [--runs N] [--budget SECONDS]
#                     [--skip test,greedy,cli,ref,serve] [--prebuilt auto|yes|no]
#   bash bench/gpu.sh --build-only           build only, no GPU needed (bench/fetch_upstream.sh)
#   bash bench/gpu.sh --print-source-hash    the hash of the C/CUDA sources a build is made of
#
# Before the device call, on the development machine: `bash bench/fetch_upstream.sh` (the
# LlamaGen code, and prebuilt binaries in case the device machine lacks the C build
# dependencies, into the ignored folder bench/upstream/). The device call: command
# `bash bench/gpu.sh`, carry ["bench/upstream"]. Run from the repository root.
#
# What it does, in this order (docs/benchmarks.md, "GPU (CUDA backend)", explains each figure):
#  0. checks for a GPU (nvidia-smi, torch.cuda) and stops at once without one; starts
#     writing random-weight checkpoints of the real shapes in the official .pt layout
#     (tools/make_random_checkpoints.py) and converting them (tools/convert.py) in the
#     background: GPT-B/L/XL + VQ-16 at 384 px in bf16, and GPT-B at 256 px in bf16 (serving)
#     and f32 (the greedy check);
#  a. builds: `make -j16 CUDA=1`, `make CUDA=1 build/tests/test_cuda` (when tests/test_cuda.c
#     exists) and build/gpu_generate (bench/gpu_generate.c, with the Makefile's CFLAGS and
#     LDLIBS) when the machine has the C build dependencies, else unpacks
#     bench/upstream/prebuilt.tar.gz (refused if the sources changed since it was built);
#     runs ./build/tests/test_cuda and records pass/fail; a failure does not stop the run, it
#     heads the report;
#  b. measures the device's copy bandwidth (bench/gpu_membw.py) and records the GPU;
#     greedy check: Tessera --device cuda-fp32 and the official code in fp32 (TF32 off),
#     --top-k 1, GPT-B 256 px, 8 classes: tokens compared one by one;
#  c. for each model, 8 images of class 207, cfg 4, top-k 2000, seed 0 (16 sequences of 576
#     tokens: the paper's serving table): `tessera generate --device cuda` once (the CLI's
#     own tokens / VQ decode line), then build/gpu_generate (1 warm-up, N timed runs, every
#     step's time, N VQ decodes); then, after serving, the official generate()
#     (bench/gpu_reference.py: bf16, upstream's default, N runs, then fp32 with TF32 as
#     sample_c2i.py, fewer runs) and decode_code; every decode step against its
#     memory-bandwidth floor;
#  d. GPU memory per in-flight image (the KV cache; weights apart);
#  e. `tessera serve --device cuda` on GPT-B 256 px with --max-batch 64 and 256, driven by
#     bench/serve_load.py with 64 and 256 concurrent clients: images/s, p50/p99 latency;
#  f. writes gpu-report.md, gpu-results.json, gpu-logs.tar.gz (every raw log and per-step
#     timing) and gpu-console.log to $OUT (else bench/results/gpu-DATE/), re-rendered after
#     every stage so a cut-off run still leaves its figures; prints a summary table last.
#
# Defaults: --models B,L,XL, --runs 3 (fp32 reference: 1), serving 60 s per level, --budget
# 540 s: stages check the clock and shorten (reference runs, serving windows) to end in
# time. --quick: GPT-B only (unless --models), 1 run, bf16 reference only, 10 s serving.
# Environment: PYTHON (default python3: the one with CUDA torch), BENCH_CACHE (work folder,
# default /tmp/tessera-gpu-bench; checkpoints there are reused), LLAMAGEN_UPSTREAM (default
# bench/upstream/LlamaGen), MAKE_JOBS (16), CUDA (1; --build-only only).
set -euo pipefail

QUICK=0 MODELS_ARG='' RUNS='' BUDGET=540 SKIP='' PREBUILT=auto MODE=bench
usage() { sed -n '2,49p' "$0" | sed 's/^# \{0,1\}//'; }
need() { [ $# -ge 2 ] || { echo "gpu.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1; shift ;;
    --models) need "$@"; MODELS_ARG=$2; shift 2 ;;
    --models=*) MODELS_ARG=${1#*=}; shift ;;
    --runs) need "$@"; RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#*=}; shift ;;
    --budget) need "$@"; BUDGET=$2; shift 2 ;;
    --budget=*) BUDGET=${1#*=}; shift ;;
    --skip) need "$@"; SKIP=$2; shift 2 ;;
    --skip=*) SKIP=${1#*=}; shift ;;
    --prebuilt) need "$@"; PREBUILT=$2; shift 2 ;;
    --prebuilt=*) PREBUILT=${1#*=}; shift ;;
    --build-only) MODE=build; shift ;;
    --print-source-hash) MODE='hash'; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# The C and CUDA sources the binaries are made of (no git needed: the device machine's copy
# of the tree may have no .git).
source_hash() {
    {
        find engine scheduler server api tests -path '*/node_modules' -prune -o -type f \
            \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0
        printf '%s\0' Makefile bench/gpu_generate.c tools/embed_assets.c
    } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "$MODE" = hash ]; then source_hash; exit 0; fi

die() { echo "gpu.sh: $*" >&2; exit 1; }
posint() { case "$2" in '' | *[!0-9]* | 0) die "$1 must be a positive integer (got '$2')" ;; esac; }

# --- building (here for --build-only, or on the device machine) ----------------------------
mkvar() {   # mkvar CUDA NAME: a variable of the Makefile, as make computes it
    # shellcheck disable=SC2016 # $($*) is make's, not the shell's
    make -s --no-print-directory CUDA="$1" --eval 'print-%: ; @echo $($*)' "print-$2"
}
BUILD_DIR=${BUILD_DIR:-build}
build_gpu_generate() {
    local cuda=$1 cflags ldlibs
    cflags=$(mkvar "$cuda" CFLAGS) || return 1
    ldlibs=$(mkvar "$cuda" LDLIBS) || return 1
    cflags=$(printf '%s\n' "$cflags" | sed -e 's/ -MMD\( \|$\)/ /; s/ -MP\( \|$\)/ /')
    mkdir -p "$BUILD_DIR/bench"
    echo "${CC:-gcc} $cflags -c bench/gpu_generate.c -o $BUILD_DIR/bench/gpu_generate.o" >&2
    # shellcheck disable=SC2086 # the flags are word lists
    ${CC:-gcc} $cflags -c bench/gpu_generate.c -o "$BUILD_DIR/bench/gpu_generate.o" || return 1
    # shellcheck disable=SC2086
    ${CC:-gcc} -o "$BUILD_DIR/gpu_generate" "$BUILD_DIR/bench/gpu_generate.o" "$BUILD_DIR/libtessera.a" $ldlibs
}
# build_all CUDA: 0 when tessera and gpu_generate built; TEST_BUILD says how test_cuda went.
# BUILD_DIR (default build) is the Makefile's BUILD.
TEST_BUILD=absent
build_all() {
    local cuda=$1
    make -j"${MAKE_JOBS:-16}" CUDA="$cuda" BUILD="$BUILD_DIR" >&2 || return 1
    build_gpu_generate "$cuda" >&2 || return 1
    if [ -f tests/test_cuda.c ]; then
        if make -j"${MAKE_JOBS:-16}" CUDA="$cuda" BUILD="$BUILD_DIR" "$BUILD_DIR/tests/test_cuda" >&2; then
            TEST_BUILD=built
        else
            TEST_BUILD=failed
        fi
    fi
    return 0
}
if [ "$MODE" = build ]; then
    if ! command -v make >/dev/null || ! command -v "${CC:-gcc}" >/dev/null; then die "make and gcc are needed"; fi
    echo "== building with CUDA=${CUDA:-1}" >&2
    build_all "${CUDA:-1}" || die "the build failed"
    [ "$TEST_BUILD" != failed ] || echo "gpu.sh: WARNING: build/tests/test_cuda did not build" >&2
    echo "== built $BUILD_DIR/tessera, $BUILD_DIR/gpu_generate$([ "$TEST_BUILD" = built ] && echo ", $BUILD_DIR/tests/test_cuda")" >&2
    exit 0
fi

# --- settings -----------------------------------------------------------------------------
PY=${PYTHON:-python3}
[ -n "$RUNS" ] || RUNS=$([ "$QUICK" = 1 ] && echo 1 || echo 3)
posint --runs "$RUNS"
posint --budget "$BUDGET"
FP32_RUNS=1
if [ -z "$MODELS_ARG" ]; then MODELS_ARG=$([ "$QUICK" = 1 ] && echo B || echo B,L,XL); fi
MODELS=()
for m in ${MODELS_ARG//,/ }; do
    case "$m" in
    B | GPT-B | b) MODELS+=(GPT-B) ;;
    L | GPT-L | l) MODELS+=(GPT-L) ;;
    XL | GPT-XL | xl) MODELS+=(GPT-XL) ;;
    *) die "--models: unknown model '$m' (B, L, XL)" ;;
    esac
done
[ ${#MODELS[@]} -gt 0 ] || die "--models is empty"
skip() { case ",$SKIP," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for s in ${SKIP//,/ }; do
    case "$s" in test | greedy | cli | ref | serve) ;; *) die "--skip: unknown stage '$s' (test, greedy, cli, ref, serve)" ;; esac
done
case "$PREBUILT" in auto | yes | no) ;; *) die "--prebuilt must be auto, yes or no" ;; esac
SERVE_DUR=$([ "$QUICK" = 1 ] && echo 10 || echo 60)
CLASS=207 NIMG=8 SEED=0 CFG=4 TOPK=2000
GREEDY_CLASSES=207,360,387,974,88,979,417,279   # upstream sample_c2i.py's labels
UPSTREAM=${LLAMAGEN_UPSTREAM:-bench/upstream/LlamaGen}
WORK=${BENCH_CACHE:-/tmp/tessera-gpu-bench}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUTDIR=${OUT:-bench/results/gpu-$STAMP}
CMDLINE="bash bench/gpu.sh$([ "$QUICK" = 0 ] || echo ' --quick') --models $MODELS_ARG --runs $RUNS --budget $BUDGET${SKIP:+ --skip $SKIP}"

# --- 0. preflight: a GPU, a CUDA torch, the upstream code ---------------------------------------
command -v nvidia-smi >/dev/null ||
    die "nvidia-smi not found: no NVIDIA GPU here. bench/gpu.sh runs on the device machine (docs/benchmarks.md, 'GPU (CUDA backend)')"
GPU_LINE=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1) ||
    die "nvidia-smi failed: $(nvidia-smi 2>&1 | head -3)"
[ -n "$GPU_LINE" ] || die "nvidia-smi lists no GPU"
command -v "$PY" >/dev/null || die "$PY not found (set PYTHON to the python3 that has CUDA torch)"
TORCH_LINE=$("$PY" -c 'import sys, torch
if not torch.cuda.is_available(): sys.exit("torch %s: torch.cuda.is_available() is False" % torch.__version__)
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))' 2>&1) ||
    die "$PY has no usable CUDA torch: $TORCH_LINE"
[ -f "$UPSTREAM/autoregressive/models/generate.py" ] ||
    die "no LlamaGen code at $UPSTREAM: run 'bash bench/fetch_upstream.sh' on the development machine and carry bench/upstream"
UPSTREAM=$(cd "$UPSTREAM" && pwd)
mkdir -p "$OUTDIR" "$WORK"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(cd "$WORK" && pwd)
RES=$WORK/res
rm -rf "$RES"
mkdir -p "$RES"
CONSOLE=$OUTDIR/gpu-console.log
: >"$CONSOLE"
log() { echo "== [$(printf '%3d' "$SECONDS") s] $*" | tee -a "$CONSOLE" >&2; }
note() {   # note STAGE STATUS MESSAGE: recorded for the report
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES/stages.tsv"
    log "$1: $2${3:+: $3}"
}
meta() { printf '%s=%s\n' "$1" "$2" >>"$RES/meta.env"; }
left() { echo $((BUDGET - SECONDS)); }
render() {
    "$PY" bench/gpu_report.py --res "$RES" --work "$WORK" --out "$OUTDIR" "$@" 2>>"$RES/report-errors.log" ||
        log "gpu_report.py failed (see report-errors.log in the logs)"
    tar -czf "$OUTDIR/gpu-logs.tar.gz" -C "$WORK" res 2>/dev/null || true
}

log "GPU: $GPU_LINE; torch: $TORCH_LINE; output: $OUTDIR; work: $WORK; budget $BUDGET s"
OTHER=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null || true)
[ -z "$OTHER" ] || log "WARNING: other processes on the GPU: $OTHER"

meta date "$(date -u '+%Y-%m-%d')"
meta started "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
meta gpu "$GPU_LINE"
meta gpu_clocks "$(nvidia-smi --query-gpu=clocks.max.sm,clocks.max.mem,power.limit,pstate --format=csv,noheader 2>/dev/null | head -1)"
meta gpu_other_processes "${OTHER:-none}"
meta torch "$TORCH_LINE"
meta nvcc "$(nvcc --version 2>/dev/null | tail -1 || echo none)"
meta cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
meta os "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(uname -r)"
meta source_hash "$(source_hash)"
meta upstream_commit "$(sed -n 's/^commit=//p' "$UPSTREAM/.tessera-export" 2>/dev/null || echo unknown)"
meta command "$CMDLINE"
meta quick "$QUICK"
meta models "${MODELS[*]}"
meta runs "$RUNS"
meta fp32_runs "$FP32_RUNS"
meta budget "$BUDGET"
meta workload "class $CLASS x $NIMG images, seed $SEED, cfg $CFG, top-k $TOPK, top-p 1, temperature 1"

# --- 0b. checkpoints and model folders, in the background ---------------------------------
PREP=("${MODELS[@]}")
if ! skip greedy || ! skip serve; then
    case " ${PREP[*]} " in *" GPT-B "*) ;; *) PREP=(GPT-B "${PREP[@]}") ;; esac
fi
mdir() { echo "$WORK/models/$1"; }
prepare_model() {   # prepare_model GPT-X: ckpt/{gpt,vq}.pt, bf16-384/ (+ bf16-256/, f32-256/ for GPT-B)
    local m=$1 d
    d=$(mdir "$m")
    mkdir -p "$d"
    rm -f "$d/.ready" "$d/.failed"
    if [ ! -f "$d/ckpt/vq.pt" ] || [ tools/make_random_checkpoints.py -nt "$d/ckpt/vq.pt" ]; then
        rm -rf "$d/ckpt" "$d"/bf16-* "$d"/f32-*
        "$PY" tools/make_random_checkpoints.py --gpt-model "$m" --out "$d/ckpt" --image-size 384 --seed 0 || return 1
    fi
    local convs=("bf16:384")
    [ "$m" != GPT-B ] || convs+=("bf16:256" "f32:256")
    for c in "${convs[@]}"; do
        local dt=${c%%:*} px=${c#*:} out
        out=$d/$dt-$px
        if [ ! -f "$out/config.json" ] || [ tools/convert.py -nt "$out/config.json" ]; then
            rm -rf "$out"
            "$PY" tools/convert.py llamagen --gpt "$d/ckpt/gpt.pt" --vq "$d/ckpt/vq.pt" \
                --image-size "$px" --dtype "$dt" --gpt-model "$m" --out "$out" || return 1
        fi
    done
    touch "$d/.ready"
}
(
    for m in "${PREP[@]}"; do
        t0=$SECONDS
        if OMP_NUM_THREADS=8 prepare_model "$m" >>"$RES/prep-$m.log" 2>&1; then
            echo "$m ready in $((SECONDS - t0)) s" >>"$RES/prep-$m.log"
        else
            touch "$(mdir "$m")/.failed"
        fi
    done
) &
PREP_PID=$!
wait_model() {   # wait_model GPT-X: 0 when its folders are ready
    local d
    d=$(mdir "$1")
    while [ ! -e "$d/.ready" ] && [ ! -e "$d/.failed" ]; do
        kill -0 "$PREP_PID" 2>/dev/null || break
        sleep 1
    done
    [ -e "$d/.ready" ]
}
SERVER_PID='' SAMPLER_PID=''
cleanup() {
    [ -z "$SAMPLER_PID" ] || kill "$SAMPLER_PID" 2>/dev/null || true
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if kill -0 "$PREP_PID" 2>/dev/null; then   # the checkpoint writer and its python child
        pkill -TERM -P "$PREP_PID" 2>/dev/null || true
        kill "$PREP_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- a. build, or the prebuilt pack; the CUDA kernel tests ----------------------------------
have_build_deps() {
    command -v make >/dev/null && command -v "${CC:-gcc}" >/dev/null || return 1
    local inc
    inc=$(pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
    # shellcheck disable=SC2086
    printf '#include <jansson.h>\n#include <png.h>\n#include <microhttpd.h>\n#include <uv.h>\n#include <cblas.h>\n#include <check.h>\nint main(void) { return 0; }\n' |
        "${CC:-gcc}" -x c $inc - -o /dev/null -ljansson -lpng -lmicrohttpd -luv -lopenblas -lcheck 2>/dev/null
}
TS_ENV=(env)
if [ "$PREBUILT" != yes ] && have_build_deps; then
    log "building on this machine (make -j${MAKE_JOBS:-16} CUDA=1)"
    build_all 1 >"$RES/build.log" 2>&1 || { tail -n 30 "$RES/build.log" >&2; die "the CUDA=1 build failed (log above)"; }
    TESSERA=$BUILD_DIR/tessera GPUGEN=$BUILD_DIR/gpu_generate TEST_CUDA=$BUILD_DIR/tests/test_cuda
    meta build "built here: make -j${MAKE_JOBS:-16} CUDA=1"
else
    [ "$PREBUILT" != no ] || die "this machine lacks Tessera's C build dependencies (libjansson, libpng, libmicrohttpd, libuv, OpenBLAS, check) and --prebuilt no was given"
    PACK=$ROOT/bench/upstream/prebuilt.tar.gz
    [ -f "$PACK" ] || die "this machine lacks Tessera's C build dependencies (libjansson, libpng, libmicrohttpd, libuv, OpenBLAS, check headers) and there is no $PACK: run 'bash bench/fetch_upstream.sh' on the development machine (it builds with CUDA=1 there) and carry bench/upstream"
    rm -rf "$WORK/prebuilt"
    tar -xzf "$PACK" -C "$WORK"
    PB=$WORK/prebuilt
    pb() { sed -n "s/^$1=//p" "$PB/MANIFEST"; }
    [ "$(pb cuda)" = 1 ] || die "$PACK was built without CUDA (cuda=$(pb cuda)); rebuild it with bash bench/fetch_upstream.sh"
    [ "$(pb source_hash)" = "$(source_hash)" ] ||
        die "$PACK was built from other sources (hash $(pb source_hash), these are $(source_hash); git $(pb git_rev), $(pb built)): run 'bash bench/fetch_upstream.sh' again"
    TESSERA=$PB/bin/tessera GPUGEN=$PB/bin/gpu_generate TEST_CUDA=$PB/bin/test_cuda
    TEST_BUILD=absent
    if [ -x "$TEST_CUDA" ]; then TEST_BUILD=built; elif [ -f tests/test_cuda.c ]; then TEST_BUILD=failed; fi
    LIBS=$PB/lib
    if "${TS_ENV[@]}" LD_LIBRARY_PATH="$LIBS" ldd "$TESSERA" | grep -q 'not found'; then
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
    meta build "prebuilt on the development machine: git $(pb git_rev), $(pb built), $(pb host), $(pb nvcc)"
fi
meta test_build "$TEST_BUILD"
log "binaries: $TESSERA, $GPUGEN ($(grep '^build=' "$RES/meta.env" | cut -d= -f2-))"
tsx() { "${TS_ENV[@]}" "$@"; }

if skip test; then
    meta test_cuda skipped
elif [ "$TEST_BUILD" = absent ]; then
    meta test_cuda "absent (no tests/test_cuda.c)"
    note test_cuda absent "tests/test_cuda.c does not exist yet"
elif [ "$TEST_BUILD" = failed ]; then
    meta test_cuda "build failed"
    note test_cuda FAILED "build/tests/test_cuda did not build (see build.log)"
else
    log "running $TEST_CUDA"
    rc=0
    timeout 180 "${TS_ENV[@]}" "$TEST_CUDA" >"$RES/test_cuda.log" 2>&1 || rc=$?
    summary=$(grep -E '^[0-9]+%: Checks' "$RES/test_cuda.log" | tail -1 || true)
    if grep -q '^test_cuda: SKIP' "$RES/test_cuda.log"; then
        # Exit 0, but on a GPU machine a skip means the CUDA backend did not start.
        meta test_cuda "SKIPPED on a GPU machine: $(grep -m1 '^test_cuda: SKIP' "$RES/test_cuda.log")"
        note test_cuda FAILED "it skipped: $(grep -m1 '^test_cuda: SKIP' "$RES/test_cuda.log")"
    elif [ "$rc" = 0 ]; then meta test_cuda "passed${summary:+ ($summary)}"
    elif [ "$rc" = 124 ]; then meta test_cuda "TIMEOUT after 180 s${summary:+ ($summary)}"; note test_cuda FAILED "timed out after 180 s"
    else meta test_cuda "FAILED (exit $rc)${summary:+: $summary}"; note test_cuda FAILED "exit $rc${summary:+; $summary}"
    fi
    log "test_cuda: $(grep '^test_cuda=' "$RES/meta.env" | cut -d= -f2-)"
fi

# Does the CUDA backend start and generate at all? (tests/fixtures/llamagen_tiny, a second.)
# If not, every Tessera stage is left out (they would fall back to the CPU or fail), and the
# official code's figures are still measured.
CUDA_OK=1
if tsx timeout -k 10 120 "$GPUGEN" --device cuda --model tests/fixtures/llamagen_tiny --class 1 --n 2 --warmup 0 --runs 2 \
    --decode-runs 0 --json "$RES/probe.json" >/dev/null 2>"$RES/probe.log"; then
    log "CUDA backend: $(sed -n 's/.*"device":"\([^"]*\)".*/\1/p' "$RES/probe.json")"
else
    CUDA_OK=0
    note cuda-probe FAILED "gpu_generate --device cuda on tests/fixtures/llamagen_tiny: $(tail -1 "$RES/probe.log"); every Tessera stage is left out"
fi
meta cuda_probe "$([ "$CUDA_OK" = 1 ] && echo ok || echo FAILED)"
render

# --- b. bandwidth; the greedy check ----------------------------------------------------------
log "copy bandwidth (bench/gpu_membw.py, 2 GiB)"
timeout -k 10 120 "$PY" bench/gpu_membw.py --gib 2 --reps 20 --json "$RES/membw.json" >/dev/null 2>"$RES/membw.log" ||
    note membw FAILED "$(tail -1 "$RES/membw.log")"

ran_on_cuda() {   # ran_on_cuda LOG: the CLI loaded on the CUDA backend, with no fall-back
    grep -q ' on cuda' "$1" && ! grep -q 'notice: --device' "$1"
}
if ! skip greedy && [ "$CUDA_OK" = 1 ]; then
    if wait_model GPT-B; then
        B=$(mdir GPT-B)
        log "greedy check: Tessera cuda-fp32 vs official fp32 (TF32 off), GPT-B 256 px, classes $GREEDY_CLASSES"
        if tsx timeout -k 10 240 "$TESSERA" generate --device cuda-fp32 --model "$B/f32-256" --class "$GREEDY_CLASSES" --n 1 \
            --seed "$SEED" --cfg "$CFG" --top-k 1 --tokens-out "$RES/greedy-tessera.tokens" \
            >"$RES/greedy-tessera.log" 2>&1 && ran_on_cuda "$RES/greedy-tessera.log"; then :
        else
            rm -f "$RES/greedy-tessera.tokens"   # never compare tokens made elsewhere than on CUDA
            note greedy FAILED "tessera generate --device cuda-fp32 failed or did not run on CUDA (greedy-tessera.log)"
        fi
        timeout -k 10 240 "$PY" bench/gpu_reference.py --upstream "$UPSTREAM" --gpt-ckpt "$B/ckpt/gpt.pt" --gpt-model GPT-B \
            --image-size 256 --classes "$GREEDY_CLASSES" --n 1 --seed "$SEED" --cfg "$CFG" --top-k 1 \
            --precision none --tf32 off --runs 1 --warmup-tokens 8 --decode-runs 0 \
            --tokens-out "$RES/greedy-ref.tokens" --json "$RES/greedy-ref.json" >/dev/null 2>"$RES/greedy-ref.log" ||
            note greedy FAILED "the official code failed (greedy-ref.log)"
    else
        note greedy FAILED "GPT-B checkpoints could not be made (prep-GPT-B.log)"
    fi
fi
render

# --- c. Tessera on each model -----------------------------------------------------------------
for m in "${MODELS[@]}"; do
    [ "$CUDA_OK" = 1 ] || break
    if ! wait_model "$m"; then
        note "tessera-$m" FAILED "checkpoints could not be made (prep-$m.log)"
        continue
    fi
    D=$(mdir "$m")/bf16-384
    if ! skip cli; then
        log "$m: tessera generate --device cuda (CLI, once)"
        mkdir -p "$WORK/png"
        if tsx timeout -k 10 240 "$TESSERA" generate --device cuda --model "$D" --class "$CLASS" --n "$NIMG" --seed "$SEED" \
            --cfg "$CFG" --top-k "$TOPK" --out "$WORK/png/$m.png" >"$RES/tessera-cli-$m.log" 2>&1 &&
            ran_on_cuda "$RES/tessera-cli-$m.log"; then
            log "$m CLI: $(grep 'image(s): tokens' "$RES/tessera-cli-$m.log" || echo '?')"
        else
            note "tessera-cli-$m" FAILED "$(tail -1 "$RES/tessera-cli-$m.log")"
        fi
    fi
    log "$m: build/gpu_generate --device cuda (1 warm-up, $RUNS runs)"
    rc=0
    tsx timeout -k 10 300 "$GPUGEN" --device cuda --model "$D" --class "$CLASS" --n "$NIMG" --seed "$SEED" --cfg "$CFG" \
        --top-k "$TOPK" --warmup 1 --runs "$RUNS" --decode-runs "$RUNS" --json "$RES/tessera-$m.json" \
        2>"$RES/tessera-$m.log" || rc=$?
    case "$rc" in
    0) log "$m: $(grep -E 'run [0-9]+:' "$RES/tessera-$m.log" | tr '\n' ' ')" ;;
    1) note "tessera-$m" FAILED "a check failed: $(grep FAILED "$RES/tessera-$m.log" | head -2 | tr '\n' ' ')" ;;
    *) note "tessera-$m" FAILED "gpu_generate exit $rc: $(tail -1 "$RES/tessera-$m.log")" ;;
    esac
    render
done

# --- e. serving (before the reference, whose runs adapt to the time left) ----------------------
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
health() {
    "$PY" - "$1" <<'EOF' 2>/dev/null
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
c.request("GET", "/health")
sys.exit(0 if c.getresponse().status == 200 else 1)
EOF
}
serve_level() {   # serve_level MAX_BATCH CONCURRENCY SECONDS
    local mb=$1 c=$2 dur=$3 port i rc=0 slog=$RES/serve-$1.log
    port=$(free_port)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >"$RES/serve-$mb.gpu-before" 2>/dev/null || true
    echo "$TESSERA serve --device cuda --model $SERVE_MODEL --port $port --max-batch $mb --queue-limit 1000" >"$slog"
    # Not through tsx: a backgrounded function is a subshell, and $! would be its pid, not the
    # server's. env execs the server, so $! is the server itself.
    "${TS_ENV[@]}" "$TESSERA" serve --device cuda --model "$SERVE_MODEL" --port "$port" --max-batch "$mb" \
        --queue-limit 1000 >>"$slog" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 480; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || { SERVER_PID=; note "serve-$mb" FAILED "the server exited: $(tail -1 "$slog")"; return 1; }
        health "$port" && break
        sleep 0.25
    done
    for ((i = 0; i < 20; i++)); do   # the start-up line may follow /health by a moment
        grep -q 'ready:' "$slog" && break
        sleep 0.25
    done
    if ! grep -q 'ready:.* on cuda' "$slog"; then
        note "serve-$mb" FAILED "not ready on CUDA within 120 s: $(grep -m1 'notice\|ready:' "$slog" || tail -1 "$slog")"
        kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=
        return 1
    fi
    (
        while kill -0 "$SERVER_PID" 2>/dev/null; do
            {
                echo "t=$SECONDS"
                nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
                echo "gpu_used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)"
            } >>"$RES/serve-$mb.nvsmi" 2>/dev/null
            sleep 3
        done
    ) &
    SAMPLER_PID=$!
    log "serving: --max-batch $mb, $c clients, ${dur} s window after $c warm-up responses"
    timeout -k 10 $((dur + 150)) "$PY" bench/serve_load.py --url "http://127.0.0.1:$port" -c "$c" \
        --duration "$dur" --warmup "$c" --idle-timeout 30 --label "$mb" --json "$RES/serve.jsonl" \
        >>"$RES/serve-load-$mb.log" 2>&1 || rc=$?
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
    echo "server pid $SERVER_PID" >>"$RES/serve-$mb.nvsmi"
    kill -TERM "$SERVER_PID"
    local src=0
    wait "$SERVER_PID" || src=$?
    SERVER_PID=
    [ "$rc" = 0 ] || note "serve-$mb" FAILED "serve_load.py exit $rc: $(tail -1 "$RES/serve-load-$mb.log")"
    [ "$src" = 0 ] || note "serve-$mb" FAILED "the server exited $src after SIGTERM"
    log "serving $mb/$c: $(tail -1 "$RES/serve-load-$mb.log")"
}
N_MODELS=${#MODELS[@]}
REF_MIN=$(skip ref && echo 0 || echo $((N_MODELS * 45)))   # one bf16 run of each model, loads included
if ! skip serve && [ "$CUDA_OK" = 1 ]; then
    SERVE_MODEL=$(mdir GPT-B)/bf16-256
    if wait_model GPT-B; then
        # Two levels, each: start + warm-up (~25 s) + the window; keep REF_MIN for the reference.
        dur=$(((($(left) - REF_MIN) / 2) - 25))
        [ "$dur" -le "$SERVE_DUR" ] || dur=$SERVE_DUR
        if [ "$dur" -lt 10 ]; then
            note serve SKIPPED "time budget: $(left) s left"
        else
            [ "$dur" = "$SERVE_DUR" ] || note serve SHORTENED "window ${dur} s instead of ${SERVE_DUR} s (time budget)"
            meta serve_window_s "$dur"
            serve_level 64 64 "$dur" || true
            render
            serve_level 256 256 "$dur" || true
        fi
    else
        note serve FAILED "GPT-B checkpoints could not be made (prep-GPT-B.log)"
    fi
    render
fi

# --- c (cont.). the official generate() -------------------------------------------------------
weight() { case "$1" in GPT-B) echo 10 ;; GPT-L) echo 18 ;; GPT-XL) echo 26 ;; esac; }
if ! skip ref; then
    PRECS=$([ "$QUICK" = 1 ] && echo bf16 || echo bf16,none)
    for ((i = 0; i < N_MODELS; i++)); do
        m=${MODELS[$i]}
        wait_model "$m" || { note "ref-$m" FAILED "checkpoints could not be made (prep-$m.log)"; continue; }
        if [ "$(left)" -lt 25 ]; then
            note "ref-$m" SKIPPED "time budget: $(left) s left of --budget $BUDGET"
            continue
        fi
        wsum=0
        for ((j = i; j < N_MODELS; j++)); do wsum=$((wsum + $(weight "${MODELS[$j]}"))); done
        share=$(($(left) * $(weight "$m") / wsum - 5))
        [ "$share" -ge 30 ] || share=30
        log "$m: official generate() ($PRECS), $RUNS runs (fp32: $FP32_RUNS), at most ~${share} s"
        d=$(mdir "$m")
        timeout -k 10 $((share + 120)) "$PY" bench/gpu_reference.py --upstream "$UPSTREAM" \
            --gpt-ckpt "$d/ckpt/gpt.pt" --vq-ckpt "$d/ckpt/vq.pt" \
            --gpt-model "$m" --image-size 384 --classes "$CLASS" --n "$NIMG" --seed "$SEED" --cfg "$CFG" \
            --top-k "$TOPK" --precision "$PRECS" --runs "$RUNS" --fp32-runs "$FP32_RUNS" --warmup-tokens 64 \
            --decode-runs 2 --max-seconds "$share" --json "$RES/ref-$m.json" >/dev/null 2>"$RES/ref-$m.log" ||
            note "ref-$m" FAILED "gpu_reference.py: $(tail -1 "$RES/ref-$m.log")"
        log "$m official: $(grep -E 'run [0-9]+:|decode_code|skipped|budget' "$RES/ref-$m.log" | sed 's/^gpu_reference: //' | tr '\n' ';')"
        render
    done
fi

# --- f. the report ----------------------------------------------------------------------------
meta finished "$(date -u '+%Y-%m-%d %H:%M:%S UTC') after $SECONDS s"
render --summary >"$RES/summary.txt"
tar -czf "$OUTDIR/gpu-logs.tar.gz" -C "$WORK" res 2>/dev/null || true
tee -a "$CONSOLE" <"$RES/summary.txt"
