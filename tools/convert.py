#!/usr/bin/python3
"""Converts official checkpoints into a Tessera model folder (docs/model-format.md).

    convert.py llamagen --gpt c2i_B_256.pt --vq vq_ds16_c2i.pt --image-size 256 --out DIR
               [--dtype f32|bf16|f16] [--gpt-model GPT-B] [--n-head N]
    convert.py llamagen --gpt t2i_XL_stage1_256.pt --vq vq_ds16_t2i.pt --t5 FLAN_T5_XL_DIR
               --image-size 256 --out DIR [--dtype ...]
    convert.py maskgen --generator DIR_OR_FILE --tokenizer DIR_OR_FILE --clip FILE
               --clip-vocab FILE --out DIR [--dtype f32|bf16|f16]
               [--clip-act quick_gelu|gelu] [--generator-config F] [--tokenizer-config F]
    convert.py fqgan --tokenizer fqgan_dual_ds16.pt [--gpt FAR.pt] --image-size 256 --out DIR
               [--dtype f32|bf16|f16] [--far-model FAR-B|FAR-L] [--n-head N]

llamagen writes DIR/config.json, DIR/gpt.safetensors and DIR/vq.safetensors (a t2i GPT
also t5.safetensors and spiece.model, from the T5 encoder's folder: convert_t5.py). Every
hyper-parameter is read off the tensor shapes (upstream's checkpoints carry no config), and
the key set is checked exactly against what those hyper-parameters imply, so a checkpoint
of another architecture is refused with the names of the offending keys instead of
half-loading.

maskgen (MaskGen-VQ + TA-TiTok VQ + the CLIP text tower) writes DIR/config.json,
clip_text.safetensors, clip_bpe.txt, generator.safetensors and tokenizer.safetensors. It
reads the sizes off the shapes too, and cross-checks them with upstream's nested
config.json (or yaml) when there is one; KL/VAE and legacy tokenizers are refused.

fqgan (FQGAN's factorized tokenizer, dual or triple, + the FAR generator; CC-BY-NC-4.0,
research use only) writes DIR/config.json, vq.safetensors and, with --gpt, gpt.safetensors
and classes.txt. Sizes, the sub-token count and the downsample factor come off the shapes;
the tokenizer's encoder, quant_convs, representation heads and usage buffers are dropped.

The layout helpers (gpt_shapes, vq_decoder_shapes, vq_encoder_shapes, GPT_SIZES,
clip_text_shapes, maskgen_shapes, tatitok_decoder_shapes, tatitok_encoder_shapes,
fqgan_vq_shapes, far_shapes, FAR_SIZES) are also used by the random-checkpoint writers and
the reference implementations.
"""
import argparse
import gc
import json
import math
import os
import re
import sys
import warnings

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
    """GPT tensors for the gpt section of config.json (dict): c2i's class table, or t2i's
    caption projection (fc1, tanh GELU, fc2; no biases) and null caption (a buffer in
    T5 feature space, one row per text position)."""
    d, f = g["dim"], g["ffn_dim"]
    shapes = {
        "tok_embeddings.weight": [g["vocab_size"], d],
        "norm.weight": [d],
        "output.weight": [g["vocab_size"], d],
    }
    if g.get("model_type", "c2i") == "t2i":
        shapes["cls_embedding.cap_proj.fc1.weight"] = [d, g["caption_dim"]]
        shapes["cls_embedding.cap_proj.fc2.weight"] = [d, d]
        shapes["cls_embedding.uncond_embedding"] = [g["cls_token_num"], g["caption_dim"]]
    else:
        shapes["cls_embedding.embedding_table.weight"] = [g["num_classes"] + 1, d]
    for i in range(g["n_layer"]):
        _gpt_block(shapes, "layers.%d." % i, d, f)
    return shapes


def _gpt_block(shapes, p, d, f):
    """One LlamaGen TransformerBlock (also FAR's trunk and AR-head blocks)."""
    shapes[p + "attention.wqkv.weight"] = [3 * d, d]
    shapes[p + "attention.wo.weight"] = [d, d]
    shapes[p + "feed_forward.w1.weight"] = [f, d]
    shapes[p + "feed_forward.w3.weight"] = [f, d]
    shapes[p + "feed_forward.w2.weight"] = [d, f]
    shapes[p + "attention_norm.weight"] = [d]
    shapes[p + "ffn_norm.weight"] = [d]


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
    s = {"quantize.embedding.weight": [v["codebook_size"], v["codebook_embed_dim"]]}
    _conv(s, "post_quant_conv", v["codebook_embed_dim"], v["z_channels"], 1)
    _pixel_decoder(s, v)
    return s


def _pixel_decoder(s, v):
    """decoder.* of LlamaGen's VQ (FQGAN's tokenizers use it unchanged)."""
    ch, mult, nrb, z = v["ch"], v["ch_mult"], v["num_res_blocks"], v["z_channels"]
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
    """Reads the c2i or t2i hyper-parameters off the tensor shapes (t2i: the checkpoint
    has cls_embedding.uncond_embedding, whose rows give cls_token_num, 120 upstream).

    Returns (gpt config dict, size name or None). sd must already be without freqs_cis.
    """
    t2i = "cls_embedding.uncond_embedding" in sd or any(
        k.startswith("cls_embedding.cap_proj") for k in sd)
    vocab, dim = _need(sd, "tok_embeddings.weight", "GPT")
    if t2i:
        cls_token_num, caption_dim = _need(sd, "cls_embedding.uncond_embedding", "GPT")
    else:
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

    cfg = {"model_type": "t2i" if t2i else "c2i",
           "dim": dim, "n_layer": n_layer, "n_head": n_head, "n_kv_head": n_head,
           "ffn_dim": ffn_dim, "vocab_size": vocab}
    if t2i:
        cfg.update({"caption_dim": caption_dim, "cls_token_num": cls_token_num})
    else:
        cfg.update({"num_classes": rows - 1, "cls_token_num": 1})
    cfg.update({"block_size": block_size, "rope_base": ROPE_BASE, "norm_eps": NORM_EPS})
    check_keys(sd, gpt_shapes(cfg), "GPT")
    return cfg, size


def infer_vq_config(sd):
    """Reads the decoder hyper-parameters off the tensor shapes (sd without encoder).

    ch_mult is normalised so that it starts at 1: ch is the last decoder level's width.
    That is the form of every upstream config, and any other gives the same shapes.
    """
    codebook_size, embed_dim = _need(sd, "quantize.embedding.weight", "VQ")
    cfg = {"codebook_size": codebook_size, "codebook_embed_dim": embed_dim}
    cfg.update(_infer_pixel_decoder(sd, "VQ"))
    cfg["codebook_l2_norm"] = True
    check_keys(sd, vq_decoder_shapes(cfg), "VQ")
    return cfg


def _infer_pixel_decoder(sd, what):
    """z_channels, ch, ch_mult, num_res_blocks of the decoder.* tensors (LlamaGen's VQ
    decoder); what names the checkpoint in errors."""
    z_channels = _need(sd, "decoder.conv_in.weight", what)[1]
    levels = _indices(sd, r"decoder\.conv_blocks\.(\d+)\.")
    if not levels:
        raise ConvertError("%s checkpoint: no decoder.conv_blocks.N.* keys" % what)
    widths = [_need(sd, "decoder.conv_blocks.%d.res.0.conv1.weight" % l, what)[0]
              for l in range(levels[-1] + 1)]
    ch = widths[-1]
    if any(w % ch for w in widths):
        raise ConvertError("%s checkpoint: decoder widths %s are not multiples of %d"
                           % (what, widths, ch))
    ch_mult = [w // ch for w in reversed(widths)]
    res = _indices(sd, r"decoder\.conv_blocks\.0\.res\.(\d+)\.")
    return {"z_channels": z_channels, "ch": ch, "ch_mult": ch_mult,
            "num_res_blocks": res[-1]}  # the encoder's count; the decoder has one more


SAMPLING_KEYS = {"cfg": float, "cfg_interval": float, "temperature": float, "top_k": int,
                 "top_p": float}


def parse_sampling(text):
    """--sampling "cfg=1,top_p=0.8" -> the config's "sampling" object: the defaults a
    request or the CLI gets when it names none (upstream's values otherwise)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in SAMPLING_KEYS:
            raise ConvertError("--sampling: %s is not one of %s" % (key, ", ".join(SAMPLING_KEYS)))
        try:
            out[key] = SAMPLING_KEYS[key](value)
        except ValueError:
            raise ConvertError("--sampling: %s=%s is not a number" % (key, value))
    return out


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
    t2i = gpt_cfg["model_type"] == "t2i"
    if t2i and not args.t5:
        raise ConvertError("a t2i GPT needs its text encoder: pass --t5 DIR (the FLAN-T5-XL "
                           "Hugging Face folder with spiece.model)")
    if args.t5 and not t2i:
        raise ConvertError("--t5 is for a t2i GPT; this checkpoint is c2i")
    meta = {"source": os.path.basename(args.gpt), "format": "pt"}
    stfile.save(os.path.join(args.out, "gpt.safetensors"), gpt_sd, meta, cast=dtype)
    del gpt_sd
    gc.collect()

    config = {
        "tessera_format": 1,
        "family": "llamagen",
        "name": args.name or "LlamaGen %s %s %dpx" % (size or "custom", gpt_cfg["model_type"],
                                                      args.image_size),
        "image_size": args.image_size,
        "gpt": dict({"file": "gpt.safetensors"}, **gpt_cfg),
    }
    if t2i:
        import convert_t5   # noqa: E402 (only t2i needs it)
        try:
            t5 = convert_t5.convert_t5(args.t5, args.out, args.dtype)
        except convert_t5.T5ConvertError as e:
            raise ConvertError("T5 (--t5 %s): %s" % (args.t5, e))
        if t5.get("d_model") != gpt_cfg["caption_dim"]:
            raise ConvertError("T5 d_model %s != the GPT's caption_dim %d (cap_proj.fc1)"
                               % (t5.get("d_model"), gpt_cfg["caption_dim"]))
        config["t5"] = t5
    if args.sampling:
        config["sampling"] = parse_sampling(args.sampling)
    if vq_cfg:
        meta = {"source": os.path.basename(args.vq), "format": "pt"}
        stfile.save(os.path.join(args.out, "vq.safetensors"), vq_sd, meta, cast=dtype)
        config["vq"] = dict({"file": "vq.safetensors"}, **vq_cfg)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    if not t2i:
        write_classes(args.classes, gpt_cfg["num_classes"],
                      os.path.join(args.out, "classes.txt"))
    print("wrote %s: %s, %s, %s weights" % (args.out, config["name"],
          "with VQ" if vq_cfg else "GPT only", args.dtype))


# ---------------------------------------------------------------------------------------
# MaskGen-VQ text-to-image: CLIP text tower + MaskGen_VQ generator + TA-TiTok VQ decoder.
#
# Layout sources: open_clip's CLIP (text half), bytedance/1d-tokenizer's MaskGen_VQ (built
# from diffusers' JointTransformerBlock) and TATiTok. The official HF folders carry a
# nested config.json {"model": {"vq_model": {...}, "maskgen": {...}}, "dataset": {...}};
# every size is also read off the tensor shapes and the two are cross-checked.

# TiTok's ViT table (modeling/modules/blocks.py): name -> (width, layers, heads).
TITOK_VIT_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
# The released generators (configs/infer/MaskGen/maskgen_vq_*.yaml): (dim, depth, heads).
MASKGEN_SIZES = {"L": (1024, 16, 16), "XL": (1280, 20, 16)}
CLIP_HEAD_DIM = 64           # OpenAI CLIP text towers: heads = width / 64
CLIP_NORM_EPS = 1e-5
CLIP_ACTS = ("quick_gelu", "gelu")
CLIP_VOCAB_SPECIALS = 514    # 256 byte symbols, the same with "</w>", sot and eot
MASKGEN_NORM_EPS = 1e-6
TITOK_NORM_EPS = 1e-5
AESTHETIC_MAX_PERIOD = 1000
# What upstream's demo passes to MaskGen_VQ.generate (README_MaskGen.md) and the inference
# yamls hold (cfg, num_iter, temperature, sample_aesthetic_score).
MASKGEN_SAMPLING = {"steps": 16, "guidance": 12.0, "guidance_decay": "cosine",
                    "randomize_temperature": 2.0, "aesthetic": 6.5,
                    "softmax_temperature_annealing": True}
# Upstream's fallback when a config has no sample_aesthetic_score (MaskGen_VQ.__init__).
MASKGEN_AESTHETIC_IF_UNSET = 6.0
# Keys an open_clip CLIP (or OpenAI TorchScript) file carries beside the text tower.
CLIP_DROPPED = ("logit_scale", "attn_mask", "input_resolution", "context_length",
                "vocab_size")
CLIP_DROPPED_PREFIXES = ("visual.",)
# TA-TiTok parts the decoder never reads: the encoder, its learned latent queries and
# clustering-VQ's usage buffer.
TITOK_DROPPED = ("latent_tokens", "quantize.embed_prob")
TITOK_DROPPED_PREFIXES = ("encoder.",)


def _linear(shapes, name, cin, cout, bias=True):
    shapes[name + ".weight"] = [cout, cin]
    if bias:
        shapes[name + ".bias"] = [cout]


def _vit_block(shapes, p, width):
    """open_clip / TiTok ResidualAttentionBlock: pre-LN, nn.MultiheadAttention, MLP x4."""
    _norm(shapes, p + "ln_1", width)
    shapes[p + "attn.in_proj_weight"] = [3 * width, width]
    shapes[p + "attn.in_proj_bias"] = [3 * width]
    _linear(shapes, p + "attn.out_proj", width, width)
    _norm(shapes, p + "ln_2", width)
    _linear(shapes, p + "mlp.c_fc", width, 4 * width)
    _linear(shapes, p + "mlp.c_proj", 4 * width, width)


def clip_text_shapes(c, tessera=False):
    """The text tower of an open_clip CLIP, for the clip section of config.json.

    Official files hold text_projection as a [width, proj_dim] parameter used as
    x @ text_projection; Tessera stores it as a Linear weight, text_projection.weight
    [proj_dim, width] (tessera=True)."""
    w = c["width"]
    s = {"token_embedding.weight": [c["vocab_size"], w],
         "positional_embedding": [c["context_length"], w]}
    for i in range(c["n_layer"]):
        _vit_block(s, "transformer.resblocks.%d." % i, w)
    _norm(s, "ln_final", w)
    if tessera:
        s["text_projection.weight"] = [c["proj_dim"], w]
    else:
        s["text_projection"] = [w, c["proj_dim"]]
    return s


def maskgen_shapes(g):
    """MaskGen_VQ tensors for the generator section (without lm_head.weight, which upstream
    ties to embeddings.weight). The last block is diffusers' context_pre_only block: a
    2-way AdaLayerNormContinuous on the text stream and no to_add_out / ff_context."""
    d = g["dim"]
    s = {"embeddings.weight": [g["embed_rows"], d], "pos_embed": [1, g["num_tokens"], d]}
    _linear(s, "text_embed_proj", g["text_dim"], d)
    _linear(s, "cond_pooled_proj", g["text_dim"] + g["micro_cond_dim"], d)
    for i in range(g["depth"]):
        p = "blocks.%d." % i
        last = i == g["depth"] - 1
        _linear(s, p + "norm1.linear", d, 6 * d)
        _linear(s, p + "norm1_context.linear", d, (2 if last else 6) * d)
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                     "to_out.0"):
            _linear(s, p + "attn." + name, d, d)
        _linear(s, p + "ff.net.0.proj", d, 4 * d)
        _linear(s, p + "ff.net.2", 4 * d, d)
        if not last:
            _linear(s, p + "attn.to_add_out", d, d)
            _linear(s, p + "ff_context.net.0.proj", d, 4 * d)
            _linear(s, p + "ff_context.net.2", 4 * d, d)
    _linear(s, "norm.linear", d, 2 * d)
    return s


def tatitok_decoder_shapes(t):
    """TA-TiTok (VQ, non-legacy) tensors the server uses, for the tokenizer section."""
    w, grid = t["width"], t["grid_size"]
    s = {"quantize.embedding.weight": [t["codebook_size"], t["token_size"]]}
    p = "decoder."
    _linear(s, p + "decoder_embed", t["token_size"], w)
    s[p + "class_embedding"] = [1, w]
    s[p + "positional_embedding"] = [grid * grid + 1, w]
    s[p + "mask_token"] = [1, 1, w]
    s[p + "latent_token_positional_embedding"] = [t["num_tokens"], w]
    _norm(s, p + "ln_pre", w)
    for i in range(t["n_layer"]):
        _vit_block(s, p + "transformer.%d." % i, w)
    _norm(s, p + "ln_post", w)
    _conv(s, p + "ffn.0", w, t["patch_size"] ** 2 * 3, 1)
    _conv(s, p + "conv_out", 3, 3, 3)
    _linear(s, p + "text_guidance_proj", t["text_dim"], w)
    s[p + "text_guidance_positional_embedding"] = [t["text_context"], w]
    return s


def tatitok_encoder_shapes(e):
    """The training-only half of a TA-TiTok VQ checkpoint (dropped by the converter).
    e: width, n_layer, patch_size, grid_size, num_tokens, token_size."""
    w, grid = e["width"], e["grid_size"]
    s = {"latent_tokens": [e["num_tokens"], w]}
    p = "encoder."
    _conv(s, p + "patch_embed", 3, w, e["patch_size"])
    s[p + "class_embedding"] = [1, w]
    s[p + "positional_embedding"] = [grid * grid + 1, w]
    s[p + "latent_token_positional_embedding"] = [e["num_tokens"], w]
    _norm(s, p + "ln_pre", w)
    for i in range(e["n_layer"]):
        _vit_block(s, p + "transformer.%d." % i, w)
    _norm(s, p + "ln_post", w)
    _conv(s, p + "conv_out", w, e["token_size"], 1)
    return s


# --- reading the official files ------------------------------------------------------


def _parse_yaml_scalar(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_parse_yaml_scalar(x) for x in inner.split(",")] if inner else []
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_simple_yaml(path):
    """The subset of YAML that upstream's configs use: nested mappings by indentation,
    scalars, inline [lists] and '- item' lists of scalars, '#' comments."""
    root = {}
    stack = [(-1, root, None, None)]      # (indent, container, its owner, its key)
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            quote = None
            for i, ch in enumerate(line):   # drop a comment outside quotes
                if ch in "'\"":
                    quote = None if quote == ch else (quote or ch)
                elif ch == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
                    line = line[:i]
                    break
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip(" "))
            body = line.strip()
            while len(stack) > 1 and stack[-1][0] >= indent:
                stack.pop()
            _, container, owner, key = stack[-1]
            if body == "-" or body.startswith("- "):
                if container == {} and owner is not None:   # "key:" then "- item" lines
                    container = owner[key] = []
                    stack[-1] = (stack[-1][0], container, owner, key)
                if not isinstance(container, list):
                    raise ConvertError("%s:%d: unexpected list item" % (path, n))
                container.append(_parse_yaml_scalar(body[1:]))
                continue
            if ":" not in body or not isinstance(container, dict):
                raise ConvertError("%s:%d: cannot parse %r" % (path, n, body))
            key, _, value = body.partition(":")
            key = key.strip().strip("'\"")
            if value.strip():
                container[key] = _parse_yaml_scalar(value)
            else:
                container[key] = {}
                stack.append((indent, container[key], container, key))
    return root


def read_upstream_config(path):
    """An upstream config (config.json as _save_pretrained writes it, or a yaml)."""
    try:
        if path.endswith((".yaml", ".yml")):
            cfg = read_simple_yaml(path)
        else:
            with open(path) as f:
                cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ConvertError("cannot read config %s: %s" % (path, e))
    if isinstance(cfg, dict) and "model" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]     # the hub mixin's {"config": {...}} wrapping
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConvertError("config %s has no 'model' section (expected upstream's "
                           "{\"model\": {\"vq_model\": ...}, \"dataset\": ...})" % path)
    return cfg


def _load_state_dict_file(path, what):
    """A state dict from .safetensors, a torch pickle/zip (bare or wrapped in
    model/state_dict/module) or a TorchScript archive (OpenAI's CLIP files)."""
    if path.endswith(".safetensors"):
        try:
            return stfile.load(path)
        except (OSError, ValueError) as e:
            raise ConvertError("cannot load %s: %s" % (path, e))
    try:
        with warnings.catch_warnings():     # torch.load announces TorchScript archives
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu")
    except RuntimeError as e:
        if "jit" not in str(e):
            raise ConvertError("cannot load %s: %s" % (path, e))
        try:
            obj = torch.jit.load(path, map_location="cpu")
        except RuntimeError as e2:
            raise ConvertError("cannot load %s: %s" % (path, e2))
    except (OSError, EOFError) as e:
        raise ConvertError("cannot load %s: %s" % (path, e))
    if isinstance(obj, torch.nn.Module):   # a TorchScript model (OpenAI's CLIP files)
        obj = dict(obj.state_dict())
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if _is_state_dict(obj.get(key)):
                return obj[key]
    if _is_state_dict(obj):
        return dict(obj)
    raise ConvertError("%s file %s is neither a state dict nor a dict with 'state_dict', "
                       "'model' or 'module'" % (what, path))


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_upstream(path, config_path, what):
    """DIR in the HF layout (config.json + model.safetensors or pytorch_model.bin) or one
    weights file. Returns (state dict, upstream config or None, source name)."""
    config = None
    if os.path.isdir(path):
        weights = next((os.path.join(path, f) for f in HF_WEIGHT_FILES
                        if os.path.exists(os.path.join(path, f))), None)
        if weights is None:
            raise ConvertError("%s folder %s has none of %s" % (what, path,
                                                                ", ".join(HF_WEIGHT_FILES)))
        if config_path is None and os.path.exists(os.path.join(path, "config.json")):
            config_path = os.path.join(path, "config.json")
        source = os.path.basename(os.path.normpath(path))
    elif os.path.exists(path):
        weights, source = path, os.path.basename(path)
    else:
        raise ConvertError("%s: no such file or folder: %s" % (what, path))
    if config_path is not None:
        config = read_upstream_config(config_path)
    return _load_state_dict_file(weights, what), config, source


def _section(cfg, *keys):
    for k in keys:
        cfg = (cfg or {}).get(k) if isinstance(cfg, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def _agree(what, name, from_config, from_shapes, tensor=None):
    if from_config is not None and from_config != from_shapes:
        raise ConvertError("%s: config says %s = %r but %s gives %r"
                           % (what, name, from_config, tensor or "the tensors' shapes",
                              from_shapes))


def _isqrt_exact(n, what):
    r = math.isqrt(n) if n >= 0 else -1
    if r < 0 or r * r != n:
        raise ConvertError("%s: %d is not a square" % (what, n))
    return r


def infer_clip_config(sd, act="quick_gelu", n_head=None):
    """CLIP text hyper-parameters off the shapes; sd without the dropped keys."""
    if act not in CLIP_ACTS:
        raise ConvertError("--clip-act must be one of %s" % ", ".join(CLIP_ACTS))
    vocab, width = _need(sd, "token_embedding.weight", "CLIP")
    context = _need(sd, "positional_embedding", "CLIP")[0]
    layers = _indices(sd, r"transformer\.resblocks\.(\d+)\.")
    if not layers:
        raise ConvertError("CLIP checkpoint: no transformer.resblocks.N.* keys")
    proj = _need(sd, "text_projection", "CLIP")
    if len(proj) != 2:
        raise ConvertError("CLIP checkpoint: text_projection has shape %s, expected "
                           "[width, proj_dim] (a Linear-style projection is not supported)"
                           % proj)
    if n_head is None:
        if width % CLIP_HEAD_DIM:
            raise ConvertError("CLIP width %d is not a multiple of %d: pass --clip-n-head"
                               % (width, CLIP_HEAD_DIM))
        n_head = width // CLIP_HEAD_DIM
    if n_head <= 0 or width % n_head:
        raise ConvertError("CLIP width %d is not divisible by --clip-n-head %d"
                           % (width, n_head))
    cfg = {"vocab_size": vocab, "context_length": context, "width": width,
           "n_layer": layers[-1] + 1, "n_head": n_head, "proj_dim": proj[1], "act": act,
           "norm_eps": CLIP_NORM_EPS}
    check_keys(sd, clip_text_shapes(cfg), "CLIP")
    return cfg


def drop_unused_clip(sd):
    return {k: v for k, v in sd.items()
            if k not in CLIP_DROPPED and not k.startswith(CLIP_DROPPED_PREFIXES)}


def infer_tatitok_config(sd, upstream=None, n_head=None):
    """TA-TiTok decoder hyper-parameters off the shapes, checked against upstream's config
    when there is one. sd is the full official state dict (encoder included)."""
    vq = _section(upstream, "model", "vq_model")
    if vq.get("quantize_mode", "vq") != "vq" or (
            "quantize.embedding.weight" not in sd and "decoder.decoder_embed.weight" in sd):
        raise ConvertError("tokenizer: KL/VAE TA-TiTok (quantize_mode vae) is not supported "
                           "yet: only the VQ tokenizers (MaskGen-VQ) are")
    if (vq.get("is_legacy", True) and upstream is not None) or "decoder.ffn.2.weight" in sd:
        raise ConvertError("tokenizer: a legacy TiTok decoder (is_legacy, ffn to MaskGIT-VQGAN "
                           "codes) is not supported yet")
    if (vq.get("finetune_decoder", True) and upstream is not None) or any(
            k.startswith(("pixel_decoder.", "pixel_quantize.")) for k in sd):
        raise ConvertError("tokenizer: finetune_decoder (MaskGIT-VQGAN pixel decoder) is not "
                           "supported yet")
    if vq.get("use_l2_norm", False):
        raise ConvertError("tokenizer: use_l2_norm codebooks are not supported yet")
    sd = {k: v for k, v in sd.items()
          if k not in TITOK_DROPPED and not k.startswith(TITOK_DROPPED_PREFIXES)}

    width, token_size = _need(sd, "decoder.decoder_embed.weight", "tokenizer")
    codebook, code_dim = _need(sd, "quantize.embedding.weight", "tokenizer")
    layers = _indices(sd, r"decoder\.transformer\.(\d+)\.")
    if not layers:
        raise ConvertError("tokenizer checkpoint: no decoder.transformer.N.* keys")
    n_layer = layers[-1] + 1
    ffn_rows = _need(sd, "decoder.ffn.0.weight", "tokenizer")[0]
    if ffn_rows % 3:
        raise ConvertError("tokenizer: decoder.ffn.0.weight has %d rows, not patch^2 * 3"
                           % ffn_rows)
    patch = _isqrt_exact(ffn_rows // 3, "tokenizer: decoder.ffn.0.weight rows / 3")
    grid = _isqrt_exact(_need(sd, "decoder.positional_embedding", "tokenizer")[0] - 1,
                        "tokenizer: decoder.positional_embedding rows - 1")
    num_tokens = _need(sd, "decoder.latent_token_positional_embedding", "tokenizer")[0]
    text_context = _need(sd, "decoder.text_guidance_positional_embedding", "tokenizer")[0]
    text_dim = _need(sd, "decoder.text_guidance_proj.weight", "tokenizer")[1]

    size = vq.get("vit_dec_model_size")
    table = TITOK_VIT_SIZES.get(size)
    if table is None and size is None:
        table = next((t for t in TITOK_VIT_SIZES.values() if t[:2] == (width, n_layer)), None)
    if table is not None:
        if table[:2] != (width, n_layer):
            raise ConvertError("tokenizer: vit_dec_model_size %s is width %d, %d layers, but "
                               "the decoder has width %d, %d layers"
                               % (size, table[0], table[1], width, n_layer))
        if n_head is not None and n_head != table[2]:
            raise ConvertError("--tokenizer-n-head %d contradicts the ViT size (%d heads)"
                               % (n_head, table[2]))
        n_head = table[2]
    elif n_head is None:
        raise ConvertError("tokenizer: the decoder (width %d, %d layers%s) is none of "
                           "upstream's ViT sizes: pass --tokenizer-n-head"
                           % (width, n_layer, ", vit_dec_model_size %r" % size if size else ""))
    if n_head <= 0 or width % n_head:
        raise ConvertError("tokenizer: width %d is not divisible by %d heads" % (width, n_head))

    _agree("tokenizer", "vit_dec_patch_size", vq.get("vit_dec_patch_size"), patch,
           "decoder.ffn.0.weight")
    _agree("tokenizer", "num_latent_tokens", vq.get("num_latent_tokens"), num_tokens,
           "decoder.latent_token_positional_embedding")
    _agree("tokenizer", "token_size", vq.get("token_size"), token_size,
           "decoder.decoder_embed.weight")
    _agree("tokenizer", "codebook_size", vq.get("codebook_size"), codebook,
           "quantize.embedding.weight")
    if upstream is not None:
        _agree("tokenizer", "text_context_length", vq.get("text_context_length", 77),
               text_context, "decoder.text_guidance_positional_embedding")
        _agree("tokenizer", "text_embed_dim", vq.get("text_embed_dim", 768), text_dim,
               "decoder.text_guidance_proj.weight")
    crop = _section(upstream, "dataset", "preprocessing").get("crop_size")
    _agree("tokenizer", "dataset.preprocessing.crop_size", crop, grid * patch,
           "decoder.positional_embedding x patch size")
    if code_dim != token_size:
        raise ConvertError("tokenizer: quantize.embedding.weight has %d columns but "
                           "decoder.decoder_embed.weight %d" % (code_dim, token_size))
    cfg = {"width": width, "n_layer": n_layer, "n_head": n_head, "patch_size": patch,
           "grid_size": grid, "num_tokens": num_tokens, "token_size": token_size,
           "codebook_size": codebook, "text_context": text_context, "text_dim": text_dim,
           "norm_eps": TITOK_NORM_EPS}
    check_keys(sd, tatitok_decoder_shapes(cfg), "tokenizer")
    return cfg, sd


def untie_lm_head(sd):
    """Keeps one copy of the tied output head: embeddings.weight, from either name."""
    if "lm_head.bias" in sd:
        raise ConvertError("generator: an untied lm_head with a bias (weight_tying: false) is "
                           "not supported")
    if "lm_head.weight" in sd:
        head = sd.pop("lm_head.weight")
        if "embeddings.weight" in sd:
            emb = sd["embeddings.weight"]
            if head.shape != emb.shape or not torch.equal(head, emb):
                raise ConvertError("generator: lm_head.weight differs from embeddings.weight "
                                   "(upstream ties them)")
        else:
            sd["embeddings.weight"] = head
    return sd


def infer_maskgen_config(sd, upstream, codebook_size, n_head=None):
    """MaskGen_VQ hyper-parameters; sd after untie_lm_head. codebook_size comes from the
    tokenizer (the embedding table also holds the mask and the unused class rows)."""
    vq = _section(upstream, "model", "vq_model")
    mg = _section(upstream, "model", "maskgen")
    if any(k.startswith(("decoder_blocks.", "diffloss.", "z_proj")) for k in sd):
        raise ConvertError("generator: MaskGen-KL (continuous tokens, diffusion head) is not "
                           "supported yet: only MaskGen-VQ is")
    embed_rows, dim = _need(sd, "embeddings.weight", "generator")
    num_tokens = _need(sd, "pos_embed", "generator")[1]
    blocks = _indices(sd, r"blocks\.(\d+)\.")
    if not blocks:
        raise ConvertError("generator checkpoint: no blocks.N.* keys")
    depth = blocks[-1] + 1
    text_dim = _need(sd, "text_embed_proj.weight", "generator")[1]
    micro = _need(sd, "cond_pooled_proj.weight", "generator")[1] - text_dim
    if mg.get("micro_condition", True) is False or micro <= 0:
        raise ConvertError("generator: no aesthetic micro-condition (micro_condition false) "
                           "is not supported")
    if mg.get("weight_tying", True) is False:
        raise ConvertError("generator: weight_tying false (an untied lm_head) is not supported")
    if mg.get("mask_schedule_strategy", "arccos") != "arccos":
        raise ConvertError("generator: mask_schedule_strategy %r is not supported (arccos only)"
                           % mg["mask_schedule_strategy"])
    num_classes = embed_rows - codebook_size - 2
    if num_classes < 0:
        raise ConvertError("generator: embeddings.weight has %d rows, fewer than the "
                           "tokenizer's codebook %d + 2" % (embed_rows, codebook_size))
    _agree("generator", "vq_model.codebook_size", vq.get("codebook_size"), codebook_size,
           "the tokenizer's quantize.embedding.weight")
    _agree("generator", "maskgen.condition_num_classes", mg.get("condition_num_classes"),
           num_classes, "embeddings.weight (rows - codebook - 2)")
    _agree("generator", "decoder_embed_dim", mg.get("decoder_embed_dim"), dim,
           "embeddings.weight")
    _agree("generator", "decoder_depth", mg.get("decoder_depth"), depth, "blocks.N")
    _agree("generator", "num_latent_tokens", vq.get("num_latent_tokens"), num_tokens,
           "pos_embed")
    _agree("generator", "micro_condition_embed_dim", mg.get("micro_condition_embed_dim"),
           micro, "cond_pooled_proj.weight")
    if upstream is not None:
        _agree("generator", "vq_model.text_embed_dim", vq.get("text_embed_dim", 768), text_dim,
               "text_embed_proj.weight")

    size = next((name for name, (d, nl, _) in MASKGEN_SIZES.items()
                 if (d, nl) == (dim, depth)), None)
    heads = mg.get("decoder_num_heads")
    if heads is None and size is not None:
        heads = MASKGEN_SIZES[size][2]
    if n_head is not None:
        if heads is not None and heads != n_head:
            raise ConvertError("--n-head %d contradicts the generator's %d heads"
                               % (n_head, heads))
        heads = n_head
    if heads is None:
        raise ConvertError("generator has a non-standard shape (dim %d, depth %d) and no "
                           "config: pass --n-head" % (dim, depth))
    if heads <= 0 or dim % heads:
        raise ConvertError("generator: dim %d is not divisible by %d heads" % (dim, heads))

    sampling = dict(MASKGEN_SAMPLING)
    if upstream is not None:
        sampling["aesthetic"] = float(mg.get("sample_aesthetic_score",
                                             MASKGEN_AESTHETIC_IF_UNSET))
    for key, ours, cast in (("cfg", "guidance", float), ("num_iter", "steps", int),
                            ("temperature", "randomize_temperature", float)):
        if mg.get(key) is not None:
            sampling[ours] = cast(mg[key])
    cfg = {"dim": dim, "depth": depth, "n_head": heads, "num_tokens": num_tokens,
           "codebook_size": codebook_size, "embed_rows": embed_rows, "text_dim": text_dim,
           "micro_cond_dim": micro, "aesthetic_max_period": AESTHETIC_MAX_PERIOD,
           "norm_eps": MASKGEN_NORM_EPS, "sampling": sampling}
    check_keys(sd, maskgen_shapes(cfg), "generator")
    return cfg, size


def _clip_tokenizer_module():
    """tests/reference/clip_tokenizer_ref.py: reads and writes the merges files."""
    ref_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "tests", "reference")
    if ref_dir not in sys.path:
        sys.path.insert(0, ref_dir)
    import clip_tokenizer_ref  # noqa: E402
    return clip_tokenizer_ref


def read_clip_merges(path, vocab_size):
    """The merges of --clip-vocab (official .txt.gz or a clip_bpe.txt), checked against the
    row count of token_embedding."""
    ctr = _clip_tokenizer_module()
    try:
        merges = ctr.read_merges(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConvertError("cannot read --clip-vocab %s: %s" % (path, e))
    if len(merges) + CLIP_VOCAB_SPECIALS != vocab_size:
        raise ConvertError("CLIP vocab size mismatch: %s gives %d merges (vocabulary %d) but "
                           "token_embedding.weight has %d rows (%d merges)"
                           % (path, len(merges), len(merges) + CLIP_VOCAB_SPECIALS,
                              vocab_size, vocab_size - CLIP_VOCAB_SPECIALS))
    return ctr, merges


def convert_maskgen(args):
    dtype = DTYPES[args.dtype]

    # CLIP first: it fixes the text width the other two must agree with.
    clip_sd, _, clip_source = load_upstream(args.clip, None, "CLIP")
    clip_sd = drop_unused_clip(clip_sd)
    clip_cfg = infer_clip_config(clip_sd, args.clip_act, args.clip_n_head)
    ctr, merges = read_clip_merges(args.clip_vocab, clip_cfg["vocab_size"])

    tok_sd, tok_up, tok_source = load_upstream(args.tokenizer, args.tokenizer_config,
                                               "tokenizer")
    tok_cfg, tok_sd = infer_tatitok_config(tok_sd, tok_up, args.tokenizer_n_head)
    if tok_cfg["text_dim"] != clip_cfg["width"]:
        raise ConvertError("tokenizer text_guidance_proj takes %d features, CLIP's width is %d"
                           % (tok_cfg["text_dim"], clip_cfg["width"]))
    if tok_cfg["text_context"] != clip_cfg["context_length"]:
        raise ConvertError("tokenizer has %d text positions, CLIP's context is %d"
                           % (tok_cfg["text_context"], clip_cfg["context_length"]))

    gen_sd, gen_up, gen_source = load_upstream(args.generator, args.generator_config,
                                               "generator")
    gen_sd = untie_lm_head(gen_sd)
    gen_cfg, size = infer_maskgen_config(gen_sd, gen_up, tok_cfg["codebook_size"], args.n_head)
    if gen_cfg["text_dim"] != clip_cfg["width"] or gen_cfg["text_dim"] != clip_cfg["proj_dim"]:
        raise ConvertError("generator text_embed_dim %d must equal CLIP's width %d and its "
                           "projection %d (penultimate states and pooled vector)"
                           % (gen_cfg["text_dim"], clip_cfg["width"], clip_cfg["proj_dim"]))
    if gen_cfg["num_tokens"] != tok_cfg["num_tokens"]:
        raise ConvertError("generator makes %d tokens, the tokenizer decodes %d"
                           % (gen_cfg["num_tokens"], tok_cfg["num_tokens"]))
    image_size = tok_cfg["grid_size"] * tok_cfg["patch_size"]
    _agree("generator", "dataset.preprocessing.crop_size",
           _section(gen_up, "dataset", "preprocessing").get("crop_size"), image_size,
           "the tokenizer")

    os.makedirs(args.out, exist_ok=True)
    clip_out = {k: v for k, v in clip_sd.items() if k != "text_projection"}
    clip_out["text_projection.weight"] = clip_sd["text_projection"].t().contiguous()
    stfile.save(os.path.join(args.out, "clip_text.safetensors"), clip_out,
                {"source": clip_source}, cast=dtype)
    del clip_sd, clip_out
    ctr.write_merges(os.path.join(args.out, "clip_bpe.txt"), merges)
    stfile.save(os.path.join(args.out, "tokenizer.safetensors"), tok_sd,
                {"source": tok_source}, cast=dtype)
    del tok_sd
    stfile.save(os.path.join(args.out, "generator.safetensors"), gen_sd,
                {"source": gen_source}, cast=dtype)
    del gen_sd
    gc.collect()

    name = args.name or "%s VQ %dpx (TA-TiTok %d tokens)" % (
        "MaskGen-" + size if size else "MaskGen custom", image_size, tok_cfg["num_tokens"])
    config = {
        "tessera_format": 1,
        "family": "maskgen",
        "name": name,
        "image_size": image_size,
        "clip": dict({"file": "clip_text.safetensors", "vocab_file": "clip_bpe.txt"},
                     **clip_cfg),
        "generator": dict({"file": "generator.safetensors"}, **gen_cfg),
        "tokenizer": dict({"file": "tokenizer.safetensors"}, **tok_cfg),
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print("wrote %s: %s, %s weights, CLIP %s" % (args.out, name, args.dtype, args.clip_act))


# ---------------------------------------------------------------------------------------
# FQGAN: factorized VQ tokenizer (k = 2 "dual" or 3 "triple" sub-codebooks in front of
# LlamaGen's VQ decoder) + FAR, the factorized autoregressive generator (a LlamaGen GPT
# trunk over aggregated sub-token embeddings and a small per-position AR head).
#
# Layout source: showlab/FQGAN (tokenizer/vq_model_{dual,triple}.py,
# autoregressive/models/far_{dual,triple}.py). Code and weights are CC-BY-NC-4.0.

# The sub-codebooks in sub-token order, which is also the order of their 8-channel slices
# in post_quant_conv's input: sub-token 1 is the visual-detail code.
FQGAN_CODEBOOKS = {
    2: ("quantize_vis", "quantize_sem"),
    3: ("quantize_vis", "quantize_sem_mid", "quantize_sem_high"),
}
FQGAN_VARIANTS = {2: "Dual", 3: "Triple"}
# Training-only parts of the tokenizer checkpoints: the encoder (CNN trunk, factorized
# adapters, per-branch output convs), the per-branch quant_convs, the representation
# heads matched to CLIP/DINO features, and the codebook-usage statistics.
FQGAN_VQ_DROPPED_PREFIXES = (
    "encoder.", "quant_conv_vis.", "quant_conv_sem.", "quant_conv_sem_mid.",
    "quant_conv_sem_high.", "feat_pred_head.", "mid_sem_feat_pred.", "high_sem_feat_pred.")
FQGAN_VQ_DROPPED_SUFFIXES = (".codebook_used",)
# Upstream's FAR sizes: name -> (n_layer, n_head, dim, head_layers). FAR-B is LlamaGen's
# GPT-L trunk with a 3-layer head, FAR-L GPT-XL's with a 4-layer head.
FAR_SIZES = {"FAR-B": (24, 16, 1024, 3), "FAR-L": (36, 20, 1280, 4)}
# freqs_cis is not a FAR parameter, but an exported file may carry it; KV caches end up in
# a state dict saved after sampling (setup_caches registers them as buffers).
FAR_DROPPED = ("freqs_cis",)
FAR_DROPPED_PATTERN = re.compile(r"(layers|ar_head)\.\d+\.attention\.kv_cache\.[kv]_cache$")


def fqgan_vq_shapes(v):
    """FQGAN tokenizer tensors the server uses, for the vq section (dict with n_sub):
    n_sub codebooks, post_quant_conv over their concatenation, LlamaGen's decoder."""
    k, e = v["n_sub"], v["codebook_embed_dim"]
    s = {name + ".embedding.weight": [v["codebook_size"], e] for name in FQGAN_CODEBOOKS[k]}
    _conv(s, "post_quant_conv", k * e, v["z_channels"], 1)
    _pixel_decoder(s, v)
    return s


def far_shapes(g):
    """FAR c2i tensors for the gpt section (dict with n_sub and head_layers)."""
    d, f, k, vocab = g["dim"], g["ffn_dim"], g["n_sub"], g["vocab_size"]
    s = {"cls_embedding.embedding_table.weight": [g["num_classes"] + 1, d],
         "norm.weight": [d]}
    for j in range(1, k + 1):
        s["tok_embeddings_%d.weight" % j] = [vocab, d]
        s["output_%d.weight" % j] = [vocab, d]
    _linear(s, "aggregation_layer", k * d, d)
    for i in range(g["n_layer"]):
        _gpt_block(s, "layers.%d." % i, d, f)
    for i in range(g["head_layers"]):
        _gpt_block(s, "ar_head.%d." % i, d, f)
    return s


def drop_unused_fqgan_vq(sd):
    return {k: v for k, v in sd.items() if not k.startswith(FQGAN_VQ_DROPPED_PREFIXES)
            and not k.endswith(FQGAN_VQ_DROPPED_SUFFIXES)}


def drop_unused_far(sd):
    return {k: v for k, v in sd.items()
            if k not in FAR_DROPPED and not FAR_DROPPED_PATTERN.match(k)}


def infer_fqgan_vq_config(sd):
    """Reads k and the decoder sizes off a tokenizer state dict (after
    drop_unused_fqgan_vq); every kept tensor's shape is checked."""
    what = "tokenizer"
    if "quantize.embedding.weight" in sd:
        raise ConvertError("tokenizer checkpoint has quantize.embedding.weight: that is a "
                           "LlamaGen VQ (use convert.py llamagen), not an FQGAN tokenizer")
    if "quantize_sem_mid.embedding.weight" in sd or "quantize_sem_high.embedding.weight" in sd:
        k = 3
    elif "quantize_sem.embedding.weight" in sd:
        k = 2
    else:
        raise ConvertError("tokenizer checkpoint: missing keys: quantize_sem.embedding.weight "
                           "(dual) or quantize_sem_mid/_high.embedding.weight (triple)")
    books = [_need(sd, name + ".embedding.weight", what) for name in FQGAN_CODEBOOKS[k]]
    codebook_size, embed_dim = books[0]
    cfg = {"codebook_size": codebook_size, "codebook_embed_dim": embed_dim}
    cfg.update(_infer_pixel_decoder(sd, what))
    cfg["codebook_l2_norm"] = True
    cfg["n_sub"] = k
    check_keys(sd, fqgan_vq_shapes(cfg), what)
    return cfg


def infer_far_config(sd, block_size, far_model=None, n_head=None):
    """Reads the FAR hyper-parameters off the shapes (sd after drop_unused_far).

    Returns (gpt config dict, size name or None)."""
    what = "FAR"
    if any(k.startswith("cls_embedding.cap_proj") or k == "cls_embedding.uncond_embedding"
           for k in sd):
        raise ConvertError("FAR checkpoint: t2i not supported yet "
                           "(found cls_embedding.cap_proj / uncond_embedding)")
    if "tok_embeddings.weight" in sd:
        raise ConvertError("FAR checkpoint has tok_embeddings.weight: that is a LlamaGen GPT "
                           "(use convert.py llamagen), not FAR")
    tables = _indices(sd, r"tok_embeddings_(\d+)\.weight$")
    k = len(tables)
    if tables != list(range(1, k + 1)) or k not in FQGAN_CODEBOOKS:
        raise ConvertError("FAR checkpoint: tok_embeddings_N tables %s; expected 1..2 (dual) "
                           "or 1..3 (triple)" % tables)
    vocab, dim = _need(sd, "tok_embeddings_1.weight", what)
    rows, _ = _need(sd, "cls_embedding.embedding_table.weight", what)
    layers = _indices(sd, r"layers\.(\d+)\.")
    if not layers:
        raise ConvertError("FAR checkpoint: no layers.N.* keys")
    head = _indices(sd, r"ar_head\.(\d+)\.")
    if not head:
        raise ConvertError("FAR checkpoint: no ar_head.N.* keys (the per-position AR head)")
    n_layer, head_layers = layers[-1] + 1, head[-1] + 1
    ffn_dim = _need(sd, "layers.0.feed_forward.w1.weight", what)[0]
    qkv_rows = _need(sd, "layers.0.attention.wqkv.weight", what)[0]
    if qkv_rows != 3 * dim:
        raise ConvertError("FAR checkpoint: layers.0.attention.wqkv.weight has %d rows, "
                           "expected 3*dim = %d (grouped-query attention is not supported)"
                           % (qkv_rows, 3 * dim))

    shape = (n_layer, dim, head_layers)
    size = next((name for name, (nl, _, d, hl) in FAR_SIZES.items()
                 if (nl, d, hl) == shape), None)
    if far_model is not None:
        if far_model not in FAR_SIZES:
            raise ConvertError("unknown --far-model %s (known: %s)"
                               % (far_model, ", ".join(FAR_SIZES)))
        nl, _, d, hl = FAR_SIZES[far_model]
        if (nl, d, hl) != shape:
            raise ConvertError("FAR checkpoint has n_layer=%d, dim=%d, head_layers=%d but %s "
                               "has n_layer=%d, dim=%d, head_layers=%d"
                               % (shape + (far_model, nl, d, hl)))
        size = far_model
    if n_head is not None:
        if size is not None and n_head != FAR_SIZES[size][1]:
            raise ConvertError("--n-head %d contradicts %s (n_head=%d)"
                               % (n_head, size, FAR_SIZES[size][1]))
    elif size is not None:
        n_head = FAR_SIZES[size][1]
    else:
        raise ConvertError("FAR checkpoint has a non-standard shape (n_layer=%d, dim=%d, "
                           "head_layers=%d): pass --n-head" % shape)
    if n_head <= 0 or dim % n_head or (dim // n_head) % 4:
        raise ConvertError("dim %d / n_head %d must give a head_dim divisible by 4"
                           % (dim, n_head))
    if k > block_size + 1:
        raise ConvertError("FAR head needs %d RoPE rows, the table has %d" % (k, block_size + 1))
    cfg = {
        "model_type": "c2i",
        "dim": dim, "n_layer": n_layer, "n_head": n_head, "n_kv_head": n_head,
        "ffn_dim": ffn_dim, "vocab_size": vocab, "num_classes": rows - 1,
        "cls_token_num": 1, "block_size": block_size,
        "rope_base": ROPE_BASE, "norm_eps": NORM_EPS,
        "n_sub": k, "head_layers": head_layers,
    }
    check_keys(sd, far_shapes(cfg), what)
    return cfg, size


def convert_fqgan(args):
    dtype = DTYPES[args.dtype]
    if not args.gpt:
        for flag, value in (("--far-model", args.far_model), ("--n-head", args.n_head),
                            ("--classes", args.classes)):
            if value is not None:
                raise ConvertError("%s needs --gpt (a tokenizer-only folder has no "
                                   "generator)" % flag)

    # Everything is checked before anything is written.
    vq_sd = drop_unused_fqgan_vq(vq_state_dict(_load(args.tokenizer)))
    vq_cfg = infer_fqgan_vq_config(vq_sd)
    downsample = downsample_factor(vq_cfg["ch_mult"])
    if args.image_size <= 0 or args.image_size % downsample:
        raise ConvertError("--image-size %d is not a multiple of the tokenizer's downsample "
                           "factor %d" % (args.image_size, downsample))
    block_size = (args.image_size // downsample) ** 2
    gpt_sd = gpt_cfg = size = None
    if args.gpt:
        gpt_sd = drop_unused_far(gpt_state_dict(_load(args.gpt)))
        gpt_cfg, size = infer_far_config(gpt_sd, block_size, args.far_model, args.n_head)
        if gpt_cfg["n_sub"] != vq_cfg["n_sub"]:
            raise ConvertError("FAR predicts %d sub-tokens per position, the tokenizer has %d "
                               "codebooks" % (gpt_cfg["n_sub"], vq_cfg["n_sub"]))
        if gpt_cfg["vocab_size"] != vq_cfg["codebook_size"]:
            raise ConvertError("FAR vocab_size %d != tokenizer codebook_size %d"
                               % (gpt_cfg["vocab_size"], vq_cfg["codebook_size"]))

    os.makedirs(args.out, exist_ok=True)
    variant = FQGAN_VARIANTS[vq_cfg["n_sub"]]
    meta = {"source": os.path.basename(args.tokenizer), "format": "pt",
            "license": "CC-BY-NC-4.0"}
    stfile.save(os.path.join(args.out, "vq.safetensors"), vq_sd, meta, cast=dtype)
    del vq_sd
    config = {"tessera_format": 1, "family": "fqgan", "name": None,
              "image_size": args.image_size}
    if gpt_cfg:
        meta = {"source": os.path.basename(args.gpt), "format": "pt",
                "license": "CC-BY-NC-4.0"}
        stfile.save(os.path.join(args.out, "gpt.safetensors"), gpt_sd, meta, cast=dtype)
        del gpt_sd
        gc.collect()
        config["gpt"] = dict({"file": "gpt.safetensors"}, **gpt_cfg)
        default_name = "FQGAN-%s ds%d %s c2i %dpx" % (variant, downsample, size or "FAR custom",
                                                      args.image_size)
    else:
        default_name = "FQGAN-%s ds%d tokenizer %dpx (decode only)" % (variant, downsample,
                                                                      args.image_size)
    config["name"] = args.name or default_name
    config["vq"] = dict({"file": "vq.safetensors"}, **vq_cfg)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    if gpt_cfg:
        write_classes(args.classes, gpt_cfg["num_classes"],
                      os.path.join(args.out, "classes.txt"))
    print("wrote %s: %s, %s weights (CC-BY-NC-4.0: research use only)"
          % (args.out, config["name"], args.dtype))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="family", required=True)
    p = sub.add_parser("llamagen", help="LlamaGen c2i or t2i GPT + VQ tokenizer (+ T5 for t2i)")
    p.add_argument("--gpt", required=True, help="official GPT checkpoint (.pt)")
    p.add_argument("--vq", help="official VQ checkpoint (.pt); without it the folder is GPT only")
    p.add_argument("--t5", metavar="DIR", help="t2i: the text encoder's Hugging Face folder "
                   "(FLAN-T5-XL: config.json, weights, spiece.model)")
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
    p.add_argument("--name", help="display name (default from the size)")
    p.add_argument("--sampling", metavar="K=V,...",
                   help="default sampling of the model, e.g. cfg=1,top_p=0.8 (keys: cfg, "
                        "cfg_interval, temperature, top_k, top_p; upstream's otherwise)")

    m = sub.add_parser("maskgen", help="MaskGen-VQ text-to-image: generator + TA-TiTok VQ "
                                       "tokenizer + CLIP text tower")
    m.add_argument("--generator", required=True, metavar="DIR_OR_FILE",
                   help="MaskGen_VQ: HF folder (config.json + model.safetensors or "
                        "pytorch_model.bin) or a state-dict file (.bin/.pt/.safetensors)")
    m.add_argument("--tokenizer", required=True, metavar="DIR_OR_FILE",
                   help="TA-TiTok VQ tokenizer, same layouts")
    m.add_argument("--clip", required=True, metavar="FILE",
                   help="open_clip CLIP state dict (.pt/.bin/.safetensors, or OpenAI's "
                        "TorchScript file); only the text tower is kept")
    m.add_argument("--clip-vocab", required=True, metavar="FILE",
                   help="BPE merges: bpe_simple_vocab_16e6.txt.gz or a clip_bpe.txt")
    m.add_argument("--out", required=True, help="model folder to write")
    m.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    m.add_argument("--clip-act", choices=CLIP_ACTS, default="quick_gelu",
                   help="CLIP MLP activation: quick_gelu (OpenAI weights as open_clip <= 2.27 "
                        "builds them, the default) or gelu (open_clip >= 2.29)")
    m.add_argument("--generator-config", metavar="FILE",
                   help="upstream config (.json or .yaml) for a bare generator file, or to "
                        "override a folder's config.json")
    m.add_argument("--tokenizer-config", metavar="FILE", help="the same for the tokenizer")
    m.add_argument("--n-head", type=int,
                   help="generator heads when neither a config nor a known size gives them")
    m.add_argument("--tokenizer-n-head", type=int,
                   help="decoder heads for a ViT that is none of upstream's sizes")
    m.add_argument("--clip-n-head", type=int, help="CLIP heads (default: width / 64)")
    m.add_argument("--name", help="display name (default from the sizes)")

    q = sub.add_parser("fqgan", help="FQGAN factorized tokenizer (dual/triple) + FAR c2i "
                                     "generator (CC-BY-NC-4.0: research use only)")
    q.add_argument("--tokenizer", required=True,
                   help="official FQGAN tokenizer checkpoint (.pt, e.g. fqgan_dual_ds16.pt)")
    q.add_argument("--gpt", help="FAR checkpoint (.pt) in the official layout; without it the "
                                 "folder only decodes")
    q.add_argument("--image-size", type=int, required=True)
    q.add_argument("--out", required=True, help="model folder to write")
    q.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    q.add_argument("--classes", metavar="FILE",
                   help="class names, one per line (default for 1000 classes: ImageNet's, "
                        "from python3-torchvision)")
    q.add_argument("--far-model", help="expected FAR size (%s); inferred when absent"
                   % ", ".join(FAR_SIZES))
    q.add_argument("--n-head", type=int, help="FAR head count for non-standard sizes")
    q.add_argument("--name", help="display name (default from the sizes)")
    args = ap.parse_args(argv)
    try:
        if args.family == "maskgen":
            convert_maskgen(args)
        elif args.family == "fqgan":
            convert_fqgan(args)
        else:
            convert_llamagen(args)
    except ConvertError as e:
        print("convert.py: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
