/* masked_model.c - see masked_model.h. */
#include "masked_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

#include "text/clip_tokenizer.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const json_t *section(const json_t *root, const char *name, ts_error *err)
{
    const json_t *s = json_object_get(root, name);
    if (!json_is_object(s)) ts_fail(err, TS_ERR_CONFIG, "config: missing object \"%s\"", name);
    return json_is_object(s) ? s : NULL;
}

/* The three networks must agree on the sizes they exchange. */
static int check_sizes(const clip_config *cc, maskgen_config *gc, const titok_config *tc,
                       ts_error *err)
{
    gc->text_len = cc->context;
    if (gc->text_dim != cc->width)
        return ts_fail(err, TS_ERR_CONFIG, "config: generator.text_dim %d differs from "
                       "clip.width %d", gc->text_dim, cc->width);
    if (cc->proj_dim != gc->text_dim)
        return ts_fail(err, TS_ERR_CONFIG, "config: clip.proj_dim %d differs from "
                       "generator.text_dim %d (the pooled vector feeds cond_pooled_proj)",
                       cc->proj_dim, gc->text_dim);
    if (tc->text_dim != cc->width || tc->text_len != cc->context)
        return ts_fail(err, TS_ERR_CONFIG, "config: tokenizer text %dx%d differs from CLIP's "
                       "%dx%d", tc->text_len, tc->text_dim, cc->context, cc->width);
    if (gc->codebook_size != tc->codebook_size || gc->num_tokens != tc->num_tokens)
        return ts_fail(err, TS_ERR_CONFIG, "config: generator tokens %d over %d codes differ "
                       "from the tokenizer's %d over %d", gc->num_tokens, gc->codebook_size,
                       tc->num_tokens, tc->codebook_size);
    return TS_OK;
}

int ts_masked_model_load(ts_backend *be, const char *dir, const json_t *root,
                         ts_masked_model **out, ts_error *err)
{
    *out = NULL;
    const json_t *cs, *gs, *ts;
    if (!(cs = section(root, "clip", err)) || !(gs = section(root, "generator", err)) ||
        !(ts = section(root, "tokenizer", err)))
        return err ? err->code : TS_ERR_CONFIG;
    clip_config cc;
    maskgen_config gc;
    titok_config tc;
    int rc;
    if ((rc = clip_config_parse(cs, &cc, err)) || (rc = maskgen_config_parse(gs, &gc, err)) ||
        (rc = titok_config_parse(ts, &tc, err)) || (rc = check_sizes(&cc, &gc, &tc, err)))
        return rc;
    ts_masked_model *m = calloc(1, sizeof *m);
    if (!m) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    m->be = be;
    char *vocab = NULL;
    int32_t *ids = malloc((size_t)cc.context * sizeof *ids);
    if (!ids) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_model_file_path(dir, cs, "clip", "vocab_file", &vocab, err)) ||
        (rc = ts_clip_tok_load(vocab, cc.vocab_size, &m->bpe, err)) ||
        (rc = ts_model_open_weights(dir, cs, "clip", &m->clip_file, err)) ||
        (rc = clip_text_load(be, &cc, m->clip_file, &m->clip, err)) ||
        (rc = ts_model_open_weights(dir, gs, "generator", &m->gen_file, err)) ||
        (rc = maskgen_load(be, &gc, m->gen_file, &m->gen, err)) ||
        (rc = ts_model_open_weights(dir, ts, "tokenizer", &m->dec_file, err)) ||
        (rc = titok_load(be, &tc, m->dec_file, &m->dec, err)))
        goto fail;
    m->image_size = titok_image_size(m->dec);
    /* The unconditional branch is CLIP("") for every request: encoded once. */
    m->null_penult = ts_be_alloc(be, (size_t)cc.context * cc.width);
    m->null_pooled = ts_be_alloc(be, (size_t)cc.proj_dim);
    if (!m->null_penult || !m->null_pooled) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_clip_tok_encode(m->bpe, "", ids, cc.context, err)) ||
        (rc = clip_text_encode(m->clip, ids, 1, m->null_penult, NULL, m->null_pooled, err)))
        goto fail;
    free(vocab);
    free(ids);
    *out = m;
    return TS_OK;
fail:
    free(vocab);
    free(ids);
    ts_masked_model_free(m);
    return rc;
}

void ts_masked_model_free(ts_masked_model *m)
{
    if (!m) return;
    ts_be_free(m->be, m->null_penult);
    ts_be_free(m->be, m->null_pooled);
    titok_free(m->dec);
    maskgen_free(m->gen);
    clip_text_free(m->clip);
    ts_clip_tok_free(m->bpe);
    ts_st_close(m->clip_file);
    ts_st_close(m->gen_file);
    ts_st_close(m->dec_file);
    free(m);
}

int ts_mg_prompt_make(ts_masked_model *m, const char *prompt, float aesthetic,
                      ts_mg_prompt *out, ts_error *err)
{
    const clip_config *cc = &m->clip->cfg;
    memset(out, 0, sizeof *out);
    float *penult = ts_be_alloc(m->be, (size_t)cc->context * cc->width);
    float *pooled = ts_be_alloc(m->be, (size_t)cc->proj_dim);
    out->ids = malloc((size_t)cc->context * sizeof *out->ids);
    out->text = ts_be_alloc(m->be, (size_t)cc->context * cc->width);
    int rc;
    if (!penult || !pooled || !out->ids || !out->text) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory encoding a prompt");
        goto done;
    }
    if ((rc = ts_clip_tok_encode(m->bpe, prompt, out->ids, cc->context, err)) ||
        (rc = clip_text_encode(m->clip, out->ids, 1, penult, out->text, pooled, err)) ||
        (rc = maskgen_cond_make(m->gen, penult, pooled, aesthetic, &out->cond, err)) ||
        (rc = maskgen_cond_make(m->gen, m->null_penult, m->null_pooled, aesthetic, &out->uncond,
                                err)))
        goto done;
done:
    ts_be_free(m->be, penult);
    ts_be_free(m->be, pooled);
    if (rc) ts_mg_prompt_free(m, out);
    return rc;
}

void ts_mg_prompt_free(ts_masked_model *m, ts_mg_prompt *p)
{
    free(p->ids);
    ts_be_free(m->be, p->text);
    maskgen_cond_free(m->gen, &p->cond);
    maskgen_cond_free(m->gen, &p->uncond);
    memset(p, 0, sizeof *p);
}

int ts_masked_step(ts_masked_model *m, const ts_mask_params *const *params,
                   const ts_mg_prompt *const *prompts, const int *steps, const uint64_t *seeds,
                   int n, int32_t *const *ids, int32_t *const *pred, ts_error *err)
{
    const maskgen_config *gc = &m->gen->cfg;
    int N = gc->num_tokens, V = gc->codebook_size;
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "masked step: no images");
    maskgen_seq *seqs = malloc((size_t)2 * n * sizeof *seqs);
    ts_masked_row *rows = malloc((size_t)n * sizeof *rows);
    int32_t *picks = malloc((size_t)n * N * sizeof *picks);
    float *logit = malloc((size_t)n * N * sizeof *logit);
    int rc = TS_OK;
    if (!seqs || !rows || !picks || !logit) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* Each image is a [cond, uncond] pair of sequences over the same ids. */
    for (int i = 0; i < n; i++) {
        seqs[2 * i] = (maskgen_seq){ids[i], &prompts[i]->cond};
        seqs[2 * i + 1] = (maskgen_seq){ids[i], &prompts[i]->uncond};
    }
    if ((rc = maskgen_forward(m->gen, seqs, 2 * n, err))) goto out;
    const float *lg = maskgen_logits(m->gen);
    for (int i = 0; i < n; i++)
        rows[i] = ts_mask_row(params[i], steps[i], lg + (size_t)2 * i * N * V,
                              lg + (size_t)(2 * i + 1) * N * V, seeds[i]);
    ts_be_masked_pick(m->be, picks, logit, rows, n, N, V);
    for (int i = 0; i < n; i++)
        ts_mask_update(params[i], steps[i], N, V, ids[i], picks + (size_t)i * N,
                       logit + (size_t)i * N, seeds[i], pred ? pred[i] : NULL);
out:
    free(seqs);
    free(rows);
    free(picks);
    free(logit);
    return rc;
}

int ts_masked_generate(ts_masked_model *m, const ts_mask_params *p, const char *const *prompts,
                       int n, int32_t *tokens, uint8_t *rgb,
                       void (*progress)(void *ctx, int step, int n_steps), void *ctx,
                       ts_masked_timing *timing, ts_error *err)
{
    ts_masked_timing tm = {0};
    double t0 = now_seconds();
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "no images");
    const maskgen_config *gc = &m->gen->cfg;
    int N = gc->num_tokens, S = m->image_size;
    ts_mg_prompt *pr = calloc((size_t)n, sizeof *pr);
    const ts_mg_prompt **prp = malloc((size_t)n * sizeof *prp);
    const ts_mask_params **pp = malloc((size_t)n * sizeof *pp);
    int *steps = malloc((size_t)n * sizeof *steps);
    uint64_t *seeds = malloc((size_t)n * sizeof *seeds);
    int32_t **ids = malloc((size_t)n * sizeof *ids);
    int rc = TS_OK;
    if (!pr || !prp || !pp || !steps || !seeds || !ids) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        if ((rc = ts_mg_prompt_make(m, prompts[i], p->aesthetic, &pr[i], err))) goto out;
        prp[i] = &pr[i];
        pp[i] = p;
        seeds[i] = p->seed + (uint64_t)i;
        ids[i] = tokens + (size_t)i * N;
        for (int t = 0; t < N; t++) ids[i][t] = gc->codebook_size;   /* all masked */
    }
    float probe;   /* a one-float download waits for the encodes (timing on a GPU) */
    ts_be_download(m->be, &probe, pr[n - 1].uncond.mod, 1);
    tm.text_s = now_seconds() - t0;
    t0 = now_seconds();
    for (int s = 0; s < p->steps; s++) {
        for (int i = 0; i < n; i++) steps[i] = s;
        if ((rc = ts_masked_step(m, pp, prp, steps, seeds, n, ids, NULL, err))) goto out;
        if (progress) progress(ctx, s + 1, p->steps);
    }
    tm.steps_s = now_seconds() - t0;   /* the last step's picks reached the host */
    t0 = now_seconds();
    if (rgb)
        for (int i = 0; i < n; i++)
            if ((rc = titok_decode(m->dec, ids[i], pr[i].text, 1, NULL,
                                   rgb + (size_t)i * S * S * 3, err)))
                goto out;
    tm.decode_s = now_seconds() - t0;
    if (timing) *timing = tm;
out:
    if (pr)
        for (int i = 0; i < n; i++) ts_mg_prompt_free(m, &pr[i]);
    free(pr);
    free(prp);
    free(pp);
    free(steps);
    free(seeds);
    free(ids);
    return rc;
}
