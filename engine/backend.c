/* backend.c - the public op wrappers: one indirect call each, so models stay
 * device-free and a backend is chosen once at start-up. */
#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ts_backend *ts_backend_create(const char *device, int n_threads, ts_error *err)
{
    if (!device || !strcmp(device, "cpu")) return ts_backend_cpu_create(n_threads, err);
    int fp32 = !strcmp(device, "cuda-fp32");
    if (strcmp(device, "cuda") && strcmp(device, "auto") && !fp32) {
        ts_fail(err, TS_ERR_INVALID, "unknown device \"%s\" (cpu, cuda, cuda-fp32 or auto)", device);
        return NULL;
    }
    ts_error why = {0};
    ts_backend *be = ts_backend_cuda_create(-1, fp32, &why);
    if (be) return be;
    if (why.code != TS_ERR_UNSUPPORTED) {   /* a GPU is there but failed: say so, do not hide it */
        if (err) *err = why;
        return NULL;
    }
    if (strcmp(device, "auto"))
        fprintf(stderr, "tessera: notice: --device %s: %s; running on the CPU backend\n", device,
                why.msg);
    return ts_backend_cpu_create(n_threads, err);
}

void ts_backend_free(ts_backend *be)
{
    if (be) be->ops->destroy(be);
}

const char *ts_backend_name(const ts_backend *be) { return be->ops->name; }
const char *ts_backend_describe(const ts_backend *be)
{
    return be->description[0] ? be->description : be->ops->name;
}
int ts_backend_threads(const ts_backend *be) { return be->n_threads; }
int ts_backend_kv_elem_bytes(const ts_backend *be) { return be->kv_elem_bytes; }

int ts_be_mem_info(ts_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    if (!be->ops->mem_info) return -1;
    return be->ops->mem_info(be, free_bytes, total_bytes);
}

void ts_be_step_begin(ts_backend *be)
{
    if (be->ops->step_begin) be->ops->step_begin(be);
}

float *ts_be_alloc(ts_backend *be, size_t n) { return be->ops->alloc(be, n); }
void ts_be_free(ts_backend *be, void *p) { if (p) be->ops->free(be, p); }
void ts_be_upload(ts_backend *be, float *dst, const float *src, size_t n)
{
    be->ops->upload(be, dst, src, n);
}
void ts_be_download(ts_backend *be, float *dst, const float *src, size_t n)
{
    be->ops->download(be, dst, src, n);
}
void ts_be_copy(ts_backend *be, void *dst, const void *src, size_t n_bytes)
{
    if (n_bytes) be->ops->copy(be, dst, src, n_bytes);
}

int ts_be_weight_init(ts_backend *be, ts_wt *w, const void *host, ts_dtype t,
                      int64_t n_out, int64_t n_in, ts_error *err)
{
    if (t != TS_F32 && t != TS_F16 && t != TS_BF16)
        return ts_fail(err, TS_ERR_DTYPE, "weights must be F32, F16 or BF16, not %s",
                       ts_dtype_name(t));
    return be->ops->weight_init(be, w, host, t, n_out, n_in, err);
}

void ts_be_weight_release(ts_backend *be, ts_wt *w)
{
    if (w && w->data) be->ops->weight_release(be, w);
}

float *ts_be_vec_from(ts_backend *be, const void *host, ts_dtype t, size_t n)
{
    float *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp) return NULL;
    ts_to_f32(tmp, host, t, n);
    float *dev = ts_be_alloc(be, n);
    if (dev) ts_be_upload(be, dev, tmp, n);
    free(tmp);
    return dev;
}

void ts_be_embed(ts_backend *be, float *out, const ts_wt *table, const int32_t *ids,
                 const int32_t *rows, int n)
{
    if (n > 0) be->ops->embed(be, out, table, ids, rows, n);
}
void ts_be_gather_rows(ts_backend *be, float *out, const float *x, const int32_t *rows, int n,
                       int dim)
{
    if (n > 0) be->ops->gather_rows(be, out, x, rows, n, dim);
}
void ts_be_matmul(ts_backend *be, float *out, const float *x, const ts_wt *w,
                  const float *bias, int m)
{
    be->ops->matmul(be, out, x, w, bias, m);
}
void ts_be_rmsnorm(ts_backend *be, float *out, const float *x, const float *w,
                   int m, int dim, float eps)
{
    be->ops->rmsnorm(be, out, x, w, m, dim, eps);
}
void ts_be_rope(ts_backend *be, float *x, int stride, int m, int n_head, int head_dim,
                const float *table, const int32_t *pos)
{
    be->ops->rope(be, x, stride, m, n_head, head_dim, table, pos);
}
void ts_be_swiglu(ts_backend *be, float *out, const float *a, const float *b, size_t n)
{
    be->ops->swiglu(be, out, a, b, n);
}
void ts_be_add(ts_backend *be, float *x, const float *y, size_t n)
{
    be->ops->add(be, x, y, n);
}
void ts_be_kv_store(ts_backend *be, const ts_kv_layer *kv, const float *k, const float *v,
                    int stride, const int32_t *slot, int m)
{
    be->ops->kv_store(be, kv, k, v, stride, slot, m);
}
void ts_be_attention(ts_backend *be, float *out, const float *q, int q_stride,
                     const ts_kv_layer *kv, int n_head, const ts_attn_seq *seqs, int n_seqs,
                     int max_ctx)
{
    be->ops->attention(be, out, q, q_stride, kv, n_head, seqs, n_seqs, max_ctx);
}
void ts_be_sample(ts_backend *be, int32_t *tokens, const ts_sample_row *rows, int n, int vocab)
{
    if (n > 0) be->ops->sample(be, tokens, rows, n, vocab);
}
void ts_be_conv2d(ts_backend *be, float *out, const float *in, const ts_wt *w,
                  const float *bias, int n, int cin, int h, int wd, int k, int stride,
                  int pad_lo, int pad_hi)
{
    be->ops->conv2d(be, out, in, w, bias, n, cin, h, wd, k, stride, pad_lo, pad_hi);
}
void ts_be_group_norm(ts_backend *be, float *out, const float *in, const float *gamma,
                      const float *beta, int n, int c, int hw, int groups, float eps,
                      int swish)
{
    be->ops->group_norm(be, out, in, gamma, beta, n, c, hw, groups, eps, swish);
}
void ts_be_upsample2x(ts_backend *be, float *out, const float *in, int n, int c, int h, int wd)
{
    be->ops->upsample2x(be, out, in, n, c, h, wd);
}
void ts_be_spatial_attention(ts_backend *be, float *out, const float *q, const float *k,
                             const float *v, int n, int c, int hw)
{
    be->ops->spatial_attention(be, out, q, k, v, n, c, hw);
}

void ts_be_layernorm(ts_backend *be, float *out, const float *x, const float *w,
                     const float *b, int m, int dim, float eps)
{
    if (m > 0) be->ops->layernorm(be, out, x, w, b, m, dim, eps);
}
void ts_be_activation(ts_backend *be, float *out, const float *x, size_t n, ts_act act)
{
    if (n > 0) be->ops->activation(be, out, x, n, act);
}
void ts_be_act_mul(ts_backend *be, float *out, const float *a, const float *b, size_t n,
                   ts_act act)
{
    if (n > 0) be->ops->act_mul(be, out, a, b, n, act);
}
void ts_be_modulate(ts_backend *be, float *out, const float *x, const float *shift,
                    const float *scale, int mod_stride, int m, int dim, int rows_per_item)
{
    if (m > 0) be->ops->modulate(be, out, x, shift, scale, mod_stride, m, dim, rows_per_item);
}
void ts_be_gated_add(ts_backend *be, float *x, const float *y, const float *gate,
                     int mod_stride, int m, int dim, int rows_per_item)
{
    if (m > 0) be->ops->gated_add(be, x, y, gate, mod_stride, m, dim, rows_per_item);
}
void ts_be_scatter_add_rows(ts_backend *be, float *x, const float *y, const int32_t *rows,
                            int n, int dim)
{
    if (n > 0) be->ops->scatter_add_rows(be, x, y, rows, n, dim);
}
void ts_be_attention_dense(ts_backend *be, float *out, const float *q, const float *k,
                           const float *v, int stride, int n_head, int head_dim,
                           const int32_t *rows, int n_seq, int seq_len, int causal)
{
    if (n_seq > 0 && seq_len > 0)
        be->ops->attention_dense(be, out, q, k, v, stride, n_head, head_dim, rows, n_seq,
                                 seq_len, causal);
}
void ts_be_attention_bias(ts_backend *be, float *out, const float *q, const float *k,
                          const float *v, int stride, int n_head, int head_dim, int n_seq,
                          int seq_len, const float *bias, const int32_t *kv_len, float scale)
{
    if (n_seq > 0 && seq_len > 0 && n_head > 0)
        be->ops->attention_bias(be, out, q, k, v, stride, n_head, head_dim, n_seq, seq_len, bias,
                                kv_len, scale);
}
void ts_be_masked_pick(ts_backend *be, int32_t *ids, float *logit, const ts_masked_row *rows,
                       int n, int n_pos, int vocab)
{
    if (n > 0) be->ops->masked_pick(be, ids, logit, rows, n, n_pos, vocab);
}
