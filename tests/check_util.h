/* check_util.h - small helpers shared by Tessera's Check suites.
 *
 * Header-only (static inline) so each test binary stays one translation unit plus the
 * engine sources it exercises. Assertion helpers are macros so that failures report the
 * caller's line.
 */
#ifndef TS_CHECK_UTIL_H
#define TS_CHECK_UTIL_H

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/error.h"
#include "engine/safetensors.h"

/* Asserts that a call returned TS_OK, showing the error message when it did not. */
#define ts_ck_ok(rc, err)                                                             \
    do {                                                                              \
        int ts_ck_rc_ = (rc);                                                         \
        ck_assert_msg(ts_ck_rc_ == TS_OK, "expected ok, got %d (%s): %s", ts_ck_rc_,  \
                      ts_strerror(ts_ck_rc_), (err).msg);                             \
    } while (0)

/* Asserts that a call failed with exactly `want`, that the ts_error records the same
 * code, and that its message mentions `needle` (pass "" to skip the message check). */
#define ts_ck_fails(rc, err, want, needle)                                            \
    do {                                                                              \
        int ts_ck_rc_ = (rc), ts_ck_want_ = (want);                                   \
        const char *ts_ck_needle_ = (needle);                                         \
        ck_assert_msg(ts_ck_rc_ == ts_ck_want_,                                       \
                      "returned %d (%s), expected %d (%s); message: %s", ts_ck_rc_,   \
                      ts_strerror(ts_ck_rc_), ts_ck_want_, ts_strerror(ts_ck_want_),  \
                      (err).msg);                                                     \
        ck_assert_msg((err).code == ts_ck_want_, "err.code is %d, expected %d",       \
                      (err).code, ts_ck_want_);                                       \
        ck_assert_msg(strstr((err).msg, ts_ck_needle_) != NULL,                       \
                      "message \"%s\" does not mention \"%s\"", (err).msg,            \
                      ts_ck_needle_);                                                 \
    } while (0)

/* Creates a fresh directory under $TMPDIR (or /tmp) into buf; returns 0 on success.
 * Call it before srunner_run_all so forked tests share it, and remove it afterwards
 * with ts_ck_rmdir: teardown does not run after a failed assertion in fork mode. */
static inline int ts_ck_mkdtemp(char *buf, size_t cap)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    int n = snprintf(buf, cap, "%s/tessera-test-XXXXXX", base);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    return mkdtemp(buf) ? 0 : -1;
}

/* Removes dir and the plain files directly inside it (tests do not nest directories). */
static inline void ts_ck_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Writes len bytes to path, replacing it; returns 0 on success. */
static inline int ts_ck_write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t wrote = len ? fwrite(data, 1, len, fp) : 0;
    int closed = fclose(fp);
    return wrote == len && closed == 0 ? 0 : -1;
}

/* The whole of a file, malloc'ed and NUL-terminated (the NUL is not counted in *len);
 * fails the test when it cannot be read. */
static inline char *ts_ck_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert(buf != NULL);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* The data of a fixture's expected tensor name, checked to hold n values of dtype t. */
static inline const void *ts_ck_expect(const ts_st_file *f, const char *name, ts_dtype t,
                                       size_t n)
{
    const ts_st_tensor *x = ts_st_find(f, name);
    ck_assert_msg(x != NULL, "fixture lacks %s", name);
    ck_assert_int_eq(x->dtype, t);
    ck_assert_uint_eq(x->nbytes, n * ts_dtype_size(t));
    return x->data;
}

/* max |a - b| over max |b|, per row of n */
static inline double ts_ck_row_rel_err(const float *a, const float *b, int n)
{
    double err = 0, scale = 0;
    for (int i = 0; i < n; i++) {
        err = fmax(err, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return err / fmax(scale, 1e-30);
}

/* Runs the suites (fork mode unless CK_FORK says otherwise) and returns a process exit
 * status: 0 when every test passed. The runner takes ownership of the suites. */
static inline int ts_ck_run(Suite **suites, int n)
{
    if (n <= 0)
        return 1;
    SRunner *sr = srunner_create(suites[0]);
    for (int i = 1; i < n; i++)
        srunner_add_suite(sr, suites[i]);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

#endif
