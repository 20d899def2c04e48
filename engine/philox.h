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
enum { TS_RNG_TOKEN = 0 };

/* A uniform double in [0, 1) with 53 random bits for (seed, image, step, stream). */
double ts_rng_uniform(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream);

#endif
