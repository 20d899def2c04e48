/* t5_clean.c - LlamaGen's caption cleaning for T5 prompts (see t5_clean.h for the steps
 * and what is and is not reproduced).
 *
 * Layout: character classes; the re.sub driver and one matcher per pattern, in
 * upstream's order; the HTML step (html.parser + BeautifulSoup's tree rules); the
 * pipeline. Every matcher answers "does the pattern match at i, and where does the
 * match end" exactly as Python's backtracking engine would; the comment above each
 * says how the backtracking resolves, which is why a few lines of code suffice. */
#include "engine/text/t5_clean.h"

#include <stdlib.h>
#include <string.h>

#include "engine/text/clip_clean.h"

#define NONE_CP 0xFFFFFFFFu   /* "no character": past either end of the text */

/* ---- character classes (Python's re on str) -------------------------------------- */

/* Unicode decimal digits (str.isdecimal(), re's \d), Python 3.11 / Unicode 14. */
static const uint32_t k_decimal[][2] = {
    {0x30, 0x39}, {0x660, 0x669}, {0x6F0, 0x6F9}, {0x7C0, 0x7C9}, {0x966, 0x96F},
    {0x9E6, 0x9EF}, {0xA66, 0xA6F}, {0xAE6, 0xAEF}, {0xB66, 0xB6F}, {0xBE6, 0xBEF},
    {0xC66, 0xC6F}, {0xCE6, 0xCEF}, {0xD66, 0xD6F}, {0xDE6, 0xDEF}, {0xE50, 0xE59},
    {0xED0, 0xED9}, {0xF20, 0xF29}, {0x1040, 0x1049}, {0x1090, 0x1099}, {0x17E0, 0x17E9},
    {0x1810, 0x1819}, {0x1946, 0x194F}, {0x19D0, 0x19D9}, {0x1A80, 0x1A89},
    {0x1A90, 0x1A99}, {0x1B50, 0x1B59}, {0x1BB0, 0x1BB9}, {0x1C40, 0x1C49},
    {0x1C50, 0x1C59}, {0xA620, 0xA629}, {0xA8D0, 0xA8D9}, {0xA900, 0xA909},
    {0xA9D0, 0xA9D9}, {0xA9F0, 0xA9F9}, {0xAA50, 0xAA59}, {0xABF0, 0xABF9},
    {0xFF10, 0xFF19}, {0x104A0, 0x104A9}, {0x10D30, 0x10D39}, {0x11066, 0x1106F},
    {0x110F0, 0x110F9}, {0x11136, 0x1113F}, {0x111D0, 0x111D9}, {0x112F0, 0x112F9},
    {0x11450, 0x11459}, {0x114D0, 0x114D9}, {0x11650, 0x11659}, {0x116C0, 0x116C9},
    {0x11730, 0x11739}, {0x118E0, 0x118E9}, {0x11950, 0x11959}, {0x11C50, 0x11C59},
    {0x11D50, 0x11D59}, {0x11DA0, 0x11DA9}, {0x16A60, 0x16A69}, {0x16AC0, 0x16AC9},
    {0x16B50, 0x16B59}, {0x1D7CE, 0x1D7FF}, {0x1E140, 0x1E149}, {0x1E2F0, 0x1E2F9},
    {0x1E950, 0x1E959}, {0x1FBF0, 0x1FBF9},
};

static int is_digit(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    int lo = 0, hi = (int)(sizeof k_decimal / sizeof k_decimal[0]) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < k_decimal[mid][0])
            hi = mid - 1;
        else if (c > k_decimal[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_space(uint32_t c)
{
    return c != NONE_CP && ts_uni_is_space(c);
}

/* re's \w: str.isalnum() (categories L* and N*) or '_'. */
static int is_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_';
    if (c == NONE_CP)
        return 0;
    int k = ts_uni_class_of(c);
    return k == TS_UNI_LETTER || k == TS_UNI_NUMBER;
}

int ts_t5_re_class(uint32_t cp)
{
    return (is_digit(cp) ? TS_T5_RE_DIGIT : 0) | (is_word(cp) ? TS_T5_RE_WORD : 0) |
           (is_space(cp) ? TS_T5_RE_SPACE : 0);
}

static int is_alpha(uint32_t c)   /* [a-zA-Z] */
{
    return c < 0x80 && (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static int is_alnum_ascii(uint32_t c)
{
    return is_alpha(c) || (c >= '0' && c <= '9');
}

static int is_hex(uint32_t c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* s[i], or NONE_CP outside the text. */
static uint32_t at(const uint32_t *s, size_t n, size_t i)
{
    return i < n ? s[i] : NONE_CP;
}

/* re's \b at position i. */
static int wb(const uint32_t *s, size_t n, size_t i)
{
    int before = i > 0 && is_word(s[i - 1]);
    return before != is_word(at(s, n, i));
}

/* 1 when the ASCII literal lit is at s[i..]. */
static int lit(const uint32_t *s, size_t n, size_t i, const char *lit)
{
    for (; *lit; lit++, i++)
        if (i >= n || s[i] != (unsigned char)*lit)
            return 0;
    return 1;
}

static size_t run_digits(const uint32_t *s, size_t n, size_t i)
{
    while (i < n && is_digit(s[i]))
        i++;
    return i;
}

static size_t run_alpha(const uint32_t *s, size_t n, size_t i)
{
    while (i < n && is_alpha(s[i]))
        i++;
    return i;
}

static size_t run_space(const uint32_t *s, size_t n, size_t i)
{
    while (i < n && is_space(s[i]))
        i++;
    return i;
}

static size_t run_word(const uint32_t *s, size_t n, size_t i)
{
    while (i < n && is_word(s[i]))
        i++;
    return i;
}

#define PUSH(b, c)                   \
    do {                             \
        if (ts_cpbuf_push((b), (c))) \
            return -1;               \
    } while (0)

static int push_ascii(ts_cpbuf *out, const char *s)
{
    for (; *s; s++)
        PUSH(out, (unsigned char)*s);
    return 0;
}

/* ---- the re.sub driver ------------------------------------------------------------ */

/* A matcher tries the pattern at i. It returns 1 with *end past the match (always
 * > i: none of these patterns matches the empty string, so re.sub's empty-match rules
 * never apply), or 0 with *end the next position where a match could start (> i; a
 * matcher that knows the whole run it looked at fails skips past it, which keeps
 * long runs linear). */
typedef int (*matcher)(const uint32_t *s, size_t n, size_t i, size_t *end);

/* out = re.sub(pattern, repl, in) for a fixed replacement (ASCII). */
static int sub(const ts_cpbuf *in, ts_cpbuf *out, matcher m, const char *repl)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n))
        return -1;
    for (size_t i = 0; i < n;) {
        size_t end;
        if (m(s, n, i, &end)) {
            if (push_ascii(out, repl))
                return -1;
        } else if (ts_cpbuf_append(out, s + i, end - i)) {
            return -1;
        }
        i = end;
    }
    return 0;
}

/* A run of one or more characters of a class (`[...]+`, or `{2,}` with min 2). */
static int sub_runs(const ts_cpbuf *in, ts_cpbuf *out, int (*in_class)(uint32_t), size_t min,
                    const char *repl)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n))
        return -1;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && in_class(s[j]))
            j++;
        if (j - i >= min && j > i) {
            if (push_ascii(out, repl))
                return -1;
            i = j;
        } else if (j > i) {
            if (ts_cpbuf_append(out, s + i, j - i))
                return -1;
            i = j;
        } else {
            PUSH(out, s[i++]);
        }
    }
    return 0;
}

/* ---- step 1: urllib.parse.unquote_plus -------------------------------------------- */

/* Decodes bytes b[0..len) as UTF-8 the way CPython's decoder does with
 * errors='replace': each maximal subpart of an ill-formed sequence becomes one U+FFFD. */
static int utf8_decode_replace(const unsigned char *b, size_t len, ts_cpbuf *out)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = b[i];
        if (c < 0x80) {
            PUSH(out, c);
            i++;
            continue;
        }
        int need;
        unsigned lo = 0x80, hi = 0xBF;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            PUSH(out, 0xFFFD);
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= (size_t)need; k++) {
            if (i + k >= len)
                break;
            unsigned d = b[i + k];
            if (d < lo || d > hi)
                break;
            cp = (cp << 6) | (d & 0x3F);
            lo = 0x80, hi = 0xBF;   /* only the second byte has a narrower range */
        }
        if (k <= (size_t)need) {
            PUSH(out, 0xFFFD);        /* the valid prefix b[i..i+k) is one subpart */
            i += k;
        } else {
            PUSH(out, cp);
            i += (size_t)need + 1;
        }
    }
    return 0;
}

static int hexval(uint32_t c)
{
    return c <= '9' ? (int)(c - '0') : (int)((c | 0x20) - 'a' + 10);
}

/* '+' to ' '; then, when a '%' is present, each maximal run of ASCII characters has
 * its %XX escapes turned into bytes and is decoded as UTF-8 (errors='replace');
 * other characters stay. */
static int step_unquote_plus(const ts_cpbuf *in, ts_cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n))
        return -1;
    int has_pct = 0;
    for (size_t i = 0; i < n; i++)
        has_pct |= s[i] == '%';
    if (!has_pct) {
        for (size_t i = 0; i < n; i++)
            out->v[out->n++] = s[i] == '+' ? ' ' : s[i];
        return 0;
    }
    unsigned char *bytes = malloc(n ? n : 1);
    if (!bytes)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        if (s[i] >= 0x80) {
            rc = ts_cpbuf_push(out, s[i++]);
            continue;
        }
        size_t nb = 0;
        for (; i < n && s[i] < 0x80; i++) {
            uint32_t c = s[i] == '+' ? ' ' : s[i];
            if (c == '%' && i + 2 < n && is_hex(s[i + 1]) && is_hex(s[i + 2])) {
                bytes[nb++] = (unsigned char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
                i += 2;
            } else {
                bytes[nb++] = (unsigned char)c;
            }
        }
        rc = utf8_decode_replace(bytes, nb, out);
    }
    free(bytes);
    return rc;
}

/* ---- step 2: strip, lower ---------------------------------------------------------- */

static int strip_copy(const ts_cpbuf *in, ts_cpbuf *out)
{
    size_t a = 0, b = in->n;
    while (a < b && is_space(in->v[a]))
        a++;
    while (b > a && is_space(in->v[b - 1]))
        b--;
    out->n = 0;
    /* An empty text may have no array: NULL + 0 is undefined in C (UBSan, fuzz_prompt). */
    return a < b ? ts_cpbuf_append(out, in->v + a, b - a) : 0;
}

/* ---- step 3: "<person>" ------------------------------------------------------------ */

static int m_person(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    if (lit(s, n, i, "<person>")) {
        *end = i + 8;
        return 1;
    }
    *end = i + 1;
    return 0;
}

/* ---- step 4: the two URL patterns -------------------------------------------------- */

/* \b( (?:https?|www):(?:\/{1,3}|[a-zA-Z0-9%])
 *   | [a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@) )
 * The first alternative is tried first at each position. In the second, the greedy
 * name [a-zA-Z0-9.\-]+ gives back characters until a '.' + TLD + tail succeeds, so the
 * match uses the LAST such dot of the run; whether a dot works does not depend on where
 * the match starts, so each run is searched once (run_dot/run_end below). */

static int is_url_name(uint32_t c)
{
    return is_alnum_ascii(c) || c == '.' || c == '-';
}

static const char *const k_tlds[] = {"com", "co", "ru", "net", "org", "edu", "gov", "it"};

/* Where the match ends when the name stops at the dot s[k]; 0 when no TLD works. */
static size_t url_tail(const uint32_t *s, size_t n, size_t k)
{
    for (size_t t = 0; t < sizeof k_tlds / sizeof k_tlds[0]; t++) {
        if (!lit(s, n, k + 1, k_tlds[t]))
            continue;
        size_t p = k + 1 + strlen(k_tlds[t]), f = p;
        while (f < n && (is_word(s[f]) || s[f] == '/' || s[f] == '-'))
            f++;
        /* [\w/-]* gives back one character at a time until \b holds; then \/? takes a
         * '/' unless '@' follows it (then it leaves the '/', which is not '@'); with no
         * '/', (?!@) must hold where the tail ends. */
        for (size_t m = f + 1; m-- > p;) {
            if (!wb(s, n, m))
                continue;
            uint32_t c = at(s, n, m);
            if (c == '/')
                return at(s, n, m + 1) == '@' ? m : m + 1;
            if (c == '@')
                continue;
            return m;
        }
    }
    return 0;
}

/* The first alternative at i ("http:" / "https:" or "www:"). */
static int url_scheme(const uint32_t *s, size_t n, size_t i, int www, size_t *end)
{
    size_t r;
    if (www) {
        if (!lit(s, n, i, "www:"))
            return 0;
        r = i + 4;
    } else {
        if (!lit(s, n, i, "http"))
            return 0;
        if (lit(s, n, i + 4, "s:"))
            r = i + 6;
        else if (lit(s, n, i + 4, ":"))
            r = i + 5;
        else
            return 0;
    }
    uint32_t c = at(s, n, r);
    if (c == '/') {
        size_t e = r;
        while (e < n && e < r + 3 && s[e] == '/')
            e++;
        *end = e;
        return 1;
    }
    if (is_alnum_ascii(c) || c == '%') {
        *end = r + 1;
        return 1;
    }
    return 0;
}

static int step_urls(const ts_cpbuf *in, ts_cpbuf *out, int www)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n))
        return -1;
    size_t run_end = 0, run_dot = 0, run_match_end = 0;   /* run_dot 0: no dot works */
    for (size_t i = 0; i < n;) {
        size_t end;
        if (wb(s, n, i)) {
            if (url_scheme(s, n, i, www, &end)) {
                i = end;
                continue;
            }
            if (is_url_name(s[i])) {
                if (i >= run_end) {   /* a new run: find its last working dot after i */
                    run_end = i;
                    while (run_end < n && is_url_name(s[run_end]))
                        run_end++;
                    run_dot = 0;
                    for (size_t k = run_end; k-- > i + 1;) {
                        if (s[k] != '.')
                            continue;
                        size_t e = url_tail(s, n, k);
                        if (e) {
                            run_dot = k;
                            run_match_end = e;
                            break;
                        }
                    }
                }
                if (run_dot > i) {
                    i = run_match_end;
                    continue;
                }
            }
        }
        PUSH(out, s[i++]);
    }
    return 0;
}

/* ---- step 5: BeautifulSoup(text, "html.parser").text ------------------------------ */

/* html.parser (Python 3.11) drives BeautifulSoup 4.11's tree builder with events; .text
 * joins the NavigableString and CData strings in document order, which for this builder
 * is the order the strings were made. So the tree itself is not built: the events are
 * replayed and each string is kept or dropped when bs4 would end it (endData). What
 * decides that is kept: the names on the tag stack (how many pre/textarea and how many
 * rt/rp/script/style/template are open, and how many of each name, for _popToTag), and
 * the void tags html.parser has already closed.
 *
 * html.parser's regular expressions are replaced by lookups in arrays computed once,
 * right to left (the end of each run of a class, the next '>', ...), and the attribute
 * chain of a start tag is memoized, so that a text full of unterminated tags stays
 * linear (CPython itself is quadratic there). */

#define NO_POS ((size_t)-1)       /* html.parser's -1: not terminated */
#define NONE32 0xFFFFFFFFu        /* "none" in the precomputed arrays */

enum { STR_DATA, STR_CDATA };   /* NavigableString, CData (comments & co are dropped) */

enum {
    NAME_PRESERVE = 1,    /* pre, textarea: whitespace-only strings stay as they are */
    NAME_CONTAINER = 2,   /* rt, rp, style, script, template: their strings are dropped */
    NAME_SCRIPT = 4,      /* script, style: html.parser's raw-text (cdata) elements */
    NAME_STYLE = 8,
};

static const char *const k_void_tags[] = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link",
    "menuitem", "meta", "param", "source", "track", "wbr", "basefont", "bgsound",
    "command", "frame", "image", "isindex", "nextid", "spacer",
};
#define N_VOID ((int)(sizeof k_void_tags / sizeof k_void_tags[0]))

typedef struct {
    uint32_t start, len;   /* the name's characters in the text */
    uint32_t open;         /* how many are on the stack (bs4's open_tag_counter) */
    int flags;
    int void_index;        /* into html.closed_void, or -1 */
} html_name;

enum { A_WS, A_TNAME, A_ANAME, A_EQ, A_BARE, A_G, A_T, A_SQ, A_DQ, A_GT, A_LT, A_CC, A_MS,
       A_MS2, A_CHAIN, A_PATH, N_ARRAYS };

typedef struct {
    const uint32_t *s;
    size_t n;
    ts_cpbuf *out;
    int oom;
    /* bs4's current_data: the string being collected, at out->v[chunk_start..] */
    int chunk_open, chunk_space_only, chunk_nl;
    size_t chunk_start;
    /* the tag stack, as indices into names[] */
    uint32_t *stack;
    size_t depth, stack_cap;
    html_name *names;
    size_t n_names, names_cap;
    uint32_t *slots;       /* hash table of names: index + 1, 0 when empty */
    size_t slots_cap;
    size_t preserve_open, container_open;
    uint32_t closed_void[sizeof k_void_tags / sizeof k_void_tags[0]];
    int cdata;             /* NAME_SCRIPT / NAME_STYLE while in raw text, else 0 */
    size_t last_semi;      /* the last ';' in the text, NO_POS when none */
    /* Precomputed, each n + 1 entries (index n: the end of the text); for p:
     *   A_WS     end of the run of \s from p
     *   A_TNAME  end of the run of [^\t\n\r\f />\x00] (a tag name's tail)
     *   A_ANAME  end of the run of [^\s/=>] (an attribute name's tail)
     *   A_EQ     end of the run of '='
     *   A_BARE   end of the run of [^>\s] (an unquoted value)
     *   A_G      end of the run of [\s/]
     *   A_T      end of the run of (?:\s|/(?!>))
     *   A_SQ, A_DQ, A_GT, A_LT: the next ' " > < at or after p (NONE32: none)
     *   A_CC     the next start of a "--\s*>" (comment close)
     *   A_MS     the next start of a "]\s*]\s*>"; A_MS2 of a "]\s*>"
     *   A_CHAIN  memo: where the attribute chain starting at p ends (NONE32: unknown)
     *   A_PATH   scratch for chain_end */
    uint32_t *arr[N_ARRAYS];
} html;

/* -- strings (bs4's handle_data / endData) -- */

static void data_begin(html *h)
{
    if (!h->chunk_open) {
        h->chunk_open = 1;
        h->chunk_start = h->out->n;
        h->chunk_space_only = 1;
        h->chunk_nl = 0;
    }
}

static void data_cp(html *h, uint32_t c)
{
    data_begin(h);
    if (!(c == ' ' || c == '\n' || c == '\t' || c == '\f' || c == '\r'))
        h->chunk_space_only = 0;
    else if (c == '\n')
        h->chunk_nl = 1;
    if (ts_cpbuf_push(h->out, c))
        h->oom = 1;
}

static void data_range(html *h, size_t a, size_t b)
{
    if (a < b && ts_cpbuf_reserve(h->out, b - a)) {
        h->oom = 1;
        return;
    }
    for (size_t i = a; i < b; i++)
        data_cp(h, h->s[i]);
}

/* bs4's endData(kind): a string of ASCII whitespace only becomes "\n" (when it holds
 * one) or " ", unless a pre/textarea is open; NavigableStrings inside a string
 * container and everything but CData otherwise are not part of .text. */
static void end_data(html *h, int kind)
{
    if (!h->chunk_open)
        return;
    h->chunk_open = 0;
    if (h->preserve_open == 0 && h->chunk_space_only) {
        h->out->n = h->chunk_start;
        if (ts_cpbuf_push(h->out, h->chunk_nl ? '\n' : ' '))
            h->oom = 1;
    }
    int keep = kind == STR_CDATA || (kind == STR_DATA && h->container_open == 0);
    if (!keep)
        h->out->n = h->chunk_start;
}

/* An empty CData string still exists (and becomes " "). */
static void cdata_string(html *h, size_t a, size_t b)
{
    end_data(h, STR_DATA);
    data_begin(h);
    data_range(h, a, b);
    end_data(h, STR_CDATA);
}

/* -- tag names -- */

static int name_is(const uint32_t *s, size_t start, size_t len, const char *lit)
{
    size_t k = 0;
    for (; k < len && lit[k]; k++)
        if (s[start + k] != (unsigned char)lit[k])
            return 0;
    return k == len && lit[k] == '\0';
}

static uint32_t name_hash(const uint32_t *s, size_t len)
{
    uint32_t x = 2166136261u;
    for (size_t i = 0; i < len; i++)
        x = (x ^ s[i]) * 16777619u;
    return x;
}

static int slots_insert(html *h, uint32_t id)
{
    const html_name *nm = &h->names[id];
    size_t mask = h->slots_cap - 1, k = name_hash(h->s + nm->start, nm->len) & mask;
    while (h->slots[k])
        k = (k + 1) & mask;
    h->slots[k] = id + 1;
    return 0;
}

/* The index of the name s[start..start+len), added when new; -1 when out of memory. */
static long name_intern(html *h, size_t start, size_t len)
{
    if (h->slots_cap) {
        size_t mask = h->slots_cap - 1, k = name_hash(h->s + start, len) & mask;
        for (; h->slots[k]; k = (k + 1) & mask) {
            const html_name *nm = &h->names[h->slots[k] - 1];
            if (nm->len == len && memcmp(h->s + nm->start, h->s + start, len * sizeof *h->s) == 0)
                return (long)h->slots[k] - 1;
        }
    }
    if (h->n_names == h->names_cap) {
        size_t cap = h->names_cap ? 2 * h->names_cap : 16;
        html_name *nn = realloc(h->names, cap * sizeof *nn);
        if (!nn)
            return -1;
        h->names = nn;
        h->names_cap = cap;
    }
    if (2 * (h->n_names + 1) > h->slots_cap) {
        size_t cap = h->slots_cap ? 2 * h->slots_cap : 32;
        uint32_t *ns = calloc(cap, sizeof *ns);
        if (!ns)
            return -1;
        free(h->slots);
        h->slots = ns;
        h->slots_cap = cap;
        for (size_t i = 0; i < h->n_names; i++)
            slots_insert(h, (uint32_t)i);
    }
    html_name *nm = &h->names[h->n_names];
    nm->start = (uint32_t)start;
    nm->len = (uint32_t)len;
    nm->open = 0;
    nm->flags = 0;
    nm->void_index = -1;
    const uint32_t *s = h->s;
    if (name_is(s, start, len, "pre") || name_is(s, start, len, "textarea"))
        nm->flags = NAME_PRESERVE;
    else if (name_is(s, start, len, "script"))
        nm->flags = NAME_CONTAINER | NAME_SCRIPT;
    else if (name_is(s, start, len, "style"))
        nm->flags = NAME_CONTAINER | NAME_STYLE;
    else if (name_is(s, start, len, "rt") || name_is(s, start, len, "rp") ||
             name_is(s, start, len, "template"))
        nm->flags = NAME_CONTAINER;
    for (int v = 0; v < N_VOID; v++)
        if (name_is(s, start, len, k_void_tags[v]))
            nm->void_index = v;
    slots_insert(h, (uint32_t)h->n_names);
    return (long)h->n_names++;
}

/* -- the tag stack (bs4's pushTag / popTag / _popToTag) -- */

static void tag_push(html *h, uint32_t id)
{
    if (h->depth == h->stack_cap) {
        size_t cap = h->stack_cap ? 2 * h->stack_cap : 32;
        uint32_t *ns = realloc(h->stack, cap * sizeof *ns);
        if (!ns) {
            h->oom = 1;
            return;
        }
        h->stack = ns;
        h->stack_cap = cap;
    }
    h->stack[h->depth++] = id;
    html_name *nm = &h->names[id];
    nm->open++;
    if (nm->flags & NAME_PRESERVE)
        h->preserve_open++;
    if (nm->flags & NAME_CONTAINER)
        h->container_open++;
}

static uint32_t tag_pop(html *h)
{
    uint32_t id = h->stack[--h->depth];
    html_name *nm = &h->names[id];
    nm->open--;
    if (nm->flags & NAME_PRESERVE)
        h->preserve_open--;
    if (nm->flags & NAME_CONTAINER)
        h->container_open--;
    return id;
}

/* Pops up to and including the most recent open tag with this name, if there is one. */
static void pop_to(html *h, uint32_t id)
{
    if (h->names[id].open == 0)
        return;
    while (h->depth > 0 && tag_pop(h) != id) {
    }
}

/* BeautifulSoupHTMLParser.handle_starttag: a void element closes itself at once and
 * is remembered, so that one later explicit end tag of that name is ignored. */
static void on_starttag(html *h, uint32_t id, int handle_empty_element)
{
    end_data(h, STR_DATA);
    tag_push(h, id);
    int v = h->names[id].void_index;
    if (handle_empty_element && v >= 0) {
        pop_to(h, id);
        h->closed_void[v]++;
    }
}

static void on_endtag(html *h, uint32_t id)
{
    int v = h->names[id].void_index;
    if (v >= 0 && h->closed_void[v] > 0) {
        h->closed_void[v]--;     /* no endData either: the strings around it join */
        return;
    }
    end_data(h, STR_DATA);
    pop_to(h, id);
}

/* -- precomputed runs -- */

static int html_prepare(html *h)
{
    size_t n = h->n;
    for (int a = 0; a < N_ARRAYS; a++) {
        h->arr[a] = malloc((n + 1) * sizeof(uint32_t));
        if (!h->arr[a])
            return -1;
    }
    const uint32_t *s = h->s;
    uint32_t **A = h->arr;
    uint32_t N = (uint32_t)n;
    for (int a = 0; a < N_ARRAYS; a++)
        A[a][n] = a <= A_T ? N : NONE32;
    for (size_t p = n; p-- > 0;) {
        uint32_t c = s[p], P = (uint32_t)p;
        int sp = is_space(c);
        A[A_WS][p] = sp ? A[A_WS][p + 1] : P;
        A[A_TNAME][p] = (c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == ' ' ||
                         c == '/' || c == '>' || c == 0) ? P : A[A_TNAME][p + 1];
        A[A_ANAME][p] = (sp || c == '/' || c == '=' || c == '>') ? P : A[A_ANAME][p + 1];
        A[A_EQ][p] = c == '=' ? A[A_EQ][p + 1] : P;
        A[A_BARE][p] = (sp || c == '>') ? P : A[A_BARE][p + 1];
        A[A_G][p] = (sp || c == '/') ? A[A_G][p + 1] : P;
        A[A_T][p] = (sp || (c == '/' && at(s, n, p + 1) != '>')) ? A[A_T][p + 1] : P;
        A[A_SQ][p] = c == '\'' ? P : A[A_SQ][p + 1];
        A[A_DQ][p] = c == '"' ? P : A[A_DQ][p + 1];
        A[A_GT][p] = c == '>' ? P : A[A_GT][p + 1];
        A[A_LT][p] = c == '<' ? P : A[A_LT][p + 1];
        int cc = 0, ms = 0, ms2 = 0;
        if (c == '-' && p + 2 <= n && at(s, n, p + 1) == '-') {
            uint32_t w = A[A_WS][p + 2];
            cc = w < N && s[w] == '>';
        }
        if (c == ']') {
            uint32_t w = A[A_WS][p + 1];
            ms2 = w < N && s[w] == '>';
            if (w < N && s[w] == ']') {
                uint32_t w2 = A[A_WS][w + 1];
                ms = w2 < N && s[w2] == '>';
            }
        }
        A[A_CC][p] = cc ? P : A[A_CC][p + 1];
        A[A_MS][p] = ms ? P : A[A_MS][p + 1];
        A[A_MS2][p] = ms2 ? P : A[A_MS2][p + 1];
        A[A_CHAIN][p] = NONE32;
    }
    A[A_CHAIN][n] = NONE32;
    return 0;
}

/* -- start tags: html.parser's locatestarttagend_tolerant / attrfind_tolerant -- */

/* One attribute at p, as attrfind_tolerant matches it:
 *   (?<=['"\s/])[^\s/>][^\s/=>]*  (\s*=+\s*('[^']*'|"[^"]*"|(?!['"])[^>\s]*))?
 *   (?:\s|/(?!>))*
 * Returns where it ends, or NO_POS. The value part's backtracking: with an unclosed
 * quote after "= ", \s* gives back one space and the value is the empty bare value
 * before it; with an unclosed quote right after "==", =+ gives back one '=' and the
 * value is the bare value from that '='; after a single '=', the value part fails. */
static size_t attr_match(const html *h, size_t p)
{
    const uint32_t *s = h->s;
    size_t n = h->n;
    uint32_t *const *A = h->arr;
    if (p == 0 || p >= n)
        return NO_POS;
    uint32_t b4 = s[p - 1], c = s[p];
    if (!(b4 == '\'' || b4 == '"' || b4 == '/' || is_space(b4)))
        return NO_POS;
    if (is_space(c) || c == '/' || c == '>')
        return NO_POS;
    size_t q = A[A_ANAME][p + 1];
    size_t a = A[A_WS][q];
    if (a < n && s[a] == '=') {
        size_t b = A[A_EQ][a], v = A[A_WS][b], e = NO_POS;
        uint32_t vc = at(s, n, v);
        if (vc == '\'' || vc == '"') {
            uint32_t close = A[vc == '\'' ? A_SQ : A_DQ][v + 1];
            if (close != NONE32)
                e = A[A_WS][close + 1];
            else if (v > b)
                e = v;
            else if (b - a >= 2)
                e = A[A_WS][A[A_BARE][b - 1]];
        } else {
            e = A[A_WS][A[A_BARE][v]];
        }
        if (e != NO_POS)
            q = e;
    }
    return A[A_T][q];
}

/* Where the chain of attributes starting at p ends (p itself when none matches). */
static size_t chain_end(html *h, size_t p)
{
    uint32_t *chain = h->arr[A_CHAIN], *path = h->arr[A_PATH];
    size_t np = 0, q = p, result;
    for (;;) {
        if (chain[q] != NONE32) {
            result = chain[q];
            break;
        }
        size_t e = attr_match(h, q);
        if (e == NO_POS) {
            result = q;
            chain[q] = (uint32_t)q;
            break;
        }
        path[np++] = (uint32_t)q;   /* e > q: at most n entries */
        q = e;
    }
    while (np > 0)
        chain[path[--np]] = (uint32_t)result;
    return result;
}

/* check_for_whole_start_tag for "<" + letter at i: the end of the tag, or NO_POS. */
static size_t start_tag_end(html *h, size_t i)
{
    const uint32_t *s = h->s;
    size_t n = h->n;
    uint32_t *const *A = h->arr;
    size_t j = A[A_WS][chain_end(h, A[A_G][A[A_TNAME][i + 1]])];
    uint32_t c = at(s, n, j);
    if (c == '>')
        return j + 1;
    if (c == '/')
        return at(s, n, j + 1) == '>' ? j + 2 : NO_POS;
    if (c == NONE_CP || is_alpha(c) || c == '=')
        return NO_POS;
    return j;
}

static size_t parse_starttag(html *h, size_t i)
{
    const uint32_t *s = h->s;
    uint32_t *const *A = h->arr;
    size_t endpos = start_tag_end(h, i);
    if (endpos == NO_POS)
        return NO_POS;
    size_t name_end = A[A_TNAME][i + 1];
    /* tagfind_tolerant, then attrfind_tolerant while before endpos: the same chain
     * (it starts one '/' earlier only before a "/>", where no attribute matches) */
    size_t a = chain_end(h, A[A_T][name_end]), b = endpos;
    if (a > b)
        a = b;
    while (a < b && is_space(s[a]))
        a++;
    while (b > a && is_space(s[b - 1]))
        b--;
    int self_closing;
    if (b - a == 1 && s[a] == '>')
        self_closing = 0;
    else if (b - a == 2 && s[a] == '/' && s[a + 1] == '>')
        self_closing = 1;
    else {                                   /* not a tag after all: its text is data */
        data_range(h, i, endpos);
        return endpos;
    }
    long id = name_intern(h, i + 1, name_end - (i + 1));
    if (id < 0) {
        h->oom = 1;
        return endpos;
    }
    if (self_closing) {
        on_starttag(h, (uint32_t)id, 0);
        on_endtag(h, (uint32_t)id);
    } else {
        on_starttag(h, (uint32_t)id, 1);
        h->cdata = h->names[id].flags & (NAME_SCRIPT | NAME_STYLE);
    }
    return endpos;
}

/* -- comments, declarations, end tags -- */

/* A comment, declaration or processing instruction: its own string is never part of
 * .text, but it ends the current one. */
static void other_string(html *h)
{
    end_data(h, STR_DATA);
}

static size_t parse_bogus_comment(html *h, size_t i)
{
    uint32_t g = h->arr[A_GT][i + 2 <= h->n ? i + 2 : h->n];
    if (g == NONE32)
        return NO_POS;
    other_string(h);
    return (size_t)g + 1;
}

static size_t parse_comment(html *h, size_t i)
{
    uint32_t m = h->arr[A_CC][i + 4];
    if (m == NONE32)
        return NO_POS;
    other_string(h);
    return (size_t)h->arr[A_WS][m + 2] + 1;
}

static size_t parse_pi(html *h, size_t i)
{
    uint32_t g = h->arr[A_GT][i + 2];
    if (g == NONE32)
        return NO_POS;
    other_string(h);
    return (size_t)g + 1;
}

static int lit_nocase(const uint32_t *s, size_t n, size_t i, const char *lit)
{
    for (; *lit; lit++, i++)
        if (i >= n || (s[i] != (unsigned char)*lit &&
                       !(is_alpha(s[i]) && (s[i] | 0x20) == (unsigned char)*lit)))
            return 0;
    return 1;
}

/* "<![": html.parser's parse_marked_section. Upstream raises AssertionError on a
 * name that is not a keyword (or no name); here that is a bogus comment. */
static size_t parse_marked_section(html *h, size_t i)
{
    const uint32_t *s = h->s;
    size_t n = h->n, j = i + 3;
    uint32_t *const *A = h->arr;
    if (j >= n)
        return NO_POS;
    if (!is_alpha(s[j]))
        return parse_bogus_comment(h, i);
    size_t e = j + 1;
    while (e < n && (is_alnum_ascii(s[e]) || s[e] == '-' || s[e] == '_' || s[e] == '.'))
        e++;
    if (A[A_WS][e] == n)
        return NO_POS;
    size_t len = e - j;
    static const char *const standard[] = {"temp", "cdata", "ignore", "include", "rcdata"};
    static const char *const msoffice[] = {"if", "else", "endif"};
    int kind = 0;
    for (int k = 0; k < 5; k++)
        if (len == strlen(standard[k]) && lit_nocase(s, n, j, standard[k]))
            kind = 1;
    for (int k = 0; k < 3; k++)
        if (len == strlen(msoffice[k]) && lit_nocase(s, n, j, msoffice[k]))
            kind = 2;
    if (!kind)
        return parse_bogus_comment(h, i);
    uint32_t m = A[kind == 1 ? A_MS : A_MS2][j];
    if (m == NONE32)
        return NO_POS;
    size_t close_end;
    if (kind == 1)
        close_end = (size_t)A[A_WS][A[A_WS][m + 1] + 1] + 1;
    else
        close_end = (size_t)A[A_WS][m + 1] + 1;
    /* bs4's unknown_decl: "cdata[" starts a CData string (kept), else a Declaration */
    if (len == 5 && lit_nocase(s, n, j, "cdata") && s[e] == '[')
        cdata_string(h, e + 1, m);
    else
        other_string(h);
    return close_end;
}

static size_t parse_html_declaration(html *h, size_t i)
{
    const uint32_t *s = h->s;
    size_t n = h->n;
    if (at(s, n, i + 2) == '[')
        return parse_marked_section(h, i);
    if (lit_nocase(s, n, i, "<!doctype")) {
        uint32_t g = h->arr[A_GT][i + 9];
        if (g == NONE32)
            return NO_POS;
        other_string(h);
        return (size_t)g + 1;
    }
    return parse_bogus_comment(h, i);
}

static size_t parse_endtag(html *h, size_t i)
{
    const uint32_t *s = h->s;
    size_t n = h->n;
    uint32_t *const *A = h->arr;
    uint32_t gt = A[A_GT][i + 1];
    if (gt == NONE32)
        return NO_POS;
    size_t gtpos = (size_t)gt + 1;
    /* endtagfind: </\s*([a-zA-Z][-.a-zA-Z0-9:_]*)\s*> */
    size_t p = A[A_WS][i + 2], q = p;
    int found = 0;
    if (p < n && is_alpha(s[p])) {
        q = p + 1;
        while (q < n && (is_alnum_ascii(s[q]) || s[q] == '-' || s[q] == '.' || s[q] == ':' ||
                         s[q] == '_'))
            q++;
        size_t r = A[A_WS][q];
        found = r < n && s[r] == '>';
    }
    if (!found) {
        if (h->cdata) {
            data_range(h, i, gtpos);
            return gtpos;
        }
        if (is_alpha(at(s, n, i + 2))) {           /* tagfind_tolerant's name */
            size_t ne = A[A_TNAME][i + 2];
            long id = name_intern(h, i + 2, ne - (i + 2));
            if (id < 0)
                h->oom = 1;
            else
                on_endtag(h, (uint32_t)id);
            return gtpos;
        }
        if (at(s, n, i + 2) == '>')                 /* "</>": nothing at all */
            return i + 3;
        return parse_bogus_comment(h, i);
    }
    if (h->cdata) {
        const char *want = h->cdata == NAME_SCRIPT ? "script" : "style";
        if (!(q - p == strlen(want) && lit_nocase(s, n, p, want))) {
            data_range(h, i, gtpos);
            return gtpos;
        }
    }
    long id = name_intern(h, p, q - p);
    if (id < 0) {
        h->oom = 1;
        return gtpos;
    }
    on_endtag(h, (uint32_t)id);
    h->cdata = 0;
    return gtpos;
}

/* re.I's idea of "same letter" for the letters of "script" and "style". */
static int same_letter_nocase(uint32_t c, char want)
{
    if (c == (unsigned char)want || (is_alpha(c) && (c | 0x20) == (unsigned char)want))
        return 1;
    return (want == 's' && c == 0x17F) || (want == 'i' && (c == 0x130 || c == 0x131));
}

/* In raw text: the start of the next </\s*script\s*> (re.I), or NO_POS. */
static size_t raw_text_close(const html *h, size_t i)
{
    const uint32_t *s = h->s;
    size_t n = h->n;
    const char *want = h->cdata == NAME_SCRIPT ? "script" : "style";
    for (size_t m = i; m + 1 < n; m++) {
        if (s[m] != '<' || s[m + 1] != '/')
            continue;
        size_t p = h->arr[A_WS][m + 2], k = 0;
        for (; want[k]; k++)
            if (!same_letter_nocase(at(s, n, p + k), want[k]))
                break;
        if (want[k])
            continue;
        size_t r = h->arr[A_WS][p + k];
        if (r < n && s[r] == '>')
            return m;
    }
    return NO_POS;
}

/* -- references -- */

static void on_charref(html *h, size_t p, size_t q, int base)
{
    uint32_t v = 0;
    int big = 0;
    if (base == 10 && q - p > 4300)
        big = 1;                    /* Python's int() raises; upstream would fail */
    for (size_t i = p; i < q && !big; i++) {
        v = v * (uint32_t)base + (uint32_t)hexval(h->s[i]);
        if (v > 0x10FFFF)
            big = 1;
    }
    uint32_t cp = v;
    if (big)
        cp = 0xFFFD;
    else if (v >= 0x80 && v <= 0x9F) {   /* bs4 tries Windows-1252 below 256 */
        for (int k = 0; k < ts_html_charref_fixups_n; k++)
            if (ts_html_charref_fixups[k].from == v)
                cp = ts_html_charref_fixups[k].to;
    }
    data_cp(h, cp);
}

/* bs4's HTML_ENTITY_TO_CHARACTER: every HTML5 name, with or without its ';'. */
static const ts_html_entity *entity_lookup(const uint32_t *name, size_t len)
{
    char buf[40];
    if (len == 0 || len >= sizeof buf)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (!is_alnum_ascii(name[i]))
            return NULL;
        buf[i] = (char)name[i];
    }
    buf[len] = '\0';
    int lo = 0, hi = ts_html_entities_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int r = strcmp(ts_html_entities[mid].name, buf);
        if (r == 0)
            return (ts_html_entities[mid].flags & (TS_HTML_SEMI | TS_HTML_BARE))
                       ? &ts_html_entities[mid] : NULL;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static void on_entityref(html *h, size_t p, size_t q)
{
    const ts_html_entity *e = entity_lookup(h->s + p, q - p);
    if (e) {
        for (int k = 0; k < 2 && e->value[k]; k++)
            data_cp(h, e->value[k]);
    } else {
        data_cp(h, '&');
        data_range(h, p, q);
    }
}

/* -- the parser's main loop (goahead), fed once and closed -- */

/* BeautifulSoup's html.parser builder calls feed(text) then close(): goahead(0) runs
 * until the first construct it cannot finish ("break"), then goahead(1) goes on from
 * there with the end-of-input rules; its own first "break" leaves the rest of the text
 * as one string (unless in raw text, where it is dropped). */
static void html_run(html *h)
{
    const uint32_t *s = h->s;
    size_t n = h->n, i = 0;
    int end = 0;
    for (;;) {
        int stop = 0;
        while (i < n && !h->oom) {
            size_t j;
            if (h->cdata) {
                j = raw_text_close(h, i);
                if (j == NO_POS) {
                    stop = 1;
                    break;
                }
            } else {
                j = i;
                while (j < n && s[j] != '<' && s[j] != '&')
                    j++;
            }
            if (i < j)
                data_range(h, i, j);
            i = j;
            if (i == n)
                break;
            uint32_t c1 = at(s, n, i + 1);
            if (s[i] == '<') {
                size_t k;
                if (is_alpha(c1))
                    k = parse_starttag(h, i);
                else if (c1 == '/')
                    k = parse_endtag(h, i);
                else if (lit(s, n, i, "<!--"))
                    k = parse_comment(h, i);
                else if (c1 == '?')
                    k = parse_pi(h, i);
                else if (c1 == '!')
                    k = parse_html_declaration(h, i);
                else if (i + 1 < n) {
                    data_cp(h, '<');
                    k = i + 1;
                } else {
                    stop = 1;
                    break;
                }
                if (k == NO_POS) {
                    if (!end) {
                        stop = 1;
                        break;
                    }
                    uint32_t g = h->arr[A_GT][i + 1];
                    if (g != NONE32) {
                        k = (size_t)g + 1;
                    } else {
                        uint32_t l = h->arr[A_LT][i + 1];
                        k = l != NONE32 ? (size_t)l : i + 1;
                    }
                    data_range(h, i, k);
                }
                i = k;
            } else if (c1 == '#') {
                /* charref: &#(?:[0-9]+|[xX][0-9a-fA-F]+)[^0-9a-fA-F] */
                size_t p = i + 2, q = p;
                int base = 0;
                uint32_t c2 = at(s, n, p);
                if (c2 >= '0' && c2 <= '9') {
                    while (q < n && s[q] >= '0' && s[q] <= '9')
                        q++;
                    if (q < n && !is_hex(s[q]))
                        base = 10;
                } else if (c2 == 'x' || c2 == 'X') {
                    q = p + 1;
                    while (q < n && is_hex(s[q]))
                        q++;
                    if (q > p + 1 && q < n)
                        base = 16, p++;
                }
                if (base) {
                    on_charref(h, p, q, base);
                    i = s[q] == ';' ? q + 1 : q;
                    continue;
                }
                if (h->last_semi != NO_POS && h->last_semi >= i) {
                    data_range(h, i, i + 2);
                    i += 2;
                }
                stop = 1;
                break;
            } else {
                /* entityref: &([a-zA-Z][-.a-zA-Z0-9]*)[^a-zA-Z0-9] */
                if (is_alpha(c1)) {
                    size_t q = i + 2, t = NO_POS;
                    while (q < n && (is_alnum_ascii(s[q]) || s[q] == '-' || s[q] == '.'))
                        q++;
                    if (q < n) {
                        t = q;
                    } else {          /* give back characters: a '-' or '.' terminates */
                        for (size_t u = n - 1; u > i + 1; u--) {
                            if (s[u] == '-' || s[u] == '.') {
                                t = u;
                                break;
                            }
                        }
                    }
                    if (t != NO_POS) {
                        on_entityref(h, i + 1, t);
                        i = s[t] == ';' ? t + 1 : t;
                        continue;
                    }
                    if (end && i + 2 == n)   /* "&x" at the very end: the '&' goes */
                        i++;
                    stop = 1;
                    break;
                }
                if (i + 1 < n) {
                    data_cp(h, '&');
                    i++;
                } else {
                    stop = 1;
                    break;
                }
            }
        }
        if (stop && !end) {
            end = 1;
            continue;
        }
        break;
    }
    if (end && i < n && !h->cdata)
        data_range(h, i, n);
    end_data(h, STR_DATA);   /* BeautifulSoup._feed's last endData */
}

int ts_t5_html_text(const ts_cpbuf *in, ts_cpbuf *out)
{
    if (in->n >= NONE32 - 1)   /* positions must fit the uint32_t arrays */
        return -1;
    html h;
    memset(&h, 0, sizeof h);
    h.s = in->v;
    h.n = in->n;
    h.out = out;
    h.last_semi = NO_POS;
    out->n = 0;
    if (ts_cpbuf_reserve(out, in->n))
        return -1;
    int has_lt = 0;
    for (size_t i = 0; i < h.n; i++) {
        if (h.s[i] == '<')
            has_lt = 1;
        else if (h.s[i] == ';')
            h.last_semi = i;
    }
    /* Without a '<' no tag, comment or raw text can start: only references and the
     * one string, which needs none of the arrays. */
    if (has_lt && html_prepare(&h))
        h.oom = 1;
    if (!h.oom)
        html_run(&h);
    for (int a = 0; a < N_ARRAYS; a++)
        free(h.arr[a]);
    free(h.stack);
    free(h.names);
    free(h.slots);
    return h.oom ? -1 : 0;
}

/* ---- step 6: nicknames, CJK, dashes, quotes, &quot / &amp ------------------------- */

/* @[\w\d]+\b: after a greedy run of word characters \b always holds. */
static int m_nickname(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    if (s[i] == '@' && i + 1 < n && is_word(s[i + 1])) {
        *end = run_word(s, n, i + 1);
        return 1;
    }
    *end = i + 1;
    return 0;
}

/* The seven CJK ranges, U+31C0..U+31EF, ..., U+4E00..U+9FFF, are contiguous. */
static int step_drop_cjk(const ts_cpbuf *in, ts_cpbuf *out)
{
    out->n = 0;
    if (ts_cpbuf_reserve(out, in->n))
        return -1;
    for (size_t i = 0; i < in->n; i++)
        if (in->v[i] < 0x31C0 || in->v[i] > 0x9FFF)
            out->v[out->n++] = in->v[i];
    return 0;
}

static int is_dash(uint32_t c)
{
    switch (c) {
    case 0x2D: case 0x58A: case 0x5BE: case 0x1400: case 0x1806: case 0x2E17: case 0x2E1A:
    case 0x2E3A: case 0x2E3B: case 0x2E40: case 0x301C: case 0x3030: case 0x30A0:
    case 0xFE31: case 0xFE32: case 0xFE58: case 0xFE63: case 0xFF0D:
        return 1;
    default:
        return c >= 0x2010 && c <= 0x2015;
    }
}

/* [`´«»“”¨] to '"', [‘’] to "'". */
static int step_quotes(const ts_cpbuf *in, ts_cpbuf *out)
{
    out->n = 0;
    if (ts_cpbuf_reserve(out, in->n))
        return -1;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        if (c == '`' || c == 0xB4 || c == 0xAB || c == 0xBB || c == 0x201C || c == 0x201D ||
            c == 0xA8)
            c = '"';
        else if (c == 0x2018 || c == 0x2019)
            c = '\'';
        out->v[out->n++] = c;
    }
    return 0;
}

static int m_quot(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    if (lit(s, n, i, "&quot")) {
        *end = i + 5 + (at(s, n, i + 5) == ';');
        return 1;
    }
    *end = i + 1;
    return 0;
}

static int m_amp(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = lit(s, n, i, "&amp") ? i + 4 : i + 1;
    return *end == i + 4;
}

/* ---- step 7: IPs, article ids, "\n", #tags, long numbers, file names ------------- */

/* \d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}: a group before a '.' must be a whole run of 1-3
 * digits (giving digits back leaves a digit, not '.', next); the last takes up to 3.
 * A group looks at 4 digits at most: scanning the whole run from every position made a
 * long run of digits quadratic (tests/fuzz/fuzz_prompt.c: 64 KB took 70 s there). */
static int m_ip(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    size_t p = i;
    *end = i + 1;
    for (int g = 0; g < 3; g++) {
        size_t e = p;
        while (e < n && e < p + 4 && is_digit(s[e]))
            e++;
        if (e == p || e - p > 3 || at(s, n, e) != '.')
            return 0;
        p = e + 1;
    }
    size_t e = p;
    while (e < n && e < p + 3 && is_digit(s[e]))
        e++;
    if (e == p)
        return 0;
    *end = e;
    return 1;
}

/* \d:\d\d\s+$ (one place at most: "d:dd" right before the trailing whitespace). */
static int step_article_id(const ts_cpbuf *in, ts_cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n, t = n;
    while (t > 0 && is_space(s[t - 1]))
        t--;
    out->n = 0;
    if (t < n && t >= 4 && is_digit(s[t - 4]) && s[t - 3] == ':' && is_digit(s[t - 2]) &&
        is_digit(s[t - 1]))
        n = t - 4;
    return ts_cpbuf_append(out, s, n);
}

static int m_backslash_n(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = lit(s, n, i, "\\n") ? i + 2 : i + 1;
    return *end == i + 2;
}

/* #\d{1,3}\b and #\d{5,}\b: the whole digit run, then a non-word character. */
static int hash_digits(const uint32_t *s, size_t n, size_t i, size_t *end, size_t lo, size_t hi)
{
    *end = i + 1;
    if (s[i] != '#')
        return 0;
    size_t e = run_digits(s, n, i + 1), d = e - (i + 1);
    if (d < lo || d > hi || is_word(at(s, n, e)))
        return 0;
    *end = e;
    return 1;
}

static int m_hash_short(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    return hash_digits(s, n, i, end, 1, 3);
}

static int m_hash_long(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    return hash_digits(s, n, i, end, 5, (size_t)-1);
}

/* \b\d{6,}\b */
static int m_long_number(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!is_digit(s[i]) || !wb(s, n, i))
        return 0;
    size_t e = run_digits(s, n, i);
    if (e - i < 6 || is_word(at(s, n, e))) {
        *end = e;    /* no \b inside the run */
        return 0;
    }
    *end = e;
    return 1;
}

static const char *const k_exts[] = {"png", "jpg", "jpeg", "bmp", "webp", "eps", "pdf",
                                     "apk", "mp4"};

/* Length of the first of png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4 at p (none is a prefix
 * of another, so at most one matches), or 0. */
static size_t ext_at(const uint32_t *s, size_t n, size_t p)
{
    for (size_t k = 0; k < sizeof k_exts / sizeof k_exts[0]; k++)
        if (lit(s, n, p, k_exts[k]))
            return strlen(k_exts[k]);
    return 0;
}

/* [\S]+\.(?:png|...): the greedy \S+ gives back characters until a '.' + extension
 * follows, so the match ends after the LAST such dot of the non-space run (after it,
 * the rest of the run cannot match). */
static int m_filename(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    if (is_space(s[i])) {
        *end = i + 1;
        return 0;
    }
    size_t e = i;
    while (e < n && !is_space(s[e]))
        e++;
    for (size_t j = e; j-- > i + 1;) {
        if (s[j] != '.')
            continue;
        size_t len = ext_at(s, n, j + 1);
        if (len) {
            *end = j + 1 + len;
            return 1;
        }
    }
    *end = e;
    return 0;
}

/* ---- step 8: repeated quotes and dots, bad punctuation, " . ", -/_ ----------------- */

static int is_quote(uint32_t c)
{
    return c == '"' || c == '\'';
}

static int is_dot(uint32_t c)
{
    return c == '.';
}

/* [#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/\*]: # ® • © ™ & @ · º ½ ¾ ¿ ¡ § ~ ) ( ] [ } { | \ / * */
static int is_bad_punct(uint32_t c)
{
    switch (c) {
    case '#': case 0xAE: case 0x2022: case 0xA9: case 0x2122: case '&': case '@': case 0xB7:
    case 0xBA: case 0xBD: case 0xBE: case 0xBF: case 0xA1: case 0xA7: case '~': case ')':
    case '(': case ']': case '[': case '}': case '{': case '|': case '\\': case '/': case '*':
        return 1;
    default:
        return 0;
    }
}

/* \s+\.\s+ (every start inside one whitespace run meets the same '.') */
static int m_space_dot(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    if (!is_space(s[i])) {
        *end = i + 1;
        return 0;
    }
    size_t a = run_space(s, n, i);
    if (at(s, n, a) == '.' && is_space(at(s, n, a + 1))) {
        *end = run_space(s, n, a + 1);
        return 1;
    }
    *end = a;
    return 0;
}

/* More than three '-' or '_' in all: each becomes a space. */
static int step_hyphens(const ts_cpbuf *in, ts_cpbuf *out)
{
    size_t count = 0;
    for (size_t i = 0; i < in->n; i++)
        count += in->v[i] == '-' || in->v[i] == '_';
    out->n = 0;
    if (ts_cpbuf_append(out, in->v, in->n))
        return -1;
    if (count > 3)
        for (size_t i = 0; i < out->n; i++)
            if (out->v[i] == '-' || out->v[i] == '_')
                out->v[i] = ' ';
    return 0;
}

/* ---- step 9: basic_clean ------------------------------------------------------------ */

/* ftfy's fix_surrogates: a high + low surrogate pair becomes its character, any other
 * surrogate U+FFFD. */
static int fix_surrogates(const ts_cpbuf *in, ts_cpbuf *out)
{
    out->n = 0;
    if (ts_cpbuf_reserve(out, in->n))
        return -1;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        if (c >= 0xD800 && c <= 0xDBFF && i + 1 < in->n && in->v[i + 1] >= 0xDC00 &&
            in->v[i + 1] <= 0xDFFF) {
            c = 0x10000 + ((c - 0xD800) << 10) + (in->v[i + 1] - 0xDC00);
            i++;
        } else if (c >= 0xD800 && c <= 0xDFFF) {
            c = 0xFFFD;
        }
        out->v[out->n++] = c;
    }
    return 0;
}

/* ftfy.fix_text (fix_surrogates + the subset of clip_clean.h), html.unescape twice,
 * strip. a and b are scratch; the result is in a. */
static int step_basic_clean(ts_cpbuf *a, ts_cpbuf *b)
{
    if (fix_surrogates(a, b) || ts_ftfy_fix_subset(b, a) || ts_html_unescape(a, b) ||
        ts_html_unescape(b, a) || strip_copy(a, b))
        return -1;
    ts_cpbuf_swap(a, b);
    return 0;
}

/* ---- step 10: codes, shop phrases, dimensions, punctuation spacing ---------------- */

/* \b[a-zA-Z]{1,3}\d{3,15}\b: letters {1,3} need the whole ASCII-letter run (a digit
 * must follow); digits {3,15} likewise need the whole run, then a non-word character. */
static int m_code_short(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!is_alpha(s[i]) || !wb(s, n, i))
        return 0;
    size_t a = i;
    while (a < n && a < i + 4 && is_alpha(s[a]))
        a++;
    if (a - i > 3)
        return 0;
    size_t e = a;
    while (e < n && e < a + 16 && is_digit(s[e]))
        e++;
    if (e - a < 3 || e - a > 15 || is_word(at(s, n, e)))
        return 0;
    *end = e;
    return 1;
}

/* \b[a-zA-Z]+\d+[a-zA-Z]+\b and \b\d+[a-zA-Z]+\d+\b: each + takes its whole run
 * (giving back leaves a character of the same kind where the next kind must be). */
static int m_code_ada(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!is_alpha(s[i]) || !wb(s, n, i))
        return 0;
    size_t a = run_alpha(s, n, i), b = run_digits(s, n, a), c = run_alpha(s, n, b);
    if (b == a || c == b || is_word(at(s, n, c)))
        return 0;
    *end = c;
    return 1;
}

static int m_code_dad(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!is_digit(s[i]) || !wb(s, n, i))
        return 0;
    size_t a = run_digits(s, n, i), b = run_alpha(s, n, a), c = run_digits(s, n, b);
    if (b == a || c == b || is_word(at(s, n, c)))
        return 0;
    *end = c;
    return 1;
}

/* (worldwide\s+)?(free\s+)?shipping: each \s+ takes its whole run (giving back leaves
 * a space where a letter must be); the optional groups are tried present first. */
static int m_shipping(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    size_t starts[2];
    int ns = 0;
    if (lit(s, n, i, "worldwide") && is_space(at(s, n, i + 9)))
        starts[ns++] = run_space(s, n, i + 9);
    starts[ns++] = i;
    for (int a = 0; a < ns; a++) {
        size_t q = starts[a];
        if (lit(s, n, q, "free") && is_space(at(s, n, q + 4))) {
            size_t r = run_space(s, n, q + 4);
            if (lit(s, n, r, "shipping")) {
                *end = r + 8;
                return 1;
            }
        }
        if (lit(s, n, q, "shipping")) {
            *end = q + 8;
            return 1;
        }
    }
    return 0;
}

/* (free\s)?download(\sfree)? */
static int m_download(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    size_t p;
    if (lit(s, n, i, "free") && is_space(at(s, n, i + 4)) && lit(s, n, i + 5, "download"))
        p = i + 13;
    else if (lit(s, n, i, "download"))
        p = i + 8;
    else {
        *end = i + 1;
        return 0;
    }
    if (is_space(at(s, n, p)) && lit(s, n, p + 1, "free"))
        p += 5;
    *end = p;
    return 1;
}

/* \bclick\b\s(?:for|on)\s\w+ */
static int m_click(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!lit(s, n, i, "click") || !wb(s, n, i) || !is_space(at(s, n, i + 5)))
        return 0;
    size_t p = i + 6;
    if (lit(s, n, p, "for"))
        p += 3;
    else if (lit(s, n, p, "on"))
        p += 2;
    else
        return 0;
    if (!is_space(at(s, n, p)) || !is_word(at(s, n, p + 1)))
        return 0;
    *end = run_word(s, n, p + 1);
    return 1;
}

/* \b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)? */
static int m_ext_image(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    size_t len = ext_at(s, n, i);
    if (!len || !wb(s, n, i))
        return 0;
    size_t p = i + len;
    if (is_space(at(s, n, p)) && lit(s, n, p + 1, "image"))
        p += 6 + (at(s, n, p + 6) == 's');
    *end = p;
    return 1;
}

/* \bpage\s+\d+\b */
static int m_page(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!lit(s, n, i, "page") || !wb(s, n, i))
        return 0;
    size_t a = run_space(s, n, i + 4), b = run_digits(s, n, a);
    if (a == i + 4 || b == a || is_word(at(s, n, b)))
        return 0;
    *end = b;
    return 1;
}

static int is_alpha_or_digit(uint32_t c)
{
    return is_alpha(c) || is_digit(c);
}

/* \b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b -> ' ': every group takes its whole run;
 * the tail [a-zA-Z\d]* ends at the same place whatever the last \d+ took, and \b can
 * only hold there. */
static int m_code_mixed(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!is_alpha_or_digit(s[i]) || !wb(s, n, i))
        return 0;
    size_t a = run_digits(s, n, i), b = run_alpha(s, n, a), c = run_digits(s, n, b);
    size_t d = run_alpha(s, n, c), e = run_digits(s, n, d);
    if (b == a || c == b || d == c || e == d)
        return 0;
    size_t g = e;
    while (g < n && is_alpha_or_digit(s[g]))
        g++;
    if (is_word(at(s, n, g)))
        return 0;
    *end = g;
    return 1;
}

static int is_times(uint32_t c)   /* [xх×] */
{
    return c == 'x' || c == 0x445 || c == 0xD7;
}

/* \b\d+\.?\d*[xх×]\d+\.?\d*\b. Before the x the path is forced (the x follows the
 * digits, or the digits after one '.'). After it, with "d+.d*" the engine ends after
 * the fraction digits when \b holds there, else right after the '.' when a word
 * character follows it, else before the '.' (where \b holds); with no '.', \b must
 * hold after the digits. */
static int m_dimension(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    *end = i + 1;
    if (!is_digit(s[i]) || !wb(s, n, i))
        return 0;
    size_t a = run_digits(s, n, i), x;
    if (is_times(at(s, n, a)))
        x = a;
    else if (at(s, n, a) == '.' && is_times(at(s, n, run_digits(s, n, a + 1))))
        x = run_digits(s, n, a + 1);
    else
        return 0;
    size_t q = x + 1, r = run_digits(s, n, q);
    if (r == q)
        return 0;
    if (at(s, n, r) == '.') {
        size_t t = run_digits(s, n, r + 1);
        if (t > r + 1)
            *end = is_word(at(s, n, t)) ? r + 1 : t;
        else
            *end = is_word(at(s, n, t)) ? r + 1 : r;
        return 1;
    }
    if (is_word(at(s, n, r)))
        return 0;
    *end = r;
    return 1;
}

/* \b\s+\:\s+ -> ": " (\b before a space: a word character precedes the run) */
static int m_colon(const uint32_t *s, size_t n, size_t i, size_t *end)
{
    if (!is_space(s[i])) {
        *end = i + 1;
        return 0;
    }
    size_t a = run_space(s, n, i);
    if (i > 0 && is_word(s[i - 1]) && at(s, n, a) == ':' && is_space(at(s, n, a + 1))) {
        *end = run_space(s, n, a + 1);
        return 1;
    }
    *end = a;   /* later starts in the run have a space before them: no \b */
    return 0;
}

/* (\D[,\./])\b -> "\1 " */
static int step_punct_space(const ts_cpbuf *in, ts_cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n + n / 2 + 1))
        return -1;
    for (size_t i = 0; i < n;) {
        uint32_t c = at(s, n, i + 1);
        if (!is_digit(s[i]) && (c == ',' || c == '.' || c == '/') && is_word(at(s, n, i + 2))) {
            PUSH(out, s[i]);
            PUSH(out, c);
            PUSH(out, ' ');
            i += 2;
        } else {
            PUSH(out, s[i++]);
        }
    }
    return 0;
}

/* ---- step 11: the ends --------------------------------------------------------------- */

/* No '\n' is left (whitespace runs are single spaces now), so $ is the end. */
static int step_ends(ts_cpbuf *t)
{
    uint32_t *s = t->v;
    size_t a = 0, b = t->n;
    /* ^[\"\']([\w\W]+)[\"\']$ */
    if (b - a >= 3 && is_quote(s[a]) && is_quote(s[b - 1]))
        a++, b--;
    /* ^[\'\_,\-\:;] */
    if (b > a && (s[a] == '\'' || s[a] == '_' || s[a] == ',' || s[a] == '-' || s[a] == ':' ||
                  s[a] == ';'))
        a++;
    /* [\'\_,\-\:\-\+]$ */
    if (b > a && (s[b - 1] == '\'' || s[b - 1] == '_' || s[b - 1] == ',' || s[b - 1] == '-' ||
                  s[b - 1] == ':' || s[b - 1] == '+'))
        b--;
    /* ^\.\S+$ */
    if (b - a >= 2 && s[a] == '.') {
        size_t k = a + 1;
        while (k < b && !is_space(s[k]))
            k++;
        if (k == b)
            b = a;
    }
    /* strip() */
    while (a < b && is_space(s[a]))
        a++;
    while (b > a && is_space(s[b - 1]))
        b--;
    memmove(s, s + a, (b - a) * sizeof *s);
    t->n = b - a;
    return 0;
}

/* ---- the pipeline -------------------------------------------------------------------- */

/* Runs each step from *a into *b and swaps, so the text is always in *a. */
#define STEP(call)               \
    do {                         \
        if (call)                \
            return -1;           \
        ts_cpbuf_swap(a, b);     \
    } while (0)

static int clean_caption(ts_cpbuf *a, ts_cpbuf *b)
{
    STEP(step_unquote_plus(a, b));
    STEP(strip_copy(a, b));
    STEP(ts_uni_lower(a, b));
    STEP(sub(a, b, m_person, "person"));
    STEP(step_urls(a, b, 0));
    STEP(step_urls(a, b, 1));
    STEP(ts_t5_html_text(a, b));
    STEP(sub(a, b, m_nickname, ""));
    STEP(step_drop_cjk(a, b));
    STEP(sub_runs(a, b, is_dash, 1, "-"));
    STEP(step_quotes(a, b));
    STEP(sub(a, b, m_quot, ""));
    STEP(sub(a, b, m_amp, ""));
    STEP(sub(a, b, m_ip, " "));
    STEP(step_article_id(a, b));
    STEP(sub(a, b, m_backslash_n, " "));
    STEP(sub(a, b, m_hash_short, ""));
    STEP(sub(a, b, m_hash_long, ""));
    STEP(sub(a, b, m_long_number, ""));
    STEP(sub(a, b, m_filename, ""));
    STEP(sub_runs(a, b, is_quote, 2, "\""));
    STEP(sub_runs(a, b, is_dot, 2, " "));
    STEP(sub_runs(a, b, is_bad_punct, 1, " "));
    STEP(sub(a, b, m_space_dot, " "));
    STEP(step_hyphens(a, b));
    if (step_basic_clean(a, b))
        return -1;
    STEP(sub(a, b, m_code_short, ""));
    STEP(sub(a, b, m_code_ada, ""));
    STEP(sub(a, b, m_code_dad, ""));
    STEP(sub(a, b, m_shipping, ""));
    STEP(sub(a, b, m_download, ""));
    STEP(sub(a, b, m_click, ""));
    STEP(sub(a, b, m_ext_image, ""));
    STEP(sub(a, b, m_page, ""));
    STEP(sub(a, b, m_code_mixed, " "));
    STEP(sub(a, b, m_dimension, ""));
    STEP(sub(a, b, m_colon, ": "));
    STEP(step_punct_space(a, b));
    STEP(sub_runs(a, b, is_space, 1, " "));
    return step_ends(a);
}

int ts_t5_clean_caption(const ts_cpbuf *in, ts_cpbuf *out)
{
    ts_cpbuf tmp = {0};
    if (in->n > ((size_t)1 << 31))
        return -1;
    out->n = 0;
    int rc = ts_cpbuf_append(out, in->v, in->n) || clean_caption(out, &tmp) ? -1 : 0;
    ts_cpbuf_free(&tmp);
    return rc;
}

int ts_t5_clean(const char *utf8, size_t len, char **out, size_t *out_len, ts_error *err)
{
    *out = NULL;
    if (out_len)
        *out_len = 0;
    if (len > TS_T5_CLEAN_MAX_INPUT)
        return ts_fail(err, TS_ERR_INVALID, "prompt of %zu bytes: at most %u are accepted", len,
                       TS_T5_CLEAN_MAX_INPUT);
    ts_cpbuf a = {0}, b = {0};
    size_t bad = 0;
    int rc = ts_utf8_decode(utf8, len, &a, &bad);
    if (rc > 0) {
        ts_cpbuf_free(&a);
        return ts_fail(err, TS_ERR_INVALID, "prompt is not valid UTF-8 (byte %zu)", bad);
    }
    if (rc < 0 || clean_caption(&a, &b) || clean_caption(&a, &b))
        goto nomem;
    size_t bytes = 0;
    for (size_t i = 0; i < a.n; i++)
        bytes += a.v[i] < 0x80 ? 1 : a.v[i] < 0x800 ? 2 : a.v[i] < 0x10000 ? 3 : 4;
    char *o = malloc(bytes + 1);
    if (!o)
        goto nomem;
    size_t k = 0;
    for (size_t i = 0; i < a.n; i++) {
        uint32_t c = a.v[i];
        if (c >= 0xD800 && c <= 0xDFFF)   /* cannot happen (fix_surrogates); be safe */
            c = 0xFFFD;
        k += (size_t)ts_utf8_encode(c, (unsigned char *)o + k);
    }
    o[k] = '\0';
    ts_cpbuf_free(&a);
    ts_cpbuf_free(&b);
    *out = o;
    if (out_len)
        *out_len = k;
    ts_error_clear(err);
    return TS_OK;
nomem:
    ts_cpbuf_free(&a);
    ts_cpbuf_free(&b);
    return ts_fail(err, TS_ERR_NOMEM, "out of memory cleaning a prompt of %zu bytes", len);
}
