/* fuzz_prompt.c - prompt handling on arbitrary bytes: CLIP's cleanup and BPE tokenizer
 * (engine/text/clip_tokenizer.h, MaskGen's prompts), LlamaGen t2i's caption cleaning
 * (engine/text/t5_clean.h) followed by the T5 sentencepiece tokenizer as the engine
 * chains them (engine/t2i.c), and sentencepiece encoding of the raw bytes
 * (engine/text/spm.h). The tokenizers are loaded once from committed fixtures
 * (tests/fixtures/clip_bpe, tests/fixtures/spm_tiny).
 *
 * The first byte picks the sentencepiece model (T5-like with the nmt_nfkc charsmap,
 * byte fallback with user-defined pieces, hand-written edge cases) and CLIP's special-
 * token spelling; the rest is the prompt, up to the engine's own limits (16 KB CLIP,
 * 256 KB caption cleaning, 64 KB sentencepiece) and past them. Beyond "no crash" it
 * asserts:
 *   - each stage refuses (TS_ERR_INVALID) exactly the inputs past its limit and, where it
 *     requires UTF-8, exactly the invalid ones, and gives a message;
 *   - CLIP: sot first, eot after the tokens (or in the last slot when cut), zeros after,
 *     every id inside the vocabulary, n_tokens at most context - 1; the NUL-terminated
 *     entry point agrees with the sized one when the prompt has no NUL;
 *   - caption cleaning gives valid UTF-8 with no NUL (ts_t5_tokenize reads a C string),
 *     and T5's ids are inside the vocabulary, the mask 1...1 0...0 with n_valid ones, eos
 *     last among them and pad after;
 *   - sentencepiece: ids inside the vocabulary; the normalized text is valid UTF-8 and,
 *     when no unknown piece came out, the pieces spell it exactly (byte pieces of the
 *     byte-fallback model as their byte).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/clip_tokenizer.h"
#include "engine/text/spm.h"
#include "engine/text/t5_clean.h"
#include "fuzz_util.h"

static const char *const SPM_MODELS[] = {"tests/fixtures/spm_tiny/spiece.model",
                                         "tests/fixtures/spm_tiny/bytes.model",
                                         "tests/fixtures/spm_tiny/edge.model"};
#define N_SPM 3
#define CLIP_CONTEXT TS_CLIP_CONTEXT_LENGTH

static ts_clip_tok *g_clip[2];
static ts_spm *g_spm[N_SPM];

static void setup(void)
{
    ts_error err;
    const char *bpe = fz_fixture("tests/fixtures/clip_bpe/clip_bpe.txt");
    FZ_CHECK(!ts_clip_tok_load_ex(bpe, 0, TS_CLIP_SPECIALS_CLIP, &g_clip[0], &err) &&
             !ts_clip_tok_load_ex(bpe, 0, TS_CLIP_SPECIALS_OPEN_CLIP, &g_clip[1], &err),
             "%s", err.msg);
    for (int i = 0; i < N_SPM; i++)
        FZ_CHECK(!ts_spm_load(fz_fixture(SPM_MODELS[i]), &g_spm[i], &err), "%s", err.msg);
}

static void check_clip(const ts_clip_tok *tok, const char *text, size_t len, int valid)
{
    int32_t ids[CLIP_CONTEXT], ids2[CLIP_CONTEXT];
    int n_tokens = -1;
    ts_error err = {0};
    int rc = ts_clip_tok_encode_n(tok, text, len, ids, CLIP_CONTEXT, &n_tokens, &err);
    int want_ok = valid && len <= TS_CLIP_TOK_MAX_INPUT;
    FZ_CHECK(want_ok ? rc == TS_OK : rc == TS_ERR_INVALID && err.msg[0],
             "clip: rc %d for %zu bytes (valid %d): %s", rc, len, valid, err.msg);
    if (rc) return;
    int vocab = ts_clip_tok_vocab_size(tok);
    int32_t sot = ts_clip_tok_sot(tok), eot = ts_clip_tok_eot(tok);
    FZ_CHECK(n_tokens >= 0 && n_tokens <= CLIP_CONTEXT - 1, "n_tokens %d", n_tokens);
    FZ_CHECK(ids[0] == sot, "ids[0] %d", ids[0]);
    int eot_at = n_tokens + 1 < CLIP_CONTEXT ? n_tokens + 1 : CLIP_CONTEXT - 1;
    for (int i = 1; i < CLIP_CONTEXT; i++) {
        if (i < eot_at)
            FZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "ids[%d] = %d of %d", i, ids[i], vocab);
        else if (i == eot_at)
            FZ_CHECK(ids[i] == eot, "ids[%d] = %d, not eot", i, ids[i]);
        else
            FZ_CHECK(ids[i] == 0, "ids[%d] = %d after eot", i, ids[i]);
    }
    if (!memchr(text, '\0', len)) {
        char *z = strndup(text, len);
        FZ_CHECK(z, "out of memory");
        FZ_CHECK(ts_clip_tok_encode(tok, z, ids2, CLIP_CONTEXT, &err) == TS_OK &&
                 memcmp(ids, ids2, sizeof ids) == 0, "clip: encode and encode_n differ");
        free(z);
    }
}

/* 1 and the byte when the piece is spelled <0xXX>. */
static int byte_piece(const char *p, size_t n, unsigned char *b)
{
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(p, "<0x", 3) || p[5] != '>') return 0;
    const char *h = strchr(hex, p[3]), *l = strchr(hex, p[4]);
    if (!h || !l || !p[3] || !p[4]) return 0;
    *b = (unsigned char)((h - hex) << 4 | (l - hex));
    return 1;
}

static void check_spm(const ts_spm *m, int byte_model, const char *text, size_t len)
{
    ts_error err = {0};
    int32_t *ids = NULL;
    int n = -1;
    int rc = ts_spm_encode(m, text, len, &ids, &n, &err);
    if (len > TS_SPM_MAX_INPUT) {
        FZ_CHECK(rc == TS_ERR_INVALID && err.msg[0], "spm: rc %d past the limit", rc);
        return;
    }
    FZ_CHECK(rc == TS_OK && ids && n >= 0, "spm: rc %d: %s", rc, err.msg);
    char *norm = NULL;
    size_t norm_len = 0;
    FZ_CHECK(ts_spm_normalize(m, text, len, &norm, &norm_len, &err) == TS_OK,
             "normalize failed where encode did not: %s", err.msg);
    FZ_CHECK(norm[norm_len] == '\0' && fz_utf8_valid(norm, norm_len),
             "normalized text is not UTF-8");
    int vocab = ts_spm_vocab_size(m), unk = 0;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        FZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d of %d", ids[i], vocab);
        if (ids[i] == ts_spm_unk_id(m)) {
            unk = 1;
            continue;
        }
        size_t plen;
        const char *p = ts_spm_piece(m, ids[i], &plen);
        unsigned char b;
        if (byte_model && byte_piece(p, plen, &b)) {
            p = (const char *)&b;
            plen = 1;
        }
        if (!unk) {
            FZ_CHECK(at + plen <= norm_len && memcmp(norm + at, p, plen) == 0,
                     "piece %d ('%.*s') does not spell the text at %zu", i, (int)plen, p, at);
            at += plen;
        }
    }
    FZ_CHECK(unk || at == norm_len, "pieces spell %zu of %zu bytes", at, norm_len);
    free(norm);
    free(ids);
}

static void check_t5(const ts_spm *m, const char *text, size_t len, int valid)
{
    char *clean = NULL;
    size_t clean_len = 0;
    ts_error err = {0};
    int rc = ts_t5_clean(text, len, &clean, &clean_len, &err);
    int want_ok = valid && len <= TS_T5_CLEAN_MAX_INPUT;
    FZ_CHECK(want_ok ? rc == TS_OK : rc == TS_ERR_INVALID && err.msg[0] && !clean,
             "t5_clean: rc %d for %zu bytes (valid %d): %s", rc, len, valid, err.msg);
    if (rc) return;
    FZ_CHECK(clean && strlen(clean) == clean_len && fz_utf8_valid(clean, clean_len),
             "t5_clean: output is not NUL-free UTF-8");
    int32_t ids[TS_T5_LLAMAGEN_MAX_LEN];
    uint8_t mask[TS_T5_LLAMAGEN_MAX_LEN];
    int n_valid = -1;
    rc = ts_t5_tokenize(m, clean, TS_T5_LLAMAGEN_MAX_LEN, ids, mask, &n_valid, &err);
    if (ts_spm_eos_id(m) < 0 || ts_spm_pad_id(m) < 0) {
        FZ_CHECK(rc == TS_ERR_UNSUPPORTED, "t5 tokenize without eos/pad: rc %d", rc);
    } else if (clean_len > TS_SPM_MAX_INPUT) {
        FZ_CHECK(rc == TS_ERR_INVALID, "t5 tokenize past the limit: rc %d", rc);
    } else {
        FZ_CHECK(rc == TS_OK, "t5 tokenize: %s", err.msg);
        FZ_CHECK(n_valid >= 1 && n_valid <= TS_T5_LLAMAGEN_MAX_LEN, "n_valid %d", n_valid);
        FZ_CHECK(ids[n_valid - 1] == ts_spm_eos_id(m), "no eos at %d", n_valid - 1);
        for (int i = 0; i < TS_T5_LLAMAGEN_MAX_LEN; i++) {
            FZ_CHECK(mask[i] == (i < n_valid), "mask[%d] = %d", i, mask[i]);
            FZ_CHECK(i < n_valid ? ids[i] >= 0 && ids[i] < ts_spm_vocab_size(m)
                                 : ids[i] == ts_spm_pad_id(m), "ids[%d] = %d", i, ids[i]);
        }
    }
    free(clean);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_spm[0]) setup();
    if (size < 1) return 0;
    unsigned sel = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int valid = fz_utf8_valid(text, len);
    check_clip(g_clip[sel >> 7], text, len, valid);
    int which = (sel & 0x7f) % N_SPM;
    check_t5(g_spm[which], text, len, valid);
    check_spm(g_spm[which], which == 1, text, len);
    return 0;
}
