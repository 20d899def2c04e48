/* sampler.h - next-token selection exactly in upstream's order
 * (autoregressive/models/generate.py): CFG combine on fp32 logits, divide by
 * max(temperature, 1e-5), top-k (every logit >= the k-th largest survives, so ties
 * survive), top-p (HF rule: sorted descending, drop tokens whose cumulative
 * probability before them already exceeds top_p; the first is always kept), softmax,
 * then one multinomial draw from a caller-supplied uniform number.
 *
 * Ties in top-p's sort are broken by token id (lowest first), where torch's sort
 * leaves the order unspecified.
 */
#ifndef TS_SAMPLER_H
#define TS_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct ts_sample_params {
    float temperature;   /* > 0 in effect: values below 1e-5 act as 1e-5 */
    int top_k;           /* 0 = off */
    float top_p;         /* 1.0 = off */
} ts_sample_params;

/* Scratch for ts_sample over a vocabulary of n (the caller owns it). */
typedef struct ts_sampler {
    int n;
    float *work;       /* [n] */
    int32_t *idx;      /* [n] */
} ts_sampler;

int ts_sampler_init(ts_sampler *s, int n);   /* 0 on success, -1 on OOM */
void ts_sampler_free(ts_sampler *s);

/* out[i] = uncond[i] + (cond[i] - uncond[i]) * scale  (may alias cond). */
void ts_cfg_combine(float *out, const float *cond, const float *uncond, int n, float scale);

/* Turns logits (modified in place) into probabilities after temperature, top-k and
 * top-p; filtered entries become 0. */
void ts_sample_probs(ts_sampler *s, float *logits, const ts_sample_params *p);

/* The token for probabilities probs and a uniform u in [0, 1): the first index whose
 * cumulative probability exceeds u * total. */
int ts_sample_draw(const float *probs, int n, double u);

/* ts_sample_probs then ts_sample_draw. */
int ts_sample(ts_sampler *s, float *logits, const ts_sample_params *p, double u);

/* One class-conditional request's generation settings (generate.h's loops, the
 * scheduler, a model's defaults). */
typedef struct ts_gen_params {
    float cfg_scale;        /* CFG only when > 1.0, as upstream */
    float cfg_interval;     /* -1: CFG on every step; else only decode steps i <= it */
    ts_sample_params sample;
    uint64_t seed;
} ts_gen_params;

#endif
