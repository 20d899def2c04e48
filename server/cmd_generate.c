/* cmd_generate.c - `tessera generate`: load a model folder, generate images for
 * classes, write PNGs (with the parameters in a tEXt chunk) and optionally the tokens.
 * Runs the engine directly on this thread; the server runs it behind the scheduler. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/classes.h"
#include "api/png_encode.h"
#include "cli.h"
#include "api/numparse.h"
#include "engine/generate.h"
#include "engine/masked.h"
#include "engine/model.h"

#define MAX_IMAGES 1024

typedef struct gen_opts {
    const char *model, *out, *tokens_out, *device;
    const char *class_arg;  /* --class as given: ids and/or names, resolved after loading */
    int32_t classes[MAX_IMAGES];
    int n_classes, n_per_class, threads, quiet;
    unsigned given;         /* GIVEN_* bits: sampling flags set on the command line */
    ts_gen_params p;
    const char *prompt;     /* masked (text-to-image) models */
    ts_mask_params mp;      /* fields left < 0 take the model's defaults */
} gen_opts;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: tessera generate --model DIR --class N[,N...] [options] --out out.png\n"
        "       tessera generate --model DIR --prompt TEXT [options] --out out.png\n"
        "\n"
        "Generates images with a model folder (see docs/model-format.md; tools/convert.py\n"
        "makes one from the official checkpoints): class-conditional with a LlamaGen c2i or\n"
        "FQGAN folder, from a text prompt with a MaskGen or LlamaGen t2i folder.\n"
        "\n"
        "  --model DIR          model folder holding config.json (required)\n"
        "  --class C[,C...]     class id(s) 0..num_classes-1, or names from the model's\n"
        "                       classes.txt (\"red apple\", \"golden retriever\") (LlamaGen,\n"
        "                       FQGAN)\n"
        "  --prompt TEXT        the text to draw (MaskGen, LlamaGen t2i)\n"
        "  --n IMAGES           images per class (default 1); image i of the run uses\n"
        "                       seed S + i, so it can be regenerated alone with that seed\n"
        "  --seed S             random seed, 0..2^64-1 (default 0)\n"
        "Class-conditional sampling (defaults: the model's config.json \"sampling\", else\n"
        "upstream's sample_c2i.py values, shown here):\n"
        "  --cfg SCALE          classifier-free guidance scale; <= 1 turns CFG off (default 4.0;\n"
        "                       FQGAN guides each sub-token)\n"
        "  --cfg-interval I     guide only decode steps <= I; -1 = every step (default -1)\n"
        "  --top-k K            keep logits >= the K-th largest; 0 = off (default 2000)\n"
        "  --top-p P            nucleus sampling threshold in (0, 1]; 1 = off (default 1.0)\n"
        "  --temperature T      softmax temperature, >= 0 (values below 1e-5 act as 1e-5;\n"
        "                       default 1.0)\n"
        "MaskGen sampling (defaults from the model's config.json, upstream's demo values):\n"
        "  --guidance G         guidance scale reached at the last step (default 12)\n"
        "  --randomize-temperature T  Gumbel noise temperature at the first step, falling\n"
        "                       to 0; 0 = deterministic (default 2.0)\n"
        "  --aesthetic A        aesthetic-score micro-condition (default 6.5)\n"
        "  --steps S            decoding steps, 1..N tokens (default 16)\n"
        "  --out FILE.png       output image; with several images FILE-0.png, FILE-1.png, ...\n"
        "                       (required unless --tokens-out is given)\n"
        "  --tokens-out FILE    write each image's tokens in raster order, one image per line;\n"
        "                       FQGAN: the k sub-tokens of each position in turn (sub-token 1,\n"
        "                       the visual code, first): block_size * k numbers per line\n"
        "  --threads N          CPU threads (default: all cores)\n"
        "  --device D           cpu, cuda, cuda-fp32 or auto (default auto: the GPU when this build has\n"
        "                       CUDA and one is usable, else the CPU; cuda without a GPU\n"
        "                       falls back to the CPU with a notice)\n"
        "  --quiet              no progress output\n"
        "  --help               this text\n");
}

/* Sampling flags the user gave; the others take the model's defaults after loading. */
enum { GIVEN_CFG = 1, GIVEN_CFGI = 2, GIVEN_TOPK = 4, GIVEN_TOPP = 8, GIVEN_TEMP = 16 };

static void apply_model_defaults(gen_opts *o, const ts_gen_params *d)
{
    if (!(o->given & GIVEN_CFG)) o->p.cfg_scale = d->cfg_scale;
    if (!(o->given & GIVEN_CFGI)) o->p.cfg_interval = d->cfg_interval;
    if (!(o->given & GIVEN_TOPK)) o->p.sample.top_k = d->sample.top_k;
    if (!(o->given & GIVEN_TOPP)) o->p.sample.top_p = d->sample.top_p;
    if (!(o->given & GIVEN_TEMP)) o->p.sample.temperature = d->sample.temperature;
}

/* Counts the comma-separated entries of --class; their meaning needs the model's class
 * table, so resolve_classes() reads them after loading. */
static int count_classes(const char *s, gen_opts *o)
{
    o->class_arg = s;
    o->n_classes = 1;
    for (const char *p = s; *p; p++) o->n_classes += *p == ',';
    return o->n_classes <= MAX_IMAGES ? 0 : -1;
}

/* Each entry is a class id or a name (or synonym) from DIR/classes.txt. */
static int resolve_classes(gen_opts *o, int num_classes, ts_error *err)
{
    char path[4096];
    ts_class_table table = {0};
    snprintf(path, sizeof path, "%s/classes.txt", o->model);
    if (ts_classes_load(path, num_classes, &table, err)) return -1;
    char *copy = strdup(o->class_arg), *save = NULL;
    int n = 0, status = 0;
    if (!copy) {
        ts_classes_free(&table);
        return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    }
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        if (!ts_parse_long(tok, 0, 1 << 24, &v)) {   /* an id: the engine checks its range */
            o->classes[n++] = (int32_t)v;
            continue;
        }
        int id = ts_classes_lookup(&table, num_classes, tok);
        if (id < 0) {
            status = ts_fail(err, TS_ERR_INVALID,
                             "--class '%s': not a class id below %d nor a name in %s", tok,
                             num_classes, path);
            break;
        }
        o->classes[n++] = id;
    }
    if (!status && n == 0) status = ts_fail(err, TS_ERR_INVALID, "--class names no class");
    o->n_classes = n;
    free(copy);
    ts_classes_free(&table);
    return status;
}

static int parse_args(int argc, char **argv, gen_opts *o)
{
    enum { O_MODEL = 1, O_CLASS, O_N, O_SEED, O_CFG, O_CFGI, O_TOPK, O_TOPP, O_TEMP, O_OUT,
           O_TOK, O_THREADS, O_DEVICE, O_QUIET, O_HELP, O_PROMPT, O_GUID, O_RTEMP, O_AES,
           O_STEPS };
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL}, {"class", required_argument, 0, O_CLASS},
        {"n", required_argument, 0, O_N}, {"seed", required_argument, 0, O_SEED},
        {"cfg", required_argument, 0, O_CFG}, {"cfg-interval", required_argument, 0, O_CFGI},
        {"top-k", required_argument, 0, O_TOPK}, {"top-p", required_argument, 0, O_TOPP},
        {"temperature", required_argument, 0, O_TEMP}, {"out", required_argument, 0, O_OUT},
        {"tokens-out", required_argument, 0, O_TOK}, {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP}, {"prompt", required_argument, 0, O_PROMPT},
        {"guidance", required_argument, 0, O_GUID},
        {"randomize-temperature", required_argument, 0, O_RTEMP},
        {"aesthetic", required_argument, 0, O_AES}, {"steps", required_argument, 0, O_STEPS},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->n_per_class = 1;
    o->device = "auto";
    o->p = (ts_gen_params){.cfg_scale = 4.0f, .cfg_interval = -1.0f,
                           .sample = {.temperature = 1.0f, .top_k = 2000, .top_p = 1.0f},
                           .seed = 0};
    o->mp = (ts_mask_params){.steps = -1, .guidance = -1.0f, .randomize_temperature = -1.0f,
                             .aesthetic = NAN};
    int c;
    long v;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *bad = NULL;
        o->given |= c == O_CFG ? GIVEN_CFG : c == O_CFGI ? GIVEN_CFGI : c == O_TOPK ? GIVEN_TOPK
                   : c == O_TOPP ? GIVEN_TOPP : c == O_TEMP ? GIVEN_TEMP : 0;
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_CLASS: if (count_classes(optarg, o)) bad = "--class"; break;
        case O_N: if (ts_parse_long(optarg, 1, MAX_IMAGES, &v)) bad = "--n"; else o->n_per_class = (int)v; break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-') bad = "--seed";
            else o->p.seed = s;
            break;
        }
        case O_CFG: if (ts_parse_float(optarg, &o->p.cfg_scale)) bad = "--cfg"; break;
        case O_CFGI:
            if (ts_parse_float(optarg, &o->p.cfg_interval) || o->p.cfg_interval < -1.0f) bad = "--cfg-interval";
            break;
        case O_TOPK: if (ts_parse_long(optarg, 0, 1 << 24, &v)) bad = "--top-k"; else o->p.sample.top_k = (int)v; break;
        case O_TOPP:
            if (ts_parse_float(optarg, &o->p.sample.top_p) || o->p.sample.top_p <= 0.0f || o->p.sample.top_p > 1.0f)
                bad = "--top-p";
            break;
        case O_TEMP:
            if (ts_parse_float(optarg, &o->p.sample.temperature) || o->p.sample.temperature < 0.0f)
                bad = "--temperature";
            break;
        case O_OUT: o->out = optarg; break;
        case O_TOK: o->tokens_out = optarg; break;
        case O_THREADS: if (ts_parse_long(optarg, 1, 256, &v)) bad = "--threads"; else o->threads = (int)v; break;
        case O_DEVICE: o->device = optarg; break;
        case O_QUIET: o->quiet = 1; break;
        case O_PROMPT: o->prompt = optarg; break;
        case O_GUID:
            if (ts_parse_float(optarg, &o->mp.guidance) || o->mp.guidance < 0.0f ||
                o->mp.guidance > 1000.0f)
                bad = "--guidance";
            break;
        case O_RTEMP:
            if (ts_parse_float(optarg, &o->mp.randomize_temperature) ||
                o->mp.randomize_temperature < 0.0f || o->mp.randomize_temperature > 1000.0f)
                bad = "--randomize-temperature";
            break;
        case O_AES:
            if (ts_parse_float(optarg, &o->mp.aesthetic) || fabsf(o->mp.aesthetic) > 1000.0f)
                bad = "--aesthetic";
            break;
        case O_STEPS: if (ts_parse_long(optarg, 1, 1024, &v)) bad = "--steps"; else o->mp.steps = (int)v; break;
        case O_HELP: usage(stdout); exit(0);
        default:
            fprintf(stderr, "tessera generate: unknown or incomplete option '%s'\n", argv[optind - 1]);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "tessera generate: invalid value '%s' for %s\n", optarg, bad);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tessera generate: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->model || (!o->n_classes == !o->prompt) || (!o->out && !o->tokens_out)) {
        fprintf(stderr, "tessera generate: --model, one of --class or --prompt, and --out (or "
                "--tokens-out) are required\n");
        return -1;
    }
    if (o->prompt) o->n_classes = 1;
    if ((long)o->n_classes * o->n_per_class > MAX_IMAGES) {
        fprintf(stderr, "tessera generate: at most %d images per run\n", MAX_IMAGES);
        return -1;
    }
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda") && strcmp(o->device, "cuda-fp32") &&
        strcmp(o->device, "auto")) {
        fprintf(stderr, "tessera generate: --device must be cpu, cuda, cuda-fp32 or auto, not '%s'\n", o->device);
        return -1;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct progress {
    double t0;
    int n_images, tty;
} progress;

static void on_step(void *ctx, int step, int n_steps)
{
    progress *p = ctx;
    if (!p->tty) return;
    double dt = now_s() - p->t0;
    fprintf(stderr, "\rstep %d/%d  %.1f tokens/s ", step, n_steps,
            dt > 0 ? step * (double)p->n_images / dt : 0.0);
    if (step == n_steps) fputc('\n', stderr);
}

/* FILE.png -> FILE-i.png when a run makes several images. */
static void image_path(char *dst, size_t n, const char *out, int i, int total)
{
    if (total == 1) {
        snprintf(dst, n, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.');
    const char *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash)) dot = out + strlen(out);
    snprintf(dst, n, "%.*s-%d%s", (int)(dot - out), out, i, dot);
}

static int write_tokens(const char *path, const int32_t *tokens, int n, int L)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (int i = 0; i < n; i++)
        for (int t = 0; t < L; t++) fprintf(f, "%d%c", tokens[(size_t)i * L + t], t == L - 1 ? '\n' : ' ');
    return fclose(f) == 0 ? 0 : -1;
}

/* Text-to-image on a MaskGen folder: n images of one prompt. Returns the exit status. */
static int run_masked(const gen_opts *o, ts_model *m, ts_error *err)
{
    if (m->family != TS_FAMILY_MASKGEN || !o->prompt) {
        ts_fail(err, TS_ERR_INVALID, m->family == TS_FAMILY_MASKGEN
                ? "this MaskGen model draws from --prompt, not --class"
                : "this model is class-conditional: use --class, not --prompt");
        return 1;
    }
    ts_masked_model *mm = m->masked;
    const maskgen_sampling *d = &mm->gen->cfg.sampling;
    ts_mask_params p = o->mp;
    p.seed = o->p.seed;
    if (p.steps < 0) p.steps = d->steps;
    if (p.guidance < 0.0f) p.guidance = d->guidance;
    if (p.randomize_temperature < 0.0f) p.randomize_temperature = d->randomize_temperature;
    if (isnan(p.aesthetic)) p.aesthetic = d->aesthetic;
    int N = mm->gen->cfg.num_tokens, S = mm->image_size, n = o->n_per_class;
    if (p.steps > N) {
        ts_fail(err, TS_ERR_INVALID, "--steps %d exceeds the %d tokens of an image", p.steps, N);
        return 1;
    }
    const char **prompts = malloc((size_t)n * sizeof *prompts);
    int32_t *tokens = malloc((size_t)n * N * sizeof *tokens);
    uint8_t *rgb = o->out ? malloc((size_t)n * S * S * 3) : NULL;
    int status = 1;
    if (!prompts || !tokens || (o->out && !rgb)) {
        ts_fail(err, TS_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) prompts[i] = o->prompt;
    progress pr = {now_s(), n, !o->quiet && isatty(2)};
    ts_masked_timing tm;
    if (ts_masked_generate(mm, &p, prompts, n, tokens, rgb, on_step, &pr, &tm, err)) goto out;
    double t = now_s() - pr.t0;
    if (o->tokens_out && write_tokens(o->tokens_out, tokens, n, N)) {
        ts_fail(err, TS_ERR_IO, "%s: cannot write tokens", o->tokens_out);
        goto out;
    }
    for (int i = 0; o->out && i < n; i++) {
        char params[2048], path[4096];
        /* The server writes the same text, so a request's PNG is the CLI's, byte for byte. */
        ts_png_mask_parameters(params, sizeof params, m->name, o->prompt, i, &p, p.seed);
        ts_png_text text[] = {{"Software", "Tessera " TESSERA_VERSION}, {"parameters", params}};
        image_path(path, sizeof path, o->out, i, n);
        if (ts_png_write_file(path, rgb + (size_t)i * S * S * 3, S, S, text, 2, err)) goto out;
        if (!o->quiet) fprintf(stderr, "wrote %s\n", path);
    }
    if (!o->quiet)
        fprintf(stderr, "%d image(s) in %.2f s: text %.2f s, %d steps %.2f s, decode %.2f s\n",
                n, t, tm.text_s, p.steps, tm.steps_s, tm.decode_s);
    status = 0;
out:
    free(prompts);
    free(tokens);
    free(rgb);
    return status;
}

/* LlamaGen text-to-image: n images of one prompt, encoded once. */
static int generate_t2i(const gen_opts *o, ts_model *m, int n, int32_t *tokens, progress *pr,
                        ts_error *err)
{
    ts_t2i_prompt prompt;
    double t0 = now_s();
    int rc = ts_t2i_prompt_make(m, o->prompt, o->p.cfg_scale > 1.0f, &prompt, err);
    if (rc) return rc;
    if (!o->quiet)
        fprintf(stderr, "prompt: %d text tokens, encoded in %.2f s\n", prompt.n_text,
                now_s() - t0);
    const ts_t2i_prompt **each = malloc((size_t)n * sizeof *each);
    if (!each) rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
    for (int i = 0; each && i < n; i++) each[i] = &prompt;
    pr->t0 = now_s();
    if (each) rc = ts_generate_t2i(m, &o->p, each, n, tokens, on_step, pr, err);
    free(each);
    ts_t2i_prompt_free(m, &prompt);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    gen_opts o;
    if (parse_args(argc, argv, &o)) {
        fprintf(stderr, "Run `tessera generate --help` for the options.\n");
        return 2;
    }
    ts_error err = {0};
    ts_backend *be = ts_backend_create(o.device, o.threads, &err);
    ts_model *m = NULL;
    int32_t *classes = NULL, *tokens = NULL;
    uint8_t *rgb = NULL;
    int status = 1;
    if (!be) goto fail;
    double t_load = now_s();
    if (ts_model_load(be, o.model, &m, &err)) goto fail;
    if (!o.quiet)
        fprintf(stderr, "loaded %s in %.2f s on %s\n", m->name, now_s() - t_load,
                ts_backend_describe(be));
    int t2i = ts_model_is_t2i(m);
    if (m->family == TS_FAMILY_MASKGEN || (o.prompt && !t2i)) {
        status = run_masked(&o, m, &err);
        goto fail;
    }
    if (t2i && !o.prompt) {
        ts_fail(&err, TS_ERR_INVALID, "this LlamaGen model is text-to-image: use --prompt, not "
                "--class");
        goto fail;
    }
    if (o.out && !m->vq) {
        ts_fail(&err, TS_ERR_INVALID, "%s has no VQ decoder: only --tokens-out is possible", o.model);
        goto fail;
    }
    /* LlamaGen's GPT or FQGAN's FAR: k codes per position (1 for LlamaGen). */
    const llamagen_config *gc = ts_model_c2i_config(m);
    if (!gc) {
        ts_fail(&err, TS_ERR_INVALID, "%s has no generator (a decode-only folder): nothing to "
                "generate", o.model);
        goto fail;
    }
    int k = ts_model_n_sub(m);
    apply_model_defaults(&o, &m->gen_defaults);
    if (!t2i && resolve_classes(&o, gc->num_classes, &err)) goto fail;
    int n = o.n_classes * o.n_per_class, L = gc->block_size;
    classes = malloc((size_t)n * sizeof *classes);
    tokens = malloc((size_t)n * L * k * sizeof *tokens);
    if (!classes || !tokens) {
        ts_fail(&err, TS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) classes[i] = t2i ? -1 : o.classes[i / o.n_per_class];

    progress pr = {now_s(), n, !o.quiet && isatty(2)};
    if (t2i ? generate_t2i(&o, m, n, tokens, &pr, &err)
            : ts_generate_c2i(m, &o.p, classes, n, tokens, on_step, &pr, &err))
        goto fail;
    double t_gen = now_s() - pr.t0;
    if (o.tokens_out && write_tokens(o.tokens_out, tokens, n, L * k)) {
        ts_fail(&err, TS_ERR_IO, "%s: cannot write tokens", o.tokens_out);
        goto fail;
    }
    double t_dec = 0.0;
    if (o.out) {
        int side = gc->grid * m->vq->cfg.downsample;
        size_t img_bytes = (size_t)side * side * 3;
        rgb = malloc((size_t)n * img_bytes);
        if (!rgb) {
            ts_fail(&err, TS_ERR_NOMEM, "out of memory");
            goto fail;
        }
        double t0 = now_s();
        if (vq_decode(m->vq, tokens, n, gc->grid, rgb, NULL, &err)) goto fail;
        t_dec = now_s() - t0;
        for (int i = 0; i < n; i++) {
            char params[2048], path[4096];
            if (t2i) ts_png_t2i_parameters(params, sizeof params, m->name, o.prompt, i, &o.p);
            else ts_png_parameters(params, sizeof params, m->name, classes[i], i, &o.p);
            ts_png_text text[] = {{"Software", "Tessera " TESSERA_VERSION}, {"parameters", params}};
            image_path(path, sizeof path, o.out, i, n);
            if (ts_png_write_file(path, rgb + i * img_bytes, side, side, text, 2, &err)) goto fail;
            if (!o.quiet) fprintf(stderr, "wrote %s\n", path);
        }
    }
    if (!o.quiet)
        fprintf(stderr, "%d image(s): tokens %.2f s (%.1f tokens/s), VQ decode %.2f s\n", n, t_gen,
                t_gen > 0 ? n * (double)L / t_gen : 0.0, t_dec);
    status = 0;
fail:
    if (status) fprintf(stderr, "tessera generate: %s\n", err.msg[0] ? err.msg : ts_strerror(err.code));
    free(rgb);
    free(tokens);
    free(classes);
    ts_model_free(m);
    ts_backend_free(be);
    return status;
}
