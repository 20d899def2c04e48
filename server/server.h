/* server.h - the state `tessera serve` keeps on its event-loop thread.
 *
 * One libuv loop owns every socket: libmicrohttpd runs in external-event mode and its
 * epoll descriptor is watched by a uv_poll handle (http.c). Requests become jobs
 * (jobs.c) that the engine worker thread runs; the worker wakes the loop through a
 * uv_async handle and the loop turns events into PNGs, JSON and SSE. Everything here
 * is touched by the loop thread only.
 */
#ifndef TS_SERVER_H
#define TS_SERVER_H

#include <microhttpd.h>
#include <stdint.h>
#include <uv.h>

#include "api/classes.h"
#include "api/request.h"
#include "api/response.h"
#include "scheduler/worker.h"

typedef struct serve_options {
    const char *model_dirs[TS_WORKER_MAX_MODELS];   /* --model, in order */
    int n_models;
    const char *host;
    int port;
    int max_batch;
    size_t kv_memory;
    int queue_limit;
    const char *api_key_file;
    int preview_every;      /* LlamaGen: tokens between previews; FQGAN: positions */
    int masked_preview_every;   /* MaskGen: steps between previews */
    int threads;
    const char *device;     /* cpu, cuda or auto */
    int job_ttl;            /* seconds a finished async job is kept */
    int max_jobs;           /* /v1/jobs held at once, finished ones included */
    int drain_grace;        /* seconds a drained server waits for /v1/jobs results to be
                               fetched before it exits */
    double sse_ping;        /* seconds between keep-alive comments */
    int max_connections;
    int idle_timeout;       /* seconds a connection may send nothing before it is closed */
    int prefill_tokens;     /* LlamaGen t2i: text positions prefilled per step */
} serve_options;

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED } job_state;

typedef enum job_kind {
    JOB_SYNC,       /* /generate or /v1/images/generations, answered when done */
    JOB_STREAM,     /* the same with Server-Sent Events */
    JOB_ASYNC,      /* /v1/jobs: kept until fetched and expired */
} job_kind;

struct conn;

typedef struct job {
    uint64_t id;
    char id_str[40];
    job_kind kind;
    ts_api_kind api;
    ts_gen_request req;
    job_state state;
    int position;                /* in the waiting queue, 1-based; 0 once running */
    int step, total;
    int partials_sent;           /* OpenAI partial images so far */
    ts_api_image *images;        /* [n_images], filled as IMAGE events arrive */
    int n_ready;
    char error_code[32];
    int error_status;
    char error_message[256];
    double created, started, finished;   /* monotonic seconds */
    long long created_unix;              /* wall clock, for the OpenAI `created` */
    int first_preview_seen;
    int fetched;                 /* /v1/jobs: a GET has returned its final state */
    struct conn *conn;           /* the connection waiting on it, or NULL */
    struct job *next;
} job;

typedef struct server_metrics {
    uint64_t responses[6];       /* by status class: [0] unused, 1xx..5xx */
    uint64_t by_status[600];     /* by exact status (< 600) */
    uint64_t images_generated, requests_cancelled, disconnects;
    /* Histograms share the step-time bounds of the worker (seconds). */
    uint64_t ttfp_hist[TS_STEP_TIME_BUCKETS];
    double ttfp_sum;
    uint64_t latency_hist[TS_STEP_TIME_BUCKETS];
    double latency_sum;
} server_metrics;

typedef struct server {
    serve_options opt;
    uv_loop_t *loop;
    uv_async_t wake;             /* the worker's events are ready */
    uv_poll_t mhd_poll;          /* MHD's epoll descriptor */
    uv_timer_t mhd_timer;        /* MHD's own timeouts */
    uv_timer_t tick;             /* disconnect watchdog, SSE pings, job expiry */
    uv_signal_t sigterm, sigint;
    struct MHD_Daemon *mhd;
    ts_worker *worker;
    int ready_seen;              /* the models' limits are known */
    ts_class_table classes;      /* the LlamaGen model's (empty without one) */
    ts_class_table far_classes;  /* the FQGAN model's (empty without one) */
    ts_api_limits limits;
    char **api_keys;
    int n_api_keys;
    job *jobs;                   /* every live job */
    uint64_t next_job;
    int n_queued;                /* submitted jobs not yet admitted */
    int n_async;                 /* /v1/jobs held (waiting, running or finished), for
                                    --max-jobs */
    double job_seconds_ema;      /* for Retry-After */
    int draining;
    int stopping;
    double drain_started;
    double drain_done;           /* when a drain's last job finished (0: not yet) */
    server_metrics m;
} server;

/* Per-request state that MHD carries for us (its con_cls). */
typedef struct conn {
    server *srv;
    struct MHD_Connection *mhd;
    char *body;
    size_t len, cap;
    int too_large;
    int suspended;
    int waiting;                 /* suspended until its synchronous job ends */
    job *job;
    /* SSE output not yet taken by MHD. */
    char *out;
    size_t out_len, out_off, out_cap;
    int sse_closed;              /* the last event is queued */
    double last_write;
} conn;

double server_now(void);

/* http.c */
int http_start(server *s, ts_error *err);
void http_stop(server *s);
void http_kick(server *s);                 /* run MHD now (after a resume) */
void http_resume(conn *c);
void http_check_disconnects(server *s);

/* routes.c: the MHD access handler and completion callback. */
enum MHD_Result routes_handle(void *cls, struct MHD_Connection *mc, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls);
void routes_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                      enum MHD_RequestTerminationCode toe);
void server_count_status(server *s, int status);

/* jobs.c */
job *jobs_create(server *s, job_kind kind, ts_api_kind api, const ts_gen_request *req);
job *jobs_find(server *s, const char *id);
void jobs_on_events(server *s, ts_event *list);
void jobs_detach(server *s, job *j);       /* its connection went away */
void jobs_expire(server *s);
void jobs_forget(server *s, job *j);
const char *job_state_name(job_state st);
json_t *job_result_json(server *s, job *j); /* the finished body: native or OpenAI form */
const char *job_model_name(server *s, const job *j);
void sse_push(conn *c, const char *event, const char *json);
void sse_comment(conn *c, const char *text);
int retry_after_seconds(server *s);

/* metrics.c */
char *metrics_render(server *s);

/* web assets (generated from web/ at build time) */
typedef struct web_asset {
    const char *path, *type;
    const unsigned char *data;
    size_t len;
} web_asset;
extern const web_asset ts_web_assets[];
extern const int ts_web_n_assets;

#endif
