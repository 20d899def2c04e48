/* dtype.c - dtype names and half-precision conversions. */
#include "dtype.h"

#include <math.h>

const char *ts_dtype_name(ts_dtype t)
{
    switch (t) {
    case TS_F32: return "F32";
    case TS_F16: return "F16";
    case TS_BF16: return "BF16";
    case TS_I32: return "I32";
    }
    return "?";
}

float ts_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: value = man * 2^-24 */
            float f = ldexpf((float)man, -24);
            memcpy(&u, &f, 4);
            u |= sign;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ts_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;          /* rounds to infinity */
    if (a < 6.103515625e-05f) {                        /* subnormal or zero */
        return sign | (uint16_t)lrintf(a * 16777216.0f);  /* a / 2^-24, nearest-even */
    }
    uint32_t exp = ((u >> 23) & 0xff) - 112;
    uint32_t man = u & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;
}

void ts_to_f32(float *dst, const void *src, ts_dtype t, size_t n)
{
    const uint16_t *h = src;
    switch (t) {
    case TS_F32: memcpy(dst, src, n * 4); break;
    case TS_BF16: for (size_t i = 0; i < n; i++) dst[i] = ts_bf16_to_f32(h[i]); break;
    case TS_F16: for (size_t i = 0; i < n; i++) dst[i] = ts_f16_to_f32(h[i]); break;
    case TS_I32: memset(dst, 0, n * 4); break; /* callers never pass I32 */
    }
}
