/* masked.c - see masked.h. The float32 arithmetic follows the order upstream's torch
 * code evaluates it in, so that schedules and cut-offs agree bit for bit. */
#include "masked.h"

#include <math.h>
#include <stdlib.h>

#include "philox.h"

static double ratio(const ts_mask_params *p, int step)
{
    return (double)(step + 1) / (double)p->steps;
}

float ts_mask_guidance(const ts_mask_params *p, int step)
{
    float r = (float)ratio(p, step);                 /* ratio ** scale_pow (1.0), float32 */
    float c = cosf(r * (float)M_PI);
    float ramp = ((1.0f - c) * 1.0f) / 2.0f;         /* (1 - cos) * 1/2 */
    return (float)((double)p->guidance - 1.0) * ramp + 1.0f;
}

float ts_mask_softmax_temp(const ts_mask_params *p, int step)
{
    return (float)(0.5 + 0.8 * (1.0 - ratio(p, step)));
}

float ts_mask_noise_temp(const ts_mask_params *p, int step)
{
    return (float)((double)p->randomize_temperature * (1.0 - ratio(p, step)));
}

int ts_mask_remask_count(int n_tokens, int steps, int step, int n_masked)
{
    ts_mask_params p = {.steps = steps};
    float frac = acosf((float)ratio(&p, step)) / (float)(M_PI * 0.5);   /* arccos schedule */
    float len = floorf((float)n_tokens * frac);
    float most = (float)(n_masked - 1);
    if (len > most) len = most;
    if (len < 1.0f) len = 1.0f;
    return (int)len;
}

ts_masked_row ts_mask_row(const ts_mask_params *p, int step, const float *cond,
                          const float *uncond, uint64_t image_seed)
{
    ts_masked_row r = {0};
    r.cond = cond;
    r.uncond = uncond;
    r.guidance = ts_mask_guidance(p, step);
    r.softmax_temp = ts_mask_softmax_temp(p, step);
    r.noise_temp = ts_mask_noise_temp(p, step);
    r.seed = image_seed;
    r.image = 0;   /* the image is in the seed, as on the autoregressive path */
    r.step = (uint32_t)step;
    return r;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int ts_mask_update(const ts_mask_params *p, int step, int n_tokens, int mask_id,
                   int32_t *ids, const int32_t *picks, const float *logit,
                   uint64_t image_seed, int32_t *pred)
{
    int n_masked = 0;
    for (int i = 0; i < n_tokens; i++) n_masked += ids[i] == mask_id;
    float tau = ts_mask_noise_temp(p, step);
    float *conf = malloc((size_t)n_tokens * 2 * sizeof *conf);
    if (!conf) abort();   /* a few hundred bytes */
    float *sorted = conf + n_tokens;
    for (int i = 0; i < n_tokens; i++) {
        int open = ids[i] == mask_id;
        if (pred) pred[i] = open ? picks[i] : ids[i];
        if (!open) {
            conf[i] = INFINITY;
        } else {
            conf[i] = logit[i];
            if (tau != 0.0f)
                conf[i] += tau * ts_rng_gumbel_f(image_seed, 0, (uint32_t)step, TS_RNG_MASK_CONF,
                                                 (uint32_t)i);
        }
        sorted[i] = conf[i];
    }
    int left = 0;
    if (step == p->steps - 1) {
        for (int i = 0; i < n_tokens; i++)
            if (ids[i] == mask_id) ids[i] = picks[i];
    } else {
        qsort(sorted, (size_t)n_tokens, sizeof *sorted, cmp_float);
        float cut = sorted[ts_mask_remask_count(n_tokens, p->steps, step, n_masked) - 1];
        for (int i = 0; i < n_tokens; i++) {
            if (conf[i] <= cut) {
                ids[i] = mask_id;
                left++;
            } else if (ids[i] == mask_id) {
                ids[i] = picks[i];
            }
        }
    }
    free(conf);
    return left;
}
