/* fuzz_classes.c - class-name tables (api/classes.h): ts_classes_load on arbitrary
 * classes.txt content and ts_classes_lookup on arbitrary queries.
 *
 * Input: two bytes (little-endian) give the model's class count, 1 + (v % 2048); then
 * the file's bytes up to the first "\0\0" (single NULs stay in the file); after it,
 * queries separated by NUL. Beyond "no crash" and no leak it asserts:
 *   - a load either gives exactly n_classes names or fails with TS_ERR_CONFIG (line
 *     count) and a message, leaving an empty table; a file with no line break problems
 *     loads iff its line count (a final empty line aside) is n_classes;
 *   - a lookup returns -1 or an id below n_classes, with or without a table;
 *   - every name in a loaded table finds its own line or an earlier one with the same
 *     spelling, unless it is all digits (then it is read as an id) or blank;
 *   - lookups ignore case and runs of spaces: an upper-cased, space-padded query gives
 *     the same id.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/classes.h"
#include "fuzz_util.h"

/* What lookups compare: lower case, single spaces, no ends (classes.c's rule), written
 * out whole. The caller frees the result. */
static char *norm(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    FZ_CHECK(out, "out of memory");
    size_t o = 0;
    int space = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isspace(c)) {
            space = o > 0;
            continue;
        }
        if (space) out[o++] = ' ';
        space = 0;
        out[o++] = (char)tolower(c);
    }
    out[o] = '\0';
    return out;
}

static int all_digits(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

static void check_lookup(const ts_class_table *t, int n_classes, const char *q)
{
    int id = ts_classes_lookup(t, n_classes, q);
    FZ_CHECK(id >= -1 && id < n_classes, "lookup gave %d of %d", id, n_classes);
    /* The same query shouted and padded. */
    size_t n = strlen(q);
    char *loud = malloc(2 * n + 8);
    FZ_CHECK(loud, "out of memory");
    size_t o = 0;
    loud[o++] = ' ';
    for (size_t i = 0; i < n; i++) {
        loud[o++] = (char)toupper((unsigned char)q[i]);
        if (q[i] == ' ') loud[o++] = '\t';
    }
    loud[o++] = ' ';
    loud[o] = '\0';
    int id2 = ts_classes_lookup(t, n_classes, loud);
    /* Upper-casing maps no two lower-case ASCII letters together, so ids agree at any
     * length (names compare whole). */
    FZ_CHECK(id2 == id, "'%s' gives %d, '%s' gives %d", q, id, loud, id2);
    free(loud);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > (1u << 20)) return 0;
    int n_classes = 1 + (int)((data[0] | (unsigned)data[1] << 8) % 2048);
    const uint8_t *file = data + 2, *end = data + size;
    const uint8_t *sep = file;
    while (sep + 1 < end && !(sep[0] == 0 && sep[1] == 0)) sep++;
    if (sep + 1 >= end) sep = end;
    size_t file_len = (size_t)(sep - file);

    char path[64];
    int fd = fz_memfile(file, file_len, path, sizeof path);
    ts_class_table t;
    ts_error err = {0};
    int rc = ts_classes_load(path, n_classes, &t, &err);
    close(fd);
    if (rc) {
        FZ_CHECK(rc == TS_ERR_CONFIG && err.msg[0], "rc %d: %s", rc, err.msg);
        FZ_CHECK(t.n == 0 && t.names == NULL, "a failed load left %d names", t.n);
    } else {
        FZ_CHECK(t.n == n_classes && t.names, "%d names for %d classes", t.n, n_classes);
    }

    /* Each name finds itself (or an earlier line that normalises the same). */
    for (int i = 0; i < t.n; i++) {
        FZ_CHECK(t.names[i], "name %d is NULL", i);
        char *want = norm(t.names[i], strlen(t.names[i]));
        if (!want[0] || all_digits(want)) {
            free(want);
            continue;
        }
        int id = ts_classes_lookup(&t, n_classes, t.names[i]);
        FZ_CHECK(id >= 0 && id <= i, "line %d ('%s') looks up as %d", i, t.names[i], id);
        if (id < i) {
            /* the earlier line must share the spelling, whole or as a synonym */
            char *got = norm(t.names[id], strlen(t.names[id]));
            int same = strcmp(got, want) == 0;
            free(got);
            for (const char *p = t.names[id]; !same && *p;) {
                const char *comma = strchr(p, ',');
                size_t k = comma ? (size_t)(comma - p) : strlen(p);
                got = norm(p, k);
                same = strcmp(got, want) == 0;
                free(got);
                p += k + (comma ? 1 : 0);
                if (!comma) break;
            }
            FZ_CHECK(same, "line %d ('%s') found line %d ('%s')", i, t.names[i], id, t.names[id]);
        }
        free(want);
    }

    const ts_class_table empty = {0, NULL};
    for (const uint8_t *q = sep + (sep < end ? 2 : 0); q < end;) {
        const uint8_t *z = memchr(q, 0, (size_t)(end - q));
        size_t qn = z ? (size_t)(z - q) : (size_t)(end - q);
        char *query = malloc(qn + 1);
        FZ_CHECK(query, "out of memory");
        memcpy(query, q, qn);
        query[qn] = '\0';
        check_lookup(&t, n_classes, query);
        check_lookup(&empty, n_classes, query);
        free(query);
        q += qn + 1;
    }
    ts_classes_free(&t);
    return 0;
}
