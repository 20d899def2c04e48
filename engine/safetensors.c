/* safetensors.c - strict, memory-mapped reader for .safetensors files.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data
 * section. Every check happens in st_parse, so ts_st_open and ts_st_open_buffer
 * accept and refuse exactly the same inputs; the returned tensors point into the
 * caller's bytes (the mapping or the buffer).
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_METADATA_KEY "__metadata__"
#define ST_SHAPE_STR_MAX 256   /* fits TS_ST_MAX_DIMS 20-digit dims and separators */

struct ts_st_file {
    char *label;
    const uint8_t *base;     /* whole file or buffer */
    size_t len;
    void *map;               /* == base when it came from mmap and is ours to unmap */
    ts_st_tensor *tensors;   /* in header order */
    int count;
    ts_st_tensor **by_name;  /* the same tensors sorted by name, for ts_st_find */
};

/* An entry's byte range inside the data section, for the overlap check. */
typedef struct st_span {
    uint64_t begin, end;
    int index;
} st_span;

/* Frees everything the file owns and unmaps a mapping; the caller's buffer is left alone. */
void ts_st_close(ts_st_file *f)
{
    if (!f)
        return;
    if (f->tensors)
        for (int i = 0; i < f->count; i++)
            free(f->tensors[i].name);
    free(f->tensors);
    free(f->by_name);
    if (f->map)
        munmap(f->map, f->len);
    free(f->label);
    free(f);
}

/* Writes "[a, b, c]" into buf (always terminated, truncated if it must be). */
static const char *st_format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t used = 0;
    int n = snprintf(buf, cap, "[");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < ndim && used < cap; i++) {
        n = snprintf(buf + used, cap - used, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
    return buf;
}

/* Writes the dtypes in the bit set as "F32, F16, BF16" (or "(none)"). */
static const char *st_format_dtypes(char *buf, size_t cap, unsigned dtypes)
{
    static const ts_dtype all[] = { TS_F32, TS_F16, TS_BF16, TS_I32 };
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof all / sizeof all[0] && used < cap; i++) {
        if (!(dtypes & TS_ST_ONLY(all[i])))
            continue;
        int n = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", ts_dtype_name(all[i]));
        if (n < 0)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, cap, "(none)");
    return buf;
}

/* Maps a safetensors dtype string to ours; 0 if it is not one we load. */
static int st_parse_dtype(const char *s, ts_dtype *out)
{
    static const struct { const char *name; ts_dtype t; } known[] = {
        { "F32", TS_F32 }, { "F16", TS_F16 }, { "BF16", TS_BF16 }, { "I32", TS_I32 },
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(s, known[i].name) == 0) {
            *out = known[i].t;
            return 1;
        }
    }
    return 0;
}

/* Reads a JSON value that must be a non-negative integer (json_int_t is 64-bit here). */
static int st_get_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* Describes a JSON value's kind for messages about wrong types. */
static const char *st_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

/* Reports a JSON parse failure. jansson's duplicate-key message drops keys longer than
 * about 18 characters, and tensor names usually are, so for that case the key is
 * recovered from the input: jansson stops right after the key's closing quote. */
static int st_json_fail(ts_error *err, const char *label, const char *hdr, size_t hlen,
                        const json_error_t *jerr)
{
    if (json_error_code(jerr) == json_error_duplicate_key && jerr->position > 1
        && (size_t)jerr->position <= hlen && hdr[jerr->position - 1] == '"') {
        size_t close = (size_t)jerr->position - 1;
        size_t open = close;
        while (open > 0) {
            open--;
            if (hdr[open] != '"')
                continue;
            size_t slashes = 0;   /* a quote after an odd run of backslashes is escaped */
            while (slashes < open && hdr[open - 1 - slashes] == '\\')
                slashes++;
            if (slashes % 2 == 0)
                break;
        }
        if (hdr[open] == '"') {
            int keylen = (int)(close - open - 1 < 200 ? close - open - 1 : 200);
            return ts_fail(err, TS_ERR_FORMAT,
                           "%s: header repeats the key '%.*s' (tensor names and entry fields "
                           "must be unique)", label, keylen, hdr + open + 1);
        }
    }
    return ts_fail(err, TS_ERR_FORMAT, "%s: header is not valid JSON: %s (at byte %d)",
                   label, jerr->text, jerr->position);
}

/* Checks that __metadata__ is an object mapping strings to strings. */
static int st_check_metadata(json_t *meta, const char *label, ts_error *err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(meta))
        return ts_fail(err, TS_ERR_FORMAT, "%s: %s must be an object of strings, not %s",
                       label, ST_METADATA_KEY, st_json_kind(meta));
    json_object_foreach(meta, key, v) {
        if (!json_is_string(v))
            return ts_fail(err, TS_ERR_FORMAT, "%s: %s entry '%s' must be a string, not %s",
                           label, ST_METADATA_KEY, key, st_json_kind(v));
    }
    return TS_OK;
}

/* Validates one header entry and fills t (except name and used). data/data_len describe
 * the data section. */
static int st_parse_entry(const char *label, const char *name, json_t *entry,
                          const uint8_t *data, uint64_t data_len, ts_st_tensor *t,
                          uint64_t *begin_out, uint64_t *end_out, ts_error *err)
{
    if (!json_is_object(entry))
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': entry must be an object, not %s",
                       label, name, st_json_kind(entry));

    const char *key;
    json_t *v;
    json_object_foreach(entry, key, v) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return ts_fail(err, TS_ERR_FORMAT,
                           "%s: tensor '%s': unexpected key '%s' (only dtype, shape and "
                           "data_offsets are allowed)", label, name, key);
    }

    const json_t *jdtype = json_object_get(entry, "dtype");
    const json_t *jshape = json_object_get(entry, "shape");
    const json_t *joffs = json_object_get(entry, "data_offsets");
    if (!jdtype || !jshape || !joffs)
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': missing '%s'", label, name,
                       !jdtype ? "dtype" : !jshape ? "shape" : "data_offsets");

    if (!json_is_string(jdtype))
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': dtype must be a string, not %s",
                       label, name, st_json_kind(jdtype));
    if (!st_parse_dtype(json_string_value(jdtype), &t->dtype))
        return ts_fail(err, TS_ERR_DTYPE,
                       "%s: tensor '%s' has unsupported dtype %.32s (supported: F32, F16, "
                       "BF16, I32)", label, name, json_string_value(jdtype));

    if (!json_is_array(jshape))
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': shape must be an array, not %s",
                       label, name, st_json_kind(jshape));
    size_t ndim = json_array_size(jshape);
    if (ndim > TS_ST_MAX_DIMS)
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': shape has %zu dims, at most %d "
                       "are supported", label, name, ndim, TS_ST_MAX_DIMS);
    t->ndim = (int)ndim;
    int has_zero = 0;
    for (size_t i = 0; i < ndim; i++) {
        const json_t *d = json_array_get(jshape, i);
        uint64_t dim;
        if (!st_get_uint(d, &dim)) {
            if (json_is_integer(d))
                return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': shape dim %zu is "
                               "negative (%" JSON_INTEGER_FORMAT ")", label, name, i,
                               json_integer_value(d));
            return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': shape dim %zu must be a "
                           "non-negative integer, not %s", label, name, i, st_json_kind(d));
        }
        t->shape[i] = (int64_t)dim;
        has_zero |= dim == 0;
    }
    char shape_str[ST_SHAPE_STR_MAX];
    st_format_shape(shape_str, sizeof shape_str, t->ndim, t->shape);

    /* Element and byte counts, refusing products that overflow 64 bits; a zero dim makes
     * the tensor empty however large the other dims are. */
    uint64_t need = 0;
    if (!has_zero) {
        need = ts_dtype_size(t->dtype);
        for (int i = 0; i < t->ndim; i++) {
            uint64_t dim = (uint64_t)t->shape[i];
            if (need > UINT64_MAX / dim)
                return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': shape %s of %s is too "
                               "large (byte count overflows 64 bits)", label, name, shape_str,
                               ts_dtype_name(t->dtype));
            need *= dim;
        }
    }

    if (!json_is_array(joffs) || json_array_size(joffs) != 2)
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': data_offsets must be an array "
                       "[begin, end]", label, name);
    uint64_t begin, end;
    if (!st_get_uint(json_array_get(joffs, 0), &begin)
        || !st_get_uint(json_array_get(joffs, 1), &end))
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': data_offsets must be non-negative "
                       "integers", label, name);
    if (begin > end)
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %"
                       PRIu64 "] begin after their end", label, name, begin, end);
    if (end > data_len)
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %"
                       PRIu64 "] lie outside the data section of %" PRIu64 " bytes",
                       label, name, begin, end, data_len);
    if (end - begin != need)
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %"
                       PRIu64 "] hold %" PRIu64 " bytes, but shape %s of %s needs %" PRIu64
                       " bytes", label, name, begin, end, end - begin, shape_str,
                       ts_dtype_name(t->dtype), need);

    t->data = data + begin;
    t->nbytes = (size_t)need;   /* fits: need <= data_len, which is a size_t */
    *begin_out = begin;
    *end_out = end;
    return TS_OK;
}

static int st_span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->index - y->index;
}

/* Refuses any two non-empty tensors sharing a byte. Empty tensors own no bytes, so they
 * may sit anywhere in the data section. */
static int st_check_overlap(const ts_st_file *f, st_span *spans, ts_error *err)
{
    qsort(spans, (size_t)f->count, sizeof *spans, st_span_cmp);
    int widest = -1;   /* the non-empty span seen so far that reaches furthest */
    for (int i = 0; i < f->count; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (widest >= 0 && spans[i].begin < spans[widest].end) {
            const st_span *a = &spans[widest], *b = &spans[i];
            return ts_fail(err, TS_ERR_FORMAT, "%s: tensors '%s' [%" PRIu64 ", %" PRIu64
                           ") and '%s' [%" PRIu64 ", %" PRIu64 ") overlap", f->label,
                           f->tensors[a->index].name, a->begin, a->end,
                           f->tensors[b->index].name, b->begin, b->end);
        }
        if (widest < 0 || spans[i].end > spans[widest].end)
            widest = i;
    }
    return TS_OK;
}

static int st_name_cmp(const void *a, const void *b)
{
    const ts_st_tensor *x = *(ts_st_tensor *const *)a, *y = *(ts_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Validates the header and fills f->tensors and f->by_name; f->base/len/label are set. */
static int st_parse_header(ts_st_file *f, ts_error *err)
{
    const char *label = f->label;
    if (f->len < 8)
        return ts_fail(err, TS_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte "
                       "header length", label, f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    if (hlen < 2)
        return ts_fail(err, TS_ERR_FORMAT, "%s: header length %" PRIu64 " is too small for a "
                       "JSON object", label, hlen);
    if (hlen > TS_ST_MAX_HEADER)
        return ts_fail(err, TS_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the limit "
                       "of %u bytes", label, hlen, (unsigned)TS_ST_MAX_HEADER);
    if (hlen > f->len - 8)
        return ts_fail(err, TS_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end "
                       "of the file (%zu bytes; truncated?)", label, hlen, f->len);

    const char *hdr = (const char *)f->base + 8;
    const uint8_t *data = f->base + 8 + hlen;
    uint64_t data_len = f->len - 8 - hlen;

    json_error_t jerr;
    json_t *root = json_loadb(hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return st_json_fail(err, label, hdr, (size_t)hlen, &jerr);

    int rc = TS_OK;
    st_span *spans = NULL;
    if (!json_is_object(root)) {
        rc = ts_fail(err, TS_ERR_FORMAT, "%s: header must be a JSON object, not %s", label,
                     st_json_kind(root));
        goto out;
    }

    size_t n = json_object_size(root);
    json_t *meta = json_object_get(root, ST_METADATA_KEY);
    if (meta) {
        if ((rc = st_check_metadata(meta, label, err)) != TS_OK)
            goto out;
        n--;
    }
    if (n > INT_MAX) {
        rc = ts_fail(err, TS_ERR_FORMAT, "%s: header lists %zu tensors, too many", label, n);
        goto out;
    }

    /* calloc(0) may return NULL, so always ask for at least one slot. */
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    spans = calloc(n ? n : 1, sizeof *spans);
    if (!f->tensors || !f->by_name || !spans) {
        rc = ts_fail(err, TS_ERR_NOMEM, "%s: out of memory for %zu tensors", label, n);
        goto out;
    }

    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (strcmp(name, ST_METADATA_KEY) == 0)
            continue;
        if (name[0] == '\0') {
            rc = ts_fail(err, TS_ERR_FORMAT, "%s: header has a tensor with an empty name",
                         label);
            goto out;
        }
        ts_st_tensor *t = &f->tensors[f->count];
        st_span *s = &spans[f->count];
        rc = st_parse_entry(label, name, entry, data, data_len, t, &s->begin, &s->end, err);
        if (rc != TS_OK)
            goto out;
        t->name = strdup(name);
        if (!t->name) {
            rc = ts_fail(err, TS_ERR_NOMEM, "%s: out of memory for tensor names", label);
            goto out;
        }
        s->index = f->count;
        f->by_name[f->count] = t;
        f->count++;
    }

    if ((rc = st_check_overlap(f, spans, err)) != TS_OK)
        goto out;

    /* The header was parsed with JSON_REJECT_DUPLICATES, so names are already unique;
     * sorting only serves lookups. */
    qsort(f->by_name, (size_t)f->count, sizeof *f->by_name, st_name_cmp);

out:
    free(spans);
    json_decref(root);
    return rc;
}

/* Builds a file over base/len; map is the same bytes when they are a mapping that the
 * file now owns, else NULL. On failure frees everything, including the mapping. */
static int st_parse(const uint8_t *base, size_t len, void *map, const char *label,
                    ts_st_file **out, ts_error *err)
{
    ts_st_file *f = calloc(1, sizeof *f);
    char *label_copy = strdup(label);
    if (!f || !label_copy) {
        free(f);
        free(label_copy);
        if (map)
            munmap(map, len);
        return ts_fail(err, TS_ERR_NOMEM, "%s: out of memory", label);
    }
    f->label = label_copy;
    f->base = base;
    f->len = len;
    f->map = map;
    int rc = st_parse_header(f, err);
    if (rc != TS_OK) {
        ts_st_close(f);
        return rc;
    }
    *out = f;
    ts_error_clear(err);
    return TS_OK;
}

/* Maps path read-only and validates it. Files that cannot be opened, stat'ed or mapped
 * are TS_ERR_IO; files too short to hold a header length are TS_ERR_FORMAT (mmap of an
 * empty file would fail, so length is checked before mapping). */
int ts_st_open(const char *path, ts_st_file **out, ts_error *err)
{
    if (!out)
        return ts_fail(err, TS_ERR_INVALID, "ts_st_open: out is NULL");
    *out = NULL;
    if (!path)
        return ts_fail(err, TS_ERR_INVALID, "ts_st_open: path is NULL");

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ts_fail(err, TS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ts_fail(err, TS_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ts_fail(err, TS_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return ts_fail(err, TS_ERR_IO, "%s: file too large to map", path);
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) {
        close(fd);
        return ts_fail(err, TS_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte "
                       "header length", path, len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);   /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return ts_fail(err, TS_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    return st_parse(map, len, map, path, out, err);
}

/* Validates a caller-owned buffer; the file borrows buf and never frees it. */
int ts_st_open_buffer(const void *buf, size_t len, const char *label,
                      ts_st_file **out, ts_error *err)
{
    if (!label)
        label = "<buffer>";
    if (!out)
        return ts_fail(err, TS_ERR_INVALID, "%s: ts_st_open_buffer: out is NULL", label);
    *out = NULL;
    if (!buf && len)
        return ts_fail(err, TS_ERR_INVALID, "%s: buffer is NULL", label);
    if (!buf)
        return ts_fail(err, TS_ERR_FORMAT, "%s: file is 0 bytes, too short for the 8-byte "
                       "header length", label);
    return st_parse(buf, len, NULL, label, out, err);
}

int ts_st_count(const ts_st_file *f)
{
    return f ? f->count : 0;
}

/* NULL when i is out of range. */
const ts_st_tensor *ts_st_at(const ts_st_file *f, int i)
{
    if (!f || i < 0 || i >= f->count)
        return NULL;
    return &f->tensors[i];
}

/* Binary search over the name index built at open. */
static ts_st_tensor *st_find(const ts_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    int lo = 0, hi = f->count;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        ts_st_tensor *t = f->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const ts_st_tensor *ts_st_find(const ts_st_file *f, const char *name)
{
    return st_find(f, name);
}

const char *ts_st_label(const ts_st_file *f)
{
    return f ? f->label : "";
}

/* Checks dtype membership first, then the exact shape (ndim included); marks the tensor
 * used only when both match, and sets *out only on success. */
int ts_st_get(ts_st_file *f, const char *name, unsigned dtypes, int ndim,
              const int64_t *shape, const ts_st_tensor **out, ts_error *err)
{
    if (out)
        *out = NULL;
    if (!f || !name)
        return ts_fail(err, TS_ERR_INVALID, "ts_st_get: file or name is NULL");
    if (ndim < 0 || ndim > TS_ST_MAX_DIMS || (ndim > 0 && !shape))
        return ts_fail(err, TS_ERR_INVALID, "%s: ts_st_get('%s'): bad expected shape "
                       "(ndim %d)", f->label, name, ndim);

    ts_st_tensor *t = st_find(f, name);
    if (!t)
        return ts_fail(err, TS_ERR_MISSING, "%s: tensor '%s' is missing", f->label, name);

    if (!(dtypes & TS_ST_ONLY(t->dtype))) {
        char want[64];
        st_format_dtypes(want, sizeof want, dtypes);
        return ts_fail(err, TS_ERR_DTYPE, "%s: tensor '%s' has dtype %s, expected %s%s",
                       f->label, name, ts_dtype_name(t->dtype),
                       strchr(want, ',') ? "one of " : "", want);
    }

    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char have[ST_SHAPE_STR_MAX], want[ST_SHAPE_STR_MAX];
        return ts_fail(err, TS_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s",
                       f->label, name, st_format_shape(have, sizeof have, t->ndim, t->shape),
                       st_format_shape(want, sizeof want, ndim, shape));
    }

    /* Kernels read weights as typed arrays; the converter always writes them aligned. */
    if ((uintptr_t)t->data % ts_dtype_size(t->dtype))
        return ts_fail(err, TS_ERR_FORMAT, "%s: tensor '%s' is not aligned to its %zu-byte "
                       "elements (rewrite the file with tools/convert.py)", f->label, name,
                       ts_dtype_size(t->dtype));

    t->used = 1;
    if (out)
        *out = t;
    return TS_OK;
}

/* Reports the first tensor, in header order, that no ts_st_get asked for. */
int ts_st_check_all_used(const ts_st_file *f, ts_error *err)
{
    if (!f)
        return ts_fail(err, TS_ERR_INVALID, "ts_st_check_all_used: file is NULL");
    for (int i = 0; i < f->count; i++)
        if (!f->tensors[i].used)
            return ts_fail(err, TS_ERR_FORMAT, "%s: unexpected tensor '%s' (not part of this "
                           "model)", f->label, f->tensors[i].name);
    return TS_OK;
}
