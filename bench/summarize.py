#!/usr/bin/python3
"""Turns the per-run files of bench/cpu_llamagen.sh into the markdown report.

    summarize.py --results DIR --model-f32 DIR --membw-gbs BEST [--membw-median-gbs M]
                 [--runs N]

DIR holds, for each LABEL (tessera-f32, tessera-bf16, ref-f32, ref-bf16, upstream-f32) and
run R = 1..N, LABEL.R.out (Tessera's stderr, or the JSON line a Python driver prints) and
LABEL.R.time (`/usr/bin/time -v` output). Every figure is the median over the runs; total
per image is the median of tokens + VQ decode. Standard library only.
"""
import argparse
import json
import os
import re
import statistics
import sys

ROWS = [  # label, implementation, weights, bytes per weight element for the floor
    ("tessera-f32", "Tessera (C, CPU backend)", "f32", 4),
    ("tessera-bf16", "Tessera (C, CPU backend)", "bf16", 2),
    ("ref-f32", "PyTorch reference (llamagen_ref.py)", "f32", 4),
    ("ref-bf16", "PyTorch reference (llamagen_ref.py)", "bf16-rounded, fp32 compute", 4),
    ("upstream-f32", "official LlamaGen generate() + decode_code", "f32 (.pt)", 4),
]
TESSERA_LOAD = re.compile(r"^loaded .* in ([0-9.]+) s", re.M)
TESSERA_DONE = re.compile(r"^(\d+) image\(s\): tokens ([0-9.]+) s \(([0-9.]+) tokens/s\), "
                          r"VQ decode ([0-9.]+) s", re.M)
MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def parse_run(results, label, run):
    base = os.path.join(results, "%s.%d" % (label, run))
    with open(base + ".out") as f:
        out = f.read()
    with open(base + ".time") as f:
        rss = MAX_RSS.search(f.read())
    if not rss:
        raise SystemExit("%s.time: no 'Maximum resident set size' line" % base)
    if label.startswith("tessera"):
        load, done = TESSERA_LOAD.search(out), TESSERA_DONE.search(out)
        if not load or not done or done.group(1) != "1":
            raise SystemExit("%s.out: no Tessera timing lines for one image" % base)
        rec = {"load_s": float(load.group(1)), "tokens_s": float(done.group(2)),
               "decode_s": float(done.group(4))}
    else:
        lines = [l for l in out.splitlines() if l.startswith("{")]
        if not lines:
            raise SystemExit("%s.out: no JSON result line" % base)
        rec = json.loads(lines[-1])
        if rec.get("tokens") != 256:
            raise SystemExit("%s.out: expected 256 tokens" % base)
    rec["rss_mib"] = int(rss.group(1)) / 1024.0
    return rec


def gpt_floor_bytes(model_dir, weight_bytes, kv_bytes=4, batch=2):
    """Bytes one image's 256 forward passes must read: every decode-step matrix once per
    step, plus the KV cache of both CFG sequences up to the current position."""
    with open(os.path.join(model_dir, "config.json")) as f:
        g = json.load(f)["gpt"]
    d, ff, L, V, T = g["dim"], g["ffn_dim"], g["n_layer"], g["vocab_size"], g["block_size"]
    per_layer = 3 * d * d + d * d + 3 * ff * d        # wqkv, wo, w1, w3, w2
    weights_step = (L * per_layer + V * d) * weight_bytes  # + output head
    # Step p (0 = the class token) attends over positions 0..p, K and V, every layer.
    kv_total = batch * L * 2 * d * kv_bytes * sum(p + 1 for p in range(T))
    return weights_step, kv_total, T


def fmt(x, digits=2):
    return "%.*f" % (digits, x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--model-f32", required=True, help="model folder (for the GPT shapes)")
    ap.add_argument("--membw-gbs", type=float, required=True,
                    help="best streaming-read pass (GB/s): the floor divides by it")
    ap.add_argument("--membw-median-gbs", type=float, help="median pass, shown beside it")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)

    floors = {}
    for nbytes in (4, 2):
        w_step, kv_total, steps = gpt_floor_bytes(args.model_f32, nbytes)
        total = w_step * steps + kv_total
        floors[nbytes] = (w_step, kv_total, total, total / (args.membw_gbs * 1e9))

    med = {}
    for label, impl, weights, nbytes in ROWS:
        if not os.path.exists(os.path.join(args.results, "%s.1.out" % label)):
            continue
        runs = [parse_run(args.results, label, r) for r in range(1, args.runs + 1)]
        m = {k: statistics.median(r[k] for r in runs)
             for k in ("load_s", "tokens_s", "decode_s", "rss_mib")}
        m["total_s"] = statistics.median(r["tokens_s"] + r["decode_s"] for r in runs)
        m["runs"] = ["%.2f/%.2f" % (r["tokens_s"], r["decode_s"]) for r in runs]
        m["floor_s"] = floors[nbytes][3]
        med[label] = m

    print("| implementation | weights | tokens (s) | tokens/s | VQ decode (s) | "
          "total / image (s) | peak RSS (MiB) | load (s) | tokens / floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, impl, weights, _ in ROWS:
        if label not in med:
            continue
        m = med[label]
        print("| %s | %s | %s | %s | %s | %s | %.0f | %s | %s |" % (
            impl, weights, fmt(m["tokens_s"]), fmt(256 / m["tokens_s"], 1),
            fmt(m["decode_s"]), fmt(m["total_s"]), m["rss_mib"], fmt(m["load_s"]),
            fmt(m["tokens_s"] / m["floor_s"], 2) + "x"))
    print()
    print("Median of %d runs, one image per fresh process; each run's tokens/VQ decode (s): %s."
          % (args.runs, "; ".join("%s %s" % (label, ", ".join(med[label]["runs"]))
                                  for label, *_ in ROWS if label in med)))
    print()

    pairs = [("tessera-f32", "ref-f32", "Tessera f32 vs reference f32"),
             ("tessera-bf16", "ref-bf16", "Tessera bf16 vs reference on the same bf16 weights"),
             ("tessera-bf16", "ref-f32", "Tessera bf16 vs reference f32"),
             ("tessera-f32", "upstream-f32", "Tessera f32 vs official LlamaGen"),
             ("tessera-bf16", "upstream-f32", "Tessera bf16 vs official LlamaGen")]
    print("| speed-up | total / image | token generation |")
    print("|---|---:|---:|")
    for fast, slow, what in pairs:
        if fast in med and slow in med:
            print("| %s | %.2fx | %.2fx |" % (
                what, med[slow]["total_s"] / med[fast]["total_s"],
                med[slow]["tokens_s"] / med[fast]["tokens_s"]))
    print()

    median = args.membw_median_gbs
    print("Memory-bandwidth floor of token generation: 256 forward passes (class token + 255 "
          "decode steps), CFG batch 2 reading each weight once per step, f32 KV cache; "
          "divided by the best streaming-read pass, %.1f GB/s%s:" % (
              args.membw_gbs, " (the median of the measurements' medians, %.1f GB/s, in the "
              "last column)" % median if median else ""))
    print()
    print("| weights | weight bytes / step | KV bytes / image | bytes / image | floor (s) |%s"
          % (" at median bandwidth (s) |" if median else ""))
    print("|---|---:|---:|---:|---:|%s" % ("---:|" if median else ""))
    for nbytes, name in ((4, "f32"), (2, "bf16")):
        w_step, kv_total, total, floor_s = floors[nbytes]
        print("| %s | %.1f MB | %.2f GB | %.1f GB | %.2f |%s" % (
            name, w_step / 1e6, kv_total / 1e9, total / 1e9, floor_s,
            " %.2f |" % (total / (median * 1e9)) if median else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
