#!/usr/bin/python3
"""Times the PyTorch reference of FQGAN class-to-image (tests/reference/fqgan_ref.py) on a
model folder: FAR generate() + the factorized tokenizer's decode.

    reference_fqgan.py --model DIR [--class 207] [--seed 0] [--cfg 2.0] [--top-k 0]
                       [--top-p 1.0] [--temperature 1.0] [--n 1] [--threads 2]
                       [--device cpu|cuda] [--dtype fp32|bf16] [--warmup 0] [--split]
                       [--tokens-out FILE] [--no-decode]

Loads the same converted folder Tessera loads (a bf16 folder is upcast to fp32 on load, so
the reference then computes on exactly the bf16-rounded weights) and runs upstream's
generate_fq semantics, KV-cached as upstream's generate is (trunk cache across positions, a
fresh k-slot head cache per position; CFG as [cond; uncond], guidance per sub-token), then
decodes with the tokenizer's decoder, timing tokens and decode apart.

Per-phase split: every LlamaGen block call is timed and summed by where it runs, the trunk
(`layers.*`) or the per-position AR head (`ar_head.*`); "rest" is the token time outside
both (embeddings and aggregation_layer, the final norm, the k output projections, the CFG
mix and sampling). On the CPU the timers are always on (they add microseconds to steps of
tens of milliseconds). On CUDA they need a synchronize around every block, which changes
what is timed, so there they run only with --split (use a separate run for the split).

--device cuda puts the weights on the GPU; --dtype bf16 then computes in bf16 as upstream's
sample script does (--precision bf16), keeping upstream's fp32 islands: RoPE and RMSNorm
compute in fp32 and return the input's dtype, logits are fp32 (bf16 on the CPU runs the
same code, to test it; it is not a measurement). fp32 on CUDA runs with TF32
off (the greedy parity check). The decoder always runs in fp32, as upstream's.
--warmup N runs N untimed generations first (GPU: cuBLAS, allocator); --n B makes B images
of the class in one batch (2B sequences with CFG).

Prints one JSON line on stdout: {"load_s", "tokens_s", "decode_s", "positions", "n_sub",
"n_images", "trunk_s", "head_s", "rest_s", "trunk_calls", "head_calls", "threads",
"device", "dtype", "blas", "torch"}; trunk_s/head_s/rest_s are null when not measured. Logs go
to stderr. --tokens-out writes the first image's sub-tokens as Tessera's --tokens-out does:
position-major, sub-token 1 (the visual code) first, one line.

On the CPU it runs at its best on a small machine (/work/shared/docs/benchmarking.md):
OpenBLAS with one thread, set here before torch is imported, and torch's intra-op pool with
the cores (--threads).
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

import fqgan_ref  # noqa: E402
import llamagen_ref  # noqa: E402


def blas_library():
    """The BLAS shared object this process has mapped (after a matmul has run)."""
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "blas" in line.rsplit("/", 1)[-1]}
    return ", ".join(sorted(libs)) or "unknown"


def to_device(far, vq, device, dtype):
    """Moves the reference's weight dicts (and RoPE table) to device; FAR in dtype, the
    decoder in fp32. The rotary table stays fp32, as upstream keeps freqs_cis."""
    far.w = {k: v.to(device=device, dtype=dtype) for k, v in far.w.items()}
    far.rope = far.rope.to(device)
    vq.w = {k: v.to(device=device) for k, v in vq.w.items()}


def upstream_bf16_islands():
    """fqgan_ref computes in fp32 throughout; in bf16, upstream's RMSNorm and RoPE compute in
    fp32 and cast back to the input's dtype. Patch the two helpers to do that, where the
    blocks (llamagen_ref.llama_block) and FAR's final norm (fqgan_ref) look them up."""
    lref = fqgan_ref.lref
    rope = lref.apply_rope

    def apply_rope(x, table):
        return rope(x, table).type_as(x)

    def rms_norm(x, weight, eps):
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)).type_as(x) \
            * weight

    lref.apply_rope = apply_rope
    lref.rms_norm = rms_norm
    fqgan_ref.rms_norm = rms_norm


class BlockTimer:
    """Wraps far._block: sums wall time of trunk and head block calls. With sync, waits for
    the device before and after each call (CUDA)."""

    def __init__(self, far, sync):
        self.inner = far._block
        self.sync = sync
        self.reset()
        far._block = self

    def reset(self):
        self.s = {"trunk": 0.0, "head": 0.0}
        self.calls = {"trunk": 0, "head": 0}

    def __call__(self, p, *args):
        part = "head" if p.startswith("ar_head.") else "trunk"
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.inner(p, *args)
        if self.sync:
            torch.cuda.synchronize()
        self.s[part] += time.perf_counter() - t0
        self.calls[part] += 1
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Tessera FQGAN model folder (config.json)")
    ap.add_argument("--class", dest="cls", type=int, default=207)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=1, help="images of the class in one batch")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="FAR compute dtype (bf16: for cuda; on the CPU only to test the path)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed generations first")
    ap.add_argument("--split", action="store_true",
                    help="CUDA: time trunk and head blocks (synchronizes around every block)")
    ap.add_argument("--tokens-out", help="write image 0's sub-tokens, space-separated, one line")
    ap.add_argument("--no-decode", action="store_true", help="tokens only, no decode")
    args = ap.parse_args(argv)
    if args.dtype == "bf16" and args.device != "cuda":
        print("reference_fqgan.py: --dtype bf16 on the CPU exercises the GPU's bf16 path only "
              "(slow; not a measurement)", file=sys.stderr)
    if args.n < 1:
        ap.error("--n must be >= 1")

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            sys.exit("reference_fqgan.py: --device cuda, but torch %s has no usable CUDA"
                     % torch.__version__)
        # fp32 means fp32: no TF32 (the greedy check); bf16 matmuls are unaffected.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    t0 = time.perf_counter()
    far, vq, config = fqgan_ref.load_model_dir(args.model)
    if far is None:
        sys.exit("%s has no FAR generator (a decode-only folder)" % args.model)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if cuda or args.dtype == "bf16":
        to_device(far, vq, args.device, dtype)
    if args.dtype == "bf16":
        upstream_bf16_islands()
    if cuda:
        # fqgan_ref makes its index tensors (positions, masks) with torch.tensor/arange.
        if hasattr(torch, "set_default_device"):
            torch.set_default_device("cuda")
        else:
            torch.set_default_tensor_type(torch.cuda.FloatTensor)
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    timer = BlockTimer(far, sync=cuda) if (not cuda or args.split) else None
    print("loaded %s in %.2f s, torch %s, %s %s, %d threads"
          % (args.model, load_s, torch.__version__, args.device, args.dtype,
             torch.get_num_threads()), file=sys.stderr)

    def generate():
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        return far.generate([args.cls] * args.n, cfg_scale=args.cfg,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            generator=gen)

    for i in range(args.warmup):
        generate()
        print("warm-up %d/%d done" % (i + 1, args.warmup), file=sys.stderr)
    if cuda:
        torch.cuda.synchronize()
    if timer:
        timer.reset()
    t0 = time.perf_counter()
    tokens = generate()                       # [n, positions, k]
    if cuda:
        torch.cuda.synchronize()
    tokens_s = time.perf_counter() - t0

    decode_s = 0.0
    if not args.no_decode:
        t0 = time.perf_counter()
        image = llamagen_ref.to_uint8(vq.decode(tokens))
        if cuda:
            torch.cuda.synchronize()
        decode_s = time.perf_counter() - t0
        assert image.shape[0] == args.n

    if args.tokens_out:
        with open(args.tokens_out, "w") as f:
            f.write(" ".join(str(int(t)) for t in tokens[0].reshape(-1).tolist()) + "\n")
    split = {"trunk_s": None, "head_s": None, "rest_s": None, "trunk_calls": None,
             "head_calls": None}
    if timer:
        split = {"trunk_s": timer.s["trunk"], "head_s": timer.s["head"],
                 "rest_s": tokens_s - timer.s["trunk"] - timer.s["head"],
                 "trunk_calls": timer.calls["trunk"], "head_calls": timer.calls["head"]}
    out = {"load_s": load_s, "tokens_s": tokens_s, "decode_s": decode_s,
           "positions": int(tokens.shape[1]), "n_sub": int(tokens.shape[2]),
           "n_images": args.n, "threads": torch.get_num_threads(), "device": args.device,
           "dtype": args.dtype, "blas": blas_library() if not cuda else None,
           "torch": torch.__version__}
    out.update(split)
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
