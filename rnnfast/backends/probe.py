"""Measures, on the GPU at hand, the figures the latency models assume (latency.Gpu,
used by triton/model.py and cuda/model.py to rank plans): the grid barrier and the
dependent L2 round trip after it (cp.async, or multicast bulk copies into the CTAs of
a cluster of the grid), the cluster plans' step exchange (st.async into the peer
blocks' shared memory, an mbarrier wait), the reduce splits' cluster meeting (a cluster
barrier, then loads of the peers' partial sums), mma.sync's latency and rate, the SM
clock while the tensor cores are busy, and the Triton kernels' barrier and tagged-word
exchange. The CUDA figures come from csrc/lstm_probe.cu, which runs the CUDA kernels'
own device code for each primitive; Triton's from triton/probe.py, which calls the
Triton kernels' own end_phase and wait_for_tag. `python -m rnnfast verify` runs this
in its probe stage and re-runs the models with the figures (latency.measured_gpu).

Each time is the difference between a launch of 2R rounds and one of R rounds, over R
(the launch and the first round's cold misses cancel out); each of the two is the
fastest of TRIES launches (interference only adds time).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .barrier import BARRIER_SPIN_LIMIT, raise_if_barrier_timed_out, watch_timeout_flag
from .cuda.plan import MULTICAST_SIZES, REDUCE_SIZES, THREADS, WARPS

TRIES = 3
CHASE_LINES = 1 << 16       # the L2 probe's buffer: 65,536 lines of 128 B = 8 MiB (in L2)
CHASE_STRIDE = 32           # int32 words a line: one load a line, no line read twice a lap
CLUSTER_SIZES = (16, 8)     # the cluster forward's size (non-portable 16), else the portable 8
MMA_FLOPS = 2 * 16 * 8 * 16  # one mma.m16n8k16
ROUNDS = {"chase": 8192, "grid": 4096, "cluster": 8192, "reduce": 8192, "mma_chain": 65536,
          "mma_rate": 16384, "triton": 4096, "triton_tagged": 4096}


def _launch_seconds(launch: Callable[[], None], device: torch.device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.device(device):
        start.record()
        launch()
        end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


def seconds_per_round(launch: Callable[[int], None], rounds: int, device: torch.device,
                      prepare: Callable[[], None] = lambda: None) -> float:
    """(fastest launch of 2*rounds - fastest launch of rounds) / rounds. `prepare` runs
    before each launch, outside the timed span (it resets a barrier's counter)."""
    def fastest(n: int) -> float:
        best = math.inf
        for _ in range(TRIES):
            prepare()
            best = min(best, _launch_seconds(lambda: launch(n), device))
        return best
    return (fastest(2 * rounds) - fastest(rounds)) / rounds


def _barrier_flags(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, dtype=dtype, device=device), torch.zeros(1, dtype=torch.int32, device=device)


def l2_chase(ext, device: torch.device) -> dict:
    """One thread's chained L2 loads over an 8 MiB random cycle: seconds and clocks a load."""
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(CHASE_LINES, generator=generator) * CHASE_STRIDE
    chase = torch.zeros(CHASE_LINES * CHASE_STRIDE, dtype=torch.int32)
    chase[order] = torch.roll(order, -1).to(torch.int32)   # each line points at the next
    chase = chase.to(device)
    out = torch.zeros(2, dtype=torch.int64, device=device)
    ext.probe_l2_chase(chase, CHASE_LINES, out)             # one lap: every line in L2
    rounds = ROUNDS["chase"]
    seconds = seconds_per_round(lambda n: ext.probe_l2_chase(chase, n, out), rounds, device)
    clocks = []
    for n in (rounds, 2 * rounds):
        ext.probe_l2_chase(chase, n, out)
        clocks.append(int(out[0].item()))
    return {"l2_round_trip_s": seconds, "l2_round_trip_clocks": (clocks[1] - clocks[0]) / rounds}


FEW_BLOCKS = 16  # a 128-block grid plan's multicast clusters of 8, each arriving once


def grid_phases(ext, device: torch.device, blocks: int) -> dict:
    """A cooperative grid of `blocks` (one per SM) meeting at the CUDA kernels' barrier
    each round, alone and with a 16-byte piece per thread exchanged through L2; and the
    barrier alone with FEW_BLOCKS arriving on its counter, what a barrier tree (one
    arrival per cluster) would leave: whether the arrivals' atomics cost."""
    found = {}
    rows = torch.zeros(2, blocks, THREADS, 4, dtype=torch.int32, device=device)
    runs = ((False, "barrier_s", blocks), (True, "grid_exchange_s", blocks),
            (False, "barrier_few_blocks_s", min(FEW_BLOCKS, blocks)))
    for exchange, name, n_blocks in runs:
        arrivals, timed_out = _barrier_flags(device, torch.int64)
        found[name] = seconds_per_round(
            lambda n: ext.probe_phases(rows if exchange else None, arrivals, timed_out, n,
                                       n_blocks, 0, 0, exchange, BARRIER_SPIN_LIMIT),
            ROUNDS["grid"], device, prepare=arrivals.zero_)
        watch_timeout_flag(timed_out, "the grid barrier probe")
        raise_if_barrier_timed_out(wait=True)
    return found


def grid_multicast_phase(ext, device: torch.device, sms: int, resident_clusters: tuple[int, ...]) -> dict:
    """A cooperative grid in clusters (sm_90) meeting at the CUDA kernels' barrier each
    round, then staging the same 4 KB of pieces as grid_phases into every CTA of a
    cluster by multicast bulk copies, as a multicast grid plan stages h(t-1): clusters of
    8 (else 4, 2), as many as the GPU holds at once, up to one block per SM. Compare
    with grid_exchange_s: the latency model charges both the same."""
    for size in MULTICAST_SIZES[::-1]:
        blocks = min(sms // size, resident_clusters[size] if size < len(resident_clusters) else 0) * size
        if blocks >= 2 * size:
            break
    else:
        raise ext.LaunchRefused(f"the GPU holds no two clusters of {MULTICAST_SIZES} blocks at once")
    rows = torch.zeros(2, blocks, THREADS, 4, dtype=torch.int32, device=device)
    arrivals, timed_out = _barrier_flags(device, torch.int64)
    seconds = seconds_per_round(
        lambda n: ext.probe_phases(rows, arrivals, timed_out, n, blocks, 0, size, True,
                                   BARRIER_SPIN_LIMIT),
        ROUNDS["grid"], device, prepare=arrivals.zero_)
    watch_timeout_flag(timed_out, "the multicast grid probe")
    raise_if_barrier_timed_out(wait=True)
    return {"grid_multicast_exchange_s": seconds, "multicast_blocks": blocks, "multicast_size": size}


def cluster_phases(ext, device: torch.device) -> dict:
    """One cluster (16 blocks, else 8) exchanging as the cluster forward does each round
    (8 rows of 32 fp16 units a block, copied by st.async into every peer, each block
    waiting on its mbarrier for its peers' bytes): the cluster plans' per-step exchange.
    Raises ext.LaunchRefused when the GPU places neither size."""
    arrivals, timed_out = _barrier_flags(device, torch.int64)
    for size in CLUSTER_SIZES:
        try:
            seconds = seconds_per_round(
                lambda n: ext.probe_phases(None, arrivals, timed_out, n, size, size, 0, True,
                                           BARRIER_SPIN_LIMIT),
                ROUNDS["cluster"], device)
        except ext.LaunchRefused:
            if size == CLUSTER_SIZES[-1]:
                raise
            continue
        watch_timeout_flag(timed_out, "the cluster exchange probe")
        raise_if_barrier_timed_out(wait=True)
        return {"cluster_exchange_s": seconds, "cluster_blocks": size}


def cluster_reduce(ext, device: torch.device, sms: int, resident_clusters: tuple[int, ...]) -> dict:
    """Clusters meeting as a reduce-split backward does each step (csrc/lstm_probe.cu
    cluster_reduce_kernel: the cluster barrier, then each CTA's 16-byte loads of its
    units' partial sums from every CTA): the largest of REDUCE_SIZES the GPU holds, as
    many clusters as fit one block per SM. No grid barrier: what a reduce split adds to
    a grid plan's step (latency.Gpu.cluster_reduce_s)."""
    for size in REDUCE_SIZES[::-1]:
        clusters = min(sms // size, resident_clusters[size] if size < len(resident_clusters) else 0)
        if clusters >= 1:
            break
    else:
        raise ext.LaunchRefused(f"the GPU holds no cluster of {REDUCE_SIZES} blocks")
    out = torch.zeros(1, dtype=torch.float32, device=device)
    seconds = seconds_per_round(
        lambda n: ext.probe_cluster_reduce(clusters * size, size, n, out), ROUNDS["reduce"], device)
    return {"cluster_reduce_s": seconds, "reduce_size": size}


def mma(ext, device: torch.device, sms: int) -> dict:
    """mma.sync m16n8k16: clocks from one to a dependent one (one warp chain), and the
    rate of 8 warps a block x 8 independent chains on every SM; the SM clock meanwhile."""
    out = torch.zeros(3, dtype=torch.int64, device=device)
    clocks = []
    for n in (ROUNDS["mma_chain"], 2 * ROUNDS["mma_chain"]):
        ext.probe_mma(1, 1, n, out)
        clocks.append(int(out[0].item()))
    latency = (clocks[1] - clocks[0]) / ROUNDS["mma_chain"]
    rounds = ROUNDS["mma_rate"]
    seconds = seconds_per_round(lambda n: ext.probe_mma(sms, 8, n, out), rounds, device)
    clock_hz = int(out[0].item()) / max(int(out[1].item()), 1) * 1e9  # the last timed launch's
    flops_per_round = sms * WARPS * 8 * MMA_FLOPS
    return {"mma_latency_clocks": latency, "mma_sync_flops": flops_per_round / seconds,
            "clock_hz": clock_hz}


def triton_barrier(device: torch.device, sms: int) -> dict:
    """The Triton kernels' end_phase, one program per SM (4 warps), cooperative launch."""
    from .triton.probe import barrier_rounds_kernel

    arrivals, timed_out = _barrier_flags(device, torch.int32)
    seconds = seconds_per_round(
        lambda n: barrier_rounds_kernel[(sms,)](arrivals, timed_out, n, SPIN_LIMIT=BARRIER_SPIN_LIMIT,
                                                num_warps=4, launch_cooperative_grid=True),
        ROUNDS["triton"], device, prepare=arrivals.zero_)
    watch_timeout_flag(timed_out, "the Triton barrier probe")
    raise_if_barrier_timed_out(wait=True)
    return {"triton_barrier_s": seconds}


def triton_tagged_exchange(device: torch.device, sms: int) -> dict:
    """The Triton kernels' tagged-word exchange (cell.wait_for_tag), one program per SM
    (8 warps, as the tagged plans), cooperative launch: a round is one program's
    store of its tagged word and its wait for everyone's."""
    import triton

    from .triton.probe import tagged_rounds_kernel

    programs = triton.next_power_of_2(sms)
    words = torch.zeros(2 * programs, dtype=torch.int64, device=device)
    timed_out = torch.zeros(1, dtype=torch.int32, device=device)
    seconds = seconds_per_round(
        lambda n: tagged_rounds_kernel[(sms,)](words, timed_out, n, SPIN_LIMIT=BARRIER_SPIN_LIMIT,
                                               PROGRAMS=programs, num_warps=8,
                                               launch_cooperative_grid=True),
        ROUNDS["triton_tagged"], device, prepare=words.zero_)
    watch_timeout_flag(timed_out, "the Triton tagged-word probe")
    raise_if_barrier_timed_out(wait=True)
    return {"triton_tagged_wait_s": seconds}


def measure(device: torch.device) -> dict:
    """Every figure this GPU and this install can give. A probe that cannot run here
    says why under "skipped", one that fails (a refused launch, a barrier that timed
    out) under "failed" (its first figure -> the reason); the others still run."""
    from . import available_backends
    from .cuda import _C, device_limits

    props = torch.cuda.get_device_properties(device)
    found: dict = {"device": props.name, "sms": props.multi_processor_count, "skipped": {}, "failed": {}}
    backends = available_backends()
    probes: list[tuple[str, Optional[str], Callable[[], dict]]] = []  # (figure, why not, probe)
    if backends["cuda"] is None:
        sms, smem, cooperative, major, resident = device_limits(device)
        # What the planner is told (verify.json): clusters of c CTAs resident at once,
        # for c = 0..16 (none where the GPU cannot place them), and the opt-in bytes.
        found.update(resident_clusters=list(resident), smem_per_block=smem)
        no_clusters = None if major >= 9 else f"thread-block clusters need sm_90, this is sm_{major}x"
        probes += [
            ("l2_round_trip_s", None, lambda: l2_chase(_C, device)),
            ("mma_latency_clocks", None, lambda: mma(_C, device, sms)),
            ("barrier_s", None if cooperative else "this device has no cooperative launch",
             lambda: grid_phases(_C, device, sms)),
            ("grid_multicast_exchange_s", no_clusters if cooperative else "this device has no cooperative launch",
             lambda: grid_multicast_phase(_C, device, sms, resident)),
            ("cluster_exchange_s", no_clusters, lambda: cluster_phases(_C, device)),
            ("cluster_reduce_s", no_clusters, lambda: cluster_reduce(_C, device, sms, resident))]
    else:
        found["skipped"]["cuda"] = backends["cuda"]
    probes.append(("triton_barrier_s", backends["triton"], lambda: triton_barrier(device, found["sms"])))
    probes.append(("triton_tagged_wait_s", backends["triton"],
                   lambda: triton_tagged_exchange(device, found["sms"])))
    for figure, why_not, probe in probes:
        if why_not is not None:
            found["skipped"][figure] = why_not
            continue
        try:
            found.update(probe())
        except Exception as error:  # one probe's failure is its own
            found["failed"][figure] = f"{type(error).__name__}: {error}"
    return found
