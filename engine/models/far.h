/* far.h - FQGAN's factorized autoregressive generator FAR (showlab/FQGAN,
 * autoregressive/models/far_{dual,triple}.py upstream), class-conditional.
 *
 * Every image position carries k = n_sub sub-tokens (2 dual, 3 triple), one per
 * sub-codebook of vocab_size entries. Two networks of LlamaGen blocks (llamagen.h),
 * described here with upstream's 1-based sub-token names:
 *
 *  - the trunk: LlamaGen's GPT over positions with the paged KV cache (2D RoPE with a
 *    zero row at the class position). Position 0 holds the class embedding; position
 *    1 + n the aggregated sub-tokens of image position n:
 *    aggregation_layer(concat(tok_embeddings_1[s_1], ..., tok_embeddings_k[s_k])), a
 *    Linear [dim, k*dim] with bias. Its output h at a position is taken BEFORE the
 *    final norm.
 *  - the head (ar_head.*, head_layers blocks, shared by all positions): a causal
 *    mini-sequence of k slots per position, no paged cache. Slot 0 = h; slot j >= 1 =
 *    the raw row tok_embeddings_j[sub-token j] just sampled. Slot j rotates with row j
 *    of the trunk's RoPE table (0: the zero row, 1: grid (0, 0), 2: grid (0, 1)). Every
 *    slot goes through the shared final norm; slot j's logits (output_{j+1}) give
 *    sub-token j+1.
 *
 * In this API sub-tokens are 0-based: sub-token j (0..k-1) is upstream's j+1, read by
 * tok_embeddings_{j+1} and predicted by output_{j+1} from head slot j.
 *
 * One position of a batch of sequences (the scheduler's FAR step):
 *
 *     far_trunk_forward(m, kv, seqs, n_seqs)          one trunk step, paged KV
 *     for j in 0..k-1:
 *         far_head_step(m, j, j ? picked_{j-1} : NULL) logits of sub-token j, one row
 *                                                      per sequence, at far_logits(m)
 *         sample sub-token j of every image (CFG pairs combined), -> picked_j[row]
 *
 * Head row r is sequence r of the last far_trunk_forward; the head keeps its k slots'
 * q/k/v in the model's scratch (no cache to allocate, reset by every trunk step).
 * Memory: the trunk's KV cache is exactly LlamaGen's geometry (cfg.trunk: n_layer,
 * n_kv_head, head_dim; cls_token_num + block_size - 1 positions per sequence), created
 * by the caller; activations are model scratch (backend memory) grown to the largest
 * call seen and kept: (6 + k) dim + 2 ffn_dim floats per trunk row, plus per sequence
 * (7 + k + 3 k head_layers) dim + 2 ffn_dim + vocab floats for the head.
 *
 * CUDA step graphs: far_trunk_forward begins a backend step (ts_be_step_begin) and
 * head sub-step 0 continues it, so that the sync of sub-token 0's sample ends one
 * recurring step (graph-replayed once two successive positions record the same list).
 * Sub-steps j >= 1 run eagerly: steps of alternating shapes would never match the
 * previous step's list.
 *
 * Ownership as for llamagen.h: far_load borrows the backend and the safetensors file.
 */
#ifndef TS_FAR_H
#define TS_FAR_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../kv_cache.h"
#include "../safetensors.h"
#include "llamagen.h"

#define FAR_MAX_SUB 3
#define FAR_MAX_HEAD_LAYERS 64

typedef struct far_config {
    llamagen_config trunk;   /* LlamaGen's fields; vocab_size is each sub-codebook's size */
    int n_sub;               /* k: 2 (dual) or 3 (triple) */
    int head_layers;         /* blocks of the per-position head */
} far_config;

typedef struct far_model {
    far_config cfg;
    ts_backend *be;
    ts_wt tok_embeddings[FAR_MAX_SUB];   /* [vocab, dim] each */
    ts_wt aggregation;                   /* [dim, k*dim] */
    float *aggregation_bias;             /* [dim] */
    ts_wt cls_embedding;                 /* [num_classes + 1, dim] */
    llamagen_layer *layers;              /* [n_layer] trunk */
    llamagen_layer *head;                /* [head_layers] */
    float *norm;                         /* [dim], every head slot */
    ts_wt output[FAR_MAX_SUB];           /* [vocab, dim] each */
    float *rope;                         /* backend memory, the trunk's table */

    /* Scratch (backend memory unless noted), grown on demand. */
    llamagen_acts act;                   /* trunk rows */
    float *cat;                          /* [act.cap, k*dim] concatenated sub-embeddings */
    int cap_seqs;
    float *hidden;                       /* [cap_seqs, dim] trunk output, before the norm */
    llamagen_acts head_act;              /* [cap_seqs] rows of the current head slot */
    float *head_qkv[FAR_MAX_HEAD_LAYERS];   /* per head layer [k*cap_seqs, 3*dim]: slot j
                                             * of row r at row j*rows + r */
    float *head_att;                     /* [k*cap_seqs, dim] */
    float *logits;                       /* [cap_seqs, vocab] */
    int32_t *head_pos, *head_rows_idx;   /* host: [cap_seqs], [k*cap_seqs] */
    int head_rows;                       /* sequences of the last trunk step (0: none) */
    int head_next;                       /* the head sub-step expected next */
} far_model;

/* One sequence's part of a trunk step: n_new positions [n_past, n_past + n_new).
 * ids holds n_sub entries per position (ids[i*n_sub + j] for new position i): at a
 * class position (below cls_token_num) ids[i*n_sub] is the class id (0..num_classes;
 * num_classes is the null class) and the rest are ignored; at position
 * cls_token_num + n they are sub-tokens 0..k-1 of image position n (as LlamaGen feeds
 * token n there). The block table must already cover n_past + n_new positions. */
typedef struct far_seq {
    int32_t n_past;
    int32_t n_new;
    const int32_t *ids;
    const int32_t *block_table;
} far_seq;

/* Reads an fqgan "gpt" section: LlamaGen's keys plus n_sub (2..3) and head_layers;
 * n_kv_head must equal n_head (the head attends densely). */
int far_config_parse(const json_t *gpt, int image_size, int downsample, far_config *cfg,
                     ts_error *err);

int far_load(ts_backend *be, const far_config *cfg, ts_st_file *file, far_model **out,
             ts_error *err);
void far_free(far_model *m);   /* NULL-safe */

/* One batched trunk step: appends every sequence's new positions to the cache and
 * leaves each sequence's last-row output (before the norm) at far_hidden(m)[s * dim];
 * it also starts a new head position over these n_seqs rows (far_head_step 0 next).
 * Errors (bad ids or positions): TS_ERR_INVALID, nothing written to the cache. */
int far_trunk_forward(far_model *m, ts_kv_cache *kv, const far_seq *seqs, int n_seqs,
                      ts_error *err);

/* Head sub-step j (0..n_sub-1) of the current position, for every row of the last
 * trunk step, in order j = 0, 1, ...: prev (host, one per row) is sub-token j-1 of
 * each row (the one just sampled; the cond row's pick for both rows of a CFG pair), NULL
 * for j = 0. Leaves the fp32 logits of sub-token j at far_logits(m)[r * vocab] (backend
 * memory, valid until the next call), and copies them to logits (host) when non-NULL.
 * Errors: TS_ERR_INVALID (out of order, no trunk step, bad ids), nothing computed. */
int far_head_step(far_model *m, int j, const int32_t *prev, float *logits, ts_error *err);

const float *far_hidden(const far_model *m);
const float *far_logits(const far_model *m);

#endif
