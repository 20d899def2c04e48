/* safetensors.h - strict, memory-mapped reader for .safetensors files.
 *
 * The file is mapped read-only; tensors point into the mapping (zero copy), so a
 * ts_st_file must outlive every pointer taken from it. Opening validates the whole
 * file before anything is returned: the 8-byte header length, the JSON header, each
 * entry's dtype (F32, F16, BF16, I32), shape and data_offsets, that every tensor lies
 * inside the data section, that byte counts equal shape x dtype size, and that no two
 * tensors overlap. Anything else is refused with a message naming the tensor.
 *
 * Nothing here knows about models; model loaders ask for tensors by name with the
 * exact shape and the dtypes they accept (ts_st_get, which also requires the data to be
 * aligned to its element size), and finally call
 * ts_st_check_all_used so that a file with tensors nobody asked for is refused too.
 */
#ifndef TS_SAFETENSORS_H
#define TS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#define TS_ST_MAX_DIMS 8
#define TS_ST_MAX_HEADER (100u << 20)   /* refuse headers above 100 MiB */

typedef struct ts_st_tensor {
    char *name;                       /* owned by the file */
    ts_dtype dtype;
    int ndim;
    int64_t shape[TS_ST_MAX_DIMS];
    const void *data;                 /* points into the mapping */
    size_t nbytes;
    int used;                         /* set by ts_st_get */
} ts_st_tensor;

typedef struct ts_st_file ts_st_file;

/* Maps and validates path. On success *out owns the mapping; free with ts_st_close. */
int ts_st_open(const char *path, ts_st_file **out, ts_error *err);

/* Same checks over a caller-owned buffer (used by tests and fuzzers); buf must
 * outlive the returned file, which does not free it. */
int ts_st_open_buffer(const void *buf, size_t len, const char *label,
                      ts_st_file **out, ts_error *err);

void ts_st_close(ts_st_file *f);   /* NULL-safe */

int ts_st_count(const ts_st_file *f);
const ts_st_tensor *ts_st_at(const ts_st_file *f, int i);
const ts_st_tensor *ts_st_find(const ts_st_file *f, const char *name);  /* NULL if absent */
const char *ts_st_label(const ts_st_file *f);   /* path or label, for messages */

/* Bit set of accepted dtypes for ts_st_get. */
#define TS_ST_FLOATS ((1u << TS_F32) | (1u << TS_F16) | (1u << TS_BF16))
#define TS_ST_ONLY(t) (1u << (t))

/* Looks up name and checks that its dtype is in `dtypes` and its shape is exactly
 * shape[0..ndim). Marks it used. Errors: TS_ERR_MISSING, TS_ERR_DTYPE, TS_ERR_SHAPE,
 * each naming the file, the tensor, the expected and the actual value. */
int ts_st_get(ts_st_file *f, const char *name, unsigned dtypes, int ndim,
              const int64_t *shape, const ts_st_tensor **out, ts_error *err);

/* TS_ERR_FORMAT naming the first tensor no ts_st_get asked for. */
int ts_st_check_all_used(const ts_st_file *f, ts_error *err);

#endif
