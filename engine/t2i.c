/* t2i.c - see t2i.h. */
#include "t2i.h"

#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "text/t5_clean.h"

int ts_t2i_text_load(ts_backend *be, const char *dir, const json_t *t5_sec, int max_len,
                     int caption_dim, ts_t2i_text **out, ts_error *err)
{
    *out = NULL;
    if (!json_is_object(t5_sec))
        return ts_fail(err, TS_ERR_CONFIG, "config: a t2i model needs the object \"t5\" (its "
                       "text encoder; tools/convert.py llamagen --t5)");
    t5_config cfg;
    int rc = t5_config_parse(t5_sec, &cfg, err);
    if (rc) return rc;
    if (cfg.d_model != caption_dim)
        return ts_fail(err, TS_ERR_CONFIG, "config: t5.d_model %d differs from gpt.caption_dim %d",
                       cfg.d_model, caption_dim);
    ts_t2i_text *t = calloc(1, sizeof *t);
    if (!t) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    t->max_len = max_len;
    char *spm_path = NULL;
    if ((rc = ts_model_file_path(dir, t5_sec, "t5", "tokenizer", &spm_path, err)) ||
        (rc = ts_spm_load(spm_path, &t->spm, err)) ||
        (rc = ts_model_open_weights(dir, t5_sec, "t5", &t->file, err)) ||
        (rc = t5_encoder_load(be, &cfg, t->file, &t->t5, err)))
        goto fail;
    if (ts_spm_vocab_size(t->spm) > cfg.vocab_size) {
        rc = ts_fail(err, TS_ERR_CONFIG, "t5: the tokenizer has %d pieces but the encoder's "
                     "embedding only %d rows", ts_spm_vocab_size(t->spm), cfg.vocab_size);
        goto fail;
    }
    free(spm_path);
    *out = t;
    return TS_OK;
fail:
    free(spm_path);
    ts_t2i_text_free(t);
    return rc;
}

void ts_t2i_text_free(ts_t2i_text *t)
{
    if (!t) return;
    ts_spm_free(t->spm);
    t5_encoder_free(t->t5);
    ts_st_close(t->file);
    free(t);
}

int ts_t2i_tokenize(const ts_t2i_text *t, const char *prompt, int32_t *ids, int *n_valid,
                    ts_error *err)
{
    char *clean = NULL;
    size_t clean_len;
    int rc = ts_t5_clean(prompt, strlen(prompt), &clean, &clean_len, err);
    if (rc) return rc;
    uint8_t *mask = malloc((size_t)t->max_len);
    if (!mask) rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
    else rc = ts_t5_tokenize(t->spm, clean, t->max_len, ids, mask, n_valid, err);
    free(mask);
    free(clean);
    return rc;
}

void ts_t2i_prompt_free(ts_model *m, ts_t2i_prompt *p)
{
    if (!p) return;
    ts_be_free(m->be, p->cond);
    ts_be_free(m->be, p->uncond);
    memset(p, 0, sizeof *p);
}

int ts_t2i_prompt_make(ts_model *m, const char *prompt, int with_uncond, ts_t2i_prompt *out,
                       ts_error *err)
{
    memset(out, 0, sizeof *out);
    if (m->family != TS_FAMILY_LLAMAGEN || !m->gpt || !m->gpt->cfg.t2i || !m->t2i)
        return ts_fail(err, TS_ERR_INVALID, "%s is not a text-to-image LlamaGen model", m->name);
    ts_t2i_text *t = m->t2i;
    const llamagen_config *c = &m->gpt->cfg;
    int32_t *ids = malloc((size_t)t->max_len * sizeof *ids);
    if (!ids) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    int n = 0, rc = ts_t2i_tokenize(t, prompt, ids, &n, err);
    if (rc) {
        free(ids);
        return rc;
    }
    /* Only the valid rows are encoded: with right padding their outputs do not depend on
     * the padded columns (t5_encoder.h). */
    float *feats = ts_be_alloc(m->be, (size_t)n * c->caption_dim);
    out->cond = ts_be_alloc(m->be, (size_t)n * c->dim);
    if (with_uncond) out->uncond = ts_be_alloc(m->be, (size_t)n * c->dim);
    if (!feats || !out->cond || (with_uncond && !out->uncond)) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory encoding a prompt of %d tokens", n);
        goto out;
    }
    int32_t len = n;
    out->n_text = n;
    if ((rc = t5_encoder_forward(t->t5, ids, &len, 1, n, feats, err)) ||
        (rc = llamagen_caption(m->gpt, feats, n, out->cond, err)) ||
        (with_uncond &&
         (rc = llamagen_caption(m->gpt, llamagen_null_caption(m->gpt, n), n, out->uncond, err))))
        goto out;
out:
    ts_be_free(m->be, feats);
    free(ids);
    if (rc) ts_t2i_prompt_free(m, out);
    return rc;
}
