// Latency probes: the primitives whose cost rnnfast/backends/latency.py assumes (the
// grid barrier, the dependent L2 load after it, the cluster plans' exchange through
// peer blocks' shared memory, the reduce splits' cluster meeting, mma.sync's latency
// and rate, the SM clock under load).
// Each probe runs the kernels' own device code for its primitive (lstm_device.cuh), so
// that what rnnfast/backends/probe.py measures is what a step of the LSTM kernels
// pays. The launches here only repeat a primitive `rounds` or `loads` times; the
// Python side times two counts and keeps the difference, so the launch cancels out.
#include "lstm_device.cuh"

namespace rnnfast {
namespace {

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// One thread walks a cycle of indices with L2-only loads (ld.global.cg: L1 is skipped,
// as cp.async.cg skips it when a step stages what other blocks wrote). Each address is
// the value the load before it returned, so every load is a whole round trip.
__global__ void l2_chase_kernel(const uint32_t* next,  // [n] one cycle through the indices
                                int64_t loads,         // loads to chain
                                long long* out) {      // [2] out: clocks taken, last index
  uint32_t i = 0;
  const long long start = clock64();
  for (int64_t k = 0; k < loads; ++k) i = __ldcg(next + i);
  out[0] = clock64() - start;
  out[1] = i;
}

// `rounds` phases of a step's exchange, every thread of every block.
// Grid (cooperative launch): with `exchange`, each thread writes a 16-byte piece of
// its block's row of `rows` (as a step writes h(t)); the phase ends at the kernels'
// grid barrier (end_grid_phase); then each thread copies its piece of the next
// block's row in with cp.async and waits for it (as a step stages h(t-1)): one
// dependent L2 round trip after the barrier. Without `exchange`, the barrier alone.
// Grid in clusters (`multicast`, sm_90): the same rows, but every CTA of a cluster takes
// in the row of the next cluster's first block, each CTA bulk-copying 1/multicast of it
// into every CTA of its cluster and waiting on its mbarrier (multicast_rows,
// tx_wait, as a multicast grid plan stages h(t-1)).
// Cluster (sm_90; `exchange` is implied): the cluster forward's exchange of h(t) at
// its FastRNNs size (B = 64 H = 512 fp16: 8 rows of 32 units a CTA) — each CTA writes
// its units' columns of a buffer (the value it read last round, plus one), sends them
// to every peer with exchange_step and reads a column of the next CTA's: one exchange
// latency a round.
// Both buffers alternate by round parity, as the kernels' exchange buffers do.
constexpr int kProbeRows = 8, kProbeUnits = 32;                // a cluster CTA's slice
constexpr int kProbeLd = kMaxCluster * kProbeUnits + 8;        // a row, padded as b_ld

template <bool kCluster>
__device__ __forceinline__ void phase_rounds(const PhaseProbe& args) {
  __shared__ uint4 landing[kThreads];        // grid: the piece copied from the next block
  __shared__ __align__(16) unsigned short inbox[kCluster ? 2 : 1][kProbeRows][kProbeLd];
  __shared__ uint64_t bars[2];               // multicast: the copies' mbarrier; cluster: the
                                             // exchange's two
  uint4* rows = static_cast<uint4*>(args.rows);
  uint32_t value = blockIdx.x;
  MulticastStage mc = multicast_stage(bars, kCluster ? 0 : args.multicast, args.barrier);
  ClusterExchange ex = kCluster ? cluster_exchange(bars, args.barrier) : ClusterExchange{};
  const int next_block = mc.landed.bar != nullptr  // the next cluster's first block
                             ? (blockIdx.x / mc.size * mc.size + mc.size) % args.blocks
                             : (blockIdx.x + 1) % args.blocks;
  __syncthreads();
  if (kCluster || mc.landed.bar != nullptr) cluster_sync();  // every CTA's mbarriers are set
  for (int64_t r = 0; r < args.rounds; ++r) {
    const int parity = static_cast<int>(r & 1);
    if constexpr (kCluster) {
      const int hidden = static_cast<int>(ex.blocks) * kProbeUnits;
      const int b = threadIdx.x / kProbeUnits, u = threadIdx.x % kProbeUnits;
      const int mine = static_cast<int>(ex.rank) * kProbeUnits;
      const int next = static_cast<int>((ex.rank + 1) % ex.blocks) * kProbeUnits;
      unsigned short* buf = &inbox[parity][0][0];
      buf[b * kProbeLd + mine + u] = static_cast<unsigned short>(value);
      exchange_step(ex, parity, buf, kProbeLd, kProbeRows, hidden, mine, kProbeUnits, 1, 0, [] {});
      value = buf[b * kProbeLd + next + u] + 1u;
    } else {
      if (args.exchange)
        rows[((size_t)parity * args.blocks + blockIdx.x) * kThreads + threadIdx.x] =
            make_uint4(value, 0, 0, 0);
      end_grid_phase(args.barrier, args.barrier.arrivals,
                     static_cast<unsigned long long>(args.blocks) * (r + 1), [] {});
      if (args.exchange) {
        const uint4* source = rows + ((size_t)parity * args.blocks + next_block) * kThreads;
        if (mc.landed.bar != nullptr) {
          const int piece = kThreads / mc.size;  // 16-byte elements a CTA copies
          if (threadIdx.x == 0)
            multicast_rows(mc, landing, piece, mc.size, piece,
                           [&](int b) { return source + b * piece; });
          tx_wait(mc.landed);
        } else {
          cp_async16(&landing[threadIdx.x], source + threadIdx.x);
          cp_async_commit();
          cp_async_wait<0>();  // the thread's own copy: no __syncthreads
        }
        value = landing[threadIdx.x].x + 1;
      }
    }
  }
  if (kCluster || mc.landed.bar != nullptr) cluster_sync();  // nothing lands in an exited block
}

__global__ void __launch_bounds__(kThreads, 1) grid_phase_kernel(const PhaseProbe args) {
  phase_rounds<false>(args);
}

// Compiled for sm_90 only; the sm_80 image is an empty kernel the host never launches.
__global__ void __launch_bounds__(kThreads, 1) cluster_phase_kernel(const PhaseProbe args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  phase_rounds<true>(args);
#endif
}

// The reduce-split backward's cluster meeting (lstm_backward.cu, reduce_partials) at a
// small size: each round every CTA writes partial sums for every CTA's 16 units x
// kProbeRows rows, meets its cluster and adds its own units' rows from every CTA's
// shared memory; the next round's sums start from that result.
// Partial sums alternate by round parity: a CTA rewrites a buffer only after the next
// round's cluster barrier, which every peer reaches after reading it (the kernel's grid
// barrier orders it so). No grid barrier: what a round costs is what the latency model
// charges a reduce split's step on top of a grid plan's (cluster_reduce_s).

struct ReduceProbe {
  int64_t rounds;  // rounds to run
  float* out;      // [1] out: block 0's last sum (keeps the rounds' work alive)
};

// Compiled for sm_90 only; the sm_80 image is an empty kernel the host never launches.
__global__ void __launch_bounds__(kThreads, 1) cluster_reduce_kernel(const ReduceProbe args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kProbeReduceUnits = 16;
  constexpr int kPart = kMaxCluster * kProbeReduceUnits * kProbeRows;
  __shared__ __align__(16) float part[2][kPart];
  __shared__ __align__(16) float sums[kProbeReduceUnits * kProbeRows];
  const unsigned rank = cluster_ctarank(), ctas = cluster_nctarank();
  // The partial sums' geometry of a reduce split's product: the cluster's units (M) by
  // the rows (N), one k-slice.
  const Product p = make_product(static_cast<int>(ctas) * kProbeReduceUnits, 16, kProbeRows, 2,
                                 false);
  float value = static_cast<float>(rank + 1);
  for (int64_t r = 0; r < args.rounds; ++r) {
    float* mine = part[r & 1];
    for (int e = threadIdx.x; e < p.ksplit * p.m * p.nb && e < kPart; e += kThreads)
      mine[e] = value + static_cast<float>(e);
    __syncthreads();
    reduce_partials(p, mine, sums, kProbeReduceUnits, rank, static_cast<int>(ctas));
    value = sums[threadIdx.x % (kProbeReduceUnits * kProbeRows)] * 0.5f;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) args.out[0] = value;
  cluster_sync();  // no peer reads an exited block
#endif
}

// Every warp issues `rounds` x kChains mma.sync m16n8k16 (fp16 in, fp32 accumulate,
// the kernels' MmaOp) into kChains independent accumulators. One chain: each mma waits
// for the one before, the latency the kernels' accumulator copies hide. Eight chains
// on every SM at the kernels' 8 warps a block: the rate mma.sync reaches. Block 0's
// thread 0 records its clocks and the global timer's nanoseconds around the loop, which
// give the SM clock while the tensor cores are busy.
template <int kChains>
__global__ void __launch_bounds__(kThreads, 1) mma_kernel(int64_t rounds,
                                                          long long* out) {  // [3] out: clocks, ns, sum
  // Finite fp16 operands below 1 (exponent bits capped), different per lane: data
  // with no zeros, as the kernels' weights and states.
  const uint32_t seed = (threadIdx.x + 1) * 2654435761u;
  const uint32_t a[4] = {seed & 0x3bff3bffu, (seed >> 3) & 0x3bff3bffu, (seed >> 5) & 0x3bff3bffu,
                         (seed >> 7) & 0x3bff3bffu};
  const uint32_t b[2] = {(seed >> 11) & 0x3bff3bffu, (seed >> 13) & 0x3bff3bffu};
  float d[kChains][4] = {};
  const long long clock_start = clock64();
  const unsigned long long ns_start = global_ns();
  for (int64_t r = 0; r < rounds; ++r) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) MmaOp<__half>::run(d[c], a, b);
  }
  const long long clocks = clock64() - clock_start;
  const unsigned long long ns = global_ns() - ns_start;
  // ptxas drops an mma whose result is never used (an asm's volatile does not reach
  // it), so the sums leave the kernel: every warp runs this code, block 0's lane 0 stores.
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) sum += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    out[0] = clocks;
    out[1] = static_cast<long long>(ns);
    out[2] = __float_as_int(sum);
  }
}

// Over half an SM's shared memory, so the scheduler places one mma_kernel block per
// SM, as the LSTM kernels run (their __launch_bounds__(kThreads, 1) and shared memory).
constexpr size_t kOneBlockPerSmBytes = 120 * 1024;

template <int kChains>
cudaError_t launch_mma(int blocks, int64_t rounds, long long* out, cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(mma_kernel<kChains>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)kOneBlockPerSmBytes);
  if (err != cudaSuccess) return err;
  mma_kernel<kChains><<<blocks, kThreads, kOneBlockPerSmBytes, stream>>>(rounds, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t probe_l2_chase(const uint32_t* next, int64_t loads, long long* out,
                           cudaStream_t stream) {
  l2_chase_kernel<<<1, 1, 0, stream>>>(next, loads, out);
  return cudaGetLastError();
}

cudaError_t probe_phases(const PhaseProbe& args, cudaStream_t stream) {
  if (args.cluster > 0)
    return launch_clusters(cluster_phase_kernel, args, args.blocks, args.cluster, 0, stream);
  if (args.multicast > 0)
    return launch_cooperative_clusters(grid_phase_kernel, args, args.blocks, args.multicast, 0,
                                       stream);
  return launch_cooperative(grid_phase_kernel, args, args.blocks, 0, stream);
}

cudaError_t probe_cluster_reduce(int blocks, int cluster, int64_t rounds, float* out,
                                 cudaStream_t stream) {
  cudaLaunchConfig_t config;
  cudaLaunchAttribute attribute;
  int clusters = 0;
  cudaError_t err = prepare_clusters(cluster_reduce_kernel, blocks, cluster, 0, stream, &config,
                                     &attribute, &clusters);
  if (err != cudaSuccess) return err;
  if (clusters == 0) return cudaErrorInvalidClusterSize;
  return cudaLaunchKernelEx(&config, cluster_reduce_kernel, ReduceProbe{rounds, out});
}

cudaError_t probe_mma(int blocks, int chains, int64_t rounds, long long* out,
                      cudaStream_t stream) {
  switch (chains) {
    case 1: return launch_mma<1>(blocks, rounds, out, stream);
    case 8: return launch_mma<8>(blocks, rounds, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace rnnfast
