/* generate.h - class-conditional LlamaGen generation for a fixed set of images,
 * exactly as upstream's generate(): one prefill step on the class (and null class)
 * embedding, then block_size - 1 single-token decode steps; with cfg_scale > 1 every
 * image is a [cond, uncond] pair sampled from combined logits, both rows fed the
 * same token.
 *
 * This is the whole-batch driver the CLI uses; the server's scheduler runs the same
 * per-step logic (ts_gen_pick_token) with requests joining and leaving between steps.
 */
#ifndef TS_GENERATE_H
#define TS_GENERATE_H

#include <stdint.h>

#include "model.h"
#include "sampler.h"

typedef struct ts_gen_params {
    float cfg_scale;        /* CFG only when > 1.0, as upstream */
    float cfg_interval;     /* -1: CFG on every step; else only decode steps i <= it */
    ts_sample_params sample;
    uint64_t seed;
} ts_gen_params;

/* Called after each step with the step count done so far (1..n_steps). */
typedef void (*ts_gen_progress_fn)(void *ctx, int step, int n_steps);

/* Whether CFG applies at token index t (0 = the prefill's token). */
int ts_gen_cfg_active(const ts_gen_params *p, int t);

/* Combines (when cfg) and samples token t of image `image` from fp32 logits; cond is
 * modified. uncond may be NULL when CFG is off for the request. */
int ts_gen_pick_token(ts_sampler *s, const ts_gen_params *p, float *cond, const float *uncond,
                      uint32_t image, int t);

/* Generates n images of classes[i] into tokens[n][block_size] (raster order). Image i
 * draws its randomness from (seed, i, t), so it does not depend on n. */
int ts_generate_c2i(ts_model *m, const ts_gen_params *p, const int32_t *classes, int n,
                    int32_t *tokens, ts_gen_progress_fn progress, void *progress_ctx,
                    ts_error *err);

#endif
