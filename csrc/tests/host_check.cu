// Host-side checks of the kernels' __host__ __device__ code from lstm_common.cuh (no
// GPU), each against something written independently: the shared-memory layouts
// against rnnfast/backends/cuda/plan.py's mirror, the fragment addressing against the
// PTX ISA's layout formulas, the cluster exchange's words against the bytes its
// mbarriers expect. tests/test_cuda_sources.py builds and runs it. (The kernels
// themselves run on the CPU under csrc/tests/emulator.h: tests/test_cuda_emulated.py.)
//
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

using namespace rnnfast;

namespace {

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

// Register plans (reg_slices, reg_slice, reg_m0, reg_rest_tiles, reg_k_tile,
// stage_chunk_cols), forward (kRegTiles a warp) and backward (kChainRegTiles): for every
// M-tile count a plan can hold, each k-slice's warps hold each M tile once, every warp is
// in a slice, and no warp needs more than its `tiles` tiles; the shared-memory k-tiles are
// split between the slices; the register k-tiles and the staged chunks below.
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
  // The shared-memory part's k-tiles (reg_rest_tiles): each taken by one k-slice, the
  // slices' runs in order and at most one k-tile apart in length.
  for (int itemsize : {2, 4})
    for (int slices = 1; slices <= kWarps; slices *= 2)
      for (int k_tiles = 0; k_tiles <= 200; ++k_tiles) {
        Product rest{};
        rest.k = k_tiles * k_tile(itemsize);
        int next = 0, shortest = k_tiles, longest = 0;
        for (int g = 0; g < slices; ++g) {
          const Range r = reg_rest_tiles(rest, slices, g, itemsize);
          if (r.first != next || r.end < r.first) return fail("k-slice's shared-memory run", g, r.first);
          shortest = min_int(shortest, r.end - r.first);
          longest = max_int(longest, r.end - r.first);
          next = r.end;
        }
        if (next != k_tiles) return fail("shared-memory k-tiles covered", k_tiles, next);
        if (longest - shortest > 1) return fail("k-slices' runs balanced", k_tiles, longest - shortest);
      }
  // The register k-tiles (reg_k_tile): the slices' k-tiles interleaved over the first
  // slices x reg_k_tiles k-tiles of the operand, each once, round by round. And the
  // multicast chunks (stage_chunk_cols): contiguous, from column 0 to the end of the
  // shared-memory part, at most kStageChunks, chunk c < last starting at round c x q
  // (where reg_product's ready(kk) waits for it) and the last at reg_cols.
  for (int itemsize : {2, 4})
    for (int slices = 1; slices <= kWarps; slices *= 2)
      for (int reg_k_tiles = 1; reg_k_tiles <= kChainRegKTiles; ++reg_k_tiles) {
        std::vector<int> hits((size_t)slices * reg_k_tiles, 0);
        for (int g = 0; g < slices; ++g)
          for (int kk = 0; kk < reg_k_tiles; ++kk) {
            const int t = reg_k_tile(slices, g, kk);
            if (t < 0 || t >= slices * reg_k_tiles || t / slices != kk)
              return fail("register k-tile's column", g, kk);
            ++hits[(size_t)t];
          }
        for (size_t i = 0; i < hits.size(); ++i)
          if (hits[i] != 1) return fail("register k-tile held once", (int)i, hits[i]);
        const int kt = k_tile(itemsize), rounds = stage_chunk_rounds(reg_k_tiles);
        const int chunks = stage_chunks(reg_k_tiles), reg_cols = slices * reg_k_tiles * kt;
        if (chunks < 2 || chunks > kStageChunks) return fail("stage chunks", reg_k_tiles, chunks);
        for (int rest_k : {kt, 5 * kt}) {
          int next = 0;
          for (int c = 0; c < chunks; ++c) {
            const Range cols = stage_chunk_cols(slices, reg_k_tiles, rest_k, itemsize, c);
            const int first = c + 1 == chunks ? reg_cols : c * rounds * slices * kt;
            if (cols.first != next || cols.first != first || cols.end <= cols.first)
              return fail("stage chunk's columns", reg_k_tiles, c);
            next = cols.end;
          }
          if (next != reg_cols + rest_k) return fail("stage chunks cover the operand", reg_k_tiles, next);
        }
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
  fprintf(stderr, "usage: host_check layout | fragments | exchange\n");
  return 2;
}
