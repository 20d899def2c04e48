/* worker.c - see worker.h. */
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const double ts_step_time_bounds[TS_STEP_TIME_BUCKETS - 1] = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                              0.25,  0.5,  1.0,   2.5,  5.0};
const int ts_batch_bounds[TS_BATCH_BUCKETS - 1] = {1, 2, 4, 8, 16, 32, 64, 128};

void ts_hist_seconds_observe(uint64_t hist[TS_STEP_TIME_BUCKETS], double *sum, double v)
{
    *sum += v;
    for (int b = 0; b < TS_STEP_TIME_BUCKETS; b++)
        if (b == TS_STEP_TIME_BUCKETS - 1 || v <= ts_step_time_bounds[b]) hist[b]++;
}

typedef struct submission {
    uint64_t job;
    ts_job_spec spec;
    struct submission *next;
} submission;

typedef struct cancel_req {
    uint64_t job;
    struct cancel_req *next;
} cancel_req;

struct ts_worker {
    ts_worker_config cfg;
    char *model_dirs[TS_WORKER_MAX_MODELS];
    void (*notify)(void *);
    void *notify_ctx;
    pthread_t thread;

    _Atomic int state;
    char error[TS_ERROR_MSG_MAX];
    ts_model_info info[TS_WORKER_MAX_MODELS];
    int n_info;

    /* Engine-thread objects. */
    ts_backend *be;
    ts_model *ar, *far, *masked;   /* one per family, any may be NULL */
    ts_kv_cache *kv, *far_kv;       /* ar's and far's */
    ts_sched *sched;
    ts_event *step_head, **step_tail;   /* events of the step in progress */

    /* Shared with other threads, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    submission *in_head, **in_tail;
    cancel_req *cancels;
    ts_event *out_head, **out_tail;
    int draining;
    ts_worker_stats stats;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The scheduler's sink: collect the step's events without locking. */
static void collect(void *ctx, ts_event *ev)
{
    ts_worker *w = ctx;
    ev->next = NULL;
    *w->step_tail = ev;
    w->step_tail = &ev->next;
}

static void publish(ts_worker *w)
{
    if (!w->step_head) return;
    pthread_mutex_lock(&w->mu);
    *w->out_tail = w->step_head;
    w->out_tail = w->step_tail;
    pthread_mutex_unlock(&w->mu);
    w->step_head = NULL;
    w->step_tail = &w->step_head;
    w->notify(w->notify_ctx);
}

static void fail_job(ts_worker *w, uint64_t job, const char *msg)
{
    ts_event *ev = ts_event_new(TS_EV_FAILED, job);
    snprintf(ev->message, sizeof ev->message, "%.*s", (int)sizeof ev->message - 1, msg);
    collect(w, ev);
}

/* Loads one folder into the slot of its family (w->ar, w->far or w->masked). */
static int load_model(ts_worker *w, int index, ts_error *err)
{
    const char *dir = w->model_dirs[index];
    ts_model *m;
    int rc = ts_model_load(w->be, dir, &m, err);
    if (rc) {   /* name the folder, unless the message already does */
        if (strncmp(err->msg, dir, strlen(dir)) == 0) return rc;
        char msg[TS_ERROR_MSG_MAX];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return ts_fail(err, rc, "%s: %s", dir, msg);
    }
    if (m->family == TS_FAMILY_FQGAN && !m->far) {
        ts_model_free(m);
        return ts_fail(err, TS_ERR_CONFIG, "%s: this FQGAN folder has no FAR generator (no "
                       "\"gpt\" section: a decode-only tokenizer folder); serving needs one",
                       dir);
    }
    ts_model **slot = m->family == TS_FAMILY_MASKGEN ? &w->masked
                      : m->family == TS_FAMILY_FQGAN ? &w->far : &w->ar;
    if (*slot) {
        ts_fail(err, TS_ERR_CONFIG, "%s and %s are both %s folders: serve at most one model of "
                "each family (one LlamaGen, one FQGAN, one MaskGen)", (*slot)->dir, dir,
                m->family == TS_FAMILY_MASKGEN ? "MaskGen"
                : m->family == TS_FAMILY_FQGAN ? "FQGAN" : "LlamaGen");
        ts_model_free(m);
        return TS_ERR_CONFIG;
    }
    *slot = m;
    if (m->family == TS_FAMILY_LLAMAGEN && !m->vq) {
        return ts_fail(err, TS_ERR_CONFIG, "%s: serving needs a vq decoder in the model folder",
                       dir);
    }
    return 0;
}

/* On a device with its own memory, the masked model's activations are grown to a full
 * batch before the KV cache takes what is left: one step of max_batch images of the
 * empty prompt, and one decode. (On the CPU memory is the host's: nothing to do.) */
static int warm_masked(ts_worker *w, ts_error *err)
{
    size_t free_b, total_b;
    if (!w->masked || ts_be_mem_info(w->be, &free_b, &total_b) != 0) return 0;
    ts_masked_model *mm = w->masked->masked;
    const maskgen_config *gc = &mm->gen->cfg;
    int n = w->cfg.sched.max_batch, N = gc->num_tokens, S = mm->image_size;
    ts_mask_params p = {gc->sampling.steps, gc->sampling.guidance,
                        gc->sampling.randomize_temperature, gc->sampling.aesthetic, 0};
    ts_mg_prompt pr;
    int rc = ts_mg_prompt_make(mm, "", p.aesthetic, &pr, err);
    if (rc) return rc;
    int32_t *ids = malloc((size_t)n * N * sizeof *ids);
    int32_t **rows = malloc((size_t)n * sizeof *rows);
    const ts_mask_params **pp = malloc((size_t)n * sizeof *pp);
    const ts_mg_prompt **prp = malloc((size_t)n * sizeof *prp);
    int *steps = calloc((size_t)n, sizeof *steps);
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    uint8_t *rgb = malloc((size_t)S * S * 3);
    if (!ids || !rows || !pp || !prp || !steps || !seeds || !rgb) {
        rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        rows[i] = ids + (size_t)i * N;
        for (int k = 0; k < N; k++) rows[i][k] = gc->codebook_size;
        pp[i] = &p;
        prp[i] = &pr;
    }
    rc = ts_masked_step(mm, pp, prp, steps, seeds, n, rows, NULL, err);
    /* One step leaves most positions masked; the decode needs real codes (any will do). */
    if (!rc) memset(ids, 0, (size_t)N * sizeof *ids);
    if (rc || (rc = titok_decode(mm->dec, ids, pr.text, 1, NULL, rgb, err))) {
        char msg[TS_ERROR_MSG_MAX];
        snprintf(msg, sizeof msg, "%s", err->msg);
        ts_fail(err, rc, "a masked step of --max-batch %d images does not fit: %s", n, msg);
    }
out:
    ts_mg_prompt_free(mm, &pr);
    free(ids);
    free(rows);
    free(pp);
    free(prp);
    free(steps);
    free(seeds);
    free(rgb);
    return rc;
}

/* One autoregressive model's KV cache, as planned by make_kvs. */
typedef struct kv_plan {
    ts_model *m;
    ts_kv_cache **out;
    ts_model_info *info;
    const llamagen_config *c;   /* LlamaGen's GPT or FAR's trunk */
    int extra;                  /* blocks beside the images': LlamaGen's null prefix */
    size_t block_bytes;
    int per_image;
    long n_blocks;
} kv_plan;

/* Splits bytes between the plans in proportion to one image's KV bytes of each (so
 * that each holds about the same number of images). */
static void kv_split(kv_plan *p, int n, size_t bytes)
{
    double per_image_all = 0;
    for (int i = 0; i < n; i++) per_image_all += (double)p[i].per_image * p[i].block_bytes;
    for (int i = 0; i < n; i++) {
        double share = (double)bytes * ((double)p[i].per_image * p[i].block_bytes / per_image_all);
        p[i].n_blocks = (long)(share / (double)p[i].block_bytes);
    }
}

/* The least byte count that kv_split turns into at least one image (and the extra
 * blocks) in every plan. */
static size_t kv_min_bytes(const kv_plan *p, int n)
{
    double per_image_all = 0, need = 0;
    for (int i = 0; i < n; i++) per_image_all += (double)p[i].per_image * p[i].block_bytes;
    for (int i = 0; i < n; i++) {
        double want = (double)(p[i].per_image + p[i].extra) * p[i].block_bytes;
        double total = want * per_image_all / ((double)p[i].per_image * p[i].block_bytes);
        if (total > need) need = total;
    }
    return (size_t)need + 1;
}

static const char *plan_family(const kv_plan *p)
{
    return p->m->family == TS_FAMILY_FQGAN ? "FQGAN" : "LlamaGen";
}

/* Sizes and makes the KV caches of the autoregressive models (LlamaGen's, FAR's);
 * fills the KV fields of their infos. */
static int make_kvs(ts_worker *w, kv_plan *p, int n, ts_error *err)
{
    if (!n) return 0;
    int bs = TS_SCHED_KV_BLOCK;
    for (int i = 0; i < n; i++) {
        const llamagen_config *c = p[i].c;
        p[i].block_bytes = ts_kv_block_bytes(c->n_layer, c->n_kv_head, c->head_dim, bs,
                                             ts_backend_kv_elem_bytes(w->be));
        p[i].per_image = ts_sched_max_blocks_per_image(c, bs);
    }
    if (w->cfg.kv_memory) {
        kv_split(p, n, w->cfg.kv_memory);
        for (int i = 0; i < n; i++)
            if (p[i].n_blocks < p[i].per_image + p[i].extra) {
                if (n == 1)
                    return ts_fail(err, TS_ERR_INVALID,
                                   "--kv-memory %zu bytes holds %ld KV blocks of %zu bytes; one "
                                   "image with CFG needs %d%s: give at least %zu bytes",
                                   w->cfg.kv_memory, p[i].n_blocks, p[i].block_bytes,
                                   p[i].per_image, p[i].extra ? " (plus 1 shared)" : "",
                                   (size_t)(p[i].per_image + p[i].extra) * p[i].block_bytes);
                return ts_fail(err, TS_ERR_INVALID,
                               "--kv-memory %zu bytes, split between the LlamaGen and FQGAN "
                               "caches, gives the %s model %ld KV blocks of %zu bytes; one image "
                               "with CFG needs %d%s: give at least %zu bytes",
                               w->cfg.kv_memory, plan_family(&p[i]), p[i].n_blocks,
                               p[i].block_bytes, p[i].per_image,
                               p[i].extra ? " (plus 1 shared)" : "", kv_min_bytes(p, n));
            }
    } else {
        double want = 0;
        for (int i = 0; i < n; i++) {
            p[i].n_blocks = (long)p[i].per_image * w->cfg.sched.max_batch + p[i].extra;
            want += (double)p[i].n_blocks * p[i].block_bytes;
        }
        /* On a device with a known memory size, keep within 90% of what the weights left;
         * the rest is for activations and the VQ decoders. */
        size_t free_b, total_b;
        if (ts_be_mem_info(w->be, &free_b, &total_b) == 0) {
            size_t fit = free_b / 10 * 9;
            if ((double)fit < want) {
                if (fit < kv_min_bytes(p, n))
                    return ts_fail(err, TS_ERR_NOMEM,
                                   "%s: after the weights, %zu MiB of device memory is free, less "
                                   "than one image's KV blocks need (%zu MiB)",
                                   ts_backend_describe(w->be), free_b >> 20,
                                   kv_min_bytes(p, n) >> 20);
                kv_split(p, n, fit);
                for (int i = 0; i < n; i++)
                    fprintf(stderr, "tessera: notice: device memory holds KV blocks for %ld of "
                                    "the %d images of --max-batch (%s)\n",
                            (p[i].n_blocks - p[i].extra) / p[i].per_image,
                            w->cfg.sched.max_batch, p[i].m->name);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        const llamagen_config *c = p[i].c;
        if (p[i].n_blocks > (1L << 30)) p[i].n_blocks = 1L << 30;
        int rc = ts_kv_cache_create(w->be, c->n_layer, c->n_kv_head, c->head_dim, bs,
                                    (int)p[i].n_blocks, p[i].out, err);
        if (rc) return rc;
        ts_model_info *inf = p[i].info;
        inf->kv_blocks = (int)p[i].n_blocks;
        inf->kv_block_size = bs;
        inf->kv_bytes = (size_t)p[i].n_blocks * p[i].block_bytes;
        inf->blocks_per_image = p[i].per_image;
    }
    return 0;
}

static int arg_index(ts_worker *w, const ts_model *m)
{
    for (int i = 0; i < w->cfg.n_models; i++)
        if (strcmp(w->model_dirs[i], m->dir) == 0) return i;
    return 0;
}

/* Fills the info of a class-conditional model (LlamaGen or FQGAN). */
static void c2i_info(ts_worker *w, ts_model *m, ts_model_info *i, const char *device)
{
    const llamagen_config *c = ts_model_c2i_config(m);
    int far = m->family == TS_FAMILY_FQGAN;
    snprintf(i->name, sizeof i->name, "%s", m->name);
    snprintf(i->family, sizeof i->family, "%s", far ? "fqgan" : "llamagen");
    i->job_family = far ? TS_JOB_FAR : TS_JOB_AR;
    i->arg_index = arg_index(w, m);
    i->image_size = m->image_size;
    i->t2i = ts_model_is_t2i(m);
    i->num_classes = c->num_classes;
    i->vocab_size = c->vocab_size;
    i->n_tokens = c->block_size;
    i->n_sub = ts_model_n_sub(m);
    i->gen_defaults = m->gen_defaults;
    snprintf(i->device, sizeof i->device, "%s", device);
}

static int load(ts_worker *w, ts_error *err)
{
    int rc;
    if (!(w->be = ts_backend_create(w->cfg.device, w->cfg.n_threads, err))) return err->code;
    for (int k = 0; k < w->cfg.n_models; k++)
        if ((rc = load_model(w, k, err))) return rc;
    /* Everything but the KV caches first, so that the caches take what is left. */
    if ((rc = warm_masked(w, err))) return rc;
    const char *device = ts_backend_describe(w->be);
    kv_plan plans[2];
    int n_plans = 0;
    if (w->ar) {
        ts_model_info *i = &w->info[w->n_info++];
        c2i_info(w, w->ar, i, device);
        plans[n_plans++] = (kv_plan){w->ar, &w->kv, i, &w->ar->gpt->cfg, 1, 0, 0, 0};
    }
    if (w->far) {
        ts_model_info *i = &w->info[w->n_info++];
        c2i_info(w, w->far, i, device);
        plans[n_plans++] = (kv_plan){w->far, &w->far_kv, i, &w->far->far->cfg.trunk, 0, 0, 0, 0};
    }
    if (w->masked) {
        ts_model_info *i = &w->info[w->n_info++];
        const maskgen_config *gc = &w->masked->masked->gen->cfg;
        snprintf(i->name, sizeof i->name, "%s", w->masked->name);
        snprintf(i->family, sizeof i->family, "maskgen");
        i->job_family = TS_JOB_MASKED;
        i->arg_index = arg_index(w, w->masked);
        i->image_size = w->masked->image_size;
        i->n_tokens = gc->num_tokens;
        i->n_sub = 1;
        i->codebook_size = gc->codebook_size;
        i->max_prompt_bytes = TS_SCHED_MAX_PROMPT;
        i->defaults = (ts_mask_params){gc->sampling.steps, gc->sampling.guidance,
                                       gc->sampling.randomize_temperature,
                                       gc->sampling.aesthetic, 0};
        snprintf(i->device, sizeof i->device, "%s", device);
    }
    for (int a = 0; a < w->n_info; a++)
        for (int b = a + 1; b < w->n_info; b++)
            if (strcmp(w->info[a].name, w->info[b].name) == 0)
                return ts_fail(err, TS_ERR_CONFIG, "two models are named \"%s\": give one a "
                               "different \"name\" in its config.json, since requests choose a "
                               "model by name", w->info[a].name);
    if ((rc = make_kvs(w, plans, n_plans, err))) return rc;
    ts_sched_models models = {w->ar, w->kv, w->masked, w->far, w->far_kv};
    return ts_sched_create(&models, &w->cfg.sched, collect, w, &w->sched, err);
}

static void record_step(ts_worker *w, double seconds)
{
    ts_sched_stats ss;
    ts_sched_get_stats(w->sched, &ss);
    pthread_mutex_lock(&w->mu);
    ts_worker_stats *st = &w->stats;
    uint64_t before = st->sched.forward_passes, far_before = st->sched.far.forward_passes;
    st->sched = ss;
    st->steps++;
    ts_hist_seconds_observe(st->step_time_hist, &st->step_time_sum, seconds);
    if (ss.forward_passes > before) {
        int n = ss.last_batch_images;
        st->batch_sum += (uint64_t)n;
        for (int b = 0; b < TS_BATCH_BUCKETS; b++)
            if (b == TS_BATCH_BUCKETS - 1 || n <= ts_batch_bounds[b]) st->batch_hist[b]++;
    }
    if (ss.far.forward_passes > far_before) {
        int n = ss.far.last_batch_images;
        st->far_batch_sum += (uint64_t)n;
        for (int b = 0; b < TS_BATCH_BUCKETS; b++)
            if (b == TS_BATCH_BUCKETS - 1 || n <= ts_batch_bounds[b]) st->far_batch_hist[b]++;
    }
    pthread_mutex_unlock(&w->mu);
}

static void unload(ts_worker *w)
{
    ts_sched_free(w->sched);
    w->sched = NULL;
    ts_kv_cache_destroy(w->kv);
    ts_kv_cache_destroy(w->far_kv);
    w->kv = w->far_kv = NULL;
    ts_model_free(w->ar);
    ts_model_free(w->far);
    ts_model_free(w->masked);
    w->ar = w->far = w->masked = NULL;
    ts_backend_free(w->be);
    w->be = NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Test hooks, read from the environment: a test of the loading state or of a long
 * queue wait cannot rely on the machine being slow enough to observe it. */
static long test_delay_ms(const char *name)
{
    const char *v = getenv(name);
    long ms = v ? atol(v) : 0;
    return ms > 0 && ms < 600000 ? ms : 0;
}

static void *run(void *arg)
{
    ts_worker *w = arg;
    ts_error err = {0};
    long load_delay = test_delay_ms("TESSERA_TEST_LOAD_DELAY_MS");
    long step_delay = test_delay_ms("TESSERA_TEST_STEP_DELAY_MS");
    if (load_delay) sleep_ms(load_delay);
    if (load(w, &err)) {
        unload(w);
        snprintf(w->error, sizeof w->error, "%s", err.msg);
        atomic_store(&w->state, TS_WORKER_FAILED);
        w->notify(w->notify_ctx);
        return NULL;
    }
    {
        ts_sched_stats ss;
        ts_sched_get_stats(w->sched, &ss);
        pthread_mutex_lock(&w->mu);
        w->stats.sched = ss;
        pthread_mutex_unlock(&w->mu);
    }
    atomic_store(&w->state, TS_WORKER_READY);
    w->notify(w->notify_ctx);

    for (;;) {
        pthread_mutex_lock(&w->mu);
        for (;;) {
            int pending = w->in_head || w->cancels;
            if (pending || ts_sched_busy(w->sched)) break;
            if (w->draining) {
                pthread_mutex_unlock(&w->mu);
                goto out;
            }
            pthread_cond_wait(&w->cv, &w->mu);
        }
        submission *in = w->in_head;
        w->in_head = NULL;
        w->in_tail = &w->in_head;
        cancel_req *cancels = w->cancels;
        w->cancels = NULL;
        pthread_mutex_unlock(&w->mu);

        while (in) {
            submission *next = in->next;
            ts_error e = {0};
            if (ts_sched_add(w->sched, in->job, &in->spec, &e)) fail_job(w, in->job, e.msg);
            free(in);
            in = next;
        }
        while (cancels) {
            cancel_req *next = cancels->next;
            ts_sched_cancel(w->sched, cancels->job);   /* unknown: already finished */
            free(cancels);
            cancels = next;
        }
        if (step_delay && ts_sched_busy(w->sched)) sleep_ms(step_delay);
        double t0 = now_seconds();
        if (ts_sched_step(w->sched, &err)) {
            fprintf(stderr, "tessera: scheduler failure: %s\n", err.msg);
            abort();   /* broken invariants: better a crash and a restart than wrong images */
        }
        record_step(w, now_seconds() - t0);
        publish(w);
    }
out:
    publish(w);
    unload(w);
    atomic_store(&w->state, TS_WORKER_STOPPED);
    w->notify(w->notify_ctx);
    return NULL;
}

int ts_worker_start(const ts_worker_config *cfg, void (*notify)(void *), void *ctx,
                    ts_worker **out, ts_error *err)
{
    *out = NULL;
    ts_worker *w = calloc(1, sizeof *w);
    if (!w) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    if (cfg->n_models < 1 || cfg->n_models > TS_WORKER_MAX_MODELS) {
        free(w);
        return ts_fail(err, TS_ERR_INVALID, "serve 1 to %d model folders", TS_WORKER_MAX_MODELS);
    }
    w->cfg = *cfg;
    int copied = 1;
    for (int i = 0; i < cfg->n_models; i++) {
        w->model_dirs[i] = strdup(cfg->model_dirs[i]);
        copied &= w->model_dirs[i] != NULL;
        w->cfg.model_dirs[i] = NULL;
    }
    w->notify = notify;
    w->notify_ctx = ctx;
    w->step_tail = &w->step_head;
    w->in_tail = &w->in_head;
    w->out_tail = &w->out_head;
    atomic_init(&w->state, TS_WORKER_LOADING);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (!copied || pthread_create(&w->thread, NULL, run, w)) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        for (int i = 0; i < TS_WORKER_MAX_MODELS; i++) free(w->model_dirs[i]);
        free(w);
        return ts_fail(err, TS_ERR_NOMEM, "cannot start the engine thread");
    }
    *out = w;
    return 0;
}

ts_worker_state ts_worker_get_state(ts_worker *w) { return atomic_load(&w->state); }
const char *ts_worker_error(ts_worker *w) { return w->error; }
int ts_worker_n_models(ts_worker *w) { return w->n_info; }
const ts_model_info *ts_worker_info(ts_worker *w, int i)
{
    return i >= 0 && i < w->n_info ? &w->info[i] : NULL;
}

const ts_model_info *ts_worker_model(ts_worker *w, ts_job_family family)
{
    for (int i = 0; i < w->n_info; i++)
        if (w->info[i].job_family == family) return &w->info[i];
    return NULL;
}

int ts_worker_check(ts_worker *w, const ts_job_spec *spec, ts_error *err)
{
    if (atomic_load(&w->state) != TS_WORKER_READY)
        return ts_fail(err, TS_ERR_UNSUPPORTED, "the model is not loaded");
    /* Reads only what is fixed after loading: limits, cache size, model config. */
    return ts_sched_check(w->sched, spec, err);
}

int ts_worker_submit(ts_worker *w, uint64_t job, const ts_job_spec *spec, ts_error *err)
{
    submission *s = calloc(1, sizeof *s);
    if (!s) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    s->job = job;
    s->spec = *spec;
    pthread_mutex_lock(&w->mu);
    *w->in_tail = s;
    w->in_tail = &s->next;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

void ts_worker_cancel(ts_worker *w, uint64_t job)
{
    cancel_req *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->job = job;
    pthread_mutex_lock(&w->mu);
    /* A job still in the inbox never reaches the scheduler: answer for it here. */
    for (submission **p = &w->in_head; *p; p = &(*p)->next)
        if ((*p)->job == job) {
            submission *s = *p;
            *p = s->next;
            if (!*p) w->in_tail = p;
            free(s);
            free(c);
            ts_event *ev = ts_event_new(TS_EV_CANCELLED, job);
            *w->out_tail = ev;
            w->out_tail = &ev->next;
            pthread_mutex_unlock(&w->mu);
            w->notify(w->notify_ctx);
            return;
        }
    c->next = w->cancels;
    w->cancels = c;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

ts_event *ts_worker_take_events(ts_worker *w)
{
    pthread_mutex_lock(&w->mu);
    ts_event *ev = w->out_head;
    w->out_head = NULL;
    w->out_tail = &w->out_head;
    pthread_mutex_unlock(&w->mu);
    return ev;
}

void ts_worker_get_stats(ts_worker *w, ts_worker_stats *st)
{
    pthread_mutex_lock(&w->mu);
    *st = w->stats;
    pthread_mutex_unlock(&w->mu);
}

void ts_worker_drain(ts_worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->draining = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void ts_worker_free(ts_worker *w)
{
    if (!w) return;
    ts_worker_drain(w);
    pthread_join(w->thread, NULL);
    for (ts_event *ev = w->out_head; ev;) {
        ts_event *next = ev->next;
        ts_event_free(ev);
        ev = next;
    }
    while (w->in_head) {
        submission *s = w->in_head;
        w->in_head = s->next;
        free(s);
    }
    while (w->cancels) {
        cancel_req *c = w->cancels;
        w->cancels = c->next;
        free(c);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    for (int i = 0; i < TS_WORKER_MAX_MODELS; i++) free(w->model_dirs[i]);
    free(w);
}
