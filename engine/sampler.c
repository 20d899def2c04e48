/* sampler.c - see sampler.h. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int ts_sampler_init(ts_sampler *s, int n)
{
    s->n = n;
    s->work = malloc((size_t)n * sizeof *s->work);
    s->idx = malloc((size_t)n * sizeof *s->idx);
    if (!s->work || !s->idx) {
        ts_sampler_free(s);
        return -1;
    }
    return 0;
}

void ts_sampler_free(ts_sampler *s)
{
    free(s->work);
    free(s->idx);
    s->work = NULL;
    s->idx = NULL;
}

void ts_cfg_combine(float *out, const float *cond, const float *uncond, int n, float scale)
{
    for (int i = 0; i < n; i++) out[i] = uncond[i] + (cond[i] - uncond[i]) * scale;
}

/* The k-th largest of v[0..n) (1-based k), by quickselect on a copy in work. */
static float kth_largest(const float *v, int n, int k, float *work)
{
    memcpy(work, v, (size_t)n * sizeof *work);
    int lo = 0, hi = n - 1, target = k - 1;   /* position in descending order */
    while (lo < hi) {
        float pivot = work[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (work[i] > pivot) i++;
            while (work[j] < pivot) j--;
            if (i <= j) {
                float t = work[i];
                work[i] = work[j];
                work[j] = t;
                i++;
                j--;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break;
    }
    return work[target];
}

/* qsort_r order: larger logit first, then lower token id. */
static int by_value_desc(const void *a, const void *b, void *vals)
{
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    float va = ((const float *)vals)[ia], vb = ((const float *)vals)[ib];
    if (va > vb) return -1;
    if (va < vb) return 1;
    return (ia > ib) - (ia < ib);
}

/* softmax over v in place (entries of -inf become 0). */
static void softmax(float *v, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = v[i] > mx ? v[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += (v[i] = expf(v[i] - mx));
    for (int i = 0; i < n; i++) v[i] /= sum;
}

void ts_sample_probs(ts_sampler *s, float *logits, const ts_sample_params *p)
{
    int n = s->n;
    float t = p->temperature > 1e-5f ? p->temperature : 1e-5f;
    for (int i = 0; i < n; i++) logits[i] /= t;
    if (p->top_k > 0) {
        int k = p->top_k < n ? p->top_k : n;
        float kth = kth_largest(logits, n, k, s->work);
        for (int i = 0; i < n; i++)
            if (logits[i] < kth) logits[i] = -INFINITY;
    }
    if (p->top_p < 1.0f) {
        /* Only finite logits can be kept; the rest already have probability 0. */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (logits[i] != -INFINITY) s->idx[m++] = i;
        qsort_r(s->idx, (size_t)m, sizeof *s->idx, by_value_desc, logits);
        for (int j = 0; j < m; j++) s->work[j] = logits[s->idx[j]];
        softmax(s->work, m);
        float cum = 0.0f;
        for (int j = 0; j < m; j++) {
            /* removed[j] = cumsum[j-1] > top_p: the token that crosses stays */
            if (j > 0 && cum > p->top_p) logits[s->idx[j]] = -INFINITY;
            cum += s->work[j];
        }
    }
    softmax(logits, n);
}

int ts_sample_draw(const float *probs, int n, double u)
{
    double total = 0.0;
    for (int i = 0; i < n; i++) total += probs[i];
    double target = u * total, cum = 0.0;
    int last = 0;
    for (int i = 0; i < n; i++) {
        if (probs[i] <= 0.0f) continue;
        cum += probs[i];
        last = i;
        if (cum > target) return i;
    }
    return last;   /* rounding left target at the very top */
}

int ts_sample(ts_sampler *s, float *logits, const ts_sample_params *p, double u)
{
    ts_sample_probs(s, logits, p);
    return ts_sample_draw(logits, s->n, u);
}
