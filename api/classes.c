/* classes.c - see classes.h. */
#include "classes.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lower-cases s[0..n) into out with runs of spaces folded and ends trimmed. */
static void normalise(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    int space = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isspace(c)) {
            space = o > 0;
            continue;
        }
        if (space && o + 2 < cap) out[o++] = ' ';
        space = 0;
        out[o++] = (char)tolower(c);
    }
    out[o] = '\0';
}

int ts_classes_load(const char *path, int n_classes, ts_class_table *t, ts_error *err)
{
    t->n = 0;
    t->names = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        return ts_fail(err, TS_ERR_IO, "%s: cannot open the class table", path);
    }
    t->names = calloc((size_t)n_classes + 1, sizeof *t->names);
    if (!t->names) {
        fclose(f);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (t->n == n_classes) {
            if (len == 0) continue;   /* a trailing blank line */
            rc = ts_fail(err, TS_ERR_CONFIG, "%s: more than %d lines; the model has %d classes",
                         path, n_classes, n_classes);
            break;
        }
        if (!(t->names[t->n++] = strdup(line))) {
            rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
            break;
        }
    }
    free(line);
    fclose(f);
    if (!rc && t->n != n_classes)
        rc = ts_fail(err, TS_ERR_CONFIG, "%s: %d lines, but the model has %d classes", path, t->n,
                     n_classes);
    if (rc) ts_classes_free(t);
    return rc;
}

void ts_classes_free(ts_class_table *t)
{
    for (int i = 0; t->names && i < t->n; i++) free(t->names[i]);
    free(t->names);
    t->names = NULL;
    t->n = 0;
}

int ts_classes_lookup(const ts_class_table *t, int n_classes, const char *prompt)
{
    char want[512], got[512];
    normalise(prompt, strlen(prompt), want, sizeof want);
    if (!want[0]) return -1;
    char *end;
    errno = 0;
    long id = strtol(want, &end, 10);
    if (isdigit((unsigned char)want[0]) && !*end && !errno)
        return id < n_classes ? (int)id : -1;
    for (int i = 0; i < t->n; i++) {
        const char *line = t->names[i];
        normalise(line, strlen(line), got, sizeof got);
        if (strcmp(got, want) == 0) return i;
        for (const char *p = line; *p;) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            normalise(p, n, got, sizeof got);
            if (strcmp(got, want) == 0) return i;
            p += n + (comma ? 1 : 0);
        }
    }
    return -1;
}
