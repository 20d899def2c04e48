/* dtype.h - element types of weights on disk and in memory, and scalar conversions.
 *
 * Weights may stay in BF16/F16 in memory; kernels widen them to float as they read.
 * Conversions here are exact (bf16/f16 -> f32) or round-to-nearest-even (f32 -> bf16/f16).
 */
#ifndef TS_DTYPE_H
#define TS_DTYPE_H

#include <stdint.h>
#include <string.h>

typedef enum ts_dtype {
    TS_F32 = 0,
    TS_F16 = 1,
    TS_BF16 = 2,
    TS_I32 = 3,   /* only for fixtures and token tensors, never for weights */
} ts_dtype;

/* Bytes per element. */
static inline size_t ts_dtype_size(ts_dtype t)
{
    return t == TS_F32 || t == TS_I32 ? 4 : 2;
}

/* "F32", "F16", "BF16", "I32": the safetensors spelling. */
const char *ts_dtype_name(ts_dtype t);

static inline float ts_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t ts_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu))   /* NaN stays NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float ts_f16_to_f32(uint16_t h);
uint16_t ts_f32_to_f16(float f);

/* Widens n elements of type t at src into dst (F32, F16 or BF16 source). */
void ts_to_f32(float *dst, const void *src, ts_dtype t, size_t n);

#endif
