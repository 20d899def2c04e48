#!/usr/bin/python3
"""Converts a Hugging Face T5 checkpoint folder into Tessera's T5 encoder files.

    from convert_t5 import convert_t5, T5ConvertError
    section = convert_t5(hf_dir, out_dir, "bf16")   # -> the config.json "t5" section

    /usr/bin/python3 tools/convert_t5.py HF_DIR OUT_DIR [--dtype f32|bf16|f16]
        (writes OUT_DIR/t5.safetensors and spiece.model, prints the section as JSON)

hf_dir is a folder as save_pretrained writes it (e.g. google/flan-t5-xl, the text encoder
of LlamaGen's text-to-image models): config.json, spiece.model and the weights as
model.safetensors, pytorch_model.bin, or sharded (model.safetensors.index.json or
pytorch_model.bin.index.json with their shards). A full T5ForConditionalGeneration
checkpoint or a T5EncoderModel one: only the encoder is kept (shared.weight, or
encoder.embed_tokens.weight when the file has only that, and encoder.*); decoder.* and
lm_head.weight are dropped unread where the format allows (safetensors) and discarded
otherwise. Every expected tensor must be present with the shape config.json implies, and
an encoder tensor nobody expects (UMT5's per-layer biases, say) is refused by name.

The tensors keep HF's names (docs/model-format.md, "T5 encoder"). The returned section
holds the sizes under Tessera's key names plus "file" and "tokenizer". Importing this
module has no side effects; it needs torch and tools/stfile.py only.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stfile  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
WEIGHTS_FILE = "t5.safetensors"
TOKENIZER_FILE = "spiece.model"
# HF activation names (T5Config.dense_act_fn) -> the engine's t5.ff_act
ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
        "relu": "relu", "silu": "silu", "swish": "silu"}
MODEL_TYPES = ("t5", "mt5")   # same encoder; umt5 (a bias per layer) is not supported
DROPPED_PREFIXES = ("decoder.", "lm_head.")
# safetensors dtype tag -> numpy dtype read and torch dtype viewed
_ST_DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
              "BF16": (np.int16, torch.bfloat16)}


class T5ConvertError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# config


def _get_int(cfg, key, default=None):
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise T5ConvertError("config.json: %s is %r, expected a positive integer" % (key, value))
    return value


def ff_activation(cfg):
    """(ff_act, ff_gated) as HF's T5Config derives them: feed_forward_proj "ACT" or
    "gated-ACT" ("gated-gelu" means the tanh GELU, "gelu_new"); saved dense_act_fn /
    is_gated_act keys override, as they do when HF reloads a config."""
    proj = cfg.get("feed_forward_proj", "relu")
    parts = str(proj).split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise T5ConvertError("config.json: feed_forward_proj %r is not ACT or gated-ACT" % proj)
    gated = len(parts) == 2
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    act = cfg.get("dense_act_fn", act)
    gated = cfg.get("is_gated_act", gated)
    if act not in ACTS:
        raise T5ConvertError("config.json: activation %r is not supported (%s)"
                             % (act, ", ".join(sorted(ACTS))))
    if not isinstance(gated, bool):
        raise T5ConvertError("config.json: is_gated_act is %r, expected true or false" % gated)
    return ACTS[act], gated


def t5_section(cfg):
    """The engine's "t5" section (without file and tokenizer) from an HF config dict."""
    model_type = cfg.get("model_type", "t5")
    if model_type not in MODEL_TYPES:
        raise T5ConvertError("config.json: model_type %r is not a T5 (%s)"
                             % (model_type, ", ".join(MODEL_TYPES)))
    act, gated = ff_activation(cfg)
    sec = {
        "vocab_size": _get_int(cfg, "vocab_size"),
        "d_model": _get_int(cfg, "d_model"),
        "d_kv": _get_int(cfg, "d_kv"),
        "d_ff": _get_int(cfg, "d_ff"),
        "n_layer": _get_int(cfg, "num_layers"),
        "n_head": _get_int(cfg, "num_heads"),
        # HF's defaults: configs of the first T5s lack the distance
        "rel_buckets": _get_int(cfg, "relative_attention_num_buckets", 32),
        "rel_max_distance": _get_int(cfg, "relative_attention_max_distance", 128),
        "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-6)),
        "ff_act": act,
        "ff_gated": gated,
    }
    if sec["rel_buckets"] < 4 or sec["rel_max_distance"] <= sec["rel_buckets"] // 4:
        raise T5ConvertError("config.json: relative_attention_num_buckets %d / max_distance %d "
                             "are not supported (need >= 4 buckets and a distance above "
                             "buckets / 4)" % (sec["rel_buckets"], sec["rel_max_distance"]))
    if not 0.0 < sec["norm_eps"] < 1.0:
        raise T5ConvertError("config.json: layer_norm_epsilon %r is out of range"
                             % sec["norm_eps"])
    return sec


def encoder_shapes(sec):
    """name -> shape of every tensor the engine reads (HF's names)."""
    d, inner, ff = sec["d_model"], sec["n_head"] * sec["d_kv"], sec["d_ff"]
    shapes = {
        "shared.weight": [sec["vocab_size"], d],
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            [sec["rel_buckets"], sec["n_head"]],
        "encoder.final_layer_norm.weight": [d],
    }
    for i in range(sec["n_layer"]):
        p = "encoder.block.%d.layer." % i
        for w in ("q", "k", "v"):
            shapes[p + "0.SelfAttention.%s.weight" % w] = [inner, d]
        shapes[p + "0.SelfAttention.o.weight"] = [d, inner]
        shapes[p + "0.layer_norm.weight"] = [d]
        for w in (("wi_0", "wi_1") if sec["ff_gated"] else ("wi",)):
            shapes[p + "1.DenseReluDense.%s.weight" % w] = [ff, d]
        shapes[p + "1.DenseReluDense.wo.weight"] = [d, ff]
        shapes[p + "1.layer_norm.weight"] = [d]
    return shapes


# ---------------------------------------------------------------------------------------
# weights


def _wanted(name):
    return not name.startswith(DROPPED_PREFIXES)


def _read_safetensors(path, keep):
    """The tensors of a .safetensors file whose names pass keep(), read from a mapping
    (the decoder of a full checkpoint is never copied)."""
    try:
        header, _, start = stfile.read_header(path)
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=start)
    except (OSError, ValueError) as e:
        raise T5ConvertError("cannot read %s: %s" % (path, e))
    out = {}
    for name, entry in header.items():
        if not keep(name):
            continue
        tag = entry.get("dtype")
        if tag not in _ST_DTYPES:
            raise T5ConvertError("%s: tensor %s has dtype %s (F32, F16 or BF16 expected)"
                                 % (path, name, tag))
        np_dtype, t_dtype = _ST_DTYPES[tag]
        shape = [int(x) for x in entry["shape"]]
        begin, end = entry["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * np.dtype(np_dtype).itemsize or end > len(data) or begin < 0:
            raise T5ConvertError("%s: tensor %s has bad data_offsets" % (path, name))
        t = torch.from_numpy(np.array(data[begin:end]).view(np_dtype))
        out[name] = t.view(t_dtype).reshape(shape)
    return out


def _read_bin(path, keep):
    try:
        obj = torch.load(path, map_location="cpu")
    except (OSError, RuntimeError, EOFError) as e:
        raise T5ConvertError("cannot load %s: %s" % (path, e))
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise T5ConvertError("%s is not a state dict" % path)
    out = {k: v for k, v in obj.items() if keep(k)}
    del obj
    return out


def _read_index(path):
    try:
        with open(path) as f:
            index = json.load(f)
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise T5ConvertError("cannot read the shard index %s: %s" % (path, e))
    return shards


def read_encoder_state_dict(hf_dir):
    """The checkpoint's tensors minus decoder.* and lm_head.*, from whichever layout the
    folder holds (safetensors preferred). Returns (state dict, weights file names)."""
    def at(name):
        return os.path.join(hf_dir, name)
    for index, reader in (("model.safetensors.index.json", _read_safetensors),
                          ("pytorch_model.bin.index.json", _read_bin)):
        if os.path.exists(at(index)):
            sd, files = {}, _read_index(at(index))
            for shard in files:
                if not os.path.exists(at(shard)):
                    raise T5ConvertError("%s names %s, which is not in %s" % (index, shard, hf_dir))
                part = reader(at(shard), _wanted)
                dup = set(part) & set(sd)
                if dup:
                    raise T5ConvertError("%s: %s is in more than one shard" % (index, min(dup)))
                sd.update(part)
            return sd, files
    for name, reader in (("model.safetensors", _read_safetensors),
                         ("pytorch_model.bin", _read_bin)):
        if os.path.exists(at(name)):
            return reader(at(name), _wanted), [name]
    raise T5ConvertError("%s has no T5 weights (model.safetensors, pytorch_model.bin, or a "
                         "*.index.json with shards)" % hf_dir)


def select_encoder(sd, sec):
    """The tensors the engine reads, checked; shared.weight from encoder.embed_tokens.weight
    when only that is present (equal when both are: HF ties them)."""
    sd = dict(sd)
    embed = sd.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in sd and embed is not None:
        sd["shared.weight"] = embed
    elif embed is not None and (embed.shape != sd["shared.weight"].shape or
                                not torch.equal(embed, sd["shared.weight"])):
        raise T5ConvertError("shared.weight and encoder.embed_tokens.weight differ (HF ties "
                             "them; which one is meant?)")
    expected = encoder_shapes(sec)
    unknown = sorted(set(sd) - set(expected))
    if unknown:
        more = " ... (%d in all)" % len(unknown) if len(unknown) > 6 else ""
        raise T5ConvertError("unexpected tensors for a %s T5 encoder: %s%s"
                             % ("gated" if sec["ff_gated"] else "non-gated",
                                ", ".join(unknown[:6]), more))
    for name, shape in expected.items():
        if name not in sd:
            raise T5ConvertError("missing tensor %s" % name)
        if list(sd[name].shape) != shape:
            raise T5ConvertError("tensor %s has shape %s, expected %s"
                                 % (name, list(sd[name].shape), shape))
        if not sd[name].is_floating_point():
            raise T5ConvertError("tensor %s has dtype %s" % (name, sd[name].dtype))
    return sd


# ---------------------------------------------------------------------------------------


def convert_t5(hf_dir, out_dir, dtype="f32"):
    """Writes out_dir/t5.safetensors (dtype "f32", "bf16" or "f16") and out_dir/spiece.model
    from the HF folder hf_dir; returns the config.json "t5" section. Raises T5ConvertError
    naming the problem (a missing or misshapen tensor, a missing spiece.model, ...)."""
    if dtype not in DTYPES:
        raise T5ConvertError("dtype %r is not one of %s" % (dtype, ", ".join(sorted(DTYPES))))
    if not os.path.isdir(hf_dir):
        raise T5ConvertError("T5: no such folder: %s" % hf_dir)
    cfg_path = os.path.join(hf_dir, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise T5ConvertError("cannot read %s: %s" % (cfg_path, e))
    if not isinstance(cfg, dict):
        raise T5ConvertError("%s is not a JSON object" % cfg_path)
    sec = t5_section(cfg)
    spiece = os.path.join(hf_dir, TOKENIZER_FILE)
    if not os.path.isfile(spiece):
        raise T5ConvertError("%s has no %s (T5's SentencePiece tokenizer; it comes with the "
                             "checkpoint)" % (hf_dir, TOKENIZER_FILE))
    sd, files = read_encoder_state_dict(hf_dir)
    sd = select_encoder(sd, sec)
    os.makedirs(out_dir, exist_ok=True)
    meta = {"source": os.path.basename(os.path.normpath(hf_dir)), "format": "hf-t5",
            "weights": ",".join(files)}
    stfile.save(os.path.join(out_dir, WEIGHTS_FILE), sd, meta, cast=DTYPES[dtype])
    del sd
    if os.path.abspath(spiece) != os.path.abspath(os.path.join(out_dir, TOKENIZER_FILE)):
        shutil.copyfile(spiece, os.path.join(out_dir, TOKENIZER_FILE))
    return dict({"file": WEIGHTS_FILE, "tokenizer": TOKENIZER_FILE}, **sec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf_dir", help="Hugging Face T5 folder (config.json, spiece.model, weights)")
    ap.add_argument("out_dir", help="folder to write t5.safetensors and spiece.model into")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    args = ap.parse_args(argv)
    try:
        sec = convert_t5(args.hf_dir, args.out_dir, args.dtype)
    except T5ConvertError as e:
        print("convert_t5.py: error: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps({"t5": sec}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
