// The LSTM cell's pointwise math on the CPU, vectorized with at::vec: one time step of
// one batch row, over a range of hidden units. Gate rows are i, f, g, o (torch's order).
// Kept apart from the recurrence (lstm_cpu.cpp) so that another cell type is one file.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace rnnfast_cpu {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// e^x for the cell's activations. SLEEF's (libtorch's x.exp()) in general; fp32 with
// AVX-512: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor series to
// r^7 (the r^8 term is under 0.05 ulp there), scaled by 2^n with vscalefps, which also
// gives inf above ~88.7 and 0 (through denormals) below ~-103. 13 instructions, where
// SLEEF's 1-ulp exp with its special-case handling cost about twice the time; at most
// ~2 ulp from float64 (test_cpu_backend.py), like SLEEF's within DESIGN.md §6's fp32 rule.
template <typename scalar_t>
inline Vec<scalar_t> cell_exp(const Vec<scalar_t>& x) {
  return x.exp();
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> cell_exp<float>(const Vec<float>& x) {
  // Clamped first so that +-inf reduce to finite r (inf - inf would be NaN); min/max
  // with the input second keep a NaN input.
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-104.f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 in two parts: the first has 16 significant bits, so n * it is exact for |n| <= 256.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return Vec<float>(_mm512_scalef_ps(p, n));
}
#endif

template <typename scalar_t>
inline Vec<scalar_t> vec_sigmoid(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  return one / (one + cell_exp(x.neg()));
}

// tanh of the cell. fp64: SLEEF's. fp32: SLEEF's 1-ulp tanh costs ~1 ns an element
// even with AVX-512, five sigmoids' worth, and two of the cell's five activations are
// tanh. So: below |x| = 0.9 an odd polynomial (x + x z Q(z), z = x^2; coefficients
// from csrc/cpu/fit_tanh.py), above it 1 - 2 / (1 + exp(2|x|)), which cannot cancel
// there (the result is >= 0.71). At most 1.3 ulp from float64 tanh on a dense grid
// (test_cpu_backend.py); 2 sigmoid(2x) - 1, cheaper still, loses all relative
// accuracy near 0 and tripled the bias gradient's error (csrc/README.md).
template <typename scalar_t>
inline Vec<scalar_t> cell_tanh(const Vec<scalar_t>& x) {
  return x.tanh();
}

template <>
inline Vec<float> cell_tanh<float>(const Vec<float>& x) {
  using V = Vec<float>;
  const V one(1.f), two(2.f), zero(0.f);
  const V z = x * x;
  V q(-0.000450110674f);
  q = at::vec::fmadd(q, z, V(0.00256644073f));
  q = at::vec::fmadd(q, z, V(-0.0082448693f));
  q = at::vec::fmadd(q, z, V(0.0216514114f));
  q = at::vec::fmadd(q, z, V(-0.0539253056f));
  q = at::vec::fmadd(q, z, V(0.133329108f));
  q = at::vec::fmadd(q, z, V(-0.333333164f));
  const V small = at::vec::fmadd(x * z, q, x);
  const V a = x.abs();
  const V large = one - two / (one + cell_exp(a + a));  // exp overflows to inf: 1, as it should
  const V large_signed = V::blendv(large, large.neg(), x < zero);
  return V::blendv(large_signed, small, a < V(0.9f));  // NaN: not < 0.9, so NaN from exp
}

// A value computed in fp32/fp64 stored in the layer's dtype (the first `count` lanes):
// bf16 rounded to nearest even as torch's .to(torch.bfloat16) does.
template <typename acc_t>
inline void store_as(const Vec<acc_t>& x, acc_t* dst, int count) {
  x.store(dst, count);
}

#ifdef RNNFAST_BF16_DOT
inline void store_as(const Vec<float>& x, c10::BFloat16* dst, int count) {
  const __m256i rounded = at::vec::cvtfp32_bf16(__m512(x));
  _mm256_mask_storeu_epi16(dst, __mmask16((uint32_t(1) << count) - 1), rounded);
}
#endif

// Forward of one row: gates holds the pre-activations (input projection + bias +
// recurrent product) and gets the activations back when they are saved for backward.
// scalar_t: the accumulation dtype of gates and cell state; out_t: the layer's dtype, in
// which h_t is stored (bf16 layers keep fp32 gates and cells).
template <typename scalar_t, typename out_t = scalar_t>
struct ForwardRow {
  scalar_t* gates;         // [4H] this row's gates, pre-activation in, activated out
  scalar_t* cell;          // [H] c_{t-1} in, c_t out: the row's running cell state
  scalar_t* cell_saved;    // [H] where c_t is kept for backward, or nullptr
  out_t* hidden;           // [H] h_t = o * tanh(c_t) (before any projection)
  int64_t hidden_size;     // H
  bool keep_gates;         // write the activations back into gates

  // Units [begin, end) of the row; vectorized, with a partial vector for the tail.
  void operator()(int64_t begin, int64_t end) const {
    const int64_t H = hidden_size;
    constexpr int64_t width = Vec<scalar_t>::size();
    for (int64_t j = begin; j < end; j += width) {
      const int count = static_cast<int>(std::min<int64_t>(width, end - j));
      auto i = vec_sigmoid(Vec<scalar_t>::loadu(gates + j, count));
      auto f = vec_sigmoid(Vec<scalar_t>::loadu(gates + H + j, count));
      auto g = cell_tanh(Vec<scalar_t>::loadu(gates + 2 * H + j, count));
      auto o = vec_sigmoid(Vec<scalar_t>::loadu(gates + 3 * H + j, count));
      auto c = f * Vec<scalar_t>::loadu(cell + j, count) + i * g;
      auto h = o * cell_tanh(c);
      c.store(cell + j, count);
      store_as(h, hidden + j, count);
      if (cell_saved != nullptr) c.store(cell_saved + j, count);
      if (keep_gates) {
        i.store(gates + j, count);
        f.store(gates + H + j, count);
        g.store(gates + 2 * H + j, count);
        o.store(gates + 3 * H + j, count);
      }
    }
  }
};

// Backward of one row: from dL/dh_t (through the output and the recurrence) and the
// running dL/dc_t, the gate gradients dL/d(pre-activation) and dL/dc_{t-1}.
template <typename scalar_t>
struct BackwardRow {
  const scalar_t* gates;   // [4H] activated gates i, f, g, o of the row
  const scalar_t* cell;    // [H] c_t
  const scalar_t* cell_prev;  // [H] c_{t-1}
  const scalar_t* dh;      // [H] dL/dh_t (before the projection, if any)
  scalar_t* dc;            // [H] dL/dc_t from later steps in, dL/dc_{t-1} out
  scalar_t* dgates;        // [4H] out: dL/d(gate pre-activations)
  int64_t hidden_size;     // H

  void operator()(int64_t begin, int64_t end) const {
    const int64_t H = hidden_size;
    constexpr int64_t width = Vec<scalar_t>::size();
    const Vec<scalar_t> one(scalar_t(1));
    for (int64_t j = begin; j < end; j += width) {
      const int count = static_cast<int>(std::min<int64_t>(width, end - j));
      auto i = Vec<scalar_t>::loadu(gates + j, count);
      auto f = Vec<scalar_t>::loadu(gates + H + j, count);
      auto g = Vec<scalar_t>::loadu(gates + 2 * H + j, count);
      auto o = Vec<scalar_t>::loadu(gates + 3 * H + j, count);
      auto tanh_c = cell_tanh(Vec<scalar_t>::loadu(cell + j, count));
      auto d_h = Vec<scalar_t>::loadu(dh + j, count);
      // h = o tanh(c): dc gains dh * o * (1 - tanh(c)^2).
      auto d_c = Vec<scalar_t>::loadu(dc + j, count) + d_h * o * (one - tanh_c * tanh_c);
      (d_c * g * i * (one - i)).store(dgates + j, count);
      (d_c * Vec<scalar_t>::loadu(cell_prev + j, count) * f * (one - f)).store(dgates + H + j, count);
      (d_c * i * (one - g * g)).store(dgates + 2 * H + j, count);
      (d_h * tanh_c * o * (one - o)).store(dgates + 3 * H + j, count);
      (d_c * f).store(dc + j, count);
    }
  }
};

}  // namespace rnnfast_cpu
