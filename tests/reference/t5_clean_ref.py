#!/usr/bin/python3
"""Reference for the caption cleaning LlamaGen applies to a prompt before T5.

Written for Tessera from the behaviour of FoundationVision/LlamaGen's
language/t5.py (T5Embedder.text_preprocessing with use_text_preprocessing=True,
which runs clean_caption twice); read, not copied. engine/text/t5_clean.c must give
the same text; tests/reference/test_t5_clean.py compares the two.

    text_preprocessing("Visit <b>https://x.com</b> NOW!!")   -> "visit now!!"
    clean_caption(text)                                      -> one round

Each round uses Python's re, urllib.parse, html and BeautifulSoup (html.parser), as
upstream does. Where this reference departs from upstream, on purpose:

  ftfy     The real ftfy.fix_text when it is importable; otherwise (Debian bookworm
           has no ftfy) ftfy's fix_surrogates followed by the subset of fix_text that
           clip_tokenizer_ref.fix_text_subset reproduces (the same subset as the C
           ts_ftfy_fix_subset; mojibake repair is the part that is missing).
           `fix_text="subset"` forces the subset.
  raises   Upstream raises where BeautifulSoup's html.parser does: "<![" followed
           by something other than a marked-section keyword (AssertionError), and a
           decimal character reference of more than 4300 digits (ValueError from
           int()), which html.unescape in basic_clean can meet too (full-width
           "＆＃" and digits followed by a letter get there). Here the first is parsed
           as a bogus comment (up to the next '>') and the others give U+FFFD;
           `stats["fallbacks"]` counts how often.

Versions matter: html.parser's tolerance rules changed in later CPython security
releases (comments, raw text, "<![") and bs4's string handling in 4.13, so markup can
clean differently elsewhere. This file and the C were written against Python 3.11.2
and bs4 4.11.2 (Debian bookworm); HTML_VERSIONS records what the fixture was made with.
"""
import html
import re
import sys
import urllib.parse
import warnings

import bs4
from bs4 import BeautifulSoup
from bs4.builder._htmlparser import BeautifulSoupHTMLParser, HTMLParserTreeBuilder

import clip_tokenizer_ref

HTML_VERSIONS = "python %d.%d / bs4 %s" % (sys.version_info[0], sys.version_info[1],
                                           bs4.__version__)


# ---------------------------------------------------------------------------------------
# ftfy

def _real_ftfy():
    try:
        import ftfy
        return ftfy
    except ImportError:
        return None


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def fix_surrogates(text):
    """ftfy's fix_surrogates: pairs become their character, lone ones U+FFFD."""
    def pair(m):
        hi, lo = ord(m.group()[0]), ord(m.group()[1])
        return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
    return _SURROGATE.sub("\ufffd", _SURROGATE_PAIR.sub(pair, text))


def fix_text(text, which="auto"):
    real = _real_ftfy() if which == "auto" else None
    if real is not None:
        return real.fix_text(text)
    return clip_tokenizer_ref.fix_text_subset(fix_surrogates(text))


# ---------------------------------------------------------------------------------------
# BeautifulSoup(text, "html.parser").text, with a fallback where upstream raises

class _Parser(BeautifulSoupHTMLParser):
    fallbacks = 0

    def parse_marked_section(self, i, report=1):
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:          # "<![" + not a keyword: upstream fails here
            self.fallbacks += 1
            return self.parse_bogus_comment(i)

    def handle_charref(self, name):
        if name[:1] not in ("x", "X") and len(name) > sys.get_int_max_str_digits():
            self.fallbacks += 1         # int(name) would raise ValueError upstream
            self.handle_data("\ufffd")
            return
        super().handle_charref(name)


class _Builder(HTMLParserTreeBuilder):
    fallbacks = 0

    def feed(self, markup):
        # what HTMLParserTreeBuilder.feed does, with _Parser
        args, kwargs = self.parser_args
        parser = _Parser(*args, **kwargs)
        parser.soup = self.soup
        parser.feed(markup)
        parser.close()
        parser.already_closed_empty_element = []
        self.fallbacks = parser.fallbacks


def html_text(text, stats=None):
    builder = _Builder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "looks like a URL/filename" warnings
        out = BeautifulSoup(text, builder=builder).text
    if stats is not None:
        stats["fallbacks"] = stats.get("fallbacks", 0) + builder.fallbacks
    return out


# ---------------------------------------------------------------------------------------
# clean_caption

_TLD_TAIL = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_URLS = [re.compile(r"\b((?:%s:(?:\/{1,3}|[a-zA-Z0-9%%])|%s))" % (scheme, _TLD_TAIL))
         for scheme in ("https?", "www")]

_CJK = re.compile("[\u31c0-\u31ef]+|[\u31f0-\u31ff]+|[\u3200-\u32ff]+|[\u3300-\u33ff]+|"
                  "[\u3400-\u4dbf]+|[\u4dc0-\u4dff]+|[\u4e00-\u9fff]+")
_DASHES = re.compile("[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a"
                     "\u2e3b\u2e40\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d]+")
_BAD_PUNCT = re.compile("[" + re.escape("#®•©™&@·º½¾¿¡§~)(][}{|\\/*") + "]+")
_EXTS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"

# (pattern, replacement) in upstream's order, before and after basic_clean
_BEFORE_BASIC = [
    (re.compile(r"@[\w\d]+\b"), ""),
    (_CJK, ""),
    (_DASHES, "-"),
    (re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]"), '"'),
    (re.compile("[\u2018\u2019]"), "'"),
    (re.compile(r"&quot;?"), ""),
    (re.compile(r"&amp"), ""),
    (re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"), " "),
    (re.compile(r"\d:\d\d\s+$"), ""),
    (re.compile(r"\\n"), " "),
    (re.compile(r"#\d{1,3}\b"), ""),
    (re.compile(r"#\d{5,}\b"), ""),
    (re.compile(r"\b\d{6,}\b"), ""),
    (re.compile(r"[\S]+\.(?:%s)" % _EXTS), ""),
    (re.compile(r"[\"']{2,}"), '"'),
    (re.compile(r"[\.]{2,}"), " "),
    (_BAD_PUNCT, " "),
    (re.compile(r"\s+\.\s+"), " "),
]
_AFTER_BASIC = [
    (re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b"), ""),
    (re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"), ""),
    (re.compile(r"\b\d+[a-zA-Z]+\d+\b"), ""),
    (re.compile(r"(worldwide\s+)?(free\s+)?shipping"), ""),
    (re.compile(r"(free\s)?download(\sfree)?"), ""),
    (re.compile(r"\bclick\b\s(?:for|on)\s\w+"), ""),
    (re.compile(r"\b(?:%s)(\simage[s]?)?" % _EXTS), ""),
    (re.compile(r"\bpage\s+\d+\b"), ""),
    (re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b"), " "),
    (re.compile("\\b\\d+\\.?\\d*[x\u0445\u00d7]\\d+\\.?\\d*\\b"), ""),
    (re.compile(r"\b\s+\:\s+"), ": "),
    (re.compile(r"(\D[,\./])\b"), r"\1 "),
    (re.compile(r"\s+"), " "),
    # upstream calls caption.strip() here and drops the result: no strip
    (re.compile(r"^[\"']([\w\W]+)[\"']$"), r"\1"),
    (re.compile(r"^['_,\-:;]"), ""),
    (re.compile(r"['_,\-:\-+]$"), ""),
    (re.compile(r"^\.\S+$"), ""),
]
_HYPHENS = re.compile(r"[-_]")


_LONG_DECIMAL_REF = re.compile(r"&#[0-9]{%d,};?" % (sys.get_int_max_str_digits() + 1))


def _unescape(text, stats):
    """html.unescape, except that a decimal reference too long for int() (upstream
    raises ValueError) becomes U+FFFD, as in ts_html_unescape."""
    fixed, n = _LONG_DECIMAL_REF.subn("\ufffd", text)
    if n and stats is not None:
        stats["fallbacks"] = stats.get("fallbacks", 0) + n
    return html.unescape(fixed)


def basic_clean(text, ftfy_which="auto", stats=None):
    text = fix_text(text, ftfy_which)
    return _unescape(_unescape(text, stats), stats).strip()


def clean_caption(caption, stats=None, ftfy_which="auto"):
    text = urllib.parse.unquote_plus(str(caption))
    text = text.strip().lower()
    text = text.replace("<person>", "person")
    for pattern in _URLS:
        text = pattern.sub("", text)
    text = html_text(text, stats)
    for pattern, repl in _BEFORE_BASIC:
        text = pattern.sub(repl, text)
    if len(_HYPHENS.findall(text)) > 3:      # this-is-my-cute-cat
        text = _HYPHENS.sub(" ", text)
    text = basic_clean(text, ftfy_which, stats)
    for pattern, repl in _AFTER_BASIC:
        text = pattern.sub(repl, text)
    return text.strip()


def text_preprocessing(text, stats=None, ftfy_which="auto"):
    """T5Embedder.text_preprocessing with use_text_preprocessing=True."""
    return clean_caption(clean_caption(text, stats, ftfy_which), stats, ftfy_which)


if __name__ == "__main__":
    for line in sys.stdin:
        print(text_preprocessing(line.rstrip("\n")))
