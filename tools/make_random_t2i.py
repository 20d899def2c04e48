#!/usr/bin/python3
"""Writes random-weight LlamaGen text-to-image checkpoints in the official layouts, for
benchmarks (bench/cpu_t2i.sh):

    make_random_t2i.py --out DIR [--preset xl|tiny] [--seed 0]

DIR/t2i.pt   {"model": state_dict} of a t2i GPT (upstream's names: cls_embedding.cap_proj,
             cls_embedding.uncond_embedding, layers.*, ...), as the released t2i_XL files
DIR/vq.pt    {"model": state_dict} of a VQ tokenizer, encoder included (vq_ds16_t2i.pt)
DIR/t5/      a Hugging Face T5 encoder folder: config.json, model.safetensors (shared.weight
             and encoder.*, fp32) and spiece.model

then `tools/convert.py llamagen --gpt DIR/t2i.pt --vq DIR/vq.pt --t5 DIR/t5 ...` makes a
model folder of it.

Presets:
  xl    the real shapes: GPT-XL t2i (dim 1280, 36 layers, 20 heads, ffn 3584, vocab 16384,
        caption_dim 2048, 120 text positions), VQ-16 (ch 128, ch_mult 1,1,2,2,4, z 256, 2
        res blocks, 16384 x 8 codebook), and a T5 encoder of FLAN-T5-XL's shape (d_model
        2048, d_kv 64, d_ff 5120, 24 layers, 32 heads, 32 buckets, max distance 128,
        gated-gelu, vocab 32128). About 8.5 GB in all.
  tiny  a smoke-test size: GPT dim 64, 2 layers, 4 heads, vocab 512, 120 text positions;
        VQ-16 at width 32 (ch_mult 1,1,1,1,1, one res block), 512 x 8 codebook; T5 d_model
        48, 2 layers, 4 heads of 16, d_ff 96, vocab 864. Its GPT weights have std 0.2
        (not 0.02) so that greedy steps are well separated.

The sentencepiece model is --spiece (default tests/fixtures/llamagen_t2i_tiny/spiece.model,
800 pieces; T5's own is not available offline); the T5 vocabulary must be at least its size.
Initialisation (not upstream's, which zeroes the GPT's output head): the GPT and VQ as
tools/make_random_checkpoints.py does, the T5 as tests/reference/make_t5_fixtures.py's
random_hf_t5 (scaled so that activations stay O(1) and attention is neither flat nor
one-hot).
"""
import argparse
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import make_random_checkpoints as rnd  # noqa: E402
import make_t5_fixtures as t5fix  # noqa: E402
import stfile  # noqa: E402

SPIECE = os.path.join(ROOT, "tests", "fixtures", "llamagen_t2i_tiny", "spiece.model")
CLS_TOKEN_NUM = 120     # upstream's t5 max_length / the GPT's text positions

T5_HF = {"model_type": "t5", "architectures": ["T5EncoderModel"], "layer_norm_epsilon": 1e-6,
         "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1, "is_encoder_decoder": False,
         "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
         "decoder_start_token_id": 0}
PRESETS = {
    "xl": {
        "gpt": {"dim": 1280, "n_layer": 36, "n_head": 20, "vocab_size": 16384},
        "gpt_std": 0.02,
        "vq": {"codebook_size": 16384, "codebook_embed_dim": 8, "z_channels": 256, "ch": 128,
               "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2},
        "t5": dict(T5_HF, vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                   num_heads=32, relative_attention_num_buckets=32,
                   relative_attention_max_distance=128),
    },
    "tiny": {
        "gpt": {"dim": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512},
        "gpt_std": 0.2,
        "vq": {"codebook_size": 512, "codebook_embed_dim": 8, "z_channels": 32, "ch": 32,
               "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1},
        "t5": dict(T5_HF, vocab_size=864, d_model=48, d_kv=16, d_ff=96, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=32,
                   relative_attention_max_distance=20),
    },
}


def write(out, preset, seed, spiece):
    p = PRESETS[preset]
    gen = torch.Generator().manual_seed(seed)
    os.makedirs(out, exist_ok=True)

    # The T5 first: the largest, written tensor by tensor from one generated dict.
    t5cfg = p["t5"]
    import sentencepiece
    pieces = sentencepiece.SentencePieceProcessor(model_file=spiece).get_piece_size()
    if t5cfg["vocab_size"] < pieces:
        sys.exit("make_random_t2i.py: T5 vocab %d < the %d pieces of %s"
                 % (t5cfg["vocab_size"], pieces, spiece))
    hf = os.path.join(out, "t5")
    os.makedirs(hf, exist_ok=True)
    sd = t5fix.random_hf_t5(t5cfg, seed + 1, decoder=False)
    stfile.save(os.path.join(hf, "model.safetensors"), sd, {"format": "pt"})
    del sd
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(t5cfg, f, indent=2)
    shutil.copyfile(spiece, os.path.join(hf, "spiece.model"))

    g = p["gpt"]
    cfg = {"model_type": "t2i", "dim": g["dim"], "n_layer": g["n_layer"],
           "ffn_dim": rnd.upstream_ffn_dim(g["dim"]), "vocab_size": g["vocab_size"],
           "caption_dim": t5cfg["d_model"], "cls_token_num": CLS_TOKEN_NUM}
    sd = rnd.random_gpt_state_dict(cfg, gen, std=p["gpt_std"])
    torch.save({"model": sd}, os.path.join(out, "t2i.pt"))
    del sd

    sd = rnd.random_vq_state_dict(p["vq"], gen, with_encoder=True)
    torch.save({"model": sd}, os.path.join(out, "vq.pt"))
    print("wrote %s: t2i.pt (GPT dim %d, %d layers), vq.pt, t5/ (d_model %d, %d layers)"
          % (out, g["dim"], g["n_layer"], t5cfg["d_model"], t5cfg["num_layers"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="xl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spiece", default=SPIECE, help="the T5 folder's spiece.model")
    args = ap.parse_args(argv)
    write(args.out, args.preset, args.seed, args.spiece)
    return 0


if __name__ == "__main__":
    sys.exit(main())
