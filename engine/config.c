/* config.c - see config.h. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CONFIG_MAX_BYTES (1L << 20)

int ts_json_load_file(const char *path, json_t **out, ts_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ts_fail(err, TS_ERR_IO, "%s: cannot open", path);
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
    int rd_err = ferror(f);
    fclose(f);
    if (!buf) return ts_fail(err, TS_ERR_NOMEM, "%s: out of memory", path);
    if (rd_err) {
        free(buf);
        return ts_fail(err, TS_ERR_IO, "%s: read error", path);
    }
    if (n > CONFIG_MAX_BYTES) {
        free(buf);
        return ts_fail(err, TS_ERR_CONFIG, "%s: larger than %ld bytes", path, CONFIG_MAX_BYTES);
    }
    json_error_t je;
    json_t *root = json_loadb(buf, n, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    if (!root)
        return ts_fail(err, TS_ERR_CONFIG, "%s: line %d: %s", path, je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return ts_fail(err, TS_ERR_CONFIG, "%s: top level is not an object", path);
    }
    *out = root;
    return TS_OK;
}

static const json_t *field(const json_t *obj, const char *section, const char *key,
                           ts_error *err)
{
    const json_t *v = json_object_get(obj, key);
    if (!v) ts_fail(err, TS_ERR_CONFIG, "config: missing %s.%s", section, key);
    return v;
}

int ts_json_int(const json_t *obj, const char *section, const char *key, long min, long max,
                int *out, ts_error *err)
{
    const json_t *v = field(obj, section, key, err);
    if (!v) return TS_ERR_CONFIG;
    if (!json_is_integer(v))
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s must be an integer", section, key);
    json_int_t x = json_integer_value(v);
    if (x < min || x > max)
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s = %lld is outside [%ld, %ld]",
                       section, key, (long long)x, min, max);
    *out = (int)x;
    return TS_OK;
}

int ts_json_float(const json_t *obj, const char *section, const char *key, double min,
                  double max, float *out, ts_error *err)
{
    const json_t *v = field(obj, section, key, err);
    if (!v) return TS_ERR_CONFIG;
    if (!json_is_number(v))
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s must be a number", section, key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < min || x > max)
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s = %g is outside [%g, %g]", section,
                       key, x, min, max);
    *out = (float)x;
    return TS_OK;
}

int ts_json_bool(const json_t *obj, const char *section, const char *key, int *out,
                 ts_error *err)
{
    const json_t *v = field(obj, section, key, err);
    if (!v) return TS_ERR_CONFIG;
    if (!json_is_boolean(v))
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s must be true or false", section, key);
    *out = json_is_true(v);
    return TS_OK;
}

int ts_json_string(const json_t *obj, const char *section, const char *key, const char **out,
                   ts_error *err)
{
    const json_t *v = field(obj, section, key, err);
    if (!v) return TS_ERR_CONFIG;
    if (!json_is_string(v))
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s must be a string", section, key);
    *out = json_string_value(v);
    return TS_OK;
}

int ts_json_int_array(const json_t *obj, const char *section, const char *key, long min,
                      long max, int *out, int max_n, int *n, ts_error *err)
{
    const json_t *v = field(obj, section, key, err);
    if (!v) return TS_ERR_CONFIG;
    size_t len = json_is_array(v) ? json_array_size(v) : 0;
    if (len < 1 || len > (size_t)max_n)
        return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s must be an array of 1 to %d integers",
                       section, key, max_n);
    for (size_t i = 0; i < len; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < min || json_integer_value(e) > max)
            return ts_fail(err, TS_ERR_CONFIG, "config: %s.%s[%zu] must be an integer in [%ld, %ld]",
                           section, key, i, min, max);
        out[i] = (int)json_integer_value(e);
    }
    *n = (int)len;
    return TS_OK;
}
