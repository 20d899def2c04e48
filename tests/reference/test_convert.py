#!/usr/bin/python3
"""Tests tools/convert.py on random official-layout checkpoints, and optionally the engine.

    /usr/bin/python3 tests/reference/test_convert.py [path/to/build/tessera]

Without an argument only the Python side runs: checkpoints from make_random_checkpoints.py
in the {"model": ...} and bare FSDP layouts, converted in f32/bf16/f16 and compared tensor
by tensor; refusals of unknown, missing and t2i keys; size inference. The same for MaskGen
(convert.py maskgen on make_random_maskgen.py output): HF folders, bare files with json or
yaml configs, the tied head under either name, a TorchScript CLIP file, and refusals of
unknown / missing / wrong-shape tensors, VAE and legacy tokenizers, vocabulary mismatches
and config contradictions. The same for FQGAN (convert.py fqgan on make_random_fqgan.py
output: dual/triple, ds8/ds16, every checkpoint layout, decode-only folders, dropped training
keys, refusals, real shapes from zero-stride stubs) plus fqgan_ref.py's self-consistency, an
independent decode and the committed fqgan fixtures. With the tessera binary, it also
generates two LlamaGen images with greedy CFG and compares tokens and pixels with
llamagen_ref.py. Prints one summary line; exits nonzero on any failure.
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


def test_t2i_needs_t5_and_a_whole_caption_embedder():
    """A t2i GPT converts only with its text encoder (--t5; the conversion itself is
    tests/reference/make_t2i_fixtures.py's, checked by test_t2i); without it, or with half
    of the caption embedder, it is refused by name."""
    def to_t2i(sd):
        sd.pop("cls_embedding.embedding_table.weight")
        sd["cls_embedding.cap_proj.fc1.weight"] = torch.zeros(64, 2048)
        sd["cls_embedding.cap_proj.fc2.weight"] = torch.zeros(64, 64)
        sd["cls_embedding.uncond_embedding"] = torch.zeros(120, 2048)
    refused(to_t2i, "pass --t5")

    def half(sd):
        to_t2i(sd)
        sd.pop("cls_embedding.cap_proj.fc2.weight")
    refused(half, "cls_embedding.cap_proj.fc2.weight")


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
    # Both generators get the same text features: the two CLIP paths agree only to
    # rounding (their products differ in shape), which the generator would carry on.
    lb = o_gen.forward(tokens, a[0], a[2], [6.5, 6.0, 5.0])
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
# FQGAN: convert.py fqgan on make_random_fqgan.py output (tiny sizes; stubs for real shapes).

FQ_TINY_TOK = ["--ch", "32", "--z-channels", "32", "--num-res-blocks", "1",
               "--codebook-size", "64", "--adapter-layers", "1", "--feat-layers", "1",
               "--feat-width", "32"]
FQ_TINY_FAR = ["--dim", "64", "--n-layer", "2", "--n-head", "4", "--head-layers", "2",
               "--ffn-dim", "128", "--num-classes", "10", "--std", "0.2"]
# 4x4 positions either way: ds8 at 32 px, ds16 at 64 px.
FQ_DS = {8: (["--ds", "8", "--ch-mult", "1,1,1,2"], 32),
         16: (["--ds", "16", "--ch-mult", "1,1,1,1,2"], 64)}
FQ_KEPT = ("quantize_", "post_quant_conv.", "decoder.")


def fqgan_checkpoints(name, variant="dual", ds=8, *flags):
    """Random official-layout tokenizer.pt + far.pt under WORK/name (made once)."""
    out = os.path.join(WORK, name)
    if not os.path.exists(out):
        ds_flags, size = FQ_DS[ds]
        run_ok(os.path.join(TOOLS, "make_random_fqgan.py"), "--out", out, "--variant", variant,
               "--image-size", size, "--seed", "9", *(ds_flags + FQ_TINY_TOK + FQ_TINY_FAR +
                                                      list(flags)))
    return out


def convert_fqgan(out, tokenizer, far=None, *flags, image_size=32, n_head=True):
    args = [os.path.join(TOOLS, "convert.py"), "fqgan", "--tokenizer", tokenizer,
            "--image-size", image_size, "--out", os.path.join(WORK, out)] + list(flags)
    if far:
        args += ["--gpt", far] + (["--n-head", "4"] if n_head else [])
    return run(*args)


def fqgan_state_dicts(ck):
    """(tokenizer, FAR) state dicts as written, whatever the layouts."""
    tok = torch.load(os.path.join(ck, "tokenizer.pt"))
    for key in ("ema", "model", "state_dict"):
        if isinstance(tok.get(key), dict) and key != "discriminator":
            tok = tok[key]
            break
    far = torch.load(os.path.join(ck, "far.pt"))
    for key in ("model", "module", "state_dict"):
        if key in far:
            far = far[key]
            break
    return tok, far


def check_fqgan_converted(ck, out, k, ds, dtype=torch.float32, with_gpt=True):
    cfg = load_config(out)
    size = FQ_DS[ds][1]
    assert cfg["tessera_format"] == 1 and cfg["family"] == "fqgan", cfg
    assert cfg["image_size"] == size, cfg["image_size"]
    mult = [1, 1, 1, 2] if ds == 8 else [1, 1, 1, 1, 2]
    want = {"file": "vq.safetensors", "codebook_size": 64, "codebook_embed_dim": 8,
            "z_channels": 32, "ch": 32, "ch_mult": mult, "num_res_blocks": 1,
            "codebook_l2_norm": True, "n_sub": k}
    assert cfg["vq"] == want, cfg["vq"]
    if with_gpt:
        want = {"file": "gpt.safetensors", "model_type": "c2i", "dim": 64, "n_layer": 2,
                "n_head": 4, "n_kv_head": 4, "ffn_dim": 128, "vocab_size": 64,
                "num_classes": 10, "cls_token_num": 1, "block_size": 16, "rope_base": 10000.0,
                "norm_eps": 1e-5, "n_sub": k, "head_layers": 2}
        assert cfg["gpt"] == want, cfg["gpt"]
    else:
        assert "gpt" not in cfg and not os.path.exists(os.path.join(WORK, out, "classes.txt"))

    tok, far = fqgan_state_dicts(ck)
    # The official file carries the training-only parts: they must all be gone.
    heads = ("feat_pred_head.",) if k == 2 else ("mid_sem_feat_pred.", "high_sem_feat_pred.")
    for prefix in ("encoder.", "quant_conv_vis.") + heads:
        assert any(n.startswith(prefix) for n in tok), "random checkpoint lacks %s" % prefix
    assert sum(n.endswith(".codebook_used") for n in tok) == k
    kept = {n: t for n, t in tok.items()
            if n.startswith(FQ_KEPT) and not n.endswith("codebook_used")}
    books = {n for n in kept if n.startswith("quantize_")}
    assert books == {"%s.embedding.weight" % b for b in
                     (("quantize_vis", "quantize_sem") if k == 2 else
                      ("quantize_vis", "quantize_sem_mid", "quantize_sem_high"))}, books
    files = [("vq.safetensors", kept)] + ([("gpt.safetensors", far)] if with_gpt else [])
    for fname, src in files:
        got = stfile.load(os.path.join(WORK, out, fname))
        assert set(got) == set(src), "%s: key sets differ: %s" % (fname, set(got) ^ set(src))
        for name, t in src.items():
            assert got[name].dtype == dtype, "%s %s: dtype %s" % (fname, name, got[name].dtype)
            assert torch.equal(got[name], t.to(dtype)), "%s %s: values differ" % (fname, name)


def test_fqgan_convert_dual_ds8_all_dtypes():
    ck = fqgan_checkpoints("fq_dual8")
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16),
                        ("f16", torch.float16)):
        code, msg = convert_fqgan("fq_dual8_" + name, ck + "/tokenizer.pt", ck + "/far.pt",
                                  "--dtype", name)
        assert code == 0, msg
        check_fqgan_converted(ck, "fq_dual8_" + name, 2, 8, dtype)
    cfg = load_config("fq_dual8_f32")
    assert cfg["name"] == "FQGAN-Dual ds8 FAR custom c2i 32px", cfg["name"]


def test_fqgan_convert_triple_ds16_layouts():
    """Triple ds16 with the tokenizer's ema copy (preferred over "model") and a bare FAR;
    then {"state_dict"} / bare tokenizers and {"module"} / {"state_dict"} FARs."""
    ck = fqgan_checkpoints("fq_tri16_ema", "triple", 16, "--tok-layout", "ema",
                           "--far-layout", "bare")
    code, msg = convert_fqgan("fq_tri16_ema", ck + "/tokenizer.pt", ck + "/far.pt",
                              image_size=64)
    assert code == 0, msg
    check_fqgan_converted(ck, "fq_tri16_ema", 3, 16)
    raw = torch.load(ck + "/tokenizer.pt")
    assert not torch.equal(raw["model"]["decoder.conv_out.weight"],
                           raw["ema"]["decoder.conv_out.weight"])
    for tok_layout, far_layout in (("state_dict", "module"), ("bare", "state_dict")):
        name = "fq_tri16_%s_%s" % (tok_layout, far_layout)
        ck2 = fqgan_checkpoints(name, "triple", 16, "--tok-layout", tok_layout,
                                "--far-layout", far_layout)
        code, msg = convert_fqgan(name, ck2 + "/tokenizer.pt", ck2 + "/far.pt", image_size=64)
        assert code == 0, msg
        check_fqgan_converted(ck2, name, 3, 16)
    # The seed is the same, so every layout gives the same folder as the ema one.
    a = stfile.load(os.path.join(WORK, "fq_tri16_ema", "vq.safetensors"))
    b = stfile.load(os.path.join(WORK, "fq_tri16_bare_state_dict", "vq.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_fqgan_decode_only_folder():
    ck = fqgan_checkpoints("fq_dual8")
    code, msg = convert_fqgan("fq_decode_only", ck + "/tokenizer.pt")
    assert code == 0, msg
    check_fqgan_converted(ck, "fq_decode_only", 2, 8, with_gpt=False)
    assert not os.path.exists(os.path.join(WORK, "fq_decode_only", "gpt.safetensors"))
    cfg = load_config("fq_decode_only")
    assert cfg["name"] == "FQGAN-Dual ds8 tokenizer 32px (decode only)", cfg["name"]
    for flag in (["--far-model", "FAR-B"], ["--n-head", "4"], ["--classes", "x.txt"]):
        code, msg = convert_fqgan("refused", ck + "/tokenizer.pt", None, *flag)
        assert code != 0 and "needs --gpt" in msg and flag[0] in msg, msg


def fqgan_refused(expect, tok_edit=None, far_edit=None, flags=(), variant="dual", far_ck=None,
                  image_size=32, n_head=True):
    """Edits the tiny dual ds8 files, converts, checks the refusal names `expect`."""
    ck = fqgan_checkpoints("fq_dual8" if variant == "dual" else "fq_tri8", variant, 8)
    tok_path, far_path = ck + "/tokenizer.pt", far_ck or ck + "/far.pt"
    if tok_edit:
        ckpt = torch.load(tok_path)
        tok_edit(ckpt["model"])
        tok_path = os.path.join(WORK, "edited_tokenizer.pt")
        torch.save(ckpt, tok_path)
    if far_edit:
        ckpt = torch.load(far_path)
        far_edit(ckpt["model"])
        far_path = os.path.join(WORK, "edited_far.pt")
        torch.save(ckpt, far_path)
    code, msg = convert_fqgan("refused", tok_path, far_path, *flags, image_size=image_size,
                              n_head=n_head)
    assert code != 0, "accepted a bad checkpoint (expected refusal naming %r)" % expect
    assert expect in msg, "message does not name %r:\n%s" % (expect, msg)


def test_fqgan_refuses_unknown_keys():
    fqgan_refused("decoder.conv_blocks.0.extra.weight", tok_edit=lambda sd: sd.__setitem__(
        "decoder.conv_blocks.0.extra.weight", torch.zeros(3)))
    fqgan_refused("quant_conv.weight", tok_edit=lambda sd: sd.__setitem__(
        "quant_conv.weight", torch.zeros(8, 32, 1, 1)))
    fqgan_refused("ar_head.0.attention.bogus.weight", far_edit=lambda sd: sd.__setitem__(
        "ar_head.0.attention.bogus.weight", torch.zeros(4)))
    fqgan_refused("output.weight", far_edit=lambda sd: sd.__setitem__(
        "output.weight", torch.zeros(64, 64)))


def test_fqgan_refuses_missing_keys():
    fqgan_refused("decoder.mid.1.q.bias", tok_edit=lambda sd: sd.pop("decoder.mid.1.q.bias"))
    fqgan_refused("quantize_sem.embedding.weight",
                  tok_edit=lambda sd: sd.pop("quantize_sem.embedding.weight"))
    fqgan_refused("quantize_sem_high.embedding.weight", variant="triple",
                  tok_edit=lambda sd: sd.pop("quantize_sem_high.embedding.weight"))
    fqgan_refused("aggregation_layer.bias", far_edit=lambda sd: sd.pop("aggregation_layer.bias"))
    fqgan_refused("ar_head.1.ffn_norm.weight",
                  far_edit=lambda sd: sd.pop("ar_head.1.ffn_norm.weight"))
    fqgan_refused("output_2.weight", far_edit=lambda sd: sd.pop("output_2.weight"))

    def no_head(sd):
        for name in [n for n in sd if n.startswith("ar_head.")]:
            sd.pop(name)
    fqgan_refused("ar_head", far_edit=no_head)


def test_fqgan_refuses_wrong_shapes():
    fqgan_refused("post_quant_conv.weight", tok_edit=lambda sd: sd.__setitem__(
        "post_quant_conv.weight", torch.zeros(32, 24, 1, 1)))
    fqgan_refused("quantize_sem.embedding.weight", tok_edit=lambda sd: sd.__setitem__(
        "quantize_sem.embedding.weight", torch.zeros(32, 8)))
    fqgan_refused("aggregation_layer.weight", far_edit=lambda sd: sd.__setitem__(
        "aggregation_layer.weight", torch.zeros(64, 64)))
    fqgan_refused("ar_head.0.feed_forward.w2.weight", far_edit=lambda sd: sd.__setitem__(
        "ar_head.0.feed_forward.w2.weight", torch.zeros(64, 100)))


def test_fqgan_refuses_mismatches():
    """Other architectures, k or vocabulary disagreements, sizes and flags."""
    fqgan_refused("LlamaGen VQ", tok_edit=lambda sd: sd.__setitem__(
        "quantize.embedding.weight", torch.zeros(64, 8)))
    fqgan_refused("LlamaGen GPT", far_edit=lambda sd: sd.__setitem__(
        "tok_embeddings.weight", torch.zeros(64, 64)))
    tri = fqgan_checkpoints("fq_tri8", "triple", 8)
    fqgan_refused("sub-tokens", far_ck=tri + "/far.pt")                 # triple FAR, dual VQ

    def bigger_vocab(sd):
        for j in (1, 2):
            sd["tok_embeddings_%d.weight" % j] = torch.zeros(128, 64)
            sd["output_%d.weight" % j] = torch.zeros(128, 64)
    fqgan_refused("codebook_size", far_edit=bigger_vocab)
    fqgan_refused("multiple", image_size=36)
    fqgan_refused("--n-head", n_head=False)
    fqgan_refused("FAR-B", flags=["--far-model", "FAR-B"])
    fqgan_refused("unknown --far-model", flags=["--far-model", "FAR-XL"])
    fqgan_refused("t2i", far_edit=lambda sd: sd.__setitem__(
        "cls_embedding.cap_proj.fc1.weight", torch.zeros(64, 2048)))


def _stub_far(k, size):
    nl, nh, d, hl = ref.convert.FAR_SIZES[size]
    g = {"dim": d, "n_layer": nl, "head_layers": hl, "vocab_size": 16384, "num_classes": 1000,
         "ffn_dim": -(-int(8 * d / 3) // 256) * 256, "n_sub": k}
    return {n: torch.zeros(1).expand(s) for n, s in ref.convert.far_shapes(g).items()}


def test_fqgan_real_shapes():
    """Released sizes without materialising them: zero-stride tensors. The dual ds16
    tokenizer through the CLI (bf16 folder of ~85 MB), every tokenizer variant and FAR-B/L
    (dual and triple) through the inference functions, and --far-model / --n-head
    contradictions through the CLI on a stub FAR-B."""
    import make_random_fqgan
    ck = os.path.join(WORK, "fq_real")
    run_ok(os.path.join(TOOLS, "make_random_fqgan.py"), "--out", ck, "--stub",
           "--far-model", "FAR-B")
    code, msg = convert_fqgan("fq_real_tok", ck + "/tokenizer.pt", None, "--dtype", "bf16",
                              image_size=256)
    assert code == 0, msg
    v = load_config("fq_real_tok")["vq"]
    got = (v["codebook_size"], v["codebook_embed_dim"], v["z_channels"], v["ch"], v["ch_mult"],
           v["num_res_blocks"], v["n_sub"])
    assert got == (16384, 8, 256, 128, [1, 1, 2, 2, 4], 2, 2), v
    nbytes = os.path.getsize(os.path.join(WORK, "fq_real_tok", "vq.safetensors"))
    shutil.rmtree(os.path.join(WORK, "fq_real_tok"), ignore_errors=True)
    for flags, expect in ((["--far-model", "FAR-L"], "FAR-L"), (["--n-head", "8"], "--n-head 8")):
        code, msg = convert_fqgan("refused", ck + "/tokenizer.pt", ck + "/far.pt", *flags,
                                  image_size=256, n_head=False)
        assert code != 0 and expect in msg, msg

    for k in (2, 3):
        for ds, mult in ((16, [1, 1, 2, 2, 4]), (8, [1, 2, 2, 4])):
            vcfg = {"codebook_size": 16384, "codebook_embed_dim": 8, "z_channels": 256,
                    "ch": 128, "ch_mult": mult, "num_res_blocks": 2, "n_sub": k}
            shapes = dict(ref.convert.fqgan_vq_shapes(vcfg))
            shapes.update(make_random_fqgan.fqgan_training_shapes(vcfg, k, 256 // ds))
            sd = {n: torch.zeros(1).expand(s) for n, s in shapes.items()}
            got = ref.convert.infer_fqgan_vq_config(ref.convert.drop_unused_fqgan_vq(sd))
            assert got == dict(vcfg, codebook_l2_norm=True), got
        for size, (nl, nh, d, hl) in ref.convert.FAR_SIZES.items():
            cfg, name = ref.convert.infer_far_config(_stub_far(k, size), 256)
            assert name == size and (cfg["n_layer"], cfg["n_head"], cfg["dim"],
                                     cfg["head_layers"], cfg["n_sub"]) == (nl, nh, d, hl, k), cfg
            assert cfg["ffn_dim"] == {"FAR-B": 2816, "FAR-L": 3584}[size], cfg
            other = "FAR-L" if size == "FAR-B" else "FAR-B"
            try:
                ref.convert.infer_far_config(_stub_far(k, size), 256, far_model=other)
                raise AssertionError("%s accepted as %s" % (size, other))
            except ref.convert.ConvertError as e:
                assert other in str(e), e
    return "dual ds16 bf16 vq.safetensors %.0f MB" % (nbytes / 1e6)


def test_fqgan_reference_self_consistency():
    """fqgan_ref: teacher-forced logits (one causal pass) equal the logits of step-by-step
    generation, cached and KV-free, with and without CFG, dual and triple; both generation
    paths draw the same tokens from the same generator."""
    import fqgan_ref
    for variant, ds, k in (("dual", 8, 2), ("triple", 16, 3)):
        ck = fqgan_checkpoints("fq_%s%d" % (variant[:3] if k == 3 else "dual", ds), variant, ds)
        out = "fq_ref_%s" % variant
        assert convert_fqgan(out, ck + "/tokenizer.pt", ck + "/far.pt",
                             image_size=FQ_DS[ds][1])[0] == 0
        far, _, _ = fqgan_ref.load_model_dir(os.path.join(WORK, out))
        labels = torch.tensor([3, 8])
        for scale in (1.0, 3.0):
            traces = {}
            for cache in (True, False):
                trace = []
                toks = far.generate(labels, cfg_scale=scale, top_k=1, trace=trace,
                                    use_cache=cache)
                traces[cache] = (toks, torch.stack(trace, 1).reshape(2, 16, k, -1))
            assert torch.equal(traces[True][0], traces[False][0]), "cache changes tokens"
            toks, gen_logits = traces[False]
            tf = far.teacher_forced_logits(labels, toks)
            if scale > 1.0:
                null = far.teacher_forced_logits(torch.full_like(labels, far.null_class), toks)
                tf = null + (tf - null) * scale
            for got in (gen_logits, traces[True][1]):
                err = ((got - tf).abs().max() / tf.abs().max()).item()
                assert err < 1e-5, "%s cfg %g: generation vs teacher forcing %.2e" % (
                    variant, scale, err)
            assert torch.equal(toks, tf.argmax(-1)), "greedy tokens are not the argmax"
        a = far.generate(labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(5))
        b = far.generate(labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(5),
                         use_cache=False)
        assert torch.equal(a, b), "sampled tokens differ between the cached and KV-free paths"


def test_fqgan_reference_decode_independent():
    """fqgan_ref's decode equals LlamaGen's single-codebook decoder fed one combined
    codebook: row i is the concatenation of the k l2-normalised rows that position i
    looks up (sub-token 1 first), and post_quant_conv is scaled by sqrt(k) because the
    LlamaGen lookup normalises the combined row again."""
    import fqgan_ref
    for variant, ds, k in (("dual", 8, 2), ("triple", 16, 3)):
        ck = fqgan_checkpoints("fq_%s%d" % (variant[:3] if k == 3 else "dual", ds), variant, ds)
        out = "fq_ref_%s" % variant
        if not os.path.exists(os.path.join(WORK, out)):
            assert convert_fqgan(out, ck + "/tokenizer.pt", ck + "/far.pt",
                                 image_size=FQ_DS[ds][1])[0] == 0
        _, vq, cfg = fqgan_ref.load_model_dir(os.path.join(WORK, out))
        w = stfile.load(os.path.join(WORK, out, "vq.safetensors"))
        codes = torch.randint(0, 64, (3, 16, k))
        names = ["quantize_vis", "quantize_sem"] if k == 2 else \
            ["quantize_vis", "quantize_sem_mid", "quantize_sem_high"]
        rows = torch.cat([torch.nn.functional.normalize(w[n + ".embedding.weight"], dim=-1)
                          [codes[..., j].reshape(-1)] for j, n in enumerate(names)], dim=-1)
        single = {n: t for n, t in w.items() if n.startswith(("decoder.", "post_quant_conv."))}
        single["quantize.embedding.weight"] = rows                       # [3 * 16, 8k]
        single["post_quant_conv.weight"] = w["post_quant_conv.weight"] * math.sqrt(k)
        vcfg = dict(cfg["vq"], codebook_size=rows.shape[0], codebook_embed_dim=8 * k)
        for key in ("n_sub", "file"):
            vcfg.pop(key)
        plain = ref.VqDecoderRef(vcfg, single)
        want = plain.decode(torch.arange(rows.shape[0]).reshape(3, 16))
        got = vq.decode(codes)
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < 1e-5, "%s: decode differs from the single-codebook form (%.2e)" % (
            variant, err)
        assert err < ((vq.decode(codes.flip(-1)) - want).abs().max() / want.abs().max()) / 100


def test_fqgan_reference_from_official():
    """fqgan_ref built from the converted folder and from the official state dicts agree."""
    import fqgan_ref
    ck = fqgan_checkpoints("fq_dual8")
    if not os.path.exists(os.path.join(WORK, "fq_dual8_f32")):
        assert convert_fqgan("fq_dual8_f32", ck + "/tokenizer.pt", ck + "/far.pt")[0] == 0
    far, vq, _ = fqgan_ref.load_model_dir(os.path.join(WORK, "fq_dual8_f32"))
    tok, far_sd = fqgan_state_dicts(ck)
    o_far = fqgan_ref.FarRef.from_official(far_sd, 16, n_head=4)
    o_vq = fqgan_ref.FqVqDecoderRef.from_official(tok)
    labels, subs = torch.tensor([1, 9]), torch.randint(0, 64, (2, 16, 2))
    assert torch.equal(far.teacher_forced_logits(labels, subs),
                       o_far.teacher_forced_logits(labels, subs))
    assert torch.equal(vq.decode(subs), o_vq.decode(subs))


def test_fqgan_fixtures_match_reference():
    """The committed fqgan fixtures are what make_fqgan_fixtures.py computes from them."""
    import make_fqgan_fixtures as mff
    notes = []
    for name in mff.FIXTURES:
        path = os.path.join(ROOT, "tests", "fixtures", name)
        want, meta = stfile.load(os.path.join(path, "expected.safetensors"), with_metadata=True)
        got, gap = mff.expected_tensors(path, int(meta["seed"]))
        assert set(got) == set(want), set(got) ^ set(want)
        for key, t in want.items():
            if t.is_floating_point():
                err = ((got[key] - t).abs().max() / t.abs().max().clamp(min=1e-6)).item()
                assert err < 1e-5, "%s %s: %.2e" % (name, key, err)
            elif key.endswith("image_u8"):
                # pixels of images that agree to 1e-5 (above) may round to neighbouring
                # levels where OpenBLAS's kernels for this CPU round differently
                diff = (got[key].int() - t).abs().max().item()
                assert diff <= 1, "%s %s: %d levels apart" % (name, key, diff)
            else:
                assert torch.equal(got[key].int(), t), "%s %s differs" % (name, key)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        notes.append("%s %.0f KB, gap %.2g" % (name, size / 1024, gap))
    return "; ".join(notes)


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
