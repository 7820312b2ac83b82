"""Host-side helpers shared by the forward and backward launchers: the exchange
buffers a launch needs, and the launch itself with its barrier state and fallbacks."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..barrier import raise_if_barrier_timed_out, watch_timeout_flag
from . import _C, plan_for
from .plan import Plan, exchange_ld


def exchange(like: Tensor, *shape_and_cols: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    """A zero-filled exchange buffer [..., rows, ld(cols)] (lstm_kernels.h): rows 16-byte
    aligned for cp.async, padding columns zero so they add nothing to a product."""
    *lead, cols = shape_and_cols
    return like.new_zeros(*lead, exchange_ld(cols), dtype=dtype)


def run(direction: str, device: torch.device, dtype: torch.dtype, batch: int, hidden: int,
        out_size: int, has_proj: bool, kernel: Callable[[Plan, Tensor, Tensor], None]):
    """Runs kernel(plan, arrivals, timed_out) with the layer's plan, falling back from a
    refused launch of any other plan (a cluster plan, a grid plan with multicast,
    registers or a reduce split) to the plain grid plan (plan_for(..., plain=True)).
    arrivals [batch_blocks] int64 and timed_out [1] int32 are the grid barrier's state,
    zeroed. Returns the plan that ran, or the reason none could (the caller then runs the
    layer on the fallback backend): no plan fits, or the GPU refused the launch before
    anything ran. A wait that timed out (the grid barrier, or an mbarrier wait of the
    multicast staging or of a cluster plan's exchange: all set timed_out) raises
    RuntimeError at the next launch (or raise_if_barrier_timed_out)."""
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if not capturing:
        raise_if_barrier_timed_out()
    plan = plan_for(direction, device, dtype, batch, hidden, out_size, has_proj)
    while isinstance(plan, Plan):
        arrivals = torch.zeros(plan.batch_blocks, dtype=torch.int64, device=device)
        timed_out = torch.zeros(1, dtype=torch.int32, device=device)
        try:
            kernel(plan, arrivals, timed_out)
        except _C.LaunchRefused as refusal:  # nothing ran: the inputs are untouched
            if (plan.kind != "cluster" and not plan.multicast and not plan.reg_k_tiles
                    and not plan.reduce_ctas):
                return str(refusal)
            plan = plan_for(direction, device, dtype, batch, hidden, out_size, has_proj,
                            plain=True)
            continue
        if not capturing:
            watch_timeout_flag(timed_out, f"CUDA LSTM {direction} with {plan}")
        return plan
    return plan
