#!/usr/bin/python3
"""Two `tessera serve` replicas behind Debian's nginx, with the shipped configuration.

    /usr/bin/python3 tests/test_lb.py path/to/build/tessera

nginx runs deploy/nginx/tessera.conf through deploy/nginx/run-local.sh (the file as
shipped, with compose's replica names and `listen 80;` replaced by loopback addresses and
free ports; pid, logs and temporary paths in a temporary folder; as root or not), in
front of two replicas of test_server.py's slow model (256 tokens per image, each step
slowed, so requests are still running when the test looks). Checks, each a named test:

- requests spread over both replicas (least_conn), counted by each replica's /metrics and
  by nginx's access log (which names the replica of every attempt: $upstream_addr);
- SSE through nginx is not buffered: the first preview arrives in the first half of the
  stream, long before the final image;
- bodies up to the server's 64 KiB pass, larger ones get nginx's 413 in the API's JSON;
- an async job is found through nginx whichever replica holds it (404 goes on);
- SIGTERM on one replica under load loses nothing: every request started before and
  during the drain gets 200 and a PNG, the replica exits 0, and every request sent after
  the SIGTERM is served by the other one (the drained one refuses with 503 and nginx
  retries, as the access log and both replicas' metrics show);
- after that replica has exited, requests still succeed (a refused connection goes on to
  the other replica; the passive health check takes the dead one out).

Skips (exit 0, printing SKIP) only when nginx is not installed. Exits nonzero on failure.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import test_server as ts  # noqa: E402  (Server, make_slow_model, sse_events, ...)

RUN_LOCAL = os.path.join(ROOT, "deploy", "nginx", "run-local.sh")
CONF = os.path.join(ROOT, "deploy", "nginx", "tessera.conf")
PX = 256                # the slow model's image size
PREVIEW_EVERY = 32      # 256 tokens: previews at steps 32, 64, ..., 224


def fail_timeout():
    """The replicas' fail_timeout in seconds, as the shipped file says."""
    with open(CONF) as f:
        found = set(re.findall(r"^\s*server\s.*\sfail_timeout=(\d+)s?\b", f.read(), re.M))
    assert len(found) == 1, "%s: one fail_timeout (in seconds) for every server: %s" % (CONF, found)
    return int(found.pop())


def find_nginx():
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


class Nginx:
    """deploy/nginx/run-local.sh in the foreground; its access log (stdout) in a file."""

    def __init__(self, nginx, replicas):
        self.dir = os.path.join(ts.WORK, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.port = ts.free_port()
        self.access = os.path.join(self.dir, "access.log")
        self.stderr = os.path.join(self.dir, "stderr.log")
        with open(self.access, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [RUN_LOCAL, self.dir, str(self.port)] + ["127.0.0.1:%d" % r.port for r in replicas],
                stdout=out, stderr=err, env=dict(os.environ, NGINX_BIN=nginx))

    def wait_ready(self):
        end = time.time() + 20
        while True:
            try:
                if self.request("GET", "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, "nginx exited %s: %s" % (self.proc.returncode,
                                                                       self.errors())
            assert time.time() < end, "nginx not answering: " + self.errors()
            time.sleep(0.05)

    def errors(self):
        text = ""
        for p in (self.stderr, os.path.join(self.dir, "error.log")):
            if os.path.exists(p):
                text += open(p).read()
        return text[-4000:]

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

    def log(self):
        """{request id: (upstream addresses tried, their statuses, final status)} from the
        access log (format `tessera` of deploy/nginx/tessera.conf)."""
        out = {}
        with open(self.access) as f:
            for line in f:
                m = re.search(r'" (\d+) \d+ rid=(\S+) upstream=(.*?) ustatus=(.*?) rt=', line)
                if m:
                    out[m.group(2)] = ([a.strip() for a in re.split(r"[,:]\s", m.group(3))
                                        if a.strip()] if m.group(3) != "-" else [],
                                       [s.strip() for s in re.split(r"[,:]\s", m.group(4))],
                                       int(m.group(1)))
        return out

    def wait_logged(self, rids, timeout=10):
        """The log entries of these requests (nginx writes a line when a request ends)."""
        end = time.time() + timeout
        while True:
            log = self.log()
            missing = [r for r in rids if r not in log]
            if not missing:
                return {r: log[r] for r in rids}
            assert time.time() < end, "requests %s not in nginx's access log" % missing
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)     # graceful
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("nginx did not stop on SIGQUIT")
        assert code == 0, "nginx exit %s: %s" % (code, self.errors())
        bad = [line for line in self.errors().splitlines()
               if re.search(r"\[(alert|emerg|crit)\]", line)]
        assert not bad, "nginx logged:\n" + "\n".join(bad)


class Setup:
    """Replicas A and B (one engine thread each: the two share CI's two cores) and nginx."""
    a = b = lb = None

    def start(self, nginx):
        args = ["--max-batch", "4", "--preview-every", PREVIEW_EVERY, "--threads", "1"]
        self.a = ts.Server(ts.SLOW, *args)
        self.b = ts.Server(ts.SLOW, *args)
        self.addr = {self.a: "127.0.0.1:%d" % self.a.port, self.b: "127.0.0.1:%d" % self.b.port}
        self.lb = Nginx(nginx, [self.a, self.b])
        self.lb.wait_ready()

    def kill_all(self):
        """After a failure: nothing may outlive the test (nginx's workers exit with their
        master on SIGTERM, not on SIGKILL)."""
        for x in (self.lb, self.a, self.b):
            if x is not None and x.proc.poll() is None:
                x.proc.terminate()
                try:
                    x.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    x.proc.kill()
                    x.proc.wait()


def is_png(data, px=PX):
    return data[:8] == b"\x89PNG\r\n\x1a\n" and ts.png_size(data) == (px, px)


def generate(lb, results, key, cls, seed=None):
    """One POST /generate through nginx, for a thread: results[key] = (status, headers,
    body, start time)."""
    t0 = time.time()
    try:
        res = lb.request("POST", "/generate", {"class": cls % 10, "seed": cls if seed is None
                                               else seed})
        results[key] = res + (t0,)
    except Exception as e:  # the test reports it as a lost request
        results[key] = (None, {}, repr(e).encode(), t0)


def run_clients(lb, n, first_class=0):
    """n concurrent POST /generate through nginx; returns their results in order."""
    results = {}
    threads = [threading.Thread(target=generate, args=(lb, results, i, first_class + i))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(n)]


def check_all_png(results, what):
    bad = [(i, r[0], r[2][:200]) for i, r in enumerate(results) if r[0] != 200 or not is_png(r[2])]
    assert not bad, "%s: requests without 200 and a %dx%d PNG (index, status, body): %s" % (
        what, PX, PX, bad)


def images(srv):
    return srv.metrics()["tessera_images_generated_total"]


def code_count(metrics, code):
    return metrics.get('tessera_http_responses_total{code="%d"}' % code, 0)


# --------------------------------------------------------------------------- tests


def test_requests_spread_over_both_replicas(s):
    a0, b0 = images(s.a), images(s.b)
    results = run_clients(s.lb, 6)
    check_all_png(results, "6 concurrent requests")
    # Sequential requests find both replicas idle: least_conn then takes turns.
    seq = [s.lb.request("POST", "/generate", {"class": i, "seed": 50 + i}) for i in range(2)]
    check_all_png(seq, "2 sequential requests")
    da, db = images(s.a) - a0, images(s.b) - b0
    assert da + db == 8, "replicas made %d + %d images for 8 requests" % (da, db)
    assert da >= 3 and db >= 3, (
        "requests not spread: replica A made %d images, B %d (of 6 concurrent + 2 "
        "sequential; least_conn should give each about half)" % (da, db))
    # nginx's log names the same replicas.
    log = s.lb.wait_logged([r[1]["x-request-id"] for r in results + seq])
    per = {addr: sum(1 for ups, _, _ in log.values() if ups == [addr])
           for addr in s.addr.values()}
    assert per == {s.addr[s.a]: da, s.addr[s.b]: db}, (
        "access log says %s, metrics say A=%d B=%d" % (per, da, db))


def test_sse_streams_unbuffered(s):
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", s.lb.port, timeout=120)
    c.request("POST", "/generate", body=json.dumps({"class": 3, "seed": 5, "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream", (
        r.status, r.getheaders())
    arrivals = []
    for event, data in ts.sse_events(r):     # as each event's lines are read off the socket
        arrivals.append((event, time.time() - t0, data))
        if event in ("done", "error"):
            break
    c.close()
    names = [e for e, _, _ in arrivals if e != ":"]
    assert names and names[-1] == "done", "stream did not end with done: %s" % names[-5:]
    previews = [(t, json.loads(d)) for e, t, d in arrivals if e == "preview"]
    want = list(range(PREVIEW_EVERY, 256, PREVIEW_EVERY))
    assert [p["step"] for _, p in previews] == want, [p["step"] for _, p in previews]
    first = previews[0][0]
    total = arrivals[-1][1]
    assert total > 0.3, "stream took %.2f s: too short to tell buffering apart" % total
    assert first < total / 2, (
        "first preview arrived at %.2f s of a %.2f s stream: nginx buffers SSE (previews at "
        "%s s)" % (first, total, ["%.2f" % t for t, _ in previews]))
    # The later previews trickle in too, not in one lump at the end.
    assert previews[-1][0] - first > total / 4, (
        "previews arrived together (%s s of %.2f s)" % (["%.2f" % t for t, _ in previews], total))


def test_body_limit_matches_server(s):
    body = json.dumps({"class": 1, "seed": 3})
    at_limit = body + " " * (64 * 1024 - len(body))       # valid JSON, exactly 64 KiB
    status, _, data = s.lb.request("POST", "/generate", at_limit)
    assert status == 200 and is_png(data), (
        "a 64 KiB body (the server's limit) through nginx: %d %s" % (status, data[:200]))
    status, hdrs, data = s.lb.request("POST", "/generate", at_limit + " ")
    assert status == 413, "a body of 64 KiB + 1 through nginx: %d %s" % (status, data[:200])
    assert hdrs["content-type"] == "application/json", hdrs
    assert json.loads(data)["error"]["code"] == "payload_too_large", data


def test_jobs_found_on_either_replica(s):
    a0, b0 = s.a.metrics(), s.b.metrics()
    ids = []
    for i in range(2):       # idle replicas take turns: one job on each
        status, _, data = s.lb.request("POST", "/v1/jobs", {"class": i, "seed": i})
        assert status == 202, (status, data)
        ids.append(json.loads(data)["id"])
    got_a = code_count(s.a.metrics(), 202) - code_count(a0, 202)
    got_b = code_count(s.b.metrics(), 202) - code_count(b0, 202)
    assert got_a >= 1 and got_b >= 1, "jobs not spread: A took %d, B %d" % (got_a, got_b)
    rids = []
    end = time.time() + 60
    for jid in ids:
        while True:
            status, hdrs, data = s.lb.request("GET", "/v1/jobs/" + jid)
            rids.append(hdrs.get("x-request-id"))
            assert status == 200, "GET /v1/jobs/%s through nginx: %d %s" % (jid, status, data[:200])
            state = json.loads(data)["state"]
            if state == "completed":
                break
            assert state in ("queued", "running") and time.time() < end, state
            time.sleep(0.1)
        # Twice more: idle replicas take turns, so one of these asks the wrong one first.
        for _ in range(2):
            status, hdrs, data = s.lb.request("GET", "/v1/jobs/" + jid)
            rids.append(hdrs.get("x-request-id"))
            assert status == 200 and json.loads(data)["state"] == "completed", (status, data[:200])
    log = s.lb.wait_logged(rids)
    retried = [v for v in log.values() if v[1] == ["404", "200"]]
    assert retried, "no GET went on after a 404 (log: %s)" % list(log.values())[:8]
    for jid in ids:
        status, _, data = s.lb.request("DELETE", "/v1/jobs/" + jid)
        assert status == 200 and json.loads(data)["state"] == "completed", (status, data[:200])
        status, _, data = s.lb.request("GET", "/v1/jobs/" + jid)
        assert status == 404 and json.loads(data)["error"]["code"] == "not_found", (status, data)


def test_sigterm_under_load_loses_nothing(s):
    a, b = s.a, s.b
    a0, b0 = a.metrics(), b.metrics()
    # Load: 4 requests in flight through nginx, 2 on each replica.
    results = {}
    before = [threading.Thread(target=generate, args=(s.lb, results, ("before", i), i))
              for i in range(4)]
    for t in before:
        t.start()
    end = time.time() + 30

    def in_flight(srv):
        m = srv.metrics()
        return m["tessera_running_groups"] + m["tessera_queue_depth"]

    while True:
        na, nb = in_flight(a), in_flight(b)
        if na >= 1 and nb >= 1 and na + nb >= 4:
            break
        assert time.time() < end, "the load never reached both replicas (A %d, B %d)" % (na, nb)
        time.sleep(0.01)
    a.proc.send_signal(signal.SIGTERM)
    while a.metrics()["tessera_draining"] != 1:
        assert time.time() < end, "replica A not draining after SIGTERM"
        time.sleep(0.005)
    t_term = time.time()
    # New requests during the drain: nginx may offer them to A, which refuses (503), and
    # they go on to B.
    during = [threading.Thread(target=generate, args=(s.lb, results, ("during", i), 10 + i))
              for i in range(4)]
    for t in during:
        t.start()
    # A's metrics until it exits: its 503s, and that it still works on what it accepted.
    a_last = a.metrics()
    while a.proc.poll() is None:
        try:
            a_last = a.metrics()
        except OSError:
            break
        time.sleep(0.02)
    for t in before + during:
        t.join()
    try:
        a.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    out = a.output()
    a.stop(expect_code=0, signal_again=False)     # exit 0 after the one SIGTERM
    assert "draining" in out and "stopped" in out, out[-2000:]
    for phase in ("before", "during"):
        res = [results[(phase, i)] for i in range(4)]
        check_all_png(res, "requests started %s the drain" % phase)
    assert all(r[3] >= t_term for k, r in results.items() if k[0] == "during")

    # Who served what, by nginx's log: every request sent after the SIGTERM ended on B; any
    # attempt at A was refused (503 while draining, or 502: connection refused once gone).
    log = s.lb.wait_logged([r[1]["x-request-id"] for r in results.values()])
    by_phase = {p: [log[results[(p, i)][1]["x-request-id"]] for i in range(4)]
                for p in ("before", "during")}
    addr_a, addr_b = s.addr[a], s.addr[b]
    for ups, statuses, final in by_phase["during"]:
        assert ups[-1] == addr_b and statuses[-1] == "200" and final == 200, (
            "a request sent after SIGTERM ended on %s (%s), not on the other replica %s"
            % (ups, statuses, addr_b))
        for u, st in zip(ups[:-1], statuses[:-1]):
            assert u == addr_a and st in ("503", "502"), (ups, statuses)
    refused_503 = sum(st == "503" for p in by_phase.values() for ups, sts, _ in p
                      for u, st in zip(ups, sts) if u == addr_a)
    assert refused_503 >= 1, (
        "no request sent during the drain was offered to the draining replica, so its "
        "refusal and nginx's retry were not exercised: %s" % by_phase["during"])
    # The same from the replicas' side: A's 503 count is the log's; B made one image for
    # every request it ended up serving, before and after the SIGTERM.
    a503 = code_count(a_last, 503) - code_count(a0, 503)
    assert a503 == refused_503, "replica A counted %d 503s, nginx's log shows %d" % (
        a503, refused_503)
    on_b = sum(1 for p in by_phase.values() for ups, _, _ in p if ups[-1] == addr_b)
    made_b = images(b) - b0["tessera_images_generated_total"]
    assert made_b == on_b, "replica B made %d images; the log puts %d requests on it" % (
        made_b, on_b)
    on_a = sum(1 for ups, _, _ in by_phase["before"] if ups[-1] == addr_a)
    assert on_a >= 1, "no request before the SIGTERM ran on A: %s" % by_phase["before"]
    print("     drain: A finished %d accepted requests and refused %d; B served %d"
          % (on_a, refused_503, on_b))


def test_after_exit_requests_succeed(s):
    if s.a.proc.poll() is None:          # the previous test failed before A exited
        s.a.stop(signal_again=True)
    addr_a = s.addr[s.a]
    # Until nginx has offered a request to the exited replica (at once, or when
    # fail_timeout has passed since the drain's 503s took it out), requests keep coming;
    # every one must succeed on the other replica.
    wait = fail_timeout() + 8
    end = time.time() + wait
    results, refused = [], []
    while not refused or len(results) < 4:
        batch = run_clients(s.lb, 2, first_class=len(results))
        check_all_png(batch, "requests after replica A exited")
        results += batch
        log = s.lb.wait_logged([r[1]["x-request-id"] for r in batch])
        for ups, statuses, _ in log.values():
            assert ups[-1] == s.addr[s.b], (ups, statuses)
            refused += [st for u, st in zip(ups, statuses) if u == addr_a]
        assert time.time() < end or refused, (
            "nginx never offered a request to the exited replica in %d s (fail_timeout is "
            "%d s): its passive health check did not let a probe through" % (
                wait, fail_timeout()))
    assert set(refused) == {"502"}, "attempts at the exited replica ended %s" % refused
    err = open(os.path.join(s.lb.dir, "error.log")).read()
    assert "Connection refused" in err, err[-2000:]
    print("     %d requests after the exit, %d of them refused by A first and retried"
          % (len(results), len(refused)))


def main():
    if len(sys.argv) != 2:
        print("usage: test_lb.py path/to/tessera", file=sys.stderr)
        return 2
    nginx = find_nginx()
    if not nginx:
        print("SKIP test_lb.py: nginx is not installed (apt-get install nginx; "
              "scripts/install-deps.sh installs it)")
        shutil.rmtree(ts.WORK, ignore_errors=True)
        return 0
    ts.BIN = os.path.abspath(sys.argv[1])
    t_start = time.time()
    ts.make_slow_model()
    only = os.environ.get("TEST_ONLY", "")
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_") and only in k]
    failed = 0
    s = Setup()
    try:
        s.start(nginx)
        for name, fn in tests:
            t0 = time.time()
            try:
                fn(s)
                print("ok   %s (%.1f s)" % (name, time.time() - t0))
            except Exception as e:  # report every failure, then fail the run
                failed += 1
                import traceback
                traceback.print_exc()
                print("FAIL %s: %s" % (name, e))
        s.lb.stop()
        s.b.stop()
        if s.a.proc.poll() is None:
            s.a.stop()
    except Exception as e:
        failed += 1
        import traceback
        traceback.print_exc()
        print("FAIL setup/teardown: %s" % e)
    finally:
        s.kill_all()
        if failed:
            print("logs kept in " + ts.WORK)
        else:
            shutil.rmtree(ts.WORK, ignore_errors=True)
    print("%d of %d load-balancer tests failed" % (failed, len(tests)) if failed else
          "all %d load-balancer tests passed (%.1f s)" % (len(tests), time.time() - t_start))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
