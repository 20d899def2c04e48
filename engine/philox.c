/* philox.c - Philox4x32-10 (Salmon et al., SC'11), the standard constants. */
#include "philox.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void ts_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

double ts_rng_uniform(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream)
{
    return ts_rng_uniform_at(seed, image, step, stream, 0);
}

double ts_rng_uniform_at(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream,
                         uint32_t index)
{
    uint32_t ctr[4] = {image, step, stream, index};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t r[4];
    ts_philox4x32(ctr, key, r);
    uint64_t bits = ((uint64_t)r[0] << 21) ^ (r[1] >> 11);   /* 53 bits */
    return (double)(bits & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

float ts_rng_gumbel_f(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream,
                      uint32_t index)
{
    uint32_t ctr[4] = {image, step, stream, index / 4};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t r[4];
    ts_philox4x32(ctr, key, r);
    float u = ((float)(r[index % 4] >> 8) + 0.5f) * (1.0f / 16777216.0f);
    return -logf(-logf(u));
}
