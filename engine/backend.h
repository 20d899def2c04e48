/* backend.h - the small set of tensor operations every model is written against.
 *
 * Models (engine/models/) are plain forward functions that call these ops; they never
 * name a device. A backend (engine/cpu/ today, engine/cuda/ later) implements the ops
 * table in backend_impl.h. Ownership and memory rules:
 *
 *  - Activation buffers are float arrays in *backend memory*, obtained from
 *    ts_be_alloc and released with ts_be_free. Model code may offset such pointers
 *    but must not dereference them; data crosses to the host only via
 *    ts_be_upload / ts_be_download.
 *  - A ts_wt is a weight matrix [n_out, n_in] (row-major, PyTorch's Linear layout; a
 *    conv weight [Cout, Cin, kh, kw] is n_out = Cout, n_in = Cin*kh*kw) in F32, F16
 *    or BF16. ts_be_weight_init makes it from host data that must outlive it (the CPU
 *    backend reads the memory-mapped file in place; a GPU backend uploads a copy).
 *  - Small per-channel vectors (norm weights, biases) are converted to float backend
 *    buffers at load time with ts_be_vec_from.
 *  - Index arrays (token ids, positions, block tables) are host memory.
 *
 * Ops behave as if synchronous: a later op sees an earlier op's output, and host
 * arrays passed in may be reused as soon as the call returns. A device backend queues
 * the work and waits only where data reaches the host (ts_be_download, ts_be_sample).
 * A backend is not thread-safe: one engine thread owns it.
 *
 * Steps: ts_be_step_begin marks the ops up to the next download or sample as one
 * step that will recur with the same shapes (a decode step). A GPU backend may then
 * record the ops and replay them as one graph; every value that changes from step to
 * step (ids, positions, cache slots, block tables, context lengths, random numbers)
 * is passed as host data, never baked into an op's scalar arguments. The CPU backend
 * runs the ops as they come.
 */
#ifndef TS_BACKEND_H
#define TS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"
#include "sampler.h"

typedef struct ts_backend ts_backend;

typedef struct ts_wt {
    const void *data;     /* backend memory (or the host mapping on the CPU) */
    ts_dtype dtype;       /* F32, F16 or BF16 */
    int64_t n_out, n_in;  /* rows, columns */
    void *owned;          /* backend-private copy to release, or NULL */
} ts_wt;

/* One sequence's slice of a batched attention call. Its n_q new tokens sit in rows
 * [q_row, q_row + n_q) of q and out, at positions [n_ctx - n_q, n_ctx); the cache must
 * already hold positions [0, n_ctx) (ts_be_kv_store first). */
typedef struct ts_attn_seq {
    const int32_t *block_table;   /* host: cache block of each block_size positions */
    int32_t n_ctx;                /* tokens in the cache, including the new ones */
    int32_t n_q;                  /* new tokens (query rows) */
    int32_t q_row;                /* first row of this sequence in q / out */
} ts_attn_seq;

/* Geometry of one layer of the paged KV cache: n_blocks blocks of block_size
 * positions, each position holding n_kv_head * head_dim elements for K and for V, of
 * the backend's KV type (ts_backend_kv_elem_bytes: float on the CPU, bf16 on CUDA). */
typedef struct ts_kv_layer {
    void *k, *v;           /* backend memory, [n_blocks][block_size][n_kv_head*head_dim] */
    int32_t block_size;
    int32_t n_kv_head, head_dim;
} ts_kv_layer;

/* One image's next-token draw (ts_be_sample): CFG combine when uncond is non-NULL,
 * then upstream's temperature, top-k, top-p and one multinomial draw with uniform u. */
typedef struct ts_sample_row {
    const float *cond;      /* backend memory, [vocab] logits */
    const float *uncond;    /* backend memory, [vocab], or NULL: no guidance */
    float cfg_scale;
    ts_sample_params p;
    double u;               /* ts_rng_uniform of the image's seed and step */
} ts_sample_row;

/* ---- lifetime ---- */
ts_backend *ts_backend_cpu_create(int n_threads, ts_error *err);  /* n_threads <= 0: all cores */
/* CUDA device `device` (-1: the current one). Weights and the KV cache are bf16 and
 * matrix products bf16 x bf16 with fp32 accumulation; with fp32 set, weights, cache and
 * products stay float (no TF32), the mode the parity tests compare with the CPU. Fails
 * with TS_ERR_UNSUPPORTED when the binary has no CUDA backend or no usable GPU is
 * present, the reason in err. */
ts_backend *ts_backend_cuda_create(int device, int fp32, ts_error *err);
/* By name: "cpu", "cuda", "cuda-fp32" or "auto" (CUDA when a GPU is usable, else the
 * CPU). A request for CUDA that cannot be met falls back to the CPU with a one-line
 * notice on stderr. n_threads is for the CPU backend. */
ts_backend *ts_backend_create(const char *device, int n_threads, ts_error *err);
void ts_backend_free(ts_backend *be);                             /* NULL-safe */
const char *ts_backend_name(const ts_backend *be);
const char *ts_backend_describe(const ts_backend *be);   /* e.g. "cuda: NVIDIA H100 (80 GiB)" */
int ts_backend_threads(const ts_backend *be);
int ts_backend_kv_elem_bytes(const ts_backend *be);      /* bytes per K or V element */
/* Free and total device memory in bytes; -1 where the backend cannot tell (CPU). */
int ts_be_mem_info(ts_backend *be, size_t *free_bytes, size_t *total_bytes);

/* ---- steps (see above) ---- */
void ts_be_step_begin(ts_backend *be);

/* ---- memory ---- */
float *ts_be_alloc(ts_backend *be, size_t n_floats);   /* NULL on failure; zeroed */
void ts_be_free(ts_backend *be, void *p);              /* NULL-safe */
void ts_be_upload(ts_backend *be, float *dst, const float *src, size_t n);
void ts_be_download(ts_backend *be, float *dst, const float *src, size_t n);
/* Copies n_bytes of backend memory (e.g. a KV block; regions must not overlap). */
void ts_be_copy(ts_backend *be, void *dst, const void *src, size_t n_bytes);

int ts_be_weight_init(ts_backend *be, ts_wt *w, const void *host, ts_dtype t,
                      int64_t n_out, int64_t n_in, ts_error *err);
void ts_be_weight_release(ts_backend *be, ts_wt *w);
/* A float copy in backend memory of n elements of host data of type t (NULL on OOM). */
float *ts_be_vec_from(ts_backend *be, const void *host, ts_dtype t, size_t n);

/* ---- transformer ops ---- */
/* out[rows[i], :] = table[ids[i], :] widened to float (rows NULL: row i). */
void ts_be_embed(ts_backend *be, float *out, const ts_wt *table, const int32_t *ids,
                 const int32_t *rows, int n);
/* out[i, :] = x[rows[i], :] for rows of dim floats. */
void ts_be_gather_rows(ts_backend *be, float *out, const float *x, const int32_t *rows, int n,
                       int dim);
/* out[m, n_out] = x[m, n_in] . W^T (+ bias[n_out] if bias). out must not alias x. */
void ts_be_matmul(ts_backend *be, float *out, const float *x, const ts_wt *w,
                  const float *bias, int m);
/* out[i] = x[i] * rsqrt(mean(x[i]^2) + eps) * w  over rows of length dim. */
void ts_be_rmsnorm(ts_backend *be, float *out, const float *x, const float *w,
                   int m, int dim, float eps);
/* In place on the first n_head*head_dim floats of each of m rows of x (row stride
 * `stride` floats), viewed as [n_head, head_dim]: rotates adjacent pairs (x[2j], x[2j+1]) of row i
 * by table[pos[i]][j] = (cos, sin); table is backend memory, [*, head_dim/2, 2]. */
void ts_be_rope(ts_backend *be, float *x, int stride, int m, int n_head, int head_dim,
                const float *table, const int32_t *pos);
/* out[i] = silu(a[i]) * b[i]. */
void ts_be_swiglu(ts_backend *be, float *out, const float *a, const float *b, size_t n);
/* x[i] += y[i]. */
void ts_be_add(ts_backend *be, float *x, const float *y, size_t n);
/* Writes rows of k and v ([m, n_kv_head*head_dim], row stride `stride` floats) into the
 * cache slots slot[i] = block * block_size + offset. */
void ts_be_kv_store(ts_backend *be, const ts_kv_layer *kv, const float *k, const float *v,
                    int stride, const int32_t *slot, int m);
/* Causal attention of each sequence's new queries over its cached keys/values,
 * scale 1/sqrt(head_dim). q rows have stride q_stride floats; out is [rows, n_head*head_dim].
 * No sequence's n_ctx exceeds max_ctx (the model's context length): a GPU backend sizes
 * its work by it, so that steps whose contexts grow still share one shape. */
void ts_be_attention(ts_backend *be, float *out, const float *q, int q_stride,
                     const ts_kv_layer *kv, int n_head, const ts_attn_seq *seqs, int n_seqs,
                     int max_ctx);

/* ---- sampling ---- */
/* tokens[i] (host) = the draw of rows[i] over vocab logits; the logits are not changed.
 * The result is on the host when the call returns (a GPU backend syncs here, once). */
void ts_be_sample(ts_backend *be, int32_t *tokens, const ts_sample_row *rows, int n, int vocab);

/* ---- ViT / MM-DiT ops (CLIP text tower, MaskGen, TA-TiTok, T5's encoder) ---- */
typedef enum ts_act {
    TS_ACT_GELU,         /* exact: x * Phi(x) with erf */
    TS_ACT_GELU_TANH,    /* the tanh approximation (diffusers "gelu-approximate") */
    TS_ACT_QUICK_GELU,   /* x * sigmoid(1.702 x), OpenAI CLIP */
    TS_ACT_SILU,         /* x * sigmoid(x) */
    TS_ACT_RELU,         /* max(x, 0) (T5 v1.0's feed-forward) */
} ts_act;

/* out[i] = (x[i] - mean) / sqrt(var + eps) (* w + b when w, b are non-NULL; either may
 * be NULL alone) over rows of length dim; biased variance as torch. May alias. */
void ts_be_layernorm(ts_backend *be, float *out, const float *x, const float *w,
                     const float *b, int m, int dim, float eps);
/* out[i] = act(x[i]); may alias. */
void ts_be_activation(ts_backend *be, float *out, const float *x, size_t n, ts_act act);
/* Gated activation: out[i] = act(a[i]) * b[i], rounded as float (T5's gated-gelu
 * feed-forward: act of wi_0's output times wi_1's). out may alias a or b. */
void ts_be_act_mul(ts_backend *be, float *out, const float *a, const float *b, size_t n,
                   ts_act act);
/* adaLN: row r of [m, dim] belongs to item j = r / rows_per_item, whose shift and scale
 * vectors (dim floats each) start at shift + j * mod_stride and scale + j * mod_stride;
 * out[r] = x[r] * (1 + scale_j) + shift_j. shift may be NULL (no shift). May alias. */
void ts_be_modulate(ts_backend *be, float *out, const float *x, const float *shift,
                    const float *scale, int mod_stride, int m, int dim, int rows_per_item);
/* x[r] += gate_j * y[r], gate_j at gate + j * mod_stride as in ts_be_modulate. */
void ts_be_gated_add(ts_backend *be, float *x, const float *y, const float *gate,
                     int mod_stride, int m, int dim, int rows_per_item);
/* x[rows[i], :] += y[i, :] for i < n (rows distinct). */
void ts_be_scatter_add_rows(ts_backend *be, float *x, const float *y, const int32_t *rows,
                            int n, int dim);
/* Attention within each of n_seq sequences of seq_len positions, no cache: position p
 * of sequence s lives in buffer row r = rows[s * seq_len + p] (rows NULL: r = s *
 * seq_len + p) of q, k and v (row stride `stride` floats, head h in columns
 * [h*head_dim, (h+1)*head_dim)) and of out (row stride n_head*head_dim). causal: p
 * attends to positions <= p only. Scale 1/sqrt(head_dim). out must not alias q, k, v. */
void ts_be_attention_dense(ts_backend *be, float *out, const float *q, const float *k,
                           const float *v, int stride, int n_head, int head_dim,
                           const int32_t *rows, int n_seq, int seq_len, int causal);

/* Attention with an additive bias and per-sequence key lengths, non-causal, no cache
 * (T5's encoder): within each of n_seq sequences of seq_len positions, position p of
 * sequence s is row s * seq_len + p of q, k and v (row stride `stride` floats, head h in
 * columns [h*head_dim, (h+1)*head_dim)) and of out (row stride n_head*head_dim). Its
 * logits are
 *     l[h][p][j] = scale * (q_p . k_j) + bias[h][p][j]     for keys j < kv_len[s],
 * keys j >= kv_len[s] are left out (weight exactly 0: padding), and the softmax is in
 * float. bias is backend memory [n_head][seq_len][seq_len], or NULL (no bias); kv_len is
 * host memory [n_seq], each in [1, seq_len], or NULL (every key). Every query row,
 * padding included, is computed. A row depends only on its own sequence's first
 * kv_len[s] keys, whatever the batch or seq_len. out must not alias q, k, v. */
void ts_be_attention_bias(ts_backend *be, float *out, const float *q, const float *k,
                          const float *v, int stride, int n_head, int head_dim, int n_seq,
                          int seq_len, const float *bias, const int32_t *kv_len, float scale);

/* One image's token picks in a masked-decoding step (ts_be_masked_pick). */
typedef struct ts_masked_row {
    const float *cond;      /* backend memory, [n_pos][vocab] logits */
    const float *uncond;    /* backend memory, [n_pos][vocab], or NULL: no guidance */
    float guidance;         /* l = cond + (cond - uncond) * guidance (MaskGen's form) */
    float softmax_temp;     /* then l /= softmax_temp */
    float noise_temp;       /* pick = argmax_v(l[v] + noise_temp * g[v]); 0: no noise */
    uint64_t seed;          /* g[v]: ts_rng_gumbel_f(seed, image, step, */
    uint32_t image, step;   /*   TS_RNG_MASK_TOKEN, p * vocab + v) */
} ts_masked_row;
/* For row i and position p: ids[i*n_pos + p] = the pick (the lowest index among equal
 * maxima) and logit[i*n_pos + p] = l[pick] (the scaled logit, without noise). Host
 * outputs, ready when the call returns (a GPU backend syncs here, once). */
void ts_be_masked_pick(ts_backend *be, int32_t *ids, float *logit, const ts_masked_row *rows,
                       int n, int n_pos, int vocab);

/* ---- convolutional ops (NCHW, float) ---- */
/* out[n, cout, ho, wo] = conv(in[n, cin, h, w], W[cout, cin, k, k]) + bias, with zero
 * padding pad_lo before and pad_hi after each spatial axis. */
void ts_be_conv2d(ts_backend *be, float *out, const float *in, const ts_wt *w,
                  const float *bias, int n, int cin, int h, int wd, int k, int stride,
                  int pad_lo, int pad_hi);
/* GroupNorm over [n, c, hw] with `groups` groups, then x*sigmoid(x) if swish. */
void ts_be_group_norm(ts_backend *be, float *out, const float *in, const float *gamma,
                      const float *beta, int n, int c, int hw, int groups, float eps,
                      int swish);
/* Nearest-neighbour x2: out[n, c, 2h, 2w]. */
void ts_be_upsample2x(ts_backend *be, float *out, const float *in, int n, int c, int h, int wd);
/* Single-head attention over positions of NCHW maps: out[n, :, i] = sum_j
 * softmax_j(q[:, i].k[:, j] / sqrt(c)) v[:, j]. */
void ts_be_spatial_attention(ts_backend *be, float *out, const float *q, const float *k,
                             const float *v, int n, int c, int hw);

#endif
