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
    if (!strcmp(type, "t2i")) cfg->t2i = 1;
    else if (strcmp(type, "c2i") != 0)
        return ts_fail(err, TS_ERR_UNSUPPORTED, "config: gpt.model_type \"%s\" is not supported "
                       "(\"c2i\" or \"t2i\")", type);
    if (cfg->t2i) {
        /* The text prefix: up to cls_token_num T5 rows of caption_dim features. */
        if ((rc = ts_json_int(gpt, s, "cls_token_num", 1, 4096, &cfg->cls_token_num, err)) ||
            (rc = ts_json_int(gpt, s, "caption_dim", 1, 65536, &cfg->caption_dim, err)))
            return rc;
    } else if ((rc = ts_json_int(gpt, s, "num_classes", 1, 1 << 24, &cfg->num_classes, err)) ||
               (rc = ts_json_int(gpt, s, "cls_token_num", 1, 1, &cfg->cls_token_num, err))) {
        return rc;
    }
    if ((rc = ts_json_int(gpt, s, "dim", 1, 65536, &cfg->dim, err)) ||
        (rc = ts_json_int(gpt, s, "n_layer", 1, 1024, &cfg->n_layer, err)) ||
        (rc = ts_json_int(gpt, s, "n_head", 1, 1024, &cfg->n_head, err)) ||
        (rc = ts_json_int(gpt, s, "n_kv_head", 1, 1024, &cfg->n_kv_head, err)) ||
        (rc = ts_json_int(gpt, s, "ffn_dim", 1, 1 << 20, &cfg->ffn_dim, err)) ||
        (rc = ts_json_int(gpt, s, "vocab_size", 1, 1 << 24, &cfg->vocab_size, err)) ||
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

int llamagen_layers_load(ts_backend *be, ts_st_file *f, const llamagen_config *c,
                         const char *prefix, int n, llamagen_layer **out, ts_error *err)
{
    ts_wsrc src = {be, f};
    char name[160];
    int64_t qkv_rows = (int64_t)(c->n_head + 2 * c->n_kv_head) * c->head_dim;
    llamagen_layer *layers = calloc((size_t)(n > 0 ? n : 1), sizeof *layers);
    *out = layers;
    if (!layers) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    int rc = TS_OK;
    for (int l = 0; l < n && !rc; l++) {
        llamagen_layer *L = &layers[l];
#define NAME(suffix) (snprintf(name, sizeof name, "%s.%d." suffix, prefix, l), name)
#define MAT(suffix, rows, cols, w) \
    ts_w_mat(src, NAME(suffix), 2, TS_SHAPE(rows, cols), rows, cols, w, err)
#define VEC(suffix, w) ts_w_vec(src, NAME(suffix), 1, TS_SHAPE(c->dim), w, err)
        if ((rc = VEC("attention_norm.weight", &L->attention_norm)) ||
            (rc = MAT("attention.wqkv.weight", qkv_rows, c->dim, &L->wqkv)) ||
            (rc = MAT("attention.wo.weight", c->dim, c->dim, &L->wo)) ||
            (rc = VEC("ffn_norm.weight", &L->ffn_norm)) ||
            (rc = MAT("feed_forward.w1.weight", c->ffn_dim, c->dim, &L->w1)) ||
            (rc = MAT("feed_forward.w3.weight", c->ffn_dim, c->dim, &L->w3)) ||
            (rc = MAT("feed_forward.w2.weight", c->dim, c->ffn_dim, &L->w2)))
            break;
#undef VEC
#undef MAT
#undef NAME
    }
    return rc;
}

void llamagen_layers_free(ts_backend *be, llamagen_layer *layers, int n)
{
    if (!layers) return;
    for (int l = 0; l < n; l++) {
        llamagen_layer *L = &layers[l];
        ts_be_free(be, L->attention_norm);
        ts_be_free(be, L->ffn_norm);
        ts_wt *ws[] = {&L->wqkv, &L->wo, &L->w1, &L->w3, &L->w2};
        for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ts_be_weight_release(be, ws[i]);
    }
    free(layers);
}

float *llamagen_rope_upload(ts_backend *be, const llamagen_config *c)
{
    float *host = llamagen_rope_table(c);
    size_t n = ((size_t)c->cls_token_num + c->block_size) * c->head_dim;
    float *dev = host ? ts_be_alloc(be, n) : NULL;
    if (dev) ts_be_upload(be, dev, host, n);
    free(host);
    return dev;
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
    if (c->t2i) {
        if ((rc = load_mat(m, f, "cls_embedding.cap_proj.fc1.weight", c->dim, c->caption_dim,
                           &m->cap_fc1, err)) ||
            (rc = load_mat(m, f, "cls_embedding.cap_proj.fc2.weight", c->dim, c->dim,
                           &m->cap_fc2, err)) ||
            (rc = ts_w_vec((ts_wsrc){be, f}, "cls_embedding.uncond_embedding", 2,
                           TS_SHAPE(c->cls_token_num, c->caption_dim), &m->uncond, err)))
            goto fail;
    } else if ((rc = load_mat(m, f, "cls_embedding.embedding_table.weight", c->num_classes + 1,
                              c->dim, &m->cls_embedding, err))) {
        goto fail;
    }
    if ((rc = load_mat(m, f, "tok_embeddings.weight", c->vocab_size, c->dim, &m->tok_embeddings, err)) ||
        (rc = llamagen_layers_load(be, f, c, "layers", c->n_layer, &m->layers, err)) ||
        (rc = load_vec(m, f, "norm.weight", c->dim, &m->norm, err)) ||
        (rc = load_mat(m, f, "output.weight", c->vocab_size, c->dim, &m->output, err)) ||
        (rc = ts_st_check_all_used(f, err)))
        goto fail;
    m->rope = llamagen_rope_upload(be, c);
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

void llamagen_acts_free(ts_backend *be, llamagen_acts *a)
{
    float **bufs[] = {&a->x, &a->xn, &a->qkv, &a->att, &a->h1, &a->h3};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        ts_be_free(be, *bufs[i]);
        *bufs[i] = NULL;
    }
    a->cap = 0;
}

int llamagen_acts_reserve(ts_backend *be, const llamagen_config *c, llamagen_acts *a, int rows,
                          ts_error *err)
{
    if (rows <= a->cap) return TS_OK;
    llamagen_acts_free(be, a);
    size_t nt = (size_t)rows;
    size_t qkv_dim = (size_t)(c->n_head + 2 * c->n_kv_head) * c->head_dim;
    a->x = ts_be_alloc(be, nt * c->dim);
    a->xn = ts_be_alloc(be, nt * c->dim);
    a->qkv = ts_be_alloc(be, nt * qkv_dim);
    a->att = ts_be_alloc(be, nt * c->dim);
    a->h1 = ts_be_alloc(be, nt * c->ffn_dim);
    a->h3 = ts_be_alloc(be, nt * c->ffn_dim);
    if (!a->x || !a->xn || !a->qkv || !a->att || !a->h1 || !a->h3) {
        llamagen_acts_free(be, a);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for %d tokens of activations", rows);
    }
    a->cap = rows;
    return TS_OK;
}

static void free_scratch(llamagen_model *m)
{
    llamagen_acts_free(m->be, &m->act);
    ts_be_free(m->be, m->last);
    ts_be_free(m->be, m->logits);
    m->last = m->logits = NULL;
    m->cap_seqs = 0;
}

void llamagen_free(llamagen_model *m)
{
    if (!m) return;
    free_scratch(m);
    ts_be_weight_release(m->be, &m->tok_embeddings);
    ts_be_weight_release(m->be, &m->cls_embedding);
    ts_be_weight_release(m->be, &m->cap_fc1);
    ts_be_weight_release(m->be, &m->cap_fc2);
    ts_be_free(m->be, m->uncond);
    ts_be_weight_release(m->be, &m->output);
    llamagen_layers_free(m->be, m->layers, m->cfg.n_layer);
    ts_be_free(m->be, m->norm);
    ts_be_free(m->be, m->rope);
    free(m);
}

/* Grows the activation scratch to hold n_tokens rows and n_seqs sequences. */
static int reserve(llamagen_model *m, int n_tokens, int n_seqs, ts_error *err)
{
    if (n_tokens <= m->act.cap && n_seqs <= m->cap_seqs) return TS_OK;
    int nt = n_tokens > m->act.cap ? n_tokens : m->act.cap;
    int ns = n_seqs > m->cap_seqs ? n_seqs : m->cap_seqs;
    free_scratch(m);
    const llamagen_config *c = &m->cfg;
    int rc = llamagen_acts_reserve(m->be, c, &m->act, nt, err);
    if (rc) return rc;
    m->last = ts_be_alloc(m->be, (size_t)ns * c->dim);
    m->logits = ts_be_alloc(m->be, (size_t)ns * c->vocab_size);
    if (!m->last || !m->logits) {
        free_scratch(m);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for %d tokens of activations", nt);
    }
    m->cap_seqs = ns;
    return TS_OK;
}

void llamagen_plan_free(llamagen_plan *p)
{
    free(p->pos);
    free(p->slot);
    free(p->last);
    free(p->att);
    memset(p, 0, sizeof *p);
}

int llamagen_plan_make(const llamagen_config *c, const ts_kv_cache *kv, const llamagen_seq *seqs,
                       int n_seqs, llamagen_plan *p, ts_error *err)
{
    memset(p, 0, sizeof *p);
    if (n_seqs <= 0) return ts_fail(err, TS_ERR_INVALID, "forward: no sequences");
    if (kv->n_layer != c->n_layer || kv->layers[0].n_kv_head != c->n_kv_head ||
        kv->layers[0].head_dim != c->head_dim)
        return ts_fail(err, TS_ERR_INVALID, "forward: KV cache geometry does not match the model");
    int M = 0;
    for (int s = 0; s < n_seqs; s++) {
        const llamagen_seq *q = &seqs[s];
        int n_cond = q->n_cond ? q->n_cond : c->cls_token_num;
        if (n_cond < 1 || n_cond > c->cls_token_num)
            return ts_fail(err, TS_ERR_INVALID, "forward: sequence %d has %d condition positions, "
                           "outside [1, %d]", s, n_cond, c->cls_token_num);
        int max_pos = n_cond + c->block_size;
        if (q->n_new <= 0 || q->n_past < 0 || q->n_past + q->n_new > max_pos)
            return ts_fail(err, TS_ERR_INVALID, "forward: sequence %d positions [%d, %d) outside "
                           "[0, %d)", s, q->n_past, q->n_past + q->n_new, max_pos);
        if (M > (1 << 24) - q->n_new)
            return ts_fail(err, TS_ERR_INVALID, "forward: batch too large");
        M += q->n_new;
    }
    size_t rows_sz = (size_t)M * sizeof(int32_t);
    p->rows = M;
    p->pos = malloc(rows_sz);
    p->slot = malloc(rows_sz);
    p->last = malloc((size_t)n_seqs * sizeof *p->last);
    p->att = malloc((size_t)n_seqs * sizeof *p->att);
    if (!p->pos || !p->slot || !p->last || !p->att) {
        llamagen_plan_free(p);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    }
    int row = 0;
    for (int s = 0; s < n_seqs; s++) {
        const llamagen_seq *q = &seqs[s];
        int n_cond = q->n_cond ? q->n_cond : c->cls_token_num;
        p->att[s] = (ts_attn_seq){q->block_table, q->n_past + q->n_new, q->n_new, row};
        for (int i = 0; i < q->n_new; i++, row++) {
            int pos = q->n_past + i;
            /* Condition rows of the rotary table are all zero; any one will do. */
            p->pos[row] = pos < n_cond ? 0 : c->cls_token_num + pos - n_cond;
            int bs = kv->block_size;
            p->slot[row] = q->block_table[pos / bs] * bs + pos % bs;
        }
        p->last[s] = row - 1;
    }
    return TS_OK;
}

void llamagen_blocks(ts_backend *be, const llamagen_config *c, const llamagen_layer *layers,
                     int n_layer, llamagen_acts *a, int M, const float *rope,
                     const int32_t *pos, const llamagen_attn *att)
{
    int dim = c->dim, hd = c->head_dim;
    int kv_dim = c->n_kv_head * hd;
    int qkv_dim = dim + 2 * kv_dim;
    for (int l = 0; l < n_layer; l++) {
        const llamagen_layer *L = &layers[l];
        /* attention: h = x + wo(attn(rope(q), rope(k), v)) */
        float *qkv = att->kv ? a->qkv : att->store[l] + (size_t)att->row0 * qkv_dim;
        float *o = att->kv ? a->att : att->att_store + (size_t)att->row0 * dim;
        ts_be_rmsnorm(be, a->xn, a->x, L->attention_norm, M, dim, c->norm_eps);
        ts_be_matmul(be, qkv, a->xn, &L->wqkv, NULL, M);
        ts_be_rope(be, qkv, qkv_dim, M, c->n_head, hd, rope, pos);
        ts_be_rope(be, qkv + dim, qkv_dim, M, c->n_kv_head, hd, rope, pos);
        if (att->kv) {
            const ts_kv_layer *kvl = &att->kv->layers[l];
            ts_be_kv_store(be, kvl, qkv + dim, qkv + dim + kv_dim, qkv_dim, att->slot, M);
            ts_be_attention(be, o, qkv, qkv_dim, kvl, c->n_head, att->seqs, att->n_seqs,
                            att->max_ctx);
        } else {
            const float *s = att->store[l];
            ts_be_attention_dense(be, att->att_store, s, s + dim, s + 2 * dim, qkv_dim, c->n_head,
                                  hd, att->rows, att->n_seq, att->seq_len, 1);
        }
        ts_be_matmul(be, a->xn, o, &L->wo, NULL, M);
        ts_be_add(be, a->x, a->xn, (size_t)M * dim);
        /* feed-forward: out = h + w2(silu(w1 h') * w3 h') */
        ts_be_rmsnorm(be, a->xn, a->x, L->ffn_norm, M, dim, c->norm_eps);
        ts_be_matmul(be, a->h1, a->xn, &L->w1, NULL, M);
        ts_be_matmul(be, a->h3, a->xn, &L->w3, NULL, M);
        ts_be_swiglu(be, a->h1, a->h1, a->h3, (size_t)M * c->ffn_dim);
        ts_be_matmul(be, a->xn, a->h1, &L->w2, NULL, M);
        ts_be_add(be, a->x, a->xn, (size_t)M * dim);
    }
}

int llamagen_forward(llamagen_model *m, ts_kv_cache *kv, const llamagen_seq *seqs,
                     int n_seqs, float *logits, ts_error *err)
{
    const llamagen_config *c = &m->cfg;
    ts_backend *be = m->be;
    int max_pos = c->cls_token_num + c->block_size;

    /* Validate everything before touching the cache. */
    llamagen_plan p;
    int rc = llamagen_plan_make(c, kv, seqs, n_seqs, &p, err);
    if (rc) return rc;
    for (int s = 0; s < n_seqs; s++) {
        const llamagen_seq *q = &seqs[s];
        int n_cond = q->n_cond ? q->n_cond : c->cls_token_num;
        if (c->t2i && q->n_past < n_cond && !q->cond_emb) {
            llamagen_plan_free(&p);
            return ts_fail(err, TS_ERR_INVALID, "forward: sequence %d feeds text positions "
                           "without caption rows", s);
        }
        for (int i = 0; i < q->n_new; i++) {
            int pos = q->n_past + i;
            if (c->t2i && pos < n_cond) continue;   /* a caption row, no id */
            int limit = pos < n_cond ? c->num_classes : c->vocab_size - 1;
            if (q->ids[i] < 0 || q->ids[i] > limit) {
                llamagen_plan_free(&p);
                return ts_fail(err, TS_ERR_INVALID, "forward: sequence %d id %d at position %d "
                               "is outside [0, %d]", s, q->ids[i], pos, limit);
            }
        }
    }
    int M = p.rows;
    if ((rc = reserve(m, M, n_seqs, err))) {
        llamagen_plan_free(&p);
        return rc;
    }
    size_t rows_sz = (size_t)M * sizeof(int32_t);
    int32_t *cls_ids = malloc(rows_sz), *cls_rows = malloc(rows_sz);
    int32_t *tok_ids = malloc(rows_sz), *tok_rows = malloc(rows_sz);
    if (!cls_ids || !cls_rows || !tok_ids || !tok_rows) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto done;
    }
    int row = 0, n_cls = 0, n_tok = 0;
    for (int s = 0; s < n_seqs; s++) {
        const llamagen_seq *q = &seqs[s];
        int n_cond = q->n_cond ? q->n_cond : c->cls_token_num;
        for (int i = 0; i < q->n_new; i++, row++) {
            if (q->n_past + i < n_cond) {
                if (c->t2i) continue;   /* copied from cond_emb below */
                cls_ids[n_cls] = q->ids[i];
                cls_rows[n_cls++] = row;
            } else {
                tok_ids[n_tok] = q->ids[i];
                tok_rows[n_tok++] = row;
            }
        }
    }

    /* From here to the download, the ops are one step that recurs with the same shapes. */
    ts_be_step_begin(be);
    llamagen_acts *a = &m->act;
    if (c->t2i) {
        /* Each sequence's new text rows are contiguous in cond_emb and in x. */
        for (int s = 0, r = 0; s < n_seqs; r += seqs[s].n_new, s++) {
            const llamagen_seq *q = &seqs[s];
            int n_text = (q->n_cond < q->n_past + q->n_new ? q->n_cond : q->n_past + q->n_new)
                         - q->n_past;
            if (n_text > 0)
                ts_be_copy(be, a->x + (size_t)r * c->dim, q->cond_emb + (size_t)q->n_past * c->dim,
                           (size_t)n_text * c->dim * sizeof(float));
        }
    } else {
        ts_be_embed(be, a->x, &m->cls_embedding, cls_ids, cls_rows, n_cls);
    }
    ts_be_embed(be, a->x, &m->tok_embeddings, tok_ids, tok_rows, n_tok);
    /* A t2i sequence holds at most cls_token_num text positions, so this still bounds it. */
    llamagen_attn att = {.kv = kv, .slot = p.slot, .seqs = p.att, .n_seqs = n_seqs,
                         .max_ctx = max_pos};
    llamagen_blocks(be, c, m->layers, c->n_layer, a, M, m->rope, p.pos, &att);

    /* Only each sequence's last row needs logits. */
    ts_be_gather_rows(be, a->xn, a->x, p.last, n_seqs, c->dim);
    ts_be_rmsnorm(be, m->last, a->xn, m->norm, n_seqs, c->dim, c->norm_eps);
    ts_be_matmul(be, m->logits, m->last, &m->output, NULL, n_seqs);
    if (logits) ts_be_download(be, logits, m->logits, (size_t)n_seqs * c->vocab_size);
done:
    free(cls_ids);
    free(cls_rows);
    free(tok_ids);
    free(tok_rows);
    llamagen_plan_free(&p);
    return rc;
}

const float *llamagen_logits(const llamagen_model *m) { return m->logits; }

int llamagen_caption(llamagen_model *m, const float *feats, int n, float *out, ts_error *err)
{
    const llamagen_config *c = &m->cfg;
    if (!c->t2i) return ts_fail(err, TS_ERR_INVALID, "caption: not a t2i GPT");
    if (n <= 0) return TS_OK;
    float *h = ts_be_alloc(m->be, (size_t)n * c->dim);
    if (!h) return ts_fail(err, TS_ERR_NOMEM, "out of memory projecting %d caption rows", n);
    ts_be_matmul(m->be, h, feats, &m->cap_fc1, NULL, n);
    ts_be_activation(m->be, h, h, (size_t)n * c->dim, TS_ACT_GELU_TANH);
    ts_be_matmul(m->be, out, h, &m->cap_fc2, NULL, n);
    ts_be_free(m->be, h);
    return TS_OK;
}

const float *llamagen_null_caption(const llamagen_model *m, int n)
{
    const llamagen_config *c = &m->cfg;
    return m->uncond + (size_t)(c->cls_token_num - n) * c->caption_dim;
}
