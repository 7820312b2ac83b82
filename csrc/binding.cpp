// rnnfast._C: tensors in, raw pointers out to the launchers of lstm_forward.cu and
// lstm_backward.cu. No math here; shapes, dtypes and the launch plan are decided in
// rnnfast/backends/cuda/ and only checked here, so that a wrong call raises instead of
// reading out of bounds.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "lstm_kernels.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

rnnfast::DType io_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return rnnfast::DType::kFloat32;
    case at::kHalf: return rnnfast::DType::kFloat16;
    case at::kBFloat16: return rnnfast::DType::kBFloat16;
    default: TORCH_CHECK(false, "rnnfast._C: unsupported dtype ", t.scalar_type());
  }
}

// A CUDA tensor on `device`, contiguous, of `dtype`, with `numel` elements (-1: any).
void check(const Tensor& t, const char* name, const at::Device& device, at::ScalarType dtype,
           int64_t numel) {
  TORCH_CHECK(t.device() == device, "rnnfast._C: ", name, " is on ", t.device(), ", expected ",
              device);
  TORCH_CHECK(t.is_contiguous(), "rnnfast._C: ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, "rnnfast._C: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(numel < 0 || t.numel() == numel, "rnnfast._C: ", name, " has ", t.numel(),
              " elements, expected ", numel);
}

template <typename P>
P* ptr_or_null(const OptTensor& t, const char* name, const at::Device& device,
               at::ScalarType dtype, int64_t numel) {
  if (!t.has_value()) return nullptr;
  check(*t, name, device, dtype, numel);
  return static_cast<P*>(t->data_ptr());
}

void raise_on_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "rnnfast._C: ", what, " failed: ", cudaGetErrorString(err));
}

// A cooperative or cluster launch the device declined before anything ran: more blocks
// than can be co-resident right now (MPS, a green context, another kernel holding SMs),
// a cluster it cannot place, or such launches not permitted here. Nothing was written, so the caller may run the layer
// another way; Python sees rnnfast._C.LaunchRefused (a RuntimeError).
struct LaunchRefused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void raise_on_launch_error(cudaError_t err, const char* what) {
  if (err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported ||
      err == cudaErrorNotPermitted || err == cudaErrorLaunchOutOfResources ||
      err == cudaErrorInvalidClusterSize) {
    (void)cudaGetLastError();  // not sticky: clear it so later torch calls do not see it
    throw LaunchRefused(std::string("rnnfast._C: ") + what + " was refused: " +
                        cudaGetErrorString(err));
  }
  raise_on_error(err, what);
}

// The launch shape chosen by rnnfast/backends/cuda/plan.py.
rnnfast::Split make_split(int64_t units, int64_t proj_cols, int64_t unit_slices,
                          int64_t block_rows, int64_t cluster, int64_t multicast,
                          int64_t reg_k_tiles, int64_t reduce_ctas = 0, int64_t pass_rows = 0) {
  rnnfast::Split sp{};
  sp.units = static_cast<int>(units);
  sp.proj_cols = static_cast<int>(proj_cols);
  sp.unit_slices = static_cast<int>(unit_slices);
  sp.block_rows = static_cast<int>(block_rows);
  sp.cluster = static_cast<int>(cluster);
  sp.multicast = static_cast<int>(multicast);
  sp.reg_k_tiles = static_cast<int>(reg_k_tiles);
  sp.reduce_ctas = static_cast<int>(reduce_ctas);
  sp.pass_rows = static_cast<int>(pass_rows);
  return sp;
}

// Checks the plan covers every unit, column and batch row, and fills the barrier.
int check_split(const rnnfast::Split& sp, int64_t H, int64_t P, int64_t B, bool proj_split,
                const Tensor& arrivals, const Tensor& timed_out, const at::Device& device,
                int64_t spin_limit, rnnfast::Barrier* barrier, const char* who) {
  TORCH_CHECK(sp.units >= 1 && sp.unit_slices >= 1 && sp.block_rows >= 8 &&
                  sp.block_rows % 8 == 0 && (int64_t)sp.units * sp.unit_slices >= H &&
                  (!proj_split || (sp.proj_cols >= 1 && (int64_t)sp.proj_cols * sp.unit_slices >= P)) &&
                  (sp.cluster == 0 || sp.cluster == sp.unit_slices) && spin_limit >= 1,
              "rnnfast._C.", who, ": the plan does not cover every unit and column");
  // Multicast clusters hold consecutive slices of one batch block (portable sizes).
  TORCH_CHECK(sp.multicast == 0 || (sp.cluster == 0 && sp.multicast >= 2 && sp.multicast <= 8 &&
                                    sp.unit_slices % sp.multicast == 0),
              "rnnfast._C.", who, ": multicast must be 0 or 2..8 dividing unit_slices (",
              sp.unit_slices, ") in a grid plan, got ", sp.multicast);
  // The cluster exchange sends whole words from each slice's first unit (lstm_common.cuh
  // exchange_word_bytes): slices of multiples of 4 units.
  TORCH_CHECK(sp.cluster == 0 || sp.units % 4 == 0, "rnnfast._C.", who,
              ": a cluster plan's units per block must be a multiple of 4, got ", sp.units);
  const int64_t batch_blocks = (B + sp.block_rows - 1) / sp.block_rows;
  check(arrivals, "arrivals", device, at::kLong, batch_blocks);
  check(timed_out, "timed_out", device, at::kInt, 1);
  barrier->arrivals = reinterpret_cast<unsigned long long*>(arrivals.data_ptr<int64_t>());
  barrier->timed_out = timed_out.data_ptr<int>();
  barrier->spin_limit = spin_limit;
  return static_cast<int>(batch_blocks * sp.unit_slices);
}

void forward(const Tensor& xg,            // [N, 4H] io
             const OptTensor& bias,       // [4H] fp32
             const Tensor& w_hh,          // [4H, P] io
             const OptTensor& w_hr,       // [P, H] io
             const Tensor& h0x,           // [B, ld(P)] io exchange layout
             const OptTensor& hx,         // [2, B, ld(P)] io exchange (grid plans)
             const OptTensor& hidx,       // [B, ld(H)] io exchange (w_hr only)
             const Tensor& c,             // [B, H] fp32, in/out
             const Tensor& y,             // [N, P] io out
             const OptTensor& gates,      // [N, 4H] fp32 out
             const OptTensor& cells,      // [N, H] fp32 out
             const OptTensor& hidden,     // [N, H] io out (w_hr only, or none)
             const OptTensor& offsets,    // [T] int64 (packed)
             const OptTensor& sizes,      // [T] int32 (packed)
             const Tensor& arrivals,      // [Q] int64 zeros: the grid barrier's counts
             const Tensor& timed_out,     // [1] int32 zero: set if a barrier wait gave up
             int64_t steps, bool reverse, int64_t units, int64_t proj_cols, int64_t unit_slices,
             int64_t block_rows, int64_t cluster, int64_t multicast, int64_t reg_k_tiles,
             int64_t pass_rows, int64_t spin_limit) {
  const at::Device device = xg.device();
  const auto io = xg.scalar_type();
  const int64_t H = w_hh.size(0) / 4, P = w_hh.size(1), B = c.size(0), N = xg.size(0);
  const int64_t xld = rnnfast::exchange_ld((int)P), hld = rnnfast::exchange_ld((int)H);
  rnnfast::ForwardArgs a{};
  check(xg, "xg", device, io, N * 4 * H);
  check(w_hh, "w_hh", device, io, 4 * H * P);
  check(h0x, "h0x", device, io, B * xld);
  check(c, "c", device, at::kFloat, B * H);
  check(y, "y", device, io, N * P);
  a.xg = xg.data_ptr();
  a.bias = ptr_or_null<const float>(bias, "bias", device, at::kFloat, 4 * H);
  a.w_hh = w_hh.data_ptr();
  a.w_hr = ptr_or_null<const void>(w_hr, "w_hr", device, io, P * H);
  a.h0x = h0x.data_ptr();
  a.hx = ptr_or_null<void>(hx, "hx", device, io, 2 * B * xld);
  a.hidx = ptr_or_null<void>(hidx, "hidx", device, io, B * hld);
  a.c = c.data_ptr<float>();
  a.y = y.data_ptr();
  a.gates = ptr_or_null<float>(gates, "gates", device, at::kFloat, N * 4 * H);
  a.cells = ptr_or_null<float>(cells, "cells", device, at::kFloat, N * H);
  a.hidden = ptr_or_null<void>(hidden, "hidden", device, io, N * H);
  TORCH_CHECK((a.w_hr == nullptr) == (a.hidx == nullptr),
              "rnnfast._C.forward: hidx is required exactly when w_hr is given");
  TORCH_CHECK(a.w_hr != nullptr || a.hidden == nullptr,
              "rnnfast._C.forward: hidden is only written with w_hr");
  TORCH_CHECK((cluster > 0) == (a.hx == nullptr),
              "rnnfast._C.forward: hx is required exactly for grid plans");
  TORCH_CHECK(cluster == 0 || a.w_hr == nullptr,
              "rnnfast._C.forward: cluster plans have no projection phase");
  a.offsets = ptr_or_null<const int64_t>(offsets, "offsets", device, at::kLong, steps);
  a.sizes = ptr_or_null<const int32_t>(sizes, "sizes", device, at::kInt, steps);
  TORCH_CHECK((a.offsets == nullptr) == (a.sizes == nullptr),
              "rnnfast._C.forward: offsets and sizes come together");
  TORCH_CHECK(a.offsets != nullptr || steps * B == N,
              "rnnfast._C.forward: dense input needs steps * batch == rows");
  a.steps = steps;
  a.batch = static_cast<int>(B);
  a.hidden_size = static_cast<int>(H);
  a.out_size = static_cast<int>(P);
  a.reverse = reverse;
  a.dtype = io_dtype(xg);
  a.split = make_split(units, a.w_hr != nullptr ? proj_cols : 0, unit_slices, block_rows, cluster,
                       multicast, reg_k_tiles, 0, pass_rows);
  a.blocks = check_split(a.split, H, P, B, a.w_hr != nullptr, arrivals, timed_out, device,
                         spin_limit, &a.barrier, "forward");
  const int itemsize = static_cast<int>(xg.element_size());
  TORCH_CHECK(reg_k_tiles >= 0 &&
                  rnnfast::reg_split_ok(rnnfast::forward_layout((int)H, (int)P, a.w_hr != nullptr,
                                                                itemsize, a.split),
                                        a.split, itemsize),
              "rnnfast._C.forward: reg_k_tiles=", reg_k_tiles,
              " is not a register split the kernel handles (a cluster plan of 16-bit weights, at "
              "most 8 rows a block, at most ", rnnfast::kRegKTiles,
              " k-tiles a slice, leaving a k-slice in shared memory)");
  TORCH_CHECK(pass_rows >= 0 && rnnfast::passes_ok(a.split, a.w_hr != nullptr),
              "rnnfast._C.forward: pass_rows=", pass_rows,
              " is not a row pass the kernel handles (a grid plan without a projection, "
              "multicast or registers, a multiple of 8 below block_rows (", block_rows, "))");
  // Last, so that CPU tensors (a CPU machine with the extension built) meet every check
  // above first: tests/test_cuda_backend.py holds the Python call sites to them there.
  TORCH_CHECK(device.is_cuda(), "rnnfast._C.forward: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(device);
  if (N == 0 || steps == 0) return;
  raise_on_launch_error(rnnfast::launch_forward(a, c10::cuda::getCurrentCUDAStream().stream()),
                        cluster > 0     ? "cluster launch of the forward kernel"
                        : multicast > 0 ? "cooperative cluster launch of the forward kernel"
                                        : "cooperative launch of the forward kernel");
}

void backward(const OptTensor& dy,        // [N, P] io
              const Tensor& gates,        // [N, 4H] fp32
              const Tensor& cells,        // [N, H] fp32
              const Tensor& c0,           // [B, H] fp32
              const Tensor& w_hh,         // [4H, P] io
              const OptTensor& w_hr,      // [P, H] io
              const Tensor& dh_n,         // [B, P] fp32
              const Tensor& dc_n,         // [B, H] fp32
              const Tensor& dh0,          // [B, P] fp32 out (zeros on entry)
              const Tensor& dc0,          // [B, H] fp32 out (zeros on entry)
              const Tensor& dgates,       // [N, 4H] fp32 out
              const OptTensor& dy_total,  // [N, P] fp32 out
              const OptTensor& gx,        // [2, B, ld(4H)] io exchange (grid plans)
              const OptTensor& dhx,       // [B, ld(P)] io exchange (w_hr only)
              const OptTensor& offsets,   // [T] int64
              const OptTensor& sizes,     // [T] int32
              const Tensor& arrivals,     // [Q] int64 zeros
              const Tensor& timed_out,    // [1] int32 zero
              int64_t steps, bool reverse, int64_t units, int64_t proj_cols, int64_t unit_slices,
              int64_t block_rows, int64_t cluster, int64_t multicast, int64_t reg_k_tiles,
              int64_t reduce_ctas, int64_t spin_limit) {
  const at::Device device = gates.device();
  const auto io = w_hh.scalar_type();
  const int64_t H = w_hh.size(0) / 4, P = w_hh.size(1), B = c0.size(0), N = gates.size(0);
  const int64_t gld = rnnfast::exchange_ld((int)(4 * H)), pld = rnnfast::exchange_ld((int)P);
  rnnfast::BackwardArgs a{};
  a.dy = ptr_or_null<const void>(dy, "dy", device, io, N * P);
  check(gates, "gates", device, at::kFloat, N * 4 * H);
  check(cells, "cells", device, at::kFloat, N * H);
  check(c0, "c0", device, at::kFloat, B * H);
  check(w_hh, "w_hh", device, io, 4 * H * P);
  check(dh_n, "dh_n", device, at::kFloat, B * P);
  check(dc_n, "dc_n", device, at::kFloat, B * H);
  check(dh0, "dh0", device, at::kFloat, B * P);
  check(dc0, "dc0", device, at::kFloat, B * H);
  check(dgates, "dgates", device, at::kFloat, N * 4 * H);
  a.gates = gates.data_ptr<float>();
  a.cells = cells.data_ptr<float>();
  a.c0 = c0.data_ptr<float>();
  a.w_hh = w_hh.data_ptr();
  a.w_hr = ptr_or_null<const void>(w_hr, "w_hr", device, io, P * H);
  a.dh_n = dh_n.data_ptr<float>();
  a.dc_n = dc_n.data_ptr<float>();
  a.dh0 = dh0.data_ptr<float>();
  a.dc0 = dc0.data_ptr<float>();
  a.dgates = dgates.data_ptr<float>();
  a.dy_total = ptr_or_null<float>(dy_total, "dy_total", device, at::kFloat, N * P);
  a.gx = ptr_or_null<void>(gx, "gx", device, io, 2 * B * gld);
  TORCH_CHECK((cluster > 0) == (a.gx == nullptr),
              "rnnfast._C.backward: gx is required exactly for grid plans (cluster == 0)");
  a.dhx = ptr_or_null<void>(dhx, "dhx", device, io, B * pld);
  TORCH_CHECK((a.w_hr == nullptr) == (a.dhx == nullptr),
              "rnnfast._C.backward: dhx is required exactly when w_hr is given");
  a.offsets = ptr_or_null<const int64_t>(offsets, "offsets", device, at::kLong, steps);
  a.sizes = ptr_or_null<const int32_t>(sizes, "sizes", device, at::kInt, steps);
  TORCH_CHECK((a.offsets == nullptr) == (a.sizes == nullptr),
              "rnnfast._C.backward: offsets and sizes come together");
  TORCH_CHECK(a.offsets != nullptr || steps * B == N,
              "rnnfast._C.backward: dense input needs steps * batch == rows");
  a.steps = steps;
  a.batch = static_cast<int>(B);
  a.hidden_size = static_cast<int>(H);
  a.out_size = static_cast<int>(P);
  a.reverse = reverse;
  a.dtype = io_dtype(w_hh);
  TORCH_CHECK(cluster == 0 || a.w_hr == nullptr,
              "rnnfast._C.backward: cluster plans have no projection phase");
  // Its exchange's words (4 or 8 bytes) must not straddle two gates' columns.
  TORCH_CHECK(cluster == 0 || H * w_hh.element_size() % 4 == 0,
              "rnnfast._C.backward: a cluster plan needs hidden_size * itemsize a multiple of 4 "
              "bytes, got hidden_size ", H, " of ", w_hh.element_size(), "-byte elements");
  a.split = make_split(units, a.w_hr != nullptr ? proj_cols : units, unit_slices, block_rows,
                       cluster, multicast, reg_k_tiles, reduce_ctas);
  a.blocks = check_split(a.split, H, P, B, true, arrivals, timed_out, device, spin_limit,
                         &a.barrier, "backward");
  const int itemsize = static_cast<int>(w_hh.element_size());
  TORCH_CHECK(reg_k_tiles >= 0 &&
                  rnnfast::reg_split_ok(rnnfast::backward_layout((int)H, (int)P, a.w_hr != nullptr,
                                                                 itemsize, a.split),
                                        a.split, itemsize, a.w_hr != nullptr),
              "rnnfast._C.backward: reg_k_tiles=", reg_k_tiles,
              " is not a register split the kernel handles (16-bit weights without a projection, "
              "at most 8 rows a block, the gate gradients in one chunk, at most ",
              rnnfast::kChainRegKTiles, " k-tiles a slice, leaving a k-slice in "
              "shared memory)");
  TORCH_CHECK(reduce_ctas >= 0 && rnnfast::reduce_ok(a.split, (int)H, a.w_hr != nullptr),
              "rnnfast._C.backward: reduce_ctas=", reduce_ctas,
              " is not a reduce split the kernel handles (a grid plan without a projection, "
              "registers or multicast, in clusters of 2 to 8 CTAs dividing unit_slices (",
              unit_slices, "), each CTA's gate columns inside the layer's 4 x ", H, ")");
  // Last, so that CPU tensors (a CPU machine with the extension built) meet every check
  // above first: tests/test_cuda_backend.py holds the Python call sites to them there.
  TORCH_CHECK(device.is_cuda(), "rnnfast._C.backward: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(device);
  if (N == 0 || steps == 0) return;
  raise_on_launch_error(rnnfast::launch_backward(a, c10::cuda::getCurrentCUDAStream().stream()),
                        cluster > 0 ? "cluster launch of the backward kernel"
                        : multicast > 0 || reduce_ctas > 0
                            ? "cooperative cluster launch of the backward kernel"
                            : "cooperative launch of the backward kernel");
}

// What the plan needs to know about a device: SMs, opt-in shared memory per block,
// whether it supports cooperative launches at all, its compute capability major, and
// (sm_90+) how many clusters of c blocks of the cluster kernels it holds at once, for
// c = 0..kMaxCluster (0 where it cannot place one, and for c < 2).
pybind11::tuple device_limits(int64_t index) {
  int sms = 0, smem = 0, coop = 0, major = 0;
  raise_on_error(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, (int)index),
                 "cudaDeviceGetAttribute");
  raise_on_error(
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, (int)index),
      "cudaDeviceGetAttribute");
  raise_on_error(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, (int)index),
                 "cudaDeviceGetAttribute");
  raise_on_error(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, (int)index),
                 "cudaDeviceGetAttribute");
  pybind11::list resident(rnnfast::kMaxCluster + 1);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  for (int c = 0; c <= rnnfast::kMaxCluster; ++c) {
    int clusters = 0;
    // A size the GPU cannot form errors here: 0 such clusters, error cleared.
    if (major >= 9 && c >= 2 && rnnfast::resident_clusters(c, smem, &clusters) != cudaSuccess) {
      (void)cudaGetLastError();
      clusters = 0;
    }
    resident[c] = clusters;
  }
  return pybind11::make_tuple(sms, smem, coop != 0, major, pybind11::tuple(resident));
}

// Latency probes (lstm_probe.cu), timed by rnnfast/backends/probe.py. They trust their
// arguments' values (next's indices, blocks co-resident): that module builds them.
void probe_l2_chase(const Tensor& next,  // [n] int32: one cycle through 0..n-1
                    int64_t loads,
                    const Tensor& out) {  // [2] int64 out: clocks, last index
  const at::Device device = next.device();
  check(next, "next", device, at::kInt, -1);
  check(out, "out", device, at::kLong, 2);
  TORCH_CHECK(loads >= 1, "rnnfast._C.probe_l2_chase: loads must be positive");
  const c10::cuda::CUDAGuard guard(device);
  raise_on_error(rnnfast::probe_l2_chase(reinterpret_cast<const uint32_t*>(next.data_ptr<int>()), loads,
                                         reinterpret_cast<long long*>(out.data_ptr<int64_t>()),
                                         c10::cuda::getCurrentCUDAStream().stream()),
                 "launch of the L2 probe");
}

void probe_phases(const OptTensor& rows,      // [2, blocks, kThreads, 4] int32 zeros (grid exchange)
                  const Tensor& arrivals,     // [1] int64 zeros: the grid barrier's count
                  const Tensor& timed_out,    // [1] int32 zero: set if a barrier wait gave up
                  int64_t rounds, int64_t blocks, int64_t cluster, int64_t multicast,
                  bool exchange, int64_t spin_limit) {
  const at::Device device = arrivals.device();
  check(arrivals, "arrivals", device, at::kLong, 1);
  check(timed_out, "timed_out", device, at::kInt, 1);
  TORCH_CHECK(rounds >= 1 && blocks >= 1 && cluster >= 0 && spin_limit >= 1,
              "rnnfast._C.probe_phases: rounds, blocks and spin_limit must be positive");
  rnnfast::PhaseProbe a{};
  a.rows = ptr_or_null<void>(rows, "rows", device, at::kInt, 2 * blocks * rnnfast::kThreads * 4);
  TORCH_CHECK(!exchange || cluster > 0 || a.rows != nullptr,
              "rnnfast._C.probe_phases: a grid exchange needs rows");
  TORCH_CHECK(multicast == 0 || (cluster == 0 && exchange && (multicast == 2 || multicast == 4 ||
                                                              multicast == 8) &&
                                 blocks % multicast == 0),
              "rnnfast._C.probe_phases: multicast must be 0, or 2, 4 or 8 dividing blocks in an "
              "exchanging grid, got ", multicast, " with ", blocks, " blocks");
  a.rounds = rounds;
  a.blocks = static_cast<int>(blocks);
  a.cluster = static_cast<int>(cluster);
  a.multicast = static_cast<int>(multicast);
  a.exchange = exchange;
  a.barrier.arrivals = reinterpret_cast<unsigned long long*>(arrivals.data_ptr<int64_t>());
  a.barrier.timed_out = timed_out.data_ptr<int>();
  a.barrier.spin_limit = spin_limit;
  const c10::cuda::CUDAGuard guard(device);
  raise_on_launch_error(rnnfast::probe_phases(a, c10::cuda::getCurrentCUDAStream().stream()),
                        cluster > 0     ? "cluster launch of the phase probe"
                        : multicast > 0 ? "cooperative cluster launch of the phase probe"
                                        : "cooperative launch of the phase probe");
}

void probe_cluster_reduce(int64_t blocks, int64_t cluster, int64_t rounds,
                          const Tensor& out) {  // [1] float32 out: a sum, to keep the work
  check(out, "out", out.device(), at::kFloat, 1);
  TORCH_CHECK(out.is_cuda() && rounds >= 1 && cluster >= 2 && cluster <= 8 && blocks >= cluster &&
                  blocks % cluster == 0,
              "rnnfast._C.probe_cluster_reduce: a CUDA out, rounds >= 1, clusters of 2 to 8 "
              "dividing blocks, got ", blocks, " blocks in clusters of ", cluster);
  const c10::cuda::CUDAGuard guard(out.device());
  raise_on_launch_error(rnnfast::probe_cluster_reduce(static_cast<int>(blocks),
                                                      static_cast<int>(cluster), rounds,
                                                      out.data_ptr<float>(),
                                                      c10::cuda::getCurrentCUDAStream().stream()),
                        "cluster launch of the reduce probe");
}

void probe_mma(int64_t blocks, int64_t chains, int64_t rounds,
               const Tensor& out) {  // [3] int64 out: block 0's clocks, nanoseconds, a sum
  check(out, "out", out.device(), at::kLong, 3);
  TORCH_CHECK(out.is_cuda() && blocks >= 1 && rounds >= 1 && (chains == 1 || chains == 8),
              "rnnfast._C.probe_mma: a CUDA out, blocks and rounds >= 1, chains 1 or 8");
  const c10::cuda::CUDAGuard guard(out.device());
  raise_on_error(rnnfast::probe_mma(static_cast<int>(blocks), static_cast<int>(chains), rounds,
                                    reinterpret_cast<long long*>(out.data_ptr<int64_t>()),
                                    c10::cuda::getCurrentCUDAStream().stream()),
                 "launch of the mma probe");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfast CUDA C++ kernels (see csrc/README.md)";
  pybind11::register_exception<LaunchRefused>(m, "LaunchRefused", PyExc_RuntimeError);
  m.def("forward", &forward, "LSTM forward recurrence (persistent grid or cluster kernel)");
  m.def("backward", &backward, "LSTM backward recurrence (persistent grid or cluster kernel)");
  m.def("device_limits", &device_limits,
        "(SM count, opt-in shared memory per block, cooperative launch, CC major)");
  m.def("probe_l2_chase", &probe_l2_chase, "latency probe: chained L2 loads (lstm_probe.cu)");
  m.def("probe_phases", &probe_phases, "latency probe: grid or cluster barrier phases");
  m.def("probe_cluster_reduce", &probe_cluster_reduce,
        "latency probe: the reduce splits' cluster barrier and partial sums");
  m.def("probe_mma", &probe_mma, "latency probe: mma.sync chains");
}
