/* t5_encoder.c - see t5_encoder.h. */
#include "t5_encoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "weights.h"

int t5_config_parse(const json_t *sec, t5_config *cfg, ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *s = "t5", *act;
    int rc;
    if ((rc = ts_json_int(sec, s, "vocab_size", 1, 1 << 24, &cfg->vocab_size, err)) ||
        (rc = ts_json_int(sec, s, "d_model", 1, 65536, &cfg->d_model, err)) ||
        (rc = ts_json_int(sec, s, "d_kv", 1, 4096, &cfg->d_kv, err)) ||
        (rc = ts_json_int(sec, s, "d_ff", 1, 1 << 20, &cfg->d_ff, err)) ||
        (rc = ts_json_int(sec, s, "n_layer", 1, 1024, &cfg->n_layer, err)) ||
        (rc = ts_json_int(sec, s, "n_head", 1, 1024, &cfg->n_head, err)) ||
        (rc = ts_json_int(sec, s, "rel_buckets", 4, 4096, &cfg->rel_buckets, err)) ||
        (rc = ts_json_int(sec, s, "rel_max_distance", 1, 1 << 20, &cfg->rel_max_distance, err)) ||
        (rc = ts_json_float(sec, s, "norm_eps", 0.0, 1.0, &cfg->norm_eps, err)) ||
        (rc = ts_json_string(sec, s, "ff_act", &act, err)) ||
        (rc = ts_json_bool(sec, s, "ff_gated", &cfg->ff_gated, err)))
        return rc;
    if (!strcmp(act, "gelu_tanh")) cfg->ff_act = TS_ACT_GELU_TANH;
    else if (!strcmp(act, "gelu")) cfg->ff_act = TS_ACT_GELU;
    else if (!strcmp(act, "relu")) cfg->ff_act = TS_ACT_RELU;
    else if (!strcmp(act, "silu")) cfg->ff_act = TS_ACT_SILU;
    else
        return ts_fail(err, TS_ERR_CONFIG, "config: t5.ff_act \"%s\" is not gelu_tanh, gelu, relu "
                       "or silu", act);
    if (cfg->rel_max_distance <= cfg->rel_buckets / 4)
        return ts_fail(err, TS_ERR_CONFIG, "config: t5.rel_max_distance %d must exceed the %d "
                       "exact buckets (rel_buckets / 4)", cfg->rel_max_distance,
                       cfg->rel_buckets / 4);
    if ((int64_t)cfg->n_head * cfg->d_kv > 1 << 20)
        return ts_fail(err, TS_ERR_CONFIG, "config: t5.n_head x d_kv is too large");
    return TS_OK;
}

/* ------------------------------------------------------------------ loading */

static int load_layer(ts_wsrc s, const t5_config *c, int l, t5_layer *L, ts_error *err)
{
    char name[160];
    int D = c->d_model, I = c->n_head * c->d_kv, F = c->d_ff, rc;
    const char *qkv[3] = {"q", "k", "v"};
    ts_wt *w[3] = {&L->q, &L->k, &L->v};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.%s", l, qkv[i]);
        if ((rc = ts_w_linear(s, name, I, D, w[i], NULL, err))) return rc;
    }
    snprintf(name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.o", l);
    if ((rc = ts_w_linear(s, name, D, I, &L->o, NULL, err))) return rc;
    snprintf(name, sizeof name, "encoder.block.%d.layer.0.layer_norm.weight", l);
    if ((rc = ts_w_vec(s, name, 1, TS_SHAPE(D), &L->ln_attn, err))) return rc;
    if (c->ff_gated) {
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi_0", l);
        if ((rc = ts_w_linear(s, name, F, D, &L->wi0, NULL, err))) return rc;
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi_1", l);
        if ((rc = ts_w_linear(s, name, F, D, &L->wi1, NULL, err))) return rc;
    } else {
        snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi", l);
        if ((rc = ts_w_linear(s, name, F, D, &L->wi0, NULL, err))) return rc;
    }
    snprintf(name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wo", l);
    if ((rc = ts_w_linear(s, name, D, F, &L->wo, NULL, err))) return rc;
    snprintf(name, sizeof name, "encoder.block.%d.layer.1.layer_norm.weight", l);
    return ts_w_vec(s, name, 1, TS_SHAPE(D), &L->ln_ff, err);
}

int t5_encoder_load(ts_backend *be, const t5_config *cfg, ts_st_file *f, t5_encoder **out,
                    ts_error *err)
{
    *out = NULL;
    t5_encoder *m = calloc(1, sizeof *m);
    if (!m) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->be = be;
    ts_wsrc s = {be, f};
    int D = cfg->d_model, rc;
    m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
    if (!m->layers) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_w_mat(s, "shared.weight", 2, TS_SHAPE(cfg->vocab_size, D), cfg->vocab_size, D,
                       &m->embed, err)) ||
        (rc = ts_w_host(s, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                        2, TS_SHAPE(cfg->rel_buckets, cfg->n_head), &m->rel_bias, err)))
        goto fail;
    for (int l = 0; l < cfg->n_layer; l++)
        if ((rc = load_layer(s, cfg, l, &m->layers[l], err))) goto fail;
    if ((rc = ts_w_vec(s, "encoder.final_layer_norm.weight", 1, TS_SHAPE(D), &m->ln_final, err)) ||
        (rc = ts_st_check_all_used(f, err)))
        goto fail;
    *out = m;
    return TS_OK;
fail:
    t5_encoder_free(m);
    return rc;
}

void t5_encoder_free(t5_encoder *m)
{
    if (!m) return;
    ts_backend *be = m->be;
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layer; l++) {
            t5_layer *L = &m->layers[l];
            ts_be_weight_release(be, &L->q);
            ts_be_weight_release(be, &L->k);
            ts_be_weight_release(be, &L->v);
            ts_be_weight_release(be, &L->o);
            ts_be_weight_release(be, &L->wi0);
            ts_be_weight_release(be, &L->wi1);
            ts_be_weight_release(be, &L->wo);
            ts_be_free(be, L->ln_attn);
            ts_be_free(be, L->ln_ff);
        }
    free(m->layers);
    ts_be_weight_release(be, &m->embed);
    ts_be_free(be, m->ln_final);
    ts_be_free(be, m->bias_table);
    free(m->rel_bias);
    free(m);
}

/* ------------------------------------------------------------------ relative positions */

/* Each step is one float32 operation, as torch runs HF's expression on a float tensor:
 * n / max_exact, log (correctly rounded: log in double, then rounded to float), divided
 * by log(max_distance / max_exact) (a Python double, which torch rounds to float), times
 * (half - max_exact), truncated toward zero. The -std=c11 build does not fuse them. */
int t5_relative_bucket(int rel, int num_buckets, int max_distance)
{
    int half = num_buckets / 2, bucket = rel > 0 ? half : 0;
    int n = rel < 0 ? -rel : rel;
    int max_exact = half / 2;
    if (n < max_exact) return bucket + n;
    float ratio = (float)n / (float)max_exact;
    float lg = (float)log((double)ratio);
    float scaled = lg / (float)log((double)max_distance / (double)max_exact);
    float steps = scaled * (float)(half - max_exact);
    if (!(steps < (float)(half - max_exact))) return bucket + half - 1;   /* far: the last one */
    return bucket + max_exact + (int)steps;
}

/* The [n_head][T][T] bias table of a T-position batch in backend memory, made on the
 * host from the bucket of every (query, key) pair and kept until T changes. */
static int bias_table(t5_encoder *m, int T, const float **out, ts_error *err)
{
    *out = m->bias_table;
    if (m->bias_table && m->bias_T == T) return TS_OK;
    const t5_config *c = &m->cfg;
    int H = c->n_head;
    size_t n = (size_t)H * T * T;
    float *host = malloc(n * sizeof *host);
    float *dev = ts_be_alloc(m->be, n);
    if (!host || !dev) {
        free(host);
        ts_be_free(m->be, dev);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for the T5 bias of %d positions", T);
    }
    for (int p = 0; p < T; p++)
        for (int j = 0; j < T; j++) {
            const float *row = m->rel_bias +
                (size_t)t5_relative_bucket(j - p, c->rel_buckets, c->rel_max_distance) * H;
            for (int h = 0; h < H; h++) host[((size_t)h * T + p) * T + j] = row[h];
        }
    ts_be_upload(m->be, dev, host, n);
    free(host);
    ts_be_free(m->be, m->bias_table);
    m->bias_table = dev;
    *out = dev;
    m->bias_T = T;
    return TS_OK;
}

/* ------------------------------------------------------------------ forward */

int t5_encoder_forward(t5_encoder *m, const int32_t *ids, const int32_t *lens, int n, int T,
                       float *out, ts_error *err)
{
    const t5_config *c = &m->cfg;
    ts_backend *be = m->be;
    if (n < 1 || T < 1)
        return ts_fail(err, TS_ERR_INVALID, "t5: %d sequences of %d tokens", n, T);
    int Tm = 0;   /* the longest sequence: the batch runs padded to it */
    for (int i = 0; i < n; i++) {
        if (lens[i] < 1 || lens[i] > T)
            return ts_fail(err, TS_ERR_INVALID, "t5: sequence %d has %d tokens, not 1..%d", i,
                           lens[i], T);
        if (lens[i] > Tm) Tm = lens[i];
    }
    for (size_t i = 0; i < (size_t)n * T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return ts_fail(err, TS_ERR_INVALID, "t5: token id %d (sequence %zu, position %zu) "
                           "outside [0, %d)", ids[i], i / (size_t)T, i % (size_t)T, c->vocab_size);
    int D = c->d_model, I = c->n_head * c->d_kv, F = c->d_ff, M = n * Tm;
    int32_t *ids_m = malloc((size_t)M * sizeof *ids_m);
    float *x = ts_be_alloc(be, (size_t)M * D);        /* the residual stream */
    float *h = ts_be_alloc(be, (size_t)M * D);        /* normed input, then a branch's output */
    float *q = ts_be_alloc(be, (size_t)M * I), *k = ts_be_alloc(be, (size_t)M * I);
    float *v = ts_be_alloc(be, (size_t)M * I), *att = ts_be_alloc(be, (size_t)M * I);
    float *a = ts_be_alloc(be, (size_t)M * F);
    float *b = c->ff_gated ? ts_be_alloc(be, (size_t)M * F) : NULL;
    float *fin = Tm == T ? out : ts_be_alloc(be, (size_t)M * D);
    float *zeros = Tm == T ? NULL : ts_be_alloc(be, (size_t)(T - Tm) * D);
    int rc = TS_OK;
    if (!ids_m || !x || !h || !q || !k || !v || !att || !a || (c->ff_gated && !b) || !fin ||
        (Tm < T && !zeros)) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory encoding %d T5 prompts of %d tokens", n, Tm);
        goto out;
    }
    const float *bias;
    if ((rc = bias_table(m, Tm, &bias, err))) goto out;
    for (int i = 0; i < n; i++) memcpy(ids_m + (size_t)i * Tm, ids + (size_t)i * T, (size_t)Tm * 4);

    ts_be_embed(be, x, &m->embed, ids_m, NULL, M);
    for (int l = 0; l < c->n_layer; l++) {
        const t5_layer *L = &m->layers[l];
        ts_be_rmsnorm(be, h, x, L->ln_attn, M, D, c->norm_eps);
        ts_be_matmul(be, q, h, &L->q, NULL, M);
        ts_be_matmul(be, k, h, &L->k, NULL, M);
        ts_be_matmul(be, v, h, &L->v, NULL, M);
        ts_be_attention_bias(be, att, q, k, v, I, c->n_head, c->d_kv, n, Tm, bias, lens, 1.0f);
        ts_be_matmul(be, h, att, &L->o, NULL, M);
        ts_be_add(be, x, h, (size_t)M * D);
        ts_be_rmsnorm(be, h, x, L->ln_ff, M, D, c->norm_eps);
        ts_be_matmul(be, a, h, &L->wi0, NULL, M);
        if (c->ff_gated) {
            ts_be_matmul(be, b, h, &L->wi1, NULL, M);
            ts_be_act_mul(be, a, a, b, (size_t)M * F, c->ff_act);
        } else {
            ts_be_activation(be, a, a, (size_t)M * F, c->ff_act);
        }
        ts_be_matmul(be, h, a, &L->wo, NULL, M);
        ts_be_add(be, x, h, (size_t)M * D);
    }
    ts_be_rmsnorm(be, fin, x, m->ln_final, M, D, c->norm_eps);
    if (fin != out)   /* back to T rows a sequence: rows [0, Tm) computed, the rest zeros */
        for (int i = 0; i < n; i++) {
            float *dst = out + (size_t)i * T * D;
            ts_be_copy(be, dst, fin + (size_t)i * Tm * D, (size_t)Tm * D * sizeof *dst);
            ts_be_copy(be, dst + (size_t)Tm * D, zeros, (size_t)(T - Tm) * D * sizeof *dst);
        }
out:
    if (fin != out) ts_be_free(be, fin);
    ts_be_free(be, zeros);
    ts_be_free(be, x);
    ts_be_free(be, h);
    ts_be_free(be, q);
    ts_be_free(be, k);
    ts_be_free(be, v);
    ts_be_free(be, att);
    ts_be_free(be, a);
    ts_be_free(be, b);
    free(ids_m);
    return rc;
}
