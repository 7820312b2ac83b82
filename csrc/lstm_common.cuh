// Shared by the forward and backward kernels, and by the host test program
// (csrc/tests/host_check.cu): the cell's pointwise math, the row geometry of a time
// step and the shared-memory layout of a block. Everything here is __host__ __device__
// and free of torch, so the same code is checked on the CPU against the PyTorch
// reference (tests/test_cuda_sources.py) before any GPU runs it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline
#endif

namespace rnnfast {

// Launch geometry shared with rnnfast/backends/cuda/plan.py (keep them in step; the
// host test compares the two layouts byte for byte).
constexpr int kThreads = 256;  // threads per block: 8 warps
constexpr int kTileRows = 16;  // batch rows per tile: the M of a 16x16x16 WMMA tile
constexpr int kChunk = 128;    // FMA products: reduction columns staged per pass
constexpr int kMaxItems = 8;   // FMA products: output partial sums held per thread
constexpr int kAlign = 128;    // bytes: every shared-memory region starts aligned

RNNFAST_HD int cdiv(int a, int b) { return (a + b - 1) / b; }
RNNFAST_HD int round_up(int a, int b) { return cdiv(a, b) * b; }
RNNFAST_HD int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
RNNFAST_HD size_t align_bytes(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

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

// ---------------------------------------------------------------------------------
// Work split. Forward: block j owns hidden units [j*units, (j+1)*units) -- their four
// gate rows of W_hh, in gate-major order n = gate*units + u -- and, with a projection,
// output columns [j*proj_cols, ...) of W_hr. Backward: block j owns the same kind of
// unit slice for the cell gradient and output columns [j*proj_cols, ...) of dh(t-1).

// Global gate row of local column n of a block that owns `units` units from unit0.
RNNFAST_HD int gate_row(int n, int units, int unit0, int hidden) {
  return (n / units) * hidden + unit0 + n % units;
}

// Items of an FMA product: (k-split, tile row, column) -> one partial sum each.
RNNFAST_HD int fma_ksplit(int cols) { return clamp_int(kThreads / (kTileRows * cols), 1, 8); }
RNNFAST_HD bool fma_fits(int cols) { return kTileRows * cols <= kThreads * kMaxItems; }

// Shared memory of a forward block, in bytes from the (128-byte aligned) base.
struct ForwardLayout {
  bool tensor_cores;  // 16-bit inputs: WMMA; fp32: FMA
  int cols;           // N: gate columns held (4 * units, padded to 16 on tensor cores)
  int k_pad;          // reduction length of the recurrent product (P, padded on tensor cores)
  int w_ld;           // leading dimension of W_hh^T slice [k_pad][w_ld]
  int proj_cols;      // Nc: projection output columns held (padded to 16 on tensor cores)
  int hk_pad;         // reduction length of the projection (H, padded on tensor cores)
  int wr_ld;          // leading dimension of W_hr^T slice [hk_pad][wr_ld]
  int a_ld;           // staged activations [16][a_ld]: full rows (WMMA) or one chunk (FMA)
  int part_ld;        // partial sums [ksplit][16][part_ld] float
  int ksplit, proj_ksplit;
  size_t w_off, wr_off, a_off, part_off, bytes;
};

RNNFAST_HD ForwardLayout forward_layout(int hidden, int out_size, bool has_proj, int itemsize,
                                        int units, int proj_cols) {
  ForwardLayout L;
  L.tensor_cores = itemsize == 2;
  const int warps = kThreads / 32;
  if (L.tensor_cores) {
    // +8 elements (16 bytes) on every leading dimension: rows of a WMMA tile then fall
    // in different shared-memory banks; tiles stay 32-byte aligned as WMMA requires.
    L.cols = round_up(4 * units, 16);
    L.k_pad = round_up(out_size, 16);
    L.w_ld = L.cols + 8;
    L.proj_cols = has_proj ? round_up(proj_cols, 16) : 0;
    L.hk_pad = has_proj ? round_up(hidden, 16) : 0;
    L.wr_ld = L.proj_cols + 8;
    L.a_ld = (L.k_pad > L.hk_pad ? L.k_pad : L.hk_pad) + 8;
    L.part_ld = (L.cols > L.proj_cols ? L.cols : L.proj_cols) + 4;
    L.ksplit = clamp_int(warps / (L.cols / 16), 1, L.k_pad / 16);
    L.proj_ksplit = has_proj ? clamp_int(warps / (L.proj_cols / 16), 1, L.hk_pad / 16) : 1;
  } else {
    L.cols = 4 * units;
    L.k_pad = out_size;
    L.w_ld = L.cols;
    L.proj_cols = has_proj ? proj_cols : 0;
    L.hk_pad = has_proj ? hidden : 0;
    L.wr_ld = L.proj_cols;
    L.a_ld = kChunk;
    L.part_ld = L.cols > L.proj_cols ? L.cols : L.proj_cols;
    L.ksplit = fma_ksplit(L.cols);
    L.proj_ksplit = has_proj ? fma_ksplit(L.proj_cols) : 1;
  }
  const int ks = L.ksplit > L.proj_ksplit ? L.ksplit : L.proj_ksplit;
  const int a_item = L.tensor_cores ? itemsize : 4;
  L.w_off = 0;
  L.wr_off = L.w_off + align_bytes((size_t)L.k_pad * L.w_ld * itemsize);
  L.a_off = L.wr_off + align_bytes((size_t)L.hk_pad * L.wr_ld * itemsize);
  L.part_off = L.a_off + align_bytes((size_t)kTileRows * L.a_ld * a_item);
  L.bytes = L.part_off + align_bytes((size_t)ks * kTileRows * L.part_ld * 4);
  return L;
}

// Shared memory of a backward block. The gradient chain runs in fp32 FMA (like the
// reference, which multiplies by W_hh in the accumulation dtype); weights stay in the
// input dtype on chip and are widened as they are read.
struct BackwardLayout {
  int units;          // U: hidden units of the cell-gradient phase
  int proj_cols;      // Pc: columns of dh(t-1) this block computes
  int ksplit_units;   // FMA k-split of (dh + dy) @ W_hr[:, units] (projection only)
  int ksplit_cols;    // FMA k-split of dgates @ W_hh[:, cols]
  size_t whh_off;     // W_hh[:, cols] [4H][Pc]
  size_t whr_off;     // W_hr[:, units] [P][U] (projection only)
  size_t a_off;       // staged chunk [16][kChunk] float
  size_t part_off;    // partial sums [ksplit][16][max(U, Pc)] float
  size_t bytes;
};

RNNFAST_HD BackwardLayout backward_layout(int hidden, int out_size, bool has_proj, int itemsize,
                                          int units, int proj_cols) {
  BackwardLayout L;
  L.units = units;
  L.proj_cols = proj_cols;
  L.ksplit_units = has_proj ? fma_ksplit(units) : 1;
  L.ksplit_cols = fma_ksplit(proj_cols);
  const int cols = units > proj_cols ? units : proj_cols;
  const int ks = L.ksplit_units > L.ksplit_cols ? L.ksplit_units : L.ksplit_cols;
  L.whh_off = 0;
  L.whr_off = L.whh_off + align_bytes((size_t)4 * hidden * proj_cols * itemsize);
  L.a_off = L.whr_off + (has_proj ? align_bytes((size_t)out_size * units * itemsize) : 0);
  L.part_off = L.a_off + align_bytes((size_t)kTileRows * kChunk * 4);
  L.bytes = L.part_off + align_bytes((size_t)ks * kTileRows * cols * 4);
  return L;
}

}  // namespace rnnfast
