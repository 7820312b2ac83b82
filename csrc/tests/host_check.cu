// Host-side check of the kernels' logic (no GPU): runs the forward and backward
// recurrences on the CPU with the kernels' own __host__ __device__ code from
// lstm_common.cuh -- the cell and its gradient, step_rows / carried_rows for packed and
// reverse sequences, the block split of units (gate_row) and of projection columns --
// in the same loop order as the kernels (per step: blocks, then tiles of 16 rows).
// What it cannot check is the on-device part: shared-memory staging, WMMA, the grid
// barrier. tests/test_cuda_sources.py builds it with nvcc and compares its output with
// rnnfast's reference backend.
//
//   host_check forward DIR    reads DIR/meta.txt and DIR/<name>.bin (float32 / int64),
//   host_check backward DIR   writes DIR/out_<name>.bin
//   host_check layout         stdin: "H P proj itemsize units cols" lines;
//                             stdout: forward and backward shared-memory bytes
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../lstm_common.cuh"

using namespace rnnfast;

namespace {

struct Meta {
  long long steps, batch, hidden, out, rows, reverse, packed, has_proj, has_bias, blocks, units,
      proj_cols, has_dy;
};

std::string g_dir;

template <typename V>
std::vector<V> read_bin(const char* name, size_t count) {
  std::vector<V> v(count);
  const std::string path = g_dir + "/" + name + ".bin";
  FILE* f = fopen(path.c_str(), "rb");
  if (f == nullptr) { fprintf(stderr, "cannot open %s\n", path.c_str()); exit(2); }
  if (fread(v.data(), sizeof(V), count, f) != count) { fprintf(stderr, "short %s\n", name); exit(2); }
  fclose(f);
  return v;
}

void write_bin(const char* name, const std::vector<float>& v) {
  const std::string path = g_dir + "/out_" + name + ".bin";
  FILE* f = fopen(path.c_str(), "wb");
  fwrite(v.data(), sizeof(float), v.size(), f);
  fclose(f);
}

Meta read_meta() {
  Meta m;
  const std::string path = g_dir + "/meta.txt";
  FILE* f = fopen(path.c_str(), "r");
  if (f == nullptr || fscanf(f, "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
                             &m.steps, &m.batch, &m.hidden, &m.out, &m.rows, &m.reverse, &m.packed,
                             &m.has_proj, &m.has_bias, &m.blocks, &m.units, &m.proj_cols,
                             &m.has_dy) != 13) {
    fprintf(stderr, "bad meta.txt\n");
    exit(2);
  }
  fclose(f);
  return m;
}

struct Tables {
  std::vector<int64_t> offsets;
  std::vector<int32_t> sizes;
  const int64_t* off() const { return offsets.empty() ? nullptr : offsets.data(); }
  const int32_t* siz() const { return sizes.empty() ? nullptr : sizes.data(); }
};

Tables read_tables(const Meta& m) {
  Tables t;
  if (m.packed) {
    t.offsets = read_bin<int64_t>("offsets", m.steps);
    std::vector<int64_t> s = read_bin<int64_t>("sizes", m.steps);
    t.sizes.assign(s.begin(), s.end());
  }
  return t;
}

void forward(const Meta& m) {
  const int H = m.hidden, P = m.out, B = m.batch, U = m.units, Pc = m.proj_cols;
  const size_t N = m.rows, G = 4 * (size_t)H;
  const Tables tab = read_tables(m);
  auto xg = read_bin<float>("xg", N * G), w_hh = read_bin<float>("w_hh", G * P);
  auto h0 = read_bin<float>("h0", (size_t)B * P), c = read_bin<float>("c0", (size_t)B * H);
  std::vector<float> bias = m.has_bias ? read_bin<float>("bias", G) : std::vector<float>(G, 0.f);
  std::vector<float> w_hr = m.has_proj ? read_bin<float>("w_hr", (size_t)P * H) : std::vector<float>();
  std::vector<float> y(N * P), gates(N * G), cells(N * H), hidden(N * H);
  for (int64_t k = 0; k < m.steps; ++k) {
    const StepRows s = step_rows(tab.off(), tab.siz(), k, m.steps, B, m.reverse);
    for (int j = 0; j < m.blocks; ++j) {  // phase 1, block by block as on the GPU
      const int unit0 = j * U;
      const int mine = unit0 < H ? (H - unit0 < U ? H - unit0 : U) : 0;
      for (int r0 = 0; r0 < s.size; r0 += kTileRows)
        for (int b = 0; b < kTileRows && r0 + b < s.size; ++b)
          for (int u = 0; u < mine; ++u) {
            const int r = r0 + b, unit = unit0 + u;
            const int64_t row = s.offset + r;
            float pre[4];
            for (int g = 0; g < 4; ++g) {
              const int grow = gate_row(g * U + u, U, unit0, H);
              float acc = 0.f;
              for (int p = 0; p < P; ++p) {
                const float hp = r < s.size_prev ? y[(s.offset_prev + r) * P + p] : h0[(size_t)r * P + p];
                acc += hp * w_hh[(size_t)grow * P + p];
              }
              pre[g] = acc + xg[row * G + g * H + unit] + bias[g * H + unit];
            }
            const CellOut o = lstm_cell(pre[0], pre[1], pre[2], pre[3], c[(size_t)r * H + unit]);
            c[(size_t)r * H + unit] = o.c;
            gates[row * G + unit] = o.i, gates[row * G + H + unit] = o.f;
            gates[row * G + 2 * H + unit] = o.g, gates[row * G + 3 * H + unit] = o.o;
            cells[row * H + unit] = o.c;
            (m.has_proj ? hidden[row * H + unit] : y[row * P + unit]) = o.h;
          }
    }
    for (int j = 0; m.has_proj && j < m.blocks; ++j) {  // phase 2: my output columns
      for (int n = 0; n < Pc && j * Pc + n < P; ++n)
        for (int r = 0; r < s.size; ++r) {
          float acc = 0.f;
          for (int h = 0; h < H; ++h)
            acc += hidden[(s.offset + r) * H + h] * w_hr[(size_t)(j * Pc + n) * H + h];
          y[(s.offset + r) * P + j * Pc + n] = acc;
        }
    }
  }
  write_bin("y", y), write_bin("c", c), write_bin("gates", gates), write_bin("cells", cells);
  write_bin("hidden", hidden);
}

void backward(const Meta& m) {
  const int H = m.hidden, P = m.out, B = m.batch, U = m.units, Pc = m.proj_cols;
  const size_t N = m.rows, G = 4 * (size_t)H;
  const Tables tab = read_tables(m);
  auto gates = read_bin<float>("gates", N * G), cells = read_bin<float>("cells", N * H);
  auto c0 = read_bin<float>("c0", (size_t)B * H), w_hh = read_bin<float>("w_hh", G * P);
  auto dh = read_bin<float>("dh_n", (size_t)B * P), dc = read_bin<float>("dc_n", (size_t)B * H);
  std::vector<float> dy = m.has_dy ? read_bin<float>("dy", N * P) : std::vector<float>(N * P, 0.f);
  std::vector<float> w_hr = m.has_proj ? read_bin<float>("w_hr", (size_t)P * H) : std::vector<float>();
  std::vector<float> dgates(N * G), dh0((size_t)B * P), dc0((size_t)B * H), dy_total(N * P);
  for (int64_t k = m.steps - 1; k >= 0; --k) {
    const StepRows s = step_rows(tab.off(), tab.siz(), k, m.steps, B, m.reverse);
    const int carried = carried_rows(s);
    for (int r = 0; r < s.size; ++r)  // (dh + dy): what block 0 / each block stores
      for (int p = 0; p < P; ++p)
        dy_total[(s.offset + r) * P + p] = dh[(size_t)r * P + p] + dy[(s.offset + r) * P + p];
    for (int j = 0; j < m.blocks; ++j) {
      const int unit0 = j * U;
      for (int u = 0; u < U && unit0 + u < H; ++u)
        for (int r = 0; r < s.size; ++r) {
          const int unit = unit0 + u;
          const int64_t row = s.offset + r;
          float dhu = 0.f;
          if (m.has_proj)
            for (int p = 0; p < P; ++p) dhu += dy_total[row * P + p] * w_hr[(size_t)p * H + unit];
          else
            dhu = dy_total[row * P + unit];
          const float c_prev = r < s.size_prev ? cells[(s.offset_prev + r) * H + unit] : c0[(size_t)r * H + unit];
          const float* gt = &gates[row * G + unit];
          const CellGrad d = lstm_cell_backward(gt[0], gt[H], gt[2 * H], gt[3 * H], cells[row * H + unit],
                                                c_prev, dhu, dc[(size_t)r * H + unit]);
          dgates[row * G + unit] = d.d_i, dgates[row * G + H + unit] = d.d_f;
          dgates[row * G + 2 * H + unit] = d.d_g, dgates[row * G + 3 * H + unit] = d.d_o;
          (r < carried ? dc[(size_t)r * H + unit] : dc0[(size_t)r * H + unit]) = d.dc_prev;
        }
    }
    for (int j = 0; j < m.blocks; ++j)
      for (int n = 0; n < Pc && j * Pc + n < P; ++n)
        for (int r = 0; r < s.size; ++r) {
          float acc = 0.f;
          for (size_t q = 0; q < G; ++q) acc += dgates[(s.offset + r) * G + q] * w_hh[q * P + j * Pc + n];
          (r < carried ? dh[(size_t)r * P + j * Pc + n] : dh0[(size_t)r * P + j * Pc + n]) = acc;
        }
  }
  write_bin("dgates", dgates), write_bin("dh0", dh0), write_bin("dc0", dc0);
  write_bin("dy_total", dy_total);
}

void layout() {
  int H, P, proj, itemsize, units, cols;
  while (scanf("%d %d %d %d %d %d", &H, &P, &proj, &itemsize, &units, &cols) == 6) {
    const ForwardLayout f = forward_layout(H, P, proj != 0, itemsize, units, cols);
    const BackwardLayout b = backward_layout(H, P, proj != 0, itemsize, units, cols);
    printf("%zu %zu\n", f.bytes, b.bytes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "layout") == 0) { layout(); return 0; }
  if (argc < 3) { fprintf(stderr, "usage: host_check forward|backward DIR | layout\n"); return 2; }
  g_dir = argv[2];
  const Meta m = read_meta();
  if (strcmp(argv[1], "forward") == 0) forward(m);
  else if (strcmp(argv[1], "backward") == 0) backward(m);
  else return 2;
  return 0;
}
