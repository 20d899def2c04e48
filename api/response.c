/* response.c - see response.h. */
#include "response.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *ts_base64(const uint8_t *d, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out) return NULL;
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < len ? (uint32_t)d[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

char *ts_api_dump(json_t *o)
{
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

char *ts_api_error_json(const char *code, const char *message)
{
    return ts_api_dump(json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message));
}

json_t *ts_api_images_json(const ts_api_image *imgs, int n, int openai)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++) {
        char *b64 = ts_base64(imgs[i].png, imgs[i].png_len);
        if (!b64) {
            json_decref(arr);
            return NULL;
        }
        json_t *o = json_pack("{s:s, s:I}", openai ? "b64_json" : "png", b64, "seed",
                              (json_int_t)imgs[i].seed);
        free(b64);
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

char *ts_sse_event(const char *name, const char *json)
{
    size_t n = strlen(name) + strlen(json) + 32;
    char *s = malloc(n);
    if (s) snprintf(s, n, "event: %s\ndata: %s\n\n", name, json);
    return s;
}
