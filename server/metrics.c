/* metrics.c - GET /metrics in the Prometheus text format. Engine figures come from the
 * worker's snapshot (taken under its lock); request figures from the loop's counters. */
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct buf {
    char *s;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = b->oom ? 0 : vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (b->oom || b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

static void head(buf *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist_seconds(buf *b, const char *name, const char *help, const uint64_t *h,
                         double sum)
{
    head(b, name, "histogram", help);
    for (int i = 0; i < TS_STEP_TIME_BUCKETS - 1; i++)
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, ts_step_time_bounds[i], (unsigned long long)h[i]);
    uint64_t n = h[TS_STEP_TIME_BUCKETS - 1];
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)n,
        name, sum, name, (unsigned long long)n);
}

char *metrics_render(server *s)
{
    buf b = {malloc(8192), 0, 8192, 0};
    if (!b.s) return NULL;
    ts_worker_stats w;
    ts_worker_get_stats(s->worker, &w);
    const ts_sched_stats *st = &w.sched;
    int ready = ts_worker_get_state(s->worker) == TS_WORKER_READY;

    head(&b, "tessera_ready", "gauge", "1 when the model is loaded and the server accepts work");
    put(&b, "tessera_ready %d\n", ready && !s->draining);
    head(&b, "tessera_draining", "gauge", "1 after SIGTERM/SIGINT, while running work finishes");
    put(&b, "tessera_draining %d\n", s->draining);
    head(&b, "tessera_http_responses_total", "counter", "HTTP responses by status code");
    for (int code = 100; code < 600; code++)
        if (s->m.by_status[code])
            put(&b, "tessera_http_responses_total{code=\"%d\"} %llu\n", code,
                (unsigned long long)s->m.by_status[code]);
    head(&b, "tessera_queue_depth", "gauge", "requests accepted and waiting for the batch");
    put(&b, "tessera_queue_depth %d\n", s->n_queued);
    head(&b, "tessera_queue_limit", "gauge", "--queue-limit: beyond it requests get 429");
    put(&b, "tessera_queue_limit %d\n", s->opt.queue_limit);
    head(&b, "tessera_jobs_held", "gauge", "/v1/jobs held (waiting, running or finished and "
                                           "not yet deleted or expired); --max-jobs bounds it");
    put(&b, "tessera_jobs_held %d\n", s->n_async);
    head(&b, "tessera_running_groups", "gauge", "requests in the running batch or being decoded");
    put(&b, "tessera_running_groups %d\n", st->running);
    head(&b, "tessera_kv_blocks_total", "gauge", "KV cache blocks");
    put(&b, "tessera_kv_blocks_total %d\n", st->kv_blocks_total);
    head(&b, "tessera_kv_blocks_used", "gauge", "KV blocks holding a sequence (incl. the shared null prefix)");
    put(&b, "tessera_kv_blocks_used %d\n", st->kv_blocks_total - st->kv_blocks_free);
    head(&b, "tessera_kv_blocks_free", "gauge", "KV blocks on the free list");
    put(&b, "tessera_kv_blocks_free %d\n", st->kv_blocks_free);
    head(&b, "tessera_kv_blocks_reserved", "gauge", "free KV blocks promised to admitted requests");
    put(&b, "tessera_kv_blocks_reserved %d\n", st->kv_blocks_reserved);
    head(&b, "tessera_forward_passes_total", "counter", "batched autoregressive (LlamaGen) forwards");
    put(&b, "tessera_forward_passes_total %llu\n", (unsigned long long)st->forward_passes);
    head(&b, "tessera_sequences_stepped_total", "counter", "sequences summed over autoregressive forwards");
    put(&b, "tessera_sequences_stepped_total %llu\n", (unsigned long long)st->rows_total);
    const ts_sched_lane_stats *far = &st->far;
    head(&b, "tessera_far_kv_blocks_total", "gauge", "FQGAN (FAR trunk) KV cache blocks");
    put(&b, "tessera_far_kv_blocks_total %d\n", far->kv_blocks_total);
    head(&b, "tessera_far_kv_blocks_used", "gauge", "FAR KV blocks holding a sequence");
    put(&b, "tessera_far_kv_blocks_used %d\n", far->kv_blocks_total - far->kv_blocks_free);
    head(&b, "tessera_far_kv_blocks_free", "gauge", "FAR KV blocks on the free list");
    put(&b, "tessera_far_kv_blocks_free %d\n", far->kv_blocks_free);
    head(&b, "tessera_far_kv_blocks_reserved", "gauge",
         "free FAR KV blocks promised to admitted requests");
    put(&b, "tessera_far_kv_blocks_reserved %d\n", far->kv_blocks_reserved);
    head(&b, "tessera_far_forward_passes_total", "counter",
         "FAR steps: one batched trunk forward (then k head sub-steps) over every running FQGAN "
         "sequence");
    put(&b, "tessera_far_forward_passes_total %llu\n", (unsigned long long)far->forward_passes);
    head(&b, "tessera_far_head_steps_total", "counter",
         "FAR head sub-steps (k per FAR step), each followed by one sub-token draw per image");
    put(&b, "tessera_far_head_steps_total %llu\n", (unsigned long long)far->head_steps);
    head(&b, "tessera_far_sequences_stepped_total", "counter",
         "sequences summed over FAR trunk forwards");
    put(&b, "tessera_far_sequences_stepped_total %llu\n", (unsigned long long)far->rows_total);
    head(&b, "tessera_masked_forward_passes_total", "counter",
         "batched masked (MaskGen) steps: one generator forward over every running masked image");
    put(&b, "tessera_masked_forward_passes_total %llu\n", (unsigned long long)st->masked_passes);
    head(&b, "tessera_masked_images_stepped_total", "counter",
         "masked images summed over masked steps");
    put(&b, "tessera_masked_images_stepped_total %llu\n",
        (unsigned long long)st->masked_images_total);
    head(&b, "tessera_masked_batch_images", "gauge", "images in the last masked step");
    put(&b, "tessera_masked_batch_images %d\n", st->last_masked_images);
    head(&b, "tessera_prompts_encoded_total", "counter",
         "MaskGen prompt conditionings made (CLIP, once per admitted request)");
    put(&b, "tessera_prompts_encoded_total %llu\n", (unsigned long long)st->prompts_encoded);

    head(&b, "tessera_batch_images", "histogram",
         "images (CFG pairs) per autoregressive (LlamaGen) forward");
    for (int i = 0; i < TS_BATCH_BUCKETS - 1; i++)
        put(&b, "tessera_batch_images_bucket{le=\"%d\"} %llu\n", ts_batch_bounds[i],
            (unsigned long long)w.batch_hist[i]);
    uint64_t nb = w.batch_hist[TS_BATCH_BUCKETS - 1];
    put(&b, "tessera_batch_images_bucket{le=\"+Inf\"} %llu\ntessera_batch_images_sum %llu\n"
            "tessera_batch_images_count %llu\n",
        (unsigned long long)nb, (unsigned long long)w.batch_sum, (unsigned long long)nb);
    head(&b, "tessera_far_batch_images", "histogram", "images (CFG pairs) per FAR step");
    for (int i = 0; i < TS_BATCH_BUCKETS - 1; i++)
        put(&b, "tessera_far_batch_images_bucket{le=\"%d\"} %llu\n", ts_batch_bounds[i],
            (unsigned long long)w.far_batch_hist[i]);
    nb = w.far_batch_hist[TS_BATCH_BUCKETS - 1];
    put(&b, "tessera_far_batch_images_bucket{le=\"+Inf\"} %llu\ntessera_far_batch_images_sum %llu\n"
            "tessera_far_batch_images_count %llu\n",
        (unsigned long long)nb, (unsigned long long)w.far_batch_sum, (unsigned long long)nb);
    hist_seconds(&b, "tessera_step_seconds",
                 "engine step time (LlamaGen forward, FAR step, masked step, sampling, decodes)",
                 w.step_time_hist, w.step_time_sum);
    hist_seconds(&b, "tessera_time_to_first_preview_seconds",
                 "from request arrival to its first streamed preview", s->m.ttfp_hist,
                 s->m.ttfp_sum);
    hist_seconds(&b, "tessera_request_seconds", "from arrival to the last image, completed requests",
                 s->m.latency_hist, s->m.latency_sum);
    head(&b, "tessera_images_generated_total", "counter", "final images delivered");
    put(&b, "tessera_images_generated_total %llu\n", (unsigned long long)s->m.images_generated);
    head(&b, "tessera_previews_total", "counter", "preview decodes run by the engine");
    put(&b, "tessera_previews_total %llu\n", (unsigned long long)st->previews);
    head(&b, "tessera_image_decodes_total", "counter",
         "image decodes (finals and previews) by decoder (vq: LlamaGen's and FQGAN's)");
    put(&b, "tessera_image_decodes_total{decoder=\"vq\"} %llu\n", (unsigned long long)st->vq_decodes);
    put(&b, "tessera_image_decodes_total{decoder=\"titok\"} %llu\n",
        (unsigned long long)st->titok_decodes);
    head(&b, "tessera_requests_cancelled_total", "counter", "requests cancelled (disconnect or DELETE)");
    put(&b, "tessera_requests_cancelled_total %llu\n", (unsigned long long)s->m.requests_cancelled);
    head(&b, "tessera_client_disconnects_total", "counter", "clients gone before their answer");
    put(&b, "tessera_client_disconnects_total %llu\n", (unsigned long long)s->m.disconnects);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
