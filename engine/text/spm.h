/* spm.h - SentencePiece unigram models (a `spiece.model` file) and T5's tokenizer on top,
 * for LlamaGen's text-to-image model (FLAN-T5-XL text encoder).
 *
 * What it is: a reader of sentencepiece's serialized ModelProto (a small protobuf
 * wire-format reader of our own, for the fields encoding needs), sentencepiece's
 * normalizer (the precompiled charsmap, a Darts-clone double-array trie plus a pool of
 * replacement strings; then the whitespace rules) and the unigram model's Viterbi
 * segmentation, reproducing what the sentencepiece library (checked against the
 * Python package 0.1.97) returns from EncodeAsIds, ids and ties included:
 *
 *   normalize: at each position, the longest USER_DEFINED piece is copied unchanged;
 *     else the longest charsmap key is replaced by its string; else one UTF-8
 *     character is copied (a byte that does not start valid UTF-8 becomes U+FFFD).
 *     remove_extra_whitespaces drops leading spaces (of the normalized text: a tab or
 *     U+3000 counts when the charsmap maps it to ' '), runs of spaces and trailing
 *     space symbols (even a "▁" typed in the prompt); add_dummy_prefix puts one space
 *     in front (behind with trainer_spec.treat_whitespace_as_suffix); escape_whitespaces
 *     writes every ' ' as U+2581 "▁". Empty input stays empty.
 *   segment: the path of maximum total score over the NORMAL and USER_DEFINED pieces
 *     (a USER_DEFINED piece of L bytes scores L * max_normal_score - 0.1, so it nearly
 *     always wins); a character no piece of one character covers becomes the unknown
 *     piece with score min_normal_score - 10. Sums and ties follow the library's float
 *     and double arithmetic (the earlier-starting piece wins a tie). CONTROL, UNUSED,
 *     UNKNOWN and BYTE pieces never match text.
 *   output: consecutive unknown pieces become one unknown id; with byte_fallback each
 *     unknown character becomes its UTF-8 bytes' <0xXX> pieces instead.
 *
 * Only UNIGRAM models load (BPE, WORD and CHAR models are refused). The loader refuses
 * what the library refuses (an empty or twice-defined piece, no or two UNKNOWN pieces,
 * no piece that can match text, BYTE pieces without byte_fallback or not spelled
 * <0xXX>, byte_fallback without all 256 of them) and, where the library would read out
 * of bounds or silently accept garbage, more: a malformed protobuf (truncated, overlong
 * varints, groups, a known field with the wrong wire type: the library would skip it),
 * an unknown piece type or model_type (the library would take NORMAL / UNIGRAM), a
 * non-finite score, a charsmap whose trie leads outside itself or whose replacement
 * strings are not NUL-terminated. Unknown fields are skipped. Every refusal is
 * TS_ERR_FORMAT (TS_ERR_UNSUPPORTED for another model type) with a message naming the
 * problem and, for the wire format, the byte offset; the loader is meant to be fed
 * hostile bytes. Charsmap keys longer than 256 bytes are not matched (the library has
 * no bound; nmt_nfkc's longest key is 10 bytes), so that a hostile trie cannot make
 * normalization quadratic.
 *
 * A loaded model is immutable: any number of threads may encode with it at once. Each
 * encode allocates its own working memory, linear in the input, and frees it. No
 * global state.
 */
#ifndef TS_TEXT_SPM_H
#define TS_TEXT_SPM_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"

#define TS_SPM_MAX_INPUT (64u << 10)      /* bytes of text one encode accepts */
#define TS_SPM_MAX_MODEL_BYTES (64u << 20) /* T5's spiece.model is 0.8 MB, mT5's 4.3 MB */
#define TS_T5_LLAMAGEN_MAX_LEN 120         /* LlamaGen's T5Embedder model_max_length */

typedef struct ts_spm ts_spm;

/* Loads a serialized sentencepiece ModelProto from a file, or from n bytes in memory
 * (copied: data may be freed after the call). On success *out owns everything; free it
 * with ts_spm_free. On failure *out is untouched and err says what is wrong. */
int ts_spm_load(const char *path, ts_spm **out, ts_error *err);
int ts_spm_load_mem(const void *data, size_t n, ts_spm **out, ts_error *err);
void ts_spm_free(ts_spm *m);   /* NULL-safe */

/* The number of pieces (GetPieceSize); ids are 0 .. vocab_size - 1. */
int ts_spm_vocab_size(const ts_spm *m);
/* The UNKNOWN piece's id (always exists). */
int32_t ts_spm_unk_id(const ts_spm *m);
/* As the library's eos_id() / pad_id(): the id of the CONTROL piece spelled
 * trainer_spec.eos_piece ("</s>" unless set) / pad_piece ("<pad>"), or -1 when there
 * is none. (trainer_spec's numeric eos_id / pad_id fields are not consulted: the
 * library does not either.) T5: eos 1, pad 0. */
int32_t ts_spm_eos_id(const ts_spm *m);
int32_t ts_spm_pad_id(const ts_spm *m);
/* The bytes of piece id (not NUL-terminated: *len bytes), or NULL when id is out of
 * range. Valid as long as m. */
const char *ts_spm_piece(const ts_spm *m, int32_t id, size_t *len);

/* The normalized text the model segments (see above): *out is malloc'd (free() it),
 * NUL-terminated after *out_len bytes. text need not be NUL-terminated (a NUL byte is
 * an ordinary character). Errors: TS_ERR_INVALID for more than TS_SPM_MAX_INPUT bytes,
 * TS_ERR_NOMEM, TS_ERR_FORMAT when a (hostile) charsmap inflates the text past 32x
 * TS_SPM_MAX_INPUT. */
int ts_spm_normalize(const ts_spm *m, const char *text, size_t len, char **out,
                     size_t *out_len, ts_error *err);

/* EncodeAsIds: the ids of len bytes of text (no bos/eos added). On success *ids is a
 * malloc'd array (free() it; never NULL, even when *n is 0) of *n ids. Errors as for
 * ts_spm_normalize; outputs untouched on error. */
int ts_spm_encode(const ts_spm *m, const char *text, size_t len, int32_t **ids, int *n,
                  ts_error *err);

/* What Hugging Face's T5Tokenizer returns for the NUL-terminated UTF-8 text with
 * max_length=max_len, padding="max_length", truncation=True, add_special_tokens=True:
 * the first max_len - 1 ids of ts_spm_encode, the eos id, then the pad id up to
 * max_len. ids and mask hold max_len entries: mask is 1 for the tokens and eos, 0 for
 * padding; *n_valid (may be NULL) = the number of ones (1 .. max_len).
 * max_len >= 1 (LlamaGen: TS_T5_LLAMAGEN_MAX_LEN). TS_ERR_UNSUPPORTED when the model
 * has no eos or pad piece; otherwise errors as ts_spm_encode; outputs untouched then.
 *
 * Differences from Hugging Face, all outside plain prompts:
 *  - Special-token text: HF first splits the prompt on its added tokens ("</s>",
 *    "<unk>", "<pad>" and the 100 "<extra_id_N>" it appends after the vocabulary,
 *    ids vocab_size + 99 - N), emitting their ids and, depending on the transformers
 *    version and its `legacy` flag, changing the whitespace around them. Here such
 *    text is ordinary text (e.g. "</s>" becomes "▁</", "s", ">" pieces), and no
 *    extra_id ever comes out.
 *  - HF's fast tokenizer (T5TokenizerFast, what AutoTokenizer gives for FLAN-T5)
 *    reimplements sentencepiece in Rust (splitting on "▁" before Viterbi, its own
 *    whitespace handling) and can differ on whitespace edge cases (tabs, newlines,
 *    runs of unusual spaces); this follows the sentencepiece library, i.e. the slow
 *    T5Tokenizer. */
int ts_t5_tokenize(const ts_spm *m, const char *text, int max_len, int32_t *ids,
                   uint8_t *mask, int *n_valid, ts_error *err);

#endif
