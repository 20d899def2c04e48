/* far.c - FQGAN's FAR generator over the backend ops: the LlamaGen block stack
 * (llamagen_blocks) twice, once as the paged trunk and once as the dense per-position
 * head. Reads side by side with upstream's far_{dual,triple}.py; see far.h. */
#include "far.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "weights.h"

int far_config_parse(const json_t *gpt, int image_size, int downsample, far_config *cfg,
                     ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    int rc = llamagen_config_parse(gpt, image_size, downsample, &cfg->trunk, err);
    if (rc) return rc;
    if (!json_object_get(gpt, "n_sub"))
        return ts_fail(err, TS_ERR_CONFIG, "config: missing gpt.n_sub (sub-tokens per position: "
                       "2 or 3)");
    if ((rc = ts_json_int(gpt, "gpt", "n_sub", 2, FAR_MAX_SUB, &cfg->n_sub, err)) ||
        (rc = ts_json_int(gpt, "gpt", "head_layers", 1, FAR_MAX_HEAD_LAYERS, &cfg->head_layers,
                          err)))
        return rc;
    const llamagen_config *t = &cfg->trunk;
    if (t->n_kv_head != t->n_head)
        return ts_fail(err, TS_ERR_CONFIG, "config: gpt.n_kv_head %d must equal n_head %d for "
                       "FAR (no grouped-query attention)", t->n_kv_head, t->n_head);
    if (t->cls_token_num + t->block_size < cfg->n_sub)
        return ts_fail(err, TS_ERR_CONFIG, "config: gpt.block_size %d is too small for the "
                       "head's %d RoPE rows", t->block_size, cfg->n_sub);
    return TS_OK;
}

int far_load(ts_backend *be, const far_config *cfg, ts_st_file *f, far_model **out,
             ts_error *err)
{
    *out = NULL;
    far_model *m = calloc(1, sizeof *m);
    if (!m) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->be = be;
    const llamagen_config *c = &m->cfg.trunk;
    int k = m->cfg.n_sub;
    ts_wsrc src = {be, f};
    char name[64];
    int rc = TS_OK;
    for (int j = 0; j < k && !rc; j++) {
        snprintf(name, sizeof name, "tok_embeddings_%d.weight", j + 1);
        rc = ts_w_mat(src, name, 2, TS_SHAPE(c->vocab_size, c->dim), c->vocab_size, c->dim,
                      &m->tok_embeddings[j], err);
    }
    if (rc ||
        (rc = ts_w_linear(src, "aggregation_layer", c->dim, (int64_t)k * c->dim, &m->aggregation,
                          &m->aggregation_bias, err)) ||
        (rc = ts_w_mat(src, "cls_embedding.embedding_table.weight", 2,
                       TS_SHAPE(c->num_classes + 1, c->dim), c->num_classes + 1, c->dim,
                       &m->cls_embedding, err)) ||
        (rc = llamagen_layers_load(be, f, c, "layers", c->n_layer, &m->layers, err)) ||
        (rc = llamagen_layers_load(be, f, c, "ar_head", m->cfg.head_layers, &m->head, err)) ||
        (rc = ts_w_vec(src, "norm.weight", 1, TS_SHAPE(c->dim), &m->norm, err)))
        goto fail;
    for (int j = 0; j < k; j++) {
        snprintf(name, sizeof name, "output_%d.weight", j + 1);
        if ((rc = ts_w_mat(src, name, 2, TS_SHAPE(c->vocab_size, c->dim), c->vocab_size, c->dim,
                           &m->output[j], err)))
            goto fail;
    }
    if ((rc = ts_st_check_all_used(f, err))) goto fail;
    m->rope = llamagen_rope_upload(be, c);
    if (!m->rope) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    *out = m;
    return TS_OK;
fail:
    far_free(m);
    return rc;
}

static void free_seq_scratch(far_model *m)
{
    llamagen_acts_free(m->be, &m->head_act);
    for (int l = 0; l < FAR_MAX_HEAD_LAYERS; l++) {
        ts_be_free(m->be, m->head_qkv[l]);
        m->head_qkv[l] = NULL;
    }
    ts_be_free(m->be, m->hidden);
    ts_be_free(m->be, m->head_att);
    ts_be_free(m->be, m->logits);
    free(m->head_pos);
    free(m->head_rows_idx);
    m->hidden = m->head_att = m->logits = NULL;
    m->head_pos = m->head_rows_idx = NULL;
    m->cap_seqs = 0;
    m->head_rows = 0;
}

void far_free(far_model *m)
{
    if (!m) return;
    ts_backend *be = m->be;
    free_seq_scratch(m);
    llamagen_acts_free(be, &m->act);
    ts_be_free(be, m->cat);
    for (int j = 0; j < FAR_MAX_SUB; j++) {
        ts_be_weight_release(be, &m->tok_embeddings[j]);
        ts_be_weight_release(be, &m->output[j]);
    }
    ts_be_weight_release(be, &m->aggregation);
    ts_be_free(be, m->aggregation_bias);
    ts_be_weight_release(be, &m->cls_embedding);
    llamagen_layers_free(be, m->layers, m->cfg.trunk.n_layer);
    llamagen_layers_free(be, m->head, m->cfg.head_layers);
    ts_be_free(be, m->norm);
    ts_be_free(be, m->rope);
    free(m);
}

/* Grows the trunk scratch to n_rows rows and the per-sequence (head) scratch to n_seqs. */
static int reserve(far_model *m, int n_rows, int n_seqs, ts_error *err)
{
    const llamagen_config *c = &m->cfg.trunk;
    int k = m->cfg.n_sub;
    if (n_rows > m->act.cap) {
        ts_be_free(m->be, m->cat);
        m->cat = NULL;
        int rc = llamagen_acts_reserve(m->be, c, &m->act, n_rows, err);
        if (rc) return rc;
        m->cat = ts_be_alloc(m->be, (size_t)n_rows * k * c->dim);
        if (!m->cat) {
            llamagen_acts_free(m->be, &m->act);
            return ts_fail(err, TS_ERR_NOMEM, "out of memory for %d rows of activations", n_rows);
        }
    }
    if (n_seqs <= m->cap_seqs) return TS_OK;
    free_seq_scratch(m);
    size_t ns = (size_t)n_seqs, dim = (size_t)c->dim;
    int rc = llamagen_acts_reserve(m->be, c, &m->head_act, n_seqs, err);
    if (rc) return rc;
    int ok = 1;
    for (int l = 0; l < m->cfg.head_layers; l++)
        ok &= (m->head_qkv[l] = ts_be_alloc(m->be, k * ns * 3 * dim)) != NULL;
    m->hidden = ts_be_alloc(m->be, ns * dim);
    m->head_att = ts_be_alloc(m->be, k * ns * dim);
    m->logits = ts_be_alloc(m->be, ns * (size_t)c->vocab_size);
    m->head_pos = malloc(ns * sizeof *m->head_pos);
    m->head_rows_idx = malloc(k * ns * sizeof *m->head_rows_idx);
    if (!ok || !m->hidden || !m->head_att || !m->logits || !m->head_pos || !m->head_rows_idx) {
        free_seq_scratch(m);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for the head of %d sequences", n_seqs);
    }
    m->cap_seqs = n_seqs;
    return TS_OK;
}

int far_trunk_forward(far_model *m, ts_kv_cache *kv, const far_seq *seqs, int n_seqs,
                      ts_error *err)
{
    const llamagen_config *c = &m->cfg.trunk;
    ts_backend *be = m->be;
    int k = m->cfg.n_sub;
    if (n_seqs <= 0) return ts_fail(err, TS_ERR_INVALID, "forward: no sequences");
    /* Positions and cache slots as LlamaGen's (ids are checked here, per sub-token). */
    llamagen_seq *lseqs = malloc((size_t)n_seqs * sizeof *lseqs);
    if (!lseqs) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    for (int s = 0; s < n_seqs; s++)
        lseqs[s] = (llamagen_seq){.n_past = seqs[s].n_past, .n_new = seqs[s].n_new, .ids = NULL, .block_table = seqs[s].block_table};
    llamagen_plan p;
    int rc = llamagen_plan_make(c, kv, lseqs, n_seqs, &p, err);
    free(lseqs);
    if (rc) return rc;
    for (int s = 0; s < n_seqs && !rc; s++) {
        const far_seq *q = &seqs[s];
        for (int i = 0; i < q->n_new && !rc; i++) {
            int pos = q->n_past + i;
            const int32_t *id = q->ids + (size_t)i * k;
            if (pos < c->cls_token_num) {
                if (id[0] < 0 || id[0] > c->num_classes)
                    rc = ts_fail(err, TS_ERR_INVALID, "forward: sequence %d class %d at position "
                                 "%d is outside [0, %d]", s, id[0], pos, c->num_classes);
                continue;
            }
            for (int j = 0; j < k && !rc; j++)
                if (id[j] < 0 || id[j] >= c->vocab_size)
                    rc = ts_fail(err, TS_ERR_INVALID, "forward: sequence %d sub-token %d id %d at "
                                 "position %d is outside [0, %d]", s, j, id[j], pos,
                                 c->vocab_size - 1);
        }
    }
    int M = p.rows;
    if (rc || (rc = reserve(m, M, n_seqs, err))) {
        llamagen_plan_free(&p);
        return rc;
    }
    /* Embedding gathers: class rows from the class table into x; each token row's k
     * sub-token rows into its k slices of cat (cat viewed as [M*k, dim] rows). */
    size_t rows_sz = (size_t)M * sizeof(int32_t);
    int32_t *cls_ids = malloc(rows_sz), *cls_rows = malloc(rows_sz);
    int32_t *sub_ids = malloc(rows_sz * k), *sub_rows = malloc(rows_sz * k);
    if (!cls_ids || !cls_rows || !sub_ids || !sub_rows) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto done;
    }
    int row = 0, n_cls = 0, n_tok = 0;
    for (int s = 0; s < n_seqs; s++) {
        const far_seq *q = &seqs[s];
        for (int i = 0; i < q->n_new; i++, row++) {
            const int32_t *id = q->ids + (size_t)i * k;
            if (q->n_past + i < c->cls_token_num) {
                cls_ids[n_cls] = id[0];
                cls_rows[n_cls++] = row;
                continue;
            }
            for (int j = 0; j < k; j++) {
                sub_ids[(size_t)j * M + n_tok] = id[j];
                sub_rows[(size_t)j * M + n_tok] = row * k + j;
            }
            n_tok++;
        }
    }

    /* One recurring step, continued by head sub-step 0 (see far.h). */
    ts_be_step_begin(be);
    llamagen_acts *a = &m->act;
    if (n_tok) {
        for (int j = 0; j < k; j++)
            ts_be_embed(be, m->cat, &m->tok_embeddings[j], sub_ids + (size_t)j * M,
                        sub_rows + (size_t)j * M, n_tok);
        /* Every row; the class rows' results are overwritten just below. */
        ts_be_matmul(be, a->x, m->cat, &m->aggregation, m->aggregation_bias, M);
    }
    ts_be_embed(be, a->x, &m->cls_embedding, cls_ids, cls_rows, n_cls);
    llamagen_attn att = {.kv = kv, .slot = p.slot, .seqs = p.att, .n_seqs = n_seqs,
                         .max_ctx = c->cls_token_num + c->block_size};
    llamagen_blocks(be, c, m->layers, c->n_layer, a, M, m->rope, p.pos, &att);
    ts_be_gather_rows(be, m->hidden, a->x, p.last, n_seqs, c->dim);
    m->head_rows = n_seqs;
    m->head_next = 0;
done:
    free(cls_ids);
    free(cls_rows);
    free(sub_ids);
    free(sub_rows);
    llamagen_plan_free(&p);
    return rc;
}

int far_head_step(far_model *m, int j, const int32_t *prev, float *logits, ts_error *err)
{
    const llamagen_config *c = &m->cfg.trunk;
    ts_backend *be = m->be;
    int N = m->head_rows, dim = c->dim;
    if (N <= 0) return ts_fail(err, TS_ERR_INVALID, "far head: no trunk step to continue");
    if (j != m->head_next || j >= m->cfg.n_sub)
        return ts_fail(err, TS_ERR_INVALID, "far head: sub-step %d out of order (expected %d of "
                       "%d)", j, m->head_next, m->cfg.n_sub);
    if (j > 0) {
        if (!prev) return ts_fail(err, TS_ERR_INVALID, "far head: sub-step %d needs sub-token %d",
                                  j, j - 1);
        for (int r = 0; r < N; r++)
            if (prev[r] < 0 || prev[r] >= c->vocab_size)
                return ts_fail(err, TS_ERR_INVALID, "far head: row %d sub-token %d id %d is "
                               "outside [0, %d]", r, j - 1, prev[r], c->vocab_size - 1);
    }
    llamagen_acts *a = &m->head_act;
    /* Slot j's input: the trunk output, or the raw embedding of the sub-token just drawn. */
    if (j == 0) ts_be_copy(be, a->x, m->hidden, (size_t)N * dim * sizeof(float));
    else ts_be_embed(be, a->x, &m->tok_embeddings[j - 1], prev, NULL, N);
    /* Slot j of row r lives at store row j*N + r; every row sees its slots 0..j. */
    int L = j + 1;
    for (int r = 0; r < N; r++) {
        m->head_pos[r] = j;   /* RoPE row j of the trunk's table */
        for (int s = 0; s < L; s++) m->head_rows_idx[r * L + s] = s * N + r;
    }
    llamagen_attn att = {.store = m->head_qkv, .att_store = m->head_att, .row0 = j * N,
                         .rows = m->head_rows_idx, .n_seq = N, .seq_len = L};
    llamagen_blocks(be, c, m->head, m->cfg.head_layers, a, N, m->rope, m->head_pos, &att);
    ts_be_rmsnorm(be, a->xn, a->x, m->norm, N, dim, c->norm_eps);
    ts_be_matmul(be, m->logits, a->xn, &m->output[j], NULL, N);
    if (logits) ts_be_download(be, logits, m->logits, (size_t)N * c->vocab_size);
    m->head_next = j + 1;
    return TS_OK;
}

const float *far_hidden(const far_model *m) { return m->hidden; }
const float *far_logits(const far_model *m) { return m->logits; }
