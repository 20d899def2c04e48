/* test_kv_cache.c - the paged KV cache's block accounting: allocation until empty,
 * shared blocks surviving until their last reference, and layer geometry. */
#include "tests/check_util.h"
#include <signal.h>

#include "engine/kv_cache.h"

static ts_backend *be;
static void setup(void)
{
    ts_error err = {0};
    be = ts_backend_cpu_create(1, &err);
    ck_assert(be != NULL);
}
static void teardown(void) { ts_backend_free(be); }

START_TEST(test_alloc_until_empty)
{
    ts_kv_cache *kv;
    ts_error err = {0};
    ck_assert_int_eq(ts_kv_cache_create(be, 2, 3, 8, 16, 5, &kv, &err), TS_OK);
    ck_assert_int_eq(ts_kv_free_blocks(kv), 5);
    int seen[5] = {0};
    for (int i = 0; i < 5; i++) {
        int32_t b = ts_kv_block_alloc(kv);
        ck_assert(b >= 0 && b < 5 && !seen[b]);
        seen[b] = 1;
    }
    ck_assert_int_eq(ts_kv_block_alloc(kv), -1);
    ck_assert_int_eq(ts_kv_free_blocks(kv), 0);
    ck_assert_int_eq(ts_kv_blocks_for(kv, 16), 1);
    ck_assert_int_eq(ts_kv_blocks_for(kv, 17), 2);
    /* layers are disjoint slices of one buffer */
    ck_assert_ptr_eq(kv->layers[1].k, (char *)kv->layers[0].k + 5 * 16 * 3 * 8 * sizeof(float));
    ts_kv_cache_destroy(kv);
}
END_TEST

START_TEST(test_shared_block_refcount)
{
    ts_kv_cache *kv;
    ts_error err = {0};
    ck_assert_int_eq(ts_kv_cache_create(be, 1, 1, 4, 4, 2, &kv, &err), TS_OK);
    int32_t b = ts_kv_block_alloc(kv);
    ts_kv_block_ref(kv, b);                 /* a second sequence shares it */
    ts_kv_block_unref(kv, b);
    ck_assert_int_eq(ts_kv_free_blocks(kv), 1);   /* still held by the first */
    ts_kv_block_unref(kv, b);
    ck_assert_int_eq(ts_kv_free_blocks(kv), 2);
    ts_kv_cache_destroy(kv);
}
END_TEST

START_TEST(test_double_free_aborts)
{
    ts_kv_cache *kv;
    ts_error err = {0};
    ck_assert_int_eq(ts_kv_cache_create(be, 1, 1, 4, 4, 2, &kv, &err), TS_OK);
    int32_t b = ts_kv_block_alloc(kv);
    ts_kv_block_unref(kv, b);
    ts_kv_block_unref(kv, b);   /* a bug, never input: must not corrupt the free list */
}
END_TEST

START_TEST(test_bad_geometry)
{
    ts_kv_cache *kv;
    ts_error err = {0};
    ck_assert_int_eq(ts_kv_cache_create(be, 0, 1, 4, 4, 2, &kv, &err), TS_ERR_INVALID);
    ck_assert_ptr_null(kv);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kv_cache");
    TCase *tc = tcase_create("blocks");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_alloc_until_empty);
    tcase_add_test(tc, test_shared_block_refcount);
    tcase_add_test_raise_signal(tc, test_double_free_aborts, SIGABRT);
    tcase_add_test(tc, test_bad_geometry);
    suite_add_tcase(s, tc);
    return ts_ck_run(&s, 1);
}
