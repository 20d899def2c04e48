#!/usr/bin/env python3
"""Turns bench/gpu.sh's result files into gpu-report.md, gpu-results.json and a summary.

    gpu_report.py --res DIR --work DIR --out DIR [--summary]

Reads what exists of (in --res): meta.env, stages.tsv, membw.json, tessera-GPT-*.json
(bench/gpu_generate.c), tessera-cli-GPT-*.log, ref-GPT-*.json (bench/gpu_reference.py),
greedy-{tessera,ref}.tokens, serve.jsonl (bench/serve_load.py), serve-N.log and
serve-N.nvsmi; and the model folders in --work/models/GPT-*/ for the shapes and weight
sizes. Anything missing shows as "-" with a note. Writes --out/gpu-report.md and
--out/gpu-results.json; with --summary also prints a short plain-text summary on stdout.
Standard library only (runs in a second or less, so gpu.sh calls it after every stage).

The memory-bandwidth floor of forward pass t (t = 0 is the prefill on the class token, t >=
1 the decode steps; 576 in all at 384 px) is the bytes it must move over the measured copy
bandwidth (bytes read + written per second, bench/gpu_membw.py):
  - every weight matrix read once (bf16, counted from gpt.safetensors): all tensors except
    the token and class embedding tables, of which only the n_seqs rows looked up count;
  - the KV cache read over the context: n_seqs x n_layer x 2 x kv_dim x (t + 1) x 2 bytes;
  - the new K/V written (n_seqs x n_layer x 2 x kv_dim x 2 bytes) and the logits written
    (n_seqs x vocab x 4 bytes).
Activations (a few hundred KB per step) are left out, so the floor is a slight under-estimate.
The issue's wording counts all GPT weights, embedding tables included; that variant is
reported too ("all-weights floor"), but the ratios use the stricter one above.
"""
import argparse
import glob
import json
import math
import os
import re
import statistics
import struct

MODELS = ("GPT-B", "GPT-L", "GPT-XL")
KV_BLOCK = 16           # scheduler/scheduler.h TS_SCHED_KV_BLOCK and engine/generate.c KV_BLOCK
STEP_GOAL = 1.5         # each decode step within 1.5x its floor
SPEEDUP_GOAL = 8.0      # at least 8x the official eager generate()
PAPER = {"GPT-B": (7.80, 2.39), "GPT-L": (13.72, 3.48), "GPT-XL": (19.76, 4.84)}  # A100, s


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_meta(path):
    meta = {}
    for line in (read_text(path) or "").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            meta[k] = v
    return meta


def read_stages(path):
    rows = []
    for line in (read_text(path) or "").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            rows.append(parts)
    return rows


def st_header(path):
    """name -> bytes of each tensor of a safetensors file."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            hdr = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in hdr.items()
            if k != "__metadata__"}


def med(xs):
    xs = [x for x in (xs or []) if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q):
    s = sorted(xs)
    if not s:
        return None
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def f(x, spec=".2f", unit=""):
    return "-" if x is None else format(x, spec) + unit


def mib(b):
    return None if b is None else b / (1 << 20)


class Model:
    """Everything known about one model's 384 px run."""

    def __init__(self, name, res, work, bw_gbs):
        self.name = name
        self.ts = load_json(os.path.join(res, "tessera-%s.json" % name))
        self.ref = load_json(os.path.join(res, "ref-%s.json" % name))
        self.cli_log = read_text(os.path.join(res, "tessera-cli-%s.log" % name))
        folder = os.path.join(work, "models", name, "bf16-384")
        self.cfg = (load_json(os.path.join(folder, "config.json")) or {}).get("gpt")
        self.gpt_tensors = st_header(os.path.join(folder, "gpt.safetensors"))
        vq = st_header(os.path.join(folder, "vq.safetensors"))
        self.vq_bytes = sum(vq.values()) if vq else None
        self.present = bool(self.ts or self.ref or self.cfg)
        self.compute(bw_gbs)

    def compute(self, bw_gbs):
        c, ts, ref = self.cfg, self.ts, self.ref
        self.n_images = (ts or {}).get("n_images") or (ref or {}).get("n_images") or 8
        self.n_seqs = (ts or {}).get("n_seqs") or (ref or {}).get("n_seqs") or 2 * self.n_images
        self.kv_elem = (ts or {}).get("kv_elem_bytes") or 2
        # Tessera
        self.ts_tokens = med((ts or {}).get("tokens_s"))
        self.ts_decode = med((ts or {}).get("decode_s"))
        self.ts_ok = None if ts is None else bool(ts.get("ok"))
        self.cli = None
        if self.cli_log:
            m = re.search(r"(\d+) image\(s\): tokens ([\d.]+) s \(([\d.]+) tokens/s\), VQ decode ([\d.]+) s",
                          self.cli_log)
            d = re.search(r"loaded .* on (.*)", self.cli_log)
            if m:
                self.cli = {"images": int(m.group(1)), "tokens_s": float(m.group(2)),
                            "decode_s": float(m.group(4)), "device": d.group(1) if d else None}
        # official
        precs = (ref or {}).get("precisions", {})
        self.up_bf16 = precs.get("bf16", {}).get("median_s")
        self.up_fp32 = precs.get("none", {}).get("median_s")
        self.up_decode = ((ref or {}).get("decode") or {}).get("median_s")
        self.speedup_bf16 = self.up_bf16 / self.ts_tokens if self.up_bf16 and self.ts_tokens else None
        self.speedup_fp32 = self.up_fp32 / self.ts_tokens if self.up_fp32 and self.ts_tokens else None
        tot_ts = self.ts_tokens + self.ts_decode if self.ts_tokens and self.ts_decode else None
        tot_up = self.up_bf16 + self.up_decode if self.up_bf16 and self.up_decode else None
        self.speedup_total = tot_up / tot_ts if tot_up and tot_ts else None
        self.ts_images_per_s = self.n_images / tot_ts if tot_ts else None
        self.up_images_per_s = self.n_images / tot_up if tot_up else None
        # floor
        self.floor = None
        if c and self.gpt_tensors:
            L, layers, V, dim = c["block_size"], c["n_layer"], c["vocab_size"], c["dim"]
            kv_dim = c["n_kv_head"] * (c["dim"] // c["n_head"])
            tables = sum(v for k, v in self.gpt_tensors.items()
                         if k in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight"))
            all_w = sum(self.gpt_tensors.values())
            w_step = all_w - tables + self.n_seqs * dim * 2
            kv_pos = self.n_seqs * layers * 2 * kv_dim * self.kv_elem
            fixed = w_step + kv_pos + self.n_seqs * V * 4           # weights, new K/V, logits
            step_bytes = [fixed + kv_pos * (t + 1) for t in range(L)]
            kv_read_total = sum(kv_pos * (t + 1) for t in range(L))
            fl = {"weights_step_bytes": w_step, "all_weights_bytes": all_w,
                  "embedding_table_bytes": tables, "kv_read_total_bytes": kv_read_total,
                  "bytes_total": sum(step_bytes), "steps": L, "bw_gbs": bw_gbs}
            if bw_gbs:
                bw = bw_gbs * 1e9
                floors = [b / bw for b in step_bytes]
                fl["floor_total_s"] = sum(floors)
                fl["floor_all_weights_total_s"] = sum(floors) + L * tables / bw
                fl["floor_step_s"] = floors
                steps = (ts or {}).get("step_s")
                if steps and all(len(r) == L for r in steps):
                    per = [statistics.median(r[t] for r in steps) for t in range(L)]
                    ratio = [per[t] / floors[t] for t in range(L)]
                    dec = ratio[1:]
                    worst = max(range(1, L), key=lambda t: ratio[t])
                    fl.update({
                        "measured_step_s": per,
                        "ratio_step": ratio,
                        "prefill_s": per[0], "prefill_ratio": ratio[0],
                        "decode_ratio_median": statistics.median(dec),
                        "decode_ratio_p90": pct(dec, 90),
                        "decode_ratio_max": ratio[worst], "decode_ratio_max_step": worst,
                        "decode_steps_within_goal": sum(r <= STEP_GOAL for r in dec),
                        "decode_steps": len(dec),
                        "decode_step_ms_median": 1e3 * statistics.median(per[1:]),
                        "samples": {t: (per[t], floors[t]) for t in (1, L // 2, L - 1)},
                    })
                if self.ts_tokens:
                    fl["tokens_over_floor"] = self.ts_tokens / fl["floor_total_s"]
            self.floor = fl
        # memory
        self.mem = {}
        if c:
            kv_dim = c["n_kv_head"] * (c["dim"] // c["n_head"])
            block = 2 * self.kv_elem * c["n_layer"] * kv_dim * KV_BLOCK
            blocks = 2 * -(-(c["cls_token_num"] + c["block_size"] - 1) // KV_BLOCK)
            self.mem["kv_per_image_bytes"] = blocks * block
        if self.gpt_tensors:
            self.mem["gpt_weights_bytes"] = sum(self.gpt_tensors.values())
        if self.vq_bytes:
            self.mem["vq_weights_bytes"] = self.vq_bytes
        if ts and ts.get("model_device_bytes") is not None:
            self.mem["tessera_model_device_bytes"] = ts["model_device_bytes"]
        b = precs.get("bf16", {})
        if b.get("peak_bytes") and b.get("weights_bytes_on_device") is not None:
            self.mem["upstream_bf16_per_image_bytes"] = (
                (b["peak_bytes"] - b["weights_bytes_on_device"]) / self.n_images)
            self.mem["upstream_bf16_kv_cache_bytes"] = b.get("kv_cache_bytes")

    def as_json(self):
        fl = dict(self.floor or {})
        for k in ("floor_step_s", "measured_step_s", "ratio_step"):
            fl.pop(k, None)   # in the logs (tessera-*.json), not repeated here
        if "samples" in fl:
            fl["samples"] = {str(k): v for k, v in fl["samples"].items()}
        return {
            "tessera_tokens_s": self.ts_tokens, "tessera_decode_s": self.ts_decode,
            "tessera_runs_tokens_s": (self.ts or {}).get("tokens_s"),
            "tessera_runs_decode_s": (self.ts or {}).get("decode_s"),
            "tessera_checks": (self.ts or {}).get("checks"), "tessera_ok": self.ts_ok,
            "tessera_device": (self.ts or {}).get("device"), "tessera_cli": self.cli,
            "upstream": self.ref and {
                "bf16_s": self.up_bf16, "fp32_s": self.up_fp32, "decode_s": self.up_decode,
                "precisions": self.ref.get("precisions"), "decode": self.ref.get("decode"),
                "torch": self.ref.get("torch"), "shims": self.ref.get("shims")},
            "speedup_tokens_vs_bf16": self.speedup_bf16,
            "speedup_tokens_vs_fp32": self.speedup_fp32,
            "speedup_total_vs_bf16": self.speedup_total,
            "images_per_s": {"tessera": self.ts_images_per_s, "upstream_bf16": self.up_images_per_s},
            "floor": fl, "memory": self.mem,
        }


def greedy(res):
    a = read_text(os.path.join(res, "greedy-tessera.tokens"))
    b = read_text(os.path.join(res, "greedy-ref.tokens"))
    if a is None or b is None:
        return None
    ra = [line.split() for line in a.splitlines() if line.strip()]
    rb = [line.split() for line in b.splitlines() if line.strip()]
    out = {"images": max(len(ra), len(rb)), "tokens": 0, "identical": 0, "images_identical": 0,
           "first_mismatch": None, "per_image": []}
    for i in range(max(len(ra), len(rb))):
        x = ra[i] if i < len(ra) else []
        y = rb[i] if i < len(rb) else []
        n = max(len(x), len(y))
        same = sum(1 for j in range(min(len(x), len(y))) if x[j] == y[j])
        first = next((j for j in range(n) if j >= len(x) or j >= len(y) or x[j] != y[j]), None)
        out["tokens"] += n
        out["identical"] += same
        out["images_identical"] += first is None
        out["per_image"].append({"tokens": n, "identical": same, "first_mismatch": first})
        if first is not None and out["first_mismatch"] is None:
            out["first_mismatch"] = {"image": i, "index": first}
    return out


def serving(res):
    recs = {}
    for line in (read_text(os.path.join(res, "serve.jsonl")) or "").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        recs[r.get("max_batch")] = r
    out = {}
    for path in sorted(glob.glob(os.path.join(res, "serve-*.log"))):
        m = re.match(r"serve-(\d+)\.log$", os.path.basename(path))
        if not m:
            continue
        mb = int(m.group(1))
        text = read_text(path) or ""
        e = {"max_batch": mb, "load": recs.get(mb)}
        r = re.search(r"ready: (.*?), (\d+)x\d+ px, (\d+) tokens per image, (\d+) KV blocks "
                      r"\(([\d.]+) MiB, (\d+) per image\), batch (\d+), .*? on (.*)", text)
        if r:
            blocks, kv_mib, per = int(r.group(4)), float(r.group(5)), int(r.group(6))
            e.update({"model": r.group(1), "image_size": int(r.group(2)),
                      "tokens_per_image": int(r.group(3)), "kv_blocks": blocks, "kv_mib": kv_mib,
                      "blocks_per_image": per, "kv_mib_per_image": kv_mib / blocks * per,
                      "device": r.group(8).strip()})
        nv = read_text(os.path.join(res, "serve-%d.nvsmi" % mb)) or ""
        pid = re.search(r"server pid (\d+)", nv)
        if pid:
            used = [int(u) for p, u in re.findall(r"^(\d+), (\d+)$", nv, re.M) if p == pid.group(1)]
            e["process_gpu_mib_max"] = max(used) if used else None
        before = (read_text(os.path.join(res, "serve-%d.gpu-before" % mb)) or "").strip()
        during = [int(x) for x in re.findall(r"^gpu_used=(\d+)$", nv, re.M)]
        if before.isdigit() and during:
            e["gpu_used_delta_mib_max"] = max(during) - int(before)
        out[mb] = e
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", action="store_true")
    a = ap.parse_args()
    meta = read_meta(os.path.join(a.res, "meta.env"))
    stages = read_stages(os.path.join(a.res, "stages.tsv"))
    bw = load_json(os.path.join(a.res, "membw.json"))
    bw_gbs = bw and bw.get("copy_gbs_median")
    models = [Model(m, a.res, a.work, bw_gbs) for m in MODELS]
    models = [m for m in models if m.present]
    gr = greedy(a.res)
    gr_ref = load_json(os.path.join(a.res, "greedy-ref.json"))
    sv = serving(a.res)
    problems = [(s, st, msg) for s, st, msg in stages if st != "ok"]
    test = meta.get("test_cuda", "not run")
    quick = meta.get("quick") == "1"

    results = {
        "meta": meta, "bandwidth": bw, "models": {m.name: m.as_json() for m in models},
        "greedy": gr, "serving": {str(k): v for k, v in sv.items()},
        "problems": [{"stage": s, "status": st, "message": msg} for s, st, msg in problems],
        "goals": {"speedup": SPEEDUP_GOAL, "step_over_floor": STEP_GOAL},
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu-results.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)
        fh.write("\n")

    # ---- markdown ---------------------------------------------------------------------
    L = []
    w = L.append
    date = meta.get("date", "?")
    gpu = meta.get("gpu", "?")
    w("# Tessera CUDA backend vs official LlamaGen, %s, %s" % (gpu.split(",")[0], date))
    w("")
    if quick:
        w("**--quick: a smoke run (1 run, GPT-B, bf16 reference only, short serving windows): "
          "not figures to quote.**")
        w("")
    test_bad = not test.startswith(("passed", "skipped"))
    w("- **CUDA kernel tests (build/tests/test_cuda): %s**%s" % (
        test, " <- READ THIS FIRST" if test_bad and not test.startswith("absent") else ""))
    if gr:
        ok = gr["identical"] == gr["tokens"] and gr["tokens"] > 0
        fm = gr["first_mismatch"]
        w("- **Greedy parity, Tessera `--device cuda-fp32` vs official fp32 (TF32 off), GPT-B 256 px, "
          "%d classes: %s** (%d of %d tokens identical, %d of %d images fully%s)" % (
              gr["images"], "OK" if ok else "MISMATCH", gr["identical"], gr["tokens"],
              gr["images_identical"], gr["images"],
              "" if fm is None else "; first difference: image %d, token %d" % (fm["image"], fm["index"])))
    else:
        w("- Greedy parity: not run or incomplete")
    for m in models:
        if m.ts_ok is False:
            w("- **Tessera %s: a check in gpu_generate failed: %s**" % (m.name, json.dumps((m.ts or {}).get("checks"))))
    for s, st, msg in problems:
        w("- %s %s: %s" % (s, st, msg))
    w("")
    w("- date: %s (started %s, finished %s)" % (date, meta.get("started", "?"), meta.get("finished", "not finished")))
    w("- device: %s (nvidia-smi: name, memory, driver); clocks/power/pstate: %s; other GPU processes at start: %s"
      % (gpu, meta.get("gpu_clocks", "?"), meta.get("gpu_other_processes", "?")))
    w("- host: %s; %s" % (meta.get("cpu", "?"), meta.get("os", "?")))
    w("- software: torch %s; %s; Tessera build: %s; sources %s" % (
        meta.get("torch", "?"), meta.get("nvcc", "?"), meta.get("build", "?"), meta.get("source_hash", "?")))
    w("- official code: FoundationVision/LlamaGen %s (bench/upstream, not in this repository)"
      % meta.get("upstream_commit", "?"))
    w("- command: `%s`" % meta.get("command", "bash bench/gpu.sh"))
    w("- workload: %s; 384 px = 576 tokens per image, 16 sequences with CFG; random weights of the "
      "real shapes in the official .pt layout (tools/make_random_checkpoints.py), bf16 Tessera "
      "folders (tools/convert.py)" % meta.get("workload", "?"))
    if bw:
        w("- device memory bandwidth (bench/gpu_membw.py, %d GiB, %d reps, CUDA events): copy "
          "%.0f GB/s median (%.0f best), counting bytes read + written; read-only (torch.sum) %.0f GB/s "
          "median. The floors below use the copy median." % (
              bw["buffer_bytes"] >> 30, bw["reps"], bw["copy_gbs_median"], bw["copy_gbs_best"],
              bw["read_gbs_median"]))
    else:
        w("- device memory bandwidth: not measured (no floors)")
    w("")

    w("## 8 images with CFG at 384 px (the paper's serving table)")
    w("")
    w("Seconds per batch of 8 images (16 sequences of 576 tokens), median of the timed runs. Tessera: "
      "build/gpu_generate after one warm-up generation. Official: generate() in eager PyTorch "
      "(bench/gpu_reference.py), bf16 (sample_c2i.py's default) and fp32 (TF32 on, as sample_c2i.py), "
      "after a short warm-up; VQ decode: decode_code in fp32.")
    w("")
    w("| model | Tessera tokens | Tessera VQ decode | official bf16 tokens | official fp32 tokens | official decode | "
      "speed-up vs bf16 | vs fp32 | speed-up incl. decode | Tessera images/s | goal >= %.0fx |" % SPEEDUP_GOAL)
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for m in models:
        goal = "-" if m.speedup_bf16 is None else ("met" if m.speedup_bf16 >= SPEEDUP_GOAL else "NOT met")
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            m.name, f(m.ts_tokens, ".3f"), f(m.ts_decode, ".3f"), f(m.up_bf16, ".2f"), f(m.up_fp32, ".2f"),
            f(m.up_decode, ".3f"), f(m.speedup_bf16, ".1f", "x"), f(m.speedup_fp32, ".1f", "x"),
            f(m.speedup_total, ".1f", "x"), f(m.ts_images_per_s, ".1f"), goal))
    w("")
    w("Paper (A100, the same workload, eager / vLLM, s): " + "; ".join(
        "%s %.2f / %.2f" % (k, v[0], v[1]) for k, v in PAPER.items()) + ". Another GPU: scale only.")
    w("")
    w("Each run, seconds:")
    w("")
    for m in models:
        ts, ref = m.ts or {}, m.ref or {}
        parts = ["Tessera tokens %s, decode %s, warm-up %s" % (
            ", ".join("%.3f" % x for x in ts.get("tokens_s", [])) or "-",
            ", ".join("%.3f" % x for x in ts.get("decode_s", [])) or "-",
            ", ".join("%.3f" % x for x in ts.get("warmup_s", [])) or "-")]
        if m.cli:
            parts.append("CLI (`tessera generate`, fresh process, first generation) tokens %.3f, decode %.3f on %s"
                         % (m.cli["tokens_s"], m.cli["decode_s"], m.cli["device"]))
        for p, rec in ref.get("precisions", {}).items():
            s = "official %s %s" % ("fp32" if p == "none" else p,
                                     ", ".join("%.2f" % x for x in rec.get("runs_s", [])) or "-")
            if rec.get("warmup_s") is not None:
                s += " (warm-up of %d tokens %.2f)" % (rec.get("warmup_tokens", 0), rec["warmup_s"])
            for k in ("cut", "skipped"):
                if rec.get(k):
                    s += " [%s]" % rec[k]
            parts.append(s)
        dec = ref.get("decode") or {}
        if dec.get("runs_s"):
            parts.append("official decode_code %s" % ", ".join("%.3f" % x for x in dec["runs_s"]))
        elif dec.get("skipped"):
            parts.append("official decode_code skipped: %s" % dec["skipped"])
        w("- %s: %s" % (m.name, "; ".join(parts)))
    w("")

    w("## Memory-bandwidth floor of every step")
    w("")
    w("Bytes each forward pass must move: the weight matrices once in bf16 (embedding tables apart: "
      "only the looked-up rows), the KV cache of all 16 sequences up to the step's position (bf16), "
      "the new K/V and the fp32 logits; over the measured copy bandwidth. Step 0 is the prefill; "
      "steps 1..575 the decode steps. Measured: the host clock after each step's sampled tokens "
      "reach the host (median over runs).")
    w("")
    w("| model | weights / step | KV read, whole image | floor, 576 steps | all-weights floor | Tessera tokens | "
      "tokens / floor | decode step (median) | step / floor: median | p90 | max (step) | steps <= %.1fx |" % STEP_GOAL)
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in models:
        fl = m.floor or {}
        within = ("%d / %d" % (fl["decode_steps_within_goal"], fl["decode_steps"])
                  if "decode_steps" in fl else "-")
        mx = ("%.2fx (%d)" % (fl["decode_ratio_max"], fl["decode_ratio_max_step"])
              if "decode_ratio_max" in fl else "-")
        w("| %s | %s MB | %s GB | %s ms | %s ms | %s ms | %s | %s ms | %s | %s | %s | %s |" % (
            m.name, f(fl.get("weights_step_bytes") and fl["weights_step_bytes"] / 1e6, ".1f"),
            f(fl.get("kv_read_total_bytes") and fl["kv_read_total_bytes"] / 1e9, ".1f"),
            f(fl.get("floor_total_s") and 1e3 * fl["floor_total_s"], ".1f"),
            f(fl.get("floor_all_weights_total_s") and 1e3 * fl["floor_all_weights_total_s"], ".1f"),
            f(m.ts_tokens and 1e3 * m.ts_tokens, ".1f"), f(fl.get("tokens_over_floor"), ".2f", "x"),
            f(fl.get("decode_step_ms_median"), ".3f"), f(fl.get("decode_ratio_median"), ".2f", "x"),
            f(fl.get("decode_ratio_p90"), ".2f", "x"), mx, within))
    w("")
    for m in models:
        fl = m.floor or {}
        if "samples" in fl:
            w("- %s: prefill %.3f ms (floor %.3f ms); " % (
                m.name, 1e3 * fl["prefill_s"], 1e3 * fl["floor_step_s"][0]) + "; ".join(
                "step %d: %.3f ms, floor %.3f ms (%.2fx)" % (t, 1e3 * v[0], 1e3 * v[1], v[0] / v[1])
                for t, v in sorted(fl["samples"].items())))
    w("")

    w("## GPU memory per in-flight image")
    w("")
    w("Tessera holds an image's KV cache in 16-position blocks of bf16 K and V for its cond and uncond "
      "sequences (scheduler/worker.c); the weights are shared by every image. The official code's "
      "figure is its bf16 run's peak allocation minus the weights, over the 8 images (its KV cache "
      "is sized for the whole batch up front).")
    w("")
    w("| model | KV per image, Tessera (384 px) | GPT + VQ weights (bf16 files) | device memory taken by "
      "Tessera's model load | official bf16: peak - weights, per image | official KV cache (16 seqs) |")
    w("|---|---:|---:|---:|---:|---:|")
    for m in models:
        me = m.mem
        wts = (me.get("gpt_weights_bytes") or 0) + (me.get("vq_weights_bytes") or 0) or None
        w("| %s | %s MiB | %s MiB | %s MiB | %s MiB | %s MiB |" % (
            m.name, f(mib(me.get("kv_per_image_bytes")), ".1f"), f(mib(wts), ".0f"),
            f(mib(me.get("tessera_model_device_bytes")), ".0f"),
            f(mib(me.get("upstream_bf16_per_image_bytes")), ".1f"),
            f(mib(me.get("upstream_bf16_kv_cache_bytes")), ".0f")))
    w("")

    w("## Serving: `tessera serve --device cuda`, GPT-B 256 px")
    w("")
    if sv:
        w("Closed-loop clients (bench/serve_load.py), POST /generate {class, seed, n: 1} with the "
          "server's defaults (cfg 4, top-k 2000), one client per concurrent request; the window opens "
          "after as many responses as clients and lasts %s s; latency in seconds. KV per image from "
          "the server's start-up line; process memory from nvidia-smi during the run."
          % meta.get("serve_window_s", "?"))
        w("")
        w("| --max-batch | clients | images/s | p50 s | p99 s | responses | errors | images / forward | "
          "step ms | KV per image | KV pool | server process GPU memory |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mb, e in sorted(sv.items()):
            r = e.get("load") or {}
            st = r.get("step_s_mean")
            w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s MiB | %s MiB | %s MiB |" % (
                mb, r.get("concurrency", "-"), f(r.get("images_per_s"), ".1f"), f(r.get("p50"), ".2f"),
                f(r.get("p99"), ".2f"), r.get("ok", "-"), r.get("errors_total", "-"),
                f(r.get("images_per_forward"), ".1f"), f(st and 1e3 * st, ".1f"),
                f(e.get("kv_mib_per_image"), ".1f"), f(e.get("kv_mib"), ".0f"),
                f(e.get("process_gpu_mib_max"), ".0f")))
    else:
        w("Not run or no results.")
    w("")
    if gr_ref:
        w("Greedy check details: official fp32 run %s s; per image identical tokens: %s." % (
            f(((gr_ref.get("precisions") or {}).get("none") or {}).get("median_s"), ".2f"),
            ", ".join("%d/%d" % (p["identical"], p["tokens"]) for p in (gr or {}).get("per_image", []))))
        w("")
    w("Raw logs and every step's time: gpu-logs.tar.gz; every figure: gpu-results.json.")
    with open(os.path.join(a.out, "gpu-report.md"), "w") as fh:
        fh.write("\n".join(L) + "\n")

    # ---- summary ----------------------------------------------------------------------
    if a.summary:
        S = []
        S.append("Tessera GPU benchmark, %s, %s%s" % (date, gpu, " (--quick)" if quick else ""))
        S.append("test_cuda: %s" % test)
        if gr:
            S.append("greedy fp32 parity (GPT-B 256 px, %d images): %d/%d tokens identical" % (
                gr["images"], gr["identical"], gr["tokens"]))
        S.append("copy bandwidth: %s GB/s" % f(bw_gbs, ".0f"))
        S.append("%-7s %9s %8s %9s %9s %8s %9s %9s %11s %9s" % (
            "model", "tess tok", "tess dec", "off bf16", "off fp32", "x bf16", "floor ms",
            "tok/floor", "steps<=1.5x", "KV/img"))
        for m in models:
            fl = m.floor or {}
            within = ("%d/%d" % (fl["decode_steps_within_goal"], fl["decode_steps"])
                      if "decode_steps" in fl else "-")
            S.append("%-7s %9s %8s %9s %9s %8s %9s %9s %11s %9s" % (
                m.name, f(m.ts_tokens, ".3f"), f(m.ts_decode, ".3f"), f(m.up_bf16, ".2f"),
                f(m.up_fp32, ".2f"), f(m.speedup_bf16, ".1f", "x"),
                f(fl.get("floor_total_s") and 1e3 * fl["floor_total_s"], ".1f"),
                f(fl.get("tokens_over_floor"), ".2f", "x"), within,
                f(mib(m.mem.get("kv_per_image_bytes")), ".1f", "M")))
        for mb, e in sorted(sv.items()):
            r = e.get("load") or {}
            S.append("serve GPT-B 256px --max-batch %d, %s clients: %s images/s, p50 %s s, p99 %s s, "
                     "KV %s MiB/image, process %s MiB" % (
                         mb, r.get("concurrency", "-"), f(r.get("images_per_s"), ".1f"), f(r.get("p50")),
                         f(r.get("p99")), f(e.get("kv_mib_per_image"), ".1f"),
                         f(e.get("process_gpu_mib_max"), ".0f")))
        for s, st, msg in problems:
            S.append("PROBLEM %s %s: %s" % (s, st, msg))
        S.append("report: %s" % os.path.join(a.out, "gpu-report.md"))
        print("\n".join(S))


if __name__ == "__main__":
    main()
