/* clip_clean.h - the text cleanup CLIP's tokenizer applies before splitting.
 *
 * Upstream (open_clip's SimpleTokenizer with clean="lower"; OpenAI CLIP is the same):
 *     text = ftfy.fix_text(text)
 *     text = html.unescape(html.unescape(text)).strip()
 *     text = " ".join(text.split()).lower()
 *
 * ts_clip_clean reproduces all of it except part of ftfy. Of ftfy.fix_text (6.x, default
 * settings) it reproduces, in ftfy's order, per line (a segment ends after each '\n'),
 * each line's fixes repeated until nothing changes (within a work budget, which only a
 * crafted chain of thousands of nested references such as "&amp;amp;amp;..." exhausts:
 * then the line keeps its last pass's result where ftfy would go on, one level per pass,
 * in quadratic time; see FTFY_WORK_MIN in clip_clean.c):
 *   - unescape_html: "&name;" for HTML5 entities, ftfy's upper-cased spellings
 *     ("&EACUTE;" -> "É"), and "&#N;" / "&#xH;" (kept as is when they decode to ';');
 *     like ftfy, only while no line so far has contained a '<';
 *   - fix_c1_controls: U+0080..U+009F read as Windows-1252 (undefined bytes stay);
 *   - fix_latin_ligatures: the 22 Latin ligatures and digraphs ftfy splits (U+FB00..
 *     U+FB06, IJ/ij, DZ/Dz/dz, DŽ/Dž/dž, LJ/Lj/lj, NJ/Nj/nj, ŉ);
 *   - fix_character_width: full-width and half-width forms U+FF01..U+FFEF to their
 *     NFKC form, U+3000 to a space;
 *   - uncurl_quotes: U+02BC and U+2018..U+201B to ', U+201C..U+201F to ";
 *   - fix_line_breaks: CRLF, CR, U+2028, U+2029, U+0085 to LF;
 *   - remove_terminal_escapes: ESC '[' [0-9;]* letter;
 *   - remove_control_chars: U+0000..0008, 000B, 000E..001F, 007F, 206A..206F, FEFF,
 *     FFF9..FFFC;
 *   - NFC normalization (full: decomposition, canonical order, composition).
 * It does NOT reproduce:
 *   - fix_encoding (mojibake repair such as "cafÃ©" -> "café") and its sub-steps
 *     (restore_byte_a0, replace_lossy_sequences, decode_inconsistent_utf8): such text
 *     is tokenized as written, where ftfy would usually repair it first;
 *   - remove_terminal_escapes' Unicode digits: ftfy's \d also accepts non-ASCII
 *     decimal digits inside an escape sequence; here only 0-9;
 *   - fix_surrogates (valid UTF-8 cannot carry surrogates).
 * html.unescape is reproduced fully (all HTML5 entities, with and without ';',
 * longest-prefix matching for legacy names, numeric references with Python's
 * replacements and dropped code points); the one divergence is that a decimal
 * reference with more than 4300 digits, which makes Python raise, gives U+FFFD here.
 * Whitespace is str.isspace(); lower-casing is str.lower() (full mapping, final sigma).
 * Tables are generated from Python 3.11 (Unicode 14), see unicode_tables.h.
 *
 * All functions are pure (no global state) and thread-safe; out must not alias in.
 * They return 0, or -1 when out of memory.
 */
#ifndef TS_TEXT_CLIP_CLEAN_H
#define TS_TEXT_CLIP_CLEAN_H

#include "engine/text/unicode.h"

/* The whole cleanup above. */
int ts_clip_clean(const ts_cpbuf *in, ts_cpbuf *out);

/* The reproduced subset of ftfy.fix_text alone. */
int ts_ftfy_fix_subset(const ts_cpbuf *in, ts_cpbuf *out);

/* Python's html.unescape, once. */
int ts_html_unescape(const ts_cpbuf *in, ts_cpbuf *out);

#endif
