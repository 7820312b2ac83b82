"""How a layer's recurrence is spread over the GPU: tile sizes, programs and whether
the programs of a batch block must meet at a barrier every step.

The work of a step is a grid of tiles: BLOCK_B batch rows x BLOCK_H hidden units (the
four gate rows of each unit). Rows of different batch blocks never interact, so each
batch block runs its own recurrence. Within a batch block the units need all of
h(t-1), so:

- batch-split (no barrier): one program per batch block loops over all unit tiles of
  a step. Any number of programs is safe; chosen when the batch alone fills the GPU.
- persistent with barrier: several programs per batch block share its unit tiles and
  meet at an atomic-counter barrier after each phase of each step. All programs must be
  resident at once, so the grid never exceeds the SM count and the launch is
  cooperative (the driver refuses it rather than start programs that cannot all run;
  the launcher then takes the barrier-free plan). Chosen for small batches, where the
  barrier-free split would leave most SMs idle.

There are no per-step launches: both forms loop over T inside one launch, so any T works
(including T > 65,535). Under TRITON_INTERPRET programs run one after another, so only
the barrier-free form can run there.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton

from . import interpreting

_MIN_DOT = 16             # tl.dot needs every dimension >= 16 on a GPU
_RESIDENT_BYTES = 64 << 10  # W_hh slice a program may keep in registers for the whole sequence
                            # (4 * BLOCK_H rows of P: fp16 P <= 1024 at 8 units a tile)


@dataclass(frozen=True)
class Plan:
    block_b: int                    # batch rows per tile
    block_h: int                    # hidden units (forward) / output columns (backward) per tile
    block_k: int                    # reduction chunk of the products
    batch_blocks: int               # grid dimension 0
    programs_per_batch_block: int   # grid dimension 1
    weights_resident: bool          # each program loads its W_hh slice once, before the loop
    use_barrier: bool               # programs of a batch block meet after every phase
    num_warps: int
    num_stages: int                 # software-pipelining depth of the reduction loops

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
        block_b = _pow2(batch, _MIN_DOT, 64)
        block_h = _pow2(max(hidden, out_size), _MIN_DOT, 64)
        return Plan(block_b, block_h, block_h, triton.cdiv(batch, block_b), 1, False, False, 4, 1)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return gpu_plan(batch, hidden, out_size, seq_len, dtype.itemsize, sms, direction)


def gpu_plan(batch: int, hidden: int, out_size: int, seq_len: int, itemsize: int,
             sms: int, direction: str = "forward") -> Plan:
    """The plan for a GPU with `sms` multiprocessors (pure: testable without one).

    Sized so that every kernel fits in shared memory and registers on sm_80 and sm_90
    without spills (tests/test_triton_aot.py compiles them all to check). Measured: a
    reduction chunk of 64 spills on sm_80 at 32 and 64 rows, so the chunk is 32, or 16
    for fp32/fp64 operands, which take twice the registers (fp32 B=2 H=1000 spilled 56 B
    on sm_80 at 32); tiles of 32 or more rows get 8 warps. W_hh stays in registers only
    for 16-row tiles and at most _RESIDENT_BYTES per program (fp32 counted four times:
    its tf32x3 split); then the product's loop
    runs once and is not pipelined (num_stages=1: stages would only hold copies that
    overlap nothing). The backward never holds W_hh: it has its own plan."""
    block_b = _pow2(batch, _MIN_DOT, 64)
    batch_blocks = triton.cdiv(batch, block_b)
    num_warps = 4 if block_b == _MIN_DOT else 8
    block_k = 32 if itemsize <= 2 else 16
    programs = max(1, sms // batch_blocks)
    if programs < 2:
        return Plan(block_b, 32, block_k, batch_blocks, 1, False, False, num_warps, 2)
    # The forward's one product per tile covers all four gates (N = 4 * BLOCK_H), so 8
    # units a tile suffice: twice as many programs share the layer where the SMs allow
    # (where they do not, wider tiles re-read h(t-1) less often). The projection phase
    # and the backward's dh product have N = BLOCK_H and need 16.
    narrow = (direction == "forward" and out_size == hidden
              and triton.cdiv(hidden, _MIN_DOT // 2) <= programs)
    block_h = _MIN_DOT // 2 if narrow else _MIN_DOT
    unit_tiles = triton.cdiv(max(hidden, out_size), block_h)
    programs = min(programs, unit_tiles)
    # The barrier counts every arrival (at most 2 phases a step) in an int32, below the
    # 2**30 that marks an abandoned barrier (cell.end_phase).
    if programs < 2 or 2 * seq_len * programs >= 2**30:
        return Plan(block_b, block_h, block_k, batch_blocks, 1, False, False, num_warps, 2)
    padded_k = max(_MIN_DOT, triton.next_power_of_2(out_size))
    # fp32's dot is tf32x3 (launch.kernel_dtypes): each held value is split into a big
    # and a small tf32 part at every step, which needs several times its registers
    # (measured on sm_80, 8 units a tile: P = 512 held spilled 2,344 B, P = 256 128 B,
    # P = 128 none), so it counts four times.
    held_bytes = 4 * block_h * padded_k * itemsize * (4 if itemsize == 4 else 1)
    if (direction == "forward" and block_b == _MIN_DOT
            and programs == triton.cdiv(hidden, block_h) and held_bytes <= _RESIDENT_BYTES):
        return Plan(block_b, block_h, padded_k, batch_blocks, programs, True, True, num_warps, 1)
    return Plan(block_b, block_h, block_k, batch_blocks, programs, False, True, num_warps, 2)


def fallback_plans(plan: Plan) -> list[Plan]:
    """`plan`, then ever smaller ones to try where a device refuses it (less shared
    memory and fewer registers, then no barrier): the last one needs no co-residency."""
    smaller = dataclasses.replace(plan, weights_resident=False, block_k=_MIN_DOT, num_stages=1)
    barrier_free = dataclasses.replace(smaller, programs_per_batch_block=1, use_barrier=False)
    candidates = [plan, smaller, barrier_free]
    return [p for i, p in enumerate(candidates) if p not in candidates[:i]]
