/* t2i.h - LlamaGen text-to-image conditioning: a prompt becomes the caption rows the GPT
 * reads as its text prefix.
 *
 * Upstream (language/t5.py's T5Embedder, autoregressive/sample/sample_t2i.py):
 *   1. the prompt is cleaned (clean_caption twice: engine/text/t5_clean.h);
 *   2. T5's sentencepiece tokenizer with max_length = cls_token_num (120), truncation,
 *      </s> appended (engine/text/spm.h);
 *   3. the T5 encoder's last hidden state (engine/models/t5_encoder.h);
 *   4. left padding: the n valid rows move to the end of the 120, the rest are zeroed
 *      and masked for every row;
 *   5. the GPT's cap_proj on those rows; the CFG branch is cap_proj of the learned null
 *      caption (uncond_embedding) under the same mask, so only its last n rows count.
 * Since padded positions are masked for everyone, the GPT here keeps only the n valid
 * positions (llamagen.h), and this module makes exactly those rows: n rows of the
 * prompt and the last n rows of the null caption, both projected.
 *
 * Ownership: ts_t2i_text (tokenizer, encoder and their file) belongs to the ts_model; a
 * ts_t2i_prompt's rows are backend memory owned by the prompt, freed with
 * ts_t2i_prompt_free on the same model. Engine thread only.
 */
#ifndef TS_T2I_H
#define TS_T2I_H

#include <jansson.h>
#include <stdint.h>

#include "backend.h"
#include "models/t5_encoder.h"
#include "safetensors.h"
#include "text/spm.h"

typedef struct ts_model ts_model;

typedef struct ts_t2i_text {
    ts_spm *spm;          /* the "tokenizer" file of the t5 section (spiece.model) */
    t5_encoder *t5;
    ts_st_file *file;     /* t5.safetensors */
    int max_len;          /* tokens kept, </s> included: the GPT's cls_token_num */
} ts_t2i_text;

/* Loads the "t5" section of a t2i folder: the tokenizer and the encoder, on be. The
 * encoder's d_model must equal caption_dim. */
int ts_t2i_text_load(ts_backend *be, const char *dir, const json_t *t5_sec, int max_len,
                     int caption_dim, ts_t2i_text **out, ts_error *err);
void ts_t2i_text_free(ts_t2i_text *t);   /* NULL-safe */

/* Steps 1 and 2 on the host: ids[max_len] (right-padded with T5's pad id) and the count
 * of valid ones, </s> included (>= 1). TS_ERR_INVALID for text that is not UTF-8 or is
 * too long for the cleaner. */
int ts_t2i_tokenize(const ts_t2i_text *t, const char *prompt, int32_t *ids, int *n_valid,
                    ts_error *err);

/* One prompt, ready for the GPT (llamagen_seq.n_cond / cond_emb). */
typedef struct ts_t2i_prompt {
    int n_text;           /* valid text positions, 1..max_len */
    float *cond;          /* backend [n_text, dim]: cap_proj(T5(prompt)) */
    float *uncond;        /* backend [n_text, dim]: cap_proj(last n_text null rows), or
                             NULL when not asked for */
} ts_t2i_prompt;

/* Runs steps 1-5 for m (a t2i LlamaGen model); with_uncond also makes the CFG rows. */
int ts_t2i_prompt_make(ts_model *m, const char *prompt, int with_uncond, ts_t2i_prompt *out,
                       ts_error *err);
void ts_t2i_prompt_free(ts_model *m, ts_t2i_prompt *p);   /* NULL-safe; zeroes p */

#endif
