/* fuzz_safetensors.c - the safetensors reader (engine/safetensors.h) on arbitrary files.
 *
 * Each input is opened twice: from memory (ts_st_open_buffer) and as a file
 * (ts_st_open on a memfd, which maps it). Beyond "no crash" it asserts:
 *   - both opens agree (same result code, same tensors);
 *   - a refusal carries a non-empty message and an error code from the table;
 *   - every tensor that loads has a unique non-empty name that ts_st_find finds, 0-8 dims,
 *     nbytes = product of its shape x its dtype's size, and lies inside the data section
 *     after the header; no two non-empty tensors share a byte;
 *   - ts_st_get accepts each tensor with its own dtype and shape (when aligned), refuses
 *     another dtype (TS_ERR_DTYPE) and another shape (TS_ERR_SHAPE) without marking it
 *     used, and refuses a missing name (TS_ERR_MISSING); ts_st_check_all_used refuses
 *     until every tensor has been asked for.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"
#include "fuzz_util.h"

static int span_cmp(const void *a, const void *b)
{
    const ts_st_tensor *x = *(ts_st_tensor *const *)a, *y = *(ts_st_tensor *const *)b;
    const uint8_t *px = x->data, *py = y->data;
    return px < py ? -1 : px > py ? 1 : 0;
}

static void check_file(ts_st_file *f, const uint8_t *base, size_t len)
{
    int n = ts_st_count(f);
    FZ_CHECK(n >= 0, "count %d", n);
    FZ_CHECK(len >= 8, "a file of %zu bytes opened", len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | base[i];
    FZ_CHECK(hlen >= 2 && hlen <= len - 8, "header length %llu of %zu", (unsigned long long)hlen,
             len);
    const uint8_t *data = base + 8 + hlen, *end = base + len;
    const ts_st_tensor **nonempty = calloc((size_t)n + 1, sizeof *nonempty);
    FZ_CHECK(nonempty != NULL, "out of memory");
    int n_nonempty = 0;
    for (int i = 0; i < n; i++) {
        const ts_st_tensor *t = ts_st_at(f, i);
        FZ_CHECK(t && t->name && t->name[0], "tensor %d has no name", i);
        FZ_CHECK(ts_st_find(f, t->name) == t, "find('%s') is another tensor", t->name);
        FZ_CHECK(t->ndim >= 0 && t->ndim <= TS_ST_MAX_DIMS, "ndim %d", t->ndim);
        FZ_CHECK(t->dtype == TS_F32 || t->dtype == TS_F16 || t->dtype == TS_BF16 ||
                 t->dtype == TS_I32, "dtype %d", (int)t->dtype);
        FZ_CHECK(!t->used, "'%s' used before any get", t->name);
        /* The byte count in 128 bits, saturated past the file size: it cannot overflow. */
        int zero = 0;
        for (int d = 0; d < t->ndim; d++) {
            FZ_CHECK(t->shape[d] >= 0, "'%s' dim %d is %lld", t->name, d, (long long)t->shape[d]);
            zero |= t->shape[d] == 0;
        }
        unsigned __int128 need = zero ? 0 : ts_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim && need; d++) {
            need *= (unsigned __int128)t->shape[d];
            if (need > len) need = (unsigned __int128)len + 1;
        }
        FZ_CHECK(need == t->nbytes, "'%s': nbytes %zu", t->name, t->nbytes);
        const uint8_t *p = t->data;
        FZ_CHECK(p >= data && p <= end && t->nbytes <= (size_t)(end - p),
                 "'%s' lies outside the data section", t->name);
        if (t->nbytes) nonempty[n_nonempty++] = t;
    }
    qsort(nonempty, (size_t)n_nonempty, sizeof *nonempty, span_cmp);
    for (int i = 1; i < n_nonempty; i++) {
        const uint8_t *prev_end = (const uint8_t *)nonempty[i - 1]->data + nonempty[i - 1]->nbytes;
        FZ_CHECK((const uint8_t *)nonempty[i]->data >= prev_end, "'%s' and '%s' overlap",
                 nonempty[i - 1]->name, nonempty[i]->name);
    }
    free(nonempty);

    ts_error err;
    FZ_CHECK(ts_st_get(f, "\x01no such tensor", TS_ST_FLOATS | TS_ST_ONLY(TS_I32), 0, NULL,
                       NULL, &err) == TS_ERR_MISSING, "a missing name was found");
    for (int i = 0; i < n; i++) {
        const ts_st_tensor *t = ts_st_at(f, i), *got = NULL;
        unsigned other = (TS_ST_FLOATS | TS_ST_ONLY(TS_I32)) & ~TS_ST_ONLY(t->dtype);
        FZ_CHECK(ts_st_get(f, t->name, other, t->ndim, t->shape, &got, &err) == TS_ERR_DTYPE &&
                 !got && !t->used, "'%s': another dtype was accepted", t->name);
        int64_t wrong[TS_ST_MAX_DIMS + 1];
        memcpy(wrong, t->shape, sizeof t->shape);
        wrong[TS_ST_MAX_DIMS] = 1;
        if (t->ndim > 0) {
            wrong[t->ndim - 1] ^= 1;
            FZ_CHECK(ts_st_get(f, t->name, TS_ST_ONLY(t->dtype), t->ndim, wrong, &got, &err) ==
                     TS_ERR_SHAPE && !t->used, "'%s': another shape was accepted", t->name);
            wrong[t->ndim - 1] ^= 1;
        }
        if (t->ndim < TS_ST_MAX_DIMS)
            FZ_CHECK(ts_st_get(f, t->name, TS_ST_ONLY(t->dtype), t->ndim + 1, wrong, &got,
                               &err) == TS_ERR_SHAPE, "'%s': one more dim was accepted", t->name);
        if (i == 0 && n > 1 && ts_st_check_all_used(f, &err) != TS_ERR_FORMAT)
            FZ_CHECK(0, "check_all_used passed with unused tensors");
        int rc = ts_st_get(f, t->name, TS_ST_FLOATS | TS_ST_ONLY(TS_I32), t->ndim, t->shape,
                           &got, &err);
        int aligned = (uintptr_t)t->data % ts_dtype_size(t->dtype) == 0;
        FZ_CHECK(aligned ? rc == TS_OK && got == t && t->used : rc == TS_ERR_FORMAT && !got,
                 "'%s': get with its own shape gave %d: %s", t->name, rc, err.msg);
        if (!aligned) return;   /* check_all_used would name this tensor */
    }
    FZ_CHECK(ts_st_check_all_used(f, &err) == TS_OK, "all used, but: %s", err.msg);
}

static void check_refusal(int rc, const ts_error *err)
{
    FZ_CHECK(rc <= TS_ERR_IO && rc >= TS_ERR_INTERNAL, "rc %d", rc);
    FZ_CHECK(err->code == rc && err->msg[0], "rc %d, err.code %d, message '%s'", rc, err->code,
             err->msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ts_st_file *fb = NULL, *fm = NULL;
    ts_error eb = {0}, em = {0};
    int rb = ts_st_open_buffer(size ? data : (const uint8_t *)"", size, "fuzz", &fb, &eb);
    if (rb == TS_OK) check_file(fb, data, size);
    else check_refusal(rb, &eb);

    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    int rm = ts_st_open(path, &fm, &em);
    close(fd);
    if (rm == TS_OK) {
        FZ_CHECK(rb == TS_OK, "the file opened, the buffer did not: %s", eb.msg);
        FZ_CHECK(ts_st_count(fm) == ts_st_count(fb), "counts differ");
        for (int i = 0; i < ts_st_count(fm); i++) {
            const ts_st_tensor *a = ts_st_at(fb, i), *b = ts_st_at(fm, i);
            FZ_CHECK(strcmp(a->name, b->name) == 0 && a->nbytes == b->nbytes &&
                     a->dtype == b->dtype && a->ndim == b->ndim &&
                     memcmp(a->shape, b->shape, sizeof a->shape) == 0 &&
                     memcmp(a->data, b->data, a->nbytes) == 0, "tensor %d differs", i);
        }
    } else {
        check_refusal(rm, &em);
        FZ_CHECK(rb == rm, "buffer %d (%s), file %d (%s)", rb, eb.msg, rm, em.msg);
    }
    ts_st_close(fb);
    ts_st_close(fm);
    return 0;
}
