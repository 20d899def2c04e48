/* jobs.c - the loop's side of a request: its state, its finished PNGs, and what its
 * connection is told as the engine's events arrive.
 *
 * Lifetime: a job lives while the engine has it or a connection waits on it; an async
 * job (/v1/jobs) also lives until --job-ttl seconds after it finished, or a DELETE.
 */
#include "server.h"

#include <math.h>
#include <stdio.h>
#include <sys/random.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/png_encode.h"
#include "server/cli.h"

const char *job_state_name(job_state st)
{
    static const char *const names[] = {"queued", "running", "completed", "failed", "cancelled"};
    return names[st];
}

static int terminal(const job *j) { return j->state >= JOB_COMPLETED; }

job *jobs_create(server *s, job_kind kind, ts_api_kind api, const ts_gen_request *req)
{
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->images = calloc((size_t)req->spec.n_images, sizeof *j->images);
    if (!j->images) {
        free(j);
        return NULL;
    }
    j->id = ++s->next_job;
    /* Ids are not guessable: a job's results are readable by whoever holds its id, so
     * 64 bits come from the kernel's generator (rand() could be predicted). */
    uint64_t r;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (uint64_t)rand() << 32 ^ (uint64_t)rand() ^ (uint64_t)(server_now() * 1e9);
    snprintf(j->id_str, sizeof j->id_str, "j%llx%016llx", (unsigned long long)j->id,
             (unsigned long long)r);
    j->kind = kind;
    j->api = api;
    j->req = *req;
    j->state = JOB_QUEUED;
    j->total = req->spec.family == TS_JOB_MASKED
                   ? req->spec.mask.steps
                   : ts_api_model_of(&s->limits, req->spec.family)->n_tokens;
    j->created = server_now();
    j->created_unix = (long long)time(NULL);
    j->next = s->jobs;
    s->jobs = j;
    s->n_queued++;
    if (kind == JOB_ASYNC) s->n_async++;
    return j;
}

job *jobs_find(server *s, const char *id)
{
    for (job *j = s->jobs; j; j = j->next)
        if (strcmp(j->id_str, id) == 0) return j;
    return NULL;
}

static void job_free(server *s, job *j)
{
    for (job **p = &s->jobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
    if (j->kind == JOB_ASYNC) s->n_async--;
    for (int i = 0; i < j->req.spec.n_images; i++) free(j->images[i].png);
    free(j->images);
    free(j);
}

void jobs_forget(server *s, job *j)
{
    if (j->conn) j->conn->job = NULL;
    job_free(s, j);
}

static void leave_queue(server *s, job *j)
{
    if (j->state == JOB_QUEUED) s->n_queued--;
}

void jobs_detach(server *s, job *j)
{
    conn *c = j->conn;
    j->conn = NULL;
    if (c) c->job = NULL;
    if (!terminal(j)) {
        ts_worker_cancel(s->worker, j->id);   /* the job is freed when CANCELLED arrives */
        return;
    }
    if (j->kind != JOB_ASYNC) job_free(s, j);
}

void jobs_expire(server *s)
{
    double now = server_now();
    job *next;
    for (job *j = s->jobs; j; j = next) {
        next = j->next;
        if (j->kind == JOB_ASYNC && terminal(j) && now - j->finished > s->opt.job_ttl) job_free(s, j);
    }
}

int retry_after_seconds(server *s)
{
    double est = s->job_seconds_ema > 0 ? s->job_seconds_ema : 5.0;
    int r = (int)ceil(est);
    return r < 1 ? 1 : r > 600 ? 600 : r;
}

/* ------------------------------------------------------------------ SSE output */

static void out_append(conn *c, const char *text)
{
    size_t n = strlen(text);
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n) cap *= 2;
        char *o = realloc(c->out, cap);
        if (!o) return;   /* dropping an event beats crashing; the client sees a gap */
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, text, n);
    c->out_len += n;
    http_resume(c);
}

void sse_push(conn *c, const char *event, const char *json)
{
    if (!json) return;
    char *ev = ts_sse_event(event, json);
    if (ev) out_append(c, ev);
    free(ev);
}

void sse_comment(conn *c, const char *text)
{
    char line[128];
    snprintf(line, sizeof line, ": %s\n\n", text);
    out_append(c, line);
}

static void sse_push_owned(conn *c, const char *event, char *json)
{
    sse_push(c, event, json);
    free(json);
}

/* ------------------------------------------------------------------ results */

const char *job_model_name(server *s, const job *j)
{
    const ts_model_info *i = ts_worker_model(s->worker, j->req.spec.family);
    return i ? i->name : "";
}

json_t *job_result_json(server *s, job *j)
{
    int openai = j->api == TS_API_OPENAI;
    json_t *imgs = ts_api_images_json(j->images, j->n_ready, openai);
    if (!imgs) return NULL;
    if (openai) return json_pack("{s:I, s:o}", "created", (json_int_t)j->created_unix, "data", imgs);
    if (j->req.spec.family == TS_JOB_MASKED || j->req.spec.class_id < 0)   /* text prompts */
        return json_pack("{s:s, s:s, s:o}", "model", job_model_name(s, j), "prompt",
                         j->req.spec.prompt, "images", imgs);
    return json_pack("{s:s, s:i, s:o}", "model", job_model_name(s, j), "class",
                     (int)j->req.spec.class_id, "images", imgs);
}

static int encode_png(server *s, job *j, const ts_event *ev, uint8_t **png, size_t *len)
{
    char params[TS_API_MAX_PROMPT + 512];
    const ts_job_spec *spec = &j->req.spec;
    if (spec->family == TS_JOB_MASKED)
        ts_png_mask_parameters(params, sizeof params, job_model_name(s, j), spec->prompt,
                               ev->image, &spec->mask, spec->params.seed);
    else if (spec->class_id < 0)   /* LlamaGen t2i */
        ts_png_t2i_parameters(params, sizeof params, job_model_name(s, j), spec->prompt,
                              ev->image, &spec->params);
    else
        ts_png_parameters(params, sizeof params, job_model_name(s, j), spec->class_id, ev->image,
                          &spec->params);
    ts_png_text text[] = {{"Software", "Tessera " TESSERA_VERSION}, {"parameters", params}};
    ts_error err = {0};
    if (ts_png_encode(ev->rgb, ev->width, ev->height, text, 2, png, len, &err)) {
        fprintf(stderr, "tessera: png: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static void on_preview(server *s, job *j, const ts_event *ev)
{
    conn *c = j->conn;
    if (!c || j->kind != JOB_STREAM) return;
    if (j->api == TS_API_OPENAI && j->partials_sent >= j->req.partial_images * j->req.spec.n_images)
        return;
    uint8_t *png;
    size_t len;
    if (encode_png(s, j, ev, &png, &len)) return;
    char *b64 = ts_base64(png, len);
    free(png);
    if (!b64) return;
    if (!j->first_preview_seen) {
        j->first_preview_seen = 1;
        ts_hist_seconds_observe(s->m.ttfp_hist, &s->m.ttfp_sum, server_now() - j->created);
    }
    if (j->api == TS_API_OPENAI) {
        char size[32];
        snprintf(size, sizeof size, "%dx%d", ev->width, ev->height);
        int index = j->partials_sent / j->req.spec.n_images;
        sse_push_owned(c, "image_generation.partial_image",
                       ts_api_dump(json_pack("{s:s, s:s, s:i, s:I, s:s, s:s, s:i, s:i}", "type",
                                             "image_generation.partial_image", "b64_json", b64,
                                             "partial_image_index", index, "created_at",
                                             (json_int_t)j->created_unix, "size", size,
                                             "output_format", "png", "image", ev->image, "step",
                                             ev->step)));
        j->partials_sent++;
    } else {
        sse_push_owned(c, "preview",
                       ts_api_dump(json_pack("{s:i, s:i, s:i, s:s}", "image", ev->image, "step",
                                             ev->step, "total", ev->total, "png", b64)));
    }
    free(b64);
}

static void on_image(server *s, job *j, const ts_event *ev)
{
    ts_api_image *im = &j->images[ev->image];
    if (encode_png(s, j, ev, &im->png, &im->png_len)) return;   /* DONE reports the gap */
    im->seed = j->req.spec.params.seed + (uint64_t)ev->image;
    j->n_ready++;
    s->m.images_generated++;
    conn *c = j->conn;
    if (c && j->kind == JOB_STREAM && j->api == TS_API_OPENAI) {
        char *b64 = ts_base64(im->png, im->png_len);
        char size[32];
        snprintf(size, sizeof size, "%dx%d", ev->width, ev->height);
        if (b64)
            sse_push_owned(c, "image_generation.completed",
                           ts_api_dump(json_pack(
                               "{s:s, s:s, s:I, s:s, s:s, s:i, s:I, s:{s:i, s:i, s:i}}", "type",
                               "image_generation.completed", "b64_json", b64, "created_at",
                               (json_int_t)j->created_unix, "size", size, "output_format", "png",
                               "image", ev->image, "seed", (json_int_t)im->seed, "usage",
                               "input_tokens", 1, "output_tokens", ev->total, "total_tokens",
                               1 + ev->total)));
        free(b64);
    }
}

static void finish(server *s, job *j, job_state st, int status, const char *code, const char *msg)
{
    leave_queue(s, j);
    j->state = st;
    j->finished = server_now();
    if (st == JOB_COMPLETED) {
        double d = j->finished - j->created;
        ts_hist_seconds_observe(s->m.latency_hist, &s->m.latency_sum, d);
        s->job_seconds_ema = s->job_seconds_ema > 0 ? 0.8 * s->job_seconds_ema + 0.2 * d : d;
    } else {
        j->error_status = status;
        snprintf(j->error_code, sizeof j->error_code, "%s", code);
        snprintf(j->error_message, sizeof j->error_message, "%s", msg);
        if (st == JOB_CANCELLED) s->m.requests_cancelled++;
    }
    conn *c = j->conn;
    if (c && j->kind == JOB_STREAM) {
        if (st == JOB_COMPLETED && j->api == TS_API_NATIVE)
            sse_push_owned(c, "done", ts_api_dump(job_result_json(s, j)));
        else if (st != JOB_COMPLETED)
            sse_push_owned(c, "error", ts_api_error_json(code, msg));
        c->sse_closed = 1;
        http_resume(c);
    } else if (c) {
        http_resume(c);   /* the access handler answers with the result */
    } else if (j->kind != JOB_ASYNC) {
        job_free(s, j);
    }
}

void jobs_on_events(server *s, ts_event *ev)
{
    while (ev) {
        ts_event *next = ev->next;
        job *j = NULL;
        for (job *k = s->jobs; k; k = k->next)
            if (k->id == ev->job) j = k;
        if (j && !terminal(j)) {
            switch (ev->kind) {
            case TS_EV_QUEUED:
                j->position = ev->position;
                if (j->conn && j->kind == JOB_STREAM && j->api == TS_API_NATIVE)
                    sse_push_owned(j->conn, "queued",
                                   ts_api_dump(json_pack("{s:i}", "position", ev->position)));
                break;
            case TS_EV_STARTED:
                leave_queue(s, j);
                j->state = JOB_RUNNING;
                j->position = 0;
                j->started = server_now();
                if (j->conn && j->kind == JOB_STREAM && j->api == TS_API_NATIVE)
                    sse_push(j->conn, "started", "{}");
                break;
            case TS_EV_PROGRESS:
                j->step = ev->step;
                j->total = ev->total;
                if (j->conn && j->kind == JOB_STREAM && j->api == TS_API_NATIVE)
                    sse_push_owned(j->conn, "progress",
                                   ts_api_dump(json_pack("{s:i, s:i}", "step", ev->step, "total",
                                                         ev->total)));
                break;
            case TS_EV_PREVIEW: on_preview(s, j, ev); break;
            case TS_EV_IMAGE: on_image(s, j, ev); break;
            case TS_EV_DONE:
                if (j->n_ready == j->req.spec.n_images)
                    finish(s, j, JOB_COMPLETED, 200, NULL, NULL);
                else
                    finish(s, j, JOB_FAILED, 500, "internal", "an image could not be encoded");
                break;
            case TS_EV_FAILED:
                /* The engine refused the request's content (e.g. its prompt): the
                 * client's error, as if the parser had caught it. */
                if (ev->code == TS_ERR_INVALID)
                    finish(s, j, JOB_FAILED, 422, "invalid_field", ev->message);
                else
                    finish(s, j, JOB_FAILED, 500, "internal", ev->message);
                break;
            case TS_EV_CANCELLED:
                finish(s, j, JOB_CANCELLED, 409, "cancelled", "the request was cancelled");
                break;
            }
        }
        ts_event_free(ev);
        ev = next;
    }
}
