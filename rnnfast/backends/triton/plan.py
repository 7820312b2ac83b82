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
  resident at once, so the grid never exceeds the SM count. Chosen for small batches,
  where the barrier-free split would leave most SMs idle.

There are no per-step launches: both forms loop over T inside one launch, so any T works
(including T > 65,535). Under TRITON_INTERPRET programs run one after another, so only
the barrier-free form can run there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from . import interpreting

_MIN_DOT = 16             # tl.dot needs every dimension >= 16 on a GPU
_RESIDENT_BYTES = 64 << 10  # W_hh slice a program may keep in registers for the whole sequence


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

    @property
    def grid(self) -> tuple[int, int]:
        return (self.batch_blocks, self.programs_per_batch_block)


def _pow2(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(n, 1))))


def make_plan(batch: int, hidden: int, out_size: int, seq_len: int, device: torch.device,
              dtype: torch.dtype) -> Plan:
    """batch B, hidden H, out_size P (= proj_size or H), seq_len T (processed steps)."""
    if interpreting() or device.type != "cuda":
        # One program per batch block, big tiles: the interpreter pays per tile, not per FLOP.
        block_b = _pow2(batch, _MIN_DOT, 64)
        block_h = _pow2(max(hidden, out_size), _MIN_DOT, 64)
        return Plan(block_b, block_h, block_h, triton.cdiv(batch, block_b), 1, False, False, 4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return gpu_plan(batch, hidden, out_size, seq_len, dtype.itemsize, sms)


def gpu_plan(batch: int, hidden: int, out_size: int, seq_len: int, itemsize: int,
             sms: int) -> Plan:
    """The plan for a GPU with `sms` multiprocessors (pure: testable without one)."""
    block_b = _pow2(batch, _MIN_DOT, 64)
    batch_blocks = triton.cdiv(batch, block_b)
    programs = max(1, sms // batch_blocks)
    if programs < 2:
        return Plan(block_b, 32, 32, batch_blocks, 1, False, False, 4)
    block_h = _MIN_DOT
    unit_tiles = triton.cdiv(max(hidden, out_size), block_h)
    programs = min(programs, unit_tiles)
    # The barrier counts every arrival (at most 2 phases a step) in an int32.
    if programs < 2 or 2 * seq_len * programs >= 2**31:
        return Plan(block_b, block_h, 64, batch_blocks, 1, False, False, 4)
    padded_k = max(_MIN_DOT, triton.next_power_of_2(out_size))
    resident = (programs == triton.cdiv(hidden, block_h)
                and 4 * block_h * padded_k * itemsize <= _RESIDENT_BYTES)
    return Plan(block_b, block_h, padded_k if resident else 64, batch_blocks, programs, resident,
                True, 4)
