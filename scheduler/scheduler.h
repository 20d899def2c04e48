/* scheduler.h - continuous batching of image requests over the server's models: at
 * most one LlamaGen (class-conditional, autoregressive), one FQGAN (its FAR generator:
 * class-conditional, autoregressive with k sub-tokens per position) and one MaskGen
 * (text-to-image, masked decoding) model, stepped together in one loop.
 *
 * A request becomes a group: n images of one class or one prompt. An autoregressive
 * image (LlamaGen or FAR) is a [cond, uncond] CFG pair of sequences (or a lone cond
 * sequence when CFG is off); a masked image is its N token ids, fed twice per step
 * (with the prompt's and with the empty prompt's conditioning). A group is admitted,
 * stepped, cancelled and finished as one unit, so a pair can never be split across
 * batch positions or steps. Every call to ts_sched_step is one engine step:
 *
 *   1. drop cancelled groups (their KV blocks and prompt conditioning are free when
 *      the call returns);
 *   2. admit waiting groups of any family first-come first-served while the step's
 *      image budget (max_batch, counting images of every family) and the KV blocks
 *      they will ever need (in their model's own cache) both allow; a masked group's
 *      prompt is encoded here, once;
 *   3. one LlamaGen forward over every running LlamaGen sequence (a new group's class
 *      prefill rides in the same batch as the others' decode rows);
 *   4. one FAR step over every running FAR sequence: one trunk forward (new groups'
 *      class prefills, cond and uncond, ride in it), then k head sub-steps, each
 *      followed by the draw of sub-token j of every FAR image;
 *   5. one masked step over every running masked image, whatever step each is at;
 *   6. decodes (final images, then previews; VQ for LlamaGen and FAR images, TA-TiTok
 *      for masked ones) under their own per-step budgets.
 *
 * So the families interleave step by step, and none starves another: admission is one
 * queue in arrival order. LlamaGen and FAR share one code path (an "autoregressive
 * lane" each: model, KV cache, block manager, rows, sampling, previews), which differs
 * only in the forward (GPT, or trunk + head sub-steps), in the codes per position
 * (1 or k) and in the null-class prefix below.
 *
 * LlamaGen's null-class prefix is computed once at creation and shared by reference
 * count by every uncond sequence; the first write into its block copies it
 * (copy-on-write). FAR cannot share it (its head needs the uncond row's trunk output
 * in the same step), so a FAR uncond sequence runs its own 1-token class prefill.
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
    TS_JOB_FAR = 2,           /* the FQGAN model's FAR generator: class_id and params */
} ts_job_family;

/* Bytes of a masked request's prompt (UTF-8, without the terminating NUL). */
#define TS_SCHED_MAX_PROMPT 1000

/* What a request asks for, validated by the API layer. */
typedef struct ts_job_spec {
    int n_images;             /* 1..max_batch */
    int32_t class_id;         /* AR, FAR: 0..num_classes-1 */
    ts_gen_params params;     /* AR and FAR sampling; params.seed is the seed of every
                                 family: image i uses seed params.seed + i */
    int preview_every;        /* previews every N tokens (AR), positions (FAR) or steps
                                 (masked); 0 = none */
    ts_job_family family;
    ts_mask_params mask;      /* masked: steps (1..N), guidance, randomize_temperature,
                                 aesthetic; mask.seed is not read (params.seed is) */
    char prompt[TS_SCHED_MAX_PROMPT + 1];   /* masked: NUL-terminated UTF-8, "" allowed */
} ts_job_spec;

typedef enum ts_event_kind {
    TS_EV_QUEUED,      /* position: 1-based place in the waiting queue */
    TS_EV_STARTED,     /* admitted into the running batch */
    TS_EV_PROGRESS,    /* step of total: tokens generated (AR), positions generated (FAR,
                          each k sub-tokens) or masked steps done */
    TS_EV_PREVIEW,     /* image: rgb from the tokens so far (AR, FAR: the positions so
                          far) or from the step's full prediction (masked), at step of
                          total */
    TS_EV_IMAGE,       /* image: final rgb and tokens (total = ids per image; FAR:
                          block_size * k, position-major, sub-token 0 first, the CLI's
                          --tokens-out order) */
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
    int max_batch;          /* images stepped together, every family counted */
    int decodes_per_step;   /* final image decodes per step (>= 1) */
    int previews_per_step;  /* groups whose previews are decoded per step (>= 0) */
    int prefill_tokens;     /* LlamaGen t2i: text positions fed per step over every
                               sequence still prefilling (>= 1; at least one a step) */
} ts_sched_config;

/* One autoregressive lane's figures (the FAR lane's; LlamaGen's are ts_sched_stats'
 * own fields of the same names). */
typedef struct ts_sched_lane_stats {
    uint64_t forward_passes;     /* batched forwards (FAR: trunk steps) */
    uint64_t head_steps;         /* FAR head sub-steps (k per trunk step); 0 for LlamaGen */
    uint64_t rows_total;         /* sequences stepped, summed over forwards */
    int last_batch_rows;         /* sequences in the last forward */
    int last_batch_images;       /* images in the last forward */
    int kv_blocks_total, kv_blocks_free, kv_blocks_reserved;   /* 0 without the model */
} ts_sched_lane_stats;

typedef struct ts_sched_stats {
    /* The LlamaGen lane (names kept from before FAR; the FAR lane is `far` below). */
    uint64_t forward_passes;     /* autoregressive (LlamaGen) forwards run */
    uint64_t rows_total;         /* sequences stepped, summed over forwards */
    int last_batch_rows;         /* sequences in the last forward */
    int last_batch_images;       /* images in the last forward */
    uint64_t masked_passes;      /* masked steps run (one batched ts_masked_step each) */
    uint64_t masked_images_total;/* masked images stepped, summed over masked steps */
    int last_masked_images;      /* images in the last masked step */
    int waiting, running;        /* groups */
    int kv_blocks_total, kv_blocks_free, kv_blocks_reserved;   /* LlamaGen's cache; 0
                                                                  without the model */
    ts_sched_lane_stats far;     /* the FAR lane, its own KV cache */
    uint64_t images_done;
    uint64_t vq_decodes, titok_decodes, previews;   /* vq: LlamaGen's and FQGAN's */
    uint64_t prompts_encoded;    /* masked groups' prompt conditionings made */
} ts_sched_stats;

typedef void (*ts_sched_emit_fn)(void *ctx, ts_event *ev);

typedef struct ts_sched ts_sched;

/* The models a scheduler steps, all on one backend; at least one of them. */
typedef struct ts_sched_models {
    ts_model *ar;             /* TS_FAMILY_LLAMAGEN with a VQ decoder, or NULL */
    ts_kv_cache *kv;          /* ar's KV cache (NULL when ar is) */
    ts_model *masked;         /* TS_FAMILY_MASKGEN, or NULL */
    ts_model *far;            /* TS_FAMILY_FQGAN with its FAR generator, or NULL */
    ts_kv_cache *far_kv;      /* far's KV cache, the trunk's geometry (NULL when far is) */
} ts_sched_models;

/* Borrows the models and the KV caches (all must outlive the scheduler); with a
 * LlamaGen model, runs the null-class prefill into one shared block. */
int ts_sched_create(const ts_sched_models *models, const ts_sched_config *cfg,
                    ts_sched_emit_fn emit, void *emit_ctx, ts_sched **out, ts_error *err);
void ts_sched_free(ts_sched *s);   /* NULL-safe; drops every group without events */

/* Positions per KV block of the server's cache. */
#define TS_SCHED_KV_BLOCK 16

/* KV blocks one image pair of spec needs for its whole life, in its model's cache (0
 * for a masked image). */
int ts_sched_blocks_per_image(const ts_sched *s, const ts_job_spec *spec);
/* The most any image pair of a model can need (CFG on every step), for sizing a cache:
 * c is LlamaGen's GPT config or FAR's trunk config (ts_model_c2i_config). */
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
 * groups in the failed forward (LlamaGen forward, FAR step or masked step: that
 * family's running groups) are failed with its message and the call returns 0;
 * nonzero only for a broken scheduler. */
int ts_sched_step(ts_sched *s, ts_error *err);

void ts_sched_get_stats(const ts_sched *s, ts_sched_stats *st);

#endif
