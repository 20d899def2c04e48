#!/usr/bin/python3
"""Regenerates the committed T5 encoder fixture tests/fixtures/t5_tiny/ (deterministic).

    /usr/bin/python3 tests/reference/make_t5_fixtures.py [--out tests/fixtures/t5_tiny]

Made the way a user makes one: a random T5ForConditionalGeneration checkpoint in HF's
folder layout (config.json, model.safetensors with a decoder and lm_head to drop, and a
placeholder spiece.model: this fixture tests the encoder, not the tokenizer) is
converted by tools/convert_t5.py. Two models:

  t5.safetensors       "t5" section: gated-gelu (FLAN-T5's), vocab 256, d_model 48, 4 heads
                       of d_kv 16 (inner 64 != d_model), d_ff 96, 3 layers, 32 buckets,
                       max_distance 20 (sequences of 40 reach the log buckets and past
                       max_distance); BF16.
  t5_relu.safetensors  "t5_relu" section: relu (T5 v1.0's, one wi), vocab 64, d_model 32,
                       2 heads of 8, d_ff 64, 2 layers, 16 buckets, max_distance 12; F16.

expected.safetensors (I32 ids, F32 values), computed by tests/reference/t5_ref.py in fp32
on exactly the stored weights (widened):

  ids [5, 40], lens [5]        right-padded batch: lengths 40, 1, 17, 9, 33; the padding
                               holds random ids (they must not matter to valid rows)
  hidden [5, 40, 48]           last_hidden_state of that batch, every row (padded rows
                               as HF computes them for a 40-wide batch)
  relu.ids [3, 24], relu.lens, relu.hidden [3, 24, 32]   the same for t5_relu
  bucket.config [C, 2]         (num_buckets, max_distance) pairs
  bucket.rel [R]               relative positions -300..300
  bucket.value [C, R]          relative_bucket(rel) for each pair

The random-checkpoint helpers (random_hf_t5, write_hf_folder) are shared with
tests/reference/test_convert_t5.py.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, HERE)
sys.path.insert(0, TOOLS)
import convert_t5  # noqa: E402
import stfile  # noqa: E402
import t5_ref  # noqa: E402

TINY = {
    "model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
    "vocab_size": 256, "d_model": 48, "d_kv": 16, "d_ff": 96, "num_layers": 3,
    "num_decoder_layers": 1, "num_heads": 4, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 20, "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1, "is_encoder_decoder": True,
    "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
TINY_RELU = dict(TINY, vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                 relative_attention_num_buckets=16, relative_attention_max_distance=12,
                 feed_forward_proj="relu")
LENS = [40, 1, 17, 9, 33]
RELU_LENS = [24, 1, 13]
BUCKET_CONFIGS = [(32, 20), (32, 128), (16, 12), (64, 256), (8, 20), (33, 100), (4, 3)]
SPIECE_PLACEHOLDER = (b"placeholder: not a SentencePiece model. The t5_tiny fixture tests the "
                      b"T5 encoder only; real folders carry the checkpoint's spiece.model.\n")


def _is_gated(cfg):
    return t5_ref.hf_ff_activation(cfg)[1]


def random_hf_t5(cfg, seed, decoder=True):
    """A random HF-named state dict for cfg: shared, the encoder and, with decoder, a
    one-block decoder and lm_head (which converters must drop). Scales keep activations
    O(1) and attention neither flat nor one-hot, with the position bias mattering."""
    g = torch.Generator().manual_seed(seed)
    d, dk, H, ff = cfg["d_model"], cfg["d_kv"], cfg["num_heads"], cfg["d_ff"]
    inner, nb = H * dk, cfg.get("relative_attention_num_buckets", 32)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def norm(n):
        return 1.0 + 0.2 * (torch.rand(n, generator=g) - 0.5)

    def attention(p, bias):
        sd[p + "q.weight"] = randn(inner, d, std=0.6 / d ** 0.5)
        sd[p + "k.weight"] = randn(inner, d, std=0.6 / d ** 0.5)
        sd[p + "v.weight"] = randn(inner, d, std=1.0 / d ** 0.5)
        sd[p + "o.weight"] = randn(d, inner, std=1.0 / inner ** 0.5)
        if bias:
            sd[p + "relative_attention_bias.weight"] = randn(nb, H, std=1.5)

    def dense(p):
        for w in (("wi_0", "wi_1") if _is_gated(cfg) else ("wi",)):
            sd[p + w + ".weight"] = randn(ff, d, std=1.0 / d ** 0.5)
        sd[p + "wo.weight"] = randn(d, ff, std=1.0 / ff ** 0.5)

    sd = {"shared.weight": randn(cfg["vocab_size"], d)}
    for i in range(cfg["num_layers"]):
        p = "encoder.block.%d.layer." % i
        attention(p + "0.SelfAttention.", i == 0)
        sd[p + "0.layer_norm.weight"] = norm(d)
        dense(p + "1.DenseReluDense.")
        sd[p + "1.layer_norm.weight"] = norm(d)
    sd["encoder.final_layer_norm.weight"] = norm(d)
    if decoder:
        p = "decoder.block.0.layer."
        attention(p + "0.SelfAttention.", True)
        sd[p + "0.layer_norm.weight"] = norm(d)
        attention(p + "1.EncDecAttention.", False)
        sd[p + "1.layer_norm.weight"] = norm(d)
        dense(p + "2.DenseReluDense.")
        sd[p + "2.layer_norm.weight"] = norm(d)
        sd["decoder.final_layer_norm.weight"] = norm(d)
        sd["lm_head.weight"] = randn(cfg["vocab_size"], d, std=0.1)
    return sd


LAYOUTS = ("safetensors", "bin", "sharded-safetensors", "sharded-bin")


def write_hf_folder(path, cfg, sd, layout="safetensors", spiece=True, tied=False):
    """An HF folder as save_pretrained writes it: config.json, the weights in `layout`
    (sharded: two shards and an index), and a placeholder spiece.model. tied adds
    encoder.embed_tokens.weight (and decoder.embed_tokens.weight when the decoder is
    there) as the same tensor as shared.weight, as pytorch_model.bin files carry them."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if spiece:
        with open(os.path.join(path, "spiece.model"), "wb") as f:
            f.write(SPIECE_PLACEHOLDER)
    sd = dict(sd)
    if tied and "shared.weight" in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
        if any(k.startswith("decoder.") for k in sd):
            sd["decoder.embed_tokens.weight"] = sd["shared.weight"]
    if layout == "safetensors":
        stfile.save(os.path.join(path, "model.safetensors"), {k: v.clone() for k, v in sd.items()})
    elif layout == "bin":
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    elif layout in ("sharded-safetensors", "sharded-bin"):
        st = layout == "sharded-safetensors"
        names = sorted(sd)
        half = len(names) // 2
        files = ["model-0000%d-of-00002.safetensors" % i if st else
                 "pytorch_model-0000%d-of-00002.bin" % i for i in (1, 2)]
        weight_map = {}
        for part, fname in zip((names[:half], names[half:]), files):
            shard = {k: sd[k].clone() for k in part}
            if st:
                stfile.save(os.path.join(path, fname), shard)
            else:
                torch.save(shard, os.path.join(path, fname))
            weight_map.update({k: fname for k in part})
        index = "model.safetensors.index.json" if st else "pytorch_model.bin.index.json"
        with open(os.path.join(path, index), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
    else:
        raise ValueError("layout %r" % layout)
    return path


def batch(cfg, lens, T, seed):
    """Random ids [B, T] (padding included) and their lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg["vocab_size"], (len(lens), T), generator=g, dtype=torch.int64)
    return ids, torch.tensor(lens, dtype=torch.int64)


def converted_model(hf_cfg, seed, scratch, name, dtype, out, file_name):
    """Writes the random checkpoint under scratch, converts it into out (weights renamed
    file_name); returns (section, reference on the stored weights)."""
    hf = write_hf_folder(os.path.join(scratch, name), hf_cfg, random_hf_t5(hf_cfg, seed))
    conv = os.path.join(scratch, name + "_converted")
    sec = convert_t5.convert_t5(hf, conv, dtype)
    shutil.copyfile(os.path.join(conv, sec["file"]), os.path.join(out, file_name))
    shutil.copyfile(os.path.join(conv, sec["tokenizer"]), os.path.join(out, sec["tokenizer"]))
    sec["file"] = file_name
    stored = stfile.load(os.path.join(out, file_name))
    return sec, t5_ref.T5EncoderRef.from_section(sec, stored)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "t5_tiny"))
    args = ap.parse_args()
    torch.set_num_threads(1)   # one summation order: byte-identical files
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="tessera_t5_fixture_")
    try:
        sec, ref = converted_model(TINY, 1, scratch, "tiny", "bf16", args.out, "t5.safetensors")
        sec_relu, ref_relu = converted_model(TINY_RELU, 2, scratch, "relu", "f16", args.out,
                                             "t5_relu.safetensors")
    finally:
        shutil.rmtree(scratch)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({"tessera_format": 1,
                   "name": "tiny random T5 encoders (test fixture)",
                   "t5": sec, "t5_relu": sec_relu}, f, indent=2)
        f.write("\n")

    expected = {}
    with torch.no_grad():
        ids, lens = batch(TINY, LENS, 40, 3)
        expected["ids"] = ids.to(torch.int32)
        expected["lens"] = lens.to(torch.int32)
        expected["hidden"] = ref(ids, t5_ref.lengths_mask(lens, 40))
        ids, lens = batch(TINY_RELU, RELU_LENS, 24, 4)
        expected["relu.ids"] = ids.to(torch.int32)
        expected["relu.lens"] = lens.to(torch.int32)
        expected["relu.hidden"] = ref_relu(ids, t5_ref.lengths_mask(lens, 24))
    rel = torch.arange(-300, 301)
    expected["bucket.config"] = torch.tensor(BUCKET_CONFIGS, dtype=torch.int32)
    expected["bucket.rel"] = rel.to(torch.int32)
    expected["bucket.value"] = torch.stack([t5_ref.relative_bucket(rel, nb, md)
                                            for nb, md in BUCKET_CONFIGS]).to(torch.int32)
    stfile.save(os.path.join(args.out, "expected.safetensors"), expected)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print("wrote %s (%d bytes)" % (args.out, total))


if __name__ == "__main__":
    main()
