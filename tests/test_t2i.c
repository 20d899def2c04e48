/* test_t2i.c - LlamaGen text-to-image end to end on the committed fixture
 * tests/fixtures/llamagen_t2i_tiny (tests/reference/make_t2i_fixtures.py: random weights in
 * the official layouts through tools/convert.py, expected values from the PyTorch
 * references of upstream's pipeline with its full 120-position mask):
 *
 *  - the prompt's cleaning and T5 tokenization: ids and valid count of each prompt
 *    (a truncated one and one that cleans to nothing among them);
 *  - T5's last hidden state on the valid rows, and the caption projections of the prompt
 *    and of the null caption's last rows (relative error <= 1e-4 per row);
 *  - the prefill's logits with CFG: the engine holds only the valid text positions,
 *    the reference all 120 under upstream's mask (relative error <= 1e-4 per row);
 *  - greedy token streams with CFG 7.5 and without, every prompt in one batch;
 *  - the decoded pixels of the CFG stream, each within one level;
 *  - refusals: a class request to a t2i model, a folder without its null caption or with a
 *    T5 of the wrong width, both named. */
#include "tests/check_util.h"
#include <jansson.h>
#include <sys/stat.h>

#include "engine/generate.h"
#include "engine/model.h"

#define DIR "tests/fixtures/llamagen_t2i_tiny"
#define MAX_PROMPTS 8

static char g_tmp[512];   /* made in main, before the forks */

typedef struct fixture {
    ts_backend *be;
    ts_model *m;
    ts_st_file *expected;
    char prompts[MAX_PROMPTS][4096];
    int n_prompts;
} fixture;

static void fixture_open(fixture *f)
{
    ts_error err = {0};
    memset(f, 0, sizeof *f);
    f->be = ts_backend_cpu_create(2, &err);
    ck_assert_msg(f->be, "%s", err.msg);
    ts_ck_ok(ts_model_load(f->be, DIR, &f->m, &err), err);
    ck_assert(ts_model_is_t2i(f->m));
    ck_assert_ptr_nonnull(f->m->t2i);
    ts_ck_ok(ts_st_open(DIR "/expected.safetensors", &f->expected, &err), err);
    FILE *fp = fopen(DIR "/prompts.txt", "r");
    ck_assert_ptr_nonnull(fp);
    while (f->n_prompts < MAX_PROMPTS &&
           fgets(f->prompts[f->n_prompts], sizeof f->prompts[0], fp)) {
        char *nl = strchr(f->prompts[f->n_prompts], '\n');
        if (nl) *nl = '\0';
        f->n_prompts++;
    }
    fclose(fp);
    ck_assert_int_ge(f->n_prompts, 3);
}

static void fixture_close(fixture *f)
{
    ts_st_close(f->expected);
    ts_model_free(f->m);
    ts_backend_free(f->be);
}

static const int32_t *n_text(fixture *f)
{
    return ts_ck_expect(f->expected, "tok.n", TS_I32, (size_t)f->n_prompts);
}

/* Rows of n floats of backend memory x against expected name [rows, n]. */
static void expect_rows(fixture *f, const char *name, const float *x, int rows, int n, double tol)
{
    const float *want = ts_ck_expect(f->expected, name, TS_F32, (size_t)rows * n);
    float *got = malloc((size_t)rows * n * sizeof *got);
    ts_be_download(f->be, got, x, (size_t)rows * n);
    for (int r = 0; r < rows; r++) {
        double e = ts_ck_row_rel_err(got + (size_t)r * n, want + (size_t)r * n, n);
        ck_assert_msg(e <= tol, "%s row %d: rel err %g > %g", name, r, e, tol);
    }
    free(got);
}

START_TEST(test_tokenize)
{
    fixture f;
    fixture_open(&f);
    int L = f.m->t2i->max_len;
    ck_assert_int_eq(L, 120);
    const int32_t *want = ts_ck_expect(f.expected, "tok.ids", TS_I32, (size_t)f.n_prompts * L);
    int32_t ids[120];
    for (int p = 0; p < f.n_prompts; p++) {
        ts_error err = {0};
        int n = -1;
        ts_ck_ok(ts_t2i_tokenize(f.m->t2i, f.prompts[p], ids, &n, &err), err);
        ck_assert_msg(n == n_text(&f)[p], "prompt %d: %d tokens, expected %d", p, n,
                      n_text(&f)[p]);
        for (int i = 0; i < L; i++)
            ck_assert_msg(ids[i] == want[p * L + i], "prompt %d id %d: %d, expected %d", p, i,
                          ids[i], want[p * L + i]);
    }
    /* The fixture covers truncation (119 + </s>) and a prompt that cleans to nothing. */
    int saw_full = 0, saw_eos_only = 0;
    for (int p = 0; p < f.n_prompts; p++) {
        saw_full |= n_text(&f)[p] == L;
        saw_eos_only |= n_text(&f)[p] == 1;
    }
    ck_assert(saw_full && saw_eos_only);
    fixture_close(&f);
}
END_TEST

START_TEST(test_encoder_and_caption)
{
    fixture f;
    fixture_open(&f);
    const llamagen_config *c = &f.m->gpt->cfg;
    for (int p = 0; p < f.n_prompts; p++) {
        ts_error err = {0};
        int32_t ids[120];
        int n;
        ts_ck_ok(ts_t2i_tokenize(f.m->t2i, f.prompts[p], ids, &n, &err), err);
        float *feats = ts_be_alloc(f.be, (size_t)n * c->caption_dim);
        ck_assert_ptr_nonnull(feats);
        int32_t len = n;
        ts_ck_ok(t5_encoder_forward(f.m->t2i->t5, ids, &len, 1, n, feats, &err), err);
        char name[64];
        snprintf(name, sizeof name, "t5.%d", p);
        expect_rows(&f, name, feats, n, c->caption_dim, 1e-4);
        ts_be_free(f.be, feats);

        ts_t2i_prompt pr;
        ts_ck_ok(ts_t2i_prompt_make(f.m, f.prompts[p], 1, &pr, &err), err);
        ck_assert_int_eq(pr.n_text, n);
        snprintf(name, sizeof name, "cap.cond.%d", p);
        expect_rows(&f, name, pr.cond, n, c->dim, 1e-4);
        snprintf(name, sizeof name, "cap.uncond.%d", p);
        expect_rows(&f, name, pr.uncond, n, c->dim, 1e-4);
        ts_t2i_prompt_free(f.m, &pr);
        ck_assert_ptr_null(pr.cond);
    }
    fixture_close(&f);
}
END_TEST

/* Every prompt's cond and uncond prefill in one forward, chunked in two calls. */
START_TEST(test_prefill_logits)
{
    fixture f;
    fixture_open(&f);
    const llamagen_config *c = &f.m->gpt->cfg;
    int P = f.n_prompts, V = c->vocab_size, S = 2 * P;
    ts_t2i_prompt pr[MAX_PROMPTS];
    ts_error err = {0};
    for (int p = 0; p < P; p++) ts_ck_ok(ts_t2i_prompt_make(f.m, f.prompts[p], 1, &pr[p], &err), err);
    int per_seq = (c->cls_token_num + 15) / 16;
    ts_kv_cache *kv;
    ts_ck_ok(ts_kv_cache_create(f.be, c->n_layer, c->n_kv_head, c->head_dim, 16, per_seq * S,
                                &kv, &err), err);
    int32_t *tables = malloc((size_t)S * per_seq * sizeof *tables);
    for (int i = 0; i < S * per_seq; i++) tables[i] = ts_kv_block_alloc(kv);
    llamagen_seq seqs[2 * MAX_PROMPTS];
    /* First a chunk of each prompt's leading rows, then the rest: the chunking a
     * scheduler does under its prefill budget. */
    for (int half = 0; half < 2; half++) {
        int n_seqs = 0, order[2 * MAX_PROMPTS];
        for (int s = 0; s < S; s++) {
            const ts_t2i_prompt *q = &pr[s % P];
            int split = q->n_text / 2;
            int from = half ? split : 0, to = half ? q->n_text : split;
            if (to == from) continue;
            order[n_seqs] = s;
            seqs[n_seqs++] = (llamagen_seq){.n_past = from, .n_new = to - from,
                                            .block_table = tables + (size_t)s * per_seq,
                                            .n_cond = q->n_text,
                                            .cond_emb = s < P ? q->cond : q->uncond};
        }
        float *logits = malloc((size_t)n_seqs * V * sizeof *logits);
        ts_ck_ok(llamagen_forward(f.m->gpt, kv, seqs, n_seqs, logits, &err), err);
        if (half) {
            const float *want = ts_ck_expect(f.expected, "prefill.logits", TS_F32, (size_t)S * V);
            ck_assert_int_eq(n_seqs, S);
            for (int i = 0; i < n_seqs; i++) {
                double e = ts_ck_row_rel_err(logits + (size_t)i * V, want + (size_t)order[i] * V, V);
                ck_assert_msg(e <= 1e-4, "sequence %d: rel err %g", order[i], e);
            }
        }
        free(logits);
    }
    /* A text row without caption rows is refused, before the cache is touched. */
    llamagen_seq bad = {.n_past = 0, .n_new = 1, .block_table = tables, .n_cond = 3};
    ts_ck_fails(llamagen_forward(f.m->gpt, kv, &bad, 1, NULL, &err), err, TS_ERR_INVALID,
                "caption rows");
    bad.cond_emb = pr[0].cond;
    bad.n_cond = c->cls_token_num + 1;
    ts_ck_fails(llamagen_forward(f.m->gpt, kv, &bad, 1, NULL, &err), err, TS_ERR_INVALID,
                "condition positions");
    free(tables);
    ts_kv_cache_destroy(kv);
    for (int p = 0; p < P; p++) ts_t2i_prompt_free(f.m, &pr[p]);
    fixture_close(&f);
}
END_TEST

static void greedy(fixture *f, float cfg, const char *name, int32_t *tokens)
{
    const llamagen_config *c = &f->m->gpt->cfg;
    int P = f->n_prompts, L = c->block_size;
    ts_t2i_prompt pr[MAX_PROMPTS];
    const ts_t2i_prompt *each[MAX_PROMPTS];
    ts_error err = {0};
    for (int p = 0; p < P; p++) {
        ts_ck_ok(ts_t2i_prompt_make(f->m, f->prompts[p], cfg > 1.0f, &pr[p], &err), err);
        each[p] = &pr[p];
    }
    ts_gen_params gp = {.cfg_scale = cfg, .cfg_interval = -1.0f,
                        .sample = {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f}, .seed = 7};
    ts_ck_ok(ts_generate_t2i(f->m, &gp, each, P, tokens, NULL, NULL, &err), err);
    const int32_t *want = ts_ck_expect(f->expected, name, TS_I32, (size_t)P * L);
    for (int i = 0; i < P * L; i++)
        ck_assert_msg(tokens[i] == want[i], "%s: prompt %d token %d is %d, expected %d", name,
                      i / L, i % L, tokens[i], want[i]);
    for (int p = 0; p < P; p++) ts_t2i_prompt_free(f->m, &pr[p]);
}

START_TEST(test_greedy_and_pixels)
{
    fixture f;
    fixture_open(&f);
    const llamagen_config *c = &f.m->gpt->cfg;
    int P = f.n_prompts, L = c->block_size, S = f.m->image_size;
    int32_t *tokens = malloc((size_t)P * L * sizeof *tokens);
    greedy(&f, 1.0f, "greedy.nocfg.tokens", tokens);
    greedy(&f, 7.5f, "greedy.cfg.tokens", tokens);
    uint8_t *rgb = malloc((size_t)P * S * S * 3);
    ts_error err = {0};
    ts_ck_ok(vq_decode(f.m->vq, tokens, P, c->grid, rgb, NULL, &err), err);
    /* Both HWC. */
    const int32_t *want = ts_ck_expect(f.expected, "vq.image_u8", TS_I32, (size_t)P * S * S * 3);
    int spread = 0;
    for (size_t i = 0; i < (size_t)P * S * S * 3; i++) {
        ck_assert_msg(abs(rgb[i] - want[i]) <= 1, "image %zu, byte %zu: %d vs %d",
                      i / ((size_t)S * S * 3), i % ((size_t)S * S * 3), rgb[i], want[i]);
        spread |= want[i] != want[0];
    }
    ck_assert_msg(spread, "the fixture's images are flat: the check would prove nothing");
    free(rgb);
    free(tokens);
    fixture_close(&f);
}
END_TEST

START_TEST(test_refusals)
{
    fixture f;
    fixture_open(&f);
    ts_error err = {0};
    ts_gen_params gp = {.cfg_scale = 4.0f, .cfg_interval = -1.0f,
                        .sample = {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f}};
    int32_t cls = 0, tokens[64];
    ts_ck_fails(ts_generate_c2i(f.m, &gp, &cls, 1, tokens, NULL, NULL, &err), err,
                TS_ERR_INVALID, "not a class-conditional model");
    /* CFG needs the null caption's rows. */
    ts_t2i_prompt pr;
    ts_ck_ok(ts_t2i_prompt_make(f.m, "a cat", 0, &pr, &err), err);
    const ts_t2i_prompt *each = &pr;
    ts_ck_fails(ts_generate_t2i(f.m, &gp, &each, 1, tokens, NULL, NULL, &err), err,
                TS_ERR_INVALID, "conditioning");
    ts_t2i_prompt_free(f.m, &pr);
    fixture_close(&f);

    /* Folders: the null caption renamed away, and a T5 narrower than caption_dim. */
    char d[600], src[600], dst[700];
    const char *files[] = {"config.json", "gpt.safetensors", "vq.safetensors",
                           "t5.safetensors", "spiece.model"};
    snprintf(d, sizeof d, "%s/no_null", g_tmp);
    ck_assert_int_eq(mkdir(d, 0755), 0);
    for (int i = 0; i < 5; i++) {
        snprintf(src, sizeof src, DIR "/%s", files[i]);
        snprintf(dst, sizeof dst, "%s/%s", d, files[i]);
        size_t n;
        char *buf = ts_ck_read_file(src, &n);
        if (!strcmp(files[i], "gpt.safetensors")) {
            char *at = memmem(buf, n, "uncond_embedding", 16);
            ck_assert_ptr_nonnull(at);
            memcpy(at, "uncond_embeddinG", 16);
        }
        ck_assert_int_eq(ts_ck_write_file(dst, buf, n), 0);
        free(buf);
    }
    ts_backend *be = ts_backend_cpu_create(1, &err);
    ts_model *m = NULL;
    ts_ck_fails(ts_model_load(be, d, &m, &err), err, TS_ERR_MISSING,
                "cls_embedding.uncond_embedding");
    ck_assert_ptr_null(m);
    snprintf(dst, sizeof dst, "%s/config.json", d);
    json_error_t je;
    json_t *root = json_load_file(dst, 0, &je);
    ck_assert_ptr_nonnull(root);
    json_object_set_new(json_object_get(root, "gpt"), "caption_dim", json_integer(40));
    ck_assert_int_eq(json_dump_file(root, dst, 0), 0);
    json_decref(root);
    ts_ck_fails(ts_model_load(be, d, &m, &err), err, TS_ERR_CONFIG, "caption_dim");
    ts_backend_free(be);
    ts_ck_rmdir(d);
}
END_TEST

int main(void)
{
    if (ts_ck_mkdtemp(g_tmp, sizeof g_tmp)) return 1;
    Suite *s = suite_create("t2i");
    TCase *tc = tcase_create("llamagen_t2i_tiny");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_tokenize);
    tcase_add_test(tc, test_encoder_and_caption);
    tcase_add_test(tc, test_prefill_logits);
    tcase_add_test(tc, test_greedy_and_pixels);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    int rc = ts_ck_run(&s, 1);
    ts_ck_rmdir(g_tmp);
    return rc;
}
