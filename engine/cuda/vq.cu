/* vq.cu - the CUDA kernels of the convolutional (VQ) decoder: im2col (the B operand of
 * a convolution's GEMM), GroupNorm (+ swish), nearest x2 upsampling and the row softmax
 * of spatial attention. They follow the CPU backend's numerics (engine/cpu/backend_cpu.c)
 * as closely as a parallel reduction allows:
 *  - GroupNorm statistics are accumulated in double and the affine step is rounded like
 *    the CPU's (which is built without FP contraction), so given the same mean and
 *    variance every output is bitwise the CPU's except for expf in the swish;
 *  - the softmax applies the scale, subtracts the row maximum and divides by a float sum,
 *    as the CPU does; only the order of the sum differs.
 * Launchers follow kernels.h: no allocation, no synchronisation, cudaGetLastError() after
 * the launch. Offsets into tensors are 64-bit: a batch of 384 px maps passes 2^31 floats.
 */
#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/cuda/kernels.h"

/* ------------------------------------------------------------------ helpers */

/* Grid dimensions y and z stop at 65535; kernels that put a count there loop over it. */
#define GRID_Y_MAX 65535

/* Butterfly reduction: every lane ends with the warp's result. */
template <typename T, typename Op>
static __device__ __forceinline__ T warp_reduce(T v, Op op)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/* Reduces v over the block (blockDim.x a multiple of 32) and returns the result to every
 * thread. sh is 32 elements of shared memory; the closing barrier lets the caller reuse
 * it for the next reduction at once. */
template <typename T, typename Op>
static __device__ T block_reduce(T v, Op op, T identity, T *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : identity;
        v = warp_reduce(v, op);
        /* Lane 0 overwrites sh[0] only after the shuffles above, i.e. after every lane
         * of this warp has read its slot. */
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    v = sh[0];
    __syncthreads();
    return v;
}

struct op_sum {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/* V consecutive floats moved as one access (V = 4: a 16-byte float4; the caller checks
 * the alignment). */
template <int V>
struct fvec {
    float v[V];
};
template <int V>
static __device__ __forceinline__ fvec<V> load_vec(const float *p);
template <>
__device__ __forceinline__ fvec<1> load_vec<1>(const float *p)
{
    fvec<1> r;
    r.v[0] = *p;
    return r;
}
template <>
__device__ __forceinline__ fvec<4> load_vec<4>(const float *p)
{
    float4 t = *reinterpret_cast<const float4 *>(p);
    fvec<4> r;
    r.v[0] = t.x;
    r.v[1] = t.y;
    r.v[2] = t.z;
    r.v[3] = t.w;
    return r;
}
template <int V>
static __device__ __forceinline__ void store_vec(float *p, const fvec<V> &r);
template <>
__device__ __forceinline__ void store_vec<1>(float *p, const fvec<1> &r)
{
    *p = r.v[0];
}
template <>
__device__ __forceinline__ void store_vec<4>(float *p, const fvec<4> &r)
{
    /* __stwb is an ordinary store, but as an intrinsic it stays one 16-byte access:
     * a plain assignment was seen split into four scalar stores after unrolling. */
    __stwb(reinterpret_cast<float4 *>(p), make_float4(r.v[0], r.v[1], r.v[2], r.v[3]));
}

static inline bool aligned(const void *p, uintptr_t bytes)
{
    return ((uintptr_t)p & (bytes - 1)) == 0;
}

/* ------------------------------------------------------------------ im2col */

#define IM2COL_THREADS 256

static __device__ __forceinline__ void put(float *d, float v) { *d = v; }
static __device__ __forceinline__ void put(__nv_bfloat16 *d, float v)
{
    *d = __float2bfloat16_rn(v);
}

/* One thread per (input channel, output position p): it finds the window of p once and
 * writes that window's k*k values down the k*k rows of the channel. Within a row the
 * threads of a block write consecutive p, so every store is coalesced; the k*k reads of
 * neighbouring windows overlap and come from L1. */
template <typename T>
static __global__ void __launch_bounds__(IM2COL_THREADS)
im2col_kernel(T *__restrict__ col, const float *__restrict__ in, int cin, int h, int w, int k,
              int stride, int pad, int ho, int wo)
{
    /* The grid's x covers P (which the launcher checked fits an int) exactly once. */
    const int P = ho * wo;
    const int64_t p64 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p64 >= P) return;
    const int p = (int)p64;
    const int oy = p / wo, ox = p - oy * wo;
    const int iy0 = oy * stride - pad, ix0 = ox * stride - pad;
    for (int ci = blockIdx.y; ci < cin; ci += gridDim.y) {
        const float *src = in + (int64_t)ci * h * w;
        T *dst = col + (int64_t)ci * k * k * P + p;
        for (int ky = 0; ky < k; ky++) {
            const int iy = iy0 + ky;
            /* Unsigned compares fold the < 0 and >= size tests: zero padding on both
             * sides (the caller's ho, wo imply the padding after). */
            const bool row_in = (unsigned)iy < (unsigned)h;
            for (int kx = 0; kx < k; kx++) {
                const int ix = ix0 + kx;
                const float v =
                    row_in && (unsigned)ix < (unsigned)w ? __ldg(src + (int64_t)iy * w + ix) : 0.0f;
                put(dst + (int64_t)(ky * k + kx) * P, v);
            }
        }
    }
}

extern "C" cudaError_t tsk_im2col(cudaStream_t s, void *col, int f32, const float *in, int cin,
                                  int h, int w, int k, int stride, int pad_lo, int ho, int wo)
{
    if (cin < 0 || h < 0 || w < 0 || ho < 0 || wo < 0 || k <= 0 || stride <= 0)
        return cudaErrorInvalidValue;
    if (cin == 0 || ho == 0 || wo == 0) return cudaSuccess;
    if ((int64_t)ho * wo > INT32_MAX) return cudaErrorInvalidValue;
    const int P = ho * wo;
    dim3 grid((unsigned)((P + IM2COL_THREADS - 1) / IM2COL_THREADS),
              (unsigned)(cin < GRID_Y_MAX ? cin : GRID_Y_MAX));
    if (f32)
        im2col_kernel<float><<<grid, IM2COL_THREADS, 0, s>>>(
            (float *)col, in, cin, h, w, k, stride, pad_lo, ho, wo);
    else
        im2col_kernel<__nv_bfloat16><<<grid, IM2COL_THREADS, 0, s>>>(
            (__nv_bfloat16 *)col, in, cin, h, w, k, stride, pad_lo, ho, wo);
    return cudaGetLastError();
}

/* ------------------------------------------------------------------ group norm */

/* One block per (image, group). The decoder runs one image at a time, so only 32
 * blocks exist: each must keep many loads in flight on its own, hence the full 1024
 * threads and GN_UNROLL independent vector loads per thread and iteration. */
#define GN_THREADS 1024
#define GN_UNROLL 4

/* Steps (ch, p), the channel and the vector within the channel of a thread's flat
 * index in the group (index = ch * hwv + p), forward by `step` vectors. Large maps
 * (hwv > step) cross at most one channel boundary per step: no division. Small ones
 * have p < hwv + step <= 2 * step, so a 32-bit division does. */
static __device__ __forceinline__ void gn_advance(int &ch, int64_t &p, int step, int hwv)
{
    p += step;
    if (p < hwv) return;
    if (hwv > step) {
        p -= hwv;
        ch++;
    } else {
        const int q = (int)p / hwv;
        ch += q;
        p -= (int64_t)q * hwv;
    }
}

/* Normalises the V values of one vector of channel ch in place, rounded as the CPU's
 *   a = gamma * inv;  b = beta - mean * a;  y = x * a + b;  y / (1 + expf(-y))
 * (the _rn intrinsics keep nvcc from fusing multiply-adds, which the CPU build does not
 * do either). */
template <int V>
static __device__ __forceinline__ void gn_apply(fvec<V> &r, const float *gamma, const float *beta,
                                                int ch, float mean, float inv, int swish)
{
    const float a = __fmul_rn(__ldg(gamma + ch), inv);
    const float b = __fsub_rn(__ldg(beta + ch), __fmul_rn(mean, a));
#pragma unroll
    for (int j = 0; j < V; j++) {
        float y = __fadd_rn(__fmul_rn(r.v[j], a), b);
        r.v[j] = swish ? y / (1.0f + expf(-y)) : y;
    }
}

/* The block first reduces its whole group and only then writes, so out may alias in:
 * each element is read and then written by the same thread, and no thread writes before
 * the barriers inside block_reduce have seen every read of the statistics pass.
 *
 * Statistics: the CPU sums in double, mean first and then squared deviations. Here one
 * pass accumulates, in double, the sum and the sum of squares of x - K, K being the
 * group's first element ("shifted data"): var = E[(x-K)^2] - E[x-K]^2. Shifting by a
 * sample of the data keeps the cancellation to a factor of about (mean-K)^2 / var, which
 * double precision absorbs far below float resolution: mean and variance agree with the
 * two-pass result to well under a float ulp, while the group is read from memory twice
 * instead of three times. */
template <int V>
static __global__ void __launch_bounds__(GN_THREADS)
group_norm_kernel(float *out, const float *in, const float *gamma, const float *beta, int c,
                  int hw, int groups, float eps, int swish)
{
    __shared__ double red[32];
    const int cg = c / groups;
    const int img = blockIdx.x / groups, g = blockIdx.x % groups;
    const int64_t base = ((int64_t)img * c + (int64_t)g * cg) * hw;
    const int hwv = hw / V;                  /* vectors per channel (V divides hw) */
    const int64_t nv = (int64_t)cg * hwv;    /* vectors in the group */
    const int step = blockDim.x;
    const float *x = in + base;
    float *y = out + base;

    /* Pass 1: shifted sums. All threads read x[0] before any write (barriers below). */
    const double shift = x[0];
    double s1 = 0.0, s2 = 0.0;
    int64_t i = threadIdx.x;
    for (; i + (int64_t)(GN_UNROLL - 1) * step < nv; i += (int64_t)GN_UNROLL * step) {
        fvec<V> r[GN_UNROLL];
#pragma unroll
        for (int u = 0; u < GN_UNROLL; u++) r[u] = load_vec<V>(x + (i + (int64_t)u * step) * V);
#pragma unroll
        for (int u = 0; u < GN_UNROLL; u++)
#pragma unroll
            for (int j = 0; j < V; j++) {
                const double d = (double)r[u].v[j] - shift;
                s1 += d;
                s2 = fma(d, d, s2);
            }
    }
    for (; i < nv; i += step) {
        const fvec<V> r = load_vec<V>(x + i * V);
#pragma unroll
        for (int j = 0; j < V; j++) {
            const double d = (double)r.v[j] - shift;
            s1 += d;
            s2 = fma(d, d, s2);
        }
    }
    s1 = block_reduce(s1, op_sum(), 0.0, red);
    s2 = block_reduce(s2, op_sum(), 0.0, red);

    /* Every thread derives the same statistics, as the CPU does: biased variance,
     * 1 / sqrt(var + eps) in double, then both rounded to float. */
    const double count = (double)cg * hw;
    const double m1 = s1 / count;
    double var = s2 / count - m1 * m1;
    if (var < 0.0) var = 0.0;   /* a near-constant group can round to just below zero */
    const float inv = (float)(1.0 / sqrt(var + (double)eps));
    const float mean = (float)(shift + m1);

    /* Pass 2: normalise. Loads of a batch are issued before its stores: the compiler
     * may not hoist them itself, since out may alias in. */
    i = threadIdx.x;
    int ch = (int)threadIdx.x / hwv;
    int64_t p = (int)threadIdx.x % hwv;
    for (; i + (int64_t)(GN_UNROLL - 1) * step < nv; i += (int64_t)GN_UNROLL * step) {
        fvec<V> r[GN_UNROLL];
#pragma unroll
        for (int u = 0; u < GN_UNROLL; u++) r[u] = load_vec<V>(x + (i + (int64_t)u * step) * V);
#pragma unroll
        for (int u = 0; u < GN_UNROLL; u++) {
            gn_apply<V>(r[u], gamma, beta, g * cg + ch, mean, inv, swish);
            store_vec<V>(y + (i + (int64_t)u * step) * V, r[u]);
            gn_advance(ch, p, step, hwv);
        }
    }
    for (; i < nv; i += step) {
        fvec<V> r = load_vec<V>(x + i * V);
        gn_apply<V>(r, gamma, beta, g * cg + ch, mean, inv, swish);
        store_vec<V>(y + i * V, r);
        gn_advance(ch, p, step, hwv);
    }
}

extern "C" cudaError_t tsk_group_norm(cudaStream_t s, float *out, const float *in,
                                      const float *gamma, const float *beta, int n, int c,
                                      int hw, int groups, float eps, int swish)
{
    if (n < 0 || c < 0 || hw < 0) return cudaErrorInvalidValue;
    if (n == 0 || c == 0 || hw == 0) return cudaSuccess;
    if (groups <= 0 || c % groups) return cudaErrorInvalidValue;
    if ((int64_t)n * groups > INT32_MAX) return cudaErrorInvalidValue;
    const unsigned blocks = (unsigned)(n * groups);
    /* Whole float4s need hw % 4 == 0 (then every group starts on one) and 16-byte
     * aligned buffers; model code may hand in offset pointers, so check. */
    if (hw % 4 == 0 && aligned(in, 16) && aligned(out, 16))
        group_norm_kernel<4><<<blocks, GN_THREADS, 0, s>>>(out, in, gamma, beta, c, hw, groups,
                                                          eps, swish);
    else
        group_norm_kernel<1><<<blocks, GN_THREADS, 0, s>>>(out, in, gamma, beta, c, hw, groups,
                                                          eps, swish);
    return cudaGetLastError();
}

/* ------------------------------------------------------------------ upsample */

#define UP_THREADS 256

/* One thread per input pixel: a coalesced read, then the 2x2 copy as two float2 stores
 * (rows 2y and 2y+1), each coalesced along the output row. PAIRS needs out 8-byte
 * aligned; every written pair then starts at an even float offset. */
template <bool PAIRS>
static __global__ void __launch_bounds__(UP_THREADS)
upsample2x_kernel(float *__restrict__ out, const float *__restrict__ in, int64_t planes, int h,
                  int w)
{
    const int hw = h * w;   /* 4 * hw fits an int: checked by the launcher */
    for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const float *src = in + plane * hw;
        float *dst = out + plane * 4 * hw;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hw; i += gridDim.x * blockDim.x) {
            const int yy = i / w, xx = i - yy * w;
            const float v = __ldg(src + i);
            float *o = dst + (int64_t)(2 * yy) * (2 * w) + 2 * xx;
            if (PAIRS) {
                *reinterpret_cast<float2 *>(o) = make_float2(v, v);
                *reinterpret_cast<float2 *>(o + 2 * w) = make_float2(v, v);
            } else {
                o[0] = o[1] = v;
                o[2 * w] = o[2 * w + 1] = v;
            }
        }
    }
}

extern "C" cudaError_t tsk_upsample2x(cudaStream_t s, float *out, const float *in, int n, int c,
                                      int h, int w)
{
    if (n < 0 || c < 0 || h < 0 || w < 0) return cudaErrorInvalidValue;
    if (n == 0 || c == 0 || h == 0 || w == 0) return cudaSuccess;
    if (4 * (int64_t)h * w > INT32_MAX) return cudaErrorInvalidValue;
    const int64_t planes = (int64_t)n * c;
    const int hw = h * w;
    dim3 grid((unsigned)((hw + UP_THREADS - 1) / UP_THREADS),
              (unsigned)(planes < GRID_Y_MAX ? planes : GRID_Y_MAX));
    if (aligned(out, 8))
        upsample2x_kernel<true><<<grid, UP_THREADS, 0, s>>>(out, in, planes, h, w);
    else
        upsample2x_kernel<false><<<grid, UP_THREADS, 0, s>>>(out, in, planes, h, w);
    return cudaGetLastError();
}

/* ------------------------------------------------------------------ softmax */

/* One block per row. Rows up to SM_THREADS * SM_MAX_ITEMS columns (16384; attention over
 * a 96x96 map has 9216) stay in registers: one read and one write of the row. Longer
 * rows take the streaming kernel, which reads the row three times. */
#define SM_THREADS 256
#define SM_MAX_ITEMS 64

/* x = softmax(x * scale) as the CPU: v = x * scale rounded (never fused into v - max),
 * e = expf(v - max), then e / sum. Out-of-row slots hold -inf and are left out of the
 * sum. ITEMS is a compile-time count so that r[] lives in registers. */
template <int ITEMS>
static __global__ void __launch_bounds__(SM_THREADS)
softmax_rows_kernel(float *x, int cols, float scale)
{
    __shared__ float red[32];
    float *row = x + (int64_t)blockIdx.x * cols;
    float r[ITEMS];
    float mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < ITEMS; u++) {
        const int j = threadIdx.x + u * SM_THREADS;
        r[u] = j < cols ? __fmul_rn(row[j], scale) : -INFINITY;
        mx = fmaxf(mx, r[u]);
    }
    mx = block_reduce(mx, op_max(), -INFINITY, red);
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < ITEMS; u++) {
        const int j = threadIdx.x + u * SM_THREADS;
        if (j < cols) {
            r[u] = expf(r[u] - mx);
            sum += r[u];
        }
    }
    sum = block_reduce(sum, op_sum(), 0.0f, red);
#pragma unroll
    for (int u = 0; u < ITEMS; u++) {
        const int j = threadIdx.x + u * SM_THREADS;
        if (j < cols) row[j] = r[u] / sum;
    }
}

/* Any row length: maximum, sum of exponentials, then the write, each a block-stride
 * pass over the row. expf is recomputed in the last pass rather than stored, so each
 * element's value is the same as in the register kernel. */
static __global__ void __launch_bounds__(SM_THREADS)
softmax_rows_long_kernel(float *x, int cols, float scale)
{
    __shared__ float red[32];
    float *row = x + (int64_t)blockIdx.x * cols;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += SM_THREADS) mx = fmaxf(mx, __fmul_rn(row[j], scale));
    mx = block_reduce(mx, op_max(), -INFINITY, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cols; j += SM_THREADS) sum += expf(__fmul_rn(row[j], scale) - mx);
    sum = block_reduce(sum, op_sum(), 0.0f, red);
    /* Each thread rewrites only the elements it read itself, so the in-place update
     * races with nobody. */
    for (int j = threadIdx.x; j < cols; j += SM_THREADS)
        row[j] = expf(__fmul_rn(row[j], scale) - mx) / sum;
}

extern "C" cudaError_t tsk_softmax_rows(cudaStream_t s, float *x, int rows, int cols, float scale)
{
    if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
    if (rows == 0 || cols == 0) return cudaSuccess;
    const unsigned blocks = (unsigned)rows;
    /* The smallest register budget that holds the row. */
    const int items = (cols + SM_THREADS - 1) / SM_THREADS;
    if (items <= 1)
        softmax_rows_kernel<1><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= 2)
        softmax_rows_kernel<2><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= 4)
        softmax_rows_kernel<4><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= 8)
        softmax_rows_kernel<8><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= 16)
        softmax_rows_kernel<16><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= 32)
        softmax_rows_kernel<32><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= 48)   /* 9216 columns: 36 per thread */
        softmax_rows_kernel<48><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else if (items <= SM_MAX_ITEMS)
        softmax_rows_kernel<SM_MAX_ITEMS><<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    else
        softmax_rows_long_kernel<<<blocks, SM_THREADS, 0, s>>>(x, cols, scale);
    return cudaGetLastError();
}
