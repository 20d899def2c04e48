/* cmd_serve.c - `tessera serve`: flags, start-up and shutdown of the HTTP server.
 *
 * Start-up order: listen first (so /health answers 503 while the models load), then
 * start the engine worker, which loads the models on its own thread. SIGTERM/SIGINT:
 * /health and new work get 503 at once, running and queued jobs finish, and the
 * process exits 0 once their answers are out (a second signal exits at once).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/numparse.h"
#include "cli.h"
#include "server.h"

double server_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: tessera serve --model DIR [--model DIR2 [--model DIR3]] [options]\n"
        "\n"
        "Serves the models over HTTP (API: docs/api.md; web page at /).\n"
        "\n"
        "  --model DIR          model folder holding config.json (required); give it up to\n"
        "                       three times to serve a LlamaGen and an FQGAN (class-\n"
        "                       conditional) and a MaskGen (text-to-image) folder side by\n"
        "                       side, stepped together. Requests pick one with \"model\";\n"
        "                       else \"class\" goes to LlamaGen (FQGAN when it is the only\n"
        "                       class-conditional model) and \"prompt\" to MaskGen\n"
        "  --host ADDR          address to listen on (default 127.0.0.1)\n"
        "  --port N             port (default 8080)\n"
        "  --max-batch N        images stepped together, of all models (default 16)\n"
        "  --kv-memory BYTES    KV cache size, suffixes K/M/G allowed: LlamaGen's, or with\n"
        "                       an FQGAN model too the total, split between the two in\n"
        "                       proportion to one image's KV bytes of each (default: each\n"
        "                       holds --max-batch images; on a GPU together at most 90%% of\n"
        "                       the memory left free after loading the weights)\n"
        "  --queue-limit N      requests waiting beyond the batch before 429 (default 64)\n"
        "  --api-key-file F     require `Authorization: Bearer KEY`, one key per line of F\n"
        "  --preview-every N    streamed LlamaGen requests get a preview every N tokens,\n"
        "                       FQGAN ones every N positions (default 32; 0 = none)\n"
        "  --masked-preview-every N  streamed MaskGen requests get a preview every N\n"
        "                       steps (default 1: after each step; 0 = none)\n"
        "  --threads N          CPU backend threads (default: all cores)\n"
        "  --device D           cpu, cuda, cuda-fp32 or auto (default auto: the GPU when this build has\n"
        "                       CUDA and one is usable; cuda without a GPU falls back to\n"
        "                       the CPU with a notice)\n"
        "  --job-ttl SECONDS    keep finished /v1/jobs results this long (default 600)\n"
        "  --max-jobs N         /v1/jobs held at once, finished ones included; beyond it\n"
        "                       new jobs get 429 until results are deleted or expire\n"
        "                       (default 1000)\n"
        "  --drain-grace SECONDS  on SIGTERM, once the work is done, wait up to this long\n"
        "                       for finished /v1/jobs results to be fetched (default 30)\n"
        "  --sse-ping SECONDS   keep-alive comment on idle streams, >= 0.1 (default 15)\n"
        "  --max-connections N  concurrent HTTP connections; more wait unaccepted in the\n"
        "                       listen backlog until one closes (default 1024)\n"
        "  --idle-timeout SECONDS  close a connection that sends nothing for this long,\n"
        "                       e.g. a client stalled inside its headers or body (default\n"
        "                       120; requests waiting for their images are not affected)\n"
        "  --prefill-tokens N   LlamaGen text-to-image: prompt positions fed per step, over\n"
        "                       every request still reading its prompt (default 256)\n");
}

static int parse_bytes(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') return -1;
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
    if (*end == 'i' || *end == 'B') end++;
    if (*end == 'B') end++;
    if (*end || v == 0 || v > (1ull << 50) / mul) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

static int load_keys(server *s, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "tessera serve: --api-key-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
        if (n == 0 || line[0] == '#') continue;
        char **k = realloc(s->api_keys, (size_t)(s->n_api_keys + 1) * sizeof *k);
        if (!k || !(k[s->n_api_keys] = strdup(line))) {
            if (k) s->api_keys = k;
            break;
        }
        s->api_keys = k;
        s->n_api_keys++;
    }
    free(line);
    fclose(f);
    if (!s->n_api_keys) {
        fprintf(stderr, "tessera serve: --api-key-file %s holds no key\n", path);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ loop callbacks */

static void maybe_stop(server *s);
static void close_all(server *s);

/* A class-conditional model's classes.txt (none: ids only). */
static void load_classes(server *s, const ts_model_info *m, ts_class_table *t)
{
    ts_error err = {0};
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/classes.txt", s->opt.model_dirs[m->arg_index]);
    if (ts_classes_load(path, m->num_classes, t, &err))
        fprintf(stderr, "tessera serve: %s; prompts for %s must be class ids\n", err.msg, m->name);
}

static void on_wake(uv_async_t *a)
{
    server *s = a->data;
    ts_worker_state st = ts_worker_get_state(s->worker);
    if (st == TS_WORKER_READY && !s->ready_seen) {
        s->ready_seen = 1;
        const ts_model_info *ar = ts_worker_model(s->worker, TS_JOB_AR);
        const ts_model_info *far = ts_worker_model(s->worker, TS_JOB_FAR);
        const ts_model_info *mg = ts_worker_model(s->worker, TS_JOB_MASKED);
        s->limits = (ts_api_limits){.max_n = s->opt.max_batch < TS_API_MAX_N ? s->opt.max_batch
                                                                           : TS_API_MAX_N,
                                    .preview_every = s->opt.preview_every,
                                    .masked_preview_every = s->opt.masked_preview_every};
        if (ar) {
            if (!ar->t2i) load_classes(s, ar, &s->classes);
            s->limits.ar = (ts_api_model){1, ar->name, ar->image_size, ar->n_tokens,
                                          ar->num_classes, ar->vocab_size, &s->classes, {0},
                                          ar->gen_defaults, ar->t2i};
            fprintf(stderr, "tessera serve: ready: %s, %dx%d px, %d tokens per image, %d KV "
                            "blocks (%.1f MiB, %d per image), batch %d, %d class names, on %s\n",
                    ar->name, ar->image_size, ar->image_size, ar->n_tokens, ar->kv_blocks,
                    (double)ar->kv_bytes / (1 << 20), ar->blocks_per_image, s->opt.max_batch,
                    s->classes.n, ar->device);
        }
        if (far) {
            load_classes(s, far, &s->far_classes);
            s->limits.far = (ts_api_model){1, far->name, far->image_size, far->n_tokens,
                                           far->num_classes, far->vocab_size, &s->far_classes,
                                           {0}, far->gen_defaults, 0};
            fprintf(stderr, "tessera serve: ready: %s (fqgan), %dx%d px, %d positions x %d "
                            "sub-tokens per image, %d KV blocks (%.1f MiB, %d per image), batch "
                            "%d, %d class names, on %s\n",
                    far->name, far->image_size, far->image_size, far->n_tokens, far->n_sub,
                    far->kv_blocks, (double)far->kv_bytes / (1 << 20), far->blocks_per_image,
                    s->opt.max_batch, s->far_classes.n, far->device);
        }
        if (mg) {
            s->limits.masked = (ts_api_model){1, mg->name, mg->image_size, mg->n_tokens, 0, 0,
                                              &s->classes, mg->defaults,
                                              {.cfg_scale = 0}, 0};
            fprintf(stderr, "tessera serve: ready: %s (maskgen), %dx%d px, %d tokens per image, "
                            "%d steps, guidance %g, randomize_temperature %g, aesthetic %g, "
                            "batch %d, on %s\n",
                    mg->name, mg->image_size, mg->image_size, mg->n_tokens, mg->defaults.steps,
                    mg->defaults.guidance, mg->defaults.randomize_temperature,
                    mg->defaults.aesthetic, s->opt.max_batch, mg->device);
        }
    } else if (st == TS_WORKER_FAILED && !s->stopping) {
        /* Exit non-zero so a supervisor (Kubernetes, systemd) sees the failure. */
        fprintf(stderr, "tessera serve: the model failed to load: %s\n", ts_worker_error(s->worker));
        close_all(s);
        return;
    }
    jobs_on_events(s, ts_worker_take_events(s->worker));
    http_kick(s);
    maybe_stop(s);
}

static void on_tick(uv_timer_t *t)
{
    server *s = t->data;
    http_check_disconnects(s);
    double now = server_now();
    for (job *j = s->jobs; j; j = j->next) {
        conn *c = j->conn;
        if (c && j->kind == JOB_STREAM && !c->sse_closed && now - c->last_write >= s->opt.sse_ping) {
            sse_comment(c, "keep-alive");
            c->last_write = now;
        }
    }
    jobs_expire(s);
    http_kick(s);
    maybe_stop(s);
}

static void close_all(server *s);

/* Exits the loop once draining is over: the worker has stopped and every waiting
 * connection has had its answer (or the grace period ran out). */
static void maybe_stop(server *s)
{
    if (!s->draining || s->stopping) return;
    ts_worker_state st = ts_worker_get_state(s->worker);
    if (st == TS_WORKER_LOADING) return;
    int waiting = 0, unfetched = 0;
    for (job *j = s->jobs; j; j = j->next) {
        waiting += j->conn != NULL;
        unfetched += j->kind == JOB_ASYNC && !j->fetched &&
                     (j->state == JOB_COMPLETED || j->state == JOB_FAILED);
    }
    if (st == TS_WORKER_READY) return;   /* still finishing work */
    double now = server_now();
    if (waiting && now - s->drain_started < 600) return;
    /* Results of /v1/jobs that finished during the drain live only here: give their
     * clients --drain-grace seconds to fetch them before the process (and they) go. */
    if (!s->drain_done) s->drain_done = now;
    if (unfetched && now - s->drain_done < s->opt.drain_grace) return;
    if (unfetched)
        fprintf(stderr, "tessera serve: %d finished job result(s) never fetched\n", unfetched);
    close_all(s);
}

static void on_signal(uv_signal_t *h, int signum)
{
    server *s = h->data;
    if (s->draining) {
        fprintf(stderr, "tessera serve: second signal, exiting now\n");
        exit(1);
    }
    int running = 0;
    for (job *j = s->jobs; j; j = j->next) running += j->state == JOB_RUNNING;
    fprintf(stderr, "tessera serve: %s: draining (no new work; finishing %d queued and %d "
                    "running)\n", signum == SIGTERM ? "SIGTERM" : "SIGINT", s->n_queued, running);
    s->draining = 1;
    s->drain_started = server_now();
    ts_worker_drain(s->worker);
    maybe_stop(s);
}

static void close_all(server *s)
{
    s->stopping = 1;
    /* Drained: a late signal must not turn the clean exit into a kill. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    http_stop(s);
    uv_close((uv_handle_t *)&s->mhd_poll, NULL);
    uv_close((uv_handle_t *)&s->mhd_timer, NULL);
    uv_close((uv_handle_t *)&s->tick, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->wake, NULL);
}

static void notify(void *ctx)
{
    uv_async_send(ctx);   /* thread-safe; coalesces */
}

/* ------------------------------------------------------------------ main */

int cmd_serve(int argc, char **argv)
{
    serve_options o = {.host = "127.0.0.1", .port = 8080, .max_batch = 16, .queue_limit = 64,
                       .preview_every = 32, .masked_preview_every = 1, .device = "auto",
                       .job_ttl = 600, .max_jobs = 1000, .drain_grace = 30, .sse_ping = 15, .max_connections = 1024,
                       .idle_timeout = 120, .prefill_tokens = 256};
    enum { O_MODEL = 1, O_HOST, O_PORT, O_BATCH, O_KV, O_QUEUE, O_KEYS, O_PREVIEW, O_THREADS,
           O_DEVICE, O_TTL, O_PING, O_CONNS, O_HELP, O_MPREVIEW, O_PREFILL, O_IDLE, O_MAXJOBS, O_GRACE };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT}, {"max-batch", required_argument, 0, O_BATCH},
        {"kv-memory", required_argument, 0, O_KV}, {"queue-limit", required_argument, 0, O_QUEUE},
        {"api-key-file", required_argument, 0, O_KEYS},
        {"preview-every", required_argument, 0, O_PREVIEW},
        {"masked-preview-every", required_argument, 0, O_MPREVIEW},
        {"threads", required_argument, 0, O_THREADS}, {"device", required_argument, 0, O_DEVICE},
        {"job-ttl", required_argument, 0, O_TTL},
        {"sse-ping", required_argument, 0, O_PING},
        {"max-connections", required_argument, 0, O_CONNS}, {"help", no_argument, 0, O_HELP},
        {"prefill-tokens", required_argument, 0, O_PREFILL},
        {"idle-timeout", required_argument, 0, O_IDLE},
        {"max-jobs", required_argument, 0, O_MAXJOBS},
        {"drain-grace", required_argument, 0, O_GRACE},
        {0, 0, 0, 0}};
    long v;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        const char *bad = NULL;
        switch (c) {
        case O_MODEL:
            if (o.n_models == TS_WORKER_MAX_MODELS) {
                fprintf(stderr, "tessera serve: at most %d --model folders (one LlamaGen, one "
                        "FQGAN, one MaskGen)\n", TS_WORKER_MAX_MODELS);
                return 2;
            }
            o.model_dirs[o.n_models++] = optarg;
            break;
        case O_HOST: o.host = optarg; break;
        case O_PORT: if (ts_parse_long(optarg, 0, 65535, &v)) bad = "--port"; else o.port = (int)v; break;
        case O_BATCH: if (ts_parse_long(optarg, 1, 1024, &v)) bad = "--max-batch"; else o.max_batch = (int)v; break;
        case O_KV: if (parse_bytes(optarg, &o.kv_memory)) bad = "--kv-memory"; break;
        case O_QUEUE: if (ts_parse_long(optarg, 0, 1000000, &v)) bad = "--queue-limit"; else o.queue_limit = (int)v; break;
        case O_KEYS: o.api_key_file = optarg; break;
        case O_PREVIEW: if (ts_parse_long(optarg, 0, 1 << 20, &v)) bad = "--preview-every"; else o.preview_every = (int)v; break;
        case O_MPREVIEW: if (ts_parse_long(optarg, 0, 1 << 20, &v)) bad = "--masked-preview-every"; else o.masked_preview_every = (int)v; break;
        case O_PREFILL: if (ts_parse_long(optarg, 1, 1 << 20, &v)) bad = "--prefill-tokens"; else o.prefill_tokens = (int)v; break;
        case O_THREADS: if (ts_parse_long(optarg, 1, 1024, &v)) bad = "--threads"; else o.threads = (int)v; break;
        case O_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "cuda-fp32") &&
                strcmp(optarg, "auto")) bad = "--device";
            else o.device = optarg;
            break;
        case O_TTL: if (ts_parse_long(optarg, 1, 86400 * 7, &v)) bad = "--job-ttl"; else o.job_ttl = (int)v; break;
        case O_PING: {
            char *end;
            double d = strtod(optarg, &end);
            if (end == optarg || *end || !(d >= 0.1 && d <= 3600)) bad = "--sse-ping";
            else o.sse_ping = d;
            break;
        }
        case O_CONNS: if (ts_parse_long(optarg, 1, 100000, &v)) bad = "--max-connections"; else o.max_connections = (int)v; break;
        case O_MAXJOBS: if (ts_parse_long(optarg, 1, 1000000, &v)) bad = "--max-jobs"; else o.max_jobs = (int)v; break;
        case O_GRACE: if (ts_parse_long(optarg, 0, 86400, &v)) bad = "--drain-grace"; else o.drain_grace = (int)v; break;
        case O_IDLE: if (ts_parse_long(optarg, 1, 86400, &v)) bad = "--idle-timeout"; else o.idle_timeout = (int)v; break;
        case O_HELP: usage(stdout); return 0;
        default:
            fprintf(stderr, "tessera serve: unknown or incomplete option '%s'\n\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "tessera serve: bad value for %s: '%s'\n", bad, optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tessera serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o.n_models) {
        fprintf(stderr, "tessera serve: --model DIR is required\n\n");
        usage(stderr);
        return 2;
    }

    static server s;   /* static: handles and MHD keep pointers into it */
    memset(&s, 0, sizeof s);
    s.opt = o;
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    if (o.api_key_file && load_keys(&s, o.api_key_file)) return 2;
    s.loop = uv_default_loop();
    uv_async_init(s.loop, &s.wake, on_wake);
    s.wake.data = &s;
    uv_timer_init(s.loop, &s.tick);
    s.tick.data = &s;
    uv_timer_start(&s.tick, on_tick, 100, 100);
    uv_signal_init(s.loop, &s.sigterm);
    uv_signal_init(s.loop, &s.sigint);
    s.sigterm.data = s.sigint.data = &s;
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);

    ts_error err = {0};
    int status = 1;
    if (http_start(&s, &err)) {
        fprintf(stderr, "tessera serve: %s\n", err.msg);
        goto out;
    }
    fprintf(stderr, "tessera serve: listening on http://%s:%d/ (loading %s%s%s%s%s)\n", o.host,
            o.port, o.model_dirs[0], o.n_models > 2 ? ", " : o.n_models > 1 ? " and " : "",
            o.n_models > 1 ? o.model_dirs[1] : "", o.n_models > 2 ? " and " : "",
            o.n_models > 2 ? o.model_dirs[2] : "");
    ts_worker_config wc = {{o.model_dirs[0], o.model_dirs[1], o.model_dirs[2]}, o.n_models,
                           o.device, o.threads, o.kv_memory,
                           {o.max_batch, 2, o.max_batch > 4 ? o.max_batch / 4 : 1,
                            o.prefill_tokens}};
    if (ts_worker_start(&wc, notify, &s.wake, &s.worker, &err)) {
        fprintf(stderr, "tessera serve: %s\n", err.msg);
        http_stop(&s);
        goto out;
    }
    uv_run(s.loop, UV_RUN_DEFAULT);
    status = ts_worker_get_state(s.worker) == TS_WORKER_FAILED ? 1 : 0;
    fprintf(stderr, "tessera serve: stopped\n");
out:
    if (s.worker) ts_worker_free(s.worker);
    while (s.jobs) jobs_forget(&s, s.jobs);
    ts_classes_free(&s.classes);
    ts_classes_free(&s.far_classes);
    for (int i = 0; i < s.n_api_keys; i++) free(s.api_keys[i]);
    free(s.api_keys);
    if (!s.stopping) {
        uv_close((uv_handle_t *)&s.tick, NULL);
        uv_close((uv_handle_t *)&s.sigterm, NULL);
        uv_close((uv_handle_t *)&s.sigint, NULL);
        uv_close((uv_handle_t *)&s.wake, NULL);
        if (s.mhd_timer.loop) uv_close((uv_handle_t *)&s.mhd_timer, NULL);
        if (s.mhd_poll.loop) uv_close((uv_handle_t *)&s.mhd_poll, NULL);
    }
    uv_run(s.loop, UV_RUN_DEFAULT);
    uv_loop_close(s.loop);
    return status;
}
