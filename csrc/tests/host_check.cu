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
//   host_check layout         stdin: "H P proj itemsize units cols block_rows cluster multicast
//                             reg_k_tiles reduce_ctas unit_slices pass_rows" lines; stdout:
//                             forward (with pass_rows) and backward (with reduce_ctas)
//                             shared-memory bytes, whether each direction's kernel handles
//                             that register split (reg_split_ok), the backward's the
//                             reduce split (reduce_ok) and the forward's the row passes
//                             (passes_ok)
//   host_check fragments      emulates ldmatrix and mma from the PTX ISA's layout
//                             formulas on the kernels' fragment addresses, and checks
//                             the warps' split of every product covers each tile once
//                             (exit 1 and a message on the first disagreement)
//   host_check exchange       replays the cluster plans' st.async exchange
//                             (exchange_step) of every cluster split: what each CTA
//                             sends lands inside the operand's k columns, word-aligned,
//                             on no other CTA's columns, covers every peer column, and
//                             adds up to the bytes each receiver's mbarrier expects
//                             (exit 1 and a message on the first disagreement)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../lstm_common.cuh"
#include "run_files.h"

using namespace rnnfast;

namespace {

struct Meta {
  long long steps, batch, hidden, out, rows, reverse, packed, has_proj, has_bias, units, proj_cols,
      unit_slices, block_rows, cluster, itemsize, has_dy, reg_k_tiles, reduce_ctas, pass_rows;
};

Meta read_meta() {
  Meta m;
  const std::string path = meta_path();
  FILE* f = fopen(path.c_str(), "r");
  if (f == nullptr ||
      fscanf(f,
             "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld "
             "%lld %lld",
             &m.steps, &m.batch, &m.hidden, &m.out, &m.rows, &m.reverse, &m.packed, &m.has_proj,
             &m.has_bias, &m.units, &m.proj_cols, &m.unit_slices, &m.block_rows, &m.cluster,
             &m.itemsize, &m.has_dy, &m.reg_k_tiles, &m.reduce_ctas, &m.pass_rows) != 19) {
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

// Multicast staging (Split::multicast) changes how B arrives in shared memory, not the
// product: the host check reads B whole either way, so its splits have none.
Split split_of(const Meta& m) {
  Split sp{};
  sp.units = (int)m.units, sp.proj_cols = (int)m.proj_cols, sp.unit_slices = (int)m.unit_slices;
  sp.block_rows = (int)m.block_rows, sp.cluster = (int)m.cluster;
  sp.reg_k_tiles = (int)m.reg_k_tiles;
  sp.reduce_ctas = (int)m.reduce_ctas;
  sp.pass_rows = (int)m.pass_rows;
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

// A register plan's recurrent weight rows whole, [p.m][reg_cols + p.k]: weight(r, k) for
// r < rows, zero elsewhere (weight must be zero past the layer's columns); empty
// without registers (reg_cols 0).
template <typename Weight>
std::vector<float> whole_rows(const Product& p, int reg_cols, int rows, Weight weight) {
  const int K = reg_cols + p.k;
  std::vector<float> a(reg_cols > 0 ? (size_t)p.m * K : 0, 0.f);
  for (int r = 0; r < rows && reg_cols > 0; ++r)
    for (int k = 0; k < K; ++k) a[(size_t)r * K + k] = weight(r, k);
  return a;
}

// Output m of a product for one B row (brow: p.k values, zero-padded), summed as
// resident_product and product_out sum it: per k-slice, each accumulator copy over its
// turns of the slice's k-tiles chunk by chunk, the copies added in order, then the
// slices added onto `total`; fp32 layouts multiply through the 3xTF32 split in the mma's
// order.
float product_host(const Product& p, int itemsize, const std::vector<float>& a, int m,
                   const float* brow, float total = 0.f) {
  const int kt = k_tile(itemsize);
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

// Output m of a register plan's product for one B row (brow: the whole padded row): the
// register k-slices added in order, each over its k-tiles in `copies` accumulators
// taking them in turn, the copies added in order (reg_product), then the shared-memory
// part `p`'s slices onto that (product_out with the register slices ahead); `a` holds
// the shared-memory part's columns [reg_cols, K), `a_regs` the full rows [m][K] it came
// from. 16-bit plans only. Without registers (slices 0), product_host.
float reg_product_host(const Product& p, int slices, int reg_cols, int reg_k_tiles, int copies,
                       int itemsize, const std::vector<float>& a,
                       const std::vector<float>& a_regs, int m, const float* brow) {
  float total = 0.f;
  const int kt = k_tile(itemsize), K = reg_cols + p.k;
  for (int g = 0; g < slices; ++g) {
    float acc[kMaxCopies] = {0.f, 0.f, 0.f, 0.f};
    for (int kk = 0; kk < reg_k_tiles; ++kk)
      for (int k = (g * reg_k_tiles + kk) * kt; k < (g * reg_k_tiles + kk + 1) * kt; ++k)
        acc[kk % copies] += a_regs[(size_t)m * K + k] * brow[k];
    float slice = acc[0];
    for (int c = 1; c < copies; ++c) slice += acc[c];
    total += slice;
  }
  return product_host(p, itemsize, a, m, brow + reg_cols, total);
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
  if (!reg_split_ok(L, sp, itemsize) || !passes_ok(sp, proj)) {
    fprintf(stderr, "not a register split or row passes the kernel handles\n");
    exit(2);
  }
  std::vector<std::vector<float>> w_s, w_regs, wr_s;  // what each slice holds
  for (int j = 0; j < sp.unit_slices; ++j) {
    const int unit0 = j * U, mine = clamp_int(H - unit0, 0, U), col0 = j * sp.proj_cols;
    auto w_of = [&](int r, int k) {
      return r % U < mine && k < P ? w_hh[(size_t)gate_row(r, U, unit0, H) * P + k] : 0.f;
    };
    w_s.push_back(held(L.rec, 4 * U, P - L.reg_cols,
                       [&](int r, int k) { return w_of(r, L.reg_cols + k); }));
    w_regs.push_back(whole_rows(L.rec, L.reg_cols, 4 * U, w_of));
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
              pre[g] = reg_product_host(L.rec, L.reg_slices, L.reg_cols, sp.reg_k_tiles,
                                        reg_copies(kRegTiles), itemsize, w_s[j], w_regs[j],
                                        g * U + u, brow) +
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
  if (!reg_split_ok(L, sp, itemsize, proj) || !reduce_ok(sp, H, proj)) {
    fprintf(stderr, "not a register or reduce split the kernel handles\n");
    exit(2);
  }
  // Reduce splits (lstm_backward.cu): slice j is CTA rank j % c of its cluster, holding
  // W_hh^T rows of the cluster's units over its gate columns [g0, g0 + its chain.k).
  const int ctas = sp.reduce_ctas > 0 ? sp.reduce_ctas : 1;
  std::vector<std::vector<float>> w_s, w_regs, wr_s;  // what each slice holds
  std::vector<Product> chain_of;                       // ... and its chain product
  std::vector<int> g0_of;
  for (int j = 0; j < sp.unit_slices; ++j) {
    const int unit0 = j * U, col0 = j * Pc, mine = clamp_int(P - col0, 0, Pc);
    auto w_of = [&](int n, int q) {  // W_hh^T (my column n, gate row q)
      return n < mine && q < 4 * H ? w_hh[(size_t)q * P + col0 + n] : 0.f;
    };
    Product chain = L.chain;
    int g0 = 0;
    if (sp.reduce_ctas > 0) {
      const int rank = j % ctas, first = (j - rank) * U;
      const int cols = reduce_real_cols(H, ctas, rank);
      g0 = rank * reduce_cols(H, ctas);
      chain.k = round_up(cols, k_tile(itemsize));
      chain.chunks = cdiv(chain.k, chain.chunk);
      w_s.push_back(held(L.chain, clamp_int(H - first, 0, ctas * U), cols,
                         [&](int n, int q) { return w_hh[(size_t)(g0 + q) * P + first + n]; }));
    } else {
      w_s.push_back(held(L.chain, mine, 4 * H - L.reg_cols,
                         [&](int n, int q) { return w_of(n, L.reg_cols + q); }));
    }
    chain_of.push_back(chain);
    g0_of.push_back(g0);
    w_regs.push_back(whole_rows(L.chain, L.reg_cols, mine, w_of));
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
          // Reduce splits: every CTA of my cluster, in rank order, each its k-slices in
          // order (reduce_partials); otherwise my own product (product_out).
          const int rank = j % ctas;
          auto dh_product = [&](int u, const float* grow) {
            if (sp.reduce_ctas == 0)
              return reg_product_host(L.chain, L.reg_slices, L.reg_cols, sp.reg_k_tiles,
                                      reg_copies(kChainRegTiles), itemsize, w_s[j], w_regs[j], u,
                                      grow);
            float total = 0.f;
            for (int c = 0; c < ctas; ++c) {
              const int peer = j - rank + c;
              total = product_host(chain_of[peer], itemsize, w_s[peer], rank * U + u,
                                   grow + g0_of[peer], total);
            }
            return total;
          };
          for (int b = 0; b < (n_act > n_next ? n_act : n_next); ++b)
            for (int u = 0; u < mine; ++u) {
              const int r = row0 + b, unit = unit0 + u;
              const float prod = b < n_next ? dh_product(u, g_in + (size_t)r * gld) : 0.f;
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

// ---------------------------------------------------------------------------------
// Fragments. The PTX ISA's layouts ("Matrix Fragments for mma.m16n8k16 / m16n8k8",
// "ldmatrix"), written out here independently of lstm_common.cuh, with g = lane / 4,
// q = lane % 4:
//   m16n8k16 A a_i (i < 8): row g (+8 for i in 2,3,6,7), col 2q + (i & 1) (+8 for i >= 4)
//            B b_i (i < 4): k 2q + (i & 1) (+8 for i >= 2), n g
//   m16n8k8 tf32 A a_i (i < 4): row g (+8 for i = 1, 3), col q (+4 for i >= 2)
//            B b_i (i < 2): k q + 4i, n g
//   C/D c_i (i < 4): row g (+8 for i >= 2), col 2q + (i & 1)
//   ldmatrix.x4: register j of lane t holds elements 2(t % 4), 2(t % 4) + 1 of row t / 4
//   of matrix j, whose row r is at the address lane 8j + r supplies.
// For tiles at odd offsets and row lengths, the kernels' addresses (ldmatrix_x4_row,
// b16_fragment, tf32_*_fragment, accumulator, part_index) must load the elements the
// ISA says each register holds, and put each product where product_out reads it.

struct Tile {
  std::vector<float> data;  // [rows][ld]
  int ld;
  float at(int r, int c) const { return data[(size_t)r * ld + c]; }
};

Tile random_tile(int rows, int ld, unsigned seed) {
  Tile t{std::vector<float>((size_t)rows * ld), ld};
  for (size_t i = 0; i < t.data.size(); ++i) {  // small integers: every sum is exact
    seed = seed * 1103515245u + 12345u;
    t.data[i] = (float)((int)((seed >> 16) % 7) - 3);
  }
  return t;
}

bool fail(const char* what, int i, int j) {
  fprintf(stderr, "fragments: %s is wrong at (%d, %d)\n", what, i, j);
  return false;
}

// One 16 x 8 x K tile (K = 16 for 16-bit, 8 for tf32): A rows at m0 from a [..][a.ld]
// buffer, B rows at n0 from b; the registers as the kernel loads them, the operands
// as the ISA reads them back.
bool check_tile(int itemsize, const Tile& a, int m0, int ka, const Tile& b, int n0, int kb) {
  const int K = itemsize == 2 ? 16 : 8;
  float A[16][16], B[16][8];
  bool seen_a[16][16] = {}, seen_b[16][8] = {};
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    if (itemsize == 2) {
      for (int j = 0; j < 4; ++j) {  // ldmatrix.x4 register j: elements a_{2j}, a_{2j+1}
        const Coord row = ldmatrix_x4_row(8 * j + g, m0, ka);
        for (int e = 0; e < 2; ++e) {
          const int i = 2 * j + e;
          const int r = g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
          const int c = 2 * q + (i & 1) + (i >= 4 ? 8 : 0);
          A[r][c] = a.at(row.row, row.col + 2 * q + e);
          seen_a[r][c] = true;
        }
      }
      for (int reg = 0; reg < 2; ++reg) {  // B register reg: b_{2reg}, b_{2reg+1}
        const Coord at = b16_fragment(t, n0, kb, reg);
        for (int e = 0; e < 2; ++e) {
          const int i = 2 * reg + e, k = 2 * q + (i & 1) + (i >= 2 ? 8 : 0);
          B[k][g] = b.at(at.row, at.col + e);
          seen_b[k][g] = true;
        }
      }
    } else {
      for (int i = 0; i < 4; ++i) {
        const Coord at = tf32_a_fragment(t, m0, ka, i);
        const int r = g + ((i == 1 || i == 3) ? 8 : 0), c = q + (i >= 2 ? 4 : 0);
        A[r][c] = a.at(at.row, at.col);
        seen_a[r][c] = true;
      }
      for (int i = 0; i < 2; ++i) {
        const Coord at = tf32_b_fragment(t, n0, kb, i);
        B[q + 4 * i][g] = b.at(at.row, at.col);
        seen_b[q + 4 * i][g] = true;
      }
    }
  }
  // The operands the ISA sees are exactly the tiles in shared memory.
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < K; ++c)
      if (!seen_a[r][c] || A[r][c] != a.at(m0 + r, ka + c)) return fail("A fragment", r, c);
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < 8; ++n)
      if (!seen_b[k][n] || B[k][n] != b.at(n0 + n, kb + k)) return fail("B fragment", k, n);
  // D as the ISA lays it out, found where the kernel's accumulator() says.
  for (int t = 0; t < 32; ++t)
    for (int i = 0; i < 4; ++i) {
      const int r = t / 4 + (i >= 2 ? 8 : 0), c = 2 * (t % 4) + (i & 1);
      float d = 0.f;
      for (int k = 0; k < K; ++k) d += A[r][k] * B[k][c];
      const Coord at = accumulator(t, m0, n0, i);
      float expected = 0.f;
      for (int k = 0; k < K; ++k) expected += a.at(at.row, ka + k) * b.at(at.col, kb + k);
      if (d != expected) return fail("accumulator", t, i);
    }
  return true;
}

// A product's partial sums: what the kernel stores for (M row, N row) of either
// orientation is what product_out reads for (weight row, batch row).
bool check_part_index() {
  for (int swapped = 0; swapped < 2; ++swapped) {
    const Product p = swapped ? make_product(8, 64, 16, 2, false) : make_product(32, 64, 8, 2, false);
    if ((bool)swapped != p.swapped) return fail("orientation of the test products", swapped, 0);
    std::vector<int> hits((size_t)p.ksplit * p.m * p.nb, 0);
    for (int ks = 0; ks < p.ksplit; ++ks)
      for (int mt = 0; mt < p.m_tiles; ++mt)
        for (int nt = 0; nt < p.n_tiles; ++nt)
          for (int t = 0; t < 32; ++t)
            for (int i = 0; i < 4; ++i) {
              const Coord at = accumulator(t, mt * kWeightTile, nt * kRowTile, i);
              const int w = swapped ? at.col : at.row, b = swapped ? at.row : at.col;
              if (w >= p.m || b >= p.nb) return fail("partial-sum coordinates", t, i);
              ++hits[part_index(p, ks, w, b)];
            }
    for (int h : hits)
      if (h != 1) return fail("partial sums written once each", swapped, h);
  }
  return true;
}

// Every product the plans can make: each (k-slice, M tile, N tile) is computed by
// exactly one warp's accumulator (and its copies), inside the operands, with its item's
// M-side fragment loaded for the same tile and k-tile before each mma (the order
// resident_product issues them in); each k-tile of a slice goes to exactly one copy.
bool check_coverage() {
  int checked = 0;
  for (int itemsize : {2, 4})
    for (int m_real : {4, 8, 12, 16, 20, 32, 48, 80, 96, 128, 192, 256})
      for (int rows : {8, 16, 24, 40, 64, 128, 136, 256})
        for (int k_real : {20, 256, 3072})
          for (int resident = 0; resident < 2; ++resident) {
            const Product p = make_product(m_real, k_real, rows, itemsize, resident != 0);
            if (!product_fits(p)) continue;
            ++checked;
            const int m_rows = p.swapped ? p.nb : p.m, n_rows = p.swapped ? p.m : p.nb;
            std::vector<int> hits((size_t)p.ksplit * p.m_tiles * p.n_tiles, 0);
            for (int warp = 0; warp < kWarps; ++warp) {
              const int ks = warp_kslice(p, warp);
              for (int copy = 0; copy < p.copies; ++copy) {
                int loaded = -1;  // M origin of the fragment the warp holds this k-tile
                for (int s = copy * p.slots; s < (copy + 1) * p.slots && s < kMaxWarpTiles; ++s) {
                  const uint32_t w = slot_word(p, warp, s);
                  if (w == kUnusedSlot) continue;
                  const int m0 = slot_m0(w), n0 = slot_n0(w), c = slot_copy(w);
                  if (c != copy || m0 + kWeightTile > m_rows || n0 + kRowTile > n_rows)
                    return fail("slot bounds or copy", warp, s);
                  if (slot_loads_fragment(w)) loaded = m0;
                  if (loaded != m0) return fail("M-side fragment loaded for the slot", warp, s);
                  // A slot reuses the N-side fragment of the slot before it exactly when
                  // both multiply the same one: same N tile, same copy (so k-tile).
                  const uint32_t prev = s > 0 ? slot_word(p, warp, s - 1) : kUnusedSlot;
                  if (prev != kUnusedSlot &&
                      (slot_n_side(prev) == slot_n_side(w)) !=
                          (slot_n0(prev) == n0 && slot_copy(prev) == c))
                    return fail("N-side fragment shared by consecutive slots", warp, s);
                  if (copy == 0) {
                    ++hits[((size_t)ks * p.m_tiles + m0 / kWeightTile) * p.n_tiles + n0 / kRowTile];
                    for (int other = 1; other < p.copies; ++other) {  // every copy is held
                      const int t = s + other * p.slots;
                      if (t >= kMaxWarpTiles || slot_word(p, warp, t) != (w | ((uint32_t)other << 28)))
                        return fail("accumulator copies of a slot", warp, s);
                    }
                  }
                }
              }
            }
            for (size_t i = 0; i < hits.size(); ++i)
              if (hits[i] != 1) return fail("output tile computed once per k-slice", (int)i, hits[i]);
            const int k_tiles = min_int(p.chunk, p.k) / k_tile(itemsize);
            for (int ks = 0; ks < p.ksplit; ++ks) {
              std::vector<int> seen(k_tiles, 0);
              for (int round = ks; round < k_tiles; round += p.ksplit * p.copies)
                for (int c = 0; c < p.copies; ++c)
                  if (round + c * p.ksplit < k_tiles) ++seen[round + c * p.ksplit];
              for (int kk = 0; kk < k_tiles; ++kk)
                if (seen[kk] != (kk % p.ksplit == ks ? 1 : 0)) return fail("k-tile coverage", ks, kk);
            }
          }
  if (checked < 100) return fail("products checked", checked, 0);
  return true;
}

// Register plans (reg_slices, reg_slice, reg_m0), forward (kRegTiles a warp) and
// backward (kChainRegTiles): for every M-tile count a plan can hold, each k-slice's
// warps hold each M tile once, every warp is in a slice, and no warp needs more than
// its `tiles` tiles.
bool check_register_tiles() {
  for (int tiles : {kRegTiles, kChainRegTiles}) {
    int checked = 0;
    for (int m_tiles = 1; m_tiles <= tiles * kWarps; ++m_tiles) {
      const int slices = reg_slices(m_tiles, tiles);
      if (slices < 1 || kWarps % slices) return fail("register k-slices", m_tiles, slices);
      if (slices < kWarps && m_tiles <= tiles * (kWarps / (slices * 2)))
        return fail("the most k-slices that cover the tiles", m_tiles, slices);
      std::vector<int> hits((size_t)slices * m_tiles, 0);
      for (int warp = 0; warp < kWarps; ++warp) {
        const int g = reg_slice(slices, warp);
        if (g < 0 || g >= slices) return fail("warp's register k-slice", warp, g);
        for (int j = 0; j < tiles; ++j) {
          const int m0 = reg_m0(slices, warp, j);
          if (m0 % kWeightTile) return fail("register tile origin", warp, m0);
          if (m0 / kWeightTile < m_tiles) ++hits[(size_t)g * m_tiles + m0 / kWeightTile];
        }
      }
      for (size_t i = 0; i < hits.size(); ++i)
        if (hits[i] != 1) return fail("register tile held once per k-slice", (int)i, hits[i]);
      ++checked;
    }
    if (reg_slices(tiles * kWarps + 1, tiles) != 0)
      return fail("too many M tiles to hold", tiles, 0);
    if (checked != tiles * kWarps) return false;
  }
  return true;
}

int fragments() {
  bool ok = check_part_index() && check_coverage() && check_register_tiles();
  for (int itemsize : {2, 4}) {
    const int pad = row_pad(itemsize), kt = k_tile(itemsize);
    for (int k = 16; ok && k <= 64; k += 48)  // row lengths of two layouts
      for (int m0 : {0, 16, 48})
        for (int n0 : {0, 8, 24}) {
          const Tile a = random_tile(64, k + pad, 7u + m0), b = random_tile(32, k + pad, 11u + n0);
          // The weights as the M side, then (swapped) the batch rows.
          for (int kk = 0; ok && kk + kt <= k; kk += kt)
            ok = check_tile(itemsize, a, m0, kk, b, n0, kk) &&
                 check_tile(itemsize, b, n0 % 16, kk, a, m0, kk);
        }
  }
  if (ok) printf("fragments: ldmatrix/mma addressing agrees with the PTX layouts; every product's tiles covered once\n");
  return ok ? 0 : 1;
}

// The cluster exchange of one split, replayed column by column: `segments` segments
// `stride` apart (forward: 1, 0; backward: 4, hidden) of an operand of k columns (rows
// ld elements apart), `slices` CTAs of `units` units.
bool check_exchange(int hidden, int units, int slices, int itemsize, int segments, int stride,
                    int k, int ld) {
  const int word = exchange_word_bytes(stride, itemsize);
  auto fail = [&](const char* what, int sender, int col) {
    fprintf(stderr,
            "exchange: %s (H=%d U=%d slices=%d itemsize=%d segments=%d: CTA %d, column %d)\n",
            what, hidden, units, slices, itemsize, segments, sender, col);
    return false;
  };
  if (ld * itemsize % word != 0) return fail("rows not word-aligned", 0, ld);
  std::vector<int> owner(k, -1);  // the CTA whose units a column holds (-1: k-padding)
  for (int s = 0; s < slices; ++s)
    for (int g = 0; g < segments; ++g)
      for (int u = 0; u < clamp_int(hidden - s * units, 0, units); ++u)
        owner[g * stride + s * units + u] = s;
  for (int receiver = 0; receiver < slices; ++receiver) {
    std::vector<int> landed(k, 0);
    unsigned bytes = 0;
    for (int s = 0; s < slices; ++s) {
      if (s == receiver) continue;
      const int my_units = clamp_int(hidden - s * units, 0, units);
      const int cols = exchange_cols(my_units, word, itemsize);
      if (cols * itemsize % word != 0) return fail("not whole words", s, cols);
      for (int g = 0; g < segments; ++g) {
        const int col0 = g * stride + s * units;
        if (col0 * itemsize % word != 0) return fail("segment not word-aligned", s, col0);
        for (int c = col0; c < col0 + cols; ++c) {
          if (c >= k) return fail("sends past the operand's k columns", s, c);
          if (owner[c] != s && owner[c] != -1) return fail("overwrites another CTA's column", s, c);
          if (landed[c]++) return fail("column sent twice", s, c);
        }
        bytes += (unsigned)(cols * itemsize);
      }
    }
    for (int c = 0; c < k; ++c)
      if (owner[c] != -1 && owner[c] != receiver && !landed[c])
        return fail("peer column never sent", owner[c], c);
    const int mine = clamp_int(hidden - receiver * units, 0, units);
    if (bytes != peer_row_bytes(hidden, mine, segments, word, itemsize))
      return fail("bytes differ from what the mbarrier expects", receiver, (int)bytes);
  }
  return true;
}

// Every cluster split plan.py can make (2-16 CTAs of multiples of 4 units), both
// directions, both element sizes; the backward only where hidden * itemsize is a
// multiple of 4 (plan.py, binding.cpp).
int exchange() {
  int checked = 0;
  for (int itemsize : {2, 4})
    for (int hidden = 4; hidden <= 1100; hidden += hidden < 80 ? 1 : 37)
      for (int cluster = 2; cluster <= kMaxCluster; ++cluster) {
        const int units = round_up(cdiv(hidden, cluster), 4), slices = cdiv(hidden, units);
        if (slices < 2) continue;
        const Product fwd = make_product(4 * units, hidden, kRowTile, itemsize, true);
        if (!check_exchange(hidden, units, slices, itemsize, 1, 0, fwd.k, fwd.b_ld)) return 1;
        if (hidden * itemsize % 4 == 0) {
          const Product bwd = make_product(units, 4 * hidden, kRowTile, itemsize, true);
          if (!check_exchange(hidden, units, slices, itemsize, 4, hidden, bwd.k, bwd.b_ld)) return 1;
        }
        ++checked;
      }
  printf("exchange: %d cluster splits: every CTA's st.async words land on its own or padding "
         "columns, cover every peer column once and add up to the expected bytes\n", checked);
  return 0;
}

void layout() {
  int H, P, proj, itemsize, units, cols, block_rows, cluster, multicast, reg_k_tiles, reduce_ctas,
      slices, pass_rows;
  while (scanf("%d %d %d %d %d %d %d %d %d %d %d %d %d", &H, &P, &proj, &itemsize, &units, &cols,
               &block_rows, &cluster, &multicast, &reg_k_tiles, &reduce_ctas, &slices,
               &pass_rows) == 13) {
    Split sp{};
    sp.units = units, sp.proj_cols = cols, sp.unit_slices = slices, sp.block_rows = block_rows;
    sp.cluster = cluster, sp.multicast = multicast, sp.reg_k_tiles = reg_k_tiles;
    sp.reduce_ctas = reduce_ctas;  // the backward's only
    const BackwardLayout b = backward_layout(H, P, proj != 0, itemsize, sp);
    sp.reduce_ctas = 0, sp.pass_rows = pass_rows;  // the forward's only
    const ForwardLayout f = forward_layout(H, P, proj != 0, itemsize, sp);
    const bool passes = passes_ok(sp, proj != 0);
    sp.reduce_ctas = reduce_ctas, sp.pass_rows = 0;
    printf("%zu %zu %d %d %d %d\n", f.bytes, b.bytes, (int)reg_split_ok(f, sp, itemsize),
           (int)reg_split_ok(b, sp, itemsize, proj != 0), (int)reduce_ok(sp, H, proj != 0),
           (int)passes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "layout") == 0) { layout(); return 0; }
  if (argc >= 2 && strcmp(argv[1], "fragments") == 0) return fragments();
  if (argc >= 2 && strcmp(argv[1], "exchange") == 0) return exchange();
  if (argc < 3) { fprintf(stderr, "usage: host_check forward|backward DIR | layout | fragments | exchange\n"); return 2; }
  g_run_dir = argv[2];
  const Meta m = read_meta();
  if (strcmp(argv[1], "forward") == 0) forward(m);
  else if (strcmp(argv[1], "backward") == 0) backward(m);
  else return 2;
  return 0;
}
