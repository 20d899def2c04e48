/* clip_text.c - see clip_text.h. */
#include "clip_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"

int clip_config_parse(const json_t *sec, clip_config *cfg, ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *s = "clip", *act;
    int rc;
    if ((rc = ts_json_int(sec, s, "vocab_size", 3, 1 << 24, &cfg->vocab_size, err)) ||
        (rc = ts_json_int(sec, s, "context_length", 2, 4096, &cfg->context, err)) ||
        (rc = ts_json_int(sec, s, "width", 1, 65536, &cfg->width, err)) ||
        (rc = ts_json_int(sec, s, "n_layer", 2, 1024, &cfg->n_layer, err)) ||
        (rc = ts_json_int(sec, s, "n_head", 1, 1024, &cfg->n_head, err)) ||
        (rc = ts_json_int(sec, s, "proj_dim", 1, 65536, &cfg->proj_dim, err)) ||
        (rc = ts_json_float(sec, s, "norm_eps", 0.0, 1.0, &cfg->norm_eps, err)) ||
        (rc = ts_json_string(sec, s, "act", &act, err)))
        return rc;
    if (!strcmp(act, "quick_gelu")) cfg->act = TS_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu")) cfg->act = TS_ACT_GELU;
    else return ts_fail(err, TS_ERR_CONFIG, "config: clip.act \"%s\" is not quick_gelu or gelu", act);
    if (cfg->width % cfg->n_head)
        return ts_fail(err, TS_ERR_CONFIG, "config: clip.width %d is not a multiple of n_head %d",
                       cfg->width, cfg->n_head);
    return TS_OK;
}

int clip_text_load(ts_backend *be, const clip_config *cfg, ts_st_file *f, clip_text **out,
                   ts_error *err)
{
    *out = NULL;
    clip_text *m = calloc(1, sizeof *m);
    if (!m) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->be = be;
    m->dims = (vit_dims){cfg->width, cfg->n_head, 4 * cfg->width, cfg->norm_eps, cfg->act};
    ts_wsrc s = {be, f};
    int W = cfg->width, rc;
    m->blocks = calloc((size_t)cfg->n_layer, sizeof *m->blocks);
    if (!m->blocks) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_w_mat(s, "token_embedding.weight", 2, TS_SHAPE(cfg->vocab_size, W),
                       cfg->vocab_size, W, &m->tok_emb, err)) ||
        (rc = ts_w_mat(s, "positional_embedding", 2, TS_SHAPE(cfg->context, W), cfg->context, W,
                       &m->pos_emb, err)))
        goto fail;
    for (int l = 0; l < cfg->n_layer; l++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "transformer.resblocks.%d", l);
        if ((rc = vit_block_load(s, prefix, &m->dims, &m->blocks[l], err))) goto fail;
    }
    if ((rc = ts_w_norm(s, "ln_final", W, &m->lnf_w, &m->lnf_b, err)) ||
        (rc = ts_w_linear(s, "text_projection", cfg->proj_dim, W, &m->text_proj, NULL, err)) ||
        (rc = ts_st_check_all_used(f, err)))
        goto fail;
    *out = m;
    return TS_OK;
fail:
    clip_text_free(m);
    return rc;
}

void clip_text_free(clip_text *m)
{
    if (!m) return;
    if (m->blocks)
        for (int l = 0; l < m->cfg.n_layer; l++) vit_block_free(m->be, &m->blocks[l]);
    free(m->blocks);
    ts_be_weight_release(m->be, &m->tok_emb);
    ts_be_weight_release(m->be, &m->pos_emb);
    ts_be_weight_release(m->be, &m->text_proj);
    ts_be_free(m->be, m->lnf_w);
    ts_be_free(m->be, m->lnf_b);
    free(m);
}

int clip_text_encode(clip_text *m, const int32_t *ids, int n, float *penult, float *final,
                     float *pooled, ts_error *err)
{
    const clip_config *c = &m->cfg;
    ts_backend *be = m->be;
    int T = c->context, W = c->width, M = n * T;
    for (int i = 0; i < M; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return ts_fail(err, TS_ERR_INVALID, "clip: token id %d outside [0, %d)", ids[i],
                           c->vocab_size);
    int32_t *pos = malloc((size_t)M * sizeof *pos);
    int32_t *eot = malloc((size_t)n * sizeof *eot);
    float *x = ts_be_alloc(be, (size_t)M * W);
    float *tmp = ts_be_alloc(be, (size_t)M * W);
    float *pool_rows = ts_be_alloc(be, (size_t)n * W);
    vit_scratch s = {0};
    int rc = TS_OK;
    if (!pos || !eot || !x || !tmp || !pool_rows ||
        (rc = vit_scratch_alloc(be, &m->dims, M, &s, err))) {
        if (!rc) rc = ts_fail(err, TS_ERR_NOMEM, "out of memory encoding %d prompts", n);
        goto out;
    }
    for (int r = 0; r < n; r++) {
        int best = 0;   /* the end token has the largest id: open_clip pools at argmax */
        for (int t = 0; t < T; t++) {
            pos[r * T + t] = t;
            if (ids[r * T + t] > ids[r * T + best]) best = t;
        }
        eot[r] = r * T + best;
    }
    ts_be_embed(be, x, &m->pos_emb, pos, NULL, M);
    ts_be_embed(be, tmp, &m->tok_emb, ids, NULL, M);
    ts_be_add(be, x, tmp, (size_t)M * W);
    for (int l = 0; l < c->n_layer; l++) {
        vit_block_forward(be, &m->blocks[l], &m->dims, x, n, T, 1, &s);
        if (l == c->n_layer - 2 && penult) ts_be_copy(be, penult, x, (size_t)M * W * sizeof *x);
    }
    float *fin = final ? final : tmp;
    ts_be_layernorm(be, fin, x, m->lnf_w, m->lnf_b, M, W, c->norm_eps);
    if (pooled) {
        ts_be_gather_rows(be, pool_rows, fin, eot, n, W);
        ts_be_matmul(be, pooled, pool_rows, &m->text_proj, NULL, n);
    }
out:
    vit_scratch_free(be, &s);
    ts_be_free(be, x);
    ts_be_free(be, tmp);
    ts_be_free(be, pool_rows);
    free(pos);
    free(eot);
    return rc;
}
