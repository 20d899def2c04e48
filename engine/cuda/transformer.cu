// transformer.cu - the element-wise and row-wise kernels of the transformer ops
// (embedding, RMSNorm, RoPE, SwiGLU, residual add, bias, bf16 casts, KV store).
//
// Each follows the CPU backend's arithmetic (engine/cpu/backend_cpu.c) expression by
// expression, so the fp32 mode differs from the CPU only by reduction order and fused
// multiply-adds. All are memory-bound: one pass over their data, grid-stride loops.
#include <cuda_bf16.h>

#include "engine/cuda/kernels.h"

namespace {

constexpr int kThreads = 256;

__device__ inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_f(float v) { return v; }
template <typename T> __device__ inline T from_f(float v);
template <> __device__ inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ inline float from_f<float>(float v) { return v; }

unsigned blocks_for(size_t n)
{
    size_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 65535 * 4 ? b : 65535 * 4);   // grid-stride loops cover the rest
}

// Sum over the block; every thread gets the result. sh holds kThreads / 32 floats.
__device__ float block_sum(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();   // sh may still be read from a previous call
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) t += sh[w];
    return t;
}

template <typename T>
__global__ void embed_kernel(float *out, const T *table, int dim, const int32_t *ids,
                             const int32_t *rows)
{
    int i = blockIdx.x;
    size_t r = rows ? (size_t)rows[i] : (size_t)i;
    const T *src = table + (size_t)ids[i] * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) out[r * dim + d] = to_f(src[d]);
}

__global__ void gather_kernel(float *out, const float *x, const int32_t *rows, int dim)
{
    int i = blockIdx.x;
    const float *src = x + (size_t)rows[i] * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) out[(size_t)i * dim + d] = src[d];
}

__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int dim, float eps)
{
    __shared__ float sh[kThreads / 32];
    const float *xi = x + (size_t)blockIdx.x * dim;
    float *oi = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) ss += xi[d] * xi[d];
    ss = block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x) oi[d] = (xi[d] * r) * w[d];
}

__global__ void rope_kernel(float *x, int stride, int n_head, int head_dim, const float *table,
                            const int32_t *pos)
{
    int i = blockIdx.x, half = head_dim / 2;
    const float *cs = table + (size_t)pos[i] * half * 2;
    for (int e = threadIdx.x; e < n_head * half; e += blockDim.x) {
        int h = e / half, j = e % half;
        float *v = x + (size_t)i * stride + (size_t)h * head_dim;
        float a = v[2 * j], b = v[2 * j + 1];
        float c = cs[2 * j], s = cs[2 * j + 1];
        v[2 * j] = a * c - b * s;
        v[2 * j + 1] = b * c + a * s;
    }
}

__global__ void swiglu_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = (a[i] / (1.0f + expf(-a[i]))) * b[i];
}

__global__ void add_kernel(float *x, const float *y, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

__global__ void to_bf16_kernel(__nv_bfloat16 *out, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(x[i]);
}

__global__ void bias_rows_kernel(float *out, const float *bias, int n)
{
    float *row = out + (size_t)blockIdx.x * n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] += bias[j];
}

__global__ void bias_channels_kernel(float *out, const float *bias, int c, int hw)
{
    // one block per (image, channel) plane
    float b = bias[blockIdx.x % c];
    float *plane = out + (size_t)blockIdx.x * hw;
    for (int j = threadIdx.x; j < hw; j += blockDim.x) plane[j] += b;
}

template <typename T>
__global__ void kv_store_kernel(T *kc, T *vc, int kv_dim, const float *k, const float *v,
                                int stride, const int32_t *slot)
{
    int i = blockIdx.x;
    size_t dst = (size_t)slot[i] * kv_dim, src = (size_t)i * stride;
    for (int d = threadIdx.x; d < kv_dim; d += blockDim.x) {
        kc[dst + d] = from_f<T>(k[src + d]);
        vc[dst + d] = from_f<T>(v[src + d]);
    }
}

}  // namespace

extern "C" {

cudaError_t tsk_embed(cudaStream_t s, float *out, const void *table, int f32, int dim,
                      const int32_t *ids, const int32_t *rows, int n)
{
    if (n <= 0) return cudaSuccess;
    if (f32) embed_kernel<<<n, kThreads, 0, s>>>(out, (const float *)table, dim, ids, rows);
    else embed_kernel<<<n, kThreads, 0, s>>>(out, (const __nv_bfloat16 *)table, dim, ids, rows);
    return cudaGetLastError();
}

cudaError_t tsk_gather_rows(cudaStream_t s, float *out, const float *x, const int32_t *rows,
                            int n, int dim)
{
    if (n <= 0) return cudaSuccess;
    gather_kernel<<<n, kThreads, 0, s>>>(out, x, rows, dim);
    return cudaGetLastError();
}

cudaError_t tsk_rmsnorm(cudaStream_t s, float *out, const float *x, const float *w, int m,
                        int dim, float eps)
{
    if (m <= 0) return cudaSuccess;
    rmsnorm_kernel<<<m, kThreads, 0, s>>>(out, x, w, dim, eps);
    return cudaGetLastError();
}

cudaError_t tsk_rope(cudaStream_t s, float *x, int stride, int m, int n_head, int head_dim,
                     const float *table, const int32_t *pos)
{
    if (m <= 0) return cudaSuccess;
    rope_kernel<<<m, kThreads, 0, s>>>(x, stride, n_head, head_dim, table, pos);
    return cudaGetLastError();
}

cudaError_t tsk_swiglu(cudaStream_t s, float *out, const float *a, const float *b, size_t n)
{
    if (!n) return cudaSuccess;
    swiglu_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, a, b, n);
    return cudaGetLastError();
}

cudaError_t tsk_add(cudaStream_t s, float *x, const float *y, size_t n)
{
    if (!n) return cudaSuccess;
    add_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
    return cudaGetLastError();
}

cudaError_t tsk_to_bf16(cudaStream_t s, uint16_t *out, const float *x, size_t n)
{
    if (!n) return cudaSuccess;
    to_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>((__nv_bfloat16 *)out, x, n);
    return cudaGetLastError();
}

cudaError_t tsk_add_bias_rows(cudaStream_t s, float *out, const float *bias, int m, int n)
{
    if (m <= 0 || n <= 0) return cudaSuccess;
    bias_rows_kernel<<<m, kThreads, 0, s>>>(out, bias, n);
    return cudaGetLastError();
}

cudaError_t tsk_add_bias_channels(cudaStream_t s, float *out, const float *bias, int n, int c,
                                  int hw)
{
    if (n <= 0 || c <= 0 || hw <= 0) return cudaSuccess;
    bias_channels_kernel<<<(unsigned)n * (unsigned)c, kThreads, 0, s>>>(out, bias, c, hw);
    return cudaGetLastError();
}

cudaError_t tsk_kv_store(cudaStream_t s, void *kc, void *vc, int f32, int kv_dim, const float *k,
                         const float *v, int stride, const int32_t *slot, int m)
{
    if (m <= 0) return cudaSuccess;
    if (f32)
        kv_store_kernel<<<m, kThreads, 0, s>>>((float *)kc, (float *)vc, kv_dim, k, v, stride, slot);
    else
        kv_store_kernel<<<m, kThreads, 0, s>>>((__nv_bfloat16 *)kc, (__nv_bfloat16 *)vc, kv_dim, k,
                                               v, stride, slot);
    return cudaGetLastError();
}

}  // extern "C"
