// Backward recurrence of one LSTM layer and direction: the reverse-time chain
// dh, dc -> gate gradients of every row, in one persistent launch (a cooperative grid
// or thread-block clusters). The weight and input gradients are then GEMMs over all
// rows (torch/cuBLAS, shared with the other backends in rnnfast/backends/gradients.py).
//
// Block (slice j, batch block q) owns hidden units [j*U, (j+1)*U) of batch rows
// [q*Bb, (q+1)*Bb) and keeps W_hh's columns of its units, transposed, in shared memory
// for the whole sequence. Without a projection one phase per step suffices:
//     dh^T [U][Bb] = W_hh[:, my units]^T . dgates(t+1)^T      (tensor cores)
// then the cell's backward for my (row, unit) pairs gives dgates(t), which every block
// of the batch block needs next step: it goes to an exchange buffer, then the batch
// block's grid barrier. With a projection the chain has two phases and two barriers:
//     A. dh_units^T [U][Bb] = W_hr[:, my units]^T . (dh + dy)^T, then the cell;
//     B. dh(t-1)^T [Pc][Bb] = W_hh[:, my columns]^T . dgates(t)^T.
// The chain's operand is exchanged in the layer's dtype for 16-bit layers (fp32
// accumulation) and in fp32 with the 3xTF32 split for fp32 layers; dgates themselves
// are written in fp32 for the weight gradients. The next step's saved gates, cells and
// dy are loaded into registers between arriving at the barrier and waiting at it.
//
// Cluster plans (sm_90, no projection) exchange dgates as the forward's cluster plans
// exchange h: the batch block is one thread-block cluster, each CTA copies its gate
// gradients straight into every CTA's shared memory (DSMEM, st.async), double-buffered
// by step parity, and waits on its own mbarrier for its peers' (exchange_step): no
// global exchange, no barrier, no staging.
//
// Reduce splits (sm_90, no projection; lstm_backward_reduce_kernel) are grid plans in
// clusters of c CTAs that split the chain's reduction over the 4H gate columns: CTA r
// holds W_hh^T rows of all the cluster's c x U units for its 1/c of the gate columns,
// stages only those columns of dgates(t+1), and after the cluster barrier sums its own
// units' partial dh from every CTA's shared memory (reduce_partials). A block stages a
// c-th of the 4H-wide rows a step, which bounds the grid's step at large batches.
//
// Register plans (16-bit, no projection, at most 8 rows a block; lstm_backward_reg_kernel
// for grids, lstm_backward_cluster_reg_kernel for clusters) keep the first columns of
// the block's W_hh^T rows in registers as mma fragments, the rest in shared memory.
// Grid plans stage each step's gate gradients: by multicast in chunks, each multiplied
// once it has landed (multicast_chunks), by cp.async whole before both parts multiply
// them; cluster plans have them whole in their exchange buffer.
#include "lstm_device.cuh"

namespace rnnfast {
namespace {

// What the cell's backward of one (row, unit) reads besides dh and the carried dc.
struct SavedCell {
  float i, f, g, o, c, c_prev, dy;
};

template <typename T, bool kCluster, bool kRegs = false, bool kReduce = false>
__device__ __forceinline__ void backward_body(const BackwardArgs& args) {
  static_assert(!kRegs || sizeof(T) == 2, "register plans: 16-bit");
  static_assert(!kReduce || (!kCluster && !kRegs), "reduce splits: grid plans, no registers");
  unsigned char* const smem = dynamic_smem();
  const int H = args.hidden_size, P = args.out_size, B = args.batch;
  const bool has_proj = args.w_hr != nullptr;
  const Split& sp = args.split;
  // A kernel without the reduce split lays out with reduce_ctas the constant 0 (it is
  // launched only so), so that its layout folds as if the split did not exist.
  Split layout_split = sp;
  if constexpr (!kReduce) layout_split.reduce_ctas = 0;
  const BackwardLayout L = backward_layout(H, P, has_proj, sizeof(T), layout_split);
  T* w_s = reinterpret_cast<T*>(smem + L.w_off);     // [chain.m][chain.a_ld]: W_hh columns
                                                     // (register plans: rows reg_cols..)
  T* wr_s = reinterpret_cast<T*>(smem + L.wr_off);   // [proj.m][proj.a_ld]: W_hr columns
  T* ring = reinterpret_cast<T*>(smem + L.ring_off);  // B stages, or (cluster) dgates [2][nb][b_ld]
  float* part = reinterpret_cast<float*>(smem + L.part_off);  // [part_sets][m][Bb]
  float* dc_s = reinterpret_cast<float*>(smem + L.dc_off);    // [Bb][U] carried dc
  float* dh_s = reinterpret_cast<float*>(smem + L.dh_off);    // reduce: [U][chain.nb] summed dh
  const T* dy = static_cast<const T*>(args.dy);
  const T* w_hh = static_cast<const T*>(args.w_hh);
  const T* w_hr = static_cast<const T*>(args.w_hr);
  T* gx = static_cast<T*>(args.gx);
  T* dhx = static_cast<T*>(args.dhx);

  const int U = sp.units, Bb = sp.block_rows;
  const int slice = blockIdx.x % sp.unit_slices, row0 = (blockIdx.x / sp.unit_slices) * Bb;
  const int unit0 = slice * U, my_units = clamp_int(H - unit0, 0, U);
  const int Pc = has_proj ? sp.proj_cols : U;  // W_hh columns this block holds
  const int col0 = slice * Pc, my_cols = clamp_int(P - col0, 0, Pc);
  const int64_t G = 4 * (int64_t)H;
  const int gld = exchange_ld(4 * H), pld = exchange_ld(P);
  unsigned long long* arrivals = args.barrier.arrivals + blockIdx.x / sp.unit_slices;
  unsigned long long phases = 0;
  // Grid plans in clusters: the staged operands arrive by multicast (bar null: cp.async).
  MulticastStage mc = multicast_stage(smem + L.bar_off, kCluster ? 0 : sp.multicast, args.barrier);
  // Cluster plans: the mbarriers the peers' gate-gradient stores complete on.
  ClusterExchange ex = kCluster ? cluster_exchange(smem + L.bar_off, args.barrier) : ClusterExchange{};

  // Reduce splits: my rank in the cluster (its slices are consecutive) and my gate
  // columns [g0, g0 + chain.k) (rows of W_hh, columns of dgates).
  const int rank = kReduce ? slice % sp.reduce_ctas : 0;
  const int g0 = kReduce ? rank * reduce_cols(H, sp.reduce_ctas) : 0;
  Product chain = L.chain;  // reduce splits: the last CTA's gate columns may be fewer
  auto w_hh_of = [&](int n, int j) { return w_hh[(size_t)j * P + col0 + n]; };  // W_hh^T (n, j)
  // Register plans: W_hh rows [0, reg_cols) of my columns as A fragments in registers.
  RegWeights<T, kChainRegTiles, kChainRegKTiles> regs;
  if constexpr (kRegs)
    load_reg_weights(regs, L.chain, L.reg_slices, sp.reg_k_tiles, w_s, my_cols, w_hh_of);
  if constexpr (kReduce) {  // W_hh^T rows of the cluster's units, from its first
    chain.k = round_up(reduce_real_cols(H, sp.reduce_ctas, rank), k_tile(sizeof(T)));
    chain.chunks = cdiv(chain.k, chain.chunk);
    const int first = (slice - rank) * U;
    load_weights(w_s, L.chain, clamp_int(H - first, 0, sp.reduce_ctas * U),
                 reduce_real_cols(H, sp.reduce_ctas, rank),
                 [&](int n, int j) { return w_hh[(size_t)(g0 + j) * P + first + n]; });
  } else {
    load_weights(w_s, L.chain, my_cols, 4 * H - L.reg_cols,
                 [&](int n, int j) { return w_hh_of(n, L.reg_cols + j); });
  }
  if (has_proj)
    load_weights(wr_s, L.proj, my_units, P, [&](int u, int p) { return w_hr[(size_t)p * H + unit0 + u]; });
  for (int e = threadIdx.x; e < Bb * U; e += kThreads) {
    const int b = e / U, u = e % U;
    dc_s[e] = row0 + b < B && u < my_units ? args.dc_n[(size_t)(row0 + b) * H + unit0 + u] : 0.0f;
  }
  // Cluster plans: peers write only their slices' columns of the dgates buffers; the
  // product also reads the k-padding columns, so they must be zeros, not whatever the
  // shared memory held.
  const int g_elems = L.chain.nb * L.chain.b_ld;  // one dgates buffer of a cluster block
  if constexpr (kCluster) zero_shared(ring, 2 * g_elems);
  __syncthreads();
  // Every peer's memory is live (cluster plans: zeroed; both: its mbarriers set).
  const bool in_cluster = kCluster || kReduce || mc.landed.bar != nullptr;
  if (in_cluster) cluster_sync();

  auto rows_of = [&](int64_t k) {
    return step_rows(args.offsets, args.sizes, k, args.steps, B, args.reverse);
  };
  // Saved forward values of my cells at step k, round `round` (kItems cells a thread per
  // round), into registers: round 0 is issued before the barrier wait.
  constexpr int kItems = kRegs ? kRegCellItems : kMaxCellItems;
  SavedCell saved[kItems];
  auto load_saved = [&](int64_t k, int round) {
    const StepRows s = rows_of(k);
    for_round_cells<kItems>(round, block_active(s.size, row0, Bb), U, my_units, [&](int i, int, int b, int u) {
      const int r = row0 + b, unit = unit0 + u;
      const int64_t row = s.offset + r;
      const float* gates = args.gates + row * G + unit;
      saved[i].i = __ldg(gates);
      saved[i].f = __ldg(gates + H);
      saved[i].g = __ldg(gates + 2 * H);
      saved[i].o = __ldg(gates + 3 * H);
      saved[i].c = __ldg(args.cells + row * H + unit);
      saved[i].c_prev = r < s.size_prev ? __ldg(args.cells + (s.offset_prev + r) * H + unit)
                                        : __ldg(args.c0 + (size_t)r * H + unit);
      saved[i].dy = !has_proj && dy != nullptr ? load_ro(dy + row * P + unit) : 0.0f;
    });
  };
  // The end of a phase: grid plans meet at the batch block's barrier.
  auto end_phase = [&](bool prefetch, int64_t next) {
    end_grid_phase(args.barrier, arrivals, ++phases * sp.unit_slices, [&] {
      if (prefetch) load_saved(next, 0);
    });
  };
  // The cell's backward at step k for my pairs, given dh(b, u); writes dgates(t) (fp32
  // and the chain's exchange copy) and the carried dc, or dc0 for rows starting here.
  auto cell_backward = [&](int64_t k, const StepRows& s, int n_act, auto dh_of) {
    const int carried = carried_rows(s);
    auto reload = [&](int round) { load_saved(k, round); };
    for_each_cell<kItems>(n_act, U, my_units, reload, [&](int i, int e, int b, int u) {
      const int r = row0 + b, unit = unit0 + u;
      const int64_t row = s.offset + r;
      const float dh = dh_of(b, u) + saved[i].dy;
      if (!has_proj && args.dy_total != nullptr) args.dy_total[row * P + unit] = dh;
      const SavedCell& v = saved[i];
      const CellGrad d = lstm_cell_backward(v.i, v.f, v.g, v.o, v.c, v.c_prev, dh, dc_s[e]);
      float* dgates = args.dgates + row * G + unit;
      dgates[0] = d.d_i;
      dgates[H] = d.d_f;
      dgates[2 * H] = d.d_g;
      dgates[3 * H] = d.d_o;
      const T chain_values[4] = {from_float<T>(d.d_i), from_float<T>(d.d_f),
                                 from_float<T>(d.d_g), from_float<T>(d.d_o)};
      if constexpr (kCluster) {
        T* mine = ring + (k & 1) * g_elems + b * L.chain.b_ld + unit;  // exchange_step sends it
#pragma unroll
        for (int g = 0; g < 4; ++g) mine[g * H] = chain_values[g];
      } else {
        T* g_out = gx + ((size_t)(k & 1) * B + r) * gld + unit;
#pragma unroll
        for (int g = 0; g < 4; ++g) g_out[g * H] = chain_values[g];
      }
      if (r < carried)
        dc_s[e] = d.dc_prev;
      else
        args.dc0[(size_t)r * H + unit] = d.dc_prev;
    });
  };
  // Stages rows of the gate-gradient exchange written at step k (reduce splits: from
  // my first gate column).
  auto gates_rows = [&](int64_t k) {
    const T* g_in = gx + (size_t)(k & 1) * B * gld + g0;
    return [=](int b) { return g_in + (size_t)(row0 + b) * gld; };
  };
  // dh of (row b, unit u) from the product of this iteration.
  auto dh_of = [&](int b, int u) {
    if constexpr (kReduce) return dh_s[u * chain.nb + b];
    return product_out(L.chain, part, u, b, L.reg_slices);
  };

  if (!has_proj) {
    // Iteration k: dh of step k's rows from dgates(k+1), then the cell of step k. The
    // last iteration (k = -1) only turns dgates(0) into dh0.
    load_saved(args.steps - 1, 0);
    for (int64_t k = args.steps - 1; k >= -1; --k) {
      StepRows s{0, 0, 0, 0};
      if (k >= 0) s = rows_of(k);
      const int n_act = k >= 0 ? block_active(s.size, row0, Bb) : 0;
      const int n_next = k + 1 < args.steps ? block_active(rows_of(k + 1).size, row0, Bb) : 0;
      if (n_next > 0) {
        if constexpr (kCluster) {  // dgates(t+1) whole in the exchange buffer
          T* g_in = ring + ((k + 1) & 1) * g_elems;
          if constexpr (kRegs)
            reg_product(regs, L.chain, L.reg_slices, sp.reg_k_tiles, w_s, g_in, part, [](int) {});
          else
            resident_product(L.chain, w_s, g_in, false, n_next,
                             [](int) { return (const T*)nullptr; }, part);
        } else if constexpr (kRegs) {  // dgates(t+1), then both parts of W_hh^T
          if (mc.landed.bar != nullptr) {  // in chunks, each multiplied once it has landed
            const int chunks = stage_chunks(sp.reg_k_tiles);
            if (threadIdx.x == 0)
              multicast_chunks(mc, ring, L.chain.b_ld, n_next, chunks,
                               [&](int c) {
                                 return stage_chunk_cols(L.reg_slices, sp.reg_k_tiles, L.chain.k,
                                                         sizeof(T), c);
                               },
                               gates_rows(k + 1));
            const int rounds = stage_chunk_rounds(sp.reg_k_tiles);
            reg_product(regs, L.chain, L.reg_slices, sp.reg_k_tiles, w_s, ring, part,
                        [&](int kk) {
                          if (kk == sp.reg_k_tiles) tx_wait(mc.landed, chunks - 1);
                          else if (kk % rounds == 0) tx_wait(mc.landed, kk / rounds);
                        });
          } else {  // whole, by cp.async
            stage_whole(ring, L.chain.b_ld, n_next, L.reg_cols + L.chain.k, gates_rows(k + 1),
                        nullptr);
            reg_product(regs, L.chain, L.reg_slices, sp.reg_k_tiles, w_s, ring, part, [](int) {});
          }
        } else {
          resident_product(chain, w_s, ring, true, n_next, gates_rows(k + 1), part, &mc);
          if constexpr (kReduce) reduce_partials(chain, part, dh_s, U, rank, sp.reduce_ctas);
        }
      }
      if (k >= 0)
        cell_backward(k, s, n_act, [&](int b, int u) {
          return b < n_next ? dh_of(b, u) : args.dh_n[(size_t)(row0 + b) * P + unit0 + u];
        });
      // Rows active at k+1 but not at k started at k+1: their dh(t-1) is dh0.
      for (int e = threadIdx.x; e < Bb * U; e += kThreads) {
        const int b = e / U, u = e % U;
        if (b >= n_act && b < n_next && u < my_units)
          args.dh0[(size_t)(row0 + b) * P + unit0 + u] = dh_of(b, u);
      }
      // dgates(t) of every unit is out before iteration k-1 reads it (cluster plans:
      // the four gates' columns of step k's rows go to every peer).
      if (k < 0) continue;
      if constexpr (kCluster)
        exchange_step(ex, k & 1, ring + (k & 1) * g_elems, L.chain.b_ld, n_act, H, unit0, my_units,
                      4, H, [&] {
                        if (k >= 1) load_saved(k - 1, 0);
                      });
      else
        end_phase(k >= 1, k - 1);
    }
  } else if constexpr (!kCluster && !kRegs) {
    // Phase B of step k (k = T: no product) leaves dh(t-1) + dy in dhx for step k-1's
    // rows (dh_n for rows whose last step is k-1) and dh0 for rows that start at k.
    auto phase_b = [&](int64_t k) {
      const int n_act = k < args.steps ? block_active(rows_of(k).size, row0, Bb) : 0;
      StepRows s_prev{0, 0, 0, 0};
      if (k >= 1) s_prev = rows_of(k - 1);
      const int n_prev = k >= 1 ? block_active(s_prev.size, row0, Bb) : 0;
      if (n_act > 0) resident_product(L.chain, w_s, ring, true, n_act, gates_rows(k), part, &mc);
      const int rows = max_int(n_act, n_prev);
      for (int e = threadIdx.x; e < rows * Pc; e += kThreads) {
        const int b = e / Pc, n = e % Pc;
        if (n >= my_cols) continue;
        const int r = row0 + b, col = col0 + n;
        float v = b < n_act ? product_out(L.chain, part, n, b) : args.dh_n[(size_t)r * P + col];
        if (b >= n_prev) {
          args.dh0[(size_t)r * P + col] = v;
          continue;
        }
        const int64_t row = s_prev.offset + r;
        if (dy != nullptr) v += load_ro(dy + row * P + col);
        dhx[(size_t)r * pld + col] = from_float<T>(v);
        if (args.dy_total != nullptr) args.dy_total[row * P + col] = v;
      }
    };
    phase_b(args.steps);
    for (int64_t k = args.steps - 1; k >= 0; --k) {
      end_phase(true, k);
      const StepRows s = rows_of(k);
      const int n_act = block_active(s.size, row0, Bb);
      if (n_act > 0) {
        resident_product(L.proj, wr_s, ring, true, n_act,
                         [&](int b) { return dhx + (size_t)(row0 + b) * pld; }, part, &mc);
        cell_backward(k, s, n_act, [&](int b, int u) { return product_out(L.proj, part, u, b); });
      }
      end_phase(false, 0);
      phase_b(k);
    }
  }
  if (in_cluster) cluster_sync();  // no peer's copy or store lands in an exited block
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_backward_kernel(const BackwardArgs args) {
  backward_body<T, false>(args);
}

// Register grid plans (16-bit): a kernel of its own, so that the 96 registers of
// fragments are reserved only where a plan holds some, and without the projection's
// phases (register plans have none), which it would not have the registers for.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_backward_reg_kernel(const BackwardArgs args) {
  backward_body<T, false, true>(args);
}

// Compiled for sm_90 only; the sm_80 images are empty kernels the host never launches.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_backward_cluster_kernel(const BackwardArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  backward_body<T, true>(args);
#endif
}

// Register cluster plans (16-bit), a kernel of their own as the grid's.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_backward_cluster_reg_kernel(
    const BackwardArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  backward_body<T, true, true>(args);
#endif
}

// Reduce-split grid plans (sm_90 only, like the cluster kernels): a kernel of its own, so
// that the others' layouts fold with no reduce split.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_backward_reduce_kernel(const BackwardArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  backward_body<T, false, false, true>(args);
#endif
}

template <typename T>
cudaError_t launch_typed(const BackwardArgs& args, cudaStream_t stream) {
  auto grid_kernel = lstm_backward_kernel<T>;
  auto cluster_kernel = lstm_backward_cluster_kernel<T>;
  if constexpr (sizeof(T) == 2) {
    if (args.split.reg_k_tiles > 0) {
      grid_kernel = lstm_backward_reg_kernel<T>;
      cluster_kernel = lstm_backward_cluster_reg_kernel<T>;
    }
  } else if (args.split.reg_k_tiles > 0) {
    return cudaErrorInvalidValue;  // binding.cpp refuses fp32 register plans before this
  }
  if (args.split.reduce_ctas > 0) {
    grid_kernel = lstm_backward_reduce_kernel<T>;
    // Built without an sm_90 image (a Hopper running compute_80 PTX), the kernel is an
    // empty stub: refused, so the host falls back to the plain grid.
    cudaFuncAttributes built;
    const cudaError_t err = cudaFuncGetAttributes(&built, grid_kernel);
    if (err != cudaSuccess) return err;
    if (built.ptxVersion < 90) return cudaErrorNotSupported;
  }
  return launch_plan(grid_kernel, cluster_kernel, args, backward_smem_bytes(args), stream);
}

}  // namespace

size_t backward_smem_bytes(const BackwardArgs& args) {
  const int itemsize = args.dtype == DType::kFloat32 ? 4 : 2;
  return backward_layout(args.hidden_size, args.out_size, args.w_hr != nullptr, itemsize, args.split)
      .bytes;
}

cudaError_t launch_backward(const BackwardArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case DType::kFloat32: return launch_typed<float>(args, stream);
    case DType::kFloat16: return launch_typed<__half>(args, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace rnnfast
