// Runs the CUDA kernels themselves on the CPU (csrc/tests/emulator.h) for one layer and
// plan: fills ForwardArgs / BackwardArgs as binding.cpp does from tensors, calls
// launch_forward / launch_backward (the real launchers, down to their cluster and
// cooperative attributes) and writes the results. tests/test_cuda_emulated.py builds it
// and compares them with the reference backend.
//
//   emulate forward DIR    reads DIR/meta.txt and DIR/<name>.bin (float32 / int64),
//   emulate backward DIR   writes DIR/out_<name>.bin (float32)
//   emulate selftest NAME  runs a small kernel that breaks one of the emulator's rules
//                          (selftests below), to show the emulator catches it
//
// meta.txt: steps batch hidden out rows reverse dtype (0 fp32, 1 fp16, 2 bf16) units
// proj_cols unit_slices block_rows cluster multicast reg_k_tiles reduce_ctas pass_rows
// spin_limit, then the optional outputs to write: forward any of gates (or gates_in_xg:
// fp32, written over xg in place, as cuda/forward.py has them), cells, hidden;
// backward dy_total. Inputs: xg [rows, 4H], w_hh [4H, P], h0 [B, P], c0 [B, H]; the
// backward gates [rows, 4H], cells [rows, H], dh_n [B, P], dc_n [B, H] instead of xg and
// h0; optional ones where their file exists: bias [4H], w_hr [P, H] (a projection),
// dy [rows, P], offsets and sizes [steps] (packed). Values must be representable in the
// dtype where the kernel takes it.
// Exit codes: 0 done; 2 bad input or a plan binding.cpp refuses; 5 the launch was
// refused; 6 a barrier wait timed out; 3 and 4 come from the emulator (a check failed,
// a deadlock, a fault).
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "emulator.h"
#include "../lstm_kernels.h"

using namespace rnnfast;

namespace {

struct Meta {
  long long steps, batch, hidden, out, rows, reverse, dtype, units, proj_cols, unit_slices,
      block_rows, cluster, multicast, reg_k_tiles, reduce_ctas, pass_rows, spin_limit;
  std::set<std::string> outputs;  // the optional outputs asked for
};

std::string g_run_dir;  // DIR, from the command line

[[noreturn]] void refuse(const char* what) {
  fprintf(stderr, "emulate: %s\n", what);
  exit(2);
}

bool bin_exists(const char* name) {
  FILE* f = fopen((g_run_dir + "/" + name + ".bin").c_str(), "rb");
  if (f != nullptr) fclose(f);
  return f != nullptr;
}

template <typename V> std::vector<V> read_bin(const char* name, size_t count) {
  std::vector<V> v(count);
  const std::string path = g_run_dir + "/" + name + ".bin";
  FILE* f = fopen(path.c_str(), "rb");
  if (f == nullptr) refuse(("cannot open " + path).c_str());
  if (fread(v.data(), sizeof(V), count, f) != count) refuse(("short file " + path).c_str());
  fclose(f);
  return v;
}

void write_bin(const char* name, const std::vector<float>& v) {
  const std::string path = g_run_dir + "/out_" + name + ".bin";
  FILE* f = fopen(path.c_str(), "wb");
  if (f == nullptr || fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) refuse("cannot write");
  fclose(f);
}

Meta read_meta() {
  Meta m;
  const std::string path = g_run_dir + "/meta.txt";
  FILE* f = fopen(path.c_str(), "r");
  if (f == nullptr ||
      fscanf(f, "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
             &m.steps, &m.batch, &m.hidden, &m.out, &m.rows, &m.reverse, &m.dtype, &m.units,
             &m.proj_cols, &m.unit_slices, &m.block_rows, &m.cluster, &m.multicast, &m.reg_k_tiles,
             &m.reduce_ctas, &m.pass_rows, &m.spin_limit) != 17)
    refuse("bad meta.txt");
  char name[32];
  while (fscanf(f, "%31s", name) == 1) m.outputs.insert(name);
  fclose(f);
  return m;
}

size_t itemsize(const Meta& m) { return m.dtype == 0 ? 4 : 2; }

uint16_t to_bits(float v, long long dtype) {
  uint16_t bits;
  if (dtype == 1) {
    const __half h = __float2half_rn(v);
    memcpy(&bits, &h, 2);
  } else {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    memcpy(&bits, &h, 2);
  }
  return bits;
}

float from_bits(const unsigned char* p, long long dtype) {
  if (dtype == 0) {
    float v;
    memcpy(&v, p, 4);
    return v;
  }
  uint16_t bits;
  memcpy(&bits, p, 2);
  return emu::bits_to_float(bits, dtype == 2);
}

// `rows` x `cols` values into a [rows][ld] buffer of global memory in the layer's dtype
// (ld >= cols; the padding stays zero, as the exchange layout needs).
void* io_buffer(const Meta& m, const std::vector<float>& v, size_t rows, size_t cols, size_t ld) {
  auto* p = static_cast<unsigned char*>(emu::alloc_global(rows * ld * itemsize(m)));
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      unsigned char* at = p + (r * ld + c) * itemsize(m);
      if (m.dtype == 0) {
        memcpy(at, &v[r * cols + c], 4);
      } else {
        const uint16_t bits = to_bits(v[r * cols + c], m.dtype);
        memcpy(at, &bits, 2);
      }
    }
  }
  return p;
}

void* io_zeros(const Meta& m, size_t count) { return emu::alloc_global(count * itemsize(m)); }

float* acc_buffer(const std::vector<float>& v) {
  auto* p = static_cast<float*>(emu::alloc_global(v.size() * 4));
  memcpy(p, v.data(), v.size() * 4);
  return p;
}

float* acc_zeros(size_t count) { return static_cast<float*>(emu::alloc_global(count * 4)); }

std::vector<float> io_values(const Meta& m, const void* p, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = from_bits(static_cast<const unsigned char*>(p) + i * itemsize(m), m.dtype);
  return v;
}

std::vector<float> acc_values(const float* p, size_t count) { return std::vector<float>(p, p + count); }

// The packed step tables as the kernel takes them, or null (dense).
void step_tables(const Meta& m, const int64_t** offsets, const int32_t** sizes) {
  *offsets = nullptr;
  *sizes = nullptr;
  if (!bin_exists("offsets")) return;
  const auto o = read_bin<int64_t>("offsets", m.steps);
  const auto s = read_bin<int64_t>("sizes", m.steps);
  auto* op = static_cast<int64_t*>(emu::alloc_global(m.steps * 8));
  auto* sp = static_cast<int32_t*>(emu::alloc_global(m.steps * 4));
  for (long long i = 0; i < m.steps; ++i) {
    op[i] = o[i];
    sp[i] = static_cast<int32_t>(s[i]);
  }
  *offsets = op;
  *sizes = sp;
}

// What ForwardArgs and BackwardArgs share, as binding.cpp fills it: the sizes, the step
// tables, the plan's split (check_split's coverage check) and the grid barrier's state.
template <typename Args> void fill_layer(Args& a, const Meta& m, int proj_cols) {
  step_tables(m, &a.offsets, &a.sizes);
  a.steps = m.steps;
  a.batch = static_cast<int>(m.batch);
  a.hidden_size = static_cast<int>(m.hidden);
  a.out_size = static_cast<int>(m.out);
  a.reverse = m.reverse != 0;
  a.dtype = static_cast<DType>(m.dtype);
  Split& sp = a.split;
  sp = Split{};
  sp.units = static_cast<int>(m.units);
  sp.proj_cols = proj_cols;
  sp.unit_slices = static_cast<int>(m.unit_slices);
  sp.block_rows = static_cast<int>(m.block_rows);
  sp.cluster = static_cast<int>(m.cluster);
  sp.multicast = static_cast<int>(m.multicast);
  sp.reg_k_tiles = static_cast<int>(m.reg_k_tiles);
  sp.reduce_ctas = static_cast<int>(m.reduce_ctas);
  sp.pass_rows = static_cast<int>(m.pass_rows);
  const long long batch_blocks = (m.batch + sp.block_rows - 1) / sp.block_rows;
  if (sp.units < 1 || sp.block_rows < 8 || sp.block_rows % 8 != 0 ||
      (long long)sp.units * sp.unit_slices < m.hidden || (sp.cluster != 0 && sp.cluster != sp.unit_slices))
    refuse("the plan does not cover every unit");
  a.barrier.arrivals = static_cast<unsigned long long*>(emu::alloc_global(batch_blocks * 8));
  a.barrier.timed_out = static_cast<int*>(emu::alloc_global(4));
  a.barrier.spin_limit = m.spin_limit;
  a.blocks = static_cast<int>(batch_blocks * sp.unit_slices);
}

void finish(cudaError_t err, const Barrier& barrier) {
  if (err != cudaSuccess) {
    fprintf(stderr, "emulate: the launch was refused (cudaError %d)\n", static_cast<int>(err));
    exit(5);
  }
  if (*barrier.timed_out != 0) {
    fprintf(stderr, "emulate: a barrier wait timed out\n");
    exit(6);
  }
}

void run_forward(const Meta& m) {
  const size_t H = m.hidden, P = m.out, B = m.batch, N = m.rows;
  const size_t xld = exchange_ld(static_cast<int>(P)), hld = exchange_ld(static_cast<int>(H));
  const bool proj = bin_exists("w_hr");
  ForwardArgs a{};
  a.xg = io_buffer(m, read_bin<float>("xg", N * 4 * H), N, 4 * H, 4 * H);
  a.bias = bin_exists("bias") ? acc_buffer(read_bin<float>("bias", 4 * H)) : nullptr;
  a.w_hh = io_buffer(m, read_bin<float>("w_hh", 4 * H * P), 4 * H, P, P);
  a.w_hr = proj ? io_buffer(m, read_bin<float>("w_hr", P * H), P, H, H) : nullptr;
  a.h0x = io_buffer(m, read_bin<float>("h0", B * P), B, P, xld);
  a.hx = m.cluster == 0 ? io_zeros(m, 2 * B * xld) : nullptr;
  a.hidx = proj ? io_zeros(m, B * hld) : nullptr;
  a.c = acc_buffer(read_bin<float>("c0", B * H));
  a.y = io_zeros(m, N * P);
  // fp32 layers may have the gates overwrite xg in place (cuda/forward.py).
  a.gates = m.outputs.count("gates_in_xg") ? static_cast<float*>(const_cast<void*>(a.xg))
            : m.outputs.count("gates")     ? acc_zeros(N * 4 * H)
                                           : nullptr;
  a.cells = m.outputs.count("cells") ? acc_zeros(N * H) : nullptr;
  a.hidden = proj && m.outputs.count("hidden") ? io_zeros(m, N * H) : nullptr;
  fill_layer(a, m, proj ? static_cast<int>(m.proj_cols) : 0);
  const int item = static_cast<int>(itemsize(m));
  if (!reg_split_ok(forward_layout(a.hidden_size, a.out_size, proj, item, a.split), a.split, item))
    refuse("not a register split the forward handles");
  if (!passes_ok(a.split, proj)) refuse("not a row pass the forward handles");
  finish(launch_forward(a, nullptr), a.barrier);
  write_bin("y", io_values(m, a.y, N * P));
  write_bin("c", acc_values(a.c, B * H));
  if (a.gates != nullptr) write_bin("gates", acc_values(a.gates, N * 4 * H));
  if (a.cells != nullptr) write_bin("cells", acc_values(a.cells, N * H));
  if (a.hidden != nullptr) write_bin("hidden", io_values(m, a.hidden, N * H));
}

void run_backward(const Meta& m) {
  const size_t H = m.hidden, P = m.out, B = m.batch, N = m.rows;
  const size_t gld = exchange_ld(static_cast<int>(4 * H)), pld = exchange_ld(static_cast<int>(P));
  const bool proj = bin_exists("w_hr");
  BackwardArgs a{};
  a.dy = bin_exists("dy") ? io_buffer(m, read_bin<float>("dy", N * P), N, P, P) : nullptr;
  a.gates = acc_buffer(read_bin<float>("gates", N * 4 * H));
  a.cells = acc_buffer(read_bin<float>("cells", N * H));
  a.c0 = acc_buffer(read_bin<float>("c0", B * H));
  a.w_hh = io_buffer(m, read_bin<float>("w_hh", 4 * H * P), 4 * H, P, P);
  a.w_hr = proj ? io_buffer(m, read_bin<float>("w_hr", P * H), P, H, H) : nullptr;
  a.dh_n = acc_buffer(read_bin<float>("dh_n", B * P));
  a.dc_n = acc_buffer(read_bin<float>("dc_n", B * H));
  a.dh0 = acc_zeros(B * P);
  a.dc0 = acc_zeros(B * H);
  a.dgates = acc_zeros(N * 4 * H);
  a.dy_total = m.outputs.count("dy_total") ? acc_zeros(N * P) : nullptr;
  a.gx = m.cluster == 0 ? io_zeros(m, 2 * B * gld) : nullptr;
  a.dhx = proj ? io_zeros(m, B * pld) : nullptr;
  fill_layer(a, m, proj ? static_cast<int>(m.proj_cols) : static_cast<int>(m.units));
  const int item = static_cast<int>(itemsize(m));
  if (!reg_split_ok(backward_layout(a.hidden_size, a.out_size, proj, item, a.split), a.split, item, proj))
    refuse("not a register split the backward handles");
  if (!reduce_ok(a.split, a.hidden_size, proj)) refuse("not a reduce split the backward handles");
  finish(launch_backward(a, nullptr), a.barrier);
  write_bin("dgates", acc_values(a.dgates, N * 4 * H));
  write_bin("dh0", acc_values(a.dh0, B * P));
  write_bin("dc0", acc_values(a.dc0, B * H));
  if (a.dy_total != nullptr) write_bin("dy_total", acc_values(a.dy_total, N * P));
}


// ---------------------------------------------------------------------------------
// Selftests: each kernel breaks one rule of emulator.h; the emulator must say so.

struct SelftestArgs {
  float* out;       // [4] global: what the kernel saw
  const float* in;  // [4] global: 1, 2, 3, 4
  int case_id;
};

constexpr const char* kSelftests[] = {"deadlock", "smem_overrun", "misaligned_ldmatrix",
                                      "divergent_warp", "stale_cp_async", "mbarrier_overwrite",
                                      "peer_rank"};
constexpr size_t kSelftestSmem = 1024;

void selftest_kernel(const SelftestArgs args) {
  unsigned char* smem = dynamic_smem();
  const unsigned t = threadIdx.x;
  switch (args.case_id) {
    case 0:  // half the block meets a second __syncthreads the other half never reaches
      __syncthreads();
      if (t < 128) __syncthreads();
      break;
    case 1:  // a store past the launch's shared memory
      if (t == 0) smem[kSelftestSmem + 128] = 1;
      break;
    case 2: {  // ldmatrix rows 8 bytes off their 16-byte alignment
      uint32_t r[4];
      ldmatrix_x4(r, smem + 8 + 16 * (t % 32));
      break;
    }
    case 3: {  // half a warp at an mma, the other half at an ldmatrix
      uint32_t r[4] = {}, b[2] = {};
      float d[4] = {};
      if (t % 32 < 16)
        MmaOp<__half>::run(d, r, b);
      else
        ldmatrix_x4(r, smem + 16 * (t % 32));
      break;
    }
    case 4:  // a read of a cp.async destination before the thread's wait: the old bytes
      if (t == 0) {
        cp_async16(smem, args.in);
        cp_async_commit();
        memcpy(args.out, smem, 4);
        cp_async_wait<0>();
        memcpy(args.out + 1, smem, 4);
      }
      break;
    case 5:  // an mbarrier's word overwritten after its init, then arrived at
      if (t == 0) {
        auto* bar = reinterpret_cast<uint64_t*>(smem);
        mbarrier_init(bar);
        *bar = 0;
        mbarrier_arrive_expect_tx(bar, 16);
      }
      break;
    case 6:  // st.async to a CTA rank past the cluster's
      if (t == 0) st_async_to_peer(smem + 16, 2u, 1u, reinterpret_cast<uint64_t*>(smem));
      break;
  }
}

int run_selftest(const std::string& name) {
  int id = -1;
  for (int i = 0; i < static_cast<int>(sizeof kSelftests / sizeof *kSelftests); ++i)
    if (name == kSelftests[i]) id = i;
  if (id < 0) refuse("unknown selftest");
  SelftestArgs args{static_cast<float*>(emu::alloc_global(16)), static_cast<float*>(emu::alloc_global(16)), id};
  const float in[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  memcpy(const_cast<float*>(args.in), in, sizeof in);
  cudaFuncSetAttribute(selftest_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSelftestSmem);
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = 2;
  attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
  config.gridDim = dim3(2);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kSelftestSmem;
  config.attrs = &attribute;
  config.numAttrs = 1;
  if (cudaLaunchKernelEx(&config, selftest_kernel, args) != cudaSuccess) refuse("selftest launch refused");
  printf("%g %g\n", args.out[0], args.out[1]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) refuse("usage: emulate forward|backward DIR, or emulate selftest NAME");
  if (std::string(argv[1]) == "selftest") return run_selftest(argv[2]);
  g_run_dir = argv[2];
  const Meta m = read_meta();
  if (m.dtype < 0 || m.dtype > 2) refuse("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
  const std::string direction = argv[1];
  if (direction == "forward")
    run_forward(m);
  else if (direction == "backward")
    run_backward(m);
  else
    refuse("the first argument must be forward or backward");
  return 0;
}
