/* clip_text.h - the text tower of OpenAI CLIP (open_clip's TextTransformer), as
 * MaskGen and TA-TiTok use it.
 *
 * x = token_embedding[ids] + positional_embedding; n_layer causal pre-LN blocks
 * (vit_block.h); ln_final. Three outputs are taken, because the two consumers read
 * different ones: the hidden states after block n_layer-1 (the penultimate, before
 * ln_final: MaskGen's sequence condition), the ln_final sequence (TA-TiTok's text
 * guidance), and the pooled vector, ln_final at the end token (the largest id of each
 * row) times the text projection (MaskGen's pooled condition). All context_length
 * positions are kept, padding included, as upstream does.
 *
 * Ownership as llamagen.h: the backend and the file are borrowed.
 */
#ifndef TS_CLIP_TEXT_H
#define TS_CLIP_TEXT_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../safetensors.h"
#include "vit_block.h"

typedef struct clip_config {
    int vocab_size, context, width, n_layer, n_head, proj_dim;
    ts_act act;          /* QuickGELU (OpenAI weights in open_clip <= 2.27) or GELU */
    float norm_eps;
} clip_config;

typedef struct clip_text {
    clip_config cfg;
    vit_dims dims;
    ts_backend *be;
    ts_wt tok_emb, pos_emb;   /* [vocab, W], [context, W] */
    vit_block *blocks;        /* [n_layer] */
    float *lnf_w, *lnf_b;
    ts_wt text_proj;          /* [proj_dim, W]: the converter stores it as a Linear */
} clip_text;

/* Reads the "clip" section of config.json. */
int clip_config_parse(const json_t *sec, clip_config *cfg, ts_error *err);
int clip_text_load(ts_backend *be, const clip_config *cfg, ts_st_file *f, clip_text **out,
                   ts_error *err);
void clip_text_free(clip_text *m);   /* NULL-safe */

/* Encodes n rows of context token ids (host). Outputs in backend memory, each NULL
 * when not wanted: penult and final [n * context, width], pooled [n, proj_dim]. */
int clip_text_encode(clip_text *m, const int32_t *ids, int n, float *penult, float *final,
                     float *pooled, ts_error *err);

#endif
