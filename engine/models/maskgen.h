/* maskgen.h - MaskGen-VQ's generator (modeling/maskgen.py upstream): an MM-DiT over
 * num_tokens 1-D image tokens and the 77 CLIP text positions.
 *
 * Two streams, image and text ("context"), each with its own adaLN-Zero, q/k/v,
 * output projection and tanh-GELU MLP, share one bidirectional attention over
 * [image ; text] per sequence (diffusers' JointTransformerBlock). The last block is
 * "context pre-only": its text stream is modulated by a 2-way AdaLayerNormContinuous
 * (scale, then shift), still gives keys and values, and is not updated. LayerNorms
 * are non-affine, eps 1e-6. The head is tied to the first codebook_size rows of the
 * input embedding table.
 *
 * Everything that depends only on the prompt and the aesthetic score - the projected
 * text sequence and every adaLN modulation vector - is computed once per request and
 * branch (maskgen_cond_make); a step (maskgen_forward) then only runs the blocks.
 */
#ifndef TS_MASKGEN_H
#define TS_MASKGEN_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../safetensors.h"

typedef struct maskgen_sampling {
    int steps;
    float guidance, randomize_temperature, aesthetic;
} maskgen_sampling;

typedef struct maskgen_config {
    int dim, depth, n_head, head_dim;
    int num_tokens;        /* N: image tokens per image */
    int codebook_size;     /* V: the mask token's id is V */
    int embed_rows;        /* rows of the embedding table (V + 1 + classes + 1) */
    int text_dim;          /* CLIP width */
    int text_len;          /* T: CLIP context length (set by the caller from clip) */
    int micro_dim;         /* aesthetic sinusoid width */
    float max_period, norm_eps;
    maskgen_sampling sampling;   /* upstream's defaults, from config.json */
} maskgen_config;

typedef struct maskgen_block {
    ts_wt norm1, norm1_ctx;                 /* [6D, D]; the context's is [2D, D] if last */
    float *norm1_b, *norm1_ctx_b;
    ts_wt to_q, to_k, to_v, add_q, add_k, add_v, to_out, to_add_out;
    float *to_q_b, *to_k_b, *to_v_b, *add_q_b, *add_k_b, *add_v_b, *to_out_b, *to_add_out_b;
    ts_wt ff1, ff2, ffc1, ffc2;             /* ffc*: absent in the last block */
    float *ff1_b, *ff2_b, *ffc1_b, *ffc2_b;
    int pre_only;
} maskgen_block;

typedef struct maskgen_model {
    maskgen_config cfg;
    ts_backend *be;
    ts_wt embeddings;          /* [embed_rows, D] */
    ts_wt head;                /* the same data, first codebook_size rows */
    ts_wt pos_embed;           /* [N, D] */
    ts_wt text_proj, pooled_proj;
    float *text_proj_b, *pooled_proj_b;
    maskgen_block *blocks;
    ts_wt norm_out;            /* [2D, D]: the final AdaLayerNormContinuous */
    float *norm_out_b;

    /* Activation scratch for up to cap sequences (backend memory). */
    int cap;
    float *x, *c, *h, *q, *k, *v, *o, *ff, *mods, *logits;
} maskgen_model;

/* One branch's per-request conditioning, in backend memory (maskgen_cond_make). */
typedef struct maskgen_cond {
    float *ctx;    /* [T, D]: text_embed_proj(penultimate CLIP states) */
    float *mod;    /* [depth * 12D + 2D]: block i's image then text modulation at i*12D,
                      the final norm's (scale, shift) at depth*12D */
} maskgen_cond;

/* One sequence of a step: its ids (host, N entries, V = masked) and conditioning. */
typedef struct maskgen_seq {
    const int32_t *ids;
    const maskgen_cond *cond;
} maskgen_seq;

/* Reads the "generator" section; text_len and text_dim are checked against CLIP's. */
int maskgen_config_parse(const json_t *sec, maskgen_config *cfg, ts_error *err);
int maskgen_load(ts_backend *be, const maskgen_config *cfg, ts_st_file *f,
                 maskgen_model **out, ts_error *err);
void maskgen_free(maskgen_model *m);   /* NULL-safe */

int maskgen_cond_floats(const maskgen_config *c);   /* size of maskgen_cond.mod */
/* penult: [T, text_dim] and pooled [text_dim], backend memory (clip_text_encode). */
int maskgen_cond_make(maskgen_model *m, const float *penult, const float *pooled,
                      float aesthetic, maskgen_cond *out, ts_error *err);
void maskgen_cond_free(maskgen_model *m, maskgen_cond *c);   /* NULL-safe members */

/* One step over n sequences; leaves logits [n * N, V] in backend memory at
 * maskgen_logits(m), valid until the next forward. */
int maskgen_forward(maskgen_model *m, const maskgen_seq *seqs, int n, ts_error *err);
const float *maskgen_logits(const maskgen_model *m);

#endif
