"""The limits a case cannot beat on this device, so a time reads as a fraction of one.

Three measured rates (measure_rates):
  matmul_flops   FLOP/s of a large square matrix multiply in the case's dtype; on a CPU
                 for fp16/bf16 the faster of that and fp32's, since a 16-bit product
                 can always be taken in fp32 there (the cpu backend does so where the CPU
                 has no 16-bit dot product, and torch's 16-bit GEMM can be 4-13x slower)
  bandwidth      bytes/s of a large device-to-device copy (read + write)
  step_latency   seconds per tiny dependent op launched back to back: what each
                 sequential step costs at least when a step needs one launch or one
                 grid-wide synchronisation (a persistent kernel's barrier is cheaper
                 than a launch, so for those this is an upper bound on the floor)
and, per case and mode (case_floor), the work:
  FLOP   forward 2*T*B*4H*(I_l+H) per layer; backward ~2x forward (dx/dh and dW GEMMs),
         ~1x when no weight gradient is needed (bias-only); frozen lower layers run
         forward only
  bytes  compulsory traffic: inputs, outputs and weights once, and for training the
         saved gate activations [T, B, 4H] written and read back plus the gradients
  steps  T per layer forward and T per layer with a backward chain
The floor is the largest of FLOP/rate, bytes/bandwidth and steps*latency; `bound` says
which. The FLOP and byte models are first-order estimates, stated here so results can
be re-derived.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .cases import Case


@dataclass(frozen=True)
class Rates:
    matmul_flops: float   # FLOP/s
    bandwidth: float      # bytes/s
    step_latency: float   # seconds per dependent step

    def as_dict(self) -> dict:
        return asdict(self)


def _bwd_layers(case: Case, mode: str):
    """Per layer: (forward passes, backward multiplier of forward FLOP, has backward chain)."""
    L = case.layers
    out = []
    for layer in range(L):
        if mode == "fwd":
            out.append((1.0, 0.0, False))
        elif mode in ("fwdbwd", "memory"):
            out.append((1.0, 2.0, True))
        elif mode == "bwd":
            out.append((0.0, 2.0, True))
        elif mode == "frozen_layers":
            out.append((1.0, 2.0, True) if layer == L - 1 else (1.0, 0.0, False))
        elif mode == "bias_only":
            out.append((1.0, 1.0, True))
        else:
            raise ValueError(f"unknown mode {mode!r}")
    return out


def case_work(case: Case, mode: str) -> dict:
    """FLOP, bytes and sequential steps of one iteration of `mode` on `case`."""
    T, B, H = case.T, case.B, case.H
    size = torch.empty((), dtype=case.torch_dtype).element_size()
    flop = nbytes = 0.0
    steps = 0
    for layer, (fwd, bwd, chain) in enumerate(_bwd_layers(case, mode)):
        I = case.I if layer == 0 else H
        f = 2.0 * T * B * 4 * H * (I + H)
        flop += (fwd + bwd) * f
        io = T * B * (I + H) + 4 * H * (I + H)          # x, y, weights
        nbytes += size * (fwd + (bwd > 0)) * io
        if bwd > 0:
            nbytes += size * 2 * T * B * 4 * H           # saved gates written, read back
        steps += T * ((fwd > 0) + chain)
    return {"flop": flop, "bytes": nbytes, "steps": steps}


def case_floor(case: Case, mode: str, rates: Rates) -> dict:
    work = case_work(case, mode)
    parts = {"compute": work["flop"] / rates.matmul_flops,
             "memory": work["bytes"] / rates.bandwidth,
             "latency": work["steps"] * rates.step_latency}
    bound = max(parts, key=parts.get)
    return {**work, "compute_ms": parts["compute"] * 1e3, "memory_ms": parts["memory"] * 1e3,
            "latency_ms": parts["latency"] * 1e3, "floor_ms": parts[bound] * 1e3, "bound": bound}


def _best_seconds(fn, device: torch.device, repeats: int = 10) -> float:
    """The fastest of `repeats` runs: a limit is what the device does at its best, and
    slower runs only measure interference (other processes, clock ramps)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def _matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    if device.type != "cuda" and dtype in (torch.float16, torch.bfloat16):
        n = 512  # half-precision CPU GEMMs are slow; the rate, not the size, matters
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2.0 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), device)


def measure_rates(device: torch.device, dtype: torch.dtype) -> Rates:
    """Measures the three rates with torch on `device` (a few seconds on a GPU)."""
    gpu = device.type == "cuda"
    flops = _matmul_flops(device, dtype)
    if not gpu and dtype in (torch.float16, torch.bfloat16):
        flops = max(flops, _matmul_flops(device, torch.float32))

    numel = (256 if gpu else 32) * 2 ** 20  # fp32 elements: 1 GiB on GPU, 128 MiB on CPU
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2.0 * src.numel() * src.element_size() / _best_seconds(lambda: dst.copy_(src), device)
    del src, dst

    k = 1000 if gpu else 2000
    t = torch.zeros(1, device=device)

    def chain():
        for _ in range(k):
            t.add_(1.0)
    latency = _best_seconds(chain, device, repeats=3) / k
    return Rates(flops, bandwidth, latency)
