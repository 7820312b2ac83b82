// Forward recurrence of one LSTM layer and direction: one persistent, cooperative launch
// for all T steps. The input projection x @ W_ih^T of every row is one GEMM before it
// (torch, in rnnfast/backends/cuda/forward.py).
//
// Block j owns hidden units [j*U, (j+1)*U): it loads their 4U rows of W_hh into shared
// memory once and keeps them for the whole sequence. Each step, for each tile of 16
// batch rows, it stages h(t-1) in shared memory, computes its gate columns of
// h(t-1) @ W_hh^T (tensor cores for fp16/bf16, fp32 FMA for fp32), and applies the cell
// in the same kernel. All blocks then meet at one grid barrier (cooperative_groups
// grid.sync(), legal because the launch is cooperative and the grid <= SM count), since
// every block needs all of h(t) next step. With a projection, a second phase per step
// computes y = hidden @ W_hr^T from W_hr columns also held on chip: two barriers.
#include "lstm_device.cuh"

namespace cg = cooperative_groups;

namespace rnnfast {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_forward_kernel(const ForwardArgs args) {
  constexpr bool kTensorCores = sizeof(T) == 2;
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(128) unsigned char smem[];

  const int H = args.hidden_size, P = args.out_size, B = args.batch;
  const bool has_proj = args.w_hr != nullptr;
  const ForwardLayout L = forward_layout(H, P, has_proj, sizeof(T), args.units, args.proj_cols);
  T* wt = reinterpret_cast<T*>(smem + L.w_off);    // [k_pad][w_ld]: W_hh rows of my units, transposed
  T* wrt = reinterpret_cast<T*>(smem + L.wr_off);  // [hk_pad][wr_ld]: W_hr rows of my columns, transposed
  float* part = reinterpret_cast<float*>(smem + L.part_off);  // [ksplit][16][part_ld]
  const T* xg = static_cast<const T*>(args.xg);
  const T* w_hh = static_cast<const T*>(args.w_hh);
  const T* w_hr = static_cast<const T*>(args.w_hr);
  const T* h0 = static_cast<const T*>(args.h0);
  T* y = static_cast<T*>(args.y);
  T* hidden = static_cast<T*>(args.hidden);

  const int U = args.units;
  const int unit0 = blockIdx.x * U;
  const int my_units = max(0, min(U, H - unit0));
  const int col0 = blockIdx.x * args.proj_cols;
  const int my_cols = has_proj ? max(0, min(args.proj_cols, P - col0)) : 0;
  const int64_t G = 4 * (int64_t)H;

  // Weights on chip for the whole sequence; padding is zero so it adds nothing.
  for (int e = threadIdx.x; e < L.k_pad * L.cols; e += blockDim.x) {
    const int k = e / L.cols, n = e % L.cols;
    const bool real = n < 4 * U && n % U < my_units && k < P;
    wt[(size_t)k * L.w_ld + n] =
        real ? w_hh[(size_t)gate_row(n, U, unit0, H) * P + k] : from_float<T>(0.0f);
  }
  for (int e = threadIdx.x; has_proj && e < L.hk_pad * L.proj_cols; e += blockDim.x) {
    const int k = e / L.proj_cols, n = e % L.proj_cols;
    wrt[(size_t)k * L.wr_ld + n] =
        n < my_cols && k < H ? w_hr[(size_t)(col0 + n) * H + k] : from_float<T>(0.0f);
  }
  __syncthreads();

  for (int64_t step = 0; step < args.steps; ++step) {
    const StepRows s = step_rows(args.offsets, args.sizes, step, args.steps, B, args.reverse);

    // Phase 1: gates and cell of my units, tile by tile over the active rows.
    for (int r0 = 0; r0 < s.size && my_units > 0; r0 += kTileRows) {
      // Row r continues from y of the previous step, or starts from h0.
      if constexpr (kTensorCores) {
        T* a_s = reinterpret_cast<T*>(smem + L.a_off);  // [16][a_ld]: h(t-1) of the tile
        for (int e = threadIdx.x; e < kTileRows * L.k_pad; e += blockDim.x) {
          const int b = e / L.k_pad, k = e % L.k_pad, r = r0 + b;
          T v = from_float<T>(0.0f);
          if (r < s.size && k < P)
            v = r < s.size_prev ? load_cg(y + (s.offset_prev + r) * P + k) : h0[(size_t)r * P + k];
          a_s[b * L.a_ld + k] = v;
        }
        __syncthreads();
        mma_product<T>(a_s, L.a_ld, wt, L.w_ld, L.k_pad, L.cols, L.ksplit, part, L.part_ld);
      } else {
        auto h_prev = [&](int b, int k) -> float {
          const int r = r0 + b;
          if (r >= s.size) return 0.0f;
          return r < s.size_prev ? load_cg(y + (s.offset_prev + r) * P + k)
                                 : to_float(h0[(size_t)r * P + k]);
        };
        float* a_s = reinterpret_cast<float*>(smem + L.a_off);  // [16][kChunk]
        fma_product(h_prev, P, wt, L.w_ld, L.cols, L.ksplit, a_s, part, L.part_ld);
      }
      // Pointwise epilogue: thread per (row, unit); the four gates of a unit are in
      // columns u, U + u, 2U + u, 3U + u of the partial sums.
      for (int e = threadIdx.x; e < kTileRows * my_units; e += blockDim.x) {
        const int b = e / my_units, u = e % my_units, r = r0 + b;
        if (r >= s.size) continue;
        const int unit = unit0 + u;
        const int64_t row = s.offset + r;
        float pre[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          pre[g] = reduce_parts(part, L.part_ld, L.ksplit, b, g * U + u) +
                   to_float(xg[row * G + g * H + unit]);
          if (args.bias != nullptr) pre[g] += args.bias[g * H + unit];
        }
        // c of a row lives in args.c: c0 until the row's first step, then its latest c.
        float* c_slot = args.c + (size_t)r * H + unit;
        const CellOut out = lstm_cell(pre[0], pre[1], pre[2], pre[3], *c_slot);
        *c_slot = out.c;
        if (args.gates != nullptr) {
          float* gates = args.gates + row * G + unit;
          gates[0] = out.i;
          gates[H] = out.f;
          gates[2 * H] = out.g;
          gates[3 * H] = out.o;
        }
        if (args.cells != nullptr) args.cells[row * H + unit] = out.c;
        if (has_proj)
          hidden[row * H + unit] = from_float<T>(out.h);
        else
          y[row * P + unit] = from_float<T>(out.h);
      }
      __syncthreads();  // part and a_s are reused by the next tile
    }

    if (has_proj) {
      // Phase 2: y = hidden @ W_hr^T needs every unit of the step.
      grid.sync();
      for (int r0 = 0; r0 < s.size && my_cols > 0; r0 += kTileRows) {
        if constexpr (kTensorCores) {
          T* a_s = reinterpret_cast<T*>(smem + L.a_off);  // [16][a_ld]: hidden of the tile
          for (int e = threadIdx.x; e < kTileRows * L.hk_pad; e += blockDim.x) {
            const int b = e / L.hk_pad, k = e % L.hk_pad, r = r0 + b;
            a_s[b * L.a_ld + k] = r < s.size && k < H ? load_cg(hidden + (s.offset + r) * H + k)
                                                      : from_float<T>(0.0f);
          }
          __syncthreads();
          mma_product<T>(a_s, L.a_ld, wrt, L.wr_ld, L.hk_pad, L.proj_cols, L.proj_ksplit, part,
                         L.part_ld);
        } else {
          auto hid = [&](int b, int k) -> float {
            const int r = r0 + b;
            return r < s.size ? to_float(load_cg(hidden + (s.offset + r) * H + k)) : 0.0f;
          };
          float* a_s = reinterpret_cast<float*>(smem + L.a_off);
          fma_product(hid, H, wrt, L.wr_ld, L.proj_cols, L.proj_ksplit, a_s, part, L.part_ld);
        }
        for (int e = threadIdx.x; e < kTileRows * my_cols; e += blockDim.x) {
          const int b = e / my_cols, n = e % my_cols, r = r0 + b;
          if (r < s.size)
            y[(s.offset + r) * P + col0 + n] =
                from_float<T>(reduce_parts(part, L.part_ld, L.proj_ksplit, b, n));
        }
        __syncthreads();
      }
    }
    grid.sync();  // h(t) of every unit is written before anyone reads it as h(t-1)
  }
}

template <typename T>
cudaError_t launch_typed(const ForwardArgs& args, cudaStream_t stream) {
  return launch_cooperative(lstm_forward_kernel<T>, args, args.blocks, forward_smem_bytes(args), stream);
}

}  // namespace

size_t forward_smem_bytes(const ForwardArgs& args) {
  const int itemsize = args.dtype == DType::kFloat32 ? 4 : 2;
  return forward_layout(args.hidden_size, args.out_size, args.w_hr != nullptr, itemsize,
                        args.units, args.proj_cols)
      .bytes;
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
