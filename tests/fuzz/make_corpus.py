#!/usr/bin/python3
"""Writes the seed corpus of the libFuzzer targets: tests/fuzz/corpus/<target>/seed-*.

Deterministic: valid inputs of every kind each target reads (from the committed
fixtures where they exist) and known edge cases. Regression inputs for bugs the fuzzers
found are committed beside them as regress-* files, by hand; this script leaves those
alone. Run from the repository root: /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import hashlib
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:12]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clean(target):
    d = os.path.join(ROOT, target)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if n.startswith("seed-"):
                os.remove(os.path.join(d, n))


def request():
    # first byte: bit 0 allow_stream, bit 1 OpenAI, bits 2-4 the models, bits 5-7 max_n
    native = [
        {"class": 3, "n": 2, "seed": 7},
        {"prompt": "goldfish"},
        {"prompt": "  GREAT   white shark "},
        {"prompt": "7"},
        {"class": 3, "cfg": 2.5, "cfg_interval": 10, "top_k": 100, "top_p": 0.9,
         "temperature": 0.8, "stream": True},
        {"prompt": "a red apple on a table", "steps": 8, "guidance": 3.0, "aesthetic": 6.0,
         "randomize_temperature": 1.0, "stream": True},
        {"model": "fqgan", "class": 1, "n": 16, "seed": 9007199254740992},
        {"model": "maskgen", "prompt": "x", "seed": 0},
        {"model": "llamagen-t2i", "prompt": "a blue car", "cfg": 7.5},
        {"model": "nope", "class": 1},
        {"model": 5},
        {"class": 1, "prompt": "goldfish"},
        {"class": 1, "guidance": 2},
        {"prompt": "a cat", "top_k": 2},
        {"negative_prompt": "blurry", "prompt": "a cat"},
        {"n": 1.5, "class": 0},
        {"seed": -1, "class": 0},
        {"class": 0, "top_p": 0},
        {"class": 0, "temperature": 1e308},
        {"prompt": "caf\u00e9 \u6771\u4eac \U0001F34E"},
        {"prompt": "x" * 1000},
        {"prompt": "x" * 1001},
        {"prompt": "\u00e9" * 500},
        {"prompt": None, "class": None, "model": None},
        {"unknown": 1},
    ]
    openai = [
        {"prompt": "a red apple", "n": 1, "size": "256x256", "response_format": "b64_json",
         "model": "dall-e-3", "user": "u", "quality": "hd", "style": "vivid"},
        {"prompt": "goldfish", "stream": True, "partial_images": 2, "output_format": "png"},
        {"prompt": "goldfish", "size": "1024x1024"},
        {"prompt": "a cat", "response_format": "url"},
        {"prompt": "a cat", "partial_images": 4, "stream": True},
        {"model": "maskgen", "prompt": "a cat", "size": "auto", "background": "auto",
         "moderation": "low"},
        {"n": 2},
        {"class": 3},
    ]
    for i, body in enumerate(native):
        for sel in (0x00 | (i % 8) << 5, 0x01 | (i % 8) << 2 | 0xe0, 0x04 * (i % 8) | 0x61):
            write("fuzz_request", bytes([sel & ~2 & 0xff]) + json.dumps(body).encode())
    for i, body in enumerate(openai):
        for sel in (0x03 | (i % 8) << 2, 0x02 | (i % 8) << 2 | 0xa0):
            write("fuzz_request", bytes([sel]) + json.dumps(body).encode())
    raw = [b"", b"[]", b"{", b"null", b'{"class": 1, "class": 2}', b'{"prompt": "a\\u0000b"}',
           b'{"prompt": "\xff\xfe"}', b'{"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3'
           b'\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3'
           b'\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3'
           b'\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9": 1}',
           b'{"class": 1e400}', b'{"n": 99999999999999999999999}', b'\xef\xbb\xbf{}',
           b'{"prompt": "' + b"\\ud83c\\udf4e" * 3 + b'"}']
    for i, body in enumerate(raw):
        write("fuzz_request", bytes([i * 37 & 0xff]) + body)


def safetensors(entries, meta=None, data=b"", hlen_delta=0, pad=True):
    hdr = dict(entries)
    if meta is not None:
        hdr["__metadata__"] = meta
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) + hlen_delta) + h + data


def safetensors_corpus():
    t = "fuzz_safetensors"
    f32 = struct.pack("<6f", *range(6))
    write(t, safetensors({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}},
                         data=f32))
    write(t, safetensors({
        "a.weight": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
        "a.bias": {"dtype": "F16", "shape": [2, 1], "data_offsets": [8, 12]},
        "ids": {"dtype": "I32", "shape": [1], "data_offsets": [12, 16]},
        "empty": {"dtype": "F32", "shape": [0, 7], "data_offsets": [16, 16]},
        "scalar": {"dtype": "F32", "shape": [], "data_offsets": [16, 20]}},
        meta={"format": "pt", "tessera": "1"}, data=bytes(range(20))))
    write(t, safetensors({}, meta={}))
    write(t, safetensors({}))
    # refusals: overlap, misalignment, past the end, wrong byte count, bad dtype, extra key
    write(t, safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                         data=bytes(12)))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}},
                         data=bytes(5)))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                         data=bytes(8)))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                         data=bytes(8)))
    write(t, safetensors({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}},
                         data=bytes(8)))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4],
                                "x": 1}}, data=bytes(4)))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [2 ** 62, 8],
                                "data_offsets": [0, 0]}}))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}},
                         data=bytes(4)))
    write(t, safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                         data=bytes(4), hlen_delta=1000))
    write(t, struct.pack("<Q", 2) + b"[]")
    write(t, struct.pack("<Q", 4) + b'{"a"')
    write(t, struct.pack("<Q", 2 ** 63))
    write(t, b"\x02\x00\x00")


def config_corpus():
    folders = ["llamagen_tiny", "llamagen_t2i_tiny", "fqgan_tiny", "maskgen_tiny",
               "llamagen_hd100"]
    t = "fuzz_config"
    for i, f in enumerate(folders):
        with open(os.path.join(FIX, f, "config.json"), "rb") as fh:
            cfg = fh.read()
        write(t, bytes([i]) + cfg)
        c = json.loads(cfg)
        # a compact copy (smaller for the mutator) and a few edits of each
        write(t, bytes([i]) + json.dumps(c, separators=(",", ":")).encode())
        if "gpt" in c:
            e = json.loads(cfg)
            e["sampling"] = {"cfg": 2.0, "top_k": 10, "top_p": 0.5, "temperature": 0.9,
                             "cfg_interval": 3}
            write(t, bytes([i]) + json.dumps(e).encode())
            e = json.loads(cfg)
            e["gpt"]["file"] = "../gpt.safetensors"
            write(t, bytes([i]) + json.dumps(e).encode())
            e = json.loads(cfg)
            e["gpt"]["block_size"] = 65536
            write(t, bytes([i]) + json.dumps(e).encode())
        if "vq" in c:
            e = json.loads(cfg)
            e["vq"]["ch_mult"] = [1, 2, 2, 4, 4, 8, 8, 8, 8]
            write(t, bytes([i]) + json.dumps(e).encode())
        if "clip" in c:
            e = json.loads(cfg)
            e["clip"]["context_length"] = 4096
            write(t, bytes([i]) + json.dumps(e).encode())
        write(t, bytes([(i + 1) % 5]) + cfg)   # another folder's weights, this config
    write(t, b"\x00{}")
    write(t, b"\x00[]")
    write(t, b'\x00{"tessera_format": 1, "family": "other", "image_size": 16}')


def classes_corpus():
    t = "fuzz_classes"
    for f, n in (("llamagen_tiny", 10), ("fqgan_tiny", 10), ("fqgan_tiny3", 0)):
        with open(os.path.join(FIX, f, "classes.txt"), "rb") as fh:
            txt = fh.read()
        n = n or txt.count(b"\n")
        q = b"\0".join([b"goldfish", b"  Great  White SHARK ", b"3", b"0009", b"12",
                        b"tench, Tinca tinca", b"man-eater", b"", b"-1", b"99999999999999999999"])
        write(t, struct.pack("<H", n - 1) + txt + b"\0\0" + q)
    write(t, struct.pack("<H", 2) + b"a\nb, c\r\nd\n\n" + b"\0\0" + b"c\0D\0 a ")
    write(t, struct.pack("<H", 1) + b"one\ntwo\nthree\n" + b"\0\0" + b"two")
    write(t, struct.pack("<H", 0) + b"" + b"\0\0" + b"0")
    write(t, struct.pack("<H", 1) + b"x" * 600 + b"\n" + b"x" * 600 + b"y\n\0\0" + b"x" * 600)
    write(t, struct.pack("<H", 2) + b"caf\xc3\xa9\nn\0ul\n\n\0\0CAF\xc3\xa9")


def hex_prompts(path, col):
    out = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            f = line.rstrip("\n").split("\t")
            if len(f) > col:
                try:
                    out.append(bytes.fromhex(f[col]))
                except ValueError:
                    pass
    return out


def prompt_corpus():
    t = "fuzz_prompt"
    prompts = []
    with open(os.path.join(FIX, "llamagen_t2i_tiny", "prompts.txt"), "rb") as fh:
        prompts += [p for p in fh.read().split(b"\n") if p]
    prompts += [p for p in hex_prompts(os.path.join(FIX, "t5_clean", "golden.tsv"), 0)
                if len(p) <= 1200]
    prompts += [p for p in hex_prompts(os.path.join(FIX, "clip_bpe", "golden.tsv"), 2)
                if len(p) <= 1200]
    prompts += [b"\xff\xfe not utf-8", b"a\0b", "\uff06amp;amp;amp;amp;".encode(),
                "\ufdfa \u0130 \u03a3\u03a3 \ufb03".encode(), b"<sep>[img] <ctl>"]
    seen = set()
    for i, p in enumerate(prompts):
        if p in seen:
            continue
        seen.add(p)
        write(t, bytes([(i * 41) & 0xff]) + p)


def spm_model_corpus():
    t = "fuzz_spm_model"
    for f in ("edge.model", "bytes.model"):
        with open(os.path.join(FIX, "spm_tiny", f), "rb") as fh:
            write(t, fh.read())
    write(t, b"")
    write(t, b"\x0a\x00")


if __name__ == "__main__":
    for target in ("fuzz_request", "fuzz_safetensors", "fuzz_config", "fuzz_classes",
                   "fuzz_prompt", "fuzz_spm_model"):
        clean(target)
    request()
    safetensors_corpus()
    config_corpus()
    classes_corpus()
    prompt_corpus()
    spm_model_corpus()
