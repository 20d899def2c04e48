/* fuzz_config.c - model folders' config.json on arbitrary bytes: the strict getters
 * (engine/config.h), every section parser (llamagen_config_parse, far_config_parse,
 * vq_config_parse[_factorized], clip_config_parse, maskgen_config_parse,
 * titok_config_parse, t5_config_parse) and ts_model_load on the CPU backend.
 *
 * The first byte picks a fixture folder whose weights files sit (as links) beside the
 * fuzzed config.json in a scratch folder (llamagen_tiny, llamagen_t2i_tiny, fqgan_tiny,
 * maskgen_tiny, llamagen_hd100), so a config that passes the parsers goes on to load
 * real tensors with the shapes it names. Beyond "no crash" and no leak it asserts:
 *   - a refusal is a negative code from the table with a non-empty message;
 *   - what a section parser accepts is self-consistent: LlamaGen/FAR dim = n_head x
 *     head_dim with head_dim a multiple of 4, n_head a multiple of n_kv_head, block_size
 *     = grid^2, a class model with one class token, FAR's n_sub 2-3; the VQ downsample
 *     2^(levels - 1) over 1-8 levels; CLIP/TiTok width and MaskGen dim multiples of
 *     n_head, MaskGen's mask row past the codebook; T5's buckets below its distance;
 *   - a model that loads has the family and image_size its config names, and the
 *     networks that family needs.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "engine/config.h"
#include "engine/model.h"
#include "engine/models/clip_text.h"
#include "engine/models/maskgen.h"
#include "engine/models/t5_encoder.h"
#include "engine/models/titok_decoder.h"
#include "fuzz_util.h"

static const char *const FOLDERS[] = {"llamagen_tiny", "llamagen_t2i_tiny", "fqgan_tiny",
                                      "maskgen_tiny", "llamagen_hd100"};
#define N_FOLDERS ((int)(sizeof FOLDERS / sizeof FOLDERS[0]))

static char g_root[256];
static char g_dirs[N_FOLDERS][320];
static ts_backend *g_be;

static void remove_root(void)
{
    for (int i = 0; i < N_FOLDERS; i++) {
        DIR *d = opendir(g_dirs[i]);
        struct dirent *e;
        char p[640];
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", g_dirs[i], e->d_name);
            unlink(p);
        }
        if (d) closedir(d);
        rmdir(g_dirs[i]);
    }
    rmdir(g_root);
}

/* Scratch folders holding links to each fixture's files except config.json. */
static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_root, sizeof g_root, "%s/tessera-fuzz-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FZ_CHECK(mkdtemp(g_root), "mkdtemp: %s", strerror(errno));
    char cwd[1024];
    FZ_CHECK(getcwd(cwd, sizeof cwd), "getcwd");
    for (int i = 0; i < N_FOLDERS; i++) {
        char src[512];
        snprintf(src, sizeof src, "tests/fixtures/%s", FOLDERS[i]);
        DIR *d = opendir(fz_fixture(src));
        FZ_CHECK(d, "opendir %s", src);
        snprintf(g_dirs[i], sizeof g_dirs[i], "%s/%s", g_root, FOLDERS[i]);
        FZ_CHECK(mkdir(g_dirs[i], 0700) == 0, "mkdir %s", g_dirs[i]);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || !strcmp(e->d_name, "config.json")) continue;
            char from[1600], to[640];
            snprintf(from, sizeof from, "%s/%s/%s", cwd, src, e->d_name);
            snprintf(to, sizeof to, "%s/%s", g_dirs[i], e->d_name);
            FZ_CHECK(symlink(from, to) == 0, "symlink %s", to);
        }
        closedir(d);
    }
    atexit(remove_root);
    ts_error err;
    g_be = ts_backend_cpu_create(1, &err);
    FZ_CHECK(g_be, "no CPU backend: %s", err.msg);
}

static void check_rc(int rc, const ts_error *err, const char *what)
{
    if (rc == TS_OK) return;
    FZ_CHECK(rc < 0 && rc >= TS_ERR_INTERNAL && err->msg[0], "%s: rc %d, message '%s'", what,
             rc, err->msg);
}

static void check_llamagen(const llamagen_config *c)
{
    FZ_CHECK(c->head_dim * c->n_head == c->dim && c->head_dim % 4 == 0, "dim %d, heads %d",
             c->dim, c->n_head);
    FZ_CHECK(c->n_kv_head >= 1 && c->n_head % c->n_kv_head == 0, "n_kv_head %d", c->n_kv_head);
    FZ_CHECK(c->grid >= 1 && c->grid * c->grid == c->block_size, "block_size %d", c->block_size);
    FZ_CHECK(c->t2i || (c->cls_token_num == 1 && c->num_classes >= 1), "classes");
    FZ_CHECK(!c->t2i || (c->cls_token_num >= 1 && c->caption_dim >= 1), "t2i prefix");
}

/* Every section parser on whatever the sections hold. */
static void parse_sections(const json_t *root)
{
    ts_error err;
    int rc;
    const json_t *gpt = json_object_get(root, "gpt"), *vq = json_object_get(root, "vq");
    if (json_is_object(vq)) {
        vq_config v;
        rc = vq_config_parse(vq, &v, &err);
        check_rc(rc, &err, "vq");
        if (!rc)
            FZ_CHECK(v.n_levels >= 1 && v.n_levels <= VQ_MAX_LEVELS &&
                     v.downsample == 1 << (v.n_levels - 1) && v.n_sub == 1, "vq levels %d",
                     v.n_levels);
        rc = vq_config_parse_factorized(vq, &v, &err);
        check_rc(rc, &err, "vq (factorized)");
        if (!rc) FZ_CHECK(v.n_sub >= 2 && v.n_sub <= VQ_MAX_SUB, "vq n_sub %d", v.n_sub);
    }
    if (json_is_object(gpt)) {
        llamagen_config l;
        far_config f;
        rc = llamagen_config_parse(gpt, 256, 16, &l, &err);
        check_rc(rc, &err, "gpt");
        if (!rc) check_llamagen(&l);
        rc = llamagen_config_parse(gpt, 0, 0, &l, &err);
        check_rc(rc, &err, "gpt (no vq)");
        if (!rc) check_llamagen(&l);
        rc = far_config_parse(gpt, 16, 4, &f, &err);
        check_rc(rc, &err, "gpt (far)");
        if (!rc) {
            check_llamagen(&f.trunk);
            FZ_CHECK(f.n_sub >= 2 && f.n_sub <= FAR_MAX_SUB && f.head_layers >= 1 &&
                     f.trunk.n_kv_head == f.trunk.n_head, "far n_sub %d", f.n_sub);
        }
    }
    const json_t *s;
    if (json_is_object(s = json_object_get(root, "clip"))) {
        clip_config c;
        rc = clip_config_parse(s, &c, &err);
        check_rc(rc, &err, "clip");
        if (!rc) FZ_CHECK(c.n_head >= 1 && c.width % c.n_head == 0, "clip width %d", c.width);
    }
    if (json_is_object(s = json_object_get(root, "generator"))) {
        maskgen_config g;
        rc = maskgen_config_parse(s, &g, &err);
        check_rc(rc, &err, "generator");
        if (!rc)
            FZ_CHECK(g.head_dim * g.n_head == g.dim && g.embed_rows > g.codebook_size &&
                     g.sampling.steps >= 1, "generator dims");
    }
    if (json_is_object(s = json_object_get(root, "tokenizer"))) {
        titok_config t;
        rc = titok_config_parse(s, &t, &err);
        check_rc(rc, &err, "tokenizer");
        if (!rc) FZ_CHECK(t.width % t.n_head == 0, "tokenizer width %d", t.width);
    }
    if (json_is_object(s = json_object_get(root, "t5"))) {
        t5_config t;
        rc = t5_config_parse(s, &t, &err);
        check_rc(rc, &err, "t5");
        if (!rc) FZ_CHECK(t.rel_max_distance > t.rel_buckets / 4, "t5 buckets");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_be) setup();
    if (size < 1) return 0;
    const char *dir = g_dirs[data[0] % N_FOLDERS];
    char path[400];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    FZ_CHECK(f && fwrite(data + 1, 1, size - 1, f) == size - 1 && fclose(f) == 0, "write %s",
             path);

    ts_error err = {0};
    json_t *root = NULL;
    int rc = ts_json_load_file(path, &root, &err);
    check_rc(rc, &err, "load");
    if (!rc) {
        FZ_CHECK(json_is_object(root), "top level is not an object");
        parse_sections(root);
    }

    ts_model *m = NULL;
    int mrc = ts_model_load(g_be, dir, &m, &err);
    check_rc(mrc, &err, "ts_model_load");
    FZ_CHECK(!rc || mrc, "the model loaded from a config.json ts_json_load_file refused");
    if (!mrc) {
        FZ_CHECK(m, "no model");
        const char *family = json_string_value(json_object_get(root, "family"));
        json_int_t size_px = json_integer_value(json_object_get(root, "image_size"));
        FZ_CHECK(m->image_size == size_px, "image_size %d", m->image_size);
        switch (m->family) {
        case TS_FAMILY_LLAMAGEN:
            FZ_CHECK(!strcmp(family, "llamagen") && m->gpt && !m->masked && !m->far,
                     "llamagen");
            FZ_CHECK(!m->gpt->cfg.t2i == !m->t2i, "t2i without its text encoder");
            break;
        case TS_FAMILY_FQGAN:
            FZ_CHECK(!strcmp(family, "fqgan") && m->vq && !m->gpt && !m->masked, "fqgan");
            break;
        case TS_FAMILY_MASKGEN:
            FZ_CHECK(!strcmp(family, "maskgen") && m->masked && !m->gpt && !m->vq, "maskgen");
            break;
        default:
            FZ_CHECK(0, "family %d", (int)m->family);
        }
        ts_model_free(m);
    } else {
        FZ_CHECK(!m, "a model with an error");
    }
    json_decref(root);
    return 0;
}
