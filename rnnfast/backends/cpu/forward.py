"""Forward: one call into the C++ layer (csrc/cpu/lstm_cpu.cpp) runs the input
projection and the whole recurrence of a layer and direction, and returns the contract's
six tensors (at B=1 the Python around a call is a fair part of its time, so nothing is
done here that the call can do)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import extension, runs_widened, widened


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
    accumulation dtype (the input dtype for fp32/fp64, fp32 for bf16/fp16), y, h_n and c_n
    in the input dtype. bf16 with the bf16 kernels: products of bf16 operands summed in
    fp32 straight into the gates (the reference keeps the recurrent product's fp32 sums
    too, but rounds the input projection to bf16 first). Other 16-bit layers run widened
    (runs_widened): the fp32 layer on fp32 copies, y, h_n, c_n and hidden rounded once."""
    if runs_widened(x.dtype):
        wide = widened(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        y, h_n, c_n, gates, cells, hidden = extension().forward(
            wide[0], batch_sizes, *wide[1:], reverse, save == "all", save != "none")
        return y.to(x.dtype), h_n.to(x.dtype), c_n.to(x.dtype), gates, cells, hidden.to(x.dtype)
    return tuple(extension().forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                     save == "all", save != "none"))
