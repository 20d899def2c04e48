/* spm.c - SentencePiece unigram models: the ModelProto reader, the normalizer (charsmap
 * trie and whitespace rules), the Viterbi segmentation and T5's wrapper. See spm.h for
 * the behaviour reproduced; the comments here say how. */
#include "engine/text/spm.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* sentencepiece_model.proto's SentencePiece.Type */
enum {
    PIECE_NORMAL = 1,
    PIECE_UNKNOWN = 2,
    PIECE_CONTROL = 3,
    PIECE_USER = 4,     /* USER_DEFINED */
    PIECE_UNUSED = 5,
    PIECE_BYTE = 6,
};

/* TrainerSpec.ModelType */
enum { MODEL_UNIGRAM = 1, MODEL_BPE = 2, MODEL_WORD = 3, MODEL_CHAR = 4 };

#define UNK_PENALTY 10.0f                   /* unknown piece: min score - this */
#define MAX_NORMALIZED (32u * TS_SPM_MAX_INPUT)
static const char k_space_symbol[] = "\xe2\x96\x81";   /* U+2581 */
static const char k_replacement[] = "\xef\xbf\xbd";    /* U+FFFD */

typedef struct spm_piece {
    uint32_t off, len;   /* bytes in ts_spm.bytes */
    float score;
    uint8_t type;        /* PIECE_* */
} spm_piece;

struct ts_spm {
    int n_pieces;
    spm_piece *pieces;     /* [n_pieces], in id order */
    char *bytes;           /* every piece's bytes, back to back */
    /* id lists sorted by piece bytes (memcmp order, a prefix before its extensions):
     * vocab = NORMAL, USER_DEFINED and UNUSED pieces (what text can match; the
     * library's "pieces_" map), reserved = CONTROL, UNKNOWN and BYTE, user = the
     * USER_DEFINED ones (the normalizer's prefix matcher). */
    int32_t *vocab, *reserved, *user;
    int n_vocab, n_reserved, n_user;
    int32_t unk, eos, pad;
    int byte_fallback;
    int32_t byte_id[256];  /* <0xXX> piece ids when byte_fallback */
    float min_score;       /* over NORMAL pieces; FLT_MAX when there is none */
    float max_score;       /* over NORMAL pieces, starting from FLT_MIN as the library */
    /* normalizer */
    int add_dummy_prefix, remove_extra_ws, escape_ws, ws_suffix;
    uint32_t *units;       /* the charsmap's double-array trie; NULL: identity */
    size_t n_units;
    char *pool;            /* NUL-terminated replacement strings */
    size_t pool_len;
};

/* ---- protobuf wire format ---------------------------------------------------------- */

typedef struct pb_reader {
    const uint8_t *p, *end;
    const uint8_t *base;   /* start of the whole file, for offsets in messages */
} pb_reader;

typedef struct pb_field {
    uint32_t num;
    int wire;                /* 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 */
    uint64_t v;              /* varint or fixed value */
    const uint8_t *data;     /* wire 2: the payload */
    size_t len;
    size_t at;               /* offset of the tag in the file */
} pb_field;

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

static int pb_varint(pb_reader *r, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end)
            return -1;   /* truncated */
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1)
            return -2;   /* more than 64 bits */
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -2;
}

/* Reads the next field of r into f: 1 for a field, 0 at the end, or an error naming
 * where (the message `what`) and the file offset. */
static int pb_next(pb_reader *r, pb_field *f, const char *what, ts_error *err)
{
    if (r->p >= r->end)
        return 0;
    f->at = (size_t)(r->p - r->base);
    uint64_t tag;
    int rc = pb_varint(r, &tag);
    if (rc)
        return ts_fail(err, TS_ERR_FORMAT, "model: %s: %s field tag at byte %zu", what,
                       rc == -1 ? "truncated" : "overlong", f->at);
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return ts_fail(err, TS_ERR_FORMAT, "model: %s: invalid field number %llu at byte %zu",
                       what, (unsigned long long)(tag >> 3), f->at);
    f->num = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    f->data = NULL;
    f->len = 0;
    f->v = 0;
    switch (f->wire) {
    case WIRE_VARINT:
        rc = pb_varint(r, &f->v);
        if (rc)
            return ts_fail(err, TS_ERR_FORMAT, "model: %s: field %u at byte %zu: %s varint",
                           what, f->num, f->at, rc == -1 ? "truncated" : "overlong");
        return 1;
    case WIRE_FIXED64:
    case WIRE_FIXED32: {
        size_t n = f->wire == WIRE_FIXED64 ? 8 : 4;
        if ((size_t)(r->end - r->p) < n)
            return ts_fail(err, TS_ERR_FORMAT, "model: %s: field %u at byte %zu: truncated "
                           "fixed%zu value", what, f->num, f->at, n * 8);
        for (size_t i = 0; i < n; i++)
            f->v |= (uint64_t)r->p[i] << (8 * i);
        r->p += n;
        return 1;
    }
    case WIRE_LEN: {
        uint64_t n;
        rc = pb_varint(r, &n);
        if (rc)
            return ts_fail(err, TS_ERR_FORMAT, "model: %s: field %u at byte %zu: %s length",
                           what, f->num, f->at, rc == -1 ? "truncated" : "overlong");
        if (n > (uint64_t)(r->end - r->p))
            return ts_fail(err, TS_ERR_FORMAT, "model: %s: field %u at byte %zu: length %llu "
                           "runs past the end (%zu bytes left)", what, f->num, f->at,
                           (unsigned long long)n, (size_t)(r->end - r->p));
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 1;
    }
    default:
        return ts_fail(err, TS_ERR_FORMAT, "model: %s: field %u at byte %zu: %s wire type %d",
                       what, f->num, f->at, f->wire == 3 || f->wire == 4 ? "unsupported group"
                                                                         : "invalid", f->wire);
    }
}

/* A known field must come with its declared wire type. */
static int pb_want(const pb_field *f, int wire, const char *what, const char *name,
                   ts_error *err)
{
    static const char *const names[] = {"varint", "fixed64", "length-delimited", "group",
                                        "group", "fixed32", "?", "?"};
    if (f->wire == wire)
        return TS_OK;
    return ts_fail(err, TS_ERR_FORMAT, "model: %s.%s (field %u at byte %zu) has wire type %s, "
                   "expected %s", what, name, f->num, f->at, names[f->wire & 7], names[wire]);
}

static pb_reader pb_sub(const pb_reader *parent, const pb_field *f)
{
    return (pb_reader){f->data, f->data + f->len, parent->base};
}

/* ---- loading ----------------------------------------------------------------------- */

typedef struct str_ref {
    const uint8_t *p;
    size_t len;
} str_ref;

/* What the loader gathers before building the model; points into the input bytes. */
typedef struct spec {
    int model_type, byte_fallback, ws_suffix;
    str_ref eos_piece, pad_piece;
    int add_dummy_prefix, remove_extra_ws, escape_ws;
    str_ref charsmap;
} spec;

static int parse_piece(const pb_reader *top, const pb_field *pf, int id, ts_spm *m,
                       size_t *bytes_used, ts_error *err)
{
    char what[48];
    snprintf(what, sizeof what, "pieces[%d]", id);
    pb_reader r = pb_sub(top, pf);
    pb_field f;
    str_ref text = {NULL, 0};
    float score = 0.0f;
    uint64_t type = PIECE_NORMAL;
    int rc;
    while ((rc = pb_next(&r, &f, what, err)) == 1) {
        switch (f.num) {
        case 1:
            if ((rc = pb_want(&f, WIRE_LEN, what, "piece", err)))
                return rc;
            text = (str_ref){f.data, f.len};
            break;
        case 2: {
            if ((rc = pb_want(&f, WIRE_FIXED32, what, "score", err)))
                return rc;
            uint32_t bits = (uint32_t)f.v;
            memcpy(&score, &bits, sizeof score);
            break;
        }
        case 3:
            if ((rc = pb_want(&f, WIRE_VARINT, what, "type", err)))
                return rc;
            type = f.v;
            break;
        default:
            break;   /* unknown fields are skipped */
        }
    }
    if (rc < 0)
        return rc;
    if (text.len == 0)
        return ts_fail(err, TS_ERR_FORMAT, "model: piece %d is empty", id);
    if (type < PIECE_NORMAL || type > PIECE_BYTE)
        return ts_fail(err, TS_ERR_FORMAT, "model: piece %d has unknown type %llu", id,
                       (unsigned long long)type);
    if (!isfinite(score))
        return ts_fail(err, TS_ERR_FORMAT, "model: piece %d has a non-finite score", id);
    spm_piece *p = &m->pieces[id];
    p->off = (uint32_t)*bytes_used;
    p->len = (uint32_t)text.len;
    p->score = score;
    p->type = (uint8_t)type;
    memcpy(m->bytes + *bytes_used, text.p, text.len);
    *bytes_used += text.len;
    return TS_OK;
}

static int parse_bool(const pb_field *f, const char *what, const char *name, int *out,
                      ts_error *err)
{
    int rc = pb_want(f, WIRE_VARINT, what, name, err);
    if (rc == TS_OK)
        *out = f->v != 0;
    return rc;
}

/* TrainerSpec: the model type, byte_fallback, treat_whitespace_as_suffix and the
 * eos/pad spellings. A second trainer_spec merges into the first (protobuf rules). */
static int parse_trainer(const pb_reader *top, const pb_field *tf, spec *s, ts_error *err)
{
    static const char what[] = "trainer_spec";
    pb_reader r = pb_sub(top, tf);
    pb_field f;
    int rc;
    while ((rc = pb_next(&r, &f, what, err)) == 1) {
        switch (f.num) {
        case 3:
            if ((rc = pb_want(&f, WIRE_VARINT, what, "model_type", err)))
                return rc;
            if (f.v < MODEL_UNIGRAM || f.v > MODEL_CHAR)
                return ts_fail(err, TS_ERR_FORMAT, "model: trainer_spec.model_type %llu is "
                               "unknown", (unsigned long long)f.v);
            s->model_type = (int)f.v;
            break;
        case 24:
            if ((rc = parse_bool(&f, what, "treat_whitespace_as_suffix", &s->ws_suffix, err)))
                return rc;
            break;
        case 35:
            if ((rc = parse_bool(&f, what, "byte_fallback", &s->byte_fallback, err)))
                return rc;
            break;
        case 47:
        case 48:
            if ((rc = pb_want(&f, WIRE_LEN, what, f.num == 47 ? "eos_piece" : "pad_piece",
                              err)))
                return rc;
            *(f.num == 47 ? &s->eos_piece : &s->pad_piece) = (str_ref){f.data, f.len};
            break;
        default:
            break;   /* training options; unk_id .. pad_id (40-43) are not used either */
        }
    }
    return rc < 0 ? rc : TS_OK;
}

static int parse_normalizer(const pb_reader *top, const pb_field *nf, spec *s, ts_error *err)
{
    static const char what[] = "normalizer_spec";
    pb_reader r = pb_sub(top, nf);
    pb_field f;
    int rc;
    while ((rc = pb_next(&r, &f, what, err)) == 1) {
        switch (f.num) {
        case 1:
            if ((rc = pb_want(&f, WIRE_LEN, what, "name", err)))
                return rc;
            break;
        case 2:
            if ((rc = pb_want(&f, WIRE_LEN, what, "precompiled_charsmap", err)))
                return rc;
            s->charsmap = (str_ref){f.data, f.len};
            break;
        case 3:
            if ((rc = parse_bool(&f, what, "add_dummy_prefix", &s->add_dummy_prefix, err)))
                return rc;
            break;
        case 4:
            if ((rc = parse_bool(&f, what, "remove_extra_whitespaces", &s->remove_extra_ws,
                                 err)))
                return rc;
            break;
        case 5:
            if ((rc = parse_bool(&f, what, "escape_whitespaces", &s->escape_ws, err)))
                return rc;
            break;
        default:
            break;
        }
    }
    return rc < 0 ? rc : TS_OK;
}

/* ---- the charsmap's double-array trie (Darts-clone layout) --------------------------
 * Each 32-bit unit: bit 31 marks a leaf unit, whose low 31 bits are the value (here an
 * offset into the pool); otherwise bits 0-7 are the label of the edge into this unit,
 * bit 8 says the node has a leaf child (at its children's base, label 0), bit 9 scales
 * the offset (bits 10-31) by 256. A node's children sit at base ^ label with
 * base = position ^ offset; the root is unit 0. */

static inline uint32_t unit_label(uint32_t u) { return u & 0x800000ffu; }
static inline int unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t unit_value(uint32_t u) { return u & 0x7fffffffu; }
static inline size_t unit_offset(uint32_t u)
{
    return (size_t)(u >> 10) << ((u & (1u << 9)) >> 6);
}

/* Decodes the blob (uint32 LE trie size, the trie, the pool) and visits every unit
 * reachable from the root once (the graph is a DAG: Darts-clone shares equal suffix
 * subtrees; a hostile cycle ends the walk too), checking that each leaf points at a
 * string inside the pool: afterwards, lookups need no checks beyond the array bounds. */
static int charsmap_load(ts_spm *m, str_ref blob, ts_error *err)
{
    if (blob.len == 0)
        return TS_OK;   /* identity normalization */
    if (blob.len <= 4)
        return ts_fail(err, TS_ERR_FORMAT, "model: precompiled_charsmap is %zu bytes, too "
                       "short for its header", blob.len);
    uint32_t trie_size = (uint32_t)blob.p[0] | (uint32_t)blob.p[1] << 8 |
                         (uint32_t)blob.p[2] << 16 | (uint32_t)blob.p[3] << 24;
    if (trie_size == 0 || trie_size % 4 != 0 || trie_size > blob.len - 4)
        return ts_fail(err, TS_ERR_FORMAT, "model: precompiled_charsmap: trie size %u is not "
                       "a positive multiple of 4 within the %zu bytes after the header",
                       trie_size, blob.len - 4);
    m->n_units = trie_size / 4;
    m->pool_len = blob.len - 4 - trie_size;
    m->units = malloc(m->n_units * sizeof *m->units);
    m->pool = malloc(m->pool_len + 1);
    if (!m->units || !m->pool)
        return ts_fail(err, TS_ERR_NOMEM, "model: out of memory for the charsmap");
    for (size_t i = 0; i < m->n_units; i++) {
        const uint8_t *q = blob.p + 4 + 4 * i;
        m->units[i] = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
                      (uint32_t)q[3] << 24;
    }
    memcpy(m->pool, blob.p + 4 + trie_size, m->pool_len);
    m->pool[m->pool_len] = '\0';
    if (m->pool_len > 0 && m->pool[m->pool_len - 1] != '\0')
        return ts_fail(err, TS_ERR_FORMAT, "model: precompiled_charsmap: the replacement "
                       "strings do not end with a NUL");

    size_t n = m->n_units;
    uint8_t *seen = calloc(n, 1);
    size_t *stack = malloc((n + 1) * sizeof *stack);
    int rc = TS_OK;
    if (!seen || !stack) {
        rc = ts_fail(err, TS_ERR_NOMEM, "model: out of memory checking the charsmap");
        goto done;
    }
    /* The root is not marked seen: unit 0 can also be a node (the child of the root for
     * label base ^ 0 == 0 when the root's base is below 256), and lookups then read its
     * leaf, which must be checked like any other (found by tests/fuzz/fuzz_spm_model.c:
     * a one-unit trie read the pool out of bounds). The root's base may then be pushed a
     * second time, which visits nothing new: top <= n + 1 still. */
    size_t top = 0;
    stack[top++] = unit_offset(m->units[0]);
    while (top > 0 && rc == TS_OK) {
        size_t base = stack[--top];
        for (unsigned c = 0; c < 256; c++) {
            size_t pos = base ^ c;
            if (pos >= n || unit_label(m->units[pos]) != c)
                continue;
            if (seen[pos])
                continue;   /* shared suffixes: Darts-clone builds from a DAWG */
            seen[pos] = 1;
            size_t child = pos ^ unit_offset(m->units[pos]);
            if (unit_has_leaf(m->units[pos]) && child >= n) {
                rc = ts_fail(err, TS_ERR_FORMAT, "model: precompiled_charsmap: trie unit %zu's "
                             "leaf lies outside the %zu-unit trie", pos, n);
                break;
            }
            if (unit_has_leaf(m->units[pos]) && unit_value(m->units[child]) >= m->pool_len) {
                rc = ts_fail(err, TS_ERR_FORMAT, "model: precompiled_charsmap: trie unit %zu's "
                             "value lies outside the %zu-byte pool", pos, m->pool_len);
                break;
            }
            stack[top++] = child;   /* at most one push per unit: top <= n + 1 */
        }
    }
done:
    free(seen);
    free(stack);
    return rc;
}

/* Longest charsmap key that prefixes s[0..len): its length (0: none), *value the pool
 * offset of its replacement. Keys longer than CHARSMAP_MAX_KEY bytes are not looked
 * for: the library has no such bound, but real charsmaps' keys are short (nmt_nfkc's
 * longest is 10 bytes) and a hostile trie with long chains or loops would otherwise
 * make every position scan the rest of the text. */
#define CHARSMAP_MAX_KEY 256
static size_t charsmap_match(const ts_spm *m, const uint8_t *s, size_t len, uint32_t *value)
{
    size_t best = 0, pos = unit_offset(m->units[0]);
    if (len > CHARSMAP_MAX_KEY)
        len = CHARSMAP_MAX_KEY;
    for (size_t i = 0; i < len; i++) {
        pos ^= s[i];
        if (pos >= m->n_units)
            break;
        uint32_t u = m->units[pos];
        if (unit_label(u) != s[i])
            break;
        pos ^= unit_offset(u);
        if (unit_has_leaf(u) && pos < m->n_units) {
            best = i + 1;
            *value = unit_value(m->units[pos]);
        }
    }
    return best;
}

/* ---- pieces sorted by bytes ------------------------------------------------------- */

static int cmp_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

static inline const uint8_t *piece_bytes(const ts_spm *m, int32_t id)
{
    return (const uint8_t *)m->bytes + m->pieces[id].off;
}

/* Sorts ids by their pieces' bytes, equal ones by id (a merge sort: qsort has no
 * context argument, and a global one would not be thread-safe). */
static void sort_ids(const ts_spm *m, int32_t *ids, int32_t *tmp, int n)
{
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n;
            int hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int32_t a = ids[i], b = ids[j];
                int c = cmp_bytes(piece_bytes(m, a), m->pieces[a].len, piece_bytes(m, b),
                                  m->pieces[b].len);
                tmp[k++] = (c < 0 || (c == 0 && a < b)) ? ids[i++] : ids[j++];
            }
            while (i < mid)
                tmp[k++] = ids[i++];
            while (j < hi)
                tmp[k++] = ids[j++];
        }
        memcpy(ids, tmp, (size_t)n * sizeof *ids);
    }
}

/* The id in sorted list ids[0..n) whose piece is exactly s[0..len), or -1. */
static int32_t find_piece(const ts_spm *m, const int32_t *ids, int n, const uint8_t *s,
                          size_t len)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = cmp_bytes(piece_bytes(m, ids[mid]), m->pieces[ids[mid]].len, s, len);
        if (c == 0)
            return ids[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Walks the pieces that start with a growing prefix of some text, one byte at a time,
 * over a sorted id list: [lo, hi) holds the pieces whose first `depth` bytes equal the
 * prefix; the one equal to it, if any, comes first. A trie in O(log n) per byte, with
 * no structure beyond the sorted list. */
typedef struct prefix_walk {
    const ts_spm *m;
    const int32_t *ids;
    size_t lo, hi, depth;
} prefix_walk;

#define WALK_END (-2)   /* no piece starts with the prefix any more */

/* Extends the prefix by c: the id of the piece equal to the new prefix, -1 when there
 * is none, or WALK_END. */
static int32_t walk_step(prefix_walk *w, uint8_t c)
{
    const ts_spm *m = w->m;
    size_t d = w->depth, lo = w->lo, hi = w->hi;
    if (lo < hi && m->pieces[w->ids[lo]].len == d)
        lo++;   /* the piece equal to the old prefix has no byte d */
    size_t a = lo, b = hi;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (piece_bytes(m, w->ids[mid])[d] < c)
            a = mid + 1;
        else
            b = mid;
    }
    size_t first = a;
    b = hi;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (piece_bytes(m, w->ids[mid])[d] <= c)
            a = mid + 1;
        else
            b = mid;
    }
    w->lo = first;
    w->hi = a;
    w->depth = d + 1;
    if (first == a)
        return WALK_END;
    int32_t id = w->ids[first];
    return m->pieces[id].len == d + 1 ? id : -1;
}

static int32_t byte_piece_value(const uint8_t *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
    if (!hi || !lo)
        return -1;
    return (int32_t)((hi - hex) * 16 + (lo - hex));
}

/* The id of the CONTROL piece spelled s (the library's PieceToId + IsControl), or -1. */
static int32_t control_id(const ts_spm *m, str_ref s)
{
    int32_t id = find_piece(m, m->reserved, m->n_reserved, s.p, s.len);
    return id >= 0 && m->pieces[id].type == PIECE_CONTROL ? id : -1;
}

/* Sorts the three id lists and checks them as the library's InitializePieces does. */
static int build_index(ts_spm *m, const spec *s, ts_error *err)
{
    int n = m->n_pieces;
    m->vocab = malloc((size_t)(n ? n : 1) * sizeof *m->vocab);
    m->reserved = malloc((size_t)(n ? n : 1) * sizeof *m->reserved);
    m->user = malloc((size_t)(n ? n : 1) * sizeof *m->user);
    int32_t *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    if (!m->vocab || !m->reserved || !m->user || !tmp) {
        free(tmp);
        return ts_fail(err, TS_ERR_NOMEM, "model: out of memory for %d pieces", n);
    }
    int rc = TS_OK;
    int have_byte[256] = {0};
    m->unk = -1;
    m->min_score = FLT_MAX;
    m->max_score = FLT_MIN;
    for (int i = 0; i < n && rc == TS_OK; i++) {
        const spm_piece *p = &m->pieces[i];
        switch (p->type) {
        case PIECE_NORMAL:
            m->min_score = fminf(m->min_score, p->score);
            m->max_score = fmaxf(m->max_score, p->score);
            m->vocab[m->n_vocab++] = i;
            break;
        case PIECE_USER:
            m->user[m->n_user++] = i;
            m->vocab[m->n_vocab++] = i;
            break;
        case PIECE_UNUSED:
            m->vocab[m->n_vocab++] = i;
            break;
        case PIECE_UNKNOWN:
            if (m->unk >= 0)
                rc = ts_fail(err, TS_ERR_FORMAT, "model: pieces %d and %d are both UNKNOWN",
                             m->unk, i);
            m->unk = i;
            m->reserved[m->n_reserved++] = i;
            break;
        case PIECE_BYTE: {
            int32_t b = byte_piece_value(piece_bytes(m, i), p->len);
            if (!s->byte_fallback)
                rc = ts_fail(err, TS_ERR_FORMAT, "model: piece %d is a BYTE piece although "
                             "trainer_spec.byte_fallback is false", i);
            else if (b < 0)
                rc = ts_fail(err, TS_ERR_FORMAT, "model: BYTE piece %d is not spelled <0xXX>",
                             i);
            else {
                have_byte[b] = 1;
                m->byte_id[b] = i;
            }
            m->reserved[m->n_reserved++] = i;
            break;
        }
        default:   /* PIECE_CONTROL */
            m->reserved[m->n_reserved++] = i;
            break;
        }
    }
    if (rc == TS_OK && m->unk < 0)
        rc = ts_fail(err, TS_ERR_FORMAT, "model: no piece is of type UNKNOWN");
    for (int b = 0; rc == TS_OK && s->byte_fallback && b < 256; b++)
        if (!have_byte[b])
            rc = ts_fail(err, TS_ERR_FORMAT, "model: trainer_spec.byte_fallback is true but "
                         "there is no <0x%02X> BYTE piece", b);
    if (rc == TS_OK) {
        sort_ids(m, m->vocab, tmp, m->n_vocab);
        sort_ids(m, m->reserved, tmp, m->n_reserved);
        sort_ids(m, m->user, tmp, m->n_user);
        const int32_t *lists[2] = {m->vocab, m->reserved};
        const int sizes[2] = {m->n_vocab, m->n_reserved};
        for (int l = 0; l < 2 && rc == TS_OK; l++)
            for (int i = 1; i < sizes[l]; i++) {
                int32_t a = lists[l][i - 1], b = lists[l][i];
                if (m->pieces[a].len == m->pieces[b].len &&
                    memcmp(piece_bytes(m, a), piece_bytes(m, b), m->pieces[a].len) == 0) {
                    rc = ts_fail(err, TS_ERR_FORMAT, "model: pieces %d and %d are the same "
                                 "string \"%.*s\"", (int)a, (int)b,
                                 (int)(m->pieces[a].len > 40 ? 40 : m->pieces[a].len),
                                 piece_bytes(m, a));
                    break;
                }
            }
    }
    if (rc == TS_OK && m->n_vocab == 0)
        rc = ts_fail(err, TS_ERR_FORMAT, "model: no NORMAL, USER_DEFINED or UNUSED piece "
                     "(the library refuses a model with nothing to match text)");
    free(tmp);
    return rc;
}

int ts_spm_load_mem(const void *data, size_t n, ts_spm **out, ts_error *err)
{
    if (!out || (!data && n))
        return ts_fail(err, TS_ERR_INVALID, "ts_spm_load_mem: NULL argument");
    if (n > TS_SPM_MAX_MODEL_BYTES)
        return ts_fail(err, TS_ERR_FORMAT, "model: %zu bytes is more than the %u accepted", n,
                       TS_SPM_MAX_MODEL_BYTES);
    const uint8_t *bytes = n ? data : (const uint8_t *)"";
    pb_reader top = {bytes, bytes + n, bytes};
    pb_field f;
    int rc;

    /* Pass 1: frame the top level, count the pieces and their bytes. */
    size_t n_pieces = 0, piece_bytes_total = 0;
    while ((rc = pb_next(&top, &f, "ModelProto", err)) == 1) {
        if (f.num >= 1 && f.num <= 3 &&
            (rc = pb_want(&f, WIRE_LEN, "ModelProto",
                          f.num == 1 ? "pieces" : f.num == 2 ? "trainer_spec" : "normalizer_spec",
                          err)))
            return rc;
        if (f.num == 1) {
            n_pieces++;
            piece_bytes_total += f.len;
        }
    }
    if (rc < 0)
        return rc;
    if (n_pieces > INT32_MAX / 2)
        return ts_fail(err, TS_ERR_FORMAT, "model: too many pieces");

    ts_spm *m = calloc(1, sizeof *m);
    if (!m)
        return ts_fail(err, TS_ERR_NOMEM, "model: out of memory");
    m->n_pieces = (int)n_pieces;
    m->pieces = calloc(n_pieces ? n_pieces : 1, sizeof *m->pieces);
    m->bytes = malloc(piece_bytes_total ? piece_bytes_total : 1);
    if (!m->pieces || !m->bytes) {
        rc = ts_fail(err, TS_ERR_NOMEM, "model: out of memory for %zu pieces", n_pieces);
        goto fail;
    }

    /* Pass 2: the fields, with proto2 defaults. */
    spec s = {.model_type = MODEL_UNIGRAM,
              .eos_piece = {(const uint8_t *)"</s>", 4},
              .pad_piece = {(const uint8_t *)"<pad>", 5},
              .add_dummy_prefix = 1, .remove_extra_ws = 1, .escape_ws = 1};
    top = (pb_reader){bytes, bytes + n, bytes};
    size_t used = 0;
    int id = 0;
    while ((rc = pb_next(&top, &f, "ModelProto", err)) == 1) {
        if (f.num == 1)
            rc = parse_piece(&top, &f, id++, m, &used, err);
        else if (f.num == 2)
            rc = parse_trainer(&top, &f, &s, err);
        else if (f.num == 3)
            rc = parse_normalizer(&top, &f, &s, err);
        else
            rc = TS_OK;   /* self_test_data, denormalizer_spec, unknown fields */
        if (rc)
            goto fail;
    }
    if (rc < 0)
        goto fail;
    if (s.model_type != MODEL_UNIGRAM) {
        static const char *const names[] = {"", "UNIGRAM", "BPE", "WORD", "CHAR"};
        rc = ts_fail(err, TS_ERR_UNSUPPORTED, "model: trainer_spec.model_type is %s; only "
                     "UNIGRAM models are supported", names[s.model_type]);
        goto fail;
    }
    m->byte_fallback = s.byte_fallback;
    m->ws_suffix = s.ws_suffix;
    m->add_dummy_prefix = s.add_dummy_prefix;
    m->remove_extra_ws = s.remove_extra_ws;
    m->escape_ws = s.escape_ws;
    if ((rc = build_index(m, &s, err)) || (rc = charsmap_load(m, s.charsmap, err)))
        goto fail;
    m->eos = control_id(m, s.eos_piece);
    m->pad = control_id(m, s.pad_piece);
    *out = m;
    return TS_OK;
fail:
    ts_spm_free(m);
    return rc;
}

int ts_spm_load(const char *path, ts_spm **out, ts_error *err)
{
    if (!path || !out)
        return ts_fail(err, TS_ERR_INVALID, "ts_spm_load: NULL argument");
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return ts_fail(err, TS_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return ts_fail(err, TS_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > TS_SPM_MAX_MODEL_BYTES) {
        fclose(fp);
        return ts_fail(err, TS_ERR_FORMAT, "%s: %lld bytes is more than the %u accepted", path,
                       (long long)st.st_size, TS_SPM_MAX_MODEL_BYTES);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(fp);
        return ts_fail(err, TS_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got = n ? fread(buf, 1, n, fp) : 0;
    int read_error = ferror(fp);
    fclose(fp);
    if (got != n || read_error) {
        free(buf);
        return ts_fail(err, TS_ERR_IO, "%s: short read", path);
    }
    ts_error inner;
    int rc = ts_spm_load_mem(buf, n, out, &inner);
    free(buf);
    if (rc)
        return ts_fail(err, rc, "%s: %s", path, inner.msg);
    return TS_OK;
}

void ts_spm_free(ts_spm *m)
{
    if (!m)
        return;
    free(m->pieces);
    free(m->bytes);
    free(m->vocab);
    free(m->reserved);
    free(m->user);
    free(m->units);
    free(m->pool);
    free(m);
}

int ts_spm_vocab_size(const ts_spm *m) { return m->n_pieces; }
int32_t ts_spm_unk_id(const ts_spm *m) { return m->unk; }
int32_t ts_spm_eos_id(const ts_spm *m) { return m->eos; }
int32_t ts_spm_pad_id(const ts_spm *m) { return m->pad; }

const char *ts_spm_piece(const ts_spm *m, int32_t id, size_t *len)
{
    if (id < 0 || id >= m->n_pieces)
        return NULL;
    if (len)
        *len = m->pieces[id].len;
    return m->bytes + m->pieces[id].off;
}

/* ---- normalization ----------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static int sbuf_put(sbuf *b, const char *s, size_t n)
{
    if (n > MAX_NORMALIZED - b->n)
        return TS_ERR_FORMAT;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return TS_ERR_NOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return TS_OK;
}

/* The library's OneCharLen: the length a UTF-8 lead byte announces (1 for anything
 * else). */
static size_t one_char_len(uint8_t c)
{
    return c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf8 ? 4 : 1;
}

/* Length of the valid UTF-8 character at s (no overlong forms, surrogates or code
 * points above U+10FFFF), or 0 when s does not start one. */
static size_t utf8_valid_len(const uint8_t *s, size_t len)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0)
        n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        n = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* The library's NormalizePrefix: what the text at s[0..len) (len > 0) becomes and how
 * many bytes that consumes. */
static void normalize_prefix(const ts_spm *m, const uint8_t *s, size_t len, const char **rep,
                             size_t *rep_len, size_t *consumed)
{
    if (m->n_user > 0) {   /* USER_DEFINED pieces pass unchanged, longest first */
        prefix_walk w = {m, m->user, 0, (size_t)m->n_user, 0};
        size_t best = 0;
        for (size_t i = 0; i < len; i++) {
            int32_t id = walk_step(&w, s[i]);
            if (id == WALK_END)
                break;
            if (id >= 0)
                best = i + 1;
        }
        if (best) {
            *rep = (const char *)s;
            *rep_len = *consumed = best;
            return;
        }
    }
    uint32_t value = 0;
    size_t n = m->units ? charsmap_match(m, s, len, &value) : 0;
    if (n) {
        *rep = m->pool + value;   /* NUL-terminated inside the pool (checked at load) */
        *rep_len = strlen(*rep);
        *consumed = n;
        return;
    }
    n = utf8_valid_len(s, len);
    if (n) {
        *rep = (const char *)s;
        *rep_len = *consumed = n;
    } else {
        *rep = k_replacement;
        *rep_len = 3;
        *consumed = 1;
    }
}

static int normalize(const ts_spm *m, const uint8_t *s, size_t len, sbuf *out)
{
    const char *space = m->escape_ws ? k_space_symbol : " ";
    const size_t space_len = m->escape_ws ? 3 : 1;
    const char *rep;
    size_t rep_len, used, pos = 0;
    int rc;
    if (len == 0)
        return sbuf_put(out, "", 0);
    if (m->remove_extra_ws) {   /* leading text that normalizes to exactly " " */
        while (pos < len) {
            normalize_prefix(m, s + pos, len - pos, &rep, &rep_len, &used);
            if (rep_len != 1 || rep[0] != ' ')
                break;
            pos += used;
        }
        if (pos == len)
            return sbuf_put(out, "", 0);
    }
    if (!m->ws_suffix && m->add_dummy_prefix && (rc = sbuf_put(out, space, space_len)))
        return rc;
    int prev_space = m->remove_extra_ws;
    while (pos < len) {
        normalize_prefix(m, s + pos, len - pos, &rep, &rep_len, &used);
        while (prev_space && rep_len > 0 && rep[0] == ' ') {
            rep++;
            rep_len--;
        }
        if (rep_len > 0) {
            size_t run = 0;   /* copy runs of non-spaces at once */
            for (size_t i = 0; i < rep_len; i++) {
                if (rep[i] != ' ')
                    continue;
                if ((rc = sbuf_put(out, rep + run, i - run)) ||
                    (rc = sbuf_put(out, space, space_len)))
                    return rc;
                run = i + 1;
            }
            if ((rc = sbuf_put(out, rep + run, rep_len - run)))
                return rc;
            prev_space = rep[rep_len - 1] == ' ';
        }
        pos += used;
        if (!m->remove_extra_ws)
            prev_space = 0;
    }
    if (m->remove_extra_ws)
        while (out->n >= space_len && memcmp(out->p + out->n - space_len, space, space_len) == 0)
            out->n -= space_len;
    if (m->ws_suffix && m->add_dummy_prefix && (rc = sbuf_put(out, space, space_len)))
        return rc;
    return sbuf_put(out, "", 0);   /* NUL-terminates an empty result too */
}

static int check_input(const ts_spm *m, const char *text, size_t len, ts_error *err)
{
    if (!m || (!text && len))
        return ts_fail(err, TS_ERR_INVALID, "spm: NULL argument");
    if (len > TS_SPM_MAX_INPUT)
        return ts_fail(err, TS_ERR_INVALID, "spm: the text is %zu bytes, more than the %u "
                       "accepted", len, TS_SPM_MAX_INPUT);
    return TS_OK;
}

static int normalize_checked(const ts_spm *m, const char *text, size_t len, sbuf *out,
                             ts_error *err)
{
    int rc = normalize(m, (const uint8_t *)(len ? text : ""), len, out);
    if (rc == TS_ERR_NOMEM)
        return ts_fail(err, rc, "spm: out of memory normalizing %zu bytes", len);
    if (rc)
        return ts_fail(err, rc, "spm: normalized text exceeds %u bytes (the model's charsmap "
                       "inflates the text)", MAX_NORMALIZED);
    return TS_OK;
}

int ts_spm_normalize(const ts_spm *m, const char *text, size_t len, char **out,
                     size_t *out_len, ts_error *err)
{
    int rc = check_input(m, text, len, err);
    if (rc)
        return rc;
    if (!out || !out_len)
        return ts_fail(err, TS_ERR_INVALID, "ts_spm_normalize: NULL argument");
    sbuf b = {0};
    if ((rc = normalize_checked(m, text, len, &b, err))) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *out_len = b.n;
    return TS_OK;
}

/* ---- segmentation ------------------------------------------------------------------ */

/* The best path ending at a byte position: its score, where its last piece starts
 * (-1: no path yet) and that piece's id. */
typedef struct vnode {
    float score;
    int32_t start;
    int32_t id;
} vnode;

/* The library's optimized Viterbi over t[0..n), then its output rules. ids has room
 * for n entries (every piece, and every fallback byte, covers at least one byte). */
static int segment(const ts_spm *m, const uint8_t *t, size_t n, int32_t *ids, int *n_ids,
                   ts_error *err)
{
    *n_ids = 0;
    if (n == 0)
        return TS_OK;
    vnode *v = malloc((n + 1) * sizeof *v);
    if (!v)
        return ts_fail(err, TS_ERR_NOMEM, "spm: out of memory segmenting %zu bytes", n);
    for (size_t i = 0; i <= n; i++)
        v[i] = (vnode){0.0f, -1, -1};
    /* Piece candidates are summed in double and compared with the stored float, unknown
     * ones in float, and a later candidate must be strictly better: as the library. */
    const float unk_score = m->min_score - UNK_PENALTY;
    for (size_t s = 0; s < n;) {
        const float till = v[s].score;
        size_t mb = one_char_len(t[s]);
        if (mb > n - s)
            mb = n - s;
        int single = 0;
        prefix_walk w = {m, m->vocab, 0, (size_t)m->n_vocab, 0};
        for (size_t k = s; k < n; k++) {
            int32_t id = walk_step(&w, t[k]);
            if (id == WALK_END)
                break;
            if (id < 0 || m->pieces[id].type == PIECE_UNUSED)
                continue;
            size_t length = k + 1 - s;
            double score = m->pieces[id].type == PIECE_USER
                               ? (double)((float)length * m->max_score) - 0.1
                               : (double)m->pieces[id].score;
            double cand = score + (double)till;
            vnode *tg = &v[k + 1];
            if (tg->start == -1 || cand > (double)tg->score) {
                tg->score = (float)cand;
                tg->start = (int32_t)s;
                tg->id = id;
            }
            if (length == mb)
                single = 1;
        }
        if (!single) {
            vnode *tg = &v[s + mb];
            float cand = unk_score + till;
            if (tg->start == -1 || cand > tg->score) {
                tg->score = cand;
                tg->start = (int32_t)s;
                tg->id = m->unk;
            }
        }
        s += mb;
    }
    /* Backtrack along the start links: count the pieces, list their end positions
     * front to back, then emit. */
    size_t count = 0;
    for (size_t e = n; e > 0; e = (size_t)v[e].start) {
        if (v[e].start < 0 || (size_t)v[e].start >= e) {
            free(v);
            return ts_fail(err, TS_ERR_INTERNAL, "spm: no segmentation ends at byte %zu", e);
        }
        count++;
    }
    size_t *ends = malloc(count * sizeof *ends);
    if (!ends) {
        free(v);
        return ts_fail(err, TS_ERR_NOMEM, "spm: out of memory segmenting %zu bytes", n);
    }
    size_t i = count;
    for (size_t e = n; e > 0; e = (size_t)v[e].start)
        ends[--i] = e;
    int k = 0, prev_unk = 0;
    for (i = 0; i < count; i++) {
        const vnode *node = &v[ends[i]];
        int is_unk = node->id == m->unk;
        if (is_unk && m->byte_fallback) {
            for (size_t b = (size_t)node->start; b < ends[i]; b++)
                ids[k++] = m->byte_id[t[b]];
        } else if (!(is_unk && prev_unk)) {   /* a run of unknowns is one unknown */
            ids[k++] = node->id;
        }
        prev_unk = is_unk;
    }
    free(ends);
    free(v);
    *n_ids = k;
    return TS_OK;
}

int ts_spm_encode(const ts_spm *m, const char *text, size_t len, int32_t **ids, int *n,
                  ts_error *err)
{
    int rc = check_input(m, text, len, err);
    if (rc)
        return rc;
    if (!ids || !n)
        return ts_fail(err, TS_ERR_INVALID, "ts_spm_encode: NULL argument");
    sbuf b = {0};
    if ((rc = normalize_checked(m, text, len, &b, err))) {
        free(b.p);
        return rc;
    }
    int32_t *out = malloc((b.n ? b.n : 1) * sizeof *out);
    if (!out) {
        free(b.p);
        return ts_fail(err, TS_ERR_NOMEM, "spm: out of memory for %zu ids", b.n);
    }
    int k = 0;
    rc = segment(m, (const uint8_t *)b.p, b.n, out, &k, err);
    free(b.p);
    if (rc) {
        free(out);
        return rc;
    }
    *ids = out;
    *n = k;
    return TS_OK;
}

/* ---- T5 ------------------------------------------------------------------------------ */

int ts_t5_tokenize(const ts_spm *m, const char *text, int max_len, int32_t *ids,
                   uint8_t *mask, int *n_valid, ts_error *err)
{
    if (!m || !text || !ids || !mask)
        return ts_fail(err, TS_ERR_INVALID, "ts_t5_tokenize: NULL argument");
    if (max_len < 1)
        return ts_fail(err, TS_ERR_INVALID, "ts_t5_tokenize: max_len %d < 1", max_len);
    if (m->eos < 0 || m->pad < 0)
        return ts_fail(err, TS_ERR_UNSUPPORTED, "ts_t5_tokenize: the model has no %s control "
                       "piece", m->eos < 0 ? "eos (</s>)" : "pad (<pad>)");
    int32_t *enc;
    int n;
    int rc = ts_spm_encode(m, text, strlen(text), &enc, &n, err);
    if (rc)
        return rc;
    int keep = n < max_len - 1 ? n : max_len - 1;
    for (int i = 0; i < max_len; i++) {
        ids[i] = i < keep ? enc[i] : i == keep ? m->eos : m->pad;
        mask[i] = i <= keep;
    }
    free(enc);
    if (n_valid)
        *n_valid = keep + 1;
    return TS_OK;
}
