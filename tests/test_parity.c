/* test_parity.c - the C engine against the PyTorch reference of upstream LlamaGen
 * (tests/reference/llamagen_ref.py), on the committed fixtures in tests/fixtures/:
 * fp32 logits (relative error <= 1e-4) through the prefill path, the decode path and a
 * chunked prefill; greedy token streams exactly, with and without CFG and with a CFG
 * interval; the RoPE table; decoded pixels (8-bit RMS <= 0.5/255); and that an image
 * does not change with what else shares its batch. */
#include "tests/check_util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/generate.h"
#include "engine/model.h"

typedef struct fixture {
    ts_backend *be;
    ts_model *model;
    ts_st_file *expected;
} fixture;

static void fixture_open(fixture *f, const char *dir)
{
    ts_error err = {0};
    char path[256];
    f->be = ts_backend_cpu_create(2, &err);
    ck_assert_msg(f->be, "%s", err.msg);
    ck_assert_msg(ts_model_load(f->be, dir, &f->model, &err) == TS_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    ck_assert_msg(ts_st_open(path, &f->expected, &err) == TS_OK, "%s", err.msg);
}

static void fixture_close(fixture *f)
{
    ts_st_close(f->expected);
    ts_model_free(f->model);
    ts_backend_free(f->be);
}

static const void *expect(fixture *f, const char *name, ts_dtype t, size_t n)
{
    return ts_ck_expect(f->expected, name, t, n);
}

/* Teacher-forced logits three ways: one token per step (decode path), the whole
 * sequence in one prefill (last row only), and a prefill split into two chunks. */
static void check_logits(const char *dir)
{
    fixture f;
    fixture_open(&f, dir);
    const llamagen_config *c = &f.model->gpt->cfg;
    int L = c->block_size, V = c->vocab_size;
    const int32_t *cls = expect(&f, "tf.class", TS_I32, 1);
    const int32_t *toks = expect(&f, "tf.tokens", TS_I32, (size_t)L);
    const float *want = expect(&f, "tf.logits", TS_F32, (size_t)L * V);
    int32_t *ids = malloc((size_t)L * sizeof *ids);
    ids[0] = cls[0];
    for (int t = 1; t < L; t++) ids[t] = toks[t - 1];
    float *logits = malloc((size_t)V * sizeof *logits);
    ts_error err = {0};
    for (int mode = 0; mode < 3; mode++) {
        ts_kv_cache *kv;
        ck_assert_int_eq(ts_kv_cache_create(f.be, c->n_layer, c->n_kv_head, c->head_dim, 4, 8, &kv, &err), 0);
        int32_t table[8] = {6, 2, 7, 0, 5, 1, 3, 4};   /* scattered blocks */
        if (mode == 0) {
            for (int t = 0; t < L; t++) {
                llamagen_seq s = {.n_past = t, .n_new = 1, .ids = &ids[t], .block_table = table};
                ck_assert_msg(llamagen_forward(f.model->gpt, kv, &s, 1, logits, &err) == 0, "%s", err.msg);
                double e = ts_ck_row_rel_err(logits, want + (size_t)t * V, V);
                ck_assert_msg(e <= 1e-4, "%s decode step %d: rel err %g", dir, t, e);
            }
        } else {
            int split = mode == 1 ? 0 : 5;
            if (split) {
                llamagen_seq s = {.n_past = 0, .n_new = split, .ids = ids, .block_table = table};
                ck_assert_int_eq(llamagen_forward(f.model->gpt, kv, &s, 1, logits, &err), 0);
                ck_assert(ts_ck_row_rel_err(logits, want + (size_t)(split - 1) * V, V) <= 1e-4);
            }
            llamagen_seq s = {.n_past = split, .n_new = L - split, .ids = ids + split, .block_table = table};
            ck_assert_int_eq(llamagen_forward(f.model->gpt, kv, &s, 1, logits, &err), 0);
            double e = ts_ck_row_rel_err(logits, want + (size_t)(L - 1) * V, V);
            ck_assert_msg(e <= 1e-4, "%s prefill split %d: rel err %g", dir, split, e);
        }
        ts_kv_cache_destroy(kv);
    }
    free(ids);
    free(logits);
    fixture_close(&f);
}

static void check_greedy(const char *dir, const char *name, float cfg, float interval)
{
    fixture f;
    fixture_open(&f, dir);
    int L = f.model->gpt->cfg.block_size;
    const int32_t *classes = expect(&f, "greedy.classes", TS_I32, 3);
    const int32_t *want = expect(&f, name, TS_I32, (size_t)3 * L);
    int32_t got[3 * 64];
    ts_gen_params p = {cfg, interval, {1.0f, 1, 1.0f}, 0};
    ts_error err = {0};
    ck_assert_msg(ts_generate_c2i(f.model, &p, classes, 3, got, NULL, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3 * L; i++)
        ck_assert_msg(got[i] == want[i], "%s %s: image %d token %d is %d, reference %d", dir, name,
                      i / L, i % L, got[i], want[i]);
    fixture_close(&f);
}

static void check_rope(const char *dir)
{
    fixture f;
    fixture_open(&f, dir);
    const llamagen_config *c = &f.model->gpt->cfg;
    size_t n = ((size_t)c->cls_token_num + c->block_size) * c->head_dim;
    const float *want = expect(&f, "rope.table", TS_F32, n);
    float *got = llamagen_rope_table(c);
    for (size_t i = 0; i < (size_t)c->cls_token_num * c->head_dim; i++)
        ck_assert_msg(got[i] == 0.0f, "condition row entry %zu is %g, not 0", i, got[i]);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabsf(got[i] - want[i]) <= 1e-6f, "rope[%zu] %g vs %g", i, got[i], want[i]);
    free(got);
    fixture_close(&f);
}

START_TEST(test_logits_tiny) { check_logits("tests/fixtures/llamagen_tiny"); }
END_TEST
START_TEST(test_logits_hd100) { check_logits("tests/fixtures/llamagen_hd100"); }
END_TEST
START_TEST(test_greedy_tiny)
{
    check_greedy("tests/fixtures/llamagen_tiny", "greedy.cfg4.tokens", 4.0f, -1.0f);
    check_greedy("tests/fixtures/llamagen_tiny", "greedy.cfg1.tokens", 1.0f, -1.0f);
    check_greedy("tests/fixtures/llamagen_tiny", "greedy.cfg4_interval2.tokens", 4.0f, 2.0f);
}
END_TEST
START_TEST(test_greedy_hd100)
{
    check_greedy("tests/fixtures/llamagen_hd100", "greedy.cfg4.tokens", 4.0f, -1.0f);
    check_greedy("tests/fixtures/llamagen_hd100", "greedy.cfg1.tokens", 1.0f, -1.0f);
    check_greedy("tests/fixtures/llamagen_hd100", "greedy.cfg4_interval2.tokens", 4.0f, 2.0f);
}
END_TEST
START_TEST(test_rope_tables)
{
    check_rope("tests/fixtures/llamagen_tiny");
    check_rope("tests/fixtures/llamagen_hd100");
}
END_TEST

START_TEST(test_vq_decode)
{
    fixture f;
    fixture_open(&f, "tests/fixtures/llamagen_tiny");
    int L = f.model->gpt->cfg.block_size, grid = f.model->gpt->cfg.grid;
    int side = grid * f.model->vq->cfg.downsample;
    size_t npix = (size_t)side * side;
    const int32_t *codes = expect(&f, "vq.codes", TS_I32, (size_t)3 * L);
    const float *want = expect(&f, "vq.image", TS_F32, 3 * 3 * npix);
    const int32_t *want_u8 = expect(&f, "vq.image_u8", TS_I32, 3 * 3 * npix);
    float *pix = malloc(3 * 3 * npix * sizeof *pix);
    uint8_t *rgb = malloc(3 * 3 * npix);
    ts_error err = {0};
    ck_assert_msg(vq_decode(f.model->vq, codes, 3, grid, rgb, pix, &err) == 0, "%s", err.msg);
    double max_err = 0, sq = 0, range = 0;
    for (size_t i = 0; i < 3 * 3 * npix; i++) {
        max_err = fmax(max_err, fabs((double)pix[i] - want[i]));
        range = fmax(range, fabs((double)want[i]));
        double d = (double)rgb[i] - want_u8[i];
        sq += d * d;
    }
    double rms = sqrt(sq / (3 * 3 * npix));
    ck_assert_msg(range > 0.1, "fixture image is flat (%g): the test would prove nothing", range);
    ck_assert_msg(max_err <= 1e-4 * fmax(range, 1.0), "decoder output max abs err %g", max_err);
    ck_assert_msg(rms <= 0.5, "8-bit RMS difference %g > 0.5/255", rms);
    free(pix);
    free(rgb);
    fixture_close(&f);
}
END_TEST

/* Sampling (not greedy) must give image i the same tokens whatever shares its batch. */
START_TEST(test_batch_invariance)
{
    fixture f;
    fixture_open(&f, "tests/fixtures/llamagen_tiny");
    int L = f.model->gpt->cfg.block_size;
    ts_gen_params p = {4.0f, -1.0f, {1.0f, 0, 1.0f}, 1234};
    int32_t three[3] = {5, 3, 7}, big[3 * 64], small[64];
    ts_error err = {0};
    ck_assert_int_eq(ts_generate_c2i(f.model, &p, three, 3, big, NULL, NULL, &err), 0);
    ck_assert_int_eq(ts_generate_c2i(f.model, &p, three, 1, small, NULL, NULL, &err), 0);
    ck_assert_int_eq(memcmp(big, small, (size_t)L * sizeof *small), 0);
    int differs = memcmp(big, big + L, (size_t)L * sizeof *big) != 0;
    ck_assert_msg(differs, "different classes gave identical tokens");
    /* Image 1 of the batch is its own request seeded seed + 1. */
    p.seed = 1235;
    ck_assert_int_eq(ts_generate_c2i(f.model, &p, three + 1, 1, small, NULL, NULL, &err), 0);
    ck_assert_int_eq(memcmp(big + L, small, (size_t)L * sizeof *small), 0);
    p.seed = 1234;
    p.seed = 1236;   /* and the seed matters */
    ck_assert_int_eq(ts_generate_c2i(f.model, &p, three, 1, small, NULL, NULL, &err), 0);
    ck_assert(memcmp(big, small, (size_t)L * sizeof *small) != 0);
    fixture_close(&f);
}
END_TEST

START_TEST(test_bad_ids_refused)
{
    fixture f;
    fixture_open(&f, "tests/fixtures/llamagen_tiny");
    const llamagen_config *c = &f.model->gpt->cfg;
    ts_kv_cache *kv;
    ts_error err = {0};
    ck_assert_int_eq(ts_kv_cache_create(f.be, c->n_layer, c->n_kv_head, c->head_dim, 4, 8, &kv, &err), 0);
    int32_t table[8] = {0, 1, 2, 3, 4, 5, 6, 7}, bad_class = c->num_classes + 1, bad_tok = c->vocab_size;
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    llamagen_seq s = {.n_past = 0, .n_new = 1, .ids = &bad_class, .block_table = table};
    ck_assert_int_eq(llamagen_forward(f.model->gpt, kv, &s, 1, logits, &err), TS_ERR_INVALID);
    s = (llamagen_seq){.n_past = 1, .n_new = 1, .ids = &bad_tok, .block_table = table};
    ck_assert_int_eq(llamagen_forward(f.model->gpt, kv, &s, 1, logits, &err), TS_ERR_INVALID);
    s = (llamagen_seq){.n_past = c->block_size, .n_new = 2, .ids = table, .block_table = table};   /* past the last position */
    ck_assert_int_eq(llamagen_forward(f.model->gpt, kv, &s, 1, logits, &err), TS_ERR_INVALID);
    int32_t cls = 3;
    ts_gen_params p = {4.0f, -1.0f, {1.0f, 1, 1.0f}, 0};
    cls = c->num_classes;   /* the null class is not a request class */
    int32_t toks[64];
    ck_assert_int_eq(ts_generate_c2i(f.model, &p, &cls, 1, toks, NULL, NULL, &err), TS_ERR_INVALID);
    free(logits);
    ts_kv_cache_destroy(kv);
    fixture_close(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("parity");
    TCase *tc = tcase_create("llamagen");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_logits_tiny);
    tcase_add_test(tc, test_logits_hd100);
    tcase_add_test(tc, test_greedy_tiny);
    tcase_add_test(tc, test_greedy_hd100);
    tcase_add_test(tc, test_rope_tables);
    tcase_add_test(tc, test_vq_decode);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_test(tc, test_bad_ids_refused);
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
