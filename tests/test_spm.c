/* test_spm.c - the sentencepiece unigram tokenizer (engine/text/spm.h) against goldens
 * from the sentencepiece library (tests/reference/make_spm_fixture.py), T5's wrapper,
 * hand-made charsmaps, the loader's refusals, every truncation and random byte flips
 * of the fixture models, and concurrent use.
 *
 * With arguments it is the tool tests/reference/test_spm.py drives to compare with the
 * library live:
 *     test_spm --tokenize MODEL [MAX_LEN]
 * prints "info VOCAB UNK EOS PAD" (or "! MESSAGE" when MODEL is refused), then for
 * every stdin line (a prompt as hex of its bytes) one line
 *     NORMALIZED-HEX <tab> IDS [<tab> T5-IDS <tab> MASK <tab> N-VALID]
 * with the T5 columns when MAX_LEN is given ("-" for a prompt holding a NUL byte), or
 * "! MESSAGE" when encoding fails. */
#include "tests/check_util.h"

#include <pthread.h>

#include "engine/text/spm.h"

/* Under AddressSanitizer, the truncation test poisons the bytes past each cut, so that
 * a read beyond the given length is caught without copying every prefix. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) __asan_poison_memory_region((p), (n))
#define UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define FIXTURES "tests/fixtures/spm_tiny"
static const char *const k_models[] = {"spiece.model", "bytes.model", "suffix.model",
                                       "edge.model"};
#define N_MODELS 4

static char g_tmpdir[512];

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes hex into a malloc'd buffer (NUL-terminated); -1 when hex is malformed. */
static long unhex(const char *hex, size_t n, char **out)
{
    if (n % 2)
        return -1;
    char *b = malloc(n / 2 + 1);
    if (!b)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        int hi = hexval((unsigned char)hex[i]), lo = hexval((unsigned char)hex[i + 1]);
        if (hi < 0 || lo < 0) {
            free(b);
            return -1;
        }
        b[i / 2] = (char)(hi * 16 + lo);
    }
    b[n / 2] = '\0';
    *out = b;
    return (long)(n / 2);
}

static ts_spm *load_fixture(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
    ts_spm *m = NULL;
    ts_error err;
    ts_ck_ok(ts_spm_load(path, &m, &err), err);
    return m;
}

static ts_spm *load_bytes(const void *data, size_t n)
{
    ts_spm *m = NULL;
    ts_error err;
    ts_ck_ok(ts_spm_load_mem(data, n, &m, &err), err);
    return m;
}

static int encode(const ts_spm *m, const char *s, size_t n, int32_t *out, int cap)
{
    int32_t *ids;
    int k;
    ts_error err;
    ts_ck_ok(ts_spm_encode(m, s, n, &ids, &k, &err), err);
    ck_assert_msg(k <= cap, "%d ids, room for %d", k, cap);
    memcpy(out, ids, (size_t)k * sizeof *ids);
    free(ids);
    return k;
}

static void expect_ids(const ts_spm *m, const char *s, const int32_t *want, int n_want)
{
    int32_t got[256];
    int n = encode(m, s, strlen(s), got, 256);
    ck_assert_msg(n == n_want, "\"%s\": %d ids, expected %d", s, n, n_want);
    for (int i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "\"%s\": id %d is %d, expected %d", s, i, (int)got[i],
                      (int)want[i]);
}

static void expect_normalized_n(const ts_spm *m, const char *s, size_t n, const char *want,
                                size_t want_len)
{
    char *out;
    size_t len;
    ts_error err;
    ts_ck_ok(ts_spm_normalize(m, s, n, &out, &len, &err), err);
    ck_assert_msg(len == want_len && memcmp(out, want, len) == 0,
                  "normalize(\"%.*s\") = \"%.*s\" (%zu bytes), expected \"%.*s\" (%zu)", (int)n,
                  s, (int)len, out, len, (int)want_len, want, want_len);
    ck_assert(out[len] == '\0');
    free(out);
}

/* want is a literal: its length is its size (it may hold NUL bytes) */
#define expect_normalized(m, s, n, want) expect_normalized_n(m, s, n, want, sizeof(want) - 1)

/* ---- a protobuf writer for hand-made models -------------------------------------- */

typedef struct pbw {
    uint8_t *p;
    size_t n, cap;
} pbw;

static void w_raw(pbw *w, const void *data, size_t n)
{
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 64;
        w->p = realloc(w->p, w->cap);
        ck_assert(w->p != NULL);
    }
    if (n)
        memcpy(w->p + w->n, data, n);
    w->n += n;
}

static void w_varint(pbw *w, uint64_t v)
{
    uint8_t b[10];
    int n = 0;
    do {
        b[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            b[n] |= 0x80;
        n++;
    } while (v);
    w_raw(w, b, (size_t)n);
}

static void w_key(pbw *w, int field, int wire)
{
    w_varint(w, (uint64_t)field << 3 | (uint64_t)wire);
}
static void w_int(pbw *w, int field, int64_t v)
{
    w_key(w, field, 0);
    w_varint(w, (uint64_t)v);
}
static void w_len(pbw *w, int field, const void *data, size_t n)
{
    w_key(w, field, 2);
    w_varint(w, n);
    w_raw(w, data, n);
}
static void w_str(pbw *w, int field, const char *s) { w_len(w, field, s, strlen(s)); }
static void w_f32(pbw *w, int field, float x)
{
    uint8_t b[4];
    uint32_t u;
    memcpy(&u, &x, 4);
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(u >> (8 * i));
    w_key(w, field, 5);
    w_raw(w, b, 4);
}
static void w_msg(pbw *w, int field, pbw *sub)
{
    w_len(w, field, sub->p, sub->n);
    free(sub->p);
    *sub = (pbw){0};
}

enum { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER = 4, UNUSED = 5, BYTE = 6 };

static void w_piece(pbw *w, const char *s, float score, int type)
{
    pbw p = {0};
    w_str(&p, 1, s);
    w_f32(&p, 2, score);
    w_int(&p, 3, type);
    w_msg(w, 1, &p);
}

/* <unk> "▁" "a" "b" "ab" "c", a trainer_spec (model_type UNIGRAM plus `trainer`'s
 * bytes) and a normalizer_spec (identity plus `norm`'s bytes). */
static void base_model(pbw *w, const pbw *trainer, const pbw *norm)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "\xe2\x96\x81", -1, NORMAL);
    w_piece(w, "a", -2, NORMAL);
    w_piece(w, "b", -2, NORMAL);
    w_piece(w, "ab", -3, NORMAL);
    w_piece(w, "c", -2, NORMAL);
    pbw t = {0}, n = {0};
    w_int(&t, 3, 1);
    if (trainer)
        w_raw(&t, trainer->p, trainer->n);
    w_str(&n, 1, "identity");
    if (norm)
        w_raw(&n, norm->p, norm->n);
    w_msg(w, 2, &t);
    w_msg(w, 3, &n);
}

/* A hand-made Darts-clone trie: "a" -> "b", "ab" -> "" (deleted), "xy" -> "Z". Units
 * that are no node's child hold a leaf marker, whose label never matches a byte. */
#define TRIE_UNITS 1024
static void trie_units(uint32_t u[TRIE_UNITS])
{
    for (int i = 0; i < TRIE_UNITS; i++)
        u[i] = 0x80000000u;
    u[0] = 256u << 10;   /* root: children at 256 ^ byte */
#define NODE(pos, base, label, leaf) \
    u[pos] = (uint32_t)(((pos) ^ (base)) << 10) | ((leaf) ? 0x100u : 0u) | (label)
    NODE(256 ^ 'a', 512, 'a', 1);
    u[512] = 0x80000000u | 0;   /* "b" */
    NODE(512 ^ 'b', 896, 'b', 1);
    u[896] = 0x80000000u | 4;   /* "" */
    NODE(256 ^ 'x', 768, 'x', 0);
    NODE(768 ^ 'y', 640, 'y', 1);
    u[640] = 0x80000000u | 2;   /* "Z" */
#undef NODE
}

static void charsmap_blob(pbw *blob, const uint32_t *u, size_t n_units, uint32_t size_field,
                          const void *pool, size_t pool_len)
{
    uint8_t h[4] = {(uint8_t)size_field, (uint8_t)(size_field >> 8),
                    (uint8_t)(size_field >> 16), (uint8_t)(size_field >> 24)};
    w_raw(blob, h, 4);
    for (size_t i = 0; i < n_units; i++) {
        uint8_t b[4] = {(uint8_t)u[i], (uint8_t)(u[i] >> 8), (uint8_t)(u[i] >> 16),
                        (uint8_t)(u[i] >> 24)};
        w_raw(blob, b, 4);
    }
    w_raw(blob, pool, pool_len);
}

/* base_model with the hand-made charsmap (optionally altered by `tweak`). */
static void charsmap_model(pbw *w, void (*tweak)(uint32_t *), const void *pool,
                           size_t pool_len)
{
    uint32_t u[TRIE_UNITS];
    trie_units(u);
    if (tweak)
        tweak(u);
    pbw blob = {0}, norm = {0};
    charsmap_blob(&blob, u, TRIE_UNITS, TRIE_UNITS * 4, pool, pool_len);
    w_len(&norm, 2, blob.p, blob.n);
    free(blob.p);
    w_piece(w, "Z", -1, NORMAL);
    w_piece(w, "x", -1, NORMAL);
    base_model(w, NULL, &norm);
    free(norm.p);
}

/* ---- goldens ------------------------------------------------------------------------ */

START_TEST(test_golden)
{
    ts_spm *models[N_MODELS];
    for (int i = 0; i < N_MODELS; i++)
        models[i] = load_fixture(k_models[i]);
    size_t len;
    char *text = ts_ck_read_file(FIXTURES "/golden.tsv", &len);
    int rows = 0, line_no = 0, per_model[N_MODELS] = {0};
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line_no++;
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *field[4];
        int nf = 0;
        for (char *p = line; nf < 4;) {
            field[nf++] = p;
            p = strchr(p, '\t');
            if (!p)
                break;
            *p++ = '\0';
        }
        ck_assert_msg(nf == 4, "golden.tsv line %d: %d fields", line_no, nf);
        int which = -1;
        for (int i = 0; i < N_MODELS; i++)
            if (strcmp(field[0], k_models[i]) == 0)
                which = i;
        ck_assert_msg(which >= 0, "golden.tsv line %d: unknown model %s", line_no, field[0]);
        char *prompt;
        long plen = unhex(field[1], strlen(field[1]), &prompt);
        ck_assert_msg(plen >= 0, "golden.tsv line %d: bad hex", line_no);
        int32_t want[4096], *got;
        int n_want = 0, n_got;
        for (char *p = field[2], *end; *p; p = end) {
            long v = strtol(p, &end, 10);
            ck_assert(end != p && n_want < 4096);
            want[n_want++] = (int32_t)v;
        }
        ts_error err;
        ts_ck_ok(ts_spm_encode(models[which], prompt, (size_t)plen, &got, &n_got, &err), err);
        ck_assert_msg(n_got == n_want, "golden.tsv line %d (%s, %s): %d ids, expected %d",
                      line_no, field[0], field[3], n_got, n_want);
        for (int i = 0; i < n_got; i++)
            ck_assert_msg(got[i] == want[i], "golden.tsv line %d (%s, %s): id %d is %d, "
                          "expected %d", line_no, field[0], field[3], i, (int)got[i],
                          (int)want[i]);
        free(got);
        free(prompt);
        per_model[which]++;
        rows++;
    }
    for (int i = 0; i < N_MODELS; i++)
        ck_assert_msg(per_model[i] >= 30, "only %d golden rows for %s", per_model[i],
                      k_models[i]);
    ck_assert(rows >= 4 * 30);
    free(text);
    for (int i = 0; i < N_MODELS; i++)
        ts_spm_free(models[i]);
}
END_TEST

START_TEST(test_accessors)
{
    ts_spm *m = load_fixture("spiece.model");   /* laid out as T5's */
    ck_assert_int_eq(ts_spm_vocab_size(m), 800);
    ck_assert_int_eq(ts_spm_pad_id(m), 0);
    ck_assert_int_eq(ts_spm_eos_id(m), 1);
    ck_assert_int_eq(ts_spm_unk_id(m), 2);
    size_t len;
    const char *p = ts_spm_piece(m, 1, &len);
    ck_assert(p && len == 4 && memcmp(p, "</s>", 4) == 0);
    ck_assert(ts_spm_piece(m, 800, &len) == NULL && ts_spm_piece(m, -1, &len) == NULL);
    ts_spm_free(m);

    m = load_fixture("bytes.model");   /* trainer defaults: unk 0, bos 1, eos 2, no pad */
    ck_assert_int_eq(ts_spm_unk_id(m), 0);
    ck_assert_int_eq(ts_spm_eos_id(m), 2);
    ck_assert_int_eq(ts_spm_pad_id(m), -1);
    ts_spm_free(m);

    /* edge.model: "<pad>" is both a CONTROL (id 1) and a NORMAL piece; eos is id 2 */
    m = load_fixture("edge.model");
    ck_assert_int_eq(ts_spm_pad_id(m), 1);
    ck_assert_int_eq(ts_spm_eos_id(m), 2);
    ts_spm_free(m);
}
END_TEST

/* ---- T5 ------------------------------------------------------------------------------ */

static void check_t5(const ts_spm *m, const char *prompt, int max_len)
{
    int32_t enc[8192], ids[512];
    uint8_t mask[512];
    int n = encode(m, prompt, strlen(prompt), enc, 8192), n_valid = -1;
    ts_error err;
    ts_ck_ok(ts_t5_tokenize(m, prompt, max_len, ids, mask, &n_valid, &err), err);
    int keep = n < max_len - 1 ? n : max_len - 1;
    ck_assert_int_eq(n_valid, keep + 1);
    for (int i = 0; i < max_len; i++) {
        int32_t want = i < keep ? enc[i] : i == keep ? 1 : 0;
        ck_assert_msg(ids[i] == want, "max_len %d, \"%.30s\": id %d is %d, expected %d",
                      max_len, prompt, i, (int)ids[i], (int)want);
        ck_assert_int_eq(mask[i], i <= keep);
    }
}

START_TEST(test_t5)
{
    ts_spm *m = load_fixture("spiece.model");
    int32_t ids[TS_T5_LLAMAGEN_MAX_LEN];
    uint8_t mask[TS_T5_LLAMAGEN_MAX_LEN];
    int n_valid;
    ts_error err;
    /* the empty prompt is eos alone */
    ts_ck_ok(ts_t5_tokenize(m, "", TS_T5_LLAMAGEN_MAX_LEN, ids, mask, &n_valid, &err), err);
    ck_assert_int_eq(n_valid, 1);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(mask[0], 1);
    for (int i = 1; i < TS_T5_LLAMAGEN_MAX_LEN; i++)
        ck_assert(ids[i] == 0 && mask[i] == 0);
    /* ordinary prompts: tokens, eos, padding */
    check_t5(m, "a photo of a cat", TS_T5_LLAMAGEN_MAX_LEN);
    check_t5(m, "  Café au lait, 3 croissants & 2 crêpes!  ", TS_T5_LLAMAGEN_MAX_LEN);
    /* a long prompt keeps 119 tokens + eos, no padding */
    char long_prompt[4096] = "";
    for (int i = 0; i < 30; i++)
        strcat(long_prompt, "a golden dragon over the misty mountain, ");
    int32_t enc[2048];
    int n = encode(m, long_prompt, strlen(long_prompt), enc, 2048);
    ck_assert_int_gt(n, 2 * TS_T5_LLAMAGEN_MAX_LEN);
    check_t5(m, long_prompt, TS_T5_LLAMAGEN_MAX_LEN);
    ts_ck_ok(ts_t5_tokenize(m, long_prompt, TS_T5_LLAMAGEN_MAX_LEN, ids, mask, &n_valid, &err),
             err);
    ck_assert_int_eq(n_valid, TS_T5_LLAMAGEN_MAX_LEN);
    ck_assert_int_eq(ids[TS_T5_LLAMAGEN_MAX_LEN - 1], 1);
    ck_assert_int_eq(ids[TS_T5_LLAMAGEN_MAX_LEN - 2], enc[TS_T5_LLAMAGEN_MAX_LEN - 2]);
    /* exactly max_len - 1 tokens fit with eos; one more is cut */
    for (int cut = 1; cut < 60; cut++) {
        char buf[4096];
        memcpy(buf, long_prompt, (size_t)cut * 20);
        buf[cut * 20] = '\0';
        for (int max_len = 1; max_len <= 64; max_len += 9)
            check_t5(m, buf, max_len);
    }
    /* max_len 1 is eos alone, even for a long prompt */
    ts_ck_ok(ts_t5_tokenize(m, long_prompt, 1, ids, mask, &n_valid, &err), err);
    ck_assert(n_valid == 1 && ids[0] == 1 && mask[0] == 1);
    ts_ck_fails(ts_t5_tokenize(m, "cat", 0, ids, mask, &n_valid, &err), err, TS_ERR_INVALID,
                "max_len");
    ts_spm_free(m);

    m = load_fixture("bytes.model");   /* no <pad> */
    ids[0] = 12345;
    ts_ck_fails(ts_t5_tokenize(m, "cat", 8, ids, mask, &n_valid, &err), err,
                TS_ERR_UNSUPPORTED, "pad");
    ck_assert_int_eq(ids[0], 12345);
    ts_spm_free(m);
}
END_TEST

/* ---- semantics on hand-made models ---------------------------------------------------- */

START_TEST(test_normalize_spiece)
{
    /* nmt_nfkc, checked against the library (test_spm.py compares every prompt live) */
    ts_spm *m = load_fixture("spiece.model");
    expect_normalized(m, "", 0, "");
    expect_normalized(m, "   \t\n ", 6, "");
    expect_normalized(m, "  Hello   World  ", 17, "\xe2\x96\x81Hello\xe2\x96\x81World");
    expect_normalized(m, "\xef\xac\x81ne", 5, "\xe2\x96\x81" "fine");     /* ligature fi */
    expect_normalized(m, "\xef\xbc\xa1\xef\xbc\xa2", 6, "\xe2\x96\x81" "AB"); /* full width */
    expect_normalized(m, "a\tb\nc", 5, "\xe2\x96\x81" "a\xe2\x96\x81" "b\xe2\x96\x81" "c");
    expect_normalized(m, "\xff" "a", 2, "\xe2\x96\x81\xef\xbf\xbd" "a");   /* invalid byte */
    expect_normalized(m, "x\xe2\x96\x81\xe2\x96\x81", 7, "\xe2\x96\x81x"); /* trailing ▁ */
    expect_normalized(m, "a\0b", 3, "\xe2\x96\x81" "a\0b");
    ts_spm_free(m);
}
END_TEST

START_TEST(test_charsmap_trie)
{
    pbw w = {0};
    charsmap_model(&w, NULL, "b\0Z\0", 5);
    ts_spm *m = load_bytes(w.p, w.n);
    free(w.p);
    /* longest match: "ab" is deleted, "a" becomes "b"; the space after a deletion still
     * counts as leading */
    expect_normalized(m, "ab a xy x", 9, "\xe2\x96\x81" "b\xe2\x96\x81Z\xe2\x96\x81x");
    expect_normalized(m, "aab", 3, "\xe2\x96\x81" "b");
    expect_normalized(m, "xxy", 3, "\xe2\x96\x81xZ");
    expect_normalized(m, "  ab  ab x", 10, "\xe2\x96\x81x");
    expect_normalized(m, "a\0b", 3, "\xe2\x96\x81" "b\0b");
    /* ids as the library gives them: Z 0, x 1, <unk> 2, ▁ 3, b 5 */
    expect_ids(m, "ab a xy x", (const int32_t[]){3, 5, 3, 0, 3, 1}, 6);
    ts_spm_free(m);
}
END_TEST

START_TEST(test_flags)
{
    struct {
        int field, value;
        const char *in, *want;
    } cases[] = {
        {3, 0, "  a  b ", "a\xe2\x96\x81" "b"},                   /* no dummy prefix */
        {4, 0, "  a  b ", "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81" "a\xe2\x96\x81\xe2\x96\x81"
                          "b\xe2\x96\x81"},                      /* keep every space */
        {5, 0, "  a  b ", " a b"},                                /* no escaping */
        {24, 1, "  a  b ", "a\xe2\x96\x81" "b\xe2\x96\x81"},       /* suffix */
        {24, 1, "   ", ""},
        {4, 0, "", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pbw w = {0}, extra = {0};
        w_int(&extra, cases[i].field, cases[i].value);
        base_model(&w, cases[i].field == 24 ? &extra : NULL, cases[i].field == 24 ? NULL : &extra);
        ts_spm *m = load_bytes(w.p, w.n);
        expect_normalized_n(m, cases[i].in, strlen(cases[i].in), cases[i].want,
                            strlen(cases[i].want));
        ts_spm_free(m);
        free(w.p);
        free(extra.p);
    }
}
END_TEST

START_TEST(test_segmentation)
{
    /* edge.model's cases (the goldens hold the library's answers for its prompts; these
     * are the reasons): 0 <unk>, 3 ▁, 4 a, 5 b, 6 ab, 7 c, 8 d, 9 cd, 13 x (UNUSED),
     * 15 <sep>, 16 bc (USER_DEFINED); NORMAL scores from -40 to 10.5 */
    ts_spm *m = load_fixture("edge.model");
    /* "ab" (-2) ties "a" + "b" (-2): the piece found first, from the earlier start, wins */
    expect_ids(m, "ab", (const int32_t[]){3, 6}, 2);
    /* c + d = 1 + 2^-30 beats cd = 1 only in double precision, as the library sums */
    expect_ids(m, "cd", (const int32_t[]){3, 7, 8}, 3);
    /* UNUSED "x" never matches: one unknown for a run of unknown characters */
    expect_ids(m, "xxqx", (const int32_t[]){3, 0}, 2);
    /* USER_DEFINED "bc" (2 * max_score - 0.1 = 20.9) beats "b" + "c" (-1 + 1) */
    expect_ids(m, "bc", (const int32_t[]){3, 16}, 2);
    expect_ids(m, "<sep>", (const int32_t[]){3, 15}, 2);
    /* the unknown scores min (-40) - 10: qz (26) = -39 beats unk + z (24) = -39.5;
     * unk + y (25) = -39.5 beats qy (27) = -40 */
    expect_ids(m, "qz", (const int32_t[]){3, 26}, 2);
    expect_ids(m, "qy", (const int32_t[]){3, 0, 25}, 3);
    /* USER_DEFINED "gh" (30): 2 * 10.5 - 0.1 = 20.9 against g (28) + h (29) = 20.85 */
    expect_ids(m, "gh", (const int32_t[]){3, 30}, 2);
    ts_spm_free(m);

    /* byte fallback: an unknown character becomes its UTF-8 bytes */
    m = load_fixture("bytes.model");
    int32_t got[64];
    int n = encode(m, "\xe2\x98\x83", 3, got, 64);   /* U+2603, not in the vocabulary */
    ck_assert_int_ge(n, 3);
    size_t len;
    for (int i = 0; i < 3; i++) {
        char want[8];
        snprintf(want, sizeof want, "<0x%02X>", (unsigned)(uint8_t)"\xe2\x98\x83"[i]);
        const char *p = ts_spm_piece(m, got[n - 3 + i], &len);
        ck_assert_msg(p && len == 6 && memcmp(p, want, 6) == 0, "byte %d: %.*s", i, (int)len,
                      p ? p : "");
    }
    ts_spm_free(m);
}
END_TEST

/* ---- refusals ------------------------------------------------------------------------- */

typedef struct bad_model {
    const char *name;
    void (*make)(pbw *w);
    int code;
    const char *needle;
} bad_model;

static void mk_empty(pbw *w) { (void)w; }
static void mk_trunc_tag(pbw *w) { w_raw(w, "\x80", 1); }
static void mk_overlong(pbw *w) { w_raw(w, "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11); }
static void mk_field0(pbw *w) { w_raw(w, "\x00\x01", 2); }
static void mk_group(pbw *w) { w_raw(w, "\x0b", 1); }
static void mk_wire7(pbw *w) { w_raw(w, "\x0f", 1); }
static void mk_past_end(pbw *w) { w_raw(w, "\x0a\x05" "ab", 4); }
static void mk_trunc_len(pbw *w) { w_raw(w, "\x0a\x85", 2); }
static void mk_trunc_fixed(pbw *w) { w_raw(w, "\x25\x01\x02", 3); }
static void mk_piece_varint(pbw *w) { w_int(w, 1, 5); }
static void mk_score_varint(pbw *w)
{
    pbw p = {0};
    w_str(&p, 1, "<unk>");
    w_int(&p, 2, 1);
    w_msg(w, 1, &p);
}
static void mk_empty_piece(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "", 0, NORMAL);
}
static void mk_bad_type(pbw *w) { w_piece(w, "<unk>", 0, 7); }
static void mk_nan(pbw *w) { w_piece(w, "<unk>", NAN, UNKNOWN); }
static void mk_inf(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "a", -INFINITY, NORMAL);
}
static void mk_bpe(pbw *w)
{
    pbw t = {0};
    w_int(&t, 3, 2);
    base_model(w, &t, NULL);
    free(t.p);
}
static void mk_model_type9(pbw *w)
{
    pbw t = {0};
    w_int(&t, 3, 9);
    base_model(w, &t, NULL);
    free(t.p);
}
static void mk_no_unk(pbw *w) { w_piece(w, "a", -1, NORMAL); }
static void mk_only_reserved(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "</s>", 0, CONTROL);
}
static void mk_two_unk(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "<unk2>", 0, UNKNOWN);
    w_piece(w, "a", 0, NORMAL);
}
static void mk_duplicate(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "abc", -1, NORMAL);
    w_piece(w, "abc", -2, USER);
}
static void mk_dup_reserved(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "<unk>", 0, CONTROL);
}
static void mk_byte_no_fallback(pbw *w)
{
    w_piece(w, "<unk>", 0, UNKNOWN);
    w_piece(w, "<0x41>", 0, BYTE);
}
static void mk_fallback_missing(pbw *w)
{
    pbw t = {0};
    w_int(&t, 35, 1);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        if (b != 0x7f)
            w_piece(w, s, 0, BYTE);
    }
    base_model(w, &t, NULL);
    free(t.p);
}
static void mk_byte_misspelled(pbw *w)
{
    pbw t = {0};
    w_int(&t, 35, 1);
    w_piece(w, "<0x4g>", 0, BYTE);
    base_model(w, &t, NULL);
    free(t.p);
}
static void mk_trainer_wire(pbw *w)
{
    pbw t = {0};
    w_str(&t, 35, "yes");
    base_model(w, &t, NULL);
    free(t.p);
}
static void mk_cm(pbw *w, const void *blob, size_t n)
{
    pbw norm = {0};
    w_len(&norm, 2, blob, n);
    base_model(w, NULL, &norm);
    free(norm.p);
}
static void mk_cm_short(pbw *w) { mk_cm(w, "\x04\x00\x00\x00", 4); }
static void mk_cm_size_odd(pbw *w) { mk_cm(w, "\x05\x00\x00\x00" "abcdefgh", 12); }
static void mk_cm_size_big(pbw *w) { mk_cm(w, "\x08\x00\x00\x00" "abcd", 8); }
static void mk_cm_size_zero(pbw *w) { mk_cm(w, "\x00\x00\x00\x00" "ab", 6); }
static void mk_cm_pool_nul(pbw *w) { charsmap_model(w, NULL, "b\0Z", 3); }
static void tw_value(uint32_t *u) { u[640] = 0x80000000u | 100; }
static void mk_cm_value(pbw *w) { charsmap_model(w, tw_value, "b\0Z\0", 5); }
static void tw_leaf_outside(uint32_t *u)
{
    u[256 ^ 'x'] = (uint32_t)(((256 ^ 'x') ^ 4096) << 10) | 0x100u | 'x';
}
static void mk_cm_leaf_outside(pbw *w) { charsmap_model(w, tw_leaf_outside, "b\0Z\0", 5); }
/* The root's base 0: byte 0 leads to unit 0 itself, whose leaf (value 256) is past the
 * empty pool (a fuzzer's find: the check skipped unit 0 as a child). */
static void mk_cm_root_child(pbw *w) { mk_cm(w, "\x04\x00\x00\x00" "\x00\x01\x00\x00", 8); }

static const bad_model k_bad_models[] = {
    {"empty file", mk_empty, TS_ERR_FORMAT, "no piece is of type UNKNOWN"},
    {"truncated tag", mk_trunc_tag, TS_ERR_FORMAT, "truncated field tag at byte 0"},
    {"overlong varint", mk_overlong, TS_ERR_FORMAT, "overlong varint"},
    {"field number 0", mk_field0, TS_ERR_FORMAT, "invalid field number 0"},
    {"group", mk_group, TS_ERR_FORMAT, "unsupported group wire type 3"},
    {"wire type 7", mk_wire7, TS_ERR_FORMAT, "invalid wire type 7"},
    {"length past the end", mk_past_end, TS_ERR_FORMAT, "length 5 runs past the end"},
    {"truncated length", mk_trunc_len, TS_ERR_FORMAT, "truncated length"},
    {"truncated fixed32", mk_trunc_fixed, TS_ERR_FORMAT, "truncated fixed32"},
    {"pieces as varint", mk_piece_varint, TS_ERR_FORMAT, "ModelProto.pieces"},
    {"score as varint", mk_score_varint, TS_ERR_FORMAT, "pieces[0].score"},
    {"empty piece", mk_empty_piece, TS_ERR_FORMAT, "piece 1 is empty"},
    {"unknown type", mk_bad_type, TS_ERR_FORMAT, "piece 0 has unknown type 7"},
    {"NaN score", mk_nan, TS_ERR_FORMAT, "non-finite score"},
    {"-inf score", mk_inf, TS_ERR_FORMAT, "piece 1 has a non-finite score"},
    {"BPE", mk_bpe, TS_ERR_UNSUPPORTED, "model_type is BPE"},
    {"model type 9", mk_model_type9, TS_ERR_FORMAT, "model_type 9 is unknown"},
    {"no unknown", mk_no_unk, TS_ERR_FORMAT, "no piece is of type UNKNOWN"},
    {"nothing to match", mk_only_reserved, TS_ERR_FORMAT, "no NORMAL, USER_DEFINED or UNUSED"},
    {"two unknowns", mk_two_unk, TS_ERR_FORMAT, "pieces 0 and 1 are both UNKNOWN"},
    {"duplicate", mk_duplicate, TS_ERR_FORMAT, "pieces 1 and 2 are the same string \"abc\""},
    {"duplicate reserved", mk_dup_reserved, TS_ERR_FORMAT, "the same string \"<unk>\""},
    {"byte piece", mk_byte_no_fallback, TS_ERR_FORMAT, "byte_fallback is false"},
    {"missing byte", mk_fallback_missing, TS_ERR_FORMAT, "no <0x7F> BYTE piece"},
    {"misspelled byte", mk_byte_misspelled, TS_ERR_FORMAT, "not spelled <0xXX>"},
    {"bool as string", mk_trainer_wire, TS_ERR_FORMAT, "trainer_spec.byte_fallback"},
    {"charsmap header", mk_cm_short, TS_ERR_FORMAT, "too short"},
    {"trie size 5", mk_cm_size_odd, TS_ERR_FORMAT, "trie size 5"},
    {"trie past blob", mk_cm_size_big, TS_ERR_FORMAT, "trie size 8"},
    {"trie size 0", mk_cm_size_zero, TS_ERR_FORMAT, "trie size 0"},
    {"pool without NUL", mk_cm_pool_nul, TS_ERR_FORMAT, "do not end with a NUL"},
    {"leaf past pool", mk_cm_value, TS_ERR_FORMAT, "outside the 5-byte pool"},
    {"leaf past trie", mk_cm_leaf_outside, TS_ERR_FORMAT, "leaf lies outside the 1024-unit"},
    {"root as a child", mk_cm_root_child, TS_ERR_FORMAT, "outside the 0-byte pool"},
};
#define N_BAD (int)(sizeof k_bad_models / sizeof k_bad_models[0])

START_TEST(test_bad_models)
{
    const bad_model *b = &k_bad_models[_i];
    pbw w = {0};
    b->make(&w);
    ts_spm *m = (ts_spm *)&w;   /* must stay untouched */
    ts_error err;
    int rc = ts_spm_load_mem(w.p ? w.p : (const uint8_t *)"", w.n, &m, &err);
    ck_assert_msg(rc == b->code, "%s: returned %d (%s): %s", b->name, rc, ts_strerror(rc),
                  err.msg);
    ck_assert_msg(strstr(err.msg, b->needle) != NULL, "%s: message \"%s\" lacks \"%s\"",
                  b->name, err.msg, b->needle);
    ck_assert(m == (ts_spm *)&w);
    /* through a file, the message names it */
    char path[1024];
    snprintf(path, sizeof path, "%s/bad%d.model", g_tmpdir, _i);
    ck_assert_int_eq(ts_ck_write_file(path, w.p ? w.p : (const uint8_t *)"", w.n), 0);
    ts_ck_fails(ts_spm_load(path, &m, &err), err, b->code, b->needle);
    ck_assert(strstr(err.msg, path) != NULL);
    free(w.p);
}
END_TEST

START_TEST(test_good_oddities)
{
    /* unknown fields at every level are skipped; later scalars win; the charsmap's trie
     * may share or even loop (hostile but harmless) */
    pbw w = {0}, t = {0}, n = {0};
    w_piece(&w, "<unk>", 0, UNKNOWN);
    pbw p = {0};
    w_str(&p, 1, "a");
    w_int(&p, 99, 7);            /* unknown varint */
    w_f32(&p, 2, -5);
    w_f32(&p, 2, -1);            /* the later score wins */
    w_key(&p, 100, 1);           /* unknown fixed64 */
    w_raw(&p, "12345678", 8);
    w_msg(&w, 1, &p);
    w_int(&t, 3, 2);
    w_int(&t, 3, 1);             /* BPE, then UNIGRAM: the last wins */
    w_str(&t, 47, "<eos>");
    w_msg(&w, 2, &t);
    w_int(&n, 3, 0);             /* no dummy prefix */
    w_msg(&w, 3, &n);
    w_str(&w, 5, "denormalizer");
    w_int(&w, 77, 1);
    w_piece(&w, "<eos>", 0, CONTROL);   /* pieces after the specs */
    ts_spm *m = load_bytes(w.p, w.n);
    ck_assert_int_eq(ts_spm_vocab_size(m), 3);
    ck_assert_int_eq(ts_spm_eos_id(m), 2);
    ck_assert_int_eq(ts_spm_pad_id(m), -1);
    expect_ids(m, "aa", (const int32_t[]){1, 1}, 2);
    ts_spm_free(m);
    free(w.p);

    w = (pbw){0};
    charsmap_model(&w, NULL, "b\0Z\0\0", 5);   /* a longer pool is fine */
    m = load_bytes(w.p, w.n);
    ts_spm_free(m);
    free(w.p);
}
END_TEST

static void tw_loop(uint32_t *u)
{
    /* "x" leads back to the root's children: "xxxa" walks x, x, x, a */
    u[256 ^ 'x'] = (uint32_t)(((256 ^ 'x') ^ 256) << 10) | 'x';
}

START_TEST(test_trie_loop)
{
    pbw w = {0};
    charsmap_model(&w, tw_loop, "b\0Z\0\0", 5);
    ts_spm *m = load_bytes(w.p, w.n);
    free(w.p);
    expect_normalized(m, "xxxa", 4, "\xe2\x96\x81" "b");
    /* no key ends in a run of x: each is copied, and each search stops after
     * CHARSMAP_MAX_KEY (256) bytes instead of scanning the whole rest */
    char big[TS_SPM_MAX_INPUT], want[TS_SPM_MAX_INPUT + 4] = "\xe2\x96\x81";
    memset(big, 'x', sizeof big);
    memset(want + 3, 'x', sizeof big);
    want[sizeof want - 1] = '\0';
    expect_normalized(m, big, sizeof big, want);
    ts_spm_free(m);
}
END_TEST

START_TEST(test_input_limits)
{
    ts_spm *m = load_fixture("spiece.model");
    char *big = malloc(TS_SPM_MAX_INPUT + 1);
    ck_assert(big != NULL);
    for (size_t i = 0; i < TS_SPM_MAX_INPUT + 1; i++)
        big[i] = "ab c"[i % 4];
    int32_t *ids = NULL;
    int n = -1;
    ts_error err;
    ts_ck_fails(ts_spm_encode(m, big, TS_SPM_MAX_INPUT + 1, &ids, &n, &err), err,
                TS_ERR_INVALID, "more than");
    ck_assert(ids == NULL && n == -1);
    ts_ck_ok(ts_spm_encode(m, big, TS_SPM_MAX_INPUT, &ids, &n, &err), err);
    ck_assert_int_gt(n, TS_SPM_MAX_INPUT / 8);
    free(ids);
    ts_ck_ok(ts_spm_encode(m, NULL, 0, &ids, &n, &err), err);
    ck_assert(ids != NULL && n == 0);
    free(ids);
    free(big);
    ts_spm_free(m);
    ts_ck_fails(ts_spm_load(FIXTURES "/no-such.model", &m, &err), err, TS_ERR_IO,
                "no-such.model");
    ts_ck_fails(ts_spm_load(FIXTURES, &m, &err), err, TS_ERR_IO, "not a regular file");
}
END_TEST

/* ---- hostile bytes ---------------------------------------------------------------------- */

/* Offsets where a top-level field of the file ends (walked here, independently). */
static uint8_t *field_ends(const uint8_t *b, size_t n)
{
    uint8_t *end = calloc(n + 1, 1);
    size_t i = 0;
    end[0] = 1;
    while (i < n) {
        uint64_t v[2] = {0, 0};   /* tag, length */
        for (int k = 0; k < 2; k++)
            for (int s = 0;; s += 7) {
                ck_assert(i < n && s < 64);
                v[k] |= (uint64_t)(b[i] & 0x7f) << s;
                if (!(b[i++] & 0x80))
                    break;
            }
        ck_assert_msg((v[0] & 7) == 2, "top-level field with wire type %d", (int)(v[0] & 7));
        i += v[1];
        ck_assert(i <= n);
        end[i] = 1;
    }
    return end;
}

/* Encodes a few prompts with a model that loaded from hostile bytes: no crash, and ids
 * inside the vocabulary. */
static void exercise(const ts_spm *m, uint64_t seed)
{
    char junk[96];
    for (size_t i = 0; i < sizeof junk; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        junk[i] = (char)(seed >> 56);
    }
    const char *prompts[] = {"a photo of a cat", "  Café\t東京 ﬁ １２ ", junk, ""};
    const size_t lens[] = {16, strlen(prompts[1]), sizeof junk, 0};
    for (int k = 0; k < 4; k++) {
        int32_t *ids;
        int n;
        ts_error err;
        int rc = ts_spm_encode(m, prompts[k], lens[k], &ids, &n, &err);
        ck_assert_msg(rc == TS_OK || rc == TS_ERR_FORMAT, "encode: %d %s", rc, err.msg);
        if (rc)
            continue;
        for (int i = 0; i < n; i++)
            ck_assert_msg(ids[i] >= 0 && ids[i] < ts_spm_vocab_size(m), "id %d", (int)ids[i]);
        free(ids);
    }
}

START_TEST(test_truncations)
{
    const char *name = k_models[_i];
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
    size_t n;
    uint8_t *full = (uint8_t *)ts_ck_read_file(path, &n);
    uint8_t *ends = field_ends(full, n);
    int loaded = 0, refused = 0;
    for (size_t cut = n + 1; cut-- > 0;) {
        if (cut < n)
            POISON(full + cut, 1);   /* with the bytes after it: everything past the cut */
        ts_spm *m = NULL;
        ts_error err = {0};
        int rc = ts_spm_load_mem(full, cut, &m, &err);
        if (rc == TS_OK) {
            /* only a cut between whole top-level fields can be a model */
            ck_assert_msg(ends[cut], "%s cut at %zu of %zu loaded", name, cut, n);
            if (cut == n || cut % 97 == 0)
                exercise(m, cut);
            ts_spm_free(m);
            loaded++;
        } else {
            ck_assert_msg(rc == TS_ERR_FORMAT && strncmp(err.msg, "model: ", 7) == 0 &&
                              strlen(err.msg) > 20,
                          "%s cut at %zu: %d %s", name, cut, rc, err.msg);
            if (!ends[cut])
                ck_assert_msg(strstr(err.msg, "truncated") || strstr(err.msg, "past the end"),
                              "%s cut at %zu inside a field: %s", name, cut, err.msg);
            refused++;
        }
    }
    UNPOISON(full, n);
    ck_assert_msg(loaded >= 1 && refused >= (int)n - 1000, "%s: %d loaded, %d refused", name,
                  loaded, refused);
    free(ends);
    free(full);
}
END_TEST

START_TEST(test_byte_flips)
{
    const char *name = k_models[_i];
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
    size_t n;
    uint8_t *full = (uint8_t *)ts_ck_read_file(path, &n);
    int trials = n > 100000 ? 120 : 1500, loaded = 0, refused = 0;
    uint64_t s = 0x9e3779b97f4a7c15ULL ^ (uint64_t)_i;
    uint8_t *copy = malloc(n);
    for (int t = 0; t < trials; t++) {
        memcpy(copy, full, n);
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int flips = 1 + (int)((s >> 33) % 8);
        for (int f = 0; f < flips; f++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t at = (size_t)((s >> 20) % n);
            /* half of the big model's trials hit its charsmap, at its end */
            if (n > 100000 && t % 2)
                at = n - 1 - (size_t)((s >> 20) % 200000);
            copy[at] ^= (uint8_t)(1u << ((s >> 60) & 7)) | (uint8_t)(f == 0 ? (s >> 8) : 0);
        }
        ts_spm *m = NULL;
        ts_error err = {0};
        int rc = ts_spm_load_mem(copy, n, &m, &err);
        if (rc == TS_OK) {
            exercise(m, s);
            ts_spm_free(m);
            loaded++;
        } else {
            ck_assert_msg((rc == TS_ERR_FORMAT || rc == TS_ERR_UNSUPPORTED) &&
                              strncmp(err.msg, "model: ", 7) == 0,
                          "%s trial %d: %d %s", name, t, rc, err.msg);
            refused++;
        }
    }
    ck_assert_msg(loaded > 0 && refused > 0, "%s: %d loaded, %d refused", name, loaded,
                  refused);
    free(copy);
    free(full);
}
END_TEST

/* ---- threads ---------------------------------------------------------------------------- */

static const char *const k_thread_prompts[] = {
    "a photo of a cat", "  Café au lait, 3 croissants & 2 crêpes!  ", "東京タワーの夜景",
    "emoji 😀👍🏽🎉 party", "ﬁne ＡＢＣ\t\n x",
};
#define N_PROMPTS 5
#define N_THREADS 4

typedef struct thread_arg {
    const ts_spm *m;
    int32_t (*want)[TS_T5_LLAMAGEN_MAX_LEN];
    int failures;
} thread_arg;

static void *encode_many(void *p)
{
    thread_arg *a = p;
    for (int r = 0; r < 200; r++) {
        int k = r % N_PROMPTS, n_valid;
        int32_t ids[TS_T5_LLAMAGEN_MAX_LEN];
        uint8_t mask[TS_T5_LLAMAGEN_MAX_LEN];
        ts_error err;
        if (ts_t5_tokenize(a->m, k_thread_prompts[k], TS_T5_LLAMAGEN_MAX_LEN, ids, mask,
                           &n_valid, &err) != TS_OK ||
            memcmp(ids, a->want[k], sizeof ids) != 0)
            a->failures++;
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    ts_spm *m = load_fixture("spiece.model");
    int32_t want[N_PROMPTS][TS_T5_LLAMAGEN_MAX_LEN];
    uint8_t mask[TS_T5_LLAMAGEN_MAX_LEN];
    int n_valid;
    ts_error err;
    for (int k = 0; k < N_PROMPTS; k++)
        ts_ck_ok(ts_t5_tokenize(m, k_thread_prompts[k], TS_T5_LLAMAGEN_MAX_LEN, want[k], mask,
                                &n_valid, &err), err);
    pthread_t th[N_THREADS];
    thread_arg args[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        args[i] = (thread_arg){m, want, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, encode_many, &args[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].failures, 0);
    }
    ts_spm_free(m);
}
END_TEST

static Suite *spm_suite(void)
{
    Suite *s = suite_create("spm");
    TCase *tc = tcase_create("golden");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_golden);
    tcase_add_test(tc, test_accessors);
    tcase_add_test(tc, test_t5);
    suite_add_tcase(s, tc);

    tc = tcase_create("semantics");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_normalize_spiece);
    tcase_add_test(tc, test_charsmap_trie);
    tcase_add_test(tc, test_flags);
    tcase_add_test(tc, test_segmentation);
    tcase_add_test(tc, test_concurrent);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_set_timeout(tc, 300);   /* every truncation, under sanitizers */
    tcase_add_loop_test(tc, test_bad_models, 0, N_BAD);
    tcase_add_test(tc, test_good_oddities);
    tcase_add_test(tc, test_trie_loop);
    tcase_add_test(tc, test_input_limits);
    tcase_add_loop_test(tc, test_truncations, 0, N_MODELS);
    tcase_add_loop_test(tc, test_byte_flips, 0, N_MODELS);
    suite_add_tcase(s, tc);
    return s;
}

/* ---- the tool mode ---------------------------------------------------------------------- */

static void print_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", (unsigned)(uint8_t)s[i]);
}

static int tool_tokenize(const char *model, int max_len)
{
    ts_spm *m = NULL;
    ts_error err;
    if (ts_spm_load(model, &m, &err) != TS_OK) {
        printf("! %s\n", err.msg);
        return 0;
    }
    printf("info %d %d %d %d\n", ts_spm_vocab_size(m), (int)ts_spm_unk_id(m),
           (int)ts_spm_eos_id(m), (int)ts_spm_pad_id(m));
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int32_t *t5 = max_len > 0 ? malloc((size_t)max_len * sizeof *t5) : NULL;
    uint8_t *mask = max_len > 0 ? malloc((size_t)max_len) : NULL;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        char *text;
        long n = unhex(line, (size_t)got, &text);
        if (n < 0) {
            printf("! bad hex\n");
            continue;
        }
        char *norm;
        size_t norm_len;
        int32_t *ids;
        int n_ids;
        if (ts_spm_normalize(m, text, (size_t)n, &norm, &norm_len, &err) != TS_OK ||
            ts_spm_encode(m, text, (size_t)n, &ids, &n_ids, &err) != TS_OK) {
            printf("! %s\n", err.msg);
            free(text);
            continue;
        }
        print_hex(norm, norm_len);
        putchar('\t');
        for (int i = 0; i < n_ids; i++)
            printf(i ? " %d" : "%d", (int)ids[i]);
        if (max_len > 0) {
            int n_valid;
            if (memchr(text, 0, (size_t)n))
                printf("\t-");
            else if (ts_t5_tokenize(m, text, max_len, t5, mask, &n_valid, &err) != TS_OK)
                printf("\t! %s", err.msg);
            else {
                putchar('\t');
                for (int i = 0; i < max_len; i++)
                    printf(i ? " %d" : "%d", (int)t5[i]);
                putchar('\t');
                for (int i = 0; i < max_len; i++)
                    putchar('0' + mask[i]);
                printf("\t%d", n_valid);
            }
        }
        putchar('\n');
        free(norm);
        free(ids);
        free(text);
    }
    free(line);
    free(t5);
    free(mask);
    ts_spm_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--tokenize") == 0)
        return tool_tokenize(argv[2], argc >= 4 ? atoi(argv[3]) : 0);
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--tokenize MODEL [MAX_LEN]]\n", argv[0]);
        return 2;
    }
    if (ts_ck_mkdtemp(g_tmpdir, sizeof g_tmpdir) != 0) {
        perror("mkdtemp");
        return 1;
    }
    Suite *suites[] = {spm_suite()};
    int rc = ts_ck_run(suites, 1);
    ts_ck_rmdir(g_tmpdir);
    return rc;
}
