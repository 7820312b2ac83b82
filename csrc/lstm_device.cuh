// Device layer shared by the forward and backward kernels: dtype conversions,
// asynchronous 16-byte staging (cp.async), the tensor-core tile (mma.sync m16n8k16 for
// fp16/bf16, 3xTF32 m16n8k8 for fp32), the block-wide resident-weight product, the
// bounded grid barrier and the two launchers (cooperative grid, thread-block cluster).
#pragma once

#include "lstm_common.cuh"
#include "lstm_kernels.h"
#ifdef RNNFAST_EMULATED
#include "tests/emulator.h"  // the primitives on a CPU (tests/test_cuda_emulated.py)
#else
#include "lstm_ptx.cuh"
#endif

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

// Read-only for the whole launch (weights, xg, saved gates, dy): the non-coherent path.
template <typename T> __device__ __forceinline__ float load_ro(const T* p) { return to_float(__ldg(p)); }

// ---------------------------------------------------------------------------------
// cp.async (sm_80+): 16-byte global -> shared copies that bypass L1 (.cg), so data that
// other blocks wrote during this launch is read from L2, where the barrier made it
// visible. Each thread waits for its own groups; a __syncthreads then publishes them.

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
// Transaction barriers (sm_90): an mbarrier in this CTA's shared memory that asynchronous
// writes complete on, byte by byte (bulk copies of the multicast staging, the peers'
// st.async stores of the cluster exchange). Thread 0 arrives once a phase and announces
// the bytes (tx_expect); every thread waits for the phase (tx_wait), which also makes
// the bytes visible to it. Writes may land before the announcement: the count goes
// below zero and the phase still waits for thread 0.
struct TxWait {
  uint64_t* bar;         // the mbarrier (several: the first); null: none
  unsigned uses;         // completed phases, mod 2 per mbarrier: bit i for bar + i
  bool gave_up;          // a wait timed out: later waits return at once
  int* timed_out;        // the launch's timeout flag (Barrier::timed_out)
  long long spin_limit;  // polls before a wait gives up (Barrier::spin_limit)
};

// Thread 0 sets up `count` consecutive mbarriers (one arrival a phase); the caller then
// makes them visible to the cluster (cluster_sync) before any write targets them.
__device__ __forceinline__ TxWait tx_barrier(uint64_t* bar, int count, const Barrier& barrier) {
  // Values, not a pointer to `barrier`: the address of a kernel parameter would move
  // the whole argument struct to local memory.
  if (threadIdx.x == 0) {
    for (int i = 0; i < count; ++i) mbarrier_init(bar + i);
    fence_mbarrier_init();
  }
  return TxWait{bar, 0u, false, barrier.timed_out, barrier.spin_limit};
}

// Thread 0: the arrival of mbarrier `i`'s phase, expecting `bytes`.
__device__ __forceinline__ void tx_expect(const TxWait& w, unsigned bytes, int i = 0) {
  mbarrier_arrive_expect_tx(w.bar + i, bytes);
}

// Every thread waits for mbarrier `i`'s phase, at most spin_limit polls; then sets the
// launch's timed_out flag (the host raises naming the plan) and gives up on every later
// wait, so a lost write costs one timeout, not one per step. Cluster-scope acquire: the
// writes come from other CTAs. (Every other poll of the kernels is in
// grid_barrier_wait; these are shared-memory polls.) `i` is below kStageChunks: a bit
// of `uses`, not an array index, so the state stays in registers.
__device__ __forceinline__ void tx_wait(TxWait& w, int i = 0) {
  const unsigned bit = 1u << i;
  w.uses ^= bit;  // the phase waited for now has the parity before the flip
  if (w.gave_up) return;
  bool done = false;
  long long polls = 0;
  do {
    done = mbarrier_try_wait(w.bar + i, (w.uses & bit) ? 0u : 1u);
  } while (!done && ++polls < w.spin_limit);
  if (!done) {
    w.gave_up = true;
    atomicExch(w.timed_out, 1);
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
  TxWait landed;   // this CTA's mbarrier (layout bar_off); landed.bar null: cp.async staging
  int size;        // CTAs per cluster
  unsigned rank;   // this CTA's rank in its cluster
};

__device__ __forceinline__ MulticastStage multicast_stage(void* bar, int size, const Barrier& barrier) {
  MulticastStage st{TxWait{nullptr, 0u, false, barrier.timed_out, barrier.spin_limit}, size, 0u};
  if (size <= 0) return st;
  st.landed = tx_barrier(static_cast<uint64_t*>(bar), kStageChunks, barrier);
  st.rank = cluster_ctarank();
  return st;
}

// Thread 0 (which acquired the grid barrier): the rows' columns cols(c) (a Range) of
// chunk c < chunks complete on mbarrier c, whose phase expects their bytes; then this
// CTA's share of the rows goes to every CTA of the cluster, chunk by chunk. The proxy
// fence (all state spaces) orders what the barrier acquired before the copy engine's
// accesses: the other blocks' ordinary stores of the rows (global) and every CTA's
// reads of its previous operand (shared), which the copies overwrite. A register grid
// backward stages its operand in several chunks (stage_chunk_cols), so that its
// product starts on the first while the others are still in flight.
template <typename T, typename Cols, typename RowSource>
__device__ __forceinline__ void multicast_chunks(const MulticastStage& st, T* dst, int dst_ld,
                                                 int rows, int chunks, Cols cols,
                                                 RowSource row_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned short all = static_cast<unsigned short>((1u << st.size) - 1u);
  auto bytes = [](const Range& r) {
    return static_cast<unsigned>((r.end - r.first) * sizeof(T));
  };
  for (int c = 0; c < chunks; ++c) tx_expect(st.landed, rows * bytes(cols(c)), c);
  fence_proxy_async();
  for (int c = 0; c < chunks; ++c) {
    const Range r = cols(c);
    for (int b = static_cast<int>(st.rank); b < rows; b += st.size)
      bulk_copy_multicast(dst + b * dst_ld + r.first, row_src(b) + r.first, bytes(r),
                          st.landed.bar + c, all);
  }
#endif
}

// Thread 0: columns [0, row_elems) of the rows, as one chunk on mbarrier 0.
template <typename T, typename RowSource>
__device__ __forceinline__ void multicast_rows(const MulticastStage& st, T* dst, int dst_ld,
                                               int rows, int row_elems, RowSource row_src) {
  multicast_chunks(st, dst, dst_ld, rows, 1, [&](int) { return Range{0, row_elems}; }, row_src);
}

// ---------------------------------------------------------------------------------
// Tensor-core tiles: d[16 x 8] += A[m0:m0+16][ka:ka+K] . B[n0:n0+8][kb:kb+K]^T with A
// rows of a_ld and B rows of b_ld elements in shared memory. Fragment layouts are PTX's
// for mma.m16n8k16 (16-bit) and mma.m16n8k8 (tf32): lane = 4 * group + quad.

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

// The B fragment of B[n0:n0+8][kb:kb+K] (rows of b_ld elements in shared memory), loaded
// once for every mma of a warp that multiplies it. fp32: its 3xTF32 halves, split once.
template <typename T> struct BFragment {
  uint32_t big[2];
  uint32_t small[sizeof(T) == 4 ? 2 : 1];
};

template <typename T>
__device__ __forceinline__ void load_b(BFragment<T>& b, const T* b_s, int b_ld, int n0, int kb) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if constexpr (sizeof(T) == 2) {
      const Coord at = b16_fragment(lane, n0, kb, r);
      b.big[r] = *reinterpret_cast<const uint32_t*>(b_s + at.row * b_ld + at.col);
    } else {
      const Coord at = tf32_b_fragment(lane, n0, kb, r);
      const Tf32Split split = tf32_split(b_s[at.row * b_ld + at.col]);
      b.big[r] = bit_cast<uint32_t>(split.big);
      b.small[r] = bit_cast<uint32_t>(split.small);
    }
  }
}

// d += A fragment . B fragment.
template <typename T>
__device__ __forceinline__ void mma_ab(float (&d)[4], const AFragment<T>& a,
                                       const BFragment<T>& b) {
  if constexpr (sizeof(T) == 2) {
    MmaOp<T>::run(d, a.big, b.big);
  } else {
    // 3xTF32: small products first, so the big one lands on an accumulator that
    // already holds the corrections.
    mma_tf32(d, a.big, b.small);
    mma_tf32(d, a.small, b.big);
    mma_tf32(d, a.big, b.big);
  }
}

// Stages columns [0, cols) of `rows` rows whole into ring [rows][ld]: by the cluster's
// multicast bulk copies where `mc` has them, else by cp.async. Every thread must call
// this; it returns once every thread sees the rows.
template <typename T, typename RowSource>
__device__ __forceinline__ void stage_whole(T* ring, int ld, int rows, int cols, RowSource row_src,
                                            MulticastStage* mc) {
  if (mc != nullptr && mc->landed.bar != nullptr) {
    if (threadIdx.x == 0) multicast_rows(*mc, ring, ld, rows, cols, row_src);
    tx_wait(mc->landed);  // every thread sees the bytes land: no __syncthreads needed
  } else {
    stage_rows(ring, ld, rows, 0, cols, row_src);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------
// The block-wide product of a step (lstm_common.cuh: Product):
//   part[ks][m][n] = sum over this warp's k-tiles of A[m][k] . B[n][k]
// A: a_s [p.m][p.a_ld], resident. B: when `staged`, `rows` rows are copied from global
// memory into `ring`: whole if B is one chunk (stage_whole: the multicast stage `mc`'s
// bulk copies where it has them, else cp.async), else chunk by chunk (double-buffered:
// chunk c+1 is in flight while chunk c is multiplied); otherwise `ring` already holds
// B whole [p.nb][p.b_ld]. Rows
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
  if (staged && p.chunks == 1) {  // one chunk: nothing to overlap its copies with
    stage_whole(ring, p.b_ld, rows, p.k, row_src, mc);
    staged = false;  // B is whole in ring now
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
    // A round is `copies` of this warp's k-tiles, copy c taking the c-th. An N-side
    // fragment is loaded once for consecutive slots that multiply it (the same N tile
    // and copy: a warp's items of different M tiles, one N tile each).
    for (int round = ks; round < k_tiles; round += p.ksplit * p.copies) {
      AFragment<T> a;
      BFragment<T> b;
      uint32_t b_of = kUnusedSlot;  // N origin and copy of the fragment in b
#pragma unroll
      for (int s = 0; s < kMaxWarpTiles; ++s) {
        const int kk = round + slot_copy(slot_of[s]) * p.ksplit;
        if (slot_of[s] == kUnusedSlot || kk >= k_tiles) continue;
        if (slot_loads_fragment(slot_of[s]))
          load_a(a, m_side, m_ld, slot_m0(slot_of[s]), m_k0 + kk * kt);
        if (slot_n_side(slot_of[s]) != b_of) {
          load_b(b, n_side, n_ld, slot_n0(slot_of[s]), n_k0 + kk * kt);
          b_of = slot_n_side(slot_of[s]);
        }
        mma_ab(acc[s], a, b);
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

// Output (m, n) of a product: the sum of its partial sums, one per k-slice (the
// `reg_slices` of a register plan's reg_product where the layout has them, else the
// product's ksplit).
__device__ __forceinline__ float product_out(const Product& p, const float* part, int m, int n,
                                             int reg_slices = 0) {
  float s = 0.0f;
  for (int ks = 0; ks < part_sets(p, reg_slices); ++ks) s += part[part_index(p, ks, m, n)];
  return s;
}

// ---------------------------------------------------------------------------------
// Register plans (lstm_common.cuh reg_slices): the first reg_cols columns of a block's
// recurrent weight rows (the A side of product `p`) as A fragments in registers, for the
// whole sequence: warp w's tile j of k-slice reg_slice(w) at its kk-th k-tile. kTiles x
// kKTiles: kRegTiles x kRegKTiles (forward), kChainRegTiles x kChainRegKTiles (backward).
template <typename T, int kTiles, int kKTiles> struct RegWeights {
  AFragment<T> frag[kTiles][kKTiles];
};

// Loads the register fragments once, one k-slice at a time through a_s (the
// shared-memory part's [p.m][p.a_ld], wide enough for a k-slice: reg_split_ok), its
// k-tiles gathered from their interleaved columns (reg_k_tile): weight(m, k) as in
// load_weights. Every thread must call this; a_s is free again when it returns.
template <typename T, int kTiles, int kKTiles, typename Weight>
__device__ __forceinline__ void load_reg_weights(RegWeights<T, kTiles, kKTiles>& regs,
                                                 const Product& p, int slices, int k_tiles,
                                                 T* a_s, int rows, Weight weight) {
  const int warp = threadIdx.x / 32, kt = k_tile(sizeof(T)), cols = k_tiles * kt;
  Product slice = p;
  slice.k = cols;
  for (int g = 0; g < slices; ++g) {
    load_weights(a_s, slice, rows, cols, [&](int m, int k) {
      return weight(m, reg_k_tile(slices, g, k / kt) * kt + k % kt);
    });
    __syncthreads();
    if (reg_slice(slices, warp) == g) {
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
#pragma unroll
        for (int kk = 0; kk < kKTiles; ++kk) {
          const int m0 = reg_m0(slices, warp, j);
          if (m0 < p.m && kk < k_tiles) load_a(regs.frag[j][kk], a_s, p.a_ld, m0, kk * kt);
        }
      }
    }
    __syncthreads();
  }
}

// A register plan's whole product of a step: k-slice reg_slice(warp) of the partial sums
// [slices][rest.m][rest.nb], from the operand in b_s [rest.nb][rest.b_ld] (one N tile:
// register plans have at most 8 batch rows). A warp multiplies its M tiles over its
// k-slice g: first the k_tiles k-tiles of its register fragments (round kk: operand
// k-tile reg_k_tile(slices, g, kk)), then the slice's share of the shared-memory part
// a_s [rest.m][rest.a_ld] (reg_rest_tiles; operand columns reg_cols..), into the same
// accumulators. So each weight is read once, a warp loads each B fragment once for its
// tiles, and a slice writes one partial sum per tile. A warp of fewer than kMaxCopies
// tiles spreads its k-tiles over that many accumulator copies (added in copy order), so
// that its mma do not all wait for the one before. ready(kk) is called before round kk
// and ready(k_tiles) before the shared-memory part; the columns they read must be in
// b_s when it returns (an operand still landing: stage_chunk_cols). Every thread must
// call this; it ends with a barrier.
template <typename T, int kTiles, int kKTiles, typename Ready>
__device__ __forceinline__ void reg_product(const RegWeights<T, kTiles, kKTiles>& regs,
                                            const Product& rest, int slices, int k_tiles,
                                            const T* a_s, const T* b_s, float* part,
                                            Ready ready) {
  constexpr int kCopies = reg_copies(kTiles);
  int warp = threadIdx.x / 32;
  opaque(warp);  // its addresses are worked out here each step, not held all sequence
  const int lane = threadIdx.x % 32, kt = k_tile(sizeof(T));
  const int g = reg_slice(slices, warp), reg_cols = slices * k_tiles * kt;
  float acc[kTiles][kCopies][4] = {};
#pragma unroll
  for (int kk = 0; kk < kKTiles; ++kk) {
    if (kk >= k_tiles) continue;
    ready(kk);
    BFragment<T> b;
    load_b(b, b_s, rest.b_ld, 0, reg_k_tile(slices, g, kk) * kt);
#pragma unroll
    for (int j = 0; j < kTiles; ++j)
      if (reg_m0(slices, warp, j) < rest.m) mma_ab(acc[j][kk % kCopies], regs.frag[j][kk], b);
  }
  // The shared-memory k-tiles, kCopies a round so that every accumulator index is a
  // compile-time constant (a runtime one would put acc in local memory).
  ready(k_tiles);
  const Range mine = reg_rest_tiles(rest, slices, g, sizeof(T));
#pragma unroll 1
  for (int kk = mine.first; kk < mine.end; kk += kCopies) {
#pragma unroll
    for (int c = 0; c < kCopies; ++c) {
      if (kk + c >= mine.end) continue;
      BFragment<T> b;
      load_b(b, b_s, rest.b_ld, 0, reg_cols + (kk + c) * kt);
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int m0 = reg_m0(slices, warp, j);
        if (m0 >= rest.m) continue;
        AFragment<T> a;
        load_a(a, a_s, rest.a_ld, m0, (kk + c) * kt);
        mma_ab(acc[j][c], a, b);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int m0 = reg_m0(slices, warp, j);
    if (m0 >= rest.m) continue;
#pragma unroll
    for (int c = 1; c < kCopies; ++c)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][0][i] += acc[j][c][i];
#pragma unroll
    for (int r = 0; r < 4; r += 2) {
      const Coord at = accumulator(lane, m0, 0, r);
      *reinterpret_cast<float2*>(part + part_index(rest, g, at.row, at.col)) =
          make_float2(acc[j][0][r], acc[j][0][r + 1]);
    }
  }
  __syncthreads();
}

// The (row, unit) cells of a step, kItems a thread per round: cell
// e = (round * kItems + i) * kThreads + thread is row b = e / units, unit
// u = e % units. body(i, e, b, u) runs for each cell of `round` with b < n_act and
// u < my_units; i indexes the thread's per-cell registers.
template <int kItems, typename Body>
__device__ __forceinline__ void for_round_cells(int round, int n_act, int units, int my_units,
                                                Body body) {
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = (round * kItems + i) * kThreads + threadIdx.x;
    const int b = e / units, u = e % units;
    if (b < n_act && u < my_units) body(i, e, b, u);
  }
}

// Every round of a step's cells: reload(round) refills the per-cell registers before
// each round after the first (round 0 was loaded ahead, across the barrier).
template <int kItems, typename Reload, typename Body>
__device__ __forceinline__ void for_each_cell(int n_act, int units, int my_units, Reload reload,
                                              Body body) {
  for (int round = 0; round * kItems * kThreads < n_act * units; ++round) {
    if (round > 0) reload(round);
    for_round_cells<kItems>(round, n_act, units, my_units, body);
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
  red_release_add_one(arrivals);
}

// Not inlined, so that its polling loads (the only strong GPU-scope loads of the
// kernels) stand alone in the SASS that tests/test_cuda_sass.py checks. static: each
// translation unit that includes this header keeps its own copy (not inline, a
// definition in three objects of one library would collide at link time).
static __device__ __noinline__ void grid_barrier_wait(unsigned long long* arrivals,
                                                      unsigned long long target, int* timed_out,
                                                      long long spin_limit) {
  unsigned long long seen = 0;
  long long polls = 0;
  do {
    seen = ld_acquire(arrivals);
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
// Thread-block clusters (sm_90): the hardware cluster barrier (the kernels meet at it
// only at their start and end), and the cluster plans' per-step exchange: each CTA
// copies its columns of the operand it produced (h(t), or the gate gradients) from its
// own buffer into every peer's with st.async, each store completing on the peer's
// mbarrier, and waits on its own for what the peers send. No barrier a step, and no
// fence: a cluster-scope release (barrier.cluster.arrive.release) compiles to
// MEMBAR.ALL.GPU, which would also wait for the CTA's global stores of the step.
//
// Why the buffers are free (double-buffered by step parity): a peer writes a CTA's
// buffer of parity p at step t+2 only after it has received the CTA's step-t+1 operand,
// which the CTA sends after its step-t+1 product has read that buffer.

// Reduce splits (lstm_common.cuh reduce_cols): after every CTA of the cluster has
// written its partial sums part [ksplit][p.m][p.nb] (the product ends with a
// __syncthreads), the cluster barrier publishes them (release / acquire: the loads
// below see them); then dh_s [units][p.nb] = the sum over the `ctas` CTAs and their
// k-slices of rows [rank * units, + units), 16 bytes a load from each CTA's shared
// memory (the CTA's own included, through the same window), CTAs in rank order. Every
// thread calls it; it ends with a barrier. A CTA overwrites `part` only at its next
// product, after the grid barrier that every peer reaches after these loads.
__device__ __forceinline__ void reduce_partials(const Product& p, const float* part, float* dh_s,
                                                int units, unsigned rank, int ctas) {
  cluster_sync();
  const int vectors = units * p.nb / 4;  // p.nb: a multiple of 8
  for (int e = threadIdx.x; e < vectors; e += kThreads) {
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int q = 0; q < ctas; ++q) {
      for (int ks = 0; ks < p.ksplit; ++ks) {
        const float* src = part + part_index(p, ks, static_cast<int>(rank) * units, 0) + 4 * e;
        const float4 v = ld_shared_cluster_v4(src, static_cast<unsigned>(q));
        sum.x += v.x;
        sum.y += v.y;
        sum.z += v.z;
        sum.w += v.w;
      }
    }
    reinterpret_cast<float4*>(dh_s)[e] = sum;
  }
  __syncthreads();
}

struct ClusterExchange {
  TxWait arrived;    // two mbarriers, by step parity: the peers' stores into that buffer
                     // complete on arrived.bar + parity
  unsigned rank;     // this CTA's rank in the cluster
  unsigned blocks;   // CTAs in the cluster
};

// Thread 0 sets up the two mbarriers at `bars` (16 bytes, layout bar_off); the caller
// then makes them visible to the cluster (cluster_sync) before any peer sends.
__device__ __forceinline__ ClusterExchange cluster_exchange(void* bars, const Barrier& barrier) {
  return ClusterExchange{tx_barrier(static_cast<uint64_t*>(bars), 2, barrier), cluster_ctarank(),
                         cluster_nctarank()};
}

// Sends rows [0, rows) of `segments` column ranges of `buf` ([.][ld], this CTA's buffer
// of parity `parity`): columns [col0 + s * stride, + cols) for s < segments, into the
// same place in every peer's buffer, in words of `word` bytes (lstm_common.cuh
// exchange_word_bytes; cols a whole number of words), completing on the peers'
// mbarrier of that parity. The block's threads split the (word, peer) pairs; every
// thread must have passed a __syncthreads since the buffer's columns were written.
template <typename T>
__device__ __forceinline__ void send_to_peers(const ClusterExchange& ex, int parity, const T* buf,
                                              int ld, int rows, int col0, int cols, int segments,
                                              int stride, int word) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int per = word / static_cast<int>(sizeof(T));  // elements a word
  const int words = cols / per, peers = static_cast<int>(ex.blocks) - 1;
  for (int e = threadIdx.x; e < rows * segments * words * peers; e += kThreads) {
    const int item = e / peers, seg_word = item % (segments * words);
    const unsigned peer = (ex.rank + 1 + static_cast<unsigned>(e % peers)) % ex.blocks;
    const T* src = buf + (item / (segments * words)) * ld + col0 + (seg_word / words) * stride +
                   (seg_word % words) * per;
    // The same place in the peer's buffer: src is this CTA's copy of the columns.
    void* dst = const_cast<T*>(src);
    if (word == 8)
      st_async_to_peer(dst, peer, *reinterpret_cast<const unsigned long long*>(src),
                       ex.arrived.bar + parity);
    else
      st_async_to_peer(dst, peer, *reinterpret_cast<const unsigned*>(src), ex.arrived.bar + parity);
  }
#endif
}

// One step's exchange of a cluster plan: this CTA's `units` columns of each of
// `segments` segments (at col0 + s * stride; forward: one, stride 0; backward: the four
// gates, stride hidden) of rows [0, rows) of its buffer `buf` of parity `parity` go to
// every peer, `between` runs while they travel, then every thread waits until the
// peers' columns of those rows have landed (thread 0 expects their bytes). Every
// thread calls it after writing its own columns; all agree on `rows` (0: nothing).
template <typename T, typename Between>
__device__ __forceinline__ void exchange_step(ClusterExchange& ex, int parity, const T* buf, int ld,
                                              int rows, int hidden, int col0, int units,
                                              int segments, int stride, Between between) {
  const int item = static_cast<int>(sizeof(T)), word = exchange_word_bytes(stride, item);
  __syncthreads();  // the block's own columns are in buf
  if (rows > 0)
    send_to_peers(ex, parity, buf, ld, rows, col0, exchange_cols(units, word, item), segments,
                  stride, word);
  between();
  if (rows > 0) {
    int thread = threadIdx.x;
    opaque(thread);  // a predicate held all sequence costs a register kernels lack
    if (thread == 0)
      tx_expect(ex.arrived, rows * peer_row_bytes(hidden, units, segments, word, item), parity);
    tx_wait(ex.arrived, parity);
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
// in clusters of args.split.multicast blocks where it stages by multicast, or of
// args.split.reduce_ctas where they split the chain's reduction.
template <typename Args>
cudaError_t launch_plan(void (*grid_kernel)(const Args), void (*cluster_kernel)(const Args),
                        const Args& args, size_t smem, cudaStream_t stream) {
  if (args.split.cluster > 0)
    return launch_clusters(cluster_kernel, args, args.blocks, args.split.cluster, smem, stream);
  const int grid_cluster = args.split.multicast > 0 ? args.split.multicast : args.split.reduce_ctas;
  if (grid_cluster > 0)
    return launch_cooperative_clusters(grid_kernel, args, args.blocks, grid_cluster, smem, stream);
  return launch_cooperative(grid_kernel, args, args.blocks, smem, stream);
}

}  // namespace rnnfast
