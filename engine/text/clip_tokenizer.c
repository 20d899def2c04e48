/* clip_tokenizer.c - CLIP's BPE: loading clip_bpe.txt, the split pattern, merges. */
#include "engine/text/clip_tokenizer.h"

#include <errno.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/clip_clean.h"
#include "engine/text/unicode.h"

#define MERGES_MAX_BYTES (64u << 20)   /* CLIP's file is ~0.5 MB; refuse absurd ones */
#define END_OF_WORD "</w>"

/* The merge map: (left id, right id) -> (rank, merged id), open addressing. */
typedef struct merge_slot {
    uint64_t key;          /* left << 32 | right; EMPTY_KEY when free */
    int32_t rank, merged;
} merge_slot;
#define EMPTY_KEY UINT64_MAX

struct ts_clip_tok {
    int vocab_size, n_merges;
    int32_t sot, eot;
    uint32_t sot_text[24], eot_text[24];   /* the special spellings, as code points */
    int sot_len, eot_len;
    int32_t byte_id[256];                  /* id of byte b's symbol; + 256 ends a word */
    merge_slot *slots;
    size_t mask;                           /* slot count - 1 (a power of two) */
};

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static const merge_slot *merge_find(const ts_clip_tok *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash64(key) & t->mask;; i = (i + 1) & t->mask) {
        if (t->slots[i].key == key)
            return &t->slots[i];
        if (t->slots[i].key == EMPTY_KEY)
            return NULL;
    }
}

/* Inserts or overwrites: a later merge of the same pair wins, as in upstream's dict. */
static void merge_put(ts_clip_tok *t, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash64(key) & t->mask;
    while (t->slots[i].key != EMPTY_KEY && t->slots[i].key != key)
        i = (i + 1) & t->mask;
    t->slots[i] = (merge_slot){key, rank, merged};
}

/* ---- byte symbols ---------------------------------------------------------------- */

/* CLIP's bytes_to_unicode: printable Latin-1 bytes are their own character; the other
 * 68 become U+0100.. in increasing byte order. The vocabulary lists the printable ones
 * first, then the others, each in increasing order. */
static int byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void byte_tables(int32_t byte_id[256], int sym_to_byte[0x144])
{
    int pos = 0, extra = 0;
    for (int i = 0; i < 0x144; i++)
        sym_to_byte[i] = -1;
    for (int b = 0; b < 256; b++)
        if (byte_is_printable(b)) {
            byte_id[b] = pos++;
            sym_to_byte[b] = b;
        }
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b)) {
            byte_id[b] = pos++;
            sym_to_byte[0x100 + extra++] = b;
        }
}

/* ---- loading --------------------------------------------------------------------- */

/* A parsed merge symbol: raw bytes (in the shared arena) and whether it ends a word. */
typedef struct sym_ref {
    uint32_t off, len;
    int eow;
} sym_ref;

/* Load-time map from symbol strings (bytes + end-of-word flag) to vocabulary ids. */
typedef struct str_slot {
    uint32_t off, len;    /* in the arena; len == UINT32_MAX when free */
    int eow;
    int32_t id;
} str_slot;

typedef struct loader {
    unsigned char *arena;
    size_t arena_n, arena_cap;
    str_slot *slots;
    size_t mask;
} loader;

static uint64_t hash_bytes(const unsigned char *p, size_t n, int eow)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)eow;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return hash64(h);
}

static str_slot *str_lookup(loader *L, const unsigned char *p, size_t n, int eow)
{
    for (size_t i = hash_bytes(p, n, eow) & L->mask;; i = (i + 1) & L->mask) {
        str_slot *s = &L->slots[i];
        if (s->len == UINT32_MAX)
            return s;
        if (s->len == n && s->eow == eow && memcmp(L->arena + s->off, p, n) == 0)
            return s;
    }
}

static int arena_add(loader *L, const unsigned char *p, size_t n, uint32_t *off)
{
    if (L->arena_n + n > L->arena_cap) {
        size_t cap = L->arena_cap ? L->arena_cap * 2 : 4096;
        while (cap < L->arena_n + n)
            cap *= 2;
        unsigned char *a = realloc(L->arena, cap);
        if (!a)
            return -1;
        L->arena = a;
        L->arena_cap = cap;
    }
    memcpy(L->arena + L->arena_n, p, n);
    *off = (uint32_t)L->arena_n;
    L->arena_n += n;
    return 0;
}

/* Maps the string arena[off .. off+len) + eow to id (a later id replaces an earlier). */
static void str_put(loader *L, uint32_t off, uint32_t len, int eow, int32_t id)
{
    str_slot *s = str_lookup(L, L->arena + off, len, eow);
    if (s->len == UINT32_MAX)
        *s = (str_slot){off, len, eow, id};
    else
        s->id = id;
}

static int32_t str_get(loader *L, uint32_t off, uint32_t len, int eow)
{
    str_slot *s = str_lookup(L, L->arena + off, len, eow);
    return s->len == UINT32_MAX ? -1 : s->id;
}

/* Parses one symbol of a merge line: CLIP byte symbols, optionally then "</w>". */
static int parse_symbol(loader *L, const char *s, size_t n, const int *sym_to_byte,
                        sym_ref *out)
{
    out->eow = 0;
    if (n > 4 && memcmp(s + n - 4, END_OF_WORD, 4) == 0) {
        out->eow = 1;
        n -= 4;
    }
    ts_cpbuf cps = {0};
    size_t bad;
    int rc = ts_utf8_decode(s, n, &cps, &bad);
    if (rc) {
        ts_cpbuf_free(&cps);
        return rc < 0 ? -1 : 1;
    }
    unsigned char buf[256];
    if (cps.n == 0 || cps.n > sizeof buf) {
        ts_cpbuf_free(&cps);
        return 1;
    }
    for (size_t i = 0; i < cps.n; i++) {
        if (cps.v[i] >= 0x144 || sym_to_byte[cps.v[i]] < 0) {
            ts_cpbuf_free(&cps);
            return 1;
        }
        buf[i] = (unsigned char)sym_to_byte[cps.v[i]];
    }
    out->len = (uint32_t)cps.n;
    ts_cpbuf_free(&cps);
    return arena_add(L, buf, out->len, &out->off) ? -1 : 0;
}

static int read_file(const char *path, char **buf, size_t *len, ts_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ts_fail(err, TS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ts_fail(err, TS_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > MERGES_MAX_BYTES) {
        fclose(f);
        return ts_fail(err, TS_ERR_FORMAT, "%s: larger than %u bytes: not a CLIP merges file",
                       path, MERGES_MAX_BYTES);
    }
    size_t want = (size_t)st.st_size;
    char *b = malloc(want + 1);
    if (!b) {
        fclose(f);
        return ts_fail(err, TS_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t n = want ? fread(b, 1, want, f) : 0;
    int bad = ferror(f) || n != want;
    fclose(f);
    if (bad) {
        free(b);
        return ts_fail(err, TS_ERR_IO, "%s: read error", path);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return TS_OK;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p *= 2;
    return p;
}

static void set_specials(ts_clip_tok *t, ts_clip_specials specials)
{
    const char *sot = specials == TS_CLIP_SPECIALS_OPEN_CLIP ? "<start_of_text>"
                                                              : "<|startoftext|>";
    const char *eot = specials == TS_CLIP_SPECIALS_OPEN_CLIP ? "<end_of_text>"
                                                              : "<|endoftext|>";
    t->sot_len = (int)strlen(sot);
    t->eot_len = (int)strlen(eot);
    for (int i = 0; i < t->sot_len; i++)
        t->sot_text[i] = (unsigned char)sot[i];
    for (int i = 0; i < t->eot_len; i++)
        t->eot_text[i] = (unsigned char)eot[i];
}

int ts_clip_tok_load_ex(const char *merges_path, int expected_vocab_size,
                        ts_clip_specials specials, ts_clip_tok **out, ts_error *err)
{
    char *text = NULL;
    size_t text_len = 0;
    sym_ref *syms = NULL;   /* 2 per merge */
    loader L = {0};
    ts_clip_tok *t = NULL;
    int sym_to_byte[0x144];
    int rc = read_file(merges_path, &text, &text_len, err);
    if (rc)
        return rc;

    t = calloc(1, sizeof *t);
    if (!t)
        goto nomem;
    byte_tables(t->byte_id, sym_to_byte);
    set_specials(t, specials);

    /* Lines: one merge each; a final newline (no empty line after it) is optional. */
    size_t n_lines = 0;
    for (size_t i = 0; i < text_len; i++)
        n_lines += text[i] == '\n';
    if (text_len && text[text_len - 1] != '\n')
        n_lines++;
    if (n_lines > (size_t)(INT32_MAX / 2)) {
        rc = ts_fail(err, TS_ERR_FORMAT, "%s: too many lines", merges_path);
        goto fail;
    }
    syms = malloc((n_lines ? n_lines : 1) * 2 * sizeof *syms);
    if (!syms)
        goto nomem;
    int M = 0;
    size_t pos = 0;
    while (pos < text_len) {
        size_t end = pos;
        while (end < text_len && text[end] != '\n')
            end++;
        size_t line_end = end;
        if (line_end > pos && text[line_end - 1] == '\r')
            line_end--;
        const char *f[3];
        size_t flen[3];
        int nf = 0;
        for (size_t i = pos; i < line_end;) {
            if (text[i] == ' ' || text[i] == '\t') {
                i++;
                continue;
            }
            size_t j = i;
            while (j < line_end && text[j] != ' ' && text[j] != '\t')
                j++;
            if (nf < 3) {
                f[nf] = text + i;
                flen[nf] = j - i;
            }
            nf++;
            i = j;
        }
        int line_no = M + 1;
        if (nf != 2) {
            rc = ts_fail(err, TS_ERR_FORMAT,
                         "%s: line %d: expected two symbols separated by a space, found %d",
                         merges_path, line_no, nf);
            goto fail;
        }
        for (int k = 0; k < 2; k++) {
            int r = parse_symbol(&L, f[k], flen[k], sym_to_byte, &syms[2 * M + k]);
            if (r < 0)
                goto nomem;
            if (r > 0) {
                rc = ts_fail(err, TS_ERR_FORMAT,
                             "%s: line %d: symbol \"%.*s\" is not CLIP byte symbols "
                             "(with an optional trailing </w>)",
                             merges_path, line_no, (int)(flen[k] < 64 ? flen[k] : 64), f[k]);
                goto fail;
            }
        }
        M++;
        pos = end + 1;
    }

    int vocab = 512 + M + 2;
    if (expected_vocab_size > 0 && vocab != expected_vocab_size) {
        rc = ts_fail(err, TS_ERR_SHAPE,
                     "%s: %d merges give a vocabulary of %d tokens, but %d were expected",
                     merges_path, M, vocab, expected_vocab_size);
        goto fail;
    }
    t->n_merges = M;
    t->vocab_size = vocab;
    t->sot = 512 + M;
    t->eot = 513 + M;

    /* Vocabulary strings -> ids, later ids winning. A merge whose left symbol ends a
     * word makes a string no word can contain: it keeps its id but is never used. */
    size_t n_str = 512 + (size_t)M;
    L.mask = pow2_at_least(n_str * 2) - 1;
    L.slots = malloc((L.mask + 1) * sizeof *L.slots);
    if (!L.slots)
        goto nomem;
    for (size_t i = 0; i <= L.mask; i++)
        L.slots[i].len = UINT32_MAX;
    uint32_t byte_off[256];
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        if (arena_add(&L, &c, 1, &byte_off[b]))
            goto nomem;
        str_put(&L, byte_off[b], 1, 0, t->byte_id[b]);
        str_put(&L, byte_off[b], 1, 1, t->byte_id[b] + 256);
    }
    uint32_t *merged_off = malloc((M ? (size_t)M : 1) * sizeof *merged_off);
    if (!merged_off)
        goto nomem;
    for (int r = 0; r < M; r++) {
        sym_ref a = syms[2 * r], b = syms[2 * r + 1];
        merged_off[r] = UINT32_MAX;
        if (a.eow)
            continue;
        /* the arena may move while growing: copy through a temporary */
        size_t n = (size_t)a.len + b.len;
        unsigned char *tmp = malloc(n);
        if (!tmp) {
            free(merged_off);
            goto nomem;
        }
        memcpy(tmp, L.arena + a.off, a.len);
        memcpy(tmp + a.len, L.arena + b.off, b.len);
        int bad = arena_add(&L, tmp, n, &merged_off[r]);
        free(tmp);
        if (bad) {
            free(merged_off);
            goto nomem;
        }
        str_put(&L, merged_off[r], (uint32_t)n, b.eow, 512 + r);
    }

    t->mask = pow2_at_least((size_t)M * 2) - 1;
    t->slots = malloc((t->mask + 1) * sizeof *t->slots);
    if (!t->slots) {
        free(merged_off);
        goto nomem;
    }
    for (size_t i = 0; i <= t->mask; i++)
        t->slots[i].key = EMPTY_KEY;
    for (int r = 0; r < M; r++) {
        sym_ref a = syms[2 * r], b = syms[2 * r + 1];
        if (merged_off[r] == UINT32_MAX)
            continue;
        int32_t ia = str_get(&L, a.off, a.len, a.eow);
        int32_t ib = str_get(&L, b.off, b.len, b.eow);
        if (ia < 0 || ib < 0)
            continue;   /* a symbol no word can hold: the merge never applies */
        int32_t im = str_get(&L, merged_off[r], a.len + b.len, b.eow);
        merge_put(t, ia, ib, r, im);
    }
    free(merged_off);
    free(L.arena);
    free(L.slots);
    free(syms);
    free(text);
    *out = t;
    return TS_OK;

nomem:
    rc = ts_fail(err, TS_ERR_NOMEM, "%s: out of memory", merges_path);
fail:
    free(L.arena);
    free(L.slots);
    free(syms);
    free(text);
    ts_clip_tok_free(t);
    return rc;
}

int ts_clip_tok_load(const char *merges_path, int expected_vocab_size, ts_clip_tok **out,
                     ts_error *err)
{
    return ts_clip_tok_load_ex(merges_path, expected_vocab_size, TS_CLIP_SPECIALS_CLIP, out,
                               err);
}

void ts_clip_tok_free(ts_clip_tok *tok)
{
    if (!tok)
        return;
    free(tok->slots);
    free(tok);
}

int ts_clip_tok_vocab_size(const ts_clip_tok *tok) { return tok->vocab_size; }
int32_t ts_clip_tok_sot(const ts_clip_tok *tok) { return tok->sot; }
int32_t ts_clip_tok_eot(const ts_clip_tok *tok) { return tok->eot; }

/* ---- BPE ------------------------------------------------------------------------- */

/* Working memory of one encode, grown to the longest piece met so far (n bytes need n
 * symbols and at most 3n heap entries: n - 1 pairs, then two per merge). */
typedef struct bpe_work {
    int32_t *sym, *next, *prev;
    struct heap_ent { int32_t rank, left, lsym, rsym; } *heap, *batch;
    size_t heap_n, cap;
} bpe_work;

static int bpe_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *sym = realloc(w->sym, cap * sizeof *sym);
    if (sym)
        w->sym = sym;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next)
        w->next = next;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev)
        w->prev = prev;
    struct heap_ent *heap = realloc(w->heap, cap * 3 * sizeof *heap);
    if (heap)
        w->heap = heap;
    struct heap_ent *batch = realloc(w->batch, cap * 3 * sizeof *batch);
    if (batch)
        w->batch = batch;
    if (!sym || !next || !prev || !heap || !batch)
        return -1;
    w->cap = cap;
    return 0;
}

static void bpe_free(bpe_work *w)
{
    free(w->sym);
    free(w->next);
    free(w->prev);
    free(w->heap);
    free(w->batch);
}

static int ent_less(const struct heap_ent *a, const struct heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bpe_work *w, struct heap_ent e)
{
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = e;
}

static struct heap_ent heap_pop(bpe_work *w)
{
    struct heap_ent top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ent_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!ent_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static void push_pair(const ts_clip_tok *t, bpe_work *w, int32_t left)
{
    if (left < 0 || w->next[left] < 0)
        return;
    int32_t right = w->next[left];
    const merge_slot *m = merge_find(t, w->sym[left], w->sym[right]);
    if (m)
        heap_push(w, (struct heap_ent){m->rank, left, w->sym[left], w->sym[right]});
}

/* Upstream's loop: take the lowest-ranked pair present, merge every occurrence of it
 * left to right, repeat. With a heap keyed by (rank, position) that is: pop all entries
 * of the lowest rank at once, then apply the still-valid ones in position order. New
 * pairs never have that same rank (a merged symbol is longer than either part), so the
 * batch is exactly upstream's sweep, and a piece of n bytes costs O(n log n). */
static void bpe_run(const ts_clip_tok *t, bpe_work *w, int32_t n)
{
    w->heap_n = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(t, w, i);
    while (w->heap_n) {
        size_t nb = 0;
        w->batch[nb++] = heap_pop(w);
        while (w->heap_n && w->heap[0].rank == w->batch[0].rank)
            w->batch[nb++] = heap_pop(w);
        for (size_t k = 0; k < nb; k++) {
            struct heap_ent e = w->batch[k];
            int32_t l = e.left, r = w->next[l];
            if (w->sym[l] != e.lsym || r < 0 || w->sym[r] != e.rsym)
                continue;   /* stale: one side was merged since */
            w->sym[l] = merge_find(t, e.lsym, e.rsym)->merged;
            w->next[l] = w->next[r];
            if (w->next[r] >= 0)
                w->prev[w->next[r]] = l;
            w->sym[r] = -1;
            push_pair(t, w, w->prev[l]);
            push_pair(t, w, l);
        }
    }
}

/* ---- encoding -------------------------------------------------------------------- */

/* Letters the pattern's IGNORECASE lets stand for a lower-case ASCII letter of a
 * literal alternative (after lower-casing only U+017F LONG S -> s is left). */
static uint32_t fold(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c == 0x17F)
        return 's';
    if (c == 0x212A)
        return 'k';
    return c;
}

/* Length of the literal at s[i..n) under folding, or 0. *exact: no folding needed. */
static size_t match_literal(const uint32_t *s, size_t i, size_t n, const uint32_t *lit,
                            size_t len, int *exact)
{
    if (n - i < len)
        return 0;
    *exact = 1;
    for (size_t k = 0; k < len; k++) {
        if (s[i + k] != lit[k]) {
            if (fold(s[i + k]) != lit[k])
                return 0;
            *exact = 0;
        }
    }
    return len;
}

static size_t match_contraction(const uint32_t *s, size_t i, size_t n)
{
    static const char *const forms[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    if (s[i] != '\'')
        return 0;
    for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
        size_t len = strlen(forms[f]), k = 0;
        if (n - i - 1 < len)
            continue;
        while (k < len && fold(s[i + 1 + k]) == (uint32_t)forms[f][k])
            k++;
        if (k == len)
            return 1 + len;
    }
    return 0;
}

typedef struct out_ids {
    int32_t *ids;   /* tokens go to ids[1 ..]; sot/eot are placed afterwards */
    int n, cap;
} out_ids;

/* BPE of one piece (code points) into o. Returns 0, 1 when o is full, or -1 when out
 * of memory. */
static int encode_piece(const ts_clip_tok *t, bpe_work *w, const uint32_t *cp, size_t ncp,
                        out_ids *o)
{
    if (bpe_reserve(w, ncp * 4))
        return -1;
    int32_t n = 0;
    for (size_t i = 0; i < ncp; i++) {
        unsigned char u[4];
        int k = ts_utf8_encode(cp[i], u);
        for (int j = 0; j < k; j++) {
            w->sym[n] = t->byte_id[u[j]];
            w->prev[n] = n - 1;
            w->next[n] = n + 1;
            n++;
        }
    }
    w->next[n - 1] = -1;
    w->sym[n - 1] += 256;   /* the word's last symbol carries </w> */
    if (n > 1)
        bpe_run(t, w, n);
    for (int32_t i = 0; i >= 0; i = w->next[i]) {
        if (o->n == o->cap)
            return 1;
        o->ids[1 + o->n++] = w->sym[i];
    }
    return 0;
}

static int emit_special(out_ids *o, int32_t id)
{
    if (o->n == o->cap)
        return 1;
    o->ids[1 + o->n++] = id;
    return 0;
}

/* Splits the cleaned text with CLIP's pattern and encodes pieces until o is full.
 * Returns 0, or -1 when out of memory. */
static int encode_text(const ts_clip_tok *t, bpe_work *w, const ts_cpbuf *text, out_ids *o)
{
    const uint32_t *s = text->v;
    size_t n = text->n, i = 0;
    while (i < n && o->n < o->cap) {
        size_t len;
        int exact, full = 0;
        int32_t special = -1;
        if ((len = match_literal(s, i, n, t->sot_text, (size_t)t->sot_len, &exact)) != 0)
            special = t->sot;
        else if ((len = match_literal(s, i, n, t->eot_text, (size_t)t->eot_len, &exact)) != 0)
            special = t->eot;
        if (special >= 0) {
            /* upstream's cache maps the exact spellings to the special ids; a spelling
             * matched only through case folding (U+017F for s) is BPE'd as text */
            full = exact ? emit_special(o, special) : encode_piece(t, w, s + i, len, o);
        } else if ((len = match_contraction(s, i, n)) != 0) {
            full = encode_piece(t, w, s + i, len, o);
        } else {
            int c = ts_uni_class_of(s[i]);
            len = 1;
            if (c == TS_UNI_SPACE || c == TS_UNI_SKIP) {
                i++;
                continue;
            }
            if (c == TS_UNI_LETTER || c == TS_UNI_OTHER)
                while (i + len < n && ts_uni_class_of(s[i + len]) == c)
                    len++;
            full = encode_piece(t, w, s + i, len, o);
        }
        if (full)
            return full < 0 ? -1 : 0;
        i += len;
    }
    return 0;
}

int ts_clip_tok_encode_n(const ts_clip_tok *tok, const char *utf8, size_t len,
                         int32_t *ids, int context_length, int *n_tokens, ts_error *err)
{
    if (context_length < 1)
        return ts_fail(err, TS_ERR_INVALID, "context_length %d: must be at least 1",
                       context_length);
    if (len > TS_CLIP_TOK_MAX_INPUT)
        return ts_fail(err, TS_ERR_INVALID, "prompt of %zu bytes: at most %u are accepted",
                       len, TS_CLIP_TOK_MAX_INPUT);
    ts_cpbuf raw = {0}, clean = {0};
    bpe_work w = {0};
    int32_t *buf = NULL;
    size_t bad = 0;
    int rc = ts_utf8_decode(utf8, len, &raw, &bad);
    if (rc > 0) {
        rc = ts_fail(err, TS_ERR_INVALID, "prompt is not valid UTF-8 (byte %zu)", bad);
        goto done;
    }
    if (rc < 0 || ts_clip_clean(&raw, &clean))
        goto nomem;

    buf = malloc((size_t)context_length * sizeof *buf);
    if (!buf)
        goto nomem;

    /* Only the first context_length - 1 tokens can matter: with that many, the row is
     * already sot + context_length - 2 tokens + eot. */
    out_ids o = {buf, 0, context_length - 1};
    if (encode_text(tok, &w, &clean, &o))
        goto nomem;
    buf[0] = tok->sot;                        /* tokens are in buf[1 .. o.n] */
    if (o.n + 2 <= context_length) {
        buf[o.n + 1] = tok->eot;
        for (int k = o.n + 2; k < context_length; k++)
            buf[k] = 0;
    } else {
        buf[context_length - 1] = tok->eot;   /* truncated: eot takes the last slot */
    }
    memcpy(ids, buf, (size_t)context_length * sizeof *ids);
    if (n_tokens)
        *n_tokens = o.n;
    rc = TS_OK;
    goto done;
nomem:
    rc = ts_fail(err, TS_ERR_NOMEM, "out of memory encoding a prompt of %zu bytes", len);
done:
    ts_cpbuf_free(&raw);
    ts_cpbuf_free(&clean);
    bpe_free(&w);
    free(buf);
    return rc;
}

int ts_clip_tok_encode(const ts_clip_tok *tok, const char *utf8, int32_t *ids,
                       int context_length, ts_error *err)
{
    return ts_clip_tok_encode_n(tok, utf8, strlen(utf8), ids, context_length, NULL, err);
}
