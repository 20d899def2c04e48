#!/usr/bin/python3
"""Closed-loop load client for `tessera serve` (standard library only).

    serve_load.py --url http://127.0.0.1:8080 --concurrency C [--requests R | --duration S]
                  [--warmup W] [--max-batch-label B] [--json FILE]

C threads each send POST /generate {"class": k, "seed": s, "n": 1} back to back on a
keep-alive connection (a fresh one whenever the server closes it); every request gets its own
seed (--seed-base + its index) and the classes cycle through the model's class ids.

Measurement window: it opens when the first W responses have come back (warm-up, default
W = C, so the server holds C requests when it opens) and closes when R more have come back
(--requests, default max(8, 2*C)) or S seconds later (--duration). Clients keep sending
throughout, so the load stays at C for the whole window; requests still in flight when it
closes are abandoned (their connections closed, which cancels them in the server), or, with
--tail wait, awaited and not counted.

Reports the responses in the window, errors by status, images/s over the window, latency
p50/p90/p99/mean (seconds, of the requests completed in the window), and from /metrics
scraped at both ends of the window: forward passes, mean images per forward
(tessera_batch_images sum/count) and mean engine step time (tessera_step_seconds sum/count).
Every response must be 200, image/png, start with the PNG signature and carry the seed sent
in X-Seed; anything else (including connection errors) counts as an error, in warm-up too,
and makes the exit status 1.

Output: one human line on stdout; --json FILE appends one JSON record per run.
"""
import argparse
import http.client
import json
import math
import socket
import statistics
import sys
import threading
import time
import urllib.parse

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("-c", "--concurrency", type=int, default=1, help="client threads (default 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-n", "--requests", type=int, help="responses measured (default max(8, 2*C))")
    g.add_argument("-d", "--duration", type=float, help="measure for this many seconds instead")
    p.add_argument("--warmup", type=int, help="responses before the window opens (default C)")
    p.add_argument("--tail", choices=("abort", "wait"), default="abort",
                   help="requests in flight when the window closes: close their connections "
                        "(default) or wait for them")
    p.add_argument("--seed-base", type=int, default=1_000_000, help="seed of request 0")
    p.add_argument("--classes", type=int, help="number of classes (default: from /v1/models)")
    p.add_argument("--extra", default="{}", help="JSON object merged into every request body")
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    p.add_argument("--timeout", type=float, default=3600, help="per-request timeout, s")
    p.add_argument("--idle-timeout", type=float, default=300,
                   help="wait at most this long for the server to be idle before starting")
    p.add_argument("--max-batch-label", "--label", dest="label",
                   help="the server's --max-batch (or any label), stored as max_batch")
    p.add_argument("--json", help="append a JSON record to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    a = p.parse_args(argv)
    if a.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if a.requests is None and a.duration is None:
        a.requests = max(8, 2 * a.concurrency)
    if a.requests is not None and a.requests < 1:
        p.error("--requests must be >= 1")
    if a.duration is not None and a.duration <= 0:
        p.error("--duration must be > 0")
    if a.warmup is None:
        a.warmup = a.concurrency
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    try:
        a.extra = json.loads(a.extra)
        assert isinstance(a.extra, dict)
    except (ValueError, AssertionError):
        p.error("--extra must be a JSON object")
    u = urllib.parse.urlsplit(a.url)
    if u.scheme != "http" or not u.hostname:
        p.error("--url must be http://HOST[:PORT]")
    a.host, a.port = u.hostname, u.port or 80
    return a


def log(args, msg):
    if not args.quiet:
        print(f"serve_load: {msg}", file=sys.stderr, flush=True)


def get(args, path, timeout=30):
    c = http.client.HTTPConnection(args.host, args.port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def scrape(args):
    """The unlabelled samples of /metrics, plus labelled ones under their full name."""
    status, body = get(args, "/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    m = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            m[name] = float(value)
        except ValueError:
            pass
    return m


def wait_idle(args):
    """Waits until no request is queued or running (e.g. cancellations of a previous run)."""
    end = time.monotonic() + args.idle_timeout
    while True:
        m = scrape(args)
        busy = m.get("tessera_queue_depth", 0) + m.get("tessera_running_groups", 0)
        if busy == 0:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"server still busy after {args.idle_timeout:g} s "
                               f"(queue {m.get('tessera_queue_depth')}, running "
                               f"{m.get('tessera_running_groups')})")
        time.sleep(0.2)


class Run:
    """Shared state of the client threads; every field is guarded by `lock`."""

    def __init__(self, args, classes):
        self.args, self.classes = args, classes
        self.lock = threading.Lock()
        self.opened = threading.Event()   # warm-up done: window open
        self.closed = threading.Event()   # window closed: stop sending
        self.issued = 0
        self.done = 0                     # responses (good or bad) before the window closed
        self.t_start = self.t0 = self.t1 = None
        self.lat = []                     # latencies of good responses in the window
        self.ok_window = 0
        self.err_window = {}
        self.err_total = {}
        self.retries = 0
        self.conns = {}                   # thread index -> its current connection

    def finish(self, t_send, t_done, err):
        """Records one response; returns False once the window is closed."""
        a = self.args
        with self.lock:
            if self.closed.is_set():
                return False
            if err:
                self.err_total[err] = self.err_total.get(err, 0) + 1
            self.done += 1
            if self.t0 is not None:
                if err:
                    self.err_window[err] = self.err_window.get(err, 0) + 1
                else:
                    self.ok_window += 1
                    self.lat.append(t_done - t_send)
            if self.done == a.warmup:
                self.t0 = t_done
                self.opened.set()
            elif a.requests is not None and self.done == a.warmup + a.requests:
                self.t1 = t_done
                self.closed.set()
            return True

    def close_window(self, t):
        with self.lock:
            if not self.closed.is_set():
                self.t1 = t
                self.closed.set()


def one_request(run, conn_box, idx):
    """Sends request idx; returns an error string or None."""
    a = run.args
    seed = a.seed_base + idx
    body = {"class": (idx * 37) % run.classes, "seed": seed, "n": 1}
    body.update(a.extra)
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "image/png"}
    if a.api_key:
        headers["Authorization"] = f"Bearer {a.api_key}"
    for attempt in (0, 1):
        conn = conn_box[0]
        reused = conn is not None
        if conn is None:
            conn = http.client.HTTPConnection(a.host, a.port, timeout=a.timeout)
            conn_box[0] = conn
        try:
            conn.request("POST", "/generate", body=data, headers=headers)
            r = conn.getresponse()
            payload = r.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
            conn.close()
            conn_box[0] = None
            if run.closed.is_set():
                return "aborted"
            if reused and attempt == 0:   # a keep-alive connection the server had closed
                with run.lock:
                    run.retries += 1
                continue
            return f"conn:{type(e).__name__}"
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conn_box[0] = None
            return "aborted" if run.closed.is_set() else f"conn:{type(e).__name__}"
        if r.will_close:
            conn.close()
            conn_box[0] = None
        if r.status != 200:
            return str(r.status)
        if (r.getheader("Content-Type") or "").split(";")[0].strip() != "image/png":
            return "not_image/png"
        if not payload.startswith(PNG_SIG):
            return "not_png"
        if r.getheader("X-Seed") != str(seed):
            return "wrong_seed"
        return None
    return "conn:retry"   # not reached


def client(run, ti):
    conn_box = [None]
    with run.lock:
        run.conns[ti] = conn_box
    try:
        while True:
            with run.lock:
                if run.closed.is_set():
                    return
                idx = run.issued
                run.issued += 1
            t_send = time.perf_counter()
            err = one_request(run, conn_box, idx)
            t_done = time.perf_counter()
            if err == "aborted" or not run.finish(t_send, t_done, err):
                return
    finally:
        if conn_box[0] is not None:
            conn_box[0].close()


def abort_inflight(run):
    with run.lock:
        boxes = list(run.conns.values())
    for box in boxes:
        c = box[0]
        s = getattr(c, "sock", None) if c is not None else None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pct(xs, q):
    """The q-th percentile, linear between closest ranks (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def delta(m0, m1, name):
    if name not in m0 or name not in m1:
        return None
    return m1[name] - m0[name]


def main(argv):
    a = parse_args(argv)
    status, _ = get(a, "/health")
    if status != 200:
        print(f"serve_load: GET /health answered {status}; is the server ready?", file=sys.stderr)
        return 2
    classes = a.classes
    if classes is None:
        status, body = get(a, "/v1/models")
        classes = json.loads(body)["data"][0]["num_classes"] if status == 200 else 1000
    wait_idle(a)

    run = Run(a, classes)
    m0 = scrape(a) if a.warmup == 0 else None
    run.t_start = time.perf_counter()
    if a.warmup == 0:
        run.t0 = run.t_start
        run.opened.set()
    threads = [threading.Thread(target=client, args=(run, i), daemon=True)
               for i in range(a.concurrency)]
    for t in threads:
        t.start()
    what = f"{a.requests} requests" if a.requests is not None else f"{a.duration:g} s"
    log(a, f"concurrency {a.concurrency}: warm-up {a.warmup}, then {what}")

    def wait(ev):
        while not ev.wait(0.5):
            if not any(t.is_alive() for t in threads):
                return False
        return True

    if not wait(run.opened):
        print("serve_load: every client stopped before the warm-up finished", file=sys.stderr)
        return 1
    if m0 is None:
        m0 = scrape(a)
    if a.duration is not None:
        if not run.closed.wait(a.duration):
            run.close_window(time.perf_counter())
    elif not wait(run.closed):
        print("serve_load: every client stopped before the window closed", file=sys.stderr)
        return 1
    m1 = scrape(a)

    # Stop: new requests are refused by the closed flag; in-flight ones are abandoned.
    if a.tail == "abort":
        while any(t.is_alive() for t in threads):
            abort_inflight(run)
            for t in threads:
                t.join(0.2)
    else:
        for t in threads:
            t.join()
    try:
        wait_idle(a)   # cancellations done: the next run starts on an idle server
    except RuntimeError as e:
        log(a, str(e))

    window = run.t1 - run.t0
    lat = run.lat
    n_err = sum(run.err_window.values())
    fwd = delta(m0, m1, "tessera_forward_passes_total")
    bsum = delta(m0, m1, "tessera_batch_images_sum")
    bcnt = delta(m0, m1, "tessera_batch_images_count")
    ssum = delta(m0, m1, "tessera_step_seconds_sum")
    scnt = delta(m0, m1, "tessera_step_seconds_count")
    rsum = delta(m0, m1, "tessera_request_seconds_sum")
    rcnt = delta(m0, m1, "tessera_request_seconds_count")
    label = a.label
    try:
        label = int(label)
    except (TypeError, ValueError):
        pass

    def r4(x):
        return None if x is None else round(x, 4)

    rec = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "url": a.url,
        "concurrency": a.concurrency,
        "max_batch": label,
        "warmup": a.warmup,
        "requests": a.requests,
        "duration": a.duration,
        "completed": run.ok_window + n_err,
        "ok": run.ok_window,
        "errors": n_err,
        "errors_by_status": run.err_window,
        "errors_total": sum(run.err_total.values()),
        "errors_total_by_status": run.err_total,
        "retries": run.retries,
        "window_s": r4(window),
        "images_per_s": r4(run.ok_window / window if window > 0 else None),
        "p50": r4(pct(lat, 50)),
        "p90": r4(pct(lat, 90)),
        "p99": r4(pct(lat, 99)),
        "mean": r4(statistics.fmean(lat) if lat else None),
        "min": r4(min(lat) if lat else None),
        "max": r4(max(lat) if lat else None),
        "forward_passes": fwd,
        "images_per_forward": r4(bsum / bcnt if bcnt else None),
        "step_s_mean": r4(ssum / scnt if scnt else None),
        "server_images": delta(m0, m1, "tessera_images_generated_total"),
        "server_request_s_mean": r4(rsum / rcnt if rcnt else None),
    }

    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    errs = ", ".join(f"{k}: {v}" for k, v in sorted(run.err_total.items())) or "0"
    print(f"c={a.concurrency} max_batch={label if label is not None else '?'}: "
          f"{rec['ok']} ok in {window:.1f} s, errors {errs}; "
          f"{f(rec['images_per_s'], '.3f')} images/s; latency p50 {f(rec['p50'])} "
          f"p90 {f(rec['p90'])} p99 {f(rec['p99'])} mean {f(rec['mean'])} s; "
          f"server: {f(fwd, '.0f')} forwards, {f(rec['images_per_forward'])} images/forward, "
          f"step {f(None if rec['step_s_mean'] is None else rec['step_s_mean'] * 1e3, '.1f')} ms",
          flush=True)
    if a.json:
        with open(a.json, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 1 if run.err_total or run.ok_window == 0 else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        print(f"serve_load: {e}", file=sys.stderr)
        sys.exit(2)
