#!/usr/bin/python3
"""Writes random-weight LlamaGen checkpoints in the official .pt layouts.

    make_random_checkpoints.py --gpt-model GPT-B --out DIR [--image-size 256] [--seed 0]
                               [--fsdp] [--vq VQ-16|VQ-8]

DIR/gpt.pt is {"model": state_dict} (DDP files: B, L, XL) or, with --fsdp, the bare state
dict (XXL, 3B); it includes a freqs_cis entry as some exported checkpoints do. DIR/vq.pt is
{"model": state_dict} with the encoder, quant_conv and quantize.codebook_used included.
Tiny custom shapes come from --dim/--n-layer/... and --ch/--ch-mult/... .

The init is chosen for useful test outputs, not for training: linear and embedding
weights are N(0, std) (upstream zeroes the output head, which makes every logit equal),
norm weights 1 + small noise, convs scaled by fan-in so the decoder output stays near
[-1, 1].
"""
import argparse
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402

VQ_CH_MULT = {"VQ-16": [1, 1, 2, 2, 4], "VQ-8": [1, 2, 2, 4]}
_GROUPNORM = re.compile(r"\.norm(\d|_out)?\.(weight|bias)$")


def upstream_ffn_dim(dim):
    """SwiGLU hidden size as upstream derives it: 2/3 of 4*dim, up to a multiple of 256."""
    hidden = int(2 * 4 * dim / 3)
    return -(-hidden // 256) * 256


def random_gpt_state_dict(cfg, gen, std=0.02, norm_noise=0.02):
    sd = {}
    for name, shape in convert.gpt_shapes(cfg).items():
        if name.endswith("norm.weight"):  # RMSNorm gains
            sd[name] = 1.0 + norm_noise * torch.randn(shape, generator=gen)
        else:
            sd[name] = std * torch.randn(shape, generator=gen)
    return sd


def random_vq_state_dict(cfg, gen, with_encoder=True):
    shapes = dict(convert.vq_decoder_shapes(cfg))
    if with_encoder:
        shapes.update(convert.vq_encoder_shapes(cfg))
    sd = {}
    for name, shape in shapes.items():
        if name == "quantize.codebook_used":  # training statistic: recent code indices
            sd[name] = torch.randint(0, cfg["codebook_size"], shape, generator=gen).float()
        elif name == "quantize.embedding.weight":
            sd[name] = torch.randn(shape, generator=gen)
        elif _GROUPNORM.search(name):
            base = 1.0 if name.endswith("weight") else 0.0
            sd[name] = base + 0.05 * torch.randn(shape, generator=gen)
        elif len(shape) == 4:
            # Variance-preserving for the unit-variance GroupNorm outputs that feed convs.
            # conv_out is halved so that most pixels land inside [-1, 1] unclipped.
            fan_in = shape[1] * shape[2] * shape[3]
            scale = 0.5 if name.endswith("conv_out.weight") else 1.0
            sd[name] = scale * torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:  # conv bias
            sd[name] = 0.02 * torch.randn(shape, generator=gen)
    return sd


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpt-model", choices=sorted(convert.GPT_SIZES),
                    help="named size; the custom flags below override its fields")
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fsdp", action="store_true", help="write gpt.pt as a bare state dict")
    ap.add_argument("--vq", choices=sorted(VQ_CH_MULT), default="VQ-16")
    ap.add_argument("--std", type=float, default=0.02, help="std of linear/embedding weights")
    g = ap.add_argument_group("custom GPT shape")
    g.add_argument("--dim", type=int)
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--vocab", type=int, help="default: the codebook size")
    g.add_argument("--num-classes", type=int, default=1000)
    g.add_argument("--ffn-dim", type=int, help="default: upstream's rule from dim")
    v = ap.add_argument_group("custom VQ shape")
    v.add_argument("--ch", type=int, default=128)
    v.add_argument("--ch-mult", help="comma-separated, default from --vq")
    v.add_argument("--z-channels", type=int, default=256)
    v.add_argument("--num-res-blocks", type=int, default=2)
    v.add_argument("--codebook-size", type=int, default=16384)
    v.add_argument("--codebook-dim", type=int, default=8)
    args = ap.parse_args(argv)

    n_layer, n_head, dim = convert.GPT_SIZES.get(args.gpt_model, (None, None, None))
    args.n_layer = args.n_layer or n_layer
    args.n_head = args.n_head or n_head
    args.dim = args.dim or dim
    if None in (args.n_layer, args.n_head, args.dim):
        ap.error("give --gpt-model or all of --dim, --n-layer, --n-head")
    args.ch_mult = ([int(x) for x in args.ch_mult.split(",")] if args.ch_mult
                    else VQ_CH_MULT[args.vq])
    return args


def main(argv=None):
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    vq_cfg = {
        "codebook_size": args.codebook_size, "codebook_embed_dim": args.codebook_dim,
        "z_channels": args.z_channels, "ch": args.ch, "ch_mult": args.ch_mult,
        "num_res_blocks": args.num_res_blocks,
    }
    grid = args.image_size // convert.downsample_factor(args.ch_mult)
    gpt_cfg = {
        "dim": args.dim, "n_layer": args.n_layer, "ffn_dim": args.ffn_dim or
        upstream_ffn_dim(args.dim), "vocab_size": args.vocab or args.codebook_size,
        "num_classes": args.num_classes,
    }
    os.makedirs(args.out, exist_ok=True)

    gpt = random_gpt_state_dict(gpt_cfg, gen, std=args.std)
    # Not a parameter upstream, but some exported checkpoints carry it: the converter
    # must drop it. Its values are irrelevant, only the name and a plausible shape.
    head_dim = args.dim // args.n_head
    gpt["freqs_cis"] = torch.randn(1 + grid * grid, head_dim // 2, 2, generator=gen)
    torch.save(gpt if args.fsdp else {"model": gpt}, os.path.join(args.out, "gpt.pt"))
    del gpt

    vq = random_vq_state_dict(vq_cfg, gen)
    torch.save({"model": vq}, os.path.join(args.out, "vq.pt"))
    print("wrote %s/gpt.pt (%s) and %s/vq.pt" % (args.out, "bare" if args.fsdp else
          "{'model': ...}", args.out))


if __name__ == "__main__":
    main()
