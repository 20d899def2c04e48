#!/usr/bin/python3
"""Soak test of `tessera serve`: many clients for minutes against one server that runs all
three families, with everything a hostile or careless client does mixed in.

    /usr/bin/python3 tests/soak.py path/to/tessera [--seconds 180] [--clients 16] [--seed 0]

`make test SANITIZE=1` runs it on the AddressSanitizer + UBSan build (make test-soak), where
a leak, a use after free or undefined behaviour anywhere in the server fails it.

The server: the "slow" LlamaGen model of test_server.py (256 tokens per image, steps slowed
to 2 ms), the tiny FQGAN and MaskGen fixtures, --max-batch 4 and --queue-limit 6, so the
queue fills and 429s happen. Each client loops over random actions until the time is up:
plain and streamed requests of every family (some streams read to the end, some dropped
after their first events), sync requests abandoned before the answer, /v1/jobs created and
cancelled or polled to the end, the OpenAI endpoint with partial images, and hostile
requests (malformed JSON, bad fields, oversized bodies and headers, unknown paths, bodies
cut off mid-way).

Checked, each failing the run:
- no 5xx at all (503 only after the final SIGTERM, which the drain phase expects);
- every 429 carries Retry-After; every error body is JSON with a stable code;
- every 200 answer is whole (PNG signature, JSON that parses, SSE ending in `done`);
- afterwards, once idle: queue empty, nothing running, every KV block free (LlamaGen's
  shared null-class block aside) and none reserved, in both caches;
- a last burst of requests under SIGTERM all complete (the drain loses nothing), the server
  exits 0, and its log holds no sanitizer report (LeakSanitizer makes a leak an error exit).
"""
import argparse
import collections
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_server as ts  # noqa: E402  (the Server harness and the fixtures)

PNG = b"\x89PNG\r\n\x1a\n"


class Tally:
    """Statuses seen per action, and the failures (with enough detail to reproduce)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.failures = []

    def add(self, action, status):
        with self.lock:
            self.counts[(action, status)] += 1

    def fail(self, action, what):
        with self.lock:
            self.failures.append("%s: %s" % (action, what))


def connect(port, timeout=60):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def check_error(tally, action, status, hdrs, body):
    """A non-200 answer: a known 4xx with a JSON error body (429 with Retry-After)."""
    if status >= 500:
        tally.fail(action, "status %d: %r" % (status, body[:200]))
        return
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        tally.fail(action, "status %d without a JSON error body: %r" % (status, body[:200]))
        return
    if status == 429:
        if not hdrs.get("retry-after", "").isdigit():
            tally.fail(action, "429 %s without Retry-After" % code)
        else:   # a polite client backs off (not for the whole Retry-After: keep the load)
            time.sleep(random.uniform(0, min(0.5, int(hdrs["retry-after"]))))


def request(port, method, path, body=None, headers=None, timeout=120):
    c = connect(port, timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


# ------------------------------------------------------------------------------ actions
# Each takes (port, rng, tally, models) and records what it saw.

def gen_body(rng, models):
    fam = rng.choice(["llamagen", "llamagen", "fqgan", "maskgen"])
    seed = rng.randrange(1 << 20)
    if fam == "maskgen":
        return {"prompt": rng.choice(["a red cube", "two cats", "ok", "été à Paris"]),
                "seed": seed, "n": rng.choice([1, 1, 2])}
    body = {"class": rng.randrange(10), "seed": seed, "n": rng.choice([1, 1, 2])}
    if fam == "fqgan":
        body["model"] = models["fqgan"]
    return body


def act_generate(port, rng, tally, models):
    body = gen_body(rng, models)
    status, hdrs, data = request(port, "POST", "/generate", body)
    tally.add("generate", status)
    if status != 200:
        return check_error(tally, "generate", status, hdrs, data)
    if body["n"] == 1:
        if not data.startswith(PNG):
            tally.fail("generate", "200 without a PNG: %r" % data[:40])
    else:
        imgs = json.loads(data)["images"]
        if len(imgs) != body["n"]:
            tally.fail("generate", "%d images for n=%d" % (len(imgs), body["n"]))


def read_stream(resp, stop_after=None):
    """Event names of a stream, read to its end (or until stop_after events)."""
    names = []
    for event, _ in ts.sse_events(resp):
        if event != ":":
            names.append(event)
        if stop_after is not None and len(names) >= stop_after:
            break
    return names


def act_stream(port, rng, tally, models, drop=False):
    action = "stream-drop" if drop else "stream"
    body = dict(gen_body(rng, models), stream=True)
    c = connect(port)
    try:
        c.request("POST", "/generate", body=json.dumps(body))
        r = c.getresponse()
        tally.add(action, r.status)
        if r.status != 200:
            return check_error(tally, action, r.status, {k.lower(): v for k, v in r.getheaders()},
                               r.read())
        if drop:   # a client that leaves mid-stream: the request must be cancelled
            read_stream(r, stop_after=rng.choice([1, 2, 3]))
            return
        names = read_stream(r)
        if not names or names[-1] not in ("done", "error"):
            tally.fail(action, "stream ended without done: %s" % names[-5:])
        elif names[-1] == "error":
            tally.fail(action, "stream ended in an error event")
    finally:
        c.close()


def act_abandon(port, rng, tally, models):
    """Sends a whole request, then closes the socket before the answer."""
    body = json.dumps(gen_body(rng, models)).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    time.sleep(rng.uniform(0, 0.3))
    s.close()
    tally.add("abandon", 0)


def act_job_cancel(port, rng, tally, models):
    status, hdrs, data = request(port, "POST", "/v1/jobs", gen_body(rng, models))
    tally.add("job-cancel", status)
    if status != 202:
        return check_error(tally, "job-cancel", status, hdrs, data)
    jid = json.loads(data)["id"]
    time.sleep(rng.uniform(0, 0.5))
    status, hdrs, data = request(port, "DELETE", "/v1/jobs/" + jid)
    state = json.loads(data).get("state") if status == 200 else None
    if state not in ("cancelling", "cancelled", "completed", "failed"):
        return tally.fail("job-cancel", "DELETE gave %d %r" % (status, data[:200]))
    if state != "cancelling" or rng.random() < 0.5:
        return   # forgotten, or left to --job-ttl as a careless client would
    end = time.time() + 60   # a tidy client deletes the cancelled record too
    while time.time() < end:
        status, hdrs, data = request(port, "GET", "/v1/jobs/" + jid)
        if status != 200:
            return tally.fail("job-cancel", "GET after DELETE gave %d %r" % (status, data[:200]))
        if json.loads(data)["state"] in ("cancelled", "completed"):
            if request(port, "DELETE", "/v1/jobs/" + jid)[0] != 200:
                tally.fail("job-cancel", "second DELETE refused")
            return
        time.sleep(0.05)
    tally.fail("job-cancel", "job %s never left cancelling" % jid)


def act_job_poll(port, rng, tally, models):
    body = gen_body(rng, models)
    status, hdrs, data = request(port, "POST", "/v1/jobs", body)
    tally.add("job-poll", status)
    if status != 202:
        return check_error(tally, "job-poll", status, hdrs, data)
    jid = json.loads(data)["id"]
    end = time.time() + 120
    while time.time() < end:
        status, hdrs, data = request(port, "GET", "/v1/jobs/" + jid)
        st = json.loads(data).get("state") if status == 200 else None
        if st == "completed":
            if len(json.loads(data)["result"]["images"]) != body["n"]:
                tally.fail("job-poll", "result without its images")
            request(port, "DELETE", "/v1/jobs/" + jid)
            return
        if status != 200 or st in ("failed", "cancelled"):
            return tally.fail("job-poll", "job %s: %d %r" % (jid, status, data[:200]))
        time.sleep(0.1)
    tally.fail("job-poll", "job %s never finished" % jid)


def act_openai(port, rng, tally, models):
    body = {"prompt": "a red cube" if rng.random() < 0.5 else "goldfish",
            "seed": rng.randrange(1000), "stream": True, "partial_images": rng.choice([0, 2])}
    c = connect(port)
    try:
        c.request("POST", "/v1/images/generations", body=json.dumps(body))
        r = c.getresponse()
        tally.add("openai", r.status)
        if r.status != 200:
            return check_error(tally, "openai", r.status,
                               {k.lower(): v for k, v in r.getheaders()}, r.read())
        names = read_stream(r)
        if "image_generation.completed" not in names:
            tally.fail("openai", "no completed event: %s" % names[-5:])
    finally:
        c.close()


HOSTILE = [
    ("bad-json", lambda rng: ("POST", "/generate", b'{"class": ', {}), 400),
    ("not-object", lambda rng: ("POST", "/generate", b"[1, 2]", {}), 400),
    ("bad-field", lambda rng: ("POST", "/generate", {"class": 1, "cfg": "lots"}, {}), 422),
    ("big-n", lambda rng: ("POST", "/generate", {"class": 1, "n": 1000}, {}), 422),
    ("long-prompt", lambda rng: ("POST", "/generate", {"prompt": "x" * 5000}, {}), 422),
    ("unknown-model", lambda rng: ("POST", "/generate", {"model": "nope", "class": 1}, {}), 404),
    ("big-body", lambda rng: ("POST", "/generate",
                              b'{"class": 1, "pad": "' + b"a" * 70000 + b'"}', {}), 413),
    ("no-path", lambda rng: ("GET", "/nope/" + "x" * rng.randrange(100), None, {}), 404),
    ("bad-job", lambda rng: ("GET", "/v1/jobs/j" + "0" * rng.randrange(60), None, {}), 404),
    ("wrong-method", lambda rng: ("DELETE", "/generate", None, {}), 405),
]


def act_hostile(port, rng, tally, models):
    name, make, want = rng.choice(HOSTILE)
    method, path, body, hdrs = make(rng)
    status, rh, data = request(port, method, path, body, hdrs)
    tally.add("hostile-" + name, status)
    if status != want:
        tally.fail("hostile-" + name, "status %d, expected %d: %r" % (status, want, data[:200]))
    else:
        check_error(tally, "hostile-" + name, status, rh, data)


def act_raw_abuse(port, rng, tally, models):
    """Byte-level abuse: oversized headers, a body cut off mid-way, garbage."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(30)
    try:
        kind = rng.randrange(3)
        if kind == 0:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 80000 + b"\r\n\r\n")
        elif kind == 1:
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"cla")
            s.close()
            tally.add("raw-cut", 0)
            return
        else:
            s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n")
        try:
            reply = s.recv(64)
        except (ConnectionResetError, socket.timeout):
            reply = b""
        tally.add("raw-%d" % kind, 0)
        if reply and not reply.startswith(b"HTTP/1.1 4"):
            tally.fail("raw-%d" % kind, "answered %r" % reply)
    finally:
        s.close()


ACTIONS = [(act_generate, 4), (lambda *a: act_stream(*a), 3), (lambda *a: act_stream(*a, drop=True), 3),
           (act_abandon, 2), (act_job_cancel, 2), (act_job_poll, 1), (act_openai, 1),
           (act_hostile, 3), (act_raw_abuse, 1)]


def client(port, seed, deadline, tally, models):
    rng = random.Random(seed)
    fns = [fn for fn, w in ACTIONS for _ in range(w)]
    while time.time() < deadline:
        fn = rng.choice(fns)
        try:
            fn(port, rng, tally, models)
        except (OSError, http.client.HTTPException) as e:
            tally.fail(getattr(fn, "__name__", "action"), "connection error: %r" % e)


def wait_idle(srv, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        m = srv.metrics()
        if m["tessera_queue_depth"] == 0 and m["tessera_running_groups"] == 0:
            return m
        time.sleep(0.1)
    raise AssertionError("the server never went idle: %s" % srv.metrics())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ts.BIN = os.path.abspath(args.binary)
    ts.make_slow_model()
    srv = ts.Server(ts.SLOW, "--model", ts.FQGAN, "--model", ts.MASKGEN, "--max-batch", "4",
                    "--queue-limit", "6", "--preview-every", "32", "--masked-preview-every", "4",
                    "--idle-timeout", "5", "--max-jobs", "64")
    failures = []
    try:
        models = {m["family"]: m["id"] for m in srv.json("GET", "/v1/models")[2]["data"]}
        # The harness's readiness polls got 503 "loading" before this point.
        before = srv.metrics()
        tally = Tally()
        t0 = time.time()
        deadline = t0 + args.seconds
        threads = [threading.Thread(target=client, args=(srv.port, args.seed * 1000 + i, deadline,
                                                         tally, models))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("soak: %d clients for %.0f s" % (args.clients, time.time() - t0))
        per_action = collections.defaultdict(dict)
        for (action, status), n in sorted(tally.counts.items()):
            per_action[action][status] = n
        for action, st in sorted(per_action.items()):
            print("  %-22s %s" % (action, ", ".join("%s: %d" % (k or "-", v) for k, v in st.items())))
        failures += tally.failures
        if not any(st == 429 for (_, st) in tally.counts):
            failures.append("the queue never filled (no 429): the soak did not load the server")

        # Idle: nothing held anywhere.
        m = wait_idle(srv)
        time.sleep(0.5)   # the engine frees a cancelled request's blocks on its next step
        m = srv.metrics()
        want = {"tessera_kv_blocks_used": 1, "tessera_kv_blocks_reserved": 0,
                "tessera_far_kv_blocks_used": 0, "tessera_far_kv_blocks_reserved": 0,
                "tessera_running_groups": 0, "tessera_queue_depth": 0}
        for k, v in want.items():
            if m[k] != v:
                failures.append("idle: %s = %g, expected %g" % (k, m[k], v))
        fives = {k: v - before.get(k, 0) for k, v in m.items()
                 if k.startswith("tessera_http_responses_total{code=\"5")}
        if any(fives.values()):
            failures.append("the server counted 5xx answers: %s" % fives)
        print("  idle: KV blocks used %d of %d (LlamaGen), %d of %d (FQGAN); jobs held %d"
              % (m["tessera_kv_blocks_used"], m["tessera_kv_blocks_total"],
                 m["tessera_far_kv_blocks_used"], m["tessera_far_kv_blocks_total"],
                 m["tessera_jobs_held"]))

        # Drain under load: every accepted request of a last burst completes.
        results = []
        burst = [threading.Thread(target=lambda i=i: results.append(
            request(srv.port, "POST", "/generate", {"class": i % 10, "seed": i})))
            for i in range(8)]
        for t in burst:
            t.start()
        end = time.time() + 30
        while srv.metrics()["tessera_running_groups"] < 1 and time.time() < end:
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        for t in burst:
            t.join()
        codes = collections.Counter(r[0] for r in results)
        print("  drain: burst of 8 answered %s" % dict(codes))
        for status, hdrs, data in results:
            if status == 200 and not data.startswith(PNG):
                failures.append("drain: a 200 without a PNG")
            elif status not in (200, 429, 503):
                failures.append("drain: status %d %r" % (status, data[:200]))
        if codes[200] == 0:
            failures.append("drain: no request of the burst was served")
        code = srv.proc.wait(timeout=300)
        log = srv.output()
        if code != 0:
            failures.append("the server exited %d after SIGTERM" % code)
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in log:
                at = log.index(marker)
                failures.append("sanitizer report in the server log:\n" + log[at:at + 3000])
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    if failures:
        print("soak: FAILED")
        for f in failures[:50]:
            print("  - " + f)
        if len(failures) > 50:
            print("  ... and %d more" % (len(failures) - 50))
        return 1
    shutil.rmtree(ts.WORK, ignore_errors=True)
    print("soak: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
