/* kv_cache.c - see kv_cache.h. */
#include "kv_cache.h"

#include <stdlib.h>

size_t ts_kv_block_bytes(int n_layer, int n_kv_head, int head_dim, int block_size,
                         int elem_bytes)
{
    return 2 * (size_t)elem_bytes * (size_t)n_layer * n_kv_head * head_dim * block_size;
}

int ts_kv_cache_create(ts_backend *be, int n_layer, int n_kv_head, int head_dim,
                       int block_size, int n_blocks, ts_kv_cache **out, ts_error *err)
{
    *out = NULL;
    if (n_layer <= 0 || n_kv_head <= 0 || head_dim <= 0 || block_size <= 0 || n_blocks <= 0)
        return ts_fail(err, TS_ERR_INVALID, "kv cache: bad geometry");
    ts_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return ts_fail(err, TS_ERR_NOMEM, "kv cache: out of memory");
    kv->be = be;
    kv->n_layer = n_layer;
    kv->block_size = block_size;
    kv->n_blocks = n_blocks;
    kv->elem_bytes = ts_backend_kv_elem_bytes(be);
    size_t per_layer = (size_t)n_blocks * block_size * n_kv_head * head_dim * kv->elem_bytes;
    size_t floats = (per_layer * n_layer + sizeof(float) - 1) / sizeof(float);
    kv->layers = calloc((size_t)n_layer, sizeof *kv->layers);
    kv->free_list = malloc((size_t)n_blocks * sizeof *kv->free_list);
    kv->refs = calloc((size_t)n_blocks, sizeof *kv->refs);
    kv->k_all = ts_be_alloc(be, floats);
    kv->v_all = ts_be_alloc(be, floats);
    if (!kv->layers || !kv->free_list || !kv->refs || !kv->k_all || !kv->v_all) {
        ts_kv_cache_destroy(kv);
        return ts_fail(err, TS_ERR_NOMEM, "kv cache: cannot allocate %d blocks (%zu MiB)",
                       n_blocks, ts_kv_block_bytes(n_layer, n_kv_head, head_dim, block_size,
                                                   kv->elem_bytes) * (size_t)n_blocks >> 20);
    }
    for (int l = 0; l < n_layer; l++) {
        kv->layers[l].k = (char *)kv->k_all + per_layer * l;
        kv->layers[l].v = (char *)kv->v_all + per_layer * l;
        kv->layers[l].block_size = block_size;
        kv->layers[l].n_kv_head = n_kv_head;
        kv->layers[l].head_dim = head_dim;
    }
    /* Stack order hands out low block ids first, which keeps early tests readable. */
    for (int i = 0; i < n_blocks; i++) kv->free_list[i] = n_blocks - 1 - i;
    kv->n_free = n_blocks;
    *out = kv;
    return TS_OK;
}

void ts_kv_cache_destroy(ts_kv_cache *kv)
{
    if (!kv) return;
    ts_be_free(kv->be, kv->k_all);
    ts_be_free(kv->be, kv->v_all);
    free(kv->layers);
    free(kv->free_list);
    free(kv->refs);
    free(kv);
}

int32_t ts_kv_block_alloc(ts_kv_cache *kv)
{
    if (kv->n_free == 0) return -1;
    int32_t b = kv->free_list[--kv->n_free];
    kv->refs[b] = 1;
    return b;
}

void ts_kv_block_ref(ts_kv_cache *kv, int32_t block)
{
    kv->refs[block]++;
}

void ts_kv_block_unref(ts_kv_cache *kv, int32_t block)
{
    if (kv->refs[block] <= 0) abort();   /* a double free is a bug, never input */
    if (--kv->refs[block] == 0) kv->free_list[kv->n_free++] = block;
}

int ts_kv_free_blocks(const ts_kv_cache *kv) { return kv->n_free; }

int ts_kv_block_copy(ts_kv_cache *kv, int32_t dst, int32_t src, ts_error *err)
{
    if (dst < 0 || dst >= kv->n_blocks || src < 0 || src >= kv->n_blocks)
        return ts_fail(err, TS_ERR_INVALID, "kv cache: block copy %d -> %d out of range", src, dst);
    const ts_kv_layer *l0 = &kv->layers[0];
    size_t n = (size_t)kv->block_size * l0->n_kv_head * l0->head_dim * kv->elem_bytes;
    for (int l = 0; l < kv->n_layer; l++) {
        const ts_kv_layer *L = &kv->layers[l];
        ts_be_copy(kv->be, (char *)L->k + (size_t)dst * n, (char *)L->k + (size_t)src * n, n);
        ts_be_copy(kv->be, (char *)L->v + (size_t)dst * n, (char *)L->v + (size_t)src * n, n);
    }
    return 0;
}
