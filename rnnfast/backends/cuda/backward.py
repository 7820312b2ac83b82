"""Backward: one launch of csrc/lstm_backward.cu (a cluster or a cooperative grid) runs the
reverse-time chain (dh, dc -> gate gradients of every row); the input and parameter
gradients are then GEMMs over all steps, shared with the other backends
(backends/gradients.py), each skipped or masked as `needs` and the freeze masks say
(DESIGN.md §4)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..barrier import BARRIER_SPIN_LIMIT
from ..gradients import parameter_and_input_grads
from ..steps import make_steps, step_tables
from . import _C, fallback
from .launch import exchange, run


def backward(
    dy: Optional[Tensor],           # [.., P] like y, or None
    dh_n: Optional[Tensor],         # [B, P] or None
    dc_n: Optional[Tensor],         # [B, H] or None
    x: Optional[Tensor],            # layer input, saved only when dW_ih is needed
    batch_sizes: Optional[Tensor],  # [T] int64 CPU, or None
    h0: Optional[Tensor],           # [B, P], saved only when dW_hh is needed
    c0: Tensor,                     # [B, H]
    w_ih: Optional[Tensor],         # [4H, I], saved only when dx is needed
    w_hh: Tensor,                   # [4H, P]
    w_hr: Optional[Tensor],         # [P, H]
    y: Optional[Tensor],            # [.., P], saved only when dW_hh is needed
    gates: Tensor,                  # [N, 4H] activated gates (fp32)
    cells: Tensor,                  # [N, H] c_t of every row (fp32)
    hidden: Optional[Tensor],       # [N, H] pre-projection hidden, when dW_hr is needed
    reverse: bool,
    needs: list[bool],              # dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr
    frozen: list[Optional[Tensor]],  # masks (True = frozen) for w_ih, w_hh, b_ih, b_hh, w_hr
    x_shape: list[int],
) -> tuple[list[Optional[Tensor]], Tensor]:
    """Same contract as backends.reference.backward."""
    hidden_size, out_size = w_hh.shape[0] // 4, w_hh.shape[1]
    acc, dtype = gates.dtype, w_hh.dtype
    has_proj = w_hr is not None
    steps = make_steps(x_shape, batch_sizes, reverse)
    rows, batch = gates.shape[0], steps.batch
    dh_start = (dh_n.to(acc).contiguous() if dh_n is not None
                else gates.new_zeros(batch, out_size))
    dc_start = (dc_n.to(acc).contiguous() if dc_n is not None
                else gates.new_zeros(batch, hidden_size))
    dh0 = gates.new_zeros(batch, out_size)
    dc0 = gates.new_zeros(batch, hidden_size)
    dgates = gates.new_empty(rows, 4 * hidden_size)
    dy_total = gates.new_empty(rows, out_size) if needs[7] else None
    dhx = exchange(gates, batch, out_size, dtype=dtype) if has_proj else None
    offsets, sizes = step_tables(steps, gates.device)

    def kernel(plan, arrivals, timed_out):
        gx = exchange(gates, 2, batch, 4 * hidden_size, dtype=dtype) if plan.kind == "grid" else None
        _C.backward(dy.reshape(rows, out_size).contiguous() if dy is not None else None,
                    gates.contiguous(), cells.contiguous(), c0.to(acc).contiguous(),
                    w_hh.contiguous(), w_hr.contiguous() if has_proj else None, dh_start,
                    dc_start, dh0, dc0, dgates, dy_total, gx, dhx, offsets, sizes, arrivals,
                    timed_out, len(steps), reverse, plan.units, plan.proj_cols, plan.unit_slices,
                    plan.block_rows, plan.cluster, plan.multicast, plan.reg_k_tiles,
                    plan.reduce_ctas, BARRIER_SPIN_LIMIT)

    ran = run("backward", gates.device, dtype, batch, hidden_size, out_size, has_proj, kernel)
    if isinstance(ran, str):
        return fallback(ran).backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y,
                                      gates, cells, hidden, reverse, needs, frozen, x_shape)
    grads = parameter_and_input_grads(dgates, dh0, dc0, dy_total, x, h0, w_ih, y, hidden,
                                      steps, needs, frozen, x_shape, dtype)
    return grads, dgates
