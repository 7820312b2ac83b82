"""Forward: the input projection of all steps as one GEMM (torch), then one launch of
csrc/lstm_forward.cu (a cluster or a cooperative grid) for the whole recurrence."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..barrier import BARRIER_SPIN_LIMIT
from ..steps import accumulation_dtype, final_rows, make_steps, step_tables
from . import _C, fallback
from .launch import exchange, run


def forward(
    x: Tensor,                      # [T, B, I] dense, or packed data [N, I]
    batch_sizes: Optional[Tensor],  # [T] int64 CPU for packed input, else None
    h0: Tensor,                     # [B, P]
    c0: Tensor,                     # [B, H]
    w_ih: Tensor,                   # [4H, I]
    w_hh: Tensor,                   # [4H, P]
    b_ih: Optional[Tensor],         # [4H]
    b_hh: Optional[Tensor],         # [4H]
    w_hr: Optional[Tensor],         # [P, H]
    reverse: bool,
    save: str,                      # "all", "cells" or "none"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same contract as backends.reference.forward."""
    hidden_size, out_size = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, acc = x.dtype, accumulation_dtype(x.dtype)
    steps = make_steps(x.shape, batch_sizes, reverse)
    x2d = x.reshape(-1, x.shape[-1])
    rows, batch = x2d.shape[0], steps.batch
    has_proj = w_hr is not None

    xg = (x2d @ w_ih.t()).contiguous()  # every step's input projection: off the sequential path
    y = x2d.new_empty(rows, out_size)
    c_state = c0.to(acc, copy=True).contiguous()
    save_all = save == "all"
    gates = None
    if save_all:  # fp32: each thread reads a (row, unit)'s 4 xg entries before writing its gates
        gates = xg if acc == dtype else xg.new_empty(rows, 4 * hidden_size, dtype=acc)
    cells = x2d.new_empty(rows, hidden_size, dtype=acc) if save != "none" else None
    hidden = x2d.new_empty(rows, hidden_size) if has_proj and save_all else None
    bias = (b_ih.to(acc) + b_hh.to(acc)).contiguous() if b_ih is not None else None
    h0x = exchange(x2d, batch, out_size)
    h0x[:, :out_size] = h0
    hidx = exchange(x2d, batch, hidden_size) if has_proj else None
    offsets, sizes = step_tables(steps, x.device)

    def kernel(plan, arrivals, timed_out):
        hx = exchange(x2d, 2, batch, out_size) if plan.kind == "grid" else None
        _C.forward(xg, bias, w_hh.contiguous(), w_hr.contiguous() if has_proj else None, h0x, hx,
                   hidx, c_state, y, gates, cells, hidden, offsets, sizes, arrivals, timed_out,
                   len(steps), reverse, plan.units, plan.proj_cols, plan.unit_slices,
                   plan.block_rows, plan.cluster, plan.multicast, plan.reg_k_tiles,
                   plan.pass_rows, BARRIER_SPIN_LIMIT)

    ran = run("forward", x.device, dtype, batch, hidden_size, out_size, has_proj, kernel)
    if isinstance(ran, str):
        return fallback(ran).forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                     reverse, save)
    empty = lambda: x2d.new_empty(0)  # one per slot: op outputs may not alias each other
    return (
        y.view(*x.shape[:-1], out_size),
        final_rows(y, h0, steps),
        c_state.to(dtype),
        gates if gates is not None else empty(),
        cells if cells is not None else empty(),
        hidden if hidden is not None else empty(),
    )
