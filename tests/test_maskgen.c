/* test_maskgen.c - the masked family's C engine against the PyTorch reference of the
 * upstream architectures (tests/reference/maskgen_ref.py), on the committed fixture
 * tests/fixtures/maskgen_tiny: CLIP text outputs, MaskGen logits, TA-TiTok pixels,
 * greedy (zero-temperature) token sequences through upstream's schedule, the
 * schedule's numbers themselves, and batch invariance of sampled generation. Inputs
 * to each network are the reference's own, so a failure points at one network. */
#include "tests/check_util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/masked.h"
#include "engine/model.h"

#define DIR "tests/fixtures/maskgen_tiny"

typedef struct fixture {
    ts_backend *be;
    ts_model *model;
    ts_masked_model *mm;
    ts_st_file *expected;
} fixture;

static void fixture_open(fixture *f)
{
    ts_error err = {0};
    f->be = ts_backend_cpu_create(2, &err);
    ck_assert_msg(f->be, "%s", err.msg);
    ck_assert_msg(ts_model_load(f->be, DIR, &f->model, &err) == TS_OK, "%s", err.msg);
    ck_assert_int_eq(f->model->family, TS_FAMILY_MASKGEN);
    f->mm = f->model->masked;
    ck_assert_msg(ts_st_open(DIR "/expected.safetensors", &f->expected, &err) == TS_OK, "%s",
                  err.msg);
}

static void fixture_close(fixture *f)
{
    ts_st_close(f->expected);
    ts_model_free(f->model);
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

static float *upload(fixture *f, const float *host, size_t n)
{
    float *d = ts_be_alloc(f->be, n);
    ck_assert(d != NULL);
    ts_be_upload(f->be, d, host, n);
    return d;
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n)
{
    double e = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, isnan(a[i]) ? INFINITY : fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    ck_assert_msg(scale > 1e-3, "reference values are ~0: the comparison would prove nothing");
    return e / scale;
}

START_TEST(test_clip_outputs)
{
    fixture f;
    fixture_open(&f);
    const clip_config *c = &f.mm->clip->cfg;
    size_t n_ids;
    const int32_t *ids = expect(&f, "clip.ids", TS_I32, &n_ids);
    int P = (int)(n_ids / (size_t)c->context), T = c->context, W = c->width;
    ck_assert_int_ge(P, 2);
    size_t seq = (size_t)P * T * W;
    const float *pen = expect(&f, "clip.penultimate", TS_F32, NULL);
    const float *fin = expect(&f, "clip.final", TS_F32, NULL);
    const float *pool = expect(&f, "clip.pooled", TS_F32, NULL);
    float *d_pen = ts_be_alloc(f.be, seq), *d_fin = ts_be_alloc(f.be, seq);
    float *d_pool = ts_be_alloc(f.be, (size_t)P * c->proj_dim);
    float *h = malloc(seq * sizeof *h);
    ts_error err = {0};
    ck_assert_msg(clip_text_encode(f.mm->clip, ids, P, d_pen, d_fin, d_pool, &err) == 0, "%s",
                  err.msg);
    ts_be_download(f.be, h, d_pen, seq);
    double e1 = rel_err(h, pen, seq);
    ts_be_download(f.be, h, d_fin, seq);
    double e2 = rel_err(h, fin, seq);
    ts_be_download(f.be, h, d_pool, (size_t)P * c->proj_dim);
    double e3 = rel_err(h, pool, (size_t)P * c->proj_dim);
    ck_assert_msg(e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
                  "CLIP rel err: penultimate %g, final %g, pooled %g", e1, e2, e3);
    /* Batched and alone agree: prompt 1 by itself. */
    ck_assert_int_eq(clip_text_encode(f.mm->clip, ids + T, 1, NULL, NULL, d_pool, &err), 0);
    ts_be_download(f.be, h, d_pool, (size_t)c->proj_dim);
    ck_assert_msg(rel_err(h, pool + c->proj_dim, (size_t)c->proj_dim) < 1e-4, "pooled alone");
    ts_be_free(f.be, d_pen);
    ts_be_free(f.be, d_fin);
    ts_be_free(f.be, d_pool);
    free(h);
    fixture_close(&f);
}
END_TEST

/* Conditioning of prompt p from the reference's own CLIP outputs. */
static void make_cond(fixture *f, int p, float aesthetic, maskgen_cond *out)
{
    const clip_config *c = &f->mm->clip->cfg;
    size_t tw = (size_t)c->context * c->width;
    const float *pen = expect(f, "clip.penultimate", TS_F32, NULL);
    const float *pool = expect(f, "clip.pooled", TS_F32, NULL);
    float *d_pen = upload(f, pen + (size_t)p * tw, tw);
    float *d_pool = upload(f, pool + (size_t)p * c->proj_dim, (size_t)c->proj_dim);
    ts_error err = {0};
    ck_assert_msg(maskgen_cond_make(f->mm->gen, d_pen, d_pool, aesthetic, out, &err) == 0, "%s",
                  err.msg);
    ts_be_free(f->be, d_pen);
    ts_be_free(f->be, d_pool);
}

/* The reference's index of the empty prompt: [start, end, 0, ...]. */
static int empty_prompt(fixture *f)
{
    size_t n;
    const int32_t *ids = expect(f, "clip.ids", TS_I32, &n);
    int T = f->mm->clip->cfg.context;
    for (int p = 0; p < (int)(n / (size_t)T); p++)
        if (ids[p * T + 2] == 0 && ids[p * T + 1] > ids[p * T]) return p;
    ck_abort_msg("fixture has no empty prompt");
    return -1;
}

START_TEST(test_generator_logits)
{
    fixture f;
    fixture_open(&f);
    const maskgen_config *c = &f.mm->gen->cfg;
    int N = c->num_tokens, V = c->codebook_size;
    size_t n;
    const int32_t *ids = expect(&f, "gen.ids", TS_I32, &n);
    int B = (int)(n / (size_t)N);
    const int32_t *prompt = expect(&f, "gen.prompt", TS_I32, NULL);
    const float *aes = expect(&f, "gen.aesthetic", TS_F32, NULL);
    const float *want = expect(&f, "gen.logits", TS_F32, NULL);
    int masked = 0, fixed = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == V) masked++;
        else fixed++;
    }
    ck_assert_msg(masked && fixed, "gen.ids should mix masked and fixed tokens");
    maskgen_cond *conds = calloc((size_t)B, sizeof *conds);
    maskgen_seq *seqs = calloc((size_t)B, sizeof *seqs);
    for (int b = 0; b < B; b++) {
        make_cond(&f, prompt[b], aes[b], &conds[b]);
        seqs[b] = (maskgen_seq){ids + (size_t)b * N, &conds[b]};
    }
    ts_error err = {0};
    ck_assert_msg(maskgen_forward(f.mm->gen, seqs, B, &err) == 0, "%s", err.msg);
    size_t total = (size_t)B * N * V;
    float *got = malloc(total * sizeof *got);
    ts_be_download(f.be, got, maskgen_logits(f.mm->gen), total);
    double e = rel_err(got, want, total);
    ck_assert_msg(e < 1e-4, "generator logits rel err %g", e);
    /* One sequence alone gives the same logits as in the batch. */
    ck_assert_int_eq(maskgen_forward(f.mm->gen, seqs + B - 1, 1, &err), 0);
    ts_be_download(f.be, got, maskgen_logits(f.mm->gen), (size_t)N * V);
    ck_assert_msg(rel_err(got, want + (size_t)(B - 1) * N * V, (size_t)N * V) < 1e-4, "alone");
    for (int b = 0; b < B; b++) maskgen_cond_free(f.mm->gen, &conds[b]);
    free(conds);
    free(seqs);
    free(got);
    fixture_close(&f);
}
END_TEST

START_TEST(test_decoder_pixels)
{
    fixture f;
    fixture_open(&f);
    const titok_config *c = &f.mm->dec->cfg;
    const clip_config *cc = &f.mm->clip->cfg;
    int N = c->num_tokens, S = titok_image_size(f.mm->dec);
    size_t n, npix = (size_t)3 * S * S, tw = (size_t)cc->context * cc->width;
    const int32_t *ids = expect(&f, "dec.ids", TS_I32, &n);
    int B = (int)(n / (size_t)N);
    const int32_t *prompt = expect(&f, "dec.prompt", TS_I32, NULL);
    const float *want = expect(&f, "dec.image", TS_F32, NULL);
    const int32_t *want_u8 = expect(&f, "dec.image_u8", TS_I32, NULL);
    const float *fin = expect(&f, "clip.final", TS_F32, NULL);
    float *pix = malloc(npix * sizeof *pix);
    uint8_t *rgb = malloc(npix);
    double worst = 0, range = 0, sq = 0;
    for (int b = 0; b < B; b++) {
        float *text = upload(&f, fin + (size_t)prompt[b] * tw, tw);
        ts_error err = {0};
        ck_assert_msg(titok_decode(f.mm->dec, ids + (size_t)b * N, text, 1, pix, rgb, &err) == 0,
                      "%s", err.msg);
        for (size_t i = 0; i < npix; i++) {
            worst = fmax(worst, fabs((double)pix[i] - want[(size_t)b * npix + i]));
            range = fmax(range, fabs((double)want[(size_t)b * npix + i]));
            double d = (double)rgb[i] - want_u8[(size_t)b * npix + i];
            sq += d * d;
        }
        ts_be_free(f.be, text);
    }
    ck_assert_msg(range > 0.1, "fixture image is flat (%g)", range);
    ck_assert_msg(worst <= 1e-4 * fmax(range, 1.0), "decoder max abs err %g", worst);
    ck_assert_msg(sqrt(sq / ((double)B * npix)) <= 0.5, "8-bit RMS difference above 0.5");
    free(pix);
    free(rgb);
    fixture_close(&f);
}
END_TEST

/* Upstream's arccos schedule for 128 tokens in 16 steps fixes 6,5,5,5,5,6,5,6,6,7,6,8,
 * 8,9,13,28 tokens per step (../shared/docs/maskgen.md, from the official code). */
START_TEST(test_schedule_counts)
{
    static const int want[16] = {6, 5, 5, 5, 5, 6, 5, 6, 6, 7, 6, 8, 8, 9, 13, 28};
    int masked = 128;
    for (int s = 0; s < 16; s++) {
        int left = s == 15 ? 0 : ts_mask_remask_count(128, 16, s, masked);
        ck_assert_msg(masked - left == want[s], "step %d fixes %d, upstream %d", s,
                      masked - left, want[s]);
        masked = left;
    }
    ts_mask_params p = {.steps = 16, .guidance = 12.0f, .randomize_temperature = 2.0f};
    ck_assert_float_eq_tol(ts_mask_guidance(&p, 15), 12.0f, 1e-6f);
    ck_assert_float_eq_tol(ts_mask_guidance(&p, 0), 1.105684f, 1e-5f);   /* 11 (1 - cos(pi/16)) / 2 + 1 */
    ck_assert_float_eq_tol(ts_mask_softmax_temp(&p, 0), 1.25f, 1e-6f);
    ck_assert(ts_mask_noise_temp(&p, 15) == 0.0f);   /* the last step is never noisy */
}
END_TEST

START_TEST(test_greedy_tokens)
{
    fixture f;
    fixture_open(&f);
    const maskgen_config *c = &f.mm->gen->cfg;
    const clip_config *cc = &f.mm->clip->cfg;
    int N = c->num_tokens, T = cc->context;
    size_t n, tw = (size_t)T * cc->width;
    const int32_t *want = expect(&f, "greedy.tokens", TS_I32, &n);
    const int32_t *prompt = expect(&f, "greedy.prompt", TS_I32, NULL);
    const int32_t *steps = expect(&f, "greedy.steps", TS_I32, NULL);
    const float *guid = expect(&f, "greedy.guidance", TS_F32, NULL);
    const float *aes = expect(&f, "greedy.aesthetic", TS_F32, NULL);
    const int32_t *want_u8 = expect(&f, "greedy.image_u8", TS_I32, NULL);
    const float *fin = expect(&f, "clip.final", TS_F32, NULL);
    int K = (int)(n / (size_t)N), null_p = empty_prompt(&f);
    ts_mask_params p = {.steps = steps[0], .guidance = guid[0], .randomize_temperature = 0.0f,
                        .aesthetic = aes[0], .seed = 99};
    ts_mg_prompt *pr = calloc((size_t)K, sizeof *pr);
    const ts_mg_prompt **prp = calloc((size_t)K, sizeof *prp);
    const ts_mask_params **pp = calloc((size_t)K, sizeof *pp);
    int *st = calloc((size_t)K, sizeof *st);
    uint64_t *seeds = calloc((size_t)K, sizeof *seeds);
    int32_t *ids = malloc((size_t)K * N * sizeof *ids), **rows = calloc((size_t)K, sizeof *rows);
    for (int k = 0; k < K; k++) {
        make_cond(&f, prompt[k], p.aesthetic, &pr[k].cond);
        make_cond(&f, null_p, p.aesthetic, &pr[k].uncond);
        pr[k].text = upload(&f, fin + (size_t)prompt[k] * tw, tw);
        prp[k] = &pr[k];
        pp[k] = &p;
        seeds[k] = (uint64_t)k;
        rows[k] = ids + (size_t)k * N;
        for (int i = 0; i < N; i++) rows[k][i] = c->codebook_size;
    }
    ts_error err = {0};
    for (int s = 0; s < p.steps; s++) {
        for (int k = 0; k < K; k++) st[k] = s;
        ck_assert_msg(ts_masked_step(f.mm, pp, prp, st, seeds, K, rows, NULL, &err) == 0, "%s",
                      err.msg);
    }
    ck_assert_int_eq(memcmp(ids, want, (size_t)K * N * sizeof *ids), 0);
    int S = f.mm->image_size;
    uint8_t *rgb = malloc((size_t)S * S * 3);
    double sq = 0;
    for (int k = 0; k < K; k++) {
        ck_assert_int_eq(titok_decode(f.mm->dec, rows[k], pr[k].text, 1, NULL, rgb, &err), 0);
        for (size_t i = 0; i < (size_t)S * S * 3; i++) {
            double d = (double)rgb[i] - want_u8[(size_t)k * S * S * 3 + i];
            sq += d * d;
        }
    }
    ck_assert_msg(sqrt(sq / ((double)K * S * S * 3)) <= 0.5, "greedy images differ");
    for (int k = 0; k < K; k++) {
        maskgen_cond_free(f.mm->gen, &pr[k].cond);
        maskgen_cond_free(f.mm->gen, &pr[k].uncond);
        ts_be_free(f.be, pr[k].text);
    }
    free(pr);
    free(prp);
    free(pp);
    free(st);
    free(seeds);
    free(ids);
    free(rows);
    free(rgb);
    fixture_close(&f);
}
END_TEST

/* With noise, an image is a function of its own seed: the same tokens alone, in a
 * batch, or started at a different time than its batch mates. */
START_TEST(test_sampled_batch_invariance)
{
    fixture f;
    fixture_open(&f);
    const maskgen_config *c = &f.mm->gen->cfg;
    int N = c->num_tokens, null_p = empty_prompt(&f);
    ts_mask_params p = {.steps = 8, .guidance = 4.0f, .randomize_temperature = 2.0f,
                        .aesthetic = 6.5f, .seed = 7};
    ts_mg_prompt pr[2] = {0};
    for (int k = 0; k < 2; k++) {
        make_cond(&f, (null_p + 1 + k) % 4, p.aesthetic, &pr[k].cond);
        make_cond(&f, null_p, p.aesthetic, &pr[k].uncond);
    }
    const ts_mg_prompt *prp[2] = {&pr[0], &pr[1]};
    const ts_mask_params *pp[2] = {&p, &p};
    uint64_t seeds[2] = {7, 8};
    int32_t a[2][64], b[64], c2[64];
    int32_t *rows[2] = {a[0], a[1]};
    for (int i = 0; i < N; i++) a[0][i] = a[1][i] = b[i] = c2[i] = c->codebook_size;
    ts_error err = {0};
    int st[2];
    for (int s = 0; s < p.steps; s++) {   /* both together */
        st[0] = st[1] = s;
        ck_assert_int_eq(ts_masked_step(f.mm, pp, prp, st, seeds, 2, rows, NULL, &err), 0);
    }
    int32_t *one[1] = {b};
    for (int s = 0; s < p.steps; s++) {   /* image 1 alone */
        st[0] = s;
        ck_assert_int_eq(ts_masked_step(f.mm, pp + 1, prp + 1, st, seeds + 1, 1, one, NULL, &err), 0);
    }
    ck_assert_int_eq(memcmp(a[1], b, (size_t)N * sizeof *b), 0);
    /* image 1 again, two steps behind image 0 in a shared batch */
    int32_t *mixed[2] = {a[0], c2};
    for (int i = 0; i < N; i++) a[0][i] = c->codebook_size;
    for (int s = 0; s < p.steps + 2; s++) {
        int n = 0;
        const ts_mg_prompt *q[2];
        const ts_mask_params *qp[2] = {&p, &p};
        uint64_t sd[2];
        int32_t *r[2];
        if (s < p.steps) { q[n] = prp[0]; sd[n] = seeds[0]; r[n] = mixed[0]; st[n++] = s; }
        if (s >= 2) { q[n] = prp[1]; sd[n] = seeds[1]; r[n] = mixed[1]; st[n++] = s - 2; }
        ck_assert_int_eq(ts_masked_step(f.mm, qp, q, st, sd, n, r, NULL, &err), 0);
    }
    ck_assert_int_eq(memcmp(c2, b, (size_t)N * sizeof *b), 0);
    ck_assert_msg(memcmp(a[0], b, (size_t)N * sizeof *b) != 0, "different seeds, same tokens");
    for (int k = 0; k < 2; k++) {
        maskgen_cond_free(f.mm->gen, &pr[k].cond);
        maskgen_cond_free(f.mm->gen, &pr[k].uncond);
    }
    fixture_close(&f);
}
END_TEST

/* The fixture's prompts, from expected.safetensors' metadata (a JSON list). */
static json_t *fixture_prompts(void)
{
    FILE *f = fopen(DIR "/expected.safetensors", "rb");
    ck_assert(f != NULL);
    uint64_t len = 0;
    ck_assert_int_eq(fread(&len, 8, 1, f), 1);
    ck_assert(len < (1u << 20));
    char *hdr = calloc(1, (size_t)len + 1);
    ck_assert_int_eq(fread(hdr, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    json_t *root = json_loads(hdr, 0, NULL);
    free(hdr);
    ck_assert(root != NULL);
    const char *text = json_string_value(json_object_get(json_object_get(root, "__metadata__"),
                                                         "prompts"));
    ck_assert(text != NULL);
    json_t *list = json_loads(text, 0, NULL);
    json_decref(root);
    ck_assert(json_is_array(list));
    return list;
}

/* Prompt text to image, the way the CLI and the server run it: the C tokenizer gives
 * the reference's ids, and ts_masked_generate the reference's greedy tokens. */
START_TEST(test_prompt_end_to_end)
{
    fixture f;
    fixture_open(&f);
    json_t *list = fixture_prompts();
    int T = f.mm->clip->cfg.context, N = f.mm->gen->cfg.num_tokens;
    size_t n_ids;
    const int32_t *ids = expect(&f, "clip.ids", TS_I32, &n_ids);
    ck_assert_uint_eq(json_array_size(list), n_ids / (size_t)T);
    int32_t *got = malloc((size_t)T * sizeof *got);
    ts_error err = {0};
    for (size_t p = 0; p < json_array_size(list); p++) {
        const char *text = json_string_value(json_array_get(list, p));
        ck_assert_int_eq(ts_clip_tok_encode(f.mm->bpe, text, got, T, &err), 0);
        ck_assert_msg(memcmp(got, ids + p * T, (size_t)T * sizeof *got) == 0,
                      "token ids of prompt %zu differ", p);
    }
    size_t n;
    const int32_t *want = expect(&f, "greedy.tokens", TS_I32, &n);
    const int32_t *prompt = expect(&f, "greedy.prompt", TS_I32, NULL);
    const int32_t *want_u8 = expect(&f, "greedy.image_u8", TS_I32, NULL);
    int K = (int)(n / (size_t)N), S = f.mm->image_size;
    ts_mask_params p = {.steps = *(const int32_t *)expect(&f, "greedy.steps", TS_I32, NULL),
                        .guidance = *(const float *)expect(&f, "greedy.guidance", TS_F32, NULL),
                        .randomize_temperature = 0.0f,
                        .aesthetic = *(const float *)expect(&f, "greedy.aesthetic", TS_F32, NULL),
                        .seed = 5};
    const char **texts = malloc((size_t)K * sizeof *texts);
    for (int k = 0; k < K; k++) texts[k] = json_string_value(json_array_get(list, prompt[k]));
    int32_t *tokens = malloc((size_t)K * N * sizeof *tokens);
    uint8_t *rgb = malloc((size_t)K * S * S * 3);
    ck_assert_msg(ts_masked_generate(f.mm, &p, texts, K, tokens, rgb, NULL, NULL, NULL, &err) == 0,
                  "%s", err.msg);
    ck_assert_int_eq(memcmp(tokens, want, (size_t)K * N * sizeof *tokens), 0);
    int off = 0;
    for (size_t i = 0; i < (size_t)K * S * S * 3; i++) off += abs((int)rgb[i] - want_u8[i]) > 1;
    ck_assert_msg(off == 0, "%d 8-bit values differ by more than one level", off);
    free(texts);
    free(tokens);
    free(rgb);
    free(got);
    json_decref(list);
    fixture_close(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("maskgen");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_schedule_counts);
    tcase_add_test(tc, test_clip_outputs);
    tcase_add_test(tc, test_generator_logits);
    tcase_add_test(tc, test_decoder_pixels);
    tcase_add_test(tc, test_greedy_tokens);
    tcase_add_test(tc, test_sampled_batch_invariance);
    tcase_add_test(tc, test_prompt_end_to_end);
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
