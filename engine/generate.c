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

/* LlamaGen's GPT over n images, as upstream's generate(): conditioned on classes[i]
 * (c2i: one class position) or on prompts[i] (t2i: the prompt's n_text caption rows,
 * the null caption's for the uncond row). The caller has checked the conditions. */
static int generate_llamagen(ts_model *m, const ts_gen_params *p, const int32_t *classes,
                             const ts_t2i_prompt *const *prompts, int n, int32_t *tokens,
                             ts_gen_progress_fn progress, void *progress_ctx, ts_error *err)
{
    llamagen_model *g = m->gpt;
    const llamagen_config *c = &g->cfg;
    int cfg = p->cfg_scale > 1.0f;
    int per = cfg ? 2 : 1;                 /* sequences per image: [cond, uncond] */
    int n_seqs = n * per;
    int L = c->block_size, V = c->vocab_size;

    /* Positions fed: the condition (at most cls_token_num), then tokens 0..L-2 (the last
     * token is never fed). */
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
            int img = s / per, is_uncond = s % per;
            const ts_t2i_prompt *pr = prompts ? prompts[img] : NULL;
            int n_cond = pr ? pr->n_text : c->cls_token_num;
            llamagen_seq *q = &seqs[s];
            *q = (llamagen_seq){.n_past = t == 0 ? 0 : n_cond + t - 1, .n_new = 1,
                                .ids = &ids[s], .block_table = tables + (size_t)s * blocks_per_seq,
                                .n_cond = pr ? n_cond : 0};
            if (t > 0) ids[s] = tokens[(size_t)img * L + t - 1];
            else if (!pr) ids[s] = is_uncond ? c->num_classes : classes[img];
            else {   /* the whole text prefix in one prefill */
                q->n_new = n_cond;
                q->ids = NULL;
                q->cond_emb = is_uncond ? pr->uncond : pr->cond;
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

int ts_generate_c2i(ts_model *m, const ts_gen_params *p, const int32_t *classes, int n,
                    int32_t *tokens, ts_gen_progress_fn progress, void *progress_ctx,
                    ts_error *err)
{
    if (m->family == TS_FAMILY_FQGAN)
        return ts_generate_far(m, p, classes, n, tokens, progress, progress_ctx, err);
    if (m->family != TS_FAMILY_LLAMAGEN || !m->gpt || m->gpt->cfg.t2i)
        return ts_fail(err, TS_ERR_INVALID, "generate: %s is not a class-conditional model",
                       m->name);
    const llamagen_config *c = &m->gpt->cfg;
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "generate: no images requested");
    for (int i = 0; i < n; i++)
        if (classes[i] < 0 || classes[i] >= c->num_classes)
            return ts_fail(err, TS_ERR_INVALID, "class %d is outside [0, %d)", classes[i],
                           c->num_classes);
    return generate_llamagen(m, p, classes, NULL, n, tokens, progress, progress_ctx, err);
}

int ts_generate_t2i(ts_model *m, const ts_gen_params *p, const ts_t2i_prompt *const *prompts,
                    int n, int32_t *tokens, ts_gen_progress_fn progress, void *progress_ctx,
                    ts_error *err)
{
    if (!ts_model_is_t2i(m))
        return ts_fail(err, TS_ERR_INVALID, "generate: %s is not a text-to-image model", m->name);
    const llamagen_config *c = &m->gpt->cfg;
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "generate: no images requested");
    for (int i = 0; i < n; i++)
        if (prompts[i]->n_text < 1 || prompts[i]->n_text > c->cls_token_num ||
            (p->cfg_scale > 1.0f && !prompts[i]->uncond))
            return ts_fail(err, TS_ERR_INVALID, "generate: prompt %d has no usable conditioning",
                           i);
    return generate_llamagen(m, p, NULL, prompts, n, tokens, progress, progress_ctx, err);
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
