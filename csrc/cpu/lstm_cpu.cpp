// Fused LSTM layer for the CPU: the whole sequential recurrence of one layer and
// direction in one call, forward and backward (the reverse-time dh/dc chain to the gate
// gradients). The Python side (rnnfast/backends/cpu/) owns the step tables and the
// parameter/input gradients, shared with every backend (backends/gradients.py).
//
// What makes it faster than a Python loop over time: per step there is no allocation
// and no dispatcher round trip. The recurrent products write into row blocks of
// buffers allocated once per call: small ones in a register-tiled at::vec kernel,
// larger ones straight in the BLAS torch links (MKL's sgemm_/dgemm_ where libtorch
// exports them: RNNFAST_DIRECT_BLAS); the cell math is vectorized (lstm_cell_cpu.h)
// and split over threads when a step is large enough.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "lstm_cell_cpu.h"

#ifdef RNNFAST_DIRECT_BLAS
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}
#endif

namespace rnnfast_cpu {
namespace {

using at::Tensor;

// Below this many (row, unit) pairs a step's cell math runs on one thread. Not tuned:
// 8192 pairs are ~80 us of cell math, far above the few us of waking the pool.
constexpr int64_t kPointwiseGrain = 8192;

// Up to this many multiply-adds a step's product runs in small_gemm_rows, not BLAS:
// measured on a 2-core EPYC (AVX2), one thread, best of 15: B=1 H=64 1.1 us against
// MKL's 1.35; B=4 H=128 10 against 21; beyond it MKL is as fast or faster (B=32 H=64:
// 14 against 15, B=64 H=256: 0.56 against 1.4 ms).
constexpr int64_t kSmallGemmMacs = int64_t(1) << 18;

// C[kRows, kCols vectors from column j] (+)= A[kRows, inner] @ W[inner, same columns]:
// one tile of independent accumulators, kept in registers while W streams by.
// kFull: all kCols vectors are whole; otherwise the tile is the ragged right edge.
template <typename scalar_t, int kRows, int kCols, bool kFull>
inline void small_gemm_tile(int64_t inner, int64_t cols_left,
                            const scalar_t* a, int64_t lda,   // [kRows, inner]
                            const scalar_t* w, int64_t ldw,   // [inner, >= tile]
                            bool accumulate,
                            scalar_t* c, int64_t ldc) {       // [kRows, >= tile]
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  int count[kCols];
  for (int v = 0; v < kCols; ++v) {
    count[v] = kFull ? int(width) : int(std::clamp<int64_t>(cols_left - v * width, 0, width));
  }
  auto load = [&](const scalar_t* p, int v) {
    return kFull ? V::loadu(p + v * width)
                 : (count[v] > 0 ? V::loadu(p + v * width, count[v]) : V(scalar_t(0)));
  };
  V acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kCols; ++v) acc[r][v] = accumulate ? load(c + r * ldc, v) : V(scalar_t(0));
  }
  for (int64_t p = 0; p < inner; ++p) {
    V w_p[kCols];
    for (int v = 0; v < kCols; ++v) w_p[v] = load(w + p * ldw, v);
    for (int r = 0; r < kRows; ++r) {
      const V a_rp(a[r * lda + p]);
      for (int v = 0; v < kCols; ++v) acc[r][v] = at::vec::fmadd(a_rp, w_p[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kCols; ++v) {
      if (kFull) acc[r][v].store(c + r * ldc + v * width);
      else if (count[v] > 0) acc[r][v].store(c + r * ldc + v * width, count[v]);
    }
  }
}

// kRows rows of C, all columns: whole tiles, then the ragged edge.
template <typename scalar_t, int kRows>
inline void small_gemm_row_block(int64_t out, int64_t inner, const scalar_t* a, int64_t lda,
                                 const scalar_t* w, bool accumulate, scalar_t* c, int64_t ldc) {
  // Enough independent accumulators to hide the FMA latency, few enough to stay in
  // the 16 vector registers next to the W vectors.
  constexpr int kCols = kRows == 1 ? 8 : kRows == 2 ? 4 : 2;
  constexpr int64_t tile = kCols * Vec<scalar_t>::size();
  int64_t j = 0;
  for (; j + tile <= out; j += tile) {
    small_gemm_tile<scalar_t, kRows, kCols, true>(inner, out - j, a, lda, w + j, out, accumulate,
                                                  c + j, ldc);
  }
  if (j < out) {
    small_gemm_tile<scalar_t, kRows, kCols, false>(inner, out - j, a, lda, w + j, out, accumulate,
                                                   c + j, ldc);
  }
}

// C[rows, out] (+)= A[rows, inner] @ W[inner, out], all row-major, W contiguous: the
// register-tiled kernel for the small products of small batches, where a BLAS call
// costs more than the arithmetic.
template <typename scalar_t>
void small_gemm_rows(int64_t rows, int64_t out, int64_t inner,
                     const scalar_t* a, int64_t lda,   // [rows, inner]
                     const scalar_t* w,                // [inner, out]
                     bool accumulate,
                     scalar_t* c, int64_t ldc) {       // [rows, out]
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    small_gemm_row_block<scalar_t, 4>(out, inner, a + r * lda, lda, w, accumulate, c + r * ldc, ldc);
  }
  const scalar_t* a_r = a + r * lda;
  scalar_t* c_r = c + r * ldc;
  switch (rows - r) {
    case 3: small_gemm_row_block<scalar_t, 3>(out, inner, a_r, lda, w, accumulate, c_r, ldc); break;
    case 2: small_gemm_row_block<scalar_t, 2>(out, inner, a_r, lda, w, accumulate, c_r, ldc); break;
    case 1: small_gemm_row_block<scalar_t, 1>(out, inner, a_r, lda, w, accumulate, c_r, ldc); break;
    default: break;
  }
}

// C[rows, out] (+)= A[rows, inner] @ W[inner, out], row-major, W contiguous; every
// matrix may be a row block of a larger buffer (leading dimensions lda, ldc).
template <typename scalar_t>
void gemm_rows(int64_t rows, int64_t out, int64_t inner,
               const scalar_t* a, int64_t lda,      // [rows, inner]
               const scalar_t* w,                   // [inner, out]
               bool accumulate,
               scalar_t* c, int64_t ldc) {          // [rows, out]
  if (rows == 0 || out == 0) return;
  if (rows * out * inner <= kSmallGemmMacs) {
    small_gemm_rows(rows, out, inner, a, lda, w, accumulate, c, ldc);
    return;
  }
  const scalar_t beta = accumulate ? 1 : 0;
#ifdef RNNFAST_DIRECT_BLAS
  // Column-major BLAS sees row-major C^T[out, rows] = W^T A^T, with W^T [out, inner]
  // being W's own memory (ld out) and A^T A's (ld lda).
  const char no_trans = 'N';
  const int m = static_cast<int>(out), n = static_cast<int>(rows), k = static_cast<int>(inner);
  const int ld_w = static_cast<int>(out), ld_a = static_cast<int>(lda), ld_c = static_cast<int>(ldc);
  const scalar_t alpha = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    sgemm_(&no_trans, &no_trans, &m, &n, &k, &alpha, w, &ld_w, a, &ld_a, &beta, c, &ld_c);
  } else {
    dgemm_(&no_trans, &no_trans, &m, &n, &k, &alpha, w, &ld_w, a, &ld_a, &beta, c, &ld_c);
  }
#else
  // Portable path (a torch whose BLAS symbols are not exported): the same product
  // through ATen on views of the same memory; no storage is allocated.
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  Tensor a_view = at::from_blob(const_cast<scalar_t*>(a), {rows, inner}, {lda, 1}, options);
  Tensor w_view = at::from_blob(const_cast<scalar_t*>(w), {inner, out}, {out, 1}, options);
  Tensor c_view = at::from_blob(c, {rows, out}, {ldc, 1}, options);
  c_view.addmm_(a_view, w_view, beta, 1);
#endif
}

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

void check_step_tables(const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                       int64_t rows, int64_t batch) {
  TORCH_CHECK_VALUE(offsets.size() == sizes.size(), "step tables: expected as many offsets as "
                    "sizes, got ", offsets.size(), " offsets and ", sizes.size(), " sizes");
  for (size_t k = 0; k < sizes.size(); ++k) {
    TORCH_CHECK_VALUE(sizes[k] >= 0 && sizes[k] <= batch && offsets[k] >= 0 &&
                      offsets[k] + sizes[k] <= rows,
                      "step ", k, ": expected rows [offset, offset + size) within the ", rows,
                      " input rows and size <= batch ", batch, ", got offset ", offsets[k],
                      " and size ", sizes[k]);
  }
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

template <typename scalar_t>
void forward_recurrence(const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                        const Tensor& h0,
                        const Tensor& w_hh_t,  // [P, 4H]: W_hh^T, the product's [inner, out]
                        const Tensor* w_hr_t,  // [H, P]: W_hr^T, or nullptr
                        Tensor& gates,    // [N, 4H] input projection in, gates out
                        Tensor& c_state,  // [B, H] c0 in, c_n out
                        Tensor& y,        // [N, P] out
                        Tensor* cells,    // [N, H] c_t out, or nullptr
                        Tensor& hidden,   // [N, H] (hidden_per_row) or [B, H] scratch, or empty
                        bool hidden_per_row, bool keep_gates) {
  const int64_t H = c_state.size(1), P = w_hh_t.size(0), G = 4 * H;
  scalar_t* gates_p = gates.data_ptr<scalar_t>();
  scalar_t* c_p = c_state.data_ptr<scalar_t>();
  scalar_t* y_p = y.data_ptr<scalar_t>();
  scalar_t* cells_p = cells != nullptr ? cells->data_ptr<scalar_t>() : nullptr;
  scalar_t* hidden_p = hidden.data_ptr<scalar_t>();
  const scalar_t* h0_p = h0.data_ptr<scalar_t>();
  const scalar_t* w_hh_t_p = w_hh_t.data_ptr<scalar_t>();
  const scalar_t* w_hr_t_p = w_hr_t != nullptr ? w_hr_t->data_ptr<scalar_t>() : nullptr;

  for (size_t k = 0; k < sizes.size(); ++k) {
    const int64_t off = offsets[k], n = sizes[k];
    const int64_t n_prev = k > 0 ? sizes[k - 1] : 0, carried = std::min(n, n_prev);
    scalar_t* g = gates_p + off * G;
    // Rows active one step earlier continue from that step's output; rows that become
    // active here (reverse direction of a packed batch) start from h0.
    if (carried > 0) {
      gemm_rows<scalar_t>(carried, G, P, y_p + offsets[k - 1] * P, P, w_hh_t_p, true, g, G);
    }
    if (carried < n) {
      gemm_rows<scalar_t>(n - carried, G, P, h0_p + carried * P, P, w_hh_t_p, true,
                          g + carried * G, G);
    }
    // Without a projection h_t is y_t itself; with one it goes to hidden first.
    scalar_t* h_out = w_hr_t_p == nullptr ? y_p + off * P : hidden_p + (hidden_per_row ? off * H : 0);
    for_each_unit(n, H, [&](int64_t r) {
      return ForwardRow<scalar_t>{g + r * G, c_p + r * H,
                                  cells_p != nullptr ? cells_p + (off + r) * H : nullptr,
                                  h_out + r * H, H, keep_gates};
    });
    if (w_hr_t_p != nullptr) {
      gemm_rows<scalar_t>(n, P, H, h_out, H, w_hr_t_p, false, y_p + off * P, P);
    }
  }
}

// x2d [N, I], h0 [B, P], c0 [B, H], w_ih [4H, I], w_hh [4H, P], bias [4H] (b_ih + b_hh)
// or None, w_hr [P, H] or None; offsets/sizes [K]: the steps in processing order.
// Returns y [N, P], c_n [B, H], gates [N, 4H] (activated; empty unless save_gates),
// cells [N, H] (c_t; empty unless save_cells), hidden [N, H] (o * tanh(c) before the
// projection; empty unless save_gates with a projection).
std::vector<Tensor> forward(const Tensor& x2d, const Tensor& h0, const Tensor& c0,
                            const Tensor& w_ih, const Tensor& w_hh,
                            const c10::optional<Tensor>& bias, const c10::optional<Tensor>& w_hr,
                            const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                            bool save_gates, bool save_cells) {
  TORCH_CHECK_TYPE(x2d.scalar_type() == at::kFloat || x2d.scalar_type() == at::kDouble,
                   "rnnfast CPU kernel: expected float32 or float64 input, got ",
                   x2d.scalar_type());
  const auto dtype = x2d.scalar_type();
  const int64_t rows = x2d.size(0), I = x2d.size(1), H = c0.size(1), P = h0.size(1);
  const int64_t batch = h0.size(0);
  check_matrix(x2d, "x", rows, I, dtype);
  check_matrix(h0, "h0", batch, P, dtype);
  check_matrix(c0, "c0", batch, H, dtype);
  check_matrix(w_ih, "w_ih", 4 * H, I, dtype);
  check_matrix(w_hh, "w_hh", 4 * H, P, dtype);
  if (w_hr.has_value()) check_matrix(*w_hr, "w_hr", P, H, dtype);
  else TORCH_CHECK_VALUE(P == H, "without w_hr h0 must be [B, H=", H, "], got ", h0.sizes());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == 4 * H,
                      "bias: expected shape [", 4 * H, "], got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == dtype, "bias: expected dtype ", dtype, ", got ",
                     bias->scalar_type());
  }
  check_step_tables(offsets, sizes, rows, batch);

  // The input projection of all steps: one GEMM, off the sequential path. Its buffer
  // then takes each step's recurrent product and, when saved, the activations.
  Tensor gates = bias.has_value() ? at::addmm(*bias, x2d, w_ih.t()) : at::mm(x2d, w_ih.t());
  Tensor c_state = c0.contiguous().clone();
  Tensor y = at::empty({rows, P}, x2d.options());
  Tensor cells = save_cells ? at::empty({rows, H}, x2d.options()) : at::empty({0}, x2d.options());
  const bool hidden_per_row = save_gates && w_hr.has_value();
  Tensor hidden = at::empty({hidden_per_row ? rows : (w_hr.has_value() ? batch : 0), H},
                            x2d.options());
  // Weights transposed once per call, so that every step's product reads them as
  // [inner, out] rows (what the small kernel streams; plain 'N' for BLAS).
  Tensor h0_c = h0.contiguous(), w_hh_t = w_hh.t().contiguous();
  Tensor w_hr_t = w_hr.has_value() ? w_hr->t().contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnnfast_cpu_forward", [&] {
    forward_recurrence<scalar_t>(offsets, sizes, h0_c, w_hh_t, w_hr.has_value() ? &w_hr_t : nullptr,
                                 gates, c_state, y, save_cells ? &cells : nullptr, hidden,
                                 hidden_per_row, save_gates);
  });
  return {y, c_state, save_gates ? gates : at::empty({0}, x2d.options()), cells,
          hidden_per_row ? hidden : at::empty({0}, x2d.options())};
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
// [N, 4H] activated, cells [N, H], c0 [B, H], w_hh [4H, P], w_hr [P, H] or None;
// offsets/sizes [K] as in forward. Returns dgates [N, 4H], dh0 [B, P], dc0 [B, H] and
// dy_total [N, P] (dL/dy_t through output and recurrence; empty unless want_dy_total).
std::vector<Tensor> backward(const c10::optional<Tensor>& dy, const Tensor& dh_n,
                             const Tensor& dc_n, const Tensor& gates, const Tensor& cells,
                             const Tensor& c0, const Tensor& w_hh, const c10::optional<Tensor>& w_hr,
                             const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
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
  check_step_tables(offsets, sizes, rows, batch);

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
    backward_recurrence<scalar_t>(offsets, sizes, dy.has_value() ? &dy_c : nullptr, gates_c,
                                  cells_c, c0_c, w_hh_c, w_hr.has_value() ? &w_hr_c : nullptr,
                                  dh_state, dc_state, dh0, dc0, dgates,
                                  want_dy_total ? &dy_total : nullptr, dh_step, dh_hidden);
  });
  return {dgates, dh0, dc0, dy_total};
}

}  // namespace
}  // namespace rnnfast_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast fused LSTM layer for the CPU (see csrc/README.md)";
  m.def("forward", &rnnfast_cpu::forward, "LSTM layer forward, one direction");
  m.def("backward", &rnnfast_cpu::backward, "LSTM layer backward: gate gradients, dh0, dc0");
  m.attr("direct_blas") =
#ifdef RNNFAST_DIRECT_BLAS
      true;
#else
      false;
#endif
}
