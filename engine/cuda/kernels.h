/* kernels.h - the CUDA kernels behind backend_cuda.c, one launcher per op.
 *
 * Conventions for every launcher:
 *  - all pointers are device memory; index arrays (ids, rows, positions, slots, block
 *    tables, sequence records) were copied to the device by the caller;
 *  - activations are float; weights and the KV cache are bf16 (stored as uint16_t), or
 *    float in the backend's fp32 mode (the `f32` flags), which exists for parity tests;
 *  - the work is queued on `stream` and nothing waits; the return value is
 *    cudaGetLastError() after the launch (cudaSuccess when n == 0 and nothing ran);
 *  - no launcher allocates memory or synchronises, so that a whole step can be
 *    captured into a CUDA graph; scratch comes from the caller.
 */
#ifndef TS_CUDA_KERNELS_H
#define TS_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- transformer.cu ---- */

/* out[rows[i], :] = table[ids[i], :] (bf16, or float if f32, -> float), rows NULL: row i. */
cudaError_t tsk_embed(cudaStream_t s, float *out, const void *table, int f32, int dim,
                      const int32_t *ids, const int32_t *rows, int n);
/* out[i, :] = x[rows[i], :]. */
cudaError_t tsk_gather_rows(cudaStream_t s, float *out, const float *x, const int32_t *rows,
                            int n, int dim);
/* out[i] = x[i] * rsqrt(mean(x[i]^2) + eps) * w, rows of dim. */
cudaError_t tsk_rmsnorm(cudaStream_t s, float *out, const float *x, const float *w, int m,
                        int dim, float eps);
/* As ts_be_rope: in place, pairs (2j, 2j+1) of each head rotated by table[pos[i]][j]. */
cudaError_t tsk_rope(cudaStream_t s, float *x, int stride, int m, int n_head, int head_dim,
                     const float *table, const int32_t *pos);
/* out[i] = silu(a[i]) * b[i] (out may alias a). */
cudaError_t tsk_swiglu(cudaStream_t s, float *out, const float *a, const float *b, size_t n);
/* x[i] += y[i]. */
cudaError_t tsk_add(cudaStream_t s, float *x, const float *y, size_t n);
/* out[i] = bf16(x[i]), round to nearest even: GEMM operands. */
cudaError_t tsk_to_bf16(cudaStream_t s, uint16_t *out, const float *x, size_t n);
/* out[i, j] += bias[j] over an [m, n] row-major matrix. */
cudaError_t tsk_add_bias_rows(cudaStream_t s, float *out, const float *bias, int m, int n);
/* out[b, c, i] += bias[c] over [n, c, hw]. */
cudaError_t tsk_add_bias_channels(cudaStream_t s, float *out, const float *bias, int n, int c,
                                  int hw);
/* Cache row slot[i] of kc / vc ([*, kv_dim], bf16 or float if f32) = k / v row i (rows
 * stride floats apart). */
cudaError_t tsk_kv_store(cudaStream_t s, void *kc, void *vc, int f32, int kv_dim, const float *k,
                         const float *v, int stride, const int32_t *slot, int m);

/* ---- gemm_rows.cu ---- */

/* out[m, n_out] = x[m, n_in] . w[n_out, n_in]^T, x and w both bf16 (both float if f32),
 * fp32 accumulation, each output in an order that does not depend on m (batch
 * invariance; see the file). For the few rows of a decode step. */
cudaError_t tsk_gemm_rows(cudaStream_t s, float *out, const void *x, const void *w, int f32,
                          int m, int n_out, int n_in);

/* ---- attention.cu ---- */

/* One sequence of a batched attention call, as ts_attn_seq without the table pointer:
 * its block table is row `index` of the tables array. */
typedef struct tsk_attn_seq {
    int32_t n_ctx, n_q, q_row, pad;
} tsk_attn_seq;

/* Causal attention over the paged cache (bf16, or float if f32) for `rows` query rows
 * (scale 1/sqrt(head_dim), GQA: head h reads kv head h / (n_head / n_kv_head)); row_seq[r] is the
 * sequence of query row r; tables is [n_seqs][max_blocks]; no n_ctx exceeds max_ctx.
 * The launch shape depends only on (rows, n_head, head_dim, max_ctx), never on the
 * contexts, so it can be replayed from a graph as contexts grow. head_dim <= 256. */
cudaError_t tsk_attention(cudaStream_t s, float *out, const float *q, int q_stride,
                          const void *kc, const void *vc, int f32, int block_size, int n_kv_head,
                          int head_dim, int n_head, const int32_t *row_seq,
                          const tsk_attn_seq *seqs, const int32_t *tables, int max_blocks,
                          int rows, int max_ctx);

/* ---- sample.cu ---- */

/* One draw, as ts_sample_row with the parameters flattened. */
typedef struct tsk_sample_row {
    const float *cond, *uncond;   /* uncond NULL: no CFG combine */
    float cfg_scale, temperature, top_p;
    int32_t top_k;
    double u;
} tsk_sample_row;

/* Bytes of device workspace tsk_sample needs for n rows over vocab. */
size_t tsk_sample_workspace(int n, int vocab);
/* tokens[i] = the draw of rows[i] exactly as engine/sampler.c: CFG combine, divide by
 * max(temperature, 1e-5), top-k (ties at the k-th value kept), top-p (HF rule, ties by
 * lower id), softmax, first index whose cumulative probability exceeds u * total. */
cudaError_t tsk_sample(cudaStream_t s, int32_t *tokens, const tsk_sample_row *rows, int n,
                       int vocab, void *workspace);

/* ---- vq.cu (convolutional decoder) ---- */

/* col[(ci*k + ky)*k + kx, oy*wo + ox] = in[ci, oy*stride + ky - pad_lo, ox*stride + kx - pad_lo]
 * (0 outside) for one image [cin, h, w]; col is [cin*k*k, ho*wo], bf16 (float if f32),
 * the B operand of the convolution's GEMM. */
cudaError_t tsk_im2col(cudaStream_t s, void *col, int f32, const float *in, int cin, int h,
                       int w, int k, int stride, int pad_lo, int ho, int wo);
/* GroupNorm over [n, c, hw] with `groups` groups (statistics in float, two-pass), affine,
 * then x * sigmoid(x) if swish. out may alias in. */
cudaError_t tsk_group_norm(cudaStream_t s, float *out, const float *in, const float *gamma,
                           const float *beta, int n, int c, int hw, int groups, float eps,
                           int swish);
/* Nearest x2: out[n, c, 2h, 2w]. */
cudaError_t tsk_upsample2x(cudaStream_t s, float *out, const float *in, int n, int c, int h,
                           int w);
/* In place over rows of x [rows, cols]: x = softmax(x * scale) per row. */
cudaError_t tsk_softmax_rows(cudaStream_t s, float *x, int rows, int cols, float scale);

/* ---- vit.cu (CLIP text tower, MaskGen MM-DiT, TA-TiTok decoder; all float) ---- */

/* tsk_activation's functions, the values of ts_act in engine/backend.h. */
enum { TSK_ACT_GELU = 0, TSK_ACT_GELU_TANH = 1, TSK_ACT_QUICK_GELU = 2, TSK_ACT_SILU = 3,
       TSK_ACT_RELU = 4 };

/* out[i] = (x[i] - mean) / sqrt(var + eps) (* w, + b where non-NULL) over rows of dim,
 * biased variance; statistics in double as the CPU. out may alias x. */
cudaError_t tsk_layernorm(cudaStream_t s, float *out, const float *x, const float *w,
                          const float *b, int m, int dim, float eps);
/* out[i] = act(x[i]) for a TSK_ACT_* act; out may alias x. */
cudaError_t tsk_activation(cudaStream_t s, float *out, const float *x, size_t n, int act);
/* out[i] = act(a[i]) * b[i] for a TSK_ACT_* act, the product rounded as the CPU's; out may
 * alias a or b. */
cudaError_t tsk_act_mul(cudaStream_t s, float *out, const float *a, const float *b, size_t n,
                        int act);
/* As ts_be_modulate: out[r] = x[r] * (1 + scale_j) + shift_j, j = r / rows_per_item, the
 * vectors at j * mod_stride; shift may be NULL. out may alias x. */
cudaError_t tsk_modulate(cudaStream_t s, float *out, const float *x, const float *shift,
                         const float *scale, int mod_stride, int m, int dim, int rows_per_item);
/* As ts_be_gated_add: x[r] += gate_j * y[r]. */
cudaError_t tsk_gated_add(cudaStream_t s, float *x, const float *y, const float *gate,
                          int mod_stride, int m, int dim, int rows_per_item);
/* x[rows[i], :] += y[i, :] for i < n (rows distinct). */
cudaError_t tsk_scatter_add_rows(cudaStream_t s, float *x, const float *y, const int32_t *rows,
                                 int n, int dim);
/* As ts_be_attention_dense: attention within each of n_seq sequences of seq_len
 * positions (rows NULL: position p of sequence s is row s * seq_len + p), q/k/v rows of
 * `stride` floats, out rows of n_head * head_dim. head_dim <= 128; n_head and n_seq at
 * most 65535; shared memory grows with seq_len (about 64 bytes a position: 512
 * positions take 74 KiB at head_dim 128, the opt-in limit of an H100 allows ~2900). */
cudaError_t tsk_attention_dense(cudaStream_t s, float *out, const float *q, const float *k,
                                const float *v, int stride, int n_head, int head_dim,
                                const int32_t *rows, int n_seq, int seq_len, int causal);

/* ---- t5.cu (T5's encoder) ---- */

/* As ts_be_attention_bias: position p of sequence s is row s * seq_len + p of q, k, v
 * (rows of `stride` floats) and of out (rows of n_head * head_dim); logits scale * q.k +
 * bias[h][p][j] (bias NULL: none) over keys j < kv_len[s] (device [n_seq]; NULL: all),
 * softmax in float. n_head and n_seq at most 65535; shared memory is 4 bytes a position
 * plus 4 a head dimension (the default 48 KiB holds ~12000 positions; more is opted in). */
cudaError_t tsk_attention_bias(cudaStream_t s, float *out, const float *q, const float *k,
                               const float *v, int stride, int n_head, int head_dim, int n_seq,
                               int seq_len, const float *bias, const int32_t *kv_len,
                               float scale);

/* One image's masked-decoding picks, as ts_masked_row. */
typedef struct tsk_masked_row {
    const float *cond, *uncond;   /* [n_pos][vocab]; uncond NULL: no guidance */
    float guidance, softmax_temp, noise_temp;
    uint32_t image, step, pad;
    uint64_t seed;
} tsk_masked_row;

/* For row i and position p, ids[i * n_pos + p] and logit[i * n_pos + p] as
 * ts_be_masked_pick: argmax (lowest index on ties) of the guided, tempered logit plus
 * noise_temp times the Gumbel noise of engine/philox.c (the same Philox integers; logf
 * may differ from the host's in the last bit). Device outputs. */
cudaError_t tsk_masked_pick(cudaStream_t s, int32_t *ids, float *logit,
                            const tsk_masked_row *rows, int n, int n_pos, int vocab);

#ifdef __cplusplus
}
#endif

#endif
