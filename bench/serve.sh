#!/usr/bin/env bash
# serve.sh - serving throughput and latency of `tessera serve`: continuous batching
# (--max-batch 64) against one image at a time (--max-batch 1), under closed-loop load.
#
#   bash bench/serve.sh               full run: concurrency 1, 4, 16, 64
#   QUICK=1 bash bench/serve.sh       smoke run: concurrency 1, 2, 4, a few requests each
#
# Environment (all optional):
#   MODEL=DIR            model folder (default build/demo-model, made by
#                        tools/make_demo_model.sh when absent: random-weight LlamaGen, 256 px,
#                        GPT dim 256, 4 layers, 256 tokens per image)
#   LEVELS="1 4 16 64"   concurrency levels
#   REQUESTS=N           measured requests per level (default max(8, 2*C); QUICK: max(2, C))
#   REQUESTS_SCALE=X     multiplies the default request count (e.g. 4 for tighter figures)
#   WARMUP=N             warm-up responses per level (default C: the window opens with the
#                        server holding C requests)
#   BATCH=N              --max-batch of the batched server (default 64)
#   THREADS=N            --threads of the server (default $(nproc))
#   MAKE_JOBS=N          make -j (default 2)
#   ESTIMATE_ONLY=1      stop after printing the estimate (writes no report)
#
# What it does: builds build/tessera (make); makes the model if needed; times one request
# alone and a burst of 8 on the batched server and prints an estimate of the run's length;
# then for each mode starts `build/tessera serve` on a free loopback port with
# --queue-limit 1000, waits for /health, runs bench/serve_load.py at each level (see its
# --help: warm-up excluded, latency percentiles, /metrics deltas), SIGTERMs the server and
# checks that it exits 0. Prints a markdown report (tables, machine, command) on stdout and
# writes it to bench/results/serve-DATE[-quick].md, with the raw records in .jsonl beside it.
# Progress goes to stderr. Keep other heavy work off the machine while it runs.
set -euo pipefail

case "${1:-}" in
-h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
'') ;;
*) echo "serve.sh: takes no arguments (see --help)" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
QUICK=${QUICK:-0}
[ "$QUICK" = 0 ] && QUICK=
THREADS=${THREADS:-$(nproc)}
BATCH=${BATCH:-64}
MAKE_JOBS=${MAKE_JOBS:-2}
if [ -n "$QUICK" ]; then
    LEVELS=${LEVELS:-1 2 4}
else
    LEVELS=${LEVELS:-1 4 16 64}
fi
REQUESTS=${REQUESTS:-}
REQUESTS_SCALE=${REQUESTS_SCALE:-1}
WARMUP=${WARMUP:-}

die() { echo "serve.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
posint() { case "$2" in '' | *[!0-9]* | 0) die "$1 must be a positive integer (got '$2')" ;; esac; }

# The exact command, with the knobs that were set.
CMD="bash bench/serve.sh"
for v in REQUESTS_SCALE REQUESTS WARMUP LEVELS BATCH THREADS MODEL QUICK; do
    val=$(printenv "$v" || true)
    if [ -n "$val" ]; then CMD="$v=$(printf '%q' "$val") $CMD"; fi
done

posint THREADS "$THREADS"
posint BATCH "$BATCH"
posint MAKE_JOBS "$MAKE_JOBS"
[ -z "$REQUESTS" ] || posint REQUESTS "$REQUESTS"
[ -z "$WARMUP" ] || case "$WARMUP" in *[!0-9]*) die "WARMUP must be a non-negative integer" ;; esac
for c in $LEVELS; do posint "each of LEVELS" "$c"; done
[ -n "$LEVELS" ] || die "LEVELS is empty"
"$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)" "$REQUESTS_SCALE" 2>/dev/null ||
    die "REQUESTS_SCALE must be a positive number (got '$REQUESTS_SCALE')"
[ -x "$PY" ] || die "$PY not found"

# Measured requests and warm-up at concurrency $1.
requests_for() {
    if [ -n "$REQUESTS" ]; then echo "$REQUESTS"; return; fi
    local base
    if [ -n "$QUICK" ]; then base=$(($1 > 2 ? $1 : 2)); else base=$((2 * $1 > 8 ? 2 * $1 : 8)); fi
    "$PY" -c "import math, sys; print(max(1, math.ceil(int(sys.argv[1]) * float(sys.argv[2]))))" \
        "$base" "$REQUESTS_SCALE"
}
warmup_for() { echo "${WARMUP:-$1}"; }

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p bench/results
OUTBASE=bench/results/serve-$STAMP${QUICK:+-quick}
JSONL=$OUTBASE.jsonl
REPORT=$OUTBASE.md
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
T_BEGIN=$(date +%s)
LOAD_BEGIN=$(cut -d' ' -f1-3 /proc/loadavg)

# --- (a) build, (b) model ------------------------------------------------------------------
log "make -j$MAKE_JOBS"
make -j"$MAKE_JOBS" >&2 || die "the build failed"
[ -x build/tessera ] || die "build/tessera was not built"
if [ -n "${MODEL:-}" ]; then
    [ -f "$MODEL/config.json" ] || die "MODEL=$MODEL holds no config.json"
else
    MODEL=build/demo-model
    if [ ! -f "$MODEL/config.json" ]; then
        log "making the demo model in $MODEL"
        PYTHON=$PY tools/make_demo_model.sh "$MODEL" >&2 || die "tools/make_demo_model.sh failed"
    fi
fi

# --- servers ------------------------------------------------------------------------------
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
health() {
    "$PY" - "$1" <<'EOF' 2>/dev/null
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
c.request("GET", "/health")
sys.exit(0 if c.getresponse().status == 200 else 1)
EOF
}
PORT=
SERVER_CMD=
# start_server MAX_BATCH NAME
start_server() {
    PORT=$(free_port)
    SERVER_CMD="build/tessera serve --model $MODEL --port $PORT --max-batch $1 --threads $THREADS --queue-limit 1000"
    log "$SERVER_CMD"
    # shellcheck disable=SC2086 # word splitting of the command is intended
    $SERVER_CMD >"$TMP/server-$2.log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 1200; i++)); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$TMP/server-$2.log" >&2
            die "the server exited before it was ready"
        fi
        if health "$PORT"; then return 0; fi
        sleep 0.25
    done
    tail -n 20 "$TMP/server-$2.log" >&2
    die "the server was not ready after 300 s"
}
# stop_server NAME: SIGTERM, and the exit status must be 0.
stop_server() {
    local rc=0
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    if [ "$rc" != 0 ]; then
        tail -n 20 "$TMP/server-$1.log" >&2
        die "the $1 server exited with status $rc after SIGTERM"
    fi
    log "the $1 server exited 0 after SIGTERM"
}
load() {
    "$PY" bench/serve_load.py --url "http://127.0.0.1:$PORT" "$@"
}
jfield() {   # jfield FILE KEY: KEY of the last record of FILE
    "$PY" -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$1" "$2"
}

# --- estimate -----------------------------------------------------------------------------
start_server "$BATCH" probe
log "probe: one request alone, then a burst of 8 (batched server)"
load -c 1 --requests 1 --warmup 0 --label "$BATCH" --json "$TMP/probe1.jsonl" -q >/dev/null ||
    die "the probe request failed"
T1=$(jfield "$TMP/probe1.jsonl" p50)
load -c 8 --requests 8 --warmup 0 --label "$BATCH" --json "$TMP/probe8.jsonl" -q >/dev/null ||
    die "the probe burst failed"
THR8=$(jfield "$TMP/probe8.jsonl" images_per_s)
stop_server probe
plan=""
for c in $LEVELS; do plan="$plan $c:$(requests_for "$c"):$(warmup_for "$c")"; done
"$PY" - "$T1" "$THR8" "$plan" <<'EOF' >&2
import sys
t1, thr8 = float(sys.argv[1]), float(sys.argv[2])
levels = [tuple(int(x) for x in p.split(":")) for p in sys.argv[3].split()]
# batch-1: every image takes t1; batched: t1 alone, else at least the burst's throughput
# (conservative above 8, a little optimistic below). A level also waits for its warm-up.
b1 = sum((r + w) * t1 for c, r, w in levels)
bb = sum((r + w) * (t1 if c == 1 else 1 / max(thr8, 1 / t1)) for c, r, w in levels)
tot = b1 + bb + 10
print(f"== one request alone: {t1:.2f} s; a burst of 8 (batched): {thr8:.2f} images/s")
print("== plan (concurrency:requests:warm-up): " + " ".join(f"{c}:{r}:{w}" for c, r, w in levels))
print(f"== estimate: ~{tot / 60:.1f} min (batched ~{bb:.0f} s, batch-1 ~{b1:.0f} s)")
EOF
if [ -n "${ESTIMATE_ONLY:-}" ] && [ "$ESTIMATE_ONLY" != 0 ]; then
    exit 0
fi

# --- (c) the runs -------------------------------------------------------------------------
FAILED=0
for mode in batched batch1; do
    if [ "$mode" = batched ]; then mb=$BATCH; else mb=1; fi
    start_server "$mb" "$mode"
    if [ "$mode" = batched ]; then BATCHED_CMD=$SERVER_CMD; else BATCH1_CMD=$SERVER_CMD; fi
    for c in $LEVELS; do
        r=$(requests_for "$c")
        w=$(warmup_for "$c")
        log "$mode (--max-batch $mb): concurrency $c, $r requests after $w warm-up"
        if ! load -c "$c" --requests "$r" --warmup "$w" --label "$mb" --json "$JSONL" >&2; then
            FAILED=1
            log "serve_load.py reported failures at concurrency $c ($mode)"
        fi
    done
    stop_server "$mode"
done
T_END=$(date +%s)

# --- (d) report ---------------------------------------------------------------------------
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
REV=$(git describe --always --dirty 2>/dev/null || echo unknown)
MODEL_DESC=$("$PY" - "$MODEL/config.json" <<'EOF' 2>/dev/null || echo '?'
import json, sys
c = json.load(open(sys.argv[1]))
g = c.get("gpt", {})
print(f"{c.get('name')}: {c.get('image_size')} px, GPT dim {g.get('dim')}, {g.get('n_layer')} layers, "
      f"{g.get('block_size')} tokens per image")
EOF
)
{
    echo "# tessera serve: continuous batching vs one at a time"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); run took $((T_END - T_BEGIN)) s"
    echo "- machine: ${CPU:-unknown CPU}, nproc $(nproc), $(uname -sr); load average at start $LOAD_BEGIN, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- git: $REV"
    echo "- model: $MODEL ($MODEL_DESC)"
    echo "- command: \`$CMD\`"
    echo "- servers: \`${BATCHED_CMD:-}\` and \`${BATCH1_CMD:-}\` (ports vary)"
    echo "- load: bench/serve_load.py, closed loop, C clients on keep-alive connections, POST /generate {class, seed, n: 1} (cfg 4, top-k 2000); warm-up = first W responses excluded; images/s over the window; latency in seconds (p99 of fewer than 100 samples is about the slowest)"
    [ -n "$QUICK" ] && echo "- QUICK=1: a smoke run, too few requests for figures worth quoting"
    echo
    "$PY" - "$JSONL" "$BATCH" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
batch = int(sys.argv[2])
by = {(r["max_batch"], r["concurrency"]): r for r in recs}
levels = sorted({r["concurrency"] for r in recs})

def f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)

print(f"| concurrency | batched images/s | p50 | p99 | batch-1 images/s | p50 | p99 | speed-up |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in levels:
    b, o = by.get((batch, c), {}), by.get((1, c), {})
    bi, oi = b.get("images_per_s"), o.get("images_per_s")
    sp = f"{bi / oi:.2f}x" if bi and oi else "-"
    print(f"| {c} | {f(bi, '.3f')} | {f(b.get('p50'))} | {f(b.get('p99'))} | {f(oi, '.3f')} | "
          f"{f(o.get('p50'))} | {f(o.get('p99'))} | {sp} |")
print()
print("Per run (server figures are /metrics deltas over the window):")
print()
print("| max-batch | concurrency | measured | warm-up | errors | window s | images/s | p50 | p90 | p99 | mean | forwards | images/forward | step ms |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in sorted(recs, key=lambda r: (-(r["max_batch"] or 0), r["concurrency"])):
    st = r.get("step_s_mean")
    print(f"| {r['max_batch']} | {r['concurrency']} | {r['ok']} | {r['warmup']} | {r['errors_total']} | "
          f"{f(r['window_s'], '.1f')} | {f(r['images_per_s'], '.3f')} | {f(r['p50'])} | {f(r['p90'])} | "
          f"{f(r['p99'])} | {f(r['mean'])} | {f(r['forward_passes'], '.0f')} | "
          f"{f(r['images_per_forward'])} | {f(None if st is None else st * 1e3, '.1f')} |")
EOF
} >"$REPORT"
cat "$REPORT"
log "report: $REPORT (records: $JSONL)"
[ "$FAILED" = 0 ] || die "some requests failed (see above)"
