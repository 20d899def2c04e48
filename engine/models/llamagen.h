/* llamagen.h - LlamaGen's GPT (autoregressive/models/gpt.py upstream), class-conditional.
 *
 * A Llama-style pre-norm decoder over VQ image tokens: RMSNorm (fp32), fused q/k/v
 * projection, 2D RoPE whose condition rows are all zero (so q and k vanish at the class
 * position in every layer), causal attention against the paged KV cache, SwiGLU FFN,
 * final RMSNorm and an untied output head. Position p < cls_token_num holds the class
 * embedding (row num_classes is the null class used for CFG); position
 * cls_token_num + n holds image token n, at grid cell divmod(n, grid).
 *
 * Ownership: llamagen_load borrows the backend and the safetensors file for the
 * model's lifetime (weights are read in place on the CPU); llamagen_free releases what
 * the model allocated, not the file or the backend.
 */
#ifndef TS_LLAMAGEN_H
#define TS_LLAMAGEN_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../kv_cache.h"
#include "../safetensors.h"

typedef struct llamagen_config {
    int dim, n_layer, n_head, n_kv_head, head_dim, ffn_dim;
    int vocab_size;       /* image tokens */
    int num_classes;      /* the class table has num_classes + 1 rows */
    int cls_token_num;    /* 1 for c2i */
    int block_size;       /* image tokens per image = grid * grid */
    int grid;
    float rope_base, norm_eps;
} llamagen_config;

typedef struct llamagen_layer {
    float *attention_norm;   /* [dim] */
    ts_wt wqkv;              /* [3*dim (q, k, v rows), dim]; with GQA [(n_head+2*n_kv)*hd, dim] */
    ts_wt wo;                /* [dim, dim] */
    float *ffn_norm;         /* [dim] */
    ts_wt w1, w3;            /* [ffn, dim] */
    ts_wt w2;                /* [dim, ffn] */
} llamagen_layer;

typedef struct llamagen_model {
    llamagen_config cfg;
    ts_backend *be;
    ts_wt tok_embeddings;    /* [vocab, dim] */
    ts_wt cls_embedding;     /* [num_classes + 1, dim] */
    llamagen_layer *layers;  /* [n_layer] */
    float *norm;             /* [dim] */
    ts_wt output;            /* [vocab, dim] */
    float *rope;             /* backend memory [cls_token_num + block_size][head_dim/2][2] */

    /* Activation scratch (backend memory) for up to cap_tokens rows, cap_seqs sequences. */
    int cap_tokens, cap_seqs;
    float *x, *xn, *qkv, *att, *h1, *h3, *last, *logits;
} llamagen_model;

/* One sequence's part of a forward call: n_new tokens at positions
 * [n_past, n_past + n_new). ids[i] is a class id (0..num_classes) where the position is
 * below cls_token_num, else an image token id. The block table must already cover
 * n_past + n_new positions. */
typedef struct llamagen_seq {
    int32_t n_past;
    int32_t n_new;
    const int32_t *ids;
    const int32_t *block_table;
} llamagen_seq;

/* Reads the "gpt" section of config.json; image_size is the top-level value. */
int llamagen_config_parse(const json_t *gpt, int image_size, int downsample,
                          llamagen_config *cfg, ts_error *err);

/* The RoPE table of upstream's precompute_freqs_cis_2d, on the host:
 * [cls_token_num + grid*grid][head_dim/2][2], condition rows zero. Caller frees. */
float *llamagen_rope_table(const llamagen_config *cfg);

int llamagen_load(ts_backend *be, const llamagen_config *cfg, ts_st_file *file,
                  llamagen_model **out, ts_error *err);
void llamagen_free(llamagen_model *m);   /* NULL-safe */

/* Runs one batched step: appends every sequence's new tokens to the cache and leaves
 * the fp32 logits of each sequence's last new token in backend memory at
 * llamagen_logits(m)[s * vocab], valid until the next forward; when logits (host) is
 * non-NULL they are also copied there. Errors (bad ids or positions):
 * TS_ERR_INVALID, nothing written to the cache. */
int llamagen_forward(llamagen_model *m, ts_kv_cache *kv, const llamagen_seq *seqs,
                     int n_seqs, float *logits, ts_error *err);
const float *llamagen_logits(const llamagen_model *m);

#endif
