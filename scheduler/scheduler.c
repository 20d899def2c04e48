/* scheduler.c - see scheduler.h. */
#include "scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/titok_decoder.h"
#include "engine/models/vq_decoder.h"

typedef enum group_state { G_WAITING, G_RUNNING, G_DECODING } group_state;

typedef struct image_seqs {
    ts_block_table cond, uncond;   /* autoregressive (LlamaGen, FAR) only */
    int32_t *tokens;           /* LlamaGen: [L] in raster order; FAR: [L][k], position-
                                  major; masked: ids [N], the mask id where still masked */
    int32_t *pred;             /* masked with previews: [N], the prediction of the last
                                  step that was due for a preview */
    int decoded;               /* final image delivered */
} image_seqs;

typedef struct group {
    uint64_t id;
    ts_job_spec spec;
    group_state state;
    int cancelled;
    int t;                     /* tokens (LlamaGen) or positions (FAR) generated, or masked
                                  steps done, shared by every image of the group */
    int reserve;               /* KV blocks promised (in its lane's cache), not yet taken */
    int last_position;         /* last queue position reported */
    int preview_due;           /* step whose preview is pending, 0 = none */
    int n_decoded;
    image_seqs *img;           /* [n_images] */
    ts_mg_prompt prompt;       /* masked: both branches' conditioning, made at admission */
    int has_prompt;
    ts_t2i_prompt tprompt;     /* LlamaGen t2i: both branches' caption rows, made at
                                  admission */
    int has_tprompt;
    int prefilled;             /* t2i: text positions already cached (every image alike) */
    int chunk;                 /* this step: t2i text positions fed (0: none this step) */
    int seqs;                  /* this step: sequences the group put in the lane's batch */
    int drawing;               /* this step ends with a draw (t2i: the last chunk) */
    struct group *next;
} group;

/* An autoregressive lane: LlamaGen's GPT or FQGAN's FAR, each over its own paged KV
 * cache. Everything about groups of these two families (block tables, reservations,
 * rows, CFG pairs, sampling, previews and decodes) is this one code path; the lane
 * says which forward runs, how many codes a position has (k) and whether uncond
 * sequences start from the shared null-class prefix. */
typedef struct ar_lane {
    ts_job_family family;      /* TS_JOB_AR or TS_JOB_FAR */
    ts_model *m;               /* NULL: the server has no model of this family */
    ts_kv_cache *kv;
    ts_block_manager bm;
    const llamagen_config *c;  /* LlamaGen's GPT, or FAR's trunk */
    int k;                     /* codes per position: 1 (LlamaGen) or FAR's n_sub */
    int shared_null;           /* LlamaGen c2i: uncond rows start from null_prefix */
    int t2i;                   /* LlamaGen text-to-image: a text prefix per group */
    ts_block_table null_prefix;
    float *null_logits;        /* backend memory [vocab]: the null class's prefill logits */

    /* Step scratch, grown on demand. */
    int cap_rows;
    llamagen_seq *rows;
    far_seq *frows;            /* FAR: the same rows as far_trunk_forward takes them */
    int32_t *ids;              /* [cap_rows * k]: what each row feeds */
    int32_t *prev;             /* FAR: [cap_rows], sub-token j-1 of each row's image */
    ts_sample_row *draws;      /* one per image in the batch */
    int32_t *picked;
    int32_t *codes;            /* [L * k] for decodes */

    ts_sched_lane_stats st;
} ar_lane;

enum { LANE_LLAMAGEN, LANE_FAR, N_LANES };

struct ts_sched {
    ar_lane lanes[N_LANES];    /* stepped in this order */
    ts_model *mg;              /* MaskGen, or NULL */
    ts_sched_config cfg;
    ts_sched_emit_fn emit;
    void *emit_ctx;

    group *groups;             /* every live group, in arrival order */

    /* Masked step scratch: one entry per image, max_batch of each. */
    const ts_mask_params **m_params;
    const ts_mg_prompt **m_prompts;
    int *m_steps;
    uint64_t *m_seeds;
    int32_t **m_ids, **m_pred;

    uint8_t *rgb;              /* one image of the largest model */

    ts_sched_stats st;
};

void ts_event_free(ts_event *ev)
{
    if (!ev) return;
    free(ev->rgb);
    free(ev->tokens);
    free(ev);
}

ts_event *ts_event_new(ts_event_kind kind, uint64_t job)
{
    ts_event *ev = calloc(1, sizeof *ev);
    if (!ev) abort();
    ev->kind = kind;
    ev->job = job;
    return ev;
}

static void emit(ts_sched *s, ts_event *ev) { s->emit(s->emit_ctx, ev); }

static ts_masked_model *mmod(const ts_sched *s) { return s->mg->masked; }
static int masked_tokens(const ts_sched *s) { return mmod(s)->gen->cfg.num_tokens; }
static int is_masked(const group *g) { return g->spec.family == TS_JOB_MASKED; }

/* The lane of an autoregressive family (NULL for the masked one). */
static ar_lane *lane_for(const ts_sched *s, ts_job_family family)
{
    if (family == TS_JOB_AR) return (ar_lane *)&s->lanes[LANE_LLAMAGEN];
    if (family == TS_JOB_FAR) return (ar_lane *)&s->lanes[LANE_FAR];
    return NULL;
}

static ar_lane *lane_of(const ts_sched *s, const group *g) { return lane_for(s, g->spec.family); }

/* Steps a group runs: one per token (LlamaGen) or position (FAR), masked its
 * requested steps. */
static int group_steps(const ts_sched *s, const group *g)
{
    return is_masked(g) ? g->spec.mask.steps : lane_of(s, g)->c->block_size;
}

/* Ids per image of a group's family (FAR: k per position). */
static int group_tokens(const ts_sched *s, const group *g)
{
    if (is_masked(g)) return masked_tokens(s);
    const ar_lane *L = lane_of(s, g);
    return L->c->block_size * L->k;
}

static int group_px(const ts_sched *s, const group *g)
{
    return is_masked(g) ? s->mg->image_size : lane_of(s, g)->m->image_size;
}

/* Condition positions of a group's sequences: the class (1), or a t2i prompt's text
 * tokens; before the prompt is encoded, the most there can be (cls_token_num). */
static int n_cond_of(const ar_lane *L, const group *g)
{
    return g && g->has_tprompt ? g->tprompt.n_text : L->c->cls_token_num;
}

static int last_cfg_step(const ar_lane *L, const ts_job_spec *spec)
{
    int last = -1;
    for (int t = 0; t < L->c->block_size; t++)
        if (ts_gen_cfg_active(&spec->params, t)) last = t;
    return last;   /* the active steps are always a prefix */
}

/* KV blocks of one image: the cond sequence holds the n_cond condition positions, then
 * every image position but the last (never fed back); the uncond one stops at the last
 * CFG step. */
static int lane_blocks_per_image(const ar_lane *L, const ts_job_spec *spec, int n_cond)
{
    int n = ts_bm_blocks_for(&L->bm, n_cond + L->c->block_size - 1);
    int last = last_cfg_step(L, spec);
    /* Steps 1..last feed the uncond row (up to position n_cond + last - 1). LlamaGen
     * c2i's step 0 reads the shared prefix's logits (its block is copied at step 1,
     * counted here); FAR's and t2i's uncond rows run their own prefill at step 0. */
    if (last >= (L->shared_null ? 1 : 0))
        n += ts_bm_blocks_for(&L->bm, n_cond + last);
    return n;
}

int ts_sched_blocks_per_image(const ts_sched *s, const ts_job_spec *spec)
{
    const ar_lane *L = lane_for(s, spec->family);
    return L && L->m ? lane_blocks_per_image(L, spec, n_cond_of(L, NULL)) : 0;
}

int ts_sched_max_blocks_per_image(const llamagen_config *c, int block_size)
{
    /* cond and uncond each hold the class prefix and every token but the last */
    int positions = c->cls_token_num + c->block_size - 1;
    return 2 * ((positions + block_size - 1) / block_size);
}

static int check_masked(const ts_sched *s, const ts_job_spec *spec, ts_error *err)
{
    if (!s->mg)
        return ts_fail(err, TS_ERR_INVALID, "this server has no MaskGen (text-to-image) model");
    int N = masked_tokens(s);
    const ts_mask_params *p = &spec->mask;
    if (p->steps < 1 || p->steps > N)
        return ts_fail(err, TS_ERR_INVALID, "steps must be between 1 and %d (the tokens of an "
                       "image)", N);
    if (!isfinite(p->guidance) || !isfinite(p->randomize_temperature) ||
        !isfinite(p->aesthetic) || p->randomize_temperature < 0.0f)
        return ts_fail(err, TS_ERR_INVALID, "masked sampling parameters must be finite "
                       "(randomize_temperature >= 0)");
    if (!memchr(spec->prompt, '\0', sizeof spec->prompt))
        return ts_fail(err, TS_ERR_INVALID, "prompt longer than %d bytes", TS_SCHED_MAX_PROMPT);
    return 0;
}

static int check_ar(const ar_lane *L, const ts_job_spec *spec, ts_error *err)
{
    if (!L->m)
        return ts_fail(err, TS_ERR_INVALID, L->family == TS_JOB_FAR
                       ? "this server has no FQGAN (FAR, class-conditional) model"
                       : "this server has no LlamaGen model");
    const llamagen_config *c = L->c;
    if (L->t2i) {
        if (!memchr(spec->prompt, '\0', sizeof spec->prompt))
            return ts_fail(err, TS_ERR_INVALID, "prompt longer than %d bytes",
                           TS_SCHED_MAX_PROMPT);
    } else if (spec->class_id < 0 || spec->class_id >= c->num_classes) {
        return ts_fail(err, TS_ERR_INVALID, "class must be between 0 and %d", c->num_classes - 1);
    }
    int need = spec->n_images * lane_blocks_per_image(L, spec, n_cond_of(L, NULL));
    int total = L->kv->n_blocks - L->null_prefix.n;
    if (need > total)
        return ts_fail(err, TS_ERR_INVALID,
                       "the request needs %d KV blocks and the server has %d; ask for fewer images",
                       need, total);
    return 0;
}

int ts_sched_check(const ts_sched *s, const ts_job_spec *spec, ts_error *err)
{
    if (spec->n_images < 1 || spec->n_images > s->cfg.max_batch)
        return ts_fail(err, TS_ERR_INVALID, "n must be between 1 and %d (the server's batch size)",
                       s->cfg.max_batch);
    if (spec->family == TS_JOB_MASKED) return check_masked(s, spec, err);
    const ar_lane *L = lane_for(s, spec->family);
    if (!L) return ts_fail(err, TS_ERR_INVALID, "unknown model family");
    return check_ar(L, spec, err);
}

static group *find(ts_sched *s, uint64_t id)
{
    for (group *g = s->groups; g; g = g->next)
        if (g->id == id) return g;
    return NULL;
}

static void group_free(ts_sched *s, group *g)
{
    ar_lane *L = lane_of(s, g);
    for (int i = 0; g->img && i < g->spec.n_images; i++) {
        if (L) {
            ts_bm_release(&L->bm, &g->img[i].cond);
            ts_bm_release(&L->bm, &g->img[i].uncond);
        }
        free(g->img[i].tokens);
        free(g->img[i].pred);
    }
    if (L) ts_bm_unreserve(&L->bm, &g->reserve);
    if (g->has_prompt) ts_mg_prompt_free(mmod(s), &g->prompt);
    if (g->has_tprompt) ts_t2i_prompt_free(L->m, &g->tprompt);
    free(g->img);
    free(g);
}

static void unlink_group(ts_sched *s, group *g)
{
    for (group **p = &s->groups; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            return;
        }
}

/* Ends a group: unlinks and frees it, then emits kind (with message and code, for
 * failures). */
static void finish_group_code(ts_sched *s, group *g, ts_event_kind kind, int code,
                              const char *message)
{
    ts_event *ev = ts_event_new(kind, g->id);
    ev->code = code;
    if (message) snprintf(ev->message, sizeof ev->message, "%.*s", (int)sizeof ev->message - 1, message);
    unlink_group(s, g);
    group_free(s, g);
    emit(s, ev);
}

static void finish_group(ts_sched *s, group *g, ts_event_kind kind, const char *message)
{
    finish_group_code(s, g, kind, kind == TS_EV_FAILED ? TS_ERR_INTERNAL : TS_OK, message);
}

int ts_sched_add(ts_sched *s, uint64_t job, const ts_job_spec *spec, ts_error *err)
{
    int rc = ts_sched_check(s, spec, err);
    if (rc) return rc;
    if (find(s, job)) return ts_fail(err, TS_ERR_INVALID, "job %llu already queued",
                                     (unsigned long long)job);
    group *g = calloc(1, sizeof *g);
    if (g) g->img = calloc((size_t)spec->n_images, sizeof *g->img);
    if (!g || !g->img) {
        free(g);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory queueing a request");
    }
    g->id = job;
    g->spec = *spec;
    g->state = G_WAITING;
    group **p = &s->groups;
    while (*p) p = &(*p)->next;
    *p = g;
    return 0;
}

int ts_sched_cancel(ts_sched *s, uint64_t job)
{
    group *g = find(s, job);
    if (!g) return -1;
    g->cancelled = 1;
    return 0;
}

int ts_sched_busy(const ts_sched *s) { return s->groups != NULL; }

/* ------------------------------------------------------------------ creation */

static int grow_scratch(ar_lane *L, int rows, ts_error *err)
{
    if (rows <= L->cap_rows) return 0;
    llamagen_seq *r = realloc(L->rows, (size_t)rows * sizeof *r);
    if (r) L->rows = r;
    far_seq *fr = realloc(L->frows, (size_t)rows * sizeof *fr);
    if (fr) L->frows = fr;
    int32_t *ids = realloc(L->ids, (size_t)rows * L->k * sizeof *ids);
    if (ids) L->ids = ids;
    int32_t *prev = realloc(L->prev, (size_t)rows * sizeof *prev);
    if (prev) L->prev = prev;
    ts_sample_row *d = realloc(L->draws, (size_t)rows * sizeof *d);
    if (d) L->draws = d;
    int32_t *pk = realloc(L->picked, (size_t)rows * sizeof *pk);
    if (pk) L->picked = pk;
    if (!r || !fr || !ids || !prev || !d || !pk)
        return ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
    L->cap_rows = rows;
    return 0;
}

/* LlamaGen's null-class prefix, once, for every request's uncond sequence. */
static int make_null_prefix(ar_lane *L, ts_error *err)
{
    const llamagen_config *c = L->c;
    int reserve = 0, n = c->cls_token_num, rc;
    if (ts_bm_reserve(&L->bm, ts_bm_blocks_for(&L->bm, n), &reserve))
        return ts_fail(err, TS_ERR_NOMEM, "kv cache too small for even the null-class prefix");
    rc = ts_bm_prepare(&L->bm, &L->null_prefix, n, 0, &reserve, err);
    ts_bm_unreserve(&L->bm, &reserve);
    if (rc) return rc;
    for (int i = 0; i < n; i++) L->ids[i] = c->num_classes;
    llamagen_seq seq = {.n_past = 0, .n_new = n, .ids = L->ids, .block_table = L->null_prefix.blocks};
    if ((rc = llamagen_forward(L->m->gpt, L->kv, &seq, 1, NULL, err))) return rc;
    ts_be_copy(L->m->be, L->null_logits, llamagen_logits(L->m->gpt),
               (size_t)c->vocab_size * sizeof(float));
    return 0;
}

/* Sets up a lane for model m (NULL: the lane stays empty). */
static int lane_init(ar_lane *L, ts_job_family family, ts_model *m, ts_kv_cache *kv,
                     ts_error *err)
{
    L->family = family;
    if (!m) return 0;
    L->m = m;
    L->kv = kv;
    L->c = ts_model_c2i_config(m);
    L->k = family == TS_JOB_FAR ? m->far->cfg.n_sub : 1;
    L->t2i = ts_model_is_t2i(m);
    L->shared_null = family == TS_JOB_AR && !L->t2i;
    ts_bm_init(&L->bm, kv);
    L->codes = malloc((size_t)L->c->block_size * L->k * sizeof *L->codes);
    if (!L->codes) return ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
    int rc = grow_scratch(L, L->c->cls_token_num > 2 ? L->c->cls_token_num : 2, err);
    if (rc) return rc;
    if (!L->shared_null) return 0;
    if (!(L->null_logits = ts_be_alloc(m->be, (size_t)L->c->vocab_size)))
        return ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
    return make_null_prefix(L, err);
}

static void lane_free(ar_lane *L)
{
    if (L->m) {
        ts_bm_release(&L->bm, &L->null_prefix);
        if (L->null_logits) ts_be_free(L->m->be, L->null_logits);
    }
    free(L->rows);
    free(L->frows);
    free(L->ids);
    free(L->prev);
    free(L->draws);
    free(L->picked);
    free(L->codes);
}

int ts_sched_create(const ts_sched_models *models, const ts_sched_config *cfg,
                    ts_sched_emit_fn emit_fn, void *emit_ctx, ts_sched **out, ts_error *err)
{
    *out = NULL;
    ts_model *ar = models->ar, *mg = models->masked, *far = models->far;
    if (!ar && !mg && !far) return ts_fail(err, TS_ERR_CONFIG, "scheduler: no model to serve");
    if (ar && (ar->family != TS_FAMILY_LLAMAGEN || !ar->gpt || !ar->vq || !models->kv))
        return ts_fail(err, TS_ERR_CONFIG, "serving a LlamaGen model needs a folder with both "
                       "gpt and vq, and a KV cache");
    if (far && (far->family != TS_FAMILY_FQGAN || !far->far || !far->vq || !models->far_kv))
        return ts_fail(err, TS_ERR_CONFIG, "serving an FQGAN model needs a folder with its FAR "
                       "generator (gpt) and its vq, and a KV cache");
    if (mg && (mg->family != TS_FAMILY_MASKGEN || !mg->masked))
        return ts_fail(err, TS_ERR_CONFIG, "scheduler: the masked model is not a MaskGen folder");
    if (cfg->max_batch < 1 || cfg->decodes_per_step < 1 || cfg->previews_per_step < 0 ||
        cfg->prefill_tokens < 1)
        return ts_fail(err, TS_ERR_INVALID, "scheduler: bad limits");
    ts_sched *s = calloc(1, sizeof *s);
    if (!s) return ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
    s->mg = mg;
    s->cfg = *cfg;
    s->emit = emit_fn;
    s->emit_ctx = emit_ctx;
    int px = 0, rc = TS_ERR_NOMEM;
    ts_model *all[3] = {ar, far, mg};
    for (int i = 0; i < 3; i++)
        if (all[i] && all[i]->image_size > px) px = all[i]->image_size;
    s->rgb = malloc((size_t)px * px * 3);
    if (!s->rgb) goto oom;
    if ((rc = lane_init(&s->lanes[LANE_LLAMAGEN], TS_JOB_AR, ar, models->kv, err)) ||
        (rc = lane_init(&s->lanes[LANE_FAR], TS_JOB_FAR, far, models->far_kv, err)))
        goto fail;
    if (mg) {
        size_t n = (size_t)cfg->max_batch;
        s->m_params = malloc(n * sizeof *s->m_params);
        s->m_prompts = malloc(n * sizeof *s->m_prompts);
        s->m_steps = malloc(n * sizeof *s->m_steps);
        s->m_seeds = malloc(n * sizeof *s->m_seeds);
        s->m_ids = malloc(n * sizeof *s->m_ids);
        s->m_pred = malloc(n * sizeof *s->m_pred);
        if (!s->m_params || !s->m_prompts || !s->m_steps || !s->m_seeds || !s->m_ids ||
            !s->m_pred)
            goto oom;
    }
    *out = s;
    return 0;
oom:
    rc = ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
fail:
    ts_sched_free(s);
    return rc;
}

void ts_sched_free(ts_sched *s)
{
    if (!s) return;
    while (s->groups) {
        group *g = s->groups;
        s->groups = g->next;
        group_free(s, g);
    }
    for (int l = 0; l < N_LANES; l++) lane_free(&s->lanes[l]);
    free(s->m_params);
    free(s->m_prompts);
    free(s->m_steps);
    free(s->m_seeds);
    free(s->m_ids);
    free(s->m_pred);
    free(s->rgb);
    free(s);
}

/* ------------------------------------------------------------------ the step */

static void drop_cancelled(ts_sched *s)
{
    group *g = s->groups;
    while (g) {
        group *next = g->next;
        if (g->cancelled) finish_group(s, g, TS_EV_CANCELLED, NULL);
        g = next;
    }
}

static int running_images(const ts_sched *s)
{
    int n = 0;
    for (const group *g = s->groups; g; g = g->next)
        if (g->state == G_RUNNING) n += g->spec.n_images;
    return n;
}

/* A group's per-image buffers and, for a masked group, its prompt conditioning (on the
 * engine thread: CLIP runs here, once per request). Fills err on failure. */
static int start_group(ts_sched *s, group *g, ts_error *err)
{
    int n = group_tokens(s, g);
    int masked = is_masked(g);
    int want_pred = masked && g->spec.preview_every > 0;
    for (int i = 0; i < g->spec.n_images; i++) {
        image_seqs *im = &g->img[i];
        im->tokens = malloc((size_t)n * sizeof *im->tokens);
        if (want_pred) im->pred = malloc((size_t)n * sizeof *im->pred);
        if (!im->tokens || (want_pred && !im->pred))
            return ts_fail(err, TS_ERR_NOMEM, "out of memory starting the request");
        if (masked)   /* every position masked: the mask token's id is the codebook size */
            for (int k = 0; k < n; k++) im->tokens[k] = mmod(s)->gen->cfg.codebook_size;
    }
    ar_lane *L = lane_of(s, g);
    if (L && L->t2i) {
        int rc = ts_t2i_prompt_make(L->m, g->spec.prompt, g->spec.params.cfg_scale > 1.0f,
                                    &g->tprompt, err);
        if (rc) return rc;
        g->has_tprompt = 1;
        s->st.prompts_encoded++;
        /* Admission promised blocks for the longest prompt; keep what this one needs. */
        ts_bm_shrink(&L->bm, &g->reserve,
                     g->spec.n_images * lane_blocks_per_image(L, &g->spec, g->tprompt.n_text));
        return 0;
    }
    if (!masked) return 0;
    int rc = ts_mg_prompt_make(mmod(s), g->spec.prompt, g->spec.mask.aesthetic, &g->prompt, err);
    if (rc) return rc;
    g->has_prompt = 1;
    s->st.prompts_encoded++;
    return 0;
}

/* First come, first served across every family: the oldest waiting group blocks the
 * ones behind it, so a large request is never starved by a stream of small ones, and
 * no family by another. */
static void admit(ts_sched *s)
{
    int images = running_images(s);
    int blocked = 0, position = 0;
    group *g = s->groups;
    while (g) {
        group *next = g->next;
        if (g->state != G_WAITING) {
            g = next;
            continue;
        }
        if (!blocked) {
            ar_lane *L = lane_of(s, g);
            int need = L ? g->spec.n_images * lane_blocks_per_image(L, &g->spec,
                                                                    n_cond_of(L, g)) : 0;
            if (images + g->spec.n_images <= s->cfg.max_batch &&
                (need == 0 || ts_bm_reserve(&L->bm, need, &g->reserve) == 0)) {
                ts_error err = {0};
                if (start_group(s, g, &err)) {
                    /* Freed at once (its reservation too); the queue moves on. */
                    finish_group_code(s, g, TS_EV_FAILED, err.code ? err.code : TS_ERR_INTERNAL,
                                      err.msg);
                    g = next;
                    continue;
                }
                g->state = G_RUNNING;
                images += g->spec.n_images;
                emit(s, ts_event_new(TS_EV_STARTED, g->id));
                g = next;
                continue;
            }
            blocked = 1;
        }
        position++;
        if (position != g->last_position) {
            ts_event *ev = ts_event_new(TS_EV_QUEUED, g->id);
            ev->position = g->last_position = position;
            emit(s, ev);
        }
        g = next;
    }
}

/* Row r of the lane's batch: one new position at pos of table, fed the class id cls
 * (a class position) or the k codes at codes (image position). */
static void set_row(ar_lane *L, int r, int pos, const ts_block_table *table, int32_t cls,
                    const int32_t *codes)
{
    int32_t *ids = L->ids + (size_t)r * L->k;
    if (codes) {
        memcpy(ids, codes, (size_t)L->k * sizeof *ids);
    } else {
        ids[0] = cls;
        for (int j = 1; j < L->k; j++) ids[j] = 0;   /* ignored at a class position */
    }
    L->rows[r] = (llamagen_seq){.n_past = pos, .n_new = 1, .ids = ids, .block_table = table->blocks};
}

/* Whether image rows of g at its step t are a [cond, uncond] pair (else cond alone:
 * CFG off or over, or LlamaGen's step 0, whose uncond logits are the shared prefix's). */
static int two_rows(const ar_lane *L, const group *g)
{
    const ts_gen_params *p = &g->spec.params;
    return p->cfg_scale > 1.0f && ts_gen_cfg_active(p, g->t) && (g->t > 0 || !L->shared_null);
}

/* t2i, step 0: the next chunk of both branches' text rows, [prefilled, + chunk). */
static int add_text_rows(ar_lane *L, group *g, image_seqs *im, int *n_rows, ts_error *err)
{
    const ts_t2i_prompt *pr = &g->tprompt;
    int from = g->prefilled, to = from + g->chunk, r = *n_rows, rc;
    ts_block_table *tables[2] = {&im->cond, &im->uncond};
    const float *rows[2] = {pr->cond, pr->uncond};
    for (int b = 0; b < (g->spec.params.cfg_scale > 1.0f ? 2 : 1); b++) {
        if ((rc = ts_bm_prepare(&L->bm, tables[b], to, from, &g->reserve, err))) return rc;
        L->rows[r++] = (llamagen_seq){.n_past = from, .n_new = to - from, .ids = NULL,
                                      .block_table = tables[b]->blocks, .n_cond = pr->n_text,
                                      .cond_emb = rows[b]};
    }
    *n_rows = r;
    return 0;
}

/* Adds the rows of image i of g at step t to the lane's batch. */
static int add_rows(ar_lane *L, group *g, int i, int *n_rows, ts_error *err)
{
    const llamagen_config *c = L->c;
    image_seqs *im = &g->img[i];
    int t = g->t, cls = n_cond_of(L, g), r = *n_rows, k = L->k;
    int cfg = g->spec.params.cfg_scale > 1.0f;
    int rc;
    if (L->t2i && t == 0) return add_text_rows(L, g, im, n_rows, err);
    if (t == 0) {
        if ((rc = ts_bm_prepare(&L->bm, &im->cond, cls, 0, &g->reserve, err))) return rc;
        set_row(L, r++, 0, &im->cond, g->spec.class_id, NULL);
        if (cfg && L->shared_null) {
            *n_rows = r;
            /* The uncond row's step-0 logits are the shared prefix's. */
            if (last_cfg_step(L, &g->spec) >= 1)
                return ts_bm_share(&L->bm, &im->uncond, &L->null_prefix, err);
            return 0;
        }
        if (cfg) {   /* FAR: the uncond row's own null-class prefill, beside the cond one */
            if ((rc = ts_bm_prepare(&L->bm, &im->uncond, cls, 0, &g->reserve, err))) return rc;
            set_row(L, r++, 0, &im->uncond, c->num_classes, NULL);
        }
        *n_rows = r;
        return 0;
    }
    int pos = cls + t - 1;   /* where position t-1's codes go */
    const int32_t *codes = im->tokens + (size_t)(t - 1) * k;
    if ((rc = ts_bm_prepare(&L->bm, &im->cond, pos + 1, pos, &g->reserve, err))) return rc;
    set_row(L, r, pos, &im->cond, 0, codes);
    L->rows[r++].n_cond = L->t2i ? cls : 0;
    if (two_rows(L, g)) {
        if ((rc = ts_bm_prepare(&L->bm, &im->uncond, pos + 1, pos, &g->reserve, err))) return rc;
        set_row(L, r, pos, &im->uncond, 0, codes);
        L->rows[r++].n_cond = L->t2i ? cls : 0;
    } else if (im->uncond.n) {
        ts_bm_release(&L->bm, &im->uncond);   /* CFG is over for this image: free early */
    }
    *n_rows = r;
    return 0;
}

/* Fails the running groups of one family (their step failed part-way). */
static void fail_running(ts_sched *s, ts_job_family family, const char *message)
{
    group *g = s->groups;
    while (g) {
        group *next = g->next;
        if (g->state == G_RUNNING && g->spec.family == family)
            finish_group(s, g, TS_EV_FAILED, message);
        g = next;
    }
}

static int running_in(const group *g, ts_job_family family)
{
    return g->state == G_RUNNING && g->spec.family == family;
}
static int running_masked(const group *g) { return running_in(g, TS_JOB_MASKED); }

/* After a group's step: progress, then either the decodes or a due preview. */
static void group_advanced(ts_sched *s, group *g)
{
    int total = group_steps(s, g);
    g->t++;
    ts_event *ev = ts_event_new(TS_EV_PROGRESS, g->id);
    ev->step = g->t;
    ev->total = total;
    emit(s, ev);
    if (g->t == total) {
        /* Tokens complete: the KV blocks go back before the (slow) decodes. */
        ar_lane *L = lane_of(s, g);
        if (L) {
            for (int i = 0; i < g->spec.n_images; i++) {
                ts_bm_release(&L->bm, &g->img[i].cond);
                ts_bm_release(&L->bm, &g->img[i].uncond);
            }
            ts_bm_unreserve(&L->bm, &g->reserve);
        }
        g->state = G_DECODING;
        g->preview_due = 0;
    } else if (g->spec.preview_every > 0 && g->t % g->spec.preview_every == 0) {
        g->preview_due = g->t;   /* a newer preview replaces one not yet decoded */
    }
}

/* What each running group of the lane does this step. A t2i group's text prefix is fed
 * in chunks: the groups still prefilling share the step's prefill budget in arrival
 * order (each feeds the same chunk to every sequence it has), so a long prompt never
 * stalls the others' decode steps for long; the first such group always gets at least
 * one position, so every prompt makes progress. Its draw comes with its last chunk. */
static void plan_prefill(ts_sched *s, ar_lane *L)
{
    int budget = s->cfg.prefill_tokens, first = 1;
    for (group *g = s->groups; g; g = g->next) {
        if (!running_in(g, L->family)) continue;
        int per = two_rows(L, g) ? 2 : 1;
        g->chunk = 0;
        g->seqs = g->spec.n_images * per;
        g->drawing = 1;
        if (!L->t2i || g->t > 0) continue;
        int left = g->tprompt.n_text - g->prefilled;
        int chunk = budget / g->seqs;
        if (chunk > left) chunk = left;
        if (chunk < 1 && first) chunk = 1;
        first = 0;
        if (chunk < 1) {   /* no budget left this step: wait */
            g->seqs = 0;
            g->drawing = 0;
            continue;
        }
        budget -= chunk * g->seqs;
        if (budget < 0) budget = 0;
        g->chunk = chunk;
        g->drawing = g->prefilled + chunk == g->tprompt.n_text;
    }
}

/* The lane's batched forward over n_rows rows: LlamaGen's GPT, or FAR's trunk. */
static int lane_forward(ar_lane *L, int n_rows, ts_error *err)
{
    if (L->family != TS_JOB_FAR)
        return llamagen_forward(L->m->gpt, L->kv, L->rows, n_rows, NULL, err);
    for (int r = 0; r < n_rows; r++)
        L->frows[r] = (far_seq){L->rows[r].n_past, L->rows[r].n_new, L->rows[r].ids,
                                L->rows[r].block_table};
    return far_trunk_forward(L->m->far, L->kv, L->frows, n_rows, err);
}

/* The logits of code j (0..k-1) of every row: LlamaGen's forward gave them (k = 1);
 * FAR runs head sub-step j, fed sub-token j-1 of each row's image. */
static int lane_logits(ar_lane *L, int j, const float **logits, ts_error *err)
{
    if (L->family != TS_JOB_FAR) {
        *logits = llamagen_logits(L->m->gpt);
        return 0;
    }
    int rc = far_head_step(L->m->far, j, j ? L->prev : NULL, NULL, err);
    if (rc) return rc;
    L->st.head_steps++;
    *logits = far_logits(L->m->far);
    return 0;
}

/* One step of an autoregressive lane: one forward over every running sequence of its
 * family, then, for each code j of a position (k of them: 1 for LlamaGen), the draw of
 * every image's code j, each CFG pair combined (one device sync per code). */
static int lane_step(ts_sched *s, ar_lane *L, ts_error *err)
{
    if (!L->m) return 0;
    int V = L->c->vocab_size, k = L->k;
    int rows_needed = 0, images = 0;
    plan_prefill(s, L);
    for (group *g = s->groups; g; g = g->next)
        if (running_in(g, L->family) && g->seqs) rows_needed += 2 * g->spec.n_images;
    if (!rows_needed) return 0;
    int rc = grow_scratch(L, rows_needed, err);
    if (rc) return rc;

    int n_rows = 0;
    for (group *g = s->groups; g; g = g->next) {
        if (!running_in(g, L->family) || !g->seqs) continue;
        for (int i = 0; i < g->spec.n_images; i++)
            if ((rc = add_rows(L, g, i, &n_rows, err))) return rc;
        images += g->spec.n_images;
    }
    if ((rc = lane_forward(L, n_rows, err))) return rc;
    L->st.forward_passes++;
    L->st.rows_total += (uint64_t)n_rows;
    L->st.last_batch_rows = n_rows;
    L->st.last_batch_images = images;

    for (int j = 0; j < k; j++) {
        const float *logits;
        if ((rc = lane_logits(L, j, &logits, err))) return rc;
        /* Rows were laid out per image as [cond] or [cond, uncond]; walk them the same
         * way, then draw every image's code j in one call. */
        int r = 0, d = 0;
        for (group *g = s->groups; g; g = g->next) {
            if (!running_in(g, L->family)) continue;
            if (!g->drawing) {   /* a t2i prefill chunk before the last, or no rows */
                r += g->seqs;
                continue;
            }
            const ts_gen_params *p = &g->spec.params;
            int t = g->t, two = two_rows(L, g);
            for (int i = 0; i < g->spec.n_images; i++) {
                const float *cond = logits + (size_t)r * V;
                const float *uncond = NULL;
                if (p->cfg_scale > 1.0f) uncond = two ? cond + V : L->null_logits;
                uint64_t seed = p->seed + (uint64_t)i;
                L->draws[d++] = L->family == TS_JOB_FAR
                                    ? ts_gen_sample_row_sub(p, cond, uncond, seed, t, j)
                                    : ts_gen_sample_row(p, cond, uncond, seed, t);
                r += two ? 2 : 1;
            }
        }
        ts_be_sample(L->m->be, L->picked, L->draws, d, V);
        /* Keep each image's code; FAR feeds it to the next head sub-step on both rows of
         * the pair (the cond row's pick, as the CLI does). */
        r = d = 0;
        for (group *g = s->groups; g; g = g->next) {
            if (!running_in(g, L->family)) continue;
            if (!g->drawing) {
                r += g->seqs;
                continue;
            }
            int two = two_rows(L, g);
            for (int i = 0; i < g->spec.n_images; i++) {
                int32_t code = L->picked[d++];
                g->img[i].tokens[(size_t)g->t * k + j] = code;
                L->prev[r++] = code;
                if (two) L->prev[r++] = code;
            }
        }
    }
    group *g = s->groups;
    while (g) {
        group *next = g->next;
        if (running_in(g, L->family)) {
            g->prefilled += g->chunk;
            if (g->drawing) group_advanced(s, g);
        }
        g = next;
    }
    return 0;
}

/* One ts_masked_step over every running masked image, each at its own step. */
static int masked_step(ts_sched *s, ts_error *err)
{
    if (!s->mg) return 0;
    int n = 0;
    for (group *g = s->groups; g; g = g->next) {
        if (!running_masked(g)) continue;
        /* The prediction is kept only on the steps whose preview will be due. */
        int next = g->t + 1;
        int keep = g->spec.preview_every > 0 && next < g->spec.mask.steps &&
                   next % g->spec.preview_every == 0;
        for (int i = 0; i < g->spec.n_images; i++, n++) {
            if (n >= s->cfg.max_batch)
                return ts_fail(err, TS_ERR_INTERNAL, "masked step: more images than the batch");
            s->m_params[n] = &g->spec.mask;
            s->m_prompts[n] = &g->prompt;
            s->m_steps[n] = g->t;
            s->m_seeds[n] = g->spec.params.seed + (uint64_t)i;
            s->m_ids[n] = g->img[i].tokens;
            s->m_pred[n] = keep ? g->img[i].pred : NULL;
        }
    }
    if (!n) return 0;
    int rc = ts_masked_step(mmod(s), s->m_params, s->m_prompts, s->m_steps, s->m_seeds, n,
                            s->m_ids, s->m_pred, err);
    if (rc) return rc;
    s->st.masked_passes++;
    s->st.masked_images_total += (uint64_t)n;
    s->st.last_masked_images = n;
    group *g = s->groups;
    while (g) {
        group *next = g->next;
        if (running_masked(g)) group_advanced(s, g);
        g = next;
    }
    return 0;
}

/* Decodes image i of g into s->rgb: autoregressive from its first `known` positions
 * (every code of the rest unknown: a zero latent); masked from its ids, or from its
 * kept prediction for a preview. */
static int decode(ts_sched *s, group *g, int i, int known, int preview, ts_error *err)
{
    if (is_masked(g)) {
        s->st.titok_decodes++;
        const int32_t *ids = preview ? g->img[i].pred : g->img[i].tokens;
        return titok_decode(mmod(s)->dec, ids, g->prompt.text, 1, NULL, s->rgb, err);
    }
    ar_lane *L = lane_of(s, g);
    int n = L->c->block_size * L->k, have = known * L->k;
    for (int q = 0; q < n; q++) L->codes[q] = q < have ? g->img[i].tokens[q] : VQ_CODE_UNKNOWN;
    s->st.vq_decodes++;
    return vq_decode(L->m->vq, L->codes, 1, L->c->grid, s->rgb, NULL, err);
}

static ts_event *image_event(ts_sched *s, ts_event_kind kind, group *g, int i, int step,
                             int total)
{
    int px = group_px(s, g);
    size_t bytes = (size_t)px * px * 3;
    ts_event *ev = ts_event_new(kind, g->id);
    ev->image = i;
    ev->step = step;
    ev->total = total;
    ev->width = ev->height = px;
    ev->rgb = malloc(bytes);
    if (!ev->rgb) abort();
    memcpy(ev->rgb, s->rgb, bytes);
    return ev;
}

static void decode_phase(ts_sched *s)
{
    int finals = s->cfg.decodes_per_step, previews = s->cfg.previews_per_step;
    ts_error err = {0};
    group *g = s->groups;
    while (g) {
        group *next = g->next;
        if (g->state == G_DECODING) {
            int failed = 0, n_tok = group_tokens(s, g), steps = group_steps(s, g);
            for (int i = 0; i < g->spec.n_images && finals > 0 && !failed; i++) {
                if (g->img[i].decoded) continue;
                finals--;
                if (decode(s, g, i, steps, 0, &err)) {
                    failed = 1;
                    break;
                }
                ts_event *ev = image_event(s, TS_EV_IMAGE, g, i, n_tok, n_tok);
                ev->tokens = g->img[i].tokens;   /* handed over */
                g->img[i].tokens = NULL;
                g->img[i].decoded = 1;
                g->n_decoded++;
                s->st.images_done++;
                emit(s, ev);
            }
            if (failed) finish_group(s, g, TS_EV_FAILED, err.msg);
            else if (g->n_decoded == g->spec.n_images) finish_group(s, g, TS_EV_DONE, NULL);
        } else if (g->state == G_RUNNING && g->preview_due && previews > 0) {
            previews--;
            int due = g->preview_due;
            g->preview_due = 0;
            for (int i = 0; i < g->spec.n_images; i++) {
                if (decode(s, g, i, due, 1, &err)) break;   /* a preview is best effort */
                s->st.previews++;
                emit(s, image_event(s, TS_EV_PREVIEW, g, i, due, group_steps(s, g)));
            }
        }
        g = next;
    }
}

static void step_failed(ts_sched *s, ts_job_family family, const ts_error *e)
{
    /* The step failed part-way: the running groups' state (caches, ids) is suspect. */
    char msg[sizeof e->msg + 32];
    snprintf(msg, sizeof msg, "engine step failed: %s", e->msg);
    fail_running(s, family, msg);
}

int ts_sched_step(ts_sched *s, ts_error *err)
{
    (void)err;
    drop_cancelled(s);
    admit(s);
    for (int l = 0; l < N_LANES; l++) {   /* LlamaGen's forward, then FAR's step */
        ts_error step_err = {0};
        if (lane_step(s, &s->lanes[l], &step_err)) step_failed(s, s->lanes[l].family, &step_err);
    }
    ts_error step_err = {0};
    if (masked_step(s, &step_err)) step_failed(s, TS_JOB_MASKED, &step_err);
    decode_phase(s);
    return 0;
}

static void lane_stats(const ar_lane *L, ts_sched_lane_stats *st)
{
    *st = L->st;
    st->kv_blocks_total = L->kv ? L->kv->n_blocks : 0;
    st->kv_blocks_free = L->kv ? ts_kv_free_blocks(L->kv) : 0;
    st->kv_blocks_reserved = L->kv ? L->bm.reserved : 0;
}

void ts_sched_get_stats(const ts_sched *s, ts_sched_stats *st)
{
    *st = s->st;
    st->waiting = st->running = 0;
    for (const group *g = s->groups; g; g = g->next) {
        if (g->state == G_WAITING) st->waiting++;
        else st->running++;
    }
    ts_sched_lane_stats ar;
    lane_stats(&s->lanes[LANE_LLAMAGEN], &ar);
    st->forward_passes = ar.forward_passes;
    st->rows_total = ar.rows_total;
    st->last_batch_rows = ar.last_batch_rows;
    st->last_batch_images = ar.last_batch_images;
    st->kv_blocks_total = ar.kv_blocks_total;
    st->kv_blocks_free = ar.kv_blocks_free;
    st->kv_blocks_reserved = ar.kv_blocks_reserved;
    lane_stats(&s->lanes[LANE_FAR], &st->far);
}
