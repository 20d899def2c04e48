/* test_t5_clean.c - LlamaGen's T5 caption cleaning against goldens from the Python
 * reference (tests/reference/t5_clean_ref.py via test_t5_clean.py --regen), plus the
 * entry point's refusals, hostile inputs (time linear in the length) and concurrent use.
 *
 * Besides the Check suite, the binary has modes for tests/reference/test_t5_clean.py:
 *   --filter        each stdin line is a prompt in hex (UTF-8); prints "ok <hex of the
 *                   cleaned text>" or "err <code>" per line
 *   --filter-round  the same with one round of clean_caption (ts_t5_clean_caption)
 *   --filter-html   the same with the HTML step alone (ts_t5_html_text)
 *   --classes       prints the code point ranges of \d, \w and \s as used here
 */
#include "tests/check_util.h"

#include <pthread.h>
#include <time.h>

#include "engine/text/t5_clean.h"

/* ---- helpers ----------------------------------------------------------------------- */

static int hexval(int c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Decodes hex into a new buffer; *len its size. */
static char *unhex(const char *hex, size_t hl, size_t *len)
{
    char *b = malloc(hl / 2 + 1);
    if (!b)
        return NULL;
    for (size_t i = 0; i + 1 < hl; i += 2)
        b[i / 2] = (char)(hexval(hex[i]) * 16 + hexval(hex[i + 1]));
    b[hl / 2] = '\0';
    *len = hl / 2;
    return b;
}

static char *clean_ok(const char *s, size_t len)
{
    char *out = NULL;
    size_t out_len = 0;
    ts_error err;
    ts_ck_ok(ts_t5_clean(s, len, &out, &out_len, &err), err);
    ck_assert(out != NULL);
    ck_assert_uint_eq(strlen(out), out_len);   /* no NUL survives the ftfy step */
    return out;
}

static void expect_clean(const char *prompt, const char *want)
{
    char *got = clean_ok(prompt, strlen(prompt));
    ck_assert_msg(strcmp(got, want) == 0, "\"%s\" -> \"%s\", expected \"%s\"", prompt, got,
                  want);
    free(got);
}

/* ---- goldens --------------------------------------------------------------------- */

START_TEST(test_golden)
{
    size_t len;
    char *text = ts_ck_read_file("tests/fixtures/t5_clean/golden.tsv", &len);
    int rows = 0, line_no = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line_no++;
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *tab1 = strchr(line, '\t');
        ck_assert_msg(tab1 != NULL, "golden.tsv line %d: no tab", line_no);
        char *tab2 = strchr(tab1 + 1, '\t');
        ck_assert_msg(tab2 != NULL, "golden.tsv line %d: one tab", line_no);
        size_t plen, wlen;
        char *prompt = unhex(line, (size_t)(tab1 - line), &plen);
        char *want = unhex(tab1 + 1, (size_t)(tab2 - tab1 - 1), &wlen);
        char *got = clean_ok(prompt, plen);
        ck_assert_msg(strcmp(got, want) == 0, "golden.tsv line %d (%s): got \"%s\"", line_no,
                      tab2 + 1, got);
        free(prompt);
        free(want);
        free(got);
        rows++;
    }
    ck_assert_msg(rows >= 100, "only %d golden rows", rows);
    free(text);
}
END_TEST

/* A few behaviours spelled out (the goldens hold many more). */
START_TEST(test_examples)
{
    expect_clean("A photo of a CAT", "a photo of a cat");
    expect_clean("", "");
    expect_clean("  \t\n ", "");
    /* URLs, HTML, nicknames, hashtags, shop phrases */
    expect_clean("Visit https://example.com/page today", "visit today");
    expect_clean("<p>Red <b>apple</b></p> &lt;3", "red apple <3");
    expect_clean("@bob_77 drew #42 of them", "drew of them");
    expect_clean("Poster FREE SHIPPING worldwide", "poster worldwide");
    /* codes and dimensions go; a space follows , . / before a word character */
    expect_clean("Model jc6640 size 3x4,red", "model size , red");
    /* percent escapes and '+'; two rounds undo two levels of escaping */
    expect_clean("caf%C3%A9+au+lait", "caf\xc3\xa9 au lait");
    expect_clean("%2541", "a");
    /* this-is-my-cute-cat: more than three '-' or '_' become spaces */
    expect_clean("this-is-my-cute-cat", "this is my cute cat");
    expect_clean("well-made", "well-made");
    /* upstream raises on these; here: a bogus comment, U+FFFD */
    expect_clean("a <![foo bar]> b", "a b");
    char big[5000];
    memcpy(big, "&#", 2);
    memset(big + 2, '1', 4400);
    strcpy(big + 4402, ";x");
    expect_clean(big, "\xef\xbf\xbdx");
}
END_TEST

/* One round only, on code points. */
START_TEST(test_one_round)
{
    ts_cpbuf in = {0}, out = {0};
    size_t bad;
    const char *p = "%2541 B";
    ck_assert_int_eq(ts_utf8_decode(p, strlen(p), &in, &bad), 0);
    ck_assert_int_eq(ts_t5_clean_caption(&in, &out), 0);
    /* one round decodes one level of escapes: "%41 b"; the second would give "a b" */
    ck_assert_uint_eq(out.n, 5);
    ck_assert(out.v[0] == '%' && out.v[1] == '4' && out.v[2] == '1' && out.v[4] == 'b');
    ts_cpbuf_free(&in);
    ts_cpbuf_free(&out);
}
END_TEST

/* ---- errors ---------------------------------------------------------------------- */

START_TEST(test_invalid_utf8)
{
    static const char *bad[] = {"\xff", "ab\xc3", "\xc0\xaf", "\xed\xa0\x80", "ok \xe2\x28\xa1"};
    static const int at[] = {0, 2, 0, 0, 3};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out = (char *)1;
        ts_error err;
        char needle[32];
        snprintf(needle, sizeof needle, "(byte %d)", at[i]);
        ts_ck_fails(ts_t5_clean(bad[i], strlen(bad[i]), &out, NULL, &err), err, TS_ERR_INVALID,
                    "UTF-8");
        ck_assert_msg(strstr(err.msg, needle), "%s: no \"%s\"", err.msg, needle);
        ck_assert(out == NULL);
    }
}
END_TEST

START_TEST(test_input_limit)
{
    size_t n = TS_T5_CLEAN_MAX_INPUT + 1;
    char *s = malloc(n);
    memset(s, 'a', n);
    char *out = NULL;
    ts_error err;
    ts_ck_fails(ts_t5_clean(s, n, &out, NULL, &err), err, TS_ERR_INVALID, "at most");
    ck_assert(out == NULL);
    out = clean_ok(s, n - 1);
    ck_assert_uint_eq(strlen(out), n - 1);
    free(out);
    free(s);
    /* NUL bytes are characters; ftfy's control-character removal drops them */
    out = clean_ok("a\0b", 3);
    ck_assert_str_eq(out, "ab");
    free(out);
}
END_TEST

/* ---- hostile inputs ------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A prompt of about `bytes` bytes made by repeating unit. */
static char *repeat(const char *unit, size_t bytes, size_t *len)
{
    size_t ul = strlen(unit), reps = bytes / ul;
    char *s = malloc(reps * ul + 1);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + i * ul, unit, ul);
    s[reps * ul] = '\0';
    *len = reps * ul;
    return s;
}

/* Inputs that make a naive matcher (or CPython's html.parser) quadratic. Each must
 * take well under a second at 100 KB; a quadratic one would take minutes. */
static const char *const k_hostile[] = {
    "<a b ",              /* unterminated tags: html.parser rescans to the end each time */
    "<a b='x ",           /* unclosed quotes */
    "<a b==\"",           /* the value's backtracking */
    "</a ",               /* end tags without '>' */
    "<!-- ",              /* comments without an end */
    "<![cdata[",          /* marked sections without an end */
    "&#x",                /* references that never finish */
    "&ab",
    "a.a.",               /* URL names: the last dot is searched once per run */
    "a.com@",
    "x.comx/",
    "a-",                 /* many '-' */
    "1.",                 /* IPs, dimensions */
    "1x",
    "1",                  /* one long number: the IP matcher scanned it from every digit */
    "ab1",                /* codes */
    "a",                  /* one long word */
    " ",                  /* one long space run */
    " .",
    "..",
    "#1",
    "@a",
    "%e2%82",             /* percent escapes that never complete */
    "<script>",
    "\xef\xbc\x86" "amp;", /* full-width '&': ftfy makes it '&' */
    "www:/",
    "http://",
};

START_TEST(test_hostile_inputs)
{
    size_t len;
    char *s = repeat(k_hostile[_i], 100 * 1024, &len);
    double t0 = now_s();
    char *out = clean_ok(s, len);
    double dt = now_s() - t0;
    ck_assert_msg(dt < 5.0, "\"%s\" x %zu: %.2f s", k_hostile[_i], len / strlen(k_hostile[_i]),
                  dt);
    free(out);
    free(s);
}
END_TEST

/* "＆" + "amp;" x N: ftfy (step 9) resolves one nested level per pass. Short chains still
 * resolve completely (then step 8 of round two drops the '&'); one as long as the input
 * limit allows stops within ftfy's work budget instead of taking minutes (a fuzzer's
 * find: quadratic in N). */
START_TEST(test_nested_reference_chain)
{
    size_t levels[] = {249, (TS_T5_CLEAN_MAX_INPUT - 3) / 4};
    for (int k = 0; k < 2; k++) {
        size_t len = 3 + 4 * levels[k];
        char *s = malloc(len + 1);
        memcpy(s, "\xef\xbc\x86", 3);
        for (size_t i = 0; i < levels[k]; i++)
            memcpy(s + 3 + 4 * i, "amp;", 4);
        s[len] = '\0';
        double t0 = now_s();
        char *out = clean_ok(s, len);
        double dt = now_s() - t0;
        ck_assert_msg(dt < 10.0, "%zu levels: %.2f s", levels[k], dt);
        if (k == 0)
            ck_assert_str_eq(out, "");
        free(out);
        free(s);
    }
}
END_TEST

/* Four times the length must take about four times as long, not sixteen. */
START_TEST(test_linear_time)
{
    static const char *const units[] = {"<a b ", "a.a.", "&#x", "<!-- ", "1"};
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        double dt[2];
        for (int k = 0; k < 2; k++) {
            size_t len;
            char *s = repeat(units[u], (size_t)(32 << (2 * k)) * 1024, &len);
            double best = 1e9;
            for (int rep = 0; rep < 3; rep++) {
                double t0 = now_s();
                free(clean_ok(s, len));
                double t = now_s() - t0;
                best = t < best ? t : best;
            }
            dt[k] = best;
            free(s);
        }
        ck_assert_msg(dt[1] < 8 * dt[0] + 0.02, "\"%s\": 32 KB %.3f s, 128 KB %.3f s", units[u],
                      dt[0], dt[1]);
    }
}
END_TEST

/* ---- concurrency -------------------------------------------------------------------- */

static const char *const k_thread_prompts[] = {
    "A <b>red</b> apple on https://x.com", "jc6640 3x4 FREE shipping", "caf%C3%A9 @bob",
    "<pre>  </pre>&lt;x&gt;", "",
};
enum { N_PROMPTS = 5, N_THREADS = 4, N_ROUNDS = 200 };

typedef struct {
    char **want;
    int failures;
} thread_arg;

static void *clean_many(void *p)
{
    thread_arg *a = p;
    for (int r = 0; r < N_ROUNDS; r++) {
        int k = r % N_PROMPTS;
        char *out = NULL;
        ts_error err;
        if (ts_t5_clean(k_thread_prompts[k], strlen(k_thread_prompts[k]), &out, NULL, &err) !=
                TS_OK ||
            strcmp(out, a->want[k]) != 0)
            a->failures++;
        free(out);
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    char *want[N_PROMPTS];
    for (int k = 0; k < N_PROMPTS; k++)
        want[k] = clean_ok(k_thread_prompts[k], strlen(k_thread_prompts[k]));
    pthread_t th[N_THREADS];
    thread_arg args[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        args[i] = (thread_arg){want, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, clean_many, &args[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].failures, 0);
    }
    for (int k = 0; k < N_PROMPTS; k++)
        free(want[k]);
}
END_TEST

static Suite *t5_clean_suite(void)
{
    Suite *s = suite_create("t5_clean");
    TCase *tc = tcase_create("golden");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_golden);
    tcase_add_test(tc, test_examples);
    tcase_add_test(tc, test_one_round);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_input_limit);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile");
    tcase_set_timeout(tc, 120);   /* sanitizer builds are several times slower */
    tcase_add_loop_test(tc, test_hostile_inputs, 0,
                        (int)(sizeof k_hostile / sizeof k_hostile[0]));
    tcase_add_test(tc, test_linear_time);
    tcase_add_test(tc, test_nested_reference_chain);
    tcase_add_test(tc, test_concurrent);
    suite_add_tcase(s, tc);
    return s;
}

/* ---- modes for the Python test --------------------------------------------------------- */

enum { WHOLE, ONE_ROUND, HTML_ONLY };

static int filter_mode(int mode)
{
    size_t cap = 1 << 16;
    char *line = malloc(cap);
    ssize_t got;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        size_t hl = (size_t)got;
        while (hl > 0 && (line[hl - 1] == '\n' || line[hl - 1] == '\r'))
            hl--;
        size_t len;
        char *prompt = unhex(line, hl, &len);
        char *out = NULL;
        size_t out_len = 0;
        int rc;
        if (mode == WHOLE) {
            ts_error err;
            rc = ts_t5_clean(prompt, len, &out, &out_len, &err);
        } else {
            ts_cpbuf in = {0}, cl = {0};
            size_t bad;
            rc = ts_utf8_decode(prompt, len, &in, &bad) ? TS_ERR_INVALID : TS_OK;
            if (rc == TS_OK)
                rc = (mode == ONE_ROUND ? ts_t5_clean_caption(&in, &cl)
                                        : ts_t5_html_text(&in, &cl))
                         ? TS_ERR_NOMEM
                         : TS_OK;
            if (rc == TS_OK) {
                out = malloc(4 * cl.n + 1);
                for (size_t i = 0; i < cl.n; i++) {
                    uint32_t c = cl.v[i] >= 0xD800 && cl.v[i] <= 0xDFFF ? 0xFFFD : cl.v[i];
                    out_len += (size_t)ts_utf8_encode(c, (unsigned char *)out + out_len);
                }
            }
            ts_cpbuf_free(&in);
            ts_cpbuf_free(&cl);
        }
        if (rc != TS_OK) {
            printf("err %d\n", rc);
        } else {
            fputs("ok ", stdout);
            for (size_t i = 0; i < out_len; i++)
                printf("%02x", (unsigned char)out[i]);
            putchar('\n');
        }
        free(out);
        free(prompt);
    }
    free(line);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* Prints "<class> <lo> <hi>" for each range of code points in \d (d), \w (w), \s (s). */
static int classes_mode(void)
{
    static const struct { const char *name; int bit; } k[] = {
        {"d", TS_T5_RE_DIGIT}, {"w", TS_T5_RE_WORD}, {"s", TS_T5_RE_SPACE}};
    for (int i = 0; i < 3; i++) {
        long lo = -1;
        for (uint32_t c = 0; c <= 0x110000; c++) {
            int in = c < 0x110000 && (ts_t5_re_class(c) & k[i].bit);
            if (in && lo < 0)
                lo = (long)c;
            if (!in && lo >= 0) {
                printf("%s %ld %ld\n", k[i].name, lo, (long)c - 1);
                lo = -1;
            }
        }
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--filter") == 0)
        return filter_mode(WHOLE);
    if (argc > 1 && strcmp(argv[1], "--filter-round") == 0)
        return filter_mode(ONE_ROUND);
    if (argc > 1 && strcmp(argv[1], "--filter-html") == 0)
        return filter_mode(HTML_ONLY);
    if (argc > 1 && strcmp(argv[1], "--classes") == 0)
        return classes_mode();
    Suite *suites[] = {t5_clean_suite()};
    return ts_ck_run(suites, 1);
}
