"""What bounds a B=1 LSTM layer's inference on this CPU: its floor against what the `cpu`
backend and nn.LSTM take, per step, measured in one process.

    python bench/cpu_floor.py [--hidden 256] [--input 256] [--repeats 200]

A B=1 step has two parts. The input projection (x_t W_ih^T, done for all steps in one
GEMM before the recurrence) is compute: 4H·I multiply-adds, whose floor is this CPU's
FMA rate. The recurrent product h W_hh^T reads all of W_hh (4H·P words) for one
multiply-add each, so it is bound by how fast the cores read W_hh from their caches:
its floor is each thread's share of W_hh at the read rate measured over a buffer of that
size. Both rates are measured here (a loop of independent FMAs; a loop of vector loads
over a buffer read again and again), on the threads torch uses, with the instruction
set the `cpu` backend is built for (build.py).

(`python -m rnnfast bench` gives every case a floor from rnnfast/bench/floor.py: the
matmul rate, DRAM bandwidth and launch latency, with the weights counted once. A B=1
step's bound is reading W_hh again from the caches at every step, which that model
does not see.)

Per step, both implementations are timed at two lengths (T and 5T, calls alternated,
median of --repeats each) and the difference divided by 4T; the `cpu` backend also at
I=1, which leaves its recurrence alone. A number on a noisy machine moves between runs:
compare the columns of one run."""
from __future__ import annotations

import argparse
import time

import torch

# Read rate over a buffer of each thread's own, and FMA rate, on `threads` threads.
_SOURCE = r"""
#include <ATen/cpu/vec/vec.h>
#include <omp.h>
#include <chrono>
#include <vector>
using V = at::vec::Vectorized<float>;

// GB/s over all threads: each sums its own buffer of `bytes`, `reps` times.
double read_rate(int64_t bytes, int64_t threads, int64_t reps) {
  const int64_t words = bytes / sizeof(float) / (4 * V::size()) * (4 * V::size());
  std::vector<std::vector<float>> buffers(threads, std::vector<float>(words, 1.0f));
  double best = 1e30, sink = 0;
  for (int trial = 0; trial < 5; ++trial) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      const float* b = buffers[omp_get_thread_num()].data();
      V a0(0), a1(0), a2(0), a3(0);  // four chains: the adds never wait on each other
      for (int64_t r = 0; r < reps; ++r) {
        for (int64_t i = 0; i < words; i += 4 * V::size()) {
          a0 = a0 + V::loadu(b + i);
          a1 = a1 + V::loadu(b + i + V::size());
          a2 = a2 + V::loadu(b + i + 2 * V::size());
          a3 = a3 + V::loadu(b + i + 3 * V::size());
        }
      }
      float lanes[V::size()];
      (a0 + a1 + a2 + a3).store(lanes);
      for (int j = 0; j < V::size(); ++j) sink += lanes[j];
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return sink == -1 ? 0 : double(words) * sizeof(float) * reps * threads / best / 1e9;
}

// fp32 multiply-adds per second over all threads, in G: 12 independent chains a thread.
double fma_rate(int64_t threads) {
  const int64_t iters = 4000000;
  double best = 1e30, sink = 0;
  for (int trial = 0; trial < 5; ++trial) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      V acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = V(0.001f * i);
      const V m(0.999f), c(0.0001f);
      for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = at::vec::fmadd(acc[i], m, c);
      }
      float lanes[V::size()];
      V total = acc[0];
      for (int i = 1; i < 12; ++i) total = total + acc[i];
      total.store(lanes);
      for (int j = 0; j < V::size(); ++j) sink += lanes[j];
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return sink == -1 ? 0 : double(iters) * 12 * V::size() * threads / best / 1e9;
}
"""


def _rates_module():
    from torch.utils.cpp_extension import load_inline

    from rnnfast.backends.cpu import build
    name, flags = build.compile_flags()
    return load_inline(name=name.replace("rnnfast_cpu", "rnnfast_cpu_floor"), cpp_sources=_SOURCE,
                       functions=["read_rate", "fma_rate"], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"])


def _per_step(make_call, T: int, repeats: int) -> float:
    """Seconds a step: (median call of 5T steps - median call of T) / 4T. The two calls
    alternate, after half a second of both, so a drift of the machine's speed (a first
    second of slow calls was common) moves both medians alike."""
    short, long = make_call(T), make_call(5 * T)
    warm_until = time.perf_counter() + 0.5
    while time.perf_counter() < warm_until:
        short()
        long()
    times = ([], [])
    for _ in range(repeats):
        for fn, kept in zip((short, long), times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    short_s, long_s = (sorted(t)[len(t) // 2] for t in times)
    return (long_s - short_s) / (4 * T)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--input", type=int, default=None, help="input size (default: --hidden)")
    parser.add_argument("--seq", type=int, default=32, help="the shorter length T (the other is 5T)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    H, I, threads = args.hidden, args.input or args.hidden, torch.get_num_threads()

    from rnnfast.backends.cpu import extension
    from rnnfast.bench.report import device_name
    ext, rates = extension(), _rates_module()
    torch.manual_seed(0)
    w_hh_bytes = 4 * H * H * 4
    share = w_hh_bytes // threads  # the forward's team splits W_hh by units
    read = rates.read_rate(share, threads, max(1, (256 << 20) // share // threads))
    fmas = rates.fma_rate(threads)
    product_floor = w_hh_bytes / (read * 1e9)
    projection_floor = 4 * H * I / (fmas * 1e9)

    def cpu_call(input_size):
        w_ih, w_hh = torch.randn(4 * H, input_size) * 0.05, torch.randn(4 * H, H) * 0.05
        bias, h0, c0 = torch.zeros(4 * H), torch.zeros(1, H), torch.zeros(1, H)

        def make(T):
            x = torch.randn(T, 1, input_size)
            return lambda: ext.forward(x, None, h0, c0, w_ih, w_hh, bias, bias, None, False,
                                       False, False)
        return make

    lstm = torch.nn.LSTM(I, H)

    def torch_call(T):
        x = torch.randn(T, 1, I)

        def call():
            with torch.no_grad():
                lstm(x)
        return call

    cpu_step = _per_step(cpu_call(I), args.seq, args.repeats)
    recurrence_step = _per_step(cpu_call(1), args.seq, args.repeats)
    torch_step = _per_step(torch_call, args.seq, args.repeats)
    us = 1e6
    print(f"B=1 H={H} I={I} fp32 inference on {device_name(torch.device('cpu'))}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    print(f"measured rates: read {read:.0f} GB/s over {share >> 10} KB a thread, "
          f"{fmas:.0f} G fp32 multiply-adds/s")
    print(f"floor a step: recurrent product {product_floor * us:.2f} us (W_hh {w_hh_bytes >> 10} KB "
          f"read once) + input projection {projection_floor * us:.2f} us (4H·I multiply-adds) "
          f"= {(product_floor + projection_floor) * us:.2f} us")
    print(f"cpu backend a step: {cpu_step * us:.2f} us ({recurrence_step * us:.2f} us of it the "
          f"recurrence, timed at I=1)")
    print(f"nn.LSTM a step: {torch_step * us:.2f} us; half of it: {torch_step / 2 * us:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
