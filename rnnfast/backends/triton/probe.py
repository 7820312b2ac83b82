"""The Triton kernels' ways of waiting for each other, alone, timed by
rnnfast/backends/probe.py: the grid barrier (cell.end_phase), what a barrier plan's
phase pays to meet the other programs; and the tagged-word exchange (cell.wait_for_tag),
what a tagged plan's step pays to see the other programs' words."""
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


@triton.jit
def tagged_rounds_kernel(words_ptr,    # [2, PROGRAMS] int64 zeros: each program's word of
                                       # round r in slot r % 2
                         timeout_ptr,  # [1] int32 zero: set if a wait gave up
                         rounds,       # exchanges to run
                         SPIN_LIMIT: tl.constexpr,
                         PROGRAMS: tl.constexpr):  # a power of two >= the programs
    """Each round every program stores one word tagged with the round, as the forward
    stores its words of h(t), then waits until it sees every program's word of that
    round, as the forward's next step does (its bytes aside: the model counts those)."""
    program = tl.program_id(0)
    others = tl.arange(0, PROGRAMS)
    present = others < tl.num_programs(0)
    spin_limit = tl.full((), SPIN_LIMIT, tl.int32)
    for r in range(rounds):
        slot = words_ptr + (r % 2) * PROGRAMS
        tag = r + 1
        tl.atomic_xchg(slot + program, (tl.cast(tag, tl.int64) << 32) | program,
                       sem="relaxed", scope="gpu")
        words = tl.load(slot + others, mask=present, other=0, volatile=True)
        words, gave_up = cell.wait_for_tag(words, slot + others, present, tag, spin_limit)
        if gave_up:
            spin_limit = 0
            tl.atomic_xchg(timeout_ptr, 1, sem="relaxed", scope="gpu")
