// The runtime behind csrc/tests/emulator.h: fibers for the CUDA threads of a launch,
// their blocks and clusters, and the PTX primitives' semantics (emulator.h says what
// is checked and what is not).
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "emulator.h"

// Built with RNNFAST_EMULATE_TSAN (this file uninstrumented, the kernels and the launcher
// compiled with -fsanitize=thread, everything linked with it), ThreadSanitizer watches
// the kernels' threads as fibers: the barriers, collectives, mbarriers and the grid
// counter tell it what orders what, and the accesses the primitives make for a thread
// (cp.async landing, DSMEM loads, st.async and bulk copies into peers, ldmatrix rows)
// are reported as that thread's. Two threads' accesses to one byte, one a write, with
// nothing ordering them, are a data race it reports.
#ifdef RNNFAST_EMULATE_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_read_range(void* addr, unsigned long size);
extern "C" void __tsan_write_range(void* addr, unsigned long size);
#define RNNFAST_TSAN(...) __VA_ARGS__
#else
#define RNNFAST_TSAN(...)
#endif

namespace rnnfast {
namespace emu {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kStackBytes = 128 << 10;  // a fiber's stack (the kernels need a few KB)
constexpr uint64_t kStackCanary = 0x737461636b656e64ull;  // the bottom words of every stack
constexpr int kWarpSize = 32;
constexpr int kMaxCopies = 256;             // cp.async a thread may have in flight

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// What orders what, and the accesses a primitive makes for the calling thread, for
// ThreadSanitizer (nothing without RNNFAST_EMULATE_TSAN).
void release(const void* sync) { RNNFAST_TSAN(__tsan_release(const_cast<void*>(sync));) (void)sync; }
void acquire(const void* sync) { RNNFAST_TSAN(__tsan_acquire(const_cast<void*>(sync));) (void)sync; }
void reads(const void* p, size_t bytes) {
  RNNFAST_TSAN(__tsan_read_range(const_cast<void*>(p), bytes);)
  (void)p, (void)bytes;
}
void writes(void* p, size_t bytes) {
  RNNFAST_TSAN(__tsan_write_range(p, bytes);)
  (void)p, (void)bytes;
}

// `bytes` ending at an unmapped page, the start `align`-aligned; freed with unmap().
struct Guarded {
  unsigned char* map = nullptr;
  size_t map_bytes = 0;
  unsigned char* data = nullptr;
};

Guarded guarded(size_t bytes, size_t align, int fill) {
  const size_t used = round_up(bytes > 0 ? bytes : 1, align);
  const size_t pages = round_up(used, kPage);
  Guarded g;
  g.map_bytes = pages + kPage;
  void* map = mmap(nullptr, g.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (map == MAP_FAILED) {
    fprintf(stderr, "emulator: cannot map %zu bytes\n", g.map_bytes);
    exit(2);
  }
  g.map = static_cast<unsigned char*>(map);
  mprotect(g.map + pages, kPage, PROT_NONE);
  g.data = g.map + pages - used;
  if (fill != 0) memset(g.data, fill, used);
  return g;
}

void unmap(Guarded& g) {
  if (g.map != nullptr) munmap(g.map, g.map_bytes);
  g = Guarded{};
}

struct Block;

struct Copy {  // a cp.async in flight
  unsigned char* dst;
  const unsigned char* src;
  long group;
};

struct Fiber {
  ucontext_t context;
  unsigned char* stack = nullptr;  // kStackBytes of the launch's stacks
  Block* block = nullptr;
  uint3 thread{};
  bool done = false;
  const char* waiting = nullptr;  // what it last waited for (the deadlock report)
  Copy copies[kMaxCopies];        // fixed: no allocation on a fiber (ThreadSanitizer would see
  int in_flight = 0;              // the allocator's memory pass between fibers)
  long committed = 0;             // cp.async groups committed
  unsigned long long last_seen = ~0ull;  // its last poll of a counter
  void* tsan = nullptr;           // its ThreadSanitizer fiber (RNNFAST_EMULATE_TSAN)
};

enum Op { kLdmatrix = 1, kMmaF16, kMmaBF16, kMmaTF32 };

// One warp's meeting at a collective instruction: each lane leaves its operands, the
// last to arrive computes every lane's result.
struct Collective {
  int arrived = 0;
  unsigned generation = 0;
  int op[kWarpSize];
  const unsigned char* address[kWarpSize];
  uint32_t a[kWarpSize][4], b[kWarpSize][2], r[kWarpSize][4];
  float d[kWarpSize][4];
};

struct Mbarrier {
  bool initialised = false;
  long pending = 1;      // arrivals still due this phase (one a phase)
  long tx = 0;           // transaction bytes announced and not yet completed
  unsigned long long completed = 0;  // phases completed
  uint64_t sentinel = 0; // what init wrote into the mbarrier's shared-memory word
};

struct Cluster {
  std::vector<Block*> blocks;
  int arrived = 0;
  unsigned generation = 0;
  char sync[2];
};

struct Block {
  uint3 index{};
  Guarded smem;
  size_t smem_bytes = 0;
  int arrived = 0;  // __syncthreads
  unsigned generation = 0;
  char sync[2];
  std::vector<Collective> warps;
  std::vector<Mbarrier> mbarriers;  // the state of an mbarrier at offset 8i of the shared memory
  Cluster* cluster = nullptr;
  unsigned rank = 0;
};


struct KernelInfo {
  Invoke invoke = nullptr;
  int max_smem = 48 << 10;  // dynamic shared memory it may launch with
  bool nonportable = false; // may run in clusters of more than 8
};

struct Launch {
  const void* kernel = nullptr;
  const void* args = nullptr;
  Invoke invoke = nullptr;
  dim3 grid, block;
  std::vector<std::unique_ptr<Block>> blocks;
  std::vector<std::unique_ptr<Cluster>> clusters;
  std::vector<std::unique_ptr<Fiber>> fibers;
  Guarded stacks;  // one mapping for all (a mapping each would exceed the kernel's map
                   // count at 32768 threads); an overflow is caught by the canaries
};

Launch* g_launch = nullptr;
Fiber* g_current = nullptr;
ucontext_t g_scheduler;
RNNFAST_TSAN(void* g_scheduler_tsan = nullptr;)  // the scheduler's ThreadSanitizer fiber
char g_launch_sync[2];             // [0]: what the launch follows, [1]: what follows it
bool g_progress = false;
std::unordered_map<const void*, KernelInfo> g_kernels;

[[noreturn]] void failf(const char* format, ...) {
  char message[1024];
  va_list list;
  va_start(list, format);
  vsnprintf(message, sizeof message, format, list);
  va_end(list);
  if (g_current != nullptr)
    fprintf(stderr, "emulator: block %u thread %u: %s\n", g_current->block->index.x,
            g_current->thread.x, message);
  else
    fprintf(stderr, "emulator: %s\n", message);
  fflush(stderr);
  _exit(3);
}

Fiber& me() {
  if (g_current == nullptr) failf("a device function called outside a kernel");
  return *g_current;
}

// Hands the CPU back to the scheduler until the fiber's next turn.
void yield(const char* what) {
  Fiber& f = me();
  f.waiting = what;
  RNNFAST_TSAN(__tsan_switch_to_fiber(g_scheduler_tsan, __tsan_switch_to_fiber_no_sync);)
  swapcontext(&f.context, &g_scheduler);
  f.waiting = nullptr;
}

template <typename Ready> void wait_until(const char* what, Ready ready) {
  while (!ready()) yield(what);
  g_progress = true;
}

// A meeting of `expected` threads (a block's __syncthreads, the cluster barrier, a
// warp's collective instruction). `last` runs once, by the last to arrive, before anyone
// leaves. With `sync` (the barriers: two addresses, used by generation parity),
// everything each did before it is ordered before what any does after; a warp's mma or
// ldmatrix waits for the warp's lanes but orders no memory between them (only
// __syncwarp would), so it passes none.
template <typename Last>
void meet(int& arrived, unsigned& generation, char* sync, int expected, const char* what,
          Last last) {
  const unsigned mine = generation;
  if (sync != nullptr) release(&sync[mine & 1]);
  if (++arrived == expected) {
    last();
    arrived = 0;
    ++generation;
    g_progress = true;
  } else {
    wait_until(what, [&] { return generation != mine; });
  }
  if (sync != nullptr) acquire(&sync[mine & 1]);
}

// Offset of [p, p + bytes) in the calling block's shared memory, which it must lie in,
// `align`-aligned.
size_t smem_offset(const void* p, size_t bytes, size_t align, const char* what) {
  const Block& b = *me().block;
  const auto* at = static_cast<const unsigned char*>(p);
  if (at < b.smem.data || at + bytes > b.smem.data + b.smem_bytes)
    failf("%s: %zu bytes at offset %td, outside the block's %zu bytes of shared memory", what, bytes,
          at - b.smem.data, b.smem_bytes);
  if (reinterpret_cast<uintptr_t>(at) % align != 0)
    failf("%s: offset %td is not %zu-byte aligned", what, at - b.smem.data, align);
  return static_cast<size_t>(at - b.smem.data);
}

Block& peer_block(unsigned rank, const char* what) {
  const Cluster& c = *me().block->cluster;
  if (rank >= c.blocks.size()) failf("%s: CTA rank %u in a cluster of %zu", what, rank, c.blocks.size());
  return *c.blocks[rank];
}

// The mbarrier at `offset` (8-byte aligned, inside) of block `b`'s shared memory.
Mbarrier& mbarrier_at(Block& b, size_t offset, const char* what) {
  Mbarrier& m = b.mbarriers[offset / sizeof(uint64_t)];
  if (!m.initialised) failf("%s: no mbarrier initialised there", what);
  if (memcmp(b.smem.data + offset, &m.sentinel, sizeof(uint64_t)) != 0)
    failf("%s: the mbarrier's shared-memory word was overwritten after its init", what);
  return m;
}

void settle(Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.completed;
    m.pending = 1;
    g_progress = true;
  }
}

// Bytes of a transaction landing on the mbarrier at `offset` of block `b`.
void complete_tx(Block& b, size_t offset, unsigned bytes, const char* what) {
  if (offset + sizeof(uint64_t) > b.smem_bytes) failf("%s: mbarrier outside the peer's shared memory", what);
  Mbarrier& m = mbarrier_at(b, offset, what);
  m.tx -= bytes;
  settle(m);
}

float half_bits(uint32_t word, int high, Op op) {
  return bits_to_float(static_cast<uint16_t>(high ? word >> 16 : word & 0xffffu), op == kMmaBF16);
}

float tf32_bits(uint32_t word) {  // the tensor cores read 10 mantissa bits
  const uint32_t truncated = word & 0xffffe000u;
  float v;
  memcpy(&v, &truncated, sizeof v);
  return v;
}

// The warp's mma.m16n8k16 (16-bit) or m16n8k8 (tf32) from its lanes' fragments (PTX's
// layouts: lane = 4 * group + quad).
void warp_mma(Collective& w, Op op) {
  const int K = op == kMmaTF32 ? 8 : 16;
  float A[16][16], B[16][8], D[16][8];
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const int g = lane / 4, q = lane % 4;
    if (op == kMmaTF32) {
      A[g][q] = tf32_bits(w.a[lane][0]);
      A[g + 8][q] = tf32_bits(w.a[lane][1]);
      A[g][q + 4] = tf32_bits(w.a[lane][2]);
      A[g + 8][q + 4] = tf32_bits(w.a[lane][3]);
      B[q][g] = tf32_bits(w.b[lane][0]);
      B[q + 4][g] = tf32_bits(w.b[lane][1]);
    } else {
      for (int e = 0; e < 2; ++e) {
        A[g][2 * q + e] = half_bits(w.a[lane][0], e, op);
        A[g + 8][2 * q + e] = half_bits(w.a[lane][1], e, op);
        A[g][2 * q + 8 + e] = half_bits(w.a[lane][2], e, op);
        A[g + 8][2 * q + 8 + e] = half_bits(w.a[lane][3], e, op);
        B[2 * q + e][g] = half_bits(w.b[lane][0], e, op);
        B[2 * q + 8 + e][g] = half_bits(w.b[lane][1], e, op);
      }
    }
    for (int e = 0; e < 2; ++e) {
      D[g][2 * q + e] = w.d[lane][e];
      D[g + 8][2 * q + e] = w.d[lane][2 + e];
    }
  }
  // The tensor core adds an instruction's K products (exact) and the accumulator with
  // one rounding (Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021:
  // aligned and normalised once; here rounded to nearest), not one per product.
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double sum = D[m][n];
      for (int k = 0; k < K; ++k) sum += static_cast<double>(A[m][k]) * B[k][n];
      D[m][n] = static_cast<float>(sum);
    }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const int g = lane / 4, q = lane % 4;
    for (int e = 0; e < 2; ++e) {
      w.d[lane][e] = D[g][2 * q + e];
      w.d[lane][2 + e] = D[g + 8][2 * q + e];
    }
  }
}

// ldmatrix.x4: lanes 8j .. 8j+7 address matrix j's rows; lane l gets its row l / 4,
// elements 2 (l % 4) and the next.
void warp_ldmatrix(Collective& w) {
  for (int lane = 0; lane < kWarpSize; ++lane)
    for (int j = 0; j < 4; ++j)
      memcpy(&w.r[lane][j], w.address[8 * j + lane / 4] + 4 * (lane % 4), sizeof(uint32_t));
}

// The calling lane's part of a collective: `leave` stores its operands, `take` reads its
// result once every lane of the warp has arrived at the same instruction.
template <typename Leave, typename Take> void collective(Op op, Leave leave, Take take) {
  Fiber& f = me();
  Collective& w = f.block->warps[f.thread.x / kWarpSize];
  const int lane = static_cast<int>(f.thread.x % kWarpSize);
  w.op[lane] = op;
  leave(w, lane);
  meet(w.arrived, w.generation, nullptr, kWarpSize, "a warp-wide instruction (ldmatrix / mma)", [&] {
    for (int l = 0; l < kWarpSize; ++l)
      if (w.op[l] != op) failf("warp %u: lanes meet at different collective instructions (%d, %d)",
                               f.thread.x / kWarpSize, w.op[l], op);
    if (op == kLdmatrix)
      warp_ldmatrix(w);
    else
      warp_mma(w, op);
  });
  take(w, lane);
}

void fiber_main() {
  acquire(&g_launch_sync[0]);
  g_launch->invoke(g_launch->kernel, g_launch->args);
  release(&g_launch_sync[1]);
  g_current->done = true;
  g_progress = true;
  RNNFAST_TSAN(__tsan_switch_to_fiber(g_scheduler_tsan, __tsan_switch_to_fiber_no_sync);)
}  // returns to g_scheduler (uc_link)

void report_deadlock(const Launch& launch) {
  fprintf(stderr, "emulator: deadlock: every thread waits and nothing can change (a hang on a GPU)\n");
  for (const auto& b : launch.blocks) {
    std::map<std::string, int> at;
    for (const auto& f : launch.fibers)
      if (f->block == b.get() && !f->done) ++at[f->waiting != nullptr ? f->waiting : "running"];
    for (const auto& [what, count] : at)
      fprintf(stderr, "  block %u (cluster rank %u): %d threads at %s\n", b->index.x, b->rank, count,
              what.c_str());
  }
  fflush(stderr);
  _exit(3);
}

void on_fault(int signal) {
  char line[256];
  const int n = snprintf(line, sizeof line,
                         "emulator: %s in block %u thread %u: an access outside the launch's memory "
                         "(shared memory ends at an unmapped page) or a fiber's stack overflow\n",
                         signal == SIGSEGV ? "segmentation fault" : "bus error",
                         g_current != nullptr ? g_current->block->index.x : 0u,
                         g_current != nullptr ? g_current->thread.x : 0u);
  if (n > 0) (void)!write(2, line, static_cast<size_t>(n));
  _exit(4);
}

void install_fault_report() {
  static bool done = false;
  if (done) return;
  done = true;
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  struct sigaction action {};
  action.sa_handler = on_fault;
  action.sa_flags = SA_ONSTACK;
  sigaction(SIGSEGV, &action, nullptr);
  sigaction(SIGBUS, &action, nullptr);
}

}  // namespace

float bits_to_float(uint16_t bits, bool bf16) {
  if (bf16) {
    const uint32_t widened = static_cast<uint32_t>(bits) << 16;
    float v;
    memcpy(&v, &widened, sizeof v);
    return v;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

const uint3& thread_index() { return me().thread; }
const uint3& block_index() { return me().block->index; }
unsigned char* dynamic_smem() { return me().block->smem.data; }

void syncthreads() {
  Block& b = *me().block;
  meet(b.arrived, b.generation, b.sync, static_cast<int>(g_launch->block.x), "__syncthreads", [] {});
}

void cp_async16(void* dst, const void* src) {
  smem_offset(dst, 16, 16, "cp.async destination");
  if (src == nullptr || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    failf("cp.async source %p is not 16-byte aligned", src);
  Fiber& f = me();
  if (f.in_flight == kMaxCopies) failf("more than %d cp.async in flight", kMaxCopies);
  f.copies[f.in_flight++] = Copy{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src),
                                 f.committed};
}

void cp_async_commit() { ++me().committed; }

void cp_async_wait(int pending) {
  Fiber& f = me();
  int still = 0;
  for (int i = 0; i < f.in_flight; ++i) {
    const Copy c = f.copies[i];
    if (c.group < f.committed - pending) {
      reads(c.src, 16);
      writes(c.dst, 16);
      memcpy(c.dst, c.src, 16);
    } else {
      f.copies[still++] = c;
    }
  }
  f.in_flight = still;
  g_progress = true;
}

void mbarrier_init(uint64_t* bar) {
  const size_t offset = smem_offset(bar, sizeof(uint64_t), sizeof(uint64_t), "mbarrier.init");
  Mbarrier m;
  m.initialised = true;
  m.sentinel = 0x6d62617272696572ull ^ reinterpret_cast<uintptr_t>(bar);
  memcpy(bar, &m.sentinel, sizeof m.sentinel);
  me().block->mbarriers[offset / sizeof(uint64_t)] = m;
  g_progress = true;
}

void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  const size_t offset = smem_offset(bar, sizeof(uint64_t), sizeof(uint64_t), "mbarrier.arrive.expect_tx");
  Mbarrier& m = mbarrier_at(*me().block, offset, "mbarrier.arrive.expect_tx");
  if (m.pending <= 0) failf("mbarrier.arrive.expect_tx: more arrivals than the mbarrier's count");
  m.tx += bytes;
  --m.pending;
  g_progress = true;
  release(bar);
  settle(m);
}

bool mbarrier_try_wait(uint64_t* bar, unsigned parity) {
  const size_t offset = smem_offset(bar, sizeof(uint64_t), sizeof(uint64_t), "mbarrier.try_wait");
  const Mbarrier& m = mbarrier_at(*me().block, offset, "mbarrier.try_wait");
  if ((m.completed & 1u) != (parity & 1u)) {  // the phase of that parity has completed
    g_progress = true;
    acquire(bar);
    return true;
  }
  yield("an mbarrier wait");
  return false;
}

unsigned cluster_ctarank() { return me().block->rank; }
unsigned cluster_nctarank() { return static_cast<unsigned>(me().block->cluster->blocks.size()); }

void cluster_sync() {
  Cluster& c = *me().block->cluster;
  meet(c.arrived, c.generation, c.sync, static_cast<int>(c.blocks.size() * g_launch->block.x),
       "the cluster barrier", [] {});
}

float4 ld_shared_cluster_v4(const float* src, unsigned rank) {
  const size_t offset = smem_offset(src, 16, 16, "ld.shared::cluster.v4");
  const Block& peer = peer_block(rank, "ld.shared::cluster.v4");
  float4 v;
  reads(peer.smem.data + offset, sizeof v);
  memcpy(&v, peer.smem.data + offset, sizeof v);
  return v;
}

void st_async_to_peer(void* dst, unsigned peer, const void* value, int bytes, uint64_t* bar) {
  const size_t offset = smem_offset(dst, static_cast<size_t>(bytes), static_cast<size_t>(bytes), "st.async");
  const size_t bar_offset = smem_offset(bar, sizeof(uint64_t), sizeof(uint64_t), "st.async's mbarrier");
  Block& to = peer_block(peer, "st.async");
  writes(to.smem.data + offset, static_cast<size_t>(bytes));
  memcpy(to.smem.data + offset, value, static_cast<size_t>(bytes));
  release(to.smem.data + bar_offset);
  g_progress = true;
  complete_tx(to, bar_offset, static_cast<unsigned>(bytes), "st.async's mbarrier in the peer");
}

void bulk_copy_multicast(void* dst, const void* src, unsigned bytes, uint64_t* bar, unsigned short ctas) {
  if (bytes == 0 || bytes % 16 != 0) failf("cp.async.bulk: %u bytes, not a positive multiple of 16", bytes);
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) failf("cp.async.bulk: source %p not 16-byte aligned", src);
  const size_t offset = smem_offset(dst, bytes, 16, "cp.async.bulk destination");
  const size_t bar_offset = smem_offset(bar, sizeof(uint64_t), sizeof(uint64_t), "cp.async.bulk's mbarrier");
  const size_t size = me().block->cluster->blocks.size();
  if (ctas == 0 || (size < 16 && (ctas >> size) != 0))
    failf("cp.async.bulk: CTA mask 0x%x in a cluster of %zu", ctas, size);
  for (unsigned r = 0; r < size; ++r) {
    if (!(ctas >> r & 1u)) continue;
    Block& to = peer_block(r, "cp.async.bulk");
    reads(src, bytes);
    writes(to.smem.data + offset, bytes);
    memcpy(to.smem.data + offset, src, bytes);
    release(to.smem.data + bar_offset);
    complete_tx(to, bar_offset, bytes, "cp.async.bulk's mbarrier in a peer");
  }
  g_progress = true;
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  smem_offset(row_address, 16, 16, "ldmatrix row");
  reads(row_address, 16);  // the lane's row, read by the warp's instruction
  collective(
      kLdmatrix,
      [&](Collective& w, int lane) { w.address[lane] = static_cast<const unsigned char*>(row_address); },
      [&](Collective& w, int lane) {
        for (int j = 0; j < 4; ++j) r[j] = w.r[lane][j];
      });
}

void mma(MmaKind kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const Op op = kind == MmaKind::kF16 ? kMmaF16 : kind == MmaKind::kBF16 ? kMmaBF16 : kMmaTF32;
  collective(
      op,
      [&](Collective& w, int lane) {
        for (int i = 0; i < 4; ++i) {
          w.a[lane][i] = a[i];
          w.d[lane][i] = d[i];
        }
        w.b[lane][0] = b[0];
        w.b[lane][1] = b[1];
      },
      [&](Collective& w, int lane) {
        for (int i = 0; i < 4; ++i) d[i] = w.d[lane][i];
      });
}

void red_release_add_one(unsigned long long* counter) {
  release(counter);
  ++*counter;
  g_progress = true;
}

unsigned long long ld_acquire(const unsigned long long* counter) {
  yield("a poll of the grid barrier");
  Fiber& f = me();
  const unsigned long long seen = *counter;
  acquire(counter);
  if (seen != f.last_seen) g_progress = true;
  f.last_seen = seen;
  return seen;
}

unsigned long long atomic_max(unsigned long long* p, unsigned long long v) {
  acquire(p);
  release(p);
  const unsigned long long old = *p;
  if (v > old) *p = v;
  g_progress = true;
  return old;
}

int atomic_exch(int* p, int v) {
  acquire(p);
  release(p);
  const int old = *p;
  *p = v;
  g_progress = true;
  return old;
}

void set_max_dynamic_smem(const void* kernel, Invoke invoke, int bytes) {
  KernelInfo& info = g_kernels[kernel];
  info.invoke = invoke;
  info.max_smem = bytes;
}

void allow_nonportable_clusters(const void* kernel) { g_kernels[kernel].nonportable = true; }

void* alloc_global(size_t bytes) { return guarded(bytes, 256, 0).data; }

cudaError_t launch(const void* kernel, const void* args, dim3 grid, dim3 block, size_t smem,
                   unsigned cluster, bool cooperative) {
  auto it = g_kernels.find(kernel);
  if (it == g_kernels.end() || it->second.invoke == nullptr)
    failf("a kernel launched before cudaFuncSetAttribute opted it into its shared memory");
  const KernelInfo& info = it->second;
  if (smem > static_cast<size_t>(info.max_smem)) return cudaErrorInvalidValue;
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 || block.x % kWarpSize != 0 ||
      grid.x == 0)
    return cudaErrorInvalidConfiguration;
  const unsigned size = cluster > 0 ? cluster : 1;
  if (size > 16 || (size > 8 && !info.nonportable) || grid.x % size != 0) return cudaErrorInvalidClusterSize;
  if (cooperative && grid.x > kSms) return cudaErrorCooperativeLaunchTooLarge;
  install_fault_report();

  Launch launch;
  launch.kernel = kernel;
  launch.args = args;
  launch.invoke = info.invoke;
  launch.grid = grid;
  launch.block = block;
  for (unsigned i = 0; i < grid.x; ++i) {
    if (i % size == 0) launch.clusters.push_back(std::make_unique<Cluster>());
    auto b = std::make_unique<Block>();
    b->index = uint3{i, 0, 0};
    b->smem = guarded(smem, 128, 0xff);  // NaN bytes, as garbage would be
    b->smem_bytes = smem;
    b->warps.resize(block.x / kWarpSize);
    b->mbarriers.resize(smem / sizeof(uint64_t));
    b->cluster = launch.clusters.back().get();
    b->rank = i % size;
    b->cluster->blocks.push_back(b.get());
    launch.blocks.push_back(std::move(b));
  }
  launch.stacks = guarded(kStackBytes * grid.x * block.x, kPage, 0);
  for (const auto& b : launch.blocks) {
    for (unsigned t = 0; t < block.x; ++t) {
      auto f = std::make_unique<Fiber>();
      f->block = b.get();
      f->thread = uint3{t, 0, 0};
      f->stack = launch.stacks.data + kStackBytes * launch.fibers.size();
      for (int w = 0; w < 8; ++w) memcpy(f->stack + 8 * w, &kStackCanary, 8);
      RNNFAST_TSAN(f->tsan = __tsan_create_fiber(0);)
      getcontext(&f->context);
      f->context.uc_stack.ss_sp = f->stack;
      f->context.uc_stack.ss_size = kStackBytes;
      f->context.uc_link = &g_scheduler;
      makecontext(&f->context, fiber_main, 0);
      launch.fibers.push_back(std::move(f));
    }
  }

  g_launch = &launch;
  // The order fibers take their turns in: shuffled afresh every pass (seeded by
  // RNNFAST_EMULATE_SCHEDULE, default 1), so that two threads' accesses with no barrier
  // between them meet in either order somewhere; "ordered": thread order.
  const char* schedule = getenv("RNNFAST_EMULATE_SCHEDULE");
  const bool ordered = schedule != nullptr && std::string(schedule) == "ordered";
  std::mt19937 shuffle(schedule != nullptr && !ordered ? static_cast<unsigned>(atoi(schedule)) : 1u);
  RNNFAST_TSAN(g_scheduler_tsan = __tsan_get_current_fiber();)
  release(&g_launch_sync[0]);  // what the host wrote before the launch
  std::vector<size_t> turns(launch.fibers.size());
  for (size_t i = 0; i < turns.size(); ++i) turns[i] = i;
  size_t live = launch.fibers.size();
  int idle_passes = 0;
  while (live > 0) {
    g_progress = false;
    if (!ordered) std::shuffle(turns.begin(), turns.end(), shuffle);
    for (size_t turn : turns) {
      auto& f = launch.fibers[turn];
      if (f->done) continue;
      g_current = f.get();
      RNNFAST_TSAN(__tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);)
      swapcontext(&g_scheduler, &f->context);
      g_current = nullptr;
      if (f->done) {
        --live;
        for (int w = 0; w < 8; ++w)
          if (memcmp(f->stack + 8 * w, &kStackCanary, 8) != 0)
            failf("block %u thread %u overflowed its %zu-byte fiber stack", f->block->index.x,
                  f->thread.x, kStackBytes);
      }
    }
    if (g_progress)
      idle_passes = 0;
    else if (++idle_passes >= 2)
      report_deadlock(launch);
  }
  acquire(&g_launch_sync[1]);  // what the kernel wrote, for the host
  RNNFAST_TSAN(for (auto& f : launch.fibers) __tsan_destroy_fiber(f->tsan);)
  for (auto& b : launch.blocks) unmap(b->smem);
  unmap(launch.stacks);
  g_launch = nullptr;
  return cudaSuccess;
}

}  // namespace emu
}  // namespace rnnfast

// The untyped runtime calls of the launchers (cuda_runtime_api.h).
extern "C" cudaError_t cudaLaunchCooperativeKernel(const void* func, dim3 grid, dim3 block, void** args,
                                                   size_t smem, cudaStream_t) {
  return rnnfast::emu::launch(func, args[0], grid, block, smem, 0, true);
}

extern "C" cudaError_t cudaGetLastError() { return cudaSuccess; }
