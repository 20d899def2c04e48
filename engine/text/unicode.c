/* unicode.c - UTF-8, character classes, str.lower and NFC over code point arrays. */
#include "engine/text/unicode.h"

#include <stdlib.h>
#include <string.h>

/* ---- ts_cpbuf -------------------------------------------------------------------- */

void ts_cpbuf_free(ts_cpbuf *b)
{
    free(b->v);
    b->v = NULL;
    b->n = b->cap = 0;
}

int ts_cpbuf_reserve(ts_cpbuf *b, size_t extra)
{
    if (b->n + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra)
        cap *= 2;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v)
        return -1;
    b->v = v;
    b->cap = cap;
    return 0;
}

int ts_cpbuf_push(ts_cpbuf *b, uint32_t cp)
{
    if (b->n == b->cap && ts_cpbuf_reserve(b, 1))
        return -1;
    b->v[b->n++] = cp;
    return 0;
}

int ts_cpbuf_append(ts_cpbuf *b, const uint32_t *cps, size_t n)
{
    if (ts_cpbuf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->v + b->n, cps, n * sizeof *cps);
    b->n += n;
    return 0;
}

int ts_cpbuf_equal(const ts_cpbuf *a, const ts_cpbuf *b)
{
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

void ts_cpbuf_swap(ts_cpbuf *a, ts_cpbuf *b)
{
    ts_cpbuf t = *a;
    *a = *b;
    *b = t;
}

/* ---- UTF-8 ----------------------------------------------------------------------- */

size_t ts_utf8_char(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!len || len > n)   /* not a lead byte, or a truncated sequence */
        return 0;
    uint32_t v = len == 1 ? c : c & (0x7Fu >> len);
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[k] & 0x3F);
    }
    /* overlong 3/4-byte forms, surrogates, beyond U+10FFFF */
    if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)) ||
        (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

int ts_utf8_decode(const char *s, size_t len, ts_cpbuf *out, size_t *bad_at)
{
    const unsigned char *p = (const unsigned char *)s;
    if (ts_cpbuf_reserve(out, len))
        return -1;
    for (size_t i = 0; i < len;) {
        size_t n = ts_utf8_char(p + i, len - i, &out->v[out->n]);
        if (!n) {
            *bad_at = i;
            return 1;
        }
        out->n++;
        i += n;
    }
    return 0;
}

int ts_utf8_encode(uint32_t cp, unsigned char out[4])
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- table look-ups -------------------------------------------------------------- */

static const ts_uni_range3 *find_range3(const ts_uni_range3 *t, int n, uint32_t cp)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < t[mid].lo)
            hi = mid - 1;
        else if (cp > t[mid].hi)
            lo = mid + 1;
        else
            return &t[mid];
    }
    return NULL;
}

static int in_ranges(const ts_uni_range *t, int n, uint32_t cp)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < t[mid].lo)
            hi = mid - 1;
        else if (cp > t[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

int ts_uni_class_of(uint32_t cp)
{
    if (cp < 0x80) {   /* the common case, without a search */
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')
            return TS_UNI_LETTER;
        if (cp >= '0' && cp <= '9')
            return TS_UNI_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F))
            return TS_UNI_SPACE;
        return TS_UNI_OTHER;
    }
    const ts_uni_range3 *r = find_range3(ts_uni_class, ts_uni_class_n, cp);
    return r ? (int)r->value : TS_UNI_OTHER;
}

int ts_uni_is_space(uint32_t cp)
{
    return ts_uni_class_of(cp) == TS_UNI_SPACE;
}

int ts_uni_ccc(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    const ts_uni_range3 *r = find_range3(ts_uni_ccc_runs, ts_uni_ccc_runs_n, cp);
    return r ? (int)r->value : 0;
}

/* ---- str.lower ------------------------------------------------------------------- */

static uint32_t lower1(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    int lo = 0, hi = ts_uni_lower_runs_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const ts_uni_lower_run *r = &ts_uni_lower_runs[mid];
        if (cp < r->lo)
            hi = mid - 1;
        else if (cp > r->hi)
            lo = mid + 1;
        else
            return (cp - r->lo) % (uint32_t)r->stride == 0 ? (uint32_t)((int32_t)cp + r->delta)
                                                           : cp;
    }
    return cp;
}

static int is_cased(uint32_t cp)
{
    return in_ranges(ts_uni_cased, ts_uni_cased_n, cp);
}

static int is_case_ignorable(uint32_t cp)
{
    return in_ranges(ts_uni_case_ignorable, ts_uni_case_ignorable_n, cp);
}

/* CPython's Final_Sigma test for the capital sigma at i: a cased letter before it
 * (skipping case-ignorables) and none after it (idem). */
static int final_sigma(const uint32_t *s, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(s[j - 1]))
        j--;
    if (j == 0 || !is_cased(s[j - 1]))
        return 0;
    for (j = i + 1; j < n && is_case_ignorable(s[j]); j++)
        ;
    return j == n || !is_cased(s[j]);
}

int ts_uni_lower(const ts_cpbuf *in, ts_cpbuf *out)
{
    out->n = 0;
    if (ts_cpbuf_reserve(out, in->n + 16))
        return -1;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        if (c == 0x130) {           /* LATIN CAPITAL I WITH DOT ABOVE: "i" + U+0307 */
            if (ts_cpbuf_push(out, 'i') || ts_cpbuf_push(out, 0x307))
                return -1;
        } else if (c == 0x3A3) {
            if (ts_cpbuf_push(out, final_sigma(in->v, in->n, i) ? 0x3C2 : 0x3C3))
                return -1;
        } else if (ts_cpbuf_push(out, lower1(c))) {
            return -1;
        }
    }
    return 0;
}

/* ---- NFC ------------------------------------------------------------------------- */

enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_LN = 19, HANGUL_VN = 21, HANGUL_TN = 28, HANGUL_NN = 21 * 28,
       HANGUL_SN = 19 * 21 * 28 };

static const ts_uni_decomp *find_decomp(uint32_t cp)
{
    int lo = 0, hi = ts_uni_decomp_table_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < ts_uni_decomp_table[mid].cp)
            hi = mid - 1;
        else if (cp > ts_uni_decomp_table[mid].cp)
            lo = mid + 1;
        else
            return &ts_uni_decomp_table[mid];
    }
    return NULL;
}

static int decompose(uint32_t cp, ts_cpbuf *out)
{
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SN) {
        uint32_t s = cp - HANGUL_S;
        if (ts_cpbuf_push(out, HANGUL_L + s / HANGUL_NN) ||
            ts_cpbuf_push(out, HANGUL_V + (s % HANGUL_NN) / HANGUL_TN))
            return -1;
        if (s % HANGUL_TN && ts_cpbuf_push(out, HANGUL_T + s % HANGUL_TN))
            return -1;
        return 0;
    }
    const ts_uni_decomp *d = cp < 0xC0 ? NULL : find_decomp(cp);
    if (!d)
        return ts_cpbuf_push(out, cp);
    if (decompose(d->first, out))   /* depth is at most 4 */
        return -1;
    return d->second ? decompose(d->second, out) : 0;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    int lo = 0, hi = ts_uni_compose_index_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const ts_uni_decomp *d = &ts_uni_decomp_table[ts_uni_compose_index[mid]];
        if (a < d->first || (a == d->first && b < d->second))
            hi = mid - 1;
        else if (a > d->first || b > d->second)
            lo = mid + 1;
        else
            return d->cp;
    }
    return 0;
}

/* Stable sort of v[0..n) by combining class: insertion sort for the usual short runs
 * of marks, a merge sort through tmp (n entries) for long ones, so that an input made
 * of thousands of marks stays O(n log n). */
static void sort_by_ccc(uint32_t *v, uint8_t *cls, size_t n, uint32_t *tmp, uint8_t *tcls)
{
    if (n <= 24) {
        for (size_t i = 1; i < n; i++) {
            uint32_t c = v[i];
            uint8_t k = cls[i];
            size_t j = i;
            while (j > 0 && cls[j - 1] > k) {
                v[j] = v[j - 1];
                cls[j] = cls[j - 1];
                j--;
            }
            v[j] = c;
            cls[j] = k;
        }
        return;
    }
    size_t h = n / 2;
    sort_by_ccc(v, cls, h, tmp, tcls);
    sort_by_ccc(v + h, cls + h, n - h, tmp, tcls);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (cls[j] < cls[i]) {
            tmp[k] = v[j];
            tcls[k++] = cls[j++];
        } else {
            tmp[k] = v[i];
            tcls[k++] = cls[i++];
        }
    }
    while (i < h) {
        tmp[k] = v[i];
        tcls[k++] = cls[i++];
    }
    while (j < n) {
        tmp[k] = v[j];
        tcls[k++] = cls[j++];
    }
    memcpy(v, tmp, n * sizeof *v);
    memcpy(cls, tcls, n);
}

int ts_uni_nfc(const ts_cpbuf *in, ts_cpbuf *out)
{
    out->n = 0;
    /* Below U+0300 nothing decomposes, combines or composes except the Latin-1
     * letters' decompositions, which recompose to themselves. */
    size_t i = 0;
    while (i < in->n && in->v[i] < 0x300)
        i++;
    if (i == in->n)
        return ts_cpbuf_append(out, in->v, in->n);

    int rc = -1;
    uint8_t *cls = NULL, *tcls = NULL;
    uint32_t *tmp = NULL;
    if (ts_cpbuf_reserve(out, in->n + 16))
        return -1;
    for (i = 0; i < in->n; i++)
        if (decompose(in->v[i], out))
            return -1;
    size_t n = out->n;
    cls = malloc(n ? n : 1);
    tcls = malloc(n ? n : 1);
    tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!cls || !tcls || !tmp)
        goto done;
    uint32_t *v = out->v;
    for (i = 0; i < n; i++)
        cls[i] = (uint8_t)ts_uni_ccc(v[i]);
    for (i = 0; i < n;) {   /* canonical ordering of each run of non-starters */
        if (!cls[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && cls[j])
            j++;
        sort_by_ccc(v + i, cls + i, j - i, tmp, tcls);
        i = j;
    }
    /* Canonical composition (UAX #15): each character joins the last starter unless a
     * character of equal or higher class, or a starter, stands between them. */
    size_t starter = 0, w = 0;
    int have_starter = 0, last = 0;
    for (i = 0; i < n; i++) {
        uint32_t c = v[i];
        int k = cls[i];
        if (have_starter && (last == 0 ? w - 1 == starter : last < k)) {
            uint32_t comp = compose_pair(v[starter], c);
            if (comp) {
                v[starter] = comp;
                continue;
            }
        }
        if (k == 0) {
            starter = w;
            have_starter = 1;
        }
        last = k;
        v[w] = c;
        cls[w++] = (uint8_t)k;
    }
    out->n = w;
    rc = 0;
done:
    free(cls);
    free(tcls);
    free(tmp);
    return rc;
}
