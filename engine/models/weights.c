/* weights.c - see weights.h. */
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>

static int get(ts_wsrc s, const char *name, int ndim, const int64_t *shape,
               const ts_st_tensor **t, size_t *n, ts_error *err)
{
    int rc = ts_st_get(s.f, name, TS_ST_FLOATS, ndim, shape, t, err);
    if (rc) return rc;
    size_t count = 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
    *n = count;
    return TS_OK;
}

int ts_w_mat(ts_wsrc s, const char *name, int ndim, const int64_t *shape, int64_t n_out,
             int64_t n_in, ts_wt *w, ts_error *err)
{
    const ts_st_tensor *t;
    size_t n;
    int rc = get(s, name, ndim, shape, &t, &n, err);
    if (rc) return rc;
    if (n != (size_t)(n_out * n_in))
        return ts_fail(err, TS_ERR_SHAPE, "%s: %zu elements, expected %lld x %lld", name, n,
                       (long long)n_out, (long long)n_in);
    return ts_be_weight_init(s.be, w, t->data, t->dtype, n_out, n_in, err);
}

int ts_w_vec(ts_wsrc s, const char *name, int ndim, const int64_t *shape, float **out,
             ts_error *err)
{
    const ts_st_tensor *t;
    size_t n;
    int rc = get(s, name, ndim, shape, &t, &n, err);
    if (rc) return rc;
    *out = ts_be_vec_from(s.be, t->data, t->dtype, n);
    return *out ? TS_OK : ts_fail(err, TS_ERR_NOMEM, "out of memory loading %s", name);
}

int ts_w_host(ts_wsrc s, const char *name, int ndim, const int64_t *shape, float **out,
              ts_error *err)
{
    const ts_st_tensor *t;
    size_t n;
    int rc = get(s, name, ndim, shape, &t, &n, err);
    if (rc) return rc;
    *out = malloc((n ? n : 1) * sizeof **out);
    if (!*out) return ts_fail(err, TS_ERR_NOMEM, "out of memory loading %s", name);
    ts_to_f32(*out, t->data, t->dtype, n);
    return TS_OK;
}

int ts_w_linear(ts_wsrc s, const char *prefix, int64_t n_out, int64_t n_in, ts_wt *w,
                float **bias, ts_error *err)
{
    char name[160];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = ts_w_mat(s, name, 2, TS_SHAPE(n_out, n_in), n_out, n_in, w, err);
    if (rc || !bias) return rc;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return ts_w_vec(s, name, 1, TS_SHAPE(n_out), bias, err);
}

int ts_w_norm(ts_wsrc s, const char *prefix, int64_t n, float **w, float **b, ts_error *err)
{
    char name[160];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = ts_w_vec(s, name, 1, TS_SHAPE(n), w, err);
    if (rc) return rc;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return ts_w_vec(s, name, 1, TS_SHAPE(n), b, err);
}
