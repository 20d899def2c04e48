/* philox.h - Philox4x32-10, the counter-based RNG behind every random draw.
 *
 * A draw is a pure function of (key, counter): Tessera keys it by the request seed
 * and counts by (image index, step, stream), so an image's randomness does not
 * depend on what else shares the batch or on the order of steps.
 */
#ifndef TS_PHILOX_H
#define TS_PHILOX_H

#include <stdint.h>

/* out = Philox4x32-10(counter, key). */
void ts_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* Streams: which random quantity a draw is for, the counter's third word. */
enum {
    TS_RNG_TOKEN = 0,        /* autoregressive next-token draw */
    TS_RNG_MASK_TOKEN = 1,   /* masked decoding: Gumbel noise on each logit */
    TS_RNG_MASK_CONF = 2,    /* masked decoding: Gumbel noise on each confidence */
    TS_RNG_SUB_TOKEN = 3,    /* factorized AR (FQGAN's FAR): the draw of sub-token `index`
                              * (0-based) of image position `step`; index is the counter's
                              * fourth word */
};

/* A uniform double in [0, 1) with 53 random bits for (seed, image, step, stream):
 * words 0 and 1 (53 bits) of Philox({image, step, stream, 0}, seed). */
double ts_rng_uniform(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream);
/* The same with `index` as the counter's fourth word (ts_rng_uniform is index 0): FQGAN's
 * sub-token draws use (seed, 0, position, TS_RNG_SUB_TOKEN, sub-token), so LlamaGen's
 * keys (fourth word 0, stream TS_RNG_TOKEN) are unchanged and the two never meet. */
double ts_rng_uniform_at(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream,
                         uint32_t index);

/* Standard Gumbel noise -log(-log(u)) in float for element `index` of a stream:
 * u = ((w >> 8) + 0.5) / 2^24 in (0, 1), w = word index % 4 of
 * Philox({image, step, stream, index / 4}, seed). A device backend computes the same
 * integers; its logf may differ from the host's in the last bit. */
float ts_rng_gumbel_f(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream,
                      uint32_t index);

#endif
