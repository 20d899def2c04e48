/* generate.c - see generate.h. */
#include "generate.h"

#include <stdlib.h>
#include <string.h>

#include "philox.h"

#define KV_BLOCK 16

int ts_gen_cfg_active(const ts_gen_params *p, int t)
{
    if (p->cfg_scale <= 1.0f) return 0;
    if (t == 0) return 1;                         /* the prefill always guides */
    int i = t - 1;                                /* decode step index upstream */
    return !(p->cfg_interval > -1.0f && (float)i > p->cfg_interval);
}

ts_sample_row ts_gen_sample_row(const ts_gen_params *p, const float *cond, const float *uncond,
                                uint64_t image_seed, int t)
{
    ts_sample_row r = {cond, NULL, p->cfg_scale, p->sample, 0.0};
    if (uncond && ts_gen_cfg_active(p, t)) r.uncond = uncond;
    r.u = ts_rng_uniform(image_seed, 0, (uint32_t)t, TS_RNG_TOKEN);
    return r;
}

ts_sample_row ts_gen_sample_row_sub(const ts_gen_params *p, const float *cond,
                                    const float *uncond, uint64_t image_seed, int t, int sub)
{
    ts_sample_row r = ts_gen_sample_row(p, cond, uncond, image_seed, t);
    r.u = ts_rng_uniform_at(image_seed, 0, (uint32_t)t, TS_RNG_SUB_TOKEN, (uint32_t)sub);
    return r;
}

int ts_generate_c2i(ts_model *m, const ts_gen_params *p, const int32_t *classes, int n,
                    int32_t *tokens, ts_gen_progress_fn progress, void *progress_ctx,
                    ts_error *err)
{
    if (m->family == TS_FAMILY_FQGAN)
        return ts_generate_far(m, p, classes, n, tokens, progress, progress_ctx, err);
    if (m->family != TS_FAMILY_LLAMAGEN || !m->gpt || m->gpt->cfg.t2i)
        return ts_fail(err, TS_ERR_INVALID, "generate: %s is not a class-conditional model",
                       m->name);
    llamagen_model *g = m->gpt;
    const llamagen_config *c = &g->cfg;
    int cfg = p->cfg_scale > 1.0f;
    int per = cfg ? 2 : 1;                 /* sequences per image: [cond, uncond] */
    int n_seqs = n * per;
    int L = c->block_size, V = c->vocab_size;
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "generate: no images requested");
    for (int i = 0; i < n; i++)
        if (classes[i] < 0 || classes[i] >= c->num_classes)
            return ts_fail(err, TS_ERR_INVALID, "class %d is outside [0, %d)", classes[i],
                           c->num_classes);

    /* Positions fed: the class, then tokens 0..L-2 (the last token is never fed). */
    int ctx_len = c->cls_token_num + L - 1;
    int blocks_per_seq = (ctx_len + KV_BLOCK - 1) / KV_BLOCK;
    ts_kv_cache *kv = NULL;
    ts_sample_row *draws = NULL;
    int32_t *picked = NULL;
    int rc = ts_kv_cache_create(m->be, c->n_layer, c->n_kv_head, c->head_dim, KV_BLOCK,
                                blocks_per_seq * n_seqs, &kv, err);
    if (rc) return rc;
    int32_t *tables = malloc((size_t)n_seqs * blocks_per_seq * sizeof *tables);
    int32_t *ids = malloc((size_t)n_seqs * sizeof *ids);
    llamagen_seq *seqs = malloc((size_t)n_seqs * sizeof *seqs);
    draws = malloc((size_t)n * sizeof *draws);
    picked = malloc((size_t)n * sizeof *picked);
    if (!tables || !ids || !seqs || !draws || !picked) {
        rc = ts_fail(err, TS_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    for (int i = 0; i < n_seqs * blocks_per_seq; i++) tables[i] = ts_kv_block_alloc(kv);

    for (int t = 0; t < L; t++) {
        for (int s = 0; s < n_seqs; s++) {
            int img = s / per, is_uncond = s % per;
            if (t == 0) ids[s] = is_uncond ? c->num_classes : classes[img];
            else ids[s] = tokens[(size_t)img * L + t - 1];
            int pos = t == 0 ? 0 : c->cls_token_num + t - 1;
            seqs[s] = (llamagen_seq){.n_past = pos, .n_new = 1, .ids = &ids[s], .block_table = tables + (size_t)s * blocks_per_seq};
        }
        if ((rc = llamagen_forward(g, kv, seqs, n_seqs, NULL, err))) goto done;
        const float *logits = llamagen_logits(g);
        for (int img = 0; img < n; img++) {
            const float *cond = logits + (size_t)img * per * V;
            draws[img] = ts_gen_sample_row(p, cond, cfg ? cond + V : NULL, p->seed + (uint64_t)img, t);
        }
        ts_be_sample(m->be, picked, draws, n, V);
        for (int img = 0; img < n; img++) tokens[(size_t)img * L + t] = picked[img];
        if (progress) progress(progress_ctx, t + 1, L);
    }
done:
    free(tables);
    free(ids);
    free(seqs);
    free(draws);
    free(picked);
    ts_kv_cache_destroy(kv);
    return rc;
}

int ts_generate_t2i(ts_model *m, const ts_gen_params *p, const ts_t2i_prompt *const *prompts,
                    int n, int32_t *tokens, ts_gen_progress_fn progress, void *progress_ctx,
                    ts_error *err)
{
    if (!ts_model_is_t2i(m))
        return ts_fail(err, TS_ERR_INVALID, "generate: %s is not a text-to-image model", m->name);
    llamagen_model *g = m->gpt;
    const llamagen_config *c = &g->cfg;
    int cfg = p->cfg_scale > 1.0f;
    int per = cfg ? 2 : 1;
    int n_seqs = n * per;
    int L = c->block_size, V = c->vocab_size;
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "generate: no images requested");
    for (int i = 0; i < n; i++)
        if (prompts[i]->n_text < 1 || prompts[i]->n_text > c->cls_token_num ||
            (cfg && !prompts[i]->uncond))
            return ts_fail(err, TS_ERR_INVALID, "generate: prompt %d has no usable conditioning",
                           i);

    /* Positions fed: the n_text caption rows, then tokens 0..L-2. */
    int ctx_len = c->cls_token_num + L - 1;
    int blocks_per_seq = (ctx_len + KV_BLOCK - 1) / KV_BLOCK;
    ts_kv_cache *kv = NULL;
    int rc = ts_kv_cache_create(m->be, c->n_layer, c->n_kv_head, c->head_dim, KV_BLOCK,
                                blocks_per_seq * n_seqs, &kv, err);
    if (rc) return rc;
    int32_t *tables = malloc((size_t)n_seqs * blocks_per_seq * sizeof *tables);
    int32_t *ids = malloc((size_t)n_seqs * sizeof *ids);
    llamagen_seq *seqs = malloc((size_t)n_seqs * sizeof *seqs);
    ts_sample_row *draws = malloc((size_t)n * sizeof *draws);
    int32_t *picked = malloc((size_t)n * sizeof *picked);
    if (!tables || !ids || !seqs || !draws || !picked) {
        rc = ts_fail(err, TS_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    for (int i = 0; i < n_seqs * blocks_per_seq; i++) tables[i] = ts_kv_block_alloc(kv);

    for (int t = 0; t < L; t++) {
        for (int s = 0; s < n_seqs; s++) {
            const ts_t2i_prompt *pr = prompts[s / per];
            int32_t *table = tables + (size_t)s * blocks_per_seq;
            if (t == 0) {
                seqs[s] = (llamagen_seq){.n_past = 0, .n_new = pr->n_text, .ids = NULL,
                                         .block_table = table, .n_cond = pr->n_text,
                                         .cond_emb = s % per ? pr->uncond : pr->cond};
            } else {
                ids[s] = tokens[(size_t)(s / per) * L + t - 1];
                seqs[s] = (llamagen_seq){.n_past = pr->n_text + t - 1, .n_new = 1,
                                         .ids = &ids[s], .block_table = table,
                                         .n_cond = pr->n_text};
            }
        }
        if ((rc = llamagen_forward(g, kv, seqs, n_seqs, NULL, err))) goto done;
        const float *logits = llamagen_logits(g);
        for (int img = 0; img < n; img++) {
            const float *cond = logits + (size_t)img * per * V;
            draws[img] = ts_gen_sample_row(p, cond, cfg ? cond + V : NULL, p->seed + (uint64_t)img, t);
        }
        ts_be_sample(m->be, picked, draws, n, V);
        for (int img = 0; img < n; img++) tokens[(size_t)img * L + t] = picked[img];
        if (progress) progress(progress_ctx, t + 1, L);
    }
done:
    free(tables);
    free(ids);
    free(seqs);
    free(draws);
    free(picked);
    ts_kv_cache_destroy(kv);
    return rc;
}

int ts_generate_far(ts_model *m, const ts_gen_params *p, const int32_t *classes, int n,
                    int32_t *tokens, ts_gen_progress_fn progress, void *progress_ctx,
                    ts_error *err)
{
    if (m->family != TS_FAMILY_FQGAN || !m->far)
        return ts_fail(err, TS_ERR_INVALID, "generate: %s has no FAR generator (%s)", m->name,
                       m->family == TS_FAMILY_FQGAN ? "a decode-only folder" : "not FQGAN");
    far_model *g = m->far;
    const llamagen_config *c = &g->cfg.trunk;
    int k = g->cfg.n_sub;
    int cfg = p->cfg_scale > 1.0f;
    int per = cfg ? 2 : 1;                 /* sequences per image: [cond, uncond] */
    int n_seqs = n * per;
    int L = c->block_size, V = c->vocab_size;
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "generate: no images requested");
    for (int i = 0; i < n; i++)
        if (classes[i] < 0 || classes[i] >= c->num_classes)
            return ts_fail(err, TS_ERR_INVALID, "class %d is outside [0, %d)", classes[i],
                           c->num_classes);

    int ctx_len = c->cls_token_num + L - 1;
    int blocks_per_seq = (ctx_len + KV_BLOCK - 1) / KV_BLOCK;
    ts_kv_cache *kv = NULL;
    int rc = ts_kv_cache_create(m->be, c->n_layer, c->n_kv_head, c->head_dim, KV_BLOCK,
                                blocks_per_seq * n_seqs, &kv, err);
    if (rc) return rc;
    int32_t *tables = malloc((size_t)n_seqs * blocks_per_seq * sizeof *tables);
    int32_t *ids = calloc((size_t)n_seqs * k, sizeof *ids);
    far_seq *seqs = malloc((size_t)n_seqs * sizeof *seqs);
    ts_sample_row *draws = malloc((size_t)n * sizeof *draws);
    int32_t *picked = malloc((size_t)n * sizeof *picked);
    int32_t *prev = malloc((size_t)n_seqs * sizeof *prev);
    if (!tables || !ids || !seqs || !draws || !picked || !prev) {
        rc = ts_fail(err, TS_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    for (int i = 0; i < n_seqs * blocks_per_seq; i++) tables[i] = ts_kv_block_alloc(kv);

    for (int t = 0; t < L; t++) {
        for (int s = 0; s < n_seqs; s++) {
            int img = s / per, is_uncond = s % per;
            int32_t *id = ids + (size_t)s * k;
            if (t == 0) id[0] = is_uncond ? c->num_classes : classes[img];
            else memcpy(id, tokens + ((size_t)img * L + t - 1) * k, (size_t)k * sizeof *id);
            int pos = t == 0 ? 0 : c->cls_token_num + t - 1;
            seqs[s] = (far_seq){pos, 1, id, tables + (size_t)s * blocks_per_seq};
        }
        if ((rc = far_trunk_forward(g, kv, seqs, n_seqs, err))) goto done;
        for (int j = 0; j < k; j++) {
            if ((rc = far_head_step(g, j, j ? prev : NULL, NULL, err))) goto done;
            const float *logits = far_logits(g);
            for (int img = 0; img < n; img++) {
                const float *cond = logits + (size_t)img * per * V;
                draws[img] = ts_gen_sample_row_sub(p, cond, cfg ? cond + V : NULL,
                                                   p->seed + (uint64_t)img, t, j);
            }
            ts_be_sample(m->be, picked, draws, n, V);
            for (int img = 0; img < n; img++) tokens[((size_t)img * L + t) * k + j] = picked[img];
            for (int s = 0; s < n_seqs; s++) prev[s] = picked[s / per];   /* cond's pick for both */
        }
        if (progress) progress(progress_ctx, t + 1, L);
    }
done:
    free(tables);
    free(ids);
    free(seqs);
    free(draws);
    free(picked);
    free(prev);
    ts_kv_cache_destroy(kv);
    return rc;
}
