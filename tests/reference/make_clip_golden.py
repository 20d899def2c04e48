#!/usr/bin/python3
"""Writes the CLIP tokenizer fixtures that tests/test_clip_tokenizer.c checks against.

    /usr/bin/python3 tests/reference/make_clip_golden.py [--out tests/fixtures/clip_bpe]
    /usr/bin/python3 tests/reference/make_clip_golden.py --vocab bpe_simple_vocab_16e6.txt.gz \
        --out /tmp/clip_real        # the same prompts on another vocabulary

Writes OUT/clip_bpe.txt (the merges, Tessera's format) and OUT/golden.tsv (expected
rows from clip_tokenizer_ref.py). Without --vocab the merges are make_test_merges(
N_TEST_MERGES): a small vocabulary learnt from a built-in corpus. Deterministic; the
cleanup is always the "subset" flavour, so the output does not depend on whether ftfy
is installed.

golden.tsv: '#' lines are comments; every other line has tab-separated columns
    context_length  specials ("clip" | "open_clip")  prompt as hex of its UTF-8
    the context_length ids, space separated   the prompt's repr, for people
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import clip_tokenizer_ref as ref  # noqa: E402

N_TEST_MERGES = 500

# (prompt, context_length, specials): tricky cases for cleanup, split and BPE.
_LONG = ("a highly detailed matte painting of an ancient castle on a cliff above a "
         "stormy sea at sunset, dramatic lighting, volumetric clouds, birds flying, "
         "trending on artstation, 8k, ultra realistic, cinematic composition, wide "
         "angle lens, golden hour, by greg rutkowski and alphonse mucha, fantasy art, "
         "epic scale, intricate details, sharp focus, octane render, unreal engine")
PROMPTS = [
    ("a photo of a cat", 77, "clip"),
    ("A Photo Of A CAT", 77, "clip"),
    ("", 77, "clip"),
    ("   \t\n  ", 77, "clip"),
    ("Hello, World!!! ... ?! (yes) [no] {maybe}", 77, "clip"),
    ("it's a dog's life; we're here, they've gone, I'm fine, you'll see, he'd go", 77, "clip"),
    ("IT'S DON'T WON'T Y'ALL SHE'LL", 77, "clip"),
    ("rock'n'roll o'clock '''s ''", 77, "clip"),
    ("4k 8K uhd 1080p 3.14159 2024-01-01 $5.99 100%", 77, "clip"),
    ("1234567890 x2 2x mixed123abc456", 77, "clip"),
    ("café naïve résumé façade", 77, "clip"),
    ("cafe\u0301 with a decomposed accent, A\u030a and \u212b", 77, "clip"),
    ("Ærøskøbing straße ÖSTERREICH Łódź", 77, "clip"),
    ("ΟΔΟΣ ΣΟΦΟΣ σοφός Σ ΑΣ.", 77, "clip"),
    ("İstanbul KELVIN \u212a", 77, "clip"),
    ("東京タワーの夜景、美しい", 77, "clip"),
    ("北京烤鸭 and 한국어 텍스트 \u1100\u1161\u11a8", 77, "clip"),
    ("emoji 😀👍🏽🎉 party", 77, "clip"),
    ("family 👨\u200d👩\u200d👧 and flags 🇯🇵", 77, "clip"),
    ("Tom &amp; Jerry", 77, "clip"),
    ("&lt;b&gt;bold&lt;/b&gt; text", 77, "clip"),
    ("<b>bold</b> &amp; &eacute; tags", 77, "clip"),
    ("&amp;amp;amp;lt; nested", 77, "clip"),
    ("&eacute;t&eacute; &copy 2024 &NotAnEntity; &#x263A; &#9731; &#128512; &#X41;", 77, "clip"),
    ("&EACUTE;COLE &NTILDE; &AMP; &Amp;", 77, "clip"),
    ("&ampfoo &notit; &#59; &#0; &#128; &#xD800; &#1114112;", 77, "clip"),
    ("\u201cCurly quotes\u201d and \u2018single\u2019 and don\u2019t \u201ehere\u201f", 77, "clip"),
    ("\ufb01ne \ufb02owers \ufb03 o\ufb00 \u0132ssel \u01c4", 77, "clip"),
    ("\uff26\uff35\uff2c\uff2c\u3000\uff37\uff29\uff24\uff34\uff28\u3000\uff11\uff12\uff13\uff01", 77, "clip"),
    ("\uff76\uff80\uff76\uff85 half-width katakana \uffe3", 77, "clip"),
    ("tabs\tand\nnewlines\r\nand  \u00a0 nbsp\u2003em\u3000space", 77, "clip"),
    ("control\x07chars\x1b[31mred\x1b[0m\u200bzero\ufeffwidth", 77, "clip"),
    ("windows-1252 \x93quoted\x94 \x85 \x80", 77, "clip"),
    ("line\u2028separator\u2029paragraph\x85next", 77, "clip"),
    ("<|startoftext|> inside <|endoftext|> and <|ENDOFTEXT|>", 77, "clip"),
    ("<start_of_text> open_clip spelling <end_of_text>", 77, "open_clip"),
    ("<|startoftext|> under open_clip", 77, "open_clip"),
    ("long \u017fs: '\u017f <|\u017ftartoftext|>", 77, "clip"),
    ("a\u0345b \u1fb3 ypogegrammeni", 77, "clip"),
    ("Zalgo t\u0337\u0322\u031be\u0336x\u0334t\u0335", 77, "clip"),
    ("email@example.com https://example.com/path?q=1&lang=en", 77, "clip"),
    ("C++ / C# / F# and #hashtag @mention -- *** ___ === !!!", 77, "clip"),
    ("مرحبا بالعالم ١٢٣", 77, "clip"),
    ("नमस्ते दुनिया and สวัสดีครับ", 77, "clip"),
    ("x\u00b2 + y\u00b3 = \u00bd \u2211\u221e \u2260 \u221a2, \u216b \u217b", 77, "clip"),
    (_LONG, 77, "clip"),
    ("supercalifragilisticexpialidocious" * 6, 77, "clip"),
    ("a" * 60 + " " + "ab" * 30, 77, "clip"),
    ("a photo of a cat", 8, "clip"),
    ("a photo of a very fluffy orange cat", 8, "clip"),
    ("cat", 3, "clip"),
    ("cat", 2, "clip"),
    ("", 1, "clip"),
    (_LONG, 16, "clip"),
]


def golden_rows(make_tok):
    """[(context_length, specials, prompt, ids)] with make_tok(specials) -> tokenizer."""
    toks = {}
    rows = []
    for prompt, ctx, specials in PROMPTS:
        if specials not in toks:
            toks[specials] = make_tok(specials)
        rows.append((ctx, specials, prompt, toks[specials].tokenize_one(prompt, ctx)))
    return rows


def format_golden(rows, source):
    lines = ["# CLIP tokenizer goldens: written by tests/reference/make_clip_golden.py",
             "# from clip_tokenizer_ref.py (subset cleanup) on %s." % source,
             "# context_length\tspecials\tprompt (hex of UTF-8)\tids\tprompt (repr)"]
    for ctx, specials, prompt, ids in rows:
        shown = ascii(prompt)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append("%d\t%s\t%s\t%s\t%s" % (ctx, specials, prompt.encode("utf-8").hex(),
                                             " ".join(map(str, ids)), shown))
    return "\n".join(lines) + "\n"


def write_fixtures(out, vocab=None):
    os.makedirs(out, exist_ok=True)
    if vocab:
        merges = ref.read_merges(vocab)
        source = os.path.basename(vocab)
    else:
        merges = ref.make_test_merges(N_TEST_MERGES)
        source = "make_test_merges(%d)" % N_TEST_MERGES
    ref.write_merges(os.path.join(out, "clip_bpe.txt"), merges)
    rows = golden_rows(lambda sp: ref.ClipTokenizer(merges, cleaner="subset", specials=sp))
    with open(os.path.join(out, "golden.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write(format_golden(rows, source))
    return merges, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "clip_bpe"))
    ap.add_argument("--vocab", help="official .txt.gz or a clip_bpe.txt (default: the "
                                    "small test vocabulary)")
    args = ap.parse_args()
    merges, rows = write_fixtures(args.out, args.vocab)
    print("wrote %s: %d merges (vocab %d), %d golden rows" %
          (args.out, len(merges), 512 + len(merges) + 2, len(rows)))


if __name__ == "__main__":
    main()
