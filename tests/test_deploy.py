#!/usr/bin/python3
"""Checks of the deployment files that need no docker and no cluster.

    /usr/bin/python3 tests/test_deploy.py path/to/build/tessera

Dockerfile (+ .dockerignore): every stage's FROM has a pinned tag; the default target is
the CUDA runtime on the same CUDA version and Ubuntu release as its devel build stage,
and a `cpu` target exists on Debian; every COPY/ADD source is in the build context as
docker sends it (.dockerignore applied); every `make` target exists; the runtime stages
copy exactly what the build stage's make produced, run as a non-root user, have exec-form
ENTRYPOINT/CMD/HEALTHCHECK, and agree on the port (EXPOSE, --port, HEALTHCHECK URL);
they install no compiler or Python; the CPU stages' packages exist in Debian (apt-cache),
the build stage's packages provide every header and library the compile uses, the
runtime stage's provide every library the binary needs (readelf -d); the CUDA stages'
packages are the same ones under Ubuntu 24.04's names.

A dry run of the CPU image: the build context is copied as docker would send it, the
cpu build stage's COPY lines are replayed from it and its make command runs there
(make -j2, nothing reused from build/); then the binary starts with the Dockerfile's
ENTRYPOINT + CMD (only the image paths and the port rewritten) and the HEALTHCHECK command
itself, the Kubernetes probes and the metrics scrape are tried while it loads, when
ready and while it drains a request after SIGTERM.

deploy/k8s and deploy/compose.yaml parse and agree with each other, with the Dockerfile
and with the real server: selectors, ports, probe paths, the HPA's target and metric,
the adapter rule, the GPU request, preStop vs terminationGracePeriodSeconds, the
non-root user; the Deployment's own args start a server that passes its probes; compose
has two replicas built from the Dockerfile and an nginx whose mounted config exists and
points at them. Exits nonzero on any failure. The binary argument is accepted for
uniformity with the other test scripts; the dry run builds its own.
"""
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
K8S = os.path.join(ROOT, "deploy", "k8s")
COMPOSE = os.path.join(ROOT, "deploy", "compose.yaml")
COMPOSE_GPU = os.path.join(ROOT, "deploy", "compose.gpu.yaml")
WORK = tempfile.mkdtemp(prefix="tessera_test_deploy_")
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_JOBS = "2"
REPLAYABLE = {"make", "strip", "mkdir", "cp", "ls", "test", "true", "echo"}
CACHE = {}


class Skip(Exception):
    pass


def memo(fn):
    """Runs fn once; later calls return its value or raise its failure again."""
    def wrapper():
        if fn.__name__ not in CACHE:
            try:
                CACHE[fn.__name__] = (True, fn())
            except (AssertionError, Skip) as e:
                CACHE[fn.__name__] = (False, e)
        ok, value = CACHE[fn.__name__]
        if not ok:
            if isinstance(value, Skip):
                raise value
            raise AssertionError("(%s) %s" % (fn.__name__, value))
        return value
    wrapper.__name__ = fn.__name__
    return wrapper


# ------------------------------------------------------------------------------------
# Dockerfile

class Instr:
    def __init__(self, cmd, rest, line):
        self.cmd, self.rest, self.line = cmd, rest, line
        self.flags, self.body = split_flags(rest) if cmd in ("FROM", "COPY", "ADD", "HEALTHCHECK", "RUN") \
            else ({}, rest)

    def exec_form(self):
        """The JSON array of an exec-form instruction, else None."""
        try:
            v = json.loads(self.body)
        except ValueError:
            return None
        return v if isinstance(v, list) and all(isinstance(a, str) for a in v) else None


class Stage:
    def __init__(self, index, base, name, line):
        self.index, self.base, self.name, self.line = index, base, name, line
        self.instrs = []
        self.env = {}        # ARG and ENV values in scope at the end of the stage
        self.workdir = "/"

    def all(self, cmd):
        return [i for i in self.instrs if i.cmd == cmd]

    def last(self, cmd):
        found = self.all(cmd)
        return found[-1] if found else None


def split_flags(rest):
    flags, words = {}, rest.split(" ")
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
        while words and words[0] == "":
            words.pop(0)
    return flags, " ".join(words).strip()


def expand(s, env):
    """Docker's variable substitution: $V, ${V}, ${V:-default}, ${V:+alternative}."""
    def sub(m):
        name = m.group(1) or m.group(2)
        op, arg = m.group(3), m.group(4)
        value = env.get(name)
        if op == ":-":
            return value if value else expand(arg, env)
        if op == ":+":
            return expand(arg, env) if value else ""
        return value if value is not None else ""
    return re.sub(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\})", sub, s)


def arg_decl(rest):
    name, eq, value = rest.strip().partition("=")
    if eq:
        value = shlex.split(value)[0] if value.strip() else ""
    return name.strip(), (value if eq else None)


@memo
def dockerfile():
    """(global ARG defaults, stages) of the Dockerfile."""
    assert os.path.isfile(DOCKERFILE), "no Dockerfile at the repository root"
    with open(DOCKERFILE, encoding="utf-8") as f:
        raw = f.read().split("\n")
    logical, buf, start = [], "", 0
    for n, line in enumerate(raw, 1):
        if line.lstrip().startswith("#"):
            continue                           # comments, also inside continuations
        if not buf and not line.strip():
            continue
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1]
            continue
        buf += line
        logical.append((start, buf.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation line"
    global_args, stages = {}, []
    for n, text in logical:
        cmd, _, rest = text.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            flags, body = split_flags(rest.strip())
            words = body.split()
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS"), \
                "line %d: FROM IMAGE [AS NAME] expected" % n
            st = Stage(len(stages), expand(words[0], global_args), words[2] if len(words) == 3 else None, n)
            stages.append(st)
            continue
        if not stages:
            assert cmd == "ARG", "line %d: only ARG may come before the first FROM" % n
            name, value = arg_decl(rest)
            global_args[name] = value
            continue
        st = stages[-1]
        ins = Instr(cmd, rest.strip(), n)
        if cmd == "ARG":
            name, value = arg_decl(rest)
            st.env[name] = value if value is not None else (global_args.get(name) or "")
        elif cmd == "ENV":
            name, eq, value = rest.strip().partition("=")
            assert eq, "line %d: ENV NAME=VALUE expected" % n
            st.env[name] = expand(shlex.split(value)[0] if value else "", st.env)
        elif cmd == "WORKDIR":
            st.workdir = os.path.normpath(os.path.join(st.workdir, expand(ins.rest, st.env)))
        ins.workdir = st.workdir
        ins.env = dict(st.env)
        st.instrs.append(ins)
    assert stages, "the Dockerfile has no FROM"
    return global_args, stages


def stage_named(name):
    for st in dockerfile()[1]:
        if st.name == name:
            return st
    raise AssertionError("the Dockerfile has no stage named %r" % name)


def runtime_stages():
    """The stages that run the server (they have an ENTRYPOINT): cpu and the default."""
    found = [st for st in dockerfile()[1] if st.last("ENTRYPOINT")]
    assert found, "no stage has an ENTRYPOINT"
    return found


def from_stage(st):
    """The build stage whose output a runtime stage copies (COPY --from=...)."""
    froms = {i.flags["from"] for i in st.all("COPY") if "from" in i.flags}
    assert len(froms) == 1, "stage %s: expected COPY --from one build stage, found %s" % (st.name, froms)
    return stage_named(froms.pop())


def shell_words(cmd):
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def commands(cmd):
    """A shell command line as its simple commands (lists of words), split at && || ; |."""
    out, cur = [], []
    for w in shell_words(cmd):
        if w in ("&&", "||", ";", "|", "&"):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(w)
    if cur:
        out.append(cur)
    return out


def without_env_prefix(words):
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return words


def apt_packages(st):
    pkgs = []
    for ins in st.all("RUN"):
        for c in commands(ins.body):
            c = without_env_prefix(c)
            if len(c) >= 2 and c[0] in ("apt-get", "apt") and "install" in c:
                pkgs += [w for w in c[c.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def make_invocations(st):
    """(instruction, assignments, targets) of each `make` a stage runs."""
    out = []
    for ins in st.all("RUN"):
        for c in commands(ins.body):
            c = without_env_prefix(c)
            if c and c[0] == "make":
                assigns, targets, words = [], [], c[1:]
                while words:
                    w = words.pop(0)
                    if w in ("-C", "-f"):
                        raise AssertionError("line %d: make %s is not supported by this test" % (ins.line, w))
                    if w.startswith("-"):
                        continue
                    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w):
                        assigns.append(expand(w, ins.env))
                    else:
                        targets.append(w)
                out.append((ins, assigns, targets))
    return out


def image_ref(base):
    """(repository, tag) of FROM's image."""
    name = base.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return name, None
    tag = last.split(":", 1)[1]
    return name[:-(len(tag) + 1)], tag


# ------------------------------------------------------------------------------------
# .dockerignore and the build context

def ignore_regex(pattern):
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
                if i + 1 < len(pattern) and pattern[i + 1] == "/":
                    i += 1
                out += ".*" if i + 1 == len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            j = pattern.find("]", i)
            out += pattern[i:j + 1] if j > 0 else re.escape(ch)
            i = j if j > 0 else i
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


@memo
def ignore_patterns():
    pats = []
    if os.path.isfile(DOCKERIGNORE):
        with open(DOCKERIGNORE, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                exclusion = line.startswith("!")
                p = line[1:].strip() if exclusion else line
                p = os.path.normpath(p).lstrip("/") if p else p
                pats.append((exclusion, p, ignore_regex(p), len(p.split("/"))))
    return pats


def ignored(rel):
    """Whether docker leaves rel (a path in the repository, '/'-separated) out of the
    context: the last matching pattern wins; a pattern also matches a file through the
    leading directories of its path (moby's patternmatcher)."""
    parent = os.path.dirname(rel)
    parent_dirs = parent.split("/") if parent else []
    matched = False
    for exclusion, _, rx, ndirs in ignore_patterns():
        if exclusion and not matched:
            continue
        m = bool(rx.match(rel))
        if not m and parent_dirs and ndirs <= len(parent_dirs):
            m = bool(rx.match("/".join(parent_dirs[:ndirs])))
        if m:
            matched = not exclusion
    return matched


def could_include_below(rel):
    """Whether an exception pattern might re-include something under the ignored rel."""
    depth = len(rel.split("/"))
    for exclusion, p, _, ndirs in ignore_patterns():
        if exclusion and ndirs > depth:
            head = "/".join(p.split("/")[:depth])
            if ignore_regex(head).match(rel) or "**" in head:
                return True
    return False


@memo
def build_context():
    """The repository as docker sends it to the builder, copied to a temporary folder."""
    ctx = os.path.join(WORK, "context")
    os.makedirs(ctx)
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = d if not rel_dir else rel_dir + "/" + d
            if os.path.islink(os.path.join(dirpath, d)):
                filenames.append(d)
            elif not ignored(rel) or could_include_below(rel):
                keep.append(d)
        dirnames[:] = keep
        for fn in filenames:
            rel = fn if not rel_dir else rel_dir + "/" + fn
            if ignored(rel):
                continue
            dst = os.path.join(ctx, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), dst, follow_symlinks=False)
    return ctx


def copy_sources(ins):
    """COPY/ADD's source and destination words, expanded."""
    form = ins.exec_form()
    words = form if form is not None else shlex.split(ins.body)
    words = [expand(w, ins.env) for w in words]
    assert len(words) >= 2, "line %d: %s needs a source and a destination" % (ins.line, ins.cmd)
    return words[:-1], words[-1]


def context_matches(src):
    """The context paths (relative) that a COPY source names: a path or a glob."""
    ctx = build_context()
    src = os.path.normpath(src).lstrip("/")
    if not re.search(r"[*?\[]", src):
        return [src] if os.path.lexists(os.path.join(ctx, src)) else []
    rx = ignore_regex(src)
    out = []
    for dirpath, dirnames, filenames in os.walk(ctx):
        for fn in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, fn), ctx)
            if rx.match(rel):
                out.append(rel)
    return out


def replay_copy(ins, stage_root, source_root):
    """Does what COPY does, into stage_root standing for the image's /; sources are read
    from source_root (the context, or another stage's root for --from)."""
    srcs, dest = copy_sources(ins)
    dest_abs = dest if dest.startswith("/") else os.path.join(ins.workdir, dest)
    dest_is_dir = dest.endswith("/") or len(srcs) > 1
    for src in srcs:
        if source_root == build_context():
            rels = context_matches(src)
        else:
            rels = [os.path.normpath(src).lstrip("/")] if os.path.lexists(
                os.path.join(source_root, src.lstrip("/"))) else []
        assert rels, "line %d: %s source %r is not in %s" % (
            ins.line, ins.cmd, src, "the build context" if source_root == build_context() else "the stage")
        for rel in rels:
            s = os.path.join(source_root, rel)
            if os.path.isdir(s):
                target = os.path.join(stage_root, dest_abs.lstrip("/"))
                shutil.copytree(s, target, dirs_exist_ok=True, symlinks=True)
            else:
                target = os.path.join(stage_root, dest_abs.lstrip("/"))
                if dest_is_dir or os.path.isdir(target):
                    target = os.path.join(target, os.path.basename(rel))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(s, target)


def clean_env(extra=None):
    env = {"PATH": DOCKER_PATH, "HOME": WORK, "LANG": "C.UTF-8", "TMPDIR": WORK}
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------------
# Debian packages

def dpkg_owners(paths):
    """{path: set of packages} for the paths dpkg knows (bookworm's merged /usr: the path,
    its /usr twin, then the resolved path)."""
    cands = {}
    for p in paths:
        c = []
        for q in (os.path.normpath(p), os.path.realpath(p)):
            c.append(q)
            if q.startswith("/usr/lib/") or q.startswith("/usr/include/"):
                c.append(q[4:])
            elif q.startswith("/lib/"):
                c.append("/usr" + q)
        cands[p] = list(dict.fromkeys(c))
    allc = sorted({q for c in cands.values() for q in c})
    out = subprocess.run(["dpkg", "-S"] + allc, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True).stdout
    owners = {}
    for line in out.splitlines():
        if line.startswith("diversion") or ": " not in line:
            continue
        pkgs, path = line.rsplit(": ", 1)
        owners.setdefault(path, set()).update(x.strip().split(":")[0] for x in pkgs.split(","))
    result = {}
    for p, c in cands.items():
        for q in c:
            if q in owners:
                result[p] = owners[q]
                break
    return result


def apt_closure(pkgs):
    """The packages, with every package they depend on (recursively, every alternative)."""
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                          "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + pkgs,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    names = set(pkgs)
    for line in out.splitlines():
        s = line.strip().lstrip("|")
        if ":" in s and s.split(":")[0].strip() in ("Depends", "PreDepends"):
            s = s.split(":", 1)[1].strip()
        names.add(s.strip("<>").split(":")[0])
    return names


def require_debian_12():
    info = {}
    if os.path.isfile("/etc/os-release"):
        with open("/etc/os-release") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                info[k] = v.strip('"')
    if info.get("ID") != "debian" or info.get("VERSION_ID") != "12" or not shutil.which("apt-cache"):
        raise Skip("needs Debian 12's apt and dpkg (this is %s %s)" % (info.get("ID"), info.get("VERSION_ID")))


# ------------------------------------------------------------------------------------
# The server

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_request(port, method, path, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"} if body is not None else {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        c.close()


def rewrite_args(args, root, port, image_port):
    """An image's command line for this machine: paths that exist in the replayed image
    root point into it, and the listening port is a free one."""
    out, prev = [], None
    for a in args:
        if prev == "--port" and a == str(image_port):
            a = str(port)
        elif a.startswith("/") and os.path.lexists(os.path.join(root, a.lstrip("/"))):
            a = os.path.join(root, a.lstrip("/"))
        out.append(a)
        prev = a
    return out


class Server:
    def __init__(self, argv, port, env):
        self.port = port
        self.log = open(os.path.join(WORK, "server-%d.log" % port), "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=clean_env(env))

    def get(self, path):
        try:
            return http_request(self.port, "GET", path)
        except OSError as e:
            return None, "", str(e).encode()

    def wait_answer(self, path, want=None, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, "the server exited (%s): %s" % (self.proc.returncode, self.output())
            st, _, body = self.get(path)
            if st is not None and (want is None or st == want):
                return st, body
            time.sleep(0.05)
        raise AssertionError("GET %s did not answer %s within %d s" % (path, want or "at all", timeout))

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-2000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def json_of(body):
    try:
        return json.loads(body)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------
# The deployment files

@memo
def k8s_docs():
    assert os.path.isdir(K8S), "no deploy/k8s"
    docs = []
    for fn in sorted(os.listdir(K8S)):
        if fn.endswith((".yaml", ".yml")):
            with open(os.path.join(K8S, fn), encoding="utf-8") as f:
                try:
                    for d in yaml.safe_load_all(f):
                        if d is not None:
                            docs.append((fn, d))
                except yaml.YAMLError as e:
                    raise AssertionError("%s does not parse: %s" % (fn, e))
    return docs


def k8s_kind(kind, api=None):
    found = [d for _, d in k8s_docs() if isinstance(d, dict) and d.get("kind") == kind
             and (api is None or d.get("apiVersion") == api)]
    return found


def one(kind, api=None):
    found = k8s_kind(kind, api)
    assert len(found) == 1, "deploy/k8s: expected one %s%s, found %d" % (
        kind, " (%s)" % api if api else "", len(found))
    return found[0]


def pod_spec():
    return one("Deployment", "apps/v1")["spec"]["template"]["spec"]


def server_container():
    cs = pod_spec()["containers"]
    assert len(cs) == 1, "the Deployment should run one container, found %d" % len(cs)
    return cs[0]


def container_port(ref):
    """The containerPort a probe or Service port (a name or a number) refers to."""
    for p in server_container().get("ports", []):
        if ref == p.get("name") or str(ref) == str(p.get("containerPort")):
            return p["containerPort"]
    raise AssertionError("port %r is not a port of the tessera container" % (ref,))


def flag(args, name):
    assert name in args, "%s missing from %s" % (name, args)
    i = args.index(name)
    assert i + 1 < len(args), "%s has no value in %s" % (name, args)
    return args[i + 1]


def probes():
    c = server_container()
    out = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(kind)
        assert p and "httpGet" in p, "the container has no HTTP %s" % kind
        out[kind] = p
    return out


def scrape_annotation():
    ann = one("Deployment", "apps/v1")["spec"]["template"].get("metadata", {}).get("annotations") or {}
    return ann


def hpa_metrics():
    hpa = one("HorizontalPodAutoscaler", "autoscaling/v2")
    names = []
    for m in hpa["spec"].get("metrics", []):
        assert m.get("type") == "Pods", "HPA metric of type %s: the queue is per pod (type Pods)" % m.get("type")
        names.append(m["pods"]["metric"]["name"])
    assert names, "the HPA has no metric"
    return names


@memo
def compose():
    assert os.path.isfile(COMPOSE), "no deploy/compose.yaml"
    with open(COMPOSE, encoding="utf-8") as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise AssertionError("deploy/compose.yaml does not parse: %s" % e)


def image_port(st):
    ex = st.last("EXPOSE")
    assert ex, "stage %s has no EXPOSE" % st.name
    ports = expand(ex.body, ex.env).split()
    assert len(ports) == 1, "stage %s: expected one EXPOSEd port, found %s" % (st.name, ports)
    return int(ports[0].split("/")[0])


def image_command(st):
    ep, cmd = st.last("ENTRYPOINT"), st.last("CMD")
    assert ep and ep.exec_form(), "stage %s: ENTRYPOINT must be exec form (a JSON array)" % st.name
    assert cmd and cmd.exec_form() is not None, "stage %s: CMD must be exec form (a JSON array)" % st.name
    return ep.exec_form(), cmd.exec_form()


def healthcheck(st):
    hc = st.last("HEALTHCHECK")
    assert hc, "stage %s has no HEALTHCHECK" % st.name
    assert hc.body.split()[0].upper() == "CMD", "stage %s: HEALTHCHECK CMD expected" % st.name
    argv = Instr("CMD", hc.body.split(None, 1)[1], hc.line).exec_form()
    assert argv, "stage %s: HEALTHCHECK CMD must be exec form (no shell in the image needed)" % st.name
    urls = [a for a in argv if re.match(r"^https?://", a)]
    assert len(urls) == 1, "stage %s: the HEALTHCHECK should name one URL, found %s" % (st.name, urls)
    m = re.match(r"^http://([^/:]+):(\d+)(/[^?#]*)", urls[0])
    assert m, "stage %s: HEALTHCHECK URL %s is not http://HOST:PORT/PATH" % (st.name, urls[0])
    return argv, m.group(1), int(m.group(2)), m.group(3)


def image_paths(st):
    """The absolute paths a runtime stage creates by COPY, as (destination, source ins)."""
    out = []
    for ins in st.all("COPY") + st.all("ADD"):
        srcs, dest = copy_sources(ins)
        out.append((dest if dest.startswith("/") else os.path.join(ins.workdir, dest), ins))
    return out


def in_image(st, path):
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d, _ in image_paths(st))


# ------------------------------------------------------------------------------------
# The dry run of the CPU image

@memo
def cpu_build():
    """The cpu target's build stage replayed from the context; returns (stage root, the
    stage, the runtime stage, the runtime root)."""
    rt = stage_named("cpu")
    bst = from_stage(rt)
    root = os.path.join(WORK, "stage-" + bst.name)
    os.makedirs(root)
    ctx = build_context()
    for ins in bst.instrs:
        if ins.cmd in ("COPY", "ADD"):
            assert "from" not in ins.flags, "line %d: the build stage copies from another stage" % ins.line
            replay_copy(ins, root, ctx)
        elif ins.cmd == "RUN":
            cmds = [without_env_prefix(c) for c in commands(ins.body)]
            if any(c[:1] in (["apt-get"], ["apt"]) for c in cmds):
                continue    # packages: this machine's (scripts/install-deps.sh), checked apart
            # Replayed as root on this machine: only commands that stay in the stage folder.
            for c in cmds:
                assert c and c[0] in REPLAYABLE and not any(w.startswith("/") or ".." in w for w in c), \
                    "line %d: the dry run replays only %s with relative paths: %s" % (
                        ins.line, "/".join(sorted(REPLAYABLE)), " ".join(c))
            wd = os.path.join(root, ins.workdir.lstrip("/"))
            os.makedirs(wd, exist_ok=True)
            env = {k: v for k, v in ins.env.items()}
            env["JOBS"] = BUILD_JOBS
            t0 = time.time()
            p = subprocess.run(["/bin/sh", "-c", ins.body], cwd=wd, env=clean_env(env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
            assert p.returncode == 0, "line %d: RUN failed in the replayed context (exit %d): %s" % (
                ins.line, p.returncode, p.stdout[-3000:])
            print("     (line %d: RUN took %.1f s)" % (ins.line, time.time() - t0))
    rt_root = os.path.join(WORK, "stage-" + rt.name)
    os.makedirs(rt_root)
    for ins in rt.all("COPY") + rt.all("ADD"):
        replay_copy(ins, rt_root, root if ins.flags.get("from") == bst.name else ctx)
    return root, bst, rt, rt_root


def observed_paths():
    paths = {"/health", "/health/live", "/metrics"}
    for st in runtime_stages():
        paths.add(healthcheck(st)[3])
    try:
        for p in probes().values():
            paths.add(p["httpGet"]["path"])
        paths.add(scrape_annotation().get("prometheus.io/path", "/metrics"))
    except (AssertionError, KeyError):
        pass
    return sorted(paths)


def observe(st, port, hc_argv, srv, phase, record):
    rec = {}
    for path in observed_paths():
        rec[path] = srv.get(path)
    argv = [a.replace(":%d/" % image_port(st), ":%d/" % port) for a in hc_argv]
    assert shutil.which(argv[0], path=DOCKER_PATH), "the HEALTHCHECK's %s is not installed here" % argv[0]
    rec["HEALTHCHECK"] = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=clean_env(), timeout=30).returncode
    record[phase] = rec


@memo
def cpu_image_run():
    """The built binary started as the cpu image starts it, observed while loading, ready
    and draining (a request in flight). Returns the record."""
    root, bst, rt, rt_root = cpu_build()
    ep, cmd = image_command(rt)
    hc_argv = healthcheck(rt)[0]
    port = free_port()
    argv = rewrite_args(ep + cmd, rt_root, port, image_port(rt))
    assert os.path.isfile(argv[0]), "ENTRYPOINT %s is not in the image" % ep[0]
    srv = Server(argv, port, {"TESSERA_TEST_LOAD_DELAY_MS": "3000", "TESSERA_TEST_STEP_DELAY_MS": "40"})
    record = {"argv": argv}
    try:
        st, body = srv.wait_answer("/health/live", timeout=20)
        assert json_of(body) and json_of(body).get("state") == "loading", \
            "/health/live while loading: %s %s" % (st, body[:200])
        observe(rt, port, hc_argv, srv, "loading", record)
        st, _, body = srv.get("/health/live")
        assert json_of(body) and json_of(body).get("state") == "loading", \
            "the server finished loading before the loading phase was observed"
        srv.wait_answer("/health", want=200, timeout=60)
        observe(rt, port, hc_argv, srv, "ready", record)

        result = {}

        def generate():
            try:
                result["r"] = http_request(port, "POST", "/generate", {"class": 0, "seed": 1}, timeout=120)
            except OSError as e:
                result["r"] = (None, "", str(e).encode())
        t = threading.Thread(target=generate)
        t.start()
        deadline = time.time() + 20
        while time.time() < deadline:
            _, _, m = srv.get("/metrics")
            if re.search(rb"^tessera_running_groups [1-9]", m, re.M):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the request never started running")
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_answer("/health", want=503, timeout=10)
        observe(rt, port, hc_argv, srv, "draining", record)
        record["draining"]["POST /generate"] = http_request(port, "POST", "/generate", {"class": 0})
        t.join(120)
        record["in_flight"] = result.get("r")
        try:
            record["exit"] = srv.proc.wait(60)
        except subprocess.TimeoutExpired:
            record["exit"] = "still running 60 s after SIGTERM"
        record["log"] = srv.output()
    finally:
        srv.stop()
    return record


def start_ready(argv, port, what):
    srv = Server(argv, port, {})
    try:
        srv.wait_answer("/health", want=200, timeout=60)
    except AssertionError:
        srv.stop()
        raise AssertionError("%s did not become ready: %s" % (what, srv.output()))
    return srv


def stop_drained(srv, what):
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        rc = "no exit 30 s after SIGTERM"
    out = srv.output()
    srv.stop()
    assert rc == 0, "%s: SIGTERM with nothing running should exit 0, got %s: %s" % (what, rc, out)


# ------------------------------------------------------------------------------------
# Tests: the Dockerfile alone

def test_dockerfile_stages_and_tags():
    global_args, stages = dockerfile()
    names = [st.name for st in stages]
    assert len(set(names)) == len(names), "stage names repeat: %s" % names
    for st in stages:
        assert "$" not in st.base, "line %d: FROM %s has an undefined ARG" % (st.line, st.base)
        if st.base in names[:st.index]:
            continue
        repo, tag = image_ref(st.base)
        assert tag and tag != "latest", "line %d: FROM %s must pin a tag (not latest)" % (st.line, st.base)
        assert re.search(r"\d", tag), "line %d: FROM %s: the tag names no version" % (st.line, st.base)
    default = stages[-1]
    repo, tag = image_ref(default.base)
    m = re.match(r"^(\d+\.\d+\.\d+)-runtime-ubuntu(\d+\.\d+)$", tag or "")
    assert repo == "nvidia/cuda" and m, \
        "the default target (the last stage) should run on nvidia/cuda:X.Y.Z-runtime-ubuntuNN.NN, not %s" % default.base
    bst = from_stage(default)
    brepo, btag = image_ref(bst.base)
    assert brepo == "nvidia/cuda" and btag == "%s-devel-ubuntu%s" % m.groups(), \
        "stage %s builds on %s; the matching devel image of %s is nvidia/cuda:%s-devel-ubuntu%s" % (
            bst.name, bst.base, default.base, m.group(1), m.group(2))
    cpu = stage_named("cpu")
    crepo, ctag = image_ref(cpu.base)
    assert crepo == "debian" and ctag.startswith(("12", "bookworm")), "the cpu target should be Debian 12: %s" % cpu.base
    assert image_ref(from_stage(cpu).base) == (crepo, ctag), "the cpu build stage should use the cpu target's base"


def test_copy_sources_in_context():
    assert ignore_patterns(), ".dockerignore is missing or empty: the whole repository (.git, build/) would be sent"
    names = [st.name for st in dockerfile()[1]]
    n = 0
    for st in dockerfile()[1]:
        for ins in st.all("COPY") + st.all("ADD"):
            if "from" in ins.flags:
                assert ins.flags["from"] in names[:st.index], \
                    "line %d: COPY --from=%s names no earlier stage" % (ins.line, ins.flags["from"])
                continue
            assert ins.cmd == "COPY", "line %d: ADD: use COPY for local files" % ins.line
            srcs, _ = copy_sources(ins)
            for src in srcs:
                assert os.path.lexists(os.path.join(ROOT, src)), "line %d: %s does not exist" % (ins.line, src)
                assert context_matches(src), "line %d: %s is excluded by .dockerignore" % (ins.line, src)
                n += 1
    assert n, "no COPY from the build context"
    for rel in (".git", "build", "build-san", "tests", "bench"):
        assert ignored(rel), ".dockerignore should leave %s out of the context" % rel


def test_make_targets_exist():
    ctx = build_context()
    for st in dockerfile()[1]:
        for ins, assigns, targets in make_invocations(st):
            assert targets, "line %d: name the make target (build/tessera)" % ins.line
            extra = ["NVCC=/bin/true"] if "CUDA=1" in assigns else []   # no nvcc needed for -n
            p = subprocess.run(["make", "-n"] + assigns + extra + targets, cwd=ctx, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert p.returncode == 0, "line %d: make -n %s fails in the context: %s" % (
                ins.line, " ".join(assigns + targets), p.stdout[-1500:])


def test_runtime_copies_what_make_builds():
    for rt in runtime_stages():
        bst = from_stage(rt)
        products = {os.path.normpath(os.path.join(ins.workdir, t))
                    for ins, _, targets in make_invocations(bst) for t in targets}
        assert products, "stage %s runs no make" % bst.name
        ep, _ = image_command(rt)
        copied = {}
        for dest, ins in image_paths(rt):
            if ins.flags.get("from") == bst.name:
                for src in copy_sources(ins)[0]:
                    assert os.path.normpath(src) in products, \
                        "line %d: copies %s from %s, whose make builds %s" % (ins.line, src, bst.name, sorted(products))
                    copied[dest] = src
        assert ep[0] in copied, "stage %s: ENTRYPOINT %s is not the binary copied from %s (%s)" % (
            rt.name, ep[0], bst.name, copied)


def test_runtime_user_and_exec_forms():
    for rt in runtime_stages():
        user = rt.last("USER")
        assert user, "stage %s runs as root (no USER)" % rt.name
        name = expand(user.body, user.env).split(":")[0]
        assert name not in ("root", "0"), "stage %s: USER %s is root" % (rt.name, user.body)
        if not name.isdigit():
            assert any(name in i.body for i in rt.all("RUN")), "stage %s: user %s is never created" % (rt.name, name)
        else:
            assert any(re.search(r"useradd\b.*--uid\s+%s\b" % name, i.body) for i in rt.all("RUN")), \
                "stage %s: uid %s is never created (useradd --uid)" % (rt.name, name)
        ep, cmd = image_command(rt)
        assert ep[0].startswith("/"), "stage %s: ENTRYPOINT should name the binary by its path" % rt.name
        assert cmd and cmd[0] == "serve", "stage %s: CMD should be `serve ...`" % rt.name
        sig = rt.last("STOPSIGNAL")
        assert sig is None or sig.body in ("SIGTERM", "15"), "stage %s: STOPSIGNAL %s does not drain" % (rt.name, sig.body)


def test_ports_agree():
    for rt in runtime_stages():
        port = image_port(rt)
        _, cmd = image_command(rt)
        assert int(flag(cmd, "--port")) == port, "stage %s: CMD --port %s, EXPOSE %d" % (rt.name, flag(cmd, "--port"), port)
        host = flag(cmd, "--host")
        assert host in ("0.0.0.0", "::"), "stage %s: --host %s is unreachable from outside the container" % (rt.name, host)
        _, hhost, hport, hpath = healthcheck(rt)
        assert hhost in ("127.0.0.1", "localhost"), "stage %s: the HEALTHCHECK runs inside: use 127.0.0.1" % rt.name
        assert hport == port, "stage %s: HEALTHCHECK port %d, EXPOSE %d" % (rt.name, hport, port)
        assert hpath == "/health", "stage %s: HEALTHCHECK on %s, the readiness endpoint is /health" % (rt.name, hpath)
        model = flag(cmd, "--model")
        assert in_image(rt, model), "stage %s: --model %s is not copied into the image" % (rt.name, model)


def test_runtime_has_no_toolchain():
    bad = re.compile(r"(-dev$|^gcc|^g\+\+|^clang|^build-essential$|^make$|^cmake$|^python|^cuda-nvcc|^nvidia-cuda-toolkit)")
    for rt in runtime_stages():
        pkgs = apt_packages(rt)
        assert not [p for p in pkgs if bad.search(p)], "stage %s installs build tools: %s" % (
            rt.name, [p for p in pkgs if bad.search(p)])
        assert "devel" not in rt.base, "stage %s runs on a devel image: %s" % (rt.name, rt.base)
        hc_tool = healthcheck(rt)[0][0]
        assert hc_tool in pkgs, "stage %s: the HEALTHCHECK's %s is not installed" % (rt.name, hc_tool)
        for dest, ins in image_paths(rt):
            if "from" not in ins.flags:
                for src in copy_sources(ins)[0]:
                    assert src.startswith("models/"), "stage %s copies %s from the context: only models belong" % (
                        rt.name, src)


def test_cpu_packages_exist_in_debian():
    require_debian_12()
    for st in (from_stage(stage_named("cpu")), stage_named("cpu")):
        pkgs = apt_packages(st)
        assert pkgs, "stage %s installs no packages" % st.name
        r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + pkgs, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        known = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
        assert not set(pkgs) - known, "stage %s: no Debian package %s" % (st.name, sorted(set(pkgs) - known))


def test_cuda_packages_match_cpu():
    """Ubuntu's apt is not here: the CUDA stages must install the cpu stages' packages
    under Ubuntu 24.04's names (64-bit time_t: libfoo -> libfoot64), plus g++ for nvcc."""
    default = dockerfile()[1][-1]
    norm = lambda pkgs: {re.sub(r"t64$", "", p) for p in pkgs}
    cpu, cpu_b = stage_named("cpu"), from_stage(stage_named("cpu"))
    cuda_b = from_stage(default)
    assert norm(apt_packages(default)) == norm(apt_packages(cpu)), \
        "runtime packages differ beyond t64 renames: cuda %s, cpu %s" % (apt_packages(default), apt_packages(cpu))
    assert norm(apt_packages(cuda_b)) == norm(apt_packages(cpu_b)) | {"g++"}, \
        "build packages differ: cuda %s, cpu %s (+ g++)" % (apt_packages(cuda_b), apt_packages(cpu_b))
    if "24.04" in default.base:
        for lib in ("libuv1", "libpng16-16", "libmicrohttpd12"):
            if lib in apt_packages(cpu):
                assert lib + "t64" in apt_packages(default), "Ubuntu 24.04 names %s %st64" % (lib, lib)


# ------------------------------------------------------------------------------------
# Tests: the dry run

def test_cpu_build_in_clean_context():
    root, bst, rt, rt_root = cpu_build()
    ep, _ = image_command(rt)
    binary = os.path.join(rt_root, ep[0].lstrip("/"))
    assert os.path.isfile(binary) and os.access(binary, os.X_OK), "no executable %s in the image" % ep[0]
    p = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "serve" in p.stdout, "the built binary's --help does not mention serve: %s" % p.stdout[:300]


def test_cpu_build_packages_cover_the_compile():
    """Every header the compile reads and every library it links belongs to a package
    of the build stage's apt-get install or one they depend on."""
    require_debian_12()
    root, bst, _, _ = cpu_build()
    ins, assigns, _ = make_invocations(bst)[0]
    wd = os.path.join(root, ins.workdir.lstrip("/"))
    probe = "__print:\n\t@echo CC=$(CC)\n\t@echo CFLAGS=$(CFLAGS)\n\t@echo SRC=$(LIB_SRC) $(SERVER_SRC)\n" \
            "\t@echo LIBS=$(LDLIBS) $(SERVER_LIBS)\n"
    p = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-"] + assigns + ["__print"],
                       input=probe, cwd=wd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    assert p.returncode == 0, p.stdout
    v = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    cflags = [f for f in shlex.split(v["CFLAGS"]) if f not in ("-MMD", "-MP")]
    srcs = shlex.split(v["SRC"]) + ["tools/embed_assets.c"]
    dep = subprocess.run([v["CC"]] + cflags + ["-M"] + srcs, cwd=wd, env=clean_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert dep.returncode == 0, dep.stdout[-1500:]
    headers = {w for w in dep.stdout.replace("\\\n", " ").split() if w.startswith("/") and not w.endswith(":")}
    libs = []
    for w in shlex.split(v["LIBS"]):
        if w.startswith("-l"):
            out = subprocess.run([v["CC"], "-print-file-name=lib%s.so" % w[2:]], stdout=subprocess.PIPE,
                                 text=True).stdout.strip()
            assert out.startswith("/"), "the linker finds no lib%s.so" % w[2:]
            libs.append(os.path.normpath(out))
    owners = dpkg_owners(sorted(headers) + libs)
    unowned = [f for f in sorted(headers) + libs if f not in owners]
    assert not unowned, "files of no Debian package: %s" % unowned[:10]
    closure = apt_closure(apt_packages(bst))
    missing = sorted({"%s (%s)" % ("/".join(sorted(owners[f])), f) for f in owners
                      if not owners[f] & closure})
    assert not missing, "stage %s does not install what provides: %s" % (bst.name, missing[:10])


def test_cpu_runtime_packages_cover_the_binary():
    require_debian_12()
    _, _, rt, rt_root = cpu_build()
    binary = os.path.join(rt_root, image_command(rt)[0][0].lstrip("/"))
    dyn = subprocess.run(["readelf", "-d", binary], stdout=subprocess.PIPE, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    assert needed, "readelf -d lists no NEEDED libraries"
    ldd = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, text=True).stdout
    where = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    missing = [n for n in needed if n not in where]
    assert not missing, "not found by the dynamic loader: %s" % missing
    owners = dpkg_owners([where[n] for n in needed])
    pkgs = set(apt_packages(rt)) | {"libc6"}
    bad = ["%s (%s)" % (n, "/".join(sorted(owners.get(where[n], {"no package"})))) for n in needed
           if not owners.get(where[n], set()) & pkgs]
    assert not bad, "stage %s does not install the packages of %s" % (rt.name, bad)


def test_healthcheck_and_health_endpoints():
    r = cpu_image_run()
    path = healthcheck(stage_named("cpu"))[3]
    assert r["loading"][path][0] == 503, "while loading, %s answered %s" % (path, r["loading"][path][0])
    assert r["loading"]["HEALTHCHECK"] != 0, "the HEALTHCHECK passed while the model was loading"
    assert r["loading"]["/health/live"][0] == 200, "/health/live while loading: %s" % (r["loading"]["/health/live"][0],)
    assert r["ready"][path][0] == 200, "ready, %s answered %s" % (path, r["ready"][path][0])
    assert r["ready"]["HEALTHCHECK"] == 0, "the HEALTHCHECK command failed on a ready server"
    assert r["ready"]["/health/live"][0] == 200
    assert r["draining"][path][0] == 503 and (json_of(r["draining"][path][2]) or {}).get("error", {}).get("code") \
        == "draining", "draining, %s answered %s" % (path, r["draining"][path][:2])
    assert r["draining"]["HEALTHCHECK"] != 0, "the HEALTHCHECK passed on a draining server"
    assert r["draining"]["/health/live"][0] == 200, "/health/live while draining: %s" % (r["draining"]["/health/live"][0],)


def test_sigterm_drains_and_exits_0():
    r = cpu_image_run()
    assert r["draining"]["POST /generate"][0] == 503, "a new request while draining got %s" % (
        r["draining"]["POST /generate"][0],)
    st, ctype, body = r["in_flight"]
    assert st == 200 and ctype.startswith("image/png") and body[:4] == b"\x89PNG", \
        "the request running at SIGTERM got %s %s %s" % (st, ctype, body[:200])
    assert r["exit"] == 0, "exit after the drain: %s\n%s" % (r["exit"], r["log"])


# ------------------------------------------------------------------------------------
# Tests: Kubernetes

def test_k8s_manifests_parse_and_kustomize():
    docs = k8s_docs()
    kinds = {d.get("kind") for _, d in docs}
    for k in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        assert k in kinds, "deploy/k8s has no %s" % k
    kust = one("Kustomization")
    for res in kust.get("resources", []):
        assert os.path.isfile(os.path.join(K8S, res)), "kustomization.yaml lists missing %s" % res
    for fn, d in docs:
        # Every object but the kustomization itself and the ServiceMonitor (it needs the
        # Prometheus Operator's CRD) is applied by `kubectl apply -k`.
        if d.get("apiVersion") and d.get("kind") not in ("Kustomization", "ServiceMonitor"):
            assert fn in kust.get("resources", []), "%s (%s) is not in kustomization.yaml" % (fn, d.get("kind"))


def test_k8s_selectors_and_ports():
    dep = one("Deployment", "apps/v1")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    subset = lambda sel: sel and all(labels.get(k) == v for k, v in sel.items())
    assert subset(dep["spec"]["selector"]["matchLabels"]), "the Deployment's selector misses its pod labels"
    svc = one("Service", "v1")
    assert subset(svc["spec"]["selector"]), "the Service's selector %s does not match the pod labels %s" % (
        svc["spec"]["selector"], labels)
    for p in svc["spec"]["ports"]:
        container_port(p.get("targetPort", p["port"]))
    for pdb in k8s_kind("PodDisruptionBudget"):
        assert subset(pdb["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget selects no tessera pod"
    args = server_container()["args"]
    port = int(flag(args, "--port"))
    assert port == container_port(port), "--port %d is not a containerPort" % port
    assert port == image_port(dockerfile()[1][-1]), "--port %d, the image EXPOSEs %d" % (
        port, image_port(dockerfile()[1][-1]))
    assert flag(args, "--host") in ("0.0.0.0", "::"), "--host must accept the pod IP (probes, Service)"
    assert args[0] == "serve", "args replace the image's CMD: they start with serve"
    model = flag(args, "--model")
    mounts = [m["mountPath"] for m in server_container().get("volumeMounts", [])]
    assert in_image(dockerfile()[1][-1], model) or any(model.startswith(m.rstrip("/") + "/") for m in mounts), \
        "--model %s is neither in the image nor on a mounted volume" % model
    for ing in k8s_kind("Ingress", "networking.k8s.io/v1"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                be = path["backend"]["service"]
                assert be["name"] == svc["metadata"]["name"], "Ingress %s points at service %s" % (
                    ing["metadata"]["name"], be["name"])
                ref = be["port"].get("name", be["port"].get("number"))
                assert any(ref in (p.get("name"), p["port"]) for p in svc["spec"]["ports"]), \
                    "Ingress %s: service port %s does not exist" % (ing["metadata"]["name"], ref)
        ann = ing["metadata"].get("annotations", {})
        assert ann.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", "SSE needs proxy-buffering off"
        assert int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")) >= 60
    for sm in k8s_kind("ServiceMonitor"):
        assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), \
            "the ServiceMonitor does not select the Service's labels"
        for ep in sm["spec"]["endpoints"]:
            assert any(ep["port"] == p.get("name") for p in svc["spec"]["ports"]), "ServiceMonitor port %s" % ep["port"]


def test_k8s_probes_resources_and_shutdown():
    pr = probes()
    assert pr["startupProbe"]["httpGet"]["path"] == "/health", "the startup probe should be /health (503 while loading)"
    assert pr["readinessProbe"]["httpGet"]["path"] == "/health", "readiness should be /health (503 loading/draining)"
    assert pr["livenessProbe"]["httpGet"]["path"] == "/health/live", "liveness should be /health/live"
    args_port = int(flag(server_container()["args"], "--port"))
    for kind, p in pr.items():
        assert container_port(p["httpGet"]["port"]) == args_port, "%s on a port the server does not listen on" % kind
    res = server_container().get("resources", {})
    assert str(res.get("limits", {}).get("nvidia.com/gpu")) == "1", "no nvidia.com/gpu: 1 limit"
    if "nvidia.com/gpu" in res.get("requests", {}):
        assert str(res["requests"]["nvidia.com/gpu"]) == "1", "GPU request and limit must be equal"
    for r in ("cpu", "memory"):
        assert r in res.get("requests", {}), "no %s request" % r
    spec = pod_spec()
    pre = server_container().get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        sleep = int(pre["sleep"]["seconds"])
    else:
        cmd = pre.get("exec", {}).get("command", [])
        assert len(cmd) == 2 and os.path.basename(cmd[0]) == "sleep", "preStop should sleep: %s" % pre
        sleep = int(cmd[1])
    grace = int(spec.get("terminationGracePeriodSeconds", 30))
    assert 0 < sleep < grace, "terminationGracePeriodSeconds %d leaves no time to drain after preStop sleep %d" % (
        grace, sleep)
    assert grace - sleep >= 60, "only %d s to drain after the preStop sleep" % (grace - sleep)
    sc = dict(spec.get("securityContext", {}))
    sc.update(server_container().get("securityContext", {}))
    assert sc.get("runAsNonRoot") is True, "runAsNonRoot: true missing"
    user = dockerfile()[1][-1].last("USER").body.split(":")[0]
    if "runAsUser" in sc:
        assert sc["runAsUser"] != 0 and str(sc["runAsUser"]) == user, \
            "runAsUser %s, the image's user is %s" % (sc["runAsUser"], user)
    assert sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false missing"


def test_k8s_probes_on_the_real_server():
    r = cpu_image_run()
    expect = {"startupProbe": (False, True, False), "readinessProbe": (False, True, False),
              "livenessProbe": (True, True, True)}
    for kind, p in probes().items():
        path = p["httpGet"]["path"]
        for phase, want in zip(("loading", "ready", "draining"), expect[kind]):
            st = r[phase][path][0]
            passes = st is not None and 200 <= st < 400
            assert passes == want, "%s (%s) while %s: %s, the probe would %s" % (
                kind, path, phase, st, "fail" if want else "pass")


def test_k8s_metrics_feed_the_hpa():
    hpa = one("HorizontalPodAutoscaler", "autoscaling/v2")
    dep = one("Deployment", "apps/v1")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref.get("apiVersion"), ref.get("kind"), ref.get("name")) == ("apps/v1", "Deployment", dep["metadata"]["name"]), \
        "the HPA targets %s, not the Deployment %s" % (ref, dep["metadata"]["name"])
    assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
    r = cpu_image_run()
    ann = scrape_annotation()
    sms = k8s_kind("ServiceMonitor")
    assert ann.get("prometheus.io/scrape") == "true" or sms, "nothing tells Prometheus to scrape the pods"
    if ann.get("prometheus.io/scrape") == "true":
        assert int(ann.get("prometheus.io/port", 0)) == container_port(int(ann.get("prometheus.io/port", 0)))
    path = ann.get("prometheus.io/path", "/metrics")
    for sm in sms:
        path = sm["spec"]["endpoints"][0].get("path", "/metrics")
    st, ctype, text = r["ready"][path]
    assert st == 200 and ctype.startswith("text/plain"), "GET %s: %s %s" % (path, st, ctype)
    text = text.decode()
    with open(os.path.join(K8S, "prometheus-adapter-values.yaml")) as f:
        rules = yaml.safe_load(f)["rules"]["custom"]
    for name in hpa_metrics():
        assert re.search(r"^# TYPE %s gauge$" % re.escape(name), text, re.M), \
            "the server's %s has no gauge %s" % (path, name)
        rule = [rl for rl in rules if rl.get("name", {}).get("as") == name]
        assert len(rule) == 1, "prometheus-adapter-values.yaml exposes no custom metric %s" % name
        series = re.match(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule[0]["seriesQuery"]).group(1)
        assert re.search(r"^%s " % re.escape(series), text, re.M), "the adapter reads %s, not served" % series
        ov = rule[0]["resources"]["overrides"]
        assert ov.get("pod", {}).get("resource") == "pod" and ov.get("namespace", {}).get("resource") == "namespace", \
            "the adapter rule must map the namespace and pod labels (a Pods metric)"


def test_k8s_args_start_a_server_that_passes_its_probes():
    _, _, rt, rt_root = cpu_build()
    cuda = dockerfile()[1][-1]
    ep, _ = image_command(cuda)
    args = server_container()["args"]
    port = free_port()
    argv = rewrite_args([os.path.join(rt_root, ep[0].lstrip("/"))] + args, rt_root, port,
                        int(flag(args, "--port")))
    srv = start_ready(argv, port, "the Deployment's args")
    try:
        for kind, p in probes().items():
            st = srv.get(p["httpGet"]["path"])[0]
            assert st == 200, "%s %s: %s" % (kind, p["httpGet"]["path"], st)
    finally:
        stop_drained(srv, "the Deployment's args")


# ------------------------------------------------------------------------------------
# Tests: Docker Compose

def test_compose_replicas_and_nginx():
    c = compose()
    svcs = c.get("services", {})
    stages = {st.name: st for st in dockerfile()[1] if st.name}
    replicas = ["tessera-1", "tessera-2"]
    for name in replicas:
        s = svcs.get(name)
        assert s, "compose has no service %s" % name
        b = s.get("build")
        assert isinstance(b, dict), "%s: build: {context, target} expected" % name
        ctx = os.path.normpath(os.path.join(os.path.dirname(COMPOSE), b["context"]))
        assert os.path.samefile(os.path.join(ctx, b.get("dockerfile", "Dockerfile")), DOCKERFILE), \
            "%s does not build the repository's Dockerfile" % name
        st = stages.get(b.get("target"))
        assert st and st.last("ENTRYPOINT"), "%s: target %s is not a runtime stage" % (name, b.get("target"))
        cmd = s.get("command")
        assert isinstance(cmd, list), "%s: command in exec form (a list)" % name
        assert int(flag(cmd, "--port")) == image_port(st) == 8080, "%s: --port %s" % (name, flag(cmd, "--port"))
        assert flag(cmd, "--host") in ("0.0.0.0", "::"), "%s: --host must accept nginx's connections" % name
        assert in_image(st, flag(cmd, "--model")), "%s: --model is not in the image" % name
        img = s.get("image", "")
        assert not img.endswith(":latest"), "%s: image %s" % (name, img)
    ng = svcs.get("nginx")
    assert ng, "compose has no nginx service"
    repo, tag = image_ref(ng.get("image", ""))
    assert repo == "nginx" and tag and tag != "latest" and re.search(r"\d", tag), "nginx image %s: pin a tag" % ng.get("image")
    conf = None
    for v in ng.get("volumes", []):
        parts = v.split(":")
        if len(parts) >= 2 and parts[1] == "/etc/nginx/conf.d/default.conf":
            conf = os.path.normpath(os.path.join(os.path.dirname(COMPOSE), parts[0]))
            assert parts[2:] == ["ro"], "mount the nginx config read-only"
    assert conf, "nginx mounts no /etc/nginx/conf.d/default.conf"
    assert os.path.isfile(conf), "nginx mounts %s, which does not exist" % os.path.relpath(conf, ROOT)
    with open(conf) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    listen = re.findall(r"^\s*listen\s+(\d+)", text, re.M)
    servers = re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)", text, re.M)
    published = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in ng.get("ports", [])]
    assert published and all(p in listen for p in published), \
        "nginx publishes container port %s, its config listens on %s" % (published, listen)
    assert sorted((h, int(p)) for h, p in servers) == sorted((r, 8080) for r in replicas), \
        "the nginx config's upstream servers %s are not the compose replicas" % servers
    deps = ng.get("depends_on", {})
    for r in replicas:
        assert r in deps, "nginx should depend on %s" % r
        if isinstance(deps, dict) and deps[r].get("condition") == "service_healthy":
            assert stages[svcs[r]["build"]["target"]].last("HEALTHCHECK"), "service_healthy without a HEALTHCHECK"
    for r in replicas:
        grace = svcs[r].get("stop_grace_period", "10s")
        secs = int(grace[:-1]) * (60 if grace.endswith("m") else 1)
        assert secs >= 30, "%s: stop_grace_period %s is too short to drain" % (r, grace)


def test_compose_gpu_override():
    if not os.path.exists(COMPOSE_GPU):
        raise Skip("no deploy/compose.gpu.yaml")
    with open(COMPOSE_GPU) as f:
        gpu = yaml.safe_load(f)
    stages = {st.name for st in dockerfile()[1]}
    for name, s in gpu["services"].items():
        assert name in compose()["services"], "compose.gpu.yaml overrides unknown service %s" % name
        assert s["build"]["target"] in stages, "%s: no stage %s" % (name, s["build"]["target"])
        devs = s["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devs), "%s reserves no GPU" % name


def main():
    if len(sys.argv) != 2:
        print("usage: test_deploy.py path/to/tessera  (accepted for uniformity; the dry run builds "
              "its own from the Docker build context)", file=sys.stderr)
        return 2
    tests = [v for k, v in globals().items() if k.startswith("test_") and callable(v)]
    failed = skipped = 0
    t0 = time.time()
    try:
        for t in tests:
            t1 = time.time()
            try:
                t()
                print("ok   %s (%.1f s)" % (t.__name__, time.time() - t1))
            except Skip as e:
                skipped += 1
                print("skip %s: %s" % (t.__name__, e))
            except AssertionError as e:
                failed += 1
                print("FAIL %s: %s" % (t.__name__, e))
            sys.stdout.flush()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print("test_deploy: %d passed, %d failed, %d skipped (%.0f s)" % (
        len(tests) - failed - skipped, failed, skipped, time.time() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
