#!/usr/bin/env python3
"""Checks the T5 encoder reference (tests/reference/t5_ref.py) and converter
(tools/convert_t5.py) against Hugging Face transformers, on a machine that has it.

    python3 bench/check_t5_ref_vs_hf.py [--tol 1e-5] [--device cpu|cuda|auto]

transformers is not a Debian package, so this is not part of `make test`; run it where
transformers is installed (our GPU machine has 5.x). For several tiny random configs
(FLAN-T5's gated-gelu, T5 v1.0's relu, gated-silu; bucket tables whose log range and
max_distance the sequences reach) it:

  1. builds transformers' T5EncoderModel with random weights (the fixture generator's
     scales), saves it with save_pretrained, and compares t5_ref on that folder's
     config.json and model.safetensors with transformers' last_hidden_state on a
     right-padded batch (lengths 1 .. T, random ids in the padding): every row;
  2. saves a T5ForConditionalGeneration with the same encoder (decoder, lm_head and
     all), converts it with convert_t5 (f32), and compares t5_ref on the converted
     file with the same outputs;
  3. compares t5_ref.relative_bucket with transformers' own bucket function, on the CPU
     and on the GPU when there is one, over relative positions -1000..1000;
  4. loads the committed fixture tests/fixtures/t5_tiny into transformers and compares
     its last_hidden_state with the fixture's expected outputs (what test_t5.c holds
     the C engine to);
  5. with a GPU, runs transformers' model there too and reports its difference.

Prints one line per comparison (max abs difference and the scale of the outputs) and
exits nonzero when any difference exceeds --tol x max(1, max |output|).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import convert_t5  # noqa: E402
import make_t5_fixtures as mk  # noqa: E402
import stfile  # noqa: E402
import t5_ref  # noqa: E402

try:
    import transformers
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
except ImportError:
    sys.exit("check_t5_ref_vs_hf.py: needs the transformers package (pip install transformers)")

CONFIGS = {
    "gated-gelu (FLAN-T5), 32 buckets, max_distance 20": (mk.TINY, 40),
    "relu (T5 v1.0), 16 buckets, max_distance 12": (mk.TINY_RELU, 24),
    "gated-silu, 16 buckets, max_distance 12":
        (dict(mk.TINY_RELU, feed_forward_proj="gated-silu"), 24),
    "gated-gelu, FLAN-T5's 32 buckets, max_distance 128, T 160":
        (dict(mk.TINY, relative_attention_max_distance=128, num_layers=2), 160),
}
BUCKET_CONFIGS = [(32, 128), (32, 20), (16, 12), (64, 256), (8, 20), (33, 100), (4, 3)]

failures = []


def report(what, got, want, tol):
    diff = (got.double() - want.double()).abs().max().item()
    scale = want.abs().max().item()
    ok = diff <= tol * max(1.0, scale)
    print("%-4s %-78s max abs diff %.3g (outputs up to %.3g)" % ("ok" if ok else "FAIL", what,
                                                                  diff, scale))
    if not ok:
        failures.append(what)


def hf_config(cfg):
    keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
            "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance",
            "layer_norm_epsilon", "feed_forward_proj")
    c = T5Config(**{k: cfg[k] for k in keys if k in cfg}, dropout_rate=0.0,
                 tie_word_embeddings=False)
    c._attn_implementation = "eager"
    return c


def load_encoder(model, sd):
    """Loads our HF-named encoder tensors into a transformers model, checking the names."""
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    bad_missing = [k for k in missing if k not in tied and not k.startswith("decoder.")]
    if bad_missing or unexpected:
        raise SystemExit("state dict mismatch: missing %s, unexpected %s"
                         % (bad_missing[:5], list(unexpected)[:5]))
    assert torch.equal(model.get_input_embeddings().weight, sd["shared.weight"])


def hf_hidden(model, ids, mask, device):
    model = model.to(device)
    with torch.no_grad():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
    return out.last_hidden_state.float().cpu()


def hf_bucket_fn():
    from transformers.models.t5 import modeling_t5
    return modeling_t5.T5Attention._relative_position_bucket


def section_to_hf(sec):
    act = {"gelu_tanh": "gelu_new"}.get(sec["ff_act"], sec["ff_act"])
    if sec["ff_gated"]:
        proj = "gated-gelu" if sec["ff_act"] == "gelu_tanh" else "gated-" + sec["ff_act"]
    else:
        proj = act
    return {"vocab_size": sec["vocab_size"], "d_model": sec["d_model"], "d_kv": sec["d_kv"],
            "d_ff": sec["d_ff"], "num_layers": sec["n_layer"], "num_heads": sec["n_head"],
            "relative_attention_num_buckets": sec["rel_buckets"],
            "relative_attention_max_distance": sec["rel_max_distance"],
            "layer_norm_epsilon": sec["norm_eps"], "feed_forward_proj": proj}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args()
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    print("transformers %s, torch %s, GPU %s" % (transformers.__version__, torch.__version__,
                                               torch.cuda.get_device_name() if gpu else "none"))
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="t5_hf_check_")
    try:
        for i, (name, (cfg, T)) in enumerate(CONFIGS.items()):
            sd = mk.random_hf_t5(cfg, 100 + i, decoder=False)
            enc = T5EncoderModel(hf_config(cfg)).eval()
            load_encoder(enc, sd)
            lens = sorted({1, T, T // 2, 3, T - 5})
            ids, lens = mk.batch(cfg, lens, T, 200 + i)
            mask = t5_ref.lengths_mask(lens, T)
            want = hf_hidden(enc, ids, mask, "cpu")

            # 1. t5_ref on the folder save_pretrained writes
            d = os.path.join(work, "enc%d" % i)
            enc.save_pretrained(d)
            with open(os.path.join(d, "config.json")) as f:
                saved_cfg = json.load(f)
            files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
            saved = {}
            for f in files:
                saved.update(stfile.load(os.path.join(d, f)))
            ref = t5_ref.T5EncoderRef.from_hf(saved_cfg, saved)
            with torch.no_grad():
                got = ref(ids, mask)
            report("%s: t5_ref vs HF, every row" % name, got, want, args.tol)
            valid = mask.bool()
            report("%s: t5_ref vs HF, valid rows" % name, got[valid], want[valid], args.tol)

            # 2. convert_t5 on a full T5ForConditionalGeneration folder
            full = T5ForConditionalGeneration(hf_config(cfg)).eval()
            load_encoder(full, sd)
            fd = os.path.join(work, "full%d" % i)
            full.save_pretrained(fd)
            with open(os.path.join(fd, "spiece.model"), "wb") as f:
                f.write(mk.SPIECE_PLACEHOLDER)
            sec = convert_t5.convert_t5(fd, os.path.join(work, "conv%d" % i), "f32")
            conv = stfile.load(os.path.join(work, "conv%d" % i, sec["file"]))
            with torch.no_grad():
                got = t5_ref.T5EncoderRef.from_section(sec, conv)(ids, mask)
            report("%s: converted full checkpoint vs HF" % name, got, want, args.tol)

            # 5. transformers itself on the GPU
            if gpu:
                report("%s: HF on the GPU vs HF on the CPU" % name,
                       hf_hidden(enc, ids, mask, "cuda"), want, 1e-4)

        # 3. buckets
        bucket = hf_bucket_fn()
        rel = torch.arange(-1000, 1001)
        for nb, md in BUCKET_CONFIGS:
            ours = t5_ref.relative_bucket(rel, nb, md)
            for dev in (["cpu", "cuda"] if gpu else ["cpu"]):
                theirs = bucket(rel.to(dev), bidirectional=True, num_buckets=nb,
                                max_distance=md).cpu()
                report("buckets (%d, %d) on %s: t5_ref vs HF" % (nb, md, dev), ours, theirs, 0.0)

        # 4. the committed fixture
        fix = os.path.join(ROOT, "tests", "fixtures", "t5_tiny")
        with open(os.path.join(fix, "config.json")) as f:
            fcfg = json.load(f)
        exp = stfile.load(os.path.join(fix, "expected.safetensors"))
        for sec_name, prefix in (("t5", ""), ("t5_relu", "relu.")):
            sec = fcfg[sec_name]
            enc = T5EncoderModel(hf_config(section_to_hf(sec))).eval()
            load_encoder(enc, stfile.load(os.path.join(fix, sec["file"])))
            ids, lens = exp[prefix + "ids"].long(), exp[prefix + "lens"].long()
            T = ids.shape[1]
            got = hf_hidden(enc, ids, t5_ref.lengths_mask(lens, T), "cpu")
            report("fixture t5_tiny/%s: HF vs expected.safetensors, every row" % sec_name,
                   exp[prefix + "hidden"], got, args.tol)
        for (nb, md), want_b in zip(exp["bucket.config"].tolist(), exp["bucket.value"].long()):
            theirs = bucket(exp["bucket.rel"].long(), bidirectional=True, num_buckets=nb,
                            max_distance=md)
            report("fixture buckets (%d, %d) vs HF" % (nb, md), want_b, theirs, 0.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
