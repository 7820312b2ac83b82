"""How a layer's recurrence is spread over the GPU: tile sizes, programs and whether
the programs of a batch block must meet at a barrier every step.

The work of a step is a grid of tiles: BLOCK_B batch rows x BLOCK_H hidden units (the
four gate rows of each unit). Rows of different batch blocks never interact, so each
batch block runs its own recurrence. Within a batch block the units need all of
h(t-1), so:

- batch-split (no barrier): one program per batch block loops over all unit tiles of
  a step. Any number of programs is safe; the fastest when the batch alone fills the
  GPU, or the layer is small.
- persistent with barrier: several programs per batch block share its unit tiles and
  meet at an atomic-counter barrier after each phase of each step. All programs must be
  resident at once, so the grid never exceeds the SM count and the launch is
  cooperative (the driver refuses it rather than start programs that cannot all run;
  the launcher then takes the barrier-free plan). For small batches, where the
  barrier-free split would leave most SMs idle. Where each program owns one tile
  (one_tile), its state stays in registers, it loads the next step's inputs before the
  barrier wait, and it may hold its W_hh slice on chip for the whole sequence.
- persistent with tagged words (one tile a program, W_hh held, no projection): as the
  barrier form, but what a step exchanges (the forward's h(t), the backward's gate
  gradients) goes between the programs as 8-byte words that carry their step in the
  high half (two 16-bit values, or one fp32, in the low half), written by
  single-copy-atomic stores. A program waits for exactly the words it reads, until each
  shows its step: the barrier's arrival count and its polls leave the step, for twice
  the bytes read (the model weighs the two: model.py).

gpu_plan takes the candidate the latency model (model.py) rates fastest. There are no
per-step launches: every form loops over T inside one launch, so any T works
(including T > 65,535). Under TRITON_INTERPRET programs run one after another, so only
forms whose programs never wait for another can run there: the barrier-free one, and
the others with one program a batch block.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton

from . import interpreting

_MIN_K = 16               # tl.dot's reduction is at least 16 deep (M and N may be smaller: padded)
# The W_hh slice a program may hold for the whole sequence, by (bytes an element,
# direction); Triton keeps it in shared memory, in the mma's operand layout. 16-bit: 96 KB,
# which with the operands staged beside it fits an A100's 164 KB. fp32 (tf32x3): Triton
# splits the held chunks into tf32 parts once, before the time loop (two buffers a
# chunk), but each product still has both parts of both operands in registers, so less:
# the forward 24 KB in chunks of 32 (P <= 192 at 8-unit tiles; 28 KB, P = 200, spilled
# 8 B on sm_90, 64 KB 8-16 B; in chunks of 64, 32 KB spilled 56 B). The backward streams:
# held with the batch as N (W_hh the mma's A operand), H = 64-256 spilled 164-816 B in
# chunks of 16-256; with the batch as M (W_hh its B operand) in chunks of 32 it spilled
# only at H = 64 (8 B, sm_80) and 64 KB, but the latency model rates that form 1-5%
# slower than streaming (model.py), so it is not a candidate. fp64 streams.
_HELD_BYTES = {(2, "forward"): 96 << 10, (2, "backward"): 96 << 10, (4, "forward"): 24 << 10}
# Reduction chunk of held weights: h(t-1) or dgates is loaded chunk by chunk.
_HELD_CHUNK = {2: 256, 4: 32}
# Largest tile (rows x units), without and with a projection, whose products' operands
# are live beside the cell's: with one, 64 x 32 spilled 12-1,376 B. Largest tile whose
# next step's inputs a program keeps in registers through a step (Plan.one_tile): with
# a projection, 64 x 32 spilled 192-2,376 B, 64 x 16 72 B (sm_90 backward).
_TILE = {False: 64 * 32, True: 64 * 16}
_PREFETCH_TILE = {False: 64 * 16, True: 32 * 16}
# Values a tagged word carries, by bytes an element: the low 32 bits hold two 16-bit
# values or one fp32 (the high 32 the step). fp64 has no room for a tag.
TAGGED_WORD_UNITS = {2: 2, 4: 1}
# The most bytes of words a tagged program loads a step (all live at the first wait,
# 8 warps): the backward at 96 KB (B = 8, H = 768) and 128 KB (B = 16, H = 512) spilled
# 8-16 B on sm_90; 64 KB and less did not.
_TAGGED_WORD_BYTES = 64 << 10


@dataclass(frozen=True)
class Plan:
    block_b: int                    # batch rows per tile
    block_h: int                    # hidden units (forward) / output columns (backward) per tile
    block_k: int                    # reduction chunk of the products
    batch_blocks: int               # grid dimension 0
    programs_per_batch_block: int   # grid dimension 1
    one_tile: bool                  # each program owns at most one tile a phase: it loads the
                                    # next step's inputs before the barrier wait
    held_chunks: int                # W_hh held on chip for the whole sequence, as this many
                                    # block_k chunks of the reduction (only with one_tile);
                                    # 0: streamed from L2 every step
    batch_as_n: bool                # products taken transposed, the batch as the mma's N (<= 8 rows)
    use_barrier: bool               # programs of a batch block wait for each other every
                                    # step (co-resident: launched cooperatively; bounded
                                    # waits): at a counter after every phase, or (tagged)
                                    # for the words they read
    num_warps: int
    num_stages: int                 # software-pipelining depth of the reduction loops
    tagged: bool = False            # what a step exchanges (forward: h(t); backward: the
                                    # gate gradients) goes between programs as step-tagged
                                    # words (TAGGED_WORD_UNITS values a word), not through
                                    # memory and a barrier

    @property
    def weights_resident(self) -> bool:
        return self.held_chunks > 0

    @property
    def counts_arrivals(self) -> bool:
        """Programs meet at the arrival-counter barrier after every phase (a tagged
        plan's programs wait for words instead)."""
        return self.use_barrier and not self.tagged

    @property
    def grid(self) -> tuple[int, int]:
        return (self.batch_blocks, self.programs_per_batch_block)


def _pow2(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(n, 1))))


def make_plan(batch: int, hidden: int, out_size: int, seq_len: int, device: torch.device,
              dtype: torch.dtype, direction: str = "forward") -> Plan:
    """batch B, hidden H, out_size P (= proj_size or H), seq_len T (processed steps)."""
    if interpreting() or device.type != "cuda":
        # One program per batch block, big tiles: the interpreter pays per tile, not per FLOP.
        block_b = _pow2(batch, 16, 64)
        block_h = _pow2(max(hidden, out_size), 16, 64)
        return Plan(block_b, block_h, block_h, triton.cdiv(batch, block_b), 1,
                    one_tile=max(hidden, out_size) <= block_h, held_chunks=0, batch_as_n=False,
                    use_barrier=False, num_warps=4, num_stages=1)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return gpu_plan(batch, hidden, out_size, seq_len, dtype.itemsize, sms, direction)


def gpu_plan(batch: int, hidden: int, out_size: int, seq_len: int, itemsize: int,
             sms: int, direction: str = "forward") -> Plan:
    """The plan for a GPU with `sms` multiprocessors (pure: testable without one): of
    candidate_plans, the one whose step the latency model (model.py) rates fastest."""
    from . import model  # model.py imports Plan from here

    dtype = {2: torch.float16, 4: torch.float32, 8: torch.float64}[itemsize]
    step_time = model.forward_time if direction == "forward" else model.backward_time
    return min(candidate_plans(batch, hidden, out_size, seq_len, itemsize, sms, direction),
               key=lambda plan: step_time(plan, batch, hidden, out_size, out_size, seq_len,
                                          dtype).step_s)


def candidate_plans(batch: int, hidden: int, out_size: int, seq_len: int, itemsize: int,
                    sms: int, direction: str = "forward") -> list[Plan]:
    """Every plan worth modelling for this layer, the barrier-free batch split first.

    Sized so that every kernel fits in shared memory and registers on sm_80 and sm_90
    without spills (tests/test_triton_aot.py compiles them all to check). Measured: a
    reduction chunk of 64 spills on sm_80 at 32 and 64 rows, so the chunk is 32, or 16
    for fp32/fp64 operands, which take twice the registers (fp32 B=2 H=1000 spilled 56 B
    on sm_80 at 32); tiles of 32 or more rows get 8 warps.

    A batch of <= 8 rows is the products' N (batch_as_n): an mma is m16n8, so as M it
    would be padded to 16. Programs of a batch block share its tiles of 8, 16 or 32
    units (narrow tiles: more programs share the layer; wide ones: each re-reads h(t-1)
    or the step's gate gradients less often). Where each program owns one tile, it may
    hold its W_hh slice for the whole sequence where the slice fits _HELD_BYTES: the
    forward the tile's 4 x BLOCK_H rows, the backward its BLOCK_H columns of all 4H
    rows, in chunks of up to _HELD_CHUNK; those loops run unrolled, unpipelined
    (num_stages=1: stages would only hold copies that overlap nothing)."""
    batch_as_n = batch <= 8
    block_b = 8 if batch_as_n else _pow2(batch, 16, 64)
    batch_blocks = triton.cdiv(batch, block_b)
    num_warps = 4 if block_b <= 16 else 8
    block_k = 32 if itemsize <= 2 else 16
    projection = out_size != hidden
    split_units = 32 if block_b * 32 <= _TILE[projection] else 16
    plans = [Plan(block_b, split_units, block_k, batch_blocks, 1, one_tile=False,
                  held_chunks=0, batch_as_n=batch_as_n, use_barrier=False,
                  num_warps=num_warps, num_stages=2)]
    for block_h in (8, 16, 32):
        if block_b * block_h > _TILE[projection]:
            continue
        tiles = triton.cdiv(max(hidden, out_size), block_h)
        programs = min(sms // batch_blocks, tiles)
        # The barrier counts every arrival (at most 2 phases a step) in an int32, below
        # the 2**30 that marks an abandoned barrier (cell.end_phase).
        if programs < 2 or 2 * seq_len * programs >= 2**30:
            continue
        one_tile = programs == tiles and block_b * block_h <= _PREFETCH_TILE[projection]
        streamed = Plan(block_b, block_h, block_k, batch_blocks, programs,
                        one_tile=one_tile, held_chunks=0, batch_as_n=batch_as_n,
                        use_barrier=True, num_warps=num_warps, num_stages=2)
        plans.append(streamed)
        # The slice a program would hold: forward 4 * BLOCK_H rows of P, backward
        # BLOCK_H columns of 4H (not with a projection: held, H = 512 P = 128 spilled
        # 904-976 B beside the projection's product).
        held_rows, reduction = ((4 * block_h, out_size) if direction == "forward"
                                else (block_h, 4 * hidden))
        held_k = _pow2(reduction, _MIN_K, _HELD_CHUNK.get(itemsize, _MIN_K))
        held_chunks = triton.cdiv(reduction, held_k)
        held_bytes = held_rows * held_chunks * held_k * itemsize
        if (streamed.one_tile and block_b <= 16
                and (direction == "forward" or not projection)
                and held_bytes <= _HELD_BYTES.get((itemsize, direction), 0)):
            held = dataclasses.replace(streamed, block_k=held_k, held_chunks=held_chunks,
                                       num_stages=1)
            plans.append(held)
            # Tagged words: every word a step reads is loaded before the first wait,
            # which needs the chunks' count at compile time (held), and a 16-bit chunk
            # splits into the words' low and high values, each a product at least _MIN_K
            # deep. The words are all live at the first wait: 8 warps (with 4, the
            # forward at B=16 H=768 16-bit spilled 276 B at 8-unit tiles and 2,912 B at
            # 16 on sm_90), at most _TAGGED_WORD_BYTES. (A held backward is 16-bit and
            # has no projection.)
            word_units = TAGGED_WORD_UNITS.get(itemsize, 0)
            if (not projection and word_units and held_k >= word_units * _MIN_K
                    and block_b * held_chunks * held_k // word_units * 8 <= _TAGGED_WORD_BYTES):
                plans.append(dataclasses.replace(held, tagged=True, num_warps=8))
    return plans


def fallback_plans(plan: Plan) -> list[Plan]:
    """`plan`, then ever smaller ones to try where a device refuses it (less shared
    memory and fewer registers, then no barrier): the last one needs no co-residency."""
    smaller = dataclasses.replace(plan, held_chunks=0, block_k=_MIN_K, num_stages=1,
                                  tagged=False)
    barrier_free = dataclasses.replace(smaller, programs_per_batch_block=1, use_barrier=False,
                                       one_tile=False)
    candidates = [plan, smaller, barrier_free]
    return [p for i, p in enumerate(candidates) if p not in candidates[:i]]
