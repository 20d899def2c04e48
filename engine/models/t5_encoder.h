/* t5_encoder.h - the encoder of T5 (Hugging Face's T5EncoderModel), as LlamaGen's
 * text-to-image models use FLAN-T5-XL: prompt token ids -> last_hidden_state.
 *
 * x = shared[ids] (not scaled); n_layer blocks of
 *     x += o(attention(rmsnorm(x) -> q, k, v; logits q.k + relative bias, no 1/sqrt(d_kv)))
 *     x += wo(ff(rmsnorm(x)))     ff: act(wi_0 x) * wi_1 x (gated) or act(wi x)
 * then the final rmsnorm. The norms are T5's (RMS without mean or bias, eps norm_eps).
 * The relative position bias is one table [rel_buckets][n_head] (layer 0's only; every
 * layer adds the same bias), indexed by t5_relative_bucket(key - query).
 *
 * Padding. Sequences are right-padded: row i holds lens[i] tokens, then padding. As
 * HF's attention_mask, padded keys get no weight from any query; padded queries are
 * computed like the others. A valid row's output therefore depends only on the valid
 * tokens of its own sequence, not on how much padding follows, so t5_encoder_forward
 * runs the batch padded to max(lens) instead of to T (a 120-token context with short
 * prompts costs what the prompts cost) and gives the same valid rows, and a prompt
 * gives the same rows alone or in any batch (CPU: bit for bit up to products of 256
 * rows, see backend_cpu.c; above that sgemm's rounding, ~1e-7 relative).
 *
 * Ownership as clip_text.h: the backend and the safetensors file are borrowed and must
 * outlive the model (the CPU backend reads the weights in place). Not thread-safe: one
 * engine thread runs it (the bias table is cached in the model).
 */
#ifndef TS_T5_ENCODER_H
#define TS_T5_ENCODER_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../safetensors.h"

typedef struct t5_config {
    int vocab_size;         /* rows of shared.weight */
    int d_model, d_kv, d_ff;
    int n_layer, n_head;    /* inner width n_head * d_kv need not equal d_model */
    int rel_buckets;        /* relative_attention_num_buckets (both directions) */
    int rel_max_distance;   /* relative_attention_max_distance */
    float norm_eps;         /* layer_norm_epsilon */
    ts_act ff_act;          /* gelu_tanh (FLAN-T5's gated-gelu), gelu, relu or silu */
    int ff_gated;           /* 1: act(wi_0 x) * wi_1 x; 0: act(wi x) */
} t5_config;

typedef struct t5_layer {
    ts_wt q, k, v;          /* [n_head*d_kv, d_model] */
    ts_wt o;                /* [d_model, n_head*d_kv] */
    float *ln_attn;         /* [d_model] layer.0.layer_norm */
    ts_wt wi0, wi1;         /* [d_ff, d_model]: wi_0, wi_1 (gated) or wi alone in wi0 */
    ts_wt wo;               /* [d_model, d_ff] */
    float *ln_ff;           /* [d_model] layer.1.layer_norm */
} t5_layer;

typedef struct t5_encoder {
    t5_config cfg;
    ts_backend *be;
    ts_wt embed;            /* shared.weight [vocab_size, d_model] */
    float *rel_bias;        /* host: relative_attention_bias [rel_buckets][n_head] */
    t5_layer *layers;       /* [n_layer] */
    float *ln_final;        /* [d_model] final_layer_norm */
    float *bias_table;      /* backend: [n_head][bias_T][bias_T], the last length run */
    int bias_T;
} t5_encoder;

/* Reads the "t5" section of config.json (keys in docs/model-format.md); "file" and
 * "tokenizer" are the caller's to read. */
int t5_config_parse(const json_t *sec, t5_config *cfg, ts_error *err);

/* Loads every tensor of f (names and shapes in docs/model-format.md); a missing or
 * misshapen tensor, or one the config does not use, is refused by name. */
int t5_encoder_load(ts_backend *be, const t5_config *cfg, ts_st_file *f, t5_encoder **out,
                    ts_error *err);
void t5_encoder_free(t5_encoder *m);   /* NULL-safe */

/* Encodes n right-padded sequences of T token ids each (host, row-major [n][T]), of
 * which sequence i has lens[i] valid tokens (1 <= lens[i] <= T; HF's attention_mask is
 * lens[i] ones, then zeros). out (backend memory, [n * T, d_model]) gets
 * last_hidden_state: row i * T + p for p < lens[i] is HF's output. Padded rows are
 * computed only up to max(lens) (see the top: they hold what HF gives a batch padded
 * to max(lens)); rows at or past max(lens) are zeros. Ids, including those of padding,
 * must lie in [0, vocab_size). TS_ERR_INVALID for bad arguments, TS_ERR_NOMEM. */
int t5_encoder_forward(t5_encoder *m, const int32_t *ids, const int32_t *lens, int n, int T,
                       float *out, ts_error *err);

/* HF's _relative_position_bucket, bidirectional: the bucket of relative position
 * rel = key position - query position, in [0, num_buckets). Half the buckets for
 * rel > 0; in each half, exact buckets for |rel| < num_buckets / 4, then logarithmic
 * ones up to max_distance, computed in float32 as torch does (so that the truncation
 * lands where torch's does), the last bucket for everything farther. Requires
 * num_buckets >= 4 and max_distance > num_buckets / 4 (t5_config_parse checks). */
int t5_relative_bucket(int rel, int num_buckets, int max_distance);

#endif
