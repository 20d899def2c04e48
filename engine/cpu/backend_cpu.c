/* backend_cpu.c - the CPU backend: every op of backend.h on host memory.
 *
 * Parallelism comes from one thread pool (threadpool.c); OpenBLAS is pinned to one
 * thread and called from inside pool tasks, so the two never fight over the cores.
 * Weights stay in their file dtype (F32/F16/BF16) and are widened as they are read:
 *  - products of up to INVARIANT_M rows (decode steps, batched or not) stream the
 *    weight once through a vectorised dot kernel whose result for each row is bitwise
 *    independent of the other rows in the batch (see dot_block);
 *  - larger products hand row panels to sgemm, widening non-F32 panels first.
 * Activations are float, accumulations float (double for norm statistics).
 */
#include <cblas.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TS_HAVE_AVX2 1
#endif

#include "../backend_impl.h"
#include "../philox.h"
#include "threadpool.h"

/* OpenBLAS extension: its own thread count. */
void openblas_set_num_threads(int num_threads);

/* Products of at most this many rows use the row-invariant dot kernel; larger ones
 * (prefill, conv-like) use sgemm, whose rounding depends on m. Continuous batching
 * runs a sequence's decode step with a varying number of others, so up to here a
 * row's output must not depend on them: same seed, same image. */
#define INVARIANT_M 256
/* Register tile of the dot kernel: DOT_NR weight rows x DOT_NX x rows, one 8-lane
 * accumulator each (12 of the 16 ymm registers). */
#define DOT_NR 4
#define DOT_NX 3
/* Scratch floats per thread: widened weight panels and im2col columns. */
#define SCRATCH_FLOATS (1u << 22)

typedef struct cpu_backend {
    ts_backend base;
    ts_pool *pool;
    float **scratch;    /* [n_threads][SCRATCH_FLOATS] */
    ts_sampler smp;     /* sampling scratch, sized to the vocabulary on first use */
    float *logits;      /* [smp.n] combined logits */
} cpu_backend;

static cpu_backend *cpu(ts_backend *be) { return (cpu_backend *)be; }

/* Ops cannot fail, so the rare temporary they need comes from here: running out of
 * memory mid-op aborts in this one place (as redis's zmalloc does). Steady-state
 * buffers are allocated up front by the models, which do report failure. */
static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "tessera: out of memory allocating %zu bytes in the CPU backend\n", n);
        abort();
    }
    return p;
}

/* ------------------------------------------------------------------ memory */

static float *cpu_alloc(ts_backend *be, size_t n)
{
    (void)be;
    return calloc(n ? n : 1, sizeof(float));
}

static void cpu_free(ts_backend *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_copy(ts_backend *be, float *dst, const float *src, size_t n)
{
    (void)be;
    memmove(dst, src, n * sizeof *dst);
}

static void cpu_copy_bytes(ts_backend *be, void *dst, const void *src, size_t n)
{
    (void)be;
    memmove(dst, src, n);
}

static int cpu_weight_init(ts_backend *be, ts_wt *w, const void *host, ts_dtype t,
                           int64_t n_out, int64_t n_in, ts_error *err)
{
    (void)be;
    (void)err;
    w->data = host;      /* read in place from the mapping */
    w->dtype = t;
    w->n_out = n_out;
    w->n_in = n_in;
    w->owned = NULL;
    return TS_OK;
}

static void cpu_weight_release(ts_backend *be, ts_wt *w)
{
    (void)be;
    free(w->owned);
    memset(w, 0, sizeof *w);
}

/* Widens row r of w into dst (n_in floats). */
static void wt_row_f32(const ts_wt *w, int64_t r, float *dst)
{
    size_t es = ts_dtype_size(w->dtype);
    ts_to_f32(dst, (const char *)w->data + (size_t)r * (size_t)w->n_in * es, w->dtype,
              (size_t)w->n_in);
}

/* ------------------------------------------------------------------ matmul */

typedef struct matmul_job {
    float *out;
    const float *x;
    const ts_wt *w;
    const float *bias;
    int m;
    int64_t rows_per_task;
    cpu_backend *be;
} matmul_job;

#ifdef TS_HAVE_AVX2
static inline __m256 load8(const void *p, ts_dtype t, int64_t i)
{
    if (t == TS_F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (t == TS_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

static inline float load1(const void *p, ts_dtype t, int64_t i)
{
    if (t == TS_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return t == TS_F16 ? ts_f16_to_f32(h) : ts_bf16_to_f32(h);
}

/* One tile: DOT_NR weight rows (of which the first nr are real; the others alias row 0
 * and their results are discarded, so every tile has a compile-time shape) against nx
 * x rows (row stride n_in): acc[r][i] = W[r] . x[i].
 *
 * Batch invariance: every element is computed by the same sequence of operations
 * whatever the tile, m, or the row's place in the batch - one 8-lane FMA accumulator
 * over k = 0, 8, 16, ... (lane l sums k = l mod 8), hsum8, then the k % 8 tail in
 * ascending k with fmaf (explicit, so -ffp-contract cannot change it), then + bias by
 * the caller. Tiling only chooses which elements share loads: each weight vector is
 * widened once and used for all nx x rows, and the DOT_NR * nx independent accumulators
 * hide the FMA latency. Inlined per dtype and nx so the loops specialise and the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void
dot_block(const void *w, ts_dtype t, int64_t n_in, int nr, const float *x, int nx,
          float acc[DOT_NR][DOT_NX])
{
    size_t es = ts_dtype_size(t);
    const char *rows[DOT_NR];
    for (int r = 0; r < DOT_NR; r++)
        rows[r] = (const char *)w + (size_t)(r < nr ? r : 0) * n_in * es;
    int64_t k = 0;
#ifdef TS_HAVE_AVX2
    __m256 a[DOT_NR][DOT_NX];
#pragma GCC unroll 4
    for (int r = 0; r < DOT_NR; r++)
#pragma GCC unroll 4
        for (int i = 0; i < DOT_NX; i++) a[r][i] = _mm256_setzero_ps();
    for (; k + 8 <= n_in; k += 8) {
        __m256 xv[DOT_NX];
#pragma GCC unroll 4
        for (int i = 0; i < nx; i++) xv[i] = _mm256_loadu_ps(x + (size_t)i * n_in + k);
#pragma GCC unroll 4
        for (int r = 0; r < DOT_NR; r++) {
            __m256 wv = load8(rows[r], t, k);
#pragma GCC unroll 4
            for (int i = 0; i < nx; i++) a[r][i] = _mm256_fmadd_ps(wv, xv[i], a[r][i]);
        }
    }
    for (int r = 0; r < DOT_NR; r++)
        for (int i = 0; i < nx; i++) acc[r][i] = hsum8(a[r][i]);
    for (; k < n_in; k++)
        for (int r = 0; r < DOT_NR; r++) {
            float wv = load1(rows[r], t, k);
            for (int i = 0; i < nx; i++) acc[r][i] = fmaf(wv, x[(size_t)i * n_in + k], acc[r][i]);
        }
#else
    /* Scalar: one running sum per element over ascending k, the same in every tile. */
    for (int r = 0; r < DOT_NR; r++)
        for (int i = 0; i < nx; i++) acc[r][i] = 0.0f;
    for (; k < n_in; k++)
        for (int r = 0; r < DOT_NR; r++) {
            float wv = load1(rows[r], t, k);
            for (int i = 0; i < nx; i++) acc[r][i] += wv * x[(size_t)i * n_in + k];
        }
#endif
}

/* out[i, r] for weight rows r in [r0, r1) and all i < m <= INVARIANT_M. Each stripe of
 * DOT_NR weight rows stays in L1 while every x-row tile passes over it, so memory sees
 * each weight once per call. m = 1, 2 (one image's decode step, with CFG) is a single
 * narrow tile per stripe: bandwidth-bound, as fast as a matrix-vector kernel. */
static inline __attribute__((always_inline)) void
dot_rows(float *out, const float *x, const void *w, ts_dtype t, int64_t n_in,
         int64_t n_out, const float *bias, int m, int64_t r0, int64_t r1)
{
    size_t es = ts_dtype_size(t);
    for (int64_t r = r0; r < r1; r += DOT_NR) {
        int nr = r1 - r < DOT_NR ? (int)(r1 - r) : DOT_NR;
        const void *wb = (const char *)w + (size_t)r * n_in * es;
        /* With several x tiles per stripe, prefetch the next stripe a slice per tile:
         * otherwise the first tile of each stripe stalls on L3/DRAM (f32 weights
         * especially, ~20% at m = 16..64). For fewer rows it measured no better. */
        size_t pf_end = m >= 8 && r + 2 * DOT_NR <= r1 ? (size_t)DOT_NR * n_in * es : 0;
        const char *next = pf_end ? (const char *)wb + pf_end : (const char *)wb;
        size_t tiles = ((size_t)m + DOT_NX - 1) / DOT_NX, pf = 0;
        size_t pf_step = ((pf_end + tiles - 1) / tiles + 63) & ~(size_t)63;
        for (int i = 0; i < m;) {
            float acc[DOT_NR][DOT_NX];
            for (size_t e = pf + pf_step; pf < e && pf < pf_end; pf += 64)
                __builtin_prefetch(next + pf, 0, 3);
            /* Tiles of 3 rows; a leftover 4 goes as 2 + 2 rather than 3 + 1 (the 1-row
             * tile is the least efficient). Results are the same for any split. */
            int left = m - i, nx = left == 4 || left == 2 ? 2 : left == 1 ? 1 : 3;
            const float *xi = x + (size_t)i * n_in;
            if (nx == 3) dot_block(wb, t, n_in, nr, xi, 3, acc);
            else if (nx == 2) dot_block(wb, t, n_in, nr, xi, 2, acc);
            else dot_block(wb, t, n_in, nr, xi, 1, acc);
            for (int rr = 0; rr < nr; rr++)
                for (int ii = 0; ii < nx; ii++)
                    out[(size_t)(i + ii) * n_out + r + rr] = acc[rr][ii] + (bias ? bias[r + rr] : 0.0f);
            i += nx;
        }
    }
}

static void matmul_small_task(void *ctx, int task, int thread)
{
    (void)thread;
    matmul_job *j = ctx;
    int64_t r0 = task * j->rows_per_task;
    int64_t r1 = r0 + j->rows_per_task;
    if (r1 > j->w->n_out) r1 = j->w->n_out;
    const ts_wt *w = j->w;
    switch (w->dtype) {
    case TS_F32: dot_rows(j->out, j->x, w->data, TS_F32, w->n_in, w->n_out, j->bias, j->m, r0, r1); break;
    case TS_F16: dot_rows(j->out, j->x, w->data, TS_F16, w->n_in, w->n_out, j->bias, j->m, r0, r1); break;
    default:     dot_rows(j->out, j->x, w->data, TS_BF16, w->n_in, w->n_out, j->bias, j->m, r0, r1); break;
    }
}

/* A panel of output columns [r0, r1) for all m rows via sgemm. */
static void matmul_gemm_task(void *ctx, int task, int thread)
{
    matmul_job *j = ctx;
    const ts_wt *w = j->w;
    int64_t r0 = task * j->rows_per_task;
    int64_t r1 = r0 + j->rows_per_task;
    if (r1 > w->n_out) r1 = w->n_out;
    int64_t nr = r1 - r0;
    const float *panel;
    if (w->dtype == TS_F32) {
        panel = (const float *)w->data + (size_t)r0 * (size_t)w->n_in;
    } else {
        float *s = j->be->scratch[thread];
        for (int64_t r = 0; r < nr; r++) wt_row_f32(w, r0 + r, s + (size_t)r * (size_t)w->n_in);
        panel = s;
    }
    float *out = j->out + r0;
    if (j->bias) {
        for (int i = 0; i < j->m; i++)
            memcpy(out + (size_t)i * w->n_out, j->bias + r0, (size_t)nr * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->m, (int)nr, (int)w->n_in, 1.0f,
                j->x, (int)w->n_in, panel, (int)w->n_in, j->bias ? 1.0f : 0.0f, out,
                (int)w->n_out);
}

static void cpu_matmul(ts_backend *be, float *out, const float *x, const ts_wt *w,
                       const float *bias, int m)
{
    cpu_backend *c = cpu(be);
    matmul_job j = {out, x, w, bias, m, 0, c};
    int nt = be->n_threads;
    if (m <= INVARIANT_M) {
        /* Enough tasks to balance, each a contiguous stripe of rows. Only which weight
         * rows a task owns depends on the thread count, never how an element is summed. */
        j.rows_per_task = (w->n_out + 8 * nt - 1) / (8 * nt);
        if (j.rows_per_task < 16) j.rows_per_task = 16;
        int tasks = (int)((w->n_out + j.rows_per_task - 1) / j.rows_per_task);
        ts_pool_run(c->pool, tasks, matmul_small_task, &j);
        return;
    }
    /* Panels sized to the scratch (for widened weights) and to share the work. */
    int64_t rows = SCRATCH_FLOATS / (w->n_in > 0 ? w->n_in : 1);
    int64_t even = (w->n_out + nt - 1) / nt;
    if (rows > even) rows = even;
    if (rows > 256 && w->dtype == TS_F32) rows = (rows / 64) * 64;
    if (rows < 1) rows = 1;
    j.rows_per_task = rows;
    int tasks = (int)((w->n_out + rows - 1) / rows);
    ts_pool_run(c->pool, tasks, matmul_gemm_task, &j);
}

/* ------------------------------------------------------------------ elementwise */

static void cpu_embed(ts_backend *be, float *out, const ts_wt *table, const int32_t *ids,
                      const int32_t *rows, int n)
{
    (void)be;
    for (int i = 0; i < n; i++) {
        size_t r = rows ? (size_t)rows[i] : (size_t)i;
        wt_row_f32(table, ids[i], out + r * (size_t)table->n_in);
    }
}

static void cpu_gather_rows(ts_backend *be, float *out, const float *x, const int32_t *rows,
                            int n, int dim)
{
    (void)be;
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * dim, x + (size_t)rows[i] * dim, (size_t)dim * sizeof *out);
}

static void cpu_rmsnorm(ts_backend *be, float *out, const float *x, const float *w,
                        int m, int dim, float eps)
{
    (void)be;
    for (int i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        float ss = 0.0f;     /* float accumulation, as torch.mean over fp32 does */
        for (int d = 0; d < dim; d++) ss += xi[d] * xi[d];
        float r = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int d = 0; d < dim; d++) oi[d] = (xi[d] * r) * w[d];
    }
}

static void cpu_rope(ts_backend *be, float *x, int stride, int m, int n_head, int head_dim,
                     const float *table, const int32_t *pos)
{
    (void)be;
    int half = head_dim / 2;
    for (int i = 0; i < m; i++) {
        const float *cs = table + (size_t)pos[i] * half * 2;
        for (int h = 0; h < n_head; h++) {
            float *v = x + (size_t)i * stride + (size_t)h * head_dim;
            for (int j = 0; j < half; j++) {
                float a = v[2 * j], b = v[2 * j + 1];
                float c = cs[2 * j], s = cs[2 * j + 1];
                v[2 * j] = a * c - b * s;
                v[2 * j + 1] = b * c + a * s;
            }
        }
    }
}

static void cpu_swiglu(ts_backend *be, float *out, const float *a, const float *b, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) out[i] = (a[i] / (1.0f + expf(-a[i]))) * b[i];
}

static void cpu_add(ts_backend *be, float *x, const float *y, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* ------------------------------------------------------------------ attention */

static void cpu_kv_store(ts_backend *be, const ts_kv_layer *kv, const float *k, const float *v,
                         int stride, const int32_t *slot, int m)
{
    (void)be;
    size_t dim = (size_t)kv->n_kv_head * kv->head_dim;
    for (int i = 0; i < m; i++) {
        memcpy((float *)kv->k + (size_t)slot[i] * dim, k + (size_t)i * stride, dim * sizeof(float));
        memcpy((float *)kv->v + (size_t)slot[i] * dim, v + (size_t)i * stride, dim * sizeof(float));
    }
}

typedef struct attn_job {
    float *out;
    const float *q;
    int q_stride;
    const ts_kv_layer *kv;
    int n_head;
    const ts_attn_seq *seqs;
    cpu_backend *be;
} attn_job;

static inline const float *kv_at(const float *base, const ts_kv_layer *kv,
                                 const int32_t *table, int pos, int kvh)
{
    size_t slot = (size_t)table[pos / kv->block_size] * kv->block_size + pos % kv->block_size;
    return base + (slot * kv->n_kv_head + kvh) * kv->head_dim;
}

/* One (sequence, head) pair: every new query row of that sequence, scores kept in the
 * thread's scratch (n_ctx <= SCRATCH_FLOATS, far above any model's context). */
/* Attention's inner loops. A scalar float reduction cannot be vectorised by the
 * compiler (it may not reorder the sum), and each query reads every cached key, so
 * these are written with explicit 8-lane accumulators. The order is fixed, so results
 * do not depend on the batch. */
static inline float dot_f32(const float *a, const float *b, int n)
{
    int e = 0;
    float d = 0.0f;
#ifdef TS_HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; e + 8 <= n; e += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + e), _mm256_loadu_ps(b + e), acc);
    d = hsum8(acc);
#endif
    for (; e < n; e++) d = fmaf(a[e], b[e], d);
    return d;
}

static inline void axpy_f32(float *o, float p, const float *v, int n)
{
    int e = 0;
#ifdef TS_HAVE_AVX2
    __m256 pv = _mm256_set1_ps(p);
    for (; e + 8 <= n; e += 8)
        _mm256_storeu_ps(o + e, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + e), _mm256_loadu_ps(o + e)));
#endif
    for (; e < n; e++) o[e] = fmaf(p, v[e], o[e]);
}

static void attn_task(void *ctx, int task, int thread)
{
    attn_job *j = ctx;
    const ts_attn_seq *sq = &j->seqs[task / j->n_head];
    int h = task % j->n_head;
    const ts_kv_layer *kv = j->kv;
    float *scores = j->be->scratch[thread];
    int hd = kv->head_dim;
    int kvh = h / (j->n_head / kv->n_kv_head);
    float scale = 1.0f / sqrtf((float)hd);
    int first = sq->n_ctx - sq->n_q;
    for (int i = 0; i < sq->n_q; i++) {
        int row = sq->q_row + i;
        int n_keys = first + i + 1;    /* causal: keys up to this query's position */
        const float *qi = j->q + (size_t)row * j->q_stride + (size_t)h * hd;
        float mx = -INFINITY;
        for (int t = 0; t < n_keys; t++) {
            const float *kt = kv_at((const float *)kv->k, kv, sq->block_table, t, kvh);
            float d = dot_f32(qi, kt, hd) * scale;
            scores[t] = d;
            if (d > mx) mx = d;
        }
        float sum = 0.0f;
        for (int t = 0; t < n_keys; t++) {
            scores[t] = expf(scores[t] - mx);
            sum += scores[t];
        }
        float inv = 1.0f / sum;
        float *o = j->out + (size_t)row * j->n_head * hd + (size_t)h * hd;
        memset(o, 0, (size_t)hd * sizeof *o);
        for (int t = 0; t < n_keys; t++) {
            const float *vt = kv_at((const float *)kv->v, kv, sq->block_table, t, kvh);
            axpy_f32(o, scores[t] * inv, vt, hd);
        }
    }
}

static void cpu_attention(ts_backend *be, float *out, const float *q, int q_stride,
                          const ts_kv_layer *kv, int n_head, const ts_attn_seq *seqs, int n_seqs,
                          int max_ctx)
{
    (void)max_ctx;   /* scores live in the per-thread scratch, far larger */
    cpu_backend *c = cpu(be);
    attn_job j = {out, q, q_stride, kv, n_head, seqs, c};
    ts_pool_run(c->pool, n_seqs * n_head, attn_task, &j);
}

/* ------------------------------------------------------------------ ViT / MM-DiT ops */

/* Rows per pool task of the row-wise ViT ops: a CLIP or MaskGen layer norms a few
 * hundred rows of ~1k floats, so ~16 tasks per thread balance without much overhead. */
static int rows_per_task(int m, int n_threads)
{
    int r = (m + 16 * n_threads - 1) / (16 * n_threads);
    return r < 1 ? 1 : r;
}

typedef struct ln_job {
    float *out;
    const float *x, *w, *b;
    int m, dim, rows;
    float eps;
} ln_job;

/* Statistics in double, two passes (as group norm: activations with a large mean lose
 * their variance in a one-pass float sum); the row is read in full before it is
 * written, so out may alias x. */
static void ln_task(void *ctx, int task, int thread)
{
    (void)thread;
    ln_job *j = ctx;
    int r0 = task * j->rows, r1 = r0 + j->rows < j->m ? r0 + j->rows : j->m;
    for (int i = r0; i < r1; i++) {
        const float *xi = j->x + (size_t)i * j->dim;
        float *oi = j->out + (size_t)i * j->dim;
        double sum = 0.0, var = 0.0;
        for (int d = 0; d < j->dim; d++) sum += xi[d];
        double mean = sum / j->dim;
        for (int d = 0; d < j->dim; d++) var += (xi[d] - mean) * (xi[d] - mean);
        var /= j->dim;
        float inv = (float)(1.0 / sqrt(var + j->eps)), fm = (float)mean;
        for (int d = 0; d < j->dim; d++) {
            float y = (xi[d] - fm) * inv;
            if (j->w) y *= j->w[d];
            if (j->b) y += j->b[d];
            oi[d] = y;
        }
    }
}

static void cpu_layernorm(ts_backend *be, float *out, const float *x, const float *w,
                          const float *b, int m, int dim, float eps)
{
    int rows = rows_per_task(m, be->n_threads);
    ln_job j = {out, x, w, b, m, dim, rows, eps};
    ts_pool_run(cpu(be)->pool, (m + rows - 1) / rows, ln_task, &j);
}

/* One element of each activation, in float as torch computes them in fp32. */
static inline float act_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

static inline float act_gelu_tanh(float x)
{
    float x3 = x * x * x;   /* torch's grouping: kappa * x^3 */
    return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x3)));
}

static inline float act_quick_gelu(float x) { return x / (1.0f + expf(-1.702f * x)); }
static inline float act_silu(float x) { return x / (1.0f + expf(-x)); }
static inline float act_relu(float x) { return x > 0.0f ? x : 0.0f; }

/* Elements per activation task: a MaskGen MLP's hidden layer is ~10^6 floats, and erf
 * or tanh of each is worth spreading over the threads. */
#define ACT_CHUNK 16384

typedef struct act_job {
    float *out;
    const float *x;
    size_t n;
    ts_act act;
} act_job;

/* A switch per chunk, not per element, so each loop is a plain map the compiler can
 * unroll. Element i is read before it is written: out may alias x. */
static void act_task(void *ctx, int task, int thread)
{
    (void)thread;
    act_job *j = ctx;
    size_t i0 = (size_t)task * ACT_CHUNK, i1 = i0 + ACT_CHUNK < j->n ? i0 + ACT_CHUNK : j->n;
    float *o = j->out;
    const float *x = j->x;
    switch (j->act) {
    case TS_ACT_GELU:       for (size_t i = i0; i < i1; i++) o[i] = act_gelu(x[i]); break;
    case TS_ACT_GELU_TANH:  for (size_t i = i0; i < i1; i++) o[i] = act_gelu_tanh(x[i]); break;
    case TS_ACT_QUICK_GELU: for (size_t i = i0; i < i1; i++) o[i] = act_quick_gelu(x[i]); break;
    case TS_ACT_SILU:       for (size_t i = i0; i < i1; i++) o[i] = act_silu(x[i]); break;
    case TS_ACT_RELU:       for (size_t i = i0; i < i1; i++) o[i] = act_relu(x[i]); break;
    }
}

static void cpu_activation(ts_backend *be, float *out, const float *x, size_t n, ts_act act)
{
    act_job j = {out, x, n, act};
    ts_pool_run(cpu(be)->pool, (int)((n + ACT_CHUNK - 1) / ACT_CHUNK), act_task, &j);
}

typedef struct act_mul_job {
    float *out;
    const float *a, *b;
    size_t n;
    ts_act act;
} act_mul_job;

/* act(a[i]) * b[i], the product rounded once in float as torch's; a[i] and b[i] are
 * read before out[i] is written, so out may alias either. */
static void act_mul_task(void *ctx, int task, int thread)
{
    (void)thread;
    act_mul_job *j = ctx;
    size_t i0 = (size_t)task * ACT_CHUNK, i1 = i0 + ACT_CHUNK < j->n ? i0 + ACT_CHUNK : j->n;
    float *o = j->out;
    const float *a = j->a, *b = j->b;
    switch (j->act) {
    case TS_ACT_GELU:       for (size_t i = i0; i < i1; i++) o[i] = act_gelu(a[i]) * b[i]; break;
    case TS_ACT_GELU_TANH:  for (size_t i = i0; i < i1; i++) o[i] = act_gelu_tanh(a[i]) * b[i]; break;
    case TS_ACT_QUICK_GELU: for (size_t i = i0; i < i1; i++) o[i] = act_quick_gelu(a[i]) * b[i]; break;
    case TS_ACT_SILU:       for (size_t i = i0; i < i1; i++) o[i] = act_silu(a[i]) * b[i]; break;
    case TS_ACT_RELU:       for (size_t i = i0; i < i1; i++) o[i] = act_relu(a[i]) * b[i]; break;
    }
}

static void cpu_act_mul(ts_backend *be, float *out, const float *a, const float *b, size_t n,
                        ts_act act)
{
    act_mul_job j = {out, a, b, n, act};
    ts_pool_run(cpu(be)->pool, (int)((n + ACT_CHUNK - 1) / ACT_CHUNK), act_mul_task, &j);
}

/* adaLN-Zero: x * (1 + scale) + shift with the item's vectors, torch's order of operations. */
static void cpu_modulate(ts_backend *be, float *out, const float *x, const float *shift,
                         const float *scale, int mod_stride, int m, int dim, int rows_per_item)
{
    (void)be;
    for (int r = 0; r < m; r++) {
        size_t mo = (size_t)(r / rows_per_item) * mod_stride;
        const float *sc = scale + mo, *sh = shift ? shift + mo : NULL;
        const float *xr = x + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        if (sh)
            for (int d = 0; d < dim; d++) o[d] = xr[d] * (1.0f + sc[d]) + sh[d];
        else
            for (int d = 0; d < dim; d++) o[d] = xr[d] * (1.0f + sc[d]);
    }
}

static void cpu_gated_add(ts_backend *be, float *x, const float *y, const float *gate,
                          int mod_stride, int m, int dim, int rows_per_item)
{
    (void)be;
    for (int r = 0; r < m; r++) {
        const float *g = gate + (size_t)(r / rows_per_item) * mod_stride;
        const float *yr = y + (size_t)r * dim;
        float *xr = x + (size_t)r * dim;
        for (int d = 0; d < dim; d++) xr[d] += g[d] * yr[d];
    }
}

static void cpu_scatter_add_rows(ts_backend *be, float *x, const float *y, const int32_t *rows,
                                 int n, int dim)
{
    (void)be;
    for (int i = 0; i < n; i++) {
        float *xr = x + (size_t)rows[i] * dim;
        const float *yr = y + (size_t)i * dim;
        for (int d = 0; d < dim; d++) xr[d] += yr[d];
    }
}

typedef struct dattn_job {
    float *out;
    const float *q, *k, *v;
    int stride, n_head, head_dim;
    const int32_t *rows;
    int seq_len, causal;
    cpu_backend *be;
} dattn_job;

/* Copies head h of the seq_len rows of sequence s of x into dst [seq_len, head_dim]. */
static void dattn_gather(float *dst, const float *x, const dattn_job *j, int s, int h)
{
    for (int p = 0; p < j->seq_len; p++) {
        size_t i = (size_t)s * j->seq_len + p;
        size_t r = j->rows ? (size_t)j->rows[i] : i;
        memcpy(dst + (size_t)p * j->head_dim, x + r * j->stride + (size_t)h * j->head_dim,
               (size_t)j->head_dim * sizeof *dst);
    }
}

/* One (sequence, head) pair. Its q, k and v heads are gathered into contiguous panels
 * (rows may be scattered and the stride wide), then per chunk of queries S = Q K^T
 * (sgemm), a row softmax, and O = P V (sgemm), as spatial attention does: every query
 * meets every key, so blocked products beat a separate dot per score. The chunk
 * only bounds the scores' memory; its size depends on seq_len and head_dim alone, so a
 * sequence's result does not depend on what else is in the batch. Causal chunks stop
 * the keys at their last query and zero the scores above each query's position. */
static void dattn_task(void *ctx, int task, int thread)
{
    dattn_job *j = ctx;
    int s = task / j->n_head, h = task % j->n_head;
    int L = j->seq_len, hd = j->head_dim;
    size_t panel = (size_t)L * hd;
    /* panels Q, K, V, O, then the scores of a chunk of qc queries */
    float *buf = j->be->scratch[thread], *own = NULL;
    size_t avail = SCRATCH_FLOATS > 4 * panel ? SCRATCH_FLOATS - 4 * panel : 0;
    int qc = avail / (size_t)L < (size_t)L ? (int)(avail / (size_t)L) : L;
    if (qc < 1) {   /* beyond any model's length: a buffer of this task's own */
        qc = L < 64 ? L : 64;
        buf = own = xmalloc((4 * panel + (size_t)qc * L) * sizeof *buf);
    }
    float *Q = buf, *K = Q + panel, *V = K + panel, *O = V + panel, *S = O + panel;
    dattn_gather(Q, j->q, j, s, h);
    dattn_gather(K, j->k, j, s, h);
    dattn_gather(V, j->v, j, s, h);
    float scale = 1.0f / sqrtf((float)hd);
    for (int i0 = 0; i0 < L; i0 += qc) {
        int nq = L - i0 < qc ? L - i0 : qc;
        int nk = j->causal ? i0 + nq : L;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, scale,
                    Q + (size_t)i0 * hd, hd, K, hd, 0.0f, S, nk);
        for (int r = 0; r < nq; r++) {
            float *row = S + (size_t)r * nk;
            int n = j->causal ? i0 + r + 1 : nk;   /* keys this query sees */
            float mx = -INFINITY, sum = 0.0f;
            for (int t = 0; t < n; t++) mx = row[t] > mx ? row[t] : mx;
            for (int t = 0; t < n; t++) sum += (row[t] = expf(row[t] - mx));
            float inv = 1.0f / sum;
            for (int t = 0; t < n; t++) row[t] *= inv;
            for (int t = n; t < nk; t++) row[t] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, 1.0f, S, nk, V, hd,
                    0.0f, O + (size_t)i0 * hd, hd);
    }
    /* out rows: the query's buffer row, stride n_head * head_dim */
    size_t od = (size_t)j->n_head * hd;
    for (int p = 0; p < L; p++) {
        size_t i = (size_t)s * L + p;
        size_t r = j->rows ? (size_t)j->rows[i] : i;
        memcpy(j->out + r * od + (size_t)h * hd, O + (size_t)p * hd, (size_t)hd * sizeof *O);
    }
    free(own);
}

static void cpu_attention_dense(ts_backend *be, float *out, const float *q, const float *k,
                                const float *v, int stride, int n_head, int head_dim,
                                const int32_t *rows, int n_seq, int seq_len, int causal)
{
    cpu_backend *c = cpu(be);
    dattn_job j = {out, q, k, v, stride, n_head, head_dim, rows, seq_len, causal, c};
    ts_pool_run(c->pool, n_seq * n_head, dattn_task, &j);
}

typedef struct battn_job {
    float *out;
    const float *q, *k, *v, *bias;
    const int32_t *kv_len;
    int stride, n_head, head_dim, seq_len;
    float scale;
    cpu_backend *be;
} battn_job;

/* One (sequence, head) pair of ts_be_attention_bias: for every query row, the scores
 * against the sequence's first kv_len keys (dot_f32, fixed order), a float softmax, and
 * the weighted sum of values (axpy_f32): paged attention's loops, without sgemm: a
 * T5 prompt is ~100 tokens, its attention a small share of the layer, and this way a
 * row's result does not depend on seq_len or on the other sequences, bit for bit. The
 * scores live in the thread's scratch (seq_len <= SCRATCH_FLOATS). */
static void battn_task(void *ctx, int task, int thread)
{
    battn_job *j = ctx;
    int s = task / j->n_head, h = task % j->n_head;
    int L = j->seq_len, hd = j->head_dim;
    int n_keys = j->kv_len ? j->kv_len[s] : L;
    if (n_keys > L) n_keys = L;
    float *scores = j->be->scratch[thread];
    size_t od = (size_t)j->n_head * hd, col = (size_t)h * hd;
    const float *K = j->k + (size_t)s * L * j->stride + col;
    const float *V = j->v + (size_t)s * L * j->stride + col;
    for (int p = 0; p < L; p++) {
        const float *qp = j->q + ((size_t)s * L + p) * j->stride + col;
        const float *bp = j->bias ? j->bias + ((size_t)h * L + p) * L : NULL;
        float *o = j->out + ((size_t)s * L + p) * od + col;
        memset(o, 0, (size_t)hd * sizeof *o);
        if (n_keys <= 0) continue;   /* outside the contract: zeros rather than NaN */
        float mx = -INFINITY;
        for (int t = 0; t < n_keys; t++) {
            float d = dot_f32(qp, K + (size_t)t * j->stride, hd) * j->scale;
            if (bp) d += bp[t];
            scores[t] = d;
            if (d > mx) mx = d;
        }
        float sum = 0.0f;
        for (int t = 0; t < n_keys; t++) {
            scores[t] = expf(scores[t] - mx);
            sum += scores[t];
        }
        float inv = 1.0f / sum;
        for (int t = 0; t < n_keys; t++)
            axpy_f32(o, scores[t] * inv, V + (size_t)t * j->stride, hd);
    }
}

static void cpu_attention_bias(ts_backend *be, float *out, const float *q, const float *k,
                               const float *v, int stride, int n_head, int head_dim, int n_seq,
                               int seq_len, const float *bias, const int32_t *kv_len, float scale)
{
    cpu_backend *c = cpu(be);
    if (seq_len > (int)SCRATCH_FLOATS) {   /* far beyond any text encoder's context */
        fprintf(stderr, "tessera: attention_bias: seq_len %d exceeds the CPU scratch\n", seq_len);
        abort();
    }
    battn_job j = {out, q, k, v, bias, kv_len, stride, n_head, head_dim, seq_len, scale, c};
    ts_pool_run(c->pool, n_seq * n_head, battn_task, &j);
}

/* ------------------------------------------------------------------ masked decoding */

/* The guided, tempered logit of one vocabulary entry, rounded step by step in MaskGen's
 * order (cond + (cond - uncond) * guidance, then / softmax_temp), as its fp32 PyTorch
 * reference does; the build does not contract these into FMAs (-std=c11). */
static inline float guided_logit(const float *cond, const float *uncond, int v, float guidance,
                                 float softmax_temp)
{
    float l = uncond ? cond[v] + (cond[v] - uncond[v]) * guidance : cond[v];
    return l / softmax_temp;
}

/* ts_rng_gumbel_f's noise from one Philox word (engine/philox.c: keep the two equal; the
 * masked-pick test compares with ts_rng_gumbel_f itself). Here one Philox block serves
 * the four consecutive indices it covers, a quarter of the generator's work. */
static inline float gumbel_from_word(uint32_t w)
{
    float u = ((float)(w >> 8) + 0.5f) * (1.0f / 16777216.0f);
    return -logf(-logf(u));
}

typedef struct pick_job {
    int32_t *ids;
    float *logit;
    const ts_masked_row *rows;
    int n_pos, vocab;
} pick_job;

/* One (row, position): argmax of l[v] + noise_temp * g[v] over ascending v with a strict
 * comparison, so equal maxima go to the lowest index. Without noise the RNG is never
 * called: pure argmax. */
static void pick_task(void *ctx, int task, int thread)
{
    (void)thread;
    pick_job *j = ctx;
    const ts_masked_row *r = &j->rows[task / j->n_pos];
    int p = task % j->n_pos, V = j->vocab;
    const float *cond = r->cond + (size_t)p * V;
    const float *uncond = r->uncond ? r->uncond + (size_t)p * V : NULL;
    int noisy = r->noise_temp != 0.0f;
    uint32_t base = (uint32_t)p * (uint32_t)V, key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
    uint32_t words[4] = {0}, block = 0;
    int have_block = 0;
    int best_v = 0;
    float best = -INFINITY;
    for (int v = 0; v < V; v++) {
        float s = guided_logit(cond, uncond, v, r->guidance, r->softmax_temp);
        if (noisy) {
            uint32_t idx = base + (uint32_t)v;
            if (!have_block || idx / 4 != block) {
                block = idx / 4;
                uint32_t ctr[4] = {r->image, r->step, TS_RNG_MASK_TOKEN, block};
                ts_philox4x32(ctr, key, words);
                have_block = 1;
            }
            s = s + r->noise_temp * gumbel_from_word(words[idx % 4]);
        }
        if (s > best) {
            best = s;
            best_v = v;
        }
    }
    j->ids[task] = best_v;
    j->logit[task] = guided_logit(cond, uncond, best_v, r->guidance, r->softmax_temp);
}

/* Host memory is backend memory here: the outputs are written in place. */
static void cpu_masked_pick(ts_backend *be, int32_t *ids, float *logit, const ts_masked_row *rows,
                            int n, int n_pos, int vocab)
{
    if (n_pos <= 0 || vocab <= 0) return;
    pick_job j = {ids, logit, rows, n_pos, vocab};
    ts_pool_run(cpu(be)->pool, n * n_pos, pick_task, &j);
}

/* ------------------------------------------------------------------ convolution */

typedef struct conv_job {
    float *out;
    const float *in;
    const float *wf;          /* weights as float [cout, cin*k*k] */
    const float *bias;
    int cin, h, wd, cout, k, stride, pad;
    int ho, wo;
    int rows_per_task, tasks_per_image;   /* tasks cover whole output rows */
    float **cols;                          /* per-thread im2col buffers */
    cpu_backend *be;
} conv_job;

/* Lays out the receptive fields of output rows [oy0, oy0+rows) as the columns of
 * col[cin*k*k][rows*wo] (im2col), zero where the window hangs over the edge. */
static void im2col_rows(float *col, const float *in, const conv_job *j, int oy0, int rows)
{
    int pc = rows * j->wo;
    for (int ci = 0; ci < j->cin; ci++)
        for (int ky = 0; ky < j->k; ky++)
            for (int kx = 0; kx < j->k; kx++) {
                float *dst = col + (size_t)((ci * j->k + ky) * j->k + kx) * pc;
                const float *src = in + (size_t)ci * j->h * j->wd;
                /* output columns whose input column lies inside [0, wd) */
                int lo = 0, hi = j->wo;
                while (lo < hi && lo * j->stride + kx - j->pad < 0) lo++;
                while (hi > lo && (hi - 1) * j->stride + kx - j->pad >= j->wd) hi--;
                for (int r = 0; r < rows; r++, dst += j->wo) {
                    int iy = (oy0 + r) * j->stride + ky - j->pad;
                    if (iy < 0 || iy >= j->h) {
                        memset(dst, 0, (size_t)j->wo * sizeof *dst);
                        continue;
                    }
                    const float *row = src + (size_t)iy * j->wd + kx - j->pad;
                    for (int ox = 0; ox < lo; ox++) dst[ox] = 0.0f;
                    if (j->stride == 1) memcpy(dst + lo, row + lo, (size_t)(hi - lo) * sizeof *dst);
                    else for (int ox = lo; ox < hi; ox++) dst[ox] = row[ox * j->stride];
                    for (int ox = hi; ox < j->wo; ox++) dst[ox] = 0.0f;
                }
            }
}

/* Output rows [oy0, oy0 + rows_per_task) of one image: im2col, then one sgemm. */
static void conv_task(void *ctx, int task, int thread)
{
    conv_job *j = ctx;
    int img = task / j->tasks_per_image;
    int oy0 = (task % j->tasks_per_image) * j->rows_per_task;
    int rows = j->ho - oy0 < j->rows_per_task ? j->ho - oy0 : j->rows_per_task;
    int P = j->ho * j->wo, p0 = oy0 * j->wo, pc = rows * j->wo;
    int K = j->cin * j->k * j->k;
    const float *in = j->in + (size_t)img * j->cin * j->h * j->wd;
    float *out = j->out + (size_t)img * j->cout * P + p0;
    const float *b;
    int ldb;
    if (j->k == 1 && j->stride == 1 && j->pad == 0) {
        b = in + p0;        /* a 1x1 conv reads the input as is */
        ldb = P;
    } else {
        im2col_rows(j->cols[thread], in, j, oy0, rows);
        b = j->cols[thread];
        ldb = pc;
    }
    if (j->bias)
        for (int co = 0; co < j->cout; co++)
            for (int p = 0; p < pc; p++) out[(size_t)co * P + p] = j->bias[co];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->cout, pc, K, 1.0f, j->wf, K,
                b, ldb, j->bias ? 1.0f : 0.0f, out, P);
}

static void cpu_conv2d(ts_backend *be, float *out, const float *in, const ts_wt *w,
                       const float *bias, int n, int cin, int h, int wd, int k, int stride,
                       int pad_lo, int pad_hi)
{
    cpu_backend *c = cpu(be);
    int K = cin * k * k;
    conv_job j = {0};
    j.out = out;
    j.in = in;
    j.bias = bias;
    j.cin = cin;
    j.h = h;
    j.wd = wd;
    j.cout = (int)w->n_out;
    j.k = k;
    j.stride = stride;
    j.pad = pad_lo;   /* pad_hi only changes the output size: reads past the edge are zero */
    j.ho = (h + pad_lo + pad_hi - k) / stride + 1;
    j.wo = (wd + pad_lo + pad_hi - k) / stride + 1;
    j.be = c;
    float *widened = NULL;
    if (w->dtype == TS_F32) {
        j.wf = w->data;
    } else {
        widened = xmalloc((size_t)w->n_out * K * sizeof *widened);

        ts_to_f32(widened, w->data, w->dtype, (size_t)w->n_out * K);
        j.wf = widened;
    }
    /* Rows per task: bounded by the scratch (im2col) and split so both threads work. */
    int rows = (int)(SCRATCH_FLOATS / ((unsigned)K * (unsigned)j.wo));
    int per_thread = (n * j.ho + be->n_threads - 1) / be->n_threads;
    if (rows > per_thread) rows = per_thread;
    if (rows > j.ho) rows = j.ho;
    if (rows < 1) rows = 1;
    j.rows_per_task = rows;
    j.tasks_per_image = (j.ho + rows - 1) / rows;
    /* A single output row wider than the scratch gets buffers of its own. */
    float **own = NULL;
    j.cols = c->scratch;
    if ((size_t)K * j.wo > SCRATCH_FLOATS) {
        own = xmalloc((size_t)be->n_threads * sizeof *own);
        for (int t = 0; t < be->n_threads; t++) own[t] = xmalloc((size_t)K * j.wo * sizeof(float));
        j.cols = own;
    }
    ts_pool_run(c->pool, n * j.tasks_per_image, conv_task, &j);
    if (own)
        for (int t = 0; t < be->n_threads; t++) free(own[t]);
    free(own);
    free(widened);
}

/* ------------------------------------------------------------------ group norm */

typedef struct gn_job {
    float *out;
    const float *in;
    const float *gamma, *beta;
    int c, hw, groups, swish;
    float eps;
} gn_job;

static void gn_task(void *ctx, int task, int thread)
{
    (void)thread;
    gn_job *j = ctx;
    int cg = j->c / j->groups;
    int img = task / j->groups, g = task % j->groups;
    size_t base = ((size_t)img * j->c + (size_t)g * cg) * j->hw;
    size_t count = (size_t)cg * j->hw;
    const float *x = j->in + base;
    double sum = 0.0;
    for (size_t i = 0; i < count; i++) sum += x[i];
    double mean = sum / (double)count;
    double var = 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)count;
    float inv = (float)(1.0 / sqrt(var + j->eps));
    float fm = (float)mean;
    for (int ci = 0; ci < cg; ci++) {
        int ch = g * cg + ci;
        float a = j->gamma[ch] * inv;
        float b = j->beta[ch] - fm * a;
        const float *xi = x + (size_t)ci * j->hw;
        float *o = j->out + base + (size_t)ci * j->hw;
        for (int p = 0; p < j->hw; p++) {
            float y = xi[p] * a + b;
            o[p] = j->swish ? y / (1.0f + expf(-y)) : y;
        }
    }
}

static void cpu_group_norm(ts_backend *be, float *out, const float *in, const float *gamma,
                           const float *beta, int n, int c, int hw, int groups, float eps,
                           int swish)
{
    gn_job j = {out, in, gamma, beta, c, hw, groups, swish, eps};
    ts_pool_run(cpu(be)->pool, n * groups, gn_task, &j);
}

static void cpu_upsample2x(ts_backend *be, float *out, const float *in, int n, int c, int h,
                           int wd)
{
    (void)be;
    for (size_t plane = 0; plane < (size_t)n * c; plane++) {
        const float *src = in + plane * h * wd;
        float *dst = out + plane * 4 * h * wd;
        for (int y = 0; y < 2 * h; y++)
            for (int x = 0; x < 2 * wd; x++)
                dst[(size_t)y * 2 * wd + x] = src[(size_t)(y / 2) * wd + x / 2];
    }
}

/* ------------------------------------------------------------------ spatial attention */

typedef struct sattn_job {
    float *out;
    const float *q, *k, *v;
    int c, hw, rows_per_task, tasks_per_image;
    cpu_backend *be;
} sattn_job;

/* Query rows [i0, i0+rows) of one image: scores via sgemm, softmax, then out = v . S^T. */
static void sattn_task(void *ctx, int task, int thread)
{
    sattn_job *j = ctx;
    int img = task / j->tasks_per_image;
    int i0 = (task % j->tasks_per_image) * j->rows_per_task;
    int rows = j->hw - i0 < j->rows_per_task ? j->hw - i0 : j->rows_per_task;
    size_t plane = (size_t)img * j->c * j->hw;
    float *s = j->be->scratch[thread];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, j->hw, j->c,
                1.0f / sqrtf((float)j->c), j->q + plane + i0, j->hw, j->k + plane, j->hw, 0.0f,
                s, j->hw);
    for (int r = 0; r < rows; r++) {
        float *row = s + (size_t)r * j->hw;
        float mx = -INFINITY, sum = 0.0f;
        for (int t = 0; t < j->hw; t++) mx = row[t] > mx ? row[t] : mx;
        for (int t = 0; t < j->hw; t++) sum += (row[t] = expf(row[t] - mx));
        for (int t = 0; t < j->hw; t++) row[t] /= sum;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->c, rows, j->hw, 1.0f,
                j->v + plane, j->hw, s, j->hw, 0.0f, j->out + plane + i0, j->hw);
}

static void cpu_spatial_attention(ts_backend *be, float *out, const float *q, const float *k,
                                  const float *v, int n, int c, int hw)
{
    cpu_backend *c_be = cpu(be);
    int rows = (int)(SCRATCH_FLOATS / (unsigned)hw);
    int per_thread = (hw + be->n_threads - 1) / be->n_threads;
    if (rows > per_thread) rows = per_thread;
    if (rows < 1) rows = 1;
    sattn_job j = {out, q, k, v, c, hw, rows, (hw + rows - 1) / rows, c_be};
    ts_pool_run(c_be->pool, n * j.tasks_per_image, sattn_task, &j);
}

/* ------------------------------------------------------------------ sampling */

/* Host memory is backend memory here, so this is the reference sampler itself. */
static void cpu_sample(ts_backend *be, int32_t *tokens, const ts_sample_row *rows, int n,
                       int vocab)
{
    cpu_backend *c = cpu(be);
    if (c->smp.n != vocab) {
        ts_sampler_free(&c->smp);
        if (ts_sampler_init(&c->smp, vocab)) {
            fprintf(stderr, "tessera: out of memory for a sampler over %d tokens\n", vocab);
            abort();
        }
        free(c->logits);
        c->logits = xmalloc((size_t)vocab * sizeof *c->logits);
    }
    for (int i = 0; i < n; i++) {
        const ts_sample_row *r = &rows[i];
        if (r->uncond) ts_cfg_combine(c->logits, r->cond, r->uncond, vocab, r->cfg_scale);
        else memcpy(c->logits, r->cond, (size_t)vocab * sizeof *c->logits);
        tokens[i] = ts_sample(&c->smp, c->logits, &r->p, r->u);
    }
}

/* ------------------------------------------------------------------ lifetime */

static void cpu_destroy(ts_backend *be)
{
    cpu_backend *c = cpu(be);
    ts_pool_destroy(c->pool);
    ts_sampler_free(&c->smp);
    free(c->logits);
    if (c->scratch)
        for (int i = 0; i < be->n_threads; i++) free(c->scratch[i]);
    free(c->scratch);
    free(c);
}

static const ts_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy_bytes,
    .weight_init = cpu_weight_init,
    .weight_release = cpu_weight_release,
    .embed = cpu_embed,
    .gather_rows = cpu_gather_rows,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .conv2d = cpu_conv2d,
    .group_norm = cpu_group_norm,
    .upsample2x = cpu_upsample2x,
    .spatial_attention = cpu_spatial_attention,
    .sample = cpu_sample,
    .layernorm = cpu_layernorm,
    .activation = cpu_activation,
    .act_mul = cpu_act_mul,
    .modulate = cpu_modulate,
    .gated_add = cpu_gated_add,
    .scatter_add_rows = cpu_scatter_add_rows,
    .attention_dense = cpu_attention_dense,
    .attention_bias = cpu_attention_bias,
    .masked_pick = cpu_masked_pick,
};

/* cgroup v2's cpu.max ("QUOTA PERIOD" or "max PERIOD"), else v1's cfs files: the CPUs a
 * container may use, rounded up; 0 when unlimited or unknown. */
static int cgroup_cpu_limit(void)
{
    long long quota = -1, period = 0;
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f) {
        char q[32];
        if (fscanf(f, "%31s %lld", q, &period) == 2 && strcmp(q, "max") != 0)
            quota = strtoll(q, NULL, 10);
        fclose(f);
    } else if ((f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r"))) {
        if (fscanf(f, "%lld", &quota) != 1) quota = -1;
        fclose(f);
        if ((f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r"))) {
            if (fscanf(f, "%lld", &period) != 1) period = 0;
            fclose(f);
        }
    }
    if (quota <= 0 || period <= 0) return 0;
    return (int)((quota + period - 1) / period);
}

/* The default thread count: the CPUs this process may run on (its affinity mask, e.g.
 * taskset or a cpuset), capped by a container's CPU quota, so that a pod limited to 4
 * CPUs on a 64-core host does not run 64 threads. */
static int default_threads(void)
{
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 ? (int)online : 1;
    }
    int limit = cgroup_cpu_limit();
    return limit > 0 && limit < n ? limit : n;
}

ts_backend *ts_backend_cpu_create(int n_threads, ts_error *err)
{
    if (n_threads <= 0) n_threads = default_threads();
    if (n_threads > 256) n_threads = 256;
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->base.ops = &cpu_ops;
    c->base.n_threads = n_threads;
    c->base.kv_elem_bytes = sizeof(float);
    snprintf(c->base.description, sizeof c->base.description, "cpu (%d threads)", n_threads);
    c->scratch = calloc((size_t)n_threads, sizeof *c->scratch);
    if (!c->scratch) goto oom;
    for (int i = 0; i < n_threads; i++)
        if (!(c->scratch[i] = malloc(SCRATCH_FLOATS * sizeof(float)))) goto oom;
    c->pool = ts_pool_create(n_threads);
    if (!c->pool) goto oom;
    openblas_set_num_threads(1);   /* our pool provides the parallelism */
    return &c->base;
oom:
    if (c) {
        c->base.n_threads = c->scratch ? n_threads : 0;
        cpu_destroy(&c->base);
    }
    ts_fail(err, TS_ERR_NOMEM, "cannot create the CPU backend with %d threads", n_threads);
    return NULL;
}
