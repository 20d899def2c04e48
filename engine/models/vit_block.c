/* vit_block.c - see vit_block.h. */
#include "vit_block.h"

#include <stdio.h>
#include <string.h>

int vit_block_load(ts_wsrc s, const char *prefix, const vit_dims *d, vit_block *b,
                   ts_error *err)
{
    memset(b, 0, sizeof *b);
    char n[160], n2[160];
    int W = d->width, rc;
#define NAME(suffix) (snprintf(n, sizeof n, "%s." suffix, prefix), n)
    if ((rc = ts_w_norm(s, NAME("ln_1"), W, &b->ln1_w, &b->ln1_b, err)) ||
        (rc = ts_w_mat(s, NAME("attn.in_proj_weight"), 2, TS_SHAPE(3 * W, W), 3 * W, W,
                       &b->in_proj, err)) ||
        (rc = ts_w_vec(s, NAME("attn.in_proj_bias"), 1, TS_SHAPE(3 * W), &b->in_proj_b, err)) ||
        (rc = ts_w_linear(s, NAME("attn.out_proj"), W, W, &b->out_proj, &b->out_proj_b, err)) ||
        (rc = ts_w_norm(s, NAME("ln_2"), W, &b->ln2_w, &b->ln2_b, err)) ||
        (rc = ts_w_linear(s, NAME("mlp.c_fc"), d->mlp, W, &b->fc, &b->fc_b, err)))
        return rc;
    snprintf(n2, sizeof n2, "%s.mlp.c_proj", prefix);
    return ts_w_linear(s, n2, W, d->mlp, &b->proj, &b->proj_b, err);
#undef NAME
}

void vit_block_free(ts_backend *be, vit_block *b)
{
    float *vecs[] = {b->ln1_w, b->ln1_b, b->ln2_w, b->ln2_b,
                     b->in_proj_b, b->out_proj_b, b->fc_b, b->proj_b};
    for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++) ts_be_free(be, vecs[i]);
    ts_wt *ws[] = {&b->in_proj, &b->out_proj, &b->fc, &b->proj};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ts_be_weight_release(be, ws[i]);
    memset(b, 0, sizeof *b);
}

int vit_scratch_alloc(ts_backend *be, const vit_dims *d, int rows, vit_scratch *s,
                      ts_error *err)
{
    memset(s, 0, sizeof *s);
    size_t r = (size_t)rows;
    s->h = ts_be_alloc(be, r * d->width);
    s->qkv = ts_be_alloc(be, r * 3 * d->width);
    s->att = ts_be_alloc(be, r * d->width);
    s->mlp = ts_be_alloc(be, r * d->mlp);
    if (!s->h || !s->qkv || !s->att || !s->mlp) {
        vit_scratch_free(be, s);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for %d rows of activations", rows);
    }
    s->rows = rows;
    return TS_OK;
}

void vit_scratch_free(ts_backend *be, vit_scratch *s)
{
    ts_be_free(be, s->h);
    ts_be_free(be, s->qkv);
    ts_be_free(be, s->att);
    ts_be_free(be, s->mlp);
    memset(s, 0, sizeof *s);
}

void vit_block_forward(ts_backend *be, const vit_block *b, const vit_dims *d, float *x,
                       int n_seq, int seq_len, int causal, vit_scratch *s)
{
    int W = d->width, M = n_seq * seq_len;
    size_t n = (size_t)M * W;
    ts_be_layernorm(be, s->h, x, b->ln1_w, b->ln1_b, M, W, d->eps);
    ts_be_matmul(be, s->qkv, s->h, &b->in_proj, b->in_proj_b, M);
    ts_be_attention_dense(be, s->att, s->qkv, s->qkv + W, s->qkv + 2 * W, 3 * W, d->n_head,
                          W / d->n_head, NULL, n_seq, seq_len, causal);
    ts_be_matmul(be, s->h, s->att, &b->out_proj, b->out_proj_b, M);
    ts_be_add(be, x, s->h, n);
    ts_be_layernorm(be, s->h, x, b->ln2_w, b->ln2_b, M, W, d->eps);
    ts_be_matmul(be, s->mlp, s->h, &b->fc, b->fc_b, M);
    ts_be_activation(be, s->mlp, s->mlp, (size_t)M * d->mlp, d->act);
    ts_be_matmul(be, s->h, s->mlp, &b->proj, b->proj_b, M);
    ts_be_add(be, x, s->h, n);
}
