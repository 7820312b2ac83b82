// Launcher API of the kernels: plain pointers and sizes, no torch. binding.cpp fills
// these structs from tensors; the kernel files implement the launchers.
//
// Sizes: N rows (T*B dense, or the packed length), B batch, H hidden, P = proj_size or
// H, T processed steps, Q batch blocks. "acc" is fp32 (cell state, saved gates, every
// gradient of the recurrence); "io" is the layer's dtype (fp32, fp16 or bf16). An
// "exchange" buffer is [.., B, ld] with ld = exchange_ld(cols) (lstm_common.cuh),
// zero-filled by the caller: rows are 16-byte aligned for cp.async and the padding
// columns stay zero, so they add nothing to a product.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "lstm_common.cuh"

namespace rnnfast {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// The grid barrier's state (grid plans; unused by cluster plans).
struct Barrier {
  unsigned long long* arrivals;  // [Q] zeroed by the caller: arrivals of each batch block
  int* timed_out;                // [1] zeroed by the caller: set when a wait gave up
  long long spin_limit;          // polls before a wait gives up (far above any real wait)
};

struct ForwardArgs {
  const void* xg;          // [N, 4H] io: x @ W_ih^T of every row, no bias
  const float* bias;       // [4H] acc: b_ih + b_hh, or null
  const void* w_hh;        // [4H, P] io, gate rows i, f, g, o
  const void* w_hr;        // [P, H] io projection, or null
  const void* h0x;         // [B, ld(P)] io exchange layout: h0
  void* hx;                // [2, B, ld(P)] io exchange: h(t) by step parity (grid plans)
  void* hidx;              // [B, ld(H)] io exchange: o * tanh(c) of the step (w_hr only)
  float* c;                // [B, H] acc: c0 on entry, each row's last c on exit
  void* y;                 // [N, P] io out: h_t (projected) of every row
  float* gates;            // [N, 4H] acc out: activated gates, or null (not saved)
  float* cells;            // [N, H] acc out: c_t of every row, or null (not saved)
  void* hidden;            // [N, H] io out: o * tanh(c) before the projection, or null
  const int64_t* offsets;  // [T] first row of each processed step (packed), or null (dense)
  const int32_t* sizes;    // [T] active rows of each processed step (packed), or null
  int64_t steps;           // T
  int batch, hidden_size, out_size;  // B, H, P
  bool reverse;
  DType dtype;
  Split split;
  int blocks;              // unit_slices * Q
  Barrier barrier;
};

struct BackwardArgs {
  const void* dy;          // [N, P] io: dL/dy, or null
  const float* gates;      // [N, 4H] acc: activated gates
  const float* cells;      // [N, H] acc: c_t of every row
  const float* c0;         // [B, H] acc
  const void* w_hh;        // [4H, P] io
  const void* w_hr;        // [P, H] io, or null
  const float* dh_n;       // [B, P] acc: dL/dh_n (zeros if none)
  const float* dc_n;       // [B, H] acc: dL/dc_n (zeros if none)
  float* dh0;              // [B, P] acc out (zero-initialised by the caller)
  float* dc0;              // [B, H] acc out (zero-initialised by the caller)
  float* dgates;           // [N, 4H] acc out: dL/d(gate pre-activations)
  float* dy_total;         // [N, P] acc out: dL/dy incl. the recurrence (for dW_hr), or null
  void* gx;                // [2, B, ld(4H)] chain-dtype exchange: dgates by step parity
  void* dhx;               // [B, ld(P)] chain-dtype exchange: dh + dy of the step (w_hr only)
  const int64_t* offsets;  // [T] as in ForwardArgs
  const int32_t* sizes;    // [T]
  int64_t steps;
  int batch, hidden_size, out_size;
  bool reverse;
  DType dtype;
  Split split;             // proj_cols: W_hh columns per block (== units without projection)
  int blocks;
  Barrier barrier;
};

// Shared memory one block of the kernel needs (bytes); the plan in Python mirrors it.
size_t forward_smem_bytes(const ForwardArgs& args);
size_t backward_smem_bytes(const BackwardArgs& args);

// Launches on `stream`: cooperative for grid plans (every block resident, so the grid
// barrier cannot wait for a block that never runs), a cluster launch for cluster
// plans. cudaSuccess, or the error of the launch (for example
// cudaErrorCooperativeLaunchTooLarge when the grid cannot be co-resident).
cudaError_t launch_forward(const ForwardArgs& args, cudaStream_t stream);
cudaError_t launch_backward(const BackwardArgs& args, cudaStream_t stream);

// How many clusters of `cluster` blocks of the cluster kernels (one block per SM: `smem`
// bytes of shared memory and their registers allow no second) the current GPU holds at
// once, into *clusters: the most batch blocks a cluster plan can run side by side. 0
// when this build has no sm_90 code for them.
cudaError_t resident_clusters(int cluster, size_t smem, int* clusters);

// Latency probes (lstm_probe.cu): the primitives whose cost rnnfast/backends/latency.py
// assumes, each run `rounds` (`loads`) times through the kernels' own device code;
// rnnfast/backends/probe.py times them.
struct PhaseProbe {
  void* rows;       // [2, blocks, kThreads] 16-byte pieces zeroed: the grid exchange by
                    // round parity, or null (cluster probes, or no exchange)
  int64_t rounds;   // phases to run
  int blocks;       // blocks of the launch (grid: at most one per SM)
  int cluster;      // blocks a cluster (sm_90), or 0 for a cooperative grid
  int multicast;    // grid: CTAs a cluster staging the exchange by multicast bulk copies
                    // (sm_90, divides blocks), or 0: cp.async, a piece per thread
  bool exchange;    // grid: exchange data each phase (needs rows), or the barrier alone;
                    // cluster probes always exchange (the cluster plans' st.async step)
  Barrier barrier;  // arrivals [1] (grid) and timed_out [1], zeroed by the caller
};

// One thread chains `loads` L2 loads through `next` ([n] one cycle of indices < n);
// out [2]: the clocks they took, the last index.
cudaError_t probe_l2_chase(const uint32_t* next, int64_t loads, long long* out,
                           cudaStream_t stream);
// Phases ending at the grid barrier (cluster == 0, cooperative) or, in a cluster, at the
// cluster plans' exchange (st.async into every peer, an mbarrier wait).
cudaError_t probe_phases(const PhaseProbe& args, cudaStream_t stream);
// `blocks` blocks in clusters of `cluster` (sm_90), each round meeting at the reduce
// splits' cluster barrier and adding their units' partial sums from every CTA
// (reduce_partials); out [1]: a sum, to keep the work.
cudaError_t probe_cluster_reduce(int blocks, int cluster, int64_t rounds, float* out,
                                 cudaStream_t stream);
// `blocks` blocks (one per SM) of 8 warps, each issuing rounds x chains (1 or 8)
// mma.sync m16n8k16; out [3]: block 0's clocks and global-timer nanoseconds, a sum.
cudaError_t probe_mma(int blocks, int chains, int64_t rounds, long long* out,
                      cudaStream_t stream);

}  // namespace rnnfast
