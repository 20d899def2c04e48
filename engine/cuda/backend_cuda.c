/* backend_cuda.c - the CUDA backend: every op of backend.h on one NVIDIA GPU.
 *
 * Memory: weights are uploaded once as bf16 (float in the fp32 mode); activations are
 * float; the KV cache is bf16 (float in fp32 mode). Matrix products go to cuBLAS
 * (bf16 x bf16 -> fp32 accumulate and output, or plain fp32 without TF32); every other
 * op is a kernel of ours (kernels.h). All work is queued on one stream; the host waits
 * only in download and sample, the two places data comes back.
 *
 * Host index arrays (ids, positions, slots, block tables, sample rows) are copied into
 * a pinned staging buffer whose device twin, the arena, sits at the same offsets; a
 * kernel reads its indices from the arena.
 *
 * Steps and graphs. Between ts_be_step_begin and the next download or sample, ops are
 * not launched but recorded: kind, scalar arguments, device pointers and arena
 * offsets. At the end of the step the staged bytes go up in one copy and the ops run;
 * when the recorded list equals the previous step's (same shapes, same buffers: only
 * the staged contents differ) the list is captured once into a CUDA graph and from
 * then on replayed with one launch. Kernels take everything that changes between
 * steps (positions, contexts, tokens, random numbers) from the arena, and size their
 * launches from fixed bounds (max_ctx), so a replay is exact.
 *
 * Errors: a failed allocation is reported to the caller (ts_be_alloc returns NULL,
 * weight_init an error naming the size). A failed launch or copy means a bug or a
 * broken device; like the CPU backend's out-of-memory, it stops the process with the
 * CUDA error and the source line (a wrong image must never be served).
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend_impl.h"
#include "kernels.h"

#define CK(call) check_cuda((call), #call, __FILE__, __LINE__)
#define CKB(call) check_blas((call), #call, __FILE__, __LINE__)

static void check_cuda(cudaError_t e, const char *what, const char *file, int line)
{
    if (e == cudaSuccess) return;
    fprintf(stderr, "tessera: CUDA error %s (%s) in %s at %s:%d\n", cudaGetErrorName(e),
            cudaGetErrorString(e), what, file, line);
    abort();
}

static void check_blas(cublasStatus_t s, const char *what, const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "tessera: cuBLAS error %d in %s at %s:%d\n", (int)s, what, file, line);
    abort();
}

/* ------------------------------------------------------------------ recorded ops */

typedef enum op_kind {
    OP_EMBED = 1, OP_GATHER, OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_SWIGLU, OP_ADD, OP_KV_STORE,
    OP_ATTENTION, OP_SAMPLE, OP_COPY, OP_LAYERNORM, OP_ACTIVATION, OP_MODULATE, OP_GATED_ADD,
    OP_SCATTER_ADD, OP_ATTENTION_DENSE, OP_MASKED_PICK, OP_ACT_MUL, OP_ATTENTION_BIAS,
} op_kind;

/* One op with its arguments; p[] are device pointers (staged indices included), i[]
 * integers, f[] floats. Zeroed before filling, so that two ops compare with memcmp. */
typedef struct op {
    int32_t kind;
    int32_t pad;
    void *p[8];
    int64_t i[10];
    float f[2];
} op;

#define GRAPH_SLOTS 16

typedef struct graph_slot {
    op *ops;                  /* the recorded list it was captured from */
    int n_ops;
    size_t staged;            /* arena bytes the list used */
    cudaGraphExec_t exec;
    uint64_t last_used;
} graph_slot;

typedef struct cuda_backend {
    ts_backend base;
    int device, fp32;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;            /* fixed cuBLAS workspace: captured GEMMs must not allocate */

    /* staging: pinned host bytes and their device twin, same offsets */
    char *stage_host, *stage_dev;
    size_t stage_cap, stage_used, stage_sent;   /* sent: bytes already copied up */

    /* scratch owned by the backend, stable while graphs refer to it */
    void *opnd;               /* GEMM operand (activations cast to bf16, im2col columns) */
    size_t opnd_cap;
    float *attn_scores;       /* spatial attention [hw, hw] */
    size_t attn_cap;
    void *smp_ws;
    size_t smp_ws_cap;
    int32_t *tokens_dev, *tokens_host;   /* sample results; host side pinned */
    int tokens_cap;
    int32_t *pick_ids_dev, *pick_ids_host;       /* masked picks; host sides pinned */
    float *pick_logit_dev, *pick_logit_host;
    int pick_cap;

    /* the step being recorded */
    int recording;
    op *ops;
    int n_ops, cap_ops;
    op *prev_ops;             /* the last step's list, to spot a repeating shape */
    int prev_n;
    size_t prev_staged;
    graph_slot graphs[GRAPH_SLOTS];
    uint64_t clock;
    int use_graphs;
    int invariant_m;          /* products of up to this many rows use gemm_rows.cu */
    uint64_t n_graph_launches, n_captures;
} cuda_backend;

static cuda_backend *cu(ts_backend *be) { return (cuda_backend *)be; }

static void flush(cuda_backend *c, int allow_graph);

/* ------------------------------------------------------------------ staging */

#define STAGE_ALIGN 16

static void drop_graphs(cuda_backend *c)
{
    for (int i = 0; i < GRAPH_SLOTS; i++) {
        graph_slot *g = &c->graphs[i];
        if (g->exec) CK(cudaGraphExecDestroy(g->exec));
        free(g->ops);
        memset(g, 0, sizeof *g);
    }
    c->prev_n = 0;
}

/* Waits for the stream, after which staging and scratch may be reused or resized. */
static void sync_idle(cuda_backend *c)
{
    CK(cudaStreamSynchronize(c->stream));
    c->stage_used = c->stage_sent = 0;
}

static void stage_grow(cuda_backend *c, size_t need)
{
    size_t cap = c->stage_cap ? c->stage_cap : (size_t)1 << 20;
    while (cap < need) cap *= 2;
    sync_idle(c);
    if (c->stage_host) CK(cudaFreeHost(c->stage_host));
    if (c->stage_dev) CK(cudaFree(c->stage_dev));
    CK(cudaMallocHost((void **)&c->stage_host, cap));
    CK(cudaMalloc((void **)&c->stage_dev, cap));
    c->stage_cap = cap;
}

/* Copies n host bytes into the staging buffer; returns their device address. While
 * recording the copy up waits for the end of the step; otherwise it is queued now. */
static void *stage(cuda_backend *c, const void *host, size_t n)
{
    size_t off = (c->stage_used + STAGE_ALIGN - 1) & ~(size_t)(STAGE_ALIGN - 1);
    if (off + n > c->stage_cap) {
        if (c->recording) flush(c, 0);   /* run what is recorded; this step goes eager */
        sync_idle(c);                    /* every earlier staged copy has landed */
        off = 0;
        if (n > c->stage_cap) stage_grow(c, n);
    }
    memcpy(c->stage_host + off, host, n);
    c->stage_used = off + n;
    if (!c->recording) {
        CK(cudaMemcpyAsync(c->stage_dev + off, c->stage_host + off, n, cudaMemcpyHostToDevice,
                           c->stream));
        c->stage_sent = c->stage_used;
    }
    return c->stage_dev + off;
}

/* Makes a backend-owned scratch buffer at least `need` bytes. Growing it frees the old
 * one, which recorded ops may name: those run first. (Cached graphs need no care: one
 * is replayed only for a list equal to the current one, pointers included, and the
 * current list names live buffers only.) */
static void *scratch(cuda_backend *c, void **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return *buf;
    if (c->recording) flush(c, 0);
    sync_idle(c);
    if (*buf) CK(cudaFree(*buf));
    size_t n = need + need / 4;
    CK(cudaMalloc(buf, n));
    *cap = n;
    return *buf;
}

/* ------------------------------------------------------------------ running ops */

static void gemm(cuda_backend *c, int m, const op *o);

static void run_op(cuda_backend *c, const op *o)
{
    cudaStream_t s = c->stream;
    switch ((op_kind)o->kind) {
    case OP_EMBED:
        CK(tsk_embed(s, o->p[0], o->p[1], c->fp32, (int)o->i[0], o->p[2], o->p[3], (int)o->i[1]));
        break;
    case OP_GATHER:
        CK(tsk_gather_rows(s, o->p[0], o->p[1], o->p[2], (int)o->i[0], (int)o->i[1]));
        break;
    case OP_MATMUL:
        gemm(c, (int)o->i[0], o);
        break;
    case OP_RMSNORM:
        CK(tsk_rmsnorm(s, o->p[0], o->p[1], o->p[2], (int)o->i[0], (int)o->i[1], o->f[0]));
        break;
    case OP_ROPE:
        CK(tsk_rope(s, o->p[0], (int)o->i[0], (int)o->i[1], (int)o->i[2], (int)o->i[3], o->p[1],
                    o->p[2]));
        break;
    case OP_SWIGLU:
        CK(tsk_swiglu(s, o->p[0], o->p[1], o->p[2], (size_t)o->i[0]));
        break;
    case OP_ADD:
        CK(tsk_add(s, o->p[0], o->p[1], (size_t)o->i[0]));
        break;
    case OP_KV_STORE:
        CK(tsk_kv_store(s, o->p[0], o->p[1], c->fp32, (int)o->i[0], o->p[2], o->p[3], (int)o->i[1],
                        o->p[4], (int)o->i[2]));
        break;
    case OP_ATTENTION:
        CK(tsk_attention(s, o->p[0], o->p[1], (int)o->i[0], o->p[2], o->p[3], c->fp32,
                         (int)o->i[1], (int)o->i[2], (int)o->i[3], (int)o->i[4], o->p[4], o->p[5],
                         o->p[6], (int)o->i[5], (int)o->i[6], (int)o->i[7]));
        break;
    case OP_SAMPLE:
        CK(tsk_sample(s, o->p[0], o->p[1], (int)o->i[0], (int)o->i[1], o->p[2]));
        break;
    case OP_COPY:
        CK(cudaMemcpyAsync(o->p[0], o->p[1], (size_t)o->i[0], cudaMemcpyDeviceToDevice, s));
        break;
    case OP_LAYERNORM:
        CK(tsk_layernorm(s, o->p[0], o->p[1], o->p[2], o->p[3], (int)o->i[0], (int)o->i[1], o->f[0]));
        break;
    case OP_ACTIVATION:
        CK(tsk_activation(s, o->p[0], o->p[1], (size_t)o->i[0], (int)o->i[1]));
        break;
    case OP_MODULATE:
        CK(tsk_modulate(s, o->p[0], o->p[1], o->p[2], o->p[3], (int)o->i[0], (int)o->i[1],
                        (int)o->i[2], (int)o->i[3]));
        break;
    case OP_GATED_ADD:
        CK(tsk_gated_add(s, o->p[0], o->p[1], o->p[2], (int)o->i[0], (int)o->i[1], (int)o->i[2],
                         (int)o->i[3]));
        break;
    case OP_SCATTER_ADD:
        CK(tsk_scatter_add_rows(s, o->p[0], o->p[1], o->p[2], (int)o->i[0], (int)o->i[1]));
        break;
    case OP_ATTENTION_DENSE:
        CK(tsk_attention_dense(s, o->p[0], o->p[1], o->p[2], o->p[3], (int)o->i[0], (int)o->i[1],
                               (int)o->i[2], o->p[4], (int)o->i[3], (int)o->i[4], (int)o->i[5]));
        break;
    case OP_MASKED_PICK:
        CK(tsk_masked_pick(s, o->p[0], o->p[1], o->p[2], (int)o->i[0], (int)o->i[1], (int)o->i[2]));
        break;
    case OP_ACT_MUL:
        CK(tsk_act_mul(s, o->p[0], o->p[1], o->p[2], (size_t)o->i[0], (int)o->i[1]));
        break;
    case OP_ATTENTION_BIAS:
        CK(tsk_attention_bias(s, o->p[0], o->p[1], o->p[2], o->p[3], (int)o->i[0], (int)o->i[1],
                              (int)o->i[2], (int)o->i[3], (int)o->i[4], o->p[4], o->p[5], o->f[0]));
        break;
    }
}

/* out[m, n_out] = x[m, n_in] . W^T (+ bias). Up to invariant_m rows (decode steps) our
 * own kernel, whose rows do not depend on m, so that an image is the same alone or
 * batched; above, cuBLAS: in its column-major terms out^T = W^T^T . x^T, i.e.
 * gemm(T, N) with W as an n_in x n_out matrix. */
static void gemm(cuda_backend *c, int m, const op *o)
{
    float *out = o->p[0];
    const float *x = o->p[1];
    const void *w = o->p[2];
    const float *bias = o->p[3];
    int n_out = (int)o->i[1], n_in = (int)o->i[2];
    const float one = 1.0f, zero = 0.0f;
    if (m <= c->invariant_m) {
        const void *xo = x;
        if (!c->fp32) {
            CK(tsk_to_bf16(c->stream, o->p[4], x, (size_t)m * n_in));
            xo = o->p[4];
        }
        CK(tsk_gemm_rows(c->stream, out, xo, w, c->fp32, m, n_out, n_in));
    } else if (c->fp32) {
        CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, n_in, &one, w, CUDA_R_32F,
                         n_in, x, CUDA_R_32F, n_in, &zero, out, CUDA_R_32F, n_out,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        uint16_t *xb = o->p[4];   /* the operand scratch, sized when recorded */
        CK(tsk_to_bf16(c->stream, xb, x, (size_t)m * n_in));
        CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, n_in, &one, w, CUDA_R_16BF,
                         n_in, xb, CUDA_R_16BF, n_in, &zero, out, CUDA_R_32F, n_out,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (bias) CK(tsk_add_bias_rows(c->stream, out, bias, m, n_out));
}

/* Queues o: now, or into the step being recorded. */
static void submit(cuda_backend *c, const op *o)
{
    if (!c->recording) {
        run_op(c, o);
        return;
    }
    if (c->n_ops == c->cap_ops) {
        int cap = c->cap_ops ? 2 * c->cap_ops : 256;
        op *ops = realloc(c->ops, (size_t)cap * sizeof *ops);
        if (!ops) {   /* cannot record: run what we have and go on eagerly */
            flush(c, 0);
            run_op(c, o);
            return;
        }
        c->ops = ops;
        c->cap_ops = cap;
    }
    c->ops[c->n_ops++] = *o;
}

static int same_list(const op *a, int na, const op *b, int nb)
{
    return na == nb && na > 0 && memcmp(a, b, (size_t)na * sizeof *a) == 0;
}

static graph_slot *find_graph(cuda_backend *c)
{
    for (int i = 0; i < GRAPH_SLOTS; i++) {
        graph_slot *g = &c->graphs[i];
        if (g->exec && g->staged == c->stage_used && same_list(g->ops, g->n_ops, c->ops, c->n_ops))
            return g;
    }
    return NULL;
}

/* Captures the recorded list into a graph in the least recently used slot. */
static graph_slot *capture(cuda_backend *c)
{
    graph_slot *g = &c->graphs[0];
    for (int i = 1; i < GRAPH_SLOTS; i++)
        if (!c->graphs[i].exec || c->graphs[i].last_used < g->last_used) g = &c->graphs[i];
    if (g->exec) CK(cudaGraphExecDestroy(g->exec));
    free(g->ops);
    memset(g, 0, sizeof *g);
    g->ops = malloc((size_t)c->n_ops * sizeof *g->ops);
    if (!g->ops) return NULL;
    cudaGraph_t graph;
    CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < c->n_ops; i++) run_op(c, &c->ops[i]);
    CK(cudaStreamEndCapture(c->stream, &graph));
    CK(cudaGraphInstantiate(&g->exec, graph, 0));
    CK(cudaGraphDestroy(graph));
    memcpy(g->ops, c->ops, (size_t)c->n_ops * sizeof *g->ops);
    g->n_ops = c->n_ops;
    g->staged = c->stage_used;
    c->n_captures++;
    return g;
}

/* Ends recording: sends the staged bytes up, then runs the list, from a graph when
 * allowed and the same list ran the step before (or was captured earlier). */
static void flush(cuda_backend *c, int allow_graph)
{
    if (!c->recording) return;
    c->recording = 0;
    if (c->stage_used > c->stage_sent)
        CK(cudaMemcpyAsync(c->stage_dev + c->stage_sent, c->stage_host + c->stage_sent,
                           c->stage_used - c->stage_sent, cudaMemcpyHostToDevice, c->stream));
    c->stage_sent = c->stage_used;
    graph_slot *g = NULL;
    if (allow_graph && c->use_graphs && c->n_ops > 0) {
        g = find_graph(c);
        if (!g && c->prev_staged == c->stage_used && same_list(c->prev_ops, c->prev_n, c->ops, c->n_ops))
            g = capture(c);
    }
    if (g) {
        g->last_used = ++c->clock;
        CK(cudaGraphLaunch(g->exec, c->stream));
        c->n_graph_launches++;
    } else {
        for (int i = 0; i < c->n_ops; i++) run_op(c, &c->ops[i]);
    }
    /* remember this list for the next step */
    op *prev = realloc(c->prev_ops, (size_t)(c->n_ops ? c->n_ops : 1) * sizeof *prev);
    if (prev) {
        c->prev_ops = prev;
        memcpy(prev, c->ops, (size_t)c->n_ops * sizeof *prev);
        c->prev_n = c->n_ops;
        c->prev_staged = c->stage_used;
    } else {
        c->prev_n = 0;
    }
    c->n_ops = 0;
}

static void cu_step_begin(ts_backend *be)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    /* Start the step's staging at offset 0 so that a repeated step has the same
     * offsets; the previous step ended in a sync, so this rarely waits. */
    if (c->stage_used) sync_idle(c);
    c->recording = 1;
    c->n_ops = 0;
}

static op new_op(op_kind k)
{
    op o;
    memset(&o, 0, sizeof o);
    o.kind = k;
    return o;
}

/* ------------------------------------------------------------------ memory */

static float *cu_alloc(ts_backend *be, size_t n)
{
    cuda_backend *c = cu(be);
    void *p = NULL;
    if (cudaMalloc(&p, (n ? n : 1) * sizeof(float)) != cudaSuccess) {
        (void)cudaGetLastError();   /* clear the sticky-free error for the next call */
        return NULL;
    }
    CK(cudaMemsetAsync(p, 0, (n ? n : 1) * sizeof(float), c->stream));
    return p;
}

static void cu_free(ts_backend *be, void *p)
{
    cuda_backend *c = cu(be);
    flush(c, 0);   /* recorded ops may name p; cudaFree itself waits for the device */
    CK(cudaFree(p));
}

static void cu_upload(ts_backend *be, float *dst, const float *src, size_t n)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    CK(cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyHostToDevice, c->stream));
}

static void cu_download(ts_backend *be, float *dst, const float *src, size_t n)
{
    cuda_backend *c = cu(be);
    flush(c, 1);
    CK(cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToHost, c->stream));
    sync_idle(c);
}

static void cu_copy(ts_backend *be, void *dst, const void *src, size_t n_bytes)
{
    op o = new_op(OP_COPY);
    o.p[0] = dst;
    o.p[1] = (void *)src;
    o.i[0] = (int64_t)n_bytes;
    submit(cu(be), &o);
}

static int cu_mem_info(ts_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    (void)be;
    return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess ? 0 : -1;
}

/* Round to nearest even, as __float2bfloat16_rn and torch do; NaN stays NaN. */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Uploads a weight as bf16 (float in fp32 mode), converting on the host in chunks. */
static int cu_weight_init(ts_backend *be, ts_wt *w, const void *host, ts_dtype t,
                          int64_t n_out, int64_t n_in, ts_error *err)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    size_t n = (size_t)n_out * (size_t)n_in, esz = c->fp32 ? 4 : 2;
    void *dev = NULL;
    if (cudaMalloc(&dev, n * esz) != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return ts_fail(err, TS_ERR_NOMEM, "CUDA out of memory for a %lldx%lld weight (%zu MiB; "
                       "%zu MiB of %zu MiB free): the model does not fit on this GPU",
                       (long long)n_out, (long long)n_in, (n * esz) >> 20, fr >> 20, tot >> 20);
    }
    if ((t == TS_BF16 && !c->fp32) || (t == TS_F32 && c->fp32)) {
        CK(cudaMemcpy(dev, host, n * esz, cudaMemcpyHostToDevice));
    } else {
        enum { CHUNK = 1 << 20 };
        float *f = malloc(CHUNK * sizeof *f);
        uint16_t *b = c->fp32 ? NULL : malloc(CHUNK * sizeof *b);
        if (!f || (!c->fp32 && !b)) {
            free(f);
            free(b);
            CK(cudaFree(dev));
            return ts_fail(err, TS_ERR_NOMEM, "out of host memory converting a weight");
        }
        size_t in_esz = ts_dtype_size(t);
        for (size_t i = 0; i < n; i += CHUNK) {
            size_t k = n - i < CHUNK ? n - i : CHUNK;
            ts_to_f32(f, (const char *)host + i * in_esz, t, k);
            if (c->fp32) {
                CK(cudaMemcpy((char *)dev + i * 4, f, k * 4, cudaMemcpyHostToDevice));
            } else {
                for (size_t j = 0; j < k; j++) b[j] = f32_to_bf16(f[j]);
                CK(cudaMemcpy((char *)dev + i * 2, b, k * 2, cudaMemcpyHostToDevice));
            }
        }
        free(f);
        free(b);
    }
    w->data = dev;
    w->owned = dev;
    w->dtype = c->fp32 ? TS_F32 : TS_BF16;
    w->n_out = n_out;
    w->n_in = n_in;
    return TS_OK;
}

static void cu_weight_release(ts_backend *be, ts_wt *w)
{
    cu_free(be, w->owned);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------ transformer ops */

static void cu_embed(ts_backend *be, float *out, const ts_wt *table, const int32_t *ids,
                     const int32_t *rows, int n)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_EMBED);
    o.p[0] = out;
    o.p[1] = (void *)table->data;
    o.p[2] = stage(c, ids, (size_t)n * sizeof *ids);
    o.p[3] = rows ? stage(c, rows, (size_t)n * sizeof *rows) : NULL;
    o.i[0] = table->n_in;
    o.i[1] = n;
    submit(c, &o);
}

static void cu_gather_rows(ts_backend *be, float *out, const float *x, const int32_t *rows,
                           int n, int dim)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_GATHER);
    o.p[0] = out;
    o.p[1] = (void *)x;
    o.p[2] = stage(c, rows, (size_t)n * sizeof *rows);
    o.i[0] = n;
    o.i[1] = dim;
    submit(c, &o);
}

static void cu_matmul(ts_backend *be, float *out, const float *x, const ts_wt *w,
                      const float *bias, int m)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_MATMUL);
    if (!c->fp32)   /* sized now, so that a recorded op names the final buffer */
        o.p[4] = scratch(c, &c->opnd, &c->opnd_cap, (size_t)m * (size_t)w->n_in * 2);
    o.p[0] = out;
    o.p[1] = (void *)x;
    o.p[2] = (void *)w->data;
    o.p[3] = (void *)bias;
    o.i[0] = m;
    o.i[1] = w->n_out;
    o.i[2] = w->n_in;
    submit(c, &o);
}

static void cu_rmsnorm(ts_backend *be, float *out, const float *x, const float *w, int m,
                       int dim, float eps)
{
    op o = new_op(OP_RMSNORM);
    o.p[0] = out;
    o.p[1] = (void *)x;
    o.p[2] = (void *)w;
    o.i[0] = m;
    o.i[1] = dim;
    o.f[0] = eps;
    submit(cu(be), &o);
}

static void cu_rope(ts_backend *be, float *x, int stride, int m, int n_head, int head_dim,
                    const float *table, const int32_t *pos)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_ROPE);
    o.p[0] = x;
    o.p[1] = (void *)table;
    o.p[2] = stage(c, pos, (size_t)m * sizeof *pos);
    o.i[0] = stride;
    o.i[1] = m;
    o.i[2] = n_head;
    o.i[3] = head_dim;
    submit(c, &o);
}

static void cu_swiglu(ts_backend *be, float *out, const float *a, const float *b, size_t n)
{
    op o = new_op(OP_SWIGLU);
    o.p[0] = out;
    o.p[1] = (void *)a;
    o.p[2] = (void *)b;
    o.i[0] = (int64_t)n;
    submit(cu(be), &o);
}

static void cu_add(ts_backend *be, float *x, const float *y, size_t n)
{
    op o = new_op(OP_ADD);
    o.p[0] = x;
    o.p[1] = (void *)y;
    o.i[0] = (int64_t)n;
    submit(cu(be), &o);
}

static void cu_kv_store(ts_backend *be, const ts_kv_layer *kv, const float *k, const float *v,
                        int stride, const int32_t *slot, int m)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_KV_STORE);
    o.p[0] = kv->k;
    o.p[1] = kv->v;
    o.p[2] = (void *)k;
    o.p[3] = (void *)v;
    o.p[4] = stage(c, slot, (size_t)m * sizeof *slot);
    o.i[0] = kv->n_kv_head * kv->head_dim;
    o.i[1] = stride;
    o.i[2] = m;
    submit(c, &o);
}

/* The sequences go to the device as three arrays: the sequence of each query row, the
 * (n_ctx, n_q, q_row) records and the block tables padded to max_ctx's block count,
 * so their sizes, and a graph's offsets, do not change as the contexts grow. */
static void cu_attention(ts_backend *be, float *out, const float *q, int q_stride,
                         const ts_kv_layer *kv, int n_head, const ts_attn_seq *seqs, int n_seqs,
                         int max_ctx)
{
    cuda_backend *c = cu(be);
    int bs = kv->block_size, max_blocks = (max_ctx + bs - 1) / bs, rows = 0;
    for (int s = 0; s < n_seqs; s++) rows += seqs[s].n_q;
    int32_t *row_seq = malloc((size_t)(rows ? rows : 1) * sizeof *row_seq);
    tsk_attn_seq *recs = malloc((size_t)n_seqs * sizeof *recs);
    int32_t *tables = calloc((size_t)n_seqs * max_blocks, sizeof *tables);
    if (!row_seq || !recs || !tables) {
        fprintf(stderr, "tessera: out of host memory staging attention for %d sequences\n", n_seqs);
        abort();
    }
    for (int s = 0; s < n_seqs; s++) {
        const ts_attn_seq *sq = &seqs[s];
        recs[s] = (tsk_attn_seq){sq->n_ctx, sq->n_q, sq->q_row, 0};
        for (int i = 0; i < sq->n_q; i++) row_seq[sq->q_row + i] = s;
        int nb = (sq->n_ctx + bs - 1) / bs;
        memcpy(tables + (size_t)s * max_blocks, sq->block_table, (size_t)nb * sizeof *tables);
    }
    op o = new_op(OP_ATTENTION);
    o.p[0] = out;
    o.p[1] = (void *)q;
    o.p[2] = kv->k;
    o.p[3] = kv->v;
    o.p[4] = stage(c, row_seq, (size_t)rows * sizeof *row_seq);
    o.p[5] = stage(c, recs, (size_t)n_seqs * sizeof *recs);
    o.p[6] = stage(c, tables, (size_t)n_seqs * max_blocks * sizeof *tables);
    o.i[0] = q_stride;
    o.i[1] = bs;
    o.i[2] = kv->n_kv_head;
    o.i[3] = kv->head_dim;
    o.i[4] = n_head;
    o.i[5] = max_blocks;
    o.i[6] = rows;
    o.i[7] = max_ctx;
    free(row_seq);
    free(recs);
    free(tables);
    submit(c, &o);
}

/* ------------------------------------------------------------------ sampling */

static void cu_sample(ts_backend *be, int32_t *tokens, const ts_sample_row *rows, int n, int vocab)
{
    cuda_backend *c = cu(be);
    if (n > c->tokens_cap) {   /* grows outside any graph: flush first */
        flush(c, 1);
        sync_idle(c);
        if (c->tokens_dev) CK(cudaFree(c->tokens_dev));
        if (c->tokens_host) CK(cudaFreeHost(c->tokens_host));
        int cap = n < 256 ? 256 : n;
        CK(cudaMalloc((void **)&c->tokens_dev, (size_t)cap * sizeof(int32_t)));
        CK(cudaMallocHost((void **)&c->tokens_host, (size_t)cap * sizeof(int32_t)));
        c->tokens_cap = cap;
    }
    void *ws = scratch(c, &c->smp_ws, &c->smp_ws_cap, tsk_sample_workspace(n, vocab));
    tsk_sample_row *recs = malloc((size_t)n * sizeof *recs);
    if (!recs) {
        fprintf(stderr, "tessera: out of host memory staging %d sample rows\n", n);
        abort();
    }
    for (int i = 0; i < n; i++) {
        const ts_sample_row *r = &rows[i];
        recs[i] = (tsk_sample_row){r->cond, r->uncond, r->cfg_scale, r->p.temperature, r->p.top_p,
                                   r->p.top_k, r->u};
    }
    op o = new_op(OP_SAMPLE);
    o.p[0] = c->tokens_dev;
    o.p[1] = stage(c, recs, (size_t)n * sizeof *recs);
    o.p[2] = ws;
    o.i[0] = n;
    o.i[1] = vocab;
    free(recs);
    submit(c, &o);
    flush(c, 1);
    CK(cudaMemcpyAsync(c->tokens_host, c->tokens_dev, (size_t)n * sizeof(int32_t),
                       cudaMemcpyDeviceToHost, c->stream));
    sync_idle(c);
    memcpy(tokens, c->tokens_host, (size_t)n * sizeof *tokens);
}

/* ------------------------------------------------------------------ ViT / MM-DiT ops */
/* Float activations in both modes; recorded like the transformer ops, index arrays staged. */

static void cu_layernorm(ts_backend *be, float *out, const float *x, const float *w,
                         const float *b, int m, int dim, float eps)
{
    op o = new_op(OP_LAYERNORM);
    o.p[0] = out;
    o.p[1] = (void *)x;
    o.p[2] = (void *)w;
    o.p[3] = (void *)b;
    o.i[0] = m;
    o.i[1] = dim;
    o.f[0] = eps;
    submit(cu(be), &o);
}

/* kernels.h does not see backend.h: its own numbering, mapped by name */
static int tsk_act(ts_act act)
{
    switch (act) {
    case TS_ACT_GELU: return TSK_ACT_GELU;
    case TS_ACT_GELU_TANH: return TSK_ACT_GELU_TANH;
    case TS_ACT_QUICK_GELU: return TSK_ACT_QUICK_GELU;
    case TS_ACT_SILU: return TSK_ACT_SILU;
    case TS_ACT_RELU: return TSK_ACT_RELU;
    }
    return -1;   /* the launcher refuses it: a bug, reported by CK */
}

static void cu_activation(ts_backend *be, float *out, const float *x, size_t n, ts_act act)
{
    op o = new_op(OP_ACTIVATION);
    o.p[0] = out;
    o.p[1] = (void *)x;
    o.i[0] = (int64_t)n;
    o.i[1] = tsk_act(act);
    submit(cu(be), &o);
}

static void cu_act_mul(ts_backend *be, float *out, const float *a, const float *b, size_t n,
                       ts_act act)
{
    op o = new_op(OP_ACT_MUL);
    o.p[0] = out;
    o.p[1] = (void *)a;
    o.p[2] = (void *)b;
    o.i[0] = (int64_t)n;
    o.i[1] = tsk_act(act);
    submit(cu(be), &o);
}

static void cu_modulate(ts_backend *be, float *out, const float *x, const float *shift,
                        const float *scale, int mod_stride, int m, int dim, int rows_per_item)
{
    op o = new_op(OP_MODULATE);
    o.p[0] = out;
    o.p[1] = (void *)x;
    o.p[2] = (void *)shift;
    o.p[3] = (void *)scale;
    o.i[0] = mod_stride;
    o.i[1] = m;
    o.i[2] = dim;
    o.i[3] = rows_per_item;
    submit(cu(be), &o);
}

static void cu_gated_add(ts_backend *be, float *x, const float *y, const float *gate,
                         int mod_stride, int m, int dim, int rows_per_item)
{
    op o = new_op(OP_GATED_ADD);
    o.p[0] = x;
    o.p[1] = (void *)y;
    o.p[2] = (void *)gate;
    o.i[0] = mod_stride;
    o.i[1] = m;
    o.i[2] = dim;
    o.i[3] = rows_per_item;
    submit(cu(be), &o);
}

static void cu_scatter_add_rows(ts_backend *be, float *x, const float *y, const int32_t *rows,
                                int n, int dim)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_SCATTER_ADD);
    o.p[0] = x;
    o.p[1] = (void *)y;
    o.p[2] = stage(c, rows, (size_t)n * sizeof *rows);
    o.i[0] = n;
    o.i[1] = dim;
    submit(c, &o);
}

static void cu_attention_dense(ts_backend *be, float *out, const float *q, const float *k,
                               const float *v, int stride, int n_head, int head_dim,
                               const int32_t *rows, int n_seq, int seq_len, int causal)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_ATTENTION_DENSE);
    o.p[0] = out;
    o.p[1] = (void *)q;
    o.p[2] = (void *)k;
    o.p[3] = (void *)v;
    o.p[4] = rows ? stage(c, rows, (size_t)n_seq * seq_len * sizeof *rows) : NULL;
    o.i[0] = stride;
    o.i[1] = n_head;
    o.i[2] = head_dim;
    o.i[3] = n_seq;
    o.i[4] = seq_len;
    o.i[5] = causal;
    submit(c, &o);
}

static void cu_attention_bias(ts_backend *be, float *out, const float *q, const float *k,
                              const float *v, int stride, int n_head, int head_dim, int n_seq,
                              int seq_len, const float *bias, const int32_t *kv_len, float scale)
{
    cuda_backend *c = cu(be);
    op o = new_op(OP_ATTENTION_BIAS);
    o.p[0] = out;
    o.p[1] = (void *)q;
    o.p[2] = (void *)k;
    o.p[3] = (void *)v;
    o.p[4] = (void *)bias;
    o.p[5] = kv_len ? stage(c, kv_len, (size_t)n_seq * sizeof *kv_len) : NULL;
    o.i[0] = stride;
    o.i[1] = n_head;
    o.i[2] = head_dim;
    o.i[3] = n_seq;
    o.i[4] = seq_len;
    o.f[0] = scale;
    submit(c, &o);
}

/* As cu_sample: the rows' records are staged, the picks land in backend-owned device
 * buffers, and the host waits once for both copies back. */
static void cu_masked_pick(ts_backend *be, int32_t *ids, float *logit, const ts_masked_row *rows,
                           int n, int n_pos, int vocab)
{
    cuda_backend *c = cu(be);
    if (n_pos <= 0 || vocab <= 0) return;
    int total = n * n_pos;
    if (total > c->pick_cap) {   /* grows outside any graph: flush first */
        flush(c, 1);
        sync_idle(c);
        if (c->pick_ids_dev) CK(cudaFree(c->pick_ids_dev));
        if (c->pick_logit_dev) CK(cudaFree(c->pick_logit_dev));
        if (c->pick_ids_host) CK(cudaFreeHost(c->pick_ids_host));
        if (c->pick_logit_host) CK(cudaFreeHost(c->pick_logit_host));
        int cap = total < 1024 ? 1024 : total;
        CK(cudaMalloc((void **)&c->pick_ids_dev, (size_t)cap * sizeof(int32_t)));
        CK(cudaMalloc((void **)&c->pick_logit_dev, (size_t)cap * sizeof(float)));
        CK(cudaMallocHost((void **)&c->pick_ids_host, (size_t)cap * sizeof(int32_t)));
        CK(cudaMallocHost((void **)&c->pick_logit_host, (size_t)cap * sizeof(float)));
        c->pick_cap = cap;
    }
    tsk_masked_row *recs = malloc((size_t)n * sizeof *recs);
    if (!recs) {
        fprintf(stderr, "tessera: out of host memory staging %d masked-pick rows\n", n);
        abort();
    }
    for (int i = 0; i < n; i++) {
        const ts_masked_row *r = &rows[i];
        recs[i] = (tsk_masked_row){r->cond, r->uncond, r->guidance, r->softmax_temp, r->noise_temp,
                                   r->image, r->step, 0, r->seed};
    }
    op o = new_op(OP_MASKED_PICK);
    o.p[0] = c->pick_ids_dev;
    o.p[1] = c->pick_logit_dev;
    o.p[2] = stage(c, recs, (size_t)n * sizeof *recs);
    o.i[0] = n;
    o.i[1] = n_pos;
    o.i[2] = vocab;
    free(recs);
    submit(c, &o);
    flush(c, 1);
    CK(cudaMemcpyAsync(c->pick_ids_host, c->pick_ids_dev, (size_t)total * sizeof(int32_t),
                       cudaMemcpyDeviceToHost, c->stream));
    CK(cudaMemcpyAsync(c->pick_logit_host, c->pick_logit_dev, (size_t)total * sizeof(float),
                       cudaMemcpyDeviceToHost, c->stream));
    sync_idle(c);
    memcpy(ids, c->pick_ids_host, (size_t)total * sizeof *ids);
    memcpy(logit, c->pick_logit_host, (size_t)total * sizeof *logit);
}

/* ------------------------------------------------------------------ convolutional ops */
/* The VQ decoder runs once per image, outside any step: these ops run eagerly. */

static void cu_conv2d(ts_backend *be, float *out, const float *in, const ts_wt *w,
                      const float *bias, int n, int cin, int h, int wd, int k, int stride,
                      int pad_lo, int pad_hi)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    int ho = (h + pad_lo + pad_hi - k) / stride + 1, wo = (wd + pad_lo + pad_hi - k) / stride + 1;
    int cout = (int)w->n_out, K = (int)w->n_in, P = ho * wo;
    size_t esz = c->fp32 ? 4 : 2;
    void *col = scratch(c, &c->opnd, &c->opnd_cap, (size_t)K * P * esz);
    const float one = 1.0f, zero = 0.0f;
    cudaDataType_t t = c->fp32 ? CUDA_R_32F : CUDA_R_16BF;
    for (int b = 0; b < n; b++) {
        const float *src = in + (size_t)b * cin * h * wd;
        float *dst = out + (size_t)b * cout * P;
        /* out_b[cout, P] = W[cout, K] . col[K, P]; column-major: out^T = col^T . W^T */
        CK(tsk_im2col(c->stream, col, c->fp32, src, cin, h, wd, k, stride, pad_lo, ho, wo));
        CKB(cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, P, cout, K, &one, col, t, P, w->data,
                         t, K, &zero, dst, CUDA_R_32F, P, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (bias) CK(tsk_add_bias_channels(c->stream, out, bias, n, cout, P));
}

static void cu_group_norm(ts_backend *be, float *out, const float *in, const float *gamma,
                          const float *beta, int n, int ch, int hw, int groups, float eps,
                          int swish)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    CK(tsk_group_norm(c->stream, out, in, gamma, beta, n, ch, hw, groups, eps, swish));
}

static void cu_upsample2x(ts_backend *be, float *out, const float *in, int n, int ch, int h,
                          int wd)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    CK(tsk_upsample2x(c->stream, out, in, n, ch, h, wd));
}

/* Per image: S[i][j] = q[:, i].k[:, j] / sqrt(c), softmax over j, out[:, i] = sum_j S[i][j] v[:, j].
 * Row-major [c, hw] maps are column-major hw x c matrices, so S^T = K . Q^T and
 * out^T = S^T^T . V in cuBLAS's terms. fp32 products: this is a small part of the decoder. */
static void cu_spatial_attention(ts_backend *be, float *out, const float *q, const float *k,
                                 const float *v, int n, int ch, int hw)
{
    cuda_backend *c = cu(be);
    flush(c, 0);
    float *S = scratch(c, (void **)&c->attn_scores, &c->attn_cap, (size_t)hw * hw * sizeof(float));
    const float scale = 1.0f / sqrtf((float)ch), one = 1.0f, zero = 0.0f;
    for (int b = 0; b < n; b++) {
        size_t off = (size_t)b * ch * hw;
        CKB(cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, hw, hw, ch, &scale, k + off, CUDA_R_32F,
                         hw, q + off, CUDA_R_32F, hw, &zero, S, CUDA_R_32F, hw, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
        CK(tsk_softmax_rows(c->stream, S, hw, hw, 1.0f));
        CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, hw, ch, hw, &one, S, CUDA_R_32F, hw,
                         v + off, CUDA_R_32F, hw, &zero, out + off, CUDA_R_32F, hw,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

/* ------------------------------------------------------------------ lifetime */

static void cu_destroy(ts_backend *be)
{
    cuda_backend *c = cu(be);
    if (c->stream) {
        cudaStreamSynchronize(c->stream);
        drop_graphs(c);
    }
    if (c->blas) cublasDestroy(c->blas);
    cudaFree(c->blas_ws);
    cudaFree(c->opnd);
    cudaFree(c->attn_scores);
    cudaFree(c->smp_ws);
    cudaFree(c->tokens_dev);
    cudaFree(c->pick_ids_dev);
    cudaFree(c->pick_logit_dev);
    cudaFree(c->stage_dev);
    if (c->tokens_host) cudaFreeHost(c->tokens_host);
    if (c->pick_ids_host) cudaFreeHost(c->pick_ids_host);
    if (c->pick_logit_host) cudaFreeHost(c->pick_logit_host);
    if (c->stage_host) cudaFreeHost(c->stage_host);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->ops);
    free(c->prev_ops);
    if (getenv("TESSERA_CUDA_STATS"))
        fprintf(stderr, "tessera: cuda: %llu graph launches, %llu captures\n",
                (unsigned long long)c->n_graph_launches, (unsigned long long)c->n_captures);
    free(c);
}

static const ts_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cu_destroy,
    .mem_info = cu_mem_info,
    .step_begin = cu_step_begin,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .weight_init = cu_weight_init,
    .weight_release = cu_weight_release,
    .embed = cu_embed,
    .gather_rows = cu_gather_rows,
    .matmul = cu_matmul,
    .rmsnorm = cu_rmsnorm,
    .rope = cu_rope,
    .swiglu = cu_swiglu,
    .add = cu_add,
    .kv_store = cu_kv_store,
    .attention = cu_attention,
    .conv2d = cu_conv2d,
    .group_norm = cu_group_norm,
    .upsample2x = cu_upsample2x,
    .spatial_attention = cu_spatial_attention,
    .sample = cu_sample,
    .layernorm = cu_layernorm,
    .activation = cu_activation,
    .act_mul = cu_act_mul,
    .modulate = cu_modulate,
    .gated_add = cu_gated_add,
    .scatter_add_rows = cu_scatter_add_rows,
    .attention_dense = cu_attention_dense,
    .attention_bias = cu_attention_bias,
    .masked_pick = cu_masked_pick,
};

#define BLAS_WORKSPACE (32u << 20)

ts_backend *ts_backend_cuda_create(int device, int fp32, ts_error *err)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        ts_fail(err, TS_ERR_UNSUPPORTED, "no usable CUDA GPU (%s)",
                e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
        return NULL;
    }
    if (device < 0) CK(cudaGetDevice(&device));
    if (device >= count) {
        ts_fail(err, TS_ERR_INVALID, "CUDA device %d does not exist (%d present)", device, count);
        return NULL;
    }
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        ts_fail(err, TS_ERR_UNSUPPORTED, "CUDA device %d unusable: %s", device, cudaGetErrorString(e));
        return NULL;
    }
    if (prop.major < 8) {   /* bf16 tensor cores and the kernels' shuffles */
        ts_fail(err, TS_ERR_UNSUPPORTED, "CUDA device %d (%s) has compute capability %d.%d; "
                "Tessera needs 8.0 or newer", device, prop.name, prop.major, prop.minor);
        return NULL;
    }
    cuda_backend *c = calloc(1, sizeof *c);
    if (!c) {
        ts_fail(err, TS_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->base.ops = &cuda_ops;
    c->base.n_threads = 1;
    c->base.kv_elem_bytes = fp32 ? 4 : 2;
    c->device = device;
    c->fp32 = fp32;
    const char *g = getenv("TESSERA_CUDA_GRAPHS");   /* "0" turns replay off, for comparisons */
    c->use_graphs = !(g && !strcmp(g, "0"));
    /* 64 rows = 32 images with CFG: the decode batches of a default server. Larger
     * products (prefill, big batches) go to cuBLAS, which is faster there but whose
     * rounding depends on m. TESSERA_CUDA_INVARIANT_M overrides (0: cuBLAS always). */
    const char *im = getenv("TESSERA_CUDA_INVARIANT_M");
    c->invariant_m = im ? atoi(im) : 64;
    snprintf(c->base.description, sizeof c->base.description, "cuda: %.64s (%.0f GiB, sm_%d%d, %s)",
             prop.name, (double)prop.totalGlobalMem / (1 << 30), prop.major, prop.minor,
             fp32 ? "fp32" : "bf16");
    if (cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&c->blas_ws, BLAS_WORKSPACE) != cudaSuccess ||
        cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(c->blas, fp32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH) !=
            CUBLAS_STATUS_SUCCESS) {
        (void)cudaGetLastError();
        ts_fail(err, TS_ERR_UNSUPPORTED, "cannot set up CUDA on %s (stream, cuBLAS or its "
                "workspace)", prop.name);
        cu_destroy(&c->base);
        return NULL;
    }
    stage_grow(c, (size_t)4 << 20);
    return &c->base;
}
