/* masked_model.h - a MaskGen-VQ model folder: CLIP's BPE tokenizer and text tower,
 * the MaskGen generator and the TA-TiTok decoder, loaded together, plus what turns a
 * prompt into the generator's conditioning.
 *
 * Ownership: the bundle owns its files and networks; the backend is borrowed. A
 * ts_mg_prompt owns backend buffers, released with ts_mg_prompt_free.
 */
#ifndef TS_MASKED_MODEL_H
#define TS_MASKED_MODEL_H

#include <jansson.h>
#include <stdint.h>

#include "backend.h"
#include "masked.h"
#include "models/clip_text.h"
#include "models/maskgen.h"
#include "models/titok_decoder.h"
#include "text/clip_tokenizer.h"

typedef struct ts_masked_model {
    ts_backend *be;
    ts_st_file *clip_file, *gen_file, *dec_file;
    ts_clip_tok *bpe;
    clip_text *clip;
    maskgen_model *gen;
    titok_decoder *dec;
    float *null_penult, *null_pooled;   /* CLIP("") for the unconditional branch */
    int image_size;
} ts_masked_model;

/* One image's conditioning: both CFG branches and the decoder's text. */
typedef struct ts_mg_prompt {
    int32_t *ids;             /* host [T]: CLIP token ids */
    float *text;              /* backend [T, width]: ln_final sequence for the decoder */
    maskgen_cond cond, uncond;
} ts_mg_prompt;

/* root is the parsed config.json; dir the folder its files are in. */
int ts_masked_model_load(ts_backend *be, const char *dir, const json_t *root,
                         ts_masked_model **out, ts_error *err);
void ts_masked_model_free(ts_masked_model *m);   /* NULL-safe */

/* Tokenizes and encodes prompt (UTF-8), then builds both branches' conditioning at the
 * given aesthetic score. Errors: TS_ERR_INVALID for text the tokenizer refuses. */
int ts_mg_prompt_make(ts_masked_model *m, const char *prompt, float aesthetic,
                      ts_mg_prompt *out, ts_error *err);
void ts_mg_prompt_free(ts_masked_model *m, ts_mg_prompt *p);   /* NULL-safe members */

/* Seconds spent in each phase of ts_masked_generate. */
typedef struct ts_masked_timing {
    double text_s;      /* tokenizer, CLIP and the per-prompt conditioning */
    double steps_s;     /* the generator's steps */
    double decode_s;    /* TA-TiTok */
} ts_masked_timing;

/* The whole-batch driver the CLI uses: n images, image i of prompts[i] with seed
 * p->seed + i, every image stepped together. tokens [n, N] (host); rgb (optional,
 * host [n, H, W, 3]). progress (optional) after each step; timing (optional). */
int ts_masked_generate(ts_masked_model *m, const ts_mask_params *p, const char *const *prompts,
                       int n, int32_t *tokens, uint8_t *rgb,
                       void (*progress)(void *ctx, int step, int n_steps), void *ctx,
                       ts_masked_timing *timing, ts_error *err);

/* One step for n images at their own steps: ids [n][N] updated, pred [n][N] (optional)
 * gets each image's full prediction. steps[i] is image i's step index. The scheduler
 * and ts_masked_generate share it. */
int ts_masked_step(ts_masked_model *m, const ts_mask_params *const *params,
                   const ts_mg_prompt *const *prompts, const int *steps, const uint64_t *seeds,
                   int n, int32_t *const *ids, int32_t *const *pred, ts_error *err);

#endif
