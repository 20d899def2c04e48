/* clip_tokenizer.h - CLIP's byte-level BPE text tokenizer (OpenAI CLIP's vocabulary, as
 * open_clip's SimpleTokenizer uses it for MaskGen's text encoder).
 *
 * Loading reads Tessera's clip_bpe.txt: one merge "a b" per line in rank order, no
 * header (tools write it from the official bpe_simple_vocab_16e6.txt.gz, of which CLIP
 * uses the 48894 merges after the header line). The vocabulary is then
 *   [0, 256)       the 256 byte symbols, in CLIP's bytes_to_unicode order
 *   [256, 512)     the same symbols ending a word ("</w>")
 *   [512, 512+M)   one entry per merge, in rank order
 *   512+M, 513+M   sot ("<|startoftext|>") and eot ("<|endoftext|>")
 * so vocab_size = 514 + M (49408 for CLIP). When one string appears twice, the later
 * id wins, as in upstream's dict.
 *
 * Encoding follows upstream step by step:
 *   1. cleanup (engine/text/clip_clean.h: a documented subset of ftfy.fix_text, then
 *      html.unescape twice, strip, whitespace runs to one space, str.lower);
 *   2. the split pattern (case-insensitive)
 *        <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *      where a special-token spelling in a prompt becomes that token's id;
 *   3. each piece's UTF-8 bytes as byte symbols, the last one marked "</w>", merged by
 *      lowest rank first, every occurrence left to right per step, until no pair of
 *      adjacent symbols is a merge (upstream's cache only memoizes this);
 *   4. open_clip's tokenize(): [sot] + ids + [eot]; when that exceeds context_length it
 *      is cut to context_length and the last slot set to eot; zeros pad the rest.
 * Letters, numbers and spaces are classified with Unicode 14 tables (Python 3.11's
 * unicodedata); code points only assigned in later Unicode versions count as "other"
 * here while the regex module may call them letters.
 *
 * Special-token spelling: OpenAI CLIP and open_clip before 2.21 spell the specials
 * "<|startoftext|>"/"<|endoftext|>" (TS_CLIP_SPECIALS_CLIP, ts_clip_tok_load's
 * choice); open_clip 2.21 and later spell them "<start_of_text>"/"<end_of_text>"
 * (TS_CLIP_SPECIALS_OPEN_CLIP). Ids are the same; only prompts containing one of these
 * strings tokenize differently.
 *
 * A loaded tokenizer is immutable: any number of threads may encode with it at once.
 * Each encode allocates its own working memory, linear in the input (bounded by
 * TS_CLIP_TOK_MAX_INPUT), and frees it before returning. No global state.
 */
#ifndef TS_TEXT_CLIP_TOKENIZER_H
#define TS_TEXT_CLIP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"

#define TS_CLIP_VOCAB_SIZE 49408          /* OpenAI CLIP's: 512 + 48894 merges + 2 */
#define TS_CLIP_CONTEXT_LENGTH 77
#define TS_CLIP_TOK_MAX_INPUT (16u << 10) /* bytes of UTF-8 one encode accepts */

typedef enum ts_clip_specials {
    TS_CLIP_SPECIALS_CLIP = 0,       /* "<|startoftext|>" / "<|endoftext|>" */
    TS_CLIP_SPECIALS_OPEN_CLIP = 1,  /* "<start_of_text>" / "<end_of_text>" */
} ts_clip_specials;

typedef struct ts_clip_tok ts_clip_tok;

/* Loads merges_path (clip_bpe.txt format; a final newline is optional, CRLF accepted).
 * expected_vocab_size > 0 refuses a file giving another size (TS_ERR_SHAPE, naming
 * both numbers); pass 0 to accept any. Malformed lines (not two symbols, or a symbol
 * that is not CLIP byte symbols with an optional trailing "</w>") are TS_ERR_FORMAT
 * naming the line number. On success *out owns everything; free with ts_clip_tok_free. */
int ts_clip_tok_load(const char *merges_path, int expected_vocab_size, ts_clip_tok **out,
                     ts_error *err);
/* The same with a choice of special-token spelling. */
int ts_clip_tok_load_ex(const char *merges_path, int expected_vocab_size,
                        ts_clip_specials specials, ts_clip_tok **out, ts_error *err);

void ts_clip_tok_free(ts_clip_tok *tok);   /* NULL-safe */

int ts_clip_tok_vocab_size(const ts_clip_tok *tok);
int32_t ts_clip_tok_sot(const ts_clip_tok *tok);   /* vocab_size - 2 */
int32_t ts_clip_tok_eot(const ts_clip_tok *tok);   /* vocab_size - 1 */

/* Encodes the NUL-terminated UTF-8 prompt into ids[0 .. context_length): sot, tokens,
 * eot, zero padding, truncated as open_clip does. context_length >= 1.
 * Errors: TS_ERR_INVALID for invalid UTF-8 (naming the byte offset) or for more than
 * TS_CLIP_TOK_MAX_INPUT bytes, TS_ERR_NOMEM. ids is untouched on error.
 * If n_tokens is non-NULL it receives the number of BPE tokens before truncation was
 * applied, capped at context_length - 1 (so > context_length - 2 means "truncated"). */
int ts_clip_tok_encode(const ts_clip_tok *tok, const char *utf8, int32_t *ids,
                       int context_length, ts_error *err);
/* The same for len bytes that need not be NUL-terminated (a NUL byte is an ordinary
 * control character, removed by the cleanup), reporting n_tokens as above. */
int ts_clip_tok_encode_n(const ts_clip_tok *tok, const char *utf8, size_t len,
                         int32_t *ids, int context_length, int *n_tokens, ts_error *err);

#endif
