#!/usr/bin/python3
"""Times the fp32 PyTorch reference of MaskGen-VQ + TA-TiTok + CLIP on a model folder.

    reference_maskgen.py --model DIR --prompt TEXT [--steps 16] [--guidance 12]
                         [--randomize-temperature 0] [--aesthetic 6.5] [--threads 2]
                         [--tokens-out FILE]

Loads the converted folder Tessera loads (tests/reference/maskgen_ref.py; bf16 weights are
upcast to fp32, so both compute on the same values) and runs upstream's pipeline for one
image: CLIP text (prompt and the empty prompt), generate() with CFG as [cond; uncond], and
the decoder, timing each part. Prints one JSON line: {"load_s", "text_s", "steps_s",
"decode_s", "tokens", "threads", "blas"}. OpenBLAS is held to one thread and torch gets the
cores, the reference's best setting on a small CPU (docs/benchmarks.md).
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "tests", "reference"))

import torch  # noqa: E402

import maskgen_ref  # noqa: E402


def blas_library():
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "blas" in line.rsplit("/", 1)[-1]}
    return ", ".join(sorted(libs)) or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=12.0)
    ap.add_argument("--randomize-temperature", type=float, default=0.0)
    ap.add_argument("--aesthetic", type=float, default=6.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens-out")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pipe = maskgen_ref.load_model_dir(a.model)
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        _, penult, final, pooled = pipe.encode([a.prompt])
        _, null_penult, _, null_pooled = pipe.encode([""])
        text_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = pipe.generator.generate(penult, pooled, null_penult, null_pooled,
                                         guidance_scale=a.guidance,
                                         randomize_temperature=a.randomize_temperature,
                                         aesthetic=a.aesthetic, steps=a.steps)
        steps_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe.decoder.decode_tokens(tokens, final)
        decode_s = time.perf_counter() - t0
    toks = [int(t) for t in tokens[0].tolist()]
    if a.tokens_out:
        with open(a.tokens_out, "w") as f:
            f.write(" ".join(map(str, toks)) + "\n")
    print(json.dumps({"load_s": load_s, "text_s": text_s, "steps_s": steps_s,
                      "decode_s": decode_s, "tokens": toks, "threads": a.threads,
                      "blas": blas_library()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
