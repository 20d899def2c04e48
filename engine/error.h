/* error.h - Tessera's error codes and the error record every fallible call fills.
 *
 * Codes are negative ints from one X-macro table so that later layers (the HTTP API)
 * can map each to a stable string and status without a second table drifting apart.
 * A function that can fail returns TS_OK (0) or a negative code and, when given a
 * non-NULL ts_error, writes a human-readable message naming what went wrong
 * (for weights: the tensor and the problem).
 */
#ifndef TS_ERROR_H
#define TS_ERROR_H

#include <stddef.h>

/*          name              value  stable string      */
#define TS_ERROR_TABLE(X)                                  \
    X(TS_OK,                  0,   "ok")                   \
    X(TS_ERR_IO,             -1,   "io_error")             \
    X(TS_ERR_FORMAT,         -2,   "bad_format")           \
    X(TS_ERR_SHAPE,          -3,   "shape_mismatch")       \
    X(TS_ERR_DTYPE,          -4,   "dtype_mismatch")       \
    X(TS_ERR_MISSING,        -5,   "missing_tensor")       \
    X(TS_ERR_NOMEM,          -6,   "out_of_memory")        \
    X(TS_ERR_INVALID,        -7,   "invalid_argument")     \
    X(TS_ERR_CONFIG,         -8,   "bad_config")           \
    X(TS_ERR_UNSUPPORTED,    -9,   "unsupported")          \
    X(TS_ERR_INTERNAL,      -10,   "internal_error")

enum {
#define TS_ERROR_ENUM(name, value, str) name = value,
    TS_ERROR_TABLE(TS_ERROR_ENUM)
#undef TS_ERROR_ENUM
};

#define TS_ERROR_MSG_MAX 512

typedef struct ts_error {
    int code;                     /* one of the TS_* codes above */
    char msg[TS_ERROR_MSG_MAX];   /* what went wrong, for people */
} ts_error;

/* The stable string for a code ("shape_mismatch"); "unknown_error" if not in the table. */
const char *ts_strerror(int code);

/* Records code and a printf-style message in err (if non-NULL) and returns code,
 * so callers can write `return ts_fail(err, TS_ERR_SHAPE, "...", ...);`. */
int ts_fail(ts_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err to TS_OK with an empty message (NULL-safe). */
void ts_error_clear(ts_error *err);

#endif
