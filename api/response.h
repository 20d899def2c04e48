/* response.h - response bodies: JSON errors, image lists (native and OpenAI forms),
 * base64, and Server-Sent Event framing. Every function returns a malloc'd,
 * NUL-terminated string the caller frees (NULL only when out of memory).
 */
#ifndef TS_RESPONSE_H
#define TS_RESPONSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* One finished image: PNG bytes and the seed that regenerates it alone. */
typedef struct ts_api_image {
    uint8_t *png;
    size_t png_len;
    uint64_t seed;
} ts_api_image;

char *ts_base64(const uint8_t *data, size_t len);

/* {"error": {"code": code, "message": message}} */
char *ts_api_error_json(const char *code, const char *message);

/* [{"seed": s, "png": base64}, ...] (native) or [{"b64_json": ..., "seed": s}] (OpenAI). */
json_t *ts_api_images_json(const ts_api_image *imgs, int n, int openai);

/* Serialises and releases o (compact). */
char *ts_api_dump(json_t *o);

/* "event: NAME\ndata: JSON\n\n" (the data has no newlines: compact JSON). */
char *ts_sse_event(const char *name, const char *json);

#endif
