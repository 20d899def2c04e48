/* scheduler.h - continuous batching of image requests over one model.
 *
 * A request becomes a group: n images of one class, each a [cond, uncond] CFG pair
 * (or a lone cond sequence when CFG is off). A group is admitted, stepped, cancelled
 * and finished as one unit, so a pair can never be split across batch positions or
 * steps. Every call to ts_sched_step is one engine step:
 *
 *   1. drop cancelled groups (their KV blocks are free when the call returns);
 *   2. admit waiting groups first-come first-served while the step's image budget
 *      (max_batch) and the KV blocks they will ever need both allow;
 *   3. one autoregressive forward over every running sequence (a new group's class
 *      prefill rides in the same batch as the others' decode rows);
 *   4. VQ decodes (final images, then previews) under their own per-step budget.
 *
 * Other kinds of work (masked-decoding steps, a later family) slot in as further
 * phases of the same step under the same budgets.
 *
 * The null-class prefix is computed once at creation and shared by reference count by
 * every uncond sequence; the first write into its block copies it (copy-on-write).
 *
 * Engine thread only; results leave through the sink callbacks, which take ownership
 * of the event they are given.
 */
#ifndef TS_SCHEDULER_H
#define TS_SCHEDULER_H

#include <stdint.h>

#include "engine/generate.h"
#include "engine/model.h"
#include "scheduler/block_manager.h"

/* What a request asks for, validated by the API layer. */
typedef struct ts_job_spec {
    int n_images;             /* 1..max_batch */
    int32_t class_id;         /* 0..num_classes-1 */
    ts_gen_params params;     /* image i uses seed params.seed + i */
    int preview_every;        /* previews every N tokens; 0 = none */
} ts_job_spec;

typedef enum ts_event_kind {
    TS_EV_QUEUED,      /* position: 1-based place in the waiting queue */
    TS_EV_STARTED,     /* admitted into the running batch */
    TS_EV_PROGRESS,    /* step of total tokens generated */
    TS_EV_PREVIEW,     /* image: rgb from the tokens so far (step of total) */
    TS_EV_IMAGE,       /* image: final rgb and tokens */
    TS_EV_DONE,        /* every image delivered; the group is gone */
    TS_EV_FAILED,      /* message says why; the group is gone */
    TS_EV_CANCELLED,   /* the group is gone, its blocks free */
} ts_event_kind;

typedef struct ts_event {
    ts_event_kind kind;
    uint64_t job;
    int position;
    int step, total;
    int image;                 /* index within the request */
    uint8_t *rgb;              /* owned: width*height*3, HWC, or NULL */
    int width, height;
    int32_t *tokens;           /* owned: total tokens (TS_EV_IMAGE), or NULL */
    char message[256];
    struct ts_event *next;     /* for the consumer's queues */
} ts_event;

/* A zeroed event of kind for job (aborts on OOM: a few bytes, like the engine's other
 * small allocations). */
ts_event *ts_event_new(ts_event_kind kind, uint64_t job);
void ts_event_free(ts_event *ev);   /* NULL-safe; frees rgb and tokens too */

typedef struct ts_sched_config {
    int max_batch;          /* images (CFG pairs) stepped together */
    int decodes_per_step;   /* final VQ decodes per step (>= 1) */
    int previews_per_step;  /* preview VQ decodes per step (>= 0) */
} ts_sched_config;

typedef struct ts_sched_stats {
    uint64_t forward_passes;     /* autoregressive forwards run */
    uint64_t rows_total;         /* sequences stepped, summed over forwards */
    int last_batch_rows;         /* sequences in the last forward */
    int last_batch_images;       /* images in the last forward */
    int waiting, running;        /* groups */
    int kv_blocks_total, kv_blocks_free, kv_blocks_reserved;
    uint64_t images_done;
    uint64_t vq_decodes, previews;
} ts_sched_stats;

typedef void (*ts_sched_emit_fn)(void *ctx, ts_event *ev);

typedef struct ts_sched ts_sched;

/* Borrows the model and the KV cache (both must outlive the scheduler); runs the
 * null-class prefill into one shared block. */
int ts_sched_create(ts_model *m, ts_kv_cache *kv, const ts_sched_config *cfg,
                    ts_sched_emit_fn emit, void *emit_ctx, ts_sched **out, ts_error *err);
void ts_sched_free(ts_sched *s);   /* NULL-safe; drops every group without events */

/* Positions per KV block of the server's cache. */
#define TS_SCHED_KV_BLOCK 16

/* KV blocks one image pair of spec needs for its whole life. */
int ts_sched_blocks_per_image(const ts_sched *s, const ts_job_spec *spec);
/* The most any image pair of a model can need (CFG on every step), for sizing a cache. */
int ts_sched_max_blocks_per_image(const llamagen_config *c, int block_size);
/* Whether spec could ever run (fits max_batch and the whole KV cache); if not, err says
 * why (TS_ERR_INVALID). */
int ts_sched_check(const ts_sched *s, const ts_job_spec *spec, ts_error *err);

/* Queues a group (spec copied). TS_ERR_INVALID for a spec ts_sched_check refuses. */
int ts_sched_add(ts_sched *s, uint64_t job, const ts_job_spec *spec, ts_error *err);
/* Marks a group for cancellation at the next step; 0 if found, -1 if unknown. */
int ts_sched_cancel(ts_sched *s, uint64_t job);

/* Whether anything is waiting, running or being decoded. */
int ts_sched_busy(const ts_sched *s);

/* One engine step (see above). An error is the engine's fault, not a request's: the
 * groups in the failed forward are failed with its message and the call returns 0;
 * nonzero only for a broken scheduler. */
int ts_sched_step(ts_sched *s, ts_error *err);

void ts_sched_get_stats(const ts_sched *s, ts_sched_stats *st);

#endif
