#!/usr/bin/env bash
# Browser and OpenAI-SDK tests of `tessera serve`:
#   bash tests/web/run.sh [path/to/tessera]        (from the repository root; default build/tessera)
# Starts the server on a free port with the llamagen_tiny fixture, runs tests/web/*.test.mjs with
# node's test runner (Chromium through playwright-core, and the official `openai` client), then
# stops the server with SIGTERM and checks that it exits 0. Needs node (>= 20), Debian's chromium
# (or CHROMIUM=/path/to/chrome) and `npm ci` in tests/web (done here when node_modules is missing).
set -uo pipefail

BIN=${1:-build/tessera}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WEB_TESTS="$ROOT/tests/web"
MODEL=${MODEL:-tests/fixtures/llamagen_tiny}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
cd "$ROOT" || exit 1
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

fail() { echo "tests/web/run.sh: FAIL: $*" >&2; exit 1; }

command -v node >/dev/null || fail "node is not installed (apt-get install nodejs npm)"
command -v npm >/dev/null || fail "npm is not installed (apt-get install npm)"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' ||
    fail "node $(node --version) is too old: the tests need node >= 20"
command -v curl >/dev/null || fail "curl is not installed (apt-get install curl)"
[ -x "$CHROMIUM" ] || fail "Chromium not found at $CHROMIUM (apt-get install chromium, or set CHROMIUM)"
[ -x "$BIN" ] || fail "no tessera binary at $BIN (run make first)"
[ -f "$MODEL/config.json" ] || fail "no model at $MODEL"

if [ ! -d "$WEB_TESTS/node_modules/playwright-core" ] || [ ! -d "$WEB_TESTS/node_modules/openai" ]; then
    echo "== npm ci in tests/web"
    (cd "$WEB_TESTS" && npm ci --no-audit --no-fund) || fail "npm ci in tests/web failed"
fi

PORT=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })') ||
    fail "could not find a free port"
export PORT

LOG=$(mktemp -t tessera-web-serve.XXXXXX.log)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -f "$LOG"
}
trap cleanup EXIT

server_log() { echo "---- server log (last 40 lines) ----" >&2; tail -n 40 "$LOG" >&2; echo "----" >&2; }

echo "== $BIN serve on port $PORT"
"$BIN" serve --model "$MODEL" --port "$PORT" --preview-every 4 --threads 2 >"$LOG" 2>&1 &
SERVER_PID=$!

ready=0
for _ in $(seq 1 120); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        server_log
        fail "the server exited before it was ready"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PORT/health" 2>/dev/null)
    if [ "$code" = 200 ]; then ready=1; break; fi
    sleep 0.5
done
[ "$ready" = 1 ] || { server_log; fail "GET /health did not answer 200 within 60 s"; }

status=0
node --test --test-concurrency=1 --test-reporter=spec \
    "$WEB_TESTS/page.test.mjs" "$WEB_TESTS/openai_sdk.test.mjs" || status=1

echo "== SIGTERM to the server"
kill -TERM "$SERVER_PID"
for _ in $(seq 1 60); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.5
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    server_log
    fail "the server did not exit within 30 s of SIGTERM"
fi
wait "$SERVER_PID"
rc=$?
SERVER_PID=
if [ "$rc" != 0 ]; then
    server_log
    fail "the server exited with status $rc after SIGTERM (expected 0)"
fi
if [ "$status" != 0 ]; then
    server_log
    fail "web tests failed"
fi
echo "tests/web: all passed"
