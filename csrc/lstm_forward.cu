// Forward recurrence of one LSTM layer and direction: one persistent launch for all T
// steps. The input projection x @ W_ih^T of every row is one GEMM before it (torch, in
// rnnfast/backends/cuda/forward.py).
//
// Block (slice j, batch block q) owns hidden units [j*U, (j+1)*U) of batch rows
// [q*Bb, (q+1)*Bb). It copies the 4U rows of W_hh of its units into shared memory once
// and keeps them for the whole sequence. Each step it computes
//     gates^T [4U][Bb] = W_hh[my rows] . h(t-1)^T
// on tensor cores with the batch as the mma's N (8 rows a tile, so B = 3 pads to 8,
// not 16), all rows of the batch block in one pass, then applies the cell to its
// (row, unit) pairs and publishes h(t):
//   - grid plans (sm_80+): into an exchange buffer in global memory, then a grid
//     barrier of the batch block; the next step stages h(t) with 16-byte cp.async.
//     The barrier is a release/acquire counter under a cooperative launch, bounded.
//   - cluster plans (sm_90, no projection): the batch block is one thread-block
//     cluster; h(t) is copied straight into every CTA's shared memory (distributed
//     shared memory, st.async), and each CTA waits on its own mbarrier for its peers'
//     bytes (exchange_step): no barrier a step. Register cluster plans (16-bit,
//     lstm_forward_reg_kernel) keep the first columns of the W_hh rows in registers
//     as mma fragments instead, the rest in shared memory; a warp multiplies both parts
//     of its M tiles into the same accumulators (reg_product).
// With a projection (grid plans) a second phase computes y = hidden . W_hr^T from the
// W_hr rows the block holds; two barriers per step. The next step's xg (and bias) is
// loaded into registers between arriving at the barrier and waiting at it.
#include "lstm_device.cuh"

namespace rnnfast {
namespace {

template <typename T, bool kCluster, bool kRegs = false>
__device__ __forceinline__ void forward_body(const ForwardArgs& args) {
  static_assert(!kRegs || (kCluster && sizeof(T) == 2), "register plans: cluster, 16-bit");
  unsigned char* const smem = dynamic_smem();
  const int H = args.hidden_size, P = args.out_size, B = args.batch;
  const bool has_proj = args.w_hr != nullptr;
  const Split& sp = args.split;
  // Cluster kernels lay out with pass_rows the constant 0 (only grid plans take passes),
  // so that their layouts fold as if passes did not exist.
  Split layout_split = sp;
  if constexpr (kCluster) layout_split.pass_rows = 0;
  const ForwardLayout L = forward_layout(H, P, has_proj, sizeof(T), layout_split);
  T* w_s = reinterpret_cast<T*>(smem + L.w_off);       // [rec.m][rec.a_ld] W_hh rows of my units
                                                       // (register plans: columns reg_cols..)
  T* wr_s = reinterpret_cast<T*>(smem + L.wr_off);     // [proj.m][proj.a_ld] W_hr rows of my columns
  T* ring = reinterpret_cast<T*>(smem + L.ring_off);   // B stages, or (cluster) h [2][Bb][b_ld]
  float* part = reinterpret_cast<float*>(smem + L.part_off);  // [part_sets][m][Bb]
  float* c_s = reinterpret_cast<float*>(smem + L.c_off);      // [Bb][U] cell state
  const T* xg = static_cast<const T*>(args.xg);
  const T* w_hh = static_cast<const T*>(args.w_hh);
  const T* w_hr = static_cast<const T*>(args.w_hr);
  const T* h0x = static_cast<const T*>(args.h0x);
  T* hx = static_cast<T*>(args.hx);
  T* hidx = static_cast<T*>(args.hidx);
  T* y = static_cast<T*>(args.y);
  T* hidden = static_cast<T*>(args.hidden);

  const int U = sp.units, Bb = sp.block_rows;
  const int slice = blockIdx.x % sp.unit_slices, row0 = (blockIdx.x / sp.unit_slices) * Bb;
  const int unit0 = slice * U, my_units = clamp_int(H - unit0, 0, U);
  const int col0 = slice * sp.proj_cols;
  const int my_cols = has_proj ? clamp_int(P - col0, 0, sp.proj_cols) : 0;
  const int64_t G = 4 * (int64_t)H;
  const int xld = exchange_ld(P), hld = exchange_ld(H);
  unsigned long long* arrivals = args.barrier.arrivals + blockIdx.x / sp.unit_slices;
  unsigned long long phases = 0;
  // Grid plans in clusters: the staged h(t-1) arrives by multicast (bar null: cp.async).
  MulticastStage mc = multicast_stage(smem + L.bar_off, kCluster ? 0 : sp.multicast, args.barrier);
  // Cluster plans: the mbarriers the peers' h(t) stores complete on.
  ClusterExchange ex = kCluster ? cluster_exchange(smem + L.bar_off, args.barrier) : ClusterExchange{};

  auto w_hh_of = [&](int m, int k) {  // element (my gate row m, column k) of W_hh
    return m % U < my_units ? w_hh[(size_t)gate_row(m, U, unit0, H) * P + k] : from_float<T>(0.0f);
  };
  // Register plans: W_hh columns [0, reg_cols) of my rows as A fragments in registers.
  RegWeights<T, kRegTiles, kRegKTiles> regs;
  if constexpr (kRegs)
    load_reg_weights(regs, L.rec, L.reg_slices, sp.reg_k_tiles, w_s, 4 * U, w_hh_of);
  load_weights(w_s, L.rec, 4 * U, P - L.reg_cols,
               [&](int m, int k) { return w_hh_of(m, L.reg_cols + k); });
  if (has_proj)
    load_weights(wr_s, L.proj, my_cols, H, [&](int n, int k) { return w_hr[(size_t)(col0 + n) * H + k]; });
  for (int e = threadIdx.x; e < Bb * U; e += kThreads) {
    const int b = e / U, u = e % U;
    c_s[e] = row0 + b < B && u < my_units ? args.c[(size_t)(row0 + b) * H + unit0 + u] : 0.0f;
  }
  const int h_elems = L.rec.nb * L.rec.b_ld;  // one h buffer of a cluster block
  const int h_cols = L.reg_cols + L.rec.k;   // its columns: P padded to the k-tile
  if constexpr (kCluster) {
    // Peers write only their slices' columns of the h buffers; the product also reads
    // the k-padding columns, so they must be zeros, not whatever the shared memory
    // held. Then h0 of the batch block into the buffer step 0 reads.
    zero_shared(ring, 2 * h_elems);
    __syncthreads();
    stage_whole(ring + h_elems, L.rec.b_ld, min_int(Bb, B - row0), h_cols,
                [&](int b) { return h0x + (size_t)(row0 + b) * xld; }, nullptr);
  } else {
    __syncthreads();
  }
  const bool in_cluster = kCluster || mc.landed.bar != nullptr;
  if (in_cluster) cluster_sync();  // every peer's memory and mbarriers are live

  // Rows of a pass: all of the batch block's but in grid plans with row passes.
  const int pass = kCluster ? Bb : forward_pass_rows(layout_split);
  // xg + bias of my cells at step k, round `round` (kItems cells a thread per round) of
  // the pass from row p0, into registers: round 0 of the next step's first pass is
  // issued before the barrier wait.
  constexpr int kItems = kRegs ? kRegCellItems : kMaxCellItems;
  float xg_regs[kItems][4];
  auto load_xg = [&](int64_t k, int round, int p0) {
    const StepRows s = step_rows(args.offsets, args.sizes, k, args.steps, B, args.reverse);
    const int rows = min_int(pass, block_active(s.size, row0, Bb) - p0);
    for_round_cells<kItems>(round, rows, U, my_units, [&](int i, int, int b, int u) {
      const T* x = xg + (s.offset + row0 + p0 + b) * G + unit0 + u;
#pragma unroll
      for (int g = 0; g < 4; ++g)
        xg_regs[i][g] = to_float(x[g * H]) + (args.bias ? args.bias[g * H + unit0 + u] : 0.0f);
    });
  };
  auto end_phase = [&](bool last, int64_t next) {  // grid plans
    end_grid_phase(args.barrier, arrivals, ++phases * sp.unit_slices, [&] {
      if (!last) load_xg(next, 0, 0);
    });
  };

  load_xg(0, 0, 0);
  for (int64_t k = 0; k < args.steps; ++k) {
    const StepRows s = step_rows(args.offsets, args.sizes, k, args.steps, B, args.reverse);
    const int n_act = block_active(s.size, row0, Bb);
    const int n_prev = block_active(s.size_prev, row0, Bb);
    const bool last = k + 1 == args.steps;
    T* h_next = hx + (size_t)(k & 1) * B * xld;  // grid plans: where h(t) is published

    // Phase 1: gates^T = W_hh[my rows] . h(t-1)^T, then the cell of my (row, unit) pairs;
    // grid plans with row passes take rows [p0, p0 + rows) a pass.
    for (int p0 = 0; p0 < n_act; p0 += pass) {
      const int rows = min_int(pass, n_act - p0);
      if constexpr (kCluster) {
        T* h_prev = ring + ((k & 1) ^ 1) * h_elems;
        if (n_act > n_prev) {  // rows that start here (reverse packed) begin from h0
          stage_whole(h_prev + n_prev * L.rec.b_ld, L.rec.b_ld, n_act - n_prev, h_cols,
                      [&](int b) { return h0x + (size_t)(row0 + n_prev + b) * xld; }, nullptr);
        }
        if constexpr (kRegs)
          reg_product(regs, L.rec, L.reg_slices, sp.reg_k_tiles, w_s, h_prev, part, [](int) {});
        else
          resident_product(L.rec, w_s, h_prev, false, n_act, [](int) { return (const T*)nullptr; },
                           part);
      } else {
        const T* h_prev = hx + (size_t)((k & 1) ^ 1) * B * xld;
        resident_product(L.rec, w_s, ring, true, rows,
                         [&](int b) {
                           const int r = row0 + p0 + b;
                           return (r < s.size_prev ? h_prev : h0x) + (size_t)r * xld;
                         },
                         part, &mc);
      }
      if (p0 > 0) load_xg(k, 0, p0);  // the first pass's came across the barrier
      auto reload = [&](int round) { load_xg(k, round, p0); };
      for_each_cell<kItems>(rows, U, my_units, reload, [&](int i, int, int pb, int u) {
        const int b = p0 + pb, e = b * U + u;  // the row in the batch block, its cell
        const int r = row0 + b, unit = unit0 + u;
        const int64_t row = s.offset + r;
        float pre[4];
#pragma unroll
        for (int g = 0; g < 4; ++g)
          pre[g] = product_out(L.rec, part, g * U + u, pb, L.reg_slices) + xg_regs[i][g];
        const CellOut out = lstm_cell(pre[0], pre[1], pre[2], pre[3], c_s[e]);
        c_s[e] = out.c;
        if (args.gates != nullptr) {
          float* gates = args.gates + row * G + unit;
          gates[0] = out.i;
          gates[H] = out.f;
          gates[2 * H] = out.g;
          gates[3 * H] = out.o;
        }
        if (args.cells != nullptr) args.cells[row * H + unit] = out.c;
        const T h = from_float<T>(out.h);
        if (has_proj) {
          if (hidden != nullptr) hidden[row * H + unit] = h;
          hidx[(size_t)r * hld + unit] = h;
        } else {
          y[row * P + unit] = h;
          if (last) return;
          if constexpr (kCluster) {
            ring[(k & 1) * h_elems + b * L.rec.b_ld + unit] = h;  // exchange_step sends it
          } else {
            h_next[(size_t)r * xld + unit] = h;
          }
        }
      });
    }

    if constexpr (!kCluster) {
      if (has_proj) {  // Phase 2: y^T [Pc][Bb] = W_hr[my rows] . hidden^T needs every unit
        end_phase(true, 0);
        if (n_act > 0) {
          resident_product(L.proj, wr_s, ring, true, n_act,
                           [&](int b) { return hidx + (size_t)(row0 + b) * hld; }, part, &mc);
          for (int e = threadIdx.x; e < n_act * sp.proj_cols; e += kThreads) {
            const int b = e / sp.proj_cols, n = e % sp.proj_cols;
            if (n >= my_cols) continue;
            const int r = row0 + b;
            const T v = from_float<T>(product_out(L.proj, part, n, b));
            y[(s.offset + r) * P + col0 + n] = v;
            h_next[(size_t)r * xld + col0 + n] = v;
          }
        }
      }
    }
    if (!last) {  // h(t) of every unit is out before step t+1 reads it
      if constexpr (kCluster)
        exchange_step(ex, k & 1, ring + (k & 1) * h_elems, L.rec.b_ld, n_act, H, unit0, my_units, 1,
                      0, [&] { load_xg(k + 1, 0, 0); });
      else
        end_phase(false, k + 1);
    }
  }

  // Row passes: the thread that last wrote a cell (pass-relative) is not the one that
  // copies it out here.
  if (pass < Bb) __syncthreads();
  for (int e = threadIdx.x; e < Bb * U; e += kThreads) {
    const int b = e / U, u = e % U;
    if (row0 + b < B && u < my_units) args.c[(size_t)(row0 + b) * H + unit0 + u] = c_s[e];
  }
  if (in_cluster) cluster_sync();  // no peer writes into an exited block
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_forward_kernel(const ForwardArgs args) {
  forward_body<T, false>(args);
}

// Compiled for sm_90 only; the sm_80 image is an empty kernel the host never launches.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_forward_cluster_kernel(const ForwardArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  forward_body<T, true>(args);
#endif
}

// Register cluster plans (16-bit): a kernel of its own, so that the 132 registers of
// fragments are reserved only where a plan holds some.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_forward_reg_kernel(const ForwardArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  forward_body<T, true, true>(args);
#endif
}

template <typename T>
cudaError_t launch_typed(const ForwardArgs& args, cudaStream_t stream) {
  auto cluster_kernel = lstm_forward_cluster_kernel<T>;
  if constexpr (sizeof(T) == 2) {
    if (args.split.reg_k_tiles > 0) cluster_kernel = lstm_forward_reg_kernel<T>;
  } else if (args.split.reg_k_tiles > 0) {
    return cudaErrorInvalidValue;  // binding.cpp refuses fp32 register plans before this
  }
  return launch_plan(lstm_forward_kernel<T>, cluster_kernel, args, forward_smem_bytes(args),
                     stream);
}

}  // namespace

size_t forward_smem_bytes(const ForwardArgs& args) {
  const int itemsize = args.dtype == DType::kFloat32 ? 4 : 2;
  return forward_layout(args.hidden_size, args.out_size, args.w_hr != nullptr, itemsize, args.split)
      .bytes;
}

// The backward's cluster kernel has the same block shape (threads, one block per SM)
// and comes from the same build.
cudaError_t resident_clusters(int cluster, size_t smem, int* clusters) {
  // Built without an sm_90 image (RNNFAST_CUDA_ARCHS=80 run on a Hopper, the kernel
  // JIT-compiled from compute_80 PTX), the cluster kernels are empty stubs: none.
  cudaFuncAttributes built;
  cudaError_t err = cudaFuncGetAttributes(&built, lstm_forward_cluster_kernel<__half>);
  if (err != cudaSuccess || built.ptxVersion < 90) {
    *clusters = 0;
    return err;
  }
  cudaLaunchConfig_t config;
  cudaLaunchAttribute attribute;
  return prepare_clusters(lstm_forward_cluster_kernel<__half>, cluster, cluster, smem, nullptr,
                          &config, &attribute, clusters);
}

cudaError_t launch_forward(const ForwardArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case DType::kFloat32: return launch_typed<float>(args, stream);
    case DType::kFloat16: return launch_typed<__half>(args, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace rnnfast
