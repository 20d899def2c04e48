/* sample.cu - next-token draws on the GPU: tsk_sample reproduces engine/sampler.c
 * (ts_cfg_combine, then ts_sample_probs and ts_sample_draw) for a batch of rows.
 *
 * One thread block of NT threads per row; the row's scratch is a slice of the caller's
 * workspace, so the launch allocates nothing and can be captured into a graph. Per row:
 *  1. l = CFG-combined logits / max(temperature, 1e-5), written to the workspace (the
 *     logits themselves are left alone), with the CPU's rounding (no FMA contraction);
 *  2. top-k: the k-th largest value found exactly by a radix select over an
 *     order-preserving 32-bit key (4 passes of 8 bits, shared-memory histogram), then
 *     every l < kth becomes -inf, so ties with the k-th value survive as on the CPU;
 *  3. top-p: the finite logits sorted by (value descending, id ascending) with a bitonic
 *     sort of 64-bit keys (in shared memory when they fit, else in the workspace with
 *     shared-memory passes for the short strides), softmax over that order, and the
 *     HF rule on the exclusive cumulative sum. One warp adds in sorted order, one float
 *     addition at a time as the CPU does, so only expf (within an ulp or two of glibc's)
 *     can move the cut-off;
 *  4. softmax over the whole vocabulary (a block-wide float sum, which may round
 *     differently from the CPU's sequential one) and the draw: a double prefix sum over
 *     ascending ids and the smallest id whose cumulative probability exceeds u * total,
 *     else the last id with a positive probability, as ts_sample_draw.
 * Greedy decoding (top_k == 1) is exact: the select finds the maximum bit for bit, every
 * entry equal to it gets probability 1/count, and those sums are exact in double.
 */
#include "engine/cuda/kernels.h"

#include <limits.h>
#include <math.h>

#define NT 1024            /* threads per block (one block per row) */
#define NWARP (NT / 32)
#define SORT_SMEM 4096     /* 64-bit sort keys held in shared memory (32 KiB) */
#define WS_ALIGN 256       /* workspace pieces start on this boundary */
#define FULL_MASK 0xffffffffu

/* one thread per radix digit, and at most one warp total per lane in the block helpers */
static_assert(NT >= 256 && NT <= 1024 && NT % 32 == 0, "NT: 256..1024, whole warps");

typedef unsigned long long u64;

/* ------------------------------------------------------------------ workspace */

static __host__ __device__ size_t align_up(size_t x)
{
    return (x + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
}

static __host__ __device__ int next_pow2(int x)
{
    int p = 1;
    while (p < x) p <<= 1;
    return p;
}

/* Bytes of the float logits that start each row's slice. */
static __host__ __device__ size_t logits_bytes(int vocab)
{
    return align_up((size_t)vocab * sizeof(float));
}

/* Per row: the logits, then (only when the top-p keys may not fit in shared memory) room
 * for next_pow2(vocab) sort keys. */
static __host__ __device__ size_t row_bytes(int vocab)
{
    int p = next_pow2(vocab);
    return logits_bytes(vocab) + (p > SORT_SMEM ? align_up((size_t)p * sizeof(u64)) : 0);
}

/* ------------------------------------------------------------------ block helpers */

/* Shared scratch of the reductions and scans: one slot per warp. */
union red_scratch {
    double d[NWARP];
    float f[NWARP];
    int i[NWARP];
};

/* Exclusive prefix sum of v over the block in thread order; *total gets the sum of all.
 * Every thread must call it. Safe to call back to back (it ends with a barrier). */
template <typename T>
static __device__ T block_exclusive_scan(T v, T *total, T *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T x = v;
    for (int o = 1; o < 32; o <<= 1) {
        T y = __shfl_up_sync(FULL_MASK, x, o);
        if (lane >= o) x = x + y;
    }
    /* exclusive within the warp by shifting, not by x - v, which would not be exact */
    T excl = __shfl_up_sync(FULL_MASK, x, 1);
    if (lane == 0) excl = T(0);
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    /* every warp scans the warp totals itself, which saves a second round trip */
    T w = lane < NWARP ? scratch[lane] : T(0);
    for (int o = 1; o < 32; o <<= 1) {
        T y = __shfl_up_sync(FULL_MASK, w, o);
        if (lane >= o) w = w + y;
    }
    T before = __shfl_sync(FULL_MASK, w, (warp + 31) & 31);   /* warps 0..warp-1 */
    *total = __shfl_sync(FULL_MASK, w, NWARP - 1);
    __syncthreads();
    if (warp == 0) return excl;
    return lane == 0 ? before : before + excl;
}

struct op_max_f {
    __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};
struct op_add_f {
    __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
struct op_min_i {
    __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct op_max_i {
    __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

/* op over v of every thread (id: op's identity); all threads get the result. Every
 * thread must call it. */
template <typename T, typename Op>
static __device__ T block_reduce(T v, Op op, T id, T *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T w = lane < NWARP ? scratch[lane] : id;
    for (int o = 16; o > 0; o >>= 1) w = op(w, __shfl_xor_sync(FULL_MASK, w, o));
    __syncthreads();
    return w;
}

/* ------------------------------------------------------------------ keys */

/* A uint32 whose unsigned order is the float order. -0 and +0 compare equal as floats,
 * so they share +0's key (the CPU's `l < kth` cannot tell them apart either). */
static __device__ __forceinline__ uint32_t order_key(float f)
{
    uint32_t b = f == 0.0f ? 0u : __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static __device__ __forceinline__ float key_float(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* Top-p sort key: ascending order of these is by_value_desc's order (larger logit first,
 * then lower id), and ids are unique, so the order is total and deterministic. */
static __device__ __forceinline__ u64 sort_key(float v, int id)
{
    return ((u64)(~order_key(v)) << 32) | (uint32_t)id;
}

/* ------------------------------------------------------------------ top-k */

/* The k-th largest of l[0..vocab) (1 <= k <= vocab), exactly: a most-significant-digit
 * radix select over order_key. krem is the rank among the candidates that share the
 * digits fixed so far, counted from the top. */
static __device__ float kth_largest(const float *l, int vocab, int k, int *hist,
                                    union red_scratch *red)
{
    __shared__ uint32_t s_digit;
    __shared__ int s_krem;
    const int tid = threadIdx.x, lane = tid & 31;
    uint32_t prefix = 0, mask = 0;
    int krem = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (tid < 256) hist[tid] = 0;
        __syncthreads();
        /* Logits crowd into a few bins (most share their leading key byte), so lanes
         * with the same digit pool their counts and one of them adds: one shared atomic
         * per digit per warp, not a 32-way collision. */
        for (int base = 0; base < vocab; base += NT) {
            int j = base + tid;
            uint32_t key = j < vocab ? order_key(l[j]) : 0u;
            bool cand = j < vocab && (key & mask) == prefix;
            uint32_t digit = cand ? (key >> shift) & 255u : 256u;   /* 256: not counted */
            uint32_t peers = __match_any_sync(FULL_MASK, digit);
            if (cand && __ffs(peers) - 1 == lane) atomicAdd(&hist[digit], __popc(peers));
        }
        __syncthreads();
        /* Thread d looks at digit 255 - d, so the exclusive scan counts the candidates
         * with a larger digit; the digit holding rank krem is the one where that count
         * is below krem and adding its own reaches it (exactly one thread). */
        int c = tid < 256 ? hist[255 - tid] : 0, total;
        int above = block_exclusive_scan(c, &total, red->i);
        if (tid < 256 && above < krem && above + c >= krem) {
            s_digit = 255u - (uint32_t)tid;
            s_krem = krem - above;
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 255u << shift;
        krem = s_krem;
        /* s_digit and s_krem are rewritten only after the next pass's two barriers */
    }
    return key_float(prefix);
}

/* ------------------------------------------------------------------ bitonic sort */

/* One compare-exchange step over n keys of buf (shared or global memory), pairs j
 * apart; gbase is buf[0]'s position in the whole sequence, which sets each pair's
 * direction for merge size k. Ends with a barrier, which also publishes global writes
 * to the block. */
static __device__ void bitonic_step(u64 *buf, int n, int gbase, int k, int j)
{
    for (int i = threadIdx.x; i < n / 2; i += NT) {
        int lo = 2 * i - (i & (j - 1)), hi = lo + j;   /* i with a 0 bit inserted at j */
        u64 a = buf[lo], b = buf[hi];
        bool up = ((gbase + lo) & k) == 0;
        if ((a > b) == up) {
            buf[lo] = b;
            buf[hi] = a;
        }
    }
    __syncthreads();
}

/* Sorts keys[0..p) ascending, p a power of two. keys is `stage` itself when
 * p <= SORT_SMEM; otherwise keys is in the workspace and stage (SORT_SMEM keys of
 * shared memory) takes every stretch of steps whose pairs stay inside one chunk. */
static __device__ void bitonic_sort(u64 *keys, int p, u64 *stage)
{
    const int tid = threadIdx.x;
    if (p <= SORT_SMEM) {
        for (int k = 2; k <= p; k <<= 1)
            for (int j = k >> 1; j > 0; j >>= 1) bitonic_step(keys, p, 0, k, j);
        return;
    }
    /* merges up to SORT_SMEM wide: chunk by chunk, all in shared memory */
    for (int c = 0; c < p; c += SORT_SMEM) {
        for (int i = tid; i < SORT_SMEM; i += NT) stage[i] = keys[c + i];
        __syncthreads();
        for (int k = 2; k <= SORT_SMEM; k <<= 1)
            for (int j = k >> 1; j > 0; j >>= 1) bitonic_step(stage, SORT_SMEM, c, k, j);
        for (int i = tid; i < SORT_SMEM; i += NT) keys[c + i] = stage[i];
        __syncthreads();
    }
    /* wider merges: long strides in global memory, then the short ones per chunk */
    for (int k = 2 * SORT_SMEM; k <= p; k <<= 1) {
        int j = k >> 1;
        for (; j >= SORT_SMEM; j >>= 1) bitonic_step(keys, p, 0, k, j);
        for (int c = 0; c < p; c += SORT_SMEM) {
            for (int i = tid; i < SORT_SMEM; i += NT) stage[i] = keys[c + i];
            __syncthreads();
            for (int jj = j; jj > 0; jj >>= 1) bitonic_step(stage, SORT_SMEM, c, k, jj);
            for (int i = tid; i < SORT_SMEM; i += NT) keys[c + i] = stage[i];
            __syncthreads();
        }
    }
}

/* ------------------------------------------------------------------ top-p */

/* The float exp(l - mx) stored in the high half of sorted key i (0 past the end). */
static __device__ __forceinline__ float exp_at(const u64 *keys, int m, int i)
{
    return i < m ? __uint_as_float((uint32_t)(keys[i] >> 32)) : 0.0f;
}

/* ts_sample_probs's top-p block over l[0..vocab) in place: the finite logits (CPU:
 * `!= -INFINITY`) sorted, softmax in that order, and the token at sorted position j > 0
 * removed when the probability before it already exceeds top_p. */
static __device__ void top_p_filter(float *l, int vocab, float top_p, u64 *g_keys,
                                    u64 *s_keys)
{
    __shared__ int s_count, s_cut;
    const int tid = threadIdx.x, lane = tid & 31;

    /* count first, so the keys can go to shared memory when they fit */
    int m = 0;
    for (int base = 0; base < vocab; base += NT) {
        int j = base + tid;
        m += __syncthreads_count(j < vocab && l[j] != -INFINITY);
    }
    if (m == 0) return;   /* uniform: nothing to sort, nothing to remove */
    const int p = next_pow2(m);
    u64 *keys = p <= SORT_SMEM ? s_keys : g_keys;

    /* compaction in any order (the sort makes it deterministic), one atomic per warp */
    if (tid == 0) s_count = 0;
    __syncthreads();
    for (int base = 0; base < vocab; base += NT) {
        int j = base + tid;
        float v = j < vocab ? l[j] : -INFINITY;
        bool keep = v != -INFINITY;
        uint32_t ballot = __ballot_sync(FULL_MASK, keep);
        int at = 0;
        if (lane == 0 && ballot) at = atomicAdd(&s_count, __popc(ballot));
        at = __shfl_sync(FULL_MASK, at, 0);
        if (keep) keys[at + __popc(ballot & ((1u << lane) - 1u))] = sort_key(v, j);
    }
    for (int i = m + tid; i < p; i += NT) keys[i] = ~0ull;   /* padding sorts last */
    __syncthreads();
    bitonic_sort(keys, p, s_keys);

    /* Softmax over the sorted list: its maximum is the first entry. The key's value
     * half is no longer needed, so it now holds exp(l - mx) as float bits. */
    const float mx = l[(uint32_t)keys[0]];
    __syncthreads();   /* everyone has read keys[0] before thread 0 rewrites it */
    for (int i = tid; i < m; i += NT) {
        uint32_t id = (uint32_t)keys[i];
        keys[i] = ((u64)__float_as_uint(expf(l[id] - mx)) << 32) | id;
    }
    __syncthreads();

    /* The sum and the cumulative sum are float additions in sorted order, one at a time
     * as on the CPU, so the cut-off matches it bit for bit (ties in particular: equal
     * probabilities cross top_p at exactly the CPU's position). Warp 0 does them: each
     * lane loads one of 32 consecutive entries (the next 32 are loaded before the
     * current ones are added), and every lane adds all 32 in order via shuffles, so the
     * lanes agree on the sum, the cut and the control flow. Padding adds +0.0, which
     * leaves a sum of non-negative values unchanged. */
    if ((tid >> 5) == 0) {
        float sum = 0.0f;
        float cur = exp_at(keys, m, lane);
        for (int base = 0; base < m; base += 32) {
            float nxt = exp_at(keys, m, base + 32 + lane);
#pragma unroll
            for (int i = 0; i < 32; i++) sum = __fadd_rn(sum, __shfl_sync(FULL_MASK, cur, i));
            cur = nxt;
        }
        /* removed[i] = cumsum[i-1] > top_p: the token that crosses stays. The cumulative
         * sum never decreases, so the removed positions are a suffix [cut, m). */
        float cum = 0.0f;
        int cut = m;
        cur = __fdiv_rn(exp_at(keys, m, lane), sum);
        for (int base = 0; base < m && cut == m; base += 32) {
            float nxt = __fdiv_rn(exp_at(keys, m, base + 32 + lane), sum);
#pragma unroll
            for (int i = 0; i < 32; i++) {
                float pr = __shfl_sync(FULL_MASK, cur, i);
                if (cut == m && base + i > 0 && base + i < m && cum > top_p) cut = base + i;
                cum = __fadd_rn(cum, pr);
            }
            cur = nxt;
        }
        if (lane == 0) s_cut = cut;
    }
    __syncthreads();
    const int cut = s_cut;
    for (int i = cut + tid; i < m; i += NT) l[(uint32_t)keys[i]] = -INFINITY;
}

/* ------------------------------------------------------------------ kernel */

static __global__ void __launch_bounds__(NT, 1)
sample_kernel(int32_t *tokens, const tsk_sample_row *rows, int vocab, unsigned char *ws,
              size_t stride)
{
    __shared__ u64 s_keys[SORT_SMEM];
    __shared__ int s_hist[256];
    __shared__ union red_scratch s_red;
    const int tid = threadIdx.x;
    const tsk_sample_row r = rows[blockIdx.x];
    unsigned char *base = ws + (size_t)blockIdx.x * stride;
    float *l = (float *)base;
    u64 *g_keys = (u64 *)(base + logits_bytes(vocab));   /* only used when p > SORT_SMEM */

    /* CFG combine and temperature, rounded step by step as the CPU does (the _rn
     * intrinsics keep the compiler from fusing them into an FMA). */
    const float t = r.temperature > 1e-5f ? r.temperature : 1e-5f;
    for (int j = tid; j < vocab; j += NT) {
        float x = r.cond[j];
        if (r.uncond) {
            float u = r.uncond[j];
            x = __fadd_rn(u, __fmul_rn(__fsub_rn(x, u), r.cfg_scale));
        }
        l[j] = __fdiv_rn(x, t);
    }
    __syncthreads();

    /* top-k; k >= vocab keeps everything (l < min never holds) */
    if (r.top_k > 0 && r.top_k < vocab) {
        float kth = kth_largest(l, vocab, r.top_k, s_hist, &s_red);
        for (int j = tid; j < vocab; j += NT)
            if (l[j] < kth) l[j] = -INFINITY;
        __syncthreads();
    }

    if (r.top_p < 1.0f) {
        top_p_filter(l, vocab, r.top_p, g_keys, s_keys);
        __syncthreads();
    }

    /* softmax over the whole vocabulary: l becomes exp(l - max); the division by the
     * sum happens as the draw reads each entry */
    float mx = -INFINITY;
    for (int j = tid; j < vocab; j += NT) mx = l[j] > mx ? l[j] : mx;
    mx = block_reduce(mx, op_max_f(), -INFINITY, s_red.f);
    float s = 0.0f;
    for (int j = tid; j < vocab; j += NT) {
        float e = expf(l[j] - mx);
        l[j] = e;
        s = __fadd_rn(s, e);
    }
    const float sum = block_reduce(s, op_add_f(), 0.0f, s_red.f);   /* barriers publish l */

    /* The draw: each thread owns a contiguous run of ids, so a scan of the per-thread
     * double sums gives the cumulative probability in ascending id order. Entries with
     * probability <= 0 are skipped as ts_sample_draw skips them (a NaN counts, as there). */
    const int per = (vocab + NT - 1) / NT, lo = tid * per < vocab ? tid * per : vocab;
    const int hi = lo + per < vocab ? lo + per : vocab;
    double part = 0.0, total;
    for (int j = lo; j < hi; j++) {
        float pr = __fdiv_rn(l[j], sum);
        if (!(pr <= 0.0f)) part = __dadd_rn(part, (double)pr);
    }
    double cum = block_exclusive_scan(part, &total, s_red.d);
    const double target = __dmul_rn(r.u, total);
    int hit = INT_MAX, last = -1;
    for (int j = lo; j < hi; j++) {
        float pr = __fdiv_rn(l[j], sum);
        if (pr <= 0.0f) continue;
        cum = __dadd_rn(cum, (double)pr);
        last = j;
        if (cum > target) {
            hit = j;
            break;   /* `last` is only needed when no thread hits */
        }
    }
    hit = block_reduce(hit, op_min_i(), INT_MAX, s_red.i);
    if (hit == INT_MAX) {   /* uniform: rounding left target at the very top */
        last = block_reduce(last, op_max_i(), -1, s_red.i);
        hit = last >= 0 ? last : 0;
    }
    if (tid == 0) tokens[blockIdx.x] = hit;
}

/* ------------------------------------------------------------------ launchers */

/* Vocabularies up to 1 << 30 (next_pow2 and the sort positions stay within int). */
#define MAX_VOCAB (1 << 30)

extern "C" size_t tsk_sample_workspace(int n, int vocab)
{
    if (n <= 0 || vocab <= 0 || vocab > MAX_VOCAB) return 0;
    return (size_t)n * row_bytes(vocab);
}

extern "C" cudaError_t tsk_sample(cudaStream_t s, int32_t *tokens, const tsk_sample_row *rows,
                                  int n, int vocab, void *workspace)
{
    if (n <= 0) return cudaSuccess;
    if (vocab <= 0 || vocab > MAX_VOCAB) return cudaErrorInvalidValue;
    sample_kernel<<<n, NT, 0, s>>>(tokens, rows, vocab, (unsigned char *)workspace,
                                   row_bytes(vocab));
    return cudaGetLastError();
}
