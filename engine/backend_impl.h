/* backend_impl.h - the ops table a backend fills in. Only backends include this;
 * models use the wrappers declared in backend.h. Every entry is required except
 * mem_info and step_begin, which may be NULL. */
#ifndef TS_BACKEND_IMPL_H
#define TS_BACKEND_IMPL_H

#include "backend.h"

typedef struct ts_backend_ops {
    const char *name;
    void (*destroy)(ts_backend *be);
    int (*mem_info)(ts_backend *be, size_t *free_bytes, size_t *total_bytes);
    void (*step_begin)(ts_backend *be);

    float *(*alloc)(ts_backend *be, size_t n_floats);
    void (*free)(ts_backend *be, void *p);
    void (*upload)(ts_backend *be, float *dst, const float *src, size_t n);
    void (*download)(ts_backend *be, float *dst, const float *src, size_t n);
    void (*copy)(ts_backend *be, void *dst, const void *src, size_t n_bytes);
    int (*weight_init)(ts_backend *be, ts_wt *w, const void *host, ts_dtype t,
                       int64_t n_out, int64_t n_in, ts_error *err);
    void (*weight_release)(ts_backend *be, ts_wt *w);

    void (*embed)(ts_backend *be, float *out, const ts_wt *table, const int32_t *ids,
                  const int32_t *rows, int n);
    void (*gather_rows)(ts_backend *be, float *out, const float *x, const int32_t *rows, int n,
                        int dim);
    void (*matmul)(ts_backend *be, float *out, const float *x, const ts_wt *w,
                   const float *bias, int m);
    void (*rmsnorm)(ts_backend *be, float *out, const float *x, const float *w,
                    int m, int dim, float eps);
    void (*rope)(ts_backend *be, float *x, int stride, int m, int n_head, int head_dim,
                 const float *table, const int32_t *pos);
    void (*swiglu)(ts_backend *be, float *out, const float *a, const float *b, size_t n);
    void (*add)(ts_backend *be, float *x, const float *y, size_t n);
    void (*kv_store)(ts_backend *be, const ts_kv_layer *kv, const float *k, const float *v,
                     int stride, const int32_t *slot, int m);
    void (*attention)(ts_backend *be, float *out, const float *q, int q_stride,
                      const ts_kv_layer *kv, int n_head, const ts_attn_seq *seqs, int n_seqs,
                      int max_ctx);
    void (*sample)(ts_backend *be, int32_t *tokens, const ts_sample_row *rows, int n, int vocab);

    void (*layernorm)(ts_backend *be, float *out, const float *x, const float *w,
                      const float *b, int m, int dim, float eps);
    void (*activation)(ts_backend *be, float *out, const float *x, size_t n, ts_act act);
    void (*act_mul)(ts_backend *be, float *out, const float *a, const float *b, size_t n,
                    ts_act act);
    void (*modulate)(ts_backend *be, float *out, const float *x, const float *shift,
                     const float *scale, int mod_stride, int m, int dim, int rows_per_item);
    void (*gated_add)(ts_backend *be, float *x, const float *y, const float *gate,
                      int mod_stride, int m, int dim, int rows_per_item);
    void (*scatter_add_rows)(ts_backend *be, float *x, const float *y, const int32_t *rows,
                             int n, int dim);
    void (*attention_dense)(ts_backend *be, float *out, const float *q, const float *k,
                            const float *v, int stride, int n_head, int head_dim,
                            const int32_t *rows, int n_seq, int seq_len, int causal);
    void (*attention_bias)(ts_backend *be, float *out, const float *q, const float *k,
                           const float *v, int stride, int n_head, int head_dim, int n_seq,
                           int seq_len, const float *bias, const int32_t *kv_len, float scale);
    void (*masked_pick)(ts_backend *be, int32_t *ids, float *logit, const ts_masked_row *rows,
                        int n, int n_pos, int vocab);

    void (*conv2d)(ts_backend *be, float *out, const float *in, const ts_wt *w,
                   const float *bias, int n, int cin, int h, int wd, int k, int stride,
                   int pad_lo, int pad_hi);
    void (*group_norm)(ts_backend *be, float *out, const float *in, const float *gamma,
                       const float *beta, int n, int c, int hw, int groups, float eps,
                       int swish);
    void (*upsample2x)(ts_backend *be, float *out, const float *in, int n, int c, int h,
                       int wd);
    void (*spatial_attention)(ts_backend *be, float *out, const float *q, const float *k,
                              const float *v, int n, int c, int hw);
} ts_backend_ops;

/* Every backend struct starts with this header. */
struct ts_backend {
    const ts_backend_ops *ops;
    int n_threads;
    int kv_elem_bytes;        /* 4 (float) or 2 (bf16) */
    char description[128];    /* one line for logs and /v1/models */
};

#endif
