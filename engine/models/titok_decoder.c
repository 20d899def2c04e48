/* titok_decoder.c - see titok_decoder.h; reads side by side with upstream's
 * TATiTokDecoder.forward and TATiTok.decode_tokens. */
#include "titok_decoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "weights.h"

int titok_config_parse(const json_t *sec, titok_config *cfg, ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *s = "tokenizer";
    int rc;
    if ((rc = ts_json_int(sec, s, "width", 1, 65536, &cfg->width, err)) ||
        (rc = ts_json_int(sec, s, "n_layer", 1, 1024, &cfg->n_layer, err)) ||
        (rc = ts_json_int(sec, s, "n_head", 1, 1024, &cfg->n_head, err)) ||
        (rc = ts_json_int(sec, s, "patch_size", 1, 256, &cfg->patch_size, err)) ||
        (rc = ts_json_int(sec, s, "grid_size", 1, 256, &cfg->grid_size, err)) ||
        (rc = ts_json_int(sec, s, "num_tokens", 1, 65536, &cfg->num_tokens, err)) ||
        (rc = ts_json_int(sec, s, "token_size", 1, 65536, &cfg->token_size, err)) ||
        (rc = ts_json_int(sec, s, "codebook_size", 1, 1 << 24, &cfg->codebook_size, err)) ||
        (rc = ts_json_int(sec, s, "text_context", 1, 4096, &cfg->text_len, err)) ||
        (rc = ts_json_int(sec, s, "text_dim", 1, 65536, &cfg->text_dim, err)) ||
        (rc = ts_json_float(sec, s, "norm_eps", 0.0, 1.0, &cfg->norm_eps, err)))
        return rc;
    if (cfg->width % cfg->n_head)
        return ts_fail(err, TS_ERR_CONFIG, "config: tokenizer.width %d is not a multiple of "
                       "n_head %d", cfg->width, cfg->n_head);
    return TS_OK;
}

int titok_image_size(const titok_decoder *d) { return d->cfg.patch_size * d->cfg.grid_size; }

int titok_load(ts_backend *be, const titok_config *cfg, ts_st_file *f, titok_decoder **out,
               ts_error *err)
{
    *out = NULL;
    titok_decoder *d = calloc(1, sizeof *d);
    if (!d) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    d->cfg = *cfg;
    d->be = be;
    d->dims = (vit_dims){cfg->width, cfg->n_head, 4 * cfg->width, cfg->norm_eps, TS_ACT_GELU};
    ts_wsrc s = {be, f};
    int W = cfg->width, G = cfg->grid_size * cfg->grid_size, P = cfg->patch_size, rc;
    float *cls = NULL, *mask = NULL, *pos = NULL;
    d->blocks = calloc((size_t)cfg->n_layer, sizeof *d->blocks);
    d->prefix_host = malloc((size_t)(1 + G) * W * sizeof *d->prefix_host);
    if (!d->blocks || !d->prefix_host) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_w_mat(s, "quantize.embedding.weight", 2,
                       TS_SHAPE(cfg->codebook_size, cfg->token_size), cfg->codebook_size,
                       cfg->token_size, &d->codebook, err)) ||
        (rc = ts_w_linear(s, "decoder.decoder_embed", W, cfg->token_size, &d->decoder_embed,
                          &d->decoder_embed_b, err)) ||
        (rc = ts_w_host(s, "decoder.class_embedding", 2, TS_SHAPE(1, W), &cls, err)) ||
        (rc = ts_w_host(s, "decoder.mask_token", 3, TS_SHAPE(1, 1, W), &mask, err)) ||
        (rc = ts_w_host(s, "decoder.positional_embedding", 2, TS_SHAPE(1 + G, W), &pos, err)) ||
        (rc = ts_w_mat(s, "decoder.latent_token_positional_embedding", 2,
                       TS_SHAPE(cfg->num_tokens, W), cfg->num_tokens, W, &d->latent_pos, err)) ||
        (rc = ts_w_linear(s, "decoder.text_guidance_proj", W, cfg->text_dim, &d->text_proj,
                          &d->text_proj_b, err)) ||
        (rc = ts_w_mat(s, "decoder.text_guidance_positional_embedding", 2,
                       TS_SHAPE(cfg->text_len, W), cfg->text_len, W, &d->text_pos, err)) ||
        (rc = ts_w_norm(s, "decoder.ln_pre", W, &d->ln_pre_w, &d->ln_pre_b, err)) ||
        (rc = ts_w_norm(s, "decoder.ln_post", W, &d->ln_post_w, &d->ln_post_b, err)) ||
        (rc = ts_w_mat(s, "decoder.ffn.0.weight", 4, TS_SHAPE(P * P * 3, W, 1, 1), P * P * 3, W,
                       &d->ffn, err)) ||
        (rc = ts_w_vec(s, "decoder.ffn.0.bias", 1, TS_SHAPE(P * P * 3), &d->ffn_b, err)) ||
        (rc = ts_w_host(s, "decoder.conv_out.weight", 4, TS_SHAPE(3, 3, 3, 3), &d->conv_w, err)) ||
        (rc = ts_w_host(s, "decoder.conv_out.bias", 1, TS_SHAPE(3), &d->conv_b, err)))
        goto fail;
    for (int l = 0; l < cfg->n_layer; l++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "decoder.transformer.%d", l);
        if ((rc = vit_block_load(s, prefix, &d->dims, &d->blocks[l], err))) goto fail;
    }
    if ((rc = ts_st_check_all_used(f, err))) goto fail;
    /* The first 1 + g*g rows of every sequence are the same for every image: added
     * up once here, in upstream's order (token + position, in float). */
    for (int i = 0; i <= G; i++)
        for (int j = 0; j < W; j++)
            d->prefix_host[(size_t)i * W + j] = (i ? mask[j] : cls[j]) + pos[(size_t)i * W + j];
    if ((rc = ts_be_weight_init(be, &d->prefix, d->prefix_host, TS_F32, 1 + G, W, err)))
        goto fail;
    free(cls);
    free(mask);
    free(pos);
    *out = d;
    return TS_OK;
fail:
    free(cls);
    free(mask);
    free(pos);
    titok_free(d);
    return rc;
}

void titok_free(titok_decoder *d)
{
    if (!d) return;
    if (d->blocks)
        for (int l = 0; l < d->cfg.n_layer; l++) vit_block_free(d->be, &d->blocks[l]);
    free(d->blocks);
    ts_wt *ws[] = {&d->codebook, &d->decoder_embed, &d->prefix, &d->latent_pos, &d->text_pos,
                   &d->text_proj, &d->ffn};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ts_be_weight_release(d->be, ws[i]);
    float *vs[] = {d->decoder_embed_b, d->text_proj_b, d->ln_pre_w, d->ln_pre_b, d->ln_post_w,
                   d->ln_post_b, d->ffn_b};
    for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) ts_be_free(d->be, vs[i]);
    free(d->prefix_host);
    free(d->conv_w);
    free(d->conv_b);
    free(d);
}

/* Depth-to-space of one image's [g*g, p*p*3] cells into [3, H, W], then the 3x3 conv
 * with zero padding 1. */
static void to_pixels(const titok_decoder *d, const float *cells, float *img, float *out)
{
    int g = d->cfg.grid_size, P = d->cfg.patch_size, S = g * P;
    for (int h = 0; h < g; h++)
        for (int w = 0; w < g; w++)
            for (int p1 = 0; p1 < P; p1++)
                for (int p2 = 0; p2 < P; p2++)
                    for (int c = 0; c < 3; c++)
                        img[((size_t)c * S + h * P + p1) * S + w * P + p2] =
                            cells[(size_t)(h * g + w) * P * P * 3 + (p1 * P + p2) * 3 + c];
    for (int o = 0; o < 3; o++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float acc = d->conv_b[o];
                for (int c = 0; c < 3; c++)
                    for (int ky = 0; ky < 3; ky++) {
                        int yy = y + ky - 1;
                        if (yy < 0 || yy >= S) continue;
                        for (int kx = 0; kx < 3; kx++) {
                            int xx = x + kx - 1;
                            if (xx < 0 || xx >= S) continue;
                            acc += d->conv_w[((o * 3 + c) * 3 + ky) * 3 + kx] *
                                   img[((size_t)c * S + yy) * S + xx];
                        }
                    }
                out[((size_t)o * S + y) * S + x] = acc;
            }
}

int titok_decode(titok_decoder *d, const int32_t *ids, const float *text, int n,
                 float *pixels, uint8_t *rgb, ts_error *err)
{
    const titok_config *c = &d->cfg;
    ts_backend *be = d->be;
    int W = c->width, G = c->grid_size * c->grid_size, N = c->num_tokens, T = c->text_len;
    int L = 1 + G + N + T, M = n * L, P3 = c->patch_size * c->patch_size * 3;
    int S = c->grid_size * c->patch_size;
    for (int i = 0; i < n * N; i++)
        if (ids[i] < 0 || ids[i] >= c->codebook_size)
            return ts_fail(err, TS_ERR_INVALID, "decoder: token %d outside [0, %d)", ids[i],
                           c->codebook_size);
    size_t nidx = (size_t)M;
    int32_t *tab = malloc(nidx * sizeof *tab), *rows = malloc(nidx * sizeof *rows);
    float *x = ts_be_alloc(be, (size_t)M * W);
    float *lat = ts_be_alloc(be, (size_t)n * N * (size_t)(W > c->token_size ? W : c->token_size));
    float *code = ts_be_alloc(be, (size_t)n * N * c->token_size);
    float *txt = ts_be_alloc(be, (size_t)n * T * W);
    float *cells = ts_be_alloc(be, (size_t)n * G * P3);
    float *host = malloc((size_t)n * G * P3 * sizeof *host);
    float *img = malloc((size_t)3 * S * S * sizeof *img);
    float *one = malloc((size_t)3 * S * S * sizeof *one);
    vit_scratch s = {0};
    int rc = TS_OK;
    if (!tab || !rows || !x || !lat || !code || !txt || !cells || !host || !img || !one ||
        (rc = vit_scratch_alloc(be, &d->dims, M, &s, err))) {
        if (!rc) rc = ts_fail(err, TS_ERR_NOMEM, "out of memory decoding %d images", n);
        goto out;
    }
    /* Positions and constant rows: prefix table, latent and text position tables. */
    int k = 0;
    for (int b = 0; b < n; b++)
        for (int i = 0; i <= G; i++, k++) {
            tab[k] = i;
            rows[k] = b * L + i;
        }
    ts_be_embed(be, x, &d->prefix, tab, rows, k);
    k = 0;
    for (int b = 0; b < n; b++)
        for (int i = 0; i < N; i++, k++) {
            tab[k] = i;
            rows[k] = b * L + 1 + G + i;
        }
    ts_be_embed(be, x, &d->latent_pos, tab, rows, k);
    ts_be_embed(be, code, &d->codebook, ids, NULL, n * N);
    ts_be_matmul(be, lat, code, &d->decoder_embed, d->decoder_embed_b, n * N);
    ts_be_scatter_add_rows(be, x, lat, rows, n * N, W);
    k = 0;
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++, k++) {
            tab[k] = t;
            rows[k] = b * L + 1 + G + N + t;
        }
    ts_be_embed(be, x, &d->text_pos, tab, rows, k);
    ts_be_matmul(be, txt, text, &d->text_proj, d->text_proj_b, n * T);
    ts_be_scatter_add_rows(be, x, txt, rows, n * T, W);

    ts_be_layernorm(be, x, x, d->ln_pre_w, d->ln_pre_b, M, W, c->norm_eps);
    for (int l = 0; l < c->n_layer; l++) vit_block_forward(be, &d->blocks[l], &d->dims, x, n, L, 0, &s);
    k = 0;
    for (int b = 0; b < n; b++)
        for (int i = 0; i < G; i++) rows[k++] = b * L + 1 + i;
    ts_be_gather_rows(be, s.h, x, rows, k, W);
    ts_be_layernorm(be, s.h, s.h, d->ln_post_w, d->ln_post_b, k, W, c->norm_eps);
    ts_be_matmul(be, cells, s.h, &d->ffn, d->ffn_b, k);
    ts_be_download(be, host, cells, (size_t)n * G * P3);
    for (int b = 0; b < n; b++) {
        to_pixels(d, host + (size_t)b * G * P3, img, one);
        if (pixels) memcpy(pixels + (size_t)b * 3 * S * S, one, (size_t)3 * S * S * sizeof *one);
        if (rgb)
            for (int y = 0; y < S; y++)
                for (int xx = 0; xx < S; xx++)
                    for (int ch = 0; ch < 3; ch++) {
                        float v = one[((size_t)ch * S + y) * S + xx];
                        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                        rgb[(((size_t)b * S + y) * S + xx) * 3 + ch] = (uint8_t)(v * 255.0f);
                    }
    }
out:
    vit_scratch_free(be, &s);
    ts_be_free(be, x);
    ts_be_free(be, lat);
    ts_be_free(be, code);
    ts_be_free(be, txt);
    ts_be_free(be, cells);
    free(tab);
    free(rows);
    free(host);
    free(img);
    free(one);
    return rc;
}
