#!/usr/bin/python3
"""Tests the T5 caption cleaning reference and, given the C test binary, the C cleaning
(engine/text/t5_clean.c) against it.

    /usr/bin/python3 tests/reference/test_t5_clean.py [build/tests/test_t5_clean]
    /usr/bin/python3 tests/reference/test_t5_clean.py --regen    # rewrite the fixture

Always: tests/fixtures/t5_clean/golden.tsv is what the reference gives today for
PROMPTS (the C Check suite reads it) and the reference passes a few hand-checked cases
(when ftfy is importable, it also reports on how many prompts real ftfy and the subset
differ). With the binary: its \\d \\w \\s agree with Python's re on every code point;
the HTML step alone agrees with BeautifulSoup on N_RANDOM_TAGS grammar-built markup
texts (plus the other prompts, lower-cased); and the whole cleaning agrees with the
reference on the golden prompts and on N_RANDOM deterministic random prompts built
from fragments that trigger each rule plus N_RANDOM_HTML random strings over an
HTML-ish alphabet. Prints the agreement and one summary line; exits nonzero on any
failure.
"""
import os
import random
import re
import subprocess
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import t5_clean_ref as ref  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "t5_clean", "golden.tsv")
N_RANDOM = 4000          # fragment prompts
N_RANDOM_HTML = 2000     # character soup over an HTML-ish alphabet
SEED = 20240611

# ---------------------------------------------------------------------------------------
# Golden prompts: one or more per rule, and the edges between them.

PROMPTS = [
    # plain text, case, whitespace
    "A photo of a CAT", "", "   ", " \t\n ", "Hello,World.Again/and:again",
    "a  \t b\n\nc", "\u3000wide space\u00a0nbsp\x0bvt\x1cfs\u2028ls",
    # unquote_plus
    "caf%C3%A9+au+lait", "100%", "%zz%4", "%E2%82%AC5 %E2%82 %FF%FE", "a%2Bb+c", "%2525",
    "%ed%a0%80 %f0%9f%98%80 %c0%af %e0%80%80 %f4%90%80%80", "%C3é%A9", "%0A%0d%09x",
    # <person>, URLs
    "<person> holding a cat", "<PERSON>", "visit https://example.com/page today",
    "http://a.b/c?d=e", "https:x", "https:/", "http:////x", "https:", "www:abc",
    "www.example.com", "go to example.com/foo-bar/ now", "mail bob@example.com",
    "a.com@b", "site.ru, site.net; site.org! site.edu site.gov site.it", "x.co.uk",
    "a.b.c.com.d", "foo.comedy", "my-site.com/x_y-z/", "-a.com", ".a.com", "über.com",
    "a.com/é", "http://x.com/a@b", "a.com/@b", "a.com//@", "x.comx/ y.coma.com",
    # HTML
    "<p>Red <b>apple</b></p> &lt;3", "<b>bold</b>text<i>it</i>", "a<br>b<br/>c</br>d",
    "<pre>  keep  </pre>", "<pre>  </pre>x", "<textarea>\n</textarea>y",
    "a <b>  \n </b> c", "<script>var x = 1;</script>after", "<style>p{}</style>after",
    "<script>never closed", "<SCRIPT>x</SCRIPT>y", "<rt>ruby</rt>base", "<rp>(</rp>",
    "<template><p>t</p></template>out", "<!-- comment -->text", "<!---->x", "<!-->x",
    "<!doctype html><html><body>hi</body></html>", "<?xml version='1.0'?>doc",
    "<!bogus>text", "<![cdata[kept]]>", "<![cdata[]]>a", "<![if !x]>y<![endif]>",
    "a <![foo bar]> b", "<![ x", "<a href='x>y'>link</a>", "<a href=\"x\">q</a>",
    "<a b= 'unclosed>z", "<a b=='u>z", "<a b='u>z", "<img src=x/>pic", "<a<b>c",
    "a < b > c", "a<", "<a", "x</>y", "</ b>", "</b c>", "<a\x00b>c", "1 < 2 and 3 > 2",
    "<b>x<p>  </p>y", "&amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;q&#39; &#x27;r&#x27;",
    "&#128;&#150;&#0;&#13;x", "&#x110000; &#xd800;&#xdc00; &#xd83d;&#xde00;",
    "&nbsp;&eacute&copy;&foo;&a.b", "x &a", "x &ab", "&#12a; <b>x</b>", "&#65", "a&",
    "&", "&#", "&#x", "&#x;y;", "&amp-x y", "&foo-", "AT&T", "R&D;x",
    "a &amp.b", "a &lt-", "<br><br/><pre></br>  </pre>", "<a b= ' c=d>text", "<a b= '>t",
    "&#" + "0" * 4298 + "65;y", "&#" + "0" * 4300 + "65;y",
    "\uff06\uff03" + "\uff10" * 4301 + "\uff41 x", "\uff06\uff03\uff13\uff18\uff41 x",
    "<a b='x' c=\"y\" d=e f>t</a>", "<a/b>c", "<a / >d", "<p\t\n>e</p>", "<br></br></br>x",
    # nicknames, CJK, dashes, quotes
    "@bob_77 drew #42 of them", "mail@home", "@@x", "@é", "漢字 kanji ㈱ ㍻ ䷀ ㇰ ㈠",
    "em—dash en–dash fig‒x hyphen‐minus ‑ ― ⸗ 〜 ゠ ﹘ － ֊",
    "`´«»“”¨ and ‘’", "\"\"double\"\" ''single''", "'a'", "\"b\"", "\"", "\"'\"",
    "&quot;x&quot y", "&ampx &amp;",
    # numbers, tags, files
    "ip 192.168.0.1 here", "1.2.3.4567", "12345.1.1.1", "1:23\t", "see 12:34 ", "a\\nb",
    "#1 #123 #1234 #12345 #123456x #12a", "123456 1234567 12345", "call 555-123456!",
    "photo.jpg", "my.file.name.png", "x.pngx", "a.jpeg.b", "img_01.JPG", ".png", "a.",
    # repeats, punctuation, hyphens
    "\"\"\"AUSVERKAUFT\"\"\"", "wait... what..", "***AUSVERKAUFT***", "#AUSVERKAUFT",
    "a . b", "a  .  b . c", "x|y\\z/w*v~u", "©®™•·º½¾¿¡§", "this-is-my-cute-cat",
    "this_is_my_cute_cat", "well-made", "a-b_c-d", "a--b--c",
    # basic_clean (ftfy subset, html.unescape)
    "ﬁne ﬂower", "ＡＢＣ１２３", "Ｈｅｌｌｏ！", "＆ａｍｐ；", "e\u0301", "\x1b[31mred\x1b[0m",
    "\x96dash\x85", "&AMP;&EACUTE;", "naïve Ångström", "ΣΑΣ", "İstanbul", "ſ", "ß",
    # codes, shop phrases, dimensions
    "Model jc6640 size 3x4,red", "jc6640vc 6640vc231 j2d1a2a abc12 ab123 abcd1234",
    "a1234567890123456", "x1y", "1a1", "a1b2c3d4", "Free Shipping", "worldwide shipping",
    "worldwide  free  shipping now", "freeshipping", "free download free", "download",
    "click for details", "click on me", "clicks for x", "png image", "jpg images jpeg",
    "pngfoo", "page 3", "page  12a", "pages 3", "3x4", "1.5x2", "10×20", "3х4", "2x3.",
    "2x3.5a", "1.x2", "12.5x30.0cm", "x3x4",
    # colons, punctuation spacing, ends
    "time : now", "a :b", "1,000,000 and a,b", "e.g.this", "x/y", "'_edge_'", "-dash-",
    ":colon;", "trail+", ".hidden", ". visible", "'quoted'", "\"x\"", "'''", "''",
    # emoji and others
    "😀 emoji 👍🏽", "zero\u200dwidth", "tab\there", "line\r\nbreak", "\u00ad soft",
    # longer realistic captions
    "Beautiful sunset over the ocean, 4K wallpaper, FREE DOWNLOAD at https://wall.com",
    "<p>Product: <b>Red Dress</b> (size M) &ndash; only $29.99!</p>",
    "Vintage poster \"Paris 1920\" | 50x70cm | #art #poster @gallery",
    "IMG_20190101_123456.jpg - a dog on the beach",
    "Cat%20sitting%20on%20a%20mat",
]

# ---------------------------------------------------------------------------------------
# Random prompts

FRAGMENTS = [
    # URLs
    "http://", "https://", "www:", "www.", "example.com", "x.co", "a.ru/path", ".net",
    ".org/", "foo.it@", "sub.domain.edu/x-y_z", "gov", "http:x", "site.com/", "@x", ".com",
    # HTML
    "<b>", "</b>", "<br>", "</br>", "<br/>", "<pre>", "</pre>", "<textarea>", "<script>",
    "</script>", "<style>x</style>", "<rt>", "</rt>", "<template>", "</template>",
    "<!-- c -->", "<!--", "-->", "<!doctype html>", "<?pi?>", "<![cdata[x]]>", "<![if x]>",
    "<![endif]>", "<![foo", "<a href='x>y'>", "<a b=\"c\">", "<img src=x/>", "<", ">",
    "</", "</>", "&", "&amp;", "&amp", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;",
    "&#128;", "&#0;", "&#x110000;", "&#xd800;", "&nbsp;", "&eacute", "&foo;", "&a.b", "&#",
    "&#x", "=", "/", "/>", "<p>", "</p>", "<a b= '", "<x y=z>", "]]>", "<!", "<?",
    # names, numbers
    "@bob", "@a_1", "#1", "#123", "#1234", "#12345", "#abc", "1", "12", "123456",
    "1234567", "1.2.3.4", "12:34", "3:45 ", "\u0663", "\u0661\u0662\u0663\u0664\u0665\u0666",
    "\u00b2", "\u00bd", "0",
    # codes, dimensions
    "jc6640", "jc6640vc", "6640vc231", "j2d1a2a", "a1b2c3", "abc123", "ab1234567890123456",
    "3x4", "1.5x2", "10\u00d720", "3\u04454", "2x3.", "2x3.5a", "1.x2", "x",
    # dashes, quotes
    "-", "--", "\u2014", "\u2013", "\u2010", "_", "__", "a-b-c-d", '"', "'", "''", '""',
    "`", "\u00b4", "\u00ab", "\u00bb", "\u201c", "\u201d", "\u2018", "\u2019", "\u00a8",
    # CJK, full width, accents, emoji
    "\u6f22\u5b57", "\u3400", "\u31f0", "\u3231", "\u337b", "\u4dc0", "\u304b\u306a",
    "\uff76\uff80", "\uff21\uff22", "\uff11\uff12", "\uff06\uff41\uff4d\uff50\uff1b",
    "\uff1c\uff42\uff1e", "\uff1a", "caf\u00e9", "na\u00efve", "\u00c5ngstr\u00f6m",
    "e\u0301", "\ufb01", "\u03a3", "\u0130", "\u017f", "\u00df", "\U0001f600",
    "\U0001f44d\U0001f3fd", "\u200d", "\u0131", "K",
    # percent escapes, plus
    "%20", "%2B", "%25", "%C3%A9", "%E2%82%AC", "%E2%82", "%FF", "%zz", "%", "+", "%3C",
    "%26", "%0A",
    # shop phrases
    "free shipping", "worldwide  free  shipping", "free download", "download free",
    "click for more", "click on x", "png image", "jpg images", "photo.jpg",
    "file.name.pdf", "page 3", "page  12a", "free", "shipping", "click", "page", "image",
    # punctuation
    "...", "..", ".", " . ", ",", ":", " : ", ";", "*", "~", "|", "\\", "\\n", "(", ")",
    "[", "]", "{", "}", "\u00a9", "\u00ae", "\u2122", "\u2022", "\u00b7", "\u00bf",
    "\u00a1", "\u00a7", "!", "?", "$",
    # whitespace and controls
    " ", "  ", "\t", "\n", "\r\n", "\r", "\u3000", "\u00a0", "\x0b", "\x1c", "\u2028",
    "\x00", "\x1b[31m", "\x85", "\x96", "\x0c",
    # words
    "a", "the", "cat", "Photo", "of", "for", "on", "worldwide", "A", "Dog", "red",
]

HTML_ALPHABET = "<>/!-[]&#;x0123456789abcdepst'\"= \n.:@%?rilyc"

# Single-space patterns (click for, free download, png image) see how bs4 shortens
# whitespace-only strings between tags.
FRAGMENTS += [
    "click<b> </b>for x", "click<i>\t\n</i>on y", "free<b>  </b>download",
    "download<b> \n</b>free", "png<b>  </b>image", "click<pre>  </pre>for z",
    "click<br> </br>for w", "<textarea>  </textarea>", "free<!-- -->\tdownload",
]

N_RANDOM_TAGS = 6000     # HTML step alone: grammar-built tags, attributes, references
TAG_NAMES = ["b", "p", "a", "pre", "textarea", "br", "img", "wbr", "script", "style", "rt",
             "rp", "template", "x-y", "a\"b", "i\x00", "q'", "h1", "\u00e9t\u00e9",
             "br\u3000", "spacer", "input"]
END_TAGS = ["</b>", "</pre>", "</br>", "</br >", "</script>", "</style>", "</textarea>",
            "</rt>", "</template>", "</x y>", "</ b >", "</>", "</", "</\u017fcript>",
            "</scr\u0131pt >", "</script\t>", "</style\n>", "</img>", "</p", "</1>",
            "</p\u00e9>", "</a:b_c>"]
OTHER_MARKUP = ["<!-- c -->", "<!--", "-->", "<!---->", "<!-->", "--!>", "<!doctype x>",
                "<!doctype", "<?pi>", "<?", "<!x>", "<!", "<![cdata[ x ]]>",
                "<![cdata[]]>", "<![cdata[\n]]>", "<![cdata[a]b]]>", "<![if x]>",
                "<![endif] >", "<![temp[x] ]>", "<![foo x]>", "<![ x>", "<![", "<![cdata",
                "]]>", "] >", "<", ">", "<<", "<3", "< b>"]
REFS = ["&amp;", "&amp", "&lt;", "&gt", "&nbsp;", "&eacute", "&notin;", "&notit;",
        "&foo;", "&a.b", "&a-b;", "&x", "&", "&#", "&#;", "&#x;", "&#65;", "&#65",
        "&#x41;", "&#x41", "&#128;", "&#129;", "&#0;", "&#x10ffff;", "&#x110000;",
        "&#xd800;", "&#12a;", "&#x1g;", "&#x", "&#999999999999;", "&quot;", "&AMP;"]
TEXTS = [" ", "  ", "\n", " \n\t", "\r\n", "\f", "\x0b", "\u3000", "\u00a0", "x",
         "word", "a b", ";", "=", "'", "\"", "/", "-", ".", "\u00e9"]


def random_tag(rng):
    s = "<" + rng.choice(TAG_NAMES)
    for _ in range(rng.randint(0, 3)):
        s += rng.choice([" ", "  ", "\t", "/", "\n", "", "\u3000", "\x0b", " / "])
        s += rng.choice(["a", "b-c", "'q", "\"q", "=", "x/y", "\u00e9", "", "<b", "&"])
        if rng.random() < 0.6:
            s += rng.choice(["", " ", "\n"]) + rng.choice(["=", "==", "= ", " = ", "=\t"])
            s += rng.choice(["'v'", "\"v\"", "v", "'v>w'", "\"a b\"", "'", "\"", "",
                             "v/", ">", "'a'b", "=v", "&amp;"])
    s += rng.choice([">", "/>", " >", " / >", "", "/", " ", "\x00>", "'>", "=>", ">>",
                     "\"", "/ >"])
    return s


def random_html(n, seed=SEED):
    rng = random.Random(seed + 1)
    out = []
    for _ in range(n):
        pieces = []
        for _ in range(rng.randint(1, 8)):
            k = rng.random()
            if k < 0.35:
                pieces.append(random_tag(rng))
            elif k < 0.5:
                pieces.append(rng.choice(END_TAGS))
            elif k < 0.6:
                pieces.append(rng.choice(OTHER_MARKUP))
            elif k < 0.75:
                pieces.append(rng.choice(REFS))
            else:
                pieces.append(rng.choice(TEXTS))
        out.append("".join(pieces).lower())
    return out


def random_prompts(n, n_html, seed=SEED):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 10)):
            parts.append(rng.choice(FRAGMENTS))
            parts.append(rng.choice(["", "", " ", " ", "\n", "x", "-"]))
        text = "".join(parts)
        if rng.random() < 0.2:
            text = text.upper()
        out.append(text)
    for _ in range(n_html):
        out.append("".join(rng.choice(HTML_ALPHABET) for _ in range(rng.randint(1, 40))))
    return out


# ---------------------------------------------------------------------------------------
# The fixture

def golden_rows():
    rows = []
    for p in PROMPTS:
        rows.append("%s\t%s\t%s -> %s\n" % (p.encode().hex(),
                                            ref.text_preprocessing(p).encode().hex(),
                                            ascii(p), ascii(ref.text_preprocessing(p))))
    return rows


def golden_text():
    return ("# T5 caption cleaning goldens: written by tests/reference/test_t5_clean.py --regen\n"
            "# from t5_clean_ref.py (%s; ftfy: %s).\n"
            "# prompt (hex of UTF-8)\tcleaned (hex of UTF-8)\tboth, for people\n"
            % (ref.HTML_VERSIONS, "real" if ref._real_ftfy() else "subset")
            + "".join(golden_rows()))


def write_fixture():
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, "w", encoding="utf-8") as f:
        f.write(golden_text())
    print("wrote %s (%d prompts)" % (os.path.relpath(FIXTURE, ROOT), len(PROMPTS)))


# ---------------------------------------------------------------------------------------
# Tests

class Skip(Exception):
    pass


def run_c(binary, prompts, mode="--filter"):
    """The C cleaning of each prompt, through the test binary's filter mode."""
    data = "".join(p.encode("utf-8").hex() + "\n" for p in prompts)
    r = subprocess.run([binary, mode], input=data, capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, "%s %s failed: %s" % (binary, mode, r.stderr)
    outs = []
    for line in r.stdout.splitlines():
        outs.append(bytes.fromhex(line[3:]).decode("utf-8") if line.startswith("ok ")
                    else line)
    assert len(outs) == len(prompts), "%d answers for %d prompts" % (len(outs), len(prompts))
    return outs


def test_fixture_up_to_date():
    with open(FIXTURE, encoding="utf-8") as f:
        have = f.read()
    made_with = have.split("\n")[1] if have.count("\n") > 1 else "?"
    assert have == golden_text(), (
        "tests/fixtures/t5_clean/golden.tsv is stale: rerun tests/reference/"
        "test_t5_clean.py --regen (it says: %s; this is %s)" % (made_with, ref.HTML_VERSIONS))
    return "%d prompts" % len(PROMPTS)


def test_reference_cases():
    tp = ref.text_preprocessing
    assert tp("A photo of a CAT") == "a photo of a cat"
    assert tp("Visit <b>https://x.com</b> NOW!!") == "visit now!!"
    assert tp("this-is-my-cute-cat") == "this is my cute cat"
    assert tp("Model jc6640 size 3x4") == "model size"
    assert tp("caf%C3%A9+au+lait") == "caf\u00e9 au lait"
    stats = {}
    assert tp("a <![foo bar]> b", stats) == "a b" and stats["fallbacks"] == 1
    stats = {}
    assert tp("&#" + "1" * 5000 + ";x", stats) == "\ufffdx" and stats["fallbacks"] == 1
    # html.parser really raises there (the reason for the fallback)
    from bs4 import BeautifulSoup
    try:
        BeautifulSoup("a <![foo bar]> b", "html.parser")
    except AssertionError:
        pass
    else:
        raise AssertionError("html.parser no longer raises on '<![foo': update the notes")


def test_subset_matches_ftfy():
    if ref._real_ftfy() is None:
        raise Skip("ftfy not installed; the fixture uses the subset (see t5_clean_ref)")
    diff = [p for p in PROMPTS
            if ref.text_preprocessing(p, ftfy_which="auto") !=
            ref.text_preprocessing(p, ftfy_which="subset")]
    return "ftfy and the subset differ on %d of %d prompts: %s" % (
        len(diff), len(PROMPTS), ", ".join(map(ascii, diff[:10])))


def test_c_classes(binary):
    r = subprocess.run([binary, "--classes"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    got = {"d": set(), "w": set(), "s": set()}
    for line in r.stdout.splitlines():
        k, lo, hi = line.split()
        got[k].update(range(int(lo), int(hi) + 1))
    pats = {"d": re.compile(r"\d"), "w": re.compile(r"\w"), "s": re.compile(r"\s")}
    for k, pat in pats.items():
        want = {c for c in range(0x110000) if pat.match(chr(c))}
        assert got[k] == want, "\\%s differs on %s" % (
            k, sorted(got[k] ^ want)[:10])
    return "d %d, w %d, s %d code points" % tuple(len(got[k]) for k in "dws")


def compare(binary, prompts, label):
    outs = run_c(binary, prompts)
    bad, fallbacks = [], 0
    for p, got in zip(prompts, outs):
        stats = {}
        want = ref.text_preprocessing(p, stats)
        fallbacks += stats.get("fallbacks", 0) > 0
        if got != want:
            bad.append((p, got, want))
    print("     %s: %d/%d agree (%.2f%%); %d where upstream would raise" % (
        label, len(prompts) - len(bad), len(prompts),
        100.0 * (len(prompts) - len(bad)) / max(1, len(prompts)), fallbacks))
    assert not bad, "%d disagree, e.g.\n%s" % (len(bad), "\n".join(
        "       %s\n         C:   %s\n         ref: %s" % (ascii(p), ascii(g), ascii(w))
        for p, g, w in bad[:8]))
    return len(prompts)


_SURROGATE = re.compile("[\ud800-\udfff]")


def test_c_html(binary):
    """The HTML step alone against BeautifulSoup, on grammar-built markup."""
    prompts = random_html(N_RANDOM_TAGS) + [p.lower() for p in PROMPTS] + \
        [p.lower() for p in random_prompts(0, N_RANDOM_HTML)]
    outs = run_c(binary, prompts, "--filter-html")
    bad = []
    for p, got in zip(prompts, outs):
        want = _SURROGATE.sub("\ufffd", ref.html_text(p))  # the C prints U+FFFD for them
        if got != want:
            bad.append((p, got, want))
    print("     html step: %d/%d agree" % (len(prompts) - len(bad), len(prompts)))
    assert not bad, "%d disagree, e.g.\n%s" % (len(bad), "\n".join(
        "       %s\n         C:   %s\n         ref: %s" % (ascii(p), ascii(g), ascii(w))
        for p, g, w in bad[:8]))
    return "%d texts" % len(prompts)


def test_c_golden(binary):
    return "%d prompts" % compare(binary, PROMPTS, "golden")


def test_c_random(binary):
    prompts = random_prompts(N_RANDOM, N_RANDOM_HTML)
    return "%d prompts" % compare(binary, prompts, "random")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--regen":
        write_fixture()
        return 0
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    tests = [(n, f) for n, f in globals().items()
             if n.startswith("test_") and not n.startswith("test_c_")]
    c_tests = [(n, f) for n, f in globals().items() if n.startswith("test_c_")]
    if binary:
        tests += [(n, (lambda f=f: f(binary))) for n, f in c_tests]
    passed = failed = skipped = 0
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
    if not binary:
        skipped += len(c_tests)
        print("skip %s: no C test binary given" % ", ".join(n for n, _ in c_tests))
    print("test_t5_clean: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
