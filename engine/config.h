/* config.h - strict readers for a model folder's config.json (jansson).
 *
 * Each getter checks presence, JSON type and range, and reports the failure as
 * TS_ERR_CONFIG naming "<section>.<key>", so a hand-edited config fails clearly.
 */
#ifndef TS_CONFIG_H
#define TS_CONFIG_H

#include <jansson.h>

#include "error.h"

/* Reads and parses path; the caller json_decref()s *out. Files above 1 MiB are refused. */
int ts_json_load_file(const char *path, json_t **out, ts_error *err);

int ts_json_int(const json_t *obj, const char *section, const char *key, long min, long max,
                int *out, ts_error *err);
int ts_json_float(const json_t *obj, const char *section, const char *key, double min,
                  double max, float *out, ts_error *err);
int ts_json_bool(const json_t *obj, const char *section, const char *key, int *out,
                 ts_error *err);
/* The borrowed string value (valid while obj lives). */
int ts_json_string(const json_t *obj, const char *section, const char *key, const char **out,
                   ts_error *err);
/* An array of 1..max_n integers in [min, max]; *n gets the count. */
int ts_json_int_array(const json_t *obj, const char *section, const char *key, long min,
                      long max, int *out, int max_n, int *n, ts_error *err);

#endif
