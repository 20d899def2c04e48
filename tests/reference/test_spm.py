#!/usr/bin/python3
"""Checks the sentencepiece fixtures and, given the C test binary, compares the C
tokenizer (engine/text/spm.c) with the sentencepiece library live.

    /usr/bin/python3 tests/reference/test_spm.py [build/tests/test_spm]

Always: the committed fixtures (tests/fixtures/spm_tiny) are what make_spm_fixture.py
writes today, and the library still gives the golden ids.

With the binary (its --tokenize mode): on every fixture model, on sixteen variants of
spiece.model (add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces and
treat_whitespace_as_suffix toggled; the charsmap dropped) and on a few hundred random
small models (random scores, piece types, flags, byte fallback, with and without the
nmt_nfkc charsmap, some of which the library refuses), the C side must load exactly the
models the library loads, and give the same normalized text (the concatenated pieces)
and the same ids on tricky prompts (case, punctuation, digits, accents, combining
characters, full-width forms, ligatures, emoji, CJK, tabs/newlines/runs of spaces,
leading/trailing spaces, the empty string, a 5000-character prompt, invalid UTF-8) plus
a few hundred random strings; and ts_t5_tokenize must give Hugging Face T5Tokenizer's
padded, truncated ids and mask (computed here from the library's ids) for max_length
120 and 8. Prints one summary line; exits nonzero on any failure.
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import make_spm_fixture as fx  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "spm_tiny")
MODELS = ["spiece.model", "bytes.model", "suffix.model", "edge.model"]
WORK = tempfile.mkdtemp(prefix="tessera-spm-")


class Skip(Exception):
    pass


def spm():
    import sentencepiece
    return sentencepiece


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---- prompts ---------------------------------------------------------------------------

_MIXED = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
          "      ,.;:!?'\"()[]{}-_/\\&%$#@*+=<>|~^`"
          "\t\n\r\u000b\u000c\u00a0\u2009\u200b\u200d\u3000\u2581\u2581"
          "éèêëàâäôöûüçñßøåæœÉÀÇÑØÅÆ\u0301\u0300\u0308\u0327\u030a"
          "ﬁﬂﬀＡＢｚ０１２！？。、　ⅷ①㎏㍻™½²"
          "東京北京夜景漢字タワーのこんにちは서울МоскваΑθήναनमस्तेمرحبا"
          "😀👍🏽🎉👨\u200d👩\u200d👧🇯🇵\u0000\u0001\u001f\u007f\ufeff\ufffd")


def tricky_prompts():
    """Deterministic: the goldens' prompts, more hand-picked ones, random strings."""
    out = [p if isinstance(p, bytes) else p.encode("utf-8") for p in fx.PROMPTS]
    hand = [
        "HELLO hello HeLLo", "Dvořák's 9th — “New World”", "a\u030a\u0301 o\u0308\u0304",
        "\ufb01\ufb02\ufb03\ufb04 \u0132\u0133", "ＨＡＬＦ ﾊﾝｶｸ ｶﾀｶﾅ", "\u2460\u2461 \u3251",
        "tab\tseparated\tvalues", "\n\nnewlines\n\n", "\r\n windows \r\n",
        "\u00a0\u00a0nbsp\u00a0", "\u2003em\u2002en\u2009thin\u205fmath",
        "zero\u200bwidth\u200cjoin\u200dners\ufeff", "\u2581", "\u2581\u2581 \u2581",
        " \u2581 x \u2581 ", "x" * 300, "💩" * 40, "東" * 100, "a\u0301" * 50,
        " " * 100 + "spaces" + " " * 100, "1,000,000.00 3.14e-10 0x1F 007",
        "<s> </s> <pad> <unk> <0x41> <sep> [img] <ctl>", "\u0000", "\u0000\u0000a\u0000",
        "word " * 1000,
    ]
    out += [h.encode("utf-8") for h in hand]
    out.append(("a photo of a golden retriever on a beach at sunset, 35mm, "
                "Café Ñandú 東京 ﬁ ＡＢ 😀 \t\n ") .encode("utf-8") * 45)   # ~5000 chars
    rng = random.Random(7)
    for i in range(300):
        n = rng.choice([0, 1, 2, 3, 5, 8, 13, 30, 80])
        s = "".join(rng.choice(_MIXED) for _ in range(n)).encode("utf-8")
        if i % 10 == 0 and s:   # invalid UTF-8 sprinkled in
            cut = rng.randrange(len(s) + 1)
            s = s[:cut] + bytes([rng.choice([0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xf0,
                                              0xf4, 0xf8, 0xfe, 0xff])]) + s[cut:]
        out.append(s)
    return out


# ---- the C tool --------------------------------------------------------------------------

def run_c(binary, model_path, prompts, max_len=0):
    """Runs test_spm --tokenize; returns (info line, [output lines])."""
    args = [binary, "--tokenize", model_path] + ([str(max_len)] if max_len else [])
    r = subprocess.run(args, input="".join(p.hex() + "\n" for p in prompts), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, "%s exited %d: %s" % (args, r.returncode, r.stderr[-2000:])
    lines = r.stdout.split("\n")
    assert lines and lines[-1] == "", "output does not end with a newline"
    lines.pop()
    if lines[0].startswith("!"):
        assert len(lines) == 1
        return lines[0], []
    assert len(lines) == len(prompts) + 1, "%d lines for %d prompts" % (len(lines) - 1,
                                                                       len(prompts))
    return lines[0], lines[1:]


def library_model(data):
    """The library's processor for serialized model data, or the error it raises."""
    try:
        return spm().SentencePieceProcessor(model_proto=data), None
    except Exception as e:  # the library reports refusals as RuntimeError/OSError
        return None, e


def byte_fallback(data):
    for f, _, v in fx.pb_fields(data):
        if f == 2:
            for g, _, w in fx.pb_fields(v):
                if g == 35:
                    return bool(w)
    return False


def compare(binary, name, data, prompts, max_lens=(0,)):
    """Compares C and library on one model; returns the number of prompts compared."""
    path = os.path.join(WORK, "m.model")
    with open(path, "wb") as f:
        f.write(data)
    sp, refused = library_model(data)
    compared = 0
    for max_len in max_lens:
        info, lines = run_c(binary, path, prompts, max_len)
        if sp is None:
            assert info.startswith("!"), "%s: the library refuses it (%s) but C loads it" % (
                name, refused)
            return 0
        assert not info.startswith("!"), "%s: C refuses a model the library loads: %s" % (
            name, info)
        want_info = "info %d %d %d %d" % (sp.get_piece_size(), sp.unk_id(), sp.eos_id(),
                                          sp.pad_id())
        assert info == want_info, "%s: C says %r, library %r" % (name, info, want_info)
        check_norm = not byte_fallback(data)
        for p, line in zip(prompts, lines):
            where = "%s, prompt %s" % (name, ascii(p[:60]))
            assert not line.startswith("!"), "%s: C fails: %s" % (where, line)
            cols = line.split("\t")
            ids = sp.encode(p)
            got_ids = [int(x) for x in cols[1].split()] if cols[1] else []
            if check_norm:
                # pieces as bytes (bytes in, bytes out); EncodeAsImmutableProto would be
                # simpler but crashes 0.1.97 on some invalid UTF-8
                norm = b"".join(sp.encode(p, out_type=str))
                got = bytes.fromhex(cols[0])
                assert got == norm, "%s: normalized %s, library %s" % (where, ascii(got),
                                                                       ascii(norm))
            assert got_ids == ids, "%s: ids %s, library %s" % (where, got_ids, ids)
            if max_len:
                eos, pad = sp.eos_id(), sp.pad_id()
                if b"\0" in p:
                    assert cols[2] == "-"
                elif eos < 0 or pad < 0:
                    assert cols[2].startswith("!"), "%s: T5 without eos/pad" % where
                else:
                    keep = ids[:max_len - 1]
                    want = keep + [eos] + [pad] * (max_len - len(keep) - 1)
                    mask = "1" * (len(keep) + 1) + "0" * (max_len - len(keep) - 1)
                    assert cols[2:] == [" ".join(map(str, want)), mask, str(len(keep) + 1)], \
                        "%s: T5(%d) %s, expected %s" % (where, max_len, cols[2:], want)
            compared += 1
    return compared


# ---- tests -------------------------------------------------------------------------------

def test_fixtures_up_to_date():
    out = os.path.join(WORK, "regen")
    fx.write_fixtures(out)
    for name in MODELS + ["golden.tsv"]:
        assert read(os.path.join(out, name)) == read(os.path.join(FIXTURES, name)), (
            "tests/fixtures/spm_tiny/%s is stale: rerun tests/reference/make_spm_fixture.py"
            % name)
    return "%d files" % (len(MODELS) + 1)


def test_goldens_match_library():
    rows = 0
    sps = {m: spm().SentencePieceProcessor(model_file=os.path.join(FIXTURES, m))
           for m in MODELS}
    with open(os.path.join(FIXTURES, "golden.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            model, hexp, ids, _ = line.rstrip("\n").split("\t")
            want = [int(x) for x in ids.split()]
            assert sps[model].encode(bytes.fromhex(hexp)) == want, line
            rows += 1
    assert rows == len(MODELS) * len(fx.PROMPTS)
    sp = sps["spiece.model"]   # T5's layout
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert sp.get_piece_size() == fx.VOCAB_SIZE
    return "%d rows" % rows


def test_c_fixture_models(binary):
    prompts = tricky_prompts()
    n = 0
    for name in MODELS:
        data = read(os.path.join(FIXTURES, name))
        n += compare(binary, name, data, prompts, (120, 8) if name == "spiece.model" else (16,))
    return "%d comparisons" % n


def test_c_normalizer_variants(binary):
    base = read(os.path.join(FIXTURES, "spiece.model"))
    prompts = tricky_prompts()[::3]
    n = variants = 0
    for adp in (0, 1):
        for rew in (0, 1):
            for esc in (0, 1):
                for suffix in (0, 1):
                    data = fx.with_normalizer(base, adp, rew, esc, suffix=suffix)
                    name = "spiece adp=%d rew=%d esc=%d suffix=%d" % (adp, rew, esc, suffix)
                    n += compare(binary, name, data, prompts)
                    variants += 1
    data = fx.with_normalizer(base, charsmap=b"")
    n += compare(binary, "spiece identity", data, prompts)
    return "%d variants, %d comparisons" % (variants + 1, n)


def test_c_random_models(binary):
    rng = random.Random(11)
    charsmap = fx.charsmap_of(read(os.path.join(FIXTURES, "spiece.model")))
    n = models = refused = 0
    for i in range(300):
        data, alphabet = fx.random_model(rng, charsmap if i % 5 == 0 else b"")
        extra = alphabet + "  \t\u2581z\u00e9e\u0301\uff41\ufb01"
        prompts = [b"", b" ", "\u00e9".encode()] + [
            "".join(rng.choice(extra) for _ in range(rng.randrange(1, 14))).encode("utf-8")
            for _ in range(40)]
        got = compare(binary, "random model %d" % i, data, prompts, (6,))
        models += 1
        refused += got == 0
        n += got
    assert refused < models // 3, "%d of %d random models refused" % (refused, models)
    return "%d models (%d refused by both), %d comparisons" % (models, refused, n)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    if binary and not os.path.isabs(binary):
        binary = os.path.join(os.getcwd(), binary)
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_")]
    passed = failed = skipped = 0
    try:
        for name, fn in tests:
            try:
                if fn.__code__.co_argcount:
                    if not binary:
                        raise Skip("no C test binary given")
                    note = fn(binary)
                else:
                    note = fn()
                passed += 1
                print("ok   %s%s" % (name, " (%s)" % note if note else ""))
            except Skip as e:
                skipped += 1
                print("skip %s: %s" % (name, e))
            except Exception as e:  # report every failure, then keep going
                failed += 1
                detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
                print("FAIL %s: %s" % (name, detail))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print("test_spm: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
