/* routes.c - the HTTP endpoints: MHD's access handler dispatching on method and path.
 * Bodies and errors are JSON (api/); generation requests become jobs (jobs.c).
 */
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/cli.h"

void server_count_status(server *s, int status)
{
    if (status >= 100 && status < 600) {
        s->m.responses[status / 100]++;
        s->m.by_status[status]++;
    }
}

/* ------------------------------------------------------------------ responses */

/* Queues data as the response, with one optional extra header. */
static enum MHD_Result send_body_hdr(conn *c, int status, const char *type, void *data, size_t len,
                                     enum MHD_ResponseMemoryMode mode, const char *hname,
                                     const char *hvalue)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, mode);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (hname) MHD_add_response_header(r, hname, hvalue);
    enum MHD_Result ok = MHD_queue_response(c->mhd, (unsigned)status, r);
    MHD_destroy_response(r);
    server_count_status(c->srv, status);
    return ok;
}

static enum MHD_Result send_body(conn *c, int status, const char *type, void *data, size_t len,
                                 enum MHD_ResponseMemoryMode mode)
{
    return send_body_hdr(c, status, type, data, len, mode, NULL, NULL);
}

/* Takes ownership of json. */
static enum MHD_Result send_json(conn *c, int status, char *json)
{
    if (!json) return MHD_NO;
    return send_body(c, status, "application/json", json, strlen(json), MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result send_error_hdr(conn *c, int status, const char *code, const char *hname,
                                      const char *hvalue, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *json = ts_api_error_json(code, msg);
    if (!json) return MHD_NO;
    return send_body_hdr(c, status, "application/json", json, strlen(json),
                         MHD_RESPMEM_MUST_FREE, hname, hvalue);
}

#define send_error(c, status, code, ...) send_error_hdr(c, status, code, NULL, NULL, __VA_ARGS__)

static enum MHD_Result send_api_error(conn *c, const ts_api_error *e)
{
    return send_error(c, e->status, e->code, "%s", e->message);
}

static enum MHD_Result not_ready(conn *c)
{
    server *s = c->srv;
    if (s->draining) return send_error(c, 503, "draining", "the server is shutting down");
    ts_worker_state st = ts_worker_get_state(s->worker);
    if (st == TS_WORKER_FAILED)
        return send_error(c, 503, "load_failed", "the model failed to load: %s",
                          ts_worker_error(s->worker));
    return send_error(c, 503, "loading", "the model is loading");
}

static int ready(server *s) { return ts_worker_get_state(s->worker) == TS_WORKER_READY; }

/* ------------------------------------------------------------------ simple endpoints */

/* [{"id": ..., "family": ...}, ...]: what /health lists. */
static json_t *models_brief(server *s)
{
    json_t *arr = json_array();
    for (int k = 0; arr && k < ts_worker_n_models(s->worker); k++) {
        const ts_model_info *i = ts_worker_info(s->worker, k);
        json_array_append_new(arr, json_pack("{s:s, s:s}", "id", i->name, "family", i->family));
    }
    return arr;
}

static enum MHD_Result get_health(conn *c)
{
    server *s = c->srv;
    if (s->draining || !ready(s)) return not_ready(c);
    return send_json(c, 200, ts_api_dump(json_pack("{s:s, s:o}", "status", "ok", "models",
                                                   models_brief(s))));
}

/* Liveness: the event loop answers, whatever the models are doing. Unlike /health it stays
 * 200 while loading and draining, so a supervisor that restarts on failed liveness checks
 * does not kill a replica that is still loading or finishing its accepted requests. */
static enum MHD_Result get_live(conn *c)
{
    server *s = c->srv;
    const char *state = s->draining ? "draining" : ready(s) ? "ready" : "loading";
    return send_json(c, 200, ts_api_dump(json_pack("{s:s, s:s}", "status", "alive", "state", state)));
}

static enum MHD_Result get_metrics(conn *c)
{
    char *text = metrics_render(c->srv);
    if (!text) return MHD_NO;
    return send_body(c, 200, "text/plain; version=0.0.4", text, strlen(text),
                     MHD_RESPMEM_MUST_FREE);
}

/* One /v1/models entry: what the model is and the parameters its requests take. */
static json_t *model_json(server *s, const ts_model_info *i)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i}", "id", i->name, "object", "model",
                          "owned_by", "tessera", "family", i->family, "image_size", i->image_size,
                          "tokens", i->n_tokens, "max_n", s->limits.max_n);
    if (!o) return NULL;
    if (i->job_family == TS_JOB_AR || i->job_family == TS_JOB_FAR) {
        const ts_class_table *t = ts_api_model_of(&s->limits, i->job_family)->classes;
        if (i->job_family == TS_JOB_FAR) {   /* ids per image: positions x sub-tokens */
            json_object_set_new(o, "tokens", json_integer((json_int_t)i->n_tokens * i->n_sub));
            json_object_set_new(o, "positions", json_integer(i->n_tokens));
            json_object_set_new(o, "sub_tokens", json_integer(i->n_sub));
        }
        json_object_set_new(o, "num_classes", json_integer(i->num_classes));
        json_object_set_new(o, "class_names", json_boolean(!i->t2i && t && t->n > 0));
        json_object_set_new(o, "input", json_string(i->t2i ? "prompt" : "class"));
        if (i->t2i) json_object_set_new(o, "max_prompt_bytes", json_integer(TS_API_MAX_PROMPT));
        json_object_set_new(o, "steps", json_integer(i->n_tokens));
        const ts_gen_params *d = &i->gen_defaults;
        json_object_set_new(o, "defaults",
                            json_pack("{s:f, s:f, s:i, s:f, s:f}", "cfg", (double)d->cfg_scale,
                                      "cfg_interval", (double)d->cfg_interval, "top_k",
                                      d->sample.top_k, "top_p", (double)d->sample.top_p,
                                      "temperature", (double)d->sample.temperature));
        json_object_set_new(o, "preview_every", json_integer(s->opt.preview_every));
    } else {
        const ts_mask_params *d = &i->defaults;
        json_object_set_new(o, "num_tokens", json_integer(i->n_tokens));
        json_object_set_new(o, "codebook_size", json_integer(i->codebook_size));
        json_object_set_new(o, "input", json_string("prompt"));
        json_object_set_new(o, "max_prompt_bytes", json_integer(i->max_prompt_bytes));
        json_object_set_new(o, "steps", json_integer(d->steps));
        json_object_set_new(o, "defaults",
                            json_pack("{s:i, s:f, s:f, s:f}", "steps", d->steps, "guidance",
                                      (double)d->guidance, "randomize_temperature",
                                      (double)d->randomize_temperature, "aesthetic",
                                      (double)d->aesthetic));
        json_object_set_new(o, "preview_every", json_integer(s->opt.masked_preview_every));
    }
    return o;
}

static enum MHD_Result get_models(conn *c)
{
    server *s = c->srv;
    if (!ready(s)) return not_ready(c);
    json_t *arr = json_array();
    for (int k = 0; arr && k < ts_worker_n_models(s->worker); k++)
        json_array_append_new(arr, model_json(s, ts_worker_info(s->worker, k)));
    return send_json(c, 200, ts_api_dump(json_pack("{s:s, s:o}", "object", "list", "data", arr)));
}

/* GET /v1/classes[?model=ID]: the classes of the named model (none for a MaskGen
 * one), else of the default class model (LlamaGen, else FQGAN; none without either). */
static enum MHD_Result get_classes(conn *c)
{
    server *s = c->srv;
    if (!ready(s)) return not_ready(c);
    const char *want = MHD_lookup_connection_value(c->mhd, MHD_GET_ARGUMENT_KIND, "model");
    const ts_api_model *m = ts_api_default_class_model(&s->limits);
    if (want) {
        m = NULL;
        static const ts_job_family families[] = {TS_JOB_AR, TS_JOB_FAR, TS_JOB_MASKED};
        int found = 0;
        for (int k = 0; k < 3 && !found; k++) {
            const ts_api_model *x = ts_api_model_of(&s->limits, families[k]);
            if (x->present && strcmp(x->name, want) == 0) {
                found = 1;
                if (families[k] != TS_JOB_MASKED) m = x;
            }
        }
        if (!found)
            return send_error(c, 404, "not_found", "model: no model \"%.80s\" on this server "
                              "(see GET /v1/models)", want);
    }
    json_t *arr = json_array();
    int n = m ? m->num_classes : 0;
    for (int i = 0; arr && i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        json_array_append_new(arr, json_pack("{s:i, s:s}", "id", i, "name",
                                             m->classes->n ? m->classes->names[i] : id));
    }
    return send_json(c, 200, ts_api_dump(json_pack("{s:o}", "classes", arr)));
}

static enum MHD_Result get_asset(conn *c, const char *url)
{
    if (strcmp(url, "/") == 0) url = "/index.html";
    for (int i = 0; i < ts_web_n_assets; i++)
        if (strcmp(ts_web_assets[i].path, url) == 0)
            return send_body(c, 200, ts_web_assets[i].type, (void *)ts_web_assets[i].data,
                             ts_web_assets[i].len, MHD_RESPMEM_PERSISTENT);
    return send_error(c, 404, "not_found", "no such path: %.200s", url);
}

/* ------------------------------------------------------------------ generation */

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    conn *c = cls;
    if (c->out_off < c->out_len) {
        size_t n = c->out_len - c->out_off;
        if (n > max) n = max;
        memcpy(buf, c->out + c->out_off, n);
        c->out_off += n;
        c->last_write = server_now();
        return (ssize_t)n;
    }
    if (c->sse_closed) return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing to say yet: sleep until the loop has an event or a ping for us. */
    MHD_suspend_connection(c->mhd);
    c->suspended = 1;
    return 0;
}

static enum MHD_Result start_stream(conn *c)
{
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                               sse_reader, c, NULL);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");   /* nginx: do not buffer */
    c->last_write = server_now();
    enum MHD_Result ok = MHD_queue_response(c->mhd, 200, r);
    MHD_destroy_response(r);
    server_count_status(c->srv, 200);
    return ok;
}

static int wants(conn *c, const char *type)
{
    const char *a = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, "Accept");
    return a && strstr(a, type);
}

static enum MHD_Result start_job(conn *c, ts_api_kind api, job_kind kind)
{
    server *s = c->srv;
    if (s->draining || !ready(s)) return not_ready(c);
    ts_gen_request req;
    ts_api_error e;
    uint64_t seed = ((uint64_t)rand() << 31 ^ (uint64_t)rand()) % TS_API_MAX_SEED;
    if (ts_api_parse(api, c->body ? c->body : "", c->len, &s->limits, kind != JOB_ASYNC, seed,
                     &req, &e))
        return send_api_error(c, &e);
    if (kind == JOB_SYNC && api == TS_API_NATIVE && wants(c, "text/event-stream")) req.stream = 1;
    if (req.stream) {
        kind = JOB_STREAM;
        if (api == TS_API_NATIVE) req.spec.preview_every = ts_api_preview_every(&s->limits, &req.spec);
    }
    ts_error err = {0};
    if (ts_worker_check(s->worker, &req.spec, &err))
        return send_error(c, 422, "invalid_field", "%s", err.msg);
    if (s->n_queued >= s->opt.queue_limit) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after_seconds(s));
        return send_error_hdr(c, 429, "queue_full", "Retry-After", ra,
                              "the queue is full (%d waiting); retry later", s->n_queued);
    }
    if (kind == JOB_ASYNC && s->n_async >= s->opt.max_jobs) {
        /* Finished results are kept until fetched and deleted or expired: refusing new
         * jobs bounds their memory without dropping a result nobody has read yet. */
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after_seconds(s));
        return send_error_hdr(c, 429, "too_many_jobs", "Retry-After", ra,
                              "%d jobs are held (--max-jobs); DELETE finished ones or retry "
                              "later", s->n_async);
    }
    job *j = jobs_create(s, kind, api, &req);
    if (!j) return send_error(c, 500, "internal", "out of memory");
    if (ts_worker_submit(s->worker, j->id, &req.spec, &err)) {
        jobs_forget(s, j);
        s->n_queued--;
        return send_error(c, 500, "internal", "%s", err.msg);
    }
    if (kind == JOB_ASYNC)
        return send_json(c, 202, ts_api_dump(json_pack("{s:s, s:s, s:i}", "id", j->id_str,
                                                       "state", "queued", "queue_position",
                                                       s->n_queued)));
    j->conn = c;
    c->job = j;
    if (kind == JOB_STREAM) return start_stream(c);
    MHD_suspend_connection(c->mhd);   /* answered when the job ends (jobs.c resumes us) */
    c->suspended = 1;
    c->waiting = 1;
    return MHD_YES;
}

/* A synchronous job's connection, resumed: answer with what happened. */
static enum MHD_Result answer_job(conn *c)
{
    server *s = c->srv;
    job *j = c->job;
    if (!j) return MHD_NO;   /* the client left; nothing to send */
    enum MHD_Result ok;
    if (j->state == JOB_COMPLETED) {
        if (j->api == TS_API_NATIVE && j->n_ready == 1 && !wants(c, "application/json")) {
            ts_api_image *im = &j->images[0];
            char seed[32];
            snprintf(seed, sizeof seed, "%llu", (unsigned long long)im->seed);
            ok = send_body_hdr(c, 200, "image/png", im->png, im->png_len, MHD_RESPMEM_MUST_COPY,
                               "X-Seed", seed);
        } else {
            ok = send_json(c, 200, ts_api_dump(job_result_json(s, j)));
        }
    } else {
        ok = send_error(c, j->error_status, j->error_code, "%s", j->error_message);
    }
    jobs_detach(s, j);
    return ok;
}

/* ------------------------------------------------------------------ jobs API */

static json_t *job_json(server *s, job *j)
{
    json_t *o = json_pack("{s:s, s:s, s:i, s:{s:i, s:i}}", "id", j->id_str, "state",
                          job_state_name(j->state), "queue_position", j->position, "progress",
                          "step", j->step, "total", j->total);
    if (!o) return NULL;
    if (j->state == JOB_COMPLETED) json_object_set_new(o, "result", job_result_json(s, j));
    if (j->state == JOB_FAILED || j->state == JOB_CANCELLED)
        json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", j->error_code, "message",
                                                  j->error_message));
    return o;
}

static enum MHD_Result job_endpoint(conn *c, const char *method, const char *id)
{
    server *s = c->srv;
    job *j = jobs_find(s, id);
    if (!j || j->kind != JOB_ASYNC) return send_error(c, 404, "not_found", "no job %.64s", id);
    if (strcmp(method, "GET") == 0) {
        if (j->state >= JOB_COMPLETED) j->fetched = 1;   /* a drain need not wait for it */
        return send_json(c, 200, ts_api_dump(job_json(s, j)));
    }
    /* DELETE */
    if (j->state == JOB_QUEUED || j->state == JOB_RUNNING) {
        ts_worker_cancel(s->worker, j->id);   /* CANCELLED arrives later; keep the record */
        json_t *o = job_json(s, j);
        json_object_set_new(o, "state", json_string("cancelling"));
        return send_json(c, 200, ts_api_dump(o));
    }
    char *body = ts_api_dump(job_json(s, j));
    jobs_forget(s, j);
    return send_json(c, 200, body);
}

/* ------------------------------------------------------------------ dispatch */

static int authorised(conn *c)
{
    server *s = c->srv;
    if (!s->n_api_keys) return 1;
    const char *h = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    for (int i = 0; i < s->n_api_keys; i++)
        if (strcmp(h + 7, s->api_keys[i]) == 0) return 1;
    return 0;
}

static enum MHD_Result method_not_allowed(conn *c, const char *allow)
{
    return send_error_hdr(c, 405, "method_not_allowed", "Allow", allow,
                          "method not allowed here; use %s", allow);
}

static enum MHD_Result dispatch(conn *c, const char *url, const char *method)
{
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int post = strcmp(method, "POST") == 0;
    int del = strcmp(method, "DELETE") == 0;
    if (strcmp(url, "/health") == 0) return get ? get_health(c) : method_not_allowed(c, "GET");
    if (strcmp(url, "/health/live") == 0) return get ? get_live(c) : method_not_allowed(c, "GET");
    if (strcmp(url, "/metrics") == 0) return get ? get_metrics(c) : method_not_allowed(c, "GET");
    int gen = strcmp(url, "/generate") == 0, openai = strcmp(url, "/v1/images/generations") == 0;
    int jobs = strcmp(url, "/v1/jobs") == 0, job = strncmp(url, "/v1/jobs/", 9) == 0;
    int models = strcmp(url, "/v1/models") == 0, classes = strcmp(url, "/v1/classes") == 0;
    if (gen || openai || jobs || job || models || classes) {
        if (!authorised(c))
            return send_error_hdr(c, 401, "unauthorized", "WWW-Authenticate", "Bearer",
                                  "missing or wrong API key (Authorization: Bearer KEY)");
    }
    if (gen || openai || jobs) {
        if (!post) return method_not_allowed(c, "POST");
        if (c->too_large)
            return send_error(c, 413, "payload_too_large", "the body is over %d bytes",
                              TS_API_MAX_BODY);
        return start_job(c, openai ? TS_API_OPENAI : TS_API_NATIVE, jobs ? JOB_ASYNC : JOB_SYNC);
    }
    if (job) {
        if (!get && !del) return method_not_allowed(c, "GET, DELETE");
        return job_endpoint(c, get ? "GET" : "DELETE", url + 9);
    }
    if (models) return get ? get_models(c) : method_not_allowed(c, "GET");
    if (classes) return get ? get_classes(c) : method_not_allowed(c, "GET");
    if (!get) {
        for (int i = 0; i < ts_web_n_assets; i++)
            if (strcmp(ts_web_assets[i].path, url) == 0 || strcmp(url, "/") == 0)
                return method_not_allowed(c, "GET");
        return send_error(c, 404, "not_found", "no such path: %.200s", url);
    }
    return get_asset(c, url);
}

enum MHD_Result routes_handle(void *cls, struct MHD_Connection *mc, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    (void)version;
    server *s = cls;
    conn *c = *con_cls;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c) return MHD_NO;
        c->srv = s;
        c->mhd = mc;
        *con_cls = c;
        /* Refuse an announced oversized body before reading it. */
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > TS_API_MAX_BODY) {
            c->too_large = 1;
            return send_error(c, 413, "payload_too_large", "the body is over %d bytes",
                              TS_API_MAX_BODY);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (c->too_large || c->len + n > TS_API_MAX_BODY) {
            c->too_large = 1;   /* keep reading, drop the bytes, answer 413 at the end */
            return MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            size_t cap = c->cap ? c->cap : 1024;
            while (cap < c->len + n + 1) cap *= 2;
            char *b = realloc(c->body, cap);
            if (!b) return MHD_NO;
            c->body = b;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload, n);
        c->len += n;
        c->body[c->len] = '\0';
        return MHD_YES;
    }
    if (c->waiting) return answer_job(c);   /* resumed after the job ended */
    if (c->sse_closed) return MHD_NO;
    return dispatch(c, url, method);
}

void routes_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)mc;
    server *s = cls;
    conn *c = *con_cls;
    if (!c) return;
    if (c->job) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) s->m.disconnects++;
        jobs_detach(s, c->job);   /* cancels the job if it is still running */
    }
    free(c->body);
    free(c->out);
    free(c);
    *con_cls = NULL;
}
