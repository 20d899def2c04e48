#!/usr/bin/python3
"""Tests the CLIP tokenizer reference and, given the C test binary, the C tokenizer on
the real CLIP vocabulary.

    /usr/bin/python3 tests/reference/test_clip_tokenizer.py [build/tests/test_clip_tokenizer]

Always: the committed fixtures (tests/fixtures/clip_bpe) are what make_clip_golden.py
writes today; merges files round-trip (plain and gzip); tokenize() keeps open_clip's
shape, padding and truncation rules; and, when the ftfy package is importable, the
"subset" cleanup agrees with ftfy.fix_text on every golden prompt.

With TESSERA_CLIP_VOCAB pointing at bpe_simple_vocab_16e6.txt.gz (or a clip_bpe.txt
made from it): CLIP's well-known ids come out, and with the C test binary given, the
golden prompts are tokenized on that vocabulary by the reference and checked by the C
suite (TESSERA_CLIP_GOLDEN_DIR). Without it those tests are skipped, saying so.
Prints one summary line; exits nonzero on any failure.
"""
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import clip_tokenizer_ref as ref  # noqa: E402
import make_clip_golden as golden  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "clip_bpe")
WORK = tempfile.mkdtemp(prefix="tessera-clip-")


class Skip(Exception):
    pass


def real_vocab():
    path = os.environ.get("TESSERA_CLIP_VOCAB")
    if not path:
        raise Skip("TESSERA_CLIP_VOCAB not set (point it at bpe_simple_vocab_16e6.txt.gz "
                   "to compare on the real CLIP vocabulary)")
    if not os.path.exists(path):
        raise AssertionError("TESSERA_CLIP_VOCAB=%s does not exist" % path)
    return path


def test_fixtures_up_to_date():
    out = os.path.join(WORK, "regen")
    golden.write_fixtures(out)
    for name in ("clip_bpe.txt", "golden.tsv"):
        with open(os.path.join(out, name), "rb") as a, \
                open(os.path.join(FIXTURES, name), "rb") as b:
            assert a.read() == b.read(), (
                "tests/fixtures/clip_bpe/%s is stale: rerun "
                "tests/reference/make_clip_golden.py" % name)
    return "%d prompts" % len(golden.PROMPTS)


def test_vocab_layout_and_tokenize():
    merges = ref.make_test_merges(golden.N_TEST_MERGES)
    tok = ref.ClipTokenizer(merges, cleaner="subset")
    assert tok.vocab_size == 512 + len(merges) + 2
    assert (tok.sot, tok.eot) == (tok.vocab_size - 2, tok.vocab_size - 1)
    assert tok.vocab[:2] == ["!", '"'] and tok.vocab[256] == "!</w>"
    assert tok.vocab[ref.BYTE_ORDER.index(0x20)] == "\u0120"    # space is U+0120
    t = tok.tokenize(["a photo of a cat", "", "word " * 100], context_length=10)
    assert tuple(t.shape) == (3, 10) and str(t.dtype) == "torch.int64"
    row = t[0].tolist()
    n = len(tok.encode("a photo of a cat"))
    assert row[:n + 2] == [tok.sot] + tok.encode("a photo of a cat") + [tok.eot]
    assert row[n + 2:] == [0] * (10 - n - 2)
    assert t[1].tolist() == [tok.sot, tok.eot] + [0] * 8
    assert t[2].tolist()[-1] == tok.eot and t[2].tolist()[0] == tok.sot
    assert 0 not in t[2].tolist()
    assert tok.tokenize("cat", 1).tolist() == [[tok.eot]]
    assert tok.decode(tok.encode("A Photo, of 2 cats!")) == "a photo , of 2 cats ! "


def test_merges_files_round_trip():
    merges = ref.make_test_merges(50)
    plain = os.path.join(WORK, "m.txt")
    ref.write_merges(plain, merges)
    assert ref.read_merges(plain) == merges
    # official layout: a header line, then CLIP uses at most N_CLIP_MERGES lines
    gz = os.path.join(WORK, "m.txt.gz")
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join("%s %s\n" % m for m in merges))
    assert ref.read_merges(gz) == merges
    bad = os.path.join(WORK, "bad.txt")
    with open(bad, "w") as f:
        f.write("i n\nt h e\n")
    try:
        ref.read_merges(bad)
    except ValueError as e:
        assert "line 2" in str(e)
    else:
        raise AssertionError("a three-symbol line was accepted")


def test_subset_matches_ftfy():
    try:
        import ftfy  # noqa: F401
    except ImportError:
        raise Skip("ftfy not installed; the subset was checked against ftfy 6.3.1 when "
                   "written (see clip_tokenizer_ref.SUBSET_NOTES)")
    diff = [p for p, _, _ in golden.PROMPTS
            if ref.clean_text(p, "ftfy") != ref.clean_text(p, "subset")]
    assert not diff, "ftfy and the subset disagree on %s" % ", ".join(map(ascii, diff))


def test_real_vocab_known_ids():
    tok = ref.ClipTokenizer.from_file(real_vocab(), cleaner="subset")
    assert tok.vocab_size == ref.CLIP_VOCAB_SIZE, tok.vocab_size
    assert tok.tokenize_one("a photo of a cat", 8) == \
        [49406, 320, 1125, 539, 320, 2368, 49407, 0]


def test_real_vocab_c(binary):
    vocab = real_vocab()
    out = os.path.join(WORK, "real")
    golden.write_fixtures(out, vocab)
    env = dict(os.environ, TESSERA_CLIP_GOLDEN_DIR=out)
    r = subprocess.run([binary], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, "C suite on the real vocabulary failed:\n%s%s" % (r.stdout,
                                                                              r.stderr)
    return "%d prompts through %s" % (len(golden.PROMPTS), os.path.relpath(binary, ROOT))


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    tests = [(n, f) for n, f in globals().items()
             if n.startswith("test_") and n != "test_real_vocab_c"]
    if binary:
        tests.append(("test_real_vocab_c", lambda: test_real_vocab_c(binary)))
    passed = failed = skipped = 0
    try:
        for name, fn in tests:
            try:
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
    if not binary:
        skipped += 1
        print("skip test_real_vocab_c: no C test binary given")
    print("test_clip_tokenizer: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
