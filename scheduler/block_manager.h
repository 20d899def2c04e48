/* block_manager.h - per-sequence block tables over the paged KV cache, with exact
 * reservations and copy-on-write sharing.
 *
 * Image sequences have lengths known up front, so a group reserves every block it
 * will ever need when it is admitted; later allocations draw on that reservation and
 * can never fail, which is why the scheduler never has to preempt. A block shared by
 * several tables (the null-class prefix) is copied before a sequence writes into it.
 *
 * Ownership: the manager borrows the KV cache. A table owns one reference to each of
 * its blocks and gives them back in ts_bm_release. Engine thread only.
 */
#ifndef TS_BLOCK_MANAGER_H
#define TS_BLOCK_MANAGER_H

#include <stdint.h>

#include "engine/error.h"
#include "engine/kv_cache.h"

typedef struct ts_block_manager {
    ts_kv_cache *kv;       /* borrowed */
    int reserved;          /* blocks promised to admitted groups, not yet allocated */
} ts_block_manager;

typedef struct ts_block_table {
    int32_t *blocks;       /* [cap], owned */
    int n, cap;
} ts_block_table;

void ts_bm_init(ts_block_manager *bm, ts_kv_cache *kv);

/* Blocks neither allocated nor promised. */
int ts_bm_available(const ts_block_manager *bm);
int ts_bm_blocks_for(const ts_block_manager *bm, int n_positions);

/* Promises n blocks to a caller that keeps the count in *reserve; 0, or -1 when fewer
 * than n are available (nothing changes). */
int ts_bm_reserve(ts_block_manager *bm, int n, int *reserve);
/* Returns what is left of a reservation (a finished or cancelled group). */
void ts_bm_unreserve(ts_block_manager *bm, int *reserve);
/* Returns the part of a reservation above keep (a group that needs less than it was
 * promised: a t2i prompt shorter than the longest). */
void ts_bm_shrink(ts_block_manager *bm, int *reserve, int keep);

/* Makes t cover positions [0, n_positions) and makes the block holding position
 * first_write (and every later one) private to t, copying a shared block first. New
 * blocks come from *reserve; running out of it is a bug in the caller's accounting and
 * is reported as TS_ERR_INTERNAL. */
int ts_bm_prepare(ts_block_manager *bm, ts_block_table *t, int n_positions, int first_write,
                  int *reserve, ts_error *err);

/* t takes a reference to every block of prefix (t must be empty). */
int ts_bm_share(ts_block_manager *bm, ts_block_table *t, const ts_block_table *prefix,
                ts_error *err);

/* Drops t's references and frees its array; t is empty afterwards. */
void ts_bm_release(ts_block_manager *bm, ts_block_table *t);

#endif
