// t5.cu - the kernel of ts_be_attention_bias (T5's encoder): non-causal attention with
// an additive bias table and per-sequence key lengths (padding left out).
//
// Float throughout, like vit.cu. Written for correctness and clarity first: T5 prompts
// are ~100 tokens, so the attention is a small share of a layer next to its matrix
// products (cuBLAS). Where the CPU rounds step by step (scale, then + bias; the scaled
// probability, then its product) the _rn intrinsics keep nvcc from fusing; the dot
// products and sums run in another order than the CPU's, so results agree to ~1e-6
// relative, not bit for bit.
// Launchers follow kernels.h: no allocation, no synchronisation, cudaGetLastError()
// after the launch; row offsets are 64-bit.
#include <math.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "engine/cuda/kernels.h"

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}

__device__ inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

// Over the block (kThreads threads); every thread gets the result. red holds kWarps
// floats; the barrier before returning lets the caller reuse it at once, and the one
// before reading it makes every shared write before the call visible to all threads.
__device__ float block_max(float v, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < kWarps; w++) r = fmaxf(r, red[w]);
    __syncthreads();
    return r;
}

__device__ float block_sum(float v, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = 0.0f;
    for (int w = 0; w < kWarps; w++) r += red[w];
    __syncthreads();
    return r;
}

// One block per (query position p, head h, sequence s): grid (seq_len, n_head, n_seq).
// Shared memory: the query's head [head_dim], then its scores [seq_len].
//   1. scores: warp w takes keys w, w + kWarps, ...; its lanes split the dimensions
//      (coalesced reads of the key row) and a shuffle sums them;
//   2. the block's max, exp(score - max) in place, the block's sum;
//   3. out: thread d (then d + kThreads, ...) sums p_t * v_t[d] over the keys, in key
//      order, then multiplies by 1 / sum.
// Keys t >= kv_len[s] are never read: exactly the CPU's exclusion.
__global__ void __launch_bounds__(kThreads)
attention_bias_kernel(float *out, const float *q, const float *k, const float *v, int stride,
                      int head_dim, int seq_len, const float *bias, const int32_t *kv_len,
                      float scale)
{
    extern __shared__ float smem[];
    __shared__ float red[kWarps];
    float *qs = smem;               // [head_dim]
    float *sc = smem + head_dim;    // [seq_len]

    const int p = blockIdx.x, h = blockIdx.y, s = blockIdx.z, n_head = gridDim.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t row0 = (size_t)s * seq_len, col = (size_t)h * head_dim;
    float *orow = out + (row0 + p) * ((size_t)n_head * head_dim) + col;
    int n_keys = kv_len ? kv_len[s] : seq_len;
    if (n_keys > seq_len) n_keys = seq_len;
    if (n_keys <= 0) {   // outside the contract: zeros rather than NaN, as the CPU
        for (int d = threadIdx.x; d < head_dim; d += kThreads) orow[d] = 0.0f;
        return;
    }

    const float *qrow = q + (row0 + p) * (size_t)stride + col;
    for (int d = threadIdx.x; d < head_dim; d += kThreads) qs[d] = qrow[d];
    __syncthreads();

    // 1. scores
    const float *brow = bias ? bias + ((size_t)h * seq_len + p) * (size_t)seq_len : nullptr;
    for (int t = warp; t < n_keys; t += kWarps) {
        const float *krow = k + (row0 + t) * (size_t)stride + col;
        float acc = 0.0f;
        for (int d = lane; d < head_dim; d += 32) acc = fmaf(qs[d], krow[d], acc);
        acc = warp_sum(acc);
        if (lane == 0) {
            float l = __fmul_rn(acc, scale);
            sc[t] = brow ? __fadd_rn(l, brow[t]) : l;
        }
    }
    __syncthreads();

    // 2. softmax (block_max's first barrier is not needed for sc, but harmless)
    float mx = -INFINITY;
    for (int t = threadIdx.x; t < n_keys; t += kThreads) mx = fmaxf(mx, sc[t]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < n_keys; t += kThreads) {
        const float e = expf(sc[t] - mx);
        sc[t] = e;
        sum += e;
    }
    sum = block_sum(sum, red);   // its barrier publishes every sc[t] = e
    const float inv = 1.0f / sum;

    // 3. out = P V / sum
    const float *vcol = v + row0 * (size_t)stride + col;
    for (int d = threadIdx.x; d < head_dim; d += kThreads) {
        float o = 0.0f;
        for (int t = 0; t < n_keys; t++)
            o = fmaf(__fmul_rn(sc[t], inv), vcol[(size_t)t * stride + d], o);
        orow[d] = o;
    }
}

}  // namespace

extern "C" {

cudaError_t tsk_attention_bias(cudaStream_t s, float *out, const float *q, const float *k,
                               const float *v, int stride, int n_head, int head_dim, int n_seq,
                               int seq_len, const float *bias, const int32_t *kv_len,
                               float scale)
{
    if (n_seq <= 0 || seq_len <= 0 || n_head <= 0) return cudaSuccess;
    if (head_dim <= 0 || n_head > 65535 || n_seq > 65535) return cudaErrorInvalidValue;
    const size_t smem = ((size_t)head_dim + (size_t)seq_len) * sizeof(float);
    static size_t raised = 48 * 1024;   // the default dynamic shared memory limit
    if (smem > raised) {
        cudaError_t e = cudaFuncSetAttribute(attention_bias_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
        raised = smem;
    }
    dim3 grid((unsigned)seq_len, (unsigned)n_head, (unsigned)n_seq);
    attention_bias_kernel<<<grid, kThreads, smem, s>>>(out, q, k, v, stride, head_dim, seq_len,
                                                       bias, kv_len, scale);
    return cudaGetLastError();
}

}  // extern "C"
