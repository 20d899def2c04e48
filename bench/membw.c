/* membw.c - streaming-read memory bandwidth, the divisor of the decode-step floor.
 *
 *   gcc -O2 -mavx2 -pthread bench/membw.c -o build/membw
 *   build/membw [--threads N] [--mib SIZE] [--reps R]     (defaults: 2 threads, 512 MiB, 10)
 *
 * Each thread sums its contiguous share of one buffer with 256-bit AVX2 loads into eight
 * independent accumulators (so the adds never limit the loop), and the sums are printed,
 * which keeps the compiler from dropping the loads. The buffer is 16x the 32 MiB L3 of the
 * machines we benchmark on, so every pass comes from DRAM. One pass per repetition; the
 * threads start together on a barrier, and a pass lasts from the first thread's start to
 * the last thread's end, on the threads' own clocks (on a 2-core machine the main thread
 * may not get a core until a reader is done, so its clock would flatter the result).
 * Prints the best and the median pass in GB/s (10^9 bytes/s); the last line is
 * machine-readable: "membw_best_gbs=X membw_median_gbs=Y".
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64

typedef struct worker {
    const float *base;
    size_t n;                    /* floats, a multiple of 64 */
    pthread_barrier_t *start;
    double sum, t_start, t_end;  /* the thread's own clock: the main thread may not run */
} worker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *read_share(void *arg)
{
    worker *w = arg;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0;
    pthread_barrier_wait(w->start);
    w->t_start = now_s();
    for (size_t i = 0; i < w->n; i += 64) {
        const float *p = w->base + i;
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + 0));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + 24));
        a4 = _mm256_add_ps(a4, _mm256_load_ps(p + 32));
        a5 = _mm256_add_ps(a5, _mm256_load_ps(p + 40));
        a6 = _mm256_add_ps(a6, _mm256_load_ps(p + 48));
        a7 = _mm256_add_ps(a7, _mm256_load_ps(p + 56));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    w->sum = 0.0;
    for (int k = 0; k < 8; k++) w->sum += lanes[k];
    w->t_end = now_s();
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 10;
    size_t mib = 512;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: membw [--threads N] [--mib SIZE] [--reps R]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > MAX_THREADS || reps < 1 || reps > 1000 || mib < 1) {
        fprintf(stderr, "membw: threads 1..%d, reps 1..1000, mib >= 1\n", MAX_THREADS);
        return 2;
    }
    size_t bytes = mib << 20, n = bytes / sizeof(float);
    size_t share = n / (size_t)threads / 64 * 64;
    float *buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    /* Touch every page (and give the sums something non-trivial to add). */
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023) * (1.0f / 1024.0f);

    double *gbs = malloc((size_t)reps * sizeof *gbs), check = 0.0;
    worker w[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    pthread_barrier_t start;
    if (!gbs) return 1;
    for (int r = 0; r < reps; r++) {
        pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
        for (int t = 0; t < threads; t++) {
            w[t] = (worker){.base = buf + (size_t)t * share, .n = share, .start = &start};
            if (pthread_create(&tid[t], NULL, read_share, &w[t])) {
                fprintf(stderr, "membw: pthread_create failed\n");
                return 1;
            }
        }
        pthread_barrier_wait(&start);
        double t0 = 0.0, t1 = 0.0;
        for (int t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            check += w[t].sum;
            if (t == 0 || w[t].t_start < t0) t0 = w[t].t_start;
            if (t == 0 || w[t].t_end > t1) t1 = w[t].t_end;
        }
        double dt = t1 - t0;
        pthread_barrier_destroy(&start);
        gbs[r] = (double)share * threads * sizeof(float) / dt * 1e-9;
    }
    qsort(gbs, (size_t)reps, sizeof *gbs, cmp_double);
    printf("streaming read, %d thread(s), %zu MiB buffer, %d passes: best %.1f GB/s, "
           "median %.1f GB/s (checksum %.6g)\n",
           threads, mib, reps, gbs[reps - 1], gbs[reps / 2], check);
    printf("membw_best_gbs=%.3f membw_median_gbs=%.3f\n", gbs[reps - 1], gbs[reps / 2]);
    free(gbs);
    free(buf);
    return 0;
}
