#!/usr/bin/env python3
"""LlamaGen text-to-image on one GPU: Tessera's CUDA backend against the official code
(FoundationVision/LlamaGen's GPT and generate(), with transformers' T5EncoderModel as its
language/t5.py calls it), side by side in one run. For the device machine:

    python3 bench/gpu_t2i.py --tessera BIN [--upstream bench/upstream/LlamaGen]
                             [--work /tmp/tessera-t2i] [--out DIR] [--n 1,4]
                             [--sizes 256,512] [--runs 3]

1. Greedy parity, fp32 (TF32 off) on both sides: a GPT of GPT-XL's width with 4 layers and a
   T5 of FLAN-T5-XL's width with 2 layers, random weights, 256 px, top-k 1, CFG 7.5, four
   prompts: the T5 features, then the 256 image tokens of each prompt, compared one by one.
2. Timing at the real shapes, bf16 (sample_t2i.py's default precision): GPT-XL t2i (36
   layers, 1280 wide, 120 text positions) with a FLAN-T5-XL-shaped encoder (24 layers, 2048
   wide) and VQ-16, random weights, at 256 px (16x16 tokens) and 512 px (32x32). Per size
   and batch: the prompt's T5 encoding and the token generation (cfg 7.5, top-k 1000), each
   the median of --runs runs after a warm-up (the official one of 16 tokens); Tessera's
   from `tessera generate`'s own timers (model loading excluded).

Weights: random, in the official layouts (the GPT normal with std 0.02 under upstream's
names, since upstream's own initialisation zeroes the output head; the VQ by upstream's
code, the T5 by transformers'), saved and converted by tools/convert.py
llamagen --t5, so both sides read the same numbers. The sentencepiece model is
tests/fixtures/llamagen_t2i_tiny/spiece.model (T5's own is not available offline); the prompts are
lower-case plain text, which upstream's caption cleaning leaves as is, so the official side
tokenizes them directly (sentencepiece, Hugging Face's T5 truncation and </s>), skipping
language/t5.py's ftfy and BeautifulSoup imports, which this machine lacks.
Writes t2i-report.md and t2i-results.json to --out (default $OUT, else the work folder).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
SPIECE = os.path.join(ROOT, "tests", "fixtures", "llamagen_t2i_tiny", "spiece.model")
PROMPTS = ["a blue porsche 356 parked in front of a yellow brick wall",
           "a photo of an astronaut riding a horse in the forest",
           "a map of the united states made out of sushi",
           "a portrait photo of a kangaroo wearing an orange hoodie and blue sunglasses"]
T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
             relative_attention_num_buckets=32, relative_attention_max_distance=128,
             feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False)


def log(msg):
    print("== " + msg, file=sys.stderr, flush=True)


def make_checkpoints(up, d, t5_layers, gpt_layers, dtype):
    """Official-layout checkpoints in d: t2i.pt, vq.pt and the HF folder t5/."""
    from transformers import T5Config, T5EncoderModel
    from tokenizer.tokenizer_image.vq_model import VQ_models
    os.makedirs(d, exist_ok=True)
    import make_random_checkpoints as rnd
    torch.manual_seed(0)
    # Not upstream's initialisation: it zeroes the output head, so every logit would tie
    # and a greedy draw would be a coin toss. Normal weights (std 0.02) in its layout.
    cfg = {"model_type": "t2i", "dim": 1280, "n_layer": gpt_layers,
           "ffn_dim": rnd.upstream_ffn_dim(1280), "vocab_size": 16384, "caption_dim": 2048,
           "cls_token_num": 120}
    gpt = rnd.random_gpt_state_dict(cfg, torch.Generator().manual_seed(0))
    torch.save({"model": gpt}, os.path.join(d, "t2i.pt"))
    del gpt
    torch.save({"model": VQ_models["VQ-16"]().state_dict()}, os.path.join(d, "vq.pt"))
    cfg = T5Config(**dict(T5_XL, num_layers=t5_layers))
    t5 = T5EncoderModel(cfg).to(dtype)
    t5.save_pretrained(os.path.join(d, "t5"))
    shutil.copyfile(SPIECE, os.path.join(d, "t5", "spiece.model"))
    del t5


def convert(d, out, dtype):
    import convert as conv
    rc = conv.main(["llamagen", "--gpt", os.path.join(d, "t2i.pt"), "--vq",
                    os.path.join(d, "vq.pt"), "--t5", os.path.join(d, "t5"), "--image-size",
                    "256", "--out", out, "--dtype", dtype, "--n-head", "20"])
    if rc:
        sys.exit("convert.py failed")


def folder_512(src, dst):
    """The same weights at 512 px: the config's grid changes, the files are linked."""
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f != "config.json" and not os.path.exists(os.path.join(dst, f)):
            os.symlink(os.path.join(src, f), os.path.join(dst, f))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["image_size"] = 512
    cfg["gpt"]["block_size"] = 1024
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)


def tessera(binary, model, prompt, n, device, extra=()):
    """Runs the CLI; returns (text_s, tokens_s, decode_s, tokens or None)."""
    tok = os.path.join(os.path.dirname(model), "tokens.txt")
    args = [binary, "generate", "--model", model, "--prompt", prompt, "--n", str(n),
            "--seed", "0", "--device", device, "--tokens-out", tok] + list(extra)
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if p.returncode:
        sys.exit("tessera failed: %s" % p.stderr[-2000:])
    text = float(re.search(r"encoded in ([0-9.]+) s", p.stderr).group(1))
    toks = float(re.search(r"tokens ([0-9.]+) s", p.stderr).group(1))
    dec = float(re.search(r"VQ decode ([0-9.]+) s", p.stderr).group(1)) if "VQ decode" in p.stderr else 0.0
    ids = [[int(x) for x in line.split()] for line in open(tok)]
    return text, toks, dec, ids


class Official:
    """Upstream's GPT + generate() and transformers' T5, as sample_t2i.py drives them."""

    def __init__(self, up, d, image_size, dtype, dev, n_layer):
        import sentencepiece
        from transformers import T5EncoderModel
        from autoregressive.models import generate as ugen
        from autoregressive.models import gpt as ugpt
        self.generate, self.dev, self.dtype = ugen.generate, dev, dtype
        latent = image_size // 16
        self.n_tokens = latent ** 2
        # GPT-XL's width with n_layer layers (GPT_models["GPT-XL"] when n_layer is 36).
        self.gpt = ugpt.Transformer(ugpt.ModelArgs(
            n_layer=n_layer, n_head=20, dim=1280, block_size=self.n_tokens, cls_token_num=120,
            model_type="t2i")).to(dev, dtype)
        sd = torch.load(os.path.join(d, "t2i.pt"), map_location="cpu")["model"]
        res = self.gpt.load_state_dict(sd, strict=False)
        if res.missing_keys:
            sys.exit("official GPT: missing %s" % res.missing_keys[:8])
        self.gpt.eval()
        self.t5 = T5EncoderModel.from_pretrained(os.path.join(d, "t5"), torch_dtype=dtype).to(dev)
        self.t5.eval()
        self.sp = sentencepiece.SentencePieceProcessor(model_file=SPIECE)

    def features(self, prompts):
        rows, masks = [], []
        for p in prompts:
            ids = self.sp.encode(p)[:119] + [self.sp.eos_id()]
            masks.append([1] * len(ids) + [0] * (120 - len(ids)))
            rows.append(ids + [self.sp.pad_id()] * (120 - len(ids)))
        ids = torch.tensor(rows, device=self.dev)
        mask = torch.tensor(masks, device=self.dev)
        emb = self.t5(input_ids=ids, attention_mask=mask)["last_hidden_state"]
        return emb, mask

    def run(self, prompts, cfg, top_k, n_tokens=None):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb, mask = self.features(prompts)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        new_mask = torch.flip(mask, dims=[-1])
        embs = []
        for e, m in zip(emb, mask):
            n = int(m.sum().item())
            embs.append(torch.cat([e[n:], e[:n]]))
        c = torch.stack(embs) * new_mask[:, :, None]
        seq = self.generate(self.gpt, c.to(self.dtype), n_tokens or self.n_tokens, new_mask, cfg_scale=cfg,
                            temperature=1.0, top_k=top_k, top_p=1.0, sample_logits=True)
        torch.cuda.synchronize()
        return t1 - t0, time.perf_counter() - t1, seq, emb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tessera", required=True)
    ap.add_argument("--upstream", default=os.path.join(HERE, "upstream", "LlamaGen"))
    ap.add_argument("--work", default="/tmp/tessera-t2i")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--n", default="1,4")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per configuration (medians)")
    a = ap.parse_args()
    out_dir = a.out or a.work
    os.makedirs(out_dir, exist_ok=True)
    sys.path.insert(0, os.path.abspath(a.upstream))
    import upstream_llamagen as shims
    from gpu_reference import install_sdp_kernel_shim
    install_sdp_kernel_shim()
    shims.install_import_shims()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_grad_enabled(False)
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "parity": {}, "timing": []}

    # 1. Greedy parity, fp32, shallow.
    t0 = time.time()
    small = os.path.join(a.work, "small")
    make_checkpoints(a.upstream, small, t5_layers=2, gpt_layers=4, dtype=torch.float32)
    convert(small, small + "-f32", "f32")
    off = Official(a.upstream, small, 256, torch.float32, dev, 4)
    _, _, seq, emb = off.run(PROMPTS, 7.5, 1)
    same = total = 0
    for i, p in enumerate(PROMPTS):
        _, _, _, ids = tessera(a.tessera, small + "-f32", p, 1, "cuda-fp32",
                               ["--top-k", "1", "--cfg", "7.5"])
        want = seq[i].tolist()
        same += sum(x == y for x, y in zip(ids[0], want))
        total += len(want)
    res["parity"] = {"tokens_identical": same, "tokens": total, "prompts": len(PROMPTS),
                     "gpt": "GPT-XL width, 4 layers", "t5": "FLAN-T5-XL width, 2 layers",
                     "seconds": round(time.time() - t0, 1)}
    log("greedy parity: %d of %d tokens identical" % (same, total))
    del off
    torch.cuda.empty_cache()

    # 2. Timing at the real shapes, bf16.
    full = os.path.join(a.work, "full")
    if not a.sizes:
        json.dump(res, open(os.path.join(out_dir, "t2i-results.json"), "w"), indent=2)
        return
    make_checkpoints(a.upstream, full, t5_layers=24, gpt_layers=36, dtype=torch.bfloat16)
    convert(full, full + "-256", "bf16")
    folder_512(full + "-256", full + "-512")
    prompt = PROMPTS[3]
    for px in [int(x) for x in a.sizes.split(",") if x]:
        off = Official(a.upstream, full, px, torch.bfloat16, dev, 36)
        for n in [int(x) for x in a.n.split(",")]:
            off.run([prompt] * n, 7.5, 1000, n_tokens=16)         # warm-up
            o = [off.run([prompt] * n, 7.5, 1000)[:2] for _ in range(a.runs)]
            tessera(a.tessera, full + "-%d" % px, prompt, n, "cuda")   # warm-up
            t = [tessera(a.tessera, full + "-%d" % px, prompt, n, "cuda")[:3]
                 for _ in range(a.runs)]
            row = {"px": px, "n": n, "runs": a.runs,
                   "tessera_text_s": statistics.median(x[0] for x in t),
                   "tessera_tokens_s": statistics.median(x[1] for x in t),
                   "tessera_decode_s": statistics.median(x[2] for x in t),
                   "official_text_s": statistics.median(x[0] for x in o),
                   "official_tokens_s": statistics.median(x[1] for x in o)}
            res["timing"].append(row)
            log("%d px, %d image(s): %s" % (px, n, row))
            json.dump(res, open(os.path.join(out_dir, "t2i-results.json"), "w"), indent=2)
        del off
        torch.cuda.empty_cache()

    lines = ["# LlamaGen t2i on %s, %s" % (res["device"], res["date"]), "",
             "Greedy parity (fp32, TF32 off; GPT-XL width with 4 layers, FLAN-T5-XL width with "
             "2 layers, 4 prompts, cfg 7.5): %d of %d image tokens identical." % (same, total), "",
             "| px | images | Tessera T5 (s) | official T5 (s) | Tessera tokens (s) | "
             "official tokens (s) | speed-up (tokens) | Tessera VQ decode (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["timing"]:
        lines.append("| %d | %d | %.3f | %.3f | %.2f | %.2f | %.1fx | %.3f |" % (
            r["px"], r["n"], r["tessera_text_s"], r["official_text_s"], r["tessera_tokens_s"],
            r["official_tokens_s"], r["official_tokens_s"] / r["tessera_tokens_s"],
            r["tessera_decode_s"]))
    open(os.path.join(out_dir, "t2i-report.md"), "w").write("\n".join(lines) + "\n")
    json.dump(res, open(os.path.join(out_dir, "t2i-results.json"), "w"), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
