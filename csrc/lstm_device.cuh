// Device layer shared by the forward and backward kernels: dtype conversions,
// asynchronous 16-byte staging (cp.async), the tensor-core tile (mma.sync m16n8k16 for
// fp16/bf16, 3xTF32 m16n8k8 for fp32), the block-wide resident-weight product, the
// bounded grid barrier and the two launchers (cooperative grid, thread-block cluster).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "lstm_common.cuh"
#include "lstm_kernels.h"

namespace rnnfast {

// Hopper-only instructions (clusters, bulk copies, mbarrier transactions) exist in the
// sm_90 image only; the host never runs the code paths that use them elsewhere.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define RNNFAST_SM90(body) body
#else
#define RNNFAST_SM90(body)
#endif

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Read-only for the whole launch (weights, xg, saved gates, dy): the non-coherent path.
template <typename T> __device__ __forceinline__ float load_ro(const T* p) { return to_float(__ldg(p)); }

// The 32-bit shared-window address of a generic pointer into shared memory, as the
// shared-memory instructions below take it.
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------------------------
// cp.async (sm_80+): 16-byte global -> shared copies that bypass L1 (.cg), so data that
// other blocks wrote during this launch is read from L2, where the barrier made it
// visible. Each thread waits for its own groups; a __syncthreads then publishes them.

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst)), "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copies columns [col0, col0 + cols) of `rows` rows into dst [rows][dst_ld], 16 bytes
// per copy, spread over the block. row_src(b) is the global start of row b, 16-byte
// aligned (an exchange row); col0 and cols are multiples of 16 bytes.
template <typename T, typename RowSource>
__device__ __forceinline__ void stage_rows(T* dst, int dst_ld, int rows, int col0, int cols,
                                           RowSource row_src) {
  constexpr int kPer = 16 / sizeof(T);
  const int pieces = cols / kPer;
  for (int e = threadIdx.x; e < rows * pieces; e += kThreads) {
    const int b = e / pieces, piece = e % pieces;
    cp_async16(dst + b * dst_ld + piece * kPer, row_src(b) + col0 + piece * kPer);
  }
}

// ---------------------------------------------------------------------------------
// Multicast staging (grid plans in clusters of `size` CTAs, sm_90). Every CTA of a
// cluster belongs to the same batch block, so all stage the same operand: each copies
// every size-th row with one bulk copy (cp.async.bulk, the copy engine) into the same
// offset of every CTA's shared memory, and each CTA waits on its own mbarrier until all
// rows' bytes have landed. One L2 read per cluster instead of one per CTA.
//
// Why the buffers are free: a CTA issues step t's copies after the grid barrier that
// follows every CTA's product of step t-1 (each arrives after its product), and the
// launch's first copies after the cluster barrier that follows the mbarriers' init.
struct MulticastStage {
  uint64_t* bar;           // this CTA's mbarrier (layout bar_off); null: cp.async staging
  int size;                // CTAs per cluster
  unsigned rank;           // this CTA's rank in its cluster
  unsigned uses;           // completed phases of bar: the next wait's parity is uses & 1
  bool gave_up;            // a wait timed out: later waits return at once
  int* timed_out;          // the launch's timeout flag (Barrier::timed_out)
  long long spin_limit;    // polls before a wait gives up (Barrier::spin_limit)
};

// Thread 0 sets up the mbarrier (one arrival a phase: thread 0's expect); the caller
// then makes it visible to the cluster (cluster_sync) before any copy targets it.
__device__ __forceinline__ MulticastStage multicast_stage(void* bar, int size, const Barrier& barrier) {
  // Values, not a pointer to `barrier`: the address of a kernel parameter would move
  // the whole argument struct to local memory.
  MulticastStage st{nullptr, size, 0u, 0u, false, barrier.timed_out, barrier.spin_limit};
  if (size <= 0) return st;
  st.bar = static_cast<uint64_t*>(bar);
  RNNFAST_SM90(asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(st.rank));)
  if (threadIdx.x == 0) {
    RNNFAST_SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n"
                              "fence.mbarrier_init.release.cluster;\n" ::"r"(shared_address(bar))
                              : "memory");)
  }
  return st;
}

// Thread 0 (which acquired the grid barrier): the phase expects rows x row_bytes, then
// this CTA's share of the rows goes to every CTA of the cluster. The proxy fence (all
// state spaces) orders what the barrier acquired before the copy engine's accesses:
// the other blocks' ordinary stores of the rows (global) and every CTA's reads of its
// previous operand (shared), which the copies overwrite.
template <typename T, typename RowSource>
__device__ __forceinline__ void multicast_rows(const MulticastStage& st, T* dst, int dst_ld,
                                               int rows, int row_elems, RowSource row_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned row_bytes = static_cast<unsigned>(row_elems * sizeof(T));
  const unsigned short all = static_cast<unsigned short>((1u << st.size) - 1u);
  const unsigned bar = shared_address(st.bar);
  asm volatile("{\n .reg .b64 state;\n"
               " mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n"
               "fence.proxy.async;\n" ::"r"(bar), "r"(rows * row_bytes)
               : "memory");
  for (int b = static_cast<int>(st.rank); b < rows; b += st.size) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
        " [%0], [%1], %2, [%3], %4;\n" ::"r"(shared_address(dst + b * dst_ld)), "l"(row_src(b)),
        "r"(row_bytes), "r"(bar), "h"(all)
        : "memory");
  }
#endif
}

// Every thread waits for the phase's bytes, at most st.spin_limit polls; then
// sets the launch's timed_out flag (the host raises naming the plan) and gives up on
// every later wait, so a lost copy costs one timeout, not one per step. (Every other
// poll of the kernels is in grid_barrier_wait; these are shared-memory polls.)
__device__ __forceinline__ void multicast_wait(MulticastStage& st) {
  const unsigned parity = st.uses++ & 1u;
  if (st.gave_up) return;
  unsigned done = 0;
  long long polls = 0;
  do {
    RNNFAST_SM90(asm volatile("{\n .reg .pred ready;\n"
                              " mbarrier.try_wait.parity.shared::cta.b64 ready, [%1], %2;\n"
                              " selp.u32 %0, 1, 0, ready;\n}\n"
                              : "=r"(done) : "r"(shared_address(st.bar)), "r"(parity) : "memory");)
  } while (!done && ++polls < st.spin_limit);
  if (!done) {
    st.gave_up = true;
    atomicExch(st.timed_out, 1);
  }
}

// ---------------------------------------------------------------------------------
// Tensor-core tiles: d[16 x 8] += A[m0:m0+16][ka:ka+K] . B[n0:n0+8][kb:kb+K]^T with A
// rows of a_ld and B rows of b_ld elements in shared memory. Fragment layouts are PTX's
// for mma.m16n8k16 (16-bit) and mma.m16n8k8 (tf32): lane = 4 * group + quad.

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row_address)));
}

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

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The A fragment of one m-tile and k-tile, loaded once and used for every n-tile of a
// warp's group. fp32: its 3xTF32 halves, split once.
template <typename T> struct AFragment {
  uint32_t big[4];
  uint32_t small[sizeof(T) == 4 ? 4 : 1];
};

template <typename T>
__device__ __forceinline__ void load_a(AFragment<T>& a, const T* a_s, int a_ld, int m0, int ka) {
  const int lane = threadIdx.x % 32;
  if constexpr (sizeof(T) == 2) {
    const Coord at = ldmatrix_x4_row(lane, m0, ka);
    ldmatrix_x4(a.big, a_s + at.row * a_ld + at.col);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const Coord at = tf32_a_fragment(lane, m0, ka, i);
      const Tf32Split split = tf32_split(a_s[at.row * a_ld + at.col]);
      a.big[i] = bit_cast<uint32_t>(split.big);
      a.small[i] = bit_cast<uint32_t>(split.small);
    }
  }
}

// d += A fragment . B[n0:n0+8][kb:kb+K]^T, B rows of b_ld elements in shared memory.
template <typename T>
__device__ __forceinline__ void mma_with(float (&d)[4], const AFragment<T>& a, const T* b_s,
                                         int b_ld, int n0, int kb) {
  const int lane = threadIdx.x % 32;
  if constexpr (sizeof(T) == 2) {
    const Coord at0 = b16_fragment(lane, n0, kb, 0), at1 = b16_fragment(lane, n0, kb, 1);
    const uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(b_s + at0.row * b_ld + at0.col),
                           *reinterpret_cast<const uint32_t*>(b_s + at1.row * b_ld + at1.col)};
    MmaOp<T>::run(d, a.big, b);
  } else {
    // 3xTF32: small products first, so the big one lands on an accumulator that
    // already holds the corrections.
    const Coord at0 = tf32_b_fragment(lane, n0, kb, 0), at1 = tf32_b_fragment(lane, n0, kb, 1);
    const Tf32Split b0 = tf32_split(b_s[at0.row * b_ld + at0.col]);
    const Tf32Split b1 = tf32_split(b_s[at1.row * b_ld + at1.col]);
    const uint32_t b_big[2] = {bit_cast<uint32_t>(b0.big), bit_cast<uint32_t>(b1.big)};
    const uint32_t b_small[2] = {bit_cast<uint32_t>(b0.small), bit_cast<uint32_t>(b1.small)};
    mma_tf32(d, a.big, b_small);
    mma_tf32(d, a.small, b_big);
    mma_tf32(d, a.big, b_big);
  }
}

// ---------------------------------------------------------------------------------
// The block-wide product of a step (lstm_common.cuh: Product):
//   part[ks][m][n] = sum over this warp's k-tiles of A[m][k] . B[n][k]
// A: a_s [p.m][p.a_ld], resident. B: when `staged`, `rows` rows are copied from global
// memory chunk by chunk into `ring` (double-buffered: chunk c+1 is in flight while
// chunk c is multiplied), or, with a multicast stage `mc` and B in one chunk, by the
// cluster's bulk copies; otherwise `ring` already holds B whole [p.nb][p.b_ld]. Rows
// from `rows` to p.nb hold stale values: they only reach output columns the caller
// ignores. The mma's M side is A, or B when p.swapped. Every thread must call this; it
// ends with a barrier.
template <typename T, typename RowSource>
__device__ __forceinline__ void resident_product(const Product& p, const T* a_s, T* ring,
                                                 bool staged, int rows, RowSource row_src,
                                                 float* part, MulticastStage* mc = nullptr) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kt = k_tile(sizeof(T));
  // This warp's accumulators (lstm_common.cuh slot_word), decoded once, out of the
  // step's loops.
  const int ks = warp_kslice(p, warp);
  uint32_t slot_of[kMaxWarpTiles];
  float acc[kMaxWarpTiles][4];
#pragma unroll
  for (int s = 0; s < kMaxWarpTiles; ++s) {
    slot_of[s] = slot_word(p, warp, s);
    acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.0f;
  }

  const int stage_elems = p.nb * p.b_ld;
  if (staged && mc != nullptr && mc->bar != nullptr && p.chunks == 1) {
    if (threadIdx.x == 0) multicast_rows(*mc, ring, p.b_ld, rows, p.k, row_src);
    multicast_wait(*mc);  // every thread sees the bytes land: no __syncthreads needed
    staged = false;       // B is whole in ring now
  }
  if (staged) {
    stage_rows(ring, p.b_ld, rows, 0, min_int(p.chunk, p.k), row_src);
    cp_async_commit();
  }
  for (int ch = 0; ch < p.chunks; ++ch) {
    const int col0 = ch * p.chunk, cols = min_int(p.chunk, p.k - col0);
    if (staged) {
      if (ch + 1 < p.chunks) {
        const int next0 = col0 + p.chunk;
        stage_rows(ring + ((ch + 1) % p.stages) * stage_elems, p.b_ld, rows, next0,
                   min_int(p.chunk, p.k - next0), row_src);
      }
      cp_async_commit();  // possibly empty: keeps "all but the newest group" = chunk ch
      cp_async_wait<1>();
      __syncthreads();
    }
    const T* b_s = ring + (staged ? (ch % p.stages) * stage_elems : 0);
    // The mma's M-side and N-side operands, their row lengths and k offsets.
    const T* m_side = p.swapped ? b_s : a_s;
    const T* n_side = p.swapped ? a_s : b_s;
    const int m_ld = p.swapped ? p.b_ld : p.a_ld, n_ld = p.swapped ? p.a_ld : p.b_ld;
    const int m_k0 = p.swapped ? 0 : col0, n_k0 = p.swapped ? col0 : 0;
    const int k_tiles = cols / kt;
    // A round is `copies` of this warp's k-tiles, copy c taking the c-th.
    for (int round = ks; round < k_tiles; round += p.ksplit * p.copies) {
      AFragment<T> a;
#pragma unroll
      for (int s = 0; s < kMaxWarpTiles; ++s) {
        const int kk = round + slot_copy(slot_of[s]) * p.ksplit;
        if (slot_of[s] == kUnusedSlot || kk >= k_tiles) continue;
        if (slot_loads_fragment(slot_of[s]))
          load_a(a, m_side, m_ld, slot_m0(slot_of[s]), m_k0 + kk * kt);
        mma_with(acc[s], a, n_side, n_ld, slot_n0(slot_of[s]), n_k0 + kk * kt);
      }
    }
    if (staged) __syncthreads();  // this stage is refilled two chunks later
  }
  // The copies of a slot added into its first, in copy order. Both indices are
  // compile-time (unrolled), so the accumulators stay in registers.
#pragma unroll
  for (int s = 0; s < kMaxWarpTiles; ++s) {
#pragma unroll
    for (int f = s + 1; f < kMaxWarpTiles; ++f) {
      if (s < p.slots && f % p.slots == s && f / p.slots < p.copies) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[s][i] += acc[f][i];
      }
    }
  }
  // Out to part [ks][weight row][batch row]: unswapped, registers 0-1 and 2-3 are
  // adjacent batch rows (one 8-byte store each).
#pragma unroll
  for (int s = 0; s < kMaxWarpTiles; ++s) {
    if (s >= p.slots || slot_of[s] == kUnusedSlot) continue;
    if (p.swapped) {  // M: batch rows, N: weight rows
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const Coord at = accumulator(lane, slot_m0(slot_of[s]), slot_n0(slot_of[s]), r);
        part[part_index(p, ks, at.col, at.row)] = acc[s][r];
      }
    } else {
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const Coord at = accumulator(lane, slot_m0(slot_of[s]), slot_n0(slot_of[s]), r);
        *reinterpret_cast<float2*>(part + part_index(p, ks, at.row, at.col)) =
            make_float2(acc[s][r], acc[s][r + 1]);
      }
    }
  }
  __syncthreads();
}

// Output (m, n) of a product: the sum of its k-split partial sums.
__device__ __forceinline__ float product_out(const Product& p, const float* part, int m, int n) {
  float s = 0.0f;
  for (int ks = 0; ks < p.ksplit; ++ks) s += part[part_index(p, ks, m, n)];
  return s;
}

// The (row, unit) cells of a step, kMaxCellItems a thread per round: cell
// e = (round * kMaxCellItems + i) * kThreads + thread is row b = e / units, unit
// u = e % units. body(i, e, b, u) runs for each cell of `round` with b < n_act and
// u < my_units; i indexes the thread's per-cell registers.
template <typename Body>
__device__ __forceinline__ void for_round_cells(int round, int n_act, int units, int my_units,
                                                Body body) {
#pragma unroll
  for (int i = 0; i < kMaxCellItems; ++i) {
    const int e = (round * kMaxCellItems + i) * kThreads + threadIdx.x;
    const int b = e / units, u = e % units;
    if (b < n_act && u < my_units) body(i, e, b, u);
  }
}

// Every round of a step's cells: reload(round) refills the per-cell registers before
// each round after the first (round 0 was loaded ahead, across the barrier).
template <typename Reload, typename Body>
__device__ __forceinline__ void for_each_cell(int n_act, int units, int my_units, Reload reload,
                                              Body body) {
  for (int round = 0; round * kMaxCellItems * kThreads < n_act * units; ++round) {
    if (round > 0) reload(round);
    for_round_cells(round, n_act, units, my_units, body);
  }
}

// Copies rows x cols of a weight matrix into a_s [p.m][p.a_ld] once per launch, zero
// outside; weight(m, k) -> element (read-only global). Consecutive threads take
// consecutive k, so reads of a weight row are coalesced.
template <typename T, typename Weight>
__device__ __forceinline__ void load_weights(T* a_s, const Product& p, int rows, int cols,
                                             Weight weight) {
  for (int e = threadIdx.x; e < p.m * p.k; e += kThreads) {
    const int m = e / p.k, k = e % p.k;
    a_s[m * p.a_ld + k] = m < rows && k < cols ? weight(m, k) : from_float<T>(0.0f);
  }
}

// Zeros `elems` elements of shared memory, spread over the block (the caller syncs).
template <typename T>
__device__ __forceinline__ void zero_shared(T* dst, int elems) {
  for (int e = threadIdx.x; e < elems; e += kThreads) dst[e] = from_float<T>(0.0f);
}

// ---------------------------------------------------------------------------------
// Grid barrier of a batch block (grid plans): every block adds one arrival per phase
// and waits until the batch block's count reaches `target` (blocks x phases so far).
// Legal only under a cooperative launch (all blocks resident). Bounded: after
// spin_limit polls the wait gives up, lifts the count out of reach of every later
// target (so no other wait of the launch blocks either) and sets the timed_out flag,
// which the host turns into an error. Called by thread 0 between two __syncthreads.

__device__ __forceinline__ void grid_barrier_arrive(unsigned long long* arrivals) {
  __threadfence();  // the block's stores (ordered before by __syncthreads) reach L2 first
  asm volatile("red.release.gpu.global.add.u64 [%0], 1;\n" ::"l"(arrivals) : "memory");
}

// Not inlined, so that its polling loads (the only strong GPU-scope loads of the
// kernels) stand alone in the SASS that tests/test_cuda_sass.py checks.
__device__ __noinline__ void grid_barrier_wait(unsigned long long* arrivals,
                                               unsigned long long target, int* timed_out,
                                               long long spin_limit) {
  unsigned long long seen = 0;
  long long polls = 0;
  do {
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];\n" : "=l"(seen) : "l"(arrivals) : "memory");
  } while (seen < target && ++polls < spin_limit);
  if (seen < target) {
    atomicMax(arrivals, 1ull << 62);
    atomicExch(timed_out, 1);
  }
}

// The end of a phase under a grid plan: every thread calls it; between() runs on every
// thread after the block's arrival and before the wait (the next step's loads).
template <typename Between>
__device__ __forceinline__ void end_grid_phase(const Barrier& barrier, unsigned long long* arrivals,
                                               unsigned long long target, Between between) {
  __syncthreads();
  if (threadIdx.x == 0) grid_barrier_arrive(arrivals);
  between();
  if (threadIdx.x == 0) grid_barrier_wait(arrivals, target, barrier.timed_out, barrier.spin_limit);
  __syncthreads();
}

// ---------------------------------------------------------------------------------
// Thread-block clusters (sm_90): the hardware cluster barrier, split so that work can
// sit between arriving and waiting, and stores into a peer block's shared memory
// (distributed shared memory). Only the cluster kernel, compiled for sm_90, uses them.

__device__ __forceinline__ void cluster_arrive() {
  RNNFAST_SM90(asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");)
}
__device__ __forceinline__ void cluster_wait() {
  RNNFAST_SM90(asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");)
}
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
__device__ __forceinline__ unsigned cluster_blocks() {
  unsigned n = 1;
  RNNFAST_SM90(asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));)
  return n;
}
// *local's counterpart in block `rank` of the cluster = v.
template <typename T>
__device__ __forceinline__ void store_to_peer(T* local, unsigned rank, T v) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit elements");
  const unsigned address = shared_address(local);
  unsigned remote = address;
  RNNFAST_SM90(asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(address), "r"(rank));)
  if constexpr (sizeof(T) == 2) {
    const unsigned short bits = *reinterpret_cast<const unsigned short*>(&v);
    RNNFAST_SM90(asm volatile("st.shared::cluster.b16 [%0], %1;\n" ::"r"(remote), "h"(bits) : "memory");)
  } else {
    const unsigned bits = *reinterpret_cast<const unsigned*>(&v);
    RNNFAST_SM90(asm volatile("st.shared::cluster.b32 [%0], %1;\n" ::"r"(remote), "r"(bits) : "memory");)
  }
}

// ---------------------------------------------------------------------------------
// Launchers: `blocks` blocks of kThreads threads running a kernel that takes its
// argument struct by value, with `smem` bytes of dynamic shared memory (above 48 KB it
// must be opted into per kernel).

template <typename Args>
cudaError_t launch_cooperative(void (*kernel)(const Args), const Args& args, int blocks,
                               size_t smem, cudaStream_t stream) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  Args copy = args;
  void* params[] = {&copy};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(blocks),
                                     dim3(kThreads), params, smem, stream);
}

// A launch of `blocks` blocks in clusters of `cluster` (sm_90; above 8 the non-portable
// size) with `smem` bytes of dynamic shared memory each: `kernel` opted in, `config`
// filled (it points at `attribute`), and `clusters` set to how many such clusters the
// GPU can hold at once (0: it cannot place one: too few SMs free in a GPC for its size
// and shared memory).
template <typename Args>
cudaError_t prepare_clusters(void (*kernel)(const Args), int blocks, int cluster, size_t smem,
                             cudaStream_t stream, cudaLaunchConfig_t* config,
                             cudaLaunchAttribute* attribute, int* clusters) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err == cudaSuccess && cluster > 8)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err != cudaSuccess) return err;
  *config = {};
  config->gridDim = dim3(blocks);
  config->blockDim = dim3(kThreads);
  config->dynamicSmemBytes = smem;
  config->stream = stream;
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = cluster;
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config->attrs = attribute;
  config->numAttrs = 1;
  *clusters = 0;
  return cudaOccupancyMaxActiveClusters(clusters, kernel, config);
}

// Clusters of `cluster` blocks. A cluster the GPU cannot place is refused before launch
// with cudaErrorInvalidClusterSize.
template <typename Args>
cudaError_t launch_clusters(void (*kernel)(const Args), const Args& args, int blocks,
                            int cluster, size_t smem, cudaStream_t stream) {
  cudaLaunchConfig_t config;
  cudaLaunchAttribute attribute;
  int clusters = 0;
  cudaError_t err =
      prepare_clusters(kernel, blocks, cluster, smem, stream, &config, &attribute, &clusters);
  if (err != cudaSuccess) return err;
  if (clusters == 0) return cudaErrorInvalidClusterSize;
  return cudaLaunchKernelEx(&config, kernel, args);
}

// A cooperative grid in clusters of `cluster` blocks (grid plans with multicast
// staging, sm_90). Refused before launch unless the GPU holds every block's cluster
// at once, which the cooperative launch's grid barrier needs.
template <typename Args>
cudaError_t launch_cooperative_clusters(void (*kernel)(const Args), const Args& args, int blocks,
                                        int cluster, size_t smem, cudaStream_t stream) {
  cudaLaunchConfig_t config;
  cudaLaunchAttribute attributes[2];
  int clusters = 0;
  cudaError_t err =
      prepare_clusters(kernel, blocks, cluster, smem, stream, &config, attributes, &clusters);
  if (err != cudaSuccess) return err;
  if ((long long)clusters * cluster < blocks) return cudaErrorCooperativeLaunchTooLarge;
  attributes[1].id = cudaLaunchAttributeCooperative;
  attributes[1].val.cooperative = 1;
  config.numAttrs = 2;
  err = cudaLaunchKernelEx(&config, kernel, args);
  // A driver that does not take the two attributes together rejects the configuration
  // before anything runs: a refusal (the host retries without clusters), not a failure.
  if (err == cudaErrorInvalidValue || err == cudaErrorInvalidConfiguration) {
    (void)cudaGetLastError();
    return cudaErrorNotSupported;
  }
  return err;
}

// A layer's launch as its plan says (Args: ForwardArgs or BackwardArgs): clusters of
// args.split.cluster blocks of the cluster kernel, or a cooperative grid of the grid one,
// in clusters of args.split.multicast blocks where it stages by multicast.
template <typename Args>
cudaError_t launch_plan(void (*grid_kernel)(const Args), void (*cluster_kernel)(const Args),
                        const Args& args, size_t smem, cudaStream_t stream) {
  if (args.split.cluster > 0)
    return launch_clusters(cluster_kernel, args, args.blocks, args.split.cluster, smem, stream);
  if (args.split.multicast > 0)
    return launch_cooperative_clusters(grid_kernel, args, args.blocks, args.split.multicast, smem,
                                       stream);
  return launch_cooperative(grid_kernel, args, args.blocks, smem, stream);
}

}  // namespace rnnfast
