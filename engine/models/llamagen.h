/* llamagen.h - LlamaGen's GPT (autoregressive/models/gpt.py upstream), class- or
 * text-conditional.
 *
 * A Llama-style pre-norm decoder over VQ image tokens: RMSNorm (fp32), fused q/k/v
 * projection, 2D RoPE whose condition rows are all zero (so q and k vanish at the class
 * position in every layer), causal attention against the paged KV cache, SwiGLU FFN,
 * final RMSNorm and an untied output head. Position p < cls_token_num holds the class
 * embedding (row num_classes is the null class used for CFG); position
 * cls_token_num + n holds image token n, at grid cell divmod(n, grid).
 *
 * Text-to-image (model_type "t2i"): the condition is up to cls_token_num (120) rows of
 * T5 features, each through cap_proj (fc1, tanh GELU, fc2); the null caption for CFG is
 * the uncond_embedding buffer through the same projection. Upstream left-pads the
 * prompt to 120 positions and masks the padded columns for every row; since no other row
 * ever sees a padded position, a sequence here holds only its n_cond valid text rows
 * (positions [0, n_cond)), then image token n at position n_cond + n, whose rotary row
 * is still cls_token_num + n: the same attention, over fewer positions.
 *
 * The block stack (llamagen_blocks, with paged or dense attention), its loader, the
 * step plan and the activation scratch are exported for FQGAN's FAR (far.h), whose
 * trunk is this GPT with another input embedding and whose per-position head is a
 * second, small stack of the same blocks.
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
    int num_classes;      /* c2i: the class table has num_classes + 1 rows; t2i: 0 */
    int cls_token_num;    /* 1 for c2i; t2i: the most text positions (120) */
    int t2i;              /* model_type "t2i": caption conditioning */
    int caption_dim;      /* t2i: the text features' width (T5's d_model, 2048) */
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

/* Activation scratch of the block stack (backend memory) for up to `cap` rows: the
 * residual stream x [cap, dim] and the temporaries of one block. */
typedef struct llamagen_acts {
    int cap;
    float *x, *xn, *qkv, *att, *h1, *h3;
} llamagen_acts;

/* How the rows of one llamagen_blocks call attend (every layer alike).
 *
 * Paged (kv non-NULL; the GPT trunks): row i's k/v go to cache slot slot[i] of each
 * layer, then each of the n_seqs sequences attends over its cached positions
 * (ts_be_attention, contexts of at most max_ctx).
 *
 * Dense (kv NULL; FAR's per-position head): no cache. Layer l's q/k/v rows live in a
 * caller-owned store, store[l] [*, qkv_dim] with qkv_dim = 3*dim (n_kv_head must equal
 * n_head); this call's M new rows are written straight into rows [row0, row0 + M) of it
 * (the projection's output), rows written by earlier calls stay as they are. Attention
 * is ts_be_attention_dense over n_seq causal sequences of seq_len positions, position p
 * of sequence s at store row rows[s * seq_len + p]; its output goes to att_store
 * [*, dim] at the same rows, and the new rows [row0, row0 + M) continue the block. */
typedef struct llamagen_attn {
    const ts_kv_cache *kv;
    const int32_t *slot;
    const ts_attn_seq *seqs;
    int n_seqs, max_ctx;

    float *const *store;
    float *att_store;
    int row0;
    const int32_t *rows;
    int n_seq, seq_len;
} llamagen_attn;

typedef struct llamagen_model {
    llamagen_config cfg;
    ts_backend *be;
    ts_wt tok_embeddings;    /* [vocab, dim] */
    ts_wt cls_embedding;     /* c2i: [num_classes + 1, dim] */
    ts_wt cap_fc1, cap_fc2;  /* t2i: [dim, caption_dim], [dim, dim] */
    float *uncond;           /* t2i: backend memory [cls_token_num, caption_dim] */
    llamagen_layer *layers;  /* [n_layer] */
    float *norm;             /* [dim] */
    ts_wt output;            /* [vocab, dim] */
    float *rope;             /* backend memory [cls_token_num + block_size][head_dim/2][2] */

    /* Activation scratch (backend memory) for up to act.cap rows, cap_seqs sequences. */
    llamagen_acts act;
    int cap_seqs;
    float *last, *logits;
} llamagen_model;

/* One sequence's part of a forward call: n_new tokens at positions
 * [n_past, n_past + n_new). Positions below n_cond are the condition: for c2i a class
 * id (0..num_classes) in ids[i]; for t2i row p of cond_emb (ids[i] not read). Later
 * positions are image tokens, ids[i] their ids. The block table must already cover
 * n_past + n_new positions. */
typedef struct llamagen_seq {
    int32_t n_past;
    int32_t n_new;
    const int32_t *ids;
    const int32_t *block_table;
    int32_t n_cond;          /* condition positions; 0 means cls_token_num (c2i) */
    const float *cond_emb;   /* t2i: backend memory [n_cond, dim] (llamagen_caption) */
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

/* t2i: out[n, dim] = cap_proj(feats[n, caption_dim]), both backend memory. The null
 * caption of a prompt with n text tokens is cap_proj of the last n rows of m->uncond
 * (upstream masks the others away): feats = llamagen_null_caption(m, n). */
int llamagen_caption(llamagen_model *m, const float *feats, int n, float *out, ts_error *err);
const float *llamagen_null_caption(const llamagen_model *m, int n);

/* ---- the pieces llamagen_forward is made of, shared with FAR (far.h) ---- */

/* Loads n blocks named <prefix>.{i}.attention_norm.weight ... (LlamaGen's block names,
 * prefix "layers" for the GPT) into *out (calloc'ed; free with llamagen_layers_free,
 * also after a failure). */
int llamagen_layers_load(ts_backend *be, ts_st_file *f, const llamagen_config *c,
                         const char *prefix, int n, llamagen_layer **out, ts_error *err);
void llamagen_layers_free(ts_backend *be, llamagen_layer *layers, int n);   /* NULL-safe */

/* The RoPE table of c uploaded to backend memory (NULL on OOM; ts_be_free it). */
float *llamagen_rope_upload(ts_backend *be, const llamagen_config *c);

/* Grows a to hold `rows` rows of c's sizes (keeps it when big enough). */
int llamagen_acts_reserve(ts_backend *be, const llamagen_config *c, llamagen_acts *a, int rows,
                          ts_error *err);
void llamagen_acts_free(ts_backend *be, llamagen_acts *a);

/* Runs layers[0..n_layer) in place over the M rows of a->x ([M, dim], already embedded)
 * at rotary rows pos[i] of rope ([*, head_dim/2, 2], backend memory): per layer RMSNorm,
 * qkv projection, RoPE on q and k, attention as att says, output projection, residual,
 * RMSNorm, SwiGLU FFN, residual. c gives the sizes (dim, heads, ffn_dim, norm_eps).
 * Backend ops only; nothing is validated here. */
void llamagen_blocks(ts_backend *be, const llamagen_config *c, const llamagen_layer *layers,
                     int n_layer, llamagen_acts *a, int M, const float *rope,
                     const int32_t *pos, const llamagen_attn *att);

/* The host-side plan of one paged step over n_seqs sequences (ids are not read): per
 * row its rotary row and cache slot, per sequence its attention slice and last row.
 * Validates positions against [0, n_cond + block_size), n_cond against
 * [1, cls_token_num], and the total row count (TS_ERR_INVALID naming the sequence).
 * Free with llamagen_plan_free. */
typedef struct llamagen_plan {
    int rows;                  /* M: new tokens over all sequences */
    int32_t *pos, *slot;       /* [M]: rotary row (a condition row, or cls_token_num +
                                  the image token's index), cache slot */
    int32_t *last;             /* [n_seqs] the last row of each sequence */
    ts_attn_seq *att;          /* [n_seqs] */
} llamagen_plan;
int llamagen_plan_make(const llamagen_config *c, const ts_kv_cache *kv, const llamagen_seq *seqs,
                       int n_seqs, llamagen_plan *p, ts_error *err);
void llamagen_plan_free(llamagen_plan *p);

#endif
