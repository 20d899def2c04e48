#!/usr/bin/python3
"""Writes random-weight MaskGen-VQ, TA-TiTok and CLIP files in the official layouts.

    make_random_maskgen.py --size tiny|L|XL --out DIR [--seed 0]
                           [--format hf|hf-bin|pt] [--tied embeddings|lm_head|both]
                           [--clip-size tiny|ViT-L-14-336] [--tokenizer-size tiny|bl128]

Writes, for tools/convert.py maskgen:
  DIR/generator/  config.json (upstream's nested config, as MaskGen_VQ._save_pretrained
                  writes it) + model.safetensors (--format hf) or pytorch_model.bin (hf-bin);
                  with --format pt: DIR/generator.pt (a bare state dict) and
                  DIR/generator_config.json beside it;
  DIR/tokenizer/  the same for TATiTok (VQ), encoder, latent_tokens and
                  quantize.embedding.weight included;
  DIR/clip.pt     an open_clip CLIP state dict: the text tower plus a few visual.* tensors
                  and logit_scale (which the converter must ignore);
  DIR/clip_bpe.txt  BPE merges matching token_embedding's rows (tiny: learned by
                  clip_tokenizer_ref.make_test_merges; real sizes: synthetic byte pairs).

--tied chooses which names hold the tied output head in the generator file: upstream's
weights are one tensor under embeddings.weight and lm_head.weight, and a saver keeps one
name (safetensors' shared-tensor rule) or both (torch.save).

Sizes: --size tiny is the test size (CLIP width 32, 2 layers; MaskGen dim 64, depth 3;
TA-TiTok decoder width 64, 2 layers, 32x32 px from 16 tokens); L and XL are the released
shapes (MaskGen-L/XL on TA-TiTok BL128-VQ, CLIP ViT-L/14-336's text tower). The tiny
ViTs are none of upstream's named sizes (their configs say vit_dec_model_size "tiny64",
vit_enc_model_size "tiny32"), so the converter needs --tokenizer-n-head 2, and
--clip-n-head 2 for the CLIP (width / 64 would be 0).

The init is chosen for useful test outputs, not for training: linear weights are
N(0, 1/fan_in), biases and norm offsets small but non-zero, and none of upstream's zero
inits (its adaLN modulation linears start at zero, which would make every block the
identity); the decoder's last convs are scaled so that images land mostly in [0, 1].
"""
import argparse
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "reference"))
import clip_tokenizer_ref  # noqa: E402
import convert  # noqa: E402
import stfile  # noqa: E402

CLIP_SIZES = {
    "tiny": {"n_merges": 300, "context_length": 77, "width": 32, "n_layer": 2, "n_head": 2,
             "proj_dim": 32, "visual_width": 48, "visual_patch": 14, "visual_grid": 2},
    "ViT-L-14-336": {"n_merges": clip_tokenizer_ref.N_CLIP_MERGES, "context_length": 77,
                     "width": 768, "n_layer": 12, "n_head": 12, "proj_dim": 768,
                     "visual_width": 1024, "visual_patch": 14, "visual_grid": 24},
}
GENERATOR_SIZES = {
    "tiny": {"dim": 64, "depth": 3, "n_head": 2, "num_classes": 10, "micro_cond_dim": 16,
             "num_iter": 8},
    "L": {"dim": 1024, "depth": 16, "n_head": 16, "num_classes": 1000, "micro_cond_dim": 256,
          "num_iter": 16},
    "XL": {"dim": 1280, "depth": 20, "n_head": 16, "num_classes": 1000, "micro_cond_dim": 256,
           "num_iter": 16},
}
# (size name, width, layers, heads) of the decoder and encoder ViTs.
TOKENIZER_SIZES = {
    "tiny": {"dec": ("tiny64", 64, 2, 2), "enc": ("tiny32", 32, 1, 2), "image_size": 32,
             "patch_size": 8, "num_tokens": 16, "token_size": 8, "codebook_size": 64},
    "bl128": {"dec": ("large",) + convert.TITOK_VIT_SIZES["large"],
              "enc": ("base",) + convert.TITOK_VIT_SIZES["base"], "image_size": 256,
              "patch_size": 16, "num_tokens": 128, "token_size": 64, "codebook_size": 8192},
}
DEFAULTS = {"tiny": ("tiny", "tiny"), "L": ("ViT-L-14-336", "bl128"),
            "XL": ("ViT-L-14-336", "bl128")}


def _randn(shape, gen, std, mean=0.0):
    return mean + std * torch.randn(shape, generator=gen)


def _fill(shapes, gen, special=None, bias_std=0.1, embed_std=0.5):
    """Generic init: Linear/conv weights N(0, 1/fan_in), biases N(0, bias_std), norm
    weights 1 + N(0, 0.1), other parameters (embeddings) N(0, embed_std). special(name,
    shape) may return a tensor to override."""
    sd = {}
    for name, shape in shapes.items():
        t = special(name, shape) if special else None
        if t is None:
            is_norm = any(part.startswith(("ln_", "ln")) and part != "linear"
                          for part in name.split(".")[:-1]) and len(shape) == 1
            if is_norm and name.endswith(".weight"):
                t = _randn(shape, gen, 0.1, 1.0)
            elif name.endswith(("bias", "_bias")) or is_norm:
                t = _randn(shape, gen, bias_std)
            elif name.endswith(("weight", "in_proj_weight")) and len(shape) >= 2:
                fan_in = int(torch.tensor(shape[1:]).prod())
                t = _randn(shape, gen, 1.0 / math.sqrt(fan_in))
            else:
                t = _randn(shape, gen, embed_std)
        sd[name] = t
    return sd


def clip_config(size, vocab_size):
    c = CLIP_SIZES[size]
    return {"vocab_size": vocab_size, "context_length": c["context_length"],
            "width": c["width"], "n_layer": c["n_layer"], "n_head": c["n_head"],
            "proj_dim": c["proj_dim"]}


def random_clip_state_dict(size, vocab_size, gen):
    """An open_clip CLIP state dict: the text tower plus a few visual tensors."""
    c = CLIP_SIZES[size]

    def special(name, shape):
        if name == "token_embedding.weight":
            return _randn(shape, gen, 0.5)
        if name == "text_projection":       # [width, proj], used as x @ text_projection
            return _randn(shape, gen, 1.0 / math.sqrt(shape[0]))
        return None
    sd = _fill(convert.clip_text_shapes(clip_config(size, vocab_size)), gen, special)
    vw, patch, grid = c["visual_width"], c["visual_patch"], c["visual_grid"]
    visual = {"visual.class_embedding": [vw], "visual.positional_embedding": [grid ** 2 + 1, vw],
              "visual.conv1.weight": [vw, 3, patch, patch], "visual.ln_pre.weight": [vw],
              "visual.ln_pre.bias": [vw], "visual.ln_post.weight": [vw],
              "visual.ln_post.bias": [vw], "visual.proj": [vw, c["proj_dim"]]}
    sd.update({k: 0.02 * torch.randn(s, generator=gen) for k, s in visual.items()})
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return sd


def clip_merges(size):
    n = CLIP_SIZES[size]["n_merges"]
    if n <= 1000:
        return clip_tokenizer_ref.make_test_merges(n)
    # Real vocabulary size: distinct pairs of byte symbols (a valid, unrealistic merge list).
    syms = clip_tokenizer_ref.BYTE_SYM
    return [(syms[i // 256], syms[i % 256]) for i in range(n)]


def tokenizer_parts(size):
    t = TOKENIZER_SIZES[size]
    grid = t["image_size"] // t["patch_size"]
    dec = {"width": t["dec"][1], "n_layer": t["dec"][2], "n_head": t["dec"][3],
           "patch_size": t["patch_size"], "grid_size": grid, "num_tokens": t["num_tokens"],
           "token_size": t["token_size"], "codebook_size": t["codebook_size"]}
    enc = {"width": t["enc"][1], "n_layer": t["enc"][2], "patch_size": t["patch_size"],
           "grid_size": grid, "num_tokens": t["num_tokens"], "token_size": t["token_size"]}
    return dec, enc


def random_tokenizer_state_dict(size, text_dim, text_context, gen):
    dec, enc = tokenizer_parts(size)
    dec = dict(dec, text_dim=text_dim, text_context=text_context)

    def special(name, shape):
        if name == "quantize.embedding.weight":
            return torch.randn(shape, generator=gen)
        if name == "decoder.ffn.0.weight":
            return _randn(shape, gen, 1.0 / math.sqrt(shape[1]))
        if name == "decoder.ffn.0.bias":
            return _randn(shape, gen, 0.2)
        if name == "decoder.conv_out.weight":   # images centred on 0.5, mostly in [0, 1]
            return _randn(shape, gen, 0.3 / math.sqrt(27))
        if name == "decoder.conv_out.bias":
            return _randn(shape, gen, 0.05, 0.5)
        return None
    sd = _fill(convert.tatitok_decoder_shapes(dec), gen, special)
    sd.update(_fill(convert.tatitok_encoder_shapes(enc), gen, embed_std=0.02))
    return sd


def random_generator_state_dict(cfg, gen):
    def special(name, shape):
        if name == "embeddings.weight":     # also the output head: logits std ~2
            return _randn(shape, gen, 2.0 / math.sqrt(shape[1]))
        if name.endswith("linear.weight"):  # adaLN modulation: shifts/scales/gates ~0.3
            return _randn(shape, gen, 0.5 / math.sqrt(shape[1]))
        return None
    return _fill(convert.maskgen_shapes(cfg), gen, special)


def upstream_configs(gen_size, tok_size, clip_cfg):
    """The nested configs upstream's _save_pretrained writes (OmegaConf.to_container)."""
    g, t = GENERATOR_SIZES[gen_size], TOKENIZER_SIZES[tok_size]
    vq = {"quantize_mode": "vq", "codebook_size": t["codebook_size"],
          "token_size": t["token_size"], "use_l2_norm": False, "commitment_cost": 0.25,
          "clustering_vq": False, "vit_enc_model_size": t["enc"][0],
          "vit_dec_model_size": t["dec"][0], "vit_enc_patch_size": t["patch_size"],
          "vit_dec_patch_size": t["patch_size"], "num_latent_tokens": t["num_tokens"],
          "finetune_decoder": False, "is_legacy": False}
    if clip_cfg["width"] != 768:        # upstream's default text_embed_dim
        vq["text_embed_dim"] = clip_cfg["width"]
    if clip_cfg["context_length"] != 77:
        vq["text_context_length"] = clip_cfg["context_length"]
    dataset = {"preprocessing": {"crop_size": t["image_size"]}}
    tok = {"experiment": {"tokenizer_checkpoint": "tatitok_%s_vq.bin" % tok_size,
                          "output_dir": "tatitok_%s_vq" % tok_size},
           "model": {"vq_model": dict(vq)}, "dataset": dataset}
    maskgen = {"decoder_embed_dim": g["dim"], "decoder_depth": g["depth"],
               "decoder_num_heads": g["n_head"], "micro_condition": True,
               "micro_condition_embed_dim": g["micro_cond_dim"], "text_drop_prob": 0.1,
               "condition_num_classes": g["num_classes"], "cfg": 12.0,
               "num_iter": g["num_iter"], "temperature": 2.0, "sample_aesthetic_score": 6.5}
    gen = {"experiment": {"tokenizer_checkpoint": "tatitok_%s_vq.bin" % tok_size,
                          "generator_checkpoint": "maskgen_vq_%s.bin" % gen_size.lower()},
           "model": {"vq_model": dict(vq), "maskgen": maskgen}, "dataset": dataset}
    return gen, tok


def generator_config(gen_size, tok_size, text_dim):
    g, t = GENERATOR_SIZES[gen_size], TOKENIZER_SIZES[tok_size]
    return {"dim": g["dim"], "depth": g["depth"], "num_tokens": t["num_tokens"],
            "embed_rows": t["codebook_size"] + g["num_classes"] + 2, "text_dim": text_dim,
            "micro_cond_dim": g["micro_cond_dim"]}


def write_component(out, name, sd, config, fmt):
    """HF folder (config.json + model.safetensors / pytorch_model.bin) or bare .pt."""
    if fmt == "pt":
        torch.save(sd, os.path.join(out, name + ".pt"))
        path = os.path.join(out, name + "_config.json")
    else:
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        if fmt == "hf":
            stfile.save(os.path.join(folder, "model.safetensors"), sd, {"format": "pt"})
        else:
            torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
        path = os.path.join(folder, "config.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=4)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(GENERATOR_SIZES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=("hf", "hf-bin", "pt"), default="hf")
    ap.add_argument("--tied", choices=("embeddings", "lm_head", "both"), default="embeddings",
                    help="which names hold the tied head in the generator file")
    ap.add_argument("--clip-size", choices=sorted(CLIP_SIZES))
    ap.add_argument("--tokenizer-size", choices=sorted(TOKENIZER_SIZES))
    args = ap.parse_args(argv)
    clip_default, tok_default = DEFAULTS[args.size]
    args.clip_size = args.clip_size or clip_default
    args.tokenizer_size = args.tokenizer_size or tok_default
    return args


def main(argv=None):
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    merges = clip_merges(args.clip_size)
    vocab_size = len(merges) + convert.CLIP_VOCAB_SPECIALS
    clip_tokenizer_ref.write_merges(os.path.join(args.out, "clip_bpe.txt"), merges)
    clip_cfg = clip_config(args.clip_size, vocab_size)
    torch.save(random_clip_state_dict(args.clip_size, vocab_size, gen),
               os.path.join(args.out, "clip.pt"))

    gen_up, tok_up = upstream_configs(args.size, args.tokenizer_size, clip_cfg)
    tok = random_tokenizer_state_dict(args.tokenizer_size, clip_cfg["width"],
                                      clip_cfg["context_length"], gen)
    write_component(args.out, "tokenizer", tok, tok_up, args.format)
    del tok

    g = random_generator_state_dict(
        generator_config(args.size, args.tokenizer_size, clip_cfg["width"]), gen)
    if args.tied == "lm_head":
        g["lm_head.weight"] = g.pop("embeddings.weight")
    elif args.tied == "both":
        g["lm_head.weight"] = g["embeddings.weight"]
    write_component(args.out, "generator", g, gen_up, args.format)
    print("wrote %s: generator %s, tokenizer %s, CLIP %s (%s, tied head as %s)"
          % (args.out, args.size, args.tokenizer_size, args.clip_size, args.format, args.tied))


if __name__ == "__main__":
    main()
