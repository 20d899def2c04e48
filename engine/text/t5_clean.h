/* t5_clean.h - the caption cleaning LlamaGen's text-to-image pipeline applies to a prompt
 * before T5 tokenizes it.
 *
 * Upstream: FoundationVision/LlamaGen language/t5.py, T5Embedder.text_preprocessing with
 * use_text_preprocessing=True (the default, and what the t2i sample script uses): two
 * rounds of clean_caption. One round, in upstream's order (re = Python's `re` on str,
 * so \w \d \s \b are Unicode-aware and [a-zA-Z] is ASCII):
 *   1. urllib.parse.unquote_plus: '+' to ' ', then %XX escapes in each run of ASCII
 *      characters decoded as UTF-8 with errors='replace' (one U+FFFD per maximal invalid
 *      subsequence, as CPython's decoder does);
 *   2. str.strip() then str.lower();
 *   3. "<person>" to "person";
 *   4. two URL patterns removed ("http:"/"https:" or "www:" plus 1-3 slashes or one
 *      [a-zA-Z0-9%]; or a [a-zA-Z0-9.-]+ name ending in .com/.co/.ru/.net/.org/.edu/
 *      .gov/.it, a [\w/-]* tail up to a word boundary, an optional '/', not before '@');
 *   5. BeautifulSoup(text, "html.parser").text (see "HTML" below);
 *   6. "@" + word characters removed; U+31C0..U+9FFF (the seven CJK ranges) removed;
 *      runs of the 25 dash characters to "-"; `´«»“”¨ to '"' and ‘’ to "'";
 *      "&quot" (optionally with ';') and "&amp" removed;
 *   7. IPv4-like \d{1,3}(.\d{1,3}){3} to ' '; "\d:\d\d" + trailing whitespace at the end
 *      removed; the two characters "\n" to ' '; "#" + 1-3 digits and "#" + 5 or more
 *      digits at a word end removed; 6+ digit numbers removed; \S+ ending in
 *      .png/.jpg/.jpeg/.bmp/.webp/.eps/.pdf/.apk/.mp4 removed;
 *   8. runs of 2+ quotes (" ') to '"'; runs of 2+ dots to ' '; runs of
 *      #®•©™&@·º½¾¿¡§~)(][}{| \ / * to ' '; \s+.\s+ to ' '; when the text holds more than
 *      three '-' or '_', each becomes ' ';
 *   9. basic_clean: ftfy.fix_text (see "ftfy"), html.unescape twice, strip;
 *  10. letter/digit codes (jc6640, jc6640vc, 6640vc231, j2d1a2a...) removed,
 *      "[worldwide ][free ]shipping", "[free ]download[ free]", "click for/on <word>",
 *      "png|jpg|...[ image[s]]", "page <n>" removed; dimensions like 3x4, 1.5×2 removed;
 *      "\b\s+:\s+" to ": "; a space added after [,./] that follows a non-digit and
 *      precedes a word character; whitespace runs to ' ';
 *  11. a quote at both ends removed; one leading ' _ , - : ; removed; one trailing
 *      ' _ , - : + removed; a text of "." plus non-space characters emptied; strip.
 *      (Upstream's `caption.strip()` before these discards its result, so leading and
 *      trailing spaces still take part; this reproduces that.)
 * Each pattern is a hand-written matcher that reproduces re.sub's leftmost,
 * non-overlapping scan and the backtracking order of its pattern exactly; each runs in
 * time linear in the text (a few matchers precompute run ends to stay linear), and
 * nothing recurses. ftfy's own repetition (ts_ftfy_fix_subset repeats its fixes until
 * nothing changes, and a chain of nested references peels one level per pass, so
 * "＆" + "amp;" x N would cost N passes over the line, as real ftfy does) stops at a work
 * budget linear in the input (see clip_clean.h), which only such a crafted chain of more
 * than about 700 levels reaches; the text then keeps the remaining levels. In this
 * pipeline such a chain needs U+FF06 (FULLWIDTH AMPERSAND): every ASCII '&' and '#' is
 * gone by step 9.
 *
 * HTML: BeautifulSoup 4.11 with Python 3.11's html.parser is reproduced event by event:
 * start tags with html.parser's tolerant attribute grammar (quoted values may hold '>'),
 * end tags, comments, "<!doctype", "<?...>", "<!...>" bogus comments, "<![cdata[...]]>"
 * (its text is kept, as bs4 keeps CData) and the other marked sections, script/style
 * raw text, html.parser's handling of unterminated constructs (feed() then close(): an
 * unterminated tag becomes text up to the next '>' or '<'; after html.parser gives up on
 * a "&#" or "&name" at the end, the rest is kept verbatim), named references as bs4
 * resolves them (any HTML5 name, with or without ';', terminated by a non-alphanumeric
 * character; unknown names stay "&name"), numeric references (below 256 read as
 * Windows-1252, too large to U+FFFD). Of the tree, what .text depends on is kept: strings
 * inside rt, rp, script, style and template are dropped, void elements close themselves
 * (and a later "</br>" is ignored once), and a string of ASCII whitespace only becomes
 * one "\n" or " " unless a pre or textarea is open. Tag names are compared as written:
 * the step runs on lower-cased text, as upstream's does.
 * Where upstream raises instead of returning text, this returns text:
 *   - "<![" followed by a name that is not a marked-section keyword (temp, cdata, ignore,
 *     include, rcdata, if, else, endif) or by no name ("<![x y", "<![ "): html.parser
 *     raises AssertionError; here the construct is a bogus comment up to the next '>'
 *     (what the HTML5 tokenizer makes of it);
 *   - a decimal reference "&#N;" with more than 4300 digits: int() raises ValueError,
 *     in bs4's handle_charref and in basic_clean's html.unescape (which such a
 *     reference reaches as full-width "＆＃" and digits followed by a letter); here it
 *     is U+FFFD (as ts_html_unescape does).
 * A numeric reference to a surrogate (&#xd800;) gives a lone surrogate in Python and
 * here; step 9 removes it (below), so none reaches the output.
 *
 * ftfy: step 9 uses ts_ftfy_fix_subset (see clip_clean.h for exactly which ftfy fixes
 * that covers; mojibake repair, fix_encoding, is not reproduced), preceded by ftfy's
 * fix_surrogates (a surrogate pair becomes its character, a lone surrogate U+FFFD),
 * which matters here because step 5 can produce surrogates.
 *
 * Character classes come from the Python 3.11 / Unicode 14 tables of unicode_tables.h
 * (\w = str.isalnum() or '_', \s = str.isspace(), lower = str.lower()) plus a table of
 * the 660 Unicode decimal digits (\d) in t5_clean.c; all three agree with Python's `re`
 * on every code point (tests/reference/test_t5_clean.py checks).
 *
 * Other differences from upstream: upstream runs on whatever Python, Unicode tables, bs4
 * and ftfy it is installed with; html.parser's tolerance rules changed in later CPython
 * security releases (comments, raw text, "<![") and bs4's string handling in 4.13, so on
 * markup an upstream installed elsewhere may give other text than this (and than
 * tests/reference/t5_clean_ref.py, which this matches on Python 3.11.2 + bs4 4.11.2).
 * Plain prompts are not affected.
 *
 * All functions are pure (no global state) and thread-safe.
 */
#ifndef TS_TEXT_T5_CLEAN_H
#define TS_TEXT_T5_CLEAN_H

#include <stddef.h>

#include "engine/error.h"
#include "engine/text/unicode.h"

/* Bytes of UTF-8 one ts_t5_clean accepts. Working memory is about 80 bytes per code
 * point while the HTML step runs on a text that contains '<' (else about 16). */
#define TS_T5_CLEAN_MAX_INPUT (256u << 10)

/* The whole text_preprocessing (two rounds of clean_caption) of len bytes of UTF-8
 * (NUL bytes allowed). On success *out is a new NUL-terminated UTF-8 string (the caller
 * frees it with free()) and *out_len, when non-NULL, its length in bytes. Returns TS_OK;
 * TS_ERR_INVALID when the input is not valid UTF-8 or longer than
 * TS_T5_CLEAN_MAX_INPUT; TS_ERR_NOMEM. *out is NULL on error. */
int ts_t5_clean(const char *utf8, size_t len, char **out, size_t *out_len, ts_error *err);

/* The classes of Python's re that the matchers use, for one code point (for tests):
 * a mask of TS_T5_RE_DIGIT (\d), TS_T5_RE_WORD (\w), TS_T5_RE_SPACE (\s). */
enum { TS_T5_RE_DIGIT = 1, TS_T5_RE_WORD = 2, TS_T5_RE_SPACE = 4 };
int ts_t5_re_class(uint32_t cp);

/* Step 5 alone, BeautifulSoup(text, "html.parser").text as described above, for tests.
 * in must be lower-cased (as the pipeline's is); out must not alias in. 0 or -1. */
int ts_t5_html_text(const ts_cpbuf *in, ts_cpbuf *out);

/* One round of clean_caption on code points; out must not alias in. Returns 0, or -1
 * when out of memory or when in holds more than 2^31 code points. */
int ts_t5_clean_caption(const ts_cpbuf *in, ts_cpbuf *out);

#endif
