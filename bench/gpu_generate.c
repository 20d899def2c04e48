/* gpu_generate.c - times Tessera's generation step by step, for bench/gpu.sh.
 *
 *   gpu_generate --model DIR [--device cuda|cuda-fp32|cpu] [--class 207] [--n 8]
 *                [--seed 0] [--cfg 4] [--top-k 2000] [--top-p 1] [--temperature 1]
 *                [--warmup 1] [--runs 3] [--decode-runs 3] [--tokens-out FILE]
 *                [--json FILE] [--threads N]
 *
 * Loads the model folder once, then runs ts_generate_c2i (the CLI's whole-batch driver:
 * n images of one class, each a [cond, uncond] pair with CFG) --warmup times untimed
 * and --runs times timed, and vq_decode once untimed and --decode-runs times timed.
 * The progress callback stamps the host clock after every step; ts_be_sample returns
 * the step's tokens on the host (a device backend synchronises there), so each
 * stamp marks the end of that step's device work and the differences are step times.
 * Step 0 is the prefill (class embedding); its time also holds the per-call set-up of
 * ts_generate_c2i (KV cache allocation, block tables).
 *
 * Checks, reported in the JSON: every token of every run is written (the buffer is
 * poisoned with -1 before each run) and inside [0, vocab); every run produces the same
 * tokens as the first (same seed: a difference means a race); the decoded RGB is not
 * all one value.
 *
 * --device cuda or cuda-fp32 asks the CUDA backend directly (ts_backend_cuda_create):
 * there is no silent fall-back to the CPU. The device memory taken by the model is
 * free memory before ts_model_load minus free memory after it (ts_be_mem_info).
 *
 * Output: one JSON object (to --json FILE, else stdout); progress on stderr. Exit
 * status 0 when every check passed, 1 when one failed (the JSON is written anyway),
 * 2 on usage or load errors.
 *
 * Not built by the Makefile: bench/gpu.sh compiles it with the Makefile's own CFLAGS
 * and LDLIBS and links build/libtessera.a, as the Makefile links the tests.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/numparse.h"
#include "engine/backend.h"
#include "engine/generate.h"
#include "engine/model.h"

typedef struct opts {
    const char *model, *device, *tokens_out, *json;
    int cls, n, warmup, runs, decode_runs, threads;
    ts_gen_params p;
} opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gpu_generate --model DIR [--device cuda|cuda-fp32|cpu] [--class 207] [--n 8]\n"
            "                    [--seed 0] [--cfg 4] [--top-k 2000] [--top-p 1] [--temperature 1]\n"
            "                    [--warmup 1] [--runs 3] [--decode-runs 3] [--tokens-out FILE]\n"
            "                    [--json FILE] [--threads N]\n");
}

static int parse_args(int argc, char **argv, opts *o)
{
    enum { O_MODEL = 1, O_DEVICE, O_CLASS, O_N, O_SEED, O_CFG, O_TOPK, O_TOPP, O_TEMP, O_WARMUP,
           O_RUNS, O_DRUNS, O_TOK, O_JSON, O_THREADS, O_HELP };
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL},     {"device", required_argument, 0, O_DEVICE},
        {"class", required_argument, 0, O_CLASS},     {"n", required_argument, 0, O_N},
        {"seed", required_argument, 0, O_SEED},       {"cfg", required_argument, 0, O_CFG},
        {"top-k", required_argument, 0, O_TOPK},      {"top-p", required_argument, 0, O_TOPP},
        {"temperature", required_argument, 0, O_TEMP}, {"warmup", required_argument, 0, O_WARMUP},
        {"runs", required_argument, 0, O_RUNS},       {"decode-runs", required_argument, 0, O_DRUNS},
        {"tokens-out", required_argument, 0, O_TOK},  {"json", required_argument, 0, O_JSON},
        {"threads", required_argument, 0, O_THREADS}, {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->device = "cuda";
    o->cls = 207;
    o->n = 8;
    o->warmup = 1;
    o->runs = 3;
    o->decode_runs = 3;
    o->p = (ts_gen_params){.cfg_scale = 4.0f, .cfg_interval = -1.0f,
                           .sample = {.temperature = 1.0f, .top_k = 2000, .top_p = 1.0f},
                           .seed = 0};
    int c;
    long v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_DEVICE: o->device = optarg; break;
        case O_CLASS: if (ts_parse_long(optarg, 0, 1 << 24, &v)) bad = "--class"; else o->cls = (int)v; break;
        case O_N: if (ts_parse_long(optarg, 1, 1024, &v)) bad = "--n"; else o->n = (int)v; break;
        case O_SEED: if (ts_parse_long(optarg, 0, 1L << 62, &v)) bad = "--seed"; else o->p.seed = (uint64_t)v; break;
        case O_CFG: if (ts_parse_float(optarg, &o->p.cfg_scale)) bad = "--cfg"; break;
        case O_TOPK: if (ts_parse_long(optarg, 0, 1 << 24, &v)) bad = "--top-k"; else o->p.sample.top_k = (int)v; break;
        case O_TOPP:
            if (ts_parse_float(optarg, &o->p.sample.top_p) || o->p.sample.top_p <= 0 || o->p.sample.top_p > 1)
                bad = "--top-p";
            break;
        case O_TEMP:
            if (ts_parse_float(optarg, &o->p.sample.temperature) || o->p.sample.temperature < 0) bad = "--temperature";
            break;
        case O_WARMUP: if (ts_parse_long(optarg, 0, 100, &v)) bad = "--warmup"; else o->warmup = (int)v; break;
        case O_RUNS: if (ts_parse_long(optarg, 1, 1000, &v)) bad = "--runs"; else o->runs = (int)v; break;
        case O_DRUNS: if (ts_parse_long(optarg, 0, 1000, &v)) bad = "--decode-runs"; else o->decode_runs = (int)v; break;
        case O_TOK: o->tokens_out = optarg; break;
        case O_JSON: o->json = optarg; break;
        case O_THREADS: if (ts_parse_long(optarg, 1, 256, &v)) bad = "--threads"; else o->threads = (int)v; break;
        case O_HELP: usage(stdout); exit(0);
        default:
            fprintf(stderr, "gpu_generate: unknown or incomplete option '%s'\n", argv[optind - 1]);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "gpu_generate: invalid value '%s' for %s\n", optarg, bad);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gpu_generate: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->model) {
        fprintf(stderr, "gpu_generate: --model DIR is required\n");
        return -1;
    }
    if (strcmp(o->device, "cuda") && strcmp(o->device, "cuda-fp32") && strcmp(o->device, "cpu")) {
        fprintf(stderr, "gpu_generate: --device must be cuda, cuda-fp32 or cpu\n");
        return -1;
    }
    return 0;
}

/* Host clock after each step: stamps[0] is the start, stamps[s] the end of step s. */
typedef struct stamps {
    double *t;
    int n_steps, last;
} stamps;

static void on_step(void *ctx, int step, int n_steps)
{
    stamps *s = ctx;
    if (step >= 1 && step <= s->n_steps) s->t[step] = now_s();
    s->last = step;
    (void)n_steps;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void json_doubles(FILE *f, const double *x, int n, const char *fmt)
{
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        if (i) fputc(',', f);
        fprintf(f, fmt, x[i]);
    }
    fputc(']', f);
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_args(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    ts_error err = {0};
    ts_backend *be = !strcmp(o.device, "cpu") ? ts_backend_cpu_create(o.threads, &err)
                                              : ts_backend_cuda_create(-1, !strcmp(o.device, "cuda-fp32"), &err);
    if (!be) {
        fprintf(stderr, "gpu_generate: --device %s: %s\n", o.device, err.msg[0] ? err.msg : ts_strerror(err.code));
        return 2;
    }
    size_t free0 = 0, total0 = 0, free1 = 0, total1 = 0;
    int mem0 = ts_be_mem_info(be, &free0, &total0);
    ts_model *m = NULL;
    double t0 = now_s();
    if (ts_model_load(be, o.model, &m, &err)) {
        fprintf(stderr, "gpu_generate: %s\n", err.msg[0] ? err.msg : ts_strerror(err.code));
        ts_backend_free(be);
        return 2;
    }
    double load_s = now_s() - t0;
    int mem1 = ts_be_mem_info(be, &free1, &total1);
    const llamagen_config *c = &m->gpt->cfg;
    if (o.cls >= c->num_classes) {
        fprintf(stderr, "gpu_generate: --class %d: the model has %d classes\n", o.cls, c->num_classes);
        ts_model_free(m);
        ts_backend_free(be);
        return 2;
    }
    int n = o.n, L = c->block_size, V = c->vocab_size;
    fprintf(stderr, "gpu_generate: %s on %s, loaded in %.2f s; %d images x %d tokens\n", m->name,
            ts_backend_describe(be), load_s, n, L);

    int32_t *classes = malloc((size_t)n * sizeof *classes);
    int32_t *tokens = malloc((size_t)n * L * sizeof *tokens);
    int32_t *first = malloc((size_t)n * L * sizeof *first);
    double *stamp = malloc((size_t)(L + 1) * sizeof *stamp);
    double *steps = malloc((size_t)o.runs * L * sizeof *steps);
    double *run_s = malloc((size_t)o.runs * sizeof *run_s);
    double *warm_s = malloc((size_t)(o.warmup + 1) * sizeof *warm_s);
    double *dec_s = malloc((size_t)(o.decode_runs + 1) * sizeof *dec_s);
    if (!classes || !tokens || !first || !stamp || !steps || !run_s || !warm_s || !dec_s) {
        fprintf(stderr, "gpu_generate: out of memory\n");
        return 2;
    }
    for (int i = 0; i < n; i++) classes[i] = o.cls;

    int status = 0, unwritten = 0, out_of_range = 0, runs_differing = 0, tokens_differing = 0;
    for (int w = 0; w < o.warmup; w++) {
        double a = now_s();
        if (ts_generate_c2i(m, &o.p, classes, n, tokens, NULL, NULL, &err)) goto gen_fail;
        warm_s[w] = now_s() - a;
        fprintf(stderr, "gpu_generate: warm-up %d: %.3f s\n", w + 1, warm_s[w]);
    }
    for (int r = 0; r < o.runs; r++) {
        for (size_t i = 0; i < (size_t)n * L; i++) tokens[i] = -1;
        stamps st = {stamp, L, 0};
        for (int s = 0; s <= L; s++) stamp[s] = NAN;
        stamp[0] = now_s();
        if (ts_generate_c2i(m, &o.p, classes, n, tokens, on_step, &st, &err)) goto gen_fail;
        double end = now_s();
        run_s[r] = end - stamp[0];
        for (int s = 0; s < L; s++) steps[(size_t)r * L + s] = stamp[s + 1] - stamp[s];
        if (st.last != L) {
            fprintf(stderr, "gpu_generate: run %d: the progress callback saw %d of %d steps\n", r + 1,
                    st.last, L);
            status = 1;
        }
        for (size_t i = 0; i < (size_t)n * L; i++) {
            if (tokens[i] == -1) unwritten++;
            else if (tokens[i] < 0 || tokens[i] >= V) out_of_range++;
        }
        if (r == 0) {
            memcpy(first, tokens, (size_t)n * L * sizeof *tokens);
        } else {
            int d = 0;
            for (size_t i = 0; i < (size_t)n * L; i++) d += tokens[i] != first[i];
            if (d) runs_differing++;
            tokens_differing += d;
        }
        fprintf(stderr, "gpu_generate: run %d: %.3f s (%.1f tokens/s)\n", r + 1, run_s[r],
                n * (double)L / run_s[r]);
    }
    if (unwritten || out_of_range || runs_differing) status = 1;

    int dec_ok = 1, decoded = 0, dec_runs = 0;
    size_t img_bytes = 0;
    if (m->vq && o.decode_runs > 0) {
        int side = c->grid * m->vq->cfg.downsample;
        img_bytes = (size_t)side * side * 3;
        uint8_t *rgb = malloc((size_t)n * img_bytes);
        if (!rgb) {
            fprintf(stderr, "gpu_generate: out of memory for the images\n");
            return 2;
        }
        for (int d = 0; d <= o.decode_runs; d++) {   /* d == 0: untimed warm-up */
            memset(rgb, 0, (size_t)n * img_bytes);
            double a = now_s();
            if (vq_decode(m->vq, tokens, n, c->grid, rgb, NULL, &err)) {
                free(rgb);
                goto gen_fail;
            }
            double dt = now_s() - a;
            if (d == 0) continue;
            dec_s[dec_runs++] = dt;
            fprintf(stderr, "gpu_generate: VQ decode %d: %.3f s\n", d, dt);
        }
        /* Every image must have more than one distinct byte value. */
        for (int i = 0; i < n; i++) {
            const uint8_t *p = rgb + (size_t)i * img_bytes;
            size_t k = 1;
            while (k < img_bytes && p[k] == p[0]) k++;
            if (k == img_bytes) dec_ok = 0;
        }
        decoded = 1;
        free(rgb);
        if (!dec_ok) status = 1;
    }

    if (o.tokens_out) {
        FILE *f = fopen(o.tokens_out, "w");
        if (!f) {
            fprintf(stderr, "gpu_generate: cannot write %s\n", o.tokens_out);
            status = 1;
        } else {
            for (int i = 0; i < n; i++)
                for (int t = 0; t < L; t++) fprintf(f, "%d%c", tokens[(size_t)i * L + t], t == L - 1 ? '\n' : ' ');
            if (fclose(f)) status = 1;
        }
    }

    FILE *out = stdout;
    if (o.json && !(out = fopen(o.json, "w"))) {
        fprintf(stderr, "gpu_generate: cannot write %s\n", o.json);
        return 2;
    }
    fprintf(out, "{\"model\":");
    json_str(out, m->name);
    fprintf(out, ",\"model_dir\":");
    json_str(out, o.model);
    fprintf(out, ",\"backend\":");
    json_str(out, ts_backend_name(be));
    fprintf(out, ",\"device\":");
    json_str(out, ts_backend_describe(be));
    fprintf(out, ",\"kv_elem_bytes\":%d", ts_backend_kv_elem_bytes(be));
    fprintf(out, ",\"load_s\":%.6f", load_s);
    if (mem0 == 0 && mem1 == 0)
        fprintf(out, ",\"mem_total_bytes\":%zu,\"mem_free_before_load\":%zu,\"mem_free_after_load\":%zu,"
                     "\"model_device_bytes\":%lld",
                total0, free0, free1, (long long)free0 - (long long)free1);
    fprintf(out, ",\"n_images\":%d,\"n_seqs\":%d,\"class\":%d,\"block_size\":%d,\"vocab\":%d", n,
            o.p.cfg_scale > 1.0f ? 2 * n : n, o.cls, L, V);
    fprintf(out, ",\"dim\":%d,\"n_layer\":%d,\"n_head\":%d,\"n_kv_head\":%d,\"head_dim\":%d,\"ffn_dim\":%d",
            c->dim, c->n_layer, c->n_head, c->n_kv_head, c->head_dim, c->ffn_dim);
    fprintf(out, ",\"cfg\":%g,\"top_k\":%d,\"top_p\":%g,\"temperature\":%g,\"seed\":%llu", o.p.cfg_scale,
            o.p.sample.top_k, o.p.sample.top_p, o.p.sample.temperature, (unsigned long long)o.p.seed);
    fprintf(out, ",\"warmup_s\":");
    json_doubles(out, warm_s, o.warmup, "%.6f");
    fprintf(out, ",\"tokens_s\":");
    json_doubles(out, run_s, o.runs, "%.6f");
    fprintf(out, ",\"step_s\":[");
    for (int r = 0; r < o.runs; r++) {
        if (r) fputc(',', out);
        json_doubles(out, steps + (size_t)r * L, L, "%.7f");
    }
    fprintf(out, "]");
    fprintf(out, ",\"decode_s\":");
    json_doubles(out, dec_s, dec_runs, "%.6f");
    fprintf(out, ",\"checks\":{\"unwritten_tokens\":%d,\"out_of_range_tokens\":%d,\"runs_differing\":%d,"
                 "\"tokens_differing\":%d,\"decoded\":%s,\"images_not_flat\":%s}",
            unwritten, out_of_range, runs_differing, tokens_differing, decoded ? "true" : "false",
            decoded ? (dec_ok ? "true" : "false") : "null");
    fprintf(out, ",\"ok\":%s}\n", status == 0 ? "true" : "false");
    if (out != stdout && fclose(out)) status = 1;
    if (unwritten || out_of_range)
        fprintf(stderr, "gpu_generate: FAILED: %d tokens unwritten, %d out of range\n", unwritten, out_of_range);
    if (runs_differing)
        fprintf(stderr, "gpu_generate: FAILED: %d of %d runs differ from the first (%d tokens): same seed, "
                        "so a race or uninitialised read\n", runs_differing, o.runs - 1, tokens_differing);
    if (decoded && !dec_ok) fprintf(stderr, "gpu_generate: FAILED: a decoded image is one flat value\n");
    goto done;

gen_fail:
    fprintf(stderr, "gpu_generate: %s\n", err.msg[0] ? err.msg : ts_strerror(err.code));
    status = 2;
done:
    free(classes);
    free(tokens);
    free(first);
    free(stamp);
    free(steps);
    free(run_s);
    free(warm_s);
    free(dec_s);
    ts_model_free(m);
    ts_backend_free(be);
    return status;
}
