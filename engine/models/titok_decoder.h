/* titok_decoder.h - TA-TiTok's text-aware VQ decoder (TATiTokDecoder upstream, the
 * non-legacy one-stage variant): 1-D tokens plus CLIP text to RGB pixels.
 *
 * Per image, one sequence of 1 + g*g + N + T rows through a ViT (vit_block.h, exact
 * GELU, full attention):
 *   [class_embedding + pos[0]; mask_token + pos[1..g*g];
 *    decoder_embed(codebook[ids]) + latent_pos; text_guidance_proj(text) + text_pos]
 * ln_pre first; after the blocks the g*g mask rows go through ln_post, a 1x1 conv to
 * p*p*3 channels per grid cell, depth-to-space (channel (p1*p + p2)*3 + c lands on pixel
 * (h*p + p1, w*p + p2) of colour c) and a 3x3 conv. The text is CLIP's ln_final
 * sequence, all T positions.
 *
 * The last two steps (depth-to-space and the 3-channel conv: p*p*3 floats per cell)
 * run on the host after one download; everything before them on the backend.
 */
#ifndef TS_TITOK_DECODER_H
#define TS_TITOK_DECODER_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../safetensors.h"
#include "vit_block.h"

typedef struct titok_config {
    int width, n_layer, n_head;
    int patch_size, grid_size;      /* image side = patch_size * grid_size */
    int num_tokens, token_size, codebook_size;
    int text_len, text_dim;
    float norm_eps;
} titok_config;

typedef struct titok_decoder {
    titok_config cfg;
    vit_dims dims;
    ts_backend *be;
    ts_wt codebook;            /* [K, token_size] */
    ts_wt decoder_embed;       /* [W, token_size] */
    float *decoder_embed_b;
    float *prefix_host;        /* [1 + g*g, W]: class/mask tokens plus their positions */
    ts_wt prefix;              /* over prefix_host */
    ts_wt latent_pos, text_pos;
    ts_wt text_proj;
    float *text_proj_b;
    float *ln_pre_w, *ln_pre_b, *ln_post_w, *ln_post_b;
    vit_block *blocks;
    ts_wt ffn;                 /* [p*p*3, W] */
    float *ffn_b;
    float *conv_w, *conv_b;    /* host: [3, 3, 3, 3] and [3] */
} titok_decoder;

int titok_config_parse(const json_t *sec, titok_config *cfg, ts_error *err);
int titok_load(ts_backend *be, const titok_config *cfg, ts_st_file *f, titok_decoder **out,
               ts_error *err);
void titok_free(titok_decoder *d);   /* NULL-safe */

/* Decodes n images: ids [n, N] (host), text [n * T, text_dim] (backend memory, CLIP's
 * ln_final sequence of each image's prompt). pixels (host, optional) gets [n, 3, H, W]
 * floats before clamping; rgb (host, optional) [n, H, W, 3] bytes, clamp(x, 0, 1) * 255
 * truncated as upstream's demo does. */
int titok_decode(titok_decoder *d, const int32_t *ids, const float *text, int n,
                 float *pixels, uint8_t *rgb, ts_error *err);
int titok_image_size(const titok_decoder *d);

#endif
