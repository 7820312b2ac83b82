"""How the CUDA kernels spread a layer over the GPU, and whether it fits on chip.

A block (256 threads, one per SM) owns `units` hidden units of `block_rows` batch rows
(a batch block) and holds its slice of the weights in shared memory for the whole
sequence; the `unit_slices` blocks of a batch block exchange h(t) (forward) or the
gate gradients (backward) every step. Two forms (csrc/lstm_forward.cu):

- "cluster" (sm_90, no projection): a batch block is one thread-block cluster of up
  to 16 CTAs that copy h(t) (forward) or the gate gradients (backward) into each
  other's shared memory (st.async), each waiting on its own mbarrier for its peers'
  bytes: no barrier a step. Clusters are independent, so any number may run. The
  backward's plan needs hidden x itemsize a multiple of 4 bytes (its words must not
  straddle two gates' columns).
- "grid" (sm_80+): a cooperative launch of unit_slices x batch_blocks <= SMs blocks;
  a batch block meets at a bounded release/acquire counter barrier in global memory.
  Each block stages its batch block's exchanged operand from L2 every step. On sm_90 a
  grid plan may also be launched in clusters of `multicast` CTAs (consecutive slices
  of one batch block): each single-chunk staged operand is then read from L2 once per
  cluster, each CTA copying 1/multicast of its rows into every CTA of the cluster by
  TMA multicast. The barrier and the exchange stay the grid's. A grid backward on sm_90
  may instead be launched in clusters of `reduce_ctas` CTAs that split the chain's
  reduction (dh = dgates . W_hh sums over the 4H gate columns): each CTA holds W_hh^T
  for all the cluster's units but only its 1/reduce_ctas of the gate columns, stages
  only those columns of the gate gradients, and after a cluster barrier sums its own
  units' partial dh from every CTA's shared memory (DSMEM). A block then stages a
  fraction of the 4H-wide rows, which at large batches is what bounds the step.

Register plans (`reg_k_tiles`; 16-bit weights, at most 8 rows a block): a block keeps
the first columns of its recurrent weights as mma fragments in registers and only the
rest in shared memory, so a step reads fewer bytes from shared memory and a block holds
more than shared memory alone could. The forward's are cluster plans (a cluster then
holds layers up to H = 768), the backward's grid plans without a projection and
cluster plans.

make_plan lists the splits that fit (cluster plans, then every number of batch blocks as
a grid, plain and then with its multicast variants; each with its register variant
where it has one) and takes the one the latency model (model.py) rates fastest. A
layer no form fits runs on the reference backend (cuda/__init__.py) and says so once.
The layout sizes below mirror csrc/lstm_common.cuh byte for byte;
tests/test_cuda_sources.py compares the two.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Union

# Constants of csrc/lstm_common.cuh.
THREADS = 256
WARPS = THREADS // 32
ROW_TILE = 8
WEIGHT_TILE = 16
MAX_WARP_TILES = 8
MAX_COPIES = 4
EXCHANGE_ALIGN = 16
RING_BYTES = 64 * 1024
ALIGN = 128
MAX_CLUSTER = 16  # kMaxCluster: CTAs per cluster with the non-portable size (H100/H200)
REG_TILES = 3      # kRegTiles: forward register plans' M tiles of W_hh a warp holds in registers
REG_K_TILES = 13   # kRegKTiles: ... and k-tiles of each
REDUCE_ALIGN = 16  # kReduceAlign: a reduce-split CTA's gate columns, a multiple of this
CHAIN_REG_TILES = 1     # kChainRegTiles: backward register plans' M tiles of W_hh^T a warp holds
CHAIN_REG_K_TILES = 32  # kChainRegKTiles: ... and k-tiles of it
STAGE_CHUNKS = 4  # kStageChunks: register grid backwards by multicast: chunks of the staged operand
# CTAs per cluster a multicast grid plan tries, smallest first: the portable cluster sizes
# (at most 8 CTAs, which every sm_90 part places without the non-portable-size opt-in)
# that are powers of two, so that they divide the usual unit_slices (64, 32, ...) and
# split a staged operand's rows (nb, a multiple of 8) evenly between the cluster's CTAs.
# The grid's blocks all run at once (cooperative launch), so a larger cluster, harder to
# place in a GPC, is only taken where the GPU holds enough of them (make_plan).
MULTICAST_SIZES = (2, 4, 8)
# CTAs per cluster a reduce-split grid backward tries: the portable powers of two, as for
# multicast (they divide the usual unit_slices and fit every sm_90 part's GPC).
REDUCE_SIZES = (2, 4, 8)

# H100 SXM: what the plan is tested against on CPU (tests/test_cuda_backend.py).
H100_SMS = 132
H100_SMEM_PER_BLOCK = 227 * 1024  # opt-in maximum (228 KB per SM, 1 KB reserved)


@dataclass(frozen=True)
class Plan:
    kind: str           # "cluster" or "grid"
    units: int          # hidden units per block
    proj_cols: int      # forward: W_hr rows per block (0 without); backward: W_hh columns
    unit_slices: int    # blocks per batch block (the cluster size of cluster plans)
    block_rows: int     # batch rows per batch block (a multiple of 8)
    batch_blocks: int
    smem_bytes: int     # dynamic shared memory per block
    itemsize: int       # 2: fp16/bf16 mma.m16n8k16; 4: fp32 as 3xTF32 mma.m16n8k8
    multicast: int = 0  # grid plans on sm_90: CTAs per cluster (consecutive slices of one
                        # batch block) sharing each single-chunk staged operand by TMA
                        # multicast, one L2 read per cluster; 0: none, cp.async per block
    reg_k_tiles: int = 0  # register plans (16-bit, <= 8 rows a block; forward: cluster;
                          # backward: cluster, or grid without a projection): k-tiles
                          # per k-slice of the recurrent weights held in registers
                          # (reg_geometry); 0: the block's whole slice in shared memory
    reduce_ctas: int = 0  # grid backward on sm_90 without a projection: CTAs per cluster
                          # (consecutive slices of one batch block) splitting the chain's
                          # reduction over the gate columns (reduce_cols); 0: none
    pass_rows: int = 0    # grid forward without a projection, multicast or registers: rows
                          # a pass where a batch block's rows take several (forward_pass_rows);
                          # 0: one pass

    @property
    def passes(self) -> int:
        """Passes of the forward's product a step (1 without row passes)."""
        return _cdiv(self.block_rows, self.pass_rows) if self.pass_rows else 1

    @property
    def blocks(self) -> int:
        return self.unit_slices * self.batch_blocks

    @property
    def cluster(self) -> int:
        """CTAs per cluster of a cluster plan (DSMEM exchange); 0 for grid plans, also
        those launched in clusters for multicast or a reduce split."""
        return self.unit_slices if self.kind == "cluster" else 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def _align(n: int) -> int:
    return _round_up(n, ALIGN)


def k_tile(itemsize: int) -> int:
    """lstm_common.cuh k_tile: the mma's K, m16n8k16 (16-bit) or m16n8k8 (tf32)."""
    return 16 if itemsize == 2 else 8


def exchange_ld(cols: int) -> int:
    """Elements per row of an exchange buffer (lstm_common.cuh exchange_ld)."""
    return _round_up(cols, EXCHANGE_ALIGN)


@dataclass(frozen=True)
class Product:
    """lstm_common.cuh Product: out[M][Nb] = A[M][K] . B[Nb][K]^T per step, the weights
    as the mma's M side, or (swapped) the batch."""
    m: int
    k: int
    a_ld: int
    nb: int
    chunk: int
    chunks: int
    stages: int
    b_ld: int
    swapped: bool
    m_tiles: int
    n_tiles: int
    groups: int   # N-tile groups per M tile (a warp item: one M tile, one group)
    group: int    # N tiles per group
    items: int    # m_tiles * groups * ksplit
    ksplit: int
    slots: int    # accumulator tiles a warp needs for its items
    copies: int   # accumulator sets per slot, taking the warp's k-tiles in turn

    @staticmethod
    def make(m_real: int, k_real: int, rows: int, itemsize: int, b_resident: bool) -> "Product":
        kt = k_tile(itemsize)
        pad = 16 // itemsize
        weights_m = _cdiv(m_real, WEIGHT_TILE) * _cdiv(rows, ROW_TILE)
        batch_m = _cdiv(rows, WEIGHT_TILE) * _cdiv(m_real, ROW_TILE)
        swapped = m_real > 0 and batch_m < weights_m
        m = _round_up(m_real, ROW_TILE if swapped else WEIGHT_TILE)
        nb = _round_up(rows, WEIGHT_TILE if swapped else ROW_TILE)
        m_tiles, n_tiles = (nb // WEIGHT_TILE, m // ROW_TILE) if swapped else (m // WEIGHT_TILE,
                                                                               nb // ROW_TILE)
        k = _round_up(k_real, kt)
        if b_resident or nb * (k + pad) * itemsize <= RING_BYTES:
            chunk = k
        else:
            fit = RING_BYTES // (2 * nb * itemsize) - pad
            chunk = max(fit // (4 * kt) * (4 * kt), kt)
        chunks = _cdiv(k, chunk) if k else 0
        groups = 1  # the fewest whose accumulators fit a warp: each re-reads the M side
        while (groups < n_tiles
               and _cdiv(m_tiles * groups, WARPS) * _cdiv(n_tiles, groups) > MAX_WARP_TILES):
            groups += 1
        work = m_tiles * groups
        # clamp_int(v, 1, hi) of lstm_common.cuh: hi wins when below 1 (k = 0: no product)
        ksplit = 1 if work >= WARPS else min(max(WARPS // max(work, 1), 1), chunk // kt)
        group = _cdiv(n_tiles, groups)
        slots = _cdiv(work * ksplit, WARPS) * group
        copies = max(1, min(MAX_WARP_TILES // max(slots, 1), MAX_COPIES))
        return Product(m, k, k + pad, nb, chunk, chunks, 1 if chunks <= 1 else 2, chunk + pad,
                       swapped, m_tiles, n_tiles, groups, group, work * ksplit, ksplit, slots,
                       copies)

    @property
    def tiles(self) -> int:
        """mma output tiles."""
        return self.m_tiles * self.n_tiles

    def fits(self) -> bool:
        return self.slots <= MAX_WARP_TILES

    def a_bytes(self, itemsize: int) -> int:
        return _align(self.m * self.a_ld * itemsize)

    def ring_bytes(self, itemsize: int) -> int:
        return _align(self.stages * self.nb * self.b_ld * itemsize)

    def exchange_bytes(self, itemsize: int) -> int:
        """Cluster plans: the exchanged operand held whole, [2][nb][b_ld] by step parity."""
        return _align(2 * self.nb * self.b_ld * itemsize)

    def part_sets(self, reg_slices: int = 0) -> int:
        """lstm_common.cuh part_sets: partial sums a step leaves, one per k-slice (a
        register plan's reg_slices, else ksplit)."""
        return reg_slices or self.ksplit

    def part_bytes(self, reg_slices: int = 0) -> int:
        """Partial sums [part_sets][m][nb]."""
        return _align(self.part_sets(reg_slices) * self.m * self.nb * 4)


def reg_slices(m_tiles: int, tiles: int) -> int:
    """lstm_common.cuh reg_slices: the most k-slices (warp groups) of a register plan
    whose warps, `tiles` M tiles each, still cover every M tile; 0 if none can."""
    if m_tiles > tiles * WARPS:
        return 0
    slices = WARPS
    while slices > 1 and m_tiles > tiles * (WARPS // slices):
        slices //= 2
    return slices


def reg_tiles(direction: str) -> int:
    """M tiles a warp of a register plan holds: forward, of W_hh rows; backward, of
    W_hh^T rows (the chain's)."""
    return REG_TILES if direction == "forward" else CHAIN_REG_TILES


def max_reg_k_tiles(direction: str) -> int:
    """lstm_common.cuh: the most k-tiles a slice a register kernel holds of each tile
    (kRegKTiles forward, kChainRegKTiles backward)."""
    return REG_K_TILES if direction == "forward" else CHAIN_REG_K_TILES


def reg_k_slices(direction: str, units: int) -> int:
    """k-slices of a register plan's block of `units` units: of the forward's 4 x units
    W_hh rows, of the backward's units W_hh^T rows."""
    rows = 4 * units if direction == "forward" else units
    return reg_slices(_cdiv(rows, WEIGHT_TILE), reg_tiles(direction))


def reg_rest_tiles(rest: Product, slices: int, g: int, itemsize: int) -> tuple[int, int]:
    """lstm_common.cuh reg_rest_tiles: [first, end) of the shared-memory part's k-tiles
    that a register plan's k-slice g multiplies."""
    tiles = rest.k // k_tile(itemsize)
    return g * tiles // slices, (g + 1) * tiles // slices


def stage_chunk_rounds(reg_k_tiles: int) -> int:
    """lstm_common.cuh stage_chunk_rounds: register rounds a multicast chunk holds."""
    return _cdiv(reg_k_tiles, STAGE_CHUNKS - 1)


def stage_chunks(reg_k_tiles: int) -> int:
    """lstm_common.cuh stage_chunks: chunks of a register grid backward's multicast
    operand, the last the shared-memory part's columns."""
    return _cdiv(reg_k_tiles, stage_chunk_rounds(reg_k_tiles)) + 1


def stage_chunk_cols(slices: int, reg_k_tiles: int, rest_k: int, itemsize: int,
                     c: int) -> tuple[int, int]:
    """lstm_common.cuh stage_chunk_cols: columns [first, end) of chunk c."""
    round_cols, q = slices * k_tile(itemsize), stage_chunk_rounds(reg_k_tiles)
    reg_cols = reg_k_tiles * round_cols
    if c + 1 == stage_chunks(reg_k_tiles):
        return reg_cols, reg_cols + rest_k
    return c * q * round_cols, min((c + 1) * q, reg_k_tiles) * round_cols


def reg_geometry(direction: str, units: int, itemsize: int, reg_k_tiles: int) -> tuple[int, int]:
    """(k-slices, columns) of its recurrent weights a register plan's block holds in
    registers."""
    if not reg_k_tiles:
        return 0, 0
    slices = reg_k_slices(direction, units)
    return slices, slices * reg_k_tiles * k_tile(itemsize)


def forward_products(hidden: int, out_size: int, has_proj: bool, itemsize: int, units: int,
                     proj_cols: int, block_rows: int, cluster: bool,
                     reg_k_tiles: int = 0, pass_rows: int = 0) -> tuple[Product, Product]:
    """The forward's products (lstm_common.cuh forward_layout). Register plans: `rec` is
    the shared-memory part, W_hh columns from reg_geometry's onwards, whose B rows are
    h's whole rows (b_ld). Row passes: `rec` is one pass's, of `pass_rows` rows."""
    _, reg_cols = reg_geometry("forward", units, itemsize, reg_k_tiles if cluster else 0)
    rec = Product.make(4 * units, max(out_size - reg_cols, 0), pass_rows or block_rows, itemsize,
                       cluster)
    if reg_cols:
        rec = replace(rec, b_ld=_round_up(out_size, k_tile(itemsize)) + 16 // itemsize)
    proj = Product.make(proj_cols if has_proj else 0, hidden if has_proj else 0, block_rows,
                        itemsize, False)
    return rec, proj


def reg_split_ok(direction: str, product: Product, units: int, itemsize: int, cluster: bool,
                 has_proj: bool, reg_k_tiles: int, reduce_ctas: int = 0) -> bool:
    """lstm_common.cuh reg_split_ok of the direction's layout: whether its kernel handles
    this register split (`product`: the recurrent product's shared-memory part; no
    reduce split)."""
    if not reg_k_tiles:
        return True
    slices, _ = reg_geometry(direction, units, itemsize, reg_k_tiles)
    if direction == "forward":
        form = cluster
    else:  # the gate gradients whole in one chunk (staged, or in the cluster's exchange)
        form = not has_proj and not reduce_ctas and product.chunks == 1
    return (form and itemsize == 2 and not product.swapped and product.n_tiles == 1
            and slices > 0 and reg_k_tiles <= max_reg_k_tiles(direction)
            and product.k >= reg_k_tiles * k_tile(itemsize))


def forward_smem_bytes(hidden: int, out_size: int, has_proj: bool, itemsize: int, units: int,
                       proj_cols: int, block_rows: int, cluster: bool,
                       multicast: bool = False, reg_k_tiles: int = 0, pass_rows: int = 0) -> int:
    """csrc/lstm_common.cuh forward_layout(...).bytes; `multicast` or `cluster`: one ALIGN
    slot at the end for the mbarrier(s) the multicast copies or the peers' exchange
    stores complete on (bar_off); row passes: the product's buffers for one pass, the
    cell state for every row."""
    rec, proj = forward_products(hidden, out_size, has_proj, itemsize, units, proj_cols,
                                 block_rows, cluster, reg_k_tiles, pass_rows)
    slices, _ = reg_geometry("forward", units, itemsize, reg_k_tiles if cluster else 0)
    ring = rec.exchange_bytes(itemsize) if cluster else rec.ring_bytes(itemsize)
    return (rec.a_bytes(itemsize) + (proj.a_bytes(itemsize) if has_proj else 0)
            + max(ring, proj.ring_bytes(itemsize) if has_proj else 0)
            + max(rec.part_bytes(slices), proj.part_bytes() if has_proj else 0)
            + _align(block_rows * units * 4)
            + (ALIGN if multicast or cluster else 0))


def passes_ok(pass_rows: int, block_rows: int, has_proj: bool, cluster: bool, multicast: int,
              reg_k_tiles: int) -> bool:
    """lstm_common.cuh passes_ok: whether the forward kernels take these row passes (none:
    always): a grid plan without a projection, multicast or registers, passes of a
    multiple of 8 rows below the batch block's."""
    if not pass_rows:
        return True
    return (not cluster and not multicast and not reg_k_tiles and not has_proj
            and pass_rows % ROW_TILE == 0 and 0 < pass_rows < block_rows)


def reduce_cols(hidden: int, reduce_ctas: int) -> int:
    """lstm_common.cuh reduce_cols: the gate columns of each CTA of a reduce split (the
    last CTA's may run past 4H: zero weights, and columns it does not stage)."""
    return _round_up(_cdiv(4 * hidden, reduce_ctas), REDUCE_ALIGN)


def reduce_ok(hidden: int, slices: int, has_proj: bool, cluster: bool, reg_k_tiles: int,
              multicast: int, reduce_ctas: int) -> bool:
    """lstm_common.cuh reduce_ok: whether the backward kernels take this reduce split
    (none: always): a grid plan without a projection, registers or multicast, in
    clusters that divide the slices, each CTA's gate columns within the layer's."""
    if not reduce_ctas:
        return True
    return (not cluster and not has_proj and not reg_k_tiles and not multicast
            and 2 <= reduce_ctas <= 8 and slices % reduce_ctas == 0
            and (reduce_ctas - 1) * reduce_cols(hidden, reduce_ctas) < 4 * hidden)


def backward_products(hidden: int, out_size: int, has_proj: bool, itemsize: int, units: int,
                      proj_cols: int, block_rows: int, cluster: bool,
                      reg_k_tiles: int = 0, reduce_ctas: int = 0) -> tuple[Product, Product]:
    """The backward's products (lstm_common.cuh backward_layout). Register plans: `chain`
    is the shared-memory part, gate-gradient columns from reg_geometry's onwards, whose B
    rows are the gate gradients' whole rows (b_ld). Reduce splits: `chain` is one CTA's,
    W_hh^T rows of the cluster's units over its reduce_cols gate columns (no registers)."""
    reg_k_tiles = 0 if reduce_ctas else reg_k_tiles
    _, reg_cols = reg_geometry("backward", proj_cols if has_proj else units, itemsize,
                               reg_k_tiles)
    if reduce_ctas:
        chain = Product.make(reduce_ctas * units, reduce_cols(hidden, reduce_ctas), block_rows,
                             itemsize, False)
    else:
        chain = Product.make(proj_cols if has_proj else units, max(4 * hidden - reg_cols, 0),
                             block_rows, itemsize, cluster)
    if reg_cols:
        chain = replace(chain, b_ld=_round_up(4 * hidden, k_tile(itemsize)) + 16 // itemsize)
    proj = Product.make(units if has_proj else 0, out_size if has_proj else 0, block_rows,
                        itemsize, False)
    return chain, proj


def backward_smem_bytes(hidden: int, out_size: int, has_proj: bool, itemsize: int, units: int,
                        proj_cols: int, block_rows: int, cluster: bool,
                        multicast: bool = False, reg_k_tiles: int = 0,
                        reduce_ctas: int = 0) -> int:
    """csrc/lstm_common.cuh backward_layout(...).bytes; `multicast` and `cluster` as in
    forward_smem_bytes; a reduce split adds the summed dh [units][nb] (fp32)."""
    reg_k_tiles = 0 if reduce_ctas else reg_k_tiles
    chain, proj = backward_products(hidden, out_size, has_proj, itemsize, units, proj_cols,
                                    block_rows, cluster, reg_k_tiles, reduce_ctas)
    slices, _ = reg_geometry("backward", proj_cols if has_proj else units, itemsize,
                             reg_k_tiles)
    ring = chain.exchange_bytes(itemsize) if cluster else chain.ring_bytes(itemsize)
    return (chain.a_bytes(itemsize) + (proj.a_bytes(itemsize) if has_proj else 0)
            + max(ring, proj.ring_bytes(itemsize) if has_proj else 0)
            + max(chain.part_bytes(slices), proj.part_bytes() if has_proj else 0)
            + _align(block_rows * units * 4)
            + (_align(units * chain.nb * 4) if reduce_ctas else 0)
            + (ALIGN if multicast or cluster else 0))


def _fits(products: tuple[Product, ...]) -> bool:
    return all(p.fits() for p in products if p.m)


def _candidate(kind: str, direction: str, batch: int, hidden: int, out_size: int, has_proj: bool,
               itemsize: int, slices: int, batch_blocks: int, smem_per_block: int,
               multicast: int = 0, registers: bool = False, reduce_ctas: int = 0,
               passes: bool = False):
    """The plan of this split, or None where it does not fit. `multicast` (grid plans):
    its CTAs per cluster; None too where it does not divide the split's unit_slices, or
    where no staged product is a single chunk (chunked products keep cp.async, so
    multicast would change nothing). `registers`: the register plan of the split, with
    as many k-tiles a slice as the kernel holds and as leave the shared-memory part at
    least one k-slice wide; None where the split has none (reg_split_ok).
    `reduce_ctas` (grid backward): the reduce split in clusters of that many CTAs; None
    where the kernels do not take it (reduce_ok). `passes` (grid forward): the split's
    rows in the fewest passes that fit, where one pass does not (passes_ok); else None."""
    units = _round_up(_cdiv(hidden, slices), 4)
    slices = _cdiv(hidden, units)
    block_rows = _round_up(_cdiv(batch, batch_blocks), ROW_TILE)
    batch_blocks = _cdiv(batch, block_rows)
    cols = _cdiv(out_size, slices) if has_proj else (units if direction == "backward" else 0)
    cluster = kind == "cluster"
    if multicast and (cluster or slices % multicast):
        return None
    if reduce_ctas and (direction != "backward" or not reduce_ok(
            hidden, slices, has_proj, cluster, int(registers), multicast, reduce_ctas)):
        return None
    if cluster and direction == "backward" and hidden * itemsize % 4:
        return None  # the exchange's st.async words (>= 4 bytes) would straddle two gates
    reg_k_tiles = 0
    if registers:  # each k-slice no wider than what stays in shared memory
        k_cols = out_size if direction == "forward" else 4 * hidden
        reg_k_tiles = min(max_reg_k_tiles(direction), _cdiv(k_cols, k_tile(itemsize))
                          // (reg_k_slices(direction, units) + 1))
        if not reg_k_tiles:
            return None
    if passes:
        if direction != "forward" or _candidate(kind, direction, batch, hidden, out_size,
                                                has_proj, itemsize, slices, batch_blocks,
                                                smem_per_block, multicast, registers):
            return None
        for n in range(2, block_rows // ROW_TILE + 1):
            pass_rows = _round_up(_cdiv(block_rows, n), ROW_TILE)
            if not passes_ok(pass_rows, block_rows, has_proj, cluster, multicast, reg_k_tiles):
                return None
            products = forward_products(hidden, out_size, has_proj, itemsize, units, cols,
                                        block_rows, cluster, reg_k_tiles, pass_rows)
            smem = forward_smem_bytes(hidden, out_size, has_proj, itemsize, units, cols,
                                      block_rows, cluster, False, reg_k_tiles, pass_rows)
            if smem <= smem_per_block and _fits(products):
                return Plan(kind, units, cols, slices, block_rows, batch_blocks, smem, itemsize,
                            pass_rows=pass_rows)
        return None
    if direction == "forward":
        products = forward_products(hidden, out_size, has_proj, itemsize, units, cols,
                                    block_rows, cluster, reg_k_tiles)
        smem = forward_smem_bytes(hidden, out_size, has_proj, itemsize, units, cols, block_rows,
                                  cluster, multicast > 0, reg_k_tiles)
    else:
        products = backward_products(hidden, out_size, has_proj, itemsize, units, cols,
                                     block_rows, cluster, reg_k_tiles, reduce_ctas)
        smem = backward_smem_bytes(hidden, out_size, has_proj, itemsize, units, cols, block_rows,
                                   cluster, multicast > 0, reg_k_tiles, reduce_ctas)
    if not reg_split_ok(direction, products[0], units, itemsize, cluster, has_proj, reg_k_tiles):
        return None
    if smem > smem_per_block or not _fits(products):
        return None
    if multicast and not any(p.m and p.chunks == 1 for p in products):
        return None
    return Plan(kind, units, cols, slices, block_rows, batch_blocks, smem, itemsize, multicast,
                reg_k_tiles, reduce_ctas)


def _resident(resident_clusters: tuple[int, ...], size: int, sms: int) -> int:
    """Clusters of `size` CTAs the GPU holds at once (device_limits), else sms // size."""
    if not resident_clusters:
        return sms // size
    return resident_clusters[size] if size < len(resident_clusters) else 0


@functools.lru_cache(maxsize=1024)
def make_plan(direction: str, batch: int, hidden: int, out_size: int, has_proj: bool,
              itemsize: int, sms: int, smem_per_block: int, major: int,
              plain: bool = False, resident_clusters: tuple[int, ...] = ()) -> Union[Plan, str]:
    """The plan of the "forward" or "backward" kernel for this layer on a GPU with `sms`
    SMs, `smem_per_block` opt-in shared memory and compute capability `major`.x, or why
    none fits.

    Candidates, in this order: cluster plans (sm_90, no projection), then for each
    number of batch blocks its grid split, plain and then as multicast grid plans
    (sm_90, m in MULTICAST_SIZES, smallest first); with 16-bit weights each followed by
    its register plan where the kernels have one (the forward's clusters, the
    backward's clusters and grid plans without a projection); then (sm_90, a backward
    without a projection) its reduce splits (REDUCE_SIZES). A multicast variant is kept
    only where m divides unit_slices (a cluster is consecutive slices of one batch
    block), a staged product is a single chunk, the mbarrier slot still fits, and the
    GPU holds every block in a cluster at once (the launch is cooperative too); a
    reduce split likewise where the kernels take it (reduce_ok). Of the candidates,
    the one whose step the latency model (model.py) rates fastest; on a tie the first,
    so a cluster of CTAs is only taken where the model says it pays, and no larger than
    it pays (a plan bound by one SM's L2 rate gains nothing from more multicast).

    plain=True: plain grid plans only (no clusters, multicast, registers or reduce
    splits), what a
    refused launch of any other plan falls back to. resident_clusters[c]: how many
    clusters of c CTAs the GPU holds at once (binding.cpp device_limits); a cluster plan
    runs its batch blocks side by side only up to that many (more would run in waves,
    each as long as the whole layer), a multicast or reduce-split grid plan needs blocks
    <= that many x c. Without it, sms // c."""
    candidates = []
    variants = (False, True) if itemsize == 2 and not plain else (False,)  # registers
    if not plain and major >= 9 and not has_proj:
        # One cluster per batch block, as many CTAs as split the layer into >= 4 units
        # each (up to 16), while the GPU holds all the clusters at once.
        slices = min(MAX_CLUSTER, _cdiv(hidden, 4))
        for batch_blocks in range(1, _cdiv(batch, ROW_TILE) + 1):
            plans = [_candidate("cluster", direction, batch, hidden, out_size, has_proj,
                                itemsize, slices, batch_blocks, smem_per_block,
                                registers=registers) for registers in variants]
            plans = [p for p in plans if p is not None and p.unit_slices >= 2
                     and p not in candidates]
            if not plans:
                continue
            if plans[0].batch_blocks > _resident(resident_clusters, plans[0].unit_slices, sms):
                break  # more batch blocks only need more clusters
            candidates.extend(plans)
    sizes = MULTICAST_SIZES if not plain and major >= 9 else ()
    reduce_sizes = REDUCE_SIZES if direction == "backward" and not has_proj else ()
    for batch_blocks in range(1, _cdiv(batch, ROW_TILE) + 1):
        slices = min(sms // batch_blocks, _cdiv(hidden, 4))
        if slices < 1:
            break
        splits = ([(multicast, registers, 0, False) for multicast in (0, *sizes)
                   for registers in variants]
                  + [(0, False, size, False) for size in (reduce_sizes if sizes else ())]
                  + [(0, False, 0, True)])  # row passes, where one pass does not fit
        for multicast, registers, reduce_ctas, passes in splits:
            plan = _candidate("grid", direction, batch, hidden, out_size, has_proj, itemsize,
                              slices, batch_blocks, smem_per_block, multicast, registers,
                              reduce_ctas, passes)
            if plan is None or plan in candidates:
                continue
            size = multicast or reduce_ctas
            if size and plan.blocks > _resident(resident_clusters, size, sms) * size:
                continue  # a cooperative launch needs every block (here: cluster) resident
            candidates.append(plan)
    if not candidates:
        return (f"the {direction} kernel cannot hold this layer on chip (B={batch}, H={hidden}, "
                f"P={out_size}, {itemsize}-byte weights): on no split over {sms} SMs do a "
                f"block's W_hh slice and staging fit {smem_per_block} bytes of shared memory "
                f"with at most {WARPS * MAX_WARP_TILES} mma tiles per block")
    from . import model
    return min(candidates, key=lambda plan: model.step_time(plan, direction, batch, hidden,
                                                            out_size))
