/* test_safetensors.c - Check suites for the safetensors reader, error codes and dtypes.
 *
 * Test files are built in memory by a small writer (st_build for well-formed files,
 * st_raw for hand-written headers and lying lengths); the on-disk tests write them into
 * one temp directory that main creates and removes.
 */
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "tests/check_util.h"

static char g_tmpdir[1024];

/* ---------------------------------------------------------------------------------- */
/* Writer helpers                                                                      */

typedef struct st_spec {
    const char *name;
    const char *dtype;       /* written verbatim */
    int ndim;
    int64_t shape[10];
    const void *bytes;
    size_t nbytes;
} st_spec;

typedef struct st_buf {
    uint8_t *data;
    size_t len;
} st_buf;

/* Lays out hlen as the 8-byte little-endian prefix, then hdr_len bytes of hdr, then data.
 * hlen need not match hdr_len, so tests can lie about it. */
static st_buf st_raw(uint64_t hlen, const char *hdr, size_t hdr_len, const void *data,
                     size_t data_len)
{
    st_buf b = { malloc(8 + hdr_len + data_len + 1), 8 + hdr_len + data_len };
    ck_assert_ptr_nonnull(b.data);
    for (int i = 0; i < 8; i++)
        b.data[i] = (uint8_t)(hlen >> (8 * i));
    if (hdr_len)
        memcpy(b.data + 8, hdr, hdr_len);
    if (data_len)
        memcpy(b.data + 8 + hdr_len, data, data_len);
    return b;
}

/* A file with the given header text, padded with spaces to a multiple of 8 (as the
 * reference writer does) so that the data section is 8-byte aligned. */
static st_buf st_header(const char *header, const void *data, size_t data_len)
{
    size_t n = strlen(header);
    size_t padded = (n + 7) / 8 * 8;
    char *h = malloc(padded + 1);
    ck_assert_ptr_nonnull(h);
    memcpy(h, header, n);
    memset(h + n, ' ', padded - n);
    st_buf b = st_raw(padded, h, padded, data, data_len);
    free(h);
    return b;
}

/* A well-formed file holding specs back to back, with optional __metadata__ JSON. */
static st_buf st_build(const st_spec *specs, int n, const char *metadata)
{
    size_t cap = 4096, used = 0, data_len = 0;
    char *h = malloc(cap);
    ck_assert_ptr_nonnull(h);
    used += (size_t)snprintf(h + used, cap - used, "{");
    if (metadata)
        used += (size_t)snprintf(h + used, cap - used, "\"__metadata__\":%s%s", metadata,
                                 n ? "," : "");
    for (int i = 0; i < n; i++) {
        used += (size_t)snprintf(h + used, cap - used, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                 i ? "," : "", specs[i].name, specs[i].dtype);
        for (int d = 0; d < specs[i].ndim; d++)
            used += (size_t)snprintf(h + used, cap - used, "%s%" PRId64, d ? "," : "",
                                     specs[i].shape[d]);
        used += (size_t)snprintf(h + used, cap - used, "],\"data_offsets\":[%zu,%zu]}",
                                 data_len, data_len + specs[i].nbytes);
        data_len += specs[i].nbytes;
        ck_assert_uint_lt(used, cap);
    }
    used += (size_t)snprintf(h + used, cap - used, "}");
    ck_assert_uint_lt(used, cap);

    uint8_t *data = malloc(data_len + 1);
    ck_assert_ptr_nonnull(data);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if (specs[i].nbytes)
            memcpy(data + at, specs[i].bytes, specs[i].nbytes);
        at += specs[i].nbytes;
    }
    st_buf b = st_header(h, data, data_len);
    free(h);
    free(data);
    return b;
}

/* Opens buf in memory and expects refusal with code, mentioning needle; also checks
 * that *out stays NULL and that a NULL ts_error is tolerated. */
#define expect_refused(buf, code, needle)                                           \
    do {                                                                            \
        ts_st_file *f_ = (ts_st_file *)1;                                           \
        ts_error e_;                                                                \
        ts_ck_fails(ts_st_open_buffer((buf).data, (buf).len, "t.safetensors", &f_,  \
                                      &e_), e_, (code), (needle));                  \
        ck_assert_ptr_null(f_);                                                     \
        ck_assert_msg(strncmp(e_.msg, "t.safetensors: ", 15) == 0,                  \
                      "message lacks the file label: %s", e_.msg);                  \
        ck_assert_int_eq(ts_st_open_buffer((buf).data, (buf).len, "t.safetensors",  \
                                           &f_, NULL), (code));                     \
    } while (0)

/* Refusal of a header given as text (padded so that only the header is at fault). */
#define expect_header_refused(header, code, needle)                                 \
    do {                                                                            \
        st_buf b_ = st_header((header), NULL, 0);                                   \
        expect_refused(b_, (code), (needle));                                       \
        free(b_.data);                                                              \
    } while (0)

/* Writes buf into the shared temp dir as name and returns the path (static storage). */
static const char *st_write_tmp(const char *name, const void *data, size_t len)
{
    static char path[2048];
    snprintf(path, sizeof path, "%s/%s", g_tmpdir, name);
    ck_assert_int_eq(ts_ck_write_file(path, data, len), 0);
    return path;
}

/* ---------------------------------------------------------------------------------- */
/* The well-formed sample file                                                         */

static const float k_f32[6] = { 1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f };
static const uint16_t k_f16[4] = { 0x3c00, 0xc000, 0x0001, 0x7bff };   /* 1, -2, 2^-24, 65504 */
static const uint16_t k_bf16[4] = { 0x3f80, 0xc040, 0x4049, 0x8000 }; /* 1, -3, 3.140625, -0 */
static const int32_t k_i32[3] = { -1, 0, 123456 };
static const float k_scalar = 42.0f;

static st_buf sample_file(void)
{
    const st_spec specs[] = {
        { "w.f32", "F32", 2, { 2, 3 }, k_f32, sizeof k_f32 },
        { "w.f16", "F16", 1, { 4 }, k_f16, sizeof k_f16 },
        { "w.bf16", "BF16", 2, { 2, 2 }, k_bf16, sizeof k_bf16 },
        { "tokens", "I32", 1, { 3 }, k_i32, sizeof k_i32 },
        { "scalar", "F32", 0, { 0 }, &k_scalar, sizeof k_scalar },
        { "empty", "F16", 2, { 0, 5 }, NULL, 0 },
    };
    return st_build(specs, 6, "{\"format\":\"pt\",\"note\":\"made by the test\"}");
}

/* Checks every tensor of sample_file, bytes included. */
static void check_sample(const ts_st_file *f)
{
    ck_assert_int_eq(ts_st_count(f), 6);
    const ts_st_tensor *t;

    t = ts_st_find(f, "w.f32");
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->name, "w.f32");
    ck_assert_int_eq(t->dtype, TS_F32);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->nbytes, sizeof k_f32);
    ck_assert_int_eq(t->used, 0);
    float fv[6];
    memcpy(fv, t->data, sizeof fv);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fv[i] == k_f32[i], "w.f32[%d] = %g, wrote %g", i, fv[i], k_f32[i]);

    t = ts_st_find(f, "w.f16");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, TS_F16);
    ck_assert_int_eq(t->ndim, 1);
    ck_assert_int_eq(t->shape[0], 4);
    ck_assert_uint_eq(t->nbytes, 8);
    ck_assert_mem_eq(t->data, k_f16, sizeof k_f16);
    float wide[4];
    ts_to_f32(wide, t->data, TS_F16, 4);
    ck_assert(wide[0] == 1.0f && wide[1] == -2.0f && wide[2] == ldexpf(1.0f, -24)
              && wide[3] == 65504.0f);

    t = ts_st_find(f, "w.bf16");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, TS_BF16);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_uint_eq(t->nbytes, 8);
    ck_assert_mem_eq(t->data, k_bf16, sizeof k_bf16);
    ts_to_f32(wide, t->data, TS_BF16, 4);
    ck_assert(wide[0] == 1.0f && wide[1] == -3.0f && wide[2] == 3.140625f);
    ck_assert(wide[3] == 0.0f && signbit(wide[3]));

    t = ts_st_find(f, "tokens");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, TS_I32);
    int32_t iv[3];
    memcpy(iv, t->data, sizeof iv);
    ck_assert_int_eq(iv[0], -1);
    ck_assert_int_eq(iv[1], 0);
    ck_assert_int_eq(iv[2], 123456);

    t = ts_st_find(f, "scalar");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->nbytes, 4);
    float s;
    memcpy(&s, t->data, 4);
    ck_assert(s == 42.0f);

    t = ts_st_find(f, "empty");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 0);
    ck_assert_int_eq(t->shape[1], 5);
    ck_assert_uint_eq(t->nbytes, 0);

    /* Header order is kept, and __metadata__ is not a tensor. */
    ck_assert_str_eq(ts_st_at(f, 0)->name, "w.f32");
    ck_assert_str_eq(ts_st_at(f, 5)->name, "empty");
    ck_assert_ptr_null(ts_st_at(f, 6));
    ck_assert_ptr_null(ts_st_at(f, -1));
    ck_assert_ptr_null(ts_st_find(f, "__metadata__"));
    ck_assert_ptr_null(ts_st_find(f, "w"));
    ck_assert_ptr_null(ts_st_find(f, ""));
}

/* Opens sample_file from memory; the caller frees both. */
static ts_st_file *open_sample(st_buf *b)
{
    *b = sample_file();
    ts_st_file *f = NULL;
    ts_error err;
    ts_ck_ok(ts_st_open_buffer(b->data, b->len, "gpt.safetensors", &f, &err), err);
    ck_assert_ptr_nonnull(f);
    return f;
}

/* ---------------------------------------------------------------------------------- */
/* Good files                                                                          */

START_TEST(test_good_buffer)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ck_assert_str_eq(ts_st_label(f), "gpt.safetensors");
    check_sample(f);
    /* Tensors point into the caller's buffer, zero copy. */
    const ts_st_tensor *t = ts_st_find(f, "w.f32");
    ck_assert((const uint8_t *)t->data > b.data && (const uint8_t *)t->data < b.data + b.len);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_good_file_on_disk)
{
    st_buf b = sample_file();
    const char *path = st_write_tmp("good.safetensors", b.data, b.len);
    free(b.data);
    ts_st_file *f = NULL;
    ts_error err;
    ts_ck_ok(ts_st_open(path, &f, &err), err);
    ck_assert_str_eq(ts_st_label(f), path);
    check_sample(f);
    ts_st_close(f);
}
END_TEST

START_TEST(test_empty_header_and_metadata_only)
{
    ts_st_file *f = NULL;
    ts_error err;
    st_buf b = st_header("{}", NULL, 0);
    ts_ck_ok(ts_st_open_buffer(b.data, b.len, "e", &f, &err), err);
    ck_assert_int_eq(ts_st_count(f), 0);
    ck_assert_ptr_null(ts_st_at(f, 0));
    ck_assert_ptr_null(ts_st_find(f, "x"));
    ts_ck_ok(ts_st_check_all_used(f, &err), err);
    ts_st_close(f);
    free(b.data);

    b = st_header("{\"__metadata__\":{}}", NULL, 0);
    ts_ck_ok(ts_st_open_buffer(b.data, b.len, "e", &f, &err), err);
    ck_assert_int_eq(ts_st_count(f), 0);
    ts_st_close(f);
    free(b.data);

    /* The smallest legal header, unpadded. */
    b = st_raw(2, "{}", 2, NULL, 0);
    ts_ck_ok(ts_st_open_buffer(b.data, b.len, "e", &f, &err), err);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_misaligned_data_accepted)
{
    /* 8 + 61 puts the data section at an odd offset: the file opens and can be read,
     * but a model loader asking for the tensor is refused (kernels need alignment). */
    const char *hdr = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}   ";
    size_t n = strlen(hdr);
    ck_assert_uint_eq(n % 2, 1);
    const float v[2] = { 0.5f, -1.5f };
    st_buf b = st_raw(n, hdr, n, v, sizeof v);
    ts_st_file *f = NULL;
    ts_error err;
    ts_ck_ok(ts_st_open_buffer(b.data, b.len, "odd", &f, &err), err);
    const ts_st_tensor *t = ts_st_find(f, "x");
    ck_assert_ptr_nonnull(t);
    float r[2];
    memcpy(r, t->data, sizeof r);
    ck_assert(r[0] == 0.5f && r[1] == -1.5f);
    const int64_t shape[1] = { 2 };
    ts_ck_fails(ts_st_get(f, "x", TS_ST_FLOATS, 1, shape, NULL, &err), err, TS_ERR_FORMAT,
                "odd: tensor 'x' is not aligned to its 4-byte elements");
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_empty_tensors_may_sit_anywhere)
{
    /* Zero-byte tensors own no bytes, so sharing an offset with another is no overlap,
     * and a zero dim makes the product zero however large the other dims are. */
    const char *hdr =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
        "\"huge\":{\"dtype\":\"BF16\",\"shape\":[1099511627776,1099511627776,0],"
        "\"data_offsets\":[8,8]}}";
    const float v[2] = { 1, 2 };
    st_buf b = st_header(hdr, v, sizeof v);
    ts_st_file *f = NULL;
    ts_error err;
    ts_ck_ok(ts_st_open_buffer(b.data, b.len, "z", &f, &err), err);
    ck_assert_int_eq(ts_st_count(f), 3);
    ck_assert_uint_eq(ts_st_find(f, "huge")->nbytes, 0);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_close_null_and_accessors_on_null)
{
    ts_st_close(NULL);
    ck_assert_int_eq(ts_st_count(NULL), 0);
    ck_assert_ptr_null(ts_st_at(NULL, 0));
    ck_assert_ptr_null(ts_st_find(NULL, "x"));
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* ts_st_get and ts_st_check_all_used                                                  */

START_TEST(test_get_success)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    const ts_st_tensor *t = NULL;
    const int64_t shape[] = { 2, 3 };
    ts_ck_ok(ts_st_get(f, "w.f32", TS_ST_FLOATS, 2, shape, &t, &err), err);
    ck_assert_ptr_eq(t, ts_st_find(f, "w.f32"));
    ck_assert_int_eq(t->used, 1);

    const int64_t s4[] = { 4 };
    ts_ck_ok(ts_st_get(f, "w.f16", TS_ST_ONLY(TS_F16), 1, s4, &t, &err), err);
    ck_assert_int_eq(t->dtype, TS_F16);

    ts_ck_ok(ts_st_get(f, "scalar", TS_ST_FLOATS, 0, NULL, &t, &err), err);
    ck_assert_int_eq(t->ndim, 0);

    const int64_t s3[] = { 3 };
    ts_ck_ok(ts_st_get(f, "tokens", TS_ST_ONLY(TS_I32), 1, s3, NULL, &err), err);
    ck_assert_int_eq(ts_st_find(f, "tokens")->used, 1);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_get_missing)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    const ts_st_tensor *t = (const ts_st_tensor *)1;
    const int64_t shape[] = { 2, 3 };
    ts_ck_fails(ts_st_get(f, "layers.0.attention.wqkv.weight", TS_ST_FLOATS, 2, shape, &t,
                          &err), err, TS_ERR_MISSING,
                "gpt.safetensors: tensor 'layers.0.attention.wqkv.weight' is missing");
    ck_assert_ptr_null(t);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_get_wrong_dtype)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    const ts_st_tensor *t = (const ts_st_tensor *)1;
    const int64_t s3[] = { 3 };
    ts_ck_fails(ts_st_get(f, "tokens", TS_ST_FLOATS, 1, s3, &t, &err), err, TS_ERR_DTYPE,
                "gpt.safetensors: tensor 'tokens' has dtype I32, expected one of F32, F16, BF16");
    ck_assert_ptr_null(t);
    ck_assert_int_eq(ts_st_find(f, "tokens")->used, 0);

    const int64_t s23[] = { 2, 3 };
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_ONLY(TS_BF16), 2, s23, &t, &err), err,
                TS_ERR_DTYPE, "tensor 'w.f32' has dtype F32, expected BF16");
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_get_wrong_shape)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    const ts_st_tensor *t = (const ts_st_tensor *)1;
    const int64_t s32[] = { 3, 2 };
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_FLOATS, 2, s32, &t, &err), err, TS_ERR_SHAPE,
                "gpt.safetensors: tensor 'w.f32' has shape [2, 3], expected [3, 2]");
    ck_assert_ptr_null(t);
    ck_assert_int_eq(ts_st_find(f, "w.f32")->used, 0);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_get_wrong_ndim)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    const int64_t s231[] = { 2, 3, 1 };
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_FLOATS, 3, s231, NULL, &err), err, TS_ERR_SHAPE,
                "tensor 'w.f32' has shape [2, 3], expected [2, 3, 1]");
    const int64_t s6[] = { 6 };
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_FLOATS, 1, s6, NULL, &err), err, TS_ERR_SHAPE,
                "tensor 'w.f32' has shape [2, 3], expected [6]");
    const int64_t s1[] = { 1 };
    ts_ck_fails(ts_st_get(f, "scalar", TS_ST_FLOATS, 1, s1, NULL, &err), err, TS_ERR_SHAPE,
                "tensor 'scalar' has shape [], expected [1]");
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_get_bad_arguments)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_FLOATS, -1, NULL, NULL, &err), err,
                TS_ERR_INVALID, "w.f32");
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_FLOATS, TS_ST_MAX_DIMS + 1, NULL, NULL, &err),
                err, TS_ERR_INVALID, "w.f32");
    ts_ck_fails(ts_st_get(f, "w.f32", TS_ST_FLOATS, 2, NULL, NULL, &err), err,
                TS_ERR_INVALID, "w.f32");
    ts_ck_fails(ts_st_get(NULL, "w.f32", TS_ST_FLOATS, 0, NULL, NULL, &err), err,
                TS_ERR_INVALID, "");
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_check_all_used)
{
    st_buf b;
    ts_st_file *f = open_sample(&b);
    ts_error err;
    ts_ck_fails(ts_st_check_all_used(f, &err), err, TS_ERR_FORMAT,
                "gpt.safetensors: unexpected tensor 'w.f32' (not part of this model)");

    const int64_t s23[] = { 2, 3 }, s4[] = { 4 }, s22[] = { 2, 2 }, s3[] = { 3 },
                  s05[] = { 0, 5 };
    ts_ck_ok(ts_st_get(f, "w.f32", TS_ST_FLOATS, 2, s23, NULL, &err), err);
    ts_ck_ok(ts_st_get(f, "w.f16", TS_ST_FLOATS, 1, s4, NULL, &err), err);
    ts_ck_ok(ts_st_get(f, "w.bf16", TS_ST_FLOATS, 2, s22, NULL, &err), err);
    ts_ck_fails(ts_st_check_all_used(f, &err), err, TS_ERR_FORMAT, "'tokens'");
    ts_ck_ok(ts_st_get(f, "tokens", TS_ST_ONLY(TS_I32), 1, s3, NULL, &err), err);
    ts_ck_ok(ts_st_get(f, "scalar", TS_ST_FLOATS, 0, NULL, NULL, &err), err);
    ts_ck_fails(ts_st_check_all_used(f, &err), err, TS_ERR_FORMAT, "'empty'");
    ts_ck_ok(ts_st_get(f, "empty", TS_ST_FLOATS, 2, s05, NULL, &err), err);
    ts_ck_ok(ts_st_check_all_used(f, &err), err);
    ts_st_close(f);
    free(b.data);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Files that are too short, truncated or missing                                      */

START_TEST(test_nonexistent_path)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/no-such-file.safetensors", g_tmpdir);
    ts_st_file *f = (ts_st_file *)1;
    ts_error err;
    ts_ck_fails(ts_st_open(path, &f, &err), err, TS_ERR_IO, path);
    ck_assert_ptr_null(f);
}
END_TEST

START_TEST(test_directory_path)
{
    ts_st_file *f = (ts_st_file *)1;
    ts_error err;
    ts_ck_fails(ts_st_open(g_tmpdir, &f, &err), err, TS_ERR_IO, g_tmpdir);
    ck_assert_ptr_null(f);
}
END_TEST

START_TEST(test_empty_file)
{
    const char *path = st_write_tmp("empty.safetensors", "", 0);
    ts_st_file *f = (ts_st_file *)1;
    ts_error err;
    ts_ck_fails(ts_st_open(path, &f, &err), err, TS_ERR_FORMAT, path);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(err.msg, "0 bytes"));

    ts_ck_fails(ts_st_open_buffer("", 0, "e", &f, &err), err, TS_ERR_FORMAT, "e: ");
    ts_ck_fails(ts_st_open_buffer(NULL, 0, "e", &f, &err), err, TS_ERR_FORMAT, "e: ");
}
END_TEST

START_TEST(test_shorter_than_8_bytes)
{
    const char *path = st_write_tmp("short.safetensors", "\x02\0\0\0\0", 5);
    ts_st_file *f = (ts_st_file *)1;
    ts_error err;
    ts_ck_fails(ts_st_open(path, &f, &err), err, TS_ERR_FORMAT, "5 bytes");
    ck_assert_ptr_null(f);
    st_buf b = { (uint8_t *)"\x02\0\0\0\0\0\0", 7 };
    expect_refused(b, TS_ERR_FORMAT, "7 bytes");
}
END_TEST

START_TEST(test_header_length_past_end)
{
    /* The length says 64 bytes of header, but only the 2 of "{}" follow. */
    st_buf b = st_raw(64, "{}", 2, NULL, 0);
    expect_refused(b, TS_ERR_FORMAT, "header length 64 runs past the end");
    const char *path = st_write_tmp("trunc-header.safetensors", b.data, b.len);
    ts_st_file *f = (ts_st_file *)1;
    ts_error err;
    ts_ck_fails(ts_st_open(path, &f, &err), err, TS_ERR_FORMAT, "runs past the end");
    ck_assert_ptr_null(f);
    free(b.data);
}
END_TEST

START_TEST(test_data_cut_short)
{
    const float v[4] = { 1, 2, 3, 4 };
    const st_spec specs[] = {
        { "first", "F32", 1, { 2 }, v, 8 },
        { "second", "F32", 1, { 2 }, v + 2, 8 },
    };
    st_buf b = st_build(specs, 2, NULL);
    b.len -= 3;
    expect_refused(b, TS_ERR_FORMAT,
                   "tensor 'second': data_offsets [8, 16] lie outside the data section of 13 bytes");
    const char *path = st_write_tmp("trunc-data.safetensors", b.data, b.len);
    ts_st_file *f = (ts_st_file *)1;
    ts_error err;
    ts_ck_fails(ts_st_open(path, &f, &err), err, TS_ERR_FORMAT, "'second'");
    ck_assert_ptr_null(f);
    free(b.data);
}
END_TEST

static const uint64_t k_bad_hlen[] = {
    UINT64_C(1) << 63, UINT64_MAX, (uint64_t)TS_ST_MAX_HEADER + 1, UINT64_C(1) << 32,
};

START_TEST(test_huge_header_length)
{
    st_buf b = st_raw(k_bad_hlen[_i], "{}", 2, NULL, 0);
    char needle[64];
    snprintf(needle, sizeof needle, "header length %" PRIu64 " exceeds", k_bad_hlen[_i]);
    expect_refused(b, TS_ERR_FORMAT, needle);
    free(b.data);
}
END_TEST

START_TEST(test_tiny_header_length)
{
    st_buf b = st_raw((uint64_t)_i, "{}", 2, NULL, 0);   /* 0 and 1 */
    expect_refused(b, TS_ERR_FORMAT, "too small");
    free(b.data);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Broken headers                                                                      */

START_TEST(test_broken_json)
{
    expect_header_refused("{\"a\": ", TS_ERR_FORMAT, "not valid JSON");
    expect_header_refused("{\"a\":{}} x", TS_ERR_FORMAT, "not valid JSON");
    expect_header_refused("{'a':1}", TS_ERR_FORMAT, "not valid JSON");
    /* An embedded NUL inside the header length is not a terminator. */
    st_buf b = st_raw(8, "{}\0{}   ", 8, NULL, 0);
    expect_refused(b, TS_ERR_FORMAT, "not valid JSON");
    free(b.data);
}
END_TEST

START_TEST(test_header_not_object)
{
    expect_header_refused("[1,2]", TS_ERR_FORMAT, "header must be a JSON object, not an array");
    expect_header_refused("\"str\"", TS_ERR_FORMAT, "");
    expect_header_refused("42", TS_ERR_FORMAT, "");
}
END_TEST

START_TEST(test_entry_not_object)
{
    expect_header_refused("{\"w\":5}", TS_ERR_FORMAT, "tensor 'w': entry must be an object");
    expect_header_refused("{\"w\":[]}", TS_ERR_FORMAT, "tensor 'w'");
}
END_TEST

static const char *const k_missing_field[][2] = {
    { "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "missing 'dtype'" },
    { "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "missing 'shape'" },
    { "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", "missing 'data_offsets'" },
};

START_TEST(test_entry_missing_field)
{
    const float v = 1;
    st_buf b = st_header(k_missing_field[_i][0], &v, 4);
    char needle[64];
    snprintf(needle, sizeof needle, "tensor 'w': %s", k_missing_field[_i][1]);
    expect_refused(b, TS_ERR_FORMAT, needle);
    free(b.data);
}
END_TEST

START_TEST(test_entry_extra_field)
{
    const float v = 1;
    st_buf b = st_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
                         "\"extra\":1}}", &v, 4);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'w': unexpected key 'extra'");
    free(b.data);
}
END_TEST

START_TEST(test_dtype_not_string)
{
    const float v = 1;
    st_buf b = st_header("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", &v, 4);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'w': dtype must be a string");
    free(b.data);
}
END_TEST

static const char *const k_bad_dims[][2] = {
    { "[-1]", "negative (-1)" },
    { "[2,-3]", "dim 1 is negative" },
    { "[1.5]", "not a real number" },
    { "[1.0]", "not a real number" },
    { "[\"3\"]", "not a string" },
    { "[null]", "not null" },
    { "[[1]]", "not an array" },
    { "1", "shape must be an array" },
    { "{}", "shape must be an array" },
};

START_TEST(test_bad_shape)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, "{\"w\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[0,4]}}",
             k_bad_dims[_i][0]);
    const float v = 1;
    st_buf b = st_header(hdr, &v, 4);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'w': ");
    expect_refused(b, TS_ERR_FORMAT, k_bad_dims[_i][1]);
    free(b.data);
}
END_TEST

START_TEST(test_too_many_dims)
{
    const float v = 1;
    st_buf b = st_header("{\"deep\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                         "\"data_offsets\":[0,4]}}", &v, 4);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'deep': shape has 9 dims, at most 8");
    free(b.data);

    /* Exactly TS_ST_MAX_DIMS is fine. */
    b = st_header("{\"deep\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1],"
                  "\"data_offsets\":[0,4]}}", &v, 4);
    ts_st_file *f = NULL;
    ts_error err;
    ts_ck_ok(ts_st_open_buffer(b.data, b.len, "d", &f, &err), err);
    ck_assert_int_eq(ts_st_find(f, "deep")->ndim, TS_ST_MAX_DIMS);
    ts_st_close(f);
    free(b.data);
}
END_TEST

START_TEST(test_offsets_outside_data)
{
    const float v[2] = { 1, 2 };
    st_buf b = st_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                         v, 8);
    expect_refused(b, TS_ERR_FORMAT,
                   "tensor 'w': data_offsets [4, 12] lie outside the data section of 8 bytes");
    free(b.data);
    /* Far outside, beyond any size_t arithmetic a careless reader might do. */
    b = st_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                  "\"data_offsets\":[9223372036854775804,9223372036854775807]}}", v, 8);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'w': data_offsets");
    free(b.data);
}
END_TEST

START_TEST(test_offsets_begin_after_end)
{
    const float v[2] = { 1, 2 };
    st_buf b = st_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}",
                         v, 8);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'w': data_offsets [8, 4] begin after their end");
    free(b.data);
}
END_TEST

static const char *const k_bad_offsets[] = {
    "[0]", "[0,4,8]", "[]", "[-4,0]", "[0,-4]", "[0,4.0]", "[\"0\",4]", "{}", "4",
    "[0,18446744073709551616]",
};

START_TEST(test_offsets_malformed)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":%s}}",
             k_bad_offsets[_i]);
    const float v[2] = { 1, 2 };
    st_buf b = st_header(hdr, v, 8);
    /* An integer too big for JSON parsing fails before any tensor is known. */
    expect_refused(b, TS_ERR_FORMAT, strstr(hdr, "18446744073709551616") ? "" : "tensor 'w'");
    free(b.data);
}
END_TEST

START_TEST(test_byte_count_mismatch)
{
    const float v[4] = { 1, 2, 3, 4 };
    st_buf b = st_header("{\"few\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}",
                         v, 16);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'few': data_offsets [0, 12] hold 12 bytes, but "
                                     "shape [2, 2] of F32 needs 16 bytes");
    free(b.data);
    b = st_header("{\"many\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,16]}}", v, 16);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'many': data_offsets [0, 16] hold 16 bytes, but "
                                     "shape [3] of BF16 needs 6 bytes");
    free(b.data);
}
END_TEST

START_TEST(test_overlap)
{
    const float v[4] = { 1, 2, 3, 4 };
    st_buf b = st_header(
        "{\"alpha\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"beta\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", v, 16);
    expect_refused(b, TS_ERR_FORMAT, "tensors 'alpha' [0, 8) and 'beta' [4, 12) overlap");
    free(b.data);

    /* Identical ranges. */
    b = st_header(
        "{\"alpha\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"beta\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", v, 16);
    expect_refused(b, TS_ERR_FORMAT, "'alpha'");
    expect_refused(b, TS_ERR_FORMAT, "'beta'");
    free(b.data);

    /* A wide tensor covering two neighbours that do not overlap each other: the second
     * neighbour must still be caught against the wide one. */
    b = st_header(
        "{\"n1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
        "\"n2\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
        "\"wide\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", v, 16);
    expect_refused(b, TS_ERR_FORMAT, "tensors 'wide' [0, 16) and 'n1' [4, 8) overlap");
    free(b.data);
}
END_TEST

START_TEST(test_duplicate_names)
{
    const float v[2] = { 1, 2 };
    st_buf b = st_header(
        "{\"layers.0.attention.wqkv.weight\":{\"dtype\":\"F32\",\"shape\":[1],"
        "\"data_offsets\":[0,4]},"
        "\"layers.0.attention.wqkv.weight\":{\"dtype\":\"F32\",\"shape\":[1],"
        "\"data_offsets\":[4,8]}}", v, 8);
    expect_refused(b, TS_ERR_FORMAT, "repeats the key 'layers.0.attention.wqkv.weight'");
    free(b.data);

    b = st_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"w\" : {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", v, 8);
    expect_refused(b, TS_ERR_FORMAT, "'w'");
    free(b.data);

    /* Escaped quotes inside the key must not confuse the name recovery. */
    b = st_header("{\"a\\\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\\\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", v, 8);
    expect_refused(b, TS_ERR_FORMAT, "'a\\\"b'");
    free(b.data);

    /* A repeated field inside an entry is refused too. */
    b = st_header("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],"
                  "\"data_offsets\":[0,4]}}", v, 8);
    expect_refused(b, TS_ERR_FORMAT, "'dtype'");
    free(b.data);
}
END_TEST

START_TEST(test_empty_name)
{
    const float v = 1;
    st_buf b = st_header("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", &v, 4);
    expect_refused(b, TS_ERR_FORMAT, "empty name");
    free(b.data);
}
END_TEST

static const char *const k_bad_dtypes[] = { "F64", "U8", "I64", "BOOL", "f32", "", "F8_E4M3" };

START_TEST(test_unsupported_dtype)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, "{\"w.odd\":{\"dtype\":\"%s\",\"shape\":[1],"
                              "\"data_offsets\":[0,8]}}", k_bad_dtypes[_i]);
    const double v = 1;
    st_buf b = st_header(hdr, &v, 8);
    char needle[128];
    snprintf(needle, sizeof needle, "tensor 'w.odd' has unsupported dtype %s (",
             k_bad_dtypes[_i]);
    expect_refused(b, TS_ERR_DTYPE, needle);
    free(b.data);
}
END_TEST

START_TEST(test_shape_overflow)
{
    st_buf b = st_header("{\"big\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
                         "\"data_offsets\":[0,0]}}", NULL, 0);
    expect_refused(b, TS_ERR_FORMAT,
                   "tensor 'big': shape [1099511627776, 1099511627776] of F32 is too large");
    free(b.data);
    /* 2^62 elements fit in 64 bits, but 2^62 x 4 bytes do not. */
    b = st_header("{\"big\":{\"dtype\":\"F32\",\"shape\":[2147483648,2147483648],"
                  "\"data_offsets\":[0,0]}}", NULL, 0);
    expect_refused(b, TS_ERR_FORMAT, "tensor 'big': shape [2147483648, 2147483648] of F32");
    free(b.data);
    /* Fits in 64 bits (2^63 bytes) but not in the data section. */
    b = st_header("{\"big\":{\"dtype\":\"F16\",\"shape\":[4611686018427387904],"
                  "\"data_offsets\":[0,0]}}", NULL, 0);
    expect_refused(b, TS_ERR_FORMAT, "needs 9223372036854775808 bytes");
    free(b.data);
}
END_TEST

static const char *const k_bad_metadata[][2] = {
    { "{\"format\":\"pt\",\"n\":3}", "__metadata__ entry 'n' must be a string, not an integer" },
    { "{\"o\":{}}", "__metadata__ entry 'o' must be a string, not an object" },
    { "{\"z\":null}", "__metadata__ entry 'z' must be a string, not null" },
    { "{\"b\":true}", "entry 'b' must be a string, not a boolean" },
    { "[\"x\"]", "__metadata__ must be an object of strings, not an array" },
    { "\"x\"", "__metadata__ must be an object of strings, not a string" },
};

START_TEST(test_bad_metadata)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, "{\"__metadata__\":%s,\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                              "\"data_offsets\":[0,4]}}", k_bad_metadata[_i][0]);
    const float v = 1;
    st_buf b = st_header(hdr, &v, 4);
    expect_refused(b, TS_ERR_FORMAT, k_bad_metadata[_i][1]);
    free(b.data);
}
END_TEST

START_TEST(test_open_bad_arguments)
{
    ts_error err;
    ts_ck_fails(ts_st_open("x", NULL, &err), err, TS_ERR_INVALID, "");
    ts_st_file *f = (ts_st_file *)1;
    ts_ck_fails(ts_st_open(NULL, &f, &err), err, TS_ERR_INVALID, "");
    ck_assert_ptr_null(f);
    ts_ck_fails(ts_st_open_buffer(NULL, 16, "lbl", &f, &err), err, TS_ERR_INVALID, "lbl");
    ck_assert_ptr_null(f);
    /* A NULL label gets a stand-in rather than crashing. */
    ts_ck_fails(ts_st_open_buffer("\1\0\0\0\0\0\0\0{", 9, NULL, &f, &err), err, TS_ERR_FORMAT,
                "<buffer>: ");
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Error codes                                                                         */

START_TEST(test_strerror)
{
    ck_assert_str_eq(ts_strerror(TS_OK), "ok");
    ck_assert_str_eq(ts_strerror(TS_ERR_IO), "io_error");
    ck_assert_str_eq(ts_strerror(TS_ERR_FORMAT), "bad_format");
    ck_assert_str_eq(ts_strerror(TS_ERR_SHAPE), "shape_mismatch");
    ck_assert_str_eq(ts_strerror(TS_ERR_DTYPE), "dtype_mismatch");
    ck_assert_str_eq(ts_strerror(TS_ERR_MISSING), "missing_tensor");
    ck_assert_str_eq(ts_strerror(TS_ERR_NOMEM), "out_of_memory");
    ck_assert_str_eq(ts_strerror(TS_ERR_INVALID), "invalid_argument");
    ck_assert_str_eq(ts_strerror(TS_ERR_CONFIG), "bad_config");
    ck_assert_str_eq(ts_strerror(TS_ERR_UNSUPPORTED), "unsupported");
    ck_assert_str_eq(ts_strerror(TS_ERR_INTERNAL), "internal_error");
    ck_assert_str_eq(ts_strerror(1), "unknown_error");
    ck_assert_str_eq(ts_strerror(-11), "unknown_error");
    ck_assert_str_eq(ts_strerror(INT_MIN), "unknown_error");
}
END_TEST

START_TEST(test_fail_and_clear)
{
    ts_error err;
    ck_assert_int_eq(ts_fail(&err, TS_ERR_SHAPE, "tensor '%s' has %d dims", "w", 3),
                     TS_ERR_SHAPE);
    ck_assert_int_eq(err.code, TS_ERR_SHAPE);
    ck_assert_str_eq(err.msg, "tensor 'w' has 3 dims");
    ck_assert_int_eq(ts_fail(NULL, TS_ERR_IO, "ignored"), TS_ERR_IO);

    /* Long messages are truncated, never overrun. */
    char longname[2 * TS_ERROR_MSG_MAX];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ts_fail(&err, TS_ERR_MISSING, "tensor '%s' is missing", longname);
    ck_assert_uint_eq(strlen(err.msg), TS_ERROR_MSG_MAX - 1);

    ts_error_clear(&err);
    ck_assert_int_eq(err.code, TS_OK);
    ck_assert_str_eq(err.msg, "");
    ts_error_clear(NULL);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Dtypes                                                                              */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

START_TEST(test_dtype_names_and_sizes)
{
    ck_assert_str_eq(ts_dtype_name(TS_F32), "F32");
    ck_assert_str_eq(ts_dtype_name(TS_F16), "F16");
    ck_assert_str_eq(ts_dtype_name(TS_BF16), "BF16");
    ck_assert_str_eq(ts_dtype_name(TS_I32), "I32");
    ck_assert_uint_eq(ts_dtype_size(TS_F32), 4);
    ck_assert_uint_eq(ts_dtype_size(TS_I32), 4);
    ck_assert_uint_eq(ts_dtype_size(TS_F16), 2);
    ck_assert_uint_eq(ts_dtype_size(TS_BF16), 2);
}
END_TEST

START_TEST(test_bf16_round_trip_all)
{
    /* Every bf16 widens exactly and narrows back to itself; NaNs stay NaN with their
     * sign. (Plain ifs in the loop: each ck_assert records a checkpoint, a syscall.) */
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float f = ts_bf16_to_f32((uint16_t)h);
        if (f32_bits(f) != h << 16)
            ck_abort_msg("bf16 0x%04x widened to %08x", h, f32_bits(f));
        uint16_t back = ts_f32_to_bf16(f);
        int ok = isnan(f) ? isnan(ts_bf16_to_f32(back)) && (back & 0x8000) == (h & 0x8000)
                          : back == h;
        if (!ok)
            ck_abort_msg("bf16 0x%04x came back as 0x%04x", h, back);
    }
}
END_TEST

START_TEST(test_bf16_rounding)
{
    ck_assert_uint_eq(ts_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(ts_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);        /* tie, to even */
    ck_assert_uint_eq(ts_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);    /* tie, to even */
    ck_assert_uint_eq(ts_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    ck_assert_uint_eq(ts_f32_to_bf16(-1.0f - 0x1p-9f), 0xbf80);
    ck_assert_uint_eq(ts_f32_to_bf16(FLT_MAX), 0x7f80);               /* rounds to inf */
    ck_assert_uint_eq(ts_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(ts_f32_to_bf16(-INFINITY), 0xff80);
    ck_assert(isinf(ts_bf16_to_f32(0x7f80)) && ts_bf16_to_f32(0x7f80) > 0);
    ck_assert(isnan(ts_bf16_to_f32(ts_f32_to_bf16(NAN))));
    /* A NaN whose payload lies only in the low 16 bits must not become infinity. */
    ck_assert(isnan(ts_bf16_to_f32(ts_f32_to_bf16(bits_f32(0x7f800001u)))));
    ck_assert(isnan(ts_bf16_to_f32(ts_f32_to_bf16(bits_f32(0xff800001u)))));
    /* bf16 subnormals are kept (no flush to zero). */
    ck_assert_uint_eq(ts_f32_to_bf16(bits_f32(0x00010000u)), 0x0001);
    ck_assert(ts_bf16_to_f32(0x0001) == 0x1p-133f);
}
END_TEST

START_TEST(test_f16_round_trip_all)
{
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float f = ts_f16_to_f32((uint16_t)h);
        uint16_t back = ts_f32_to_f16(f);
        int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        int ok = is_nan ? isnan(f) && isnan(ts_f16_to_f32(back)) : back == h;
        if (!ok)
            ck_abort_msg("f16 0x%04x -> %a -> 0x%04x", h, (double)f, back);
    }
}
END_TEST

START_TEST(test_f16_subnormals)
{
    ck_assert(ts_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(ts_f16_to_f32(0x8001) == -0x1p-24f);
    ck_assert(ts_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
    ck_assert(ts_f16_to_f32(0x0400) == 0x1p-14f);                 /* smallest normal */
    ck_assert_uint_eq(ts_f32_to_f16(0x1p-24f), 0x0001);
    ck_assert_uint_eq(ts_f32_to_f16(-0x1p-24f), 0x8001);
    ck_assert_uint_eq(ts_f32_to_f16(0x1p-25f), 0x0000);            /* tie, to even */
    ck_assert_uint_eq(ts_f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
    ck_assert_uint_eq(ts_f32_to_f16(3 * 0x1p-25f), 0x0002);        /* tie, to even */
    ck_assert_uint_eq(ts_f32_to_f16(0x1p-26f), 0x0000);
    ck_assert_uint_eq(ts_f32_to_f16(1023.5f * 0x1p-24f), 0x0400);  /* rounds up to normal */
    ck_assert_uint_eq(ts_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(ts_f32_to_f16(0.0f), 0x0000);
    ck_assert_uint_eq(ts_f32_to_f16(FLT_MIN), 0x0000);
    ck_assert(signbit(ts_f16_to_f32(0x8000)) && ts_f16_to_f32(0x8000) == 0.0f);
}
END_TEST

START_TEST(test_f16_inf_nan_and_rounding)
{
    ck_assert(isinf(ts_f16_to_f32(0x7c00)) && ts_f16_to_f32(0x7c00) > 0);
    ck_assert(isinf(ts_f16_to_f32(0xfc00)) && ts_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(ts_f16_to_f32(0x7e00)));
    ck_assert(isnan(ts_f16_to_f32(0x7c01)));                       /* signalling keeps NaN */
    ck_assert_uint_eq(ts_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(ts_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t n = ts_f32_to_f16(NAN);
    ck_assert((n & 0x7c00) == 0x7c00 && (n & 0x3ff));
    ck_assert_uint_eq(ts_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(ts_f32_to_f16(65519.996f), 0x7bff);          /* just under the tie */
    ck_assert_uint_eq(ts_f32_to_f16(65520.0f), 0x7c00);            /* tie, to even = inf */
    ck_assert_uint_eq(ts_f32_to_f16(1e10f), 0x7c00);
    ck_assert_uint_eq(ts_f32_to_f16(-1e10f), 0xfc00);
    ck_assert_uint_eq(ts_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(ts_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie, to even */
    ck_assert_uint_eq(ts_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie, to even */
    ck_assert_uint_eq(ts_f32_to_f16(1.0f - 0x1p-12f), 0x3c00);     /* carry into exponent */
    ck_assert_uint_eq(ts_f32_to_f16(-2.0f), 0xc000);
}
END_TEST

#ifdef __FLT16_MAX__
START_TEST(test_f16_matches_compiler)
{
    /* Compare narrowing with the compiler's _Float16 over a spread of f32 bit patterns,
     * every sign, exponent and many mantissas. */
    for (uint64_t u = 0; u <= UINT32_MAX; u += 997) {
        float f = bits_f32((uint32_t)u);
        _Float16 ref = (_Float16)f;
        uint16_t want;
        memcpy(&want, &ref, 2);
        uint16_t got = ts_f32_to_f16(f);
        int ok = isnan(f) ? isnan(ts_f16_to_f32(got)) : got == want;
        if (!ok)
            ck_abort_msg("%a (%08" PRIx64 "): got 0x%04x, want 0x%04x", (double)f, u, got,
                         want);
    }
}
END_TEST
#endif

START_TEST(test_to_f32)
{
    float out[3];
    const float f[3] = { 1.5f, -0.0f, 3e30f };
    ts_to_f32(out, f, TS_F32, 3);
    ck_assert_mem_eq(out, f, sizeof f);
    const uint16_t h[3] = { 0x3e00, 0x0001, 0xfbff };
    ts_to_f32(out, h, TS_F16, 3);
    ck_assert(out[0] == 1.5f && out[1] == 0x1p-24f && out[2] == -65504.0f);
    const uint16_t b[3] = { 0x3fc0, 0x7f80, 0xbf80 };
    ts_to_f32(out, b, TS_BF16, 3);
    ck_assert(out[0] == 1.5f && isinf(out[1]) && out[2] == -1.0f);
    ts_to_f32(out, b, TS_BF16, 0);   /* n = 0 touches nothing */
}
END_TEST

/* ---------------------------------------------------------------------------------- */

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");

    TCase *tc = tcase_create("good");
    tcase_add_test(tc, test_good_buffer);
    tcase_add_test(tc, test_good_file_on_disk);
    tcase_add_test(tc, test_empty_header_and_metadata_only);
    tcase_add_test(tc, test_misaligned_data_accepted);
    tcase_add_test(tc, test_empty_tensors_may_sit_anywhere);
    tcase_add_test(tc, test_close_null_and_accessors_on_null);
    suite_add_tcase(s, tc);

    tc = tcase_create("get");
    tcase_add_test(tc, test_get_success);
    tcase_add_test(tc, test_get_missing);
    tcase_add_test(tc, test_get_wrong_dtype);
    tcase_add_test(tc, test_get_wrong_shape);
    tcase_add_test(tc, test_get_wrong_ndim);
    tcase_add_test(tc, test_get_bad_arguments);
    tcase_add_test(tc, test_check_all_used);
    suite_add_tcase(s, tc);

    tc = tcase_create("file");
    tcase_add_test(tc, test_nonexistent_path);
    tcase_add_test(tc, test_directory_path);
    tcase_add_test(tc, test_empty_file);
    tcase_add_test(tc, test_shorter_than_8_bytes);
    tcase_add_test(tc, test_header_length_past_end);
    tcase_add_test(tc, test_data_cut_short);
    tcase_add_loop_test(tc, test_huge_header_length, 0,
                        (int)(sizeof k_bad_hlen / sizeof k_bad_hlen[0]));
    tcase_add_loop_test(tc, test_tiny_header_length, 0, 2);
    tcase_add_test(tc, test_open_bad_arguments);
    suite_add_tcase(s, tc);

    tc = tcase_create("header");
    tcase_add_test(tc, test_broken_json);
    tcase_add_test(tc, test_header_not_object);
    tcase_add_test(tc, test_entry_not_object);
    tcase_add_loop_test(tc, test_entry_missing_field, 0,
                        (int)(sizeof k_missing_field / sizeof k_missing_field[0]));
    tcase_add_test(tc, test_entry_extra_field);
    tcase_add_test(tc, test_dtype_not_string);
    tcase_add_loop_test(tc, test_bad_shape, 0, (int)(sizeof k_bad_dims / sizeof k_bad_dims[0]));
    tcase_add_test(tc, test_too_many_dims);
    tcase_add_test(tc, test_offsets_outside_data);
    tcase_add_test(tc, test_offsets_begin_after_end);
    tcase_add_loop_test(tc, test_offsets_malformed, 0,
                        (int)(sizeof k_bad_offsets / sizeof k_bad_offsets[0]));
    tcase_add_test(tc, test_byte_count_mismatch);
    tcase_add_test(tc, test_overlap);
    tcase_add_test(tc, test_duplicate_names);
    tcase_add_test(tc, test_empty_name);
    tcase_add_loop_test(tc, test_unsupported_dtype, 0,
                        (int)(sizeof k_bad_dtypes / sizeof k_bad_dtypes[0]));
    tcase_add_test(tc, test_shape_overflow);
    tcase_add_loop_test(tc, test_bad_metadata, 0,
                        (int)(sizeof k_bad_metadata / sizeof k_bad_metadata[0]));
    suite_add_tcase(s, tc);
    return s;
}

static Suite *error_dtype_suite(void)
{
    Suite *s = suite_create("error_dtype");
    TCase *tc = tcase_create("error");
    tcase_add_test(tc, test_strerror);
    tcase_add_test(tc, test_fail_and_clear);
    suite_add_tcase(s, tc);

    tc = tcase_create("dtype");
    tcase_set_timeout(tc, 60);   /* the exhaustive loops are slow under sanitizers */
    tcase_add_test(tc, test_dtype_names_and_sizes);
    tcase_add_test(tc, test_bf16_round_trip_all);
    tcase_add_test(tc, test_bf16_rounding);
    tcase_add_test(tc, test_f16_round_trip_all);
    tcase_add_test(tc, test_f16_subnormals);
    tcase_add_test(tc, test_f16_inf_nan_and_rounding);
#ifdef __FLT16_MAX__
    tcase_add_test(tc, test_f16_matches_compiler);
#endif
    tcase_add_test(tc, test_to_f32);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (ts_ck_mkdtemp(g_tmpdir, sizeof g_tmpdir) != 0) {
        perror("mkdtemp");
        return 1;
    }
    Suite *suites[] = { safetensors_suite(), error_dtype_suite() };
    int rc = ts_ck_run(suites, 2);
    ts_ck_rmdir(g_tmpdir);
    return rc;
}
