#!/usr/bin/python3
"""Times the fp32 PyTorch reference of LlamaGen text-to-image on a converted t2i model folder
(the one `tools/convert.py llamagen --gpt ... --vq ... --t5 DIR` writes): the prompt's T5
encoding, the GPT's token generation and the VQ decode, each timed apart.

    reference_t2i.py --model DIR --prompt TEXT [--seed 0] [--cfg 7.5] [--cfg-interval -1]
                     [--top-k 1000] [--top-p 1.0] [--temperature 1.0] [--n 1]
                     [--threads 2] [--gemm-threads 1] [--tokens-out FILE] [--no-decode]
    reference_t2i.py --probe-gemm [--threads 2]

The pipeline is upstream's (language/t5.py's T5Embedder, autoregressive/sample/
sample_t2i.py, generate.py), through the project's own references:
  1. T5 encoding (t5_s): the caption cleaning (tests/reference/t5_clean_ref.py,
     clean_caption twice), T5's sentencepiece tokenizer on the folder's spiece.model with
     Hugging Face's T5Tokenizer semantics (truncation to cls_token_num - 1 pieces, </s>,
     padding to cls_token_num = 120 with the pad id), the T5 encoder over all 120 positions
     with the attention mask (tests/reference/t5_ref.py: T5EncoderModel's
     last_hidden_state), and sample_t2i.py's left padding;
  2. tokens (tokens_s): the GPT's KV-cached generate() with the full 120-position text
     prefix, generate.py's mask and CFG as [cond; uncond] with the learned null caption
     (tests/reference/llamagen_t2i_ref.py); the caption projection (cap_proj) runs here, in
     the prefill, as upstream's does;
  3. decode (decode_s): the VQ decoder (tests/reference/llamagen_ref.py) and the uint8
     pixel mapping.
All in fp32; a bf16 folder is upcast on load, so the reference then computes on exactly the
bf16-rounded weights. --n B makes B images of the prompt in one batch (2B sequences with
CFG); the prompt is encoded once and its features repeated (as Tessera's CLI does).

Prints one JSON line on stdout: {"load_s", "t5_s", "tokens_s", "decode_s", "text_tokens",
"tokens", "n_images", "threads", "blas", "torch"}; logs go to stderr. --tokens-out writes
each image's tokens in raster order, space-separated, one image per line (the format of
`tessera generate --tokens-out`).

On the CPU it runs at its best on a small machine (/work/shared/docs/benchmarking.md):
OpenBLAS with one thread, set here before torch is imported, and torch's intra-op pool with
the cores (--threads). That setting was measured on decode steps, products of 2 rows where
two thread pools on two cores fight. The T5 encoder (120 rows) and the GPT's prefill (240
rows with CFG) are large matrix products that torch hands to OpenBLAS whole, so with one
OpenBLAS thread they use one core: --gemm-threads N gives OpenBLAS N threads while they run
(openblas_set_num_threads, through ctypes) and 1 again for the decode steps.
--probe-gemm times a T5-sized product (120 x 2048 by 2048 x 5120) with 1 and with --threads
OpenBLAS threads, interleaved, best of 7 each, and prints {"1": GFLOP/s, "N": GFLOP/s}, so
that a benchmark can pick the faster.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(_ROOT, "tools"))

import sentencepiece  # noqa: E402
import torch  # noqa: E402

import llamagen_ref  # noqa: E402
import llamagen_t2i_ref  # noqa: E402
import stfile  # noqa: E402
import t5_clean_ref  # noqa: E402
import t5_ref  # noqa: E402


def blas_library():
    """The BLAS shared object this process has mapped (after a matmul has run)."""
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "blas" in line.rsplit("/", 1)[-1]}
    return ", ".join(sorted(libs)) or "unknown"


def openblas():
    """ctypes handle of the OpenBLAS this process has mapped, or None (call after a matmul)."""
    import ctypes
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f
                       if line.rsplit("/", 1)[-1].startswith("libopenblas")})
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_set_num_threads
            return lib
        except (OSError, AttributeError):
            continue
    return None


class BlasThreads:
    """Switches OpenBLAS between 1 thread and n (a no-op when n is 1)."""

    def __init__(self, n):
        self.n = n
        self.lib = None
        if n > 1:
            torch.randn(8, 8) @ torch.randn(8, 8)       # maps the BLAS library
            self.lib = openblas()
            if self.lib is None:
                sys.exit("--gemm-threads %d: this torch is not running on OpenBLAS" % n)

    def many(self):
        if self.lib:
            self.lib.openblas_set_num_threads(self.n)

    def one(self):
        if self.lib:
            self.lib.openblas_set_num_threads(1)


def probe_gemm(threads):
    """GFLOP/s of a T5-sized product with 1 and with `threads` OpenBLAS threads."""
    torch.manual_seed(0)
    a, b = torch.randn(120, 2048), torch.randn(5120, 2048)
    blas = BlasThreads(max(threads, 2))
    best = {1: float("inf"), threads: float("inf")}
    for _ in range(7):
        for n in sorted(best):
            blas.lib.openblas_set_num_threads(n)
            a @ b.t()
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b.t()
            best[n] = min(best[n], (time.perf_counter() - t0) / 4)
    blas.one()
    return {str(n): round(2.0 * 120 * 2048 * 5120 / t / 1e9, 1) for n, t in best.items()}


def hf_t5_tokenize(sp, text, max_len):
    """T5Tokenizer(text, max_length=max_len, padding="max_length", truncation=True):
    (ids [max_len], count of valid ids, </s> included)."""
    ids = sp.encode(text)[:max_len - 1] + [sp.eos_id()]
    return ids + [sp.pad_id()] * (max_len - len(ids)), len(ids)


def load_folder(path):
    """(T2iGptRef, T5EncoderRef, SentencePieceProcessor, VqDecoderRef or None, config)."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    g = config.get("gpt", {})
    if config.get("family") != "llamagen" or g.get("model_type") != "t2i" or "t5" not in config:
        sys.exit("%s is not a LlamaGen text-to-image folder (family llamagen, a t2i gpt "
                 "section and a t5 section)" % path)
    gpt = llamagen_t2i_ref.T2iGptRef(g, stfile.load(os.path.join(path, g["file"])))
    t5 = config["t5"]
    enc = t5_ref.T5EncoderRef.from_section(t5, stfile.load(os.path.join(path, t5["file"])))
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(path, t5["tokenizer"]))
    vq = None
    if "vq" in config:
        v = config["vq"]
        vq = llamagen_ref.VqDecoderRef(v, stfile.load(os.path.join(path, v["file"])))
    return gpt, enc, sp, vq, config


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Tessera LlamaGen t2i folder (config.json)")
    ap.add_argument("--prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--cfg-interval", type=float, default=-1)
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=1, help="images of the prompt in one batch")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--gemm-threads", type=int, default=1,
                    help="OpenBLAS threads for the T5 encoder and the GPT prefill")
    ap.add_argument("--probe-gemm", action="store_true",
                    help="print the GFLOP/s of a T5-sized product with 1 and --threads "
                         "OpenBLAS threads, and exit")
    ap.add_argument("--tokens-out", help="write each image's tokens, one line per image")
    ap.add_argument("--no-decode", action="store_true", help="tokens only, no VQ decode")
    args = ap.parse_args(argv)
    if args.n < 1 or args.gemm_threads < 1 or args.threads < 1:
        ap.error("--n, --threads and --gemm-threads must be >= 1")

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.probe_gemm:
        print(json.dumps(probe_gemm(args.threads)))
        return 0
    if not args.model or args.prompt is None:
        ap.error("--model and --prompt are required")
    blas = BlasThreads(args.gemm_threads)

    t0 = time.perf_counter()
    gpt, enc, sp, vq, config = load_folder(args.model)
    load_s = time.perf_counter() - t0
    if vq is None and not args.no_decode:
        sys.exit("%s has no VQ decoder; use --no-decode" % args.model)
    print("loaded %s in %.2f s, torch %s, %d threads" % (args.model, load_s, torch.__version__,
                                                       torch.get_num_threads()), file=sys.stderr)
    if blas.lib:
        # The prefill (every text position at once) with n OpenBLAS threads, the decode
        # steps (one position) with 1.
        forward = gpt.forward

        def forward_switching(h, *rest):
            if h.shape[1] == 1:
                return forward(h, *rest)
            blas.many()
            try:
                return forward(h, *rest)
            finally:
                blas.one()
        gpt.forward = forward_switching

    # 1. The prompt's T5 features, left-padded (T5Embedder.get_text_embeddings, then
    #    sample_t2i.py's flip).
    max_len = gpt.T
    t0 = time.perf_counter()
    ids, n_text = hf_t5_tokenize(sp, t5_clean_ref.text_preprocessing(args.prompt), max_len)
    ids = torch.tensor([ids], dtype=torch.long)
    mask = (torch.arange(max_len)[None, :] < n_text).long()
    blas.many()
    feats = enc(ids, mask)                                       # [1, 120, d_model]
    blas.one()
    embs, emb_masks = llamagen_t2i_ref.left_pad(feats, mask)
    t5_s = time.perf_counter() - t0
    print("prompt: %d text tokens, encoded in %.3f s" % (n_text, t5_s), file=sys.stderr)

    # 2. Tokens.
    embs = embs.repeat(args.n, 1, 1)
    emb_masks = emb_masks.repeat(args.n, 1)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    tokens = gpt.generate(embs, emb_masks, cfg_scale=args.cfg, cfg_interval=args.cfg_interval,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          generator=gen)
    tokens_s = time.perf_counter() - t0
    print("%d image(s): tokens %.2f s" % (args.n, tokens_s), file=sys.stderr)

    # 3. Decode.
    decode_s = 0.0
    if not args.no_decode:
        t0 = time.perf_counter()
        image = llamagen_ref.to_uint8(vq.decode(tokens))
        decode_s = time.perf_counter() - t0
        assert image.shape[0] == args.n

    if args.tokens_out:
        with open(args.tokens_out, "w") as f:
            for row in tokens.tolist():
                f.write(" ".join(str(int(t)) for t in row) + "\n")
    print(json.dumps({"load_s": load_s, "t5_s": t5_s, "tokens_s": tokens_s,
                      "decode_s": decode_s, "text_tokens": n_text,
                      "tokens": int(tokens.shape[1]), "n_images": args.n,
                      "image_size": config["image_size"], "threads": torch.get_num_threads(),
                      "gemm_threads": args.gemm_threads,
                      "blas": blas_library(), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
