#!/usr/bin/python3
"""Times the fp32 PyTorch reference (tests/reference/llamagen_ref.py) on a model folder.

    reference_llamagen.py --model DIR [--class 207] [--seed 0] [--cfg 4.0] [--top-k 2000]
                          [--top-p 1.0] [--temperature 1.0] [--threads 2]
                          [--tokens-out FILE] [--no-decode]

Loads the same converted folder Tessera loads (a bf16 folder is upcast to fp32 on load, so
the reference then computes on exactly the bf16-rounded weights), generates one image with
upstream's KV-cached generate() semantics (CFG as [cond; uncond]) and decodes it with the
VQ decoder, timing the two parts separately. Prints one JSON line on stdout:
{"load_s", "tokens_s", "decode_s", "tokens", "threads", "blas"}; logs go to stderr.

Run it at its best on a small CPU (docs/benchmarks.md): OpenBLAS with one thread and torch's
own intra-op pool with the cores. OPENBLAS_NUM_THREADS is set here, before torch is
imported, so the setting cannot be forgotten.
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

import llamagen_ref  # noqa: E402


def blas_library():
    """The BLAS shared object this process has mapped (after a matmul has run)."""
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "blas" in line.rsplit("/", 1)[-1]}
    return ", ".join(sorted(libs)) or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Tessera model folder (config.json)")
    ap.add_argument("--class", dest="cls", type=int, default=207)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=2000)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--tokens-out", help="write the tokens, space-separated, one line")
    ap.add_argument("--no-decode", action="store_true", help="tokens only, no VQ decode")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    gpt, vq, _ = llamagen_ref.load_model_dir(args.model)
    load_s = time.perf_counter() - t0
    if vq is None and not args.no_decode:
        sys.exit("%s has no VQ decoder; use --no-decode" % args.model)
    print("loaded %s in %.2f s, torch %s, %d threads" % (args.model, load_s, torch.__version__,
                                                       torch.get_num_threads()), file=sys.stderr)

    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    tokens = gpt.generate([args.cls], cfg_scale=args.cfg, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, generator=gen)
    tokens_s = time.perf_counter() - t0

    decode_s = 0.0
    if not args.no_decode:
        t0 = time.perf_counter()
        image = llamagen_ref.to_uint8(vq.decode(tokens))
        decode_s = time.perf_counter() - t0
        assert image.shape[0] == 1

    if args.tokens_out:
        with open(args.tokens_out, "w") as f:
            f.write(" ".join(str(int(t)) for t in tokens[0]) + "\n")
    print(json.dumps({"load_s": load_s, "tokens_s": tokens_s, "decode_s": decode_s,
                      "tokens": int(tokens.shape[1]), "threads": torch.get_num_threads(),
                      "blas": blas_library()}))


if __name__ == "__main__":
    main()
