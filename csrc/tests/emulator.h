// A CPU stand-in for csrc/lstm_ptx.cuh, so that the kernels themselves (lstm_forward.cu,
// lstm_backward.cu and the device layer between) run without a GPU: compiled by a host
// C++ compiler with -DRNNFAST_EMULATED, which makes lstm_device.cuh include this file
// instead of the PTX one. tests/test_cuda_emulated.py builds it with
// csrc/tests/emulator.cpp (the runtime) and csrc/tests/emulate.cpp (a launcher that
// fills the argument structs as binding.cpp does) and compares the results with the
// reference backend.
//
// How it runs a launch: every CUDA thread is a fiber on one OS thread, all blocks of the
// grid at once (a cooperative launch's co-residency). A fiber runs until it must wait:
// __syncthreads, a warp's collective instruction (ldmatrix and mma meet all 32 lanes,
// which must call the same one), an mbarrier phase, the cluster barrier, a poll of the
// grid barrier's counter. Memory is sequentially consistent, so what it checks is the
// kernels' logic, not their memory ordering:
//   - the products, cells and exchanges compute the right numbers, with PTX's fragment
//     layouts for ldmatrix and mma (tf32 operands truncated to 10 mantissa bits as the
//     tensor cores read them; an instruction's products and accumulator summed with one
//     rounding, as they do);
//   - every shared-memory operand of an instruction lies in the block's dynamic shared
//     memory (the launch's size, with an unmapped page after it, so a plain store past
//     its end faults too) and is aligned as the instruction needs; shared memory starts
//     as NaN bytes, as a GPU's starts as garbage;
//   - cp.async copies land only at the issuing thread's cp.async.wait_group (a read
//     before it sees the old bytes); st.async and bulk copies complete their bytes on
//     an mbarrier that exists (initialised, not overwritten since);
//   - a launch whose fibers all wait with nothing left to change ends with a report of
//     where each block's threads wait (a hang on a GPU), and an opted-in shared-memory
//     size below the launch's is refused as the driver refuses it;
//   - fibers take their turns in a new seeded order every round, so that accesses with
//     no barrier between them meet in either order; built with RNNFAST_EMULATE_TSAN
//     (emulator.cpp), ThreadSanitizer reports such races whatever the order.
#pragma once

#include <cuda_runtime_api.h>  // before the macros below: its structs have members of their names
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

// The kernels' sm_90 paths are the ones emulated (clusters, bulk copies, st.async).
#define __CUDA_ARCH__ 900
#define RNNFAST_SM90(...) __VA_ARGS__
// CUDA keywords a host compiler lacks (cuda_runtime_api.h defines the others).
#define __launch_bounds__(...)
#define __noinline__ inline  // defined in a header: one definition for every translation unit
#define threadIdx (::rnnfast::emu::thread_index())
#define blockIdx (::rnnfast::emu::block_index())

namespace rnnfast {
namespace emu {

const uint3& thread_index();
const uint3& block_index();

// The GPU a launch is emulated on: an H100's SMs (one block each) and opt-in shared
// memory per block.
constexpr unsigned kSms = 132;
constexpr int kMaxDynamicSmem = 232448;

void syncthreads();
unsigned char* dynamic_smem();

// A 16-bit float's bits (fp16, or bf16) as a float.
float bits_to_float(uint16_t bits, bool bf16);

void cp_async16(void* dst, const void* src);
void cp_async_commit();
void cp_async_wait(int pending);

void mbarrier_init(uint64_t* bar);
void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes);
bool mbarrier_try_wait(uint64_t* bar, unsigned parity);

unsigned cluster_ctarank();
unsigned cluster_nctarank();
void cluster_sync();
float4 ld_shared_cluster_v4(const float* src, unsigned rank);
void st_async_to_peer(void* dst, unsigned peer, const void* value, int bytes, uint64_t* bar);
void bulk_copy_multicast(void* dst, const void* src, unsigned bytes, uint64_t* bar,
                         unsigned short ctas);

enum class MmaKind { kF16, kBF16, kTF32 };
void ldmatrix_x4(uint32_t (&r)[4], const void* row_address);
void mma(MmaKind kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

void red_release_add_one(unsigned long long* counter);
unsigned long long ld_acquire(const unsigned long long* counter);
unsigned long long atomic_max(unsigned long long* p, unsigned long long v);
int atomic_exch(int* p, int v);

// Kernels are registered by their typed pointer when the launcher first opts them into
// their shared memory (cudaFuncSetAttribute), so that an untyped launch
// (cudaLaunchCooperativeKernel) can call them.
using Invoke = void (*)(const void* kernel, const void* args);
void set_max_dynamic_smem(const void* kernel, Invoke invoke, int bytes);
void allow_nonportable_clusters(const void* kernel);
cudaError_t launch(const void* kernel, const void* args, dim3 grid, dim3 block, size_t smem,
                   unsigned cluster, bool cooperative);

template <typename Args> void invoke(const void* kernel, const void* args) {
  reinterpret_cast<void (*)(Args)>(const_cast<void*>(kernel))(*static_cast<const Args*>(args));
}

// Global memory the launcher hands to a kernel: `bytes` ending at an unmapped page (a
// read or write past the end faults), 256-byte aligned as cudaMalloc's; zero-filled.
void* alloc_global(size_t bytes);

}  // namespace emu

// lstm_ptx.cuh's primitives, as the kernels call them.
inline unsigned char* dynamic_smem() { return emu::dynamic_smem(); }
inline void cp_async16(void* dst, const void* src) { emu::cp_async16(dst, src); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N> inline void cp_async_wait() { emu::cp_async_wait(N); }
inline void mbarrier_init(uint64_t* bar) { emu::mbarrier_init(bar); }
inline void fence_mbarrier_init() {}
inline void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  emu::mbarrier_arrive_expect_tx(bar, bytes);
}
inline bool mbarrier_try_wait(uint64_t* bar, unsigned parity) { return emu::mbarrier_try_wait(bar, parity); }
inline unsigned cluster_ctarank() { return emu::cluster_ctarank(); }
inline unsigned cluster_nctarank() { return emu::cluster_nctarank(); }
inline void cluster_sync() { emu::cluster_sync(); }
inline float4 ld_shared_cluster_v4(const float* src, unsigned rank) {
  return emu::ld_shared_cluster_v4(src, rank);
}
inline void st_async_to_peer(void* dst, unsigned peer, unsigned long long value, uint64_t* bar) {
  emu::st_async_to_peer(dst, peer, &value, 8, bar);
}
inline void st_async_to_peer(void* dst, unsigned peer, unsigned value, uint64_t* bar) {
  emu::st_async_to_peer(dst, peer, &value, 4, bar);
}
inline void fence_proxy_async() {}
inline void bulk_copy_multicast(void* dst, const void* src, unsigned bytes, uint64_t* bar,
                                unsigned short ctas) {
  emu::bulk_copy_multicast(dst, src, bytes, bar, ctas);
}
inline void opaque(int&) {}  // a compiler barrier on a GPU; nothing to do here
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) { emu::ldmatrix_x4(r, row_address); }

template <typename T> struct MmaOp;
template <> struct MmaOp<__half> {
  static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu::mma(emu::MmaKind::kF16, d, a, b);
  }
};
template <> struct MmaOp<__nv_bfloat16> {
  static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu::mma(emu::MmaKind::kBF16, d, a, b);
  }
};
inline void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma(emu::MmaKind::kTF32, d, a, b);
}
inline void red_release_add_one(unsigned long long* counter) { emu::red_release_add_one(counter); }
inline unsigned long long ld_acquire(const unsigned long long* counter) { return emu::ld_acquire(counter); }

}  // namespace rnnfast

// The CUDA built-ins the device layer uses besides the primitives.
inline void __syncthreads() { ::rnnfast::emu::syncthreads(); }
inline void __threadfence() {}
template <typename T> inline T __ldg(const T* p) { return *p; }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  return ::rnnfast::emu::atomic_max(p, v);
}
inline int atomicExch(int* p, int v) { return ::rnnfast::emu::atomic_exch(p, v); }

// The runtime API the launchers call (cuda_runtime.h's typed forms).
template <typename Args>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Args), cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > ::rnnfast::emu::kMaxDynamicSmem) return cudaErrorInvalidValue;
    ::rnnfast::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel),
                                         ::rnnfast::emu::invoke<Args>, value);
  } else if (attr == cudaFuncAttributeNonPortableClusterSizeAllowed && value == 1) {
    ::rnnfast::emu::allow_nonportable_clusters(reinterpret_cast<const void*>(kernel));
  }
  return cudaSuccess;
}
template <typename Args>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*)(Args)) {
  *attr = cudaFuncAttributes{};
  attr->ptxVersion = 90;  // the kernels as an sm_90 build has them
  attr->binaryVersion = 90;
  attr->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
template <typename Args>
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, void (*)(Args), const cudaLaunchConfig_t* config) {
  unsigned size = 1;
  for (unsigned i = 0; i < config->numAttrs; ++i)
    if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) size = config->attrs[i].val.clusterDim.x;
  // RNNFAST_EMULATE_MAX_CLUSTER=c: a GPU that cannot place clusters of more than c CTAs
  // (tests/test_cuda_emulated.py, the fallback).
  const char* most = getenv("RNNFAST_EMULATE_MAX_CLUSTER");
  *clusters = most != nullptr && size > static_cast<unsigned>(atoi(most))
                  ? 0
                  : static_cast<int>(::rnnfast::emu::kSms / size);
  return cudaSuccess;
}
template <typename Args>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(Args), const Args& args) {
  unsigned cluster = 0;
  bool cooperative = false;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) cluster = config->attrs[i].val.clusterDim.x;
    if (config->attrs[i].id == cudaLaunchAttributeCooperative) cooperative = config->attrs[i].val.cooperative != 0;
  }
  return ::rnnfast::emu::launch(reinterpret_cast<const void*>(kernel), &args, config->gridDim,
                                config->blockDim, config->dynamicSmemBytes, cluster, cooperative);
}
