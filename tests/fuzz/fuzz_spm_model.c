/* fuzz_spm_model.c - the sentencepiece model loader (ts_spm_load_mem, engine/text/spm.h:
 * its own protobuf wire-format reader, the piece table, the precompiled charsmap's
 * double-array trie) on arbitrary bytes, then encoding with whatever loads.
 *
 * Beyond "no crash" and no leak it asserts:
 *   - a refusal is TS_ERR_FORMAT or TS_ERR_UNSUPPORTED with a message;
 *   - a loaded model has at least one piece, an unknown id inside the vocabulary, eos and
 *     pad ids inside it or -1, and a spelling for every id (none past the end);
 *   - encoding a few fixed prompts (plain, spaces, accents, CJK, invalid UTF-8, a NUL)
 *     gives ids inside the vocabulary and a NUL-terminated normalized text (not always
 *     UTF-8: a hostile model's user-defined pieces and replacement strings are bytes), or,
 *     for a charsmap that inflates text past its bound, TS_ERR_FORMAT; T5 tokenization,
 *     when the model has eos and pad, gives eos last and pad after.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/spm.h"
#include "fuzz_util.h"

static const struct { const char *s; size_t n; } PROMPTS[] = {
    {"a red apple on a table", 22},
    {"  two   spaces\tand a tab  ", 26},
    {"caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xef\xbc\xa1\xe2\x80\x8b", 19},
    {"bad \xff\xfe utf-8 \xc3", 15},
    {"nul\0inside", 10},
    {"", 0},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ts_spm *m = NULL;
    ts_error err = {0};
    int rc = ts_spm_load_mem(data, size, &m, &err);
    if (rc) {
        FZ_CHECK((rc == TS_ERR_FORMAT || rc == TS_ERR_UNSUPPORTED || rc == TS_ERR_INVALID) &&
                 err.msg[0] && !m, "rc %d: '%s'", rc, err.msg);
        return 0;
    }
    int vocab = ts_spm_vocab_size(m);
    FZ_CHECK(vocab >= 1, "vocab %d", vocab);
    int32_t unk = ts_spm_unk_id(m), eos = ts_spm_eos_id(m), pad = ts_spm_pad_id(m);
    FZ_CHECK(unk >= 0 && unk < vocab, "unk %d", unk);
    FZ_CHECK(eos >= -1 && eos < vocab && pad >= -1 && pad < vocab, "eos %d pad %d", eos, pad);
    size_t plen;
    for (int32_t i = 0; i < vocab; i++)
        FZ_CHECK(ts_spm_piece(m, i, &plen) != NULL, "piece %d has no spelling", i);
    FZ_CHECK(ts_spm_piece(m, vocab, &plen) == NULL && ts_spm_piece(m, -1, &plen) == NULL,
             "a piece outside the vocabulary");

    for (size_t k = 0; k < sizeof PROMPTS / sizeof PROMPTS[0]; k++) {
        int32_t *ids = NULL;
        int n = -1;
        rc = ts_spm_encode(m, PROMPTS[k].s, PROMPTS[k].n, &ids, &n, &err);
        if (rc) {
            FZ_CHECK(rc == TS_ERR_FORMAT && err.msg[0], "encode: rc %d: %s", rc, err.msg);
            continue;
        }
        for (int i = 0; i < n; i++)
            FZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d of %d", ids[i], vocab);
        free(ids);
        char *norm = NULL;
        size_t norm_len = 0;
        FZ_CHECK(ts_spm_normalize(m, PROMPTS[k].s, PROMPTS[k].n, &norm, &norm_len, &err) == 0,
                 "normalize failed where encode did not: %s", err.msg);
        FZ_CHECK(norm[norm_len] == '\0', "normalized text is not NUL-terminated");
        free(norm);
        if (eos >= 0 && pad >= 0 && !memchr(PROMPTS[k].s, '\0', PROMPTS[k].n)) {
            int32_t t5[16];
            uint8_t mask[16];
            int n_valid = 0;
            rc = ts_t5_tokenize(m, PROMPTS[k].s, 16, t5, mask, &n_valid, &err);
            FZ_CHECK(rc == TS_OK, "t5 tokenize: %s", err.msg);
            FZ_CHECK(n_valid >= 1 && n_valid <= 16 && t5[n_valid - 1] == eos, "n_valid %d",
                     n_valid);
            for (int i = n_valid; i < 16; i++) FZ_CHECK(t5[i] == pad && !mask[i], "pad %d", i);
        }
    }
    ts_spm_free(m);
    return 0;
}
