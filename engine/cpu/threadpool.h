/* threadpool.h - a fixed pool of worker threads for the CPU backend's ops.
 *
 * ts_pool_run splits n_tasks among the caller and the workers (tasks are claimed one
 * at a time from a shared counter) and returns when all are done. Workers spin briefly
 * between runs, since decode steps launch many short ops back to back, then sleep;
 * the caller yields while it waits, so an oversubscribed machine degrades gently.
 * One caller at a time: the pool belongs to the backend, which one engine thread owns.
 */
#ifndef TS_THREADPOOL_H
#define TS_THREADPOOL_H

typedef struct ts_pool ts_pool;

/* task: index in [0, n_tasks); thread: in [0, n_threads), for per-thread scratch. */
typedef void (*ts_pool_fn)(void *ctx, int task, int thread);

ts_pool *ts_pool_create(int n_threads);    /* n_threads counts the caller; NULL on failure */
void ts_pool_destroy(ts_pool *p);          /* NULL-safe; joins the workers */
int ts_pool_threads(const ts_pool *p);
void ts_pool_run(ts_pool *p, int n_tasks, ts_pool_fn fn, void *ctx);

#endif
