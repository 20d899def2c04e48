#!/usr/bin/python3
"""Regenerates tests/fixtures/llamagen_t2i_tiny (deterministic): a LlamaGen text-to-image
model folder with random weights, made the way a user makes one (official-layout
checkpoints through tools/convert.py llamagen --t5), and expected.safetensors from the
references, in fp32 on the stored (bf16-rounded) weights:

    /usr/bin/python3 tests/reference/make_t2i_fixtures.py [--out DIR]

The pipeline is upstream's, step by step: clean_caption twice (t5_clean_ref.py), T5's
sentencepiece tokenizer with max_length 120 (the sentencepiece library on the committed
tests/fixtures/spm_tiny/spiece.model, with Hugging Face T5Tokenizer's truncation, </s>
and padding), the T5 encoder (t5_ref.py), sample_t2i.py's left padding and generate()'s
full 120-position mask (llamagen_t2i_ref.py), and the VQ decoder (llamagen_ref.py).

Tensors (P prompts, in prompts.txt one per line):
  tok.ids [P, 120] int32, tok.n [P] int32     token ids (right-padded with 0), valid count
  t5.{i} [n_i, d]                             T5 last hidden state, valid rows of prompt i
  cap.cond.{i}, cap.uncond.{i} [n_i, dim]     cap_proj of those rows / of the last n_i
                                              rows of the null caption
  prefill.logits [2P, V]                      the prefill's logits with CFG (cond rows,
                                              then uncond), full upstream mask
  greedy.cfg.tokens, greedy.nocfg.tokens [P, L] int32   top-k 1, cfg 7.5 / cfg 1
  vq.image_u8 [P, S, S, 3] int32              the cfg tokens decoded, as the engine maps
                                              pixels (clamp(127.5 x + 128), truncated)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import sentencepiece
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import convert  # noqa: E402
import llamagen_ref as ref  # noqa: E402
import llamagen_t2i_ref as t2i_ref  # noqa: E402
import make_random_checkpoints as rnd  # noqa: E402
import make_t5_fixtures as t5fix  # noqa: E402
import stfile  # noqa: E402
import t5_clean_ref  # noqa: E402
import t5_ref  # noqa: E402

SPIECE = os.path.join(ROOT, "tests", "fixtures", "spm_tiny", "spiece.model")
MAX_LEN = 120
GAP = 3e-3
CFG = 7.5
T5_CFG = dict(t5fix.TINY, vocab_size=864, num_layers=2)   # >= the 800 pieces of SPIECE
GPT_CFG = {"model_type": "t2i", "dim": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 4,
           "ffn_dim": 192, "vocab_size": 256, "caption_dim": T5_CFG["d_model"],
           "cls_token_num": MAX_LEN, "block_size": 16, "rope_base": 10000.0, "norm_eps": 1e-5}
VQ_CFG = {"codebook_size": 256, "codebook_embed_dim": 8, "z_channels": 32, "ch": 32,
          "ch_mult": [1, 1, 1], "num_res_blocks": 1, "codebook_l2_norm": True}
IMAGE_SIZE = 16
PROMPTS = [
    "A blue Porsche 356 parked in front of a yellow brick wall.",
    "A PHOTO of an astronaut riding a horse -- see https://example.com/x.jpg <b>now</b>!",
    "café crème, 3 cats & 2 dogs; naïve résumé",
    # Long: more than 119 pieces, so truncation keeps 119 and </s>.
    " ".join(["a red teapot on the moon, digital art"] * 30),
    # Cleans to nothing: the prompt is </s> alone.
    "http://example.com",
]


def hf_t5_tokenize(sp, text):
    """T5Tokenizer(text, max_length=120, padding="max_length", truncation=True)."""
    ids = sp.encode(text)[:MAX_LEN - 1] + [sp.eos_id()]
    return ids + [sp.pad_id()] * (MAX_LEN - len(ids)), len(ids)


def write_folder(out, scratch, seed):
    gen = torch.Generator().manual_seed(seed)
    gpt = rnd.random_gpt_state_dict(GPT_CFG, gen, std=0.2, norm_noise=0.1)
    gpt["cls_embedding.uncond_embedding"] = torch.randn(MAX_LEN, GPT_CFG["caption_dim"],
                                                        generator=gen)
    torch.save({"model": gpt}, os.path.join(scratch, "t2i.pt"))
    vq = rnd.random_vq_state_dict(VQ_CFG, gen, with_encoder=True)
    torch.save({"model": vq}, os.path.join(scratch, "vq.pt"))
    hf = t5fix.write_hf_folder(os.path.join(scratch, "t5"), T5_CFG,
                               t5fix.random_hf_t5(T5_CFG, seed))
    shutil.copyfile(SPIECE, os.path.join(hf, "spiece.model"))
    if os.path.exists(out):
        shutil.rmtree(out)
    rc = convert.main(["llamagen", "--gpt", os.path.join(scratch, "t2i.pt"),
                  "--vq", os.path.join(scratch, "vq.pt"), "--t5", hf,
                  "--image-size", str(IMAGE_SIZE), "--downsample", "4", "--out", out,
                  "--dtype", "bf16", "--n-head", str(GPT_CFG["n_head"]),
                  "--name", "Tessera test fixture llamagen_t2i_tiny"])
    if rc:
        sys.exit("convert.py failed (%d)" % rc)


def expected(out):
    config = json.load(open(os.path.join(out, "config.json")))
    gpt = t2i_ref.T2iGptRef(config["gpt"], stfile.load(os.path.join(out, "gpt.safetensors")))
    t5 = t5_ref.T5EncoderRef.from_section(config["t5"],
                                         stfile.load(os.path.join(out, config["t5"]["file"])))
    vq = ref.VqDecoderRef(config["vq"], stfile.load(os.path.join(out, "vq.safetensors")))
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(out, "spiece.model"))
    rows, lens = zip(*(hf_t5_tokenize(sp, t5_clean_ref.text_preprocessing(p)) for p in PROMPTS))
    ids = torch.tensor(rows, dtype=torch.long)
    lens = torch.tensor(lens)
    masks = (torch.arange(MAX_LEN)[None, :] < lens[:, None]).long()
    with torch.no_grad():
        feats = t5.forward(ids, masks)
    res = {"tok.ids": ids.int(), "tok.n": lens.int()}
    null = gpt.w["cls_embedding.uncond_embedding"]
    for i, n in enumerate(lens.tolist()):
        res["t5.%d" % i] = feats[i, :n].contiguous()
        res["cap.cond.%d" % i] = gpt.caption(feats[i, :n]).contiguous()
        res["cap.uncond.%d" % i] = gpt.caption(null[MAX_LEN - n:]).contiguous()
    embs, emb_masks = t2i_ref.left_pad(feats, masks)
    traces, prefill = [], []
    res["greedy.cfg.tokens"] = gpt.generate(embs, emb_masks, cfg_scale=CFG, top_k=1,
                                            trace=traces, prefill_logits=prefill).int()
    res["prefill.logits"] = prefill[0]
    res["greedy.nocfg.tokens"] = gpt.generate(embs, emb_masks, cfg_scale=1.0, top_k=1,
                                              trace=traces).int()
    res["vq.image_u8"] = ref.to_uint8(vq.decode(res["greedy.cfg.tokens"].long())).int()
    return res, min_gap(traces)


def min_gap(traces):
    worst = float("inf")
    for logits in traces:
        top = torch.topk(logits, 2, dim=-1).values
        rel = (top[:, 0] - top[:, 1]) / torch.clamp(top.abs().max(dim=-1).values, min=1.0)
        worst = min(worst, rel.min().item())
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "llamagen_t2i_tiny"))
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="tessera-t2i-fix-") as scratch:
        for seed in range(50):
            write_folder(args.out, scratch, seed)
            res, gap = expected(args.out)
            if gap > GAP:
                break
            print("seed %d has a greedy near-tie (gap %.2e), trying the next" % (seed, gap))
        else:
            sys.exit("no seed gave well-separated greedy steps")
    stfile.save(os.path.join(args.out, "expected.safetensors"), res,
                {"fixture": "llamagen_t2i_tiny", "seed": str(seed)})
    with open(os.path.join(args.out, "prompts.txt"), "w") as f:
        f.write("".join(p + "\n" for p in PROMPTS))
    print("llamagen_t2i_tiny: seed %d, min greedy gap %.3g, text tokens %s"
          % (seed, gap, res["tok.n"].tolist()))


if __name__ == "__main__":
    main()
