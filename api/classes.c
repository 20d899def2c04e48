/* classes.c - see classes.h. */
#include "classes.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Walks s[0..n) as lookups compare it: lower case, runs of spaces folded to one, the ends
 * trimmed. Two names then compare whole, at any length, without a copy. */
typedef struct norm_walk {
    const char *s;
    size_t n, i;
    int out;       /* characters given so far */
    int space;     /* a space is owed before the next character */
} norm_walk;

static norm_walk walk_start(const char *s, size_t n)
{
    return (norm_walk){.s = s, .n = n};
}

/* The next character, or -1 at the end. */
static int walk_next(norm_walk *w)
{
    while (w->i < w->n && isspace((unsigned char)w->s[w->i])) {
        w->space = w->out > 0;
        w->i++;
    }
    if (w->i == w->n) return -1;
    w->out++;
    if (w->space) {
        w->space = 0;
        return ' ';
    }
    return tolower((unsigned char)w->s[w->i++]);
}

static int same_name(const char *a, size_t na, const char *b, size_t nb)
{
    norm_walk x = walk_start(a, na), y = walk_start(b, nb);
    for (;;) {
        int c = walk_next(&x), d = walk_next(&y);
        if (c != d) return 0;
        if (c < 0) return 1;
    }
}

/* A class id written in decimal, spaces around it allowed; -1 if prompt is not one. */
static long decimal_id(const char *prompt)
{
    while (isspace((unsigned char)*prompt)) prompt++;
    if (!isdigit((unsigned char)*prompt)) return -1;
    char *end;
    errno = 0;
    long id = strtol(prompt, &end, 10);
    while (isspace((unsigned char)*end)) end++;
    return *end || errno ? -1 : id;
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
    size_t n_prompt = strlen(prompt);
    norm_walk w = walk_start(prompt, n_prompt);
    if (walk_next(&w) < 0) return -1;   /* empty or only spaces */
    long id = decimal_id(prompt);
    if (id >= 0) return id < n_classes ? (int)id : -1;
    for (int i = 0; i < t->n; i++) {
        const char *line = t->names[i];
        if (same_name(line, strlen(line), prompt, n_prompt)) return i;
        for (const char *p = line; *p;) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            if (same_name(p, n, prompt, n_prompt)) return i;
            p += n + (comma ? 1 : 0);
        }
    }
    return -1;
}
