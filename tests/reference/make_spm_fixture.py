#!/usr/bin/python3
"""Writes the sentencepiece fixtures that tests/test_spm.c checks against.

    /usr/bin/python3 tests/reference/make_spm_fixture.py [--out tests/fixtures/spm_tiny]

Needs Debian's python3-sentencepiece (0.1.97 wrote the committed files). Writes into OUT:

  spiece.model   a unigram model laid out as T5's spiece.model: normalization
                 "nmt_nfkc" (its precompiled charsmap), pad 0, eos 1, unk 2, no bos,
                 VOCAB_SIZE pieces, trained on a deterministic corpus of English
                 captions with punctuation, digits, accented and a few non-Latin words
  bytes.model    identity normalization (empty charsmap), byte_fallback with the 256
                 <0xXX> pieces, USER_DEFINED "<sep>" and "[img]", a CONTROL "<ctl>",
                 remove_extra_whitespaces off, digits split
  suffix.model   identity normalization, treat_whitespace_as_suffix (the space symbol
                 goes after words)
  edge.model     written by hand (no training): scores chosen to make ties, float vs
                 double sums, USER_DEFINED and UNUSED pieces and unknown runs matter
  golden.tsv     the ids the sentencepiece library gives for PROMPTS on each model

golden.tsv: '#' lines are comments; every other line has tab-separated columns
    model file   prompt as hex of its bytes   ids, space separated   repr(prompt)

Training runs single-threaded with a fixed seed on a corpus made here, so the files are
byte-identical from run to run (tests/reference/test_spm.py checks that).

The small protobuf writer below (and random_model) are also used by test_spm.py to
make models of every shape the library accepts.
"""
import argparse
import os
import random
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT_DEFAULT = os.path.join(ROOT, "tests", "fixtures", "spm_tiny")

VOCAB_SIZE = 800
SEED = 20240611

# ---- protobuf (sentencepiece_model.proto) ------------------------------------------

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def pb_varint(v):
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_key(field, wire):
    return pb_varint(field << 3 | wire)


def pb_int(field, v):
    return pb_key(field, 0) + pb_varint(int(v))


def pb_bytes(field, b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return pb_key(field, 2) + pb_varint(len(b)) + b


def pb_float(field, x):
    return pb_key(field, 5) + struct.pack("<f", x)


def piece(text, score=0.0, kind=NORMAL):
    return pb_bytes(1, pb_bytes(1, text) + pb_float(2, score) + pb_int(3, kind))


def model_proto(pieces, trainer=b"", normalizer=b""):
    """pieces: (text, score, kind) tuples; trainer / normalizer: encoded fields."""
    return (b"".join(piece(*p) for p in pieces) + pb_bytes(2, trainer) +
            pb_bytes(3, normalizer))


def pb_fields(data):
    """Splits a message into (field, wire, value) triples (value: int or bytes)."""
    out, i = [], 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _read_varint(data, i)
        elif wire == 2:
            n, i = _read_varint(data, i)
            v, i = data[i:i + n], i + n
        elif wire == 5:
            v, i = data[i:i + 4], i + 4
        elif wire == 1:
            v, i = data[i:i + 8], i + 8
        else:
            raise ValueError("wire type %d" % wire)
        out.append((field, wire, v))
    return out


def _read_varint(data, i):
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def charsmap_of(model_bytes):
    """The precompiled_charsmap of a serialized model (b"" when there is none)."""
    for f, _, v in pb_fields(model_bytes):
        if f == 3:
            for g, _, w in pb_fields(v):
                if g == 2:
                    return w
    return b""


def pb_field(field, wire, value):
    """Re-encodes one (field, wire, value) triple of pb_fields."""
    if wire == 0:
        return pb_int(field, value)
    if wire == 2:
        return pb_bytes(field, value)
    return pb_key(field, wire) + value


def with_normalizer(model_bytes, add_dummy_prefix=None, remove_extra_whitespaces=None,
                    escape_whitespaces=None, charsmap=None, suffix=None):
    """The model with normalizer_spec's flags or charsmap, or trainer_spec's
    treat_whitespace_as_suffix, replaced; None keeps what is there."""
    flags = {3: add_dummy_prefix, 4: remove_extra_whitespaces, 5: escape_whitespaces}
    if charsmap is not None:
        flags[2] = charsmap
    out = b""
    for f, w, v in pb_fields(model_bytes):
        if f == 2 and suffix is not None:
            v = b"".join(pb_field(*x) for x in pb_fields(v) if x[0] != 24) + pb_int(24, suffix)
        elif f == 3:
            v = b"".join(pb_field(*x) for x in pb_fields(v)
                         if flags.get(x[0]) is None)
            for g, x in sorted(flags.items()):
                if x is not None:
                    v += pb_bytes(g, x) if g == 2 else pb_int(g, x)
        out += pb_field(f, w, v)
    return out


# ---- the corpus ------------------------------------------------------------------------

_SUBJECTS = ["cat", "dog", "astronaut", "horse", "robot", "teapot", "lighthouse",
             "mountain", "city skyline", "forest", "owl", "fox", "dragon", "bicycle",
             "sailboat", "castle", "garden", "violin", "butterfly", "tiger", "portrait of "
             "an old man", "bowl of ramen", "vintage car", "steam locomotive", "jellyfish"]
_ADJECTIVES = ["red", "blue", "golden", "tiny", "giant", "ancient", "futuristic", "fluffy",
               "neon", "misty", "snowy", "rusty", "glowing", "wooden", "crystal", "happy",
               "sleepy", "colorful", "dark", "bright"]
_PLACES = ["on the moon", "in a forest", "under the sea", "in Paris", "in Tokyo",
           "on a beach at sunset", "in the desert", "at night", "in Zürich",
           "in São Paulo", "near the café", "in Reykjavík", "in Kraków", "on Mars",
           "in a snowy village", "in New York City", "in Ålesund", "by the river"]
_STYLES = ["digital art", "oil painting", "watercolor", "photo, 35mm", "4k, highly "
           "detailed", "pixel art", "in the style of Van Gogh", "trending on ArtStation",
           "low-poly 3D render", "pencil sketch", "studio lighting", "cinematic",
           "anime style", "ukiyo-e", "HDR, 8K"]
_WORDS = ["café", "naïve", "crème brûlée", "piñata", "résumé", "Ångström", "Dvořák",
          "façade", "jalapeño", "über", "smörgåsbord", "Ærøskøbing", "déjà vu", "Straße",
          "Łódź", "señor", "garçon", "fiancée", "coöperate", "Besançon"]
_FOREIGN = ["東京", "北京の夜", "Москва", "Αθήνα", "서울", "नमस्ते", "مرحبا", "ありがとう",
            "東京タワー", "Привет", "こんにちは", "漢字"]
_PUNCT = [", ", ". ", "! ", "? ", ": ", "; ", " - ", " (", ") ", " \"", "\" ", "'s "]


def corpus(n=4000, seed=SEED):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(["a", "an", "the", "A", "The", "two", "three"]),
                 rng.choice(_ADJECTIVES), rng.choice(_SUBJECTS), rng.choice(_PLACES)]
        s = " ".join(parts)
        if rng.random() < 0.7:
            s += ", " + rng.choice(_STYLES)
        r = rng.random()
        if r < 0.3:
            s += rng.choice(_PUNCT) + rng.choice(_WORDS)
        elif r < 0.4:
            s += " " + rng.choice(_FOREIGN)
        if rng.random() < 0.35:
            s += " " + rng.choice(["%d" % rng.randrange(10000), "%d.%d" % (
                rng.randrange(10), rng.randrange(100)), "#%d" % rng.randrange(100),
                "%d%%" % rng.randrange(101), "$%d" % rng.randrange(1000),
                str(rng.randrange(1900, 2030))])
        if rng.random() < 0.2:
            s = s.capitalize()
        if rng.random() < 0.3:
            s += rng.choice([".", "!", "?", "..."])
        out.append(s)
    return out


# ---- models --------------------------------------------------------------------------

def _train(tmp, name, sentences, **options):
    """Trains in directory tmp; the model records model_prefix, so it is the bare name
    (a temporary path would make every run's bytes differ)."""
    import sentencepiece as spm
    spm.set_random_generator_seed(SEED)
    base = dict(model_type="unigram", num_threads=1, input_sentence_size=0,
                shuffle_input_sentence=False, minloglevel=2)
    base.update(options)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=name,
                                       **base)
    finally:
        os.chdir(cwd)
    with open(os.path.join(tmp, name + ".model"), "rb") as f:
        return f.read()


def train_models():
    """{file name: serialized model} for the four models (see the module doc)."""
    text = corpus()
    out = {}
    with tempfile.TemporaryDirectory(prefix="tessera-spm-") as tmp:
        out["spiece.model"] = _train(
            tmp, "spiece", text, vocab_size=VOCAB_SIZE,
            normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
        out["bytes.model"] = _train(
            tmp, "bytes", text[:1500], vocab_size=420,
            normalization_rule_name="identity", byte_fallback=True,
            user_defined_symbols=["<sep>", "[img]"], control_symbols=["<ctl>"],
            remove_extra_whitespaces=False, split_digits=True, hard_vocab_limit=False)
        out["suffix.model"] = _train(
            tmp, "suffix", text[:1500], vocab_size=300,
            normalization_rule_name="identity", treat_whitespace_as_suffix=True,
            hard_vocab_limit=False)
    out["edge.model"] = edge_model()
    return out


def edge_model():
    """Hand-made pieces over a tiny alphabet, identity normalization."""
    pieces = [
        ("<unk>", 0.0, UNKNOWN),
        ("<pad>", 0.0, CONTROL),
        ("</s>", 0.0, CONTROL),
        ("\u2581", -0.5, NORMAL),
        ("a", -1.0, NORMAL), ("b", -1.0, NORMAL), ("ab", -2.0, NORMAL),   # tie: "ab"
        ("c", 1.0, NORMAL), ("d", 2.0 ** -30, NORMAL), ("cd", 1.0, NORMAL),  # c + d wins in double
        ("e", -4.0, NORMAL), ("ee", -7.9, NORMAL), ("eee", -12.0, NORMAL),
        ("x", -1.0, UNUSED), ("xa", -0.1, UNUSED),       # never produced
        ("<sep>", 0.0, USER_DEFINED), ("bc", 0.0, USER_DEFINED),
        ("\u2581a", -1.5, NORMAL), ("\u2581ab", -3.1, NORMAL), ("ba", -2.5, NORMAL),
        ("é", -2.0, NORMAL), ("e\u0301", -2.0, NORMAL),
        ("<pad>", 0.0, NORMAL),                         # same text as a CONTROL: allowed
        # the minimum score -40 puts the unknown at -50: qz = -39 beats unk + z = -39.5,
        # unk + y = -39.5 beats qy = -40 (a penalty of 9 or 11 would flip one of them)
        ("w", -40.0, NORMAL), ("z", 10.5, NORMAL), ("y", 10.5, NORMAL),
        ("qz", -39.0, NORMAL), ("qy", -40.0, NORMAL),
        # USER_DEFINED "gh" scores 2 * 10.5 (the maximum) - 0.1 = 20.9, just above
        # g + h = 20.85
        ("g", 10.45, NORMAL), ("h", 10.4, NORMAL), ("gh", 0.0, USER_DEFINED),
    ]
    return model_proto(pieces, pb_int(3, 1), pb_bytes(1, "identity"))


def random_model(rng, charsmap=b""):
    """A random unigram model the library should accept (or, about one time in eight,
    refuse: a duplicate piece, a second unknown, a BYTE piece without byte_fallback),
    with pieces over a small alphabet. Returns (serialized model, alphabet)."""
    alphabet = rng.choice(["ab", "abc", "abcé", "ab\u2581 ", "a\u2581bé東", "ab1 \u2581x",
                           "fi\ufb01\uff21A\u3000 "])   # characters nmt_nfkc changes
    byte_fallback = rng.random() < 0.2
    pieces, seen = [], set()
    n = rng.randrange(1, 25)
    for _ in range(n):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 5)))
        if s in seen and rng.random() < 0.9:
            continue
        seen.add(s)
        kind = rng.choices([NORMAL, USER_DEFINED, UNUSED, CONTROL], [12, 2, 1, 1])[0]
        score = rng.choice([-1.0, -2.0, -0.5, -3.0, -1.5, -10.0, 0.0, 0.5, 1.0, 2.0 ** -30,
                            -rng.randrange(1, 400) / 16.0, -rng.random() * 20])
        pieces.append((s, score, kind))
    unk = ("<unk>", 0.0, UNKNOWN)
    pieces.insert(rng.randrange(len(pieces) + 1), unk)
    if rng.random() < 0.03:
        pieces.append(("<unk2>", 0.0, UNKNOWN))
    if byte_fallback or rng.random() < 0.03:
        pieces += [("<0x%02X>" % b, 0.0, BYTE) for b in range(256)]
    trainer = pb_int(3, 1)
    if byte_fallback:
        trainer += pb_int(35, 1)
    if rng.random() < 0.25:
        trainer += pb_int(24, 1)
    norm = pb_bytes(1, "x")
    for field in (3, 4, 5):
        if rng.random() < 0.3:
            norm += pb_int(field, rng.random() < 0.5)
    if charsmap:
        norm += pb_bytes(2, charsmap)
    return model_proto(pieces, trainer, norm), alphabet


# ---- prompts ---------------------------------------------------------------------------

_LONG = ("a highly detailed matte painting of an ancient castle on a cliff above a stormy "
         "sea at sunset, dramatic lighting, volumetric clouds, birds flying, trending on "
         "artstation, 8k, ultra realistic, cinematic composition, wide angle lens, golden "
         "hour, by greg rutkowski and alphonse mucha, fantasy art, epic scale, intricate "
         "details, sharp focus, octane render, unreal engine, 35mm photo of a red fox in "
         "the snow, Kodak Portra 400, bokeh, award winning photograph, national geographic")

# Prompts for the goldens (text, or bytes for input that is not valid UTF-8).
PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "",
    " ",
    "   \t\n  ",
    "  leading and trailing  ",
    "multiple     spaces\tand\ttabs\nand\nnewlines",
    "an astronaut riding a horse on the moon, digital art",
    "Hello, World!!! ... ?! (yes) [no] {maybe}",
    "it's a dog's life; we're here",
    "4k 8K uhd 1080p 3.14159 2024-01-01 $5.99 100% 1234567890",
    "café naïve résumé façade crème brûlée",
    "cafe\u0301 with a combining accent, A\u030a and \u212b",
    "Ærøskøbing Straße ÖSTERREICH Łódź",
    "東京タワーの夜景、美しい",
    "北京 and 서울 and Москва",
    "emoji 😀👍🏽🎉 party",
    "family 👨\u200d👩\u200d👧 and flags 🇯🇵",
    "ligatures: ﬁne ﬂower ﬀ ĳ",
    "full width: ＡＢＣ　ｘｙｚ　１２３！",
    "\u3000ideographic\u3000space\u3000",
    "no\u00a0break\u2009thin\u200bzero",
    "ⅷ ① ㎏ ㍻ ﷺ ™ ½",
    "\u2581already\u2581escaped\u2581",
    "trailing lower-one-eighth \u2581\u2581",
    "<extra_id_0> and </s> and <pad> and <unk>",
    "<sep>user<sep>defined [img] [img][img] <ctl>",
    "x\u0000y",
    "control\u0001\u001f\u007fchars",
    "ab abab aab bab",
    "cd ccdd dc",
    "e ee eee eeee eeeee",
    "xa x a",
    "é e\u0301 ée\u0301",
    "bcbc abc <sep>bc",
    "gh qz qy ghqzqy",
    "zzz unknown qqq",
    _LONG,
    _LONG * 3,
    b"\xff\xfe invalid utf-8 \xc3\x28 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf end",
    b"\x80",
    b"ok \xe2\x96",
]


def golden_rows(models):
    import sentencepiece as spm
    rows = []
    for name in sorted(models):
        sp = spm.SentencePieceProcessor(model_proto=models[name])
        for p in PROMPTS:
            b = p if isinstance(p, bytes) else p.encode("utf-8")
            rows.append((name, b, sp.encode(b)))
    return rows


def write_fixtures(out_dir):
    import sentencepiece as spm
    os.makedirs(out_dir, exist_ok=True)
    models = train_models()
    for name, data in models.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    with open(os.path.join(out_dir, "golden.tsv"), "w", encoding="utf-8") as f:
        f.write("# sentencepiece goldens: written by tests/reference/make_spm_fixture.py\n")
        f.write("# with python3-sentencepiece %s (EncodeAsIds).\n" % spm.__version__)
        f.write("# model\tprompt (hex of its bytes)\tids\tprompt (repr)\n")
        for name, b, ids in golden_rows(models):
            f.write("%s\t%s\t%s\t%s\n" % (name, b.hex(), " ".join(map(str, ids)),
                                          ascii(b.decode("utf-8", "replace")[:60])))
    return models


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DEFAULT)
    args = ap.parse_args()
    models = write_fixtures(args.out)
    for name, data in sorted(models.items()):
        print("%s: %d bytes" % (os.path.join(args.out, name), len(data)))


if __name__ == "__main__":
    sys.exit(main())
