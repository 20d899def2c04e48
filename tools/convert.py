#!/usr/bin/python3
"""Converts official checkpoints into a Tessera model folder (docs/model-format.md).

    convert.py llamagen --gpt c2i_B_256.pt --vq vq_ds16_c2i.pt --image-size 256 --out DIR
               [--dtype f32|bf16|f16] [--gpt-model GPT-B] [--n-head N]

Writes DIR/config.json, DIR/gpt.safetensors and DIR/vq.safetensors. Every hyper-parameter
is read off the tensor shapes (upstream's checkpoints carry no config), and the key set is
checked exactly against what those hyper-parameters imply, so a checkpoint of another
architecture is refused with the names of the offending keys instead of half-loading.

The layout helpers (gpt_shapes, vq_decoder_shapes, vq_encoder_shapes, GPT_SIZES) are also
used by make_random_checkpoints.py and the reference implementation.
"""
import argparse
import gc
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stfile  # noqa: E402

# Upstream's named sizes: name -> (n_layer, n_head, dim). n_head cannot be read off the
# shapes (wqkv is [3*dim, dim] whatever the head count), so known sizes come from here.
GPT_SIZES = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}
ROPE_BASE = 10000.0
NORM_EPS = 1e-5
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# Keys upstream checkpoints may carry that the server never uses.
GPT_DROPPED = ("freqs_cis",)
VQ_DROPPED_PREFIXES = ("encoder.", "quant_conv.", "quantize.codebook_used")


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Official layouts: name -> shape, derived from hyper-parameters.


def gpt_shapes(g):
    """c2i GPT tensors for the gpt section of config.json (dict)."""
    d, f = g["dim"], g["ffn_dim"]
    shapes = {
        "tok_embeddings.weight": [g["vocab_size"], d],
        "cls_embedding.embedding_table.weight": [g["num_classes"] + 1, d],
        "norm.weight": [d],
        "output.weight": [g["vocab_size"], d],
    }
    for i in range(g["n_layer"]):
        p = "layers.%d." % i
        shapes[p + "attention.wqkv.weight"] = [3 * d, d]
        shapes[p + "attention.wo.weight"] = [d, d]
        shapes[p + "feed_forward.w1.weight"] = [f, d]
        shapes[p + "feed_forward.w3.weight"] = [f, d]
        shapes[p + "feed_forward.w2.weight"] = [d, f]
        shapes[p + "attention_norm.weight"] = [d]
        shapes[p + "ffn_norm.weight"] = [d]
    return shapes


def _conv(shapes, name, cin, cout, k):
    shapes[name + ".weight"] = [cout, cin, k, k]
    shapes[name + ".bias"] = [cout]


def _norm(shapes, name, c):
    shapes[name + ".weight"] = [c]
    shapes[name + ".bias"] = [c]


def _resblock(shapes, name, cin, cout):
    _norm(shapes, name + ".norm1", cin)
    _conv(shapes, name + ".conv1", cin, cout, 3)
    _norm(shapes, name + ".norm2", cout)
    _conv(shapes, name + ".conv2", cout, cout, 3)
    if cin != cout:
        _conv(shapes, name + ".nin_shortcut", cin, cout, 1)


def _attnblock(shapes, name, c):
    _norm(shapes, name + ".norm", c)
    for part in ("q", "k", "v", "proj_out"):
        _conv(shapes, name + "." + part, c, c, 1)


def _mid(shapes, prefix, c):
    _resblock(shapes, prefix + "mid.0", c, c)
    _attnblock(shapes, prefix + "mid.1", c)
    _resblock(shapes, prefix + "mid.2", c, c)


def vq_decoder_shapes(v):
    """VQ tensors the server uses, for the vq section of config.json (dict).

    The decoder walks the levels from the lowest resolution up: conv_blocks[0] is the
    level ch_mult[-1] and the only one with attention; each level has num_res_blocks + 1
    res blocks and all but the last end with an upsample.
    """
    ch, mult, nrb, z = v["ch"], v["ch_mult"], v["num_res_blocks"], v["z_channels"]
    s = {"quantize.embedding.weight": [v["codebook_size"], v["codebook_embed_dim"]]}
    _conv(s, "post_quant_conv", v["codebook_embed_dim"], z, 1)
    c = ch * mult[-1]
    _conv(s, "decoder.conv_in", z, c, 3)
    _mid(s, "decoder.", c)
    levels = len(mult)
    for l, level in enumerate(reversed(range(levels))):
        p = "decoder.conv_blocks.%d." % l
        cout = ch * mult[level]
        for j in range(nrb + 1):
            _resblock(s, p + "res.%d" % j, c, cout)
            c = cout
            if level == levels - 1:
                _attnblock(s, p + "attn.%d" % j, c)
        if level != 0:
            _conv(s, p + "upsample.conv", c, c, 3)
    _norm(s, "decoder.norm_out", c)
    _conv(s, "decoder.conv_out", c, 3, 3)
    return s


def vq_encoder_shapes(v):
    """The training-only half of an official VQ checkpoint (dropped by the converter)."""
    ch, mult, nrb, z = v["ch"], v["ch_mult"], v["num_res_blocks"], v["z_channels"]
    s = {"quantize.codebook_used": [65536]}
    _conv(s, "quant_conv", z, v["codebook_embed_dim"], 1)
    _conv(s, "encoder.conv_in", 3, ch, 3)
    c = ch
    for level in range(len(mult)):
        p = "encoder.conv_blocks.%d." % level
        cout = ch * mult[level]
        for j in range(nrb):
            _resblock(s, p + "res.%d" % j, c, cout)
            c = cout
            if level == len(mult) - 1:
                _attnblock(s, p + "attn.%d" % j, c)
        if level != len(mult) - 1:
            _conv(s, p + "downsample.conv", c, c, 3)
    _mid(s, "encoder.", c)
    _norm(s, "encoder.norm_out", c)
    _conv(s, "encoder.conv_out", c, z, 3)
    return s


def downsample_factor(ch_mult):
    return 2 ** (len(ch_mult) - 1)


# ---------------------------------------------------------------------------------------
# Reading official checkpoints.


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())


def gpt_state_dict(ckpt):
    """The GPT weights of a checkpoint: DDP {"model"}, deepspeed {"module"},
    {"state_dict"} or a bare (FSDP) state dict."""
    if isinstance(ckpt, dict):
        for key in ("model", "module", "state_dict"):
            if _is_state_dict(ckpt.get(key)):
                return ckpt[key]
    if _is_state_dict(ckpt):
        return ckpt
    raise ConvertError("GPT checkpoint is neither a state dict nor a dict with 'model', "
                       "'module' or 'state_dict'")


def vq_state_dict(ckpt):
    """The VQ weights, preferring the EMA copy when the training checkpoint has one."""
    if isinstance(ckpt, dict):
        for key in ("ema", "model", "state_dict"):
            if _is_state_dict(ckpt.get(key)):
                return ckpt[key]
    if _is_state_dict(ckpt):
        return ckpt
    raise ConvertError("VQ checkpoint is neither a state dict nor a dict with 'ema' or 'model'")


def _need(sd, name, what):
    if name not in sd:
        raise ConvertError("%s checkpoint: missing key %s" % (what, name))
    return list(sd[name].shape)


def _indices(sd, pattern):
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for m in map(rx.match, sd) if m})


def check_keys(sd, expected, what):
    """Refuses unknown keys, missing keys and wrong shapes, naming them."""
    def names(keys):
        keys = sorted(keys)
        more = " ... (%d in all)" % len(keys) if len(keys) > 8 else ""
        return ", ".join(keys[:8]) + more
    unknown = set(sd) - set(expected)
    if unknown:
        raise ConvertError("%s checkpoint: unknown keys: %s" % (what, names(unknown)))
    missing = set(expected) - set(sd)
    if missing:
        raise ConvertError("%s checkpoint: missing keys: %s" % (what, names(missing)))
    for name, shape in expected.items():
        if list(sd[name].shape) != list(shape):
            raise ConvertError("%s checkpoint: %s has shape %s, expected %s"
                               % (what, name, list(sd[name].shape), list(shape)))


def infer_gpt_config(sd, block_size, gpt_model=None, n_head=None):
    """Reads the c2i hyper-parameters off the tensor shapes.

    Returns (gpt config dict, size name or None). sd must already be without freqs_cis.
    """
    if any(k.startswith("cls_embedding.cap_proj") or k == "cls_embedding.uncond_embedding"
           for k in sd):
        raise ConvertError("GPT checkpoint: t2i not supported yet "
                           "(found cls_embedding.cap_proj / uncond_embedding)")
    vocab, dim = _need(sd, "tok_embeddings.weight", "GPT")
    rows, _ = _need(sd, "cls_embedding.embedding_table.weight", "GPT")
    layers = _indices(sd, r"layers\.(\d+)\.")
    if not layers:
        raise ConvertError("GPT checkpoint: no layers.N.* keys")
    n_layer = layers[-1] + 1
    ffn_dim = _need(sd, "layers.0.feed_forward.w1.weight", "GPT")[0]
    qkv_rows = _need(sd, "layers.0.attention.wqkv.weight", "GPT")[0]
    if qkv_rows != 3 * dim:
        raise ConvertError("GPT checkpoint: layers.0.attention.wqkv.weight has %d rows, "
                           "expected 3*dim = %d (grouped-query attention is not supported)"
                           % (qkv_rows, 3 * dim))

    size = next((name for name, (nl, _, d) in GPT_SIZES.items()
                 if (nl, d) == (n_layer, dim)), None)
    if gpt_model is not None:
        if gpt_model not in GPT_SIZES:
            raise ConvertError("unknown --gpt-model %s (known: %s)"
                               % (gpt_model, ", ".join(GPT_SIZES)))
        nl, _, d = GPT_SIZES[gpt_model]
        if (nl, d) != (n_layer, dim):
            raise ConvertError("GPT checkpoint has n_layer=%d, dim=%d but %s has n_layer=%d, "
                               "dim=%d" % (n_layer, dim, gpt_model, nl, d))
        size = gpt_model
    if n_head is not None:
        if size is not None and n_head != GPT_SIZES[size][1]:
            raise ConvertError("--n-head %d contradicts %s (n_head=%d)"
                               % (n_head, size, GPT_SIZES[size][1]))
    elif size is not None:
        n_head = GPT_SIZES[size][1]
    else:
        raise ConvertError("GPT checkpoint has a non-standard shape (n_layer=%d, dim=%d): "
                           "pass --n-head" % (n_layer, dim))
    if n_head <= 0 or dim % n_head or (dim // n_head) % 4:
        # 2D RoPE splits each head into row and column halves of rotation pairs.
        raise ConvertError("dim %d / n_head %d must give a head_dim divisible by 4"
                           % (dim, n_head))

    cfg = {
        "model_type": "c2i",
        "dim": dim, "n_layer": n_layer, "n_head": n_head, "n_kv_head": n_head,
        "ffn_dim": ffn_dim, "vocab_size": vocab, "num_classes": rows - 1,
        "cls_token_num": 1, "block_size": block_size,
        "rope_base": ROPE_BASE, "norm_eps": NORM_EPS,
    }
    check_keys(sd, gpt_shapes(cfg), "GPT")
    return cfg, size


def infer_vq_config(sd):
    """Reads the decoder hyper-parameters off the tensor shapes (sd without encoder).

    ch_mult is normalised so that it starts at 1: ch is the last decoder level's width.
    That is the form of every upstream config, and any other gives the same shapes.
    """
    codebook_size, embed_dim = _need(sd, "quantize.embedding.weight", "VQ")
    z_channels = _need(sd, "decoder.conv_in.weight", "VQ")[1]
    levels = _indices(sd, r"decoder\.conv_blocks\.(\d+)\.")
    if not levels:
        raise ConvertError("VQ checkpoint: no decoder.conv_blocks.N.* keys")
    widths = [_need(sd, "decoder.conv_blocks.%d.res.0.conv1.weight" % l, "VQ")[0]
              for l in range(levels[-1] + 1)]
    ch = widths[-1]
    if any(w % ch for w in widths):
        raise ConvertError("VQ checkpoint: decoder widths %s are not multiples of %d"
                           % (widths, ch))
    ch_mult = [w // ch for w in reversed(widths)]
    res = _indices(sd, r"decoder\.conv_blocks\.0\.res\.(\d+)\.")
    cfg = {
        "codebook_size": codebook_size, "codebook_embed_dim": embed_dim,
        "z_channels": z_channels, "ch": ch, "ch_mult": ch_mult,
        "num_res_blocks": res[-1],  # the encoder's count; the decoder has one more
        "codebook_l2_norm": True,
    }
    check_keys(sd, vq_decoder_shapes(cfg), "VQ")
    return cfg


def drop_unused_gpt(sd):
    return {k: v for k, v in sd.items() if k not in GPT_DROPPED}


def drop_unused_vq(sd):
    return {k: v for k, v in sd.items() if not k.startswith(VQ_DROPPED_PREFIXES)}


def _load(path):
    try:
        return torch.load(path, map_location="cpu")
    except (OSError, RuntimeError, EOFError) as e:
        raise ConvertError("cannot load %s: %s" % (path, e))


# ---------------------------------------------------------------------------------------


def write_classes(path, num_classes, out):
    """The class-name table the server resolves prompts with (line i names class i).

    From --classes FILE when given; for a 1000-class (ImageNet) model, otherwise, from the
    category list Debian's python3-torchvision carries; else none (ids only)."""
    names = None
    if path:
        with open(path) as f:
            names = [line.rstrip("\r\n") for line in f if line.strip()]
        if len(names) != num_classes:
            raise ConvertError("--classes %s has %d names, the model %d classes"
                               % (path, len(names), num_classes))
    elif num_classes == 1000:
        try:
            from torchvision.models._meta import _IMAGENET_CATEGORIES as names
        except ImportError:
            print("note: python3-torchvision is not installed, so no ImageNet class names "
                  "(classes.txt); prompts must be class ids", file=sys.stderr)
    if names:
        with open(out, "w") as f:
            f.write("".join(n + "\n" for n in names))


def convert_llamagen(args):
    dtype = DTYPES[args.dtype]
    os.makedirs(args.out, exist_ok=True)

    # The VQ is small: read it first so the image grid is known before the big GPT load.
    vq_cfg = None
    downsample = args.downsample
    if args.vq:
        vq_sd = drop_unused_vq(vq_state_dict(_load(args.vq)))
        vq_cfg = infer_vq_config(vq_sd)
        downsample = downsample_factor(vq_cfg["ch_mult"])
    if args.image_size <= 0 or args.image_size % downsample:
        raise ConvertError("--image-size %d is not a multiple of the VQ downsample factor %d"
                           % (args.image_size, downsample))
    block_size = (args.image_size // downsample) ** 2

    # Hold only one copy of the GPT: stfile.save casts tensor by tensor while writing.
    gpt_sd = drop_unused_gpt(gpt_state_dict(_load(args.gpt)))
    gpt_cfg, size = infer_gpt_config(gpt_sd, block_size, args.gpt_model, args.n_head)
    if vq_cfg and gpt_cfg["vocab_size"] != vq_cfg["codebook_size"]:
        raise ConvertError("GPT vocab_size %d != VQ codebook_size %d"
                           % (gpt_cfg["vocab_size"], vq_cfg["codebook_size"]))
    meta = {"source": os.path.basename(args.gpt), "format": "pt"}
    stfile.save(os.path.join(args.out, "gpt.safetensors"), gpt_sd, meta, cast=dtype)
    del gpt_sd
    gc.collect()

    config = {
        "tessera_format": 1,
        "family": "llamagen",
        "name": "LlamaGen %s c2i %dpx" % (size or "custom", args.image_size),
        "image_size": args.image_size,
        "gpt": dict({"file": "gpt.safetensors"}, **gpt_cfg),
    }
    if vq_cfg:
        meta = {"source": os.path.basename(args.vq), "format": "pt"}
        stfile.save(os.path.join(args.out, "vq.safetensors"), vq_sd, meta, cast=dtype)
        config["vq"] = dict({"file": "vq.safetensors"}, **vq_cfg)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_classes(args.classes, gpt_cfg["num_classes"], os.path.join(args.out, "classes.txt"))
    print("wrote %s: %s, %s, %s weights" % (args.out, config["name"],
          "with VQ" if vq_cfg else "GPT only", args.dtype))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="family", required=True)
    p = sub.add_parser("llamagen", help="LlamaGen c2i GPT + VQ tokenizer")
    p.add_argument("--gpt", required=True, help="official GPT checkpoint (.pt)")
    p.add_argument("--vq", help="official VQ checkpoint (.pt); without it the folder is GPT only")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--classes", metavar="FILE",
                   help="class names, one per line (default for 1000 classes: ImageNet's, "
                        "from python3-torchvision)")
    p.add_argument("--gpt-model", help="expected size (%s); inferred when absent"
                   % ", ".join(GPT_SIZES))
    p.add_argument("--n-head", type=int, help="head count for non-standard sizes")
    p.add_argument("--downsample", type=int, default=16,
                   help="VQ downsample factor, used only without --vq")
    args = ap.parse_args(argv)
    try:
        convert_llamagen(args)
    except ConvertError as e:
        print("convert.py: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
