/* scheduler.h - continuous batching of image requests over the server's models: at
 * most one autoregressive (LlamaGen, class-conditional) and one masked-decoding
 * (MaskGen, text-to-image) model, stepped together in one loop.
 *
 * A request becomes a group: n images of one class or one prompt. An autoregressive
 * image is a [cond, uncond] CFG pair of sequences (or a lone cond sequence when CFG is
 * off); a masked image is its N token ids, fed twice per step (with the prompt's and
 * with the empty prompt's conditioning). A group is admitted, stepped, cancelled and
 * finished as one unit, so a pair can never be split across batch positions or steps.
 * Every call to ts_sched_step is one engine step:
 *
 *   1. drop cancelled groups (their KV blocks and prompt conditioning are free when
 *      the call returns);
 *   2. admit waiting groups of either kind first-come first-served while the step's
 *      image budget (max_batch, counting images of both kinds) and the KV blocks they
 *      will ever need both allow; a masked group's prompt is encoded here, once;
 *   3. one autoregressive forward over every running sequence (a new group's class
 *      prefill rides in the same batch as the others' decode rows);
 *   4. one masked step over every running masked image, whatever step each is at;
 *   5. decodes (final images, then previews; VQ for autoregressive images, TA-TiTok
 *      for masked ones) under their own per-step budgets.
 *
 * So the two kinds interleave step by step, and neither starves the other: admission
 * is one queue in arrival order.
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
#include "engine/masked.h"
#include "engine/model.h"
#include "scheduler/block_manager.h"

/* Which model a request runs on (one of each at most per server). */
typedef enum ts_job_family {
    TS_JOB_AR = 0,            /* the LlamaGen model: class_id and params */
    TS_JOB_MASKED = 1,        /* the MaskGen model: prompt and mask */
} ts_job_family;

/* Bytes of a masked request's prompt (UTF-8, without the terminating NUL). */
#define TS_SCHED_MAX_PROMPT 1000

/* What a request asks for, validated by the API layer. */
typedef struct ts_job_spec {
    int n_images;             /* 1..max_batch */
    int32_t class_id;         /* AR: 0..num_classes-1 */
    ts_gen_params params;     /* AR sampling; params.seed is the seed of either family:
                                 image i uses seed params.seed + i */
    int preview_every;        /* previews every N tokens (AR) or steps (masked); 0 = none */
    ts_job_family family;
    ts_mask_params mask;      /* masked: steps (1..N), guidance, randomize_temperature,
                                 aesthetic; mask.seed is not read (params.seed is) */
    char prompt[TS_SCHED_MAX_PROMPT + 1];   /* masked: NUL-terminated UTF-8, "" allowed */
} ts_job_spec;

typedef enum ts_event_kind {
    TS_EV_QUEUED,      /* position: 1-based place in the waiting queue */
    TS_EV_STARTED,     /* admitted into the running batch */
    TS_EV_PROGRESS,    /* step of total: tokens generated (AR) or masked steps done */
    TS_EV_PREVIEW,     /* image: rgb from the tokens so far (AR) or from the step's full
                          prediction (masked), at step of total */
    TS_EV_IMAGE,       /* image: final rgb and tokens (total = tokens per image) */
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
    int code;                  /* TS_EV_FAILED: the TS_ERR_* code; TS_ERR_INVALID means
                                  the request's content was refused (e.g. its prompt) */
    char message[256];
    struct ts_event *next;     /* for the consumer's queues */
} ts_event;

/* A zeroed event of kind for job (aborts on OOM: a few bytes, like the engine's other
 * small allocations). */
ts_event *ts_event_new(ts_event_kind kind, uint64_t job);
void ts_event_free(ts_event *ev);   /* NULL-safe; frees rgb and tokens too */

typedef struct ts_sched_config {
    int max_batch;          /* images stepped together, both families counted */
    int decodes_per_step;   /* final image decodes per step (>= 1) */
    int previews_per_step;  /* groups whose previews are decoded per step (>= 0) */
} ts_sched_config;

typedef struct ts_sched_stats {
    uint64_t forward_passes;     /* autoregressive forwards run */
    uint64_t rows_total;         /* sequences stepped, summed over forwards */
    int last_batch_rows;         /* sequences in the last forward */
    int last_batch_images;       /* images in the last forward */
    uint64_t masked_passes;      /* masked steps run (one batched ts_masked_step each) */
    uint64_t masked_images_total;/* masked images stepped, summed over masked steps */
    int last_masked_images;      /* images in the last masked step */
    int waiting, running;        /* groups */
    int kv_blocks_total, kv_blocks_free, kv_blocks_reserved;   /* 0 without an AR model */
    uint64_t images_done;
    uint64_t vq_decodes, titok_decodes, previews;
    uint64_t prompts_encoded;    /* masked groups' prompt conditionings made */
} ts_sched_stats;

typedef void (*ts_sched_emit_fn)(void *ctx, ts_event *ev);

typedef struct ts_sched ts_sched;

/* The models a scheduler steps, all on one backend; at least one of ar and masked. */
typedef struct ts_sched_models {
    ts_model *ar;             /* TS_FAMILY_LLAMAGEN with a VQ decoder, or NULL */
    ts_kv_cache *kv;          /* ar's KV cache (NULL when ar is) */
    ts_model *masked;         /* TS_FAMILY_MASKGEN, or NULL */
} ts_sched_models;

/* Borrows the models and the KV cache (all must outlive the scheduler); with an AR
 * model, runs the null-class prefill into one shared block. */
int ts_sched_create(const ts_sched_models *models, const ts_sched_config *cfg,
                    ts_sched_emit_fn emit, void *emit_ctx, ts_sched **out, ts_error *err);
void ts_sched_free(ts_sched *s);   /* NULL-safe; drops every group without events */

/* Positions per KV block of the server's cache. */
#define TS_SCHED_KV_BLOCK 16

/* KV blocks one image pair of spec needs for its whole life (0 for a masked image). */
int ts_sched_blocks_per_image(const ts_sched *s, const ts_job_spec *spec);
/* The most any image pair of a model can need (CFG on every step), for sizing a cache. */
int ts_sched_max_blocks_per_image(const llamagen_config *c, int block_size);
/* Whether spec could ever run (its family's model is loaded, it fits max_batch and the
 * whole KV cache, its fields are in range); if not, err says why (TS_ERR_INVALID). Reads
 * only what is fixed at creation, so another thread may call it. */
int ts_sched_check(const ts_sched *s, const ts_job_spec *spec, ts_error *err);

/* Queues a group (spec copied). TS_ERR_INVALID for a spec ts_sched_check refuses. */
int ts_sched_add(ts_sched *s, uint64_t job, const ts_job_spec *spec, ts_error *err);
/* Marks a group for cancellation at the next step; 0 if found, -1 if unknown. */
int ts_sched_cancel(ts_sched *s, uint64_t job);

/* Whether anything is waiting, running or being decoded. */
int ts_sched_busy(const ts_sched *s);

/* One engine step (see above). An error is the engine's fault, not a request's: the
 * groups in the failed forward (or masked step) are failed with its message and the
 * call returns 0; nonzero only for a broken scheduler. */
int ts_sched_step(ts_sched *s, ts_error *err);

void ts_sched_get_stats(const ts_sched *s, ts_sched_stats *st);

#endif
