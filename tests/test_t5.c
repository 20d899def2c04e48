/* test_t5.c - the T5 encoder (engine/models/t5_encoder.c) on the CPU backend against
 * the PyTorch reference tests/reference/t5_ref.py, on the committed fixture
 * tests/fixtures/t5_tiny (made by tests/reference/make_t5_fixtures.py):
 *
 *  - last_hidden_state of a right-padded batch (lengths 40, 1, 17, 9, 33 in a 40-wide
 *    batch): every row, padded ones included, within 1e-5 relative (max |a - b| over
 *    max |b|, per row) of the reference, for the gated-gelu model (BF16 weights) and the
 *    relu one (F16);
 *  - the batch run padded to its longest sequence rather than to T: the valid rows the
 *    reference computed 40 wide, and zero rows past the longest;
 *  - batch invariance: each sequence alone, with or without extra padding, and beside
 *    others gives its valid rows bit for bit (products of <= 256 rows on the CPU);
 *  - t5_relative_bucket against the reference's buckets for seven (buckets, distance)
 *    pairs over relative positions -300..300;
 *  - weight files refused naming the tensor (missing, wrong shape, extra, unused by the
 *    config), bad configs refused naming the key, and bad calls refused. */
#include "tests/check_util.h"
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config.h"
#include "engine/models/t5_encoder.h"

#define DIR "tests/fixtures/t5_tiny"
#define TOL 1e-5

typedef struct fixture {
    ts_backend *be;
    json_t *config;
    t5_config cfg;
    ts_st_file *weights, *expected;
    t5_encoder *m;
} fixture;

/* Loads the model of config section `sec` ("t5" or "t5_relu") on a 2-thread CPU backend. */
static void fixture_open(fixture *f, const char *sec)
{
    ts_error err = {0};
    char path[256];
    memset(f, 0, sizeof *f);
    f->be = ts_backend_cpu_create(2, &err);
    ck_assert_msg(f->be, "%s", err.msg);
    ts_ck_ok(ts_json_load_file(DIR "/config.json", &f->config, &err), err);
    const json_t *s = json_object_get(f->config, sec);
    ck_assert_ptr_nonnull(s);
    ts_ck_ok(t5_config_parse(s, &f->cfg, &err), err);
    snprintf(path, sizeof path, DIR "/%s", json_string_value(json_object_get(s, "file")));
    ts_ck_ok(ts_st_open(path, &f->weights, &err), err);
    ts_ck_ok(t5_encoder_load(f->be, &f->cfg, f->weights, &f->m, &err), err);
    ts_ck_ok(ts_st_open(DIR "/expected.safetensors", &f->expected, &err), err);
}

static void fixture_close(fixture *f)
{
    t5_encoder_free(f->m);
    ts_st_close(f->weights);
    ts_st_close(f->expected);
    json_decref(f->config);
    ts_backend_free(f->be);
}

/* The expected tensor `name` of dtype t; *count gets its element count. */
static const void *expect(fixture *f, const char *name, ts_dtype t, size_t *count)
{
    const ts_st_tensor *x = ts_st_find(f->expected, name);
    ck_assert_msg(x != NULL, "fixture lacks %s", name);
    ck_assert_int_eq(x->dtype, t);
    if (count) *count = x->nbytes / ts_dtype_size(t);
    return x->data;
}

/* Runs the encoder over n sequences of T ids; returns the host copy of [n * T, d_model]. */
static float *encode(fixture *f, const int32_t *ids, const int32_t *lens, int n, int T)
{
    size_t total = (size_t)n * T * f->cfg.d_model;
    float *d = ts_be_alloc(f->be, total), *h = malloc(total * sizeof *h);
    ck_assert(d && h);
    for (size_t i = 0; i < total; i++) h[i] = NAN;
    ts_be_upload(f->be, d, h, total);   /* rows the encoder does not write stay NaN */
    ts_error err = {0};
    ts_ck_ok(t5_encoder_forward(f->m, ids, lens, n, T, d, &err), err);
    ts_be_download(f->be, h, d, total);
    ts_be_free(f->be, d);
    return h;
}

/* Every row of the fixture batch (prefix "" or "relu.") against the reference. */
static void check_hidden(const char *sec, const char *prefix)
{
    fixture f;
    fixture_open(&f, sec);
    char name[64];
    size_t n_ids, n_lens;
    snprintf(name, sizeof name, "%sids", prefix);
    const int32_t *ids = expect(&f, name, TS_I32, &n_ids);
    snprintf(name, sizeof name, "%slens", prefix);
    const int32_t *lens = expect(&f, name, TS_I32, &n_lens);
    snprintf(name, sizeof name, "%shidden", prefix);
    const float *want = expect(&f, name, TS_F32, NULL);
    int n = (int)n_lens, T = (int)(n_ids / n_lens), D = f.cfg.d_model, full = 0, one = 0;
    for (int i = 0; i < n; i++) {
        full |= lens[i] == T;
        one |= lens[i] == 1;
    }
    ck_assert_msg(full && one, "the fixture batch should hold lengths 1 and T");
    float *got = encode(&f, ids, lens, n, T);
    double worst_valid = 0, worst_pad = 0;
    for (int i = 0; i < n; i++)
        for (int p = 0; p < T; p++) {
            size_t r = (size_t)i * T + p;
            double e = ts_ck_row_rel_err(got + r * D, want + r * D, D);
            ck_assert_msg(e < TOL, "%s: sequence %d (length %d) position %d: rel err %g", sec, i,
                          lens[i], p, e);
            if (p < lens[i]) worst_valid = fmax(worst_valid, e);
            else worst_pad = fmax(worst_pad, e);
        }
    printf("test_t5: %s: max rel err per row %.3g (valid rows), %.3g (padded rows)\n", sec,
           worst_valid, worst_pad);
    free(got);
    fixture_close(&f);
}

START_TEST(test_hidden_gated_gelu) { check_hidden("t5", ""); }
END_TEST

START_TEST(test_hidden_relu) { check_hidden("t5_relu", "relu."); }
END_TEST

/* Sequences 1, 2, 3 (lengths 1, 17, 9) in a 40-wide batch: the encoder runs 17 wide. */
START_TEST(test_padded_to_longest)
{
    fixture f;
    fixture_open(&f, "t5");
    size_t n_ids, n_lens;
    const int32_t *ids = expect(&f, "ids", TS_I32, &n_ids);
    const int32_t *lens = expect(&f, "lens", TS_I32, &n_lens);
    const float *want = expect(&f, "hidden", TS_F32, NULL);
    int T = (int)(n_ids / n_lens), D = f.cfg.d_model, n = 3, longest = 0;
    for (int i = 1; i <= n; i++) longest = lens[i] > longest ? lens[i] : longest;
    ck_assert_int_lt(longest, T);
    float *got = encode(&f, ids + T, lens + 1, n, T);
    for (int i = 0; i < n; i++)
        for (int p = 0; p < T; p++) {
            const float *g = got + ((size_t)i * T + p) * D;
            if (p < lens[1 + i]) {
                double e = ts_ck_row_rel_err(g, want + ((size_t)(1 + i) * T + p) * D, D);
                ck_assert_msg(e < TOL, "sequence %d position %d: rel err %g", 1 + i, p, e);
            } else if (p >= longest) {
                for (int d = 0; d < D; d++)
                    ck_assert_msg(g[d] == 0.0f, "sequence %d position %d past the longest: %g",
                                  1 + i, p, g[d]);
            } else {
                for (int d = 0; d < D; d++) ck_assert(isfinite(g[d]));
            }
        }
    free(got);
    fixture_close(&f);
}
END_TEST

/* Each sequence alone (T = its length, and T = 40 with padding) and in a batch with a
 * longer neighbour gives the valid rows of the whole batch, bit for bit. */
START_TEST(test_batch_invariance)
{
    fixture f;
    fixture_open(&f, "t5");
    size_t n_ids, n_lens;
    const int32_t *ids = expect(&f, "ids", TS_I32, &n_ids);
    const int32_t *lens = expect(&f, "lens", TS_I32, &n_lens);
    int n = (int)n_lens, T = (int)(n_ids / n_lens), D = f.cfg.d_model;
    float *all = encode(&f, ids, lens, n, T);
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)lens[i] * D * sizeof(float);
        const float *ref = all + (size_t)i * T * D;
        float *alone = encode(&f, ids + (size_t)i * T, &lens[i], 1, lens[i]);
        ck_assert_msg(memcmp(alone, ref, bytes) == 0, "sequence %d alone differs", i);
        free(alone);
        float *padded = encode(&f, ids + (size_t)i * T, &lens[i], 1, T);
        ck_assert_msg(memcmp(padded, ref, bytes) == 0, "sequence %d alone, padded, differs", i);
        free(padded);
        /* beside sequence 0 (the full-length one), in second place */
        int32_t pair_ids[2 * 64], pair_lens[2] = {lens[0], lens[i]};
        ck_assert_int_le(T, 64);
        memcpy(pair_ids, ids, (size_t)T * 4);
        memcpy(pair_ids + T, ids + (size_t)i * T, (size_t)T * 4);
        float *pair = encode(&f, pair_ids, pair_lens, 2, T);
        ck_assert_msg(memcmp(pair + (size_t)T * D, ref, bytes) == 0,
                      "sequence %d in a pair differs", i);
        free(pair);
    }
    free(all);
    fixture_close(&f);
}
END_TEST

START_TEST(test_relative_bucket)
{
    fixture f;
    fixture_open(&f, "t5");
    size_t n_cfg, n_rel;
    const int32_t *cfgs = expect(&f, "bucket.config", TS_I32, &n_cfg);
    const int32_t *rel = expect(&f, "bucket.rel", TS_I32, &n_rel);
    const int32_t *want = expect(&f, "bucket.value", TS_I32, NULL);
    n_cfg /= 2;
    ck_assert_uint_ge(n_cfg, 5);
    for (size_t c = 0; c < n_cfg; c++)
        for (size_t r = 0; r < n_rel; r++) {
            int got = t5_relative_bucket(rel[r], cfgs[2 * c], cfgs[2 * c + 1]);
            ck_assert_msg(got == want[c * n_rel + r], "buckets %d, max_distance %d, rel %d: %d, "
                          "reference %d", cfgs[2 * c], cfgs[2 * c + 1], rel[r], got,
                          want[c * n_rel + r]);
        }
    /* FLAN-T5's (32, 128), spot values: exact up to 7, log buckets to 127, last beyond. */
    const int spots[][2] = {{0, 0}, {-1, 1}, {1, 17}, {-7, 7}, {7, 23}, {-8, 8}, {-16, 10},
                            {-32, 12}, {-64, 14}, {64, 30}, {-127, 15}, {-128, 15}, {1000, 31}};
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++)
        ck_assert_int_eq(t5_relative_bucket(spots[i][0], 32, 128), spots[i][1]);
    fixture_close(&f);
}
END_TEST

/* ------------------------------------------------------------------ refusals */

/* The fixture's t5.safetensors in memory, editable; opened with ts_st_open_buffer. */
typedef struct st_buf {
    char *data;
    size_t len;
} st_buf;

static st_buf read_weights(void)
{
    FILE *fp = fopen(DIR "/t5.safetensors", "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    st_buf b = {NULL, (size_t)ftell(fp)};
    fseek(fp, 0, SEEK_SET);
    b.data = malloc(b.len + 512);   /* room for an appended tensor */
    ck_assert_uint_eq(fread(b.data, 1, b.len, fp), b.len);
    fclose(fp);
    return b;
}

/* In the header: after the entry "key", the first `from` becomes `to` (same length). */
static void edit_header(st_buf *b, const char *key, const char *from, const char *to)
{
    ck_assert_uint_eq(strlen(from), strlen(to));
    uint64_t hlen;
    memcpy(&hlen, b->data, 8);
    char *h = b->data + 8, *end = h + hlen, quoted[160];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    char *at = memmem(h, hlen, quoted, strlen(quoted));
    ck_assert_msg(at != NULL, "header lacks %s", key);
    char *hit = memmem(at, (size_t)(end - at), from, strlen(from));
    ck_assert_msg(hit != NULL, "no %s after %s", from, key);
    memcpy(hit, to, strlen(to));
}

/* Appends a tensor `name` (BF16 [32, 4], zeros) after the data section. */
static void append_tensor(st_buf *b, const char *name)
{
    uint64_t hlen;
    memcpy(&hlen, b->data, 8);
    json_error_t je;
    json_t *h = json_loadb(b->data + 8, hlen, 0, &je);
    ck_assert_msg(h != NULL, "%s", je.text);
    size_t data_len = b->len - 8 - hlen, extra = 32 * 4 * 2;
    json_object_set_new(h, name, json_pack("{s:s, s:[i,i], s:[I,I]}", "dtype", "BF16", "shape", 32,
                                           4, "data_offsets", (json_int_t)data_len,
                                           (json_int_t)(data_len + extra)));
    char *text = json_dumps(h, JSON_COMPACT);
    size_t tlen = strlen(text), padded = (tlen + 7) / 8 * 8;
    char *out = malloc(8 + padded + data_len + extra);
    uint64_t plen = padded;
    memcpy(out, &plen, 8);
    memset(out + 8, ' ', padded);
    memcpy(out + 8, text, tlen);
    memcpy(out + 8 + padded, b->data + 8 + hlen, data_len);
    memset(out + 8 + padded + data_len, 0, extra);
    free(text);
    json_decref(h);
    free(b->data);
    b->data = out;
    b->len = 8 + padded + data_len + extra;
}

/* Loading b with cfg fails with `code`, the message naming `needle`. */
static void expect_load_refused(st_buf *b, const t5_config *cfg, int code, const char *needle)
{
    ts_error err = {0};
    ts_backend *be = ts_backend_cpu_create(1, &err);
    ts_st_file *f = NULL;
    ts_ck_ok(ts_st_open_buffer(b->data, b->len, "t5.safetensors", &f, &err), err);
    t5_encoder *m = NULL;
    int rc = t5_encoder_load(be, cfg, f, &m, &err);
    ck_assert_ptr_null(m);
    ts_ck_fails(rc, err, code, needle);
    ts_st_close(f);
    ts_backend_free(be);
    free(b->data);
    b->data = NULL;
}

START_TEST(test_bad_weights_refused)
{
    fixture f;
    fixture_open(&f, "t5");
    t5_config cfg = f.cfg;
    st_buf b = read_weights();   /* unchanged: loads */
    {
        ts_error err = {0};
        ts_st_file *sf = NULL;
        t5_encoder *m = NULL;
        ts_ck_ok(ts_st_open_buffer(b.data, b.len, "t5.safetensors", &sf, &err), err);
        ts_ck_ok(t5_encoder_load(f.be, &cfg, sf, &m, &err), err);
        t5_encoder_free(m);
        ts_st_close(sf);
        free(b.data);
    }
    b = read_weights();
    edit_header(&b, "encoder.block.1.layer.1.DenseReluDense.wi_1.weight", "wi_1", "wi_9");
    expect_load_refused(&b, &cfg, TS_ERR_MISSING,
                        "encoder.block.1.layer.1.DenseReluDense.wi_1.weight");
    b = read_weights();
    edit_header(&b, "encoder.final_layer_norm.weight", "final", "fina_");
    expect_load_refused(&b, &cfg, TS_ERR_MISSING, "encoder.final_layer_norm.weight");
    /* q is [64, 48]: as [48, 64] the bytes still fit, the shape does not */
    b = read_weights();
    edit_header(&b, "encoder.block.2.layer.0.SelfAttention.q.weight", "[64,48]", "[48,64]");
    expect_load_refused(&b, &cfg, TS_ERR_SHAPE, "encoder.block.2.layer.0.SelfAttention.q.weight");
    b = read_weights();
    edit_header(&b, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                "[32,4]", "[4,32]");
    expect_load_refused(&b, &cfg, TS_ERR_SHAPE, "relative_attention_bias.weight");
    /* a second bias table (UMT5 has one per layer): nobody reads it */
    b = read_weights();
    append_tensor(&b, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight");
    expect_load_refused(&b, &cfg, TS_ERR_FORMAT,
                        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight");
    /* a config of two layers leaves block 2 unread */
    t5_config two = cfg;
    two.n_layer = 2;
    b = read_weights();
    expect_load_refused(&b, &two, TS_ERR_FORMAT, "encoder.block.2.");
    /* a non-gated config wants wi */
    t5_config plain = cfg;
    plain.ff_gated = 0;
    b = read_weights();
    expect_load_refused(&b, &plain, TS_ERR_MISSING,
                        "encoder.block.0.layer.1.DenseReluDense.wi.weight");
    /* another width: shared.weight is the first tensor read */
    t5_config wide = cfg;
    wide.d_model = 64;
    b = read_weights();
    expect_load_refused(&b, &wide, TS_ERR_SHAPE, "shared.weight");
    fixture_close(&f);
}
END_TEST

/* Parses a copy of the fixture's "t5" section with key set to value (NULL: removed). */
static int parse_edited(const char *key, json_t *value, ts_error *err)
{
    json_t *root;
    ts_ck_ok(ts_json_load_file(DIR "/config.json", &root, err), *err);
    json_t *sec = json_deep_copy(json_object_get(root, "t5"));
    if (value) json_object_set_new(sec, key, value);
    else json_object_del(sec, key);
    t5_config cfg;
    int rc = t5_config_parse(sec, &cfg, err);
    json_decref(sec);
    json_decref(root);
    return rc;
}

START_TEST(test_bad_config_refused)
{
    ts_error err = {0};
    ts_ck_ok(parse_edited("n_head", json_integer(4), &err), err);
    ts_ck_fails(parse_edited("ff_act", json_string("gelu_fast"), &err), err, TS_ERR_CONFIG,
                "t5.ff_act");
    ts_ck_fails(parse_edited("ff_gated", json_integer(1), &err), err, TS_ERR_CONFIG, "t5.ff_gated");
    ts_ck_fails(parse_edited("rel_max_distance", json_integer(8), &err), err, TS_ERR_CONFIG,
                "t5.rel_max_distance");
    ts_ck_fails(parse_edited("rel_buckets", json_integer(2), &err), err, TS_ERR_CONFIG,
                "t5.rel_buckets");
    ts_ck_fails(parse_edited("d_kv", NULL, &err), err, TS_ERR_CONFIG, "t5.d_kv");
    ts_ck_fails(parse_edited("norm_eps", json_string("1e-6"), &err), err, TS_ERR_CONFIG,
                "t5.norm_eps");
}
END_TEST

START_TEST(test_bad_calls_refused)
{
    fixture f;
    fixture_open(&f, "t5");
    int32_t ids[8] = {5, 6, 7, 8, 9, 10, 11, 12}, lens[2] = {4, 4};
    float *out = ts_be_alloc(f.be, (size_t)8 * f.cfg.d_model);
    ts_error err = {0};
    ts_ck_ok(t5_encoder_forward(f.m, ids, lens, 2, 4, out, &err), err);
    lens[1] = 0;
    ts_ck_fails(t5_encoder_forward(f.m, ids, lens, 2, 4, out, &err), err, TS_ERR_INVALID,
                "sequence 1 has 0 tokens");
    lens[1] = 5;
    ts_ck_fails(t5_encoder_forward(f.m, ids, lens, 2, 4, out, &err), err, TS_ERR_INVALID,
                "sequence 1 has 5 tokens");
    lens[1] = 2;
    ids[7] = f.cfg.vocab_size;   /* padding too must hold valid ids */
    ts_ck_fails(t5_encoder_forward(f.m, ids, lens, 2, 4, out, &err), err, TS_ERR_INVALID,
                "token id 256");
    ids[7] = -1;
    ts_ck_fails(t5_encoder_forward(f.m, ids, lens, 2, 4, out, &err), err, TS_ERR_INVALID,
                "token id -1");
    ts_ck_fails(t5_encoder_forward(f.m, ids, lens, 0, 4, out, &err), err, TS_ERR_INVALID, "t5");
    ts_be_free(f.be, out);
    fixture_close(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("t5");
    TCase *tc = tcase_create("t5");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_hidden_gated_gelu);
    tcase_add_test(tc, test_hidden_relu);
    tcase_add_test(tc, test_padded_to_longest);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_test(tc, test_relative_bucket);
    tcase_add_test(tc, test_bad_weights_refused);
    tcase_add_test(tc, test_bad_config_refused);
    tcase_add_test(tc, test_bad_calls_refused);
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
