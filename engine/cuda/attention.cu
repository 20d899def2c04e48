// attention.cu - causal attention of new query rows over the paged KV cache.
//
// One thread block per (query row, head), for decode (one row per sequence) and prefill
// (several rows per sequence) alike; head_dim of any even size up to 256 (LlamaGen's 64
// and 100 need no padding). The block:
//   1. scores every visible key: each warp takes keys in turn, its lanes split the head
//      dimension in pairs (bf16x2 / float2 loads) and reduce with shuffles;
//   2. softmax in shared memory (max, exp, sum), as the CPU does;
//   3. sums p_t * v_t: warps split the keys again, lanes own dimension pairs, and the
//      warps' partial vectors are added through shared memory.
// The grid is (rows, n_head) and the shared memory max_ctx scores, whatever the
// contexts are now, so a decode step captured in a CUDA graph stays valid as they grow.
#include <cuda_bf16.h>

#include "engine/cuda/kernels.h"

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxHeadDim = 256;
constexpr int kPairsPerLane = kMaxHeadDim / 2 / 32;   // 4

__device__ inline float2 load2(const __nv_bfloat16 *p) { return __bfloat1622float2(*(const __nv_bfloat162 *)p); }
__device__ inline float2 load2(const float *p) { return *(const float2 *)p; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
attention_kernel(float *out, const float *q, int q_stride, const T *kc, const T *vc,
                 int block_size, int n_kv_head, int head_dim, const int32_t *row_seq,
                 const tsk_attn_seq *seqs, const int32_t *tables, int max_blocks)
{
    extern __shared__ float scores[];          // [max_ctx]
    __shared__ float qs[kMaxHeadDim];
    __shared__ float partial[kWarps][kMaxHeadDim];
    __shared__ float red[kWarps];

    const int row = blockIdx.x, h = blockIdx.y, n_head = gridDim.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int seq = row_seq[row];
    const tsk_attn_seq sq = seqs[seq];
    const int n_keys = sq.n_ctx - sq.n_q + (row - sq.q_row) + 1;   // causal
    const int32_t *table = tables + (size_t)seq * max_blocks;
    const int kvh = h / (n_head / n_kv_head), pairs = head_dim / 2;
    const size_t kv_row = (size_t)n_kv_head * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);

    const float *qi = q + (size_t)row * q_stride + (size_t)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += kThreads) qs[d] = qi[d];
    __syncthreads();

    // 1. scores
    float mx = -INFINITY;
    for (int t = warp; t < n_keys; t += kWarps) {
        size_t slot = (size_t)table[t / block_size] * block_size + t % block_size;
        const T *kt = kc + slot * kv_row + (size_t)kvh * head_dim;
        float d = 0.0f;
        for (int p = lane; p < pairs; p += 32) {
            float2 k2 = load2(kt + 2 * p);
            d = fmaf(qs[2 * p], k2.x, d);
            d = fmaf(qs[2 * p + 1], k2.y, d);
        }
        for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        d *= scale;
        if (lane == 0) scores[t] = d;
        mx = fmaxf(mx, d);
    }
    // 2. softmax
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < kWarps; w++) mx = fmaxf(mx, red[w]);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < n_keys; t += kThreads) {
        float e = expf(scores[t] - mx);
        scores[t] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    __syncthreads();   // every warp has read red[] for the max
    if (lane == 0) red[warp] = sum;
    __syncthreads();   // and the exponentials are in scores[]
    sum = 0.0f;
    for (int w = 0; w < kWarps; w++) sum += red[w];
    const float inv = 1.0f / sum;

    // 3. weighted sum of values
    float2 acc[kPairsPerLane];
#pragma unroll
    for (int j = 0; j < kPairsPerLane; j++) acc[j] = make_float2(0.0f, 0.0f);
    for (int t = warp; t < n_keys; t += kWarps) {
        size_t slot = (size_t)table[t / block_size] * block_size + t % block_size;
        const T *vt = vc + slot * kv_row + (size_t)kvh * head_dim;
        float p = scores[t] * inv;
#pragma unroll
        for (int j = 0; j < kPairsPerLane; j++) {
            int pr = lane + 32 * j;
            if (pr < pairs) {
                float2 v2 = load2(vt + 2 * pr);
                acc[j].x = fmaf(p, v2.x, acc[j].x);
                acc[j].y = fmaf(p, v2.y, acc[j].y);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < kPairsPerLane; j++) {
        int pr = lane + 32 * j;
        if (pr < pairs) {
            partial[warp][2 * pr] = acc[j].x;
            partial[warp][2 * pr + 1] = acc[j].y;
        }
    }
    __syncthreads();
    float *o = out + (size_t)row * n_head * head_dim + (size_t)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += kThreads) {
        float v = 0.0f;
        for (int w = 0; w < kWarps; w++) v += partial[w][d];
        o[d] = v;
    }
}

template <typename T>
cudaError_t launch(cudaStream_t s, float *out, const float *q, int q_stride, const void *kc,
                   const void *vc, int block_size, int n_kv_head, int head_dim, int n_head,
                   const int32_t *row_seq, const tsk_attn_seq *seqs, const int32_t *tables,
                   int max_blocks, int rows, int max_ctx)
{
    size_t smem = (size_t)max_ctx * sizeof(float);
    static size_t raised = 48 * 1024;   // the default dynamic shared memory limit
    if (smem > raised) {
        cudaError_t e = cudaFuncSetAttribute(attention_kernel<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
        raised = smem;
    }
    dim3 grid((unsigned)rows, (unsigned)n_head);
    attention_kernel<T><<<grid, kThreads, smem, s>>>(out, q, q_stride, (const T *)kc, (const T *)vc,
                                                     block_size, n_kv_head, head_dim, row_seq,
                                                     seqs, tables, max_blocks);
    return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t tsk_attention(cudaStream_t s, float *out, const float *q, int q_stride,
                                     const void *kc, const void *vc, int f32, int block_size,
                                     int n_kv_head, int head_dim, int n_head,
                                     const int32_t *row_seq, const tsk_attn_seq *seqs,
                                     const int32_t *tables, int max_blocks, int rows, int max_ctx)
{
    if (rows <= 0) return cudaSuccess;
    if (head_dim > kMaxHeadDim || head_dim % 2 || n_head % n_kv_head) return cudaErrorInvalidValue;
    if (f32)
        return launch<float>(s, out, q, q_stride, kc, vc, block_size, n_kv_head, head_dim, n_head,
                             row_seq, seqs, tables, max_blocks, rows, max_ctx);
    return launch<__nv_bfloat16>(s, out, q, q_stride, kc, vc, block_size, n_kv_head, head_dim,
                                 n_head, row_seq, seqs, tables, max_blocks, rows, max_ctx);
}
