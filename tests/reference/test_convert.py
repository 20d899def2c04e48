#!/usr/bin/python3
"""Tests tools/convert.py on random official-layout checkpoints, and optionally the engine.

    /usr/bin/python3 tests/reference/test_convert.py [path/to/build/tessera]

Without an argument only the Python side runs: checkpoints from make_random_checkpoints.py
in the {"model": ...} and bare FSDP layouts, converted in f32/bf16/f16 and compared tensor
by tensor; refusals of unknown, missing and t2i keys; size inference. The same for MaskGen
(convert.py maskgen on make_random_maskgen.py output): HF folders, bare files with json or
yaml configs, the tied head under either name, a TorchScript CLIP file, and refusals of
unknown / missing / wrong-shape tensors, VAE and legacy tokenizers, vocabulary mismatches
and config contradictions. With the tessera binary, it also generates two LlamaGen images
with greedy CFG and compares tokens and pixels with llamagen_ref.py. Prints one summary
line; exits nonzero on any failure.
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, HERE)
sys.path.insert(0, TOOLS)
import llamagen_ref as ref  # noqa: E402
import stfile  # noqa: E402

# A tiny c2i model and VQ (4x4 tokens, 16x16 px). Seed 3 keeps every greedy step of the
# engine test clear of near-ties (checked in test_engine_generate).
TINY_GPT = ["--dim", "64", "--n-layer", "2", "--n-head", "4", "--vocab", "256",
            "--num-classes", "10", "--ffn-dim", "192", "--std", "0.2"]
TINY_VQ = ["--ch", "32", "--ch-mult", "1,1,2", "--z-channels", "32", "--num-res-blocks", "1",
           "--codebook-size", "256"]
TINY_SEED = "3"
ENGINE_CLASSES = [1, 7]
PSNR_MIN = 45.0

WORK = tempfile.mkdtemp(prefix="tessera_test_convert_")


def run(*args):
    """Runs a Python tool; returns (exit code, stdout + stderr)."""
    p = subprocess.run([sys.executable] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


def run_ok(*args):
    code, out = run(*args)
    assert code == 0, "%s failed (%d):\n%s" % (os.path.basename(str(args[0])), code, out)
    return out


def make_checkpoints(name, *flags):
    out = os.path.join(WORK, name)
    if not os.path.exists(out):
        run_ok(os.path.join(TOOLS, "make_random_checkpoints.py"), "--out", out, *flags)
    return out


def tiny_checkpoints(fsdp=False):
    flags = TINY_GPT + TINY_VQ + ["--image-size", "16", "--seed", TINY_SEED]
    return make_checkpoints("tiny_fsdp" if fsdp else "tiny", *(flags + ["--fsdp"] * fsdp))


def convert(gpt, vq, out, *flags, image_size=16):
    args = [os.path.join(TOOLS, "convert.py"), "llamagen", "--gpt", gpt, "--image-size",
            image_size, "--out", os.path.join(WORK, out)] + list(flags)
    if vq:
        args += ["--vq", vq]
    return run(*args)


def load_config(out):
    with open(os.path.join(WORK, out, "config.json")) as f:
        return json.load(f)


def gpt_weights(ckpt_dir):
    ck = torch.load(os.path.join(ckpt_dir, "gpt.pt"), map_location="cpu")
    return ck.get("model", ck)


# ---------------------------------------------------------------------------------------
# Tests: each raises AssertionError with a message on failure.


def check_converted(ckpt_dir, out, dtype):
    cfg = load_config(out)
    g, v = cfg["gpt"], cfg["vq"]
    assert cfg["tessera_format"] == 1 and cfg["family"] == "llamagen", cfg
    assert cfg["image_size"] == 16, cfg["image_size"]
    want = {"model_type": "c2i", "dim": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 4,
            "ffn_dim": 192, "vocab_size": 256, "num_classes": 10, "cls_token_num": 1,
            "block_size": 16, "rope_base": 10000.0, "norm_eps": 1e-5,
            "file": "gpt.safetensors"}
    assert {k: g.get(k) for k in want} == want, g
    want = {"codebook_size": 256, "codebook_embed_dim": 8, "z_channels": 32, "ch": 32,
            "ch_mult": [1, 1, 2], "num_res_blocks": 1, "codebook_l2_norm": True,
            "file": "vq.safetensors"}
    assert {k: v.get(k) for k in want} == want, v

    orig = gpt_weights(ckpt_dir)
    assert "freqs_cis" in orig  # the checkpoint carries it, the folder must not
    orig.pop("freqs_cis")
    vq = torch.load(os.path.join(ckpt_dir, "vq.pt"))["model"]
    vq = {k: t for k, t in vq.items()
          if not k.startswith(("encoder.", "quant_conv.", "quantize.codebook_used"))}
    for fname, src in (("gpt.safetensors", orig), ("vq.safetensors", vq)):
        got = stfile.load(os.path.join(WORK, out, fname))
        assert set(got) == set(src), "%s: key sets differ: %s" % (fname, set(got) ^ set(src))
        for k, t in src.items():
            assert got[k].dtype == dtype, "%s %s: dtype %s" % (fname, k, got[k].dtype)
            assert torch.equal(got[k], t.to(dtype)), "%s %s: values differ" % (fname, k)


def test_convert_ddp_all_dtypes():
    ck = tiny_checkpoints()
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16),
                        ("f16", torch.float16)):
        out = "tiny_" + name
        code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", out, "--dtype", name,
                            "--n-head", "4")
        assert code == 0, msg
        check_converted(ck, out, dtype)


def test_convert_fsdp_bare_state_dict():
    ck = tiny_checkpoints(fsdp=True)
    assert "model" not in torch.load(ck + "/gpt.pt")
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "tiny_fsdp", "--n-head", "4")
    assert code == 0, msg
    check_converted(ck, "tiny_fsdp", torch.float32)


def test_convert_other_wrappers_and_vq_ema():
    """{"module"} and {"state_dict"} GPT files load; a VQ file's "ema" wins over "model"."""
    ck = tiny_checkpoints()
    sd = gpt_weights(ck)
    vq = torch.load(ck + "/vq.pt")["model"]
    ema = {k: t + 1.0 for k, t in vq.items()}
    vq_path = os.path.join(WORK, "vq_ema.pt")
    torch.save({"model": vq, "ema": ema}, vq_path)
    for key in ("module", "state_dict"):
        path = os.path.join(WORK, "gpt_%s.pt" % key)
        torch.save({key: sd, "steps": 7}, path)
        code, msg = convert(path, vq_path, "wrapped", "--n-head", "4")
        assert code == 0, msg
    got = stfile.load(os.path.join(WORK, "wrapped", "vq.safetensors"))
    name = "decoder.conv_out.weight"
    assert torch.equal(got[name], ema[name]), "VQ conversion did not use the ema weights"


def test_folder_matches_official_weights():
    """The reference built from the folder and from the .pt computes the same logits."""
    ck = tiny_checkpoints()
    if not os.path.exists(os.path.join(WORK, "tiny_f32")):
        assert convert(ck + "/gpt.pt", ck + "/vq.pt", "tiny_f32", "--n-head", "4")[0] == 0
    gpt, _, _ = ref.load_model_dir(os.path.join(WORK, "tiny_f32"))
    official = ref.GptRef.from_official(gpt_weights(ck), 16, n_head=4)
    labels, tokens = torch.tensor([2]), torch.randint(0, 256, (1, 15))
    assert torch.equal(gpt.teacher_forced_logits(labels, tokens),
                       official.teacher_forced_logits(labels, tokens))


def refused(sd_edit, expect, n_head=True, wrap=True):
    """Edits the tiny GPT state dict, converts it, and checks the refusal names `expect`."""
    ck = tiny_checkpoints()
    sd = gpt_weights(ck)
    sd_edit(sd)
    path = os.path.join(WORK, "edited_gpt.pt")
    torch.save({"model": sd} if wrap else sd, path)
    code, msg = convert(path, ck + "/vq.pt", "refused", *(["--n-head", "4"] * n_head))
    assert code != 0, "accepted a bad checkpoint (expected refusal naming %r)" % expect
    assert expect in msg, "message does not name %r:\n%s" % (expect, msg)


def test_refuses_unknown_key():
    refused(lambda sd: sd.__setitem__("layers.0.attention.bogus.weight", torch.zeros(4)),
            "layers.0.attention.bogus.weight")


def test_refuses_missing_key():
    refused(lambda sd: sd.pop("layers.1.ffn_norm.weight"), "layers.1.ffn_norm.weight",
            wrap=False)


def test_refuses_wrong_shape():
    refused(lambda sd: sd.__setitem__("layers.1.feed_forward.w2.weight",
                                      torch.zeros(64, 100)), "layers.1.feed_forward.w2.weight")


def test_refuses_t2i():
    def to_t2i(sd):
        sd.pop("cls_embedding.embedding_table.weight")
        sd["cls_embedding.cap_proj.fc1.weight"] = torch.zeros(64, 2048)
        sd["cls_embedding.cap_proj.fc2.weight"] = torch.zeros(64, 64)
        sd["cls_embedding.uncond_embedding"] = torch.zeros(120, 2048)
    refused(to_t2i, "t2i not supported yet")


def test_refuses_unknown_vq_key():
    ck = tiny_checkpoints()
    vq = torch.load(ck + "/vq.pt")
    vq["model"]["decoder.conv_blocks.0.extra.weight"] = torch.zeros(3)
    path = os.path.join(WORK, "edited_vq.pt")
    torch.save(vq, path)
    code, msg = convert(ck + "/gpt.pt", path, "refused", "--n-head", "4")
    assert code != 0 and "decoder.conv_blocks.0.extra.weight" in msg, msg


def test_needs_n_head_for_custom_sizes():
    ck = tiny_checkpoints()
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "refused")
    assert code != 0 and "--n-head" in msg, msg


def test_infers_gpt_b_and_checks_gpt_model():
    # Real GPT-B shapes (444 MB fp32) with a small VQ that has the real 16384 codebook.
    ck = make_checkpoints("gpt_b", "--gpt-model", "GPT-B", "--ch", "32", "--ch-mult",
                          "1,1,1,1,2", "--z-channels", "32", "--num-res-blocks", "1")
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "gpt_b", "--dtype", "bf16",
                        image_size=256)
    assert code == 0, msg
    cfg = load_config("gpt_b")
    g = cfg["gpt"]
    got = (g["dim"], g["n_layer"], g["n_head"], g["ffn_dim"], g["block_size"])
    assert got == (768, 12, 12, 2048, 256), got
    assert cfg["name"] == "LlamaGen GPT-B c2i 256px", cfg["name"]
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "gpt_b", "--gpt-model", "GPT-L",
                        image_size=256)
    assert code != 0 and "GPT-L" in msg, msg
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "gpt_b", "--n-head", "8",
                        image_size=256)
    assert code != 0 and "--n-head" in msg, msg


def test_infers_vq8_layout():
    ck = make_checkpoints("vq8", *(TINY_GPT + ["--ch", "32", "--ch-mult", "1,2,2,4",
                                               "--z-channels", "32", "--num-res-blocks", "1",
                                               "--codebook-size", "256", "--image-size",
                                               "32"]))
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "vq8", "--n-head", "4", image_size=32)
    assert code == 0, msg
    cfg = load_config("vq8")
    assert cfg["vq"]["ch_mult"] == [1, 2, 2, 4] and cfg["vq"]["ch"] == 32, cfg["vq"]
    assert cfg["gpt"]["block_size"] == 16, cfg["gpt"]  # 32 px / downsample 8 = 4x4 tokens
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "refused", "--n-head", "4",
                        image_size=36)
    assert code != 0 and "multiple" in msg, msg


# ---------------------------------------------------------------------------------------
# MaskGen-VQ: convert.py maskgen on make_random_maskgen.py output (tiny sizes).

MG_TINY_FLAGS = ["--tokenizer-n-head", "2", "--clip-n-head", "2"]


def maskgen_checkpoints(name, *flags):
    """Random official-layout MaskGen files under WORK/name (made once)."""
    out = os.path.join(WORK, name)
    if not os.path.exists(out):
        run_ok(os.path.join(TOOLS, "make_random_maskgen.py"), "--size", "tiny", "--out", out,
               "--seed", "5", *flags)
    return out


def convert_maskgen(ck, out, flags=(), generator=None, tokenizer=None, clip=None, vocab=None,
                    tiny=True):
    """Runs convert.py maskgen; the four inputs default to ck's HF folders and files."""
    args = [os.path.join(TOOLS, "convert.py"), "maskgen",
            "--generator", generator or os.path.join(ck, "generator"),
            "--tokenizer", tokenizer or os.path.join(ck, "tokenizer"),
            "--clip", clip or os.path.join(ck, "clip.pt"),
            "--clip-vocab", vocab or os.path.join(ck, "clip_bpe.txt"),
            "--out", os.path.join(WORK, out)] + (MG_TINY_FLAGS if tiny else []) + list(flags)
    return run(*args)


def official_maskgen(ck):
    """(generator, tokenizer, clip) state dicts as make_random_maskgen wrote them."""
    def one(name):
        folder = os.path.join(ck, name)
        if os.path.exists(os.path.join(folder, "model.safetensors")):
            return stfile.load(os.path.join(folder, "model.safetensors"))
        if os.path.exists(os.path.join(folder, "pytorch_model.bin")):
            return torch.load(os.path.join(folder, "pytorch_model.bin"))
        return torch.load(os.path.join(ck, name + ".pt"))
    return one("generator"), one("tokenizer"), torch.load(os.path.join(ck, "clip.pt"))


def check_maskgen_converted(ck, out, dtype=torch.float32):
    """Config values and every tensor against the official files."""
    cfg = load_config(out)
    assert cfg["tessera_format"] == 1 and cfg["family"] == "maskgen", cfg
    assert cfg["image_size"] == 32, cfg["image_size"]
    want = {"file": "clip_text.safetensors", "vocab_file": "clip_bpe.txt", "vocab_size": 814,
            "context_length": 77, "width": 32, "n_layer": 2, "n_head": 2, "proj_dim": 32,
            "act": "quick_gelu", "norm_eps": 1e-5}
    assert cfg["clip"] == want, cfg["clip"]
    want = {"file": "generator.safetensors", "dim": 64, "depth": 3, "n_head": 2,
            "num_tokens": 16, "codebook_size": 64, "embed_rows": 76, "text_dim": 32,
            "micro_cond_dim": 16, "aesthetic_max_period": 1000, "norm_eps": 1e-6,
            "sampling": {"steps": 8, "guidance": 12.0, "guidance_decay": "cosine",
                         "randomize_temperature": 2.0, "aesthetic": 6.5,
                         "softmax_temperature_annealing": True}}
    assert cfg["generator"] == want, cfg["generator"]
    want = {"file": "tokenizer.safetensors", "width": 64, "n_layer": 2, "n_head": 2,
            "patch_size": 8, "grid_size": 4, "num_tokens": 16, "token_size": 8,
            "codebook_size": 64, "text_context": 77, "text_dim": 32, "norm_eps": 1e-5}
    assert cfg["tokenizer"] == want, cfg["tokenizer"]

    gen, tok, clip = official_maskgen(ck)
    if "embeddings.weight" not in gen:
        gen["embeddings.weight"] = gen["lm_head.weight"]
    gen.pop("lm_head.weight", None)
    tok = {k: t for k, t in tok.items() if k.startswith("decoder.") or
           k == "quantize.embedding.weight"}
    assert any(k.startswith("visual.") for k in clip) and "logit_scale" in clip
    clip = {k: t for k, t in clip.items() if not k.startswith("visual.") and k != "logit_scale"}
    clip["text_projection.weight"] = clip.pop("text_projection").t()
    for fname, src in (("generator.safetensors", gen), ("tokenizer.safetensors", tok),
                       ("clip_text.safetensors", clip)):
        got = stfile.load(os.path.join(WORK, out, fname))
        assert set(got) == set(src), "%s: key sets differ: %s" % (fname, set(got) ^ set(src))
        for k, t in src.items():
            assert got[k].dtype == dtype, "%s %s: dtype %s" % (fname, k, got[k].dtype)
            assert torch.equal(got[k], t.to(dtype)), "%s %s: values differ" % (fname, k)
    with open(os.path.join(ck, "clip_bpe.txt")) as a, \
            open(os.path.join(WORK, out, "clip_bpe.txt")) as b:
        assert a.read() == b.read(), "clip_bpe.txt differs from the merges given"


def test_maskgen_hf_folders_all_dtypes():
    ck = maskgen_checkpoints("mg_hf")
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16),
                        ("f16", torch.float16)):
        code, msg = convert_maskgen(ck, "mg_" + name, ["--dtype", name])
        assert code == 0, msg
        check_maskgen_converted(ck, "mg_" + name, dtype)


def test_maskgen_single_files_and_configs():
    """Bare state-dict files with --generator-config/--tokenizer-config (json and yaml),
    and HF folders holding pytorch_model.bin, convert to the same folder."""
    ck = maskgen_checkpoints("mg_pt", "--format", "pt")
    assert not os.path.exists(os.path.join(ck, "generator"))
    code, msg = convert_maskgen(
        ck, "mg_pt", ["--generator-config", os.path.join(ck, "generator_config.json"),
                      "--tokenizer-config", os.path.join(ck, "tokenizer_config.json")],
        generator=os.path.join(ck, "generator.pt"), tokenizer=os.path.join(ck, "tokenizer.pt"))
    assert code == 0, msg
    check_maskgen_converted(ck, "mg_pt")
    # The same configs as upstream-style yaml files.
    for name in ("generator", "tokenizer"):
        with open(os.path.join(ck, name + "_config.json")) as f:
            write_yaml(os.path.join(ck, name + ".yaml"), json.load(f))
    code, msg = convert_maskgen(
        ck, "mg_yaml", ["--generator-config", os.path.join(ck, "generator.yaml"),
                        "--tokenizer-config", os.path.join(ck, "tokenizer.yaml")],
        generator=os.path.join(ck, "generator.pt"), tokenizer=os.path.join(ck, "tokenizer.pt"))
    assert code == 0, msg
    assert load_config("mg_yaml") == load_config("mg_pt")
    ck = maskgen_checkpoints("mg_hfbin", "--format", "hf-bin")
    assert os.path.exists(os.path.join(ck, "generator", "pytorch_model.bin"))
    code, msg = convert_maskgen(ck, "mg_hfbin")
    assert code == 0, msg
    check_maskgen_converted(ck, "mg_hfbin")


def write_yaml(path, cfg, indent=0, f=None):
    """Upstream-style yaml (nested mappings of scalars)."""
    if f is None:
        with open(path, "w") as f:
            f.write("# written by test_convert.py\n")
            return write_yaml(path, cfg, 0, f)
    for k, v in cfg.items():
        if isinstance(v, dict):
            f.write("%s%s:\n" % (" " * indent, k))
            write_yaml(path, v, indent + 4, f)
        elif isinstance(v, bool):
            f.write("%s%s: %s\n" % (" " * indent, k, "True" if v else "False"))
        elif isinstance(v, str):
            f.write('%s%s: "%s"  # a comment\n' % (" " * indent, k, v))
        else:
            f.write("%s%s: %r\n" % (" " * indent, k, v))


def test_maskgen_tied_head_variants():
    """embeddings.weight only, lm_head.weight only, or both (equal) give the same folder;
    both but different is refused."""
    base = maskgen_checkpoints("mg_hf")
    want = stfile.load(os.path.join(WORK, "mg_f32", "generator.safetensors")) \
        if os.path.exists(os.path.join(WORK, "mg_f32")) else None
    if want is None:
        assert convert_maskgen(base, "mg_f32")[0] == 0
        want = stfile.load(os.path.join(WORK, "mg_f32", "generator.safetensors"))
    for tied in ("lm_head", "both"):
        ck = maskgen_checkpoints("mg_tied_" + tied, "--tied", tied)
        sd = stfile.load(os.path.join(ck, "generator", "model.safetensors"))
        assert ("embeddings.weight" in sd) == (tied == "both") and "lm_head.weight" in sd
        code, msg = convert_maskgen(ck, "mg_tied_" + tied)
        assert code == 0, msg
        got = stfile.load(os.path.join(WORK, "mg_tied_" + tied, "generator.safetensors"))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), tied
    ck = os.path.join(WORK, "mg_tied_both")
    sd = stfile.load(os.path.join(ck, "generator", "model.safetensors"))
    sd["lm_head.weight"] = sd["lm_head.weight"].clone()
    sd["lm_head.weight"][3, 5] += 1.0
    path = os.path.join(WORK, "mg_untied.pt")
    torch.save(sd, path)
    code, msg = convert_maskgen(
        ck, "refused", ["--generator-config", os.path.join(ck, "generator", "config.json")],
        generator=path)
    assert code != 0 and "lm_head.weight differs" in msg, msg


def test_maskgen_clip_torchscript_and_gelu():
    """An OpenAI-style TorchScript CLIP file (fp16) loads; --clip-act gelu is recorded."""
    ck = maskgen_checkpoints("mg_hf")
    clip = torch.load(os.path.join(ck, "clip.pt"))

    class Leaf(torch.nn.Module):
        def forward(self, x):
            return x
    root = Leaf()
    for k, v in clip.items():
        parts, m = k.split("."), root
        for p in parts[:-1]:
            if not hasattr(m, p):
                m.add_module(p, Leaf())
            m = getattr(m, p)
        m.register_parameter(parts[-1], torch.nn.Parameter(v.half(), requires_grad=False))
    for extra in ("input_resolution", "context_length", "vocab_size"):
        root.register_buffer(extra, torch.tensor(77))
    path = os.path.join(WORK, "clip_jit.pt")
    torch.jit.script(root).save(path)
    code, msg = convert_maskgen(ck, "mg_jit", ["--clip-act", "gelu"], clip=path)
    assert code == 0, msg
    assert load_config("mg_jit")["clip"]["act"] == "gelu"
    got = stfile.load(os.path.join(WORK, "mg_jit", "clip_text.safetensors"))
    want = {k: t.half().float() for k, t in clip.items()
            if not k.startswith("visual.") and k != "logit_scale"}
    want["text_projection.weight"] = want.pop("text_projection").t()
    assert set(got) == set(want), set(got) ^ set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_maskgen_reference_matches_official():
    """maskgen_ref built from the converted folder and from the official dicts agrees."""
    import maskgen_ref as mref
    ck = maskgen_checkpoints("mg_hf")
    if not os.path.exists(os.path.join(WORK, "mg_f32")):
        assert convert_maskgen(ck, "mg_f32")[0] == 0
    pipe = mref.load_model_dir(os.path.join(WORK, "mg_f32"))
    gen, tok, clip = official_maskgen(ck)
    with open(os.path.join(ck, "generator", "config.json")) as f:
        gen_up = json.load(f)
    with open(os.path.join(ck, "tokenizer", "config.json")) as f:
        tok_up = json.load(f)
    o_clip = mref.ClipTextRef.from_official(clip, "quick_gelu", n_head=2)
    o_gen = mref.MaskGenRef.from_official(gen, 64, gen_up)
    o_dec = mref.TaTiTokDecoderRef.from_official(tok, tok_up, n_head=2)
    ids = pipe.tokenizer.tokenize(["", "a red apple", "x " * 100])
    a, b = pipe.clip.encode(ids), o_clip.encode(ids)
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-5) for x, y in zip(a, b))
    tokens = torch.randint(0, 65, (3, 16))
    la = pipe.generator.forward(tokens, a[0], a[2], [6.5, 6.0, 5.0])
    lb = o_gen.forward(tokens, b[0], b[2], [6.5, 6.0, 5.0])
    assert torch.equal(la, lb)
    codes = tokens.clamp(max=63)
    assert torch.equal(pipe.decoder.decode_tokens(codes, a[1]),
                       o_dec.decode_tokens(codes, a[1]))


def test_maskgen_reference_noise_provider():
    """generate(noise=...) draws u1 [B, N, V] then u2 [B, N] per step; injecting the global
    RNG's draws reproduces the default; randomize_temperature 0 never asks for noise."""
    import maskgen_ref as mref
    ck = maskgen_checkpoints("mg_hf")
    if not os.path.exists(os.path.join(WORK, "mg_f32")):
        assert convert_maskgen(ck, "mg_f32")[0] == 0
    pipe = mref.load_model_dir(os.path.join(WORK, "mg_f32"))
    _, pen, _, pooled = pipe.encode(["", "a cat", "a dog"])
    gen = pipe.generator
    torch.manual_seed(11)
    want = gen.generate(pen[1:], pooled[1:], pen[:1], pooled[:1])
    shapes = []

    def recorded(shape):
        shapes.append(shape)
        return torch.zeros(shape).uniform_(0, 1)
    torch.manual_seed(11)
    got = gen.generate(pen[1:], pooled[1:], pen[:1], pooled[:1], noise=recorded)
    assert torch.equal(got, want)
    steps = gen.sampling["steps"]
    assert shapes == [(2, 16, 64), (2, 16)] * steps, shapes

    def refuse(shape):
        raise AssertionError("noise drawn with randomize_temperature 0")
    a = gen.generate(pen[1:], pooled[1:], pen[:1], pooled[:1], randomize_temperature=0.0,
                     noise=refuse)
    b = gen.generate(pen[1:], pooled[1:], pen[:1], pooled[:1], randomize_temperature=0.0)
    assert torch.equal(a, b)


def maskgen_refused(expect, edit=None, part="generator", extra=(), vocab=None, config_edit=None):
    """Edits one official file (state dict and/or config), converts, checks the refusal."""
    ck = maskgen_checkpoints("mg_pt", "--format", "pt")
    paths = {"generator": os.path.join(ck, "generator.pt"),
             "tokenizer": os.path.join(ck, "tokenizer.pt"), "clip": os.path.join(ck, "clip.pt")}
    configs = {name: os.path.join(ck, name + "_config.json")
               for name in ("generator", "tokenizer")}
    if edit is not None:
        sd = torch.load(paths[part])
        edit(sd)
        paths[part] = os.path.join(WORK, "edited_%s.pt" % part)
        torch.save(sd, paths[part])
    if config_edit is not None:
        with open(configs[part]) as f:
            cfg = json.load(f)
        config_edit(cfg)
        configs[part] = os.path.join(WORK, "edited_%s.json" % part)
        with open(configs[part], "w") as f:
            json.dump(cfg, f)
    code, msg = convert_maskgen(ck, "refused", ["--generator-config", configs["generator"],
                                                "--tokenizer-config", configs["tokenizer"]] +
                                list(extra), generator=paths["generator"],
                                tokenizer=paths["tokenizer"], clip=paths["clip"], vocab=vocab)
    assert code != 0, "accepted a bad checkpoint (expected refusal naming %r)" % expect
    assert expect in msg, "message does not name %r:\n%s" % (expect, msg)


def test_maskgen_refuses_unknown_keys():
    maskgen_refused("blocks.1.attn.bogus.weight", lambda sd: sd.__setitem__(
        "blocks.1.attn.bogus.weight", torch.zeros(3)))
    maskgen_refused("decoder.ffn.1.weight", lambda sd: sd.__setitem__(
        "decoder.ffn.1.weight", torch.zeros(3)), part="tokenizer")
    maskgen_refused("ln_final.extra", lambda sd: sd.__setitem__(
        "ln_final.extra", torch.zeros(3)), part="clip")


def test_maskgen_refuses_missing_keys():
    maskgen_refused("blocks.2.ff.net.2.bias", lambda sd: sd.pop("blocks.2.ff.net.2.bias"))
    # The last block has no to_add_out: a checkpoint whose last block has one is refused.
    maskgen_refused("blocks.2.attn.to_add_out.weight", lambda sd: sd.__setitem__(
        "blocks.2.attn.to_add_out.weight", torch.zeros(64, 64)))
    maskgen_refused("decoder.ln_post.bias", lambda sd: sd.pop("decoder.ln_post.bias"),
                    part="tokenizer")
    maskgen_refused("transformer.resblocks.0.attn.in_proj_bias", lambda sd: sd.pop(
        "transformer.resblocks.0.attn.in_proj_bias"), part="clip")


def test_maskgen_refuses_wrong_shapes():
    maskgen_refused("blocks.0.norm1_context.linear.weight", lambda sd: sd.__setitem__(
        "blocks.0.norm1_context.linear.weight", torch.zeros(128, 64)))
    maskgen_refused("decoder.text_guidance_proj.weight", lambda sd: sd.__setitem__(
        "decoder.text_guidance_proj.weight", torch.zeros(64, 30)), part="tokenizer")
    maskgen_refused("transformer.resblocks.1.mlp.c_fc.weight", lambda sd: sd.__setitem__(
        "transformer.resblocks.1.mlp.c_fc.weight", torch.zeros(96, 32)), part="clip")


def test_maskgen_refuses_vae_and_legacy_tokenizers():
    def to_vae(sd):
        sd.pop("quantize.embedding.weight")
        sd["decoder.decoder_embed.weight"] = torch.zeros(64, 16)
    maskgen_refused("KL/VAE", to_vae, part="tokenizer")
    maskgen_refused("KL/VAE", part="tokenizer",
                    config_edit=lambda c: c["model"]["vq_model"].update(quantize_mode="vae"))
    maskgen_refused("legacy", lambda sd: sd.__setitem__("decoder.ffn.2.weight",
                                                        torch.zeros(1024, 128, 1, 1)),
                    part="tokenizer")
    maskgen_refused("finetune_decoder", part="tokenizer",
                    config_edit=lambda c: c["model"]["vq_model"].pop("finetune_decoder"))


def test_maskgen_refuses_vocab_mismatch():
    import clip_tokenizer_ref
    ck = maskgen_checkpoints("mg_pt", "--format", "pt")
    merges = clip_tokenizer_ref.read_merges(os.path.join(ck, "clip_bpe.txt"))
    short = os.path.join(WORK, "short_bpe.txt")
    clip_tokenizer_ref.write_merges(short, merges[:-1])
    maskgen_refused("vocab size mismatch", vocab=short)


def test_maskgen_config_contradictions_and_heads():
    maskgen_refused("num_latent_tokens", config_edit=lambda c: c["model"]["vq_model"].update(
        num_latent_tokens=32))
    maskgen_refused("condition_num_classes", config_edit=lambda c: c["model"]["maskgen"].update(
        condition_num_classes=1000))
    maskgen_refused("--n-head 4 contradicts", extra=["--n-head", "4"])
    maskgen_refused("crop_size", part="tokenizer", config_edit=lambda c: c["dataset"][
        "preprocessing"].update(crop_size=256))
    # Without configs the tiny sizes need the head counts on the command line.
    ck = maskgen_checkpoints("mg_pt", "--format", "pt")
    files = dict(generator=os.path.join(ck, "generator.pt"),
                 tokenizer=os.path.join(ck, "tokenizer.pt"))
    code, msg = convert_maskgen(ck, "refused", **files)
    assert code != 0 and "--n-head" in msg, msg
    code, msg = convert_maskgen(ck, "refused", ["--n-head", "2", "--clip-n-head", "2"],
                                tiny=False, **files)
    assert code != 0 and "--tokenizer-n-head" in msg, msg
    code, msg = convert_maskgen(ck, "mg_noconfig", ["--n-head", "2"], **files)
    assert code == 0, msg
    cfg = load_config("mg_noconfig")
    # No config: upstream's demo values for sampling (steps 16; the tiny config said 8).
    assert cfg["generator"]["sampling"]["steps"] == 16, cfg["generator"]["sampling"]
    cfg["generator"]["sampling"]["steps"] = 8
    code, msg = convert_maskgen(
        ck, "mg_withconfig", ["--generator-config", os.path.join(ck, "generator_config.json"),
                              "--tokenizer-config", os.path.join(ck, "tokenizer_config.json")],
        **files)
    assert code == 0, msg
    assert cfg == load_config("mg_withconfig")


def test_maskgen_infers_real_l_shapes():
    """MaskGen-L on TA-TiTok BL128-VQ with CLIP ViT-L/14-336's text tower, in the HF layout
    (about 4.4 GB of fp32 files): the sizes come from the configs and upstream's tables,
    with no head-count flags."""
    ck = os.path.join(WORK, "mg_L")
    run_ok(os.path.join(TOOLS, "make_random_maskgen.py"), "--size", "L", "--out", ck,
           "--tied", "lm_head")
    try:
        code, msg = convert_maskgen(ck, "mg_L_conv", ["--dtype", "bf16"], tiny=False)
        assert code == 0, msg
    finally:
        shutil.rmtree(ck, ignore_errors=True)
    cfg = load_config("mg_L_conv")
    c, g, t = cfg["clip"], cfg["generator"], cfg["tokenizer"]
    assert (c["vocab_size"], c["width"], c["n_layer"], c["n_head"], c["proj_dim"]) == \
        (49408, 768, 12, 12, 768), c
    assert (g["dim"], g["depth"], g["n_head"], g["num_tokens"], g["codebook_size"],
            g["embed_rows"], g["micro_cond_dim"]) == (1024, 16, 16, 128, 8192, 9194, 256), g
    assert g["sampling"]["aesthetic"] == 6.5 and g["sampling"]["steps"] == 16, g["sampling"]
    assert (t["width"], t["n_layer"], t["n_head"], t["patch_size"], t["grid_size"],
            t["token_size"]) == (1024, 24, 16, 16, 16, 64), t
    assert cfg["image_size"] == 256 and cfg["name"].startswith("MaskGen-L VQ 256px"), cfg
    sizes = {f: os.path.getsize(os.path.join(WORK, "mg_L_conv", f)) for f in
             ("generator.safetensors", "tokenizer.safetensors", "clip_text.safetensors")}
    shutil.rmtree(os.path.join(WORK, "mg_L_conv"), ignore_errors=True)
    return "bf16 folder: %s" % ", ".join("%s %.0f MB" % (f.split(".")[0], n / 1e6)
                                         for f, n in sizes.items())


# ---------------------------------------------------------------------------------------
# Engine comparison (only with a tessera binary).


def read_png(path):
    """Minimal PNG decoder: 8-bit RGB or RGBA, non-interlaced. Returns (w, h, rows of RGB)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, "unsupported PNG %r" % (ihdr,)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            elif ftype == 4:  # Paeth
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                assert ftype == 0, "bad PNG filter type %d" % ftype
                pred = 0
            line[i] = (line[i] + pred) & 0xFF
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def psnr(rows, ref_u8):
    """PSNR of decoded PNG rows against an [H, W, 3] uint8 tensor."""
    got = torch.tensor(rows, dtype=torch.float64)
    mse = ((got - ref_u8.double()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def test_engine_generate(tessera):
    ck = tiny_checkpoints()
    model = os.path.join(WORK, "engine_f32")
    code, msg = convert(ck + "/gpt.pt", ck + "/vq.pt", "engine_f32", "--n-head", "4")
    assert code == 0, msg
    gpt, vq, _ = ref.load_model_dir(model)
    failures, psnrs = [], []
    for cls in ENGINE_CLASSES:
        trace = []
        want = gpt.generate([cls], cfg_scale=4.0, top_k=1, trace=trace)[0]
        top = torch.stack([torch.topk(t[0], 2).values for t in trace])
        gap = ((top[:, 0] - top[:, 1]) / top[:, 0].abs().clamp(min=1)).min().item()
        assert gap > 1e-3, "test model has a greedy near-tie for class %d (%.2g)" % (cls, gap)
        tok_path = os.path.join(WORK, "tok_%d.txt" % cls)
        png_path = os.path.join(WORK, "img_%d.png" % cls)
        p = subprocess.run([tessera, "generate", "--model", model, "--class", str(cls),
                            "--seed", "0", "--top-k", "1", "--cfg", "4.0",
                            "--tokens-out", tok_path, "--out", png_path,
                            "--device", os.environ.get("TESSERA_TEST_DEVICE") or "cpu"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.returncode == 0, "tessera generate failed (%d):\n%s" % (p.returncode, p.stdout)
        with open(tok_path) as f:
            lines = [line.split() for line in f if line.strip()]
        got = [int(t) for t in lines[0]] if len(lines) == 1 else lines
        if got != want.tolist():
            failures.append("class %d tokens: engine %s, reference %s" % (cls, got, want.tolist()))
            continue
        w, h, rows = read_png(png_path)
        image = ref.to_uint8(vq.decode(want[None]))[0]
        assert (h, w) == tuple(image.shape[:2]), "PNG is %dx%d" % (w, h)
        db = psnr(rows, image)
        psnrs.append("%.1f" % db)
        if db < PSNR_MIN:
            failures.append("class %d image PSNR %.1f dB < %.0f" % (cls, db, PSNR_MIN))
    assert not failures, "; ".join(failures)
    return "tokens equal, PSNR %s dB" % " / ".join(psnrs)


# ---------------------------------------------------------------------------------------


def main():
    tessera = sys.argv[1] if len(sys.argv) > 1 else None
    tests = [(name, fn) for name, fn in globals().items()
             if name.startswith("test_") and name != "test_engine_generate"]
    if tessera:
        tests.append(("test_engine_generate", lambda: test_engine_generate(tessera)))
    # Each test returns None or a short note and raises AssertionError on failure.
    passed = failed = 0
    torch.manual_seed(0)
    try:
        for name, fn in tests:
            try:
                note = fn()
                passed += 1
                print("ok   %s%s" % (name, " (%s)" % note if note else ""))
            except Exception as e:  # report every failure, then keep going
                failed += 1
                detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
                print("FAIL %s: %s" % (name, detail))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    skipped = "" if tessera else ", 1 skipped"
    print("test_convert: %d passed, %d failed%s" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
