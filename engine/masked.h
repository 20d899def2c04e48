/* masked.h - MaskGen-VQ's sampling schedule, exactly as upstream's MaskGen_VQ.generate
 * (16 steps by default), one image at a time so that the scheduler can step images
 * that started at different times in one batch.
 *
 * Step s (0-based) of S, with r = (s + 1) / S:
 *   guidance   w   = (g - 1) * (1 - cos(pi * r)) / 2 + 1   (float32, as upstream)
 *   logits     l   = (cond + (cond - uncond) * w) / (0.5 + 0.8 * (1 - r))
 *   noise temp tau = randomize_temperature * (1 - r)
 *   pick       argmax_v l[v] + tau * Gumbel            (ts_be_masked_pick)
 *   confidence l[pick] + tau * Gumbel at still-masked positions, +inf at fixed ones
 *   re-mask    the positions whose confidence <= the k-th smallest, k = clamp(floor(N *
 *              acos(r) / (pi/2)), 1, masked - 1); the last step keeps every pick.
 * With randomize_temperature 0 nothing is random. Noise is keyed by (image seed, step,
 * position, token) through Philox, so an image does not depend on its batch.
 *
 * One deliberate difference: upstream takes k from the batch's first row; here every
 * image takes its own (the same number unless confidences tie at the cut-off).
 */
#ifndef TS_MASKED_H
#define TS_MASKED_H

#include <stdint.h>

#include "backend.h"

typedef struct ts_mask_params {
    int steps;
    float guidance;                /* g; 0 or 1: w = 1 ... still the cond + (cond-uncond) form */
    float randomize_temperature;
    float aesthetic;               /* MaskGen's micro-condition (default 6.5) */
    uint64_t seed;                 /* image i of a request uses seed + i */
} ts_mask_params;

float ts_mask_guidance(const ts_mask_params *p, int step);
float ts_mask_softmax_temp(const ts_mask_params *p, int step);
float ts_mask_noise_temp(const ts_mask_params *p, int step);
/* Positions re-masked after step `step` (not the last) when n_masked were masked. */
int ts_mask_remask_count(int n_tokens, int steps, int step, int n_masked);

/* The ts_be_masked_pick row of one image at a step. */
ts_masked_row ts_mask_row(const ts_mask_params *p, int step, const float *cond,
                          const float *uncond, uint64_t image_seed);

/* Applies a step's picks to one image: ids [N] (mask_id where masked) updated in place;
 * pred (optional, [N]) gets the step's full prediction (picks at masked positions,
 * the fixed ids elsewhere), for previews. Returns the number still masked. */
int ts_mask_update(const ts_mask_params *p, int step, int n_tokens, int mask_id,
                   int32_t *ids, const int32_t *picks, const float *logit,
                   uint64_t image_seed, int32_t *pred);

#endif
