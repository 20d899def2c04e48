/* request.h - generation requests from JSON bodies: parsing, routing to a model, and
 * validation.
 *
 * A server holds at most one LlamaGen (class-conditional, autoregressive), one FQGAN
 * (its FAR generator: class-conditional, autoregressive) and one MaskGen (text-to-
 * image, masked) model; the LlamaGen model may be text-to-image (t2i) instead. "model"
 * names one; otherwise "class" goes to the default class model (a class-conditional
 * LlamaGen when the server has one, else FQGAN) and "prompt" to the MaskGen model when
 * there is one, else to a t2i LlamaGen, else it is a class name for the default class
 * model. Fields of another family are refused, naming the field. "negative_prompt" is
 * refused by every model: none was trained with one (LlamaGen t2i's CFG branch is a
 * learned null caption, MaskGen's the empty prompt).
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
#define TS_API_MAX_PROMPT 1000   /* bytes: class names and text prompts */
#define TS_API_MAX_SEED ((uint64_t)1 << 53)   /* exact in every JSON client's doubles */

typedef struct ts_api_error {
    int status;              /* 400, 401, 404, 405, 413, 422, 429, 500, 503 */
    const char *code;        /* stable: "invalid_field", ... */
    char message[320];
} ts_api_error;

/* Fills e and returns -1, for `return ts_api_fail(e, 422, "invalid_field", ...)`. */
int ts_api_fail(ts_api_error *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* One model the server runs, as the parser sees it. */
typedef struct ts_api_model {
    int present;
    const char *name;                /* the id GET /v1/models lists; borrowed */
    int image_size;
    int n_tokens;                    /* steps: LlamaGen tokens, FQGAN positions (each
                                        n_sub ids), MaskGen tokens */
    int num_classes, vocab_size;     /* LlamaGen, FQGAN */
    const ts_class_table *classes;   /* LlamaGen, FQGAN: class names (may be empty) */
    ts_mask_params defaults;         /* MaskGen: steps, guidance, randomize_temperature,
                                        aesthetic when a request leaves them out */
    ts_gen_params gen_defaults;      /* LlamaGen, FQGAN: cfg, cfg_interval and sampling
                                        when a request leaves them out (the model's
                                        config.json "sampling", else upstream's) */
    int t2i;                         /* LlamaGen text-to-image: a prompt, no class */
} ts_api_model;

/* What the parser needs to know about the server and its models. */
typedef struct ts_api_limits {
    ts_api_model ar, masked, far;    /* LlamaGen, MaskGen, FQGAN; at least one present */
    int max_n;                       /* min(TS_API_MAX_N, --max-batch) */
    int preview_every;               /* --preview-every: LlamaGen tokens, FQGAN positions */
    int masked_preview_every;        /* --masked-preview-every: MaskGen steps */
} ts_api_limits;

typedef enum ts_api_kind { TS_API_NATIVE, TS_API_OPENAI } ts_api_kind;

typedef struct ts_gen_request {
    ts_job_spec spec;                /* spec.family says which model */
    int stream;
    int partial_images;              /* OpenAI streaming: previews wanted (0-3) */
} ts_gen_request;

/* Parses a body for /generate and /v1/jobs (allow_stream = 0 refuses "stream"), or for
 * /v1/images/generations (kind TS_API_OPENAI, whose "model" chooses a model only when it
 * names one of ours: OpenAI clients send their own names). random_seed is used when no
 * seed is given. An unknown "model" on the native endpoints is 404 not_found. */
int ts_api_parse(ts_api_kind kind, const char *body, size_t len, const ts_api_limits *lim,
                 int allow_stream, uint64_t random_seed, ts_gen_request *out, ts_api_error *e);

/* The previews a streamed request gets: every --preview-every tokens (LlamaGen) or
 * positions (FQGAN), or --masked-preview-every steps (MaskGen). */
int ts_api_preview_every(const ts_api_limits *lim, const ts_job_spec *spec);

/* The model that runs requests of family (its `present` may be 0). */
const ts_api_model *ts_api_model_of(const ts_api_limits *lim, ts_job_family family);

/* The model a class request without "model" goes to: LlamaGen when the server has
 * one, else FQGAN; NULL when it has neither. */
const ts_api_model *ts_api_default_class_model(const ts_api_limits *lim);

#endif
