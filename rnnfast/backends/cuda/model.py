"""A latency model of the CUDA kernels (csrc/lstm_forward.cu, csrc/lstm_backward.cu) per
launch plan (cuda/plan.py): the expected time of one recurrent step and of a whole layer,
for comparison with cuDNN and with the Triton model until a GPU measures the real thing.
It imports neither triton nor the extension, so it runs anywhere.

What one step costs, per phase (forward: 1, 2 with a projection; backward: 1, 2 with a
projection), for one block (every block of a batch block does the same work, and batch
blocks run side by side, so one block's time is the step's time):

    phase = exchange latency + product + L2 traffic

- exchange latency: what a block waits for before the next phase can read the operand
  other blocks wrote.
    grid plans:    one dependent L2 round trip (staging the exchanged operand with
                   cp.async, or multicast bulk copies) + one grid barrier
                   (gpu.l2_round_trip_s + gpu.barrier_s);
    cluster plans: the exchange itself: the CTA's st.async stores landing in its
                   peers' shared memory and their mbarrier waits returning
                   (gpu.cluster_exchange_s; no barrier a step).
- product (`product_time`): the resident-weight product out[M][Nb] = A[M][K] . B[Nb][K]^T
  of cuda/plan.py's Product, the larger of
    * mma issue: a warp item is one m16 tile with a group of up to 8 n8 tiles, times
      `ksplit` k-slices; warp w holds items w, w+8, ... (lstm_device.cuh
      resident_product). Per k-tile a warp issues one mma per n-tile of its slots into
      independent accumulators; its k-tiles go in turn to `copies` accumulator sets, so
      only every copies-th k-tile waits for the one before it: a warp takes
      ceil(k-tile steps / copies) x gpu.mma_latency_clocks + (its mma) issue slots;
      the two warps of an SM sub-partition share its tensor core, so a sub-partition
      takes at least (their mma count) x the time of one mma at the mma.sync rate
      (gpu.tensor_flops x gpu.mma_sync_fraction / SMs / 4). The slowest sets the time.
      16-bit: one mma.m16n8k16 per tile and 16-wide k-tile. fp32: 3xTF32, three
      mma.m16n8k8.tf32 per tile and 8-wide k-tile (the three accumulate into the same
      tile, so they are serial too); a tf32 mma has half the FLOPs of a 16-bit one at
      gpu.tf32_fraction of its rate, the same time. So for the same M, N, K the fp32
      product issues 2 x 3 = 6 times the mma of the 16-bit one.
    * shared-memory reads at gpu.smem_bytes_per_clock_per_sm: every item reads its
      16 x kt M-side fragment once per k-tile, so the M side (weights, or the batch
      when the product is swapped) is read once per N-tile group; a warp reads an
      8 x kt N-side fragment per k-tile for each run of its slots that multiply the
      same one (its items of different M tiles and one N tile share it: the N side is
      read once per M tile less what they share); plus the staged B written in (grid
      plans) and the k-split partial sums written and read back.
  Register plans (plan.reg_k_tiles; reg_product_time): a warp takes its M tiles over
  its k-slice, the register columns then its share of the shared-memory ones, into the
  same accumulators: the weights in shared memory are read once, a warp's B fragments
  once, one partial sum per k-slice; a grid backward still stages the gate gradients
  whole.
- L2 traffic: the block's bytes at the per-SM L2 rate or all blocks' bytes (the chip's
  traffic; multicast plans: below) at the chip's L2 rate, whichever is slower: the
  staged B operand (grid plans; Nb x K x item per product), the xg the cells read
  (4 gates x item), what the cells write (training forward: fp32 gates and cells; y / h
  exchange in the layer's dtype; backward: fp32 saved gates and cells in, fp32 dgates
  and the dtype copy for the chain out).
  A single-chunk product and its staging are added, not overlapped: the product waits
  for its whole operand before the first mma. A chunked one overlaps them (the ring is
  double-buffered: chunk c+1's copies are in flight while chunk c is multiplied), so
  over its n chunks it takes the first chunk's copies, then n - 1 times the slower of
  a chunk's product and the next chunk's copies, then the last chunk's product. The
  rest of the L2 traffic is added: the cell's stores follow the product, and the xg
  and saved-value loads issued across the barrier are counted too (conservative).
- multicast grid plans (plan.multicast = m, sm_90): each single-chunk staged operand is
  read from L2 once per cluster of m CTAs (each CTA copies 1/m of its rows into all m
  CTAs' shared memory), so it counts 1/m against the chip's L2 rate (and in
  bytes_per_step, the chip's traffic), but in full against the per-SM rate: every SM
  still receives all of it. Chunked operands keep cp.async and count in full. A
  register grid backward's operand is multicast in column chunks (plan.stage_chunk_cols)
  that land on their own mbarriers, and its warps multiply a chunk's k-tiles once it has
  landed: overlapped as chunked staging is, each chunk's share of the product taken as
  its share of the columns. Nothing
  else changes: the copies' latency is cp.async's plus gpu.multicast_extra_s (assumed
  0; the probe measures it: the last of a cluster's CTAs to leave the barrier issues
  its rows, and every CTA waits for all of them), the barrier is still the grid's, and
  the staged bytes are still written to each SM's shared memory.
- cluster plans also send what they exchange to every peer: rows x units x item x cluster
  bytes for h (forward), four times that for the gate gradients (backward), counted at
  the shared-memory rate (assumption: the SM-to-SM network keeps up).
- forward row passes (plan.pass_rows): a batch block whose rows' product does not fit a
  block at once takes them in plan.passes passes a step, each staging its rows and
  multiplying the resident weights again: the product and its chunked staging once a
  pass, the latency once a step.
- reduce-split grid backwards (plan.reduce_ctas = c, sm_90): a CTA's product is the
  cluster's c x units W_hh^T rows over its 1/c of the gate columns, and it stages only
  those columns; then the cluster barrier and its first DSMEM load (gpu.cluster_reduce_s)
  and the partial sums of its own units read from the c - 1 peers (and ksplit partials
  each), counted at the shared-memory rate as the cluster plans' stores are.

Off the sequential path, as in the Triton model: the input projection (forward,
2*T*B*4H*I FLOP) and the weight / input gradients (backward: dW_ih and dx, 2*T*B*4H*I
each, dW_hh 2*T*B*4H*P, dW_hr 2*T*B*P*H with a projection) at gpu.gemm_efficiency of
torch's GEMM rate (latency.gemm_rate: tensor cores for 16-bit, FFMA for fp32). The
prologue (each block loading its weights once) and one launch are added to the layer.

Not modelled: the cell's own arithmetic (at most 4 cells a thread), __syncthreads,
ragged (packed) batches, and L2 misses to HBM. Every rate is in rnnfast/backends/
latency.py with "datasheet" or "assumption" beside it; the assumptions (barrier, L2 and
DSMEM latencies, the mma.sync fraction and latency) are to be replaced by measurements.
The model ranks plans and shapes; it does not predict to the microsecond.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from ..latency import H100, Gpu, ModelledTime, gemm_rate
from . import plan as layout

__all__ = ["H100", "Gpu", "ModelledTime", "Phase", "ProductTime", "product_time",
           "forward_time", "backward_time"]

MMA_FLOPS_16 = 2 * 16 * 8 * 16   # one mma.m16n8k16: FLOP
MMA_FLOPS_TF32 = 2 * 16 * 8 * 8  # one mma.m16n8k8.tf32: FLOP
TF32_SPLIT = 3                   # 3xTF32: mma per tile and k-tile for fp32 layers


@dataclass(frozen=True)
class ProductTime:
    """One block's resident-weight product, one step (seconds)."""
    issue_s: float      # tensor-core throughput of the busiest SM sub-partition
    chain_s: float      # the longest warp: its serial k-tile steps at the mma latency
    smem_s: float       # shared-memory bytes read (and staged / partials written)
    mma: int            # mma instructions of the whole block
    warp_mma: int       # mma instructions of the busiest warp

    @property
    def s(self) -> float:
        return max(self.issue_s, self.chain_s, self.smem_s)


def product_time(p: layout.Product, itemsize: int, staged: bool, gpu: Gpu = H100) -> ProductTime:
    """Time of `p` (a cuda/plan.py Product) for one block: `itemsize` 2 (fp16/bf16) or 4
    (fp32 as 3xTF32); `staged`: B arrives in shared memory by cp.async (grid plans)."""
    if not p.m or not p.k:
        return ProductTime(0.0, 0.0, 0.0, 0, 0)
    kt = layout.k_tile(itemsize)             # k-tile width (elements)
    per_tile = 1 if itemsize == 2 else TF32_SPLIT
    n_tiles, work = p.n_tiles, p.m_tiles * p.groups
    # Each warp's slots (n-tiles it accumulates) and k-tile steps: resident_product's loops.
    warp_mma = [0] * layout.WARPS
    warp_steps = [0] * layout.WARPS
    n_loads = 0  # N-side fragments loaded by all warps (one per k-tile per run of equal ones)
    for w in range(min(layout.WARPS, p.items)):
        ks = w // work
        tiles = [(item % work % p.groups) * p.group + t for item in range(w, p.items, layout.WARPS)
                 for t in range(p.group) if (item % work % p.groups) * p.group + t < n_tiles]
        slots = len(tiles)
        runs = sum(1 for i, n in enumerate(tiles) if i == 0 or n != tiles[i - 1])
        for ch in range(p.chunks):
            k_tiles = min(p.chunk, p.k - ch * p.chunk) // kt
            steps = max(0, -(-(k_tiles - ks) // p.ksplit))
            warp_steps[w] += -(-steps // p.copies)  # the copies' chains run side by side
            warp_mma[w] += steps * slots * per_tile
            n_loads += steps * runs
    cores = gpu.tensor_cores_per_sm
    core_mma = [sum(warp_mma[w::cores]) for w in range(cores)]  # warps w, w+4 share a core
    flops = MMA_FLOPS_16 if itemsize == 2 else MMA_FLOPS_TF32
    rate = gpu.tensor_flops * gpu.mma_sync_fraction / gpu.sms / cores   # FLOP/s per core
    if itemsize != 2:
        rate *= gpu.tf32_fraction
    issue = max(core_mma) * flops / rate
    chain = max(warp_steps[w] * per_tile * gpu.mma_latency_clocks + warp_mma[w]
                for w in range(layout.WARPS)) / gpu.clock_hz
    # The M side is read once per N-tile group; an N-side fragment once per k-tile for
    # each run of a warp's slots that multiply it (consecutive items of one N tile).
    m_side = p.nb if p.swapped else p.m
    smem_bytes = (m_side * p.k * itemsize * p.groups
                  + n_loads * layout.ROW_TILE * kt * itemsize
                  + (p.nb * p.k * itemsize if staged else 0)                   # B staged in
                  + 2 * p.ksplit * p.m * p.nb * 4)                             # partials w + r
    smem = smem_bytes / (gpu.smem_bytes_per_clock_per_sm * gpu.clock_hz)
    return ProductTime(issue, chain, smem, sum(warp_mma), max(warp_mma))


def reg_product_time(direction: str, rest: layout.Product, units: int, reg_k_tiles: int,
                     staged: bool, gpu: Gpu = H100) -> ProductTime:
    """A register plan's product (16-bit; lstm_device.cuh reg_product): each warp
    multiplies its up to reg_tiles(direction) M tiles over its k-slice, first the
    reg_k_tiles k-tiles held in registers, then the slice's share of the shared-memory
    part `rest` (plan.reg_rest_tiles), into the same accumulators, loading one B
    fragment a k-tile for its tiles. A warp of fewer than MAX_COPIES tiles spreads its
    k-tiles over MAX_COPIES // tiles accumulator chains, the chains side by side.
    Shared memory: `rest`'s weights once, the warps' B fragments, one partial sum per
    k-slice written and read back; `staged` (the backward's grid plans): the whole B
    operand is written in first, the register part's columns too."""
    tiles = layout.reg_tiles(direction)
    copies = 1 if tiles >= layout.MAX_COPIES else layout.MAX_COPIES // tiles
    slices, reg_cols = layout.reg_geometry(direction, units, 2, reg_k_tiles)
    per = layout.WARPS // slices
    warp_mma, warp_steps = [], []
    for w in range(layout.WARPS):
        first, end = layout.reg_rest_tiles(rest, slices, w // per, 2)
        held = sum(1 for j in range(tiles) if (w % per + j * per) * layout.WEIGHT_TILE < rest.m)
        warp_steps.append(reg_k_tiles + end - first)
        warp_mma.append(held * warp_steps[-1])
    cores = gpu.tensor_cores_per_sm
    core_mma = [sum(warp_mma[w::cores]) for w in range(cores)]
    rate = gpu.tensor_flops * gpu.mma_sync_fraction / gpu.sms / cores
    issue = max(core_mma) * MMA_FLOPS_16 / rate
    chain = max(-(-steps // copies) * gpu.mma_latency_clocks + mma
                for steps, mma in zip(warp_steps, warp_mma)) / gpu.clock_hz
    fragments = sum(steps for steps, mma in zip(warp_steps, warp_mma) if mma)
    smem_bytes = (rest.m * rest.k * 2
                  + fragments * rest.nb * layout.k_tile(2) * 2
                  + 2 * slices * rest.m * rest.nb * 4
                  + (rest.nb * (reg_cols + rest.k) * 2 if staged else 0))
    smem = smem_bytes / (gpu.smem_bytes_per_clock_per_sm * gpu.clock_hz)
    return ProductTime(issue, chain, smem, sum(warp_mma), max(warp_mma))


class Phase(NamedTuple):
    """One phase of a step, for one block."""
    product: ProductTime
    l2_bytes: int          # the block's L2 traffic (what its SM receives and sends)
    shared_bytes: int = 0  # the part of it its multicast cluster reads from L2 once
    dsmem_bytes: int = 0   # cluster plans: what the block stores into its peers
    overlapped_bytes: int = 0  # the part of it staged chunk by chunk beside the product
    chunks: int = 1            # ... in this many chunks a pass
    passes: int = 1            # forward row passes: `product` is one pass's, run this often
    shares: tuple[float, ...] = ()  # each chunk's share of the copies and of the product
                                    # where they differ (register backwards' multicast
                                    # chunks); (): equal shares

    def chip_bytes(self, plan: layout.Plan) -> int:
        """L2 traffic of all the plan's blocks: the shared part once per cluster."""
        shared = self.shared_bytes * plan.blocks // plan.multicast if self.shared_bytes else 0
        return (self.l2_bytes - self.shared_bytes) * plan.blocks + shared


def _staged_phase(plan: layout.Plan, product: layout.Product, timed: ProductTime,
                  itemsize: int, other_bytes: int, passes: int = 1) -> Phase:
    """A grid plan's phase whose product `product` (timed as `timed`, `passes` times a
    step: forward row passes) stages its B operand from L2 (bytes a block receives a
    step), beside `other_bytes` of L2 traffic. Single chunk: shared by the multicast
    cluster where the plan multicasts. Chunked: cp.async, overlapped with the product
    (the module docstring)."""
    staged = product.nb * product.k * itemsize * passes
    if product.chunks > 1:
        return Phase(timed, staged + other_bytes, overlapped_bytes=staged, chunks=product.chunks,
                     passes=passes)
    return Phase(timed, staged + other_bytes, staged if plan.multicast else 0, passes=passes)


def _phase_time(plan: layout.Plan, phase: Phase, gpu: Gpu) -> float:
    """One phase of one step (seconds): exchange latency + product + L2 traffic."""
    if plan.kind == "cluster":
        latency = gpu.cluster_exchange_s
    else:
        latency = gpu.l2_round_trip_s + gpu.barrier_s
        if phase.shared_bytes:  # staged by the cluster's multicast copies
            latency += gpu.multicast_extra_s
        if plan.reduce_ctas:  # the cluster meets before summing its partial products
            latency += gpu.cluster_reduce_s
    l2 = max(phase.l2_bytes / gpu.l2_bytes_per_s_per_sm,
             phase.chip_bytes(plan) / gpu.l2_bytes_per_s)
    dsmem = phase.dsmem_bytes / (gpu.smem_bytes_per_clock_per_sm * gpu.clock_hz)
    # Chunked staging, each pass: chunk c's share of the product starts once the chunk
    # has landed and the chunk before it is multiplied (the copies are issued together,
    # or double-buffered: the next chunk's are in flight during a chunk's product). With
    # n equal chunks that is the first chunk's copies, n - 1 chunks at the slower of
    # copies and product, the last chunk's product. Copies staged whole are in the rest
    # of the traffic.
    copies = l2 * phase.overlapped_bytes / phase.l2_bytes if phase.l2_bytes else 0.0
    product, passes = phase.product.s, phase.passes
    one = copies / passes  # a pass's chunked copies
    landed = done = 0.0
    for share in phase.shares or (1 / phase.chunks,) * phase.chunks:
        landed += one * share
        done = max(done, landed) + product * share
    return latency + passes * done + (l2 - copies) + dsmem


def _layer(plan, seq_len: int, phases: list[Phase], weight_bytes: int, gemm_flops: float,
           dtype: torch.dtype, gpu: Gpu) -> ModelledTime:
    step = sum(_phase_time(plan, phase, gpu) for phase in phases)
    prologue = weight_bytes * plan.blocks / gpu.l2_bytes_per_s   # W slices into shared memory
    return ModelledTime(step, seq_len * step + prologue + gpu.launch_s,
                        gemm_flops / (gemm_rate(dtype, gpu) * gpu.gemm_efficiency),
                        sum(phase.chip_bytes(plan) for phase in phases), len(phases))


def _itemsize(plan: layout.Plan, dtype: torch.dtype) -> int:
    if dtype.itemsize != plan.itemsize:
        raise ValueError(f"the plan is for {plan.itemsize}-byte weights, the layer is {dtype}")
    return plan.itemsize


def step_time(plan: layout.Plan, direction: str, batch: int, hidden: int, out_size: int,
              gpu: Gpu = H100) -> float:
    """Modelled seconds of one step of `plan` (how plan.make_plan ranks the splits)."""
    dtype = {2: torch.float16, 4: torch.float32}.get(plan.itemsize, torch.float64)
    timing = forward_time if direction == "forward" else backward_time
    return timing(plan, batch, hidden, out_size, hidden, 1, dtype, gpu).step_s


def forward_time(plan: layout.Plan, batch: int, hidden: int, out_size: int, input_size: int,
                 seq_len: int, dtype: torch.dtype, gpu: Gpu = H100,
                 training: bool = True) -> ModelledTime:
    """One layer and direction of the forward (`training`: the fp32 gates and cells the
    backward needs are written too) under a cuda/plan.py forward `plan`."""
    item = _itemsize(plan, dtype)
    has_proj = out_size != hidden
    cluster = plan.kind == "cluster"
    rec, proj = layout.forward_products(hidden, out_size, has_proj, item, plan.units,
                                        plan.proj_cols, plan.block_rows, cluster,
                                        plan.reg_k_tiles, plan.pass_rows)
    cells = plan.block_rows * plan.units                       # (row, unit) pairs of a block
    cell_bytes = (cells * 4 * item + 4 * plan.units * 4        # xg of 4 gates in, bias
                  + (cells * 5 * 4 if training else 0)         # fp32 gates and c_t out
                  + cells * 2 * item)                          # y (or hidden) and the h exchange
    if cluster:  # each h is stored into every peer's buffer (and the CTA's own)
        product = (reg_product_time("forward", rec, plan.units, plan.reg_k_tiles, False, gpu)
                   if plan.reg_k_tiles else product_time(rec, item, False, gpu))
        phases = [Phase(product, cell_bytes,
                        dsmem_bytes=cells * item * plan.unit_slices)]
    else:
        phases = [_staged_phase(plan, rec, product_time(rec, item, True, gpu), item,
                                cell_bytes, plan.passes)]      # h(t-1) of the batch block
    if has_proj:  # y^T = W_hr[my rows] . hidden^T: hidden staged in, y and h(t) out
        phases.append(_staged_phase(plan, proj, product_time(proj, item, True, gpu), item,
                                    2 * plan.block_rows * plan.proj_cols * item))
    _, reg_cols = layout.reg_geometry("forward", plan.units, item, plan.reg_k_tiles)
    weights = rec.m * (reg_cols + rec.k) * item + proj.m * proj.k * item
    gemm_flops = 2 * seq_len * batch * 4 * hidden * input_size
    return _layer(plan, seq_len, phases, weights, gemm_flops, dtype, gpu)


def backward_time(plan: layout.Plan, batch: int, hidden: int, out_size: int, input_size: int,
                  seq_len: int, dtype: torch.dtype, gpu: Gpu = H100) -> ModelledTime:
    """One layer and direction of the backward under a cuda/plan.py backward `plan`: the
    reverse-time chain and the dW_ih, dW_hh, dx (and dW_hr) GEMMs."""
    item = _itemsize(plan, dtype)
    has_proj = out_size != hidden
    cluster = plan.kind == "cluster"
    chain, proj = layout.backward_products(hidden, out_size, has_proj, item, plan.units,
                                           plan.proj_cols, plan.block_rows, cluster,
                                           plan.reg_k_tiles, plan.reduce_ctas)
    # Register plans: the gate gradients are staged whole, the register part's columns too.
    _, reg_cols = layout.reg_geometry("backward", plan.units, item, plan.reg_k_tiles)
    whole = replace(chain, k=chain.k + reg_cols)
    cells = plan.block_rows * plan.units
    cell_bytes = (cells * 6 * 4                                # saved gates, c, c(t-1) in
                  + (0 if has_proj else cells * item)          # dy in
                  + cells * 4 * 4                              # dgates out in fp32
                  + (0 if cluster else cells * 4 * item))      # and the chain's exchange copy
    if cluster:  # the chain's copy of each gate gradient goes to every peer, not through L2
        product = (reg_product_time("backward", chain, plan.units, plan.reg_k_tiles, False, gpu)
                   if plan.reg_k_tiles else product_time(chain, item, False, gpu))
        phases = [Phase(product, cell_bytes, dsmem_bytes=cells * 4 * item * plan.unit_slices)]
    elif has_proj:
        cols = plan.block_rows * plan.proj_cols                # (row, column) pairs of phase B
        phases = [_staged_phase(plan, proj, product_time(proj, item, True, gpu), item,
                                cell_bytes),                   # dh in
                  _staged_phase(plan, chain, product_time(chain, item, True, gpu), item,
                                cols * (2 * item + 4))]        # dgates(t+1) in; dy in, dh
                                                               # out, dy_total out
    else:
        product = (reg_product_time("backward", chain, plan.units, plan.reg_k_tiles, True, gpu)
                   if plan.reg_k_tiles else product_time(chain, item, True, gpu))
        phase = _staged_phase(plan, whole, product, item, cell_bytes)  # dgates(t+1) in
        if plan.reg_k_tiles and plan.multicast:  # in chunks, each multiplied once landed
            slices, _ = layout.reg_geometry("backward", plan.units, item, plan.reg_k_tiles)
            cols = [layout.stage_chunk_cols(slices, plan.reg_k_tiles, chain.k, item, c)
                    for c in range(layout.stage_chunks(plan.reg_k_tiles))]
            phase = phase._replace(overlapped_bytes=phase.shared_bytes, chunks=len(cols),
                                   shares=tuple((end - first) / whole.k for first, end in cols))
        if plan.reduce_ctas:  # its units' partial sums from every peer
            peers = (plan.reduce_ctas - 1) * chain.ksplit * plan.units * chain.nb * 4
            phase = phase._replace(dsmem_bytes=peers)
        phases = [phase]
    weights = whole.m * whole.k * item + proj.m * proj.k * item
    gemm_flops = (2 * seq_len * batch * 4 * hidden * (2 * input_size + out_size)
                  + (2 * seq_len * batch * out_size * hidden if has_proj else 0))
    return _layer(plan, seq_len, phases, weights, gemm_flops, dtype, gpu)
