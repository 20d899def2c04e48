#!/usr/bin/python3
"""Tests tools/convert_t5.py on random T5 checkpoints in every Hugging Face folder layout.

    /usr/bin/python3 tests/reference/test_convert_t5.py

For each layout (model.safetensors, pytorch_model.bin with tied embeddings, sharded
safetensors, sharded bin; a full T5ForConditionalGeneration checkpoint or an encoder-only
one; shared.weight or only encoder.embed_tokens.weight) the converted t5.safetensors must
hold exactly the encoder's tensors, equal to the checkpoint's (cast to f32, bf16 or f16),
spiece.model must be copied, and the returned section must describe the model; t5_ref
on the converted file must give the checkpoint's own outputs. Refusals: a missing
tensor, a wrong shape, an unexpected encoder tensor, shared/embed_tokens that differ, a
missing spiece.model, a folder without weights, unsupported configs. Also the
committed fixture tests/fixtures/t5_tiny against t5_ref (its expected outputs), and
t5_ref's own invariants (valid rows independent of the padding after them). Prints one
summary line; exits nonzero on any failure.
"""
import json
import os
import shutil
import sys
import tempfile
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import convert_t5  # noqa: E402
import make_t5_fixtures as mk  # noqa: E402
import stfile  # noqa: E402
import t5_ref  # noqa: E402

WORK = tempfile.mkdtemp(prefix="tessera_test_convert_t5_")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "t5_tiny")
CFG = mk.TINY
CFG_RELU = mk.TINY_RELU
CFG_SILU = dict(mk.TINY_RELU, feed_forward_proj="gated-silu")


def folder(name, cfg, sd, **kw):
    return mk.write_hf_folder(os.path.join(WORK, name), cfg, sd, **kw)


def expect_refused(hf_dir, needle, dtype="f32"):
    out = os.path.join(WORK, "refused_out")
    try:
        convert_t5.convert_t5(hf_dir, out, dtype)
    except convert_t5.T5ConvertError as e:
        assert needle in str(e), "message %r does not mention %r" % (str(e), needle)
        return
    raise AssertionError("%s was converted; expected a refusal naming %r" % (hf_dir, needle))


def encoder_part(sd):
    return {k: v for k, v in sd.items() if not k.startswith(("decoder.", "lm_head."))}


def check_converted(hf_dir, sd, cfg, dtype):
    """Converts hf_dir and checks the result against the checkpoint's tensors sd."""
    out = os.path.join(WORK, os.path.basename(hf_dir) + "_" + dtype)
    sec = convert_t5.convert_t5(hf_dir, out, dtype)
    want_sec = {"file": "t5.safetensors", "tokenizer": "spiece.model",
                "vocab_size": cfg["vocab_size"], "d_model": cfg["d_model"], "d_kv": cfg["d_kv"],
                "d_ff": cfg["d_ff"], "n_layer": cfg["num_layers"], "n_head": cfg["num_heads"],
                "rel_buckets": cfg["relative_attention_num_buckets"],
                "rel_max_distance": cfg["relative_attention_max_distance"], "norm_eps": 1e-6}
    for k, v in want_sec.items():
        assert sec[k] == v, "section %s: %r, expected %r" % (k, sec[k], v)
    assert sorted(os.listdir(out)) == ["spiece.model", "t5.safetensors"], os.listdir(out)
    with open(os.path.join(out, "spiece.model"), "rb") as f:
        assert f.read() == mk.SPIECE_PLACEHOLDER
    got, meta = stfile.load(os.path.join(out, "t5.safetensors"), with_metadata=True)
    assert meta.get("format") == "hf-t5", meta
    want = encoder_part(sd)
    if "shared.weight" not in want:
        want["shared.weight"] = want["encoder.embed_tokens.weight"]
    want.pop("encoder.embed_tokens.weight", None)
    assert sorted(got) == sorted(want), "tensors differ: extra %s, missing %s" % (
        sorted(set(got) - set(want))[:4], sorted(set(want) - set(got))[:4])
    tdtype = convert_t5.DTYPES[dtype]
    for name, t in want.items():
        assert got[name].dtype == tdtype, "%s: dtype %s" % (name, got[name].dtype)
        assert torch.equal(got[name], t.to(tdtype)), "%s: values differ" % name
    return sec, got


def outputs(enc, cfg, lens, T, seed=11):
    ids, lens = mk.batch(cfg, lens, T, seed)
    with torch.no_grad():
        return enc(ids, t5_ref.lengths_mask(lens, T)), lens


# ---------------------------------------------------------------------------------------


def test_layouts():
    sd = mk.random_hf_t5(CFG, 5)
    ref_hidden, lens = outputs(t5_ref.T5EncoderRef.from_hf(CFG, sd), CFG, [30, 7, 1], 30)
    for layout in mk.LAYOUTS:
        tied = layout.endswith("bin")
        hf = folder("full_" + layout, CFG, sd, layout=layout, tied=tied)
        for dtype in ("f32", "bf16", "f16"):
            sec, got = check_converted(hf, sd, CFG, dtype)
            assert sec["ff_act"] == "gelu_tanh" and sec["ff_gated"] is True, sec
            if dtype == "f32":   # the converted file computes what the checkpoint does
                hidden, _ = outputs(t5_ref.T5EncoderRef.from_section(sec, got), CFG, [30, 7, 1], 30)
                assert torch.equal(hidden, ref_hidden), "%s: outputs differ" % layout
    # T5EncoderModel checkpoints: encoder only; shared.weight, or embed_tokens alone
    enc = encoder_part(sd)
    for layout in ("safetensors", "bin"):
        check_converted(folder("enc_" + layout, CFG, enc, layout=layout, tied=layout == "bin"),
                        enc, CFG, "f32")
    only_embed = dict(enc)
    only_embed["encoder.embed_tokens.weight"] = only_embed.pop("shared.weight")
    check_converted(folder("enc_embed_only", CFG, only_embed), only_embed, CFG, "bf16")
    # relu (T5 v1.0: one wi) and gated-silu
    for name, cfg in (("relu", CFG_RELU), ("silu", CFG_SILU)):
        sd2 = mk.random_hf_t5(cfg, 6)
        sec, _ = check_converted(folder(name, cfg, sd2, layout="bin"), sd2, cfg, "f32")
        assert (sec["ff_act"], sec["ff_gated"]) == ({"relu": ("relu", False),
                                                     "silu": ("silu", True)}[name]), sec
    # an old config without relative_attention_max_distance or feed_forward_proj: HF's defaults
    old = {k: v for k, v in CFG_RELU.items()
           if k not in ("relative_attention_max_distance", "feed_forward_proj")}
    sec = convert_t5.t5_section(old)
    assert sec["rel_max_distance"] == 128 and sec["ff_act"] == "relu" and not sec["ff_gated"]


def test_refusals():
    sd = mk.random_hf_t5(CFG, 7)
    missing = dict(sd)
    del missing["encoder.block.2.layer.1.DenseReluDense.wi_1.weight"]
    expect_refused(folder("missing", CFG, missing),
                   "encoder.block.2.layer.1.DenseReluDense.wi_1.weight")
    no_bias = dict(sd)
    del no_bias["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    expect_refused(folder("no_bias", CFG, no_bias, layout="sharded-bin"), "relative_attention_bias")
    no_embed = {k: v for k, v in sd.items() if k != "shared.weight"}
    expect_refused(folder("no_embed", CFG, no_embed), "missing tensor shared.weight")
    shape = dict(sd)
    shape["encoder.block.1.layer.0.SelfAttention.o.weight"] = torch.zeros(48, 48)
    expect_refused(folder("shape", CFG, shape, layout="sharded-safetensors"),
                   "encoder.block.1.layer.0.SelfAttention.o.weight has shape [48, 48], "
                   "expected [48, 64]")
    umt5 = dict(sd)
    second_bias = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
    umt5[second_bias] = torch.zeros(32, 4)
    expect_refused(folder("umt5", CFG, umt5), second_bias)
    differ = dict(sd)
    differ["encoder.embed_tokens.weight"] = sd["shared.weight"] + 1
    expect_refused(folder("differ", CFG, differ), "differ")
    # the config says relu, the file is gated
    expect_refused(folder("wrong_act", dict(CFG, feed_forward_proj="relu"), sd), "wi_0")
    expect_refused(folder("no_spiece", CFG, sd, spiece=False), "spiece.model")
    empty = os.path.join(WORK, "no_weights")
    mk.write_hf_folder(empty, CFG, sd)
    os.remove(os.path.join(empty, "model.safetensors"))
    expect_refused(empty, "has no T5 weights")
    with open(os.path.join(WORK, "missing", "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"shared.weight": "model-00009-of-00009.safetensors"}}, f)
    expect_refused(os.path.join(WORK, "missing"), "model-00009-of-00009.safetensors")
    expect_refused(os.path.join(WORK, "does_not_exist"), "no such folder")
    for bad, needle in ((dict(CFG, feed_forward_proj="gated-gelu_fast"), "gelu_fast"),
                        (dict(CFG, model_type="umt5"), "umt5"),
                        (dict(CFG, relative_attention_max_distance=8), "max_distance"),
                        ({k: v for k, v in CFG.items() if k != "d_kv"}, "d_kv")):
        expect_refused(folder("badcfg", bad, sd), needle)
        shutil.rmtree(os.path.join(WORK, "badcfg"))
    expect_refused(folder("dtype", CFG, sd), "dtype", dtype="f64")


def test_fixture():
    """The committed fixture: its outputs are t5_ref's on its stored weights."""
    with open(os.path.join(FIXTURE, "config.json")) as f:
        cfg = json.load(f)
    exp = stfile.load(os.path.join(FIXTURE, "expected.safetensors"))
    for sec_name, prefix in (("t5", ""), ("t5_relu", "relu.")):
        sec = cfg[sec_name]
        sd = stfile.load(os.path.join(FIXTURE, sec["file"]))
        assert sorted(sd) == sorted(convert_t5.encoder_shapes(sec)), sec_name
        enc = t5_ref.T5EncoderRef.from_section(sec, sd)
        ids, lens = exp[prefix + "ids"].long(), exp[prefix + "lens"].long()
        T = ids.shape[1]
        with torch.no_grad():
            hidden = enc(ids, t5_ref.lengths_mask(lens, T))
        err = (hidden - exp[prefix + "hidden"]).abs().max().item()
        assert err < 1e-5, "%s: fixture differs from t5_ref by %g" % (sec_name, err)
    rel = exp["bucket.rel"].long()
    for (nb, md), want in zip(exp["bucket.config"].tolist(), exp["bucket.value"]):
        assert torch.equal(t5_ref.relative_bucket(rel, nb, md), want.long()), (nb, md)


def test_reference_invariants():
    """Valid rows depend only on the valid tokens: not on the padding's ids or width."""
    sd = mk.random_hf_t5(CFG, 8, decoder=False)
    enc = t5_ref.T5EncoderRef.from_hf(CFG, sd)
    ids, lens = mk.batch(CFG, [12, 5, 30], 40, 9)
    with torch.no_grad():
        full = enc(ids, t5_ref.lengths_mask(lens, 40))
        ids2 = ids.clone()
        for i, n in enumerate(lens.tolist()):
            ids2[i, n:] = 0
        short = enc(ids2[:, :30], t5_ref.lengths_mask(lens, 30))
    for i, n in enumerate(lens.tolist()):
        err = (full[i, :n] - short[i, :n]).abs().max().item()
        assert err < 1e-5, "sequence %d: valid rows depend on the padding (%g)" % (i, err)
    # FLAN-T5's buckets at a few distances (exact below 8, log to 127, last beyond)
    rel = torch.tensor([0, -1, 1, -7, 7, -8, -16, -32, -64, 64, -127, -128, 1000])
    want = [0, 1, 17, 7, 23, 8, 10, 12, 14, 30, 15, 15, 31]
    assert t5_ref.relative_bucket(rel, 32, 128).tolist() == want


def main():
    tests = [test_layouts, test_refusals, test_fixture, test_reference_invariants]
    failed = 0
    torch.set_num_threads(2)
    try:
        for t in tests:
            try:
                t()
            except Exception:   # noqa: BLE001 - report every failure, then the total
                failed += 1
                print("FAIL %s" % t.__name__)
                traceback.print_exc()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print("test_convert_t5: %d of %d passed" % (len(tests) - failed, len(tests)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
