#!/usr/bin/python3
"""End-to-end tests of `tessera generate` on the committed tiny fixture.

    /usr/bin/python3 tests/test_cli.py path/to/build/tessera

Checks what a user sees: --help documents every flag, bad arguments and bad model
folders are refused with a clear message and a nonzero exit, PNGs carry the parameters
in a tEXt chunk, --tokens-out writes one line per image, the same seed reproduces the
same bytes, and --n writes one file per image. Exits nonzero on any failure.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "llamagen_tiny")
HD100 = os.path.join(ROOT, "tests", "fixtures", "llamagen_hd100")
FQGAN = os.path.join(ROOT, "tests", "fixtures", "fqgan_tiny")     # dual, 32 px
FQGAN3 = os.path.join(ROOT, "tests", "fixtures", "fqgan_tiny3")   # triple, 64 px
FLAGS = ["--model", "--class", "--n", "--seed", "--cfg", "--cfg-interval", "--top-k", "--top-p",
         "--temperature", "--out", "--tokens-out", "--threads", "--device", "--quiet", "--help"]

BIN = None
WORK = tempfile.mkdtemp(prefix="tessera_test_cli_")


# The device generate runs on: the CPU unless TESSERA_TEST_DEVICE says otherwise, so that a
# CUDA build on a GPU machine still checks the CPU path here (make test-gpu covers CUDA).
DEVICE = os.environ.get("TESSERA_TEST_DEVICE") or "cpu"


def tessera(*args):
    args = [str(a) for a in args]
    if args and args[0] == "generate" and "--device" not in args and "--help" not in args:
        args += ["--device", DEVICE]
    p = subprocess.run([BIN] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    return p.returncode, p.stdout, p.stderr


def png_text(path):
    """The tEXt chunks of a PNG as a dict."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, text = 8, {}
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
    return text


def test_help_documents_every_flag():
    code, out, _ = tessera("generate", "--help")
    assert code == 0
    for flag in FLAGS:
        assert flag in out, "--help does not mention %s" % flag


def test_bad_arguments_refused():
    cases = [
        (["--class", "1", "--out", "x.png"], "required"),
        (["--model", TINY, "--class", "1"], "required"),
        (["--model", TINY, "--class", "1", "--top-p", "0", "--out", "x.png"], "--top-p"),
        (["--model", TINY, "--class", "1", "--top-p", "1.5", "--out", "x.png"], "--top-p"),
        (["--model", TINY, "--class", "1", "--temperature", "-1", "--out", "x.png"], "--temperature"),
        (["--model", TINY, "--class", "1", "--n", "0", "--out", "x.png"], "--n"),
        (["--model", TINY, "--class", "1", "--seed", "-3", "--out", "x.png"], "--seed"),
        (["--model", TINY, "--class", "1", "--bogus", "--out", "x.png"], "--bogus"),
        (["--model", TINY, "--class", "1", "--device", "tpu", "--out", "x.png"], "tpu"),
    ]
    for args, needle in cases:
        code, _, err = tessera("generate", *args)
        assert code == 2, "%s: exit %d, want 2" % (args, code)
        assert needle in err, "%s: message lacks %r: %s" % (args, needle, err)


def test_runtime_errors_name_the_problem():
    out = os.path.join(WORK, "x.png")
    code, _, err = tessera("generate", "--model", TINY, "--class", "10", "--out", out, "--quiet")
    assert code == 1 and "class 10" in err, err           # 10 classes: 0..9
    code, _, err = tessera("generate", "--model", TINY, "--class", "abc", "--out", out, "--quiet")
    assert code == 1 and "--class 'abc'" in err and "classes.txt" in err, err
    code, _, err = tessera("generate", "--model", HD100, "--class", "1", "--out", out, "--quiet")
    assert code == 1 and "no VQ decoder" in err, err      # GPT-only folder
    code, _, err = tessera("generate", "--model", os.path.join(WORK, "nope"), "--class", "1",
                           "--out", out, "--quiet")
    assert code == 1 and "config.json" in err, err
    # A truncated weight file and a config that disagrees with the weights.
    bad = os.path.join(WORK, "bad")
    shutil.copytree(TINY, bad)
    with open(os.path.join(bad, "gpt.safetensors"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(TINY, "gpt.safetensors")) - 100)
    code, _, err = tessera("generate", "--model", bad, "--class", "1", "--out", out, "--quiet")
    assert code == 1 and "gpt.safetensors" in err and "outside" in err, err
    shutil.copy(os.path.join(TINY, "gpt.safetensors"), bad)
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["gpt"]["ffn_dim"] = 256
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    code, _, err = tessera("generate", "--model", bad, "--class", "1", "--out", out, "--quiet")
    assert code == 1 and "layers.0.feed_forward.w1.weight" in err and "expected" in err, err


def png_size(path):
    with open(path, "rb") as f:
        data = f.read(24)
    return struct.unpack(">II", data[16:24])


def st_int32(path, name):
    """One I32 tensor of a safetensors file, flattened (the stdlib is enough)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        entry = header[name]
        assert entry["dtype"] == "I32", entry
        start, end = entry["data_offsets"]
        f.seek(8 + n + start)
        raw = f.read(end - start)
    return list(struct.unpack("<%di" % (len(raw) // 4), raw))


def test_fqgan():
    # PNG and sub-tokens of a FQGAN (FAR + factorized tokenizer) folder, same seed same bytes.
    out_a, out_b = os.path.join(WORK, "fq_a.png"), os.path.join(WORK, "fq_b.png")
    tok = os.path.join(WORK, "fq_a.txt")
    args = ["--model", FQGAN, "--class", "3", "--seed", "11", "--cfg", "2", "--top-k", "50",
            "--quiet"]
    code, _, err = tessera("generate", *args, "--out", out_a, "--tokens-out", tok)
    assert code == 0, err
    code, _, err = tessera("generate", *args, "--out", out_b)
    assert code == 0, err
    assert open(out_a, "rb").read() == open(out_b, "rb").read(), "same seed, different PNG"
    assert png_size(out_a) == (32, 32), png_size(out_a)
    params = png_text(out_a).get("parameters", "")
    for part in ["model=Tessera test fixture fqgan_tiny", "class=3", "seed=11", "cfg=2",
                 "top_k=50", "top_p=1", "temperature=1", "cfg_interval=-1"]:
        assert part in params, "PNG parameters lack %s: %s" % (part, params)
    lines = open(tok).read().splitlines()
    assert len(lines) == 1 and len(lines[0].split()) == 16 * 2, lines   # 16 positions x 2
    assert all(0 <= int(t) < 128 for t in lines[0].split())
    code, _, _ = tessera("generate", *args[:-1], "--seed", "12", "--out", out_b, "--quiet")
    assert code == 0 and open(out_a, "rb").read() != open(out_b, "rb").read(), "seed ignored"
    # Greedy with CFG on the triple fixture: the reference's sub-tokens, in the documented
    # layout (each position's k sub-tokens in turn), one line per image.
    expected = os.path.join(FQGAN3, "expected.safetensors")
    classes = st_int32(expected, "greedy.classes")
    want = st_int32(expected, "greedy.cfg4.tokens")                      # [3, 16, 3]
    tok3 = os.path.join(WORK, "fq3.txt")
    code, _, err = tessera("generate", "--model", FQGAN3, "--class", ",".join(map(str, classes)),
                           "--cfg", "4", "--top-k", "1", "--tokens-out", tok3,
                           "--out", os.path.join(WORK, "fq3.png"), "--quiet")
    assert code == 0, err
    got = [int(t) for line in open(tok3).read().splitlines() for t in line.split()]
    assert got == want, "greedy sub-tokens differ from the reference"
    assert png_size(os.path.join(WORK, "fq3-2.png")) == (64, 64)
    # A folder without its generator decodes only.
    bare = os.path.join(WORK, "fq_decode_only")
    shutil.copytree(FQGAN, bare)
    cfg = json.load(open(os.path.join(bare, "config.json")))
    del cfg["gpt"]
    json.dump(cfg, open(os.path.join(bare, "config.json"), "w"))
    os.remove(os.path.join(bare, "gpt.safetensors"))
    code, _, err = tessera("generate", "--model", bare, "--class", "1", "--out", out_b, "--quiet")
    assert code == 1 and "decode-only" in err, err


def test_png_tokens_and_reproducibility():
    out_a, out_b = os.path.join(WORK, "a.png"), os.path.join(WORK, "b.png")
    tok = os.path.join(WORK, "a.txt")
    args = ["--model", TINY, "--class", "3", "--seed", "77", "--top-k", "50", "--quiet"]
    code, _, err = tessera("generate", *args, "--out", out_a, "--tokens-out", tok)
    assert code == 0, err
    code, _, err = tessera("generate", *args, "--out", out_b)
    assert code == 0, err
    assert open(out_a, "rb").read() == open(out_b, "rb").read(), "same seed, different PNG"
    text = png_text(out_a)
    params = text.get("parameters", "")
    for part in ["class=3", "seed=77", "cfg=4", "top_k=50", "top_p=1", "temperature=1",
                 "cfg_interval=-1"]:
        assert part in params, "PNG parameters lack %s: %s" % (part, params)
    assert text.get("Software", "").startswith("Tessera")
    lines = open(tok).read().splitlines()
    assert len(lines) == 1 and len(lines[0].split()) == 16, lines
    assert all(0 <= int(t) < 256 for t in lines[0].split())
    code, _, _ = tessera("generate", *args[:-1], "--seed", "78", "--out", out_b, "--quiet")
    assert code == 0 and open(out_a, "rb").read() != open(out_b, "rb").read(), "seed ignored"


def test_several_images():
    out = os.path.join(WORK, "many.png")
    tok = os.path.join(WORK, "many.txt")
    code, _, err = tessera("generate", "--model", TINY, "--class", "1,2", "--n", "2", "--seed", "5",
                           "--out", out, "--tokens-out", tok, "--quiet")
    assert code == 0, err
    for i in range(4):
        path = os.path.join(WORK, "many-%d.png" % i)
        assert os.path.exists(path), path
        assert ("image_index=%d" % i) in png_text(path)["parameters"]
    lines = open(tok).read().splitlines()
    assert len(lines) == 4
    # Image 0 alone, with the same seed, is image 0 of the batch.
    single = os.path.join(WORK, "single.txt")
    code, _, err = tessera("generate", "--model", TINY, "--class", "1", "--seed", "5",
                           "--tokens-out", single, "--quiet")
    assert code == 0, err
    assert open(single).read().splitlines()[0] == lines[0]


def test_model_sampling_defaults():
    # A folder's "sampling" object replaces upstream's defaults for the flags not given.
    folder = os.path.join(WORK, "tiny-sampling")
    shutil.copytree(TINY, folder)
    cfg_path = os.path.join(folder, "config.json")
    config = json.load(open(cfg_path))
    config["sampling"] = {"cfg": 1.0, "top_k": 5}
    json.dump(config, open(cfg_path, "w"))
    def tokens(model, *extra):
        out = os.path.join(WORK, "samp.txt")
        code, _, err = tessera("generate", "--model", model, "--class", "2", "--seed", "9",
                               "--tokens-out", out, "--quiet", *extra)
        assert code == 0, err
        return open(out).read()
    with_defaults = tokens(folder)
    assert with_defaults == tokens(TINY, "--cfg", "1", "--top-k", "5")
    assert with_defaults != tokens(TINY), "the folder's defaults were ignored"
    assert tokens(folder, "--cfg", "4", "--top-k", "2000") == tokens(TINY), "flags must win"
    config["sampling"] = {"cfg": 1.0, "topk": 5}
    json.dump(config, open(cfg_path, "w"))
    code, _, err = tessera("generate", "--model", folder, "--class", "2", "--out",
                           os.path.join(WORK, "x.png"), "--quiet")
    assert code == 1 and "sampling.topk" in err, err


def test_class_names():
    # classes.txt line 1 is "goldfish, Carassius auratus": either synonym names class 1.
    tok = os.path.join(WORK, "named.txt")
    code, _, err = tessera("generate", "--model", TINY, "--class", "Goldfish, carassius auratus,1",
                           "--seed", "5", "--tokens-out", tok, "--quiet")
    assert code == 0, err
    a, b, c = open(tok).read().splitlines()
    ids = os.path.join(WORK, "ids.txt")
    code, _, err = tessera("generate", "--model", TINY, "--class", "1,1,1", "--seed", "5",
                           "--tokens-out", ids, "--quiet")
    assert code == 0, err
    assert open(ids).read().splitlines() == [a, b, c]


def test_default_threads_follow_affinity():
    """Without --threads the CPU backend uses the CPUs the process may run on (its affinity
    mask; a container's CPU quota caps it too), not every core of the host."""
    if not shutil.which("taskset"):
        print("     (skipped: no taskset)")
        return
    out = os.path.join(WORK, "aff.png")
    r = subprocess.run(["taskset", "-c", "0", BIN, "generate", "--model", TINY, "--class", "1",
                        "--device", "cpu", "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "cpu (1 threads)" in r.stderr, r.stderr


def main():
    global BIN
    if len(sys.argv) != 2:
        print("usage: test_cli.py path/to/tessera", file=sys.stderr)
        return 2
    BIN = os.path.abspath(sys.argv[1])
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    failed = 0
    try:
        for t in tests:
            try:
                t()
                print("ok   %s" % t.__name__)
            except AssertionError as e:
                failed += 1
                print("FAIL %s: %s" % (t.__name__, e))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print("test_cli: %d passed, %d failed" % (len(tests) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
