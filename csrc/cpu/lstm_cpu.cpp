// Fused LSTM layer for the CPU: the whole sequential recurrence of one layer and
// direction in one call, forward and backward (the reverse-time dh/dc chain to the gate
// gradients). The Python side (rnnfast/backends/cpu/) owns the step tables and the
// parameter/input gradients, shared with every backend (backends/gradients.py).
//
// What makes it faster than a Python loop over time: per step there is no allocation
// and no dispatcher round trip. Every product (the input projection of all steps, each
// step's recurrent product, and through mm_into the backward's dx and weight gradients)
// runs in this file's register-tiled, cache-blocked at::vec GEMM, split over torch's
// threads when large enough: on AMD CPUs MKL runs its AVX2 code, at well under half of
// what AVX-512 gives (csrc/README.md). The cell math is vectorized (lstm_cell_cpu.h)
// and split over threads when a step is large enough.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "lstm_cell_cpu.h"

namespace rnnfast_cpu {
namespace {

using at::Tensor;

// Below this many (row, unit) pairs a step's cell math runs on one thread: 8192 pairs
// are ~16 us of cell math (AVX-512, fp32), well above the ~1 us of waking the pool.
constexpr int64_t kPointwiseGrain = 8192;

// The forward's unit blocks (one task each: four gates' columns, then their cell math):
// one 64-column AVX-512 tile per gate. kCellMacs: the cell math of one unit, ~2 ns, in
// multiply-adds of the same time, for sizing tasks.
constexpr int64_t kUnitBlock = 64;
constexpr int64_t kCellMacs = 200;

// A product is split over threads in tasks of at least this many multiply-adds
// (~1-2 us at 100 GMAC/s; an empty fork-join costs 0.5-1 us). 2^19 made the CPU suite
// slower: B <= 2 steps at H = 256 and small forwards lost their second thread.
constexpr int64_t kMinMacsPerTask = int64_t(1) << 17;

// How a product's operands are read and multiplied. fp32/fp64: W is [inner, out] row-major,
// one inner index per multiply-add, a broadcast element of A times a vector of W's row.
// bf16 (where the CPU has AVX512_BF16, build.py): W is packed in pairs of inner indices,
// [ceil(inner / 2), out, 2] (pack_transposed, gate_panels), so that one vdpbf16ps
// multiplies a broadcast pair of A by 16 columns' pairs and adds both products to fp32
// accumulators: twice an fp32 FMA's multiply-adds per instruction from half the bytes of W.
// In both layouts W's element for (inner p, column j) with p a multiple of kStep is at
// p * ldw + kStep * j (ldw counts columns).
template <typename in_t>
struct Operands {
  using acc_t = in_t;
  using V = Vec<acc_t>;
  static constexpr int64_t kStep = 1;  // inner indices per multiply-add
  // The first `count` columns' values of W at one inner step (count == V::size(): all).
  static V load_w(const in_t* w, int count) {
    return count == V::size() ? V::loadu(w) : V::loadu(w, count);
  }
  // A's value at inner p in every lane.
  static V broadcast(const in_t* a) { return V(*a); }
  static V mac(const V& a, const V& w, const V& acc) { return at::vec::fmadd(a, w, acc); }
};

#ifdef RNNFAST_BF16_DOT
template <>
struct Operands<c10::BFloat16> {
  using acc_t = float;
  using V = Vec<float>;
  static constexpr int64_t kStep = 2;
  // 16 columns' pairs: 32 bf16, one 512-bit register (the first `count` columns' pairs).
  // Whole vectors by a plain load: GCC treats a masked load as reading any memory and
  // then keeps the accumulators in memory across it.
  static V load_w(const c10::BFloat16* w, int count) {
    if (count == V::size()) return V(_mm512_castsi512_ps(_mm512_loadu_si512(w)));
    const __mmask32 mask = (__mmask32(1) << (2 * count)) - 1;
    return V(_mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask, w)));
  }
  // A's inner indices p and p + 1 (contiguous: a bf16 product's A has unit inner stride)
  // as one 32-bit pair in every lane.
  static V broadcast(const c10::BFloat16* a) {
    int32_t pair;
    std::memcpy(&pair, a, sizeof(pair));
    return V(_mm512_castsi512_ps(_mm512_set1_epi32(pair)));
  }
  static V mac(const V& a, const V& w, const V& acc) {
    return V(_mm512_dpbf16_ps(__m512(acc), (__m512bh)__m512(a), (__m512bh)__m512(w)));
  }
  // An odd inner count's last index p, alone (A's next element may be anything, even NaN,
  // or lie past the tensor): A's value, and W's, whose packed partner is 0, widened.
  static V widen_a(const c10::BFloat16* a) { return V(float(*a)); }
  static V widen_w(const c10::BFloat16* w, int count) {
    return V(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(load_w(w, count)), 16)));
  }
};
#endif

// The kCols vectors of a tile's row, from its first column: whole (kFull), or the ragged
// edge where only the first `cols_left` columns exist (the rest load as 0 and are
// never stored). C's values are acc_t; W's are read through Operands.
template <typename scalar_t, int kCols, bool kFull>
struct TileColumns {
  using V = Vec<scalar_t>;
  static constexpr int64_t width = V::size();
  int count[kCols];

  explicit TileColumns(int64_t cols_left) {
    for (int v = 0; v < kCols; ++v) {
      count[v] = kFull ? int(width) : int(std::clamp<int64_t>(cols_left - v * width, 0, width));
    }
  }
  V load(const scalar_t* row, int v) const {
    return kFull ? V::loadu(row + v * width)
                 : (count[v] > 0 ? V::loadu(row + v * width, count[v]) : V(scalar_t(0)));
  }
  void store(const V& x, scalar_t* row, int v) const {
    if (kFull) x.store(row + v * width);
    else if (count[v] > 0) x.store(row + v * width, count[v]);
  }
  // Vector v of W at one inner step: `row` is W at that step and the tile's first column.
  template <typename O, typename in_t>
  V load_w(const in_t* row, int v) const {
    const in_t* at = row + O::kStep * v * width;
    return kFull ? O::load_w(at, int(width)) : (count[v] > 0 ? O::load_w(at, count[v]) : V(scalar_t(0)));
  }
};

// C[kRows, kCols vectors] += A[:, p] W[p, :] for the odd last inner index p of a pair
// product (Operands' kStep 2): one fp32 multiply-add an element after the pairs, in every
// kernel alike, so the summation order stays the same. Apart from the pair loop: a branch
// or second loop for it there made GCC keep the accumulators in memory.
template <typename in_t, int kRows, int kCols, bool kFull>
__attribute__((noinline)) void odd_inner_update(const in_t* a, int64_t a_rs,    // [kRows] at p
                                                const in_t* w, int64_t cols_left,  // W at p
                                                typename Operands<in_t>::acc_t* c, int64_t ldc) {
  using O = Operands<in_t>;
  using acc_t = typename O::acc_t;
  using V = Vec<acc_t>;
  constexpr int64_t width = V::size();
  const TileColumns<acc_t, kCols, kFull> columns(cols_left);
  for (int v = 0; v < kCols; ++v) {
    if (columns.count[v] == 0) continue;
    const V w_v = O::widen_w(w + O::kStep * v * width, columns.count[v]);
    for (int r = 0; r < kRows; ++r) {
      const V sum = at::vec::fmadd(O::widen_a(a + r * a_rs), w_v, columns.load(c + r * ldc, v));
      columns.store(sum, c + r * ldc, v);
    }
  }
}

// Where a product's sums start. kFresh: from `bias` (the same row for every row of C),
// or zero; kOntoC: from C, one chain of multiply-adds onto it (the recurrent products:
// every kernel of a step sums in this order, so a row gets the same bits in any step);
// kAddToC: from zero, the sum then added to C.
enum class Sum { kFresh, kOntoC, kAddToC };

// C[kRows, kCols vectors from column j] (+)= A[kRows, inner] @ W[inner, same columns]:
// one tile of independent accumulators, kept in registers while W streams by.
// A is read through strides (row a_rs, inner a_is) so that a transposed operand needs
// no copy (bf16: a_is is 1). kFull: all kCols vectors are whole; otherwise the tile is
// the ragged edge. W is laid out as Operands<in_t> says. `sum` says where the sums
// start and whether they are added to C (Sum).
template <typename in_t, int kRows, int kCols, bool kFull>
inline void gemm_tile(int64_t inner, int64_t cols_left,
                      const in_t* a, int64_t a_rs, int64_t a_is,  // [kRows, inner]
                      const in_t* w, int64_t ldw,                 // [inner, >= tile]
                      Sum sum,
                      typename Operands<in_t>::acc_t* c, int64_t ldc,    // [kRows, >= tile]
                      const typename Operands<in_t>::acc_t* bias) {      // [>= tile] or nullptr
  using O = Operands<in_t>;
  using acc_t = typename O::acc_t;
  using V = Vec<acc_t>;
  const TileColumns<acc_t, kCols, kFull> columns(cols_left);
  V acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kCols; ++v) {
      acc[r][v] = sum == Sum::kOntoC ? columns.load(c + r * ldc, v)
                  : (sum == Sum::kFresh && bias != nullptr ? columns.load(bias, v) : V(acc_t(0)));
    }
  }
  const int64_t whole = inner - inner % O::kStep;
  for (int64_t p = 0; p < whole; p += O::kStep) {
    V w_p[kCols];
    for (int v = 0; v < kCols; ++v) w_p[v] = columns.template load_w<O>(w + p * ldw, v);
    for (int r = 0; r < kRows; ++r) {
      const V a_rp = O::broadcast(a + r * a_rs + p * a_is);
      for (int v = 0; v < kCols; ++v) acc[r][v] = O::mac(a_rp, w_p[v], acc[r][v]);
    }
  }
  if (sum == Sum::kAddToC) {
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kCols; ++v) columns.store(acc[r][v] + columns.load(c + r * ldc, v), c + r * ldc, v);
    }
  } else {
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kCols; ++v) columns.store(acc[r][v], c + r * ldc, v);
    }
  }
  if constexpr (O::kStep > 1) {
    if (whole < inner) {
      odd_inner_update<in_t, kRows, kCols, kFull>(a + whole * a_is, a_rs, w + whole * ldw,
                                                  cols_left, c, ldc);
    }
  }
}

// gemm_tile as a call of its own, for gemm_row_tile's chunk loop (why: there).
template <typename in_t, int kRows, int kCols, bool kFull>
__attribute__((noinline)) void gemm_tile_outlined(int64_t inner, int64_t cols_left, const in_t* a,
                                                  int64_t a_rs, int64_t a_is, const in_t* w,
                                                  int64_t ldw, Sum sum,
                                                  typename Operands<in_t>::acc_t* c, int64_t ldc,
                                                  const typename Operands<in_t>::acc_t* bias) {
  gemm_tile<in_t, kRows, kCols, kFull>(inner, cols_left, a, a_rs, a_is, w, ldw, sum, c, ldc, bias);
}

// kRows rows of C over columns [0, cols): whole tiles of kCols vectors, then the rest
// in a tile only as wide as it needs (a 32-column output, e.g. H = 32, is a tile of 2
// vectors, not a masked tile of 4). sum_chunk > 0: the inner indices in chunks of that
// many (a multiple of kStep), the first summed as `sum` says, each later one added to C.
template <typename scalar_t, int kRows, int kCols>
inline void gemm_row_tile(int64_t cols, int64_t inner, const scalar_t* a, int64_t a_rs,
                          int64_t a_is, const scalar_t* w, int64_t ldw, Sum sum, int64_t sum_chunk,
                          typename Operands<scalar_t>::acc_t* c, int64_t ldc,
                          const typename Operands<scalar_t>::acc_t* bias = nullptr) {
  constexpr int64_t step = Operands<scalar_t>::kStep;
  constexpr int64_t width = Vec<typename Operands<scalar_t>::acc_t>::size(), tile = kCols * width;
  // One column tile. In chunks, each through an out-of-line copy of the tile: inlined
  // into the chunk loop, its row pointers no longer fit in registers and the inner loop
  // read them from the stack (AVX2: 25% slower).
  auto columns = [&](auto full, auto vectors, int64_t j, int64_t cols_left) {
    constexpr int kVectors = decltype(vectors)::value;
    constexpr bool kFull = decltype(full)::value;
    if (sum_chunk == 0) {
      gemm_tile<scalar_t, kRows, kVectors, kFull>(inner, cols_left, a, a_rs, a_is, w + step * j, ldw,
                                                  sum, c + j, ldc, bias ? bias + j : nullptr);
      return;
    }
    for (int64_t q = 0; q == 0 || q < inner; q += sum_chunk) {  // at least one pass: the start
      gemm_tile_outlined<scalar_t, kRows, kVectors, kFull>(
          std::min(sum_chunk, inner - q), cols_left, a + q * a_is, a_rs, a_is, w + q * ldw + step * j,
          ldw, q == 0 ? sum : Sum::kAddToC, c + j, ldc, bias ? bias + j : nullptr);
    }
  };
  int64_t j = 0;
  for (; j + tile <= cols; j += tile) {
    columns(std::true_type(), std::integral_constant<int, kCols>(), j, cols - j);
  }
  const int64_t rest = cols - j;
  if (rest == 0) return;
  if constexpr (kCols > 1) {
    if (rest <= tile - width) {
      gemm_row_tile<scalar_t, kRows, kCols - 1>(rest, inner, a, a_rs, a_is, w + step * j, ldw,
                                                sum, sum_chunk, c + j, ldc, bias ? bias + j : nullptr);
      return;
    }
  }
  columns(std::false_type(), std::integral_constant<int, kCols>(), j, rest);
}

// The product's blocking, from the vector width: a register tile of 6 rows x kCols
// vectors (6 x 4 of the 32 AVX-512 registers, 6 x 2 of the 16 AVX2 ones, plus the W
// vectors and one broadcast); W in chunks of [inner_block, tile] that stay in L1
// (32 KB) while every row of a row block passes over them; A in row blocks that stay
// in L2. Each output element is summed in the same order whatever rows or columns
// are asked for, so a product over a subset of rows is bit-identical to those rows
// of the whole product. (scalar_t: the operands' type; C is Operands' acc_t.)
template <typename scalar_t>
struct Blocking {
  using acc_t = typename Operands<scalar_t>::acc_t;
  static constexpr int kRows = 6;
  static constexpr int kCols = Vec<acc_t>::size() * sizeof(acc_t) >= 64 ? 4 : 2;
  static constexpr int64_t tile = kCols * Vec<acc_t>::size();
  static constexpr int64_t inner_block =
      std::max<int64_t>(64, (int64_t(32) << 10) / (tile * int64_t(sizeof(scalar_t))));
  static constexpr int64_t row_block = 96;
};

// This thread's buffer for gemm's packed A blocks (at most inner_block x row_block
// elements: 48-400 KB), kept for the thread's life so that no product allocates.
template <typename scalar_t>
scalar_t* packed_a_block(int64_t elements) {
  thread_local std::vector<scalar_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < elements) buffer.resize(elements);
  return buffer.data();
}

// C[rows, out] (+)= A[rows, inner] @ W[inner, out]: A read through strides (row a_rs,
// inner a_is), W row-major with leading dimension ldw, C with ldc. Register-tiled,
// cache-blocked and split over threads by (row block, column tile); no allocation and
// no dispatcher call, so a recurrence step costs only its arithmetic. Used for every
// product of this backend: the input projection, the per-step recurrent products and,
// through mm_into, the backward's dx and weight gradients. sum_chunk 0: each output one
// chain of multiply-adds (Sum::kOntoC across inner blocks); n > 0: in sums of n inner
// indices, each added to C.
template <typename scalar_t>
void gemm(int64_t rows, int64_t out, int64_t inner,
          const scalar_t* a, int64_t a_rs, int64_t a_is,  // [rows, inner]
          const scalar_t* w, int64_t ldw,                 // [inner, out] (Operands' layout)
          bool accumulate,
          typename Operands<scalar_t>::acc_t* c, int64_t ldc,    // [rows, out]
          const typename Operands<scalar_t>::acc_t* bias = nullptr,  // [out]: start, or 0
          int64_t sum_chunk = 0) {
  using B = Blocking<scalar_t>;
  using acc_t = typename B::acc_t;
  constexpr int64_t step = Operands<scalar_t>::kStep;
  if (rows <= 0 || out <= 0) return;
  // How the sum over inner indices from some point on starts: fresh at the first unless
  // accumulating; else one chain onto C, or (in chunks) added to C.
  auto sum_from = [&](bool first) {
    return !accumulate && first ? Sum::kFresh : sum_chunk > 0 ? Sum::kAddToC : Sum::kOntoC;
  };
  if (inner == 0) {
    if (!accumulate) {
      for (int64_t r = 0; r < rows; ++r) {
        if (bias != nullptr) std::copy(bias, bias + out, c + r * ldc);
        else std::fill(c + r * ldc, c + r * ldc + out, acc_t(0));
      }
    }
    return;
  }
  if (rows < 3) {
    // Matrix-vector products (1-2 rows: a B <= 2 step's W_hr projection, the backward's
    // products of such steps): W is read once either way; more independent accumulators
    // per row hide the FMA latency instead. Split over threads by columns: the static
    // split gives each thread the same slice of W at every step, in its own L2. (The
    // forward's W_hh product of such steps is few_rows_gate_product.)
    constexpr int64_t tile = 2 * B::tile;
    const int64_t tiles = (out + tile - 1) / tile;
    const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / (rows * tile * inner));
    const Sum sum = sum_from(true);
    at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
      // Whole wide tiles, then the rest (< 128 columns) in narrower ones, so that a
      // slice of 64 columns wastes no lanes.
      const int64_t j = begin * tile, end_col = std::min(end * tile, out);
      const int64_t wide_end = j + (end_col - j) / tile * tile;
      if (rows == 2) {
        gemm_row_tile<scalar_t, 2, 2 * B::kCols>(wide_end - j, inner, a, a_rs, a_is, w + step * j, ldw, sum, sum_chunk, c + j, ldc, bias ? bias + j : nullptr);
        gemm_row_tile<scalar_t, 2, B::kCols>(end_col - wide_end, inner, a, a_rs, a_is, w + step * wide_end, ldw, sum, sum_chunk, c + wide_end, ldc, bias ? bias + wide_end : nullptr);
      } else {
        gemm_row_tile<scalar_t, 1, 2 * B::kCols>(wide_end - j, inner, a, a_rs, a_is, w + step * j, ldw, sum, sum_chunk, c + j, ldc, bias ? bias + j : nullptr);
        gemm_row_tile<scalar_t, 1, B::kCols>(end_col - wide_end, inner, a, a_rs, a_is, w + step * wide_end, ldw, sum, sum_chunk, c + wide_end, ldc, bias ? bias + wide_end : nullptr);
      }
    });
    return;
  }
  const int64_t row_blocks = (rows + B::row_block - 1) / B::row_block;
  const int64_t col_tiles = (out + B::tile - 1) / B::tile;
  const int64_t task_macs = std::min(rows, B::row_block) * B::tile * inner;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / std::max<int64_t>(task_macs, 1));
  // An A read across its rows (a transposed view: the weight gradients' dgates^T, whose
  // inner index steps 4H words) is copied once per row block and inner block into
  // [depth][rows of the block], which every column tile then reads in order. Read in
  // place, each column tile fetched the block again at a stride of 4H words (4 KB at
  // H = 256), which falls into a few cache sets (AVX2, T=50 B=32 H=256 dW: 6.8 ms
  // against MKL's 4.6).
  const bool pack_a = Operands<scalar_t>::kStep == 1 && a_is != 1 && col_tiles > 1;
  at::parallel_for(0, row_blocks * col_tiles, grain, [&](int64_t begin, int64_t end) {
    // This thread's tasks, a row block at a time: its column tiles [task, block_end).
    for (int64_t task = begin; task < end;) {
      const int64_t block_index = task / col_tiles, block_end = std::min(end, (block_index + 1) * col_tiles);
      const int64_t r0 = block_index * B::row_block, r_end = std::min(rows, r0 + B::row_block);
      for (int64_t p = 0; p < inner; p += B::inner_block) {
        const int64_t depth = std::min(B::inner_block, inner - p);
        const Sum sum = sum_from(p == 0);
        const scalar_t* a_block = a + r0 * a_rs + p * a_is;  // rows [r0, r_end), inner [p, p + depth)
        int64_t block_rs = a_rs, block_is = a_is;
        if (pack_a) {
          scalar_t* packed = packed_a_block<scalar_t>(depth * B::row_block);
          const int64_t n = r_end - r0;
          for (int64_t q = 0; q < depth; ++q) {
            for (int64_t r = 0; r < n; ++r) packed[q * n + r] = a_block[r * a_rs + q * a_is];
          }
          a_block = packed, block_rs = 1, block_is = n;
        }
        for (int64_t tile_task = task; tile_task < block_end; ++tile_task) {
          const int64_t j = (tile_task % col_tiles) * B::tile, cols = std::min(B::tile, out - j);
          const acc_t* bias_j = bias != nullptr && p == 0 ? bias + j : nullptr;
          const scalar_t* w_p = w + p * ldw + step * j;
          auto a_at = [&](int64_t r) { return a_block + (r - r0) * block_rs; };
          // Whole 6-row tiles, but a remainder of 1-2 rows joins the last of them as two
          // tiles of 3-4: a 1-2 row tile does 4-8 multiply-adds per W load, too few to
          // keep the FMA units busy (B=8 was a 6-row and a 2-row tile per step).
          const int64_t rem = (r_end - r0) % B::kRows;
          const int64_t whole_end = r_end - rem - (rem <= 2 && rem > 0 && r_end - r0 > B::kRows ? B::kRows : 0);
          int64_t r = r0;
          for (; r + B::kRows <= whole_end; r += B::kRows) {
            gemm_row_tile<scalar_t, B::kRows, B::kCols>(cols, depth, a_at(r), block_rs, block_is,
                                                        w_p, ldw, sum, sum_chunk, c + r * ldc + j, ldc, bias_j);
          }
          if (r_end - r > B::kRows) {  // 7 or 8 rows: a tile of 4, then the rest below
            gemm_row_tile<scalar_t, 4, B::kCols>(cols, depth, a_at(r), block_rs, block_is, w_p, ldw,
                                                 sum, sum_chunk, c + r * ldc + j, ldc, bias_j);
            r += 4;
          }
          const scalar_t* a_r = a_at(r);
          acc_t* c_r = c + r * ldc + j;
          switch (r_end - r) {
            case 5: gemm_row_tile<scalar_t, 5, B::kCols>(cols, depth, a_r, block_rs, block_is, w_p, ldw, sum, sum_chunk, c_r, ldc, bias_j); break;
            case 4: gemm_row_tile<scalar_t, 4, B::kCols>(cols, depth, a_r, block_rs, block_is, w_p, ldw, sum, sum_chunk, c_r, ldc, bias_j); break;
            case 3: gemm_row_tile<scalar_t, 3, B::kCols>(cols, depth, a_r, block_rs, block_is, w_p, ldw, sum, sum_chunk, c_r, ldc, bias_j); break;
            case 2: gemm_row_tile<scalar_t, 2, B::kCols>(cols, depth, a_r, block_rs, block_is, w_p, ldw, sum, sum_chunk, c_r, ldc, bias_j); break;
            case 1: gemm_row_tile<scalar_t, 1, B::kCols>(cols, depth, a_r, block_rs, block_is, w_p, ldw, sum, sum_chunk, c_r, ldc, bias_j); break;
            default: break;
          }
        }
      }
      task = block_end;
    }
  });
}

// The common case: A row-major with leading dimension lda, W contiguous [inner, out].
template <typename scalar_t>
inline void gemm_rows(int64_t rows, int64_t out, int64_t inner, const scalar_t* a, int64_t lda,
                      const scalar_t* w, bool accumulate, typename Operands<scalar_t>::acc_t* c,
                      int64_t ldc, const typename Operands<scalar_t>::acc_t* bias = nullptr) {
  gemm<scalar_t>(rows, out, inner, a, lda, 1, w, out, accumulate, c, ldc, bias);
}

// Runs fn(scalar_t()) for a layer's dtype: fp32, fp64 and, built with AVX512_BF16, bf16.
template <typename Fn>
void dispatch_layer_dtype(c10::ScalarType dtype, const Fn& fn) {
#ifdef RNNFAST_BF16_DOT
  if (dtype == at::kBFloat16) return fn(c10::BFloat16());
#endif
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnnfast_cpu_layer", [&] { fn(scalar_t()); });
}

// Rounds n up to a whole number of the product's inner steps (Operands::kStep).
template <typename scalar_t>
constexpr int64_t padded_inner(int64_t n) {
  return (n + Operands<scalar_t>::kStep - 1) / Operands<scalar_t>::kStep * Operands<scalar_t>::kStep;
}

// Memory a call uses and drops (the rearranged weights; the gates buffer when the gates
// are not saved), kept on the calling thread from call to call. A fresh buffer this large
// is a fresh mmap whose pages fault in on first touch: at B=1 T=1 H=256 a call took
// 0.3-1.1 ms at random with fresh buffers, 0.2 ms with kept ones (perf: page faults and
// page clearing were a third of the time). A buffer over kScratchKeptBytes is this call's
// own: such calls are long enough not to notice. So a thread that runs the kernels keeps
// at most kScratchSlots * kScratchKeptBytes (fp32: every layer up to H = 512).
enum ScratchSlot { kInputWeights, kGatePanels, kFewRowPanels, kProjectionWeights, kGateBuffer,
                   kBias, kScratchSlots };
constexpr int64_t kScratchKeptBytes = int64_t(4) << 20;

class CallScratch {
 public:
  // `count` elements of T, 64-byte aligned, valid until this object dies.
  template <typename T>
  T* get(ScratchSlot slot, int64_t count) {
    thread_local std::array<Tensor, kScratchSlots> kept;
    const int64_t bytes = std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T));
    Tensor& buffer = bytes > kScratchKeptBytes ? own_[slot] : kept[slot];
    if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, at::kByte);
    return static_cast<T*>(buffer.data_ptr());
  }

 private:
  std::array<Tensor, kScratchSlots> own_;  // this call's buffers over the kept size
};

// One kBlock x kBlock block of 32-bit words from src (rows ld_src apart) to dst transposed
// (rows ld_dst apart), through registers. AVX-512: the four-stage network (32-bit and 64-bit
// unpacks, then two rounds of 128-bit lane shuffles), unrolled so that all 32 vectors stay
// in registers; at::vec's transpose_mxn<float> takes its sizes at run time and kept them on
// the stack, at about twice the time. AVX2 and portable builds: at::vec's fixed-size one.
template <int kBlock>
inline void transpose_block(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(kBlock == 16, "AVX-512: 16 words a vector");
  __m512 a[16], b[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) a[i] = _mm512_loadu_ps(src + i * ld_src);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // rows 2i, 2i+1: their words interleaved
    b[2 * i] = _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // then pairs of words of rows 4i..4i+3
    const __m512d lo0 = _mm512_castps_pd(b[4 * i]), lo1 = _mm512_castps_pd(b[4 * i + 2]);
    const __m512d hi0 = _mm512_castps_pd(b[4 * i + 1]), hi1 = _mm512_castps_pd(b[4 * i + 3]);
    a[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
    a[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
    a[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
    a[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {  // 128-bit lanes of rows 8i..8i+7
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      b[8 * i + j] = _mm512_shuffle_f32x4(a[8 * i + j], a[8 * i + j + 4], 0x88);
      b[8 * i + j + 4] = _mm512_shuffle_f32x4(a[8 * i + j], a[8 * i + j + 4], 0xdd);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // and of all 16 rows: column i, column i + 8
    _mm512_storeu_ps(dst + i * ld_dst, _mm512_shuffle_f32x4(b[i], b[8 + i], 0x88));
    _mm512_storeu_ps(dst + (i + 8) * ld_dst, _mm512_shuffle_f32x4(b[i], b[8 + i], 0xdd));
  }
#else
  at::vec::transpose_mxn<float, kBlock, kBlock>(src, ld_src, dst, ld_dst);
#endif
}

// dst[q * ld_dst + r] = src[r * ld_src + q] for r < rows, q < cols, 32-bit words moved
// bit for bit (fp32 values, or bf16 pairs): blocks of a vector's width of rows and words
// through transpose_block, the ragged edges one by one. One element at a time, a 1 MB
// weight took ~0.15 ms: each read is in another row, 4H apart.
inline void transpose_words(const float* src, int64_t ld_src, float* dst, int64_t ld_dst,
                            int64_t rows, int64_t cols) {
  constexpr int kBlock = Vec<float>::size();
  const int64_t full_rows = rows / kBlock * kBlock, full_cols = cols / kBlock * kBlock;
  for (int64_t r = 0; r < full_rows; r += kBlock) {
    for (int64_t q = 0; q < full_cols; q += kBlock) {
      transpose_block<kBlock>(src + r * ld_src + q, ld_src, dst + q * ld_dst + r, ld_dst);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t q = r < full_rows ? full_cols : 0; q < cols; ++q) dst[q * ld_dst + r] = src[r * ld_src + q];
  }
}

// The rows of src [rows, cols] (strides rs, cs) as the columns of a product's W in
// Operands' layout: inner index p of row r goes to dst + (p / S) * S * ld_dst + S * r + p % S
// (S = kStep: fp32/fp64 one element, bf16 a pair of inner indices; an odd last index is
// paired with 0), where ld_dst counts columns. fp32 and bf16 pairs with unit column
// stride (the weights as nn.LSTM keeps them) go through transpose_words.
template <typename scalar_t>
void transpose_into(const scalar_t* src, int64_t rs, int64_t cs, int64_t rows, int64_t cols,
                    scalar_t* dst, int64_t ld_dst) {
  constexpr int64_t S = Operands<scalar_t>::kStep;
  const int64_t words = cols / S;  // whole steps of S inner indices
  const bool as_words = sizeof(scalar_t) * S == sizeof(float) && (cs == 1 || words == 0) &&
                        rs % S == 0 && reinterpret_cast<uintptr_t>(src) % sizeof(float) == 0;
  if (as_words) {
    transpose_words(reinterpret_cast<const float*>(src), rs / S, reinterpret_cast<float*>(dst),
                    ld_dst, rows, words);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t p = 0; p < words * S; ++p) dst[(p / S) * S * ld_dst + S * r + p % S] = src[r * rs + p * cs];
    }
  }
  if (words * S < cols) {  // bf16: the odd last index, paired with 0
    scalar_t* odd = dst + words * S * ld_dst;
    for (int64_t r = 0; r < rows; ++r) {
      odd[S * r] = src[r * rs + (cols - 1) * cs];
      odd[S * r + 1] = scalar_t(0);
    }
  }
}

// Rearranging a weight is split over threads from this many bytes (at H = 64 one
// weight is 64 KB, about 2 us alone: less than the fork and join).
constexpr int64_t kPackSplitBytes = int64_t(256) << 10;

// w^T as a product's W, into dst [padded_inner(cols), rows]: from w [rows, cols] (any
// strides), in Operands' layout, in blocks of 64 rows (split over threads when large).
template <typename scalar_t>
void pack_transposed(const Tensor& w, scalar_t* dst) {
  constexpr int64_t kRowBlock = 64;
  const int64_t rows = w.size(0), cols = w.size(1), rs = w.stride(0), cs = w.stride(1);
  const scalar_t* src = w.data_ptr<scalar_t>();
  const int64_t row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t bytes = rows * cols * static_cast<int64_t>(sizeof(scalar_t));
  at::parallel_for(0, row_blocks, bytes >= kPackSplitBytes ? 1 : row_blocks, [&](int64_t begin, int64_t end) {
    const int64_t r0 = begin * kRowBlock, r1 = std::min(end * kRowBlock, rows);
    transpose_into(src + r0 * rs, rs, cs, r1 - r0, cols, dst + Operands<scalar_t>::kStep * r0, rows);
  });
}

// W_hh^T cut into one panel per (gate, block of kUnitBlock units), [P, kUnitBlock] each
// in Operands' layout, with panel[p][u] = w_hh[g * H + b * kUnitBlock + u][p] (columns
// past H left unset: the GEMM never reads them), written to dst [4 * blocks, panel_size].
// A task's product then streams contiguous rows of its own panel: read in place, W_hh^T's
// rows are 4H apart, 4 KB at H = 256, so all of a chunk fell into one L1 set (AVX2: 46
// against 66 GMAC/s packed).
// Two layouts: `interleaved` false, panel g * blocks + b whole after whole (the GEMM of
// a step of 3+ rows takes one gate's panel at a time); true, block b's four panels
// interleaved by row, [P][4][kUnitBlock], so that the 1-2 row kernel, which reads all
// four at each inner step, streams one contiguous run instead of four (B=1: W_hh comes
// from L2 at every step, and one stream is what the prefetchers follow best).
template <typename scalar_t>
void gate_panels(const Tensor& w_hh, int64_t H, bool interleaved, scalar_t* dst) {
  constexpr int64_t S = Operands<scalar_t>::kStep;
  const int64_t P = w_hh.size(1), blocks = (H + kUnitBlock - 1) / kUnitBlock;
  const int64_t panel_size = padded_inner<scalar_t>(P) * kUnitBlock;
  const scalar_t* src = w_hh.data_ptr<scalar_t>();
  const int64_t rs = w_hh.stride(0), cs = w_hh.stride(1);
  const int64_t bytes = 4 * H * P * static_cast<int64_t>(sizeof(scalar_t));
  at::parallel_for(0, 4 * blocks, bytes >= kPackSplitBytes ? 1 : 4 * blocks, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t gate = panel / blocks, block = panel % blocks;
      const int64_t first = gate * H + block * kUnitBlock;
      const int64_t width = std::min(kUnitBlock, H - block * kUnitBlock);
      scalar_t* out = dst + (interleaved ? block * 4 * panel_size + gate * S * kUnitBlock
                                         : (gate * blocks + block) * panel_size);
      transpose_into(src + first * rs, rs, cs, width, P, out,
                     interleaved ? 4 * kUnitBlock : kUnitBlock);
    }
  });
}

// C[kRows, kPanels panels x kCols vectors] (+)= A[kRows, inner] @ kPanels gate panels of
// one unit block, read side by side (panel_stride apart, each [inner, kUnitBlock]) with
// C's columns gate_stride apart: the recurrent product of a step of 1-2 rows. A lone
// gemm_tile per gate holds 1-2 rows x 4 vectors, too few accumulators to hide the FMA
// latency and one W stream at a time (B=1 H=256: 0.39 FMA a cycle); side by side the
// tile is 16 (AVX-512) or 8 accumulators and the panels stream together. Each output is
// summed in gemm_tile's order (C first, then inner 0, 1, ...), so a sequence gets the
// same bits in a step of 1-2 rows as in a wider one.
template <typename scalar_t, int kRows, int kPanels, int kCols, bool kFull>
inline void gate_panel_tile(int64_t inner, int64_t units_left,
                            const scalar_t* a, int64_t lda,                 // [kRows, inner]
                            const scalar_t* panel, int64_t panel_stride,    // kPanels x [inner, kUnitBlock]
                            int64_t panel_ld,                               // panel row stride, in columns
                            typename Operands<scalar_t>::acc_t* c, int64_t ldc,
                            int64_t gate_stride) {                          // [kRows, kPanels x gate_stride]
  using O = Operands<scalar_t>;
  using acc_t = typename O::acc_t;
  using V = Vec<acc_t>;
  const TileColumns<acc_t, kCols, kFull> columns(units_left);
  V acc[kRows][kPanels][kCols];
  for (int r = 0; r < kRows; ++r) {
    for (int q = 0; q < kPanels; ++q) {
      for (int v = 0; v < kCols; ++v) acc[r][q][v] = columns.load(c + r * ldc + q * gate_stride, v);
    }
  }
  const int64_t whole = inner - inner % O::kStep;
  for (int64_t p = 0; p < whole; p += O::kStep) {
    V w_p[kPanels][kCols];
    for (int q = 0; q < kPanels; ++q) {
      for (int v = 0; v < kCols; ++v) {
        w_p[q][v] = columns.template load_w<O>(panel + q * panel_stride + p * panel_ld, v);
      }
    }
    for (int r = 0; r < kRows; ++r) {
      const V a_rp = O::broadcast(a + r * lda + p);
      for (int q = 0; q < kPanels; ++q) {
        for (int v = 0; v < kCols; ++v) acc[r][q][v] = O::mac(a_rp, w_p[q][v], acc[r][q][v]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int q = 0; q < kPanels; ++q) {
      for (int v = 0; v < kCols; ++v) columns.store(acc[r][q][v], c + r * ldc + q * gate_stride, v);
    }
  }
  if constexpr (O::kStep > 1) {
    if (whole < inner) {
      for (int q = 0; q < kPanels; ++q) {
        odd_inner_update<scalar_t, kRows, kCols, kFull>(a + whole, lda,
                                                        panel + q * panel_stride + whole * panel_ld,
                                                        units_left, c + q * gate_stride, ldc);
      }
    }
  }
}

// Which panel layout the 1-2 row kernel reads (gate_panels): interleaved for bf16 (one
// stream; measured against the separate panels on the AVX-512 EPYC, extension calls
// alternated: 0.74-0.90x the time at B=1-2, H=64-256), separate for fp32/fp64, where
// interleaved measured 0.93-1.08x (slower at B=2, whose two passes each read half of every
// interleaved row, and at H=64).
template <typename scalar_t>
constexpr bool kFewRowsInterleaved = Operands<scalar_t>::kStep > 1;

// gates[kRows, 4H] (+)= h[kRows, P] @ the four gate panels of the unit block at `block`,
// for `units` of its units from `first_unit` on: gate_panel_tile over the panels kPanels at
// a time and the units kCols vectors at a time (16 accumulators with AVX-512, 8 with
// AVX2); a rest of at most half that width in a tile of half the vectors, so that a task of
// 32 units (a block split between threads) or H = 32 does no multiply-adds on zeros.
template <typename scalar_t, int kRows>
void few_rows_gate_product(int64_t P, int64_t H, int64_t first_unit, int64_t units,
                           const scalar_t* h, int64_t ldh,          // [kRows, P]
                           const scalar_t* panels, int64_t blocks,  // gate_panels(W_hh, H, kFewRowsInterleaved)
                           int64_t block,
                           typename Operands<scalar_t>::acc_t* gates,  // [kRows, 4H] at the first unit
                           int64_t ldg) {
  using O = Operands<scalar_t>;
  constexpr int kCols = Blocking<scalar_t>::kCols;
  constexpr int kHalf = kCols / 2;
  static_assert(kHalf >= 1, "the narrow tile needs two or more vectors to halve");
  constexpr int kPanels = 4 / kRows;  // kRows x kPanels x kCols = 4 x kCols accumulators
  constexpr int64_t chunk = Blocking<scalar_t>::tile, half = chunk / 2;
  constexpr bool interleaved = kFewRowsInterleaved<scalar_t>;
  const int64_t panel_size = padded_inner<scalar_t>(P) * kUnitBlock;
  // Where gate g's panel of this block starts is first + g * panel_stride.
  const scalar_t* first = panels + (interleaved ? block * 4 * panel_size : block * panel_size) +
                          O::kStep * first_unit;
  const int64_t panel_stride = interleaved ? O::kStep * kUnitBlock : blocks * panel_size;
  const int64_t panel_ld = interleaved ? 4 * kUnitBlock : kUnitBlock;
  for (int gate = 0; gate < 4; gate += kPanels) {
    const scalar_t* panel = first + gate * panel_stride;
    typename O::acc_t* out = gates + gate * H;
    int64_t u = 0;
    for (; u + chunk <= units; u += chunk) {
      gate_panel_tile<scalar_t, kRows, kPanels, kCols, true>(P, chunk, h, ldh, panel + O::kStep * u,
                                                             panel_stride, panel_ld, out + u, ldg, H);
    }
    const int64_t rest = units - u;
    if (rest == 0) continue;
    if (rest == half) {
      gate_panel_tile<scalar_t, kRows, kPanels, kHalf, true>(
          P, rest, h, ldh, panel + O::kStep * u, panel_stride, panel_ld, out + u, ldg, H);
    } else if (rest < half) {
      gate_panel_tile<scalar_t, kRows, kPanels, kHalf, false>(
          P, rest, h, ldh, panel + O::kStep * u, panel_stride, panel_ld, out + u, ldg, H);
    } else {
      gate_panel_tile<scalar_t, kRows, kPanels, kCols, false>(P, rest, h, ldh, panel + O::kStep * u,
                                                              panel_stride, panel_ld, out + u, ldg, H);
    }
  }
}

// How a step of n rows is cut into a team's tasks. A task is a range of units within one
// block of kUnitBlock (the four gates' columns of the product from their panels, then the
// cell math of those units) and a chunk of rows. Rows are chunked only where there are
// fewer unit blocks than threads, into chunks as even as can be and of 3 rows or more: a
// product of 3+ rows is a GEMM on the gate panels, one of 1-2 rows reads the few-row
// kernel's panels, which bf16 packs only for steps that small (a B=8 step cut into 6 + 2
// rows read panels that were never packed). Where that still leaves threads idle (B <= 5
// at H <= 64 on 2 threads), each block's units are cut into pieces of at least half a
// register tile's width (AVX-512 fp32: 32 units).
struct StepTasks {
  int64_t pieces = 1;      // unit ranges per block
  int64_t piece = kUnitBlock;
  int64_t blocks = 1;      // unit blocks
  int64_t chunks = 1;      // row chunks

  template <typename scalar_t>
  static StepTasks make(int64_t n, int64_t H, int64_t team) {
    StepTasks split;
    split.blocks = (H + kUnitBlock - 1) / kUnitBlock;
    if (team > 1 && split.blocks < team) {
      const int64_t per_block = (team + split.blocks - 1) / split.blocks;
      split.chunks = std::max<int64_t>(1, std::min(per_block, n / 3));
    }
    const int64_t most_pieces = std::max<int64_t>(1, kUnitBlock / (Blocking<scalar_t>::tile / 2));
    while (split.blocks * split.chunks * split.pieces < team && split.pieces < most_pieces) {
      split.pieces *= 2;
    }
    split.piece = kUnitBlock / split.pieces;
    return split;
  }
  int64_t tasks() const { return blocks * pieces * chunks; }
  struct Task { int64_t u0, u1, r0, r1; };
  // Task `index`, unit-major: a contiguous run of tasks covers the same units at every step.
  Task task(int64_t index, int64_t n, int64_t H) const {
    const int64_t range = index / chunks, chunk = index % chunks;
    const int64_t u0 = std::min(H, (range / pieces) * kUnitBlock + (range % pieces) * piece);
    return {u0, std::min(H, u0 + piece), chunk * n / chunks, (chunk + 1) * n / chunks};
  }
};

// A thread is given a share of a step only from this many multiply-adds (product and cell
// math of the largest step, kCellMacs a unit): below it the barrier costs more than the
// share saves.
constexpr int64_t kMinStepMacsPerThread = int64_t(1) << 13;

// The threads of a forward's team: at most torch's, at most one per task of the largest
// step, and each with at least kMinStepMacsPerThread of it.
template <typename scalar_t>
int forward_team(const std::vector<int64_t>& sizes, int64_t H, int64_t P) {
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || sizes.empty() || at::in_parallel_region()) return 1;
  const int64_t n = *std::max_element(sizes.begin(), sizes.end());
  if (n == 0) return 1;
  const int64_t by_work = n * (4 * H * P + H * kCellMacs) / kMinStepMacsPerThread;
  const int64_t by_tasks = StepTasks::make<scalar_t>(n, H, threads).tasks();
  return static_cast<int>(std::max<int64_t>(1, std::min({threads, by_work, by_tasks})));
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// The step barrier of a team that stays for the whole sequence: each thread counts its
// arrival on one atomic and waits until the whole team has arrived at this step. A fork
// and join per step cost ~1.4 us on the 2-core EPYC, an omp barrier ~0.5 us, this ~0.16.
// It spins for a few microseconds, then yields the core at every check, so that a machine
// with more threads than free cores still moves on. Every thread of the team passes the
// same barriers in the same order, so each waits for arrivals that are sure to come.
class StepBarrier {
 public:
  // `passed`: the calling thread's own count of arrivals it has waited for so far.
  void arrive_and_wait(int64_t& passed, int team) {
    passed += team;
    if (team == 1) return;
    arrived_.fetch_add(1, std::memory_order_acq_rel);
    for (int64_t spins = 0; arrived_.load(std::memory_order_acquire) < passed; ++spins) {
      if (spins < kSpins) cpu_relax();
      else std::this_thread::yield();
    }
  }

 private:
  static constexpr int64_t kSpins = 1 << 12;
  alignas(64) std::atomic<int64_t> arrived_{0};
};

// Runs row_op(row)(begin, end) over units [begin, end) of rows [0, rows), on several
// threads when the step holds enough work.
template <typename RowOp>
void for_each_unit(int64_t rows, int64_t hidden_size, const RowOp& row_op) {
  at::parallel_for(0, rows * hidden_size, kPointwiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin / hidden_size; row * hidden_size < end; ++row) {
      const int64_t first = std::max(begin - row * hidden_size, int64_t(0));
      const int64_t last = std::min(end - row * hidden_size, hidden_size);
      row_op(row)(first, last);
    }
  });
}

// The steps in processing order, as rnnfast/backends/steps.py's make_steps: dense input
// is `steps` steps of all `batch` rows; packed input (batch_sizes [T], int64 on the CPU)
// has batch_sizes[t] rows at step t, time-major, the active rows a prefix of the batch.
// Reversed for the reverse direction. Checked to lie within the rows and the batch.
struct StepTable {
  std::vector<int64_t> offsets, sizes;  // first row and number of rows of each step
};

StepTable make_steps(int64_t steps, int64_t batch, const c10::optional<Tensor>& batch_sizes,
                     bool reverse, int64_t rows) {
  StepTable table;
  if (batch_sizes.has_value()) {
    const Tensor& counts = *batch_sizes;
    TORCH_CHECK_VALUE(counts.dim() == 1 && counts.scalar_type() == at::kLong && counts.device().is_cpu(),
                      "batch_sizes: expected a 1-D int64 CPU tensor, got ", counts.dim(), "-D ",
                      counts.scalar_type(), " on ", counts.device());
    steps = counts.size(0);
    const Tensor contiguous = counts.contiguous();
    const int64_t* n = contiguous.data_ptr<int64_t>();
    table.sizes.assign(n, n + steps);
  } else {
    table.sizes.assign(steps, batch);
  }
  table.offsets.resize(steps);
  for (int64_t k = 0, row = 0; k < steps; row += table.sizes[k], ++k) table.offsets[k] = row;
  if (reverse) {
    std::reverse(table.offsets.begin(), table.offsets.end());
    std::reverse(table.sizes.begin(), table.sizes.end());
  }
  for (int64_t k = 0; k < steps; ++k) {
    TORCH_CHECK_VALUE(table.sizes[k] >= 0 && table.sizes[k] <= batch &&
                      table.offsets[k] + table.sizes[k] <= rows,
                      "step ", k, ": expected rows [offset, offset + size) within the ", rows,
                      " input rows and size <= batch ", batch, ", got offset ", table.offsets[k],
                      " and size ", table.sizes[k]);
  }
  return table;
}

void check_matrix(const Tensor& t, const char* name, int64_t dim0, int64_t dim1,
                  c10::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == dim0 && t.size(1) == dim1, name,
                    ": expected shape [", dim0, ", ", dim1, "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ",
                    t.device());
}

// The recurrence in the layer's dtype scalar_t (fp32, fp64, bf16): products and cell in
// acc_t (Operands: fp32 for bf16), h_t rounded to scalar_t as it is stored in y.
template <typename scalar_t>
void forward_recurrence(const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                        const Tensor& h0,      // [B, P]
                        const scalar_t* panels,  // [4 * blocks, P * kUnitBlock]: gate_panels(W_hh, H, false), or nullptr
                        const scalar_t* few_row_panels,  // gate_panels(W_hh, H, kFewRowsInterleaved) for steps of 1-2 rows, or nullptr
                        const scalar_t* w_hr_t,  // [H, P]: pack_transposed(W_hr), or nullptr
                        typename Operands<scalar_t>::acc_t* gates,  // [N, 4H]: input projection in, gates out
                        Tensor& c_state,  // [B, H] acc_t: c0 in, c_n out
                        Tensor& y,        // [N, P] out
                        Tensor* cells,    // [N, H] acc_t: c_t out, or nullptr
                        Tensor& hidden,   // [N, H] (hidden_per_row) or [B, H] scratch, or empty
                        Tensor& projected,  // [B, P] acc_t scratch (bf16 with a projection), or empty
                        bool hidden_per_row, bool keep_gates) {
  using acc_t = typename Operands<scalar_t>::acc_t;
  const int64_t H = c_state.size(1), P = h0.size(1), G = 4 * H;
  acc_t* c_p = c_state.data_ptr<acc_t>();
  scalar_t* y_p = y.data_ptr<scalar_t>();
  acc_t* cells_p = cells != nullptr ? cells->data_ptr<acc_t>() : nullptr;
  scalar_t* hidden_p = hidden.data_ptr<scalar_t>();
  const scalar_t* h0_p = h0.data_ptr<scalar_t>();
  const int64_t unit_blocks = (H + kUnitBlock - 1) / kUnitBlock;
  const int64_t panel_size = padded_inner<scalar_t>(P) * kUnitBlock;
  const int team_wanted = forward_team<scalar_t>(sizes, H, P);
  StepBarrier barrier;

  // One team of threads for the whole sequence, each step a barrier (StepBarrier), not a
  // fork and join per step. Nothing in here throws: an exception cannot leave an OpenMP
  // region. Nested inside, gemm runs on its task's thread.
#pragma omp parallel num_threads(team_wanted) if (team_wanted > 1)
  {
  // The team as it came (a call from inside a parallel region gets one thread).
  const int team = omp_get_num_threads(), me = omp_get_thread_num();
  int64_t passed = 0;  // this thread's count of team arrivals at the barriers so far
  for (size_t k = 0; k < sizes.size(); ++k) {
    const int64_t off = offsets[k], n = sizes[k];
    if (n == 0) continue;  // B = 0: no rows (and no row chunks to size)
    const int64_t n_prev = k > 0 ? sizes[k - 1] : 0, carried = std::min(n, n_prev);
    acc_t* g = gates + off * G;
    // Without a projection h_t is y_t itself; with one it goes to hidden first.
    scalar_t* h_out = w_hr_t == nullptr ? y_p + off * P : hidden_p + (hidden_per_row ? off * H : 0);
    // Rows active one step earlier continue from that step's output; rows that become
    // active here (reverse direction of a packed batch) start from h0.
    const scalar_t* h_prev = y_p + (k > 0 ? offsets[k - 1] : 0) * P;  // unread at k = 0
    auto cell = [&](int64_t r) {
      return ForwardRow<acc_t, scalar_t>{g + r * G, c_p + r * H,
                                  cells_p != nullptr ? cells_p + (off + r) * H : nullptr,
                                  h_out + r * H, H, keep_gates};
    };
    const StepTasks split = StepTasks::make<scalar_t>(n, H, team);
    // Rows [first, last) of the product from h (their previous output, or h0), units
    // [u0, u1) of one block.
    auto product = [&](int64_t first, int64_t last, const scalar_t* h, int64_t block, int64_t u0, int64_t u1) {
      const int64_t rows = last - first;
      acc_t* out = g + first * G + u0;
      const int64_t in_block = u0 - block * kUnitBlock;
      if (rows >= 3) {
        for (int64_t gate = 0; gate < 4; ++gate) {
          const scalar_t* panel = panels + (gate * unit_blocks + block) * panel_size + Operands<scalar_t>::kStep * in_block;
          gemm<scalar_t>(rows, u1 - u0, P, h, P, 1, panel, kUnitBlock, true, out + gate * H, G);
        }
      } else if (rows == 2) {
        few_rows_gate_product<scalar_t, 2>(P, H, in_block, u1 - u0, h, P, few_row_panels, unit_blocks, block, out, G);
      } else if (rows == 1) {
        few_rows_gate_product<scalar_t, 1>(P, H, in_block, u1 - u0, h, P, few_row_panels, unit_blocks, block, out, G);
      }
    };
    // The next step's gates of the task's rows and units (its input projection, written
    // long before and gone from the caches: 256 KB a step at B=64 H=256) fetched into L2
    // while this step computes; the static split gives the next step's task for them to
    // this thread. Without it the tiles waited on these loads (bf16 T=100 B=64 H=256:
    // 14.6 ms against 13.6, one-off script).
    auto prefetch_next_step = [&](int64_t r0, int64_t r1, int64_t u0, int64_t u1) {
      if (k + 1 >= sizes.size()) return;
      const acc_t* next = gates + offsets[k + 1] * G;
      constexpr int64_t line = 64 / sizeof(acc_t);
      for (int64_t r = r0; r < std::min(r1, sizes[k + 1]); ++r) {
        for (int64_t gate = 0; gate < 4; ++gate) {
          for (int64_t u = u0; u < u1; u += line) __builtin_prefetch(next + r * G + gate * H + u, 1, 2);
        }
      }
    };
    // This thread's tasks: a contiguous run, the same at every step of a dense sequence,
    // so each thread keeps the same panels in its own cache (B=1 H=256: each core's half
    // of W_hh, 512 KB, stays in its L2).
    const int64_t task_end = split.tasks() * (me + 1) / team;
    for (int64_t task = split.tasks() * me / team; task < task_end; ++task) {
      const auto [u0, u1, r0, r1] = split.task(task, n, H);
      if (u0 == u1) continue;  // a piece past H
      const int64_t block = u0 / kUnitBlock;
      const int64_t split_row = std::clamp(carried, r0, r1);  // [r0, split_row) carried on
      prefetch_next_step(r0, r1, u0, u1);
      product(r0, split_row, h_prev + r0 * P, block, u0, u1);
      product(split_row, r1, h0_p + split_row * P, block, u0, u1);
      for (int64_t r = r0; r < r1; ++r) cell(r)(u0, u1);
    }
    barrier.arrive_and_wait(passed, team);
    if (w_hr_t != nullptr) {
      // y_t = h_t W_hr^T, the team splitting its columns (a vector's width at a time).
      constexpr int64_t width = Vec<acc_t>::size();
      const int64_t vectors = (P + width - 1) / width;
      const int64_t c0 = std::min(P, vectors * me / team * width), c1 = std::min(P, vectors * (me + 1) / team * width);
      const scalar_t* w_cols = w_hr_t + Operands<scalar_t>::kStep * c0;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        gemm<scalar_t>(n, c1 - c0, H, h_out, H, 1, w_cols, P, false, y_p + off * P + c0, P);
      } else {
        acc_t* projected_p = projected.data_ptr<acc_t>();
        gemm<scalar_t>(n, c1 - c0, H, h_out, H, 1, w_cols, P, false, projected_p + c0, P);
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t j = c0; j < c1; j += width) {
            const int count = static_cast<int>(std::min<int64_t>(width, c1 - j));
            store_as(Vec<acc_t>::loadu(projected_p + r * P + j, count), y_p + (off + r) * P + j, count);
          }
        }
      }
      barrier.arrive_and_wait(passed, team);
    }
  }
  }
}

// The layer's dtype, checked: fp32, fp64, and bf16 where built with AVX512_BF16.
void check_layer_dtype(c10::ScalarType dtype) {
#ifdef RNNFAST_BF16_DOT
  const bool bf16 = dtype == at::kBFloat16;
#else
  const bool bf16 = false;
  TORCH_CHECK_TYPE(dtype != at::kBFloat16, "rnnfast CPU kernel: bfloat16 needs a CPU with "
                   "AVX512_BF16 and the extension built for it (this build has no bf16 kernels)");
#endif
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || bf16,
                   "rnnfast CPU kernel: expected float32, float64 or bfloat16 input, got ", dtype);
}

// Each batch entry's output after its last step, [B, P] (steps.py's final_rows): the rows
// [staying, n) of step k are last active there when only `staying` rows are active at the
// step processed after it (dense: all rows at the last step).
Tensor final_rows(const Tensor& y, const Tensor& h0, const StepTable& steps) {
  Tensor out = h0.clone();  // rows that never ran keep h0 (only where the batch is empty)
  const int64_t row_bytes = y.size(1) * static_cast<int64_t>(y.element_size());
  const char* src = static_cast<const char*>(y.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const size_t K = steps.sizes.size();
  for (size_t k = 0; k < K; ++k) {
    const int64_t n = steps.sizes[k], staying = k + 1 < K ? std::min(n, steps.sizes[k + 1]) : 0;
    std::memcpy(dst + staying * row_bytes, src + (steps.offsets[k] + staying) * row_bytes,
                (n - staying) * row_bytes);
  }
  return out;
}

// One layer and direction, the contract of rnnfast/backends/reference.py's forward:
// x [T, B, I] dense, or packed rows [N, I] with batch_sizes [T] (int64, CPU); h0 [B, P],
// c0 [B, H], w_ih [4H, I], w_hh [4H, P], b_ih and b_hh [4H] or both None, w_hr [P, H] or
// None, all in the layer's dtype. Returns y [T, B, P] (dense) or [N, P], h_n [B, P] and
// c_n [B, H] in the layer's dtype, then in its accumulation dtype (fp32 for bf16) gates
// [N, 4H] (activated; empty unless save_gates), cells [N, H] (c_t; empty unless
// save_cells) and hidden [N, H] (o * tanh(c) before the projection; empty unless
// save_gates with a projection).
std::vector<Tensor> forward(const Tensor& x, const c10::optional<Tensor>& batch_sizes,
                            const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                            const Tensor& w_hh, const c10::optional<Tensor>& b_ih,
                            const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& w_hr,
                            bool reverse, bool save_gates, bool save_cells) {
  const auto dtype = x.scalar_type();
  check_layer_dtype(dtype);
  const auto acc = dtype == at::kBFloat16 ? at::kFloat : dtype;
  const bool packed = batch_sizes.has_value();
  TORCH_CHECK_VALUE(x.dim() == (packed ? 2 : 3), "x: expected ", packed ? "packed rows [N, I]" : "[T, B, I]",
                    ", got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x: expected a CPU tensor, got one on ", x.device());
  const int64_t rows = packed ? x.size(0) : x.size(0) * x.size(1), I = x.size(-1);
  const int64_t H = c0.size(-1), P = h0.size(-1), batch = h0.size(0);
  TORCH_CHECK_VALUE(packed || x.size(1) == batch, "x: expected a batch of ", batch,
                    " (h0's rows), got shape ", x.sizes());
  check_matrix(h0, "h0", batch, P, dtype);
  check_matrix(c0, "c0", batch, H, dtype);
  check_matrix(w_ih, "w_ih", 4 * H, I, dtype);
  check_matrix(w_hh, "w_hh", 4 * H, P, dtype);
  if (w_hr.has_value()) check_matrix(*w_hr, "w_hr", P, H, dtype);
  else TORCH_CHECK_VALUE(P == H, "without w_hr h0 must be [B, H=", H, "], got ", h0.sizes());
  TORCH_CHECK_VALUE(b_ih.has_value() == b_hh.has_value(), "b_ih and b_hh: expected both or neither");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!b->has_value()) continue;
    TORCH_CHECK_VALUE((*b)->dim() == 1 && (*b)->size(0) == 4 * H, "bias: expected shape [", 4 * H,
                      "], got ", (*b)->sizes());
    TORCH_CHECK_TYPE((*b)->scalar_type() == dtype, "bias: expected dtype ", dtype, ", got ",
                     (*b)->scalar_type());
    TORCH_CHECK_VALUE((*b)->device().is_cpu(), "bias: expected a CPU tensor, got one on ",
                      (*b)->device());
  }
  const StepTable steps = make_steps(packed ? 0 : x.size(0), batch, batch_sizes, reverse, rows);

  // The input projection of all steps: one GEMM, off the sequential path, its sums
  // starting from the bias (no pass over the buffer before it). The buffer then takes
  // each step's recurrent product and, when saved, the activations.
  const auto acc_options = x.options().dtype(acc);
  Tensor saved_gates = save_gates ? at::empty({rows, 4 * H}, acc_options) : at::empty({0}, acc_options);
  Tensor x2d = x.contiguous().view({rows, I});
  Tensor c_state = c0.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  Tensor y = at::empty({rows, P}, x.options());
  Tensor cells = save_cells ? at::empty({rows, H}, acc_options) : at::empty({0}, acc_options);
  const bool hidden_per_row = save_gates && w_hr.has_value();
  Tensor hidden = at::empty({hidden_per_row ? rows : (w_hr.has_value() ? batch : 0), H},
                            x.options());
  Tensor projected = at::empty({w_hr.has_value() && acc != dtype ? batch : 0, P}, acc_options);
  Tensor h0_c = h0.contiguous();
  dispatch_layer_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename Operands<scalar_t>::acc_t;
    CallScratch scratch;
    acc_t* gates = save_gates ? saved_gates.data_ptr<acc_t>()
                              : scratch.get<acc_t>(kGateBuffer, rows * 4 * H);
    // Weights rearranged once per call into the [inner, out] rows the GEMM streams: W_ih^T,
    // W_hh as gate panels (every step size reads them), W_hr^T.
    // Each panel layout only where some step has rows that read it.
    const bool wide_steps = std::any_of(steps.sizes.begin(), steps.sizes.end(), [](int64_t n) { return n >= 3; });
    const bool narrow_steps = std::any_of(steps.sizes.begin(), steps.sizes.end(), [](int64_t n) { return n == 1 || n == 2; });
    constexpr bool interleaved = kFewRowsInterleaved<scalar_t>;
    const int64_t panels_size = 4 * ((H + kUnitBlock - 1) / kUnitBlock) * padded_inner<scalar_t>(P) * kUnitBlock;
    scalar_t* w_ih_t = scratch.get<scalar_t>(kInputWeights, padded_inner<scalar_t>(I) * 4 * H);
    pack_transposed<scalar_t>(w_ih, w_ih_t);
    scalar_t* panels = nullptr;
    if (wide_steps || (narrow_steps && !interleaved)) {
      panels = scratch.get<scalar_t>(kGatePanels, panels_size);
      gate_panels<scalar_t>(w_hh, H, false, panels);
    }
    scalar_t* few_row_panels = interleaved ? nullptr : panels;
    if (narrow_steps && interleaved) {
      few_row_panels = scratch.get<scalar_t>(kFewRowPanels, panels_size);
      gate_panels<scalar_t>(w_hh, H, true, few_row_panels);
    }
    scalar_t* w_hr_t = nullptr;
    if (w_hr.has_value()) {
      w_hr_t = scratch.get<scalar_t>(kProjectionWeights, padded_inner<scalar_t>(H) * P);
      pack_transposed<scalar_t>(*w_hr, w_hr_t);
    }
    // The gate biases as one row, b_ih + b_hh in acc_t (as the reference adds them).
    acc_t* bias = nullptr;
    if (b_ih.has_value()) {
      bias = scratch.get<acc_t>(kBias, 4 * H);
      const Tensor b1 = b_ih->contiguous(), b2 = b_hh->contiguous();
      const scalar_t* p1 = b1.data_ptr<scalar_t>();
      const scalar_t* p2 = b2.data_ptr<scalar_t>();
      for (int64_t j = 0; j < 4 * H; ++j) bias[j] = acc_t(p1[j]) + acc_t(p2[j]);
    }
    gemm_rows<scalar_t>(rows, 4 * H, I, x2d.data_ptr<scalar_t>(), I, w_ih_t, false, gates, 4 * H, bias);
    forward_recurrence<scalar_t>(steps.offsets, steps.sizes, h0_c, panels, few_row_panels, w_hr_t, gates,
                                 c_state, y, save_cells ? &cells : nullptr, hidden, projected,
                                 hidden_per_row, save_gates);
  });
  Tensor h_n = final_rows(y, h0_c, steps);
  return {packed ? y : y.view({x.size(0), batch, P}), h_n, acc == dtype ? c_state : c_state.to(dtype),
          saved_gates, cells, hidden_per_row ? hidden : at::empty({0}, x.options())};
}

template <typename scalar_t>
void backward_recurrence(const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                         const Tensor* dy,     // [N, P], or nullptr
                         const Tensor& gates,  // [N, 4H] activated
                         const Tensor& cells,  // [N, H] c_t
                         const Tensor& c0,     // [B, H]
                         const Tensor& w_hh,   // [4H, P]: the product's [inner, out] as stored
                         const Tensor* w_hr,   // [P, H], or nullptr
                         Tensor& dh_state,     // [B, P] dh_n in; dL/dh of each row's latest step
                         Tensor& dc_state,     // [B, H] dc_n in; dL/dc likewise
                         Tensor& dh0,          // [B, P] out
                         Tensor& dc0,          // [B, H] out
                         Tensor& dgates,       // [N, 4H] out
                         Tensor* dy_total,     // [N, P] out, or nullptr
                         Tensor& dh_step,      // [B, P] scratch (when dy_total is not kept)
                         Tensor& dh_hidden) {  // [B, H] scratch (with a projection)
  const int64_t H = cells.size(1), P = w_hh.size(1), G = 4 * H;
  const scalar_t* dy_p = dy != nullptr ? dy->data_ptr<scalar_t>() : nullptr;
  const scalar_t* gates_p = gates.data_ptr<scalar_t>();
  const scalar_t* cells_p = cells.data_ptr<scalar_t>();
  const scalar_t* c0_p = c0.data_ptr<scalar_t>();
  const scalar_t* w_hh_p = w_hh.data_ptr<scalar_t>();
  const scalar_t* w_hr_p = w_hr != nullptr ? w_hr->data_ptr<scalar_t>() : nullptr;
  scalar_t* dh_state_p = dh_state.data_ptr<scalar_t>();
  scalar_t* dc_state_p = dc_state.data_ptr<scalar_t>();
  scalar_t* dh0_p = dh0.data_ptr<scalar_t>();
  scalar_t* dc0_p = dc0.data_ptr<scalar_t>();
  scalar_t* dgates_p = dgates.data_ptr<scalar_t>();
  scalar_t* dy_total_p = dy_total != nullptr ? dy_total->data_ptr<scalar_t>() : nullptr;

  for (int64_t k = static_cast<int64_t>(sizes.size()) - 1; k >= 0; --k) {
    const int64_t off = offsets[k], n = sizes[k];
    const int64_t n_prev = k > 0 ? sizes[k - 1] : 0, carried = std::min(n, n_prev);
    // dL/dy_t in full: from the output and from the step after (in processing order).
    scalar_t* dh = dy_total_p != nullptr ? dy_total_p + off * P : dh_step.data_ptr<scalar_t>();
    if (dy_p != nullptr) {
      at::vec::map2<scalar_t>([](auto a, auto b) { return a + b; }, dh, dh_state_p,
                              dy_p + off * P, n * P);
    } else {
      std::copy(dh_state_p, dh_state_p + n * P, dh);
    }
    const scalar_t* dh_cell = dh;  // dL/d(o * tanh(c)): through the projection if any
    if (w_hr_p != nullptr) {
      gemm_rows<scalar_t>(n, H, P, dh, P, w_hr_p, false, dh_hidden.data_ptr<scalar_t>(), H);
      dh_cell = dh_hidden.data_ptr<scalar_t>();
    }
    // Rows that were active one step earlier take their c_{t-1} from it; the rest
    // started from c0, and their dc_{t-1} is dc0's.
    for_each_unit(n, H, [&](int64_t r) {
      const bool from_prev = r < carried;
      return BackwardRow<scalar_t>{
          gates_p + (off + r) * G, cells_p + (off + r) * H,
          from_prev ? cells_p + (offsets[k - 1] + r) * H : c0_p + r * H,
          dh_cell + r * H, dc_state_p + r * H, dgates_p + (off + r) * G, H};
    });
    if (carried < n) {
      std::copy(dc_state_p + carried * H, dc_state_p + n * H, dc0_p + carried * H);
    }
    // dL/dh_{t-1} = dgates_t @ W_hh, for the rows carried on and for those from h0.
    const scalar_t* d_step = dgates_p + off * G;
    gemm_rows<scalar_t>(carried, P, G, d_step, G, w_hh_p, false, dh_state_p, P);
    gemm_rows<scalar_t>(n - carried, P, G, d_step + carried * G, G, w_hh_p, false,
                        dh0_p + carried * P, P);
  }
}

// dy [N, P] or None, dh_n [B, P], dc_n [B, H] (zeros where no gradient came), gates
// [N, 4H] activated, cells [N, H], c0 [B, H], w_hh [4H, P], w_hr [P, H] or None, all in
// the accumulation dtype; batch_sizes and reverse as in forward (the rows dense unless
// batch_sizes is given). Returns dgates [N, 4H], dh0 [B, P], dc0 [B, H] and
// dy_total [N, P] (dL/dy_t through output and recurrence; empty unless want_dy_total).
std::vector<Tensor> backward(const c10::optional<Tensor>& dy, const Tensor& dh_n,
                             const Tensor& dc_n, const Tensor& gates, const Tensor& cells,
                             const Tensor& c0, const Tensor& w_hh, const c10::optional<Tensor>& w_hr,
                             const c10::optional<Tensor>& batch_sizes, bool reverse,
                             bool want_dy_total) {
  TORCH_CHECK_TYPE(gates.scalar_type() == at::kFloat || gates.scalar_type() == at::kDouble,
                   "rnnfast CPU kernel: expected float32 or float64 gates, got ",
                   gates.scalar_type());
  const auto dtype = gates.scalar_type();
  const int64_t rows = gates.size(0), H = cells.size(1), P = w_hh.size(1), batch = c0.size(0);
  check_matrix(gates, "gates", rows, 4 * H, dtype);
  check_matrix(cells, "cells", rows, H, dtype);
  check_matrix(c0, "c0", batch, H, dtype);
  check_matrix(dh_n, "dh_n", batch, P, dtype);
  check_matrix(dc_n, "dc_n", batch, H, dtype);
  check_matrix(w_hh, "w_hh", 4 * H, P, dtype);
  if (dy.has_value()) check_matrix(*dy, "dy", rows, P, dtype);
  if (w_hr.has_value()) check_matrix(*w_hr, "w_hr", P, H, dtype);
  const StepTable steps = make_steps(batch > 0 ? rows / batch : 0, batch, batch_sizes, reverse, rows);

  Tensor dh_state = dh_n.contiguous().clone(), dc_state = dc_n.contiguous().clone();
  Tensor dh0 = at::zeros({batch, P}, gates.options()), dc0 = at::zeros({batch, H}, gates.options());
  Tensor dgates = at::empty({rows, 4 * H}, gates.options());
  Tensor dy_total = at::empty({want_dy_total ? rows : 0, P}, gates.options());
  Tensor dh_step = at::empty({want_dy_total ? 0 : batch, P}, gates.options());
  Tensor dh_hidden = at::empty({w_hr.has_value() ? batch : 0, H}, gates.options());
  Tensor dy_c = dy.has_value() ? dy->contiguous() : Tensor();
  Tensor gates_c = gates.contiguous(), cells_c = cells.contiguous(), c0_c = c0.contiguous();
  Tensor w_hh_c = w_hh.contiguous(), w_hr_c = w_hr.has_value() ? w_hr->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnnfast_cpu_backward", [&] {
    backward_recurrence<scalar_t>(steps.offsets, steps.sizes, dy.has_value() ? &dy_c : nullptr, gates_c,
                                  cells_c, c0_c, w_hh_c, w_hr.has_value() ? &w_hr_c : nullptr,
                                  dh_state, dc_state, dh0, dc0, dgates,
                                  want_dy_total ? &dy_total : nullptr, dh_step, dh_hidden);
  });
  return {dgates, dh0, dc0, dy_total};
}

// mm_into sums its inner index (4H for dx, all T x B rows for a weight gradient) in
// chunks, each added to the output: one chain over 25,600 rows had 10-18x the fp32
// error of torch.mm against float64, beyond DESIGN.md's 2x; in chunks, 0.6-1.5x up to
// 400,000 rows. A chunk is the smallest power of two from 128 whose square reaches
// inner, so that neither the chunks nor the chain of their sums grows long. Each chunk
// costs a tile a round trip of C (AVX2 at 64 a chunk: 8% slower, at 128: 0-5%).
int64_t sum_chunk_for(int64_t inner) {
  int64_t chunk = 128;
  while (chunk * chunk < inner) chunk *= 2;
  return chunk;
}

// out [M, N] = a [M, K] @ b [K, N], through this file's GEMM: a read through its
// strides (a transposed view needs no copy), b and out with unit column stride. The
// backend's input and weight gradients (backends/gradients.py), where torch's BLAS
// would be MKL, which runs AVX2 code on AMD CPUs.
void mm_into(const Tensor& a, const Tensor& b, Tensor& out) {
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
                   "rnnfast CPU mm: expected float32 or float64, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
                    "rnnfast CPU mm: expected a [M, K] and b [K, N], got ", a.sizes(), " and ",
                    b.sizes());
  check_matrix(b, "b", a.size(1), b.size(1), a.scalar_type());
  check_matrix(out, "out", a.size(0), b.size(1), a.scalar_type());
  TORCH_CHECK_VALUE(a.device().is_cpu(), "a: expected a CPU tensor, got one on ", a.device());
  TORCH_CHECK_VALUE((b.stride(1) == 1 || b.size(1) <= 1) && (out.stride(1) == 1 || out.size(1) <= 1),
                    "rnnfast CPU mm: b and out need unit column stride, got strides ",
                    b.strides(), " and ", out.strides());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rnnfast_cpu_mm", [&] {
    gemm<scalar_t>(a.size(0), b.size(1), a.size(1), a.data_ptr<scalar_t>(), a.stride(0),
                   a.stride(1), b.data_ptr<scalar_t>(), b.stride(0), false,
                   out.data_ptr<scalar_t>(), out.stride(0), nullptr, sum_chunk_for(a.size(1)));
  });
}

// One of the cell's activations (`which`: "tanh", "sigmoid" or "exp") applied elementwise
// to x (float32 or float64): lets the tests measure its error against float64 directly.
Tensor cell_activation(const Tensor& x, const std::string& which) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "cell_activation: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(which == "tanh" || which == "sigmoid" || which == "exp",
                    "cell_activation: expected 'tanh', 'sigmoid' or 'exp', got '", which, "'");
  Tensor in = x.contiguous(), result = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "rnnfast_cpu_cell_activation", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = result.data_ptr<scalar_t>();
    for (int64_t i = 0; i < in.numel(); i += V::size()) {
      const int count = static_cast<int>(std::min<int64_t>(V::size(), in.numel() - i));
      const V v = V::loadu(src + i, count);
      (which == "tanh" ? cell_tanh(v) : which == "sigmoid" ? vec_sigmoid(v) : cell_exp(v))
          .store(dst + i, count);
    }
  });
  return result;
}

// forward_team for a layer of `dtype` (for tests: whether a size is split over threads).
int64_t forward_team_for(const std::vector<int64_t>& sizes, int64_t H, int64_t P,
                         c10::ScalarType dtype) {
  check_layer_dtype(dtype);
  int64_t team = 1;
  dispatch_layer_dtype(dtype, [&](auto tag) { team = forward_team<decltype(tag)>(sizes, H, P); });
  return team;
}

}  // namespace
}  // namespace rnnfast_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast fused LSTM layer for the CPU (see csrc/README.md)";
  m.def("forward", &rnnfast_cpu::forward, "LSTM layer forward, one direction");
  m.def("backward", &rnnfast_cpu::backward, "LSTM layer backward: gate gradients, dh0, dc0");
  m.def("mm_into", &rnnfast_cpu::mm_into, "out = a @ b (a any strides; b, out unit column stride)");
  m.def("forward_team", &rnnfast_cpu::forward_team_for,
        "threads the forward of a layer with these step sizes, H and P splits its steps over "
        "(for tests)");
  m.def("cell_activation", &rnnfast_cpu::cell_activation,
        "the cell's tanh, sigmoid or exp, elementwise (for tests)");
}
