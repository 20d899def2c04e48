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
};

/* A uniform double in [0, 1) with 53 random bits for (seed, image, step, stream). */
double ts_rng_uniform(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream);

/* Standard Gumbel noise -log(-log(u)) in float for element `index` of a stream:
 * u = ((w >> 8) + 0.5) / 2^24 in (0, 1), w = word index % 4 of
 * Philox({image, step, stream, index / 4}, seed). A device backend computes the same
 * integers; its logf may differ from the host's in the last bit. */
float ts_rng_gumbel_f(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream,
                      uint32_t index);

#endif
