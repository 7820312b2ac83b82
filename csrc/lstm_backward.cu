// Backward recurrence of one LSTM layer and direction: the reverse-time chain
// dh, dc -> gate gradients of every row, in one persistent, cooperative launch. The
// weight and input gradients are then GEMMs over all rows (torch/cuBLAS, shared with
// the other backends in rnnfast/backends/gradients.py).
//
// Each processed step, in reverse order, has two phases separated by a grid barrier:
//   1. block j, for its hidden units [j*U, (j+1)*U): dL/dh of the units (through W_hr
//      with a projection, whose columns of those units it holds on chip), the cell's
//      backward -> dgates rows of the step, and the carried dc;
//   2. block j, for its output columns [j*Pc, (j+1)*Pc): dh(t-1) = dgates @ W_hh[:, cols]
//      from W_hh columns held on chip for the whole sequence.
// The chain runs in fp32 (FMA), as the reference does: it is where low precision would
// compound from step to step.
#include "lstm_device.cuh"

namespace cg = cooperative_groups;

namespace rnnfast {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_backward_kernel(const BackwardArgs args) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(128) unsigned char smem[];

  const int H = args.hidden_size, P = args.out_size, B = args.batch;
  const bool has_proj = args.w_hr != nullptr;
  const BackwardLayout L =
      backward_layout(H, P, has_proj, sizeof(T), args.units, args.proj_cols);
  T* whh_s = reinterpret_cast<T*>(smem + L.whh_off);  // [4H][Pc]: W_hh[:, my columns]
  T* whr_s = reinterpret_cast<T*>(smem + L.whr_off);  // [P][U]: W_hr[:, my units]
  float* a_s = reinterpret_cast<float*>(smem + L.a_off);        // [16][kChunk]
  float* part = reinterpret_cast<float*>(smem + L.part_off);    // [ksplit][16][part_ld]
  const int part_ld = max(args.units, args.proj_cols);
  const T* dy = static_cast<const T*>(args.dy);
  const T* w_hh = static_cast<const T*>(args.w_hh);
  const T* w_hr = static_cast<const T*>(args.w_hr);

  const int U = args.units, Pc = args.proj_cols;
  const int unit0 = blockIdx.x * U, my_units = max(0, min(U, H - unit0));
  const int col0 = blockIdx.x * Pc, my_cols = max(0, min(Pc, P - col0));
  const int64_t G = 4 * (int64_t)H;

  for (int e = threadIdx.x; e < 4 * H * Pc; e += blockDim.x) {
    const int j = e / Pc, n = e % Pc;
    whh_s[e] = n < my_cols ? w_hh[(size_t)j * P + col0 + n] : from_float<T>(0.0f);
  }
  for (int e = threadIdx.x; has_proj && e < P * U; e += blockDim.x) {
    const int p = e / U, u = e % U;
    whr_s[e] = u < my_units ? w_hr[(size_t)p * H + unit0 + u] : from_float<T>(0.0f);
  }
  __syncthreads();

  for (int64_t step = args.steps - 1; step >= 0; --step) {
    const StepRows s = step_rows(args.offsets, args.sizes, step, args.steps, B, args.reverse);
    const int carried = carried_rows(s);

    // Phase 1: cell gradient of my units.
    for (int r0 = 0; r0 < s.size && my_units > 0; r0 += kTileRows) {
      if (has_proj) {
        // dh_units = (dh + dy) @ W_hr[:, my units]; block 0 also stores (dh + dy) for dW_hr.
        auto dh_total = [&](int b, int p) -> float {
          const int r = r0 + b;
          if (r >= s.size) return 0.0f;
          float d = load_cg(args.dh + (size_t)r * P + p);
          if (dy != nullptr) d += to_float(dy[(s.offset + r) * P + p]);
          if (args.dy_total != nullptr && blockIdx.x == 0) args.dy_total[(s.offset + r) * P + p] = d;
          return d;
        };
        fma_product(dh_total, P, whr_s, U, U, L.ksplit_units, a_s, part, part_ld);
      }
      for (int e = threadIdx.x; e < kTileRows * my_units; e += blockDim.x) {
        const int b = e / my_units, u = e % my_units, r = r0 + b;
        if (r >= s.size) continue;
        const int unit = unit0 + u;
        const int64_t row = s.offset + r;
        float dh;
        if (has_proj) {
          dh = reduce_parts(part, part_ld, L.ksplit_units, b, u);
        } else {
          dh = load_cg(args.dh + (size_t)r * P + unit);
          if (dy != nullptr) dh += to_float(dy[row * P + unit]);
          if (args.dy_total != nullptr) args.dy_total[row * P + unit] = dh;
        }
        const float* gates = args.gates + row * G + unit;
        const float c_prev = r < s.size_prev ? args.cells[(s.offset_prev + r) * H + unit]
                                             : args.c0[(size_t)r * H + unit];
        float* dc_slot = args.dc + (size_t)r * H + unit;  // only this block touches it
        const CellGrad d = lstm_cell_backward(gates[0], gates[H], gates[2 * H], gates[3 * H],
                                              args.cells[row * H + unit], c_prev, dh, *dc_slot);
        float* dgates = args.dgates + row * G + unit;
        dgates[0] = d.d_i;
        dgates[H] = d.d_f;
        dgates[2 * H] = d.d_g;
        dgates[3 * H] = d.d_o;
        if (r < carried)
          *dc_slot = d.dc_prev;
        else
          args.dc0[(size_t)r * H + unit] = d.dc_prev;
      }
      __syncthreads();  // part and a_s are reused by the next tile
    }
    grid.sync();  // every gate gradient of the step is written

    // Phase 2: dh(t-1)[:, my columns] = dgates @ W_hh[:, my columns].
    for (int r0 = 0; r0 < s.size && my_cols > 0; r0 += kTileRows) {
      auto dgates_row = [&](int b, int j) -> float {
        const int r = r0 + b;
        return r < s.size ? load_cg(args.dgates + (s.offset + r) * G + j) : 0.0f;
      };
      fma_product(dgates_row, 4 * H, whh_s, Pc, Pc, L.ksplit_cols, a_s, part, part_ld);
      for (int e = threadIdx.x; e < kTileRows * my_cols; e += blockDim.x) {
        const int b = e / my_cols, n = e % my_cols, r = r0 + b;
        if (r >= s.size) continue;
        const float v = reduce_parts(part, part_ld, L.ksplit_cols, b, n);
        if (r < carried)
          args.dh[(size_t)r * P + col0 + n] = v;
        else
          args.dh0[(size_t)r * P + col0 + n] = v;
      }
      __syncthreads();
    }
    grid.sync();  // dh(t-1) is complete before the next phase 1 reads it
  }
}

template <typename T>
cudaError_t launch_typed(const BackwardArgs& args, cudaStream_t stream) {
  return launch_cooperative(lstm_backward_kernel<T>, args, args.blocks, backward_smem_bytes(args), stream);
}

}  // namespace

size_t backward_smem_bytes(const BackwardArgs& args) {
  const int itemsize = args.dtype == DType::kFloat32 ? 4 : 2;
  return backward_layout(args.hidden_size, args.out_size, args.w_hr != nullptr, itemsize,
                         args.units, args.proj_cols)
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
