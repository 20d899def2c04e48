/* model.c - see model.h. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int ts_model_file_path(const char *dir, const json_t *section, const char *sname,
                       const char *key, char **out, ts_error *err)
{
    const char *file;
    *out = NULL;
    int rc = ts_json_string(section, sname, key, &file, err);
    if (rc) return rc;
    if (!file[0] || strchr(file, '/') || strcmp(file, "..") == 0 || strcmp(file, ".") == 0)
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s \"%s\" must be a file name inside "
                       "the model folder", sname, key, file);
    size_t len = strlen(dir) + strlen(file) + 2;
    *out = malloc(len);
    if (!*out) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    snprintf(*out, len, "%s/%s", dir, file);
    return TS_OK;
}

int ts_model_open_weights(const char *dir, const json_t *section, const char *sname,
                          ts_st_file **out, ts_error *err)
{
    char *path;
    int rc = ts_model_file_path(dir, section, sname, "file", &path, err);
    if (rc) return rc;
    rc = ts_st_open(path, out, err);
    free(path);
    return rc;
}

/* FQGAN: a factorized VQ decoder (required) and a FAR generator (optional: without
 * it the folder only decodes). */
static int load_fqgan(ts_model *m, const char *dir, const json_t *gpt_sec, const json_t *vq_sec,
                      ts_error *err)
{
    if (!json_is_object(vq_sec))
        return ts_fail(err, TS_ERR_CONFIG, "config: missing object \"vq\" (an fqgan folder "
                       "always has its tokenizer)");
    if (gpt_sec && !json_is_object(gpt_sec))
        return ts_fail(err, TS_ERR_CONFIG, "config: \"gpt\" must be an object");
    vq_config vcfg;
    int rc = vq_config_parse_factorized(vq_sec, &vcfg, err);
    if (rc) return rc;
    if (m->image_size % vcfg.downsample)
        return ts_fail(err, TS_ERR_CONFIG, "config: image_size %d is not a multiple of the "
                       "tokenizer's downsample factor %d", m->image_size, vcfg.downsample);
    if (gpt_sec) {
        far_config fcfg;
        if ((rc = far_config_parse(gpt_sec, m->image_size, vcfg.downsample, &fcfg, err)))
            return rc;
        if (fcfg.n_sub != vcfg.n_sub)
            return ts_fail(err, TS_ERR_CONFIG, "config: gpt.n_sub %d differs from vq.n_sub %d",
                           fcfg.n_sub, vcfg.n_sub);
        if (fcfg.trunk.vocab_size != vcfg.codebook_size)
            return ts_fail(err, TS_ERR_CONFIG, "config: vq.codebook_size %d differs from "
                           "gpt.vocab_size %d", vcfg.codebook_size, fcfg.trunk.vocab_size);
        if ((rc = ts_model_open_weights(dir, gpt_sec, "gpt", &m->gpt_file, err)) ||
            (rc = far_load(m->be, &fcfg, m->gpt_file, &m->far, err)))
            return rc;
    }
    if ((rc = ts_model_open_weights(dir, vq_sec, "vq", &m->vq_file, err)) ||
        (rc = vq_decoder_load(m->be, &vcfg, m->vq_file, &m->vq, err)))
        return rc;
    return TS_OK;
}

/* The optional "sampling" object of a class-conditional folder: a model trained
 * differently from upstream's (the shipped emoji model) names the settings it is
 * measured with; any key left out keeps upstream's default. */
static int parse_ar_sampling(const json_t *root, int t2i, ts_gen_params *p, ts_error *err)
{
    *p = (ts_gen_params){.cfg_scale = t2i ? 7.5f : 4.0f, .cfg_interval = -1.0f,
                         .sample = {.temperature = 1.0f, .top_k = t2i ? 1000 : 2000,
                                    .top_p = 1.0f}};
    const json_t *s = json_object_get(root, "sampling");
    if (!s) return TS_OK;
    if (!json_is_object(s))
        return ts_fail(err, TS_ERR_CONFIG, "config: \"sampling\" must be an object");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)s, k, v) {
        if (strcmp(k, "cfg") && strcmp(k, "cfg_interval") && strcmp(k, "temperature") &&
            strcmp(k, "top_k") && strcmp(k, "top_p"))
            return ts_fail(err, TS_ERR_CONFIG, "config: sampling.%s is not a sampling setting "
                           "(cfg, cfg_interval, temperature, top_k, top_p)", k);
    }
    int rc = 0;
    if (json_object_get(s, "cfg"))
        rc = ts_json_float(s, "sampling", "cfg", 0.0, 100.0, &p->cfg_scale, err);
    if (!rc && json_object_get(s, "cfg_interval"))
        rc = ts_json_float(s, "sampling", "cfg_interval", -1.0, 1e6, &p->cfg_interval, err);
    if (!rc && json_object_get(s, "temperature"))
        rc = ts_json_float(s, "sampling", "temperature", 0.0, 100.0, &p->sample.temperature, err);
    if (!rc && json_object_get(s, "top_k"))
        rc = ts_json_int(s, "sampling", "top_k", 0, 1000000, &p->sample.top_k, err);
    if (!rc && json_object_get(s, "top_p"))
        rc = ts_json_float(s, "sampling", "top_p", 1e-6, 1.0, &p->sample.top_p, err);
    return rc;
}

int ts_model_load(ts_backend *be, const char *dir, ts_model **out, ts_error *err)
{
    *out = NULL;
    size_t len = strlen(dir) + sizeof "/config.json";
    char *cfg_path = malloc(len);
    if (!cfg_path) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    snprintf(cfg_path, len, "%s/config.json", dir);
    json_t *root = NULL;
    int rc = ts_json_load_file(cfg_path, &root, err);
    free(cfg_path);
    if (rc) return rc;

    ts_model *m = calloc(1, sizeof *m);
    if (!m) {
        json_decref(root);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    }
    m->be = be;
    const char *family, *name = dir;
    int format;
    const json_t *gpt_sec = json_object_get(root, "gpt");
    const json_t *vq_sec = json_object_get(root, "vq");
    if ((rc = ts_json_int(root, "config", "tessera_format", 1, 1, &format, err)) ||
        (rc = ts_json_string(root, "config", "family", &family, err)) ||
        (rc = ts_json_int(root, "config", "image_size", 8, 8192, &m->image_size, err)))
        goto fail;
    if (json_is_string(json_object_get(root, "name")))
        name = json_string_value(json_object_get(root, "name"));
    m->dir = strdup(dir);
    m->name = strdup(name);
    if (!m->dir || !m->name) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (strcmp(family, "maskgen") == 0) {
        m->family = TS_FAMILY_MASKGEN;
        if ((rc = ts_masked_model_load(be, dir, root, &m->masked, err))) goto fail;
        if (m->masked->image_size != m->image_size) {
            rc = ts_fail(err, TS_ERR_CONFIG, "config: image_size %d differs from the decoder's "
                         "%d", m->image_size, m->masked->image_size);
            goto fail;
        }
        json_decref(root);
        *out = m;
        return TS_OK;
    }
    if (strcmp(family, "fqgan") == 0) {
        if ((rc = parse_ar_sampling(root, 0, &m->gen_defaults, err))) goto fail;
        m->family = TS_FAMILY_FQGAN;
        if ((rc = load_fqgan(m, dir, gpt_sec, vq_sec, err))) goto fail;
        json_decref(root);
        *out = m;
        return TS_OK;
    }
    if (strcmp(family, "llamagen") != 0) {
        rc = ts_fail(err, TS_ERR_UNSUPPORTED, "config: family \"%s\" is not supported "
                     "(llamagen, maskgen or fqgan)", family);
        goto fail;
    }
    m->family = TS_FAMILY_LLAMAGEN;
    if (!json_is_object(gpt_sec)) {
        rc = ts_fail(err, TS_ERR_CONFIG, "config: missing object \"gpt\"");
        goto fail;
    }
    if (vq_sec && !json_is_object(vq_sec)) {
        rc = ts_fail(err, TS_ERR_CONFIG, "config: \"vq\" must be an object");
        goto fail;
    }
    vq_config vcfg;
    llamagen_config gcfg;
    if (vq_sec && (rc = vq_config_parse(vq_sec, &vcfg, err))) goto fail;
    if ((rc = llamagen_config_parse(gpt_sec, m->image_size, vq_sec ? vcfg.downsample : 0, &gcfg,
                                    err)))
        goto fail;
    if (vq_sec && vcfg.codebook_size != gcfg.vocab_size) {
        rc = ts_fail(err, TS_ERR_CONFIG, "config: vq.codebook_size %d differs from gpt.vocab_size %d",
                     vcfg.codebook_size, gcfg.vocab_size);
        goto fail;
    }
    if ((rc = parse_ar_sampling(root, gcfg.t2i, &m->gen_defaults, err))) goto fail;
    if (gcfg.t2i &&
        (rc = ts_t2i_text_load(be, dir, json_object_get(root, "t5"), gcfg.cls_token_num,
                               gcfg.caption_dim, &m->t2i, err)))
        goto fail;
    if ((rc = ts_model_open_weights(dir, gpt_sec, "gpt", &m->gpt_file, err)) ||
        (rc = llamagen_load(be, &gcfg, m->gpt_file, &m->gpt, err)))
        goto fail;
    if (vq_sec && ((rc = ts_model_open_weights(dir, vq_sec, "vq", &m->vq_file, err)) ||
                   (rc = vq_decoder_load(be, &vcfg, m->vq_file, &m->vq, err))))
        goto fail;
    json_decref(root);
    *out = m;
    return TS_OK;
fail:
    json_decref(root);
    ts_model_free(m);
    return rc;
}

void ts_model_free(ts_model *m)
{
    if (!m) return;
    ts_masked_model_free(m->masked);
    llamagen_free(m->gpt);
    ts_t2i_text_free(m->t2i);
    far_free(m->far);
    vq_decoder_free(m->vq);
    ts_st_close(m->gpt_file);
    ts_st_close(m->vq_file);
    free(m->dir);
    free(m->name);
    free(m);
}

const llamagen_config *ts_model_c2i_config(const ts_model *m)
{
    if (m->family == TS_FAMILY_LLAMAGEN && m->gpt) return &m->gpt->cfg;
    if (m->family == TS_FAMILY_FQGAN && m->far) return &m->far->cfg.trunk;
    return NULL;
}

int ts_model_is_t2i(const ts_model *m)
{
    return m->family == TS_FAMILY_LLAMAGEN && m->gpt && m->gpt->cfg.t2i;
}

int ts_model_n_sub(const ts_model *m)
{
    return m->family == TS_FAMILY_FQGAN && m->vq ? m->vq->cfg.n_sub : 1;
}
