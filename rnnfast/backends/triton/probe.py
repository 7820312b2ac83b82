"""The Triton kernels' grid barrier (cell.end_phase) alone, timed by
rnnfast/backends/probe.py: what a barrier plan's phase pays to meet the other programs."""
from __future__ import annotations

import triton
import triton.language as tl

from . import cell


@triton.jit
def barrier_rounds_kernel(arrivals_ptr,  # [1] int32 zero: the programs' arrivals
                          timeout_ptr,   # [1] int32 zero: set if a wait gave up
                          rounds,        # phases to run
                          SPIN_LIMIT: tl.constexpr):
    programs = tl.num_programs(0)
    for r in range(rounds):
        cell.end_phase(arrivals_ptr, programs * (r + 1), timeout_ptr, True, SPIN_LIMIT)
