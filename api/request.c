/* request.c - see request.h. */
#include "request.h"

#include "engine/text/unicode.h"

_Static_assert(TS_API_MAX_PROMPT <= TS_SCHED_MAX_PROMPT, "a prompt must fit a job spec");

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ts_api_fail(ts_api_error *e, int status, const char *code, const char *fmt, ...)
{
    e->status = status;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    /* Messages quote the client's bytes (jansson's "near '...'" holds them raw, even
     * invalid UTF-8) and "%.80s" or the buffer's end can cut a character in two; the
     * error body is JSON, which must be UTF-8, or the server could not answer at all
     * (found by tests/fuzz/fuzz_request.c). Every byte that starts no valid character
     * becomes '?'. */
    unsigned char *m = (unsigned char *)e->message;
    for (size_t i = 0, n = strlen(e->message); i < n;) {
        uint32_t cp;
        size_t len = ts_utf8_char(m + i, n - i, &cp);
        if (len) i += len;
        else m[i++] = '?';
    }
    return -1;
}

#define INVALID(...) ts_api_fail(e, 422, "invalid_field", __VA_ARGS__)

/* Optional integer field in [lo, hi]; JSON numbers with a fraction are refused. */
static int get_int(json_t *o, const char *k, long long lo, long long hi, long long *v,
                   ts_api_error *e)
{
    json_t *x = json_object_get(o, k);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_integer(x)) return INVALID("%s: must be an integer", k);
    long long n = json_integer_value(x);
    if (n < lo || n > hi) return INVALID("%s: must be between %lld and %lld", k, lo, hi);
    *v = n;
    return 0;
}

static int get_num(json_t *o, const char *k, double lo, double hi, int lo_open, double *v,
                   ts_api_error *e)
{
    json_t *x = json_object_get(o, k);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_number(x)) return INVALID("%s: must be a number", k);
    double d = json_number_value(x);
    if (!isfinite(d) || d > hi || d < lo || (lo_open && d == lo))
        return INVALID("%s: must be a number in %s%g, %g]", k, lo_open ? "(" : "[", lo, hi);
    *v = d;
    return 0;
}

static int get_bool(json_t *o, const char *k, int *v, ts_api_error *e)
{
    json_t *x = json_object_get(o, k);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_boolean(x)) return INVALID("%s: must be true or false", k);
    *v = json_is_true(x);
    return 0;
}

const ts_api_model *ts_api_model_of(const ts_api_limits *lim, ts_job_family family)
{
    return family == TS_JOB_MASKED ? &lim->masked : family == TS_JOB_FAR ? &lim->far : &lim->ar;
}

static int class_ar(const ts_api_limits *lim) { return lim->ar.present && !lim->ar.t2i; }

const ts_api_model *ts_api_default_class_model(const ts_api_limits *lim)
{
    return class_ar(lim) ? &lim->ar : lim->far.present ? &lim->far : NULL;
}

static ts_job_family class_family(const ts_api_limits *lim)
{
    return class_ar(lim) ? TS_JOB_AR : TS_JOB_FAR;
}

static int resolve_prompt(json_t *x, const char *k, const ts_api_model *ar, int32_t *cls,
                          ts_api_error *e)
{
    if (!json_is_string(x)) return INVALID("%s: must be a string", k);
    const char *p = json_string_value(x);
    if (strlen(p) > TS_API_MAX_PROMPT)
        return INVALID("%s: longer than %d bytes", k, TS_API_MAX_PROMPT);
    int c = ts_classes_lookup(ar->classes, ar->num_classes, p);
    if (c < 0) {
        if (ar->classes->n == 0)
            return INVALID("%s: this model has no class-name table; give a class id (0-%d)", k,
                           ar->num_classes - 1);
        return INVALID("%s: \"%.80s\" is not a class name of this model (see GET /v1/classes)",
                       k, p);
    }
    *cls = c;
    return 0;
}

/* Fields by family; "model", "prompt", "n", "seed" and "stream" are common. */
static const char *const COMMON_KEYS[] = {"model", "prompt", "n", "seed", "stream",
                                          "negative_prompt", NULL};
static const char *const AR_KEYS[] = {"class", "cfg", "cfg_interval", "top_k", "top_p",
                                      "temperature", NULL};
static const char *const MASKED_KEYS[] = {"guidance", "randomize_temperature", "aesthetic",
                                          "steps", NULL};
static const char *const OPENAI_KEYS[] = {"prompt", "n", "seed", "size", "response_format",
                                          "model", "stream", "partial_images", "user",
                                          "quality", "output_format", "background",
                                          "moderation", "style", NULL};

static int known(const char *const *keys, const char *k)
{
    for (int i = 0; keys[i]; i++)
        if (strcmp(keys[i], k) == 0) return 1;
    return 0;
}

static int present(json_t *o, const char *k)
{
    json_t *x = json_object_get(o, k);
    return x && !json_is_null(x);
}

/* The model a request runs on (sets out->spec.family). */
static int route(ts_api_kind kind, json_t *o, const ts_api_limits *lim, ts_gen_request *out,
                 ts_api_error *e)
{
    const ts_api_model *mg = &lim->masked;
    int has_class_model = ts_api_default_class_model(lim) != NULL;
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model)) {
        const char *name = json_is_string(model) ? json_string_value(model) : NULL;
        static const ts_job_family families[] = {TS_JOB_AR, TS_JOB_FAR, TS_JOB_MASKED};
        for (int i = 0; name && i < 3; i++) {
            const ts_api_model *m = ts_api_model_of(lim, families[i]);
            if (m->present && strcmp(name, m->name) == 0) {
                out->spec.family = families[i];
                return 0;
            }
        }
        if (kind == TS_API_NATIVE) {
            if (!name) return INVALID("model: must be a string (a model id from GET /v1/models)");
            return ts_api_fail(e, 404, "not_found", "model: no model \"%.80s\" on this server "
                               "(see GET /v1/models)", name);
        }
        /* OpenAI clients name their own models ("dall-e-3", ...): ignored. */
    }
    if (kind == TS_API_NATIVE && present(o, "class")) {
        if (!has_class_model)
            return INVALID("class: this server has no class-conditional model; give a prompt");
        out->spec.family = class_family(lim);
        return 0;
    }
    if (present(o, "prompt")) {
        out->spec.family = mg->present ? TS_JOB_MASKED
                           : lim->ar.present && lim->ar.t2i ? TS_JOB_AR : class_family(lim);
        return 0;
    }
    if (kind == TS_API_OPENAI)
        return INVALID(mg->present ? "prompt: required (the text to draw)"
                                   : "prompt: required (a class name of this model)");
    if (!mg->present) return INVALID("class: required (or prompt, a class name)");
    if (!has_class_model) return INVALID("prompt: required (the text to draw)");
    return INVALID("prompt: required (the text to draw), or class for the class-conditional "
                   "model");
}

/* A field given for the family that does not take it (null counts as absent). */
static int check_family_fields(json_t *o, const ts_api_limits *lim, ts_job_family fam,
                               ts_api_error *e)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (json_is_null(v)) continue;
        if (fam == TS_JOB_MASKED && known(AR_KEYS, k))
            return INVALID("%s: not a parameter of the MaskGen model \"%.80s\", which takes "
                           "prompt, n, seed, guidance, randomize_temperature, aesthetic, steps "
                           "and stream", k, lim->masked.name);
        if (fam != TS_JOB_MASKED && known(MASKED_KEYS, k))
            return INVALID("%s: not a parameter of the %s model \"%.80s\", which takes "
                           "class or prompt, n, seed, cfg, cfg_interval, top_k, top_p, "
                           "temperature and stream", k, fam == TS_JOB_FAR ? "FQGAN" : "LlamaGen",
                           ts_api_model_of(lim, fam)->name);
    }
    return 0;
}

/* A text prompt into spec->prompt (MaskGen, LlamaGen t2i). */
static int copy_prompt(json_t *o, ts_job_spec *s, ts_api_error *e)
{
    json_t *prompt = json_object_get(o, "prompt");
    if (!prompt || json_is_null(prompt)) return INVALID("prompt: required (the text to draw)");
    if (!json_is_string(prompt)) return INVALID("prompt: must be a string");
    /* jansson has checked the UTF-8 and refused NUL characters. */
    size_t len = json_string_length(prompt);
    if (len > TS_API_MAX_PROMPT)
        return INVALID("prompt: longer than %d bytes of UTF-8", TS_API_MAX_PROMPT);
    memcpy(s->prompt, json_string_value(prompt), len);
    s->prompt[len] = '\0';
    s->class_id = -1;
    return 0;
}

static int parse_masked(ts_api_kind kind, json_t *o, const ts_api_limits *lim,
                        ts_gen_request *out, ts_api_error *e)
{
    const ts_api_model *mg = &lim->masked;
    ts_job_spec *s = &out->spec;
    if (copy_prompt(o, s, e)) return -1;
    double guidance = mg->defaults.guidance, rtemp = mg->defaults.randomize_temperature;
    double aesthetic = mg->defaults.aesthetic;
    long long steps = mg->defaults.steps;
    if (kind == TS_API_NATIVE &&
        (get_num(o, "guidance", 0.0, 1000.0, 0, &guidance, e) ||
         get_num(o, "randomize_temperature", 0.0, 1000.0, 0, &rtemp, e) ||
         get_num(o, "aesthetic", -1000.0, 1000.0, 0, &aesthetic, e) ||
         get_int(o, "steps", 1, mg->n_tokens, &steps, e)))
        return -1;
    s->mask = (ts_mask_params){(int)steps, (float)guidance, (float)rtemp, (float)aesthetic, 0};
    return 0;
}

/* A class-conditional request: LlamaGen or FQGAN (the same fields and defaults). */
static int parse_ar(ts_api_kind kind, json_t *o, const ts_api_limits *lim, ts_gen_request *out,
                    ts_api_error *e)
{
    const ts_api_model *ar = ts_api_model_of(lim, out->spec.family);
    ts_job_spec *s = &out->spec;
    /* Defaults are the model's (config.json "sampling", else upstream's sample_c2i.py
     * values), as the CLI's are, so requests match it. */
    const ts_gen_params *d = &ar->gen_defaults;
    long long top_k = d->sample.top_k;
    double cfg = d->cfg_scale, interval = d->cfg_interval, top_p = d->sample.top_p,
           temp = d->sample.temperature;
    json_t *cls = json_object_get(o, "class"), *prompt = json_object_get(o, "prompt");
    if (ar->t2i) {
        if (cls && !json_is_null(cls))
            return INVALID("class: the LlamaGen model \"%.80s\" is text-to-image; give a "
                           "prompt", ar->name);
        if (copy_prompt(o, s, e)) return -1;
    } else if (kind == TS_API_NATIVE && cls && !json_is_null(cls)) {
        if (prompt && !json_is_null(prompt))
            return INVALID("class: give either class or prompt, not both");
        long long c = -1;
        if (get_int(o, "class", 0, ar->num_classes - 1, &c, e)) return -1;
        s->class_id = (int32_t)c;
    } else if (prompt && !json_is_null(prompt)) {
        if (resolve_prompt(prompt, "prompt", ar, &s->class_id, e)) return -1;
    } else {
        return INVALID(kind == TS_API_OPENAI ? "prompt: required (a class name of this model)"
                                             : "class: required (or prompt, a class name)");
    }
    if (kind == TS_API_NATIVE &&
        (get_num(o, "cfg", 0.0, 100.0, 0, &cfg, e) ||
         get_num(o, "cfg_interval", -1.0, 1e6, 0, &interval, e) ||
         get_int(o, "top_k", 0, 1000000, &top_k, e) ||
         get_num(o, "top_p", 0.0, 1.0, 1, &top_p, e) ||
         get_num(o, "temperature", 0.0, 100.0, 1, &temp, e)))
        return -1;
    s->params = (ts_gen_params){(float)cfg, (float)interval,
                                {(float)temp, (int)top_k, (float)top_p}, 0};
    return 0;
}

int ts_api_preview_every(const ts_api_limits *lim, const ts_job_spec *spec)
{
    return spec->family == TS_JOB_MASKED ? lim->masked_preview_every : lim->preview_every;
}

static int parse_fields(ts_api_kind kind, json_t *o, const ts_api_limits *lim, int allow_stream,
                        uint64_t random_seed, ts_gen_request *out, ts_api_error *e)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        int ok = kind == TS_API_OPENAI ? known(OPENAI_KEYS, k)
                                       : known(COMMON_KEYS, k) || known(AR_KEYS, k) ||
                                             known(MASKED_KEYS, k);
        if (!ok) return INVALID("%.64s: unknown field", k);
    }
    ts_job_spec *s = &out->spec;
    memset(out, 0, sizeof *out);
    s->n_images = 1;
    s->class_id = -1;
    long long n = 1, seed = (long long)(random_seed % TS_API_MAX_SEED), partial = 0;
    int stream = 0;
    if (present(o, "negative_prompt"))
        return INVALID("negative_prompt: not supported: no model here was trained with one "
                       "(LlamaGen t2i's guidance branch is a learned null caption, MaskGen's the "
                       "empty prompt)");
    if (route(kind, o, lim, out, e)) return -1;
    int masked = s->family == TS_JOB_MASKED;
    const ts_api_model *model = ts_api_model_of(lim, s->family);
    if (kind == TS_API_NATIVE && check_family_fields(o, lim, s->family, e)) return -1;
    if (masked ? parse_masked(kind, o, lim, out, e) : parse_ar(kind, o, lim, out, e)) return -1;
    if (get_int(o, "n", 1, lim->max_n, &n, e) ||
        get_int(o, "seed", 0, (long long)TS_API_MAX_SEED, &seed, e) ||
        get_bool(o, "stream", &stream, e))
        return -1;
    if (kind == TS_API_OPENAI) {
        json_t *size = json_object_get(o, "size");
        if (size && !json_is_null(size)) {
            char want[32];
            snprintf(want, sizeof want, "%dx%d", model->image_size, model->image_size);
            if (!json_is_string(size) || (strcmp(json_string_value(size), want) != 0 &&
                                          strcmp(json_string_value(size), "auto") != 0))
                return INVALID("size: this model makes %s images", want);
        }
        json_t *fmt = json_object_get(o, "response_format");
        if (fmt && !json_is_null(fmt) &&
            (!json_is_string(fmt) || strcmp(json_string_value(fmt), "b64_json") != 0))
            return INVALID("response_format: only \"b64_json\" is supported");
        json_t *of = json_object_get(o, "output_format");
        if (of && !json_is_null(of) &&
            (!json_is_string(of) || strcmp(json_string_value(of), "png") != 0))
            return INVALID("output_format: only \"png\" is supported");
        if (get_int(o, "partial_images", 0, 3, &partial, e)) return -1;
    }
    if (stream && !allow_stream) return INVALID("stream: not available on this endpoint");
    s->n_images = (int)n;
    s->params.seed = (uint64_t)seed;
    out->stream = stream;
    out->partial_images = (int)partial;
    if (kind == TS_API_OPENAI) {
        /* Previews evenly spaced: partial_images of them before the end. */
        int steps = masked ? s->mask.steps : model->n_tokens;
        s->preview_every = stream && partial ? steps / ((int)partial + 1) : 0;
        if (s->preview_every < 1 && stream && partial) s->preview_every = 1;
    } else {
        s->preview_every = stream ? ts_api_preview_every(lim, s) : 0;
    }
    return 0;
}

int ts_api_parse(ts_api_kind kind, const char *body, size_t len, const ts_api_limits *lim,
                 int allow_stream, uint64_t random_seed, ts_gen_request *out, ts_api_error *e)
{
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) return ts_api_fail(e, 400, "bad_request", "body is not valid JSON: %s (line %d)",
                               jerr.text, jerr.line);
    int rc;
    if (!json_is_object(o)) rc = ts_api_fail(e, 400, "bad_request", "body must be a JSON object");
    else rc = parse_fields(kind, o, lim, allow_stream, random_seed, out, e);
    json_decref(o);
    return rc;
}
