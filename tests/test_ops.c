/* test_ops.c - every CPU backend op against a naive double-precision reference on
 * random inputs, at the shapes and strides the models use (including odd sizes that
 * exercise the vector tails and the paged KV layout). */
#include "tests/check_util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"

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
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
