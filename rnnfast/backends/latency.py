"""What the latency models of the Triton kernels (triton/model.py) and the CUDA kernels
(cuda/model.py) know about the GPU, and the answer they both give.

Imports neither triton nor the CUDA extension, so `python -m rnnfast bench --explain`
can model either backend on a machine with neither. Each figure of `Gpu` says whether
it is a datasheet number or an assumption; the assumptions are to be replaced by
measurements on the GPU (DESIGN.md §5: the models rank plans and sizes, they do not
predict to the microsecond).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    l2_bytes_per_s: float         # the whole chip's L2 bandwidth (assumption: ~5.5 TB/s)
    l2_bytes_per_s_per_sm: float  # what one SM can pull from L2 (assumption: 64 B a clock)
    l2_round_trip_s: float        # one dependent load that misses L1 (assumption)
    barrier_s: float              # a grid barrier: release add, polls, acquire (assumption)
    tensor_flops: float           # dense 16-bit tensor-core rate of the chip, wgmma (datasheet)
    fp32_flops: float             # FFMA rate of the chip (datasheet)
    fp64_flops: float             # datasheet
    gemm_efficiency: float        # fraction of peak the large off-path GEMMs reach (assumption)
    launch_s: float               # one kernel launch (assumption)
    # What the CUDA model adds (cuda/model.py).
    clock_hz: float = 1.755e9               # SM clock the per-clock figures run at (assumption:
                                            # sustained clock under load, below the 1.98 GHz boost)
    smem_bytes_per_clock_per_sm: int = 128  # shared-memory bandwidth, 32 banks x 4 B (datasheet)
    cluster_exchange_s: float = 0.3e-6      # a cluster plan's step exchange: a CTA's st.async
                                            # stores landing in its peers' shared memory and
                                            # their mbarrier waits returning (assumption: one
                                            # DSMEM store, 0.2 µs, and the mbarrier's 0.1; to be
                                            # measured)
    cluster_reduce_s: float = 0.5e-6        # a reduce-split grid backward's step: the cluster
                                            # barrier after the partial products and the first
                                            # DSMEM load of the peers' partial sums (assumption:
                                            # as the cluster barrier and DSMEM stores the cluster
                                            # plans' exchange replaced; the probe measures it)
    tagged_wait_s: float = 0.9e-6           # a Triton tagged step's wait: the producer's
                                            # store reaching L2 (half a round trip), the phase
                                            # of the consumer's poll against it (half, on
                                            # average) and the poll's return (half)
                                            # (assumption: 1.5 x l2_round_trip_s; to be measured)
    multicast_extra_s: float = 0.0          # what staging by multicast bulk copies after the grid
                                            # barrier adds to the dependent L2 round trip of
                                            # cp.async (the last of a cluster's CTAs to leave the
                                            # barrier issues its rows, the mbarrier wait)
                                            # (assumption: nothing, to be measured)
    mma_sync_fraction: float = 2 / 3        # of tensor_flops reached by 16-bit mma.sync.m16n8k16
                                            # (wgmma reaches the peak) (assumption)
    tf32_fraction: float = 0.5              # tf32 mma rate / 16-bit rate (datasheet: 495 vs 990 TF)
    mma_latency_clocks: int = 32            # one mma.sync until a dependent mma can issue
                                            # (assumption, to be measured)
    tensor_cores_per_sm: int = 4            # one per SM sub-partition (datasheet)


H100 = Gpu("H100 SXM / H200 (same SMs and L2)", sms=132, l2_bytes_per_s=5.5e12,
           l2_bytes_per_s_per_sm=64 * 1.755e9, l2_round_trip_s=0.6e-6, barrier_s=1.0e-6,
           tensor_flops=990e12, fp32_flops=67e12, fp64_flops=34e12, gemm_efficiency=0.6,
           launch_s=5e-6)


# The Gpu fields a figure of rnnfast/backends/probe.py replaces as it is.
MEASURED_FIELDS = ("clock_hz", "l2_round_trip_s", "barrier_s", "cluster_exchange_s",
                   "cluster_reduce_s")


def measured_gpu(found: dict, backend: str, base: Gpu = H100) -> Gpu:
    """`base` with what probe.measure found on a GPU in place of the assumptions it has
    figures for. backend "triton": the barrier is the Triton kernels' own (they meet at
    cell.end_phase, the CUDA kernels at grid_barrier_wait). The per-clock L2 rate stays
    64 B a clock at the measured clock; mma.sync's measured rate becomes its fraction of
    base.tensor_flops (the datasheet's dense rate); the multicast exchange's time over
    the cp.async one's becomes multicast_extra_s (never below 0); the Triton kernels'
    tagged-word exchange becomes tagged_wait_s."""
    values = {name: found[name] for name in MEASURED_FIELDS if name in found}
    if backend == "triton":
        values.pop("barrier_s", None)
        if "triton_barrier_s" in found:
            values["barrier_s"] = found["triton_barrier_s"]
    if "triton_tagged_wait_s" in found:
        values["tagged_wait_s"] = found["triton_tagged_wait_s"]
    if "clock_hz" in values:
        values["l2_bytes_per_s_per_sm"] = base.l2_bytes_per_s_per_sm / base.clock_hz * values["clock_hz"]
    if "mma_latency_clocks" in found:
        values["mma_latency_clocks"] = round(found["mma_latency_clocks"])
    if "mma_sync_flops" in found:
        values["mma_sync_fraction"] = found["mma_sync_flops"] / base.tensor_flops
    if "grid_multicast_exchange_s" in found and "grid_exchange_s" in found:
        values["multicast_extra_s"] = max(0.0, found["grid_multicast_exchange_s"] - found["grid_exchange_s"])
    return replace(base, name=f"{found.get('device', 'this GPU')}, measured figures", **values)


@dataclass(frozen=True)
class ModelledTime:
    step_s: float           # one step of the recurrence (forward or backward chain)
    recurrence_s: float     # all T steps
    gemm_s: float           # the GEMMs off the sequential path
    bytes_per_step: int     # L2 traffic of one step, all programs (blocks)
    barriers_per_step: int

    @property
    def total_s(self) -> float:
        return self.recurrence_s + self.gemm_s


def gemm_rate(dtype: torch.dtype, gpu: Gpu) -> float:
    """torch's own matmuls: tensor cores for 16-bit, FFMA for fp32 without TF32."""
    if dtype in (torch.float16, torch.bfloat16):
        return gpu.tensor_flops
    return gpu.fp64_flops if dtype == torch.float64 else gpu.fp32_flops
