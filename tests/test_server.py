#!/usr/bin/python3
"""Black-box tests of `tessera serve`: the real binary on loopback, real HTTP.

    /usr/bin/python3 tests/test_server.py path/to/build/tessera

Random-weight models: the committed tiny fixtures (LlamaGen: 16 tokens per image;
MaskGen: 16 tokens, 32x32 px, text-to-image; FQGAN: 16 positions x 2 sub-tokens, 32x32
px, and fqgan_tiny3: x 3, 64x64 px), and a "slow" LlamaGen one made here with tools/ (256
tokens per image), so that requests are still running when a test disconnects, cancels,
fills the queue or sends SIGTERM. A server with both tiny models runs masked and
autoregressive requests side by side (they must interleave step by step and each give
the CLI's PNG); one with all three (LlamaGen, FQGAN, MaskGen) runs the three families
together, each request giving its CLI's PNG.
Checks every endpoint and error of docs/api.md, SSE event order, batching (N
concurrent requests take far fewer forward passes than N alone), that the same seed
gives the same PNG bytes as the CLI alone or batched, disconnects freeing KV blocks,
429 on a full queue, the API key, the loading state and the SIGTERM drain.
Exits nonzero on any failure.
"""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "llamagen_tiny")
MASKGEN = os.path.join(ROOT, "tests", "fixtures", "maskgen_tiny")
FQGAN = os.path.join(ROOT, "tests", "fixtures", "fqgan_tiny")
FQGAN3 = os.path.join(ROOT, "tests", "fixtures", "fqgan_tiny3")
PY = os.environ.get("PYTHON", "/usr/bin/python3")
WORK = tempfile.mkdtemp(prefix="tessera_test_server_")
BIN = None
SLOW = os.path.join(WORK, "slow-model")
TINY_TOKENS = 16
MG_TOKENS = 16      # maskgen_tiny: tokens per image
MG_STEPS = 8        # maskgen_tiny's config: default steps
MG_PX = 32
FAR_POSITIONS = 16  # fqgan_tiny: positions per image (the steps), each FAR_K sub-tokens
FAR_K = 2
FAR_PX = 32
T2I = os.path.join(ROOT, "tests", "fixtures", "llamagen_t2i_tiny")
T2I_NAME = "Tessera test fixture llamagen_t2i_tiny"
T2I_PX = 16
T2I_TOKENS = 16
# A t2i prefill puts hundreds of rows in one product. On CUDA, products above
# TESSERA_CUDA_INVARIANT_M rows (default 64) go to cuBLAS, whose rounding depends on the
# row count, so a server's chunked prefill and the CLI's whole one can differ in the last
# bits (docs/operations.md). These tests compare PNG bytes, so both sides run with every
# product through the row-invariant kernel.
T2I_ENV = {"TESSERA_CUDA_INVARIANT_M": "1000000"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# TESSERA_TEST_DEVICE=cuda runs the whole suite on the GPU (make test-gpu); the CLI
# reference images are then made on the same device.
DEVICE_ARGS = ["--device", os.environ["TESSERA_TEST_DEVICE"]] if os.environ.get("TESSERA_TEST_DEVICE") else ["--device", "cpu"]


class Server:
    """A `tessera serve` process; stop() checks it exits 0 after SIGTERM."""

    def __init__(self, model=TINY, *args, env=None, wait=True):
        self.port = free_port()
        self.log = open(os.path.join(WORK, "server-%d.log" % self.port), "w+")
        e = dict(os.environ)
        if model == SLOW:
            # Tests on this model catch requests while they run or wait; a fast machine
            # decodes an image in less than a poll interval (CI did), so each step is
            # slowed to keep every image over 0.5 s (256 steps of 2 ms).
            e["TESSERA_TEST_STEP_DELAY_MS"] = "2"
        e.update(env or {})
        self.proc = subprocess.Popen([BIN, "serve", "--model", model, "--port", str(self.port),
                                      "--threads", "2"] + DEVICE_ARGS + [str(a) for a in args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=e)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, "server exited: " + self.output()
            time.sleep(0.05)
        raise AssertionError("server not ready: " + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method, path, body=None, headers=None, timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        return r.status, hdrs, data

    def json(self, method, path, body=None, headers=None):
        status, hdrs, data = self.request(method, path, body, headers)
        return status, hdrs, json.loads(data) if data else None

    def metrics(self):
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, expect_code=0, signal_again=True):
        if signal_again and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("server did not exit after SIGTERM: " + self.output())
        assert code == expect_code, "server exit %s: %s" % (code, self.output()[-3000:])
        out = self.output()
        assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out, out[-5000:]
        self.log.close()


def sse_events(resp):
    """Yields (event, data) from a streaming http.client response."""
    event, data = None, []
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if line == "":
            if event or data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            yield ":", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def open_stream(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return c, r


def cli_run(model, cond, seed, n=1, env=None, **kw):
    """PNG bytes of the CLI for the same request (image i of n); cond is ["--class", C] or
    ["--prompt", P]."""
    out = os.path.join(WORK, "cli-%d-%d.png" % (seed, len(os.listdir(WORK))))
    args = [BIN, "generate", "--model", model] + cond + ["--seed", str(seed), "--n", str(n),
                                                         "--out", out, "--quiet",
                                                         "--threads", "2"] + DEVICE_ARGS
    for k, v in kw.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    subprocess.run(args, check=True, env=dict(os.environ, **(env or {})))
    if n == 1:
        return [open(out, "rb").read()]
    return [open(out.replace(".png", "-%d.png" % i), "rb").read() for i in range(n)]


def cli_png(model, cls, seed, n=1, **kw):
    """A class-conditional request (LlamaGen c2i, FQGAN)."""
    return cli_run(model, ["--class", str(cls)], seed, n, **kw)


def cli_masked_png(prompt, seed, n=1, **kw):
    """A MaskGen request."""
    return cli_run(MASKGEN, ["--prompt", prompt], seed, n, **kw)


def cli_t2i_png(prompt, seed, n=1, **kw):
    """A LlamaGen text-to-image request."""
    return cli_run(T2I, ["--prompt", prompt], seed, n, env=T2I_ENV, **kw)


def png_size(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def png_parameters(png):
    """The "parameters" text of a PNG (tEXt or iTXt), decoded."""
    pos = 8
    while pos < len(png):
        n = int.from_bytes(png[pos:pos + 4], "big")
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]
        if kind == b"tEXt" and data.startswith(b"parameters\0"):
            return data[len(b"parameters\0"):].decode("latin-1")
        if kind == b"iTXt" and data.startswith(b"parameters\0"):
            rest = data[len(b"parameters\0") + 2:]          # compression flag and method
            rest = rest.split(b"\0", 2)[2]                   # language tag, translated key
            return rest.decode("utf-8")
        pos += 12 + n
    return None


def error_of(status_hdrs_body):
    status, _, body = status_hdrs_body
    assert isinstance(body, dict) and "error" in body, body
    return status, body["error"]["code"], body["error"]["message"]


# --------------------------------------------------------------------------- tests


def test_health_models_classes_page(srv):
    status, _, body = srv.json("GET", "/health")
    assert status == 200 and body["status"] == "ok", body
    assert [m["family"] for m in body["models"]] == ["llamagen"], body
    assert srv.json("GET", "/health/live")[::2] == (200, {"status": "alive", "state": "ready"})
    assert error_of(srv.json("POST", "/health/live"))[:2] == (405, "method_not_allowed")
    status, _, body = srv.json("GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    m = body["data"][0]
    assert m["image_size"] == 16 and m["num_classes"] == 10 and m["tokens"] == TINY_TOKENS
    status, _, body = srv.json("GET", "/v1/classes")
    assert status == 200 and len(body["classes"]) == 10
    assert body["classes"][1]["name"].startswith("goldfish")
    status, hdrs, page = srv.request("GET", "/")
    assert status == 200 and hdrs["content-type"].startswith("text/html"), (status, hdrs)
    assert b"<html" in page.lower()


def test_generate_png_same_as_cli(srv):
    status, hdrs, png = srv.request("POST", "/generate", {"class": 3, "seed": 7})
    assert status == 200 and hdrs["content-type"] == "image/png", (status, png[:200])
    assert hdrs["x-seed"] == "7"
    assert png == cli_png(TINY, 3, 7)[0], "server PNG differs from the CLI's"
    # Sampling parameters travel through too.
    body = {"class": 2, "seed": 11, "cfg": 2.5, "cfg_interval": 3, "top_k": 40, "top_p": 0.9,
            "temperature": 0.8}
    status, _, png = srv.request("POST", "/generate", body)
    assert status == 200
    assert png == cli_png(TINY, 2, 11, cfg=2.5, cfg_interval=3, top_k=40, top_p=0.9,
                          temperature=0.8)[0]


def test_generate_many_json_seeds(srv):
    status, _, body = srv.json("POST", "/generate", {"prompt": "Goldfish", "seed": 5, "n": 3})
    assert status == 200, body
    assert body["class"] == 1 and len(body["images"]) == 3
    want = cli_png(TINY, 1, 5, n=3)
    for i, im in enumerate(body["images"]):
        assert im["seed"] == 5 + i
        assert base64.b64decode(im["png"]) == want[i]
    # Image 2 alone from its own seed: same pixels (its text chunk says image 0).
    status, _, body1 = srv.json("POST", "/generate", {"class": 1, "seed": 7},
                                {"Accept": "application/json"})
    assert status == 200 and len(body1["images"]) == 1
    assert base64.b64decode(body1["images"][0]["png"]) == cli_png(TINY, 1, 7)[0]
    # A synonym and a numeric prompt resolve too; seeds default to random.
    s1 = srv.json("POST", "/generate", {"prompt": "  carassius   AURATUS "},
                  {"Accept": "application/json"})
    assert s1[0] == 200 and s1[2]["class"] == 1
    s2 = srv.json("POST", "/generate", {"prompt": "4"}, {"Accept": "application/json"})
    assert s2[0] == 200 and s2[2]["class"] == 4
    assert s1[2]["images"][0]["seed"] != s2[2]["images"][0]["seed"]


def test_concurrent_requests_batched_and_reproducible(srv):
    before = srv.metrics()["tessera_forward_passes_total"]
    n = 8
    results = [None] * n
    gate = threading.Barrier(n)

    def client(i):
        gate.wait()
        results[i] = srv.request("POST", "/generate", {"class": i % 10, "seed": 100 + i})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    passes = srv.metrics()["tessera_forward_passes_total"] - before
    for i, (status, _, png) in enumerate(results):
        assert status == 200, (i, status, png[:200])
        assert png == cli_png(TINY, i % 10, 100 + i)[0], "request %d differs when batched" % i
    # One at a time would take n * 16 forwards.
    assert passes < n * TINY_TOKENS / 2, "no batching: %d forwards for %d requests" % (passes, n)
    m = srv.metrics()
    assert m['tessera_batch_images_bucket{le="1"}'] < m["tessera_batch_images_count"]


def test_sse_event_order(srv):
    c, r = open_stream(srv.port, "/generate", {"class": 4, "seed": 9, "n": 2, "stream": True})
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = list(sse_events(r))
    c.close()
    names = [e for e, _ in events if e != ":"]
    assert names[0] in ("queued", "started"), names
    assert "started" in names and names[-1] == "done", names
    steps = [json.loads(d)["step"] for e, d in events if e == "progress"]
    assert steps == list(range(1, TINY_TOKENS + 1)), steps
    previews = [json.loads(d) for e, d in events if e == "preview"]
    # --preview-every 4: steps 4, 8, 12 for each of 2 images, before done.
    assert sorted((p["step"], p["image"]) for p in previews) == \
        [(s, i) for s in (4, 8, 12) for i in (0, 1)], previews
    first_preview = names.index("preview")
    assert names.index("started") < first_preview < names.index("done")
    for p in previews:
        assert base64.b64decode(p["png"])[:8] == b"\x89PNG\r\n\x1a\n"
    done = json.loads(events[-1][1])
    want = cli_png(TINY, 4, 9, n=2)
    assert [base64.b64decode(im["png"]) for im in done["images"]] == want
    # Accept: text/event-stream chooses SSE too.
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    c.request("POST", "/generate", body=json.dumps({"class": 1}),
              headers={"Accept": "text/event-stream"})
    r = c.getresponse()
    assert r.getheader("Content-Type") == "text/event-stream"
    assert [e for e, _ in sse_events(r) if e != ":"][-1] == "done"
    c.close()


def test_errors(srv):
    big = "x" * (70 * 1024)
    cases = [
        (srv.json("POST", "/generate", "{not json"), 400, "bad_request", "JSON"),
        (srv.json("POST", "/generate", "[1, 2]"), 400, "bad_request", "object"),
        (srv.json("GET", "/nope"), 404, "not_found", "/nope"),
        (srv.json("GET", "/v1/jobs/j123"), 404, "not_found", "j123"),
        (srv.json("GET", "/generate"), 405, "method_not_allowed", "POST"),
        (srv.json("POST", "/health"), 405, "method_not_allowed", "GET"),
        (srv.json("POST", "/generate", '{"class": 1, "pad": "%s"}' % big), 413,
         "payload_too_large", "bytes"),
        (srv.json("POST", "/generate", {}), 422, "invalid_field", "class"),
        (srv.json("POST", "/generate", {"class": 10}), 422, "invalid_field", "class"),
        (srv.json("POST", "/generate", {"class": "3"}), 422, "invalid_field", "class"),
        (srv.json("POST", "/generate", {"class": 1, "prompt": "hen"}), 422, "invalid_field", "class"),
        (srv.json("POST", "/generate", {"prompt": "zebra"}), 422, "invalid_field", "prompt"),
        (srv.json("POST", "/generate", {"class": 1, "n": 0}), 422, "invalid_field", "n"),
        (srv.json("POST", "/generate", {"class": 1, "n": 99}), 422, "invalid_field", "n"),
        (srv.json("POST", "/generate", {"class": 1, "seed": -1}), 422, "invalid_field", "seed"),
        (srv.json("POST", "/generate", {"class": 1, "cfg": "x"}), 422, "invalid_field", "cfg"),
        (srv.json("POST", "/generate", {"class": 1, "top_p": 0}), 422, "invalid_field", "top_p"),
        (srv.json("POST", "/generate", {"class": 1, "temperature": 0}), 422, "invalid_field",
         "temperature"),
        (srv.json("POST", "/generate", {"class": 1, "top_k": 1.5}), 422, "invalid_field", "top_k"),
        (srv.json("POST", "/generate", {"class": 1, "stream": "yes"}), 422, "invalid_field",
         "stream"),
        (srv.json("POST", "/generate", {"class": 1, "colour": 1}), 422, "invalid_field", "colour"),
        (srv.json("POST", "/generate", '{"class": 1, "class": 2}'), 400, "bad_request", "JSON"),
        (srv.json("POST", "/generate", {"prompt": "p" * 1001}), 422, "invalid_field", "prompt"),
        (srv.json("POST", "/v1/jobs", {"class": 1, "stream": True}), 422, "invalid_field",
         "stream"),
        (srv.json("POST", "/v1/images/generations", {"prompt": "hen", "size": "512x512"}), 422,
         "invalid_field", "size"),
        (srv.json("POST", "/v1/images/generations", {"prompt": "hen", "response_format": "url"}),
         422, "invalid_field", "response_format"),
    ]
    for i, (res, status, code, needle) in enumerate(cases):
        got = error_of(res)
        assert got[0] == status and got[1] == code, (i, got)
        assert needle.lower() in got[2].lower(), (i, got)
    # Headers too large: MHD answers before our handler; the server survives it.
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
    reply = s.recv(100)
    s.close()
    assert reply.startswith(b"HTTP/1.1 4"), reply
    assert srv.request("GET", "/health")[0] == 200
    m = srv.metrics()
    assert m['tessera_http_responses_total{code="422"}'] >= 17


def raw_exchange(port, data, wait=5.0):
    """Sends raw bytes, returns everything the server answers until it closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait)
    s.sendall(data)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def test_hostile_http(srv):
    """Requests no client library would send: each gets the status it should, with a JSON
    error where the server (not libmicrohttpd's framing checks) answers, and the server
    stays up."""
    def post(body, head=b""):
        body = body.encode() if isinstance(body, str) else body
        return raw_exchange(srv.port, b"POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
                            head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def get(path):
        return raw_exchange(srv.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    cases = [
        ("NUL escape", post('{"class": "a\\u0000b"}'), 400),
        ("array nested 30000 deep", post("[" * 30000 + "]" * 30000), 400),
        ("object nested 10000 deep", post('{"a":' * 10000 + "1" + "}" * 10000), 400),
        ("duplicate key", post('{"class": 1, "class": 2}'), 400),
        ("invalid UTF-8", post(b'{"class": "\xc0\xaf\xff"}'), 400),
        ("lone surrogate", post('{"class": "\\ud800"}'), 400),
        ("number overflow", post('{"class": 1e999}'), 400),
        ("integer overflow", post('{"class": 123456789012345678901234567890}'), 400),
        ("NaN", post('{"class": 1, "cfg": NaN}'), 400),
        ("huge Content-Length", raw_exchange(srv.port, b"POST /generate HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: 99999999999999\r\n\r\n{}", 2), 413),
        ("chunked body over the limit", raw_exchange(
            srv.port, b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + b"4000\r\n" + b"a" * 0x4000 + b"\r\n" * 1 +
            (b"4000\r\n" + b"a" * 0x4000 + b"\r\n") * 5 + b"0\r\n\r\n"), 413),
        ("Expect: 100-continue over the limit", raw_exchange(
            srv.port, b"POST /generate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100000\r\n\r\n", 2), 413),
        ("path traversal", get(b"/../../etc/passwd"), 404),
        ("encoded path traversal", get(b"/%2e%2e/%2e%2e/etc/passwd"), 404),
        ("30 KB job id", get(b"/v1/jobs/" + b"a" * 30000), 404),
        ("3000 headers", raw_exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" +
                                      b"".join(b"X-H%d: v\r\n" % i for i in range(3000)) + b"\r\n"), 431),
    ]
    for name, reply, status in cases:
        assert reply.startswith(b"HTTP/1.1 %d " % status), (name, reply[:200])
        head, _, body = reply.partition(b"\r\n\r\n")
        if status != 431:   # libmicrohttpd's own answer; ours are JSON
            assert b"application/json" in head, (name, head)
            assert json.loads(body)["error"]["code"], (name, body[:200])
    # Pipelined requests are answered in order.
    reply = raw_exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in reply, reply[:300]
    assert srv.request("GET", "/health")[0] == 200


def test_connection_limit_and_idle_timeout():
    """Connections beyond --max-connections wait unaccepted until one closes; --idle-timeout
    closes a client that stalls inside its request, but never a request waiting for its
    images (those connections are suspended)."""
    # 256 steps of 10 ms: a request that waits for longer than the idle timeout.
    srv = Server(SLOW, "--max-connections", "3", "--idle-timeout", "1",
                 env={"TESSERA_TEST_STEP_DELAY_MS": "10"})
    try:
        waiting = []
        t = threading.Thread(target=lambda: waiting.append(
            srv.request("POST", "/generate", {"class": 1, "seed": 3})))
        t.start()
        end = time.time() + 30
        while srv.metrics()["tessera_running_groups"] < 1:
            assert time.time() < end
            time.sleep(0.01)
        # Two stalled clients: one sent half its headers, one half its body.
        stalled = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
        stalled[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        stalled[1].sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"cla")
        time.sleep(0.3)
        # The limit is reached (the waiting request holds the third connection): a fourth
        # connection waits in the listen backlog, unanswered, until a slot frees.
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        extra.settimeout(0.4)
        try:
            early = extra.recv(100)
        except socket.timeout:
            early = None
        assert early is None, early
        # Within a few idle timeouts both stalled clients are dropped, without an answer
        # that would look like a response to a request never completed...
        for s in stalled:
            s.settimeout(10)
            t0 = time.time()
            try:
                rest = s.recv(1000)
            except ConnectionResetError:
                rest = b""
            assert rest == b"" or rest.startswith(b"HTTP/1.1 4"), rest
            assert time.time() - t0 < 5
            s.close()
        # ... and the fourth connection is served.
        extra.settimeout(10)
        assert extra.recv(100).startswith(b"HTTP/1.1 200"), "the queued connection got no answer"
        extra.close()
        assert srv.request("GET", "/health")[0] == 200    # room again
        t.join()
        status, _, body = waiting[0]
        assert status == 200, (status, body[:200])
    finally:
        srv.stop()


def test_max_jobs():
    """--max-jobs bounds the /v1/jobs held, finished results included: beyond it new jobs
    get 429 too_many_jobs (nothing is evicted); a DELETE makes room."""
    srv = Server(TINY, "--max-jobs", "2")
    try:
        ids = [srv.json("POST", "/v1/jobs", {"class": i})[2]["id"] for i in range(2)]
        for jid in ids:
            end = time.time() + 30
            while srv.json("GET", "/v1/jobs/" + jid)[2]["state"] != "completed":
                assert time.time() < end
                time.sleep(0.02)
        assert srv.metrics()["tessera_jobs_held"] == 2
        res = srv.json("POST", "/v1/jobs", {"class": 3})
        assert error_of(res)[:2] == (429, "too_many_jobs"), res
        assert int(res[1]["retry-after"]) >= 1
        assert srv.request("POST", "/generate", {"class": 3})[0] == 200   # not a job
        for jid in ids:   # both results are still there
            assert srv.json("GET", "/v1/jobs/" + jid)[2]["state"] == "completed"
        assert srv.json("DELETE", "/v1/jobs/" + ids[0])[0] == 200
        assert srv.metrics()["tessera_jobs_held"] == 1
        last = srv.json("POST", "/v1/jobs", {"class": 3})
        assert last[0] == 202
        assert srv.json("DELETE", "/v1/jobs/" + last[2]["id"])[0] == 200
        # Ids carry 64 random bits after the counter.
        assert all(re.fullmatch(r"j[0-9a-f]+[0-9a-f]{16}", j) for j in ids), ids
    finally:
        srv.stop()


def test_openai_images_api(srv):
    status, _, body = srv.json("POST", "/v1/images/generations",
                               {"prompt": "tench", "n": 2, "size": "16x16", "seed": 3,
                                "response_format": "b64_json", "model": "whatever"})
    assert status == 200, body
    assert abs(body["created"] - time.time()) < 600 and len(body["data"]) == 2
    want = cli_png(TINY, 0, 3, n=2)
    assert [base64.b64decode(d["b64_json"]) for d in body["data"]] == want
    assert [d["seed"] for d in body["data"]] == [3, 4]
    c, r = open_stream(srv.port, "/v1/images/generations",
                       {"prompt": "tench", "stream": True, "partial_images": 2, "seed": 3})
    events = [(e, json.loads(d)) for e, d in sse_events(r) if e != ":"]
    c.close()
    kinds = [e for e, _ in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [d["partial_image_index"] for _, d in events[:2]] == [0, 1]
    assert all(d["type"] == e for e, d in events)
    assert base64.b64decode(events[-1][1]["b64_json"]) == want[0]
    assert events[-1][1]["usage"]["output_tokens"] == TINY_TOKENS


def test_jobs_api(srv):
    status, _, body = srv.json("POST", "/v1/jobs", {"class": 6, "seed": 21, "n": 2})
    assert status == 202 and body["state"] == "queued", body
    jid = body["id"]
    end = time.time() + 60
    while True:
        status, _, job = srv.json("GET", "/v1/jobs/" + jid)
        assert status == 200
        if job["state"] == "completed":
            break
        assert job["state"] in ("queued", "running"), job
        assert time.time() < end
        time.sleep(0.05)
    assert job["progress"] == {"step": TINY_TOKENS, "total": TINY_TOKENS}
    got = [base64.b64decode(im["png"]) for im in job["result"]["images"]]
    assert got == cli_png(TINY, 6, 21, n=2)
    status, _, gone = srv.json("DELETE", "/v1/jobs/" + jid)
    assert status == 200 and gone["state"] == "completed"
    assert srv.json("GET", "/v1/jobs/" + jid)[0] == 404
    assert srv.json("PUT", "/v1/jobs/" + jid)[0] == 405


def test_jobs_expire():
    srv = Server(TINY, "--job-ttl", "1")
    try:
        status, _, body = srv.json("POST", "/v1/jobs", {"class": 1})
        assert status == 202
        time.sleep(0.5)
        assert srv.json("GET", "/v1/jobs/" + body["id"])[2]["state"] == "completed"
        time.sleep(1.5)
        assert srv.json("GET", "/v1/jobs/" + body["id"])[0] == 404
    finally:
        srv.stop()


def wait_metric(srv, name, want, timeout=30):
    end = time.time() + timeout
    while True:
        got = srv.metrics().get(name)
        if got == want:
            return
        assert time.time() < end, "%s = %s, wanted %s" % (name, got, want)
        time.sleep(0.05)


def test_disconnect_cancels_and_frees_blocks(slow):
    # A streaming request, dropped after its first progress event.
    s = socket.create_connection(("127.0.0.1", slow.port))
    body = json.dumps({"class": 1, "n": 2, "stream": True}).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    seen = b""
    while b"event: progress" not in seen:
        chunk = s.recv(4096)
        assert chunk, seen
        seen += chunk
    assert slow.metrics()["tessera_kv_blocks_used"] > 1
    s.close()
    wait_metric(slow, "tessera_kv_blocks_used", 1)          # only the shared null prefix
    wait_metric(slow, "tessera_running_groups", 0)
    assert slow.metrics()["tessera_requests_cancelled_total"] >= 1
    # A plain (non-streaming) request abandoned while it waits.
    before = slow.metrics()["tessera_requests_cancelled_total"]
    s = socket.create_connection(("127.0.0.1", slow.port))
    body = json.dumps({"class": 2, "n": 4}).encode()   # long enough to abandon mid-way
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    end = time.time() + 30
    while slow.metrics()["tessera_kv_blocks_used"] <= 1:
        assert time.time() < end
        time.sleep(0.01)
    s.close()
    wait_metric(slow, "tessera_kv_blocks_used", 1)
    wait_metric(slow, "tessera_requests_cancelled_total", before + 1)
    # The server still works.
    assert slow.request("POST", "/generate", {"class": 1, "seed": 1})[0] == 200


def test_cancel_job(slow):
    status, _, body = slow.json("POST", "/v1/jobs", {"class": 3, "n": 2})
    assert status == 202
    jid = body["id"]
    end = time.time() + 30
    while slow.json("GET", "/v1/jobs/" + jid)[2]["state"] == "queued":
        assert time.time() < end
        time.sleep(0.01)
    status, _, body = slow.json("DELETE", "/v1/jobs/" + jid)
    assert status == 200 and body["state"] in ("cancelling", "completed"), body
    end = time.time() + 30
    while slow.json("GET", "/v1/jobs/" + jid)[2]["state"] != "cancelled":
        assert time.time() < end
        time.sleep(0.02)
    wait_metric(slow, "tessera_kv_blocks_used", 1)


def test_queue_full_429():
    srv = Server(SLOW, "--max-batch", "1", "--queue-limit", "1")
    try:
        first = threading.Thread(target=srv.request, args=("POST", "/generate", {"class": 1}))
        first.start()
        end = time.time() + 30
        while srv.metrics()["tessera_running_groups"] < 1:
            assert time.time() < end
            time.sleep(0.005)
        second = threading.Thread(target=srv.request, args=("POST", "/generate", {"class": 2}))
        second.start()
        while srv.metrics()["tessera_queue_depth"] < 1:
            assert time.time() < end
            time.sleep(0.005)
        status, hdrs, body = srv.json("POST", "/generate", {"class": 3})
        assert status == 429 and body["error"]["code"] == "queue_full", (status, body)
        assert int(hdrs["retry-after"]) >= 1
        first.join()
        second.join()
    finally:
        srv.stop()


def test_keepalive_while_queued():
    srv = Server(SLOW, "--max-batch", "1", "--sse-ping", "0.1")
    try:
        ahead = [srv.json("POST", "/v1/jobs", {"class": i})[2]["id"] for i in range(3)]
        c, r = open_stream(srv.port, "/generate", {"class": 2, "stream": True})
        kinds = []
        for e, d in sse_events(r):
            kinds.append(e)
            if e == "done":
                break
        c.close()
        assert kinds[0] == "queued", kinds[:8]
        waited = kinds[:kinds.index("started")]
        assert ":" in waited, "no keep-alive while queued: %s" % waited
        # Positions count down as the jobs ahead finish.
        assert [e for e in waited if e != ":"] == ["queued"] * len([e for e in waited if e != ":"])
        for jid in ahead:
            assert srv.json("GET", "/v1/jobs/" + jid)[2]["state"] == "completed"
    finally:
        srv.stop()


def test_api_key():
    keys = os.path.join(WORK, "keys.txt")
    with open(keys, "w") as f:
        f.write("# comment\nsecret-one\nsecret-two\n")
    srv = Server(TINY, "--api-key-file", keys)
    try:
        assert error_of(srv.json("POST", "/generate", {"class": 1}))[:2] == (401, "unauthorized")
        bad = {"Authorization": "Bearer nope"}
        assert srv.json("GET", "/v1/models", headers=bad)[0] == 401
        ok = {"Authorization": "Bearer secret-two"}
        assert srv.request("POST", "/generate", {"class": 1}, ok)[0] == 200
        assert srv.request("GET", "/health")[0] == 200    # probes need no key
        assert srv.request("GET", "/metrics")[0] == 200
    finally:
        srv.stop()


def test_loading_then_ready():
    srv = Server(TINY, env={"TESSERA_TEST_LOAD_DELAY_MS": "1500"}, wait=False)
    try:
        end = time.time() + 10
        while True:
            try:
                res = srv.json("GET", "/health")
                break
            except OSError:
                assert time.time() < end
                time.sleep(0.02)
        assert error_of(res)[:2] == (503, "loading"), res
        assert error_of(srv.json("POST", "/generate", {"class": 1}))[:2] == (503, "loading")
        # Liveness is not readiness: a loading replica is alive.
        assert srv.json("GET", "/health/live")[::2] == (200, {"status": "alive", "state": "loading"})
        assert srv.metrics()["tessera_ready"] == 0
        srv.wait_ready()
        assert srv.request("POST", "/generate", {"class": 1})[0] == 200
    finally:
        srv.stop()


def test_load_failure_exits_nonzero():
    bad = os.path.join(WORK, "bad-model")
    os.makedirs(bad, exist_ok=True)
    with open(os.path.join(bad, "config.json"), "w") as f:
        f.write("{}")
    srv = Server(bad, wait=False)
    code = srv.proc.wait(timeout=30)
    assert code != 0 and "tessera_format" in srv.output(), srv.output()


def test_sigterm_drains():
    srv = Server(SLOW, "--max-batch", "2")
    results = []

    def client(i):
        results.append(srv.request("POST", "/generate", {"class": i, "seed": i}))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    end = time.time() + 30
    while srv.metrics()["tessera_running_groups"] < 2 or srv.metrics()["tessera_queue_depth"] < 1:
        assert time.time() < end
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert error_of(srv.json("GET", "/health"))[:2] == (503, "draining")
    assert error_of(srv.json("POST", "/generate", {"class": 1}))[:2] == (503, "draining")
    assert srv.json("GET", "/health/live")[::2] == (200, {"status": "alive", "state": "draining"})
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results) == [200, 200, 200], [r[:2] for r in results]
    for status, hdrs, png in results:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    srv.stop(signal_again=False)   # exit code 0 after the first SIGTERM


def test_drain_keeps_job_results_until_fetched():
    """A /v1/jobs job that finishes during the drain lives only in this process: the server
    waits (up to --drain-grace) until its result is fetched, then exits 0 at once."""
    srv = Server(SLOW, "--drain-grace", "60")
    try:
        status, _, body = srv.json("POST", "/v1/jobs", {"class": 2, "seed": 5})
        assert status == 202
        jid = body["id"]
        srv.proc.send_signal(signal.SIGTERM)
        end = time.time() + 60
        while True:
            status, _, job = srv.json("GET", "/v1/jobs/" + jid)
            assert status == 200, job
            if job["state"] == "completed":
                break
            assert time.time() < end and srv.proc.poll() is None
            time.sleep(0.05)
        assert len(job["result"]["images"]) == 1
        t0 = time.time()
        assert srv.proc.wait(timeout=30) == 0   # fetched: no need to wait out the grace
        assert time.time() - t0 < 10
        out = srv.output()
        assert "finishing 1 queued and 0 running" in out or "finishing 0 queued and 1 running" in out, out
    finally:
        srv.stop(signal_again=False)


def test_drain_grace_ends():
    """An unfetched result keeps a drained server up for --drain-grace seconds, no longer."""
    srv = Server(TINY, "--drain-grace", "1")
    try:
        jid = srv.json("POST", "/v1/jobs", {"class": 1})[2]["id"]
        end = time.time() + 30
        while srv.metrics()["tessera_running_groups"] or srv.metrics()["tessera_queue_depth"]:
            assert time.time() < end
            time.sleep(0.02)
        t0 = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=30) == 0
        assert 0.8 < time.time() - t0 < 10, time.time() - t0
        assert "1 finished job result(s) never fetched" in srv.output(), jid
    finally:
        srv.stop(signal_again=False)


# --------------------------------------------------------------------------- both families


MG_NAME = "Tessera test fixture maskgen_tiny"
AR_NAME = "Tessera test fixture llamagen_tiny"


def test_mixed_models_listed(both):
    status, _, body = both.json("GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["models"] == [{"id": AR_NAME, "family": "llamagen"},
                              {"id": MG_NAME, "family": "maskgen"}], body
    status, _, body = both.json("GET", "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == [AR_NAME, MG_NAME], body
    ar, mg = body["data"]
    assert ar["family"] == "llamagen" and ar["num_classes"] == 10 and ar["tokens"] == TINY_TOKENS
    assert mg["family"] == "maskgen" and mg["image_size"] == MG_PX, mg
    assert mg["num_tokens"] == MG_TOKENS and mg["steps"] == MG_STEPS, mg
    assert mg["defaults"] == {"steps": MG_STEPS, "guidance": 12.0, "randomize_temperature": 2.0,
                              "aesthetic": 6.5}, mg
    assert mg["max_prompt_bytes"] == 1000
    status, _, body = both.json("GET", "/v1/classes")
    assert status == 200 and len(body["classes"]) == 10


def test_mixed_masked_png_same_as_cli(both):
    status, hdrs, png = both.request("POST", "/generate", {"prompt": "a red cube", "seed": 7})
    assert status == 200 and hdrs["content-type"] == "image/png", (status, png[:200])
    assert hdrs["x-seed"] == "7" and png_size(png) == (MG_PX, MG_PX)
    assert png == cli_masked_png("a red cube", 7)[0], "server PNG differs from the CLI's"
    params = png_parameters(png)
    assert "prompt=a red cube" in params and "guidance=12" in params and "steps=8" in params, params
    # Every sampling parameter travels through; several images come back as JSON.
    body = {"prompt": "a blue sphere", "seed": 11, "n": 3, "guidance": 4.5,
            "randomize_temperature": 1.25, "aesthetic": 5.0, "steps": 5}
    status, _, res = both.json("POST", "/generate", body)
    assert status == 200, res
    assert res["model"] == MG_NAME and res["prompt"] == "a blue sphere" and "class" not in res
    want = cli_masked_png("a blue sphere", 11, n=3, guidance=4.5, randomize_temperature=1.25,
                          aesthetic=5.0, steps=5)
    assert [im["seed"] for im in res["images"]] == [11, 12, 13]
    got = [base64.b64decode(im["png"]) for im in res["images"]]
    assert got == want, "batched masked images differ from the CLI's"
    # Image 2 alone from its own seed: the same pixels (its text says image 0).
    alone = both.request("POST", "/generate", {"prompt": "a blue sphere", "seed": 13,
                                               "guidance": 4.5, "randomize_temperature": 1.25,
                                               "aesthetic": 5.0, "steps": 5})[2]
    assert alone == cli_masked_png("a blue sphere", 13, guidance=4.5, randomize_temperature=1.25,
                                   aesthetic=5.0, steps=5)[0]
    # The empty (null) prompt and non-ASCII UTF-8 work, byte for byte with the CLI.
    status, _, png = both.request("POST", "/generate", {"prompt": "", "seed": 1})
    assert status == 200 and png == cli_masked_png("", 1)[0]
    text = "caf\u00e9 au lait \u2615, \u00fcber"
    status, _, png = both.request("POST", "/generate", {"prompt": text, "seed": 2})
    assert status == 200 and png == cli_masked_png(text, 2)[0]
    assert "prompt=" + text in png_parameters(png)
    # "model" picks a family: a prompt for the LlamaGen model is a class name there.
    status, _, res = both.json("POST", "/generate", {"model": AR_NAME, "prompt": "goldfish",
                                                     "seed": 5}, {"Accept": "application/json"})
    assert status == 200 and res["class"] == 1 and res["model"] == AR_NAME, res
    assert base64.b64decode(res["images"][0]["png"]) == cli_png(TINY, 1, 5)[0]
    status, _, png = both.request("POST", "/generate", {"model": MG_NAME, "prompt": "goldfish",
                                                        "seed": 5})
    assert status == 200 and png == cli_masked_png("goldfish", 5)[0]
    # Classes still go to the LlamaGen model.
    status, _, png = both.request("POST", "/generate", {"class": 3, "seed": 7})
    assert status == 200 and png == cli_png(TINY, 3, 7)[0]


def test_mixed_openai_and_jobs(both):
    status, _, body = both.json("POST", "/v1/images/generations",
                                {"prompt": "a red cube", "n": 2, "size": "32x32", "seed": 7,
                                 "model": "dall-e-3"})
    assert status == 200, body
    want = cli_masked_png("a red cube", 7, n=2)
    assert [base64.b64decode(d["b64_json"]) for d in body["data"]] == want
    status, _, body = both.json("POST", "/v1/images/generations",
                                {"prompt": "tench", "size": "16x16", "seed": 3, "model": AR_NAME})
    assert status == 200 and base64.b64decode(body["data"][0]["b64_json"]) == cli_png(TINY, 0, 3)[0]
    c, r = open_stream(both.port, "/v1/images/generations",
                       {"prompt": "a red cube", "stream": True, "partial_images": 1, "seed": 7})
    events = [(e, json.loads(d)) for e, d in sse_events(r) if e != ":"]
    c.close()
    assert [e for e, _ in events] == ["image_generation.partial_image",
                                      "image_generation.completed"], events
    assert base64.b64decode(events[-1][1]["b64_json"]) == want[0]
    status, _, body = both.json("POST", "/v1/jobs", {"prompt": "a red cube", "seed": 7, "n": 2})
    assert status == 202, body
    end = time.time() + 60
    while True:
        job = both.json("GET", "/v1/jobs/" + body["id"])[2]
        if job["state"] == "completed":
            break
        assert job["state"] in ("queued", "running") and time.time() < end, job
        time.sleep(0.05)
    assert job["progress"] == {"step": MG_STEPS, "total": MG_STEPS}, job
    assert job["result"]["prompt"] == "a red cube"
    assert [base64.b64decode(im["png"]) for im in job["result"]["images"]] == want


def test_mixed_masked_sse_previews(both):
    c, r = open_stream(both.port, "/generate", {"prompt": "a green tree", "seed": 4, "n": 2,
                                                "stream": True})
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = list(sse_events(r))
    c.close()
    names = [e for e, _ in events if e != ":"]
    assert names[0] in ("queued", "started") and names[-1] == "done", names
    progress = [json.loads(d) for e, d in events if e == "progress"]
    assert [p["step"] for p in progress] == list(range(1, MG_STEPS + 1)), progress
    assert all(p["total"] == MG_STEPS for p in progress)
    previews = [json.loads(d) for e, d in events if e == "preview"]
    # --masked-preview-every 2 on 8 steps: steps 2, 4, 6 (the final image is the last word).
    assert sorted((p["step"], p["image"]) for p in previews) == \
        [(s, i) for s in (2, 4, 6) for i in (0, 1)], previews
    for p in previews:
        assert p["total"] == MG_STEPS
        assert png_size(base64.b64decode(p["png"])) == (MG_PX, MG_PX)
    assert names.index("started") < names.index("preview") < names.index("done")
    done = json.loads(events[-1][1])
    assert [base64.b64decode(im["png"]) for im in done["images"]] == \
        cli_masked_png("a green tree", 4, n=2)


def test_mixed_errors(both):
    big = "\u2615" * 334   # 1002 bytes of UTF-8, 334 characters
    cases = [
        (both.json("POST", "/generate", {}), 422, "invalid_field", "prompt"),
        (both.json("POST", "/generate", {"prompt": None}), 422, "invalid_field", "prompt"),
        (both.json("POST", "/generate", {"model": MG_NAME}), 422, "invalid_field", "prompt"),
        (both.json("POST", "/generate", {"prompt": 5}), 422, "invalid_field", "prompt"),
        (both.json("POST", "/generate", {"prompt": big}), 422, "invalid_field", "1000 bytes"),
        (both.json("POST", "/generate", {"prompt": "x", "steps": 0}), 422, "invalid_field", "steps"),
        (both.json("POST", "/generate", {"prompt": "x", "steps": MG_TOKENS + 1}), 422,
         "invalid_field", "steps"),
        (both.json("POST", "/generate", {"prompt": "x", "steps": 2.5}), 422, "invalid_field", "steps"),
        (both.json("POST", "/generate", {"prompt": "x", "guidance": "high"}), 422, "invalid_field",
         "guidance"),
        (both.json("POST", "/generate", {"prompt": "x", "randomize_temperature": -1}), 422,
         "invalid_field", "randomize_temperature"),
        (both.json("POST", "/generate", {"prompt": "x", "n": 99}), 422, "invalid_field", "n"),
        (both.json("POST", "/generate", {"prompt": "x", "top_k": 5}), 422, "invalid_field", "top_k"),
        (both.json("POST", "/generate", {"prompt": "x", "cfg": 2}), 422, "invalid_field", "cfg"),
        (both.json("POST", "/generate", {"class": 1, "guidance": 3}), 422, "invalid_field",
         "guidance"),
        (both.json("POST", "/generate", {"class": 1, "steps": 3}), 422, "invalid_field", "steps"),
        (both.json("POST", "/generate", {"model": MG_NAME, "class": 1}), 422, "invalid_field",
         "class"),
        (both.json("POST", "/generate", {"model": AR_NAME, "prompt": "a cat"}), 422,
         "invalid_field", "class name"),
        (both.json("POST", "/generate", {"model": "no such model", "prompt": "x"}), 404,
         "not_found", "no such model"),
        (both.json("POST", "/generate", {"model": 3, "prompt": "x"}), 422, "invalid_field", "model"),
        (both.json("POST", "/v1/jobs", {"prompt": "x", "stream": True}), 422, "invalid_field",
         "stream"),
        (both.json("POST", "/v1/images/generations", {"prompt": "x", "size": "16x16"}), 422,
         "invalid_field", "32x32"),
    ]
    for i, (res, status, code, needle) in enumerate(cases):
        got = error_of(res)
        assert got[0] == status and got[1] == code, (i, got)
        assert needle.lower() in got[2].lower(), (i, got)
    # The other-family messages name the model the field does not belong to.
    msg = error_of(both.json("POST", "/generate", {"prompt": "x", "top_p": 0.5}))[2]
    assert "MaskGen" in msg and MG_NAME in msg, msg
    # 1000 bytes exactly is allowed.
    status, _, png = both.request("POST", "/generate", {"prompt": "\u2615" * 333 + "a", "seed": 1,
                                                        "steps": 1})
    assert status == 200, png[:300]


def test_mixed_interleave_step_by_step():
    """A masked and an autoregressive request admitted together are stepped together:
    each engine step advances both (one AR forward, one masked step)."""
    srv = Server(TINY, "--model", MASKGEN, "--max-batch", "2", "--threads", "2",
                 env={"TESSERA_TEST_STEP_DELAY_MS": "40"})
    try:
        before = srv.metrics()
        # A blocker fills the batch, so that the two requests queue and start together.
        status, _, blocker = srv.json("POST", "/v1/jobs", {"class": 1, "n": 2, "seed": 1})
        assert status == 202
        end = time.time() + 30
        while srv.metrics()["tessera_running_groups"] < 1:
            assert time.time() < end
            time.sleep(0.005)
        seen = {"ar": [], "mg": []}
        done = {}

        def client(key, body):
            c, r = open_stream(srv.port, "/generate", body)
            for e, d in sse_events(r):
                if e == "progress":
                    seen[key].append((time.monotonic(), json.loads(d)["step"]))
                elif e == "done":
                    done[key] = json.loads(d)
            c.close()

        threads = [threading.Thread(target=client, args=("ar", {"class": 2, "seed": 5,
                                                                 "stream": True})),
                   threading.Thread(target=client, args=("mg", {"prompt": "a cat", "seed": 6,
                                                                 "stream": True}))]
        for t in threads:
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join()
        after = srv.metrics()
        assert [s for _, s in seen["ar"]] == list(range(1, TINY_TOKENS + 1)), seen["ar"]
        assert [s for _, s in seen["mg"]] == list(range(1, MG_STEPS + 1)), seen["mg"]
        # Step k of each arrives no later than step k + 2 of the other: they alternate,
        # one step at a time, rather than one running after the other.
        ar_t = {s: t for t, s in seen["ar"]}
        for t, k in seen["mg"]:
            assert t < ar_t[k + 2], ("masked step %d came after AR step %d" % (k, k + 2), seen)
            if k > 2:
                assert ar_t[k - 2] < t, ("AR step %d came after masked step %d" % (k - 2, k), seen)
        d = {k: after[k] - before[k] for k in ("tessera_forward_passes_total",
                                                "tessera_masked_forward_passes_total",
                                                "tessera_step_seconds_count")}
        assert d["tessera_masked_forward_passes_total"] == MG_STEPS, d
        assert d["tessera_forward_passes_total"] == 2 * TINY_TOKENS, d
        # Blocker, then both side by side: 2 * 16 steps (+ a few), not 2 * 16 + 8.
        assert d["tessera_step_seconds_count"] < 2 * TINY_TOKENS + MG_STEPS - 2, d
        assert after["tessera_masked_images_stepped_total"] - \
            before["tessera_masked_images_stepped_total"] == MG_STEPS
        assert after["tessera_prompts_encoded_total"] - before["tessera_prompts_encoded_total"] == 1
        assert [base64.b64decode(im["png"]) for im in done["ar"]["images"]] == cli_png(TINY, 2, 5)
        assert [base64.b64decode(im["png"]) for im in done["mg"]["images"]] == \
            cli_masked_png("a cat", 6)
        assert srv.json("GET", "/v1/jobs/" + blocker["id"])[2]["state"] == "completed"
    finally:
        srv.stop()


def test_mixed_masked_cancel_and_drain():
    srv = Server(MASKGEN, "--model", TINY, "--max-batch", "4",
                 env={"TESSERA_TEST_STEP_DELAY_MS": "40"})
    try:
        # A masked stream dropped after its first progress event is cancelled.
        s = socket.create_connection(("127.0.0.1", srv.port))
        body = json.dumps({"prompt": "a dog", "n": 2, "steps": MG_TOKENS,
                           "stream": True}).encode()
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        seen = b""
        while b"event: progress" not in seen:
            chunk = s.recv(4096)
            assert chunk, seen
            seen += chunk
        s.close()
        wait_metric(srv, "tessera_running_groups", 0)
        m = srv.metrics()
        assert m["tessera_requests_cancelled_total"] == 1
        assert m["tessera_masked_forward_passes_total"] < MG_TOKENS
        # DELETE of a running masked job.
        status, _, body = srv.json("POST", "/v1/jobs", {"prompt": "a dog", "n": 2,
                                                         "steps": MG_TOKENS})
        jid = body["id"]
        end = time.time() + 30
        while srv.json("GET", "/v1/jobs/" + jid)[2]["state"] == "queued":
            assert time.time() < end
            time.sleep(0.01)
        assert srv.json("DELETE", "/v1/jobs/" + jid)[0] == 200
        while srv.json("GET", "/v1/jobs/" + jid)[2]["state"] != "cancelled":
            assert time.time() < end
            time.sleep(0.02)
        wait_metric(srv, "tessera_running_groups", 0)
        wait_metric(srv, "tessera_kv_blocks_used", 1)
        # SIGTERM drains queued and running requests of both kinds.
        results = {}

        def client(key, body):
            results[key] = srv.request("POST", "/generate", body)

        threads = [threading.Thread(target=client, args=(k, b)) for k, b in
                   (("mg", {"prompt": "a dog", "seed": 3}), ("ar", {"class": 4, "seed": 3}),
                    ("mg2", {"prompt": "a dog", "seed": 4, "n": 3}))]
        for t in threads:
            t.start()
        end = time.time() + 30
        while srv.metrics()["tessera_running_groups"] < 2:
            assert time.time() < end
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert results["mg"][2] == cli_masked_png("a dog", 3)[0]
        assert results["ar"][2] == cli_png(TINY, 4, 3)[0]
        assert results["mg2"][0] == 200, results["mg2"][:2]
        srv.stop(signal_again=False)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_masked_only_server():
    srv = Server(MASKGEN)
    try:
        status, _, body = srv.json("GET", "/health")
        assert status == 200 and body["models"] == [{"id": MG_NAME, "family": "maskgen"}]
        status, _, body = srv.json("GET", "/v1/models")
        assert [m["family"] for m in body["data"]] == ["maskgen"]
        assert srv.json("GET", "/v1/classes")[2] == {"classes": []}
        status, _, png = srv.request("POST", "/generate", {"prompt": "a red cube", "seed": 7})
        assert status == 200 and png == cli_masked_png("a red cube", 7)[0]
        assert error_of(srv.json("POST", "/generate", {"class": 1}))[:2] == (422, "invalid_field")
        msg = error_of(srv.json("POST", "/generate", {}))[2]
        assert msg.startswith("prompt"), msg
        m = srv.metrics()
        assert m["tessera_kv_blocks_total"] == 0 and m["tessera_forward_passes_total"] == 0
        assert m["tessera_masked_forward_passes_total"] == MG_STEPS
    finally:
        srv.stop()


def test_two_models_of_one_family_refused():
    srv = Server(TINY, "--model", TINY, wait=False)
    code = srv.proc.wait(timeout=30)
    assert code != 0 and "at most one model of each family" in srv.output(), srv.output()
    srv = Server(FQGAN, "--model", TINY, "--model", FQGAN3, wait=False)
    code = srv.proc.wait(timeout=30)
    assert code != 0 and "at most one model of each family" in srv.output(), srv.output()
    assert "FQGAN" in srv.output(), srv.output()
    srv = Server(TINY, "--model", MASKGEN, "--model", FQGAN, "--model", TINY, wait=False)
    code = srv.proc.wait(timeout=30)
    assert code == 2 and "at most 3 --model" in srv.output(), srv.output()


# --------------------------------------------------------------------------- FQGAN (FAR)


FAR_NAME = "Tessera test fixture fqgan_tiny"
FAR3_NAME = "Tessera test fixture fqgan_tiny3"


def test_far_models_listed(three):
    status, _, body = three.json("GET", "/health")
    assert status == 200 and body["models"] == [{"id": AR_NAME, "family": "llamagen"},
                                                {"id": FAR_NAME, "family": "fqgan"},
                                                {"id": MG_NAME, "family": "maskgen"}], body
    status, _, body = three.json("GET", "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == [AR_NAME, FAR_NAME, MG_NAME]
    far = body["data"][1]
    assert far["family"] == "fqgan" and far["input"] == "class", far
    assert far["image_size"] == FAR_PX and far["num_classes"] == 10 and far["class_names"], far
    assert far["positions"] == FAR_POSITIONS and far["sub_tokens"] == FAR_K, far
    assert far["tokens"] == FAR_POSITIONS * FAR_K and far["steps"] == FAR_POSITIONS, far
    assert far["defaults"] == body["data"][0]["defaults"], far      # LlamaGen's and the CLI's
    assert far["preview_every"] == 4, far
    # /v1/classes: the default class model's (LlamaGen here), or the one ?model= names.
    status, _, body = three.json("GET", "/v1/classes")
    assert status == 200 and len(body["classes"]) == 10
    q = urllib.parse.quote(FAR_NAME)
    status, _, body = three.json("GET", "/v1/classes?model=" + q)
    assert status == 200 and len(body["classes"]) == 10, body
    assert body["classes"][1]["name"].startswith("goldfish")
    assert three.json("GET", "/v1/classes?model=" + urllib.parse.quote(MG_NAME))[2] == \
        {"classes": []}
    assert error_of(three.json("GET", "/v1/classes?model=nope"))[:2] == (404, "not_found")


def test_far_png_same_as_cli(three):
    status, hdrs, png = three.request("POST", "/generate", {"model": FAR_NAME, "class": 3,
                                                            "seed": 7})
    assert status == 200 and hdrs["content-type"] == "image/png", (status, png[:300])
    assert hdrs["x-seed"] == "7" and png_size(png) == (FAR_PX, FAR_PX)
    assert png == cli_png(FQGAN, 3, 7)[0], "server FAR PNG differs from the CLI's"
    params = png_parameters(png)
    assert params.startswith("model=" + FAR_NAME) and "class=3" in params, params
    # Sampling parameters travel through; several images come back as JSON, each the
    # CLI's, and image 2 alone from its own seed is the same image.
    kw = {"cfg": 2.5, "cfg_interval": 3, "top_k": 40, "top_p": 0.9, "temperature": 0.8}
    body = dict(model=FAR_NAME, prompt="goldfish", seed=11, n=3, **kw)
    status, _, res = three.json("POST", "/generate", body)
    assert status == 200 and res["model"] == FAR_NAME and res["class"] == 1, res
    assert [im["seed"] for im in res["images"]] == [11, 12, 13]
    assert [base64.b64decode(im["png"]) for im in res["images"]] == \
        cli_png(FQGAN, 1, 11, n=3, **kw)
    status, _, png = three.request("POST", "/generate", dict(model=FAR_NAME, **{"class": 1},
                                                             seed=13, **kw))
    assert status == 200 and png == cli_png(FQGAN, 1, 13, **kw)[0]
    # CFG off.
    status, _, png = three.request("POST", "/generate", {"model": FAR_NAME, "class": 5,
                                                         "seed": 2, "cfg": 1})
    assert status == 200 and png == cli_png(FQGAN, 5, 2, cfg=1)[0]
    # Without "model" a class goes to LlamaGen (the default class model), a prompt to
    # MaskGen.
    status, _, png = three.request("POST", "/generate", {"class": 3, "seed": 7})
    assert status == 200 and png == cli_png(TINY, 3, 7)[0]
    status, _, png = three.request("POST", "/generate", {"prompt": "a red cube", "seed": 7})
    assert status == 200 and png == cli_masked_png("a red cube", 7)[0]


def test_far_sse_previews(three):
    c, r = open_stream(three.port, "/generate", {"model": FAR_NAME, "class": 4, "seed": 9,
                                                 "n": 2, "stream": True})
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = list(sse_events(r))
    c.close()
    names = [e for e, _ in events if e != ":"]
    assert names[0] in ("queued", "started") and names[-1] == "done", names
    progress = [json.loads(d) for e, d in events if e == "progress"]
    assert [p["step"] for p in progress] == list(range(1, FAR_POSITIONS + 1)), progress
    assert all(p["total"] == FAR_POSITIONS for p in progress)
    previews = [json.loads(d) for e, d in events if e == "preview"]
    # --preview-every 4 positions: 4, 8, 12 for each image (the final image is the last).
    assert sorted((p["step"], p["image"]) for p in previews) == \
        [(s, i) for s in (4, 8, 12) for i in (0, 1)], previews
    for p in previews:
        assert p["total"] == FAR_POSITIONS
        assert png_size(base64.b64decode(p["png"])) == (FAR_PX, FAR_PX)
    assert names.index("started") < names.index("preview") < names.index("done")
    # Each preview comes after the progress event of its position.
    order = [(e, json.loads(d)) for e, d in events if e in ("progress", "preview")]
    for i, (e, d) in enumerate(order):
        if e == "preview":
            done_steps = [x["step"] for k, x in order[:i] if k == "progress"]
            assert done_steps and done_steps[-1] >= d["step"], order
    done = json.loads(events[-1][1])
    assert done["model"] == FAR_NAME and done["class"] == 4
    assert [base64.b64decode(im["png"]) for im in done["images"]] == cli_png(FQGAN, 4, 9, n=2)


def test_far_mixed_concurrent(three):
    """Requests of all three families at once: all succeed, batched together, and each
    equals its CLI's PNG."""
    before = three.metrics()
    reqs = []
    for i in range(3):
        reqs.append(("ar", {"class": i + 1, "seed": 200 + i}))
        reqs.append(("far", {"model": FAR_NAME, "class": i + 2, "seed": 300 + i,
                             "n": 1 + i % 2}))
        reqs.append(("mg", {"prompt": "a cat number %d" % i, "seed": 400 + i}))
    results = [None] * len(reqs)
    gate = threading.Barrier(len(reqs))

    def client(i):
        gate.wait()
        results[i] = three.request("POST", "/generate", reqs[i][1],
                                   {"Accept": "application/json"})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = three.metrics()
    for (kind, body), (status, _, data) in zip(reqs, results):
        assert status == 200, (kind, body, status, data[:300])
        got = [base64.b64decode(im["png"]) for im in json.loads(data)["images"]]
        if kind == "ar":
            want = cli_png(TINY, body["class"], body["seed"])
        elif kind == "far":
            want = cli_png(FQGAN, body["class"], body["seed"], n=body["n"])
        else:
            want = cli_masked_png(body["prompt"], body["seed"])
        assert got == want, "%s request %s differs from the CLI's when batched" % (kind, body)
    d = {k: after[k] - before[k] for k in after if k in before}
    # Batched: 3 FAR requests alone would take 3 * 16 FAR steps, 3 LlamaGen ones 3 * 16
    # forwards, and all nine one after another 3 * 16 + 3 * 16 + 3 * 8 engine steps.
    assert 0 < d["tessera_far_forward_passes_total"] < 3 * FAR_POSITIONS - 8, d
    assert d["tessera_far_head_steps_total"] == FAR_K * d["tessera_far_forward_passes_total"], d
    assert d["tessera_far_batch_images_count"] == d["tessera_far_forward_passes_total"], d
    assert d["tessera_far_batch_images_sum"] == (1 + 2 + 1) * FAR_POSITIONS, d
    assert d["tessera_forward_passes_total"] < 3 * TINY_TOKENS - 8, d
    assert d["tessera_step_seconds_count"] < 2 * TINY_TOKENS + 3 * MG_STEPS, d
    assert d['tessera_far_batch_images_bucket{le="1"}'] < d["tessera_far_batch_images_count"], d
    assert after["tessera_far_kv_blocks_used"] == 0 and after["tessera_far_kv_blocks_reserved"] == 0
    assert after["tessera_far_kv_blocks_total"] > 0
    assert after["tessera_kv_blocks_used"] == 1        # LlamaGen's shared null prefix


def test_far_openai_and_jobs(three):
    status, _, body = three.json("POST", "/v1/images/generations",
                                 {"prompt": "tench", "n": 2, "size": "32x32", "seed": 3,
                                  "model": FAR_NAME})
    assert status == 200, body
    want = cli_png(FQGAN, 0, 3, n=2)
    assert [base64.b64decode(d["b64_json"]) for d in body["data"]] == want
    c, r = open_stream(three.port, "/v1/images/generations",
                       {"prompt": "tench", "stream": True, "partial_images": 1, "seed": 3,
                        "model": FAR_NAME})
    events = [(e, json.loads(d)) for e, d in sse_events(r) if e != ":"]
    c.close()
    assert [e for e, _ in events] == ["image_generation.partial_image",
                                      "image_generation.completed"], events
    assert base64.b64decode(events[-1][1]["b64_json"]) == want[0]
    assert events[-1][1]["usage"]["output_tokens"] == FAR_POSITIONS * FAR_K
    status, _, body = three.json("POST", "/v1/jobs", {"model": FAR_NAME, "class": 6, "seed": 21,
                                                      "n": 2})
    assert status == 202, body
    end = time.time() + 60
    while True:
        job = three.json("GET", "/v1/jobs/" + body["id"])[2]
        if job["state"] == "completed":
            break
        assert job["state"] in ("queued", "running") and time.time() < end, job
        time.sleep(0.05)
    assert job["progress"] == {"step": FAR_POSITIONS, "total": FAR_POSITIONS}, job
    assert job["result"]["model"] == FAR_NAME and job["result"]["class"] == 6
    assert [base64.b64decode(im["png"]) for im in job["result"]["images"]] == \
        cli_png(FQGAN, 6, 21, n=2)
    assert three.json("DELETE", "/v1/jobs/" + body["id"])[2]["state"] == "completed"


def test_far_errors(three):
    cases = [
        (three.json("POST", "/generate", {"model": FAR_NAME}), 422, "invalid_field", "class"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "class": 10}), 422, "invalid_field",
         "class"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "class": 1, "steps": 3}), 422,
         "invalid_field", "steps"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "class": 1, "guidance": 3}), 422,
         "invalid_field", "FQGAN"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "prompt": "zebra"}), 422,
         "invalid_field", "not a class name"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "class": 1, "prompt": "hen"}), 422,
         "invalid_field", "class"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "class": 1, "n": 99}), 422,
         "invalid_field", "n"),
        (three.json("POST", "/generate", {"model": FAR_NAME, "class": 1, "top_p": 0}), 422,
         "invalid_field", "top_p"),
        (three.json("POST", "/generate", {"model": MG_NAME, "class": 1}), 422, "invalid_field",
         "class"),
        (three.json("POST", "/generate", {"model": "fqgan", "class": 1}), 404, "not_found",
         "fqgan"),
        (three.json("POST", "/v1/jobs", {"model": FAR_NAME, "class": 1, "stream": True}), 422,
         "invalid_field", "stream"),
        (three.json("POST", "/v1/images/generations", {"model": FAR_NAME, "prompt": "tench",
                                                       "size": "16x16"}), 422, "invalid_field",
         "32x32"),
    ]
    for i, (res, status, code, needle) in enumerate(cases):
        got = error_of(res)
        assert got[0] == status and got[1] == code, (i, got)
        assert needle.lower() in got[2].lower(), (i, got)
    msg = error_of(three.json("POST", "/generate", {"model": FAR_NAME, "class": 1,
                                                    "aesthetic": 1}))[2]
    assert "FQGAN" in msg and FAR_NAME in msg, msg


def test_far_only_class_model_server():
    """FQGAN (the triple fixture) beside MaskGen: class requests without "model" go to
    FQGAN, the only class-conditional model; its disconnects free its KV blocks."""
    srv = Server(FQGAN3, "--model", MASKGEN, "--preview-every", "2",
                 env={"TESSERA_TEST_STEP_DELAY_MS": "30"})
    try:
        status, _, body = srv.json("GET", "/health")
        assert body["models"] == [{"id": FAR3_NAME, "family": "fqgan"},
                                  {"id": MG_NAME, "family": "maskgen"}], body
        far = srv.json("GET", "/v1/models")[2]["data"][0]
        assert far["sub_tokens"] == 3 and far["tokens"] == 16 * 3 and far["image_size"] == 64
        assert len(srv.json("GET", "/v1/classes")[2]["classes"]) == 5
        status, _, png = srv.request("POST", "/generate", {"class": 2, "seed": 5})
        assert status == 200 and png_size(png) == (64, 64) and png == cli_png(FQGAN3, 2, 5)[0]
        status, _, png = srv.request("POST", "/generate", {"model": FAR3_NAME,
                                                           "prompt": "hammerhead", "seed": 5})
        assert status == 200 and png == cli_png(FQGAN3, 4, 5)[0]
        status, _, png = srv.request("POST", "/generate", {"prompt": "a red cube", "seed": 7})
        assert status == 200 and png == cli_masked_png("a red cube", 7)[0]
        m = srv.metrics()
        assert m["tessera_kv_blocks_total"] == 0 and m["tessera_forward_passes_total"] == 0
        assert m["tessera_far_forward_passes_total"] == 2 * 16
        # A streaming FAR request dropped after its first progress event is cancelled and
        # its KV blocks are free again.
        s = socket.create_connection(("127.0.0.1", srv.port))
        body = json.dumps({"class": 1, "n": 2, "stream": True}).encode()
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        seen = b""
        while b"event: progress" not in seen:
            chunk = s.recv(4096)
            assert chunk, seen
            seen += chunk
        assert srv.metrics()["tessera_far_kv_blocks_used"] > 0
        s.close()
        wait_metric(srv, "tessera_far_kv_blocks_used", 0)
        wait_metric(srv, "tessera_running_groups", 0)
        m = srv.metrics()
        assert m["tessera_requests_cancelled_total"] == 1
        assert m["tessera_far_forward_passes_total"] < 2 * 16 + 16, m
        assert m["tessera_far_kv_blocks_reserved"] == 0
    finally:
        srv.stop()


def test_far_kv_memory_split():
    """--kv-memory is the total of the LlamaGen and FQGAN caches, split in proportion to
    one image's KV bytes of each (equal here: the two tiny models have the same block
    size and blocks per image)."""
    srv = Server(TINY, "--model", FQGAN, "--kv-memory", "1000", wait=False)
    code = srv.proc.wait(timeout=30)
    out = srv.output()
    assert code != 0 and "split between the LlamaGen and FQGAN caches" in out, out
    least = int(re.search(r"give at least (\d+) bytes", out).group(1))
    srv = Server(TINY, "--model", FQGAN, "--kv-memory", str(least))
    try:
        m = srv.metrics()
        assert m["tessera_kv_blocks_total"] == 3 and m["tessera_far_kv_blocks_total"] == 3, m
        # One image with CFG at a time in each cache; a second one waits, two in one
        # request can never fit.
        assert srv.request("POST", "/generate", {"model": FAR_NAME, "class": 1, "seed": 1})[2] == \
            cli_png(FQGAN, 1, 1)[0]
        res = srv.json("POST", "/generate", {"model": FAR_NAME, "class": 1, "n": 2})
        assert error_of(res)[:2] == (422, "invalid_field") and "KV blocks" in error_of(res)[2]
    finally:
        srv.stop()
    srv = Server(TINY, "--model", FQGAN, "--kv-memory", "1M")
    try:
        m = srv.metrics()
        # 1 MiB over two caches of 16-position blocks: float K/V on the CPU, bf16 on CUDA.
        want = 64 if DEVICE_ARGS[1] == "cuda" else 32
        assert m["tessera_kv_blocks_total"] == m["tessera_far_kv_blocks_total"] == want, m
    finally:
        srv.stop()


def test_far_decode_only_folder_refused():
    bad = os.path.join(WORK, "fqgan-decode-only")
    shutil.copytree(FQGAN, bad)
    with open(os.path.join(bad, "config.json")) as f:
        cfg = json.load(f)
    del cfg["gpt"]
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(cfg, f)
    srv = Server(bad, wait=False)
    code = srv.proc.wait(timeout=30)
    assert code != 0 and "no FAR generator" in srv.output(), srv.output()


# --------------------------------------------------------------------------- LlamaGen t2i


PORSCHE = "A blue Porsche 356 parked in front of a yellow brick wall."
LONG_PROMPT = " ".join(["a red teapot on the moon, digital art"] * 25)   # truncated to 120


def test_t2i_png_same_as_cli(t2i):
    """The t2i fixture with MaskGen beside it, a prefill budget of 8 positions a step: a
    prompt naming the t2i model gives the CLI's PNG, also with several images, sampling
    settings, a prompt truncated to 120 tokens and concurrent requests."""
    status, _, models = t2i.json("GET", "/v1/models")
    entry = [m for m in models["data"] if m["id"] == T2I_NAME][0]
    assert entry["input"] == "prompt" and entry["family"] == "llamagen", entry
    assert entry["defaults"]["cfg"] == 7.5 and entry["defaults"]["top_k"] == 1000, entry
    status, hdrs, png = t2i.request("POST", "/generate", {"model": T2I_NAME, "prompt": PORSCHE,
                                                          "seed": 7})
    assert status == 200 and hdrs["content-type"] == "image/png", (status, png[:300])
    assert png_size(png) == (T2I_PX, T2I_PX)
    assert png == cli_t2i_png(PORSCHE, 7)[0], "server t2i PNG differs from the CLI's"
    params = png_parameters(png)
    assert params.startswith("model=" + T2I_NAME) and ("prompt=" + PORSCHE) in params, params
    kw = {"cfg": 3.0, "top_k": 20, "temperature": 0.9}
    status, _, res = t2i.json("POST", "/generate", dict(model=T2I_NAME, prompt=LONG_PROMPT,
                                                        seed=11, n=2, **kw))
    assert status == 200 and res["prompt"] == LONG_PROMPT, res
    assert [base64.b64decode(im["png"]) for im in res["images"]] == \
        cli_t2i_png(LONG_PROMPT, 11, n=2, **kw)
    # Concurrent requests of different lengths batch together and stay reproducible.
    bodies = [{"model": T2I_NAME, "prompt": p, "seed": 20 + i, "cfg": c}
              for i, (p, c) in enumerate([(PORSCHE, 7.5), ("http://example.com", 1),
                                          ("café crème", 4), (LONG_PROMPT, 7.5)])]
    results = [None] * len(bodies)

    def run(i):
        results[i] = t2i.request("POST", "/generate", bodies[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for body, (status, _, png) in zip(bodies, results):
        assert status == 200, png[:300]
        assert png == cli_t2i_png(body["prompt"], body["seed"], cfg=body["cfg"])[0], body
    # Without "model" a prompt goes to MaskGen, which this server also has.
    status, _, png = t2i.request("POST", "/generate", {"prompt": "a red cube", "seed": 7})
    assert status == 200 and png == cli_masked_png("a red cube", 7)[0]


def test_t2i_sse_and_openai(t2i):
    c, r = open_stream(t2i.port, "/generate", {"model": T2I_NAME, "prompt": PORSCHE, "seed": 3,
                                               "n": 2, "stream": True})
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = list(sse_events(r))
    c.close()
    names = [e for e, _ in events if e != ":"]
    assert names[-1] == "done" and "preview" in names, names
    progress = [json.loads(d)["step"] for e, d in events if e == "progress"]
    assert progress == list(range(1, T2I_TOKENS + 1)), progress
    done = json.loads(events[-1][1])
    assert done["prompt"] == PORSCHE
    assert [base64.b64decode(im["png"]) for im in done["images"]] == cli_t2i_png(PORSCHE, 3, n=2)
    status, _, body = t2i.json("POST", "/v1/images/generations",
                               {"model": T2I_NAME, "prompt": PORSCHE, "seed": 5,
                                "size": "16x16"})
    assert status == 200, body
    assert base64.b64decode(body["data"][0]["b64_json"]) == cli_t2i_png(PORSCHE, 5)[0]


def test_t2i_errors(t2i):
    cases = [
        ({"model": T2I_NAME, "class": 3}, "text-to-image"),
        ({"model": T2I_NAME, "prompt": "a cat", "negative_prompt": "a dog"}, "negative_prompt"),
        ({"prompt": "a cat", "negative_prompt": ""}, "negative_prompt"),
        ({"model": T2I_NAME, "prompt": "x" * 1001}, "longer than 1000"),
        ({"model": T2I_NAME, "prompt": 5}, "must be a string"),
        ({"model": T2I_NAME, "prompt": "a cat", "guidance": 3}, "not a parameter"),
    ]
    for body, needle in cases:
        status, code, msg = error_of(t2i.json("POST", "/generate", body))
        assert status == 422 and code == "invalid_field" and needle in msg, (body, status, msg)
    # The server is still healthy and serves afterwards.
    status, _, png = t2i.request("POST", "/generate", {"model": T2I_NAME, "prompt": "ok",
                                                       "seed": 1})
    assert status == 200 and png_size(png) == (T2I_PX, T2I_PX)


def make_slow_model():
    """256 tokens per image (16x16 grid), still small: ~1 s per image on two cores."""
    tmp = os.path.join(WORK, "ckpt")
    subprocess.run([PY, os.path.join(ROOT, "tools", "make_random_checkpoints.py"), "--out", tmp,
                    "--image-size", "256", "--seed", "1", "--dim", "128", "--n-layer", "4",
                    "--n-head", "4", "--vocab", "512", "--codebook-size", "512",
                    "--num-classes", "10", "--ch", "32", "--ch-mult", "1,1,1,1,1",
                    "--z-channels", "32", "--num-res-blocks", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([PY, os.path.join(ROOT, "tools", "convert.py"), "llamagen", "--gpt",
                    os.path.join(tmp, "gpt.pt"), "--vq", os.path.join(tmp, "vq.pt"),
                    "--image-size", "256", "--out", SLOW, "--n-head", "4"],
                   check=True, stdout=subprocess.DEVNULL)


def main():
    global BIN
    if len(sys.argv) != 2:
        print("usage: test_server.py path/to/tessera", file=sys.stderr)
        return 2
    BIN = os.path.abspath(sys.argv[1])
    make_slow_model()
    only = os.environ.get("TEST_ONLY", "")    # run the tests whose names contain it
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_") and only in k]
    # The shared servers, started only when a selected test takes them.
    makers = {"srv": lambda: Server(TINY, "--preview-every", "4"),
              "slow": lambda: Server(SLOW, "--max-batch", "4"),
              "both": lambda: Server(TINY, "--model", MASKGEN, "--preview-every", "4",
                                     "--masked-preview-every", "2"),
              "t2i": lambda: Server(T2I, "--model", MASKGEN, "--preview-every", "4",
                                    "--prefill-tokens", "8", env=T2I_ENV),
              "three": lambda: Server(TINY, "--model", FQGAN, "--model", MASKGEN,
                                      "--preview-every", "4", "--masked-preview-every", "2")}
    wanted = {a for _, fn in tests for a in fn.__code__.co_varnames[:fn.__code__.co_argcount]}
    servers = {}
    failed = 0
    try:
        for key in makers:
            if key in wanted:
                servers[key] = makers[key]()
        for name, fn in tests:
            args = fn.__code__.co_varnames[:fn.__code__.co_argcount]
            t0 = time.time()
            try:
                fn(*[servers[a] for a in args])
                print("ok   %s (%.1f s)" % (name, time.time() - t0))
            except Exception as e:  # report every failure, then fail the run
                failed += 1
                import traceback
                traceback.print_exc()
                print("FAIL %s: %s" % (name, e))
        for srv in servers.values():
            srv.stop()
    finally:
        for srv in servers.values():
            if srv.proc.poll() is None:
                srv.proc.kill()
        if not failed:
            shutil.rmtree(WORK, ignore_errors=True)
    print("%d of %d server tests failed" % (failed, len(tests)) if failed else
          "all %d server tests passed" % len(tests))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
