"""Backward: one call into the C++ layer runs the reverse-time chain (dh, dc -> the gate
gradients of every row); the input and parameter gradients are then GEMMs over all
steps, shared with the other backends (backends/gradients.py), each skipped or masked
as `needs` and the freeze masks say (DESIGN.md §4)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..gradients import parameter_and_input_grads
from ..steps import make_steps
from . import extension, runs_widened, widened


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
    gates: Tensor,                  # [N, 4H] activated gates
    cells: Tensor,                  # [N, H] c_t of every row
    hidden: Optional[Tensor],       # [N, H] pre-projection hidden, when dW_hr is needed
    reverse: bool,
    needs: list[bool],              # dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr
    frozen: list[Optional[Tensor]],  # masks (True = frozen) for w_ih, w_hh, b_ih, b_hh, w_hr
    x_shape: list[int],
) -> tuple[list[Optional[Tensor]], Tensor]:
    """Same contract as backends.reference.backward. The chain runs in the accumulation
    dtype of gates and cells (fp32 for a bf16 layer, as the reference's: W_hh, W_hr and
    the incoming gradients widened, exactly); the parameter and input gradients of a bf16
    layer with the bf16 kernels are torch's bf16 products, as every backend's. A layer
    that runs widened (runs_widened) takes the fp32 backward on fp32 copies, its
    gradients rounded once."""
    if runs_widened(w_hh.dtype):
        wide = widened(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, y, hidden)
        grads, dgates = backward(*wide[:4], batch_sizes, *wide[4:10], gates, cells, wide[10],
                                 reverse, needs, frozen, x_shape)
        return [g.to(w_hh.dtype) if g is not None else None for g in grads], dgates
    steps = make_steps(x_shape, batch_sizes, reverse)
    rows, out_size, acc = gates.shape[0], w_hh.shape[1], gates.dtype
    # Absent incoming gradients are zeros: the chain starts from them either way.
    dh_n = dh_n.to(acc) if dh_n is not None else gates.new_zeros(steps.batch, out_size)
    dc_n = dc_n.to(acc) if dc_n is not None else gates.new_zeros(c0.shape)
    dgates, dh0, dc0, dy_total = extension().backward(
        dy.reshape(rows, out_size).to(acc) if dy is not None else None, dh_n, dc_n, gates,
        cells, c0.to(acc), w_hh.to(acc), w_hr.to(acc) if w_hr is not None else None,
        batch_sizes, reverse, needs[7])
    grads = parameter_and_input_grads(dgates, dh0, dc0, dy_total if needs[7] else None, x, h0,
                                      w_ih, y, hidden, steps, needs, frozen, x_shape, w_hh.dtype,
                                      mm=mm if acc == w_hh.dtype else None)
    return grads, dgates


def mm(a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """a @ b with torch.mm's signature (fp32/fp64), on the extension's GEMM (csrc/cpu/lstm_cpu.cpp:
    AVX-512 where the CPU has it, which MKL does not use on AMD CPUs); a may be a
    transposed view. Each element is summed in the same order whatever rows are asked
    for, so a product over some rows equals those rows of the whole one, bit for bit."""
    b = b if b.stride(1) == 1 or b.shape[1] <= 1 else b.contiguous()
    if out is None:
        out = a.new_empty(a.shape[0], b.shape[1])
    extension().mm_into(a, b, out)
    return out
