/* maskgen.c - see maskgen.h. Reads side by side with upstream's MaskGen_VQ.forward and
 * diffusers' JointTransformerBlock / AdaLayerNormZero / AdaLayerNormContinuous. */
#include "maskgen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "weights.h"

int maskgen_config_parse(const json_t *sec, maskgen_config *cfg, ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *s = "generator";
    int rc;
    if ((rc = ts_json_int(sec, s, "dim", 1, 65536, &cfg->dim, err)) ||
        (rc = ts_json_int(sec, s, "depth", 1, 1024, &cfg->depth, err)) ||
        (rc = ts_json_int(sec, s, "n_head", 1, 1024, &cfg->n_head, err)) ||
        (rc = ts_json_int(sec, s, "num_tokens", 2, 65536, &cfg->num_tokens, err)) ||
        (rc = ts_json_int(sec, s, "codebook_size", 2, 1 << 24, &cfg->codebook_size, err)) ||
        (rc = ts_json_int(sec, s, "embed_rows", 3, 1 << 24, &cfg->embed_rows, err)) ||
        (rc = ts_json_int(sec, s, "text_dim", 1, 65536, &cfg->text_dim, err)) ||
        (rc = ts_json_int(sec, s, "micro_cond_dim", 1, 65536, &cfg->micro_dim, err)) ||
        (rc = ts_json_float(sec, s, "aesthetic_max_period", 1.0, 1e9, &cfg->max_period, err)) ||
        (rc = ts_json_float(sec, s, "norm_eps", 0.0, 1.0, &cfg->norm_eps, err)))
        return rc;
    if (cfg->dim % cfg->n_head)
        return ts_fail(err, TS_ERR_CONFIG, "config: generator.dim %d is not a multiple of "
                       "n_head %d", cfg->dim, cfg->n_head);
    cfg->head_dim = cfg->dim / cfg->n_head;
    if (cfg->embed_rows <= cfg->codebook_size)
        return ts_fail(err, TS_ERR_CONFIG, "config: generator.embed_rows %d leaves no mask token "
                       "after codebook_size %d", cfg->embed_rows, cfg->codebook_size);
    const json_t *smp = json_object_get(sec, "sampling");
    if (!json_is_object(smp))
        return ts_fail(err, TS_ERR_CONFIG, "config: missing object \"generator.sampling\"");
    const char *decay;
    int anneal;
    const char *ss = "generator.sampling";
    maskgen_sampling *d = &cfg->sampling;
    if ((rc = ts_json_int(smp, ss, "steps", 1, 1024, &d->steps, err)) ||
        (rc = ts_json_float(smp, ss, "guidance", 0.0, 1000.0, &d->guidance, err)) ||
        (rc = ts_json_float(smp, ss, "randomize_temperature", 0.0, 1000.0,
                            &d->randomize_temperature, err)) ||
        (rc = ts_json_float(smp, ss, "aesthetic", -1000.0, 1000.0, &d->aesthetic, err)) ||
        (rc = ts_json_string(smp, ss, "guidance_decay", &decay, err)) ||
        (rc = ts_json_bool(smp, ss, "softmax_temperature_annealing", &anneal, err)))
        return rc;
    if (strcmp(decay, "cosine") || !anneal)
        return ts_fail(err, TS_ERR_UNSUPPORTED, "config: only guidance_decay \"cosine\" with "
                       "softmax_temperature_annealing (upstream's defaults) is supported");
    return TS_OK;
}

static int load_block(ts_wsrc s, const maskgen_config *c, int i, maskgen_block *b,
                      ts_error *err)
{
    int D = c->dim, rc;
    char n[128];
    b->pre_only = i == c->depth - 1;
#define L(suffix, rows, cols, w, bias) \
    (snprintf(n, sizeof n, "blocks.%d." suffix, i), ts_w_linear(s, n, rows, cols, w, bias, err))
    if ((rc = L("norm1.linear", 6 * D, D, &b->norm1, &b->norm1_b)) ||
        (rc = L("norm1_context.linear", (b->pre_only ? 2 : 6) * D, D, &b->norm1_ctx,
                &b->norm1_ctx_b)) ||
        (rc = L("attn.to_q", D, D, &b->to_q, &b->to_q_b)) ||
        (rc = L("attn.to_k", D, D, &b->to_k, &b->to_k_b)) ||
        (rc = L("attn.to_v", D, D, &b->to_v, &b->to_v_b)) ||
        (rc = L("attn.add_q_proj", D, D, &b->add_q, &b->add_q_b)) ||
        (rc = L("attn.add_k_proj", D, D, &b->add_k, &b->add_k_b)) ||
        (rc = L("attn.add_v_proj", D, D, &b->add_v, &b->add_v_b)) ||
        (rc = L("attn.to_out.0", D, D, &b->to_out, &b->to_out_b)) ||
        (rc = L("ff.net.0.proj", 4 * D, D, &b->ff1, &b->ff1_b)) ||
        (rc = L("ff.net.2", D, 4 * D, &b->ff2, &b->ff2_b)))
        return rc;
    if (b->pre_only) return TS_OK;
    if ((rc = L("attn.to_add_out", D, D, &b->to_add_out, &b->to_add_out_b)) ||
        (rc = L("ff_context.net.0.proj", 4 * D, D, &b->ffc1, &b->ffc1_b)) ||
        (rc = L("ff_context.net.2", D, 4 * D, &b->ffc2, &b->ffc2_b)))
        return rc;
#undef L
    return TS_OK;
}

static void free_block(ts_backend *be, maskgen_block *b)
{
    ts_wt *ws[] = {&b->norm1, &b->norm1_ctx, &b->to_q, &b->to_k, &b->to_v, &b->add_q, &b->add_k,
                   &b->add_v, &b->to_out, &b->to_add_out, &b->ff1, &b->ff2, &b->ffc1, &b->ffc2};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ts_be_weight_release(be, ws[i]);
    float *vs[] = {b->norm1_b, b->norm1_ctx_b, b->to_q_b, b->to_k_b, b->to_v_b, b->add_q_b,
                   b->add_k_b, b->add_v_b, b->to_out_b, b->to_add_out_b, b->ff1_b, b->ff2_b,
                   b->ffc1_b, b->ffc2_b};
    for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) ts_be_free(be, vs[i]);
}

int maskgen_load(ts_backend *be, const maskgen_config *cfg, ts_st_file *f,
                 maskgen_model **out, ts_error *err)
{
    *out = NULL;
    maskgen_model *m = calloc(1, sizeof *m);
    if (!m) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->be = be;
    const maskgen_config *c = &m->cfg;
    ts_wsrc s = {be, f};
    int D = c->dim, rc;
    m->blocks = calloc((size_t)c->depth, sizeof *m->blocks);
    if (!m->blocks) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_w_mat(s, "embeddings.weight", 2, TS_SHAPE(c->embed_rows, D), c->embed_rows, D,
                       &m->embeddings, err)) ||
        (rc = ts_w_mat(s, "pos_embed", 3, TS_SHAPE(1, c->num_tokens, D), c->num_tokens, D,
                       &m->pos_embed, err)) ||
        (rc = ts_w_linear(s, "text_embed_proj", D, c->text_dim, &m->text_proj, &m->text_proj_b,
                          err)) ||
        (rc = ts_w_linear(s, "cond_pooled_proj", D, c->text_dim + c->micro_dim, &m->pooled_proj,
                          &m->pooled_proj_b, err)) ||
        (rc = ts_w_linear(s, "norm.linear", 2 * D, D, &m->norm_out, &m->norm_out_b, err)))
        goto fail;
    /* The tied head reads the same table: rows [0, V) only. */
    const ts_st_tensor *emb = ts_st_find(f, "embeddings.weight");
    if ((rc = ts_be_weight_init(be, &m->head, emb->data, emb->dtype, c->codebook_size, D, err)))
        goto fail;
    for (int i = 0; i < c->depth; i++)
        if ((rc = load_block(s, c, i, &m->blocks[i], err))) goto fail;
    if ((rc = ts_st_check_all_used(f, err))) goto fail;
    *out = m;
    return TS_OK;
fail:
    maskgen_free(m);
    return rc;
}

static void free_scratch(maskgen_model *m)
{
    float **bufs[] = {&m->x, &m->c, &m->h, &m->q, &m->k, &m->v, &m->o, &m->ff, &m->mods,
                      &m->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        ts_be_free(m->be, *bufs[i]);
        *bufs[i] = NULL;
    }
    m->cap = 0;
}

void maskgen_free(maskgen_model *m)
{
    if (!m) return;
    free_scratch(m);
    if (m->blocks)
        for (int i = 0; i < m->cfg.depth; i++) free_block(m->be, &m->blocks[i]);
    free(m->blocks);
    ts_wt *ws[] = {&m->embeddings, &m->head, &m->pos_embed, &m->text_proj, &m->pooled_proj,
                   &m->norm_out};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ts_be_weight_release(m->be, ws[i]);
    ts_be_free(m->be, m->text_proj_b);
    ts_be_free(m->be, m->pooled_proj_b);
    ts_be_free(m->be, m->norm_out_b);
    free(m);
}

int maskgen_cond_floats(const maskgen_config *c)
{
    return c->depth * 12 * c->dim + 2 * c->dim;
}

/* Upstream's get_sinusoidal_encoding (diffusers style): [sin | cos] of t * exp(-ln(P) k /
 * half) for k < half, in float32 as torch computes it; odd widths pad one zero. */
static void aesthetic_embedding(float *out, int dim, float max_period, float score)
{
    int half = dim / 2;
    float t = score * 100.0f;
    float lp = (float)-log((double)max_period);
    for (int k = 0; k < half; k++) {
        float e = expf(lp * (float)k / (float)half);
        float a = t * e;
        out[k] = sinf(a);
        out[half + k] = cosf(a);
    }
    if (dim % 2) out[dim - 1] = 0.0f;
}

int maskgen_cond_make(maskgen_model *m, const float *penult, const float *pooled,
                      float aesthetic, maskgen_cond *out, ts_error *err)
{
    const maskgen_config *c = &m->cfg;
    ts_backend *be = m->be;
    int D = c->dim, in = c->text_dim + c->micro_dim;
    memset(out, 0, sizeof *out);
    out->ctx = ts_be_alloc(be, (size_t)c->text_len * D);
    out->mod = ts_be_alloc(be, (size_t)maskgen_cond_floats(c));
    float *u = ts_be_alloc(be, (size_t)in);
    float *temb = ts_be_alloc(be, (size_t)D);
    float *host = malloc((size_t)c->micro_dim * sizeof *host);
    int rc = TS_OK;
    if (!out->ctx || !out->mod || !u || !temb || !host) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory for a prompt's conditioning");
        maskgen_cond_free(m, out);
        goto done;
    }
    ts_be_matmul(be, out->ctx, penult, &m->text_proj, m->text_proj_b, c->text_len);
    /* temb = cond_pooled_proj([pooled | aesthetic sinusoid]); every adaLN reads silu(temb). */
    aesthetic_embedding(host, c->micro_dim, c->max_period, aesthetic);
    ts_be_copy(be, u, pooled, (size_t)c->text_dim * sizeof *u);
    ts_be_upload(be, u + c->text_dim, host, (size_t)c->micro_dim);
    ts_be_matmul(be, temb, u, &m->pooled_proj, m->pooled_proj_b, 1);
    ts_be_activation(be, temb, temb, (size_t)D, TS_ACT_SILU);
    for (int i = 0; i < c->depth; i++) {
        const maskgen_block *b = &m->blocks[i];
        float *mi = out->mod + (size_t)i * 12 * D;
        ts_be_matmul(be, mi, temb, &b->norm1, b->norm1_b, 1);
        ts_be_matmul(be, mi + 6 * D, temb, &b->norm1_ctx, b->norm1_ctx_b, 1);
    }
    ts_be_matmul(be, out->mod + (size_t)c->depth * 12 * D, temb, &m->norm_out, m->norm_out_b, 1);
done:
    ts_be_free(be, u);
    ts_be_free(be, temb);
    free(host);
    return rc;
}

void maskgen_cond_free(maskgen_model *m, maskgen_cond *c)
{
    ts_be_free(m->be, c->ctx);
    ts_be_free(m->be, c->mod);
    c->ctx = c->mod = NULL;
}

static int reserve(maskgen_model *m, int n, ts_error *err)
{
    if (n <= m->cap) return TS_OK;
    free_scratch(m);
    const maskgen_config *c = &m->cfg;
    size_t D = (size_t)c->dim, ni = (size_t)n * c->num_tokens, nt = (size_t)n * c->text_len;
    size_t rows = ni + nt, big = ni > nt ? ni : nt;
    m->x = ts_be_alloc(m->be, ni * D);
    m->c = ts_be_alloc(m->be, nt * D);
    m->h = ts_be_alloc(m->be, rows * D);
    m->q = ts_be_alloc(m->be, rows * D);
    m->k = ts_be_alloc(m->be, rows * D);
    m->v = ts_be_alloc(m->be, rows * D);
    m->o = ts_be_alloc(m->be, rows * D);
    m->ff = ts_be_alloc(m->be, big * 4 * D);
    m->mods = ts_be_alloc(m->be, (size_t)n * maskgen_cond_floats(c));
    m->logits = ts_be_alloc(m->be, ni * c->codebook_size);
    if (!m->x || !m->c || !m->h || !m->q || !m->k || !m->v || !m->o || !m->ff || !m->mods ||
        !m->logits) {
        free_scratch(m);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory for %d sequences of activations", n);
    }
    m->cap = n;
    return TS_OK;
}

/* The MLP of one stream: x += gate * W2(gelu_tanh(W1(modulate(LN(x))))). */
static void mlp(maskgen_model *m, float *x, int rows, int per_item, const float *mod,
                const ts_wt *w1, const float *b1, const ts_wt *w2, const float *b2)
{
    const maskgen_config *c = &m->cfg;
    ts_backend *be = m->be;
    int D = c->dim, stride = maskgen_cond_floats(c);
    ts_be_layernorm(be, m->h, x, NULL, NULL, rows, D, c->norm_eps);
    ts_be_modulate(be, m->h, m->h, mod + 3 * D, mod + 4 * D, stride, rows, D, per_item);
    ts_be_matmul(be, m->ff, m->h, w1, b1, rows);
    ts_be_activation(be, m->ff, m->ff, (size_t)rows * 4 * D, TS_ACT_GELU_TANH);
    ts_be_matmul(be, m->h, m->ff, w2, b2, rows);
    ts_be_gated_add(be, x, m->h, mod + 5 * D, stride, rows, D, per_item);
}

int maskgen_forward(maskgen_model *m, const maskgen_seq *seqs, int n, ts_error *err)
{
    const maskgen_config *c = &m->cfg;
    ts_backend *be = m->be;
    int D = c->dim, N = c->num_tokens, T = c->text_len, L = N + T;
    int stride = maskgen_cond_floats(c);
    if (n <= 0) return ts_fail(err, TS_ERR_INVALID, "maskgen: no sequences");
    for (int s = 0; s < n; s++)
        for (int p = 0; p < N; p++)
            if (seqs[s].ids[p] < 0 || seqs[s].ids[p] > c->codebook_size)
                return ts_fail(err, TS_ERR_INVALID, "maskgen: sequence %d id %d at %d is outside "
                               "[0, %d]", s, seqs[s].ids[p], p, c->codebook_size);
    int rc = reserve(m, n, err);
    if (rc) return rc;
    int ni = n * N, nt = n * T;
    int32_t *ids = malloc((size_t)ni * sizeof *ids);
    int32_t *pos = malloc((size_t)ni * sizeof *pos);
    int32_t *joint = malloc((size_t)n * L * sizeof *joint);
    if (!ids || !pos || !joint) {
        free(ids);
        free(pos);
        free(joint);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    }
    /* Image rows of all sequences come first in q/k/v/o, then their text rows; the
     * joint attention of sequence s reads its N image rows, then its T text rows. */
    for (int s = 0; s < n; s++) {
        for (int p = 0; p < N; p++) {
            ids[s * N + p] = seqs[s].ids[p];
            pos[s * N + p] = p;
            joint[s * L + p] = s * N + p;
        }
        for (int t = 0; t < T; t++) joint[s * L + N + t] = ni + s * T + t;
    }

    ts_be_step_begin(be);
    ts_be_embed(be, m->x, &m->pos_embed, pos, NULL, ni);
    ts_be_embed(be, m->h, &m->embeddings, ids, NULL, ni);
    ts_be_add(be, m->x, m->h, (size_t)ni * D);
    for (int s = 0; s < n; s++) {
        ts_be_copy(be, m->c + (size_t)s * T * D, seqs[s].cond->ctx, (size_t)T * D * sizeof(float));
        ts_be_copy(be, m->mods + (size_t)s * stride, seqs[s].cond->mod,
                   (size_t)stride * sizeof(float));
    }
    float *hc = m->h + (size_t)ni * D;   /* the text rows' half of h, q, k, v, o */
    size_t toff = (size_t)ni * D;
    for (int i = 0; i < c->depth; i++) {
        const maskgen_block *b = &m->blocks[i];
        const float *mi = m->mods + (size_t)i * 12 * D;   /* image: shift, scale, gate x2 */
        const float *mc = mi + 6 * D;                     /* text: the same, or scale, shift */
        ts_be_layernorm(be, m->h, m->x, NULL, NULL, ni, D, c->norm_eps);
        ts_be_modulate(be, m->h, m->h, mi, mi + D, stride, ni, D, N);
        ts_be_layernorm(be, hc, m->c, NULL, NULL, nt, D, c->norm_eps);
        if (b->pre_only) ts_be_modulate(be, hc, hc, mc + D, mc, stride, nt, D, T);
        else ts_be_modulate(be, hc, hc, mc, mc + D, stride, nt, D, T);
        ts_be_matmul(be, m->q, m->h, &b->to_q, b->to_q_b, ni);
        ts_be_matmul(be, m->k, m->h, &b->to_k, b->to_k_b, ni);
        ts_be_matmul(be, m->v, m->h, &b->to_v, b->to_v_b, ni);
        ts_be_matmul(be, m->q + toff, hc, &b->add_q, b->add_q_b, nt);
        ts_be_matmul(be, m->k + toff, hc, &b->add_k, b->add_k_b, nt);
        ts_be_matmul(be, m->v + toff, hc, &b->add_v, b->add_v_b, nt);
        ts_be_attention_dense(be, m->o, m->q, m->k, m->v, D, c->n_head, c->head_dim, joint, n, L,
                              0);
        ts_be_matmul(be, m->h, m->o, &b->to_out, b->to_out_b, ni);
        ts_be_gated_add(be, m->x, m->h, mi + 2 * D, stride, ni, D, N);
        mlp(m, m->x, ni, N, mi, &b->ff1, b->ff1_b, &b->ff2, b->ff2_b);
        if (b->pre_only) continue;   /* the last block's text stream is never read again */
        ts_be_matmul(be, hc, m->o + toff, &b->to_add_out, b->to_add_out_b, nt);
        ts_be_gated_add(be, m->c, hc, mc + 2 * D, stride, nt, D, T);
        mlp(m, m->c, nt, T, mc, &b->ffc1, b->ffc1_b, &b->ffc2, b->ffc2_b);
    }
    /* The final AdaLayerNormContinuous: scale first, then shift. */
    const float *mf = m->mods + (size_t)c->depth * 12 * D;
    ts_be_layernorm(be, m->h, m->x, NULL, NULL, ni, D, c->norm_eps);
    ts_be_modulate(be, m->h, m->h, mf + D, mf, stride, ni, D, N);
    ts_be_matmul(be, m->logits, m->h, &m->head, NULL, ni);
    free(ids);
    free(pos);
    free(joint);
    return TS_OK;
}

const float *maskgen_logits(const maskgen_model *m) { return m->logits; }
