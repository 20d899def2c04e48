/* test_ops.c - every CPU backend op against a naive double-precision reference on
 * random inputs, at the shapes and strides the models use (including odd sizes that
 * exercise the vector tails and the paged KV layout). */
#include "tests/check_util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/philox.h"

static ts_backend *be;

static void setup(void)
{
    ts_error err = {0};
    be = ts_backend_cpu_create(2, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
}

static void teardown(void) { ts_backend_free(be); }

static uint64_t rng_state = 0x1234567;
static float frand(void)   /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *rand_buf(size_t n, float scale)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

/* max |a - b| / max(1, |b|) */
static double max_rel(const float *a, const double *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]) / fmax(1.0, fabs(b[i]));
        if (e > worst || isnan(a[i])) worst = isnan(a[i]) ? INFINITY : e;
    }
    return worst;
}

/* Weights of dtype t holding w (rounded), plus the rounded floats for the reference. */
static void *make_weight(const float *w, size_t n, ts_dtype t, float *rounded)
{
    void *p = malloc(n * ts_dtype_size(t));
    for (size_t i = 0; i < n; i++) {
        if (t == TS_F32) ((float *)p)[i] = w[i];
        else if (t == TS_BF16) ((uint16_t *)p)[i] = ts_f32_to_bf16(w[i]);
        else ((uint16_t *)p)[i] = ts_f32_to_f16(w[i]);
    }
    ts_to_f32(rounded, p, t, n);
    return p;
}

START_TEST(test_matmul)
{
    const ts_dtype types[] = {TS_F32, TS_F16, TS_BF16};
    /* Both sides of each tile size and of the sgemm threshold (64). */
    const int ms[] = {1, 2, 3, 5, 7, 8, 9, 17, 33, 64, 65, 100};
    const size_t n_ms = sizeof ms / sizeof ms[0];
    const int shapes[][2] = {{37, 13}, {64, 96}, {300, 257}};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t si = 0; si < 3; si++)
            for (size_t mi = 0; mi < n_ms; mi++) {
                int n_out = shapes[si][0], n_in = shapes[si][1], m = ms[mi];
                float *w = rand_buf((size_t)n_out * n_in, 0.5f), *wr = malloc((size_t)n_out * n_in * 4);
                void *wd = make_weight(w, (size_t)n_out * n_in, types[ti], wr);
                float *x = rand_buf((size_t)m * n_in, 1.0f), *bias = rand_buf((size_t)n_out, 1.0f);
                float *out = malloc((size_t)m * n_out * 4);
                double *ref = malloc((size_t)m * n_out * 8);
                ts_wt wt;
                ts_error err = {0};
                ck_assert_int_eq(ts_be_weight_init(be, &wt, wd, types[ti], n_out, n_in, &err), 0);
                for (int with_bias = 0; with_bias < 2; with_bias++) {
                    for (int i = 0; i < m; i++)
                        for (int r = 0; r < n_out; r++) {
                            double s = with_bias ? bias[r] : 0;
                            for (int k = 0; k < n_in; k++) s += (double)x[i * n_in + k] * wr[(size_t)r * n_in + k];
                            ref[(size_t)i * n_out + r] = s;
                        }
                    memset(out, 0xff, (size_t)m * n_out * 4);   /* poison */
                    ts_be_matmul(be, out, x, &wt, with_bias ? bias : NULL, m);
                    double e = max_rel(out, ref, (size_t)m * n_out);
                    ck_assert_msg(e < 1e-5, "matmul %s m=%d [%d,%d] bias=%d: rel err %g",
                                  ts_dtype_name(types[ti]), m, n_out, n_in, with_bias, e);
                }
                ts_be_weight_release(be, &wt);
                free(w); free(wr); free(wd); free(x); free(bias); free(out); free(ref);
            }
}
END_TEST

/* Batch invariance: up to 64 rows, a row's matmul output must be bitwise the same
 * whether it runs alone or batched with any others, at any position (continuous
 * batching: the same seed must give the same image whatever else is being served). */
START_TEST(test_matmul_batch_invariant)
{
    enum { M = 64 };
    const ts_dtype types[] = {TS_F32, TS_F16, TS_BF16};
    const int n_ins[] = {100, 67, 768, 5};
    const int n_outs[] = {37, 64, 19, 9};
    const int chunks[] = {3, 7, 13, 41};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t si = 0; si < 4; si++) {
            int n_in = n_ins[si], n_out = n_outs[si];
            size_t nw = (size_t)n_out * n_in, no = (size_t)M * n_out;
            float *w = rand_buf(nw, 0.5f), *wr = malloc(nw * 4);
            void *wd = make_weight(w, nw, types[ti], wr);
            float *x = rand_buf((size_t)M * n_in, 1.0f), *bias = rand_buf((size_t)n_out, 1.0f);
            float *all = malloc(no * 4), *part = malloc(no * 4);
            double *ref = malloc(no * 8);
            ts_wt wt;
            ts_error err = {0};
            ts_ck_ok(ts_be_weight_init(be, &wt, wd, types[ti], n_out, n_in, &err), err);
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                const float *b = with_bias ? bias : NULL;
                for (int i = 0; i < M; i++)
                    for (int r = 0; r < n_out; r++) {
                        double s = with_bias ? bias[r] : 0;
                        for (int k = 0; k < n_in; k++) s += (double)x[i * n_in + k] * wr[(size_t)r * n_in + k];
                        ref[(size_t)i * n_out + r] = s;
                    }
                memset(all, 0xff, no * 4);
                ts_be_matmul(be, all, x, &wt, b, M);
                double e = max_rel(all, ref, no);
                ck_assert_msg(e < 1e-4, "matmul %s [%d,%d] bias=%d: rel err %g",
                              ts_dtype_name(types[ti]), n_out, n_in, with_bias, e);
                /* Each row alone, then fixed chunk sizes, then random ones (1..M). */
                for (int pass = 0; pass < 9; pass++) {
                    memset(part, 0xff, no * 4);
                    for (int i = 0; i < M;) {
                        int c = pass == 0 ? 1 : pass <= 4 ? chunks[pass - 1]
                                                          : 1 + (int)((frand() + 1.0f) * 0.5f * M) % M;
                        if (c > M - i) c = M - i;
                        ts_be_matmul(be, part + (size_t)i * n_out, x + (size_t)i * n_in, &wt, b, c);
                        i += c;
                    }
                    ck_assert_msg(memcmp(all, part, no * 4) == 0,
                                  "matmul %s [%d,%d] bias=%d: batch of %d differs from %s",
                                  ts_dtype_name(types[ti]), n_out, n_in, with_bias, M,
                                  pass == 0 ? "rows alone" : "chunked rows");
                }
                /* Nor may the thread count (which splits the weight rows) matter. */
                for (int nt = 1; nt <= 3; nt += 2) {
                    ts_backend *be2 = ts_backend_cpu_create(nt, &err);
                    ck_assert_msg(be2 != NULL, "%s", err.msg);
                    ts_wt wt2;
                    ts_ck_ok(ts_be_weight_init(be2, &wt2, wd, types[ti], n_out, n_in, &err), err);
                    memset(part, 0xff, no * 4);
                    ts_be_matmul(be2, part, x, &wt2, b, M);
                    ck_assert_msg(memcmp(all, part, no * 4) == 0,
                                  "matmul %s [%d,%d] bias=%d: %d threads differ from 2",
                                  ts_dtype_name(types[ti]), n_out, n_in, with_bias, nt);
                    ts_be_weight_release(be2, &wt2);
                    ts_backend_free(be2);
                }
            }
            ts_be_weight_release(be, &wt);
            free(w); free(wr); free(wd); free(x); free(bias); free(all); free(part); free(ref);
        }
}
END_TEST

START_TEST(test_rmsnorm_swiglu_add)
{
    int m = 5, dim = 77;
    float *x = rand_buf((size_t)m * dim, 3.0f), *w = rand_buf(dim, 1.0f), *out = malloc((size_t)m * dim * 4);
    double *ref = malloc((size_t)m * dim * 8);
    for (int i = 0; i < m; i++) {
        double ss = 0;
        for (int d = 0; d < dim; d++) ss += (double)x[i * dim + d] * x[i * dim + d];
        double r = 1.0 / sqrt(ss / dim + 1e-5);
        for (int d = 0; d < dim; d++) ref[i * dim + d] = x[i * dim + d] * r * w[d];
    }
    ts_be_rmsnorm(be, out, x, w, m, dim, 1e-5f);
    ck_assert(max_rel(out, ref, (size_t)m * dim) < 1e-5);

    float *a = rand_buf(1000, 6.0f), *b = rand_buf(1000, 2.0f), *o = malloc(1000 * 4);
    double *r2 = malloc(1000 * 8);
    for (int i = 0; i < 1000; i++) r2[i] = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
    ts_be_swiglu(be, o, a, b, 1000);
    ck_assert(max_rel(o, r2, 1000) < 1e-5);
    for (int i = 0; i < 1000; i++) r2[i] = (double)a[i] + b[i];
    ts_be_add(be, a, b, 1000);
    ck_assert(max_rel(a, r2, 1000) < 1e-6);
    free(x); free(w); free(out); free(ref); free(a); free(b); free(o); free(r2);
}
END_TEST

START_TEST(test_rope_strided)
{
    int m = 3, n_head = 2, hd = 12, stride = 40, half = hd / 2;
    float *x = rand_buf((size_t)m * stride, 1.0f), *orig = malloc((size_t)m * stride * 4);
    memcpy(orig, x, (size_t)m * stride * 4);
    float *table = rand_buf((size_t)4 * half * 2, 1.0f);
    int32_t pos[3] = {3, 0, 2};
    ts_be_rope(be, x, stride, m, n_head, hd, table, pos);
    for (int i = 0; i < m; i++) {
        for (int h = 0; h < n_head; h++)
            for (int j = 0; j < half; j++) {
                const float *cs = table + ((size_t)pos[i] * half + j) * 2;
                const float *o = orig + (size_t)i * stride + h * hd + 2 * j;
                const float *v = x + (size_t)i * stride + h * hd + 2 * j;
                ck_assert_float_eq_tol(v[0], o[0] * cs[0] - o[1] * cs[1], 1e-6);
                ck_assert_float_eq_tol(v[1], o[1] * cs[0] + o[0] * cs[1], 1e-6);
            }
        for (int k = n_head * hd; k < stride; k++)   /* the rest of the row is untouched */
            ck_assert_float_eq(x[(size_t)i * stride + k], orig[(size_t)i * stride + k]);
    }
    free(x); free(orig); free(table);
}
END_TEST

/* Attention over a paged cache with scattered block tables, for several sequences
 * mixing a prefill (many new rows) and decode steps (one new row), against a naive
 * causal softmax over contiguous K and V. */
static void check_attention(int n_head, int n_kv_head, int hd)
{
    enum { NSEQ = 3, BS = 4, NBLK = 16 };
    int n_ctx[NSEQ] = {9, 1, 14}, n_q[NSEQ] = {9, 1, 1};
    int32_t tables[NSEQ][4] = {{5, 0, 11}, {7}, {2, 9, 4, 13}};
    int kv_dim = n_kv_head * hd, q_dim = n_head * hd, q_stride = q_dim + 5;
    ts_kv_layer kv = {ts_be_alloc(be, (size_t)NBLK * BS * kv_dim), ts_be_alloc(be, (size_t)NBLK * BS * kv_dim),
                      BS, n_kv_head, hd};
    float *K[NSEQ], *V[NSEQ];
    int rows = 0;
    for (int s = 0; s < NSEQ; s++) rows += n_q[s];
    float *q = rand_buf((size_t)rows * q_stride, 1.0f), *out = malloc((size_t)rows * q_dim * 4);
    double *ref = malloc((size_t)rows * q_dim * 8);
    ts_attn_seq seqs[NSEQ];
    int row = 0;
    for (int s = 0; s < NSEQ; s++) {
        K[s] = rand_buf((size_t)n_ctx[s] * kv_dim, 2.0f);
        V[s] = rand_buf((size_t)n_ctx[s] * kv_dim, 1.0f);
        int32_t slots[16];
        for (int p = 0; p < n_ctx[s]; p++) slots[p] = tables[s][p / BS] * BS + p % BS;
        ts_be_kv_store(be, &kv, K[s], V[s], kv_dim, slots, n_ctx[s]);
        seqs[s] = (ts_attn_seq){tables[s], n_ctx[s], n_q[s], row};
        for (int i = 0; i < n_q[s]; i++, row++) {
            int p = n_ctx[s] - n_q[s] + i;
            for (int h = 0; h < n_head; h++) {
                int kh = h / (n_head / n_kv_head);
                double sc[16], mx = -1e300, sum = 0;
                for (int t = 0; t <= p; t++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++)
                        d += (double)q[(size_t)row * q_stride + h * hd + e] * K[s][(size_t)t * kv_dim + kh * hd + e];
                    sc[t] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[t]);
                }
                for (int t = 0; t <= p; t++) sum += (sc[t] = exp(sc[t] - mx));
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int t = 0; t <= p; t++) o += sc[t] / sum * V[s][(size_t)t * kv_dim + kh * hd + e];
                    ref[(size_t)row * q_dim + h * hd + e] = o;
                }
            }
        }
    }
    memset(out, 0xff, (size_t)rows * q_dim * 4);
    ts_be_attention(be, out, q, q_stride, &kv, n_head, seqs, NSEQ, 16);
    double e = max_rel(out, ref, (size_t)rows * q_dim);
    ck_assert_msg(e < 1e-5, "attention heads %d/%d hd %d: rel err %g", n_head, n_kv_head, hd, e);
    for (int s = 0; s < NSEQ; s++) { free(K[s]); free(V[s]); }
    ts_be_free(be, kv.k); ts_be_free(be, kv.v);
    free(q); free(out); free(ref);
}

START_TEST(test_attention_paged)
{
    check_attention(2, 2, 16);
    check_attention(1, 1, 100);   /* GPT-3B's head_dim */
    check_attention(4, 2, 8);     /* grouped K/V heads */
}
END_TEST

static void conv_ref(double *out, const float *in, const float *w, const float *b, int cin, int h,
                     int wd, int cout, int k, int stride, int plo, int phi)
{
    int ho = (h + plo + phi - k) / stride + 1, wo = (wd + plo + phi - k) / stride + 1;
    for (int co = 0; co < cout; co++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                double s = b ? b[co] : 0;
                for (int ci = 0; ci < cin; ci++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy * stride + ky - plo, ix = ox * stride + kx - plo;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                            s += (double)w[((co * cin + ci) * k + ky) * k + kx] * in[(ci * h + iy) * wd + ix];
                        }
                out[(co * ho + oy) * wo + ox] = s;
            }
}

START_TEST(test_conv2d)
{
    /* cin, h, w, cout, k, stride, pad_lo, pad_hi, n */
    const int cases[][9] = {{3, 9, 7, 5, 3, 1, 1, 1, 2}, {8, 6, 6, 4, 1, 1, 0, 0, 1},
                            {4, 8, 8, 6, 3, 2, 0, 1, 2}, {16, 5, 5, 3, 3, 1, 1, 1, 1},
                            {512, 1, 1000, 2, 3, 1, 1, 1, 1}};   /* one row wider than the scratch */
    for (size_t c = 0; c < 5; c++) {
        int cin = cases[c][0], h = cases[c][1], wd = cases[c][2], cout = cases[c][3], k = cases[c][4];
        int st = cases[c][5], plo = cases[c][6], phi = cases[c][7], n = cases[c][8];
        int ho = (h + plo + phi - k) / st + 1, wo = (wd + plo + phi - k) / st + 1;
        size_t wn = (size_t)cout * cin * k * k, in_n = (size_t)cin * h * wd, out_n = (size_t)cout * ho * wo;
        float *w = rand_buf(wn, 0.5f), *wr = malloc(wn * 4), *b = rand_buf(cout, 1.0f);
        float *in = rand_buf(n * in_n, 1.0f), *out = malloc(n * out_n * 4);
        double *ref = malloc(n * out_n * 8);
        for (ts_dtype t = TS_F32; t <= TS_BF16; t++) {
            void *wd16 = make_weight(w, wn, t, wr);
            ts_wt wt;
            ts_error err = {0};
            ck_assert_int_eq(ts_be_weight_init(be, &wt, wd16, t, cout, (int64_t)cin * k * k, &err), 0);
            for (int i = 0; i < n; i++)
                conv_ref(ref + i * out_n, in + i * in_n, wr, b, cin, h, wd, cout, k, st, plo, phi);
            memset(out, 0xff, n * out_n * 4);
            ts_be_conv2d(be, out, in, &wt, b, n, cin, h, wd, k, st, plo, phi);
            double e = max_rel(out, ref, n * out_n);
            ck_assert_msg(e < 1e-5, "conv case %zu dtype %s: rel err %g", c, ts_dtype_name(t), e);
            ts_be_weight_release(be, &wt);
            free(wd16);
        }
        free(w); free(wr); free(b); free(in); free(out); free(ref);
    }
}
END_TEST

START_TEST(test_group_norm_upsample)
{
    int n = 2, c = 64, hw = 15, groups = 32;
    float *x = rand_buf((size_t)n * c * hw, 2.0f), *g = rand_buf(c, 1.0f), *b = rand_buf(c, 1.0f);
    for (size_t i = 0; i < (size_t)n * c * hw; i++) x[i] += 5.0f;   /* non-zero mean */
    float *out = malloc((size_t)n * c * hw * 4);
    double *ref = malloc((size_t)n * c * hw * 8);
    for (int swish = 0; swish < 2; swish++) {
        int cg = c / groups;
        for (int i = 0; i < n; i++)
            for (int gi = 0; gi < groups; gi++) {
                const float *xs = x + ((size_t)i * c + gi * cg) * hw;
                double mean = 0, var = 0;
                for (int k = 0; k < cg * hw; k++) mean += xs[k];
                mean /= cg * hw;
                for (int k = 0; k < cg * hw; k++) var += (xs[k] - mean) * (xs[k] - mean);
                var /= cg * hw;
                for (int ci = 0; ci < cg; ci++)
                    for (int p = 0; p < hw; p++) {
                        int ch = gi * cg + ci;
                        double y = (xs[ci * hw + p] - mean) / sqrt(var + 1e-6) * g[ch] + b[ch];
                        ref[((size_t)i * c + ch) * hw + p] = swish ? y / (1 + exp(-y)) : y;
                    }
            }
        ts_be_group_norm(be, out, x, g, b, n, c, hw, groups, 1e-6f, swish);
        ck_assert_msg(max_rel(out, ref, (size_t)n * c * hw) < 1e-5, "group norm swish=%d", swish);
    }
    float src[2 * 6] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, up[2 * 24];
    ts_be_upsample2x(be, up, src, 1, 2, 2, 3);
    for (int ch = 0; ch < 2; ch++)
        for (int y = 0; y < 4; y++)
            for (int xx = 0; xx < 6; xx++)
                ck_assert_float_eq(up[ch * 24 + y * 6 + xx], src[ch * 6 + (y / 2) * 3 + xx / 2]);
    free(x); free(g); free(b); free(out); free(ref);
}
END_TEST

START_TEST(test_spatial_attention)
{
    int n = 2, c = 32, hw = 23;
    float *q = rand_buf((size_t)n * c * hw, 1.0f), *k = rand_buf((size_t)n * c * hw, 1.0f);
    float *v = rand_buf((size_t)n * c * hw, 1.0f), *out = malloc((size_t)n * c * hw * 4);
    double *ref = malloc((size_t)n * c * hw * 8);
    for (int b = 0; b < n; b++) {
        size_t o = (size_t)b * c * hw;
        for (int i = 0; i < hw; i++) {
            double s[64], mx = -1e300, sum = 0;
            for (int j = 0; j < hw; j++) {
                double d = 0;
                for (int ch = 0; ch < c; ch++) d += (double)q[o + ch * hw + i] * k[o + ch * hw + j];
                s[j] = d / sqrt((double)c);
                mx = fmax(mx, s[j]);
            }
            for (int j = 0; j < hw; j++) sum += (s[j] = exp(s[j] - mx));
            for (int ch = 0; ch < c; ch++) {
                double acc = 0;
                for (int j = 0; j < hw; j++) acc += s[j] / sum * v[o + ch * hw + j];
                ref[o + ch * hw + i] = acc;
            }
        }
    }
    ts_be_spatial_attention(be, out, q, k, v, n, c, hw);
    ck_assert(max_rel(out, ref, (size_t)n * c * hw) < 1e-5);
    free(q); free(k); free(v); free(out); free(ref);
}
END_TEST

START_TEST(test_embed)
{
    float w[6 * 5], wr[6 * 5];
    for (int i = 0; i < 30; i++) w[i] = frand();
    void *wb = make_weight(w, 30, TS_BF16, wr);
    ts_wt t;
    ts_error err = {0};
    ck_assert_int_eq(ts_be_weight_init(be, &t, wb, TS_BF16, 6, 5, &err), 0);
    int32_t ids[3] = {5, 0, 5}, rows[3] = {2, 0, 3};
    float out[20];
    ts_be_embed(be, out, &t, ids, NULL, 3);
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < 5; d++) ck_assert_float_eq(out[i * 5 + d], wr[ids[i] * 5 + d]);
    /* scattered to the given rows; row 1 untouched */
    for (int i = 0; i < 20; i++) out[i] = -7.0f;
    ts_be_embed(be, out, &t, ids, rows, 3);
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < 5; d++) ck_assert_float_eq(out[rows[i] * 5 + d], wr[ids[i] * 5 + d]);
    for (int d = 0; d < 5; d++) ck_assert_float_eq(out[5 + d], -7.0f);
    /* and gathered back */
    float back[15];
    int32_t g[3] = {3, 2, 0};
    ts_be_gather_rows(be, back, out, g, 3, 5);
    for (int d = 0; d < 5; d++) {
        ck_assert_float_eq(back[d], wr[5 * 5 + d]);
        ck_assert_float_eq(back[5 + d], wr[5 * 5 + d]);
        ck_assert_float_eq(back[10 + d], wr[0 * 5 + d]);
    }
    free(wb);
}
END_TEST

/* ---- ViT / MM-DiT ops ---- */

START_TEST(test_layernorm)
{
    const int ms[] = {1, 5, 13};
    const int dims[] = {77, 64, 1024};
    for (size_t mi = 0; mi < 3; mi++)
        for (size_t di = 0; di < 3; di++)
            for (int affine = 0; affine < 4; affine++)   /* bit 0: w, bit 1: b */
                for (int alias = 0; alias < 2; alias++) {
                    int m = ms[mi], dim = dims[di];
                    size_t n = (size_t)m * dim;
                    float *x = rand_buf(n, 3.0f), *w = rand_buf(dim, 1.0f), *b = rand_buf(dim, 1.0f);
                    for (size_t i = 0; i < n; i++) x[i] += 20.0f;   /* a large mean */
                    float *out = alias ? x : malloc(n * 4);
                    double *ref = malloc(n * 8);
                    const float *wp = affine & 1 ? w : NULL, *bp = affine & 2 ? b : NULL;
                    for (int i = 0; i < m; i++) {
                        double mean = 0, var = 0;
                        for (int d = 0; d < dim; d++) mean += x[i * dim + d];
                        mean /= dim;
                        for (int d = 0; d < dim; d++) var += (x[i * dim + d] - mean) * (x[i * dim + d] - mean);
                        var /= dim;
                        for (int d = 0; d < dim; d++) {
                            double y = (x[i * dim + d] - mean) / sqrt(var + 1e-6);
                            ref[i * dim + d] = y * (wp ? wp[d] : 1.0) + (bp ? bp[d] : 0.0);
                        }
                    }
                    if (!alias) memset(out, 0xff, n * 4);
                    ts_be_layernorm(be, out, x, wp, bp, m, dim, 1e-6f);
                    double e = max_rel(out, ref, n);
                    ck_assert_msg(e < 1e-5, "layernorm m=%d dim=%d affine=%d alias=%d: rel err %g", m,
                                  dim, affine, alias, e);
                    if (!alias) free(out);
                    free(x); free(w); free(b); free(ref);
                }
}
END_TEST

static double act_ref(double x, ts_act act)
{
    switch (act) {
    case TS_ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case TS_ACT_GELU_TANH:
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case TS_ACT_QUICK_GELU: return x / (1.0 + exp(-1.702 * x));
    case TS_ACT_SILU: return x / (1.0 + exp(-x));
    case TS_ACT_RELU: return x > 0 ? x : 0.0;
    }
    return NAN;
}

START_TEST(test_activation)
{
    const size_t ns[] = {1, 77, 100003};   /* the last spans several pool tasks */
    const ts_act acts[] = {TS_ACT_GELU, TS_ACT_GELU_TANH, TS_ACT_QUICK_GELU, TS_ACT_SILU,
                           TS_ACT_RELU};
    for (size_t ni = 0; ni < 3; ni++)
        for (size_t ai = 0; ai < 5; ai++)
            for (int alias = 0; alias < 2; alias++) {
                size_t n = ns[ni];
                float *x = rand_buf(n, 8.0f);
                x[0] = ni == 0 ? -30.0f : x[0];   /* far in the negative tail */
                float *out = alias ? x : malloc(n * 4);
                double *ref = malloc(n * 8);
                for (size_t i = 0; i < n; i++) ref[i] = act_ref(x[i], acts[ai]);
                if (!alias) memset(out, 0xff, n * 4);
                ts_be_activation(be, out, x, n, acts[ai]);
                double e = max_rel(out, ref, n);
                ck_assert_msg(e < 1e-5, "activation %d n=%zu alias=%d: rel err %g", (int)acts[ai], n,
                              alias, e);
                if (!alias) free(out);
                free(x); free(ref);
            }
}
END_TEST

/* Gated activations act(a) * b (T5's feed-forward) against double, out of place and in
 * place over either input. */
START_TEST(test_act_mul)
{
    const size_t ns[] = {1, 77, 100003};
    const ts_act acts[] = {TS_ACT_GELU, TS_ACT_GELU_TANH, TS_ACT_QUICK_GELU, TS_ACT_SILU,
                           TS_ACT_RELU};
    for (size_t ni = 0; ni < 3; ni++)
        for (size_t ai = 0; ai < 5; ai++)
            for (int alias = 0; alias < 3; alias++) {   /* none, out = a, out = b */
                size_t n = ns[ni];
                float *a = rand_buf(n, 8.0f), *b = rand_buf(n, 3.0f);
                float *out = alias == 1 ? a : alias == 2 ? b : malloc(n * 4);
                double *ref = malloc(n * 8);
                for (size_t i = 0; i < n; i++) ref[i] = act_ref(a[i], acts[ai]) * b[i];
                if (!alias) memset(out, 0xff, n * 4);
                ts_be_act_mul(be, out, a, b, n, acts[ai]);
                double e = max_rel(out, ref, n);
                ck_assert_msg(e < 1e-5, "act_mul %d n=%zu alias=%d: rel err %g", (int)acts[ai], n,
                              alias, e);
                if (!alias) free(out);
                free(a); free(b); free(ref);
            }
}
END_TEST

/* adaLN as MaskGen lays it out: each item's [shift | scale | gate | ...] chunks in one
 * row of mod_stride floats (wider than the chunks), rows_per_item rows per item with a
 * partial last item; without shift; in place. Then the gated residual. */
START_TEST(test_modulate_gated_add)
{
    int m = 7, dim = 77, rpi = 3, items = (m + rpi - 1) / rpi, ms = 6 * dim + 5;
    float *mod = rand_buf((size_t)items * ms, 1.0f);
    const float *shift = mod + dim, *scale = mod + 2 * dim, *gate = mod + 5 * dim;
    size_t n = (size_t)m * dim;
    double *ref = malloc(n * 8);
    for (int with_shift = 0; with_shift < 2; with_shift++)
        for (int alias = 0; alias < 2; alias++) {
            float *x = rand_buf(n, 3.0f), *out = alias ? x : malloc(n * 4);
            for (int r = 0; r < m; r++)
                for (int d = 0; d < dim; d++) {
                    size_t mo = (size_t)(r / rpi) * ms + d;
                    ref[r * dim + d] = (double)x[r * dim + d] * (1.0 + scale[mo]) + (with_shift ? shift[mo] : 0.0);
                }
            if (!alias) memset(out, 0xff, n * 4);
            ts_be_modulate(be, out, x, with_shift ? shift : NULL, scale, ms, m, dim, rpi);
            double e = max_rel(out, ref, n);
            ck_assert_msg(e < 1e-6, "modulate shift=%d alias=%d: rel err %g", with_shift, alias, e);
            if (!alias) free(out);
            free(x);
        }
    float *x = rand_buf(n, 3.0f), *y = rand_buf(n, 2.0f);
    for (int r = 0; r < m; r++)
        for (int d = 0; d < dim; d++)
            ref[r * dim + d] = x[r * dim + d] + (double)gate[(size_t)(r / rpi) * ms + d] * y[r * dim + d];
    ts_be_gated_add(be, x, y, gate, ms, m, dim, rpi);
    double e = max_rel(x, ref, n);
    ck_assert_msg(e < 1e-6, "gated_add: rel err %g", e);
    /* one item for all rows (mod_stride unused) */
    float *x2 = rand_buf(n, 3.0f);
    for (size_t i = 0; i < n; i++) ref[i] = x2[i] + (double)gate[i % dim] * y[i];
    ts_be_gated_add(be, x2, y, gate, 0, m, dim, m);
    e = max_rel(x2, ref, n);
    ck_assert_msg(e < 1e-6, "gated_add single item: rel err %g", e);
    free(mod); free(ref); free(x); free(y); free(x2);
}
END_TEST

START_TEST(test_scatter_add_rows)
{
    int n_rows = 11, n = 5, dim = 77;
    int32_t rows[5] = {7, 0, 10, 3, 4};
    float *x = rand_buf((size_t)n_rows * dim, 2.0f), *y = rand_buf((size_t)n * dim, 2.0f);
    float *orig = malloc((size_t)n_rows * dim * 4);
    memcpy(orig, x, (size_t)n_rows * dim * 4);
    ts_be_scatter_add_rows(be, x, y, rows, n, dim);
    int hit[11] = {0};
    for (int i = 0; i < n; i++) {
        hit[rows[i]] = 1;
        for (int d = 0; d < dim; d++)
            ck_assert_float_eq(x[rows[i] * dim + d], orig[rows[i] * dim + d] + y[i * dim + d]);
    }
    for (int r = 0; r < n_rows; r++)
        if (!hit[r]) ck_assert(memcmp(x + r * dim, orig + r * dim, (size_t)dim * 4) == 0);
    free(x); free(y); free(orig);
}
END_TEST

/* Dense attention of n_seq sequences against a naive double softmax. q, k and v are the
 * column offsets 0, D and 2D (D = n_head * head_dim) of rows of `stride` floats; with
 * `scatter` the positions live in a random subset of a buffer of more rows (rows index
 * array), and the rows it leaves out must keep their contents in out. */
static void check_attention_dense(int n_seq, int seq_len, int n_head, int hd, int extra,
                                  int scatter, int causal)
{
    int D = n_head * hd, stride = 3 * D + extra, n_pos = n_seq * seq_len;
    int n_rows = scatter ? n_pos + 5 : n_pos;
    float *qkv = rand_buf((size_t)n_rows * stride, 1.0f);
    for (int r = 0; r < n_rows; r++)   /* sharper softmax: scale k up */
        for (int e = 0; e < D; e++) qkv[(size_t)r * stride + D + e] *= 3.0f;
    int32_t *rows = NULL;
    if (scatter) {
        rows = malloc((size_t)n_rows * 4);
        for (int i = 0; i < n_rows; i++) rows[i] = i;
        for (int i = n_rows - 1; i > 0; i--) {
            int jx = (int)((frand() + 1.0f) * 0.5f * (i + 1)) % (i + 1);
            int32_t t = rows[i]; rows[i] = rows[jx]; rows[jx] = t;
        }
    }
    float *out = malloc((size_t)n_rows * D * 4);
    double *ref = malloc((size_t)n_rows * D * 8), *sc = malloc((size_t)seq_len * 8);
    for (size_t i = 0; i < (size_t)n_rows * D; i++) ref[i] = -7.0;   /* rows left alone */
    for (int s = 0; s < n_seq; s++)
        for (int p = 0; p < seq_len; p++) {
            int r = rows ? rows[s * seq_len + p] : s * seq_len + p;
            int n_keys = causal ? p + 1 : seq_len;
            for (int h = 0; h < n_head; h++) {
                double mx = -1e300, sum = 0;
                for (int t = 0; t < n_keys; t++) {
                    int rk = rows ? rows[s * seq_len + t] : s * seq_len + t;
                    double d = 0;
                    for (int e = 0; e < hd; e++)
                        d += (double)qkv[(size_t)r * stride + h * hd + e] * qkv[(size_t)rk * stride + D + h * hd + e];
                    sc[t] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[t]);
                }
                for (int t = 0; t < n_keys; t++) sum += (sc[t] = exp(sc[t] - mx));
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int t = 0; t < n_keys; t++) {
                        int rk = rows ? rows[s * seq_len + t] : s * seq_len + t;
                        o += sc[t] / sum * qkv[(size_t)rk * stride + 2 * D + h * hd + e];
                    }
                    ref[(size_t)r * D + h * hd + e] = o;
                }
            }
        }
    for (size_t i = 0; i < (size_t)n_rows * D; i++) out[i] = -7.0f;
    ts_be_attention_dense(be, out, qkv, qkv + D, qkv + 2 * D, stride, n_head, hd, rows, n_seq,
                          seq_len, causal);
    double e = max_rel(out, ref, (size_t)n_rows * D);
    ck_assert_msg(e < 1e-5, "attention_dense seqs %d len %d heads %d hd %d stride %d rows %s "
                  "causal %d: rel err %g", n_seq, seq_len, n_head, hd, stride,
                  scatter ? "scattered" : "NULL", causal, e);
    free(qkv); free(rows); free(out); free(ref); free(sc);
}

START_TEST(test_attention_dense)
{
    /* n_seq, seq_len, n_head, head_dim, stride - 3D, scattered rows, causal */
    const int cases[][7] = {
        {2, 77, 2, 64, 0, 0, 1},    /* CLIP's text tower: fused in_proj rows, causal */
        {3, 37, 3, 80, 7, 1, 0},    /* MaskGen's head_dim, image+text rows interleaved */
        {2, 45, 2, 64, 0, 1, 1},
        {1, 1, 1, 13, 3, 0, 1},     /* one position */
        {1, 462, 1, 64, 0, 0, 0},   /* TA-TiTok's decoder length */
        {1, 2100, 1, 8, 1, 0, 1},   /* long enough that the queries go in chunks */
        {1, 2100, 1, 8, 0, 1, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        check_attention_dense(cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4],
                              cases[c][5], cases[c][6]);
}
END_TEST

/* ts_be_attention_bias against a naive double loop: n_seq sequences of seq_len rows, q,
 * k and v at column offsets 0, D and 2D of rows of `stride` floats (D = n_head *
 * head_dim), an additive bias [n_head][seq_len][seq_len] (or none), key lengths per
 * sequence (or none) and a scale. The outputs of every row, padding included, are
 * compared; then each sequence alone (n_seq 1, seq_len = its kv_len) must give its
 * first kv_len rows bit for bit: what the T5 encoder's batching relies on. */
static void check_attention_bias(int n_seq, int seq_len, int n_head, int hd, int extra,
                                 int with_bias, int with_len, float scale)
{
    int D = n_head * hd, stride = 3 * D + extra, M = n_seq * seq_len;
    float *qkv = rand_buf((size_t)M * stride, 1.0f);
    float *bias = with_bias ? rand_buf((size_t)n_head * seq_len * seq_len, 4.0f) : NULL;
    int32_t *len = NULL;
    if (with_len) {
        len = malloc((size_t)n_seq * 4);
        for (int s = 0; s < n_seq; s++)   /* 1, seq_len and values between */
            len[s] = s == 0   ? 1
                     : s == 1 ? seq_len
                              : 1 + (int)((frand() + 1.0f) * 0.5f * seq_len) % seq_len;
    }
    float *out = malloc((size_t)M * D * 4);
    double *ref = malloc((size_t)M * D * 8), *sc = malloc((size_t)seq_len * 8);
    for (int s = 0; s < n_seq; s++) {
        int nk = len ? len[s] : seq_len;
        for (int p = 0; p < seq_len; p++)
            for (int h = 0; h < n_head; h++) {
                const float *qp = qkv + (size_t)(s * seq_len + p) * stride + h * hd;
                double mx = -1e300, sum = 0;
                for (int t = 0; t < nk; t++) {
                    const float *kt = qkv + (size_t)(s * seq_len + t) * stride + D + h * hd;
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)qp[e] * kt[e];
                    sc[t] = d * scale + (bias ? bias[((size_t)h * seq_len + p) * seq_len + t] : 0.0);
                    mx = fmax(mx, sc[t]);
                }
                for (int t = 0; t < nk; t++) sum += (sc[t] = exp(sc[t] - mx));
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int t = 0; t < nk; t++)
                        o += sc[t] / sum * qkv[(size_t)(s * seq_len + t) * stride + 2 * D + h * hd + e];
                    ref[(size_t)(s * seq_len + p) * D + h * hd + e] = o;
                }
            }
    }
    memset(out, 0xff, (size_t)M * D * 4);   /* NaN: rows the op skips fail */
    ts_be_attention_bias(be, out, qkv, qkv + D, qkv + 2 * D, stride, n_head, hd, n_seq, seq_len,
                         bias, len, scale);
    double e = max_rel(out, ref, (size_t)M * D);
    ck_assert_msg(e < 1e-5, "attention_bias seqs %d len %d heads %d hd %d stride %d bias %d "
                  "kv_len %d scale %g: rel err %g", n_seq, seq_len, n_head, hd, stride, with_bias,
                  with_len, scale, e);
    /* Sequence s alone, cut to its kv_len rows (the bias cut to match). */
    for (int s = 0; len && s < n_seq; s++) {
        int L = len[s];
        float *qs = malloc((size_t)L * stride * 4), *os = malloc((size_t)L * D * 4);
        float *bs = bias ? malloc((size_t)n_head * L * L * 4) : NULL;
        memcpy(qs, qkv + (size_t)s * seq_len * stride, (size_t)L * stride * 4);
        for (int h = 0; bs && h < n_head; h++)
            for (int p = 0; p < L; p++)
                memcpy(bs + ((size_t)h * L + p) * L, bias + ((size_t)h * seq_len + p) * seq_len,
                       (size_t)L * 4);
        ts_be_attention_bias(be, os, qs, qs + D, qs + 2 * D, stride, n_head, hd, 1, L, bs, &len[s],
                             scale);
        ck_assert_msg(memcmp(os, out + (size_t)s * seq_len * D, (size_t)L * D * 4) == 0,
                      "attention_bias: sequence %d alone (%d rows) differs from the batch", s, L);
        free(qs); free(os); free(bs);
    }
    free(qkv); free(bias); free(len); free(out); free(ref); free(sc);
}

START_TEST(test_attention_bias)
{
    /* n_seq, seq_len, n_head, head_dim, stride - 3D, bias, kv_len; then the scale */
    const int cases[][7] = {
        {4, 40, 4, 16, 0, 1, 1},    /* the t5_tiny fixture's shape */
        {3, 120, 2, 64, 5, 1, 1},   /* FLAN-T5's head_dim and prompt length */
        {2, 33, 3, 13, 1, 0, 1},    /* odd head_dim (vector tails), no bias */
        {2, 17, 2, 8, 0, 1, 0},     /* no kv_len: every key */
        {1, 1, 1, 5, 0, 1, 1},      /* one position */
    };
    const float scales[] = {1.0f, 0.125f, 1.0f, 0.5f, 1.0f};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        check_attention_bias(cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4],
                             cases[c][5], cases[c][6], scales[c]);
}
END_TEST

/* The guided, tempered logit as backend.h defines it, in float and in that order. */
static float masked_l(const ts_masked_row *r, int p, int vocab, int v)
{
    float c = r->cond[(size_t)p * vocab + v];
    float l = r->uncond ? c + (c - r->uncond[(size_t)p * vocab + v]) * r->guidance : c;
    return l / r->softmax_temp;
}

/* masked_pick against a host loop over ts_rng_gumbel_f, ids and logits bit for bit. */
static void check_masked_pick(const ts_masked_row *rows, int n, int n_pos, int vocab, int32_t *ids,
                              float *logit)
{
    for (int i = 0; i < n * n_pos; i++) {
        ids[i] = -1;
        logit[i] = NAN;
    }
    ts_be_masked_pick(be, ids, logit, rows, n, n_pos, vocab);
    for (int i = 0; i < n; i++) {
        const ts_masked_row *r = &rows[i];
        for (int p = 0; p < n_pos; p++) {
            int best_v = -1;
            float best = -INFINITY;
            for (int v = 0; v < vocab; v++) {
                float s = masked_l(r, p, vocab, v);
                if (r->noise_temp != 0.0f)
                    s = s + r->noise_temp * ts_rng_gumbel_f(r->seed, r->image, r->step, TS_RNG_MASK_TOKEN,
                                                            (uint32_t)(p * vocab + v));
                if (best_v < 0 || s > best) {
                    best = s;
                    best_v = v;
                }
            }
            float want = masked_l(r, p, vocab, best_v);
            ck_assert_msg(ids[i * n_pos + p] == best_v && memcmp(&logit[i * n_pos + p], &want, 4) == 0,
                          "masked_pick row %d pos %d (vocab %d, noise %g): got %d (%g), want %d (%g)",
                          i, p, vocab, r->noise_temp, ids[i * n_pos + p], logit[i * n_pos + p], best_v,
                          want);
        }
    }
}

START_TEST(test_masked_pick)
{
    /* vocab 1003: p * vocab is not a multiple of 4, so the Philox blocks straddle positions */
    enum { N = 3, P = 5, V = 1003 };
    float *cond = rand_buf((size_t)N * P * V, 4.0f), *uncond = rand_buf((size_t)N * P * V, 4.0f);
    /* Ties: row 0 position 2 has the same (largest) guided logit at 700, 300 and 901;
     * row 1 (no guidance) position 4 at 1002 and 17. The lowest index must win. */
    const int tie0[3] = {700, 300, 901};
    for (int t = 0; t < 3; t++) {
        cond[(size_t)(0 * P + 2) * V + tie0[t]] = 9.0f;
        uncond[(size_t)(0 * P + 2) * V + tie0[t]] = 2.0f;
    }
    cond[(size_t)(1 * P + 4) * V + 1002] = 7.5f;
    cond[(size_t)(1 * P + 4) * V + 17] = 7.5f;
    ts_masked_row rows[N] = {
        {cond, uncond, 3.0f, 0.7f, 0.0f, 42, 0, 0},
        {cond + (size_t)P * V, NULL, 0.0f, 1.0f, 0.0f, 42, 1, 0},
        {cond + (size_t)2 * P * V, uncond + (size_t)2 * P * V, 1.5f, 2.5f, 0.0f, 42, 2, 0},
    };
    int32_t ids[N * P], ids0[N * P];
    float logit[N * P];
    check_masked_pick(rows, N, P, V, ids, logit);
    ck_assert_int_eq(ids[0 * P + 2], 300);
    ck_assert_int_eq(ids[1 * P + 4], 17);
    memcpy(ids0, ids, sizeof ids);

    /* With Gumbel noise: different seeds, images and steps per row, ties included. */
    rows[0].noise_temp = 1.0f;
    rows[1].noise_temp = 4.5f;
    rows[2].noise_temp = 0.25f;
    rows[0].seed = 0x123456789abcdefull;
    rows[1].step = 7;
    rows[2].image = 5;
    rows[2].step = 3;
    check_masked_pick(rows, N, P, V, ids, logit);
    int moved = 0;
    for (int i = 0; i < N * P; i++) moved += ids[i] != ids0[i];
    ck_assert_msg(moved > 0, "noise changed no pick");
    /* Each row alone gives the same picks as in the batch. */
    for (int i = 0; i < N; i++) {
        int32_t one[P];
        float lo[P];
        ts_be_masked_pick(be, one, lo, &rows[i], 1, P, V);
        ck_assert(memcmp(one, ids + i * P, sizeof one) == 0 && memcmp(lo, logit + i * P, sizeof lo) == 0);
    }
    free(cond); free(uncond);

    /* MaskGen's shape: 128 positions over 8192 tokens, with guidance and noise. */
    enum { P2 = 128, V2 = 8192 };
    float *c2 = rand_buf((size_t)2 * P2 * V2, 5.0f), *u2 = rand_buf((size_t)2 * P2 * V2, 5.0f);
    ts_masked_row r2[2] = {
        {c2, u2, 2.0f, 1.3f, 2.0f, 7, 0, 11},
        {c2 + (size_t)P2 * V2, u2 + (size_t)P2 * V2, 2.0f, 1.3f, 0.0f, 7, 1, 11},
    };
    int32_t *ids2 = malloc(2 * P2 * 4);
    float *logit2 = malloc(2 * P2 * 4);
    check_masked_pick(r2, 2, P2, V2, ids2, logit2);
    free(c2); free(u2); free(ids2); free(logit2);
}
END_TEST

/* Standard Gumbel draws: finite, within the range the 24-bit u allows, deterministic, and
 * with the distribution's mean (Euler-Mascheroni) and variance (pi^2 / 6). */
START_TEST(test_rng_gumbel)
{
    enum { N = 400000 };
    double sum = 0, sq = 0;
    for (uint32_t i = 0; i < N; i++) {
        float g = ts_rng_gumbel_f(99, i / 1000, 3, TS_RNG_MASK_TOKEN, i);
        ck_assert_msg(isfinite(g) && g > -2.9f && g < 17.4f, "draw %u is %g", i, g);
        sum += g;
        sq += (double)g * g;
    }
    double mean = sum / N, var = sq / N - mean * mean;
    /* standard errors: 1.28 / sqrt(N) = 0.002 for the mean, ~0.01 for the variance */
    ck_assert_msg(fabs(mean - 0.5772156649) < 0.012, "mean %g", mean);
    ck_assert_msg(fabs(var - 1.6449340668) < 0.06, "variance %g", var);
    ck_assert(ts_rng_gumbel_f(5, 1, 2, TS_RNG_MASK_TOKEN, 77) == ts_rng_gumbel_f(5, 1, 2, TS_RNG_MASK_TOKEN, 77));
    ck_assert(ts_rng_gumbel_f(5, 1, 2, TS_RNG_MASK_TOKEN, 77) != ts_rng_gumbel_f(5, 1, 2, TS_RNG_MASK_CONF, 77));
    ck_assert(ts_rng_gumbel_f(5, 1, 2, TS_RNG_MASK_TOKEN, 77) != ts_rng_gumbel_f(6, 1, 2, TS_RNG_MASK_TOKEN, 77));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("cpu");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_matmul);
    tcase_add_test(tc, test_matmul_batch_invariant);
    tcase_add_test(tc, test_rmsnorm_swiglu_add);
    tcase_add_test(tc, test_rope_strided);
    tcase_add_test(tc, test_attention_paged);
    tcase_add_test(tc, test_conv2d);
    tcase_add_test(tc, test_group_norm_upsample);
    tcase_add_test(tc, test_spatial_attention);
    tcase_add_test(tc, test_embed);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_activation);
    tcase_add_test(tc, test_modulate_gated_add);
    tcase_add_test(tc, test_scatter_add_rows);
    tcase_add_test(tc, test_attention_dense);
    tcase_add_test(tc, test_attention_bias);
    tcase_add_test(tc, test_act_mul);
    tcase_add_test(tc, test_masked_pick);
    tcase_add_test(tc, test_rng_gumbel);
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
