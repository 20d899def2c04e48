/* fuzz_request.c - ts_api_parse (api/request.h) on arbitrary request bodies.
 *
 * The first byte picks the endpoint (native with or without "stream", OpenAI with or
 * without), which models the server runs (class-conditional LlamaGen with a class-name
 * table or without one, a text-to-image LlamaGen, FQGAN, MaskGen, in eight mixes) and
 * max_n; the rest is the body. Beyond "no crash" it asserts what the server relies on:
 *   - success: the request targets a model the server has; n is in [1, max_n]; the seed
 *     is at most 2^53; the prompt is NUL-terminated and at most TS_API_MAX_PROMPT bytes
 *     of valid UTF-8; a class request has a class id in range, a text request none;
 *     sampling values are in the ranges the engine accepts; no stream where the endpoint
 *     does not allow one; previews only when streaming, never more often than every step;
 *   - failure: a 4xx status, a stable code and a non-empty message that the server can
 *     put in its JSON error body (ts_api_error_json succeeds: valid UTF-8);
 *   - parsing is deterministic: the same body gives the same answer twice.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "api/request.h"
#include "api/response.h"
#include "fuzz_util.h"

static char *CLASS_NAMES[] = {
    "tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark", "red apple",
    "golden retriever", "7", "  Mixed   CASE ,  spaced  ", "caf\xc3\xa9, \xe6\x9d\xb1\xe4\xba\xac",
    "", "a,,b,",
};
#define N_CLASSES ((int)(sizeof CLASS_NAMES / sizeof CLASS_NAMES[0]))

static const ts_class_table NAMED = {N_CLASSES, CLASS_NAMES};
static const ts_class_table EMPTY = {0, NULL};

static ts_api_model api_ar(int t2i, const ts_class_table *classes)
{
    ts_api_model m = {.present = 1, .name = t2i ? "llamagen-t2i" : "llamagen-c2i",
                      .image_size = 256, .n_tokens = 256, .num_classes = t2i ? 0 : N_CLASSES,
                      .vocab_size = 16384, .classes = classes, .t2i = t2i};
    m.gen_defaults = (ts_gen_params){t2i ? 7.5f : 4.0f, -1.0f, {1.0f, t2i ? 1000 : 2000, 1.0f}, 0};
    return m;
}

static ts_api_model api_far(const ts_class_table *classes)
{
    ts_api_model m = {.present = 1, .name = "fqgan", .image_size = 256, .n_tokens = 256,
                      .num_classes = N_CLASSES, .vocab_size = 16384, .classes = classes};
    m.gen_defaults = (ts_gen_params){4.0f, -1.0f, {1.0f, 2000, 1.0f}, 0};
    return m;
}

static ts_api_model api_masked(void)
{
    ts_api_model m = {.present = 1, .name = "maskgen", .image_size = 256, .n_tokens = 128,
                      .classes = &EMPTY};
    m.defaults = (ts_mask_params){16, 12.0f, 2.0f, 6.5f, 0};
    return m;
}

/* Bits 2-4 of the first byte: which models the server runs. */
static void make_limits(unsigned sel, ts_api_limits *lim)
{
    static const int MAX_N[] = {1, 2, 3, 4, 8, 12, 16, 16};
    memset(lim, 0, sizeof *lim);
    switch ((sel >> 2) & 7) {
    case 0: lim->ar = api_ar(0, &NAMED); lim->far = api_far(&NAMED);
            lim->masked = api_masked(); break;
    case 1: lim->ar = api_ar(1, &EMPTY); lim->far = api_far(&NAMED);
            lim->masked = api_masked(); break;
    case 2: lim->ar = api_ar(1, &EMPTY); break;
    case 3: lim->masked = api_masked(); break;
    case 4: lim->far = api_far(&EMPTY); break;
    case 5: lim->ar = api_ar(0, &EMPTY); break;
    case 6: lim->ar = api_ar(0, &NAMED); lim->masked = api_masked(); break;
    default: lim->ar = api_ar(1, &EMPTY); lim->far = api_far(&EMPTY); break;
    }
    lim->max_n = MAX_N[(sel >> 5) & 7];
    lim->preview_every = 8;
    lim->masked_preview_every = 2;
}

static void check_success(ts_api_kind kind, int allow_stream, const ts_api_limits *lim,
                          const ts_gen_request *r)
{
    const ts_job_spec *s = &r->spec;
    const ts_api_model *m = ts_api_model_of(lim, s->family);
    FZ_CHECK(s->family == TS_JOB_AR || s->family == TS_JOB_FAR || s->family == TS_JOB_MASKED,
             "family %d", (int)s->family);
    FZ_CHECK(m->present, "family %d has no model", (int)s->family);
    FZ_CHECK(s->n_images >= 1 && s->n_images <= lim->max_n, "n %d, max_n %d", s->n_images,
             lim->max_n);
    FZ_CHECK(s->params.seed <= TS_API_MAX_SEED, "seed %llu", (unsigned long long)s->params.seed);
    const char *nul = memchr(s->prompt, '\0', sizeof s->prompt);
    FZ_CHECK(nul != NULL, "prompt not NUL-terminated");
    size_t plen = (size_t)(nul - s->prompt);
    FZ_CHECK(plen <= TS_API_MAX_PROMPT, "prompt of %zu bytes", plen);
    FZ_CHECK(fz_utf8_valid(s->prompt, plen), "prompt is not valid UTF-8");
    if (s->family == TS_JOB_MASKED) {
        FZ_CHECK(s->class_id == -1, "masked request with class %d", (int)s->class_id);
        FZ_CHECK(s->mask.steps >= 1 && s->mask.steps <= m->n_tokens, "steps %d", s->mask.steps);
        FZ_CHECK(isfinite(s->mask.guidance) && s->mask.guidance >= 0, "guidance %g",
                 (double)s->mask.guidance);
        FZ_CHECK(isfinite(s->mask.randomize_temperature) && s->mask.randomize_temperature >= 0,
                 "randomize_temperature %g", (double)s->mask.randomize_temperature);
        FZ_CHECK(isfinite(s->mask.aesthetic), "aesthetic %g", (double)s->mask.aesthetic);
    } else {
        if (m->t2i)
            FZ_CHECK(s->class_id == -1, "t2i request with class %d", (int)s->class_id);
        else
            FZ_CHECK(s->class_id >= 0 && s->class_id < m->num_classes && plen == 0,
                     "class %d of %d, prompt of %zu bytes", (int)s->class_id, m->num_classes,
                     plen);
        const ts_gen_params *p = &s->params;
        FZ_CHECK(isfinite(p->cfg_scale) && p->cfg_scale >= 0, "cfg %g", (double)p->cfg_scale);
        FZ_CHECK(isfinite(p->cfg_interval) && p->cfg_interval >= -1, "cfg_interval %g",
                 (double)p->cfg_interval);
        FZ_CHECK(isfinite(p->sample.temperature) && p->sample.temperature > 0,
                 "temperature %g", (double)p->sample.temperature);
        FZ_CHECK(p->sample.top_k >= 0, "top_k %d", p->sample.top_k);
        FZ_CHECK(p->sample.top_p > 0 && p->sample.top_p <= 1, "top_p %g",
                 (double)p->sample.top_p);
    }
    FZ_CHECK(r->stream == 0 || r->stream == 1, "stream %d", r->stream);
    FZ_CHECK(allow_stream || !r->stream, "stream on an endpoint without it");
    FZ_CHECK(r->partial_images >= 0 && r->partial_images <= 3, "partial_images %d",
             r->partial_images);
    FZ_CHECK(kind == TS_API_OPENAI || r->partial_images == 0, "partial_images on native");
    FZ_CHECK(r->stream || s->preview_every == 0, "previews without streaming");
    FZ_CHECK(s->preview_every >= 0, "preview_every %d", s->preview_every);
}

static void check_failure(const ts_api_error *e)
{
    FZ_CHECK(e->status >= 400 && e->status < 500, "status %d", e->status);
    FZ_CHECK(e->code && e->code[0], "no code");
    const char *nul = memchr(e->message, '\0', sizeof e->message);
    FZ_CHECK(nul && nul > e->message, "empty or unterminated message");
    char *json = ts_api_error_json(e->code, e->message);
    FZ_CHECK(json != NULL, "the error body cannot be made (message not UTF-8?): %s", e->message);
    free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > TS_API_MAX_BODY + 1) return 0;
    unsigned sel = data[0];
    ts_api_kind kind = sel & 2 ? TS_API_OPENAI : TS_API_NATIVE;
    int allow_stream = sel & 1;
    ts_api_limits lim;
    make_limits(sel, &lim);
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    const uint64_t random_seed = 0xfedcba9876543210ull;

    ts_gen_request r, r2;
    ts_api_error e, e2;
    memset(&e, 0, sizeof e);
    memset(&e2, 0, sizeof e2);
    int rc = ts_api_parse(kind, body, len, &lim, allow_stream, random_seed, &r, &e);
    FZ_CHECK(rc == 0 || rc == -1, "rc %d", rc);
    if (rc == 0) check_success(kind, allow_stream, &lim, &r);
    else check_failure(&e);

    int rc2 = ts_api_parse(kind, body, len, &lim, allow_stream, random_seed, &r2, &e2);
    FZ_CHECK(rc2 == rc, "rc %d then %d", rc, rc2);
    if (rc == 0)
        FZ_CHECK(memcmp(&r.spec.prompt, &r2.spec.prompt, sizeof r.spec.prompt) == 0 &&
                 r.spec.n_images == r2.spec.n_images && r.spec.family == r2.spec.family &&
                 r.spec.class_id == r2.spec.class_id && r.spec.params.seed == r2.spec.params.seed,
                 "two parses differ");
    else
        FZ_CHECK(e.status == e2.status && strcmp(e.message, e2.message) == 0,
                 "two refusals differ");
    return 0;
}
