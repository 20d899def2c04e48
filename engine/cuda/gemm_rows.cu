// gemm_rows.cu - out[m, n_out] = x[m, n_in] . W^T for the few rows of a decode step.
//
// Why not cuBLAS here: cuBLAS picks its algorithm (tile shape, split-K) by problem size,
// so one sequence's outputs would change in the last bits with the number of other
// sequences in the batch, and the same seed would give a different image alone than
// batched. This kernel computes every output element in one fixed order (each lane's
// stride of 8-element chunks, then a fixed shuffle tree), whatever m is. It is also the
// right shape for decode, which is bound by reading W once: W streams through with
// 16-byte loads while the few x rows stay in cache.
//
// Layout: a warp owns kCols consecutive output columns (W rows); a block has kWarps
// warps; x rows are taken kRows at a time with register accumulators.
#include <cuda_bf16.h>

#include "engine/cuda/kernels.h"

namespace {

constexpr int kWarps = 4;
constexpr int kCols = 2;    // W rows per warp
constexpr int kRows = 8;    // x rows per pass

// 8 consecutive elements as floats; p is 16-byte aligned for bf16, 32 for float.
__device__ inline void load8(const __nv_bfloat16 *p, float v[8])
{
    uint4 u = *(const uint4 *)p;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(h[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}
__device__ inline void load8(const float *p, float v[8])
{
    float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ inline float load1(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ inline float load1(const float *p) { return *p; }

// VEC: n_in is a multiple of 8 (vector loads); otherwise element by element.
template <typename T, bool VEC>
__global__ void __launch_bounds__(kWarps * 32)
gemm_rows_kernel(float *out, const T *x, const T *w, int m, int n_out, int n_in)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int col0 = (blockIdx.x * kWarps + warp) * kCols;
    if (col0 >= n_out) return;
    const T *wr[kCols];
#pragma unroll
    for (int c = 0; c < kCols; c++) wr[c] = w + (size_t)(col0 + c < n_out ? col0 + c : col0) * n_in;

    for (int r0 = 0; r0 < m; r0 += kRows) {
        float acc[kRows][kCols];
#pragma unroll
        for (int r = 0; r < kRows; r++)
#pragma unroll
            for (int c = 0; c < kCols; c++) acc[r][c] = 0.0f;
        if (VEC) {
            for (int k = lane * 8; k < n_in; k += 32 * 8) {
                float wv[kCols][8];
#pragma unroll
                for (int c = 0; c < kCols; c++) load8(wr[c] + k, wv[c]);
#pragma unroll
                for (int r = 0; r < kRows; r++) {
                    if (r0 + r < m) {
                        float xv[8];
                        load8(x + (size_t)(r0 + r) * n_in + k, xv);
#pragma unroll
                        for (int c = 0; c < kCols; c++)
#pragma unroll
                            for (int e = 0; e < 8; e++) acc[r][c] = fmaf(xv[e], wv[c][e], acc[r][c]);
                    }
                }
            }
        } else {
            for (int k = lane; k < n_in; k += 32) {
                float wv[kCols];
#pragma unroll
                for (int c = 0; c < kCols; c++) wv[c] = load1(wr[c] + k);
#pragma unroll
                for (int r = 0; r < kRows; r++) {
                    if (r0 + r < m) {
                        float xv = load1(x + (size_t)(r0 + r) * n_in + k);
#pragma unroll
                        for (int c = 0; c < kCols; c++) acc[r][c] = fmaf(xv, wv[c], acc[r][c]);
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kRows; r++)
#pragma unroll
            for (int c = 0; c < kCols; c++)
                for (int o = 16; o > 0; o >>= 1)
                    acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], o);
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < kRows; r++)
#pragma unroll
                for (int c = 0; c < kCols; c++)
                    if (r0 + r < m && col0 + c < n_out)
                        out[(size_t)(r0 + r) * n_out + col0 + c] = acc[r][c];
        }
    }
}

template <typename T>
cudaError_t launch(cudaStream_t s, float *out, const void *x, const void *w, int m, int n_out,
                   int n_in)
{
    int per_block = kWarps * kCols;
    unsigned blocks = (unsigned)((n_out + per_block - 1) / per_block);
    if (n_in % 8 == 0)
        gemm_rows_kernel<T, true><<<blocks, kWarps * 32, 0, s>>>(out, (const T *)x, (const T *)w, m,
                                                                 n_out, n_in);
    else
        gemm_rows_kernel<T, false><<<blocks, kWarps * 32, 0, s>>>(out, (const T *)x, (const T *)w,
                                                                  m, n_out, n_in);
    return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t tsk_gemm_rows(cudaStream_t s, float *out, const void *x, const void *w,
                                     int f32, int m, int n_out, int n_in)
{
    if (m <= 0 || n_out <= 0) return cudaSuccess;
    if (f32) return launch<float>(s, out, x, w, m, n_out, n_in);
    return launch<__nv_bfloat16>(s, out, x, w, m, n_out, n_in);
}
