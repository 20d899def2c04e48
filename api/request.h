/* request.h - generation requests from JSON bodies: parsing and validation.
 *
 * Runs on the event loop (never the engine thread). Every refusal names the field and
 * the rule in `message`, with the HTTP status and stable code the API answers with.
 */
#ifndef TS_REQUEST_H
#define TS_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "api/classes.h"
#include "scheduler/scheduler.h"

#define TS_API_MAX_BODY (64 * 1024)
#define TS_API_MAX_N 16
#define TS_API_MAX_PROMPT 1000
#define TS_API_MAX_SEED ((uint64_t)1 << 53)   /* exact in every JSON client's doubles */

typedef struct ts_api_error {
    int status;              /* 400, 401, 404, 405, 413, 422, 429, 500, 503 */
    const char *code;        /* stable: "invalid_field", ... */
    char message[320];
} ts_api_error;

/* Fills e and returns -1, for `return ts_api_fail(e, 422, "invalid_field", ...)`. */
int ts_api_fail(ts_api_error *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* What the parser needs to know about the server and its model. */
typedef struct ts_api_limits {
    int num_classes, vocab_size, image_size, n_tokens;
    int max_n;                       /* min(TS_API_MAX_N, --max-batch) */
    int preview_every;               /* --preview-every */
    const ts_class_table *classes;
} ts_api_limits;

typedef enum ts_api_kind { TS_API_NATIVE, TS_API_OPENAI } ts_api_kind;

typedef struct ts_gen_request {
    ts_job_spec spec;
    int stream;
    int partial_images;              /* OpenAI streaming: previews wanted (0-3) */
} ts_gen_request;

/* Parses a body for /generate and /v1/jobs (allow_stream = 0 refuses "stream"), or for
 * /v1/images/generations (kind TS_API_OPENAI). random_seed is used when no seed is given. */
int ts_api_parse(ts_api_kind kind, const char *body, size_t len, const ts_api_limits *lim,
                 int allow_stream, uint64_t random_seed, ts_gen_request *out, ts_api_error *e);

#endif
