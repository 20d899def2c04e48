#!/usr/bin/python3
"""Times the official LlamaGen generate() + decode_code on the CPU, for side-by-side runs.

    LLAMAGEN_UPSTREAM=/path/to/LlamaGen upstream_llamagen.py --gpt-ckpt gpt.pt --vq-ckpt vq.pt
        [--upstream PATH] [--gpt-model GPT-B] [--vq-model VQ-16] [--image-size 256]
        [--class 207] [--seed 0] [--cfg 4.0] [--top-k 2000] [--top-p 1.0]
        [--temperature 1.0] [--threads 2] [--tokens-out FILE] [--no-decode]

Imports the upstream modules from a checkout of FoundationVision/LlamaGen (nothing of it is
copied here) and follows autoregressive/sample/sample_c2i.py with --precision none (fp32):
the same model construction, checkpoint loading (DDP {"model": ...} or a bare state dict,
strict=False as upstream) and generate()/decode_code calls, one image, one class.

Upstream targets torch 2; Debian's torch 1.13 lacks a few things it touches, so this
driver shims them at runtime, only where they are missing:
  - F.scaled_dot_product_attention: the math path (q k^T * 1/sqrt(d), boolean mask or
    causal, softmax, @ v), which is what upstream asks torch 2 for anyway
    (sdp_kernel(enable_math=True) in decode_n_tokens);
  - `with torch.device(device):` in generate(): on the CPU the default device already is
    the target, so the with-statement gets a no-op context manager (only inside the
    generate module; torch.device is untouched elsewhere);
  - torch 1.13 indexes only with int64 tensors, and generate() makes its input_pos
    torch.int: inside the generate module torch.int is mapped to torch.long;
  - `import torch._dynamo.config` / `torch._inductor.config`: empty stand-in modules
    (upstream only imports them; torch.compile is off as in sample_c2i.py by default);
  - torch.backends.cuda.sdp_kernel(enable_mem_efficient=...): 1.13's prototype lacks that
    keyword; a no-op context manager (it only selects among CUDA attention kernels).
Prints one JSON line on stdout: {"load_s", "tokens_s", "decode_s", "tokens", "threads",
"shims"}; logs go to stderr.
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHIMS = []


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """torch 2's F.scaled_dot_product_attention, math path, for torch 1.13."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    attn = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ value


def install_import_shims():
    if not hasattr(F, "scaled_dot_product_attention"):
        F.scaled_dot_product_attention = _sdpa
        SHIMS.append("F.scaled_dot_product_attention")
    for name in ("_dynamo", "_inductor"):
        full = "torch." + name
        try:
            __import__(full + ".config")
        except ImportError:
            pkg, cfg = types.ModuleType(full), types.ModuleType(full + ".config")
            pkg.config = cfg
            sys.modules[full], sys.modules[full + ".config"] = pkg, cfg
            setattr(torch, name, pkg)
            SHIMS.append(full + ".config")
    # torch 1.13 has a prototype sdp_kernel without torch 2's enable_mem_efficient keyword.
    try:
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False,
                                            enable_math=True):
            pass
    except (AttributeError, TypeError):
        torch.backends.cuda.sdp_kernel = lambda **kw: contextlib.nullcontext()
        SHIMS.append("torch.backends.cuda.sdp_kernel")


class _TorchForGenerate(types.ModuleType):
    """Stands in for `torch` inside upstream's generate module only; every name not
    overridden on the instance is torch's own."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)


def _device_context(*args, **kwargs):
    if torch.device(*args, **kwargs).type != "cpu":
        raise RuntimeError("this driver runs on the CPU only")
    return contextlib.nullcontext()


def install_generate_shims(generate_module):
    proxy, before = _TorchForGenerate(), len(SHIMS)
    try:
        with torch.device("cpu"):
            pass
    except (AttributeError, TypeError):
        proxy.device = _device_context
        SHIMS.append("torch.device context manager (in generate)")
    try:
        torch.zeros(2)[torch.tensor([0], dtype=torch.int)]
    except IndexError:
        # generate() makes input_pos (and seq) torch.int; 1.13 indexes only with int64.
        proxy.int = torch.long
        SHIMS.append("torch.int -> torch.long (in generate)")
    if len(SHIMS) > before:
        generate_module.torch = proxy


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", default=os.environ.get("LLAMAGEN_UPSTREAM"),
                    help="LlamaGen checkout (default: $LLAMAGEN_UPSTREAM)")
    ap.add_argument("--gpt-ckpt", required=True)
    ap.add_argument("--vq-ckpt", required=True)
    ap.add_argument("--gpt-model", default="GPT-B")
    ap.add_argument("--vq-model", default="VQ-16")
    ap.add_argument("--from-fsdp", action="store_true")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--downsample-size", type=int, default=16)
    ap.add_argument("--codebook-size", type=int, default=16384)
    ap.add_argument("--codebook-embed-dim", type=int, default=8)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--class", dest="cls", type=int, default=207)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=2000)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--tokens-out", help="write the tokens, space-separated, one line")
    ap.add_argument("--no-decode", action="store_true")
    args = ap.parse_args(argv)
    if not args.upstream or not os.path.isfile(
            os.path.join(args.upstream, "autoregressive", "models", "generate.py")):
        sys.exit("upstream_llamagen.py: give --upstream or LLAMAGEN_UPSTREAM, a LlamaGen "
                 "checkout holding autoregressive/models/generate.py")

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    install_import_shims()
    sys.path.insert(0, os.path.abspath(args.upstream))
    from autoregressive.models import generate as upstream_generate
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models
    install_generate_shims(upstream_generate)

    # As sample_c2i.py, --precision none, device cpu.
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    vq_model = VQ_models[args.vq_model](codebook_size=args.codebook_size,
                                        codebook_embed_dim=args.codebook_embed_dim)
    vq_model.eval()
    checkpoint = torch.load(args.vq_ckpt, map_location="cpu")
    vq_model.load_state_dict(checkpoint["model"])
    del checkpoint
    latent_size = args.image_size // args.downsample_size
    gpt_model = GPT_models[args.gpt_model](
        vocab_size=args.codebook_size, block_size=latent_size ** 2,
        num_classes=args.num_classes, cls_token_num=1, model_type="c2i",
    ).to(device="cpu", dtype=torch.float32)
    checkpoint = torch.load(args.gpt_ckpt, map_location="cpu")
    if args.from_fsdp:
        weights = checkpoint
    else:
        weights = next((checkpoint[k] for k in ("model", "module", "state_dict")
                        if k in checkpoint), None)
        if weights is None:
            sys.exit("%s: no model/module/state_dict entry (bare state dict? --from-fsdp)"
                     % args.gpt_ckpt)
    gpt_model.load_state_dict(weights, strict=False)
    gpt_model.eval()
    del checkpoint, weights
    load_s = time.perf_counter() - t0
    print("upstream %s loaded in %.2f s, torch %s, %d threads, shims: %s"
          % (args.upstream, load_s, torch.__version__, torch.get_num_threads(),
             ", ".join(SHIMS) or "none"), file=sys.stderr)

    c_indices = torch.tensor([args.cls])
    qzshape = [1, args.codebook_embed_dim, latent_size, latent_size]
    t0 = time.perf_counter()
    index_sample = upstream_generate.generate(
        gpt_model, c_indices, latent_size ** 2, cfg_scale=args.cfg, cfg_interval=-1,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        sample_logits=True)
    tokens_s = time.perf_counter() - t0

    decode_s = 0.0
    if not args.no_decode:
        t0 = time.perf_counter()
        samples = vq_model.decode_code(index_sample, qzshape)  # in about [-1, 1]
        decode_s = time.perf_counter() - t0
        assert samples.shape == (1, 3, args.image_size, args.image_size)

    if args.tokens_out:
        with open(args.tokens_out, "w") as f:
            f.write(" ".join(str(int(t)) for t in index_sample[0]) + "\n")
    print(json.dumps({"load_s": load_s, "tokens_s": tokens_s, "decode_s": decode_s,
                      "tokens": int(index_sample.shape[1]), "threads": torch.get_num_threads(),
                      "shims": SHIMS}))


if __name__ == "__main__":
    main()
