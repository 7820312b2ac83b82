"""Forward: one call into the C++ layer (csrc/cpu/lstm_cpu.cpp) runs the input
projection and the whole recurrence of a layer and direction."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..steps import accumulation_dtype, final_rows, make_steps
from . import extension


def forward(
    x: Tensor,                      # [T, B, I] dense, or packed data [N, I]
    batch_sizes: Optional[Tensor],  # [T] int64 CPU for packed input, else None
    h0: Tensor,                     # [B, P]  (P = proj_size or H)
    c0: Tensor,                     # [B, H]
    w_ih: Tensor,                   # [4H, I]  gate rows i, f, g, o
    w_hh: Tensor,                   # [4H, P]
    b_ih: Optional[Tensor],         # [4H]
    b_hh: Optional[Tensor],         # [4H]
    w_hr: Optional[Tensor],         # [P, H] projection, or None
    reverse: bool,
    save: str,                      # "all", "cells" or "none"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same contract as backends.reference.forward: gates, cells and the cell state in the
    accumulation dtype (the input dtype for fp32/fp64, fp32 for bf16), y and h in the
    input dtype. bf16: products of bf16 operands summed in fp32 straight into the gates
    (the reference rounds each product to bf16 first)."""
    steps = make_steps(x.shape, batch_sizes, reverse)
    x2d = x.reshape(-1, x.shape[-1])
    acc = accumulation_dtype(x.dtype)
    bias = b_ih.to(acc) + b_hh.to(acc) if b_ih is not None else None
    y, c_n, gates, cells, hidden = extension().forward(
        x2d, h0, c0.to(acc), w_ih, w_hh, bias, w_hr, list(steps.offsets), list(steps.sizes),
        save == "all", save != "none")
    return (y.view(*x.shape[:-1], y.shape[1]), final_rows(y, h0, steps), c_n.to(x.dtype), gates,
            cells, hidden)
