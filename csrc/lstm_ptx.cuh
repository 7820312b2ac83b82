// The PTX instructions the kernels use, one small function each: every inline assembly
// of lstm_device.cuh, lstm_forward.cu and lstm_backward.cu is here, so that the layers
// above are plain C++ over these primitives. csrc/tests/emulator.h defines the same
// functions for a CPU (each CUDA thread a fiber, warps meeting for their collective
// instructions), which lets CI run the kernels themselves without a GPU
// (tests/test_cuda_emulated.py). A primitive added here needs its stand-in there.
//
// Shared-memory operands are generic pointers into this block's dynamic shared memory
// (dynamic_smem); the functions convert them to the shared window themselves.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace rnnfast {

// Hopper-only instructions (clusters, bulk copies, mbarrier transactions) exist in the
// sm_90 image only; elsewhere they compile to nothing (and a wait to "not yet"), and the
// host never runs the code paths that use them.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define RNNFAST_SM90(...) __VA_ARGS__
#else
#define RNNFAST_SM90(...)
#endif

// The block's dynamic shared memory (the launch's smem bytes), 128-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  return smem_bytes;
}

// The 32-bit shared-window address of a generic pointer into shared memory, as the
// shared-memory instructions below take it.
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------------------------
// cp.async (sm_80+): a 16-byte global -> shared copy that bypasses L1 (.cg), grouped by
// commit; a thread waits for its own groups.

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst)), "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---------------------------------------------------------------------------------
// mbarriers with transaction counts (sm_90), in this CTA's shared memory.

// One arrival a phase.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
  RNNFAST_SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(bar))
                            : "memory");)
}
// Makes the initialised mbarriers visible to the cluster's other CTAs and async proxy.
__device__ __forceinline__ void fence_mbarrier_init() {
  RNNFAST_SM90(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");)
}
// The phase's arrival, announcing `bytes` of transactions still to complete on it.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  RNNFAST_SM90(asm volatile("{\n .reg .b64 state;\n"
                            " mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n"
                            ::"r"(shared_address(bar)), "r"(bytes)
                            : "memory");)
}
// Whether the phase of parity `parity` has completed (cluster-scope acquire: the bytes
// that completed it, written by other CTAs, are visible once it returns true).
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, unsigned parity) {
  unsigned done = 0;
  RNNFAST_SM90(asm volatile("{\n .reg .pred ready;\n"
                            " mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 ready, [%1], %2;\n"
                            " selp.u32 %0, 1, 0, ready;\n}\n"
                            : "=r"(done) : "r"(shared_address(bar)), "r"(parity)
                            : "memory");)
  return done != 0;
}

// ---------------------------------------------------------------------------------
// Thread-block clusters (sm_90). Outside a cluster launch a CTA is a cluster of one.

__device__ __forceinline__ unsigned cluster_ctarank() {
  unsigned rank = 0;
  RNNFAST_SM90(asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));)
  return rank;
}
__device__ __forceinline__ unsigned cluster_nctarank() {
  unsigned ctas = 1;
  RNNFAST_SM90(asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(ctas));)
  return ctas;
}

// Every thread of every CTA of the cluster meets here; release / acquire at cluster
// scope (a release compiles to MEMBAR.ALL.GPU: it also waits for global stores).
__device__ __forceinline__ void cluster_sync() {
  RNNFAST_SM90(asm volatile("barrier.cluster.arrive.release.aligned;\n"
                            "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");)
}

// 16 bytes at the place of `src` (16-byte aligned, in this CTA's shared memory) in the
// shared memory of the cluster's CTA `rank` (distributed shared memory).
__device__ __forceinline__ float4 ld_shared_cluster_v4(const float* src, unsigned rank) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  RNNFAST_SM90({
    unsigned at;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(at) : "r"(shared_address(src)), "r"(rank));
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(at) : "memory");
  })
  return v;
}

// Stores `value` at the place of `dst` (aligned to its size) in the shared memory of the
// cluster's CTA `peer`, completing its bytes on the mbarrier at the place of `bar` there
// (st.async: no fence, the receiver's mbarrier wait makes them visible).
__device__ __forceinline__ void st_async_to_peer(void* dst, unsigned peer, unsigned long long value,
                                                 uint64_t* bar) {
  RNNFAST_SM90({
    unsigned at, at_bar;
    asm volatile("mapa.shared::cluster.u32 %0, %2, %3;\n"
                 "mapa.shared::cluster.u32 %1, %4, %3;\n"
                 : "=r"(at), "=r"(at_bar) : "r"(shared_address(dst)), "r"(peer), "r"(shared_address(bar)));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];\n"
                 ::"r"(at), "l"(value), "r"(at_bar) : "memory");
  })
}
__device__ __forceinline__ void st_async_to_peer(void* dst, unsigned peer, unsigned value, uint64_t* bar) {
  RNNFAST_SM90({
    unsigned at, at_bar;
    asm volatile("mapa.shared::cluster.u32 %0, %2, %3;\n"
                 "mapa.shared::cluster.u32 %1, %4, %3;\n"
                 : "=r"(at), "=r"(at_bar) : "r"(shared_address(dst)), "r"(peer), "r"(shared_address(bar)));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n"
                 ::"r"(at), "r"(value), "r"(at_bar) : "memory");
  })
}

// Orders this thread's earlier generic-proxy accesses (all state spaces) before its later
// async-proxy ones (the bulk copies below).
__device__ __forceinline__ void fence_proxy_async() {
  RNNFAST_SM90(asm volatile("fence.proxy.async;\n" ::: "memory");)
}

// A bulk copy of `bytes` (a multiple of 16) from global `src` into the place of `dst` in
// the shared memory of every CTA of the cluster in `ctas` (a bit per rank), each
// completing the bytes on its mbarrier at the place of `bar`. Both addresses 16-byte
// aligned.
__device__ __forceinline__ void bulk_copy_multicast(void* dst, const void* src, unsigned bytes,
                                                    uint64_t* bar, unsigned short ctas) {
  RNNFAST_SM90(asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1], %2, [%3], %4;\n" ::"r"(shared_address(dst)), "l"(src), "r"(bytes),
      "r"(shared_address(bar)), "h"(ctas)
      : "memory");)
}

// Makes v's value unknown to the compiler at this point: what is derived from it after
// is worked out here, each time, instead of being hoisted out of the enclosing loops and
// held in registers for the whole sequence.
__device__ __forceinline__ void opaque(int& v) { asm volatile("" : "+r"(v)); }

// ---------------------------------------------------------------------------------
// Tensor cores (warp-wide: every lane of the warp calls them together). Fragment layouts
// are PTX's for ldmatrix and mma.m16n8k16 (16-bit) / mma.m16n8k8 (tf32).

// Four 8 x 8 matrices of 16-bit elements: lanes 8j .. 8j+7 give the row addresses of
// matrix j (16 bytes each, 16-byte aligned); r[j] is this lane's pair of matrix j.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row_address)));
}

// d[16 x 8] += a[16 x 16] . b[16 x 8], fp32 accumulators.
template <typename T> struct MmaOp;

template <> struct MmaOp<__half> {
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <> struct MmaOp<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// d[16 x 8] += a[16 x 8] . b[8 x 8], tf32 inputs (the low 13 mantissa bits ignored).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---------------------------------------------------------------------------------
// The grid barrier's counter (global memory, GPU scope).

// Adds one, releasing this thread's earlier writes.
__device__ __forceinline__ void red_release_add_one(unsigned long long* counter) {
  asm volatile("red.release.gpu.global.add.u64 [%0], 1;\n" ::"l"(counter) : "memory");
}
// Reads it, acquiring what the releases it saw published.
__device__ __forceinline__ unsigned long long ld_acquire(const unsigned long long* counter) {
  unsigned long long seen;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];\n" : "=l"(seen) : "l"(counter) : "memory");
  return seen;
}

}  // namespace rnnfast
