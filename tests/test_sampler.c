/* test_sampler.c - the sampling rules of upstream's generate.py (CFG, temperature,
 * top-k with ties, top-p's HF rule, multinomial draw), the CFG schedule, and the
 * Philox RNG (known-answer vectors from Random123, and the keying scheme). */
#include "tests/check_util.h"
#include <math.h>
#include <stdlib.h>

#include "engine/generate.h"
#include "engine/philox.h"
#include "engine/sampler.h"

static void probs_for(const float *logits, int n, ts_sample_params p, float *out)
{
    ts_sampler s;
    ck_assert_int_eq(ts_sampler_init(&s, n), 0);
    for (int i = 0; i < n; i++) out[i] = logits[i];
    ts_sample_probs(&s, out, &p);
    ts_sampler_free(&s);
}

START_TEST(test_top_k_keeps_ties)
{
    float l[6] = {1, 3, 3, 2, 3, 0}, pr[6];
    probs_for(l, 6, (ts_sample_params){1.0f, 2, 1.0f}, pr);
    /* the 2nd largest is 3: all three 3s survive, equally likely */
    for (int i = 0; i < 6; i++) {
        if (i == 1 || i == 2 || i == 4) ck_assert_float_eq_tol(pr[i], 1.0f / 3, 1e-6);
        else ck_assert_float_eq(pr[i], 0.0f);
    }
    probs_for(l, 6, (ts_sample_params){1.0f, 1, 1.0f}, pr);   /* greedy with ties */
    ck_assert_float_eq_tol(pr[1] + pr[2] + pr[4], 1.0f, 1e-6);
    probs_for(l, 6, (ts_sample_params){1.0f, 100, 1.0f}, pr);  /* k > n keeps all */
    for (int i = 0; i < 6; i++) ck_assert(pr[i] > 0.0f);
    probs_for(l, 6, (ts_sample_params){1.0f, 4, 1.0f}, pr);   /* 4th largest is 2 */
    ck_assert(pr[3] > 0.0f && pr[0] == 0.0f && pr[5] == 0.0f);
}
END_TEST

START_TEST(test_top_p_edges)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05 in scrambled order */
    float l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)}, pr[4];
    probs_for(l, 4, (ts_sample_params){1.0f, 0, 0.45f}, pr);   /* first alone crosses */
    ck_assert_float_eq_tol(pr[1], 1.0f, 1e-6);
    probs_for(l, 4, (ts_sample_params){1.0f, 0, 1e-6f}, pr);   /* tiny p keeps the top one */
    ck_assert_float_eq_tol(pr[1], 1.0f, 1e-6);
    probs_for(l, 4, (ts_sample_params){1.0f, 0, 0.55f}, pr);   /* 0.5 < 0.55: the next is kept */
    ck_assert_float_eq_tol(pr[1], 0.5f / 0.8f, 1e-5);
    ck_assert_float_eq_tol(pr[3], 0.3f / 0.8f, 1e-5);
    ck_assert(pr[0] == 0.0f && pr[2] == 0.0f);
    probs_for(l, 4, (ts_sample_params){1.0f, 0, 0.85f}, pr);   /* 0.8 < 0.85: three kept */
    ck_assert(pr[0] > 0.0f && pr[2] == 0.0f);
    probs_for(l, 4, (ts_sample_params){1.0f, 0, 1.0f}, pr);    /* off */
    ck_assert(pr[2] > 0.0f);
    /* top-k first, then top-p over the survivors' renormalised probabilities */
    probs_for(l, 4, (ts_sample_params){1.0f, 2, 0.7f}, pr);   /* 0.625 < 0.7 */
    ck_assert_float_eq_tol(pr[1], 0.5f / 0.8f, 1e-5);
    ck_assert(pr[3] > 0.0f && pr[0] == 0.0f);
    probs_for(l, 4, (ts_sample_params){1.0f, 2, 0.6f}, pr);   /* 0.625 > 0.6 */
    ck_assert_float_eq_tol(pr[1], 1.0f, 1e-6);
}
END_TEST

START_TEST(test_temperature)
{
    float l[2] = {1.0f, 1.00001f}, pr[3];
    /* below 1e-5 the temperature is clamped: logits differ by ~1 after division */
    probs_for(l, 2, (ts_sample_params){1e-7f, 0, 1.0f}, pr);
    ck_assert_float_eq_tol(pr[0], 1.0f / (1.0f + expf(1.0f)), 0.01f);
    probs_for(l, 2, (ts_sample_params){0.0f, 0, 1.0f}, pr);
    ck_assert_float_eq_tol(pr[0], 1.0f / (1.0f + expf(1.0f)), 0.01f);
    float m[3] = {0.0f, 1.0f, 2.0f};
    probs_for(m, 3, (ts_sample_params){2.0f, 0, 1.0f}, pr);
    float z = 1 + expf(0.5f) + expf(1.0f);
    ck_assert_float_eq_tol(pr[1], expf(0.5f) / z, 1e-6);
}
END_TEST

START_TEST(test_draw)
{
    float p[4] = {0.2f, 0.0f, 0.8f, 0.0f};
    ck_assert_int_eq(ts_sample_draw(p, 4, 0.0), 0);
    ck_assert_int_eq(ts_sample_draw(p, 4, 0.19), 0);
    ck_assert_int_eq(ts_sample_draw(p, 4, 0.21), 2);
    ck_assert_int_eq(ts_sample_draw(p, 4, 0.9999999), 2);   /* never a zero-probability token */
}
END_TEST

START_TEST(test_cfg)
{
    float c[3] = {1, 2, 3}, u[3] = {3, 2, 1}, o[3];
    ts_cfg_combine(o, c, u, 3, 4.0f);
    ck_assert_float_eq(o[0], 3 + (1 - 3) * 4.0f);
    ck_assert_float_eq(o[1], 2.0f);
    ck_assert_float_eq(o[2], 1 + (3 - 1) * 4.0f);
    ts_gen_params p = {.cfg_scale = 4.0f, .cfg_interval = -1.0f};
    for (int t = 0; t < 300; t++) ck_assert(ts_gen_cfg_active(&p, t));
    p.cfg_interval = 2.0f;   /* decode steps i = t - 1 <= 2 keep guidance */
    ck_assert(ts_gen_cfg_active(&p, 0) && ts_gen_cfg_active(&p, 3));
    ck_assert(!ts_gen_cfg_active(&p, 4) && !ts_gen_cfg_active(&p, 100));
    p.cfg_interval = 0.0f;
    ck_assert(ts_gen_cfg_active(&p, 1) && !ts_gen_cfg_active(&p, 2));
    p.cfg_scale = 1.0f;      /* upstream: CFG only when scale > 1 */
    ck_assert(!ts_gen_cfg_active(&p, 0));
}
END_TEST

START_TEST(test_philox_known_answers)
{
    const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                                {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}};
    const uint32_t key[3][2] = {{0, 0}, {0xffffffff, 0xffffffff}, {0xa4093822, 0x299f31d0}};
    const uint32_t want[3][4] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                 {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                 {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        ts_philox4x32(ctr[i], key[i], out);
        for (int j = 0; j < 4; j++) ck_assert_uint_eq(out[j], want[i][j]);
    }
}
END_TEST

START_TEST(test_rng_keying)
{
    double a = ts_rng_uniform(42, 3, 17, TS_RNG_TOKEN);
    ck_assert(a == ts_rng_uniform(42, 3, 17, TS_RNG_TOKEN));
    ck_assert(a != ts_rng_uniform(43, 3, 17, TS_RNG_TOKEN));
    ck_assert(a != ts_rng_uniform(42, 4, 17, TS_RNG_TOKEN));
    ck_assert(a != ts_rng_uniform(42, 3, 18, TS_RNG_TOKEN));
    ck_assert(a != ts_rng_uniform(42ull | (1ull << 40), 3, 17, TS_RNG_TOKEN));   /* high seed bits count */
    double sum = 0;
    int low = 0;
    for (int i = 0; i < 20000; i++) {
        double u = ts_rng_uniform(7, 0, (uint32_t)i, 0);
        ck_assert(u >= 0.0 && u < 1.0);
        sum += u;
        low += u < 0.1;
    }
    ck_assert(fabs(sum / 20000 - 0.5) < 0.01);
    ck_assert(abs(low - 2000) < 200);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("rules");
    tcase_add_test(tc, test_top_k_keeps_ties);
    tcase_add_test(tc, test_top_p_edges);
    tcase_add_test(tc, test_temperature);
    tcase_add_test(tc, test_draw);
    tcase_add_test(tc, test_cfg);
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_rng_keying);
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
