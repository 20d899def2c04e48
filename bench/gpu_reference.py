#!/usr/bin/env python3
"""Times the official LlamaGen generate() on a GPU, for bench/gpu.sh.

    gpu_reference.py --upstream DIR --gpt-ckpt gpt.pt [--vq-ckpt vq.pt] [--gpt-model GPT-B]
        [--image-size 384] [--classes 207] [--n 8] [--seed 0] [--cfg 4.0] [--top-k 2000]
        [--top-p 1.0] [--temperature 1.0] [--precision bf16,none] [--runs 3] [--fp32-runs N]
        [--warmup-tokens 64] [--decode-runs 2] [--tf32 on|off] [--max-seconds S]
        [--tokens-out FILE] [--device cuda] [--json FILE]

Imports the upstream modules from an export of FoundationVision/LlamaGen (--upstream, default
$LLAMAGEN_UPSTREAM, else bench/upstream/LlamaGen made by bench/fetch_upstream.sh; nothing of
it is in this repository) and follows autoregressive/sample/sample_c2i.py: the GPT built by
GPT_models[...] and moved to the device in the chosen precision (`--precision bf16` is
upstream's default; `none` is fp32, with TF32 matrix products allowed exactly as
sample_c2i.py sets them unless --tf32 off), the checkpoint loaded with strict=False, and
generate(model, c_indices, latent_size ** 2, cfg_scale, cfg_interval, temperature, top_k,
top_p, sample_logits=True), eager (no torch.compile, sample_c2i.py's default). The VQ model
stays fp32, as upstream, and decode_code is timed separately.

Workload: --n images of each class in --classes (default 8 of class 207: with CFG that is
16 sequences, the paper's serving table). For each precision in --precision order: one
warm-up generate() of --warmup-tokens tokens (module loading, cuBLAS handles; 0 = a
full-length warm-up), then timed runs, each seeded with torch.manual_seed(--seed) and timed
by the host clock between two torch.cuda.synchronize() calls. The first precision gets
--runs runs, later ones --fp32-runs (default: --runs). With --max-seconds, runs after the
first of a precision (and later precisions) are left out when they would end past that
many seconds from the start; what was left out is reported.

Two deviations from sample_c2i.py, neither of which changes what is timed:
  - the GPT's random initialisation is skipped (upstream's initialize_weights; sample_c2i
    already skips nn.Linear's): every parameter is then loaded from the checkpoint, which is
    checked (no missing keys; the only unexpected key allowed is freqs_cis);
  - the checkpoint is read once and loaded into one model per precision.
Runtime shims from bench/upstream_llamagen.py are installed only where this torch lacks
what upstream uses (none on torch 2.x); if torch.backends.cuda.sdp_kernel is gone, it is
replaced by torch.nn.attention.sdpa_kernel with the same backends (upstream asks for math).

--tokens-out writes the tokens of the first precision's last run, one image per line
(classes in order, --n images each); with --top-k 1 the draw is greedy, which is what
bench/gpu.sh compares with Tessera (--precision none --tf32 off against --device cuda-fp32).

Prints one JSON object (to --json FILE too); logs go to stderr.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import upstream_llamagen as shims  # noqa: E402  (the torch 1.13 shims; no-ops on torch 2.x)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": torch.float32,
              "fp32": torch.float32}


def install_sdp_kernel_shim():
    """torch.backends.cuda.sdp_kernel(enable_flash=, enable_mem_efficient=, enable_math=):
    deprecated since torch 2.3; if this torch no longer has it, map it onto
    torch.nn.attention.sdpa_kernel with the same choice of backends."""
    try:
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False,
                                            enable_math=True):
            pass
        return
    except (AttributeError, TypeError):
        pass
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return  # torch 1.13 on the CPU: upstream_llamagen's no-op shim covers it

    def sdp_kernel(enable_flash=True, enable_mem_efficient=True, enable_math=True,
                   enable_cudnn=True):
        backends = [b for b, on in ((SDPBackend.FLASH_ATTENTION, enable_flash),
                                    (SDPBackend.EFFICIENT_ATTENTION, enable_mem_efficient),
                                    (SDPBackend.MATH, enable_math),
                                    (SDPBackend.CUDNN_ATTENTION, enable_cudnn)) if on]
        return sdpa_kernel(backends)

    torch.backends.cuda.sdp_kernel = sdp_kernel
    shims.SHIMS.append("torch.backends.cuda.sdp_kernel -> torch.nn.attention.sdpa_kernel")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_up = os.environ.get("LLAMAGEN_UPSTREAM") or os.path.join(_HERE, "upstream", "LlamaGen")
    ap.add_argument("--upstream", default=default_up, help="LlamaGen export (default %(default)s)")
    ap.add_argument("--gpt-ckpt", required=True)
    ap.add_argument("--vq-ckpt", help="time decode_code too")
    ap.add_argument("--gpt-model", default="GPT-B")
    ap.add_argument("--vq-model", default="VQ-16")
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--downsample-size", type=int, default=16)
    ap.add_argument("--codebook-size", type=int, default=16384)
    ap.add_argument("--codebook-embed-dim", type=int, default=8)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--classes", default="207", help="comma-separated class ids")
    ap.add_argument("--n", type=int, default=8, help="images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--cfg-interval", type=float, default=-1)
    ap.add_argument("--top-k", type=int, default=2000)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--precision", default="bf16,none",
                    help="comma-separated, timed in this order: bf16, fp16, none (= fp32)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of the first precision")
    ap.add_argument("--fp32-runs", type=int, help="timed runs of later precisions (default --runs)")
    ap.add_argument("--warmup-tokens", type=int, default=64,
                    help="tokens of the warm-up generate(); 0 = full length")
    ap.add_argument("--decode-runs", type=int, default=2, help="timed decode_code runs")
    ap.add_argument("--tf32", choices=("on", "off"), default="on",
                    help="TF32 for fp32 matrix products (on: as sample_c2i.py)")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="time budget; 0 = none")
    ap.add_argument("--tokens-out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    a.class_ids = [int(x) for x in a.classes.split(",") if x.strip()]
    a.precisions = [p.strip() for p in a.precision.split(",") if p.strip()]
    for p in a.precisions:
        if p not in PRECISIONS:
            ap.error("unknown precision %r (bf16, fp16, none)" % p)
    if not a.precisions or not a.class_ids or a.n < 1 or a.runs < 1:
        ap.error("need at least one precision, one class, --n >= 1 and --runs >= 1")
    if a.fp32_runs is None:
        a.fp32_runs = a.runs
    if not os.path.isfile(os.path.join(a.upstream, "autoregressive", "models", "generate.py")):
        ap.error("--upstream %s is not a LlamaGen export (no autoregressive/models/generate.py); "
                 "run bench/fetch_upstream.sh" % a.upstream)
    return a


def log(msg):
    print("gpu_reference: " + msg, file=sys.stderr, flush=True)


def main(argv=None):
    a = parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + a.max_seconds if a.max_seconds > 0 else None
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_reference: torch %s sees no CUDA device" % torch.__version__)

    # As sample_c2i.py.
    torch.backends.cuda.matmul.allow_tf32 = a.tf32 == "on"
    torch.backends.cudnn.allow_tf32 = a.tf32 == "on"
    torch.set_float32_matmul_precision("high" if a.tf32 == "on" else "highest")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.set_grad_enabled(False)
    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)

    install_sdp_kernel_shim()
    shims.install_import_shims()
    sys.path.insert(0, os.path.abspath(a.upstream))
    from autoregressive.models import generate as upstream_generate
    from autoregressive.models import gpt as upstream_gpt
    from tokenizer.tokenizer_image.vq_model import VQ_models
    shims.install_generate_shims(upstream_generate)
    # Every parameter is loaded from the checkpoint below (checked), so upstream's random
    # initialisation of the GPT only costs time.
    upstream_gpt.Transformer.initialize_weights = lambda self: None

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    ckpt = torch.load(a.gpt_ckpt, map_location="cpu")
    weights = next((ckpt[k] for k in ("model", "module", "state_dict")
                    if isinstance(ckpt, dict) and k in ckpt), ckpt)
    read_s = time.perf_counter() - t0
    n_params = sum(v.numel() for k, v in weights.items() if k != "freqs_cis")
    log("read %s (%.1f M parameters) in %.1f s; torch %s, shims: %s"
        % (a.gpt_ckpt, n_params / 1e6, read_s, torch.__version__, ", ".join(shims.SHIMS) or "none"))

    latent = a.image_size // a.downsample_size
    cond = torch.tensor([c for c in a.class_ids for _ in range(a.n)], device=dev)
    n_images = cond.shape[0]
    out = {
        "gpt_model": a.gpt_model, "image_size": a.image_size, "tokens_per_image": latent ** 2,
        "n_images": n_images, "n_seqs": n_images * (2 if a.cfg > 1.0 else 1),
        "classes": a.class_ids, "cfg": a.cfg, "top_k": a.top_k, "top_p": a.top_p,
        "temperature": a.temperature, "seed": a.seed, "tf32": a.tf32 == "on",
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(dev) if cuda else str(dev),
        "upstream": os.path.abspath(a.upstream), "shims": shims.SHIMS,
        "gpt_params": n_params, "checkpoint_read_s": read_s, "precisions": {},
        "deviations": ["GPT random init skipped (all parameters loaded, checked)",
                       "checkpoint read once, loaded into one model per precision"],
    }
    if a.max_seconds > 0:
        out["max_seconds"] = a.max_seconds

    def time_left():
        return None if deadline is None else deadline - time.monotonic()

    last_seq = None
    first = True
    for prec in a.precisions:
        want = a.runs if first else a.fp32_runs
        rec = {"runs_wanted": want, "runs_s": []}
        out["precisions"][prec] = rec
        est = None
        if not first and deadline is not None:
            prev = [r for p in out["precisions"].values() for r in p.get("runs_s", [])]
            est = 1.3 * max(prev) + 5 if prev else None
            if est is not None and time_left() < est:
                rec["skipped"] = "time budget (%.0f s left, one run needs ~%.0f s)" % (time_left(), est)
                log("%s %s: skipped: %s" % (a.gpt_model, prec, rec["skipped"]))
                continue
        t0 = time.perf_counter()
        model = upstream_gpt.GPT_models[a.gpt_model](
            vocab_size=a.codebook_size, block_size=latent ** 2, num_classes=a.num_classes,
            cls_token_num=1, model_type="c2i",
        ).to(device=dev, dtype=PRECISIONS[prec])
        res = model.load_state_dict(weights, strict=False)
        if res.missing_keys or set(res.unexpected_keys) - {"freqs_cis"}:
            sys.exit("gpu_reference: %s does not fit %s: missing %s, unexpected %s"
                     % (a.gpt_ckpt, a.gpt_model, res.missing_keys[:8], res.unexpected_keys[:8]))
        model.eval()
        sync()
        rec["build_s"] = time.perf_counter() - t0
        if cuda:
            rec["weights_bytes_on_device"] = torch.cuda.memory_allocated(dev)

        def gen(n_tokens):
            return upstream_generate.generate(
                model, cond, n_tokens, cfg_scale=a.cfg, cfg_interval=a.cfg_interval,
                temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, sample_logits=True)

        torch.manual_seed(a.seed)
        sync()
        t0 = time.perf_counter()
        gen(a.warmup_tokens if a.warmup_tokens > 0 else latent ** 2)
        sync()
        rec["warmup_s"] = time.perf_counter() - t0
        rec["warmup_tokens"] = a.warmup_tokens if a.warmup_tokens > 0 else latent ** 2
        for r in range(want):
            if r > 0 and deadline is not None and time_left() < 1.1 * max(rec["runs_s"]):
                rec["cut"] = "time budget: %d of %d runs" % (r, want)
                log("%s %s: %s" % (a.gpt_model, prec, rec["cut"]))
                break
            torch.manual_seed(a.seed)
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            sync()
            t0 = time.perf_counter()
            seq = gen(latent ** 2)
            sync()
            dt = time.perf_counter() - t0
            rec["runs_s"].append(dt)
            if cuda:
                rec["peak_bytes"] = torch.cuda.max_memory_allocated(dev)
            log("%s %s run %d: %.3f s (%.1f ms per step)" % (a.gpt_model, prec, r + 1, dt,
                                                           1e3 * dt / latent ** 2))
            if first:
                last_seq = seq
        rec["median_s"] = statistics.median(rec["runs_s"])
        kv = 0
        for layer in model.layers:
            c = layer.attention.kv_cache
            if c is not None:
                kv += c.k_cache.numel() * c.k_cache.element_size()
                kv += c.v_cache.numel() * c.v_cache.element_size()
        rec["kv_cache_bytes"] = kv
        del model
        if cuda:
            torch.cuda.empty_cache()
        first = False

    if a.tokens_out and last_seq is not None:
        with open(a.tokens_out, "w") as f:
            for row in last_seq.tolist():
                f.write(" ".join(str(int(t)) for t in row) + "\n")

    if a.vq_ckpt and a.decode_runs > 0 and last_seq is not None:
        left = time_left()
        if left is not None and left < 10:
            out["decode"] = {"skipped": "time budget (%.0f s left)" % left}
        else:
            vq = VQ_models[a.vq_model](codebook_size=a.codebook_size,
                                       codebook_embed_dim=a.codebook_embed_dim)
            vq.to(dev)
            vq.eval()
            vq.load_state_dict(torch.load(a.vq_ckpt, map_location="cpu")["model"])
            qzshape = [n_images, a.codebook_embed_dim, latent, latent]
            runs = []
            for r in range(a.decode_runs + 1):   # r == 0: untimed warm-up
                sync()
                t0 = time.perf_counter()
                samples = vq.decode_code(last_seq, qzshape)
                sync()
                if r:
                    runs.append(time.perf_counter() - t0)
            assert samples.shape == (n_images, 3, a.image_size, a.image_size), samples.shape
            out["decode"] = {"runs_s": runs, "median_s": statistics.median(runs)}
            log("%s decode_code, %d images: %s s" % (a.gpt_model, n_images,
                                                    ", ".join("%.3f" % x for x in runs)))
    out["wall_s"] = time.monotonic() - t_start
    text = json.dumps(out)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
