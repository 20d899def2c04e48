/* classes.h - the class-name table a model folder carries (classes.txt: line i names
 * class i; synonyms separated by commas, as ImageNet writes them, e.g.
 * "golden retriever" or "tench, Tinca tinca").
 *
 * The table owns its strings; ts_classes_free releases them.
 */
#ifndef TS_CLASSES_H
#define TS_CLASSES_H

#include "engine/error.h"

typedef struct ts_class_table {
    int n;
    char **names;   /* [n], each the whole line */
} ts_class_table;

/* Reads path; a missing file gives an empty table (ids still work). A file whose line
 * count is not n_classes is refused, since every name would point at the wrong class. */
int ts_classes_load(const char *path, int n_classes, ts_class_table *t, ts_error *err);
void ts_classes_free(ts_class_table *t);

/* The class a prompt names: a whole line or any one synonym, ignoring case and extra
 * spaces; or a class id written in decimal. -1 if none. */
int ts_classes_lookup(const ts_class_table *t, int n_classes, const char *prompt);

#endif
