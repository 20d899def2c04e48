/* clip_clean.c - CLIP's text cleanup: a subset of ftfy, html.unescape, whitespace,
 * lower-casing (see clip_clean.h for exactly what is and is not reproduced). */
#include "engine/text/clip_clean.h"

#include <string.h>

#define PUSH(b, c)                   \
    do {                             \
        if (ts_cpbuf_push((b), (c))) \
            return -1;               \
    } while (0)

/* ---- HTML entities --------------------------------------------------------------- */

#define ENTITY_NAME_MAX 32   /* html.unescape looks at most 32 characters ahead */

static int cmp_name(const char *entry, const char *name, size_t len)
{
    int r = strncmp(entry, name, len);
    if (r)
        return r;
    return entry[len] ? 1 : 0;
}

/* The entity named name[0..len) (code points; NULL unless all ASCII) carrying `flag`. */
static const ts_html_entity *entity_find(const uint32_t *name, size_t len, uint32_t flag)
{
    char buf[ENTITY_NAME_MAX + 1];
    if (len == 0 || len > ENTITY_NAME_MAX)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (name[i] == 0 || name[i] >= 0x80)
            return NULL;
        buf[i] = (char)name[i];
    }
    int lo = 0, hi = ts_html_entities_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int r = cmp_name(ts_html_entities[mid].name, buf, len);
        if (r > 0)
            hi = mid - 1;
        else if (r < 0)
            lo = mid + 1;
        else
            return (ts_html_entities[mid].flags & flag) ? &ts_html_entities[mid] : NULL;
    }
    return NULL;
}

static int push_value(ts_cpbuf *out, const uint32_t *v, int max)
{
    for (int i = 0; i < max && v[i]; i++)
        PUSH(out, v[i]);
    return 0;
}

static uint32_t charref_fixup(uint32_t num, int *found)
{
    for (int i = 0; i < ts_html_charref_fixups_n; i++) {
        if (ts_html_charref_fixups[i].from == num) {
            *found = 1;
            return ts_html_charref_fixups[i].to;
        }
    }
    *found = 0;
    return 0;
}

/* What html.unescape makes of numeric reference `num` (saturated at 0x110000):
 * 0 or 1 code point in *cp; returns the count. */
static int numeric_ref(uint32_t num, uint32_t *cp)
{
    int found;
    uint32_t fix = charref_fixup(num, &found);
    if (found) {
        *cp = fix;
        return 1;
    }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        *cp = 0xFFFD;
        return 1;
    }
    for (int i = 0; i < ts_html_dropped_charrefs_n; i++)
        if (num >= ts_html_dropped_charrefs[i].lo && num <= ts_html_dropped_charrefs[i].hi)
            return 0;
    *cp = num;
    return 1;
}

static int is_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_hex(uint32_t c)
{
    return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}
static int hex_val(uint32_t c) { return is_digit(c) ? (int)(c - '0') : (int)((c | 0x20) - 'a' + 10); }
static int is_alnum(uint32_t c) { return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'); }

/* Parses digits of base 10 or 16 from s[i..n) while they last; *num saturates at
 * 0x110000 (anything larger is U+FFFD anyway). Returns the index after them. */
static size_t parse_num(const uint32_t *s, size_t i, size_t n, int base, uint32_t *num)
{
    uint32_t v = 0;
    while (i < n && (base == 10 ? is_digit(s[i]) : is_hex(s[i]))) {
        v = v * (uint32_t)base + (uint32_t)(base == 10 ? (int)(s[i] - '0') : hex_val(s[i]));
        if (v > 0x110000)
            v = 0x110000;
        i++;
    }
    *num = v;
    return i;
}

/* html.unescape's name characters: anything but \t \n \f space < & # ; */
static int is_name_char(uint32_t c)
{
    return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' ||
             c == '#' || c == ';');
}

int ts_html_unescape(const ts_cpbuf *in, ts_cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n, i = 0;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n))
        return -1;
    while (i < n) {
        if (s[i] != '&') {
            PUSH(out, s[i++]);
            continue;
        }
        size_t j = i + 1;
        if (j < n && s[j] == '#') {
            int base = 0;
            size_t k = j + 1;
            if (k < n && is_digit(s[k]))
                base = 10;
            else if (k + 1 < n && (s[k] | 0x20) == 'x' && is_hex(s[k + 1]))
                base = 16, k++;
            if (!base) {        /* "&#" not followed by a number: literal */
                PUSH(out, s[i++]);
                continue;
            }
            uint32_t num, cp;
            size_t e = parse_num(s, k, n, base, &num);
            if (e < n && s[e] == ';')
                e++;
            if (numeric_ref(num, &cp))
                PUSH(out, cp);
            i = e;
            continue;
        }
        size_t k = j;
        while (k < n && k - j < ENTITY_NAME_MAX && is_name_char(s[k]))
            k++;
        size_t m = k - j;
        if (m == 0) {
            PUSH(out, s[i++]);
            continue;
        }
        int semi = k < n && s[k] == ';';
        const ts_html_entity *e = entity_find(s + j, m, semi ? TS_HTML_SEMI : TS_HTML_BARE);
        if (e) {                                 /* the whole match is an entity */
            if (push_value(out, e->value, 2))
                return -1;
            i = k + (size_t)semi;
            continue;
        }
        /* Else the longest legacy name (those without ';') that is a proper prefix of
         * the match, the match counting its ';': name[:x] for x = len - 1 down to 2;
         * what follows the name stays. */
        size_t len = m + (size_t)semi, x = len - 1;
        for (; x >= 2; x--)
            if ((e = entity_find(s + j, x, TS_HTML_BARE)) != NULL)
                break;
        if (e) {
            if (push_value(out, e->value, 2) || ts_cpbuf_append(out, s + j + x, m - x))
                return -1;
        } else if (ts_cpbuf_append(out, s + i, 1 + m)) {
            return -1;
        }
        if (semi)
            PUSH(out, ';');
        i = k + (size_t)semi;
    }
    return 0;
}

/* ---- ftfy's fixes ---------------------------------------------------------------- */

/* ftfy's unescape_html: "&" "#"? [0-9A-Za-z]{1,24} ";" replaced by an HTML5 entity
 * with ';', ftfy's upper-cased variant, or a numeric reference that Python decodes
 * completely (to something other than ';'); everything else is left alone. */
static int ftfy_unescape(const ts_cpbuf *in, ts_cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n, i = 0;
    out->n = 0;
    if (ts_cpbuf_reserve(out, n))
        return -1;
    while (i < n) {
        if (s[i] != '&') {
            PUSH(out, s[i++]);
            continue;
        }
        size_t j = i + 1;
        int hash = j < n && s[j] == '#';
        size_t k = j + (size_t)hash, m = 0;
        while (k + m < n && is_alnum(s[k + m]))
            m++;
        if (m < 1 || m > 24 || k + m >= n || s[k + m] != ';') {
            PUSH(out, s[i++]);
            continue;
        }
        size_t end = k + m + 1;
        const uint32_t *body = s + k;
        if (!hash) {
            const ts_html_entity *e = entity_find(body, m, TS_HTML_SEMI);
            if (e) {
                if (push_value(out, e->value, 2))
                    return -1;
                i = end;
                continue;
            }
            /* "&NAME;" where name is an all-lower-case entity: NAME has no lower-case
             * letter and lowers to it. */
            uint32_t low[24];
            int has_lower = 0;
            for (size_t t = 0; t < m; t++) {
                has_lower |= body[t] >= 'a' && body[t] <= 'z';
                low[t] = (body[t] >= 'A' && body[t] <= 'Z') ? body[t] + 32 : body[t];
            }
            e = has_lower ? NULL : entity_find(low, m, TS_HTML_FTFY_UPPER);
            if (e) {
                const uint32_t *v = e->value;
                int max = 2;
                uint32_t idx = (uint32_t)(e - ts_html_entities);
                for (int t = 0; t < ts_html_ftfy_upper_values_n; t++) {
                    if (ts_html_ftfy_upper_values[t].index == idx) {
                        v = ts_html_ftfy_upper_values[t].value;
                        max = 3;
                        break;
                    }
                }
                if (push_value(out, v, max))
                    return -1;
                i = end;
                continue;
            }
        } else {
            int base = 0;
            size_t d = 0;
            if (is_digit(body[0]))
                base = 10;
            else if ((body[0] | 0x20) == 'x' && m >= 2)
                base = 16, d = 1;
            uint32_t num, cp;
            if (base && parse_num(body, d, m, base, &num) == m && num != ';') {
                if (numeric_ref(num, &cp))
                    PUSH(out, cp);
                i = end;
                continue;
            }
        }
        if (ts_cpbuf_append(out, s + i, end - i))   /* left as written */
            return -1;
        i = end;
    }
    return 0;
}

static const struct { uint32_t cp; uint32_t to[3]; } LIGATURES[] = {
    {0x0132, {'I', 'J'}}, {0x0133, {'i', 'j'}}, {0x0149, {0x02BC, 'n'}},
    {0x01C4, {'D', 0x017D}}, {0x01C5, {'D', 0x017E}}, {0x01C6, {'d', 0x017E}},
    {0x01C7, {'L', 'J'}}, {0x01C8, {'L', 'j'}}, {0x01C9, {'l', 'j'}},
    {0x01CA, {'N', 'J'}}, {0x01CB, {'N', 'j'}}, {0x01CC, {'n', 'j'}},
    {0x01F1, {'D', 'Z'}}, {0x01F2, {'D', 'z'}}, {0x01F3, {'d', 'z'}},
    {0xFB00, {'f', 'f'}}, {0xFB01, {'f', 'i'}}, {0xFB02, {'f', 'l'}},
    {0xFB03, {'f', 'f', 'i'}}, {0xFB04, {'f', 'f', 'l'}}, {0xFB05, {0x017F, 't'}},
    {0xFB06, {'s', 't'}},
};

static int is_control(uint32_t c)
{
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
           (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes: each maps
 * one character to others and they run in this order, so one loop does all four. */
static int map_chars(const ts_cpbuf *in, ts_cpbuf *out)
{
    out->n = 0;
    if (ts_cpbuf_reserve(out, in->n))
        return -1;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i], buf[3] = {c, 0, 0};
        int nb = 1;
        if (c >= 0x80 && c <= 0x9F) {           /* C1 control as Windows-1252 */
            int found;
            buf[0] = charref_fixup(c, &found);
        }
        c = buf[0];
        if (c >= 0x132 && c <= 0xFB06) {        /* ligatures */
            for (size_t t = 0; t < sizeof LIGATURES / sizeof LIGATURES[0]; t++) {
                if (LIGATURES[t].cp == c) {
                    nb = LIGATURES[t].to[2] ? 3 : 2;
                    memcpy(buf, LIGATURES[t].to, sizeof buf);
                    break;
                }
            }
        }
        for (int b = 0; b < nb; b++) {
            uint32_t w[2] = {buf[b], 0};
            int nw = 1;
            if (w[0] == 0x3000) {
                w[0] = ' ';
            } else if (w[0] >= 0xFF01 && w[0] <= 0xFFEF) {   /* width */
                int lo = 0, hi = ts_uni_width_map_n - 1;
                while (lo <= hi) {
                    int mid = (lo + hi) / 2;
                    if (w[0] < ts_uni_width_map[mid].cp) {
                        hi = mid - 1;
                    } else if (w[0] > ts_uni_width_map[mid].cp) {
                        lo = mid + 1;
                    } else {
                        w[0] = ts_uni_width_map[mid].to[0];
                        w[1] = ts_uni_width_map[mid].to[1];
                        nw = w[1] ? 2 : 1;
                        break;
                    }
                }
            }
            for (int t = 0; t < nw; t++) {
                uint32_t q = w[t];
                if (q == 0x02BC || (q >= 0x2018 && q <= 0x201B))
                    q = '\'';
                else if (q >= 0x201C && q <= 0x201F)
                    q = '"';
                PUSH(out, q);
            }
        }
    }
    return 0;
}

/* fix_line_breaks, remove_terminal_escapes, remove_control_chars. */
static int breaks_escapes_controls(const ts_cpbuf *in, ts_cpbuf *out)
{
    ts_cpbuf lf = {0};
    int rc = -1;
    out->n = 0;
    if (ts_cpbuf_reserve(&lf, in->n))
        goto done;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        if (c == '\r') {
            if (i + 1 < in->n && in->v[i + 1] == '\n')
                i++;
            c = '\n';
        } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
            c = '\n';
        }
        lf.v[lf.n++] = c;
    }
    if (ts_cpbuf_reserve(out, lf.n))
        goto done;
    for (size_t i = 0; i < lf.n; i++) {
        uint32_t c = lf.v[i];
        if (c == 0x1B && i + 1 < lf.n && lf.v[i + 1] == '[') {
            size_t k = i + 2;
            while (k < lf.n && (is_digit(lf.v[k]) || lf.v[k] == ';'))
                k++;
            if (k < lf.n && (lf.v[k] | 0x20) >= 'a' && (lf.v[k] | 0x20) <= 'z') {
                i = k;
                continue;
            }
        }
        if (!is_control(c))
            out->v[out->n++] = c;
    }
    rc = 0;
done:
    ts_cpbuf_free(&lf);
    return rc;
}

/* One pass of every reproduced fix over seg, in ftfy's order; result in seg. */
static int fix_pass(ts_cpbuf *seg, ts_cpbuf *tmp, int unescape)
{
    if (unescape) {
        if (ftfy_unescape(seg, tmp))
            return -1;
        ts_cpbuf_swap(seg, tmp);
    }
    if (map_chars(seg, tmp))
        return -1;
    ts_cpbuf_swap(seg, tmp);
    if (breaks_escapes_controls(seg, tmp))
        return -1;
    ts_cpbuf_swap(seg, tmp);
    if (ts_uni_nfc(seg, tmp))
        return -1;
    ts_cpbuf_swap(seg, tmp);
    return 0;
}

/* ftfy repeats its fixes until a pass changes nothing, and each pass resolves only one
 * level of nested references, so "&" + "amp;" x N takes N passes over the line: quadratic
 * (tests/fuzz/fuzz_prompt.c timed out on it; 22 s for 120 KB of caption). Here the repeat
 * passes of one call may cover at most FTFY_WORK_MIN + FTFY_WORK_PER_CP x (input length)
 * code points in all; past that, a line keeps the result of its last pass. Every line gets
 * its first pass. Text short of the budget is fixed exactly as ftfy does: every pass
 * after the first that changes a line also shortens it, so n code points need at most
 * about n^2 / 2 (a nested chain n^2 / 8): any prompt of up to about 1400 code points (the
 * API takes 1000 bytes) and any real text reaches ftfy's fixpoint. */
#define FTFY_WORK_MIN ((size_t)1 << 20)
#define FTFY_WORK_PER_CP 16

int ts_ftfy_fix_subset(const ts_cpbuf *in, ts_cpbuf *out)
{
    ts_cpbuf seg = {0}, prev = {0}, tmp = {0};
    int rc = -1, unescape = 1;
    out->n = 0;
    size_t pos = 0, work = 0, budget = FTFY_WORK_MIN + FTFY_WORK_PER_CP * in->n;
    while (pos < in->n) {
        size_t end = pos;
        while (end < in->n && in->v[end] != '\n')
            end++;
        if (end < in->n)
            end++;                           /* the segment keeps its '\n' */
        seg.n = 0;
        if (ts_cpbuf_append(&seg, in->v + pos, end - pos))
            goto done;
        for (size_t i = 0; i < seg.n; i++)
            if (seg.v[i] == '<')
                unescape = 0;               /* ftfy: may be HTML, from here on */
        for (int first = 1;; first = 0) {    /* until a pass changes nothing */
            if (!first && (work += seg.n) > budget)
                break;                       /* see FTFY_WORK_MIN */
            prev.n = 0;
            if (ts_cpbuf_append(&prev, seg.v, seg.n) || fix_pass(&seg, &tmp, unescape))
                goto done;
            if (ts_cpbuf_equal(&prev, &seg))
                break;
        }
        if (ts_cpbuf_append(out, seg.v, seg.n))
            goto done;
        pos = end;
    }
    rc = 0;
done:
    ts_cpbuf_free(&seg);
    ts_cpbuf_free(&prev);
    ts_cpbuf_free(&tmp);
    return rc;
}

/* ---- the whole cleanup ----------------------------------------------------------- */

int ts_clip_clean(const ts_cpbuf *in, ts_cpbuf *out)
{
    ts_cpbuf a = {0}, b = {0};
    int rc = -1;
    if (ts_ftfy_fix_subset(in, &a) || ts_html_unescape(&a, &b) || ts_html_unescape(&b, &a))
        goto done;
    /* strip, then whitespace runs to one space: " ".join(text.split()) */
    b.n = 0;
    if (ts_cpbuf_reserve(&b, a.n))
        goto done;
    int pending = 0;
    for (size_t i = 0; i < a.n; i++) {
        uint32_t c = a.v[i];
        if (ts_uni_is_space(c)) {
            pending = b.n > 0;
            continue;
        }
        if (pending)
            b.v[b.n++] = ' ';
        pending = 0;
        b.v[b.n++] = c;
    }
    rc = ts_uni_lower(&b, out);
done:
    ts_cpbuf_free(&a);
    ts_cpbuf_free(&b);
    return rc;
}
