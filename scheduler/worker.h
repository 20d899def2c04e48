/* worker.h - the engine thread: loads the models (at most one LlamaGen, one FQGAN and
 * one MaskGen folder, on one backend), owns the backend, the KV caches (one for the
 * LlamaGen model, one for the FQGAN model's FAR trunk; MaskGen keeps none) and the
 * scheduler, and runs scheduler steps while there is work.
 *
 * KV sizing: each autoregressive model gets its own cache. Without kv_memory, each
 * holds max_batch images with CFG on every step (LlamaGen: plus its shared null-class
 * block); on a device with a known memory size the caches together stay within 90% of
 * the memory the weights left, split like kv_memory. kv_memory is the total for all
 * caches: with both models it is split in proportion to one image's KV bytes of each,
 * so that both hold about the same number of images.
 *
 * Other threads talk to it only through this interface: submissions and cancels go in
 * through a mutex-protected inbox, events come out through an outbox, and after every
 * step that produced events the worker calls notify(ctx) once (the server passes
 * uv_async_send, so the event loop wakes up and takes them). The worker never formats
 * JSON or PNG; the loop never runs the model.
 */
#ifndef TS_WORKER_H
#define TS_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/scheduler.h"

/* Model folders one server loads: one per family (LlamaGen, FQGAN, MaskGen). */
#define TS_WORKER_MAX_MODELS 3

typedef struct ts_worker_config {
    const char *model_dirs[TS_WORKER_MAX_MODELS];   /* copied at start */
    int n_models;               /* 1..TS_WORKER_MAX_MODELS */
    const char *device;         /* ts_backend_create's name: cpu, cuda or auto (NULL: cpu) */
    int n_threads;              /* CPU backend threads; <= 0: all cores */
    size_t kv_memory;           /* bytes for KV blocks, all caches together; 0: enough
                                   for max_batch images in each (see above) */
    ts_sched_config sched;
} ts_worker_config;

typedef enum ts_worker_state {
    TS_WORKER_LOADING,
    TS_WORKER_READY,
    TS_WORKER_FAILED,           /* the load failed; ts_worker_error says why */
    TS_WORKER_STOPPED,          /* drained and exited */
} ts_worker_state;

/* What a loaded model is; fixed once the worker is ready. */
typedef struct ts_model_info {
    char name[128];
    char family[32];            /* "llamagen", "fqgan" or "maskgen" */
    ts_job_family job_family;   /* the requests it runs */
    int arg_index;              /* its place in ts_worker_config.model_dirs */
    int image_size;
    int n_tokens;               /* tokens per image (LlamaGen: also the steps; FQGAN:
                                   positions, the steps, each n_sub ids) */
    int n_sub;                  /* ids per position: FQGAN's k, else 1 */
    /* LlamaGen and FQGAN */
    int t2i;                    /* LlamaGen text-to-image: prompts, no classes */
    int num_classes;
    int vocab_size;
    int kv_blocks;
    int kv_block_size;
    size_t kv_bytes;
    int blocks_per_image;       /* with CFG on every step */
    ts_gen_params gen_defaults; /* sampling a request gets when it names none */
    /* MaskGen */
    int codebook_size;
    int max_prompt_bytes;
    ts_mask_params defaults;    /* steps, guidance, randomize_temperature, aesthetic
                                   (config.json's sampling section; seed unused) */
    char device[128];           /* the backend, in words */
} ts_model_info;

/* Buckets (upper bounds) of the step histograms; the last bucket is +Inf. */
#define TS_STEP_TIME_BUCKETS 11
#define TS_BATCH_BUCKETS 9
extern const double ts_step_time_bounds[TS_STEP_TIME_BUCKETS - 1];
extern const int ts_batch_bounds[TS_BATCH_BUCKETS - 1];

/* Counts v (seconds) into a cumulative histogram over ts_step_time_bounds. */
void ts_hist_seconds_observe(uint64_t hist[TS_STEP_TIME_BUCKETS], double *sum, double v);

typedef struct ts_worker_stats {
    ts_sched_stats sched;
    uint64_t steps;                                /* steps that did any work */
    uint64_t step_time_hist[TS_STEP_TIME_BUCKETS];  /* cumulative counts */
    double step_time_sum;
    uint64_t batch_hist[TS_BATCH_BUCKETS];          /* images per AR forward, cumulative */
    uint64_t batch_sum;
    uint64_t far_batch_hist[TS_BATCH_BUCKETS];      /* images per FAR trunk step */
    uint64_t far_batch_sum;
} ts_worker_stats;

typedef struct ts_worker ts_worker;

/* Starts the thread, which loads the model; notify(ctx) is called once the state
 * leaves LOADING and after every step that produced events. */
int ts_worker_start(const ts_worker_config *cfg, void (*notify)(void *), void *ctx,
                    ts_worker **out, ts_error *err);

ts_worker_state ts_worker_get_state(ts_worker *w);
const char *ts_worker_error(ts_worker *w);          /* the load failure, when FAILED */
/* The loaded models (valid once READY): LlamaGen, FQGAN, MaskGen, those present. */
int ts_worker_n_models(ts_worker *w);
const ts_model_info *ts_worker_info(ts_worker *w, int i);
/* The model that runs requests of family, or NULL (valid once READY). */
const ts_model_info *ts_worker_model(ts_worker *w, ts_job_family family);

/* Whether spec can ever run on this server (call once READY); err names the field. */
int ts_worker_check(ts_worker *w, const ts_job_spec *spec, ts_error *err);

/* Queues a job (spec copied); its events carry job. */
int ts_worker_submit(ts_worker *w, uint64_t job, const ts_job_spec *spec, ts_error *err);
void ts_worker_cancel(ts_worker *w, uint64_t job);

/* Takes every pending event, oldest first (a list through ->next); NULL if none. */
ts_event *ts_worker_take_events(ts_worker *w);

void ts_worker_get_stats(ts_worker *w, ts_worker_stats *st);

/* Asks the worker to finish every queued and running job, then exit. */
void ts_worker_drain(ts_worker *w);
/* Joins the thread (after a drain, or at once if loading failed) and frees the worker
 * with any events nobody took. */
void ts_worker_free(ts_worker *w);

#endif
