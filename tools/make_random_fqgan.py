#!/usr/bin/python3
"""Writes random-weight FQGAN checkpoints (tokenizer + FAR) in the official .pt layouts.

    make_random_fqgan.py --out DIR [--variant dual|triple] [--ds 16|8] [--far-model FAR-B]
                         [--seed 0] [--tok-layout model|ema|state_dict|bare]
                         [--far-layout model|module|state_dict|bare] [--no-far] [--stub]

DIR/tokenizer.pt holds everything an official training checkpoint's state dict holds: the
encoder (LlamaGen's CNN trunk, one factorized adapter per branch with its norm_out/conv_out,
named as upstream's vq_model_dual.py / vq_model_triple.py), the per-branch quant_convs and
codebooks with their codebook_used buffers, post_quant_conv, the decoder, and the
representation heads (feat_pred_head, or mid_sem_feat_pred and high_sem_feat_pred), so that
the converter's dropping is exercised. With the default sizes (ch 128, z 256, 16384 x 8
codebooks, 6 adapter layers, 3 head layers at upstream's widths) the key set and shapes are
exactly those of the released checkpoints. Layouts: {"model": sd, "optimizer", "discriminator",
"steps"} (model), the same with an "ema" copy that differs from "model" (ema: converters
must prefer it), {"state_dict": sd}, or the bare state dict.

DIR/far.pt is a FAR c2i state dict (far_dual.py / far_triple.py names: tok_embeddings_j,
aggregation_layer, layers, ar_head, norm, output_j) as {"model": sd, "optimizer", "steps"}
(model), {"module": sd}, {"state_dict": sd} or bare.

--stub writes every tensor as a zero-stride expansion of one value: files of a few hundred
KB with real shapes (FAR-B, FAR-L, the real decoder) for shape-only tests.

The init is chosen for useful test outputs (see make_random_checkpoints.py): linear and
embedding weights N(0, std), norm gains 1 + noise, convs scaled by fan-in.
"""
import argparse
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402
import make_random_checkpoints as rnd  # noqa: E402

VARIANTS = {"dual": 2, "triple": 3}
DS_CH_MULT = {16: [1, 1, 2, 2, 4], 8: [1, 2, 2, 4]}
# Encoder branches in upstream's order: (adapter ModuleList name, suffix of norm_out /
# conv_out / quant_conv / quantize).
BRANCHES = {
    2: (("semantic_head", "_sem"), ("visual_head", "_vis")),
    3: (("visual_head", "_vis"), ("semantic_head_mid", "_sem_mid"),
        ("semantic_head_high", "_sem_high")),
}
# Representation heads (FeatPredHead): name -> width of the teacher's features.
FEAT_HEADS = {
    2: (("feat_pred_head", 1024),),                       # CLIP ViT-L/14
    3: (("mid_sem_feat_pred", 384), ("high_sem_feat_pred", 768)),  # DINOv2-S, CLIP B/16
}
_NORM = re.compile(r"\.(norm\d?|norm_out\w*|ln_\w+)\.(weight|bias)$")


def fqgan_training_shapes(v, k, grid, adapter_layers=6, feat_layers=3, feat_width=None):
    """Tokenizer tensors the converter drops: name -> shape. v: the vq section fields
    (ch, ch_mult, num_res_blocks, z_channels, codebook_embed_dim); grid: tokens per side
    (upstream: 256 / downsample)."""
    shapes = convert.vq_encoder_shapes(v)   # LlamaGen's encoder: the same CNN trunk ...
    for name in list(shapes):               # ... but one output branch per sub-codebook
        if name.startswith(("quantize.", "quant_conv.", "encoder.norm_out.",
                            "encoder.conv_out.")):
            del shapes[name]
    width = v["ch"] * v["ch_mult"][-1]      # the adapters run at the trunk's width (512)
    e, z = v["codebook_embed_dim"], v["z_channels"]
    for head, suffix in BRANCHES[k]:
        p = "encoder.%s.0." % head
        shapes[p + "positional_embedding"] = [grid * grid, width]
        convert._norm(shapes, p + "ln_pre", width)
        for i in range(adapter_layers):
            convert._vit_block(shapes, p + "transformer.%d." % i, width)
        convert._norm(shapes, p + "ln_post", width)
        convert._norm(shapes, "encoder.norm_out" + suffix, width)
        convert._conv(shapes, "encoder.conv_out" + suffix, width, z, 3)
        convert._conv(shapes, "quant_conv" + suffix, z, e, 1)
        shapes["quantize%s.codebook_used" % suffix] = [65536]
    for head, w in FEAT_HEADS[k]:
        w = feat_width or w
        p = head + "."
        convert._linear(shapes, p + "upscale.0", e, w)
        convert._linear(shapes, p + "upscale.2", w, w)
        shapes[p + "class_embedding"] = [1, w]
        shapes[p + "positional_embedding"] = [grid * grid + 1, w]
        convert._norm(shapes, p + "ln_pre", w)
        for i in range(feat_layers):
            convert._vit_block(shapes, p + "transformer.%d." % i, w)
        convert._norm(shapes, p + "ln_post", w)
    return shapes


def _random_tensor(name, shape, gen, codebook_size, std):
    if name.endswith("codebook_used"):       # training statistic: recent code indices
        return torch.randint(0, codebook_size, shape, generator=gen).float()
    if name.endswith("embedding.weight") and name.startswith("quantize"):
        return torch.randn(shape, generator=gen)
    if _NORM.search(name):                   # GroupNorm / LayerNorm affine
        base = 1.0 if name.endswith("weight") else 0.0
        return base + 0.05 * torch.randn(shape, generator=gen)
    if len(shape) == 4:
        # Variance-preserving convs; conv_out halved so most pixels land inside [-1, 1].
        fan_in = shape[1] * shape[2] * shape[3]
        scale = 0.5 if name == "decoder.conv_out.weight" else 1.0
        return scale * torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    if len(shape) == 2 and not name.endswith(("_embedding", "embedding.weight")):
        return torch.randn(shape, generator=gen) / math.sqrt(shape[1])
    return std * torch.randn(shape, generator=gen)   # biases, embeddings, tokens


def random_tokenizer_state_dict(v, grid, gen, adapter_layers=6, feat_layers=3,
                                feat_width=None, with_training=True):
    """v: the vq section (with n_sub). Official key set when with_training."""
    shapes = dict(convert.fqgan_vq_shapes(v))
    if with_training:
        shapes.update(fqgan_training_shapes(v, v["n_sub"], grid, adapter_layers,
                                            feat_layers, feat_width))
    return {name: _random_tensor(name, shape, gen, v["codebook_size"], 0.02)
            for name, shape in shapes.items()}


def random_far_state_dict(g, gen, std=0.02, norm_noise=0.02):
    """g: the gpt section (with n_sub, head_layers)."""
    sd = {}
    for name, shape in convert.far_shapes(g).items():
        if name.endswith("norm.weight"):     # RMSNorm gains
            sd[name] = 1.0 + norm_noise * torch.randn(shape, generator=gen)
        else:
            sd[name] = std * torch.randn(shape, generator=gen)
    return sd


def _stub(shapes, gen):
    """Real shapes, one stored value each (zero strides survive torch.save)."""
    return {name: torch.randn(1, generator=gen).expand(shape) if shape else
            torch.randn((), generator=gen) for name, shape in shapes.items()}


def _wrap(sd, layout):
    if layout == "bare":
        return sd
    if layout in ("state_dict", "module"):
        return {layout: sd, "steps": 0}
    out = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "steps": 0}
    if layout == "ema":
        out["model"] = {k: t + 1.0 for k, t in sd.items()}   # the raw weights differ
        out["ema"] = sd
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="dual")
    ap.add_argument("--ds", type=int, choices=sorted(DS_CH_MULT), default=16,
                    help="downsample factor: picks ch_mult unless --ch-mult is given")
    ap.add_argument("--image-size", type=int, default=256,
                    help="sets the adapters' positional tables and FAR's block size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stub", action="store_true",
                    help="zero-stride tensors: real shapes, tiny files, constant values")
    ap.add_argument("--tok-layout", choices=("model", "ema", "state_dict", "bare"),
                    default="model")
    ap.add_argument("--far-layout", choices=("model", "module", "state_dict", "bare"),
                    default="model")
    ap.add_argument("--no-far", action="store_true", help="write the tokenizer only")
    ap.add_argument("--std", type=float, default=0.02, help="std of FAR weights")
    v = ap.add_argument_group("tokenizer shape")
    v.add_argument("--ch", type=int, default=128)
    v.add_argument("--ch-mult", help="comma-separated, default from --ds")
    v.add_argument("--z-channels", type=int, default=256)
    v.add_argument("--num-res-blocks", type=int, default=2)
    v.add_argument("--codebook-size", type=int, default=16384)
    v.add_argument("--codebook-dim", type=int, default=8)
    v.add_argument("--adapter-layers", type=int, default=6)
    v.add_argument("--feat-layers", type=int, default=3)
    v.add_argument("--feat-width", type=int, help="width of every representation head "
                   "(default upstream's: 1024; triple 384 and 768)")
    g = ap.add_argument_group("FAR shape")
    g.add_argument("--far-model", choices=sorted(convert.FAR_SIZES),
                   help="named size; the custom flags below override its fields")
    g.add_argument("--dim", type=int)
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--head-layers", type=int)
    g.add_argument("--ffn-dim", type=int, help="default: upstream's rule from dim")
    g.add_argument("--vocab", type=int, help="default: the codebook size")
    g.add_argument("--num-classes", type=int, default=1000)
    args = ap.parse_args(argv)
    nl, nh, d, hl = convert.FAR_SIZES.get(args.far_model, (None,) * 4)
    args.n_layer = args.n_layer or nl
    args.n_head = args.n_head or nh
    args.dim = args.dim or d
    args.head_layers = args.head_layers or hl
    if not args.no_far and None in (args.n_layer, args.n_head, args.dim, args.head_layers):
        ap.error("give --far-model or all of --dim, --n-layer, --n-head, --head-layers "
                 "(or --no-far)")
    args.ch_mult = ([int(x) for x in args.ch_mult.split(",")] if args.ch_mult
                    else DS_CH_MULT[args.ds])
    return args


def main(argv=None):
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    k = VARIANTS[args.variant]
    vq_cfg = {"codebook_size": args.codebook_size, "codebook_embed_dim": args.codebook_dim,
              "z_channels": args.z_channels, "ch": args.ch, "ch_mult": args.ch_mult,
              "num_res_blocks": args.num_res_blocks, "n_sub": k}
    grid = args.image_size // convert.downsample_factor(args.ch_mult)
    os.makedirs(args.out, exist_ok=True)

    if args.stub:
        shapes = dict(convert.fqgan_vq_shapes(vq_cfg))
        shapes.update(fqgan_training_shapes(vq_cfg, k, grid, args.adapter_layers,
                                            args.feat_layers, args.feat_width))
        tok = _stub(shapes, gen)
    else:
        tok = random_tokenizer_state_dict(vq_cfg, grid, gen, args.adapter_layers,
                                          args.feat_layers, args.feat_width)
    ckpt = _wrap(tok, args.tok_layout)
    if args.tok_layout in ("model", "ema"):
        ckpt["discriminator"] = {"conv.weight": torch.zeros(4, 3, 4, 4)}
    torch.save(ckpt, os.path.join(args.out, "tokenizer.pt"))
    del tok, ckpt
    written = ["tokenizer.pt (%s, %s)" % (args.variant, args.tok_layout)]

    if not args.no_far:
        far_cfg = {"dim": args.dim, "n_layer": args.n_layer, "head_layers": args.head_layers,
                   "ffn_dim": args.ffn_dim or rnd.upstream_ffn_dim(args.dim),
                   "vocab_size": args.vocab or args.codebook_size,
                   "num_classes": args.num_classes, "n_sub": k}
        if args.stub:
            far = _stub(convert.far_shapes(far_cfg), gen)
        else:
            far = random_far_state_dict(far_cfg, gen, std=args.std)
        torch.save(_wrap(far, args.far_layout), os.path.join(args.out, "far.pt"))
        written.append("far.pt (%s)" % args.far_layout)
    print("wrote %s: %s" % (args.out, ", ".join(written)))


if __name__ == "__main__":
    main()
