/* test_cuda.c - the CUDA backend against the CPU backend, through the public API only
 * (backend.h, kv_cache.h, model.h, generate.h).
 *
 * Every op runs on both backends from the same fresh random inputs; the CUDA output
 * buffer is poisoned with NaN first, so an element the GPU never wrote fails the
 * finiteness check, and the rest must match the CPU by ||gpu - cpu|| / ||cpu||:
 * 1e-6 for copies (embed, gather, upsample), 1e-5 for other float ops, 1e-4 for
 * products in the backend's fp32 mode, 1e-2 for products in its default bf16 mode
 * (bf16 operands, fp32 accumulation; also embed of non-bf16 tables, which that mode
 * stores as bf16). Sampled tokens must agree exactly. Then the tiny
 * LlamaGen fixture end to end: greedy token streams, decoded pixels, and a run of
 * batched decode steps of one shape (what the backend may replay as a CUDA graph),
 * checked step by step so that a replay of stale positions or contexts fails.
 *
 * Without a usable GPU (or in a build without CUDA, whose stub returns
 * TS_ERR_UNSUPPORTED) the suite prints one SKIP line and exits 0.
 *
 * Every case seeds its random numbers from its own label (e.g. "matmul fp32=0 BF16
 * m=3 [37,13] bias=1"), which every failure message shows, so a failure reproduces
 * alone. TEST_CUDA_VERBOSE=1 prints every comparison's error, for tuning tolerances.
 */
#include "tests/check_util.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/config.h"
#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/models/t5_encoder.h"

#define TINY "tests/fixtures/llamagen_tiny"

/* ------------------------------------------------------------------ backends */

/* Created per test (checked fixture), so each forked test process initialises CUDA
 * itself: a CUDA context does not survive fork(). gpu_be[0] is the default bf16 mode,
 * gpu_be[1] the fp32 mode. */
static ts_backend *cpu_be, *gpu_be[2];

static void setup(void)
{
    ts_error err = {0};
    cpu_be = ts_backend_cpu_create(4, &err);
    ck_assert_msg(cpu_be != NULL, "cpu backend: %s", err.msg);
    for (int fp32 = 0; fp32 < 2; fp32++) {
        gpu_be[fp32] = ts_backend_cuda_create(-1, fp32, &err);
        ck_assert_msg(gpu_be[fp32] != NULL, "cuda backend (fp32=%d): %s", fp32, err.msg);
    }
}

static void teardown(void)
{
    ts_backend_free(gpu_be[0]);
    ts_backend_free(gpu_be[1]);
    ts_backend_free(cpu_be);
    gpu_be[0] = gpu_be[1] = cpu_be = NULL;
}

/* Tolerance of a matrix product (matmul, conv, attention) in either mode. */
static double prod_tol(int fp32) { return fp32 ? 1e-4 : 1e-2; }

static int verbose(void)
{
    const char *v = getenv("TEST_CUDA_VERBOSE");
    return v && *v && strcmp(v, "0") != 0;
}

/* ------------------------------------------------------------------ random inputs */

static char case_label[256];   /* the current case, for messages */
static uint64_t rng_state;

/* Starts a case: names it and seeds the generator from the name (FNV-1a), so the
 * inputs are fresh per case yet reproducible from the label a failure prints. */
__attribute__((format(printf, 1, 2))) static void begin_case(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(case_label, sizeof case_label, fmt, ap);
    va_end(ap);
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = case_label; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    rng_state = h;
}

static uint64_t next_u64(void)   /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float frand(void)   /* uniform in [-1, 1) */
{
    return (float)((next_u64() >> 40) / 16777216.0) * 2.0f - 1.0f;
}

static int irand(int n) { return (int)(next_u64() % (uint64_t)n); }

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ck_assert_msg(p != NULL, "%s: out of host memory (%zu bytes)", case_label, n);
    return p;
}

static float *rand_host(size_t n, float scale)
{
    float *p = xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

/* A random permutation of 0..n-1: block tables in scrambled order. */
static int32_t *shuffled(int n)
{
    int32_t *p = xmalloc((size_t)n * sizeof *p);
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = irand(i + 1);
        int32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    return p;
}

/* ------------------------------------------------------------------ comparisons */

/* ||got - ref|| / ||ref|| in double. */
static double rel_l2(const float *got, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

/* Index of the first non-finite element, or -1. */
static long first_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long)i;
    return -1;
}

/* Asserts that got (the GPU's, from a poisoned buffer) is finite everywhere and within
 * tol of ref (the CPU's) by relative L2; returns the error. */
static double expect_close_host(const char *what, const float *got, const float *ref, size_t n,
                                double tol)
{
    long bad = first_nonfinite(ref, n);
    ck_assert_msg(bad < 0, "%s: %s: the CPU reference has %g at %ld", case_label, what,
                  bad < 0 ? 0.0 : ref[bad], bad);
    bad = first_nonfinite(got, n);
    ck_assert_msg(bad < 0, "%s: %s: GPU element %ld of %zu is %g (not written, or overflowed)",
                  case_label, what, bad, n, bad < 0 ? 0.0 : got[bad]);
    double e = rel_l2(got, ref, n);
    if (verbose()) printf("  %-60s %-16s rel err %.3g (tol %.0e)\n", case_label, what, e, tol);
    ck_assert_msg(e < tol, "%s: %s: rel err %g >= %g", case_label, what, e, tol);
    return e;
}

/* ------------------------------------------------------------------ buffers on both */

/* One logical buffer with a copy in each backend's memory. */
typedef struct twin {
    float *c, *g;   /* CPU copy, GPU copy */
    size_t n;       /* floats */
    ts_backend *gb;
} twin;

/* Same contents on both (host NULL: the zeroed allocation). */
static twin twin_new(ts_backend *gb, const float *host, size_t n)
{
    twin t = {ts_be_alloc(cpu_be, n), ts_be_alloc(gb, n), n, gb};
    ck_assert_msg(t.c && t.g, "%s: backend alloc of %zu floats failed", case_label, n);
    if (host) {
        ts_be_upload(cpu_be, t.c, host, n);
        ts_be_upload(gb, t.g, host, n);
    }
    return t;
}

static twin twin_rand(ts_backend *gb, size_t n, float scale)
{
    float *h = rand_host(n, scale);
    twin t = twin_new(gb, h, n);
    free(h);
    return t;
}

static void twin_free(twin *t)
{
    ts_be_free(cpu_be, t->c);
    ts_be_free(t->gb, t->g);
}

/* NaN as a float and, in each 16-bit half, as a bf16: poisons either kind of buffer. */
static float poison_value(void)
{
    uint32_t u = 0x7fc07fc0u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Fills n floats of backend memory at p with NaN (before the op that should write them). */
static void poison(ts_backend *be, float *p, size_t n)
{
    float *h = xmalloc(n * sizeof *h);
    float nan = poison_value();
    for (size_t i = 0; i < n; i++) h[i] = nan;
    ts_be_upload(be, p, h, n);
    free(h);
}

/* Downloads floats [off, off + n) of both copies and compares them as above. */
static double expect_close(const char *what, const twin *t, size_t off, size_t n, double tol)
{
    float *c = xmalloc(n * sizeof *c), *g = xmalloc(n * sizeof *g);
    ts_be_download(cpu_be, c, t->c + off, n);
    ts_be_download(t->gb, g, t->g + off, n);
    double e = expect_close_host(what, g, c, n, tol);
    free(c);
    free(g);
    return e;
}

/* A weight matrix made on both backends from the same host data (which the CPU reads
 * in place, so it lives as long as the weights). */
typedef struct twin_wt {
    ts_wt c, g;
    void *host;
    ts_backend *gb;
} twin_wt;

static void twin_wt_new(twin_wt *w, ts_backend *gb, ts_dtype t, int64_t n_out, int64_t n_in,
                        float scale)
{
    size_t n = (size_t)n_out * (size_t)n_in;
    float *vals = rand_host(n, scale);
    w->host = xmalloc(n * ts_dtype_size(t));
    for (size_t i = 0; i < n; i++) {
        if (t == TS_F32) ((float *)w->host)[i] = vals[i];
        else if (t == TS_BF16) ((uint16_t *)w->host)[i] = ts_f32_to_bf16(vals[i]);
        else ((uint16_t *)w->host)[i] = ts_f32_to_f16(vals[i]);
    }
    free(vals);
    w->gb = gb;
    ts_error err = {0};
    ts_ck_ok(ts_be_weight_init(cpu_be, &w->c, w->host, t, n_out, n_in, &err), err);
    ts_ck_ok(ts_be_weight_init(gb, &w->g, w->host, t, n_out, n_in, &err), err);
}

static void twin_wt_free(twin_wt *w)
{
    ts_be_weight_release(cpu_be, &w->c);
    ts_be_weight_release(w->gb, &w->g);
    free(w->host);
}

/* ---- KV cache layers: elements of each backend's own size ---- */

static int kv_bytes(ts_backend *be)
{
    int eb = ts_backend_kv_elem_bytes(be);
    ck_assert_msg(eb == 2 || eb == 4, "%s: KV element size %d is neither bf16 nor float",
                  ts_backend_name(be), eb);
    return eb;
}

/* Floats to allocate for n elements of eb bytes. */
static size_t kv_floats(size_t n, int eb) { return (n * (size_t)eb + 3) / 4; }

/* Writes vals (n elements) into KV memory as the backend's element type. */
static void kv_upload(ts_backend *be, void *dst, const float *vals, size_t n)
{
    int eb = kv_bytes(be);
    size_t nf = kv_floats(n, eb);
    float *h = xmalloc(nf * sizeof *h);
    memset(h, 0, nf * sizeof *h);
    for (size_t i = 0; i < n; i++) {
        if (eb == 4) h[i] = vals[i];
        else ((uint16_t *)h)[i] = ts_f32_to_bf16(vals[i]);
    }
    ts_be_upload(be, dst, h, nf);
    free(h);
}

/* Reads n elements of KV memory back as floats (caller frees). */
static float *kv_download(ts_backend *be, const void *src, size_t n)
{
    int eb = kv_bytes(be);
    size_t nf = kv_floats(n, eb);
    float *raw = xmalloc(nf * sizeof *raw), *out = xmalloc(n * sizeof *out);
    ts_be_download(be, raw, src, nf);
    for (size_t i = 0; i < n; i++)
        out[i] = eb == 4 ? raw[i] : ts_bf16_to_f32(((const uint16_t *)raw)[i]);
    free(raw);
    return out;
}

/* One attention layer's cache on both backends. Its unused slots hold finite random
 * values, not zeros: a kernel that lets a slot outside a sequence's context into its
 * softmax then gives a visibly wrong answer. */
typedef struct twin_kv {
    ts_kv_layer c, g;
    size_t n;   /* elements of K (and of V) */
    ts_backend *gb;
} twin_kv;

static void twin_kv_new(twin_kv *kv, ts_backend *gb, int n_blocks, int block_size, int n_kv_head,
                        int head_dim)
{
    kv->n = (size_t)n_blocks * block_size * n_kv_head * head_dim;
    kv->gb = gb;
    size_t fc = kv_floats(kv->n, kv_bytes(cpu_be)), fg = kv_floats(kv->n, kv_bytes(gb));
    kv->c = (ts_kv_layer){ts_be_alloc(cpu_be, fc), ts_be_alloc(cpu_be, fc), block_size, n_kv_head,
                          head_dim};
    kv->g = (ts_kv_layer){ts_be_alloc(gb, fg), ts_be_alloc(gb, fg), block_size, n_kv_head, head_dim};
    ck_assert_msg(kv->c.k && kv->c.v && kv->g.k && kv->g.v, "%s: KV alloc failed", case_label);
    for (int which = 0; which < 2; which++) {
        float *junk = rand_host(kv->n, 8.0f);
        kv_upload(cpu_be, which ? kv->c.v : kv->c.k, junk, kv->n);
        kv_upload(gb, which ? kv->g.v : kv->g.k, junk, kv->n);
        free(junk);
    }
}

static void twin_kv_free(twin_kv *kv)
{
    ts_be_free(cpu_be, kv->c.k);
    ts_be_free(cpu_be, kv->c.v);
    ts_be_free(kv->gb, kv->g.k);
    ts_be_free(kv->gb, kv->g.v);
}

/* Every element of the GPU's K and V equals the CPU's: exactly when both are float,
 * else to bf16 rounding (half an ulp, 2^-9, for round-to-nearest; 2^-8 allowed). */
static void expect_kv_equal(const twin_kv *kv)
{
    for (int which = 0; which < 2; which++) {
        float *c = kv_download(cpu_be, which ? kv->c.v : kv->c.k, kv->n);
        float *g = kv_download(kv->gb, which ? kv->g.v : kv->g.k, kv->n);
        int exact = kv_bytes(kv->gb) == kv_bytes(cpu_be);
        for (size_t i = 0; i < kv->n; i++) {
            double tol = exact ? 0.0 : fabs((double)c[i]) * (1.0 / 256);
            ck_assert_msg(isfinite(g[i]) && fabs((double)g[i] - c[i]) <= tol,
                          "%s: cache %s element %zu: gpu %g, cpu %g", case_label, which ? "V" : "K",
                          i, g[i], c[i]);
        }
        free(c);
        free(g);
    }
}

/* ================================================================== ops */

START_TEST(test_memory)
{
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        begin_case("memory fp32=%d", fp32);
        ck_assert_msg(ts_backend_name(gb)[0] && ts_backend_describe(gb)[0], "backend has no name");
        /* The cache is bf16 in the default mode and float in the parity mode. */
        ck_assert_int_eq(ts_backend_kv_elem_bytes(gb), fp32 ? 4 : 2);
        size_t fr = 0, tot = 0;
        ck_assert_msg(ts_be_mem_info(gb, &fr, &tot) >= 0 && tot > 0 && fr <= tot,
                      "mem_info: free %zu total %zu", fr, tot);

        /* ts_be_alloc is zeroed; upload/download are bit-exact at odd sizes and offsets. */
        size_t n = 12345;
        float *z = ts_be_alloc(gb, n), *h = rand_host(n, 100.0f), *back = xmalloc(n * 4);
        ck_assert(z != NULL);
        ts_be_download(gb, back, z, n);
        for (size_t i = 0; i < n; i++) ck_assert_msg(back[i] == 0.0f, "alloc not zeroed at %zu", i);
        ts_be_upload(gb, z + 3, h, n - 3);
        ts_be_download(gb, back, z + 3, n - 3);
        ck_assert_msg(memcmp(back, h, (n - 3) * 4) == 0, "upload/download round trip differs");

        /* vec_from widens exactly, as ts_to_f32 does. */
        for (ts_dtype t = TS_F32; t <= TS_BF16; t++) {
            size_t m = 1001;
            uint8_t *raw = xmalloc(m * ts_dtype_size(t));
            float *want = xmalloc(m * 4);
            for (size_t i = 0; i < m; i++) {
                float v = frand() * 50.0f;
                if (t == TS_F32) ((float *)raw)[i] = v;
                else if (t == TS_F16) ((uint16_t *)raw)[i] = ts_f32_to_f16(v);
                else ((uint16_t *)raw)[i] = ts_f32_to_bf16(v);
            }
            ts_to_f32(want, raw, t, m);
            float *dv = ts_be_vec_from(gb, raw, t, m);
            ck_assert(dv != NULL);
            ts_be_download(gb, back, dv, m);
            ck_assert_msg(memcmp(back, want, m * 4) == 0, "vec_from %s differs", ts_dtype_name(t));
            ts_be_free(gb, dv);
            free(raw);
            free(want);
        }
        ts_be_free(gb, z);
        free(h);
        free(back);
    }
}
END_TEST

/* ts_be_copy: byte ranges at float and at 2-byte (bf16 element) offsets; the rest of
 * the destination must be untouched, so the whole buffer must match bit for bit. */
START_TEST(test_copy)
{
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        const size_t cases[][3] = {{20, 68, 4000}, {2, 10, 666}, {0, 0, 4}, {6, 4002, 2 * 333}};
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            size_t dst_off = cases[ci][0], src_off = cases[ci][1], bytes = cases[ci][2];
            begin_case("copy fp32=%d dst+%zu src+%zu %zu bytes", fp32, dst_off, src_off, bytes);
            size_t n = 3000;
            twin src = twin_rand(gb, n, 10.0f), dst = twin_rand(gb, n, 10.0f);
            ts_be_copy(cpu_be, (char *)dst.c + dst_off, (const char *)src.c + src_off, bytes);
            ts_be_copy(gb, (char *)dst.g + dst_off, (const char *)src.g + src_off, bytes);
            float *c = xmalloc(n * 4), *g = xmalloc(n * 4);
            ts_be_download(cpu_be, c, dst.c, n);
            ts_be_download(gb, g, dst.g, n);
            ck_assert_msg(memcmp(c, g, n * 4) == 0, "%s: destinations differ", case_label);
            free(c);
            free(g);
            twin_free(&src);
            twin_free(&dst);
        }
    }
}
END_TEST

/* embed with and without target rows, for each table dtype, then gather_rows. */
START_TEST(test_embed_gather)
{
    const int dims[] = {100, 64, 13};
    const int ns[] = {1, 7, 64};
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        for (ts_dtype t = TS_F32; t <= TS_BF16; t++)
            for (size_t di = 0; di < 3; di++)
                for (size_t ni = 0; ni < 3; ni++) {
                    int dim = dims[di], n = ns[ni], vocab = 300, out_rows = n + 5;
                    begin_case("embed fp32=%d %s dim=%d n=%d", fp32, ts_dtype_name(t), dim, n);
                    /* A bf16-mode backend keeps tables in bf16, so F32/F16 tables are
                     * rounded there; a BF16 table (and anything in fp32 mode) is exact. */
                    double tol = (fp32 || t == TS_BF16) ? 1e-6 : 1e-2;
                    twin_wt table;
                    twin_wt_new(&table, gb, t, vocab, dim, 2.0f);
                    int32_t *ids = xmalloc((size_t)n * 4), *perm = shuffled(out_rows);
                    for (int i = 0; i < n; i++) ids[i] = irand(vocab);
                    ids[0] = vocab - 1;   /* the last row too */

                    /* rows NULL: row i. */
                    twin out = twin_new(gb, NULL, (size_t)n * dim);
                    poison(gb, out.g, out.n);
                    ts_be_embed(cpu_be, out.c, &table.c, ids, NULL, n);
                    ts_be_embed(gb, out.g, &table.g, ids, NULL, n);
                    expect_close("embed", &out, 0, out.n, tol);

                    /* Scattered to rows perm[0..n): the other rows keep their (same,
                     * random) contents; the target rows are poisoned on the GPU. */
                    twin sc = twin_rand(gb, (size_t)out_rows * dim, 3.0f);
                    for (int i = 0; i < n; i++) poison(gb, sc.g + (size_t)perm[i] * dim, dim);
                    ts_be_embed(cpu_be, sc.c, &table.c, ids, perm, n);
                    ts_be_embed(gb, sc.g, &table.g, ids, perm, n);
                    expect_close("embed rows", &sc, 0, sc.n, tol);

                    /* gather_rows back out of it, with repeats and in any order. */
                    int32_t *rows = xmalloc((size_t)n * 4);
                    for (int i = 0; i < n; i++) rows[i] = irand(out_rows);
                    twin gat = twin_new(gb, NULL, (size_t)n * dim);
                    poison(gb, gat.g, gat.n);
                    ts_be_gather_rows(cpu_be, gat.c, sc.c, rows, n, dim);
                    ts_be_gather_rows(gb, gat.g, sc.g, rows, n, dim);
                    expect_close("gather_rows", &gat, 0, gat.n, tol);

                    twin_free(&out);
                    twin_free(&sc);
                    twin_free(&gat);
                    twin_wt_free(&table);
                    free(ids);
                    free(perm);
                    free(rows);
                }
    }
}
END_TEST

START_TEST(test_matmul)
{
    /* {n_out, n_in}: odd sizes; n_in not a multiple of 8 (13, 257, 100: the GEMM's
     * alignment); the tiny model's shapes; a GPT-B-like one. */
    const int shapes[][2] = {{37, 13}, {64, 96}, {300, 257}, {256, 64}, {192, 100}, {2304, 768}};
    const int ms[] = {1, 3, 16, 67};
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        for (ts_dtype t = TS_F32; t <= TS_BF16; t++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
                for (size_t mi = 0; mi < 4; mi++)
                    for (int with_bias = 0; with_bias < 2; with_bias++) {
                        int n_out = shapes[si][0], n_in = shapes[si][1], m = ms[mi];
                        begin_case("matmul fp32=%d %s m=%d [%d,%d] bias=%d", fp32, ts_dtype_name(t),
                                   m, n_out, n_in, with_bias);
                        twin_wt w;
                        twin_wt_new(&w, gb, t, n_out, n_in, 0.5f);
                        twin x = twin_rand(gb, (size_t)m * n_in, 1.0f);
                        twin b = twin_rand(gb, (size_t)n_out, 1.0f);
                        twin out = twin_new(gb, NULL, (size_t)m * n_out);
                        poison(gb, out.g, out.n);
                        ts_be_matmul(cpu_be, out.c, x.c, &w.c, with_bias ? b.c : NULL, m);
                        ts_be_matmul(gb, out.g, x.g, &w.g, with_bias ? b.g : NULL, m);
                        expect_close("matmul", &out, 0, out.n, prod_tol(fp32));
                        twin_free(&x);
                        twin_free(&b);
                        twin_free(&out);
                        twin_wt_free(&w);
                    }
    }
}
END_TEST

START_TEST(test_rmsnorm)
{
    const int ms[] = {1, 5, 67};
    const int dims[] = {64, 77, 1536, 3072};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t mi = 0; mi < 3; mi++)
            for (size_t di = 0; di < 4; di++) {
                ts_backend *gb = gpu_be[fp32];
                int m = ms[mi], dim = dims[di];
                begin_case("rmsnorm fp32=%d m=%d dim=%d", fp32, m, dim);
                twin x = twin_rand(gb, (size_t)m * dim, 3.0f), w = twin_rand(gb, dim, 1.0f);
                twin out = twin_new(gb, NULL, (size_t)m * dim);
                poison(gb, out.g, out.n);
                ts_be_rmsnorm(cpu_be, out.c, x.c, w.c, m, dim, 1e-5f);
                ts_be_rmsnorm(gb, out.g, x.g, w.g, m, dim, 1e-5f);
                expect_close("rmsnorm", &out, 0, out.n, 1e-5);
                twin_free(&x);
                twin_free(&w);
                twin_free(&out);
            }
}
END_TEST

/* RoPE in place on a [q | k | v] buffer as the model lays it out: the q heads at
 * offset 0, then the kv heads at offset n_head*head_dim, rows qkv_dim apart, so the
 * row stride is larger than the heads rotated and the rest must stay untouched. */
START_TEST(test_rope)
{
    /* n_head, n_kv_head, head_dim, m */
    const int cases[][4] = {{4, 4, 16, 3}, {12, 12, 64, 67}, {2, 1, 100, 5}, {8, 4, 64, 16}};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ci = 0; ci < 4; ci++) {
            ts_backend *gb = gpu_be[fp32];
            int nh = cases[ci][0], nkv = cases[ci][1], hd = cases[ci][2], m = cases[ci][3];
            begin_case("rope fp32=%d heads %d/%d hd %d m=%d", fp32, nh, nkv, hd, m);
            int qkv_dim = (nh + 2 * nkv) * hd, n_pos = 300, half = hd / 2;
            float *tab = xmalloc((size_t)n_pos * half * 2 * sizeof *tab);
            for (int i = 0; i < n_pos * half; i++) {   /* real rotations of random angles */
                double a = frand() * 3.14159265;
                tab[2 * i] = (float)cos(a);
                tab[2 * i + 1] = (float)sin(a);
            }
            twin table = twin_new(gb, tab, (size_t)n_pos * half * 2);
            twin x = twin_rand(gb, (size_t)m * qkv_dim, 2.0f);
            int32_t *pos = xmalloc((size_t)m * 4);
            for (int i = 0; i < m; i++) pos[i] = irand(n_pos);
            ts_be_rope(cpu_be, x.c, qkv_dim, m, nh, hd, table.c, pos);
            ts_be_rope(gb, x.g, qkv_dim, m, nh, hd, table.g, pos);
            ts_be_rope(cpu_be, x.c + nh * hd, qkv_dim, m, nkv, hd, table.c, pos);
            ts_be_rope(gb, x.g + nh * hd, qkv_dim, m, nkv, hd, table.g, pos);
            /* In place: no poison possible; the whole buffer, v included, must match. */
            expect_close("rope", &x, 0, x.n, 1e-5);
            twin_free(&table);
            twin_free(&x);
            free(tab);
            free(pos);
        }
}
END_TEST

/* swiglu (separate output, and in place on a as the model calls it) and add. */
START_TEST(test_swiglu_add)
{
    const size_t ns[] = {1, 1000, 67 * 192 + 3};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ni = 0; ni < 3; ni++) {
            ts_backend *gb = gpu_be[fp32];
            size_t n = ns[ni];
            begin_case("swiglu/add fp32=%d n=%zu", fp32, n);
            twin a = twin_rand(gb, n, 6.0f), b = twin_rand(gb, n, 2.0f), out = twin_new(gb, NULL, n);
            poison(gb, out.g, n);
            ts_be_swiglu(cpu_be, out.c, a.c, b.c, n);
            ts_be_swiglu(gb, out.g, a.g, b.g, n);
            expect_close("swiglu", &out, 0, n, 1e-5);
            ts_be_swiglu(cpu_be, a.c, a.c, b.c, n);
            ts_be_swiglu(gb, a.g, a.g, b.g, n);
            expect_close("swiglu in place", &a, 0, n, 1e-5);
            ts_be_add(cpu_be, out.c, b.c, n);
            ts_be_add(gb, out.g, b.g, n);
            expect_close("add", &out, 0, n, 1e-5);
            twin_free(&a);
            twin_free(&b);
            twin_free(&out);
        }
}
END_TEST

/* kv_store then paged attention for several sequences at once: a whole prefill, a
 * single decode row, chunked prefills (n_q > 1 on top of a history), in block tables of
 * scrambled order, with max_ctx above every context. Also checks the stored cache. */
static void check_attention(int fp32, int n_head, int n_kv, int hd, int bs)
{
    enum { NSEQ = 6, MAX_CTX = 128 };
    const int n_ctx[NSEQ] = {37, 1, 100, 16, 65, 9}, n_q[NSEQ] = {37, 1, 3, 16, 1, 4};
    ts_backend *gb = gpu_be[fp32];
    begin_case("attention fp32=%d heads %d/%d hd %d block %d", fp32, n_head, n_kv, hd, bs);
    int q_dim = n_head * hd, kv_dim = n_kv * hd, stride = q_dim + 2 * kv_dim;

    int used = 0, n_hist = 0, n_new = 0;
    for (int s = 0; s < NSEQ; s++) {
        used += (n_ctx[s] + bs - 1) / bs;
        n_hist += n_ctx[s] - n_q[s];
        n_new += n_q[s];
    }
    int n_blocks = used + 5;   /* spare blocks keep their random contents */
    int32_t *perm = shuffled(n_blocks);

    /* Rows [0, n_hist): every sequence's history; rows [n_hist, +n_new): the new rows,
     * whose q parts are the queries. K is scaled up for a less uniform softmax. */
    float *h = rand_host((size_t)(n_hist + n_new) * stride, 1.0f);
    for (int r = 0; r < n_hist + n_new; r++)
        for (int e = 0; e < kv_dim; e++) h[(size_t)r * stride + q_dim + e] *= 2.0f;
    twin qkv = twin_new(gb, h, (size_t)(n_hist + n_new) * stride);
    free(h);

    int32_t *slot_hist = xmalloc((size_t)(n_hist + 1) * 4), *slot_new = xmalloc((size_t)n_new * 4);
    ts_attn_seq seqs_c[NSEQ];
    int blk = 0, hr = 0, nr = 0;
    for (int s = 0; s < NSEQ; s++) {
        const int32_t *table = perm + blk;
        blk += (n_ctx[s] + bs - 1) / bs;
        seqs_c[s] = (ts_attn_seq){table, n_ctx[s], n_q[s], nr};
        for (int p = 0; p < n_ctx[s]; p++) {
            int32_t slot = table[p / bs] * bs + p % bs;
            if (p < n_ctx[s] - n_q[s]) slot_hist[hr++] = slot;
            else slot_new[nr++] = slot;
        }
    }

    twin_kv kv;
    twin_kv_new(&kv, gb, n_blocks, bs, n_kv, hd);
    /* History first, then the new rows, as a chunked prefill or decode step would. */
    ts_be_kv_store(cpu_be, &kv.c, qkv.c + q_dim, qkv.c + q_dim + kv_dim, stride, slot_hist, n_hist);
    ts_be_kv_store(gb, &kv.g, qkv.g + q_dim, qkv.g + q_dim + kv_dim, stride, slot_hist, n_hist);
    size_t o = (size_t)n_hist * stride;
    ts_be_kv_store(cpu_be, &kv.c, qkv.c + o + q_dim, qkv.c + o + q_dim + kv_dim, stride, slot_new,
                   n_new);
    ts_be_kv_store(gb, &kv.g, qkv.g + o + q_dim, qkv.g + o + q_dim + kv_dim, stride, slot_new, n_new);
    expect_kv_equal(&kv);

    twin out = twin_new(gb, NULL, (size_t)n_new * q_dim);
    poison(gb, out.g, out.n);
    ts_be_attention(cpu_be, out.c, qkv.c + o, stride, &kv.c, n_head, seqs_c, NSEQ, MAX_CTX);
    ts_be_attention(gb, out.g, qkv.g + o, stride, &kv.g, n_head, seqs_c, NSEQ, MAX_CTX);
    expect_close("attention", &out, 0, out.n, prod_tol(fp32));

    twin_kv_free(&kv);
    twin_free(&qkv);
    twin_free(&out);
    free(perm);
    free(slot_hist);
    free(slot_new);
}

START_TEST(test_attention)
{
    for (int fp32 = 0; fp32 < 2; fp32++) {
        check_attention(fp32, 4, 4, 64, 16);
        check_attention(fp32, 2, 2, 100, 16);   /* GPT-3B's head_dim */
        check_attention(fp32, 8, 4, 64, 16);    /* GQA: two q heads per kv head */
        check_attention(fp32, 4, 2, 100, 8);
        check_attention(fp32, 4, 4, 16, 4);     /* the tiny fixture's geometry */
    }
}
END_TEST

/* The paged cache object on the GPU: its element size, and a block copy
 * (copy-on-write of a shared prefix) followed by attention that reads the copy. */
START_TEST(test_kv_cache_block_copy)
{
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        begin_case("kv_cache block copy fp32=%d", fp32);
        enum { NL = 2, NKV = 2, HD = 64, BS = 16, NB = 8, N_HEAD = 4 };
        ts_error err = {0};
        ts_kv_cache *kc, *kg;
        ts_ck_ok(ts_kv_cache_create(cpu_be, NL, NKV, HD, BS, NB, &kc, &err), err);
        ts_ck_ok(ts_kv_cache_create(gb, NL, NKV, HD, BS, NB, &kg, &err), err);
        ck_assert_int_eq(kg->elem_bytes, ts_backend_kv_elem_bytes(gb));
        int32_t src_c = ts_kv_block_alloc(kc), src_g = ts_kv_block_alloc(kg);
        int32_t dst_c = ts_kv_block_alloc(kc), dst_g = ts_kv_block_alloc(kg);
        ck_assert(src_c == src_g && dst_c == dst_g && src_c >= 0 && dst_c >= 0);

        int kv_dim = NKV * HD, q_dim = N_HEAD * HD, n = 11;   /* 11 positions of block src */
        twin k = twin_rand(gb, (size_t)n * kv_dim, 2.0f), v = twin_rand(gb, (size_t)n * kv_dim, 1.0f);
        int32_t slot[11];
        for (int p = 0; p < n; p++) slot[p] = src_c * BS + p;
        for (int l = 0; l < NL; l++) {
            ts_be_kv_store(cpu_be, &kc->layers[l], k.c, v.c, kv_dim, slot, n);
            ts_be_kv_store(gb, &kg->layers[l], k.g, v.g, kv_dim, slot, n);
        }
        ts_ck_ok(ts_kv_block_copy(kc, dst_c, src_c, &err), err);
        ts_ck_ok(ts_kv_block_copy(kg, dst_g, src_g, &err), err);

        /* Layer 1 through a table naming only the copy. */
        twin q = twin_rand(gb, (size_t)n * q_dim, 1.0f), out = twin_new(gb, NULL, (size_t)n * q_dim);
        poison(gb, out.g, out.n);
        int32_t table[1] = {dst_c};
        ts_attn_seq seq = {table, n, n, 0};
        ts_be_attention(cpu_be, out.c, q.c, q_dim, &kc->layers[1], N_HEAD, &seq, 1, 17);
        ts_be_attention(gb, out.g, q.g, q_dim, &kg->layers[1], N_HEAD, &seq, 1, 17);
        expect_close("attention on copied block", &out, 0, out.n, prod_tol(fp32));

        twin_free(&k);
        twin_free(&v);
        twin_free(&q);
        twin_free(&out);
        ts_kv_cache_destroy(kc);
        ts_kv_cache_destroy(kg);
    }
}
END_TEST

START_TEST(test_conv2d)
{
    /* cin, h, w, cout, k, stride, pad_lo, pad_hi, n, bias: the VQ decoder's 3x3 (pad
     * 1/1) and 1x1 convs, its attention's 1x1 over [c, hw, 1], a stride-2 asymmetric
     * (0/1) pad, and cin*k*k not a multiple of 8. */
    const int cases[][10] = {
        {3, 9, 7, 5, 3, 1, 1, 1, 2, 1},     {8, 6, 6, 4, 1, 1, 0, 0, 2, 1},
        {4, 8, 8, 6, 3, 2, 0, 1, 2, 1},     {32, 16, 16, 64, 3, 1, 1, 1, 2, 1},
        {64, 256, 1, 64, 1, 1, 0, 0, 2, 1}, {13, 5, 11, 7, 3, 1, 1, 1, 2, 1},
        {32, 16, 16, 3, 3, 1, 1, 1, 2, 1},  {16, 12, 12, 8, 1, 1, 0, 0, 2, 0},
        {8, 16, 16, 8, 3, 2, 1, 1, 2, 1},
    };
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (ts_dtype t = TS_F32; t <= TS_BF16; t++)
            for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
                ts_backend *gb = gpu_be[fp32];
                int cin = cases[c][0], h = cases[c][1], wd = cases[c][2], cout = cases[c][3];
                int k = cases[c][4], st = cases[c][5], plo = cases[c][6], phi = cases[c][7];
                int n = cases[c][8], with_bias = cases[c][9];
                begin_case("conv2d fp32=%d %s n=%d cin=%d %dx%d cout=%d k=%d s=%d pad=%d/%d bias=%d",
                           fp32, ts_dtype_name(t), n, cin, h, wd, cout, k, st, plo, phi, with_bias);
                int ho = (h + plo + phi - k) / st + 1, wo = (wd + plo + phi - k) / st + 1;
                twin_wt w;
                twin_wt_new(&w, gb, t, cout, (int64_t)cin * k * k, 0.5f);
                twin in = twin_rand(gb, (size_t)n * cin * h * wd, 1.0f), b = twin_rand(gb, cout, 1.0f);
                twin out = twin_new(gb, NULL, (size_t)n * cout * ho * wo);
                poison(gb, out.g, out.n);
                ts_be_conv2d(cpu_be, out.c, in.c, &w.c, with_bias ? b.c : NULL, n, cin, h, wd, k, st,
                             plo, phi);
                ts_be_conv2d(gb, out.g, in.g, &w.g, with_bias ? b.g : NULL, n, cin, h, wd, k, st,
                             plo, phi);
                expect_close("conv2d", &out, 0, out.n, prod_tol(fp32));
                twin_wt_free(&w);
                twin_free(&in);
                twin_free(&b);
                twin_free(&out);
            }
}
END_TEST

/* group_norm (with and without swish; inputs with a large mean, which a one-pass
 * variance gets wrong) and upsample2x. */
START_TEST(test_group_norm_upsample)
{
    /* n, c, hw, groups */
    const int gn[][4] = {{2, 64, 15, 32}, {1, 256, 1024, 32}, {2, 32, 256, 32}, {1, 512, 256, 32}};
    const int up[][4] = {{2, 3, 5, 7}, {1, 64, 16, 16}, {1, 1, 1, 1}};
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        for (size_t ci = 0; ci < 4; ci++)
            for (int swish = 0; swish < 2; swish++) {
                int n = gn[ci][0], c = gn[ci][1], hw = gn[ci][2], groups = gn[ci][3];
                begin_case("group_norm fp32=%d n=%d c=%d hw=%d swish=%d", fp32, n, c, hw, swish);
                size_t sz = (size_t)n * c * hw;
                float *h = rand_host(sz, 2.0f);
                for (size_t i = 0; i < sz; i++) h[i] += 5.0f;
                twin x = twin_new(gb, h, sz), g = twin_rand(gb, c, 1.0f), b = twin_rand(gb, c, 1.0f);
                free(h);
                twin out = twin_new(gb, NULL, sz);
                poison(gb, out.g, sz);
                ts_be_group_norm(cpu_be, out.c, x.c, g.c, b.c, n, c, hw, groups, 1e-6f, swish);
                ts_be_group_norm(gb, out.g, x.g, g.g, b.g, n, c, hw, groups, 1e-6f, swish);
                expect_close("group_norm", &out, 0, sz, 1e-5);
                twin_free(&x);
                twin_free(&g);
                twin_free(&b);
                twin_free(&out);
            }
        for (size_t ci = 0; ci < 3; ci++) {
            int n = up[ci][0], c = up[ci][1], h = up[ci][2], w = up[ci][3];
            begin_case("upsample2x fp32=%d n=%d c=%d %dx%d", fp32, n, c, h, w);
            twin x = twin_rand(gb, (size_t)n * c * h * w, 4.0f);
            twin out = twin_new(gb, NULL, (size_t)n * c * h * w * 4);
            poison(gb, out.g, out.n);
            ts_be_upsample2x(cpu_be, out.c, x.c, n, c, h, w);
            ts_be_upsample2x(gb, out.g, x.g, n, c, h, w);
            expect_close("upsample2x", &out, 0, out.n, 1e-6);
            twin_free(&x);
            twin_free(&out);
        }
    }
}
END_TEST

START_TEST(test_spatial_attention)
{
    /* n, c, hw: odd sizes, and the VQ-16 decoder's lowest level (512 x 16x16). */
    const int cases[][3] = {{2, 32, 23}, {2, 64, 100}, {1, 512, 256}, {1, 64, 1024}};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ci = 0; ci < 4; ci++) {
            ts_backend *gb = gpu_be[fp32];
            int n = cases[ci][0], c = cases[ci][1], hw = cases[ci][2];
            begin_case("spatial_attention fp32=%d n=%d c=%d hw=%d", fp32, n, c, hw);
            size_t sz = (size_t)n * c * hw;
            twin q = twin_rand(gb, sz, 1.0f), k = twin_rand(gb, sz, 1.0f), v = twin_rand(gb, sz, 1.0f);
            twin out = twin_new(gb, NULL, sz);
            poison(gb, out.g, sz);
            ts_be_spatial_attention(cpu_be, out.c, q.c, k.c, v.c, n, c, hw);
            ts_be_spatial_attention(gb, out.g, q.g, k.g, v.g, n, c, hw);
            expect_close("spatial_attention", &out, 0, sz, prod_tol(fp32));
            twin_free(&q);
            twin_free(&k);
            twin_free(&v);
            twin_free(&out);
        }
}
END_TEST

/* ------------------------------------------------------------------ ViT / MM-DiT ops */

/* LayerNorm with and without each affine vector, out of place and in place, on inputs
 * with a large mean. */
START_TEST(test_layernorm)
{
    const int ms[] = {1, 5, 67};
    const int dims[] = {77, 768, 1280};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t mi = 0; mi < 3; mi++)
            for (size_t di = 0; di < 3; di++)
                for (int affine = 0; affine < 4; affine++) {   /* bit 0: w, bit 1: b */
                    ts_backend *gb = gpu_be[fp32];
                    int m = ms[mi], dim = dims[di];
                    begin_case("layernorm fp32=%d m=%d dim=%d affine=%d", fp32, m, dim, affine);
                    size_t n = (size_t)m * dim;
                    float *h = rand_host(n, 3.0f);
                    for (size_t i = 0; i < n; i++) h[i] += 20.0f;
                    twin x = twin_new(gb, h, n), w = twin_rand(gb, dim, 1.0f), b = twin_rand(gb, dim, 1.0f);
                    free(h);
                    twin out = twin_new(gb, NULL, n);
                    poison(gb, out.g, n);
                    const float *wc = affine & 1 ? w.c : NULL, *wg = affine & 1 ? w.g : NULL;
                    const float *bc = affine & 2 ? b.c : NULL, *bg = affine & 2 ? b.g : NULL;
                    ts_be_layernorm(cpu_be, out.c, x.c, wc, bc, m, dim, 1e-5f);
                    ts_be_layernorm(gb, out.g, x.g, wg, bg, m, dim, 1e-5f);
                    expect_close("layernorm", &out, 0, n, 1e-5);
                    ts_be_layernorm(cpu_be, x.c, x.c, wc, bc, m, dim, 1e-5f);
                    ts_be_layernorm(gb, x.g, x.g, wg, bg, m, dim, 1e-5f);
                    expect_close("layernorm in place", &x, 0, n, 1e-5);
                    twin_free(&x);
                    twin_free(&w);
                    twin_free(&b);
                    twin_free(&out);
                }
}
END_TEST

START_TEST(test_activation)
{
    const size_t ns[] = {1, 1000, 67 * 3072 + 3};
    const ts_act acts[] = {TS_ACT_GELU, TS_ACT_GELU_TANH, TS_ACT_QUICK_GELU, TS_ACT_SILU,
                           TS_ACT_RELU};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ni = 0; ni < 3; ni++)
            for (size_t ai = 0; ai < 5; ai++) {
                ts_backend *gb = gpu_be[fp32];
                size_t n = ns[ni];
                begin_case("activation fp32=%d act=%d n=%zu", fp32, (int)acts[ai], n);
                twin x = twin_rand(gb, n, 8.0f), out = twin_new(gb, NULL, n);
                poison(gb, out.g, n);
                ts_be_activation(cpu_be, out.c, x.c, n, acts[ai]);
                ts_be_activation(gb, out.g, x.g, n, acts[ai]);
                /* GELU-tanh: 1 + tanh(u) cancels for negative u, so tanhf's last-bit
                 * differences between CUDA and glibc grow to ~3e-5 (seen on an H100). */
                double tol = acts[ai] == TS_ACT_GELU_TANH ? 1e-4 : 1e-5;
                expect_close("activation", &out, 0, n, tol);
                ts_be_activation(cpu_be, x.c, x.c, n, acts[ai]);
                ts_be_activation(gb, x.g, x.g, n, acts[ai]);
                expect_close("activation in place", &x, 0, n, tol);
                twin_free(&x);
                twin_free(&out);
            }
}
END_TEST

/* Gated activations act(a) * b (T5's feed-forward), out of place and in place over a. */
START_TEST(test_act_mul)
{
    const size_t ns[] = {1, 1000, 67 * 3072 + 3};
    const ts_act acts[] = {TS_ACT_GELU, TS_ACT_GELU_TANH, TS_ACT_QUICK_GELU, TS_ACT_SILU,
                           TS_ACT_RELU};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ni = 0; ni < 3; ni++)
            for (size_t ai = 0; ai < 5; ai++) {
                ts_backend *gb = gpu_be[fp32];
                size_t n = ns[ni];
                begin_case("act_mul fp32=%d act=%d n=%zu", fp32, (int)acts[ai], n);
                twin a = twin_rand(gb, n, 8.0f), b = twin_rand(gb, n, 3.0f);
                twin out = twin_new(gb, NULL, n);
                poison(gb, out.g, n);
                ts_be_act_mul(cpu_be, out.c, a.c, b.c, n, acts[ai]);
                ts_be_act_mul(gb, out.g, a.g, b.g, n, acts[ai]);
                expect_close("act_mul", &out, 0, n, 1e-5);
                ts_be_act_mul(cpu_be, a.c, a.c, b.c, n, acts[ai]);
                ts_be_act_mul(gb, a.g, a.g, b.g, n, acts[ai]);
                expect_close("act_mul in place", &a, 0, n, 1e-5);
                twin_free(&a);
                twin_free(&b);
                twin_free(&out);
            }
}
END_TEST

/* adaLN modulate (with and without shift, out of place and in place) and the gated
 * residual, with each item's vectors in rows of mod_stride floats: an odd shape with a
 * partial last item, and MaskGen's (205 rows an image, six dim-wide chunks). */
START_TEST(test_modulate_gated_add)
{
    /* m, dim, rows_per_item, mod_stride - 6 * dim */
    const int cases[][4] = {{7, 77, 3, 5}, {410, 1024, 205, 0}, {3, 64, 3, 0}};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ci = 0; ci < 3; ci++)
            for (int with_shift = 0; with_shift < 2; with_shift++) {
                ts_backend *gb = gpu_be[fp32];
                int m = cases[ci][0], dim = cases[ci][1], rpi = cases[ci][2];
                int ms = 6 * dim + cases[ci][3], items = (m + rpi - 1) / rpi;
                begin_case("modulate fp32=%d m=%d dim=%d rows_per_item=%d shift=%d", fp32, m, dim,
                           rpi, with_shift);
                size_t n = (size_t)m * dim;
                twin mod = twin_rand(gb, (size_t)items * ms, 1.0f);
                twin x = twin_rand(gb, n, 3.0f), y = twin_rand(gb, n, 2.0f), out = twin_new(gb, NULL, n);
                poison(gb, out.g, n);
                ts_be_modulate(cpu_be, out.c, x.c, with_shift ? mod.c + dim : NULL, mod.c + 2 * dim, ms,
                               m, dim, rpi);
                ts_be_modulate(gb, out.g, x.g, with_shift ? mod.g + dim : NULL, mod.g + 2 * dim, ms, m,
                               dim, rpi);
                expect_close("modulate", &out, 0, n, 1e-5);
                ts_be_modulate(cpu_be, x.c, x.c, with_shift ? mod.c : NULL, mod.c + 4 * dim, ms, m, dim,
                               rpi);
                ts_be_modulate(gb, x.g, x.g, with_shift ? mod.g : NULL, mod.g + 4 * dim, ms, m, dim, rpi);
                expect_close("modulate in place", &x, 0, n, 1e-5);
                ts_be_gated_add(cpu_be, x.c, y.c, mod.c + 5 * dim, ms, m, dim, rpi);
                ts_be_gated_add(gb, x.g, y.g, mod.g + 5 * dim, ms, m, dim, rpi);
                expect_close("gated_add", &x, 0, n, 1e-5);
                twin_free(&mod);
                twin_free(&x);
                twin_free(&y);
                twin_free(&out);
            }
}
END_TEST

START_TEST(test_scatter_add_rows)
{
    /* rows of x, rows added, dim */
    const int cases[][3] = {{11, 5, 77}, {410, 128, 1024}, {1, 1, 3}};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t ci = 0; ci < 3; ci++) {
            ts_backend *gb = gpu_be[fp32];
            int n_rows = cases[ci][0], n = cases[ci][1], dim = cases[ci][2];
            begin_case("scatter_add_rows fp32=%d rows=%d n=%d dim=%d", fp32, n_rows, n, dim);
            twin x = twin_rand(gb, (size_t)n_rows * dim, 2.0f), y = twin_rand(gb, (size_t)n * dim, 2.0f);
            int32_t *rows = shuffled(n_rows);   /* its first n: distinct, in any order */
            ts_be_scatter_add_rows(cpu_be, x.c, y.c, rows, n, dim);
            ts_be_scatter_add_rows(gb, x.g, y.g, rows, n, dim);
            /* In place: the rows added to and the rows left alone must all match. */
            expect_close("scatter_add_rows", &x, 0, x.n, 1e-5);
            twin_free(&x);
            twin_free(&y);
            free(rows);
        }
}
END_TEST

/* Dense attention with q, k, v at column offsets 0, D, 2D (D = n_head * head_dim) of
 * rows of stride 3D + extra, as CLIP's fused in_proj lays them out; with `scatter` the
 * positions are a random subset of a buffer of more rows (a rows array), and out's other
 * rows must keep their contents. The ops are float in both modes: a product tolerance
 * of the fp32 mode. */
static void check_attention_dense(int fp32, int n_seq, int seq_len, int n_head, int hd, int extra,
                                  int scatter, int causal)
{
    ts_backend *gb = gpu_be[fp32];
    begin_case("attention_dense fp32=%d seqs %d len %d heads %d hd %d extra %d rows %s causal %d",
               fp32, n_seq, seq_len, n_head, hd, extra, scatter ? "scattered" : "NULL", causal);
    int D = n_head * hd, stride = 3 * D + extra, n_pos = n_seq * seq_len;
    int n_rows = scatter ? n_pos + 7 : n_pos;
    float *h = rand_host((size_t)n_rows * stride, 1.0f);
    for (int r = 0; r < n_rows; r++)   /* K scaled up for a less uniform softmax */
        for (int e = 0; e < D; e++) h[(size_t)r * stride + D + e] *= 3.0f;
    twin qkv = twin_new(gb, h, (size_t)n_rows * stride);
    free(h);
    int32_t *rows = scatter ? shuffled(n_rows) : NULL;
    twin out = twin_rand(gb, (size_t)n_rows * D, 5.0f);
    for (int i = 0; i < n_pos; i++) poison(gb, out.g + (size_t)(rows ? rows[i] : i) * D, D);
    ts_be_attention_dense(cpu_be, out.c, qkv.c, qkv.c + D, qkv.c + 2 * D, stride, n_head, hd, rows,
                          n_seq, seq_len, causal);
    ts_be_attention_dense(gb, out.g, qkv.g, qkv.g + D, qkv.g + 2 * D, stride, n_head, hd, rows, n_seq,
                          seq_len, causal);
    expect_close("attention_dense", &out, 0, out.n, prod_tol(1));
    twin_free(&qkv);
    twin_free(&out);
    free(rows);
}

START_TEST(test_attention_dense)
{
    /* n_seq, seq_len, n_head, head_dim, stride - 3D, scattered rows, causal */
    const int cases[][7] = {
        {2, 77, 4, 64, 0, 0, 1},     /* CLIP's text tower */
        {2, 205, 3, 80, 0, 1, 0},    /* MaskGen: 128 image + 77 text positions, head_dim 80 */
        {3, 205, 2, 64, 4, 1, 0},
        {1, 462, 2, 64, 0, 0, 0},    /* TA-TiTok's decoder */
        {2, 512, 2, 128, 0, 0, 1},   /* over 48 KiB of shared memory */
        {1, 513, 1, 128, 3, 1, 0},
        {3, 37, 2, 77, 1, 1, 1},     /* odd head_dim, a partial query tile */
        {1, 1, 1, 13, 0, 0, 0},      /* one position */
        {5, 17, 1, 32, 0, 1, 1},
    };
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_attention_dense(fp32, cases[c][0], cases[c][1], cases[c][2], cases[c][3],
                                  cases[c][4], cases[c][5], cases[c][6]);
}
END_TEST

/* ts_be_attention_bias (T5's encoder) on both backends: q, k, v at column offsets 0, D,
 * 2D of rows of stride 3D + extra, a bias table [n_head][seq_len][seq_len] (or none),
 * key lengths per sequence including 1 and seq_len (or none). Every row of out, padded
 * queries included, is compared (the GPU's poisoned first). Float in both modes: the
 * product tolerance of the fp32 mode. */
static void check_attention_bias(int fp32, int n_seq, int seq_len, int n_head, int hd, int extra,
                                 int with_bias, int with_len, float scale)
{
    ts_backend *gb = gpu_be[fp32];
    begin_case("attention_bias fp32=%d seqs %d len %d heads %d hd %d extra %d bias %d kv_len %d "
               "scale %g", fp32, n_seq, seq_len, n_head, hd, extra, with_bias, with_len, scale);
    int D = n_head * hd, stride = 3 * D + extra, M = n_seq * seq_len;
    float *h = rand_host((size_t)M * stride, 1.0f);
    for (int r = 0; r < M; r++)   /* K scaled up for a less uniform softmax */
        for (int e = 0; e < D; e++) h[(size_t)r * stride + D + e] *= 3.0f;
    twin qkv = twin_new(gb, h, (size_t)M * stride);
    free(h);
    twin bias = {0};
    if (with_bias) bias = twin_rand(gb, (size_t)n_head * seq_len * seq_len, 4.0f);
    int32_t *len = NULL;
    if (with_len) {
        len = xmalloc((size_t)n_seq * sizeof *len);
        for (int s = 0; s < n_seq; s++) len[s] = s == 0 ? 1 : s == 1 ? seq_len : 1 + irand(seq_len);
    }
    twin out = twin_new(gb, NULL, (size_t)M * D);
    poison(gb, out.g, out.n);
    ts_be_attention_bias(cpu_be, out.c, qkv.c, qkv.c + D, qkv.c + 2 * D, stride, n_head, hd, n_seq,
                         seq_len, with_bias ? bias.c : NULL, len, scale);
    ts_be_attention_bias(gb, out.g, qkv.g, qkv.g + D, qkv.g + 2 * D, stride, n_head, hd, n_seq,
                         seq_len, with_bias ? bias.g : NULL, len, scale);
    expect_close("attention_bias", &out, 0, out.n, prod_tol(1));
    twin_free(&qkv);
    if (with_bias) twin_free(&bias);
    twin_free(&out);
    free(len);
}

START_TEST(test_attention_bias)
{
    /* n_seq, seq_len, n_head, head_dim, stride - 3D, bias, kv_len */
    const int cases[][7] = {
        {2, 120, 32, 64, 0, 1, 1},   /* FLAN-T5-XL: 32 heads of 64, 120-token prompts */
        {4, 40, 4, 16, 0, 1, 1},     /* the t5_tiny fixture */
        {3, 37, 3, 13, 5, 1, 1},     /* odd head_dim and stride */
        {2, 200, 2, 200, 1, 1, 1},   /* head_dim above the block's 128 threads */
        {1, 1, 1, 8, 0, 1, 1},       /* one position */
        {2, 65, 2, 32, 0, 0, 1},     /* no bias */
        {2, 50, 2, 32, 3, 1, 0},     /* no kv_len */
        {2, 13000, 1, 16, 0, 0, 1},  /* scores past the default 48 KiB of shared memory */
    };
    const float scales[] = {1.0f, 1.0f, 0.5f, 1.0f, 1.0f, 0.125f, 1.0f, 1.0f};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_attention_bias(fp32, cases[c][0], cases[c][1], cases[c][2], cases[c][3],
                                 cases[c][4], cases[c][5], cases[c][6], scales[c]);
}
END_TEST

/* Masked picks of the same rows on both backends, the GPU's outputs poisoned first.
 * Without noise the picks and logits must agree bit for bit (the guided logit is rounded
 * as the CPU's and argmax is exact). With noise the Philox integers are the same and
 * only logf's last bit may differ, so a pick may flip only where two noisy scores are
 * within that rounding: the caller bounds those. Returns the picks that differ. */
static int compare_masked_pick(ts_backend *gb, const ts_masked_row *rc, const ts_masked_row *rg, int n,
                               int n_pos, int vocab)
{
    int total = n * n_pos, diff = 0;
    int32_t *ic = xmalloc((size_t)total * 4), *ig = xmalloc((size_t)total * 4);
    float *lc = xmalloc((size_t)total * 4), *lg = xmalloc((size_t)total * 4);
    for (int i = 0; i < total; i++) {
        ig[i] = -12345;
        lg[i] = poison_value();
    }
    ts_be_masked_pick(cpu_be, ic, lc, rc, n, n_pos, vocab);
    ts_be_masked_pick(gb, ig, lg, rg, n, n_pos, vocab);
    for (int i = 0; i < total; i++) {
        const ts_masked_row *r = &rc[i / n_pos];
        ck_assert_msg(ig[i] >= 0 && ig[i] < vocab, "%s: row %d pos %d: pick %d outside the vocabulary",
                      case_label, i / n_pos, i % n_pos, ig[i]);
        if (ig[i] != ic[i]) {
            ck_assert_msg(r->noise_temp != 0.0f, "%s: row %d pos %d (no noise): gpu %d, cpu %d",
                          case_label, i / n_pos, i % n_pos, ig[i], ic[i]);
            printf("test_cuda: %s: row %d pos %d differs: noise %g, cpu %d, gpu %d\n", case_label,
                   i / n_pos, i % n_pos, r->noise_temp, ic[i], ig[i]);
            diff++;
            continue;
        }
        ck_assert_msg(memcmp(&lg[i], &lc[i], 4) == 0, "%s: row %d pos %d pick %d: gpu logit %.9g, cpu %.9g",
                      case_label, i / n_pos, i % n_pos, ic[i], lg[i], lc[i]);
    }
    free(ic);
    free(ig);
    free(lc);
    free(lg);
    return diff;
}

/* Rows of every kind (guidance or none, temperatures, noise or none, seeds, images,
 * steps) over a small odd vocabulary with planted ties, and MaskGen's shape. */
START_TEST(test_masked_pick)
{
    /* n, n_pos, vocab */
    const int shapes[][3] = {{4, 5, 1003}, {4, 128, 8192}};
    int noisy_diff = 0, noisy = 0;
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t si = 0; si < 2; si++)
            for (int with_noise = 0; with_noise < 2; with_noise++) {
                ts_backend *gb = gpu_be[fp32];
                int n = shapes[si][0], P = shapes[si][1], V = shapes[si][2];
                begin_case("masked_pick fp32=%d n=%d n_pos=%d vocab=%d noise=%d", fp32, n, P, V,
                           with_noise);
                size_t sz = (size_t)n * P * V;
                float *hc = rand_host(sz, 5.0f), *hu = rand_host(sz, 5.0f);
                /* Ties: three equal maxima in row 0 position 1 (guided), two in row 1
                 * position 2 (no guidance); the lowest index must win on both. */
                const int tie[3] = {V - 3, 300, 701};
                for (int t = 0; t < 3; t++) {
                    hc[(size_t)(0 * P + 1) * V + tie[t]] = 30.0f;
                    hu[(size_t)(0 * P + 1) * V + tie[t]] = 4.0f;
                }
                hc[(size_t)(1 * P + 2) * V + V - 1] = 30.0f;
                hc[(size_t)(1 * P + 2) * V + 17] = 30.0f;
                twin cond = twin_new(gb, hc, sz), uncond = twin_new(gb, hu, sz);
                free(hc);
                free(hu);
                ts_masked_row *rc = xmalloc((size_t)n * sizeof *rc), *rg = xmalloc((size_t)n * sizeof *rg);
                static const float guid[] = {3.0f, 0.0f, 1.5f, 0.75f}, temps[] = {0.7f, 1.0f, 2.5f, 1.3f};
                static const float noises[] = {1.0f, 4.5f, 0.25f, 2.0f};
                for (int i = 0; i < n; i++) {
                    size_t off = (size_t)i * P * V;
                    int guided = i != 1;
                    ts_masked_row r = {NULL, NULL, guid[i % 4], temps[i % 4],
                                       with_noise ? noises[i % 4] : 0.0f, 0x9e3779b97f4a7c15ull * (i + 1),
                                       (uint32_t)(i * 3), (uint32_t)(5 + i)};
                    rc[i] = rg[i] = r;
                    rc[i].cond = cond.c + off;
                    rg[i].cond = cond.g + off;
                    rc[i].uncond = guided ? uncond.c + off : NULL;
                    rg[i].uncond = guided ? uncond.g + off : NULL;
                }
                int d = compare_masked_pick(gb, rc, rg, n, P, V);
                if (with_noise) {
                    noisy_diff += d;
                    noisy += n * P;
                }
                if (!with_noise) {   /* the planted ties, by the CPU's own result */
                    int32_t *ids = xmalloc((size_t)n * P * 4);
                    float *lo = xmalloc((size_t)n * P * 4);
                    ts_be_masked_pick(gb, ids, lo, rg, n, P, V);
                    ck_assert_msg(ids[0 * P + 1] == 300 && ids[1 * P + 2] == 17,
                                  "%s: ties picked %d and %d, not 300 and 17", case_label, ids[1],
                                  ids[P + 2]);
                    free(ids);
                    free(lo);
                }
                free(rc);
                free(rg);
                twin_free(&cond);
                twin_free(&uncond);
            }
    if (noisy_diff || verbose())
        printf("test_cuda: masked_pick: %d of %d noisy picks differ from the CPU\n", noisy_diff, noisy);
    ck_assert_msg(noisy_diff <= 1, "masked_pick: %d of %d noisy picks differ", noisy_diff, noisy);
}
END_TEST

/* A MaskGen-like decoding step of one shape, repeated as a GPU backend may record once
 * and replay as a graph: layernorm, modulate, attention over rows that are re-permuted
 * every step, a gated residual, a scatter-add at rows that change, and the masked picks
 * with a new step number (so new Gumbel noise) and temperature every step. Each step's
 * picks and buffers are compared with the CPU's: a replay of stale staged rows or pick
 * records fails at that step. */
START_TEST(test_vit_step_replay)
{
    enum { NSEQ = 2, L = 45, NH = 2, HD = 64, D = NH * HD, NPOS = 9, V = 515, STEPS = 6 };
    int noisy_diff = 0;
    for (int fp32 = 0; fp32 < 2; fp32++) {
        ts_backend *gb = gpu_be[fp32];
        begin_case("vit step replay fp32=%d", fp32);
        int n_pos = NSEQ * L;
        twin x = twin_rand(gb, (size_t)n_pos * D, 2.0f), ln = twin_new(gb, NULL, (size_t)n_pos * D);
        twin mod = twin_rand(gb, (size_t)NSEQ * 6 * D, 0.5f);
        twin qkv = twin_rand(gb, (size_t)n_pos * 3 * D, 1.0f), att = twin_new(gb, NULL, (size_t)n_pos * D);
        twin y = twin_rand(gb, (size_t)NPOS * D, 1.0f);
        twin logits = twin_rand(gb, (size_t)2 * NSEQ * NPOS * V, 4.0f);
        for (int step = 0; step < STEPS; step++) {
            int32_t *perm = shuffled(n_pos), *sel = shuffled(n_pos);
            ts_masked_row rc[NSEQ], rg[NSEQ];
            for (int i = 0; i < NSEQ; i++) {
                size_t oc = (size_t)i * NPOS * V, ou = (size_t)(NSEQ + i) * NPOS * V;
                ts_masked_row r = {NULL, NULL, 2.0f, 1.0f + 0.1f * step, step % 3 ? 1.5f : 0.0f, 1234,
                                   (uint32_t)i, (uint32_t)step};
                rc[i] = rg[i] = r;
                rc[i].cond = logits.c + oc;
                rg[i].cond = logits.g + oc;
                rc[i].uncond = logits.c + ou;
                rg[i].uncond = logits.g + ou;
            }
            poison(gb, ln.g, ln.n);
            poison(gb, att.g, att.n);
            int32_t ic[NSEQ * NPOS], ig[NSEQ * NPOS];
            float lc[NSEQ * NPOS], lg[NSEQ * NPOS];
            for (int b = 0; b < 2; b++) {
                ts_backend *be = b ? gb : cpu_be;
                const twin *t[] = {&x, &ln, &mod, &qkv, &att, &y, &logits};
                float *p[7];
                for (int k = 0; k < 7; k++) p[k] = b ? t[k]->g : t[k]->c;
                ts_be_step_begin(be);
                ts_be_layernorm(be, p[1], p[0], NULL, NULL, n_pos, D, 1e-6f);
                ts_be_modulate(be, p[1], p[1], p[2], p[2] + D, 6 * D, n_pos, D, L);
                ts_be_attention_dense(be, p[4], p[3], p[3] + D, p[3] + 2 * D, 3 * D, NH, HD, perm, NSEQ,
                                      L, 0);
                ts_be_gated_add(be, p[0], p[4], p[2] + 2 * D, 6 * D, n_pos, D, L);
                ts_be_scatter_add_rows(be, p[0], p[5], sel, NPOS, D);
                ts_be_masked_pick(be, b ? ig : ic, b ? lg : lc, b ? rg : rc, NSEQ, NPOS, V);
            }
            char what[64];
            snprintf(what, sizeof what, "step %d layernorm+modulate", step);
            expect_close(what, &ln, 0, ln.n, 1e-5);
            snprintf(what, sizeof what, "step %d attention_dense", step);
            expect_close(what, &att, 0, att.n, prod_tol(1));
            snprintf(what, sizeof what, "step %d residual", step);
            expect_close(what, &x, 0, x.n, 1e-5);
            for (int i = 0; i < NSEQ * NPOS; i++) {
                if (ig[i] != ic[i] && rc[i / NPOS].noise_temp != 0.0f) {   /* logf's last bit */
                    printf("test_cuda: %s: step %d pick %d differs: cpu %d, gpu %d\n", case_label,
                           step, i, ic[i], ig[i]);
                    noisy_diff++;
                    continue;
                }
                ck_assert_msg(ig[i] == ic[i] && memcmp(&lg[i], &lc[i], 4) == 0,
                              "%s: step %d pick %d: gpu %d (%g), cpu %d (%g)", case_label, step, i, ig[i],
                              lg[i], ic[i], lc[i]);
            }
            free(perm);
            free(sel);
        }
        twin_free(&x);
        twin_free(&ln);
        twin_free(&mod);
        twin_free(&qkv);
        twin_free(&att);
        twin_free(&y);
        twin_free(&logits);
    }
    ck_assert_msg(noisy_diff <= 1, "vit step replay: %d noisy picks differ from the CPU", noisy_diff);
}
END_TEST

/* ------------------------------------------------------------------ sampling */

typedef struct sample_tally {
    int greedy, greedy_diff;     /* top_k == 1: must agree always */
    int sampled, sampled_diff;   /* a multinomial draw: may differ only at a rounding edge */
} sample_tally;

/* Every combination of CFG, temperature, top-k and top-p, each with three values of u,
 * over R rows of random logits, in batches of mixed parameters. */
static void check_sample(int fp32, int vocab, sample_tally *tally)
{
    enum { R = 8, BATCH = 32 };
    static const float cfgs[] = {0.0f, 4.0f}, temps[] = {0.5f, 1.0f, 2.0f}, top_ps[] = {1.0f, 0.9f, 0.5f};
    static const int top_ks[] = {0, 1, 50, 2000};
    static const double us[] = {0.0, 0.999999, 0.5, 0.25, 0.7310585786, 0.0625, 0.9};
    const int n_u = (int)(sizeof us / sizeof us[0]);
    ts_backend *gb = gpu_be[fp32];
    begin_case("sample fp32=%d vocab=%d", fp32, vocab);

    float *h = rand_host((size_t)R * vocab, 4.0f);
    twin logits = twin_new(gb, h, (size_t)R * vocab);

    int n_rows = 2 * 3 * 4 * 3 * 3;
    ts_sample_row *rc = xmalloc((size_t)n_rows * sizeof *rc), *rg = xmalloc((size_t)n_rows * sizeof *rg);
    int i = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++)
                for (int d = 0; d < 3; d++)
                    for (int e = 0; e < 3; e++, i++) {
                        int cond = i % R, uncond = (i + 3) % R;
                        ts_sample_row r = {NULL, NULL, cfgs[a], {temps[b], top_ks[c], top_ps[d]},
                                           us[(i / 3 + 2 * e) % n_u]};
                        rc[i] = rg[i] = r;
                        rc[i].cond = logits.c + (size_t)cond * vocab;
                        rg[i].cond = logits.g + (size_t)cond * vocab;
                        if (cfgs[a] > 0) {
                            rc[i].uncond = logits.c + (size_t)uncond * vocab;
                            rg[i].uncond = logits.g + (size_t)uncond * vocab;
                        }
                    }
    int32_t *tc = xmalloc((size_t)n_rows * 4), *tg = xmalloc((size_t)n_rows * 4);
    for (int s = 0; s < n_rows; s += BATCH) {
        int n = n_rows - s < BATCH ? n_rows - s : BATCH;
        ts_be_sample(cpu_be, tc + s, rc + s, n, vocab);
        for (int j = 0; j < n; j++) tg[s + j] = -12345;   /* poison */
        ts_be_sample(gb, tg + s, rg + s, n, vocab);
    }
    for (i = 0; i < n_rows; i++) {
        const ts_sample_row *r = &rc[i];
        int greedy = r->p.top_k == 1;
        ck_assert_msg(tg[i] >= 0 && tg[i] < vocab, "%s: row %d: token %d outside the vocabulary",
                      case_label, i, tg[i]);
        if (greedy) tally->greedy++;
        else tally->sampled++;
        if (tc[i] == tg[i]) continue;
        if (greedy) tally->greedy_diff++;
        else tally->sampled_diff++;
        /* Print the row so that the rounding case can be examined. */
        int ci = (int)((r->cond - logits.c) / vocab);
        printf("test_cuda: %s: row %d differs: cfg %g (cond row %d%s) T %g top_k %d top_p %g "
               "u %.10g: cpu %d (logit %g), gpu %d (logit %g)\n",
               case_label, i, r->cfg_scale, ci, r->uncond ? ", uncond" : "", r->p.temperature,
               r->p.top_k, r->p.top_p, r->u, tc[i], h[(size_t)ci * vocab + tc[i]], tg[i],
               h[(size_t)ci * vocab + tg[i]]);
    }

    /* The logits are not changed by sampling. */
    float *back = xmalloc((size_t)R * vocab * 4);
    ts_be_download(gb, back, logits.g, (size_t)R * vocab);
    ck_assert_msg(memcmp(back, h, (size_t)R * vocab * 4) == 0, "%s: sampling changed the logits",
                  case_label);
    free(back);
    free(h);
    free(rc);
    free(rg);
    free(tc);
    free(tg);
    twin_free(&logits);
}

START_TEST(test_sample)
{
    for (int fp32 = 0; fp32 < 2; fp32++) {
        sample_tally t = {0};
        check_sample(fp32, 16384, &t);
        check_sample(fp32, 1000, &t);
        if (t.greedy_diff || t.sampled_diff || verbose())
            printf("test_cuda: sample fp32=%d: %d of %d greedy and %d of %d sampled draws differ "
                   "from the CPU\n", fp32, t.greedy_diff, t.greedy, t.sampled_diff, t.sampled);
        ck_assert_msg(t.greedy_diff == 0, "sample fp32=%d: %d greedy draws differ", fp32, t.greedy_diff);
        /* Same algorithm and u: a draw may flip only where u * total lands within
         * rounding of a cumulative sum; more than one such case is a real difference. */
        ck_assert_msg(t.sampled_diff <= 1, "sample fp32=%d: %d of %d sampled draws differ", fp32,
                      t.sampled_diff, t.sampled);
    }
}
END_TEST

/* ================================================================== the model */

static ts_model *load(ts_backend *be)
{
    ts_model *m = NULL;
    ts_error err = {0};
    ts_ck_ok(ts_model_load(be, TINY, &m, &err), err);
    return m;
}

/* The fixture's three classes: its greedy runs are known to have clear margins. */
static void fixture_classes(int32_t classes[3])
{
    ts_st_file *f;
    ts_error err = {0};
    ts_ck_ok(ts_st_open(TINY "/expected.safetensors", &f, &err), err);
    const ts_st_tensor *t = ts_st_find(f, "greedy.classes");
    ck_assert_msg(t && t->dtype == TS_I32 && t->nbytes == 3 * sizeof(int32_t),
                  "fixture lacks greedy.classes");
    memcpy(classes, t->data, 3 * sizeof(int32_t));
    ts_st_close(f);
}

/* Greedy generation with CFG 4: the fp32 GPU must give the CPU's tokens exactly; the
 * bf16 one agrees at least on each image's first token (the prefill). Then the VQ
 * decoder's float pixels for the CPU's tokens. */
START_TEST(test_model_generate)
{
    begin_case("model generate");
    int32_t classes[3];
    fixture_classes(classes);
    ts_model *mc = load(cpu_be);
    int L = mc->gpt->cfg.block_size, grid = mc->gpt->cfg.grid;
    int side = grid * mc->vq->cfg.downsample;
    size_t npix = 3 * (size_t)side * side;   /* floats per image */
    ts_gen_params p = {4.0f, -1.0f, {1.0f, 1, 1.0f}, 0};
    ts_error err = {0};
    int32_t *want = xmalloc((size_t)3 * L * 4), *got = xmalloc((size_t)3 * L * 4);
    ts_ck_ok(ts_generate_c2i(mc, &p, classes, 3, want, NULL, NULL, &err), err);
    float *pix_c = xmalloc(3 * npix * 4), *pix_g = xmalloc(3 * npix * 4);
    uint8_t *rgb = xmalloc(3 * npix);
    ts_ck_ok(vq_decode(mc->vq, want, 3, grid, rgb, pix_c, &err), err);

    for (int fp32 = 1; fp32 >= 0; fp32--) {
        begin_case("model generate fp32=%d", fp32);
        ts_model *mg = load(gpu_be[fp32]);
        for (int i = 0; i < 3 * L; i++) got[i] = -1;
        ts_ck_ok(ts_generate_c2i(mg, &p, classes, 3, got, NULL, NULL, &err), err);
        int same = 0;
        for (int i = 0; i < 3 * L; i++) same += got[i] == want[i];
        printf("test_cuda: greedy cfg 4 on %s (fp32=%d): %d of %d tokens match the CPU\n",
               ts_backend_describe(gpu_be[fp32]), fp32, same, 3 * L);
        if (fp32) {
            for (int i = 0; i < 3 * L; i++)
                ck_assert_msg(got[i] == want[i], "%s: image %d token %d is %d, CPU %d", case_label,
                              i / L, i % L, got[i], want[i]);
        } else {
            for (int img = 0; img < 3; img++)
                ck_assert_msg(got[img * L] == want[img * L], "%s: image %d first token %d, CPU %d",
                              case_label, img, got[img * L], want[img * L]);
        }

        for (size_t i = 0; i < 3 * npix; i++) pix_g[i] = poison_value();
        ts_ck_ok(vq_decode(mg->vq, want, 3, grid, rgb, pix_g, &err), err);
        expect_close_host("vq_decode pixels", pix_g, pix_c, 3 * npix, fp32 ? 1e-4 : 2e-2);
        ts_model_free(mg);
    }
    free(want);
    free(got);
    free(pix_c);
    free(pix_g);
    free(rgb);
    ts_model_free(mc);
}
END_TEST

/* The T5 encoder fixture (tests/fixtures/t5_tiny, both models) on the GPU against the
 * CPU backend and the PyTorch reference's valid rows: its right-padded batch (the
 * encoder runs it 40 wide), then three of its sequences (run 17 wide, rows past that
 * zero). fp32 mode within 1e-4 of the CPU; the bf16 mode (bf16 GEMM operands) within
 * 2e-2. */
static void check_t5(int fp32, const char *sec, const char *prefix)
{
    begin_case("t5 %s fp32=%d", sec, fp32);
    ts_backend *gb = gpu_be[fp32];
    ts_error err = {0};
    json_t *root;
    ts_ck_ok(ts_json_load_file("tests/fixtures/t5_tiny/config.json", &root, &err), err);
    const json_t *js = json_object_get(root, sec);
    ck_assert_ptr_nonnull(js);
    t5_config cfg;
    ts_ck_ok(t5_config_parse(js, &cfg, &err), err);
    char path[256], name[64];
    snprintf(path, sizeof path, "tests/fixtures/t5_tiny/%s",
             json_string_value(json_object_get(js, "file")));
    ts_st_file *wf, *ef;
    ts_ck_ok(ts_st_open(path, &wf, &err), err);
    ts_ck_ok(ts_st_open("tests/fixtures/t5_tiny/expected.safetensors", &ef, &err), err);
    t5_encoder *mc, *mg;
    ts_ck_ok(t5_encoder_load(cpu_be, &cfg, wf, &mc, &err), err);
    ts_ck_ok(t5_encoder_load(gb, &cfg, wf, &mg, &err), err);
    snprintf(name, sizeof name, "%slens", prefix);
    const ts_st_tensor *tl = ts_st_find(ef, name);
    snprintf(name, sizeof name, "%sids", prefix);
    const ts_st_tensor *ti = ts_st_find(ef, name);
    snprintf(name, sizeof name, "%shidden", prefix);
    const ts_st_tensor *th = ts_st_find(ef, name);
    ck_assert_msg(tl && ti && th, "%s: fixture tensors missing", case_label);
    const int32_t *lens = tl->data, *ids = ti->data;
    const float *want = th->data;
    int n = (int)(tl->nbytes / 4), T = (int)(ti->nbytes / 4) / n, D = cfg.d_model;
    double tol = fp32 ? 1e-4 : 2e-2;
    for (int pass = 0; pass < 2; pass++) {
        int first = pass ? 1 : 0, count = pass ? (n < 4 ? n - 1 : 3) : n;
        size_t total = (size_t)count * T * D;
        twin out = twin_new(gb, NULL, total);
        poison(gb, out.g, total);
        ts_ck_ok(t5_encoder_forward(mc, ids + (size_t)first * T, lens + first, count, T, out.c,
                                    &err), err);
        ts_ck_ok(t5_encoder_forward(mg, ids + (size_t)first * T, lens + first, count, T, out.g,
                                    &err), err);
        float *hc = xmalloc(total * 4), *hg = xmalloc(total * 4);
        ts_be_download(cpu_be, hc, out.c, total);
        ts_be_download(gb, hg, out.g, total);
        expect_close_host(pass ? "t5 subset vs cpu" : "t5 batch vs cpu", hg, hc, total, tol);
        for (int i = 0; i < count; i++) {   /* valid rows against the reference */
            size_t off = (size_t)i * T * D, len = (size_t)lens[first + i] * D;
            expect_close_host("t5 valid rows vs reference", hg + off,
                              want + (size_t)(first + i) * T * D, len, tol);
        }
        twin_free(&out);
        free(hc);
        free(hg);
    }
    t5_encoder_free(mc);
    t5_encoder_free(mg);
    ts_st_close(wf);
    ts_st_close(ef);
    json_decref(root);
}

START_TEST(test_t5_encoder)
{
    for (int fp32 = 0; fp32 < 2; fp32++) {
        check_t5(fp32, "t5", "");
        check_t5(fp32, "t5_relu", "relu.");
    }
}
END_TEST

/* Decode steps of one shape, as a GPU backend may record once and replay as a graph:
 * four sequences with different contexts, one new token each, random token ids every
 * step, contexts growing by one per step. A full sequence is replaced by a fresh one
 * (a class row at position 0, other blocks), and every seventh step leaves the last
 * sequence out, so the shape also changes now and then. Every step's logits are
 * compared with the CPU's: a replay with stale ids, positions, slots, tables or
 * context lengths fails at that step. */
static void check_step_replay(int fp32, ts_model *mc)
{
    enum { S = 4, BS = 4, NB = 96, STEPS = 40 };
    begin_case("step replay fp32=%d", fp32);
    ts_backend *gb = gpu_be[fp32];
    ts_model *mg = load(gb);
    const llamagen_config *c = &mc->gpt->cfg;
    int V = c->vocab_size, max_pos = c->cls_token_num + c->block_size;
    int per_seq = (max_pos + BS - 1) / BS;
    /* bf16: this fixture's random weights amplify rounding; a CPU emulation of the bf16
     * mode (bf16 weights, GEMM operands and cache) gave logits off by 9e-3 (median) to
     * 2.8e-2, while a replay of stale positions is off by 0.25 or more. */
    double tol = fp32 ? 1e-4 : 5e-2;
    ts_error err = {0};
    ts_kv_cache *kc, *kg;
    ts_ck_ok(ts_kv_cache_create(cpu_be, c->n_layer, c->n_kv_head, c->head_dim, BS, NB, &kc, &err), err);
    ts_ck_ok(ts_kv_cache_create(gb, c->n_layer, c->n_kv_head, c->head_dim, BS, NB, &kg, &err), err);
    int32_t *perm = shuffled(NB);
    int next_table = 0;

    int32_t ids[S][32];
    int n_past[S];
    const int32_t *tables[S];
    float *lc = xmalloc((size_t)S * V * 4), *lg = xmalloc((size_t)S * V * 4);
    llamagen_seq seqs[S];

    /* A prefill of different lengths first (class + 0, 3, 7, 1 tokens). */
    const int prefix[S] = {1, 4, 8, 2};
    for (int s = 0; s < S; s++) {
        tables[s] = perm + next_table;
        next_table += per_seq;
        ids[s][0] = irand(c->num_classes + 1);
        for (int i = 1; i < prefix[s]; i++) ids[s][i] = irand(V);
        seqs[s] = (llamagen_seq){.n_past = 0, .n_new = prefix[s], .ids = ids[s], .block_table = tables[s]};
        n_past[s] = prefix[s];
    }
    for (int step = 0; step <= STEPS; step++) {
        int n = S;
        if (step > 0) {
            n = step % 7 == 0 ? S - 1 : S;
            for (int s = 0; s < n; s++) {
                if (n_past[s] == max_pos) {   /* full: a new sequence in its place */
                    ck_assert(next_table + per_seq <= NB);
                    tables[s] = perm + next_table;
                    next_table += per_seq;
                    n_past[s] = 0;
                }
                ids[s][0] = n_past[s] < c->cls_token_num ? irand(c->num_classes + 1) : irand(V);
                seqs[s] = (llamagen_seq){.n_past = n_past[s], .n_new = 1, .ids = ids[s], .block_table = tables[s]};
            }
        }
        for (size_t i = 0; i < (size_t)n * V; i++) lg[i] = poison_value();
        ts_ck_ok(llamagen_forward(mc->gpt, kc, seqs, n, lc, &err), err);
        ts_ck_ok(llamagen_forward(mg->gpt, kg, seqs, n, lg, &err), err);
        for (int s = 0; s < n; s++) {
            char what[96];
            snprintf(what, sizeof what, "step %d seq %d of %d (n_past %d)", step, s, n, seqs[s].n_past);
            expect_close_host(what, lg + (size_t)s * V, lc + (size_t)s * V, (size_t)V, tol);
            if (step > 0) n_past[s]++;
        }
    }
    free(lc);
    free(lg);
    free(perm);
    ts_kv_cache_destroy(kc);
    ts_kv_cache_destroy(kg);
    ts_model_free(mg);
}

/* MaskGen on the GPU: greedy (no-noise) runs of the fixture give the CPU's tokens and
 * images in fp32 mode; in bf16 mode the rounded weights may move picks, so the run must
 * only complete and the agreement is printed. */
START_TEST(test_maskgen_generate)
{
    static const char *prompts[3] = {"a photo of a cat sitting on a red chair",
                                     "an astronaut riding a horse on the moon, digital art",
                                     "a small house"};
    ts_model *mc = NULL;
    ts_error err = {0};
    ts_ck_ok(ts_model_load(cpu_be, "tests/fixtures/maskgen_tiny", &mc, &err), err);
    int N = mc->masked->gen->cfg.num_tokens, S = mc->masked->image_size;
    ts_mask_params p = {.steps = 8, .guidance = 12.0f, .randomize_temperature = 0.0f,
                        .aesthetic = 6.5f, .seed = 0};
    int32_t *want = xmalloc((size_t)3 * N * 4), *got = xmalloc((size_t)3 * N * 4);
    uint8_t *rgb_c = xmalloc((size_t)3 * S * S * 3), *rgb_g = xmalloc((size_t)3 * S * S * 3);
    ts_ck_ok(ts_masked_generate(mc->masked, &p, prompts, 3, want, rgb_c, NULL, NULL, NULL, &err),
             err);
    for (int fp32 = 1; fp32 >= 0; fp32--) {
        begin_case("maskgen generate fp32=%d", fp32);
        ts_model *mg = NULL;
        ts_ck_ok(ts_model_load(gpu_be[fp32], "tests/fixtures/maskgen_tiny", &mg, &err), err);
        memset(rgb_g, 0, (size_t)3 * S * S * 3);
        ts_ck_ok(ts_masked_generate(mg->masked, &p, prompts, 3, got, rgb_g, NULL, NULL, NULL,
                                    &err), err);
        int same = 0;
        for (int i = 0; i < 3 * N; i++) same += got[i] == want[i];
        printf("test_cuda: maskgen greedy on %s (fp32=%d): %d of %d tokens match the CPU\n",
               ts_backend_describe(gpu_be[fp32]), fp32, same, 3 * N);
        if (fp32) {
            ck_assert_msg(same == 3 * N, "%s: %d of %d tokens differ", case_label, 3 * N - same,
                          3 * N);
            int off = 0;
            for (size_t i = 0; i < (size_t)3 * S * S * 3; i++) off += abs(rgb_c[i] - rgb_g[i]) > 1;
            ck_assert_msg(off == 0, "%s: %d 8-bit values differ by more than one", case_label, off);
        }
        ts_model_free(mg);
    }
    free(want);
    free(got);
    free(rgb_c);
    free(rgb_g);
    ts_model_free(mc);
}
END_TEST

START_TEST(test_step_replay)
{
    ts_model *mc = load(cpu_be);
    check_step_replay(1, mc);
    check_step_replay(0, mc);
    ts_model_free(mc);
}
END_TEST

/* ================================================================== main */

/* Whether a CUDA backend can be created, asked in a child process: the test processes
 * Check forks must each initialise CUDA themselves, which they cannot do once their
 * parent has (a CUDA context does not survive fork). Returns 1 (usable, with its
 * description in msg), 0 (unsupported: no CUDA build or no GPU, the reason in msg) or
 * -1 (a GPU is there but the backend failed: an error, not a skip). */
static int probe_cuda(char *msg, size_t cap)
{
    int fd[2];
    if (pipe(fd) != 0) {
        snprintf(msg, cap, "pipe failed");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(msg, cap, "fork failed");
        return -1;
    }
    if (pid == 0) {
        close(fd[0]);
        ts_error err = {0};
        ts_backend *be = ts_backend_cuda_create(-1, 0, &err);
        char out[TS_ERROR_MSG_MAX + 64];
        int rc = be ? 1 : err.code == TS_ERR_UNSUPPORTED ? 0 : -1;
        snprintf(out, sizeof out, "%d %s", rc, be ? ts_backend_describe(be) : err.msg);
        ssize_t w = write(fd[1], out, strlen(out));
        (void)w;
        ts_backend_free(be);
        _exit(0);
    }
    close(fd[1]);
    char buf[TS_ERROR_MSG_MAX + 64];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = '\0';
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int rc = -1, off = 0;
    if (sscanf(buf, "%d %n", &rc, &off) < 1) {
        snprintf(msg, cap, "the probe process died (status %d) before answering", status);
        return -1;
    }
    snprintf(msg, cap, "%s", buf + off);
    return rc;
}

int main(void)
{
    char why[TS_ERROR_MSG_MAX + 64];
    int ok = probe_cuda(why, sizeof why);
    if (ok == 0) {
        printf("test_cuda: SKIP: no CUDA backend or GPU (%s)\n", why);
        return 0;
    }
    if (ok < 0) {
        printf("test_cuda: FAIL: the CUDA backend could not start: %s\n", why);
        return 1;
    }
    printf("test_cuda: %s\n", why);

    Suite *s = suite_create("cuda");
    TCase *ops = tcase_create("ops");
    tcase_add_checked_fixture(ops, setup, teardown);
    tcase_set_timeout(ops, 300);
    tcase_add_test(ops, test_memory);
    tcase_add_test(ops, test_copy);
    tcase_add_test(ops, test_embed_gather);
    tcase_add_test(ops, test_matmul);
    tcase_add_test(ops, test_rmsnorm);
    tcase_add_test(ops, test_rope);
    tcase_add_test(ops, test_swiglu_add);
    tcase_add_test(ops, test_attention);
    tcase_add_test(ops, test_kv_cache_block_copy);
    tcase_add_test(ops, test_conv2d);
    tcase_add_test(ops, test_group_norm_upsample);
    tcase_add_test(ops, test_spatial_attention);
    tcase_add_test(ops, test_sample);
    tcase_add_test(ops, test_layernorm);
    tcase_add_test(ops, test_activation);
    tcase_add_test(ops, test_modulate_gated_add);
    tcase_add_test(ops, test_scatter_add_rows);
    tcase_add_test(ops, test_attention_dense);
    tcase_add_test(ops, test_attention_bias);
    tcase_add_test(ops, test_act_mul);
    tcase_add_test(ops, test_masked_pick);
    tcase_add_test(ops, test_vit_step_replay);
    suite_add_tcase(s, ops);

    TCase *model = tcase_create("model");
    tcase_add_checked_fixture(model, setup, teardown);
    tcase_set_timeout(model, 300);
    tcase_add_test(model, test_model_generate);
    tcase_add_test(model, test_step_replay);
    tcase_add_test(model, test_maskgen_generate);
    tcase_add_test(model, test_t5_encoder);
    suite_add_tcase(s, model);
    return ts_ck_run(&s, 1);
}
