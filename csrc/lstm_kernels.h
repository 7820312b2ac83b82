// Launcher API of the kernels: plain pointers and sizes, no torch. binding.cpp fills
// these structs from tensors; the kernel files implement the launchers.
//
// Sizes: N rows (T*B dense, or the packed length), B batch, H hidden, P = proj_size or
// H, T processed steps. "acc" is fp32 (cell state, saved gates, every gradient of the
// recurrence); "io" is the layer's dtype (fp32, fp16 or bf16).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace rnnfast {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct ForwardArgs {
  const void* xg;          // [N, 4H] io: x @ W_ih^T of every row, no bias
  const float* bias;       // [4H] acc: b_ih + b_hh, or null
  const void* w_hh;        // [4H, P] io, gate rows i, f, g, o
  const void* w_hr;        // [P, H] io projection, or null
  const void* h0;          // [B, P] io
  float* c;                // [B, H] acc: c0 on entry, each row's last c on exit
  void* y;                 // [N, P] io out: h_t (projected) of every row
  float* gates;            // [N, 4H] acc out: activated gates, or null (not saved)
  float* cells;            // [N, H] acc out: c_t of every row, or null (not saved)
  void* hidden;            // [N, H] io out: o * tanh(c) before the projection (w_hr only)
  const int64_t* offsets;  // [T] first row of each processed step (packed), or null (dense)
  const int32_t* sizes;    // [T] active rows of each processed step (packed), or null
  int64_t steps;           // T
  int batch, hidden_size, out_size;  // B, H, P
  bool reverse;
  DType dtype;
  int blocks;              // grid size: <= SMs (every block resident: cooperative launch)
  int units;               // hidden units per block (4 * units gate rows of W_hh)
  int proj_cols;           // output columns of W_hr per block (projection only)
};

struct BackwardArgs {
  const void* dy;          // [N, P] io: dL/dy, or null
  const float* gates;      // [N, 4H] acc: activated gates
  const float* cells;      // [N, H] acc: c_t of every row
  const float* c0;         // [B, H] acc
  const void* w_hh;        // [4H, P] io
  const void* w_hr;        // [P, H] io, or null
  float* dh;               // [B, P] acc: dh_n on entry (zeros if none); scratch after
  float* dc;               // [B, H] acc: dc_n on entry (zeros if none); scratch after
  float* dh0;              // [B, P] acc out (zero-initialised by the caller)
  float* dc0;              // [B, H] acc out (zero-initialised by the caller)
  float* dgates;           // [N, 4H] acc out: dL/d(gate pre-activations)
  float* dy_total;         // [N, P] acc out: dL/dy incl. the recurrence (for dW_hr), or null
  const int64_t* offsets;  // [T] as in ForwardArgs
  const int32_t* sizes;    // [T]
  int64_t steps;
  int batch, hidden_size, out_size;
  bool reverse;
  DType dtype;
  int blocks;              // grid size: <= SMs
  int units;               // hidden units per block (cell-gradient phase)
  int proj_cols;           // columns of dh(t-1) per block (chain phase)
};

// Shared memory one block of the kernel needs (bytes); the plan in Python mirrors it.
size_t forward_smem_bytes(const ForwardArgs& args);
size_t backward_smem_bytes(const BackwardArgs& args);

// Cooperative launches on `stream`. cudaSuccess, or the error of the launch (for
// example cudaErrorCooperativeLaunchTooLarge when the grid cannot be co-resident).
cudaError_t launch_forward(const ForwardArgs& args, cudaStream_t stream);
cudaError_t launch_backward(const BackwardArgs& args, cudaStream_t stream);

}  // namespace rnnfast
