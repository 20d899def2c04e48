/* weights.h - fetching named tensors of a safetensors file with their exact shapes,
 * as backend weights, float vectors in backend memory, or host floats.
 *
 * Each call checks the name, dtype (F32, F16 or BF16) and full shape through
 * ts_st_get, so a wrong file fails naming the tensor. shape is the tensor's shape in
 * the file; for a matrix, n_out x n_in is how the backend sees it (a conv kernel
 * [Cout, Cin, k, k] is n_out = Cout, n_in = Cin*k*k; a [1, N, D] table is N x D).
 */
#ifndef TS_WEIGHTS_H
#define TS_WEIGHTS_H

#include <stdint.h>

#include "../backend.h"
#include "../safetensors.h"

typedef struct ts_wsrc {
    ts_backend *be;
    ts_st_file *f;
} ts_wsrc;

/* Product of shape must equal n_out * n_in. Release with ts_be_weight_release. */
int ts_w_mat(ts_wsrc s, const char *name, int ndim, const int64_t *shape, int64_t n_out,
             int64_t n_in, ts_wt *w, ts_error *err);
/* A float copy in backend memory of the whole tensor (free with ts_be_free). */
int ts_w_vec(ts_wsrc s, const char *name, int ndim, const int64_t *shape, float **out,
             ts_error *err);
/* A malloc'ed float copy on the host (free with free). */
int ts_w_host(ts_wsrc s, const char *name, int ndim, const int64_t *shape, float **out,
              ts_error *err);

/* Shorthands for the common shapes. */
#define TS_SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define TS_NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))

/* A Linear layer: weight [n_out, n_in] and, when bias is non-NULL, bias [n_out]. */
int ts_w_linear(ts_wsrc s, const char *prefix, int64_t n_out, int64_t n_in, ts_wt *w,
                float **bias, ts_error *err);
/* A LayerNorm's weight and bias [n]. */
int ts_w_norm(ts_wsrc s, const char *prefix, int64_t n, float **w, float **b, ts_error *err);

#endif
