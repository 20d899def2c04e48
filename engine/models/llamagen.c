/* llamagen.c - LlamaGen GPT forward pass over the backend ops. Reads side by side with
 * upstream's autoregressive/models/gpt.py; see llamagen.h for the contract. */
#include "llamagen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "weights.h"

int llamagen_config_parse(const json_t *gpt, int image_size, int downsample,
                          llamagen_config *cfg, ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *s = "gpt";
    const char *type;
    int rc;
    if ((rc = ts_json_string(gpt, s, "model_type", &type, err))) return rc;
    if (strcmp(type, "c2i") != 0)
        return ts_fail(err, TS_ERR_UNSUPPORTED, "config: gpt.model_type \"%s\" is not supported "
                       "(only \"c2i\")", type);
    if ((rc = ts_json_int(gpt, s, "dim", 1, 65536, &cfg->dim, err)) ||
        (rc = ts_json_int(gpt, s, "n_layer", 1, 1024, &cfg->n_layer, err)) ||
        (rc = ts_json_int(gpt, s, "n_head", 1, 1024, &cfg->n_head, err)) ||
        (rc = ts_json_int(gpt, s, "n_kv_head", 1, 1024, &cfg->n_kv_head, err)) ||
        (rc = ts_json_int(gpt, s, "ffn_dim", 1, 1 << 20, &cfg->ffn_dim, err)) ||
        (rc = ts_json_int(gpt, s, "vocab_size", 1, 1 << 24, &cfg->vocab_size, err)) ||
        (rc = ts_json_int(gpt, s, "num_classes", 1, 1 << 24, &cfg->num_classes, err)) ||
        (rc = ts_json_int(gpt, s, "cls_token_num", 1, 1, &cfg->cls_token_num, err)) ||
        (rc = ts_json_int(gpt, s, "block_size", 1, 1 << 16, &cfg->block_size, err)) ||
        (rc = ts_json_float(gpt, s, "rope_base", 1.0, 1e9, &cfg->rope_base, err)) ||
        (rc = ts_json_float(gpt, s, "norm_eps", 0.0, 1.0, &cfg->norm_eps, err)))
        return rc;
    if (cfg->dim % cfg->n_head)
        return ts_fail(err, TS_ERR_CONFIG, "config: gpt.dim %d is not a multiple of n_head %d",
                       cfg->dim, cfg->n_head);
    cfg->head_dim = cfg->dim / cfg->n_head;
    if (cfg->head_dim % 4)
        return ts_fail(err, TS_ERR_CONFIG, "config: head_dim %d must be a multiple of 4 for 2D RoPE",
                       cfg->head_dim);
    if (cfg->n_head % cfg->n_kv_head)
        return ts_fail(err, TS_ERR_CONFIG, "config: n_head %d is not a multiple of n_kv_head %d",
                       cfg->n_head, cfg->n_kv_head);
    cfg->grid = (int)lround(sqrt((double)cfg->block_size));
    if (cfg->grid * cfg->grid != cfg->block_size)
        return ts_fail(err, TS_ERR_CONFIG, "config: gpt.block_size %d is not a square",
                       cfg->block_size);
    if (downsample > 0 && (image_size % downsample || image_size / downsample != cfg->grid))
        return ts_fail(err, TS_ERR_CONFIG, "config: image_size %d / downsample %d does not give "
                       "the %dx%d token grid of gpt.block_size %d", image_size, downsample,
                       cfg->grid, cfg->grid, cfg->block_size);
    return TS_OK;
}

float *llamagen_rope_table(const llamagen_config *c)
{
    int half = c->head_dim / 2;     /* rotation pairs per head */
    int quarter = half / 2;         /* frequencies: first for rows, then for columns */
    size_t rows = (size_t)c->cls_token_num + (size_t)c->block_size;
    float *t = calloc(rows * half * 2, sizeof *t);   /* condition rows stay 0: upstream quirk */
    if (!t) return NULL;
    for (int n = 0; n < c->block_size; n++) {
        int r = n / c->grid, col = n % c->grid;
        float *row = t + ((size_t)c->cls_token_num + n) * half * 2;
        for (int k = 0; k < quarter; k++) {
            /* 1 / base^(2k / half) in fp32, as torch computes it */
            float f = 1.0f / powf(c->rope_base, (float)(2 * k) / (float)half);
            float ar = (float)r * f, ac = (float)col * f;
            row[2 * k] = cosf(ar);
            row[2 * k + 1] = sinf(ar);
            row[2 * (quarter + k)] = cosf(ac);
            row[2 * (quarter + k) + 1] = sinf(ac);
        }
    }
    return t;
}

/* The two shapes this model reads, through the shared loader (weights.h). */
static int load_mat(llamagen_model *m, ts_st_file *f, const char *name, int64_t rows,
                    int64_t cols, ts_wt *w, ts_error *err)
{
    return ts_w_mat((ts_wsrc){m->be, f}, name, 2, TS_SHAPE(rows, cols), rows, cols, w, err);
}

static int load_vec(llamagen_model *m, ts_st_file *f, const char *name, int64_t n,
                    float **out, ts_error *err)
{
    return ts_w_vec((ts_wsrc){m->be, f}, name, 1, TS_SHAPE(n), out, err);
}

int llamagen_load(ts_backend *be, const llamagen_config *cfg, ts_st_file *f,
                  llamagen_model **out, ts_error *err)
{
    *out = NULL;
    llamagen_model *m = calloc(1, sizeof *m);
    if (!m) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->be = be;
    const llamagen_config *c = &m->cfg;
    int rc;
    char name[128];
    int64_t qkv_rows = (int64_t)(c->n_head + 2 * c->n_kv_head) * c->head_dim;
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    if (!m->layers) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = load_mat(m, f, "tok_embeddings.weight", c->vocab_size, c->dim, &m->tok_embeddings, err)) ||
        (rc = load_mat(m, f, "cls_embedding.embedding_table.weight", c->num_classes + 1, c->dim,
                       &m->cls_embedding, err)))
        goto fail;
    for (int l = 0; l < c->n_layer; l++) {
        llamagen_layer *L = &m->layers[l];
#define LAYER(suffix) (snprintf(name, sizeof name, "layers.%d." suffix, l), name)
        if ((rc = load_vec(m, f, LAYER("attention_norm.weight"), c->dim, &L->attention_norm, err)) ||
            (rc = load_mat(m, f, LAYER("attention.wqkv.weight"), qkv_rows, c->dim, &L->wqkv, err)) ||
            (rc = load_mat(m, f, LAYER("attention.wo.weight"), c->dim, c->dim, &L->wo, err)) ||
            (rc = load_vec(m, f, LAYER("ffn_norm.weight"), c->dim, &L->ffn_norm, err)) ||
            (rc = load_mat(m, f, LAYER("feed_forward.w1.weight"), c->ffn_dim, c->dim, &L->w1, err)) ||
            (rc = load_mat(m, f, LAYER("feed_forward.w3.weight"), c->ffn_dim, c->dim, &L->w3, err)) ||
            (rc = load_mat(m, f, LAYER("feed_forward.w2.weight"), c->dim, c->ffn_dim, &L->w2, err)))
            goto fail;
#undef LAYER
    }
    if ((rc = load_vec(m, f, "norm.weight", c->dim, &m->norm, err)) ||
        (rc = load_mat(m, f, "output.weight", c->vocab_size, c->dim, &m->output, err)) ||
        (rc = ts_st_check_all_used(f, err)))
        goto fail;
    float *rope = llamagen_rope_table(c);
    size_t rope_n = ((size_t)c->cls_token_num + c->block_size) * c->head_dim;
    m->rope = rope ? ts_be_alloc(be, rope_n) : NULL;
    if (m->rope) ts_be_upload(be, m->rope, rope, rope_n);
    free(rope);
    if (!m->rope) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    *out = m;
    return TS_OK;
fail:
    llamagen_free(m);
    return rc;
}

static void free_scratch(llamagen_model *m)
{
    float **bufs[] = {&m->x, &m->xn, &m->qkv, &m->att, &m->h1, &m->h3, &m->last, &m->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        ts_be_free(m->be, *bufs[i]);
        *bufs[i] = NULL;
    }
    m->cap_tokens = m->cap_seqs = 0;
}

void llamagen_free(llamagen_model *m)
{
    if (!m) return;
    free_scratch(m);
    ts_be_weight_release(m->be, &m->tok_embeddings);
    ts_be_weight_release(m->be, &m->cls_embedding);
    ts_be_weight_release(m->be, &m->output);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layer; l++) {
            llamagen_layer *L = &m->layers[l];
            ts_be_free(m->be, L->attention_norm);
            ts_be_free(m->be, L->ffn_norm);
            ts_wt *ws[] = {&L->wqkv, &L->wo, &L->w1, &L->w3, &L->w2};
            for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ts_be_weight_release(m->be, ws[i]);
        }
    }
    free(m->layers);
    ts_be_free(m->be, m->norm);
    ts_be_free(m->be, m->rope);
    free(m);
}

/* Grows the activation scratch to hold n_tokens rows and n_seqs sequences. */
static int reserve(llamagen_model *m, int n_tokens, int n_seqs, ts_error *err)
{
    if (n_tokens <= m->cap_tokens && n_seqs <= m->cap_seqs) return TS_OK;
    int nt = n_tokens > m->cap_tokens ? n_tokens : m->cap_tokens;
    int ns = n_seqs > m->cap_seqs ? n_seqs : m->cap_seqs;
    free_scratch(m);
    const llamagen_config *c = &m->cfg;
    size_t qkv_dim = (size_t)(c->n_head + 2 * c->n_kv_head) * c->head_dim;
    m->x = ts_be_alloc(m->be, (size_t)nt * c->dim);
    m->xn = ts_be_alloc(m->be, (size_t)nt * c->dim);
    m->qkv = ts_be_alloc(m->be, (size_t)nt * qkv_dim);
    m->att = ts_be_alloc(m->be, (size_t)nt * c->dim);
    m->h1 = ts_be_alloc(m->be, (size_t)nt * c->ffn_dim);
    m->h3 = ts_be_alloc(m->be, (size_t)nt * c->ffn_dim);
    m->last = ts_be_alloc(m->be, (size_t)ns * c->dim);
    m->logits = ts_be_alloc(m->be, (size_t)ns * c->vocab_size);
    if (!m->x || !m->xn || !m->qkv || !m->att || !m->h1 || !m->h3 || !m->last || !m->logits) {
        free_scratch(m);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for %d tokens of activations", nt);
    }
    m->cap_tokens = nt;
    m->cap_seqs = ns;
    return TS_OK;
}

/* Host-side plan of one step: per-row position, cache slot and embedding source. */
typedef struct step_plan {
    int32_t *pos, *slot;
    int32_t *cls_ids, *cls_rows, *tok_ids, *tok_rows;   /* embedding gathers by table */
    int32_t *last;                                      /* last row of each sequence */
    ts_attn_seq *att;
} step_plan;

static void plan_free(step_plan *p)
{
    free(p->pos);
    free(p->slot);
    free(p->cls_ids);
    free(p->cls_rows);
    free(p->tok_ids);
    free(p->tok_rows);
    free(p->last);
    free(p->att);
}

int llamagen_forward(llamagen_model *m, ts_kv_cache *kv, const llamagen_seq *seqs,
                     int n_seqs, float *logits, ts_error *err)
{
    const llamagen_config *c = &m->cfg;
    ts_backend *be = m->be;
    int max_pos = c->cls_token_num + c->block_size;
    if (n_seqs <= 0) return ts_fail(err, TS_ERR_INVALID, "forward: no sequences");
    if (kv->n_layer != c->n_layer || kv->layers[0].n_kv_head != c->n_kv_head ||
        kv->layers[0].head_dim != c->head_dim)
        return ts_fail(err, TS_ERR_INVALID, "forward: KV cache geometry does not match the model");

    /* Validate everything before touching the cache. */
    int M = 0;
    for (int s = 0; s < n_seqs; s++) {
        const llamagen_seq *q = &seqs[s];
        if (q->n_new <= 0 || q->n_past < 0 || q->n_past + q->n_new > max_pos)
            return ts_fail(err, TS_ERR_INVALID, "forward: sequence %d positions [%d, %d) outside "
                           "[0, %d)", s, q->n_past, q->n_past + q->n_new, max_pos);
        for (int i = 0; i < q->n_new; i++) {
            int pos = q->n_past + i;
            int limit = pos < c->cls_token_num ? c->num_classes : c->vocab_size - 1;
            if (q->ids[i] < 0 || q->ids[i] > limit)
                return ts_fail(err, TS_ERR_INVALID, "forward: sequence %d id %d at position %d "
                               "is outside [0, %d]", s, q->ids[i], pos, limit);
        }
        if (M > (1 << 24) - q->n_new) return ts_fail(err, TS_ERR_INVALID, "forward: batch too large");
        M += q->n_new;
    }
    int rc = reserve(m, M, n_seqs, err);
    if (rc) return rc;

    size_t rows_sz = (size_t)M * sizeof(int32_t);
    step_plan p = {malloc(rows_sz), malloc(rows_sz), malloc(rows_sz), malloc(rows_sz),
                   malloc(rows_sz), malloc(rows_sz), malloc((size_t)n_seqs * sizeof(int32_t)),
                   malloc((size_t)n_seqs * sizeof *p.att)};
    if (!p.pos || !p.slot || !p.cls_ids || !p.cls_rows || !p.tok_ids || !p.tok_rows || !p.last ||
        !p.att) {
        plan_free(&p);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    }
    int dim = c->dim, hd = c->head_dim;
    int kv_dim = c->n_kv_head * hd;
    int qkv_dim = dim + 2 * kv_dim;
    int row = 0, n_cls = 0, n_tok = 0;
    for (int s = 0; s < n_seqs; s++) {
        const llamagen_seq *q = &seqs[s];
        p.att[s] = (ts_attn_seq){q->block_table, q->n_past + q->n_new, q->n_new, row};
        for (int i = 0; i < q->n_new; i++, row++) {
            int pos = q->n_past + i;
            p.pos[row] = pos;
            p.slot[row] = q->block_table[pos / kv->block_size] * kv->block_size + pos % kv->block_size;
            if (pos < c->cls_token_num) {
                p.cls_ids[n_cls] = q->ids[i];
                p.cls_rows[n_cls++] = row;
            } else {
                p.tok_ids[n_tok] = q->ids[i];
                p.tok_rows[n_tok++] = row;
            }
        }
        p.last[s] = row - 1;
    }

    /* From here to the download, the ops are one step that recurs with the same shapes. */
    ts_be_step_begin(be);
    ts_be_embed(be, m->x, &m->cls_embedding, p.cls_ids, p.cls_rows, n_cls);
    ts_be_embed(be, m->x, &m->tok_embeddings, p.tok_ids, p.tok_rows, n_tok);
    for (int l = 0; l < c->n_layer; l++) {
        const llamagen_layer *L = &m->layers[l];
        const ts_kv_layer *kvl = &kv->layers[l];
        /* attention: h = x + wo(attn(rope(q), rope(k), v)) */
        ts_be_rmsnorm(be, m->xn, m->x, L->attention_norm, M, dim, c->norm_eps);
        ts_be_matmul(be, m->qkv, m->xn, &L->wqkv, NULL, M);
        ts_be_rope(be, m->qkv, qkv_dim, M, c->n_head, hd, m->rope, p.pos);
        ts_be_rope(be, m->qkv + dim, qkv_dim, M, c->n_kv_head, hd, m->rope, p.pos);
        ts_be_kv_store(be, kvl, m->qkv + dim, m->qkv + dim + kv_dim, qkv_dim, p.slot, M);
        ts_be_attention(be, m->att, m->qkv, qkv_dim, kvl, c->n_head, p.att, n_seqs, max_pos);
        ts_be_matmul(be, m->xn, m->att, &L->wo, NULL, M);
        ts_be_add(be, m->x, m->xn, (size_t)M * dim);
        /* feed-forward: out = h + w2(silu(w1 h') * w3 h') */
        ts_be_rmsnorm(be, m->xn, m->x, L->ffn_norm, M, dim, c->norm_eps);
        ts_be_matmul(be, m->h1, m->xn, &L->w1, NULL, M);
        ts_be_matmul(be, m->h3, m->xn, &L->w3, NULL, M);
        ts_be_swiglu(be, m->h1, m->h1, m->h3, (size_t)M * c->ffn_dim);
        ts_be_matmul(be, m->xn, m->h1, &L->w2, NULL, M);
        ts_be_add(be, m->x, m->xn, (size_t)M * dim);
    }

    /* Only each sequence's last row needs logits. */
    ts_be_gather_rows(be, m->xn, m->x, p.last, n_seqs, dim);
    ts_be_rmsnorm(be, m->last, m->xn, m->norm, n_seqs, dim, c->norm_eps);
    ts_be_matmul(be, m->logits, m->last, &m->output, NULL, n_seqs);
    if (logits) ts_be_download(be, logits, m->logits, (size_t)n_seqs * c->vocab_size);
    plan_free(&p);
    return TS_OK;
}

const float *llamagen_logits(const llamagen_model *m) { return m->logits; }
