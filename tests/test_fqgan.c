/* test_fqgan.c - the C engine's FQGAN path (engine/models/far.c, the factorized
 * vq_decoder, ts_generate_far) against the PyTorch reference of upstream FQGAN
 * (tests/reference/fqgan_ref.py), on the committed fixtures fqgan_tiny (dual, ds8, bf16)
 * and fqgan_tiny3 (triple, ds16, f16, head_dim 24):
 *
 *  - decode: the concatenated l2-normalised lookups (vq.latent, 1e-6), the decoder's
 *    float output (max abs error <= 1e-4 x max(range, 1)) and its 8-bit image (every
 *    value within one level) for vq.codes;
 *  - teacher forcing through the per-step API a scheduler uses: the trunk output before
 *    the norm (tf.hidden) one position per step and by (chunked) prefill, and each head
 *    sub-step's logits (tf.logits), relative error <= 1e-4 per row;
 *  - a batched CFG run of the same API fed the reference's greedy picks: the guided
 *    logits of every draw (greedy.cfg4.logits);
 *  - greedy sub-token streams through ts_generate_c2i (the CLI's function), with and
 *    without CFG: identical to greedy.cfg4.tokens / greedy.cfg1.tokens;
 *  - the RoPE table, batch invariance under sampling, the RNG keys, out-of-order and
 *    bad-id calls, and bad folders refused naming the tensor or key. */
#include "tests/check_util.h"
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/generate.h"
#include "engine/model.h"
#include "engine/philox.h"

#define TINY "tests/fixtures/fqgan_tiny"
#define TINY3 "tests/fixtures/fqgan_tiny3"

static char g_tmp[512];   /* made in main, before the forks */

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
    ts_ck_ok(ts_model_load(f->be, dir, &f->model, &err), err);
    ck_assert_int_eq(f->model->family, TS_FAMILY_FQGAN);
    ck_assert_ptr_nonnull(f->model->far);
    ck_assert_ptr_nonnull(f->model->vq);
    ck_assert_ptr_null(f->model->gpt);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    ts_ck_ok(ts_st_open(path, &f->expected, &err), err);
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

static ts_kv_cache *make_kv(fixture *f, int n_blocks)
{
    const llamagen_config *c = &f->model->far->cfg.trunk;
    ts_kv_cache *kv;
    ts_error err = {0};
    ts_ck_ok(ts_kv_cache_create(f->be, c->n_layer, c->n_kv_head, c->head_dim, 4, n_blocks, &kv,
                                &err), err);
    return kv;
}

/* ------------------------------------------------------------------ decode */

static void check_decode(const char *dir)
{
    fixture f;
    fixture_open(&f, dir);
    vq_decoder *vq = f.model->vq;
    const llamagen_config *c = &f.model->far->cfg.trunk;
    int k = vq->cfg.n_sub, L = c->block_size, grid = c->grid, E = vq->cfg.embed_dim;
    int side = grid * vq->cfg.downsample;
    ck_assert_int_eq(side, f.model->image_size);
    size_t npix = (size_t)side * side;
    const int32_t *codes = expect(&f, "vq.codes", TS_I32, (size_t)3 * L * k);
    const float *latent = expect(&f, "vq.latent", TS_F32, (size_t)3 * k * E * L);
    const float *want = expect(&f, "vq.image", TS_F32, 3 * 3 * npix);
    const int32_t *want_u8 = expect(&f, "vq.image_u8", TS_I32, 3 * 3 * npix);

    /* The lookup: sub-token j's normalised row of codebook j in channels [j*E, (j+1)*E). */
    double lat_err = 0;
    for (int img = 0; img < 3; img++)
        for (int j = 0; j < k; j++)
            for (int e = 0; e < E; e++)
                for (int p = 0; p < L; p++) {
                    int code = codes[((size_t)img * L + p) * k + j];
                    float got = vq->codebook[((size_t)j * vq->cfg.codebook_size + code) * E + e];
                    float ref = latent[(((size_t)img * k + j) * E + e) * L + p];
                    lat_err = fmax(lat_err, fabs((double)got - ref));
                }
    ck_assert_msg(lat_err <= 1e-6, "%s: latent max abs err %g", dir, lat_err);

    float *pix = malloc(3 * 3 * npix * sizeof *pix);
    uint8_t *rgb = malloc(3 * 3 * npix);
    ts_error err = {0};
    ts_ck_ok(vq_decode(vq, codes, 3, grid, rgb, pix, &err), err);
    double max_err = 0, range = 0;
    int max_u8 = 0, n_off = 0;
    for (size_t i = 0; i < 3 * 3 * npix; i++) {
        max_err = fmax(max_err, fabs((double)pix[i] - want[i]));
        range = fmax(range, fabs((double)want[i]));
        int d = abs((int)rgb[i] - want_u8[i]);
        max_u8 = d > max_u8 ? d : max_u8;
        n_off += d != 0;
    }
    ck_assert_msg(range > 0.1, "fixture image is flat (%g): the test would prove nothing", range);
    ck_assert_msg(max_err <= 1e-4 * fmax(range, 1.0), "%s: decoder output max abs err %g", dir,
                  max_err);
    ck_assert_msg(max_u8 <= 1, "%s: an 8-bit value is %d levels off", dir, max_u8);
    ck_assert_msg(n_off <= (int)(3 * 3 * npix / 100), "%s: %d 8-bit values differ", dir, n_off);

    /* Image 1 alone decodes to the same bytes as in the batch. */
    uint8_t *one = malloc(3 * npix);
    ts_ck_ok(vq_decode(vq, codes + (size_t)L * k, 1, grid, one, NULL, &err), err);
    ck_assert_int_eq(memcmp(one, rgb + 3 * npix, 3 * npix), 0);
    /* A code outside the codebook is refused. */
    int32_t *bad = malloc((size_t)L * k * sizeof *bad);
    memcpy(bad, codes, (size_t)L * k * sizeof *bad);
    bad[L * k - 1] = vq->cfg.codebook_size;
    ts_ck_fails(vq_decode(vq, bad, 1, grid, one, NULL, &err), err, TS_ERR_INVALID, "outside");
    free(bad);
    free(one);
    free(pix);
    free(rgb);
    fixture_close(&f);
}

START_TEST(test_decode_tiny) { check_decode(TINY); }
END_TEST
START_TEST(test_decode_tiny3) { check_decode(TINY3); }
END_TEST

/* ------------------------------------------------------------------ teacher forcing */

/* The trunk's input ids of the teacher-forced sequence: [class, tokens[0], ...,
 * tokens[L-2]], n_sub per position. */
static int32_t *tf_ids(fixture *f, int k, int L)
{
    const int32_t *cls = expect(f, "tf.class", TS_I32, 1);
    const int32_t *toks = expect(f, "tf.tokens", TS_I32, (size_t)L * k);
    int32_t *ids = calloc((size_t)L * k, sizeof *ids);
    ids[0] = cls[0];
    memcpy(ids + k, toks, (size_t)(L - 1) * k * sizeof *ids);
    return ids;
}

/* The head of the current trunk position, fed tf.tokens[i]: each sub-step's logits. */
static void check_head(fixture *f, int i, const char *dir)
{
    far_model *g = f->model->far;
    int k = g->cfg.n_sub, V = g->cfg.trunk.vocab_size, L = g->cfg.trunk.block_size;
    const int32_t *toks = expect(f, "tf.tokens", TS_I32, (size_t)L * k);
    const float *want = expect(f, "tf.logits", TS_F32, (size_t)L * k * V);
    float *logits = malloc((size_t)V * sizeof *logits);
    ts_error err = {0};
    for (int j = 0; j < k; j++) {
        const int32_t *prev = j ? &toks[(size_t)i * k + j - 1] : NULL;
        ts_ck_ok(far_head_step(g, j, prev, logits, &err), err);
        double e = ts_ck_row_rel_err(logits, want + ((size_t)i * k + j) * V, V);
        ck_assert_msg(e <= 1e-4, "%s position %d sub-token %d: logits rel err %g", dir, i, j, e);
    }
    free(logits);
}

static void check_teacher_forced(const char *dir)
{
    fixture f;
    fixture_open(&f, dir);
    far_model *g = f.model->far;
    const llamagen_config *c = &g->cfg.trunk;
    int k = g->cfg.n_sub, L = c->block_size, D = c->dim;
    const float *hid = expect(&f, "tf.hidden", TS_F32, (size_t)L * D);
    int32_t *ids = tf_ids(&f, k, L);
    float *h = malloc((size_t)D * sizeof *h);
    ts_error err = {0};
    int32_t table[8] = {6, 2, 7, 0, 5, 1, 3, 4};   /* scattered blocks of 4 positions */

    /* One position per step, the head after each. */
    ts_kv_cache *kv = make_kv(&f, 8);
    for (int t = 0; t < L; t++) {
        far_seq s = {t, 1, ids + (size_t)t * k, table};
        ts_ck_ok(far_trunk_forward(g, kv, &s, 1, &err), err);
        ts_be_download(f.be, h, far_hidden(g), (size_t)D);
        double e = ts_ck_row_rel_err(h, hid + (size_t)t * D, D);
        ck_assert_msg(e <= 1e-4, "%s position %d: trunk output rel err %g", dir, t, e);
        check_head(&f, t, dir);
    }
    ts_kv_cache_destroy(kv);

    /* Prefill: all positions in one step, and in two chunks (last row only). */
    for (int split = 0; split <= 5; split += 5) {
        kv = make_kv(&f, 8);
        if (split) {
            far_seq s = {0, split, ids, table};
            ts_ck_ok(far_trunk_forward(g, kv, &s, 1, &err), err);
            ts_be_download(f.be, h, far_hidden(g), (size_t)D);
            ck_assert(ts_ck_row_rel_err(h, hid + (size_t)(split - 1) * D, D) <= 1e-4);
        }
        far_seq s = {split, L - split, ids + (size_t)split * k, table};
        ts_ck_ok(far_trunk_forward(g, kv, &s, 1, &err), err);
        ts_be_download(f.be, h, far_hidden(g), (size_t)D);
        double e = ts_ck_row_rel_err(h, hid + (size_t)(L - 1) * D, D);
        ck_assert_msg(e <= 1e-4, "%s prefill split %d: rel err %g", dir, split, e);
        check_head(&f, L - 1, dir);
        ts_kv_cache_destroy(kv);
    }
    free(h);
    free(ids);
    fixture_close(&f);
}

START_TEST(test_teacher_forced_tiny) { check_teacher_forced(TINY); }
END_TEST
START_TEST(test_teacher_forced_tiny3) { check_teacher_forced(TINY3); }
END_TEST

/* The per-step API as a scheduler drives it: the three greedy images as [cond, uncond]
 * rows interleaved, one trunk step per position, fed the reference's picks; each
 * sub-token's guided logits u + (c - u) * 4 against greedy.cfg4.logits. */
static void check_guided_logits(const char *dir)
{
    fixture f;
    fixture_open(&f, dir);
    far_model *g = f.model->far;
    const llamagen_config *c = &g->cfg.trunk;
    int k = g->cfg.n_sub, L = c->block_size, V = c->vocab_size;
    const int32_t *classes = expect(&f, "greedy.classes", TS_I32, 3);
    const int32_t *toks = expect(&f, "greedy.cfg4.tokens", TS_I32, (size_t)3 * L * k);
    const float *want = expect(&f, "greedy.cfg4.logits", TS_F32, (size_t)3 * L * k * V);
    ts_kv_cache *kv = make_kv(&f, 6 * 4);
    int32_t tables[6][4], ids[6][FAR_MAX_SUB] = {{0}}, prev[6];
    for (int s = 0; s < 6; s++)
        for (int b = 0; b < 4; b++) tables[s][b] = ts_kv_block_alloc(kv);
    float *logits = malloc((size_t)6 * V * sizeof *logits);
    float *guided = malloc((size_t)V * sizeof *guided);
    ts_error err = {0};
    double worst = 0;
    for (int t = 0; t < L; t++) {
        far_seq seqs[6];
        for (int s = 0; s < 6; s++) {
            int img = s / 2;
            if (t == 0) ids[s][0] = s % 2 ? c->num_classes : classes[img];
            else memcpy(ids[s], toks + ((size_t)img * L + t - 1) * k, (size_t)k * sizeof(int32_t));
            seqs[s] = (far_seq){t, 1, ids[s], tables[s]};
        }
        ts_ck_ok(far_trunk_forward(g, kv, seqs, 6, &err), err);
        for (int j = 0; j < k; j++) {
            ts_ck_ok(far_head_step(g, j, j ? prev : NULL, logits, &err), err);
            for (int img = 0; img < 3; img++) {
                const float *cond = logits + (size_t)2 * img * V;
                ts_cfg_combine(guided, cond, cond + V, V, 4.0f);
                double e = ts_ck_row_rel_err(guided, want + (((size_t)img * L + t) * k + j) * V, V);
                worst = fmax(worst, e);
                ck_assert_msg(e <= 1e-4, "%s image %d position %d sub-token %d: guided logits "
                              "rel err %g", dir, img, t, j, e);
                prev[2 * img] = prev[2 * img + 1] = toks[((size_t)img * L + t) * k + j];
            }
        }
    }
    free(logits);
    free(guided);
    ts_kv_cache_destroy(kv);
    fixture_close(&f);
}

START_TEST(test_guided_logits_tiny) { check_guided_logits(TINY); }
END_TEST
START_TEST(test_guided_logits_tiny3) { check_guided_logits(TINY3); }
END_TEST

/* ------------------------------------------------------------------ generation */

static void check_greedy(const char *dir, const char *name, float cfg)
{
    fixture f;
    fixture_open(&f, dir);
    int L = f.model->far->cfg.trunk.block_size, k = ts_model_n_sub(f.model);
    ck_assert_int_eq(k, f.model->far->cfg.n_sub);
    const int32_t *classes = expect(&f, "greedy.classes", TS_I32, 3);
    const int32_t *want = expect(&f, name, TS_I32, (size_t)3 * L * k);
    int32_t *got = malloc((size_t)3 * L * k * sizeof *got);
    ts_gen_params p = {cfg, -1.0f, {1.0f, 1, 1.0f}, 0};
    ts_error err = {0};
    ts_ck_ok(ts_generate_c2i(f.model, &p, classes, 3, got, NULL, NULL, &err), err);
    for (int i = 0; i < 3 * L * k; i++)
        ck_assert_msg(got[i] == want[i], "%s %s: image %d position %d sub-token %d is %d, "
                      "reference %d", dir, name, i / (L * k), i / k % L, i % k, got[i], want[i]);
    free(got);
    fixture_close(&f);
}

START_TEST(test_greedy_tiny)
{
    check_greedy(TINY, "greedy.cfg4.tokens", 4.0f);
    check_greedy(TINY, "greedy.cfg1.tokens", 1.0f);
}
END_TEST
START_TEST(test_greedy_tiny3)
{
    check_greedy(TINY3, "greedy.cfg4.tokens", 4.0f);
    check_greedy(TINY3, "greedy.cfg1.tokens", 1.0f);
}
END_TEST

START_TEST(test_rope_table)
{
    const char *dirs[2] = {TINY, TINY3};
    for (int d = 0; d < 2; d++) {
        fixture f;
        fixture_open(&f, dirs[d]);
        const llamagen_config *c = &f.model->far->cfg.trunk;
        size_t n = ((size_t)c->cls_token_num + c->block_size) * c->head_dim;
        const float *want = expect(&f, "rope.table", TS_F32, n);
        float *got = llamagen_rope_table(c);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(fabsf(got[i] - want[i]) <= 1e-6f, "%s rope[%zu] %g vs %g", dirs[d], i,
                          got[i], want[i]);
        free(got);
        fixture_close(&f);
    }
}
END_TEST

/* Sampling (not greedy) gives image i the same sub-tokens whatever shares its batch. */
static void check_batch_invariance(const char *dir)
{
    fixture f;
    fixture_open(&f, dir);
    int L = f.model->far->cfg.trunk.block_size, k = f.model->far->cfg.n_sub, per = L * k;
    ts_gen_params p = {2.0f, -1.0f, {1.0f, 0, 1.0f}, 1234};
    int32_t three[3] = {2, 1, 3};
    int32_t *big = malloc((size_t)3 * per * sizeof *big);
    int32_t *small = malloc((size_t)per * sizeof *small);
    ts_error err = {0};
    ts_ck_ok(ts_generate_c2i(f.model, &p, three, 3, big, NULL, NULL, &err), err);
    ts_ck_ok(ts_generate_c2i(f.model, &p, three, 1, small, NULL, NULL, &err), err);
    ck_assert_int_eq(memcmp(big, small, (size_t)per * sizeof *small), 0);
    ck_assert_msg(memcmp(big, big + per, (size_t)per * sizeof *big) != 0,
                  "different classes gave identical sub-tokens");
    /* Image 1 of the batch is its own request seeded seed + 1, also without CFG. */
    p.seed = 1235;
    ts_ck_ok(ts_generate_c2i(f.model, &p, three + 1, 1, small, NULL, NULL, &err), err);
    ck_assert_int_eq(memcmp(big + per, small, (size_t)per * sizeof *small), 0);
    p.cfg_scale = 1.0f;
    p.sample = (ts_sample_params){0.9f, 20, 0.95f};
    ts_ck_ok(ts_generate_c2i(f.model, &p, three, 3, big, NULL, NULL, &err), err);
    ts_ck_ok(ts_generate_c2i(f.model, &p, three + 0, 1, small, NULL, NULL, &err), err);
    ck_assert_int_eq(memcmp(big, small, (size_t)per * sizeof *small), 0);
    p.seed = 1236;   /* and the seed matters */
    ts_ck_ok(ts_generate_c2i(f.model, &p, three, 1, small, NULL, NULL, &err), err);
    ck_assert(memcmp(big, small, (size_t)per * sizeof *small) != 0);
    free(big);
    free(small);
    fixture_close(&f);
}

START_TEST(test_batch_invariance_tiny) { check_batch_invariance(TINY); }
END_TEST
START_TEST(test_batch_invariance_tiny3) { check_batch_invariance(TINY3); }
END_TEST

/* LlamaGen's keys are unchanged (the fourth counter word 0); sub-token draws have a
 * stream of their own and differ by sub-token. */
START_TEST(test_rng_keys)
{
    ts_gen_params p = {4.0f, -1.0f, {1.0f, 0, 1.0f}, 0};
    for (int t = 0; t < 4; t++) {
        ck_assert(ts_rng_uniform(77, 0, (uint32_t)t, TS_RNG_TOKEN) ==
                  ts_rng_uniform_at(77, 0, (uint32_t)t, TS_RNG_TOKEN, 0));
        ts_sample_row a = ts_gen_sample_row(&p, NULL, NULL, 77, t);
        ck_assert(a.u == ts_rng_uniform(77, 0, (uint32_t)t, TS_RNG_TOKEN));
        double u[3];
        for (int j = 0; j < 3; j++) {
            ts_sample_row r = ts_gen_sample_row_sub(&p, NULL, NULL, 77, t, j);
            u[j] = r.u;
            ck_assert(r.u == ts_rng_uniform_at(77, 0, (uint32_t)t, TS_RNG_SUB_TOKEN, (uint32_t)j));
            ck_assert(r.u >= 0.0 && r.u < 1.0 && r.u != a.u);
        }
        ck_assert(u[0] != u[1] && u[1] != u[2] && u[0] != u[2]);
    }
}
END_TEST

START_TEST(test_bad_calls_refused)
{
    fixture f;
    fixture_open(&f, TINY);
    far_model *g = f.model->far;
    const llamagen_config *c = &g->cfg.trunk;
    ts_error err = {0};
    int32_t prev = 0;
    ts_ck_fails(far_head_step(g, 0, NULL, NULL, &err), err, TS_ERR_INVALID, "no trunk step");
    ts_kv_cache *kv = make_kv(&f, 8);
    int32_t table[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    int32_t ids[2] = {c->num_classes + 1, 0};
    far_seq s = {0, 1, ids, table};
    ts_ck_fails(far_trunk_forward(g, kv, &s, 1, &err), err, TS_ERR_INVALID, "class 11");
    ids[0] = 3;
    ts_ck_ok(far_trunk_forward(g, kv, &s, 1, &err), err);
    ts_ck_fails(far_head_step(g, 1, &prev, NULL, &err), err, TS_ERR_INVALID, "out of order");
    ts_ck_ok(far_head_step(g, 0, NULL, NULL, &err), err);
    ts_ck_fails(far_head_step(g, 1, NULL, NULL, &err), err, TS_ERR_INVALID, "needs sub-token 0");
    prev = c->vocab_size;
    ts_ck_fails(far_head_step(g, 1, &prev, NULL, &err), err, TS_ERR_INVALID, "outside");
    prev = 5;
    ts_ck_ok(far_head_step(g, 1, &prev, NULL, &err), err);
    ts_ck_fails(far_head_step(g, 2, &prev, NULL, &err), err, TS_ERR_INVALID, "out of order");
    int32_t sub[2] = {1, c->vocab_size};
    s = (far_seq){1, 1, sub, table};
    ts_ck_fails(far_trunk_forward(g, kv, &s, 1, &err), err, TS_ERR_INVALID, "sub-token 1");
    s = (far_seq){c->block_size, 2, sub, table};
    ts_ck_fails(far_trunk_forward(g, kv, &s, 1, &err), err, TS_ERR_INVALID, "outside");
    int32_t cls = c->num_classes, toks[64];
    ts_gen_params p = {4.0f, -1.0f, {1.0f, 1, 1.0f}, 0};
    ts_ck_fails(ts_generate_c2i(f.model, &p, &cls, 1, toks, NULL, NULL, &err), err,
                TS_ERR_INVALID, "class 10");
    ts_kv_cache_destroy(kv);
    fixture_close(&f);
}
END_TEST

/* ------------------------------------------------------------------ bad folders */

static void copy_file(const char *src, const char *dst)
{
    size_t n;
    char *buf = ts_ck_read_file(src, &n);
    ck_assert_int_eq(ts_ck_write_file(dst, buf, n), 0);
    free(buf);
}

/* Copies fixture dir into a fresh folder under g_tmp/name; in file `file` (NULL: none)
 * the header string `from` becomes `to` (same length, so offsets stay valid). */
static void make_folder(char *out, size_t cap, const char *dir, const char *name,
                        const char *file, const char *from, const char *to)
{
    snprintf(out, cap, "%s/%s", g_tmp, name);
    ts_ck_rmdir(out);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    const char *files[] = {"config.json", "gpt.safetensors", "vq.safetensors", "classes.txt"};
    char src[512], dst[512];
    for (int i = 0; i < 4; i++) {
        snprintf(src, sizeof src, "%s/%s", dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", out, files[i]);
        copy_file(src, dst);
    }
    if (!file) return;
    ck_assert_uint_eq(strlen(from), strlen(to));
    snprintf(dst, sizeof dst, "%s/%s", out, file);
    FILE *fp = fopen(dst, "r+b");
    ck_assert_ptr_nonnull(fp);
    uint64_t hlen;
    ck_assert_int_eq(fread(&hlen, 8, 1, fp), 1);
    char *h = malloc(hlen + 1);
    ck_assert_int_eq(fread(h, 1, hlen, fp), hlen);
    h[hlen] = 0;
    char key[128];
    snprintf(key, sizeof key, "\"%s", from);
    char *at = strstr(h, key);
    ck_assert_msg(at != NULL, "%s has no %s", file, from);
    memcpy(at + 1, to, strlen(to));
    fseek(fp, 8, SEEK_SET);
    ck_assert_int_eq(fwrite(h, 1, hlen, fp), hlen);
    fclose(fp);
    free(h);
}

/* Edits config.json of folder: obj[key] = value (NULL removes it); obj is the top
 * level, "gpt" or "vq". */
static void edit_config(const char *folder, const char *section, const char *key, json_t *value)
{
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", folder);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    ck_assert_ptr_nonnull(root);
    json_t *obj = section ? json_object_get(root, section) : root;
    if (value) json_object_set_new(obj, key, value);
    else json_object_del(obj, key);
    ck_assert_int_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
}

static void expect_refused(const char *folder, int code, const char *needle)
{
    ts_error err = {0};
    ts_backend *be = ts_backend_cpu_create(1, &err);
    ts_model *m = NULL;
    int rc = ts_model_load(be, folder, &m, &err);
    ck_assert_ptr_null(m);
    ts_ck_fails(rc, err, code, needle);
    ts_backend_free(be);
}

START_TEST(test_bad_folders_refused)
{
    char d[600];
    make_folder(d, sizeof d, TINY, "no_output2", "gpt.safetensors", "output_2.weight",
                "output_9.weight");
    expect_refused(d, TS_ERR_MISSING, "output_2.weight");
    make_folder(d, sizeof d, TINY, "no_agg_bias", "gpt.safetensors", "aggregation_layer.bias",
                "aggregation_layer.bia_");
    expect_refused(d, TS_ERR_MISSING, "aggregation_layer.bias");
    make_folder(d, sizeof d, TINY, "no_head1", "gpt.safetensors", "ar_head.1.feed_forward.w3",
                "ar_head.1.feed_forward.w4");
    expect_refused(d, TS_ERR_MISSING, "ar_head.1.feed_forward.w3.weight");
    make_folder(d, sizeof d, TINY3, "no_sem_high", "vq.safetensors", "quantize_sem_high.",
                "quantize_sem_hig_.");
    expect_refused(d, TS_ERR_MISSING, "quantize_sem_high.embedding.weight");
    /* A head of one block leaves ar_head.1.* unread: refused by name. */
    make_folder(d, sizeof d, TINY, "head_layers", NULL, NULL, NULL);
    edit_config(d, "gpt", "head_layers", json_integer(1));
    expect_refused(d, TS_ERR_FORMAT, "ar_head.1.");
    /* Three sub-tokens in a dual folder: the configs disagree, or a table is missing. */
    make_folder(d, sizeof d, TINY, "n_sub", NULL, NULL, NULL);
    edit_config(d, "gpt", "n_sub", json_integer(3));
    expect_refused(d, TS_ERR_CONFIG, "gpt.n_sub 3 differs from vq.n_sub 2");
    edit_config(d, "vq", "n_sub", json_integer(3));
    expect_refused(d, TS_ERR_MISSING, "tok_embeddings_3.weight");
    edit_config(d, "vq", "n_sub", NULL);
    expect_refused(d, TS_ERR_CONFIG, "vq.n_sub");
    edit_config(d, "gpt", "n_sub", json_integer(4));
    edit_config(d, "vq", "n_sub", json_integer(2));
    expect_refused(d, TS_ERR_CONFIG, "gpt.n_sub");
    make_folder(d, sizeof d, TINY, "gqa", NULL, NULL, NULL);
    edit_config(d, "gpt", "n_kv_head", json_integer(2));
    expect_refused(d, TS_ERR_CONFIG, "n_kv_head");
    make_folder(d, sizeof d, TINY, "no_vq", NULL, NULL, NULL);
    edit_config(d, NULL, "vq", NULL);
    expect_refused(d, TS_ERR_CONFIG, "\"vq\"");
}
END_TEST

/* Without a gpt section the folder loads and decodes, and generation says why not. */
START_TEST(test_decode_only_folder)
{
    char d[600];
    make_folder(d, sizeof d, TINY, "decode_only", NULL, NULL, NULL);
    edit_config(d, NULL, "gpt", NULL);
    ts_error err = {0};
    ts_backend *be = ts_backend_cpu_create(1, &err);
    ts_model *m = NULL;
    ts_ck_ok(ts_model_load(be, d, &m, &err), err);
    ck_assert_ptr_null(m->far);
    ck_assert_ptr_null(ts_model_c2i_config(m));
    ck_assert_int_eq(ts_model_n_sub(m), 2);
    int32_t codes[16 * 2] = {0}, cls = 1, toks[32];
    uint8_t rgb[32 * 32 * 3];
    ts_ck_ok(vq_decode(m->vq, codes, 1, 4, rgb, NULL, &err), err);
    ts_gen_params p = {4.0f, -1.0f, {1.0f, 1, 1.0f}, 0};
    ts_ck_fails(ts_generate_c2i(m, &p, &cls, 1, toks, NULL, NULL, &err), err, TS_ERR_INVALID,
                "decode-only");
    ts_model_free(m);
    ts_backend_free(be);
}
END_TEST

int main(void)
{
    if (ts_ck_mkdtemp(g_tmp, sizeof g_tmp)) {
        fprintf(stderr, "test_fqgan: cannot make a temporary folder\n");
        return 1;
    }
    Suite *s = suite_create("fqgan");
    TCase *tc = tcase_create("fqgan");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_decode_tiny);
    tcase_add_test(tc, test_decode_tiny3);
    tcase_add_test(tc, test_teacher_forced_tiny);
    tcase_add_test(tc, test_teacher_forced_tiny3);
    tcase_add_test(tc, test_guided_logits_tiny);
    tcase_add_test(tc, test_guided_logits_tiny3);
    tcase_add_test(tc, test_greedy_tiny);
    tcase_add_test(tc, test_greedy_tiny3);
    tcase_add_test(tc, test_rope_table);
    tcase_add_test(tc, test_batch_invariance_tiny);
    tcase_add_test(tc, test_batch_invariance_tiny3);
    tcase_add_test(tc, test_rng_keys);
    tcase_add_test(tc, test_bad_calls_refused);
    tcase_add_test(tc, test_bad_folders_refused);
    tcase_add_test(tc, test_decode_only_folder);
    suite_add_tcase(s, tc);
    int rc = ts_ck_run(&s, 1);
    /* Each test's folders live directly under g_tmp/<name>: remove them, then g_tmp. */
    const char *names[] = {"no_output2", "no_agg_bias", "no_head1", "no_sem_high", "head_layers",
                           "n_sub", "gqa", "no_vq", "decode_only"};
    char path[600];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", g_tmp, names[i]);
        ts_ck_rmdir(path);
    }
    ts_ck_rmdir(g_tmp);
    return rc;
}
