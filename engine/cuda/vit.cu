// vit.cu - the kernels of the ViT / MM-DiT ops (CLIP's text tower, MaskGen's MM-DiT,
// TA-TiTok's ViT decoder; T5's gated feed-forward): LayerNorm, activations (alone and
// gated, act(a) * b), adaLN modulate and gate, scatter-add of rows, dense (cache-less)
// attention and the masked-decoding picks.
//
// All are float (the bf16 mode only changes weights). They follow the CPU backend's
// arithmetic (engine/cpu/backend_cpu.c, built without FP contraction): where the CPU's
// rounding can be reproduced cheaply it is, with the _rn intrinsics, so that nvcc's
// FMA contraction does not change a result:
//  - LayerNorm's statistics are double sums and its affine step is rounded as the CPU's,
//    so given the same mean and variance the output is the CPU's bit for bit;
//  - modulate and gated_add are bitwise the CPU's;
//  - the masked picks compute the guided logit in MaskGen's order (cond + (cond - uncond)
//    * guidance, then / softmax_temp) exactly, and the Gumbel noise from the same Philox
//    integers as engine/philox.c; only logf (within an ulp of glibc's) differs, so
//    noiseless picks and the reported logits match the CPU exactly.
// Launchers follow kernels.h: no allocation, no synchronisation, cudaGetLastError()
// after the launch; row offsets are 64-bit.
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "engine/cuda/kernels.h"

namespace {

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

unsigned blocks_for(size_t n)
{
    size_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 65535 * 4 ? b : 65535 * 4);   // grid-stride loops cover the rest
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. sh holds 32 doubles; the closing barrier lets the caller reuse it at once.
__device__ double block_sum(double v, double *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += sh[w];
    __syncthreads();
    return t;
}

// ------------------------------------------------------------------ LayerNorm

// One block per row. Two passes over the row (mean, then the squared deviations) in
// double, as the CPU; every read of x precedes the barrier inside the second sum, and
// each thread writes only elements it read itself, so out may alias x.
__global__ void layernorm_kernel(float *out, const float *x, const float *w, const float *b,
                                 int dim, float eps)
{
    __shared__ double sh[32];
    const float *xi = x + (size_t)blockIdx.x * dim;
    float *oi = out + (size_t)blockIdx.x * dim;
    double sum = 0.0;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) sum += xi[d];
    const double mean = block_sum(sum, sh) / dim;
    double var = 0.0;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        double e = xi[d] - mean;
        var += e * e;
    }
    var = block_sum(var, sh) / dim;
    const float inv = (float)(1.0 / sqrt(var + eps)), fm = (float)mean;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        float y = __fmul_rn(__fsub_rn(xi[d], fm), inv);
        if (w) y = __fmul_rn(y, w[d]);
        if (b) y = __fadd_rn(y, b[d]);
        oi[d] = y;
    }
}

// ------------------------------------------------------------------ element-wise

template <int Act> __device__ inline float act_fn(float x);
template <> __device__ inline float act_fn<TSK_ACT_GELU>(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}
template <> __device__ inline float act_fn<TSK_ACT_GELU_TANH>(float x)
{
    float x3 = x * x * x;
    return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x3)));
}
template <> __device__ inline float act_fn<TSK_ACT_QUICK_GELU>(float x)
{
    return x / (1.0f + expf(-1.702f * x));
}
template <> __device__ inline float act_fn<TSK_ACT_SILU>(float x) { return x / (1.0f + expf(-x)); }
template <> __device__ inline float act_fn<TSK_ACT_RELU>(float x) { return x > 0.0f ? x : 0.0f; }

template <int Act>
__global__ void activation_kernel(float *out, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = act_fn<Act>(x[i]);
}

// act(a) * b; the product is rounded on its own (no FMA into act's last step), as the CPU.
template <int Act>
__global__ void act_mul_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __fmul_rn(act_fn<Act>(a[i]), b[i]);
}

__global__ void modulate_kernel(float *out, const float *x, const float *shift,
                                const float *scale, int mod_stride, int dim, int rows_per_item,
                                size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)dim, d = i % (size_t)dim;
        size_t mo = (r / (size_t)rows_per_item) * (size_t)mod_stride + d;
        float y = __fmul_rn(x[i], __fadd_rn(1.0f, scale[mo]));
        out[i] = shift ? __fadd_rn(y, shift[mo]) : y;
    }
}

__global__ void gated_add_kernel(float *x, const float *y, const float *gate, int mod_stride,
                                 int dim, int rows_per_item, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)dim, d = i % (size_t)dim;
        float g = gate[(r / (size_t)rows_per_item) * (size_t)mod_stride + d];
        x[i] = __fadd_rn(x[i], __fmul_rn(g, y[i]));
    }
}

__global__ void scatter_add_kernel(float *x, const float *y, const int32_t *rows, int dim)
{
    float *xr = x + (size_t)rows[blockIdx.x] * dim;
    const float *yr = y + (size_t)blockIdx.x * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) xr[d] += yr[d];
}

// ------------------------------------------------------------------ dense attention
//
// One block per (tile of kTQ queries, head, sequence): grid (ceil(seq_len / kTQ),
// n_head, n_seq). Shared memory holds the tile's queries, one tile of kTK keys (then of
// values), and the tile's scores against every key it may see, [kTQ][seq_len]:
//   1. scores: warp w owns queries 4w..4w+3 of the tile, lane l keys l and l + 32 of each
//      key tile; per dimension it reads two keys (rows kst apart, kst odd, so the lanes
//      hit 32 different banks) and four broadcast queries for eight FMAs;
//   2. softmax of each query's row by its own warp (max, exp, sum; the rows are private
//      to the warp, so __syncwarp suffices), the causal mask as -inf scores;
//   3. out = P V: values go through the same tile, lanes own dimensions lane + 32c,
//      each a running sum for the warp's four queries, scaled by 1/sum at the end.
// Causal tiles stop the keys after their last query. Queries past the sequence end are
// zeros, computed and not written.

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kTQ = 16;                       // queries per block
constexpr int kQPW = kTQ / kAttnWarps;        // queries per warp
constexpr int kTK = 64;                       // keys (values) per shared tile
constexpr int kMaxHeadDim = 128;
constexpr int kDimSlots = kMaxHeadDim / 32;   // output dimensions per lane

static_assert(kTK == 64, "two keys per lane in the score loop");

__device__ inline size_t row_of(const int32_t *rows, size_t i) { return rows ? (size_t)rows[i] : i; }

__device__ inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

__device__ inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}

size_t dense_smem_floats(int head_dim, int seq_len)
{
    return (size_t)kTQ * head_dim + (size_t)kTK * (head_dim | 1) + (size_t)kTQ * seq_len;
}

__global__ void __launch_bounds__(kAttnThreads)
dense_attention_kernel(float *out, const float *q, const float *k, const float *v, int stride,
                       int head_dim, const int32_t *rows, int seq_len, int causal)
{
    extern __shared__ float smem[];
    const int hd = head_dim, kst = hd | 1;
    float *qs = smem;                           // [kTQ][hd]
    float *tile = qs + kTQ * hd;                // keys [kTK][kst], then values [kTK][hd]
    float *sc = tile + kTK * kst;               // [kTQ][seq_len]

    const int q0 = blockIdx.x * kTQ, h = blockIdx.y, n_head = gridDim.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const size_t seq0 = (size_t)blockIdx.z * seq_len, col = (size_t)h * hd;
    const int nq = min(kTQ, seq_len - q0);
    const int n_keys = causal ? q0 + nq : seq_len;   // the keys any query of the tile sees
    const float scale = 1.0f / sqrtf((float)hd);

    for (int e = threadIdx.x; e < kTQ * hd; e += kAttnThreads) {
        int i = e / hd, d = e % hd;
        qs[e] = i < nq ? q[row_of(rows, seq0 + q0 + i) * stride + col + d] : 0.0f;
    }

    // 1. scores
    for (int t0 = 0; t0 < n_keys; t0 += kTK) {
        const int nt = min(kTK, n_keys - t0);
        __syncthreads();   // the previous key tile is consumed (and qs is written)
        for (int e = threadIdx.x; e < kTK * hd; e += kAttnThreads) {
            int t = e / hd, d = e % hd;   // rows past the last key are zeroed, not read
            tile[t * kst + d] = t < nt ? k[row_of(rows, seq0 + t0 + t) * stride + col + d] : 0.0f;
        }
        __syncthreads();
        float acc[kQPW][2];
#pragma unroll
        for (int j = 0; j < kQPW; j++) acc[j][0] = acc[j][1] = 0.0f;
        const float *ka = tile + lane * kst, *kb = tile + (lane + 32) * kst;
        const float *qw = qs + warp * kQPW * hd;
        for (int d = 0; d < hd; d++) {
            const float x0 = ka[d], x1 = kb[d];
#pragma unroll
            for (int j = 0; j < kQPW; j++) {
                const float qv = qw[j * hd + d];
                acc[j][0] = fmaf(qv, x0, acc[j][0]);
                acc[j][1] = fmaf(qv, x1, acc[j][1]);
            }
        }
#pragma unroll
        for (int j = 0; j < kQPW; j++) {
            const int qi = warp * kQPW + j, pos = q0 + qi;
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int t = lane + 32 * c, key = t0 + t;
                if (t < nt) sc[qi * seq_len + key] = causal && key > pos ? -INFINITY : acc[j][c] * scale;
            }
        }
    }

    // 2. softmax of the warp's own rows (key 0 is always visible: every max is finite)
    __syncwarp();
    float inv[kQPW];
#pragma unroll
    for (int j = 0; j < kQPW; j++) {
        float *row = sc + (warp * kQPW + j) * seq_len;
        float mx = -INFINITY;
        for (int t = lane; t < n_keys; t += 32) mx = fmaxf(mx, row[t]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int t = lane; t < n_keys; t += 32) {
            float e = expf(row[t] - mx);   // masked keys: exp(-inf) = 0
            row[t] = e;
            sum += e;
        }
        inv[j] = 1.0f / warp_sum(sum);
    }
    __syncwarp();

    // 3. out = P V
    float o[kQPW][kDimSlots];
#pragma unroll
    for (int j = 0; j < kQPW; j++)
#pragma unroll
        for (int c = 0; c < kDimSlots; c++) o[j][c] = 0.0f;
    const float *pw = sc + warp * kQPW * seq_len;
    for (int t0 = 0; t0 < n_keys; t0 += kTK) {
        const int nt = min(kTK, n_keys - t0);
        __syncthreads();   // the previous tile (keys or values) is consumed
        for (int e = threadIdx.x; e < nt * hd; e += kAttnThreads) {
            int t = e / hd, d = e % hd;
            tile[e] = v[row_of(rows, seq0 + t0 + t) * stride + col + d];
        }
        __syncthreads();
        for (int t = 0; t < nt; t++) {
            float p[kQPW];
#pragma unroll
            for (int j = 0; j < kQPW; j++) p[j] = pw[j * seq_len + t0 + t];
            const float *vt = tile + t * hd;
#pragma unroll
            for (int c = 0; c < kDimSlots; c++) {
                const int d = lane + 32 * c;
                if (d < hd) {
                    const float x = vt[d];
#pragma unroll
                    for (int j = 0; j < kQPW; j++) o[j][c] = fmaf(p[j], x, o[j][c]);
                }
            }
        }
    }
    const size_t od = (size_t)n_head * hd;
#pragma unroll
    for (int j = 0; j < kQPW; j++) {
        const int qi = warp * kQPW + j;
        if (qi >= nq) continue;
        float *orow = out + row_of(rows, seq0 + q0 + qi) * od + col;
#pragma unroll
        for (int c = 0; c < kDimSlots; c++) {
            const int d = lane + 32 * c;
            if (d < hd) orow[d] = o[j][c] * inv[j];
        }
    }
}

// ------------------------------------------------------------------ masked picks

constexpr int kPickThreads = 256;

// Philox4x32-10 as engine/philox.c: the same rounds, constants and word order, with the
// 32x32 -> 64-bit products split into __umulhi and the low product.
__device__ inline uint4 philox4x32(uint4 c, uint32_t k0, uint32_t k1)
{
#pragma unroll
    for (int round = 0; round < 10; round++) {
        const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

// ts_rng_gumbel_f's noise from one Philox word: u = ((w >> 8) + 0.5) / 2^24, exact in
// float, then -log(-log(u)) with the device's logf.
__device__ inline float gumbel_from_word(uint32_t w)
{
    const float u = __fmul_rn(__fadd_rn((float)(w >> 8), 0.5f), 1.0f / 16777216.0f);
    return -logf(-logf(u));
}

// The CPU's guided_logit, rounded step by step.
__device__ inline float guided_logit(const float *cond, const float *uncond, int v, float guidance,
                                     float softmax_temp)
{
    const float c = cond[v];
    const float l = uncond ? __fadd_rn(c, __fmul_rn(__fsub_rn(c, uncond[v]), guidance)) : c;
    return __fdiv_rn(l, softmax_temp);
}

// (value, index) a beats b: larger value, or equal value and lower index. NaN never
// becomes a candidate (it is never > anything), as on the CPU.
__device__ inline bool beats(float av, int ai, float bv, int bi)
{
    return av > bv || (av == bv && ai < bi);
}

// One block per (row, position). Thread t takes the Philox blocks first + t, first + t +
// blockDim.x, ... of this position's indices p * vocab + v (one Philox call serves four
// consecutive v), so its own candidates come in ascending v and a strict > keeps the
// lowest of equal ones; the block then reduces (value, index) pairs with the same rule.
__global__ void __launch_bounds__(kPickThreads)
masked_pick_kernel(int32_t *ids, float *logit, const tsk_masked_row *rows, int n_pos, int vocab)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const int task = blockIdx.x;
    const tsk_masked_row r = rows[task / n_pos];
    const int p = task % n_pos;
    const float *cond = r.cond + (size_t)p * vocab;
    const float *uncond = r.uncond ? r.uncond + (size_t)p * vocab : NULL;
    const bool noisy = r.noise_temp != 0.0f;
    const uint32_t base = (uint32_t)p * (uint32_t)vocab;   // the CPU's 32-bit index
    const uint32_t key0 = (uint32_t)r.seed, key1 = (uint32_t)(r.seed >> 32);
    const uint32_t first = base / 4, last = (base + (uint32_t)(vocab - 1)) / 4;

    float best = -INFINITY;
    int best_v = INT_MAX;
    for (uint32_t blk = first + threadIdx.x; blk <= last; blk += blockDim.x) {
        // counter {image, step, TS_RNG_MASK_TOKEN (1), index / 4}, key = the seed's words
        const uint4 w = noisy ? philox4x32(make_uint4(r.image, r.step, 1u, blk), key0, key1)
                              : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int v = (int)(blk * 4u + (uint32_t)e - base);   // wraps negative before base
            if (v < 0 || v >= vocab) continue;
            float s = guided_logit(cond, uncond, v, r.guidance, r.softmax_temp);
            if (noisy) {
                const uint32_t we = e == 0 ? w.x : e == 1 ? w.y : e == 2 ? w.z : w.w;
                s = __fadd_rn(s, __fmul_rn(r.noise_temp, gumbel_from_word(we)));
            }
            if (s > best) {
                best = s;
                best_v = v;
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(kFull, best, o);
        const int oi = __shfl_xor_sync(kFull, best_v, o);
        if (beats(ov, oi, best, best_v)) {
            best = ov;
            best_v = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = best_v;
    }
    __syncthreads();
    if (warp == 0) {
        const bool have = lane < (int)(blockDim.x >> 5);
        best = have ? sv[lane] : -INFINITY;
        best_v = have ? si[lane] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(kFull, best, o);
            const int oi = __shfl_xor_sync(kFull, best_v, o);
            if (beats(ov, oi, best, best_v)) {
                best = ov;
                best_v = oi;
            }
        }
        if (lane == 0) {
            // No candidate (every score -inf or NaN): the CPU keeps its initial index 0.
            if (best_v >= vocab) best_v = 0;
            ids[task] = best_v;
            logit[task] = guided_logit(cond, uncond, best_v, r.guidance, r.softmax_temp);
        }
    }
}

}  // namespace

// ------------------------------------------------------------------ launchers

extern "C" {

cudaError_t tsk_layernorm(cudaStream_t s, float *out, const float *x, const float *w,
                          const float *b, int m, int dim, float eps)
{
    if (m <= 0 || dim <= 0) return cudaSuccess;
    layernorm_kernel<<<m, kThreads, 0, s>>>(out, x, w, b, dim, eps);
    return cudaGetLastError();
}

cudaError_t tsk_activation(cudaStream_t s, float *out, const float *x, size_t n, int act)
{
    if (!n) return cudaSuccess;
    const unsigned g = blocks_for(n);
    switch (act) {
    case TSK_ACT_GELU: activation_kernel<TSK_ACT_GELU><<<g, kThreads, 0, s>>>(out, x, n); break;
    case TSK_ACT_GELU_TANH: activation_kernel<TSK_ACT_GELU_TANH><<<g, kThreads, 0, s>>>(out, x, n); break;
    case TSK_ACT_QUICK_GELU: activation_kernel<TSK_ACT_QUICK_GELU><<<g, kThreads, 0, s>>>(out, x, n); break;
    case TSK_ACT_SILU: activation_kernel<TSK_ACT_SILU><<<g, kThreads, 0, s>>>(out, x, n); break;
    case TSK_ACT_RELU: activation_kernel<TSK_ACT_RELU><<<g, kThreads, 0, s>>>(out, x, n); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t tsk_act_mul(cudaStream_t s, float *out, const float *a, const float *b, size_t n,
                        int act)
{
    if (!n) return cudaSuccess;
    const unsigned g = blocks_for(n);
    switch (act) {
    case TSK_ACT_GELU: act_mul_kernel<TSK_ACT_GELU><<<g, kThreads, 0, s>>>(out, a, b, n); break;
    case TSK_ACT_GELU_TANH: act_mul_kernel<TSK_ACT_GELU_TANH><<<g, kThreads, 0, s>>>(out, a, b, n); break;
    case TSK_ACT_QUICK_GELU: act_mul_kernel<TSK_ACT_QUICK_GELU><<<g, kThreads, 0, s>>>(out, a, b, n); break;
    case TSK_ACT_SILU: act_mul_kernel<TSK_ACT_SILU><<<g, kThreads, 0, s>>>(out, a, b, n); break;
    case TSK_ACT_RELU: act_mul_kernel<TSK_ACT_RELU><<<g, kThreads, 0, s>>>(out, a, b, n); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t tsk_modulate(cudaStream_t s, float *out, const float *x, const float *shift,
                         const float *scale, int mod_stride, int m, int dim, int rows_per_item)
{
    if (m <= 0 || dim <= 0) return cudaSuccess;
    if (rows_per_item <= 0) return cudaErrorInvalidValue;
    const size_t n = (size_t)m * dim;
    modulate_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, x, shift, scale, mod_stride, dim,
                                                       rows_per_item, n);
    return cudaGetLastError();
}

cudaError_t tsk_gated_add(cudaStream_t s, float *x, const float *y, const float *gate,
                          int mod_stride, int m, int dim, int rows_per_item)
{
    if (m <= 0 || dim <= 0) return cudaSuccess;
    if (rows_per_item <= 0) return cudaErrorInvalidValue;
    const size_t n = (size_t)m * dim;
    gated_add_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, gate, mod_stride, dim, rows_per_item,
                                                        n);
    return cudaGetLastError();
}

cudaError_t tsk_scatter_add_rows(cudaStream_t s, float *x, const float *y, const int32_t *rows,
                                 int n, int dim)
{
    if (n <= 0 || dim <= 0) return cudaSuccess;
    scatter_add_kernel<<<n, kThreads, 0, s>>>(x, y, rows, dim);
    return cudaGetLastError();
}

cudaError_t tsk_attention_dense(cudaStream_t s, float *out, const float *q, const float *k,
                                const float *v, int stride, int n_head, int head_dim,
                                const int32_t *rows, int n_seq, int seq_len, int causal)
{
    if (n_seq <= 0 || seq_len <= 0 || n_head <= 0) return cudaSuccess;
    if (head_dim <= 0 || head_dim > kMaxHeadDim || n_head > 65535 || n_seq > 65535)
        return cudaErrorInvalidValue;
    const size_t smem = dense_smem_floats(head_dim, seq_len) * sizeof(float);
    static size_t raised = 48 * 1024;   // the default dynamic shared memory limit
    if (smem > raised) {
        cudaError_t e = cudaFuncSetAttribute(dense_attention_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
        raised = smem;
    }
    dim3 grid((unsigned)((seq_len + kTQ - 1) / kTQ), (unsigned)n_head, (unsigned)n_seq);
    dense_attention_kernel<<<grid, kAttnThreads, smem, s>>>(out, q, k, v, stride, head_dim, rows,
                                                            seq_len, causal);
    return cudaGetLastError();
}

cudaError_t tsk_masked_pick(cudaStream_t s, int32_t *ids, float *logit,
                            const tsk_masked_row *rows, int n, int n_pos, int vocab)
{
    if (n <= 0 || n_pos <= 0 || vocab <= 0) return cudaSuccess;
    masked_pick_kernel<<<(unsigned)n * (unsigned)n_pos, kPickThreads, 0, s>>>(ids, logit, rows,
                                                                               n_pos, vocab);
    return cudaGetLastError();
}

}  // extern "C"
