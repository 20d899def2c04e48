#!/usr/bin/python3
"""Regenerates the committed LlamaGen fixtures under tests/fixtures/ (deterministic).

    /usr/bin/python3 tests/reference/make_fixtures.py [--out tests/fixtures]

Each fixture is a model folder (config.json + safetensors, as tools/convert.py writes)
plus expected.safetensors computed by llamagen_ref.py in fp32 on exactly the stored
(bf16- or f16-rounded) weights. See tests/fixtures/README.md for the tensor list.

Weights are random but scaled so that logits are well spread: every greedy step must beat
the runner-up by more than GAP relative, or the seed is advanced, so that an engine
computing in a different order cannot flip an argmax on a near-tie.
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import llamagen_ref as ref  # noqa: E402
import make_random_checkpoints as rnd  # noqa: E402
import stfile  # noqa: E402

GAP = 3e-3          # minimum top-1/top-2 margin, relative to max(|top-1|, 1)
N_CLASSES = 3       # K in the README
CFG_RUNS = {        # name -> (cfg_scale, cfg_interval), all greedy (top_k 1)
    "cfg4": (4.0, -1),
    "cfg1": (1.0, -1),
    "cfg4_interval2": (4.0, 2),
}

FIXTURES = {
    # 4x4 tokens, 16x16 px; BF16 weights.
    "llamagen_tiny": {
        "dtype": torch.bfloat16, "image_size": 16,
        "gpt": {"dim": 64, "n_layer": 2, "n_head": 4, "ffn_dim": 192, "vocab_size": 256,
                "num_classes": 10, "block_size": 16},
        "vq": {"codebook_size": 256, "codebook_embed_dim": 8, "z_channels": 32, "ch": 32,
               "ch_mult": [1, 1, 2], "num_res_blocks": 1, "codebook_l2_norm": True},
    },
    # One head of 100 (GPT-3B's head_dim: 25 RoPE frequencies, an odd count); F16, no VQ.
    "llamagen_hd100": {
        "dtype": torch.float16, "image_size": 64,
        "gpt": {"dim": 100, "n_layer": 2, "n_head": 1, "ffn_dim": 128, "vocab_size": 64,
                "num_classes": 4, "block_size": 16},
        "vq": None,
    },
}


def gpt_section(spec):
    g = dict(spec["gpt"])
    g.update(model_type="c2i", n_kv_head=g["n_head"], cls_token_num=1,
             rope_base=10000.0, norm_eps=1e-5)
    order = ["file", "model_type", "dim", "n_layer", "n_head", "n_kv_head", "ffn_dim",
             "vocab_size", "num_classes", "cls_token_num", "block_size", "rope_base",
             "norm_eps"]
    g["file"] = "gpt.safetensors"
    return {k: g[k] for k in order}


def write_model_dir(path, name, spec, seed):
    """Random weights -> model folder; returns nothing, the folder is the truth."""
    gen = torch.Generator().manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    gpt_cfg = gpt_section(spec)
    config = {"tessera_format": 1, "family": "llamagen",
              "name": "Tessera test fixture %s" % name, "image_size": spec["image_size"],
              "gpt": gpt_cfg}
    meta = {"fixture": name, "seed": str(seed)}
    gpt = rnd.random_gpt_state_dict(gpt_cfg, gen, std=0.2, norm_noise=0.1)
    stfile.save(os.path.join(path, "gpt.safetensors"), gpt, meta, cast=spec["dtype"])
    if spec["vq"]:
        config["vq"] = dict({"file": "vq.safetensors"}, **spec["vq"])
        vq = rnd.random_vq_state_dict(spec["vq"], gen, with_encoder=False)
        stfile.save(os.path.join(path, "vq.safetensors"), vq, meta, cast=spec["dtype"])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def min_gap(traces):
    worst = float("inf")
    for logits in traces:
        top = torch.topk(logits, 2, dim=-1).values
        rel = (top[:, 0] - top[:, 1]) / torch.clamp(top.abs().max(dim=-1).values, min=1.0)
        worst = min(worst, rel.min().item())
    return worst


def expected_tensors(path, seed):
    """Computes expected.safetensors from the folder as written. Returns (dict, gap)."""
    gpt, vq, config = ref.load_model_dir(path)
    g = config["gpt"]
    gen = torch.Generator().manual_seed(seed + 1000)
    length = g["block_size"]
    cls = torch.randint(0, g["num_classes"], (1,), generator=gen)
    tokens = torch.randint(0, g["vocab_size"], (length,), generator=gen)
    classes = torch.randperm(g["num_classes"], generator=gen)[:N_CLASSES]
    out = {
        "tf.class": cls.int(),
        "tf.tokens": tokens.int(),
        "tf.logits": gpt.teacher_forced_logits(cls, tokens[None, :-1])[0],
        "greedy.classes": classes.int(),
        "rope.table": gpt.rope,
    }
    traces = []
    for run, (scale, interval) in CFG_RUNS.items():
        toks = gpt.generate(classes, cfg_scale=scale, cfg_interval=interval, top_k=1,
                            trace=traces)
        out["greedy.%s.tokens" % run] = toks.int()
    if vq is not None:
        codes = out["greedy.cfg4.tokens"]
        image = vq.decode(codes)
        out["vq.codes"] = codes
        out["vq.image"] = image
        out["vq.image_u8"] = ref.to_uint8(image).int()
    return out, min_gap(traces)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, spec in FIXTURES.items():
        path = os.path.join(args.out, name)
        for seed in range(100):
            write_model_dir(path, name, spec, seed)
            expected, gap = expected_tensors(path, seed)
            if gap > GAP:
                break
            print("%s: seed %d has a greedy near-tie (gap %.2e), trying the next" %
                  (name, seed, gap))
        else:
            sys.exit("%s: no seed gave well-separated greedy steps" % name)
        stfile.save(os.path.join(path, "expected.safetensors"), expected,
                    {"fixture": name, "seed": str(seed)})
        extra = ""
        if "vq.image" in expected:
            img = expected["vq.image"]
            extra = ", image mean %.3f std %.3f range [%.2f, %.2f]" % (
                img.mean(), img.std(), img.min(), img.max())
        print("%s: seed %d, min greedy gap %.3g%s" % (name, seed, gap, extra))


if __name__ == "__main__":
    main()
