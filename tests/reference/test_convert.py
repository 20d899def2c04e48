#!/usr/bin/python3
"""Tests tools/convert.py on random official-layout checkpoints, and optionally the engine.

    /usr/bin/python3 tests/reference/test_convert.py [path/to/build/tessera]

Without an argument only the Python side runs: checkpoints from make_random_checkpoints.py
in the {"model": ...} and bare FSDP layouts, converted in f32/bf16/f16 and compared tensor
by tensor; refusals of unknown, missing and t2i keys; size inference. With the tessera
binary, it also generates two images with greedy CFG and compares tokens and pixels with
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
