/* unicode.h - the few Unicode operations the CLIP tokenizer needs, on code point arrays.
 *
 * Each one reproduces the Python function named beside it (the data comes from
 * unicode_tables.c, generated from Python's unicodedata), so that text cleaned here
 * equals text cleaned by the upstream Python tokenizer. Strings are arrays of code
 * points (ts_cpbuf), never NUL-terminated; all functions are pure and thread-safe.
 */
#ifndef TS_TEXT_UNICODE_H
#define TS_TEXT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/text/unicode_tables.h"

/* A growable code point array. Owned by whoever holds it; release with ts_cpbuf_free. */
typedef struct ts_cpbuf {
    uint32_t *v;
    size_t n, cap;
} ts_cpbuf;

void ts_cpbuf_free(ts_cpbuf *b);
/* Makes room for `extra` more code points; 0, or -1 when out of memory. */
int ts_cpbuf_reserve(ts_cpbuf *b, size_t extra);
/* Appends; 0, or -1 when out of memory. */
int ts_cpbuf_push(ts_cpbuf *b, uint32_t cp);
int ts_cpbuf_append(ts_cpbuf *b, const uint32_t *cps, size_t n);
/* 1 when a and b hold the same code points. */
int ts_cpbuf_equal(const ts_cpbuf *a, const ts_cpbuf *b);
void ts_cpbuf_swap(ts_cpbuf *a, ts_cpbuf *b);

/* Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), as
 * Python's bytes.decode("utf-8") accepts it. Appends to out. Returns 0, -1 when out of
 * memory, or 1 when s is not valid UTF-8, with *bad_at the offset of the first bad byte. */
int ts_utf8_decode(const char *s, size_t len, ts_cpbuf *out, size_t *bad_at);
/* The byte count (1-4) of the valid character that starts s[0..n), n > 0, with its code
 * point in *cp; 0 when none starts there (the same strict rules). */
size_t ts_utf8_char(const unsigned char *s, size_t n, uint32_t *cp);
/* Writes cp's UTF-8 form (1-4 bytes) to out; returns the byte count. */
int ts_utf8_encode(uint32_t cp, unsigned char out[4]);

/* TS_UNI_LETTER / NUMBER / SPACE / SKIP / OTHER for CLIP's split pattern. */
int ts_uni_class_of(uint32_t cp);
/* str.isspace() for one character. */
int ts_uni_is_space(uint32_t cp);
/* unicodedata.combining(): the canonical combining class. */
int ts_uni_ccc(uint32_t cp);

/* out = str.lower(in): full mapping (U+0130 becomes "i" U+0307) and the Final_Sigma
 * rule for U+03A3, as CPython applies them. out must not alias in. 0 or -1 (memory). */
int ts_uni_lower(const ts_cpbuf *in, ts_cpbuf *out);
/* out = unicodedata.normalize("NFC", in). out must not alias in. 0 or -1 (memory). */
int ts_uni_nfc(const ts_cpbuf *in, ts_cpbuf *out);

#endif
