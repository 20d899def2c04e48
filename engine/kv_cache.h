/* kv_cache.h - the paged KV cache: fixed-size blocks of positions, a free list and
 * reference counts.
 *
 * Memory: one K and one V buffer in backend memory, each [n_layer][n_blocks][block_size]
 * [n_kv_head * head_dim] elements of the backend's KV type, allocated at creation and
 * freed at destruction.
 * Sequences own block tables (arrays of block ids) that the caller keeps; a block is
 * shared by taking another reference (ts_kv_block_ref), e.g. a common prefix, and
 * returns to the free list when its last reference is dropped. Not thread-safe: the
 * engine thread owns it.
 */
#ifndef TS_KV_CACHE_H
#define TS_KV_CACHE_H

#include <stdint.h>

#include "backend.h"

typedef struct ts_kv_cache {
    ts_backend *be;
    int n_layer;
    int block_size;          /* positions per block */
    int n_blocks;
    ts_kv_layer *layers;     /* [n_layer]; pointers into k_all / v_all */
    void *k_all, *v_all;     /* backend memory */
    int elem_bytes;          /* of one K or V element */
    int32_t *free_list;      /* stack of free block ids */
    int n_free;
    int32_t *refs;           /* [n_blocks] reference counts */
} ts_kv_cache;

/* Bytes of K+V one block takes across all layers (for sizing from a memory budget),
 * with elements of elem_bytes (ts_backend_kv_elem_bytes). */
size_t ts_kv_block_bytes(int n_layer, int n_kv_head, int head_dim, int block_size,
                         int elem_bytes);

int ts_kv_cache_create(ts_backend *be, int n_layer, int n_kv_head, int head_dim,
                       int block_size, int n_blocks, ts_kv_cache **out, ts_error *err);
void ts_kv_cache_destroy(ts_kv_cache *kv);   /* NULL-safe */

/* Takes a free block with one reference; -1 when none is free. */
int32_t ts_kv_block_alloc(ts_kv_cache *kv);
void ts_kv_block_ref(ts_kv_cache *kv, int32_t block);
void ts_kv_block_unref(ts_kv_cache *kv, int32_t block);
int ts_kv_free_blocks(const ts_kv_cache *kv);
static inline int ts_kv_block_refs(const ts_kv_cache *kv, int32_t block) { return kv->refs[block]; }

/* Copies every layer's K and V of block src into block dst (copy-on-write of a shared
 * block); it runs once per shared prefix block a sequence writes into, never per step. */
int ts_kv_block_copy(ts_kv_cache *kv, int32_t dst, int32_t src, ts_error *err);

/* Blocks needed to hold n positions. */
static inline int ts_kv_blocks_for(const ts_kv_cache *kv, int n)
{
    return (n + kv->block_size - 1) / kv->block_size;
}

#endif
