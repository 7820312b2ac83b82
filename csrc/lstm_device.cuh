// Device helpers shared by the forward and backward kernels: dtype conversions,
// L2-coherent loads, and the two block-wide products of a step (tensor-core WMMA for
// 16-bit inputs, fp32 FMA otherwise). Both write partial sums [ksplit][16][ld] to
// shared memory; the caller's pointwise epilogue adds the k-split slices together.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "lstm_common.cuh"
#include "lstm_kernels.h"

namespace rnnfast {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Loads of data other blocks wrote during this launch (y, hidden, dgates, dh): ld.cg
// reads L2, which grid.sync() has made coherent; L1 is not coherent across SMs and may
// hold a line this block read in an earlier step.
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ __half load_cg(const __half* p) { return __ldcg(p); }
__device__ __forceinline__ __nv_bfloat16 load_cg(const __nv_bfloat16* p) { return __ldcg(p); }

// out partials [ksplit][16][part_ld] = A [16][K] @ W^T, with W^T held in shared memory
// as wt [K][w_ld] (column n of the product is wt[:, n]).
// load_a(b, k) -> float gives A's entry (0 for inactive rows); it is called exactly once
// per (b, k), so it may also write a copy of A elsewhere. Every thread must call this.
template <typename W, typename LoadA>
__device__ __forceinline__ void fma_product(LoadA load_a,
                                            int K,             // reduction length
                                            const W* wt,       // [K][w_ld] smem
                                            int w_ld, int cols,  // N <= w_ld
                                            int ksplit,
                                            float* a_s,        // [16][kChunk] smem scratch
                                            float* part,       // [ksplit][16][part_ld] smem out
                                            int part_ld) {
  const int items = ksplit * kTileRows * cols;
  float acc[kMaxItems];
#pragma unroll
  for (int j = 0; j < kMaxItems; ++j) acc[j] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kChunk) {
    const int kc = min(kChunk, K - k0);
    for (int e = threadIdx.x; e < kTileRows * kChunk; e += blockDim.x) {
      const int b = e / kChunk, k = e % kChunk;
      a_s[e] = k < kc ? load_a(b, k0 + k) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMaxItems; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (i < items) {
        // Consecutive threads take consecutive columns: conflict-free reads of wt,
        // broadcast reads of a_s.
        const int n = i % cols, b = (i / cols) % kTileRows, ks = i / (cols * kTileRows);
        float s = acc[j];
        for (int k = ks; k < kc; k += ksplit)
          s = fmaf(a_s[b * kChunk + k], to_float(wt[(size_t)(k0 + k) * w_ld + n]), s);
        acc[j] = s;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kMaxItems; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i < items) {
      const int n = i % cols, b = (i / cols) % kTileRows, ks = i / (cols * kTileRows);
      part[(ks * kTileRows + b) * part_ld + n] = acc[j];
    }
  }
  __syncthreads();
}

// Tensor cores (sm_80+: mma.sync through WMMA, 16x16x16, fp32 accumulate):
// out partials [ksplit][16][part_ld] = a_s [16][a_ld] @ wt [k_pad][w_ld] (16-bit, smem).
// Warp w takes (column tile, k-split slice) pairs; k_pad and cols are multiples of 16.
template <typename T>
__device__ __forceinline__ void mma_product(const T* a_s, int a_ld, const T* wt, int w_ld,
                                            int k_pad, int cols, int ksplit, float* part,
                                            int part_ld) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int col_tiles = cols / 16, k_tiles = k_pad / 16;
  for (int item = warp; item < col_tiles * ksplit; item += warps) {
    const int nt = item % col_tiles, ks = item / col_tiles;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kt = ks; kt < k_tiles; kt += ksplit) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
      wmma::load_matrix_sync(a, a_s + kt * 16, a_ld);
      wmma::load_matrix_sync(b, wt + (size_t)kt * 16 * w_ld + nt * 16, w_ld);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(part + ks * kTileRows * part_ld + nt * 16, acc, part_ld,
                            wmma::mem_row_major);
  }
  __syncthreads();
}

// Sum of the k-split partial sums of output (b, n).
__device__ __forceinline__ float reduce_parts(const float* part, int part_ld, int ksplit, int b,
                                              int n) {
  float s = 0.0f;
  for (int ks = 0; ks < ksplit; ++ks) s += part[(ks * kTileRows + b) * part_ld + n];
  return s;
}

// Host side: a cooperative launch (every block resident, so grid.sync() is legal) of a
// kernel taking its argument struct by value, with `smem` bytes of dynamic shared
// memory (above 48 KB it must be opted into per kernel).
template <typename Args>
cudaError_t launch_cooperative(void (*kernel)(const Args), const Args& args, int blocks, size_t smem,
                               cudaStream_t stream) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  Args copy = args;
  void* params[] = {&copy};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(blocks),
                                     dim3(kThreads), params, smem, stream);
}

}  // namespace rnnfast
