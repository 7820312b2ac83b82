// Shared by the forward and backward kernels, and by the host test program
// (csrc/tests/host_check.cu): the cell's pointwise math, the row geometry of a time
// step, the tf32 split, the split of a product over a block's warps and the
// shared-memory layout of a block. Everything here is __host__ __device__ and free of
// torch, so the same code is checked on the CPU against the PyTorch reference
// (tests/test_cuda_sources.py) before any GPU runs it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline
#endif

namespace rnnfast {

// Launch geometry shared with rnnfast/backends/cuda/plan.py (keep them in step; the
// host test compares the two layouts byte for byte).
constexpr int kThreads = 256;      // threads per block: 8 warps, one block per SM
constexpr int kWarps = kThreads / 32;
constexpr int kRowTile = 8;        // batch rows per mma tile: the N of m16n8k16 / m16n8k8
constexpr int kWeightTile = 16;    // weight rows per mma tile: its M
constexpr int kMaxWarpTiles = 8;   // accumulator tiles one warp holds (4 floats per lane each)
constexpr int kMaxCopies = 4;      // accumulator sets a slot may be spread over
constexpr int kMaxCellItems = 4;   // (batch row, unit) cells a thread holds in registers per round
constexpr int kRegCellItems = 2;   // ... in register plans, whose registers go to W_hh fragments
constexpr int kExchangeAlign = 16; // exchange rows (h, dgates, dh) padded to 16 elements
constexpr int kRingBytes = 64 * 1024;  // shared memory for a streamed operand's stages
constexpr int kAlign = 128;        // bytes: every shared-memory region starts aligned
constexpr int kMaxCluster = 16;    // CTAs a cluster may have (the non-portable size, sm_90)
constexpr int kRegTiles = 3;       // register plans, forward: W_hh M tiles a warp holds
constexpr int kRegKTiles = 13;     // ... and k-tiles of each (3 x 13 A fragments: 156 registers)
constexpr int kChainRegTiles = 1;  // register plans, backward: W_hh^T M tiles a warp holds
constexpr int kChainRegKTiles = 32;  // ... and k-tiles of it (128 registers)
constexpr int kReduceAlign = 16;   // reduce splits: a CTA's gate columns, a multiple of this
constexpr int kStageChunks = 4;    // register grid backwards by multicast: mbarriers the staged
                                   // gate gradients land on, chunk by chunk (stage_chunks)
static_assert(kStageChunks * 8 <= kAlign, "the multicast stage's mbarriers fit the layout's");

RNNFAST_HD int cdiv(int a, int b) { return (a + b - 1) / b; }
RNNFAST_HD int round_up(int a, int b) { return cdiv(a, b) * b; }
RNNFAST_HD int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
RNNFAST_HD int min_int(int a, int b) { return a < b ? a : b; }
RNNFAST_HD int max_int(int a, int b) { return a > b ? a : b; }
RNNFAST_HD size_t align_bytes(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// K of one mma: m16n8k16 for 16-bit inputs, m16n8k8 (tf32, three times: 3xTF32) for fp32.
RNNFAST_HD int k_tile(int itemsize) { return itemsize == 2 ? 16 : 8; }
// Elements of 16 bytes: added to every shared-memory row so that the 8 rows an
// ldmatrix or a fragment load touches fall in different banks.
RNNFAST_HD int row_pad(int itemsize) { return 16 / itemsize; }
// Elements per row of an exchange buffer in global memory ([B][ld], zero-padded): a
// multiple of 16 elements, so rows are 16-byte aligned for cp.async and the padding
// covers the k-tile.
RNNFAST_HD int exchange_ld(int cols) { return round_up(cols, kExchangeAlign); }

// ---------------------------------------------------------------------------------
// The cell. A different cell type changes these two functions (and the gate count),
// not the kernels' loops. Full-precision expf/tanhf: the reference uses torch's
// sigmoid/tanh, and the fast intrinsics would cost accuracy for little time here.

RNNFAST_HD float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

struct CellOut {
  float i, f, g, o;  // activated gates
  float c, h;        // c(t) and h(t) = o * tanh(c(t))
};

RNNFAST_HD CellOut lstm_cell(float pre_i, float pre_f, float pre_g, float pre_o, float c_prev) {
  CellOut out;
  out.i = sigmoid_f(pre_i);
  out.f = sigmoid_f(pre_f);
  out.g = tanhf(pre_g);
  out.o = sigmoid_f(pre_o);
  out.c = out.f * c_prev + out.i * out.g;
  out.h = out.o * tanhf(out.c);
  return out;
}

struct CellGrad {
  float d_i, d_f, d_g, d_o;  // dL/d(pre-activations)
  float dc_prev;             // dL/dc(t-1)
};

// Saved gates, c(t), c(t-1), dL/dh(t) and the dL/dc(t) carried from t+1.
RNNFAST_HD CellGrad lstm_cell_backward(float i, float f, float g, float o, float c,
                                       float c_prev, float dh, float dc_carried) {
  const float tanh_c = tanhf(c);
  const float dc = dc_carried + dh * o * (1.0f - tanh_c * tanh_c);
  CellGrad out;
  out.d_i = dc * g * i * (1.0f - i);
  out.d_f = dc * c_prev * f * (1.0f - f);
  out.d_g = dc * i * (1.0f - g * g);
  out.d_o = dh * tanh_c * o * (1.0f - o);
  out.dc_prev = dc * f;
  return out;
}

// ---------------------------------------------------------------------------------
// 3xTF32: an fp32 value as big + small, each exactly representable in tf32 (10
// mantissa bits), so that a*b ~ big_a*big_b + big_a*small_b + small_a*big_b keeps
// ~21 bits where one tf32 product keeps 10. Round to nearest, ties away (cvt.rna);
// Inf and NaN pass through unchanged. The same bit arithmetic runs in the kernels and
// in the host check, which measures the split's error growth against float64.

// The bits of x as a To of the same size (memcpy: host and device alike; nvcc makes it a
// register move).
template <typename To, typename From>
RNNFAST_HD To bit_cast(const From& x) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To y;
  memcpy(&y, &x, sizeof(To));
  return y;
}

RNNFAST_HD float tf32_round(float x) {
  const uint32_t u = bit_cast<uint32_t>(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  return bit_cast<float>((u + 0x1000u) & 0xffffe000u);
}

struct Tf32Split {
  float big, small;
};

RNNFAST_HD Tf32Split tf32_split(float x) {
  Tf32Split s;
  s.big = tf32_round(x);
  s.small = tf32_round(x - s.big);
  return s;
}

// ---------------------------------------------------------------------------------
// Rows of a time step. The layer input is time-major rows (dense [T*B, I], or packed
// data [N, I] with the batch sorted by decreasing length); the rows active at a step
// are always a prefix of the batch. Row r of processed step k continues from row r of
// step k-1 when r < size_prev, else it starts from h0[r], c0[r] (reverse direction of a
// packed batch). Mirrors rnnfast/backends/steps.py and triton/cell.py:step_rows.

struct StepRows {
  int64_t offset;       // first row of this step
  int64_t offset_prev;  // first row of the step processed before it
  int size;             // active rows of this step
  int size_prev;        // active rows of the previous processed step (0 before the first)
};

RNNFAST_HD StepRows step_rows(const int64_t* offsets,  // [T] packed: processing order, or null
                              const int32_t* sizes,    // [T] packed: processing order, or null
                              int64_t k, int64_t steps, int batch, bool reverse) {
  StepRows s;
  if (offsets != nullptr) {
    const int64_t k_prev = k > 0 ? k - 1 : 0;
    s.offset = offsets[k];
    s.size = sizes[k];
    s.offset_prev = offsets[k_prev];
    s.size_prev = k > 0 ? sizes[k_prev] : 0;
  } else {
    const int64_t t = reverse ? steps - 1 - k : k;
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    s.offset = t * batch;
    s.offset_prev = t_prev * batch;
    s.size = batch;
    s.size_prev = k > 0 ? batch : 0;
  }
  return s;
}

// Backward: rows below `carried` pass their gradient on to the previous step; rows
// from there up to `size` started from (h0, c0) and write dh0 / dc0.
RNNFAST_HD int carried_rows(const StepRows& s) { return s.size < s.size_prev ? s.size : s.size_prev; }

// Active rows of a step inside the batch block [row0, row0 + block_rows).
RNNFAST_HD int block_active(int size, int row0, int block_rows) {
  return clamp_int(size - row0, 0, block_rows);
}

// ---------------------------------------------------------------------------------
// Work split. Block (slice j, batch block q) owns hidden units [j*U, (j+1)*U) of batch
// rows [q*Bb, (q+1)*Bb); the blocks of one batch block exchange h(t) (forward) or the
// gate gradients (backward) every step. Forward: the block holds the 4U rows of W_hh of
// its units, in gate-major order m = gate*U + u, and with a projection `proj_cols` rows
// of W_hr. Backward: it holds W_hh's columns of its units transposed (W_hh^T rows), or
// with a projection `proj_cols` columns of W_hh and W_hr's columns of its units.

// Global gate row of local row m of a block that owns `units` units from unit0.
RNNFAST_HD int gate_row(int m, int units, int unit0, int hidden) {
  return (m / units) * hidden + unit0 + m % units;
}

// One product of a step: out[M][Nb] = A[M][K] . B[Nb][K]^T, with A (weights) resident
// in shared memory for the whole sequence and B (activations of the batch block)
// staged per step, in `chunks` pieces of `chunk` columns through a ring of
// `stages` buffers (or read in place when the block holds it whole: cluster plans).
// Orientation: the weights are the mma's M (16-row tiles) and the batch its N (8-row
// tiles), so a small batch pads to 8, not 16; or, `swapped`, the batch is the M and
// the weights the N, so a slice of a few rows (the backward's units) pads to 8. Each
// product takes the orientation with fewer output tiles (the weights' on a tie).
// A warp's item is one M tile with a group of up to kMaxWarpTiles N tiles: per k-tile
// it loads the M-side fragment once and issues one mma per N tile into independent
// accumulators (that fragment read once per group). When there are fewer items than
// warps, `ksplit` warps share an item, each taking every ksplit-th k-tile; their
// partial sums are added in the epilogue. A warp with few slots keeps `copies` sets of
// accumulators that take its k-tiles in turn, so that consecutive mma are independent
// (a k-tile's mma waits only for the one `copies` k-tiles back); the sets are added
// before the partial sums are written.
struct Product {
  int m;        // A (weight) rows held, padded to the tile of their side (16, or 8 swapped)
  int k;        // reduction length padded to the k-tile
  int a_ld;     // elements per A row in shared memory (k + 16 bytes)
  int nb;       // B (batch) rows, padded to the tile of their side (8, or 16 swapped)
  int chunk;    // B columns per stage (a multiple of the k-tile)
  int chunks;   // ceil(k / chunk)
  int stages;   // 1 (B staged whole) or 2 (double-buffered chunks)
  int b_ld;     // elements per staged B row (chunk + 16 bytes)
  bool swapped; // the batch is the mma's M
  int m_tiles;  // mma M tiles: m / 16, or nb / 16 swapped
  int n_tiles;  // mma N tiles: nb / 8, or m / 8 swapped
  int groups;   // N-tile groups per M tile (a warp item: one M tile, one group)
  int group;    // N tiles per group (the last may have fewer)
  int items;    // m_tiles * groups * ksplit: work items over the warps
  int ksplit;   // warps per (M tile, group)
  int slots;    // accumulator tiles a warp needs for its items: ceil(items / 8) * group
  int copies;   // accumulator sets per slot (1-4): k-tiles go to them in turn
};

RNNFAST_HD Product make_product(int m_real, int k_real, int rows, int itemsize, bool b_resident) {
  Product p;
  const int kt = k_tile(itemsize);
  const int weights_m = cdiv(m_real, kWeightTile) * cdiv(rows, kRowTile);
  const int batch_m = cdiv(rows, kWeightTile) * cdiv(m_real, kRowTile);
  p.swapped = m_real > 0 && batch_m < weights_m;
  p.m = round_up(m_real, p.swapped ? kRowTile : kWeightTile);
  p.nb = round_up(rows, p.swapped ? kWeightTile : kRowTile);
  p.m_tiles = p.swapped ? p.nb / kWeightTile : p.m / kWeightTile;
  p.n_tiles = p.swapped ? p.m / kRowTile : p.nb / kRowTile;
  p.k = round_up(k_real, kt);
  p.a_ld = p.k + row_pad(itemsize);
  if (b_resident || (size_t)p.nb * (p.k + row_pad(itemsize)) * itemsize <= (size_t)kRingBytes) {
    p.chunk = p.k;
  } else {  // two stages of the largest multiple of 4 k-tiles that fits the ring
    const int fit = kRingBytes / (2 * p.nb * itemsize) - row_pad(itemsize);
    p.chunk = max_int(fit / (4 * kt) * (4 * kt), kt);
  }
  p.chunks = p.k > 0 ? cdiv(p.k, p.chunk) : 0;  // 0: no product (a layer without projection)
  p.stages = p.chunks <= 1 ? 1 : 2;
  p.b_ld = p.chunk + row_pad(itemsize);
  // The fewest groups whose accumulators fit a warp: each extra group re-reads the
  // M-side fragment.
  p.groups = 1;
  while (p.groups < p.n_tiles &&
         cdiv(p.m_tiles * p.groups, kWarps) * cdiv(p.n_tiles, p.groups) > kMaxWarpTiles)
    ++p.groups;
  p.group = cdiv(p.n_tiles, p.groups);
  const int work = p.m_tiles * p.groups;
  p.ksplit = work >= kWarps ? 1 : clamp_int(kWarps / max_int(work, 1), 1, p.chunk / kt);
  p.items = work * p.ksplit;
  p.slots = cdiv(p.items, kWarps) * p.group;
  p.copies = clamp_int(kMaxWarpTiles / max_int(p.slots, 1), 1, kMaxCopies);
  return p;
}

// Whether a warp can hold its share of a product's accumulators.
RNNFAST_HD bool product_fits(const Product& p) {
  return p.slots <= kMaxWarpTiles;
}

// A warp's share of a product (lstm_device.cuh resident_product): its k-slice, and
// for accumulator s = copy * p.slots + slot the word slot_word(p, warp, s): M origin
// (bits 0-15), N origin (16-27), copy (28-29), loads its item's M-side fragment (30);
// kUnusedSlot for none. Slot `slot` is N tile slot % group of the warp's item
// slot / group (items warp, warp + 8, ...); copy c takes the c-th of every `copies` of
// the warp's k-tiles.
constexpr uint32_t kUnusedSlot = 0xffffffffu;

// The fields of a slot word.
RNNFAST_HD int slot_m0(uint32_t word) { return (int)(word & 0xffffu); }
RNNFAST_HD int slot_n0(uint32_t word) { return (int)((word >> 16) & 0xfffu); }
RNNFAST_HD int slot_copy(uint32_t word) { return (int)((word >> 28) & 3u); }
RNNFAST_HD bool slot_loads_fragment(uint32_t word) { return (word >> 30) & 1u; }
// Which N-side fragment a slot multiplies in a round: its N origin and copy (the copy
// fixes the k-tile). Consecutive slots with the same one share a load.
RNNFAST_HD uint32_t slot_n_side(uint32_t word) { return word & 0x3fff0000u; }

RNNFAST_HD int warp_kslice(const Product& p, int warp) {
  return warp < p.items ? warp / (p.m_tiles * p.groups) : 0;
}

RNNFAST_HD uint32_t slot_word(const Product& p, int warp, int s) {
  const int work = p.m_tiles * p.groups;
  const int slot = s % p.slots, copy = s / p.slots;
  const int item = warp + (slot / p.group) * kWarps, t = slot % p.group;
  const int rest = item % work, n_tile = (rest % p.groups) * p.group + t;
  if (copy >= p.copies || item >= p.items || n_tile >= p.n_tiles) return kUnusedSlot;
  return (uint32_t)((rest / p.groups) * kWeightTile) | ((uint32_t)(n_tile * kRowTile) << 16) |
         ((uint32_t)copy << 28) | ((uint32_t)(t == 0) << 30);
}

// Where output (weight row w, batch row b) of k-slice ks lives in the partial sums
// [ksplit][m][nb], in either orientation.
RNNFAST_HD size_t part_index(const Product& p, int ks, int w, int b) {
  return ((size_t)ks * p.m + w) * p.nb + b;
}

// ---------------------------------------------------------------------------------
// Fragment geometry of the mma tiles (lstm_device.cuh load_a / load_b /
// resident_product address shared memory through these). lane = 4 * group + quad.
// csrc/tests/host_check.cu ("fragments") emulates ldmatrix and mma from the PTX ISA's
// own layout formulas on these addresses and checks the products.

struct Coord {
  int row, col;
};

// ldmatrix.x4 of the 16 x 16 (16-bit) tile at (m0, k0): the row this lane addresses.
// Lanes 0-15 give rows 0-15 at k0, lanes 16-31 rows 0-15 at k0 + 8, which yields the
// A fragment's registers a0a1, a2a3, a4a5, a6a7 in order.
RNNFAST_HD Coord ldmatrix_x4_row(int lane, int m0, int k0) {
  return Coord{m0 + lane % 16, k0 + (lane / 16) * 8};
}
// m16n8k16 B register r (0, 1): its first element at (n, k) of B stored [n][k]; the
// second is (n, k + 1).
RNNFAST_HD Coord b16_fragment(int lane, int n0, int k0, int r) {
  return Coord{n0 + lane / 4, k0 + 2 * (lane % 4) + 8 * r};
}
// m16n8k8 tf32 A register r (0-3): (m, k).
RNNFAST_HD Coord tf32_a_fragment(int lane, int m0, int k0, int r) {
  return Coord{m0 + lane / 4 + 8 * (r % 2), k0 + lane % 4 + 4 * (r / 2)};
}
// m16n8k8 tf32 B register r (0, 1): (n, k) of B stored [n][k].
RNNFAST_HD Coord tf32_b_fragment(int lane, int n0, int k0, int r) {
  return Coord{n0 + lane / 4, k0 + lane % 4 + 4 * r};
}
// Accumulator register r (0-3) of a lane: (m, n) of the 16 x 8 tile at (m0, n0).
RNNFAST_HD Coord accumulator(int lane, int m0, int n0, int r) {
  return Coord{m0 + lane / 4 + 8 * (r / 2), n0 + 2 * (lane % 4) + r % 2};
}

RNNFAST_HD size_t a_bytes(const Product& p, int itemsize) {
  return align_bytes((size_t)p.m * p.a_ld * itemsize);
}
RNNFAST_HD size_t ring_bytes(const Product& p, int itemsize) {
  return align_bytes((size_t)p.stages * p.nb * p.b_ld * itemsize);
}
// Cluster plans: the exchanged operand held whole, [2][p.nb][p.b_ld] by step parity.
RNNFAST_HD size_t exchange_bytes(const Product& p, int itemsize) {
  return align_bytes((size_t)2 * p.nb * p.b_ld * itemsize);
}
// Sets of partial sums a product leaves: one per k-slice, its ksplit or (register plans,
// reg_product) its reg_slices.
RNNFAST_HD int part_sets(const Product& p, int reg_slices = 0) {
  return reg_slices > 0 ? reg_slices : p.ksplit;
}
// Partial sums [part_sets][m][nb].
RNNFAST_HD size_t part_bytes(const Product& p, int reg_slices = 0) {
  return align_bytes((size_t)part_sets(p, reg_slices) * p.m * p.nb * 4);
}

// Cluster plans' exchange (sm_90). After a step each CTA has its columns of the
// exchanged operand in its own buffer (h(t): one segment of its units; the gate
// gradients: four, one per gate, `hidden` apart) and copies them into the same place in
// every peer's buffer in words of exchange_word_bytes, each store completing on the
// peer's mbarrier (st.async); a CTA's wait expects what all its peers send. A word is
// 8 bytes where every segment starts 8-byte aligned (a slice starts at a multiple of 4
// units), else 4: plan.py keeps the backward's cluster plans to hidden * itemsize a
// multiple of 4, and binding.cpp checks it.
RNNFAST_HD int exchange_word_bytes(int segment_stride, int itemsize) {
  return segment_stride * itemsize % 8 == 0 ? 8 : 4;
}
// Columns of each segment a CTA with `units` units sends: whole words. The columns past
// its units are k-padding (zeros), never another CTA's, since slices hold multiples of
// 4 units and the backward's words never straddle a gate (see above).
RNNFAST_HD int exchange_cols(int units, int word_bytes, int itemsize) {
  return round_up(units, word_bytes / itemsize);
}
// Bytes of one row that a CTA holding `my_units` of the layer's `hidden` units receives
// from its peers: every slice's columns but its own (slices of multiples of 4 units tile
// round_up(hidden, word) exactly; tests/host_check.cu sums them slice by slice).
RNNFAST_HD unsigned peer_row_bytes(int hidden, int my_units, int segments, int word_bytes,
                                   int itemsize) {
  return (unsigned)(segments * itemsize *
                    (exchange_cols(hidden, word_bytes, itemsize) -
                     exchange_cols(my_units, word_bytes, itemsize)));
}

// Launch shape of a layer, as the plan chose it.
struct Split {
  int units;         // U: hidden units per block
  int proj_cols;     // projection rows (forward) / W_hh columns (backward) per block, 0 without
  int unit_slices;   // blocks per batch block
  int block_rows;    // Bb: batch rows per batch block (a multiple of 8)
  int cluster;       // 0: grid kernel; else CTAs per cluster (== unit_slices), sm_90
  int multicast;     // grid kernel on sm_90: CTAs per cluster (divides unit_slices) sharing
                     // each single-chunk staged operand by multicast bulk copies; 0: none
  int reg_k_tiles;   // register plans (16-bit, one N tile: at most 8 rows a block): k-tiles
                     // per k-slice of the recurrent weights kept in registers (reg_slices
                     // below); 0: the whole slice in shared memory
  int reduce_ctas;   // grid backward on sm_90 without a projection: CTAs per cluster
                     // (consecutive slices of one batch block) splitting the chain's
                     // reduction over the gate columns (reduce_cols below); 0: none
  int pass_rows;     // grid forward without a projection, multicast or registers: batch
                     // rows a pass (a multiple of 8 below block_rows); the block takes its
                     // rows in passes of this many each step; 0: one pass
};

// Rows of one pass of the forward's product (Split::pass_rows): a batch block whose rows'
// product does not fit a block at once (accumulators, partial sums) takes them in passes,
// re-reading its resident weights once a pass; its cell state still holds every row.
RNNFAST_HD int forward_pass_rows(const Split& sp) {
  return sp.pass_rows > 0 ? sp.pass_rows : sp.block_rows;
}

// Reduce splits (backward): the chain's product dh^T = W_hh^T . dgates^T sums over the 4H
// gate columns. A cluster of c CTAs splits that sum: CTA r holds W_hh^T rows of all the
// cluster's c x U units for gate columns [r * reduce_cols, + reduce_cols) and stages only
// those columns of the gate gradients; after a cluster barrier each CTA adds its own
// units' partial sums from every CTA's shared memory (DSMEM). A block stages 1/c of the
// 4H-wide rows a step, which at large batches is what bounds the grid's step.
RNNFAST_HD int reduce_cols(int hidden, int ctas) {
  return round_up(cdiv(4 * hidden, ctas), kReduceAlign);
}
// The gate columns CTA `rank` of a reduce split multiplies (the last CTA's may be fewer).
RNNFAST_HD int reduce_real_cols(int hidden, int ctas, int rank) {
  return clamp_int(4 * hidden - rank * reduce_cols(hidden, ctas), 0, reduce_cols(hidden, ctas));
}

// Register plans (fp16/bf16, at most 8 batch rows): a block keeps the first reg_cols
// columns of its recurrent weight slice in registers, as mma A fragments loaded once,
// and the rest in shared memory: a step reads fewer weight bytes from shared memory,
// and a block holds slices that shared memory alone cannot. Forward: cluster plans, the
// W_hh rows of the CTA's units; backward: grid plans without a projection and cluster
// plans, the W_hh columns of the block's units (W_hh^T rows). They are `slices` k-slices of
// sp.reg_k_tiles k-tiles, interleaved: k-tile kk of slice g is column k-tile
// kk * slices + g (reg_k_tile), so that the slices' first k-tiles are the operand's
// first columns (a grid backward multiplies them while the rest is still being staged:
// stage_chunk_cols). The warps are split into `slices` groups of kWarps / slices,
// and warp r of group g holds M tiles r, r + kWarps / slices, ... (at most `tiles`:
// kRegTiles forward, kChainRegTiles backward) of k-slice g. The shared-memory columns
// are split between the k-slices too (reg_rest_tiles). Per step each warp multiplies its
// fragments, then its k-slice's shared-memory columns of the same M tiles, by the
// matching columns of the exchanged operand into one sum per M tile (reg_product),
// written as k-slice g of the partial sums.
// The most k-slices whose warps, `tiles` M tiles each, still cover every M tile (0: none
// can).
RNNFAST_HD int reg_slices(int m_tiles, int tiles) {
  if (m_tiles > tiles * kWarps) return 0;
  int slices = kWarps;
  while (slices > 1 && m_tiles > tiles * (kWarps / slices)) slices /= 2;
  return slices;
}
RNNFAST_HD int reg_slice(int slices, int warp) { return warp / (kWarps / slices); }
// The operand's k-tile (column / k_tile) of k-tile kk of register k-slice g.
RNNFAST_HD int reg_k_tile(int slices, int g, int kk) { return kk * slices + g; }
// Accumulator copies a warp of `tiles` register M tiles spreads its k-tiles over
// (reg_product): enough that consecutive mma do not wait for each other.
RNNFAST_HD constexpr int reg_copies(int tiles) {
  return tiles >= kMaxCopies ? 1 : kMaxCopies / tiles;
}
// [first, end) of k-tiles or columns.
struct Range {
  int first, end;
};
// The shared-memory k-tiles of a register plan's k-slice g: [first, end) of the k-tiles
// of `rest` (its shared-memory part, columns reg_cols.. of the operand), split between
// the k-slices as evenly as contiguous runs can be.
RNNFAST_HD Range reg_rest_tiles(const Product& rest, int slices, int g, int itemsize) {
  const int tiles = rest.k / k_tile(itemsize);
  return {g * tiles / slices, (g + 1) * tiles / slices};
}
// M origin of a warp's register tile j (may be past the product's M: no tile).
RNNFAST_HD int reg_m0(int slices, int warp, int j) {
  const int per = kWarps / slices;
  return (warp % per + j * per) * kWeightTile;
}

// Register grid backwards staged by multicast (sm_90): the gate gradients arrive in
// column chunks, each completing on its own mbarrier, and a warp multiplies a chunk's
// k-tiles as soon as it has landed, while the later chunks are still in flight. Each
// chunk but the last holds q = stage_chunk_rounds register rounds, chunk c rounds
// [c * q, (c + 1) * q) (round kk: k-tile kk of every k-slice, reg_k_tile); the last
// holds the shared-memory part, columns [reg_cols, reg_cols + rest_k). At most
// kStageChunks chunks.
RNNFAST_HD int stage_chunk_rounds(int reg_k_tiles) {
  return cdiv(reg_k_tiles, kStageChunks - 1);
}
RNNFAST_HD int stage_chunks(int reg_k_tiles) {
  return cdiv(reg_k_tiles, stage_chunk_rounds(reg_k_tiles)) + 1;
}
// Columns [first, end) of chunk c.
RNNFAST_HD Range stage_chunk_cols(int slices, int reg_k_tiles, int rest_k, int itemsize, int c) {
  const int round_cols = slices * k_tile(itemsize), q = stage_chunk_rounds(reg_k_tiles);
  const int reg_cols = reg_k_tiles * round_cols;
  if (c + 1 == stage_chunks(reg_k_tiles)) return {reg_cols, reg_cols + rest_k};
  return {c * q * round_cols, min_int((c + 1) * q, reg_k_tiles) * round_cols};
}

// Shared memory of a forward block, in bytes from the (128-byte aligned) base.
struct ForwardLayout {
  Product rec;        // gates^T [4U][Bb] = W_hh[my gate rows] . h(t-1)^T; register plans: its
                      // shared-memory part, columns [reg_cols, K) (b_ld: h's whole row)
  int reg_slices;     // register plans: k-slices in registers (reg_slices()), else 0
  int reg_cols;       // ... and the columns they cover: reg_slices x reg_k_tiles k-tiles
  Product proj;       // y^T [Pc][Bb] = W_hr[my rows] . hidden^T (projection only)
  size_t w_off;       // A of rec: [rec.m][rec.a_ld] io
  size_t wr_off;      // A of proj: [proj.m][proj.a_ld] io
  size_t ring_off;    // B of rec / proj: ring stages, or (cluster) h [2][rec.nb][rec.b_ld] io
  size_t part_off;    // partial sums [part_sets][m][Bb] fp32
  size_t c_off;       // cell state [Bb][U] fp32
  size_t bar_off;     // mbarriers: (multicast) the one the staged operand's bulk copies complete
                      // on; (cluster) two, by step parity, the peers' exchange stores complete on
  size_t bytes;
};

RNNFAST_HD ForwardLayout forward_layout(int hidden, int out_size, bool has_proj, int itemsize,
                                        const Split& sp) {
  ForwardLayout L;
  const bool cluster = sp.cluster > 0;
  const bool regs = cluster && sp.reg_k_tiles > 0;
  L.reg_slices = regs ? reg_slices(cdiv(4 * sp.units, kWeightTile), kRegTiles) : 0;
  L.reg_cols = L.reg_slices * sp.reg_k_tiles * k_tile(itemsize);
  L.rec = make_product(4 * sp.units, max_int(out_size - L.reg_cols, 0), forward_pass_rows(sp),
                       itemsize, cluster);
  if (L.reg_cols > 0) L.rec.b_ld = round_up(out_size, k_tile(itemsize)) + row_pad(itemsize);
  L.proj = make_product(has_proj ? sp.proj_cols : 0, has_proj ? hidden : 0, sp.block_rows,
                        itemsize, false);
  const size_t ring = cluster ? exchange_bytes(L.rec, itemsize) : ring_bytes(L.rec, itemsize);
  const size_t part = part_bytes(L.rec, L.reg_slices);
  L.w_off = 0;
  L.wr_off = L.w_off + a_bytes(L.rec, itemsize);
  L.ring_off = L.wr_off + (has_proj ? a_bytes(L.proj, itemsize) : 0);
  const size_t proj_ring = has_proj ? ring_bytes(L.proj, itemsize) : 0;
  L.part_off = L.ring_off + (ring > proj_ring ? ring : proj_ring);
  const size_t proj_part = has_proj ? part_bytes(L.proj) : 0;
  L.c_off = L.part_off + (part > proj_part ? part : proj_part);
  L.bar_off = L.c_off + align_bytes((size_t)sp.block_rows * sp.units * 4);
  L.bytes = L.bar_off + (sp.multicast > 0 || cluster ? kAlign : 0);
  return L;
}

// Whether the forward kernels take a plan's row passes (none: always): a grid plan
// without a projection, multicast (a pass's copies would land in the CTAs of the cluster
// while they still read the pass before) or registers, passes of a multiple of 8 rows
// below the batch block's.
RNNFAST_HD bool passes_ok(const Split& sp, bool has_proj) {
  return sp.pass_rows == 0 ||
         (sp.cluster == 0 && sp.multicast == 0 && sp.reg_k_tiles == 0 && !has_proj &&
          sp.pass_rows % kRowTile == 0 && sp.pass_rows > 0 && sp.pass_rows < sp.block_rows);
}

// Whether the kernel handles a plan's register split (no registers: always): a cluster
// forward of 16-bit weights with one N tile (at most 8 batch rows, not swapped), its M
// tiles covered by the warps, at most kRegKTiles k-tiles a slice, and a k-slice no
// wider than the shared-memory part it is staged through (load_reg_weights), which so
// keeps at least one k-tile of its own.
RNNFAST_HD bool reg_split_ok(const ForwardLayout& L, const Split& sp, int itemsize) {
  return sp.reg_k_tiles == 0 ||
         (sp.cluster > 0 && itemsize == 2 && !L.rec.swapped && L.rec.n_tiles == 1 &&
          L.reg_slices > 0 && sp.reg_k_tiles <= kRegKTiles &&
          L.rec.k >= sp.reg_k_tiles * k_tile(itemsize));
}

// Shared memory of a backward block. The chain's operand (gate gradients, and dh with a
// projection) is exchanged in the layer's dtype for 16-bit layers (tensor cores, fp32
// accumulation) and in fp32 with the 3xTF32 split for fp32 layers. Cluster plans (no
// projection) hold the batch block's gate gradients whole, by step parity, where grid
// plans stage them through the ring.
struct BackwardLayout {
  Product chain;      // dh^T [cols][Bb] = W_hh[:, my cols]^T . dgates^T; register plans: its
                      // shared-memory part, dgates columns [reg_cols, 4H) (b_ld: a whole row)
  int reg_slices;     // register plans: k-slices in registers (reg_slices()), else 0
  int reg_cols;       // ... and the columns they cover: reg_slices x reg_k_tiles k-tiles
  Product proj;       // dh_units^T [U][Bb] = W_hr[:, my units]^T . (dh + dy)^T (projection only)
  size_t w_off;       // A of chain: [chain.m][chain.a_ld] io (rows: W_hh columns)
  size_t wr_off;      // A of proj: [proj.m][proj.a_ld] io (rows: W_hr columns)
  size_t ring_off;    // B stages of chain / proj, or (cluster) dgates [2][chain.nb][chain.b_ld] io
  size_t part_off;    // partial sums [part_sets][m][Bb] fp32
  size_t dc_off;      // carried dc [Bb][U] fp32
  size_t dh_off;      // reduce splits: the cluster's sum of my units' dh [U][chain.nb] fp32
  size_t bar_off;     // mbarriers, as in ForwardLayout
  size_t bytes;
};

RNNFAST_HD BackwardLayout backward_layout(int hidden, int out_size, bool has_proj, int itemsize,
                                          const Split& sp) {
  BackwardLayout L;
  const bool cluster = sp.cluster > 0;
  const bool reduce = sp.reduce_ctas > 0;
  // Reduce splits: W_hh^T rows of the cluster's units, over one CTA's gate columns.
  const int chain_rows = reduce ? sp.reduce_ctas * sp.units : has_proj ? sp.proj_cols : sp.units;
  const bool regs = sp.reg_k_tiles > 0 && !reduce;  // (reduce_ok refuses both together)
  L.reg_slices = regs ? reg_slices(cdiv(chain_rows, kWeightTile), kChainRegTiles) : 0;
  L.reg_cols = L.reg_slices * sp.reg_k_tiles * k_tile(itemsize);
  L.chain = make_product(chain_rows,
                         reduce ? reduce_cols(hidden, sp.reduce_ctas)
                                : max_int(4 * hidden - L.reg_cols, 0),
                         sp.block_rows, itemsize, cluster);
  if (L.reg_cols > 0) L.chain.b_ld = round_up(4 * hidden, k_tile(itemsize)) + row_pad(itemsize);
  L.proj = make_product(has_proj ? sp.units : 0, has_proj ? out_size : 0, sp.block_rows, itemsize,
                        false);
  L.w_off = 0;
  L.wr_off = L.w_off + a_bytes(L.chain, itemsize);
  L.ring_off = L.wr_off + (has_proj ? a_bytes(L.proj, itemsize) : 0);
  const size_t ring = cluster ? exchange_bytes(L.chain, itemsize) : ring_bytes(L.chain, itemsize);
  const size_t proj_ring = has_proj ? ring_bytes(L.proj, itemsize) : 0;
  L.part_off = L.ring_off + (ring > proj_ring ? ring : proj_ring);
  const size_t part = part_bytes(L.chain, L.reg_slices);
  const size_t proj_part = has_proj ? part_bytes(L.proj) : 0;
  L.dc_off = L.part_off + (part > proj_part ? part : proj_part);
  L.dh_off = L.dc_off + align_bytes((size_t)sp.block_rows * sp.units * 4);
  L.bar_off = L.dh_off + (reduce ? align_bytes((size_t)sp.units * L.chain.nb * 4) : 0);
  L.bytes = L.bar_off + (sp.multicast > 0 || cluster ? kAlign : 0);
  return L;
}

// Whether the backward kernels take a plan's reduce split (none: always): a grid plan
// without a projection, registers or multicast, in clusters of 2-8 CTAs (portable
// sizes) that divide the slices, every CTA's gate columns starting inside the layer's.
RNNFAST_HD bool reduce_ok(const Split& sp, int hidden, bool has_proj) {
  return sp.reduce_ctas == 0 ||
         (sp.cluster == 0 && !has_proj && sp.reg_k_tiles == 0 && sp.multicast == 0 &&
          sp.reduce_ctas >= 2 && sp.reduce_ctas <= 8 && sp.unit_slices % sp.reduce_ctas == 0 &&
          (sp.reduce_ctas - 1) * reduce_cols(hidden, sp.reduce_ctas) < 4 * hidden);
}

// Whether the backward kernels handle a plan's register split (no registers: always):
// no projection, 16-bit weights, one N tile (at most 8 batch rows, not swapped), the
// gate gradients whole in one chunk (grid plans stage them so; a cluster plan's
// exchange holds them whole), the M tiles covered by the warps, at most
// kChainRegKTiles k-tiles a slice, and a k-slice no wider than the shared-memory part
// it is staged through (load_reg_weights).
RNNFAST_HD bool reg_split_ok(const BackwardLayout& L, const Split& sp, int itemsize,
                             bool has_proj) {
  return sp.reg_k_tiles == 0 ||
         (!has_proj && sp.reduce_ctas == 0 && itemsize == 2 && !L.chain.swapped &&
          L.chain.n_tiles == 1 &&
          L.chain.chunks == 1 && L.reg_slices > 0 && sp.reg_k_tiles <= kChainRegKTiles &&
          L.chain.k >= sp.reg_k_tiles * k_tile(itemsize));
}

}  // namespace rnnfast
