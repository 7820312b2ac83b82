// Host-side check of the kernels' logic (no GPU): runs the forward and backward
// recurrences on the CPU with the kernels' own __host__ __device__ code from
// lstm_common.cuh -- the cell and its gradient, step_rows / carried_rows /
// block_active for packed and reverse sequences, the split of units and batch rows
// over blocks (gate_row), the products' geometry (make_product: padding, chunks, k-split
// and the order the kernel sums them in) with the 3xTF32 split for fp32 layouts, the
// exchange buffers and their step parity, and the backward's phase order -- block by
// block in the kernels' loop order. What it cannot check is the on-device part:
// cp.async staging, mma fragments, shared-memory addressing, the barriers.
// tests/test_cuda_sources.py builds it and compares its output with rnnfast's
// reference backend.
//
//   host_check forward DIR    reads DIR/meta.txt and DIR/<name>.bin (float32 / int64),
//   host_check backward DIR   writes DIR/out_<name>.bin
//   host_check layout         stdin: "H P proj itemsize units cols block_rows cluster" lines;
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
  long long steps, batch, hidden, out, rows, reverse, packed, has_proj, has_bias, units, proj_cols,
      unit_slices, block_rows, cluster, itemsize, has_dy;
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
  if (f == nullptr ||
      fscanf(f, "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
             &m.steps, &m.batch, &m.hidden, &m.out, &m.rows, &m.reverse, &m.packed, &m.has_proj,
             &m.has_bias, &m.units, &m.proj_cols, &m.unit_slices, &m.block_rows, &m.cluster,
             &m.itemsize, &m.has_dy) != 16) {
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

Split split_of(const Meta& m) {
  Split sp;
  sp.units = (int)m.units, sp.proj_cols = (int)m.proj_cols, sp.unit_slices = (int)m.unit_slices;
  sp.block_rows = (int)m.block_rows, sp.cluster = (int)m.cluster;
  return sp;
}

// A product's A operand as a block holds it: [p.m][p.a_ld], weight(m, k) for m < rows,
// k < cols, zero elsewhere (lstm_device.cuh load_weights).
template <typename Weight>
std::vector<float> held(const Product& p, int rows, int cols, Weight weight) {
  std::vector<float> a((size_t)p.m * p.a_ld, 0.f);
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < cols; ++k) a[(size_t)r * p.a_ld + k] = weight(r, k);
  return a;
}

// Output m of a product for one B row (brow: p.k values, zero-padded), summed as
// resident_product and product_out sum it: per k-slice, each accumulator copy over its
// turns of the slice's k-tiles chunk by chunk, the copies added in order, then the
// slices added; fp32 layouts multiply through the 3xTF32 split in the mma's order.
float product_host(const Product& p, int itemsize, const std::vector<float>& a, int m,
                   const float* brow) {
  const int kt = k_tile(itemsize);
  float total = 0.f;
  for (int ks = 0; ks < p.ksplit; ++ks) {
    float copies[kMaxCopies] = {0.f, 0.f, 0.f, 0.f};
    for (int ch = 0; ch < p.chunks; ++ch) {
      const int col0 = ch * p.chunk, tiles = min_int(p.chunk, p.k - col0) / kt;
      for (int kk = ks; kk < tiles; kk += p.ksplit) {
        float& acc = copies[((kk - ks) / p.ksplit) % p.copies];
        for (int j = 0; j < kt; ++j) {
          const float x = a[(size_t)m * p.a_ld + col0 + kk * kt + j], w = brow[col0 + kk * kt + j];
          if (itemsize == 4) {
            const Tf32Split sx = tf32_split(x), sw = tf32_split(w);
            acc += sx.big * sw.small;
            acc += sx.small * sw.big;
            acc += sx.big * sw.big;
          } else {
            acc += x * w;
          }
        }
      }
    }
    float slice = copies[0];
    for (int c = 1; c < p.copies; ++c) slice += copies[c];
    total += slice;
  }
  return total;
}

void forward(const Meta& m) {
  const int H = m.hidden, P = m.out, B = m.batch, U = m.units, Bb = m.block_rows;
  const int itemsize = m.itemsize;
  const bool proj = m.has_proj;
  const size_t N = m.rows, G = 4 * (size_t)H;
  const Split sp = split_of(m);
  const ForwardLayout L = forward_layout(H, P, proj, itemsize, sp);
  const Tables tab = read_tables(m);
  auto xg = read_bin<float>("xg", N * G), w_hh = read_bin<float>("w_hh", G * P);
  auto h0 = read_bin<float>("h0", (size_t)B * P), c = read_bin<float>("c0", (size_t)B * H);
  std::vector<float> bias = m.has_bias ? read_bin<float>("bias", G) : std::vector<float>(G, 0.f);
  std::vector<float> w_hr = proj ? read_bin<float>("w_hr", (size_t)P * H) : std::vector<float>();
  std::vector<float> y(N * P), gates(N * G), cells(N * H), hidden(N * H);
  const int xld = exchange_ld(P), hld = exchange_ld(H);
  std::vector<float> h0x((size_t)B * xld, 0.f), hx(2 * (size_t)B * xld, 0.f), hidx((size_t)B * hld, 0.f);
  for (int r = 0; r < B; ++r)
    for (int p = 0; p < P; ++p) h0x[(size_t)r * xld + p] = h0[(size_t)r * P + p];
  std::vector<std::vector<float>> w_s, wr_s;  // what each slice holds
  for (int j = 0; j < sp.unit_slices; ++j) {
    const int unit0 = j * U, mine = clamp_int(H - unit0, 0, U), col0 = j * sp.proj_cols;
    w_s.push_back(held(L.rec, 4 * U, P, [&](int r, int k) {
      return r % U < mine ? w_hh[(size_t)gate_row(r, U, unit0, H) * P + k] : 0.f;
    }));
    if (proj)
      wr_s.push_back(held(L.proj, clamp_int(P - col0, 0, sp.proj_cols), H,
                          [&](int n, int k) { return w_hr[(size_t)(col0 + n) * H + k]; }));
  }
  const int batch_blocks = cdiv(B, Bb);
  for (int64_t k = 0; k < m.steps; ++k) {
    const StepRows s = step_rows(tab.off(), tab.siz(), k, m.steps, B, m.reverse);
    const float* h_prev = &hx[(size_t)((k & 1) ^ 1) * B * xld];
    float* h_next = &hx[(size_t)(k & 1) * B * xld];
    for (int q = 0; q < batch_blocks; ++q)  // phase 1, block by block as on the GPU
      for (int j = 0; j < sp.unit_slices; ++j) {
        const int row0 = q * Bb, unit0 = j * U, mine = clamp_int(H - unit0, 0, U);
        const int n_act = block_active(s.size, row0, Bb);
        for (int b = 0; b < n_act; ++b)
          for (int u = 0; u < mine; ++u) {
            const int r = row0 + b, unit = unit0 + u;
            const int64_t row = s.offset + r;
            const float* brow = (r < s.size_prev ? h_prev : h0x.data()) + (size_t)r * xld;
            float pre[4];
            for (int g = 0; g < 4; ++g)
              pre[g] = product_host(L.rec, itemsize, w_s[j], g * U + u, brow) +
                       (xg[row * G + g * H + unit] + bias[g * H + unit]);
            const CellOut o = lstm_cell(pre[0], pre[1], pre[2], pre[3], c[(size_t)r * H + unit]);
            c[(size_t)r * H + unit] = o.c;
            gates[row * G + unit] = o.i, gates[row * G + H + unit] = o.f;
            gates[row * G + 2 * H + unit] = o.g, gates[row * G + 3 * H + unit] = o.o;
            cells[row * H + unit] = o.c;
            if (proj) {
              hidden[row * H + unit] = o.h;
              hidx[(size_t)r * hld + unit] = o.h;
            } else {
              y[row * P + unit] = o.h;
              h_next[(size_t)r * xld + unit] = o.h;
            }
          }
      }
    for (int q = 0; proj && q < batch_blocks; ++q)  // phase 2: my output columns
      for (int j = 0; j < sp.unit_slices; ++j) {
        const int row0 = q * Bb, col0 = j * sp.proj_cols;
        const int n_act = block_active(s.size, row0, Bb);
        for (int b = 0; b < n_act; ++b)
          for (int n = 0; n < sp.proj_cols && col0 + n < P; ++n) {
            const int r = row0 + b;
            const float v = product_host(L.proj, itemsize, wr_s[j], n, &hidx[(size_t)r * hld]);
            y[(s.offset + r) * P + col0 + n] = v;
            h_next[(size_t)r * xld + col0 + n] = v;
          }
      }
  }
  write_bin("y", y), write_bin("c", c), write_bin("gates", gates), write_bin("cells", cells);
  write_bin("hidden", hidden);
}

void backward(const Meta& m) {
  const int H = m.hidden, P = m.out, B = m.batch, U = m.units, Bb = m.block_rows;
  const int itemsize = m.itemsize;
  const bool proj = m.has_proj;
  const int Pc = proj ? (int)m.proj_cols : U;
  const size_t N = m.rows, G = 4 * (size_t)H;
  const Split sp = split_of(m);
  const BackwardLayout L = backward_layout(H, P, proj, itemsize, sp);
  const Tables tab = read_tables(m);
  auto gates = read_bin<float>("gates", N * G), cells = read_bin<float>("cells", N * H);
  auto c0 = read_bin<float>("c0", (size_t)B * H), w_hh = read_bin<float>("w_hh", G * P);
  auto dh_n = read_bin<float>("dh_n", (size_t)B * P), dc = read_bin<float>("dc_n", (size_t)B * H);
  std::vector<float> dy = m.has_dy ? read_bin<float>("dy", N * P) : std::vector<float>(N * P, 0.f);
  std::vector<float> w_hr = proj ? read_bin<float>("w_hr", (size_t)P * H) : std::vector<float>();
  std::vector<float> dgates(N * G), dh0((size_t)B * P), dc0((size_t)B * H), dy_total(N * P);
  const int gld = exchange_ld(4 * H), pld = exchange_ld(P);
  std::vector<float> gx(2 * (size_t)B * gld, 0.f), dhx((size_t)B * pld, 0.f);
  std::vector<std::vector<float>> w_s, wr_s;
  for (int j = 0; j < sp.unit_slices; ++j) {
    const int unit0 = j * U, col0 = j * Pc;
    w_s.push_back(held(L.chain, clamp_int(P - col0, 0, Pc), 4 * H,
                       [&](int n, int q) { return w_hh[(size_t)q * P + col0 + n]; }));
    if (proj)
      wr_s.push_back(held(L.proj, clamp_int(H - unit0, 0, U), P,
                          [&](int u, int p) { return w_hr[(size_t)p * H + unit0 + u]; }));
  }
  const int batch_blocks = cdiv(B, Bb);
  auto rows_of = [&](int64_t k) { return step_rows(tab.off(), tab.siz(), k, m.steps, B, m.reverse); };
  // The cell's backward of (row r, unit) at step k with dL/dh(t) = dh (dy included).
  auto cell = [&](int64_t k, const StepRows& s, int r, int unit, float dh) {
    const int64_t row = s.offset + r;
    const float c_prev = r < s.size_prev ? cells[(s.offset_prev + r) * H + unit] : c0[(size_t)r * H + unit];
    const float* gt = &gates[row * G + unit];
    const CellGrad d = lstm_cell_backward(gt[0], gt[H], gt[2 * H], gt[3 * H], cells[row * H + unit],
                                          c_prev, dh, dc[(size_t)r * H + unit]);
    const float grads[4] = {d.d_i, d.d_f, d.d_g, d.d_o};
    for (int g = 0; g < 4; ++g) {
      dgates[row * G + g * H + unit] = grads[g];
      gx[((size_t)(k & 1) * B + r) * gld + g * H + unit] = grads[g];
    }
    (r < carried_rows(s) ? dc[(size_t)r * H + unit] : dc0[(size_t)r * H + unit]) = d.dc_prev;
  };
  if (!proj) {
    for (int64_t k = m.steps - 1; k >= -1; --k) {
      StepRows s{0, 0, 0, 0};
      if (k >= 0) s = rows_of(k);
      const int next_size = k + 1 < m.steps ? rows_of(k + 1).size : 0;
      const float* g_in = &gx[(size_t)((k + 1) & 1) * B * gld];
      for (int q = 0; q < batch_blocks; ++q)
        for (int j = 0; j < sp.unit_slices; ++j) {
          const int row0 = q * Bb, unit0 = j * U, mine = clamp_int(H - unit0, 0, U);
          const int n_act = k >= 0 ? block_active(s.size, row0, Bb) : 0;
          const int n_next = block_active(next_size, row0, Bb);
          for (int b = 0; b < (n_act > n_next ? n_act : n_next); ++b)
            for (int u = 0; u < mine; ++u) {
              const int r = row0 + b, unit = unit0 + u;
              const float prod = b < n_next ? product_host(L.chain, itemsize, w_s[j], u, g_in + (size_t)r * gld) : 0.f;
              if (b < n_act) {
                const float dh = (b < n_next ? prod : dh_n[(size_t)r * P + unit]) + dy[(s.offset + r) * P + unit];
                dy_total[(s.offset + r) * P + unit] = dh;
                cell(k, s, r, unit, dh);
              } else {
                dh0[(size_t)r * P + unit] = prod;
              }
            }
        }
    }
  } else {
    auto phase_b = [&](int64_t k) {
      const int size = k < m.steps ? rows_of(k).size : 0;
      StepRows s_prev{0, 0, 0, 0};
      if (k >= 1) s_prev = rows_of(k - 1);
      const float* g_in = &gx[(size_t)(k & 1) * B * gld];
      for (int q = 0; q < batch_blocks; ++q)
        for (int j = 0; j < sp.unit_slices; ++j) {
          const int row0 = q * Bb, col0 = j * Pc;
          const int n_act = block_active(size, row0, Bb), n_prev = block_active(s_prev.size, row0, Bb);
          for (int b = 0; b < (n_act > n_prev ? n_act : n_prev); ++b)
            for (int n = 0; n < Pc && col0 + n < P; ++n) {
              const int r = row0 + b, col = col0 + n;
              float v = b < n_act ? product_host(L.chain, itemsize, w_s[j], n, g_in + (size_t)r * gld)
                                  : dh_n[(size_t)r * P + col];
              if (b >= n_prev) {
                dh0[(size_t)r * P + col] = v;
                continue;
              }
              v += dy[(s_prev.offset + r) * P + col];
              dhx[(size_t)r * pld + col] = v;
              dy_total[(s_prev.offset + r) * P + col] = v;
            }
        }
    };
    phase_b(m.steps);
    for (int64_t k = m.steps - 1; k >= 0; --k) {
      const StepRows s = rows_of(k);
      for (int q = 0; q < batch_blocks; ++q)
        for (int j = 0; j < sp.unit_slices; ++j) {
          const int row0 = q * Bb, unit0 = j * U, mine = clamp_int(H - unit0, 0, U);
          for (int b = 0; b < block_active(s.size, row0, Bb); ++b)
            for (int u = 0; u < mine; ++u) {
              const int r = row0 + b;
              cell(k, s, r, unit0 + u, product_host(L.proj, itemsize, wr_s[j], u, &dhx[(size_t)r * pld]));
            }
        }
      phase_b(k);
    }
  }
  write_bin("dgates", dgates), write_bin("dh0", dh0), write_bin("dc0", dc0);
  write_bin("dy_total", dy_total);
}

void layout() {
  int H, P, proj, itemsize, units, cols, block_rows, cluster;
  while (scanf("%d %d %d %d %d %d %d %d", &H, &P, &proj, &itemsize, &units, &cols, &block_rows,
               &cluster) == 8) {
    Split sp;
    sp.units = units, sp.proj_cols = cols, sp.unit_slices = 1, sp.block_rows = block_rows;
    sp.cluster = cluster;
    const ForwardLayout f = forward_layout(H, P, proj != 0, itemsize, sp);
    sp.cluster = 0;
    const BackwardLayout b = backward_layout(H, P, proj != 0, itemsize, sp);
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
