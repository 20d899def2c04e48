/* block_manager.c - see block_manager.h. */
#include "block_manager.h"

#include <stdlib.h>

void ts_bm_init(ts_block_manager *bm, ts_kv_cache *kv)
{
    bm->kv = kv;
    bm->reserved = 0;
}

int ts_bm_available(const ts_block_manager *bm)
{
    return ts_kv_free_blocks(bm->kv) - bm->reserved;
}

int ts_bm_blocks_for(const ts_block_manager *bm, int n_positions)
{
    return ts_kv_blocks_for(bm->kv, n_positions);
}

int ts_bm_reserve(ts_block_manager *bm, int n, int *reserve)
{
    if (n < 0 || n > ts_bm_available(bm)) return -1;
    bm->reserved += n;
    *reserve += n;
    return 0;
}

void ts_bm_unreserve(ts_block_manager *bm, int *reserve)
{
    bm->reserved -= *reserve;
    *reserve = 0;
}

void ts_bm_shrink(ts_block_manager *bm, int *reserve, int keep)
{
    if (keep < 0) keep = 0;
    if (*reserve <= keep) return;
    bm->reserved -= *reserve - keep;
    *reserve = keep;
}

static int32_t take_block(ts_block_manager *bm, int *reserve, ts_error *err)
{
    if (*reserve <= 0) {
        ts_fail(err, TS_ERR_INTERNAL, "kv blocks: allocation beyond the group's reservation");
        return -1;
    }
    int32_t b = ts_kv_block_alloc(bm->kv);
    if (b < 0) {
        ts_fail(err, TS_ERR_INTERNAL, "kv blocks: free list empty despite a reservation");
        return -1;
    }
    (*reserve)--;
    bm->reserved--;
    return b;
}

static int grow_array(ts_block_table *t, int n, ts_error *err)
{
    if (n <= t->cap) return 0;
    int cap = t->cap ? t->cap : 8;
    while (cap < n) cap *= 2;
    int32_t *b = realloc(t->blocks, (size_t)cap * sizeof *b);
    if (!b) return ts_fail(err, TS_ERR_NOMEM, "kv blocks: out of memory for a block table");
    t->blocks = b;
    t->cap = cap;
    return 0;
}

int ts_bm_prepare(ts_block_manager *bm, ts_block_table *t, int n_positions, int first_write,
                  int *reserve, ts_error *err)
{
    int need = ts_bm_blocks_for(bm, n_positions);
    int rc = grow_array(t, need, err);
    if (rc) return rc;
    /* Copy-on-write: positions from first_write on will be written this step. */
    int bs = bm->kv->block_size;
    for (int i = first_write / bs; i < t->n; i++) {
        int32_t old = t->blocks[i];
        if (ts_kv_block_refs(bm->kv, old) == 1) continue;
        int32_t b = take_block(bm, reserve, err);
        if (b < 0) return TS_ERR_INTERNAL;
        if ((rc = ts_kv_block_copy(bm->kv, b, old, err))) {
            ts_kv_block_unref(bm->kv, b);
            return rc;
        }
        ts_kv_block_unref(bm->kv, old);
        t->blocks[i] = b;
    }
    while (t->n < need) {
        int32_t b = take_block(bm, reserve, err);
        if (b < 0) return TS_ERR_INTERNAL;
        t->blocks[t->n++] = b;
    }
    return 0;
}

int ts_bm_share(ts_block_manager *bm, ts_block_table *t, const ts_block_table *prefix,
                ts_error *err)
{
    if (t->n) return ts_fail(err, TS_ERR_INTERNAL, "kv blocks: sharing into a non-empty table");
    int rc = grow_array(t, prefix->n, err);
    if (rc) return rc;
    for (int i = 0; i < prefix->n; i++) {
        ts_kv_block_ref(bm->kv, prefix->blocks[i]);
        t->blocks[t->n++] = prefix->blocks[i];
    }
    return 0;
}

void ts_bm_release(ts_block_manager *bm, ts_block_table *t)
{
    for (int i = 0; i < t->n; i++) ts_kv_block_unref(bm->kv, t->blocks[i]);
    free(t->blocks);
    t->blocks = NULL;
    t->n = t->cap = 0;
}
