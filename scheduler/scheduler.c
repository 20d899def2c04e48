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
    ts_block_table cond, uncond;   /* AR only */
    int32_t *tokens;           /* AR: [L] in raster order; masked: ids [N], the mask id
                                  where still masked */
    int32_t *pred;             /* masked with previews: [N], the prediction of the last
                                  step that was due for a preview */
    int decoded;               /* final image delivered */
} image_seqs;

typedef struct group {
    uint64_t id;
    ts_job_spec spec;
    group_state state;
    int cancelled;
    int t;                     /* tokens generated (AR) or masked steps done, shared by
                                  every image of the group */
    int reserve;               /* KV blocks promised and not yet taken */
    int last_position;         /* last queue position reported */
    int preview_due;           /* step whose preview is pending, 0 = none */
    int n_decoded;
    image_seqs *img;           /* [n_images] */
    ts_mg_prompt prompt;       /* masked: both branches' conditioning, made at admission */
    int has_prompt;
    struct group *next;
} group;

struct ts_sched {
    ts_model *ar;              /* LlamaGen, or NULL */
    ts_kv_cache *kv;
    ts_model *mg;              /* MaskGen, or NULL */
    ts_block_manager bm;
    ts_sched_config cfg;
    ts_sched_emit_fn emit;
    void *emit_ctx;

    group *groups;             /* every live group, in arrival order */
    ts_block_table null_prefix;
    float *null_logits;        /* backend memory [vocab]: the null class's prefill logits */

    /* AR step scratch, grown on demand. */
    int cap_rows;
    llamagen_seq *rows;
    int32_t *ids;
    ts_sample_row *draws;      /* one per image in the batch */
    int32_t *picked;
    int32_t *codes;            /* [L] for previews */

    /* Masked step scratch: one entry per image, max_batch of each. */
    const ts_mask_params **m_params;
    const ts_mg_prompt **m_prompts;
    int *m_steps;
    uint64_t *m_seeds;
    int32_t **m_ids, **m_pred;

    uint8_t *rgb;              /* one image of the larger family */

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

static const llamagen_config *gcfg(const ts_sched *s) { return &s->ar->gpt->cfg; }
static ts_masked_model *mmod(const ts_sched *s) { return s->mg->masked; }
static int masked_tokens(const ts_sched *s) { return mmod(s)->gen->cfg.num_tokens; }
static int is_masked(const group *g) { return g->spec.family == TS_JOB_MASKED; }

/* Steps a group runs: AR one per token, masked its requested steps. */
static int group_steps(const ts_sched *s, const group *g)
{
    return is_masked(g) ? g->spec.mask.steps : gcfg(s)->block_size;
}

/* Tokens per image of a group's family. */
static int group_tokens(const ts_sched *s, const group *g)
{
    return is_masked(g) ? masked_tokens(s) : gcfg(s)->block_size;
}

static int group_px(const ts_sched *s, const group *g)
{
    return is_masked(g) ? s->mg->image_size : s->ar->image_size;
}

/* Positions an image's sequences occupy: the class prefix, then every token but the
 * last (never fed back). The uncond sequence stops at the last CFG step. */
static int cond_positions(const ts_sched *s)
{
    return gcfg(s)->cls_token_num + gcfg(s)->block_size - 1;
}

static int last_cfg_step(const ts_sched *s, const ts_job_spec *spec)
{
    int last = -1;
    for (int t = 0; t < gcfg(s)->block_size; t++)
        if (ts_gen_cfg_active(&spec->params, t)) last = t;
    return last;   /* the active steps are always a prefix */
}

int ts_sched_blocks_per_image(const ts_sched *s, const ts_job_spec *spec)
{
    if (spec->family == TS_JOB_MASKED || !s->ar) return 0;
    int n = ts_bm_blocks_for(&s->bm, cond_positions(s));
    int last = last_cfg_step(s, spec);
    /* Steps 1..last feed the uncond row; step 0 reads the shared prefix's logits. */
    if (last >= 1) n += ts_bm_blocks_for(&s->bm, gcfg(s)->cls_token_num + last);
    return n;
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

int ts_sched_check(const ts_sched *s, const ts_job_spec *spec, ts_error *err)
{
    if (spec->n_images < 1 || spec->n_images > s->cfg.max_batch)
        return ts_fail(err, TS_ERR_INVALID, "n must be between 1 and %d (the server's batch size)",
                       s->cfg.max_batch);
    if (spec->family == TS_JOB_MASKED) return check_masked(s, spec, err);
    if (spec->family != TS_JOB_AR) return ts_fail(err, TS_ERR_INVALID, "unknown model family");
    if (!s->ar)
        return ts_fail(err, TS_ERR_INVALID, "this server has no LlamaGen (class-conditional) model");
    const llamagen_config *c = gcfg(s);
    if (spec->class_id < 0 || spec->class_id >= c->num_classes)
        return ts_fail(err, TS_ERR_INVALID, "class must be between 0 and %d", c->num_classes - 1);
    int need = spec->n_images * ts_sched_blocks_per_image(s, spec);
    int total = s->kv->n_blocks - s->null_prefix.n;
    if (need > total)
        return ts_fail(err, TS_ERR_INVALID,
                       "the request needs %d KV blocks and the server has %d; ask for fewer images",
                       need, total);
    return 0;
}

static group *find(ts_sched *s, uint64_t id)
{
    for (group *g = s->groups; g; g = g->next)
        if (g->id == id) return g;
    return NULL;
}

static void group_free(ts_sched *s, group *g)
{
    for (int i = 0; g->img && i < g->spec.n_images; i++) {
        ts_bm_release(&s->bm, &g->img[i].cond);
        ts_bm_release(&s->bm, &g->img[i].uncond);
        free(g->img[i].tokens);
        free(g->img[i].pred);
    }
    ts_bm_unreserve(&s->bm, &g->reserve);
    if (g->has_prompt) ts_mg_prompt_free(mmod(s), &g->prompt);
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

static int grow_scratch(ts_sched *s, int rows, ts_error *err)
{
    if (rows <= s->cap_rows) return 0;
    llamagen_seq *r = realloc(s->rows, (size_t)rows * sizeof *r);
    if (r) s->rows = r;
    int32_t *ids = realloc(s->ids, (size_t)rows * sizeof *ids);
    if (ids) s->ids = ids;
    ts_sample_row *d = realloc(s->draws, (size_t)rows * sizeof *d);
    if (d) s->draws = d;
    int32_t *pk = realloc(s->picked, (size_t)rows * sizeof *pk);
    if (pk) s->picked = pk;
    if (!r || !ids || !d || !pk) return ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
    s->cap_rows = rows;
    return 0;
}

/* The null-class prefix, once, for every AR request's uncond sequence. */
static int make_null_prefix(ts_sched *s, ts_error *err)
{
    const llamagen_config *c = gcfg(s);
    int reserve = 0, n = c->cls_token_num, rc;
    if (ts_bm_reserve(&s->bm, ts_bm_blocks_for(&s->bm, n), &reserve))
        return ts_fail(err, TS_ERR_NOMEM, "kv cache too small for even the null-class prefix");
    rc = ts_bm_prepare(&s->bm, &s->null_prefix, n, 0, &reserve, err);
    ts_bm_unreserve(&s->bm, &reserve);
    if (rc) return rc;
    for (int i = 0; i < n; i++) s->ids[i] = c->num_classes;
    llamagen_seq seq = {0, n, s->ids, s->null_prefix.blocks};
    if ((rc = llamagen_forward(s->ar->gpt, s->kv, &seq, 1, NULL, err))) return rc;
    ts_be_copy(s->ar->be, s->null_logits, llamagen_logits(s->ar->gpt),
               (size_t)c->vocab_size * sizeof(float));
    return 0;
}

int ts_sched_create(const ts_sched_models *models, const ts_sched_config *cfg,
                    ts_sched_emit_fn emit_fn, void *emit_ctx, ts_sched **out, ts_error *err)
{
    *out = NULL;
    ts_model *ar = models->ar, *mg = models->masked;
    if (!ar && !mg) return ts_fail(err, TS_ERR_CONFIG, "scheduler: no model to serve");
    if (ar && (ar->family != TS_FAMILY_LLAMAGEN || !ar->gpt || !ar->vq || !models->kv))
        return ts_fail(err, TS_ERR_CONFIG, "serving a LlamaGen model needs a folder with both "
                       "gpt and vq, and a KV cache");
    if (mg && (mg->family != TS_FAMILY_MASKGEN || !mg->masked))
        return ts_fail(err, TS_ERR_CONFIG, "scheduler: the masked model is not a MaskGen folder");
    if (cfg->max_batch < 1 || cfg->decodes_per_step < 1 || cfg->previews_per_step < 0)
        return ts_fail(err, TS_ERR_INVALID, "scheduler: bad limits");
    ts_sched *s = calloc(1, sizeof *s);
    if (!s) return ts_fail(err, TS_ERR_NOMEM, "scheduler: out of memory");
    s->ar = ar;
    s->kv = ar ? models->kv : NULL;
    s->mg = mg;
    s->cfg = *cfg;
    s->emit = emit_fn;
    s->emit_ctx = emit_ctx;
    ts_bm_init(&s->bm, s->kv);
    int px = 0, rc = TS_ERR_NOMEM;
    if (ar) px = ar->image_size;
    if (mg && mg->image_size > px) px = mg->image_size;
    s->rgb = malloc((size_t)px * px * 3);
    if (!s->rgb) goto oom;
    if (ar) {
        const llamagen_config *c = gcfg(s);
        s->null_logits = ts_be_alloc(ar->be, (size_t)c->vocab_size);
        s->codes = malloc((size_t)c->block_size * sizeof *s->codes);
        if (!s->null_logits || !s->codes) goto oom;
        if ((rc = grow_scratch(s, c->cls_token_num > 2 ? c->cls_token_num : 2, err))) goto fail;
        if ((rc = make_null_prefix(s, err))) goto fail;
    }
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
    ts_bm_release(&s->bm, &s->null_prefix);
    if (s->ar) ts_be_free(s->ar->be, s->null_logits);
    free(s->rows);
    free(s->ids);
    free(s->draws);
    free(s->picked);
    free(s->codes);
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
    if (!masked) return 0;
    int rc = ts_mg_prompt_make(mmod(s), g->spec.prompt, g->spec.mask.aesthetic, &g->prompt, err);
    if (rc) return rc;
    g->has_prompt = 1;
    s->st.prompts_encoded++;
    return 0;
}

/* First come, first served across both families: the oldest waiting group blocks the
 * ones behind it, so a large request is never starved by a stream of small ones, and
 * neither family by the other. */
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
            int need = g->spec.n_images * ts_sched_blocks_per_image(s, &g->spec);
            if (images + g->spec.n_images <= s->cfg.max_batch &&
                (need == 0 || ts_bm_reserve(&s->bm, need, &g->reserve) == 0)) {
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

/* Adds the rows of image i of g at step t to the batch; returns the rows added. */
static int add_rows(ts_sched *s, group *g, int i, int *n_rows, ts_error *err)
{
    const llamagen_config *c = gcfg(s);
    image_seqs *im = &g->img[i];
    int t = g->t, cls = c->cls_token_num, r = *n_rows;
    int cfg = g->spec.params.cfg_scale > 1.0f;
    int rc;
    if (t == 0) {
        if ((rc = ts_bm_prepare(&s->bm, &im->cond, cls, 0, &g->reserve, err))) return rc;
        s->ids[r] = g->spec.class_id;
        s->rows[r] = (llamagen_seq){0, 1, &s->ids[r], im->cond.blocks};
        *n_rows = r + 1;
        /* The uncond row's step-0 logits are the shared prefix's. */
        if (cfg && last_cfg_step(s, &g->spec) >= 1)
            return ts_bm_share(&s->bm, &im->uncond, &s->null_prefix, err);
        return 0;
    }
    int pos = cls + t - 1;   /* where token t-1 goes */
    if ((rc = ts_bm_prepare(&s->bm, &im->cond, pos + 1, pos, &g->reserve, err))) return rc;
    s->ids[r] = im->tokens[t - 1];
    s->rows[r] = (llamagen_seq){pos, 1, &s->ids[r], im->cond.blocks};
    r++;
    if (cfg && ts_gen_cfg_active(&g->spec.params, t)) {
        if ((rc = ts_bm_prepare(&s->bm, &im->uncond, pos + 1, pos, &g->reserve, err))) return rc;
        s->ids[r] = im->tokens[t - 1];
        s->rows[r] = (llamagen_seq){pos, 1, &s->ids[r], im->uncond.blocks};
        r++;
    } else if (im->uncond.n) {
        ts_bm_release(&s->bm, &im->uncond);   /* CFG is over for this image: free early */
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

static int running_ar(const group *g) { return g->state == G_RUNNING && !is_masked(g); }
static int running_masked(const group *g) { return g->state == G_RUNNING && is_masked(g); }

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
        for (int i = 0; i < g->spec.n_images; i++) {
            ts_bm_release(&s->bm, &g->img[i].cond);
            ts_bm_release(&s->bm, &g->img[i].uncond);
        }
        ts_bm_unreserve(&s->bm, &g->reserve);
        g->state = G_DECODING;
        g->preview_due = 0;
    } else if (g->spec.preview_every > 0 && g->t % g->spec.preview_every == 0) {
        g->preview_due = g->t;   /* a newer preview replaces one not yet decoded */
    }
}

static int ar_step(ts_sched *s, ts_error *err)
{
    if (!s->ar) return 0;
    const llamagen_config *c = gcfg(s);
    int V = c->vocab_size;
    int rows_needed = 0, images = 0;
    for (group *g = s->groups; g; g = g->next)
        if (running_ar(g)) rows_needed += 2 * g->spec.n_images;
    if (!rows_needed) return 0;
    int rc = grow_scratch(s, rows_needed, err);
    if (rc) return rc;

    int n_rows = 0;
    for (group *g = s->groups; g; g = g->next) {
        if (!running_ar(g)) continue;
        for (int i = 0; i < g->spec.n_images; i++)
            if ((rc = add_rows(s, g, i, &n_rows, err))) return rc;
        images += g->spec.n_images;
    }
    if ((rc = llamagen_forward(s->ar->gpt, s->kv, s->rows, n_rows, NULL, err))) return rc;
    const float *logits = llamagen_logits(s->ar->gpt);
    s->st.forward_passes++;
    s->st.rows_total += (uint64_t)n_rows;
    s->st.last_batch_rows = n_rows;
    s->st.last_batch_images = images;

    /* Rows were laid out per image as [cond] or [cond, uncond]; walk them the same way,
     * then draw every image's token in one call (one device sync). */
    int r = 0, d = 0;
    for (group *g = s->groups; g; g = g->next) {
        if (!running_ar(g)) continue;
        const ts_gen_params *p = &g->spec.params;
        int t = g->t;
        int two = p->cfg_scale > 1.0f && t > 0 && ts_gen_cfg_active(p, t);
        for (int i = 0; i < g->spec.n_images; i++) {
            const float *cond = logits + (size_t)r * V;
            const float *uncond = NULL;
            if (p->cfg_scale > 1.0f) uncond = two ? cond + V : s->null_logits;
            s->draws[d++] = ts_gen_sample_row(p, cond, uncond, p->seed + (uint64_t)i, t);
            r += two ? 2 : 1;
        }
    }
    ts_be_sample(s->ar->be, s->picked, s->draws, d, V);
    d = 0;
    for (group *g = s->groups; g; g = g->next) {
        if (!running_ar(g)) continue;
        for (int i = 0; i < g->spec.n_images; i++) g->img[i].tokens[g->t] = s->picked[d++];
        group_advanced(s, g);
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

/* Decodes image i of g into s->rgb: AR from its first `known` tokens (the rest
 * unknown); masked from its ids, or from its kept prediction for a preview. */
static int decode(ts_sched *s, group *g, int i, int known, int preview, ts_error *err)
{
    if (is_masked(g)) {
        s->st.titok_decodes++;
        const int32_t *ids = preview ? g->img[i].pred : g->img[i].tokens;
        return titok_decode(mmod(s)->dec, ids, g->prompt.text, 1, NULL, s->rgb, err);
    }
    int L = gcfg(s)->block_size;
    for (int k = 0; k < L; k++) s->codes[k] = k < known ? g->img[i].tokens[k] : VQ_CODE_UNKNOWN;
    s->st.vq_decodes++;
    return vq_decode(s->ar->vq, s->codes, 1, gcfg(s)->grid, s->rgb, NULL, err);
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
            int failed = 0, n_tok = group_tokens(s, g);
            for (int i = 0; i < g->spec.n_images && finals > 0 && !failed; i++) {
                if (g->img[i].decoded) continue;
                finals--;
                if (decode(s, g, i, n_tok, 0, &err)) {
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
    ts_error step_err = {0};
    if (ar_step(s, &step_err)) step_failed(s, TS_JOB_AR, &step_err);
    ts_error_clear(&step_err);
    if (masked_step(s, &step_err)) step_failed(s, TS_JOB_MASKED, &step_err);
    decode_phase(s);
    return 0;
}

void ts_sched_get_stats(const ts_sched *s, ts_sched_stats *st)
{
    *st = s->st;
    st->waiting = st->running = 0;
    for (const group *g = s->groups; g; g = g->next) {
        if (g->state == G_WAITING) st->waiting++;
        else st->running++;
    }
    st->kv_blocks_total = s->kv ? s->kv->n_blocks : 0;
    st->kv_blocks_free = s->kv ? ts_kv_free_blocks(s->kv) : 0;
    st->kv_blocks_reserved = s->bm.reserved;
}
