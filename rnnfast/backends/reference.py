"""Reference backend: the LSTM recurrence and its hand-written backward in plain
PyTorch. It is the oracle every kernel is tested against and the path used wherever
no faster backend applies (CPU, float64, sizes a kernel does not cover).

Numerics: gate activations, the cell state and all gradients of the recurrence are
kept in the accumulation dtype (fp32 for fp16/bf16 inputs, else the input dtype). The
input and output projections run in the input dtype (fp32 accumulation inside torch,
the result rounded to it); the forward's recurrent product joins the gates in the
accumulation dtype unrounded (gemm.Product's out_dtype), as in the fused kernels of
every backend; the backward's products run in the accumulation dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .gemm import Product
from .gradients import parameter_and_input_grads
from .steps import accumulation_dtype, final_rows, make_steps, prev_rows, prev_sequence


def _activate_(gates: Tensor) -> None:
    """In place: pre-activations [n, 4H] -> sigmoid(i, f), tanh(g), sigmoid(o)."""
    hidden = gates.shape[1] // 4
    gates[:, : 2 * hidden].sigmoid_()
    gates[:, 2 * hidden: 3 * hidden].tanh_()
    gates[:, 3 * hidden:].sigmoid_()


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
    save: str,                      # what backward will need: "all", "cells" or "none"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y [.., P], h_n [B, P], c_n [B, H] and the saved activations: with
    save="all" gates [N, 4H] (after activation), cells [N, H] (c_t of every row) and,
    with a projection, hidden [N, H] (o * tanh(c) before the projection); with
    save="cells" (backward recomputes the rest) only cells. Tensors not saved are
    returned empty."""
    dtype = x.dtype
    acc = accumulation_dtype(dtype)
    steps = make_steps(x.shape, batch_sizes, reverse)
    x2d = x.reshape(-1, x.shape[-1])
    rows, hidden, out_size = x2d.shape[0], w_hh.shape[0] // 4, w_hh.shape[1]

    # The input projection of all steps is one GEMM, off the sequential path. Its
    # output buffer then takes each step's recurrent product and the activations in
    # place, so the saved gates cost no extra pass.
    same_dtype_bias = b_ih + b_hh if b_ih is not None and acc == dtype else None
    gates_all = Product(w_ih, rows)(x2d, same_dtype_bias).to(acc)
    if b_ih is not None and acc != dtype:  # 16-bit: add the bias in fp32
        gates_all += b_ih.to(acc) + b_hh.to(acc)

    save_all = save == "all"
    y = x2d.new_empty(rows, out_size)
    cells_all = x2d.new_empty(rows, hidden, dtype=acc) if save != "none" else None
    hidden_all = x2d.new_empty(rows, hidden) if save_all and w_hr is not None else None
    # The cell state is updated in place; rows that are not active at a step keep
    # theirs, so after the loop it holds c_n. h needs no state: it is read back from y.
    c_state = c0.to(acc, copy=True)
    recurrent = Product(w_hh, steps.batch, out_dtype=acc)

    for k, (off, n) in enumerate(zip(steps.offsets, steps.sizes)):
        g = gates_all[off:off + n]
        g += recurrent(prev_rows(y, h0, steps, k))
        _activate_(g)
        i, f, gg, o = g.chunk(4, 1)
        c = c_state[:n].mul_(f).addcmul_(i, gg)
        if cells_all is not None:
            cells_all[off:off + n] = c
        y_t = y[off:off + n]
        if w_hr is None and acc == dtype:
            torch.tanh(c, out=y_t).mul_(o)
        else:
            h = torch.tanh(c).mul_(o).to(dtype)
            if hidden_all is not None:
                hidden_all[off:off + n] = h
            y_t.copy_(h if w_hr is None else h @ w_hr.t())

    return (
        y.view(*x.shape[:-1], out_size),
        final_rows(y, h0, steps),
        c_state.to(dtype),
        gates_all if save_all else x2d.new_empty(0),
        cells_all if cells_all is not None else x2d.new_empty(0),
        hidden_all if hidden_all is not None else x2d.new_empty(0),
    )


def recompute_gates(
    x: Tensor,                      # layer input [T, B, I] or packed [N, I]
    batch_sizes: Optional[Tensor],
    h0: Tensor,                     # [B, P]
    w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    w_hr: Optional[Tensor],
    y: Tensor,                      # [.., P] layer output: h_{t-1} of every row
    cells: Tensor,                  # [N, H] c_t of every row (accumulation dtype)
    reverse: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """The activations a save="cells" forward did not keep: gates [N, 4H] and, with a
    projection, hidden [N, H]. With every h_{t-1} known this is no longer sequential:
    two GEMMs over all rows and the activations, whatever backend ran the forward."""
    acc = cells.dtype
    steps = make_steps(x.shape, batch_sizes, reverse)
    rows, out_size = cells.shape[0], w_hh.shape[1]
    h_prev = prev_sequence(y.reshape(rows, out_size), h0, steps)
    gates = Product(w_ih, rows)(x.reshape(rows, x.shape[-1])).to(acc)
    gates += Product(w_hh, rows, out_dtype=acc)(h_prev)  # as the forward's
    if b_ih is not None:
        gates += b_ih.to(acc) + b_hh.to(acc)
    _activate_(gates)
    hidden = None
    if w_hr is not None:
        hidden = (torch.tanh(cells) * gates[:, 3 * cells.shape[1]:]).to(y.dtype)
    return gates, hidden


def differentiable_forward(
    x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Tensor, w_ih: Tensor,
    w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """forward's y, h_n, c_n written with out-of-place torch ops only, so that autograd
    can differentiate it, and differentiate its gradient again (double backward). Slower
    than forward; used only when a backward must itself build a graph."""
    steps = make_steps(x.shape, batch_sizes, reverse)
    x2d = x.reshape(-1, x.shape[-1])
    projected = x2d @ w_ih.t()
    if b_ih is not None:
        projected = projected + b_ih + b_hh
    h, c = h0, c0  # every batch row's latest state; rows not yet active hold h0, c0
    outputs = {}
    for off, n in zip(steps.offsets, steps.sizes):
        i, f, g, o = (projected[off:off + n] + h[:n] @ w_hh.t()).chunk(4, 1)
        c_step = torch.sigmoid(f) * c[:n] + torch.sigmoid(i) * torch.tanh(g)
        h_step = torch.sigmoid(o) * torch.tanh(c_step)
        if w_hr is not None:
            h_step = h_step @ w_hr.t()
        outputs[off] = h_step
        h, c = torch.cat([h_step, h[n:]]), torch.cat([c_step, c[n:]])
    y = torch.cat([outputs[off] for off in sorted(outputs)]) if outputs else x2d.new_empty(0, h0.shape[1])
    return y.view(*x.shape[:-1], h0.shape[1]), h, c


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
    y: Optional[Tensor],            # [.., P] layer output, saved only when dW_hh is needed
    gates: Tensor,                  # [N, 4H] activated gates (accumulation dtype)
    cells: Tensor,                  # [N, H] c_t of every row (accumulation dtype)
    hidden: Optional[Tensor],       # [N, H] pre-projection hidden, when dW_hr is needed
    reverse: bool,
    needs: list[bool],              # dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr
    frozen: list[Optional[Tensor]],  # bool masks (True = frozen) for w_ih, w_hh, b_ih, b_hh, w_hr
    x_shape: list[int],             # shape of the layer input x
) -> tuple[list[Optional[Tensor]], Tensor]:
    """Gradients in the order of `needs` (None where not needed; frozen entries get
    exactly zero), and the gate gradients dgates [N, 4H] (accumulation dtype) they
    were computed from."""
    need_dx, need_dh0, need_dc0, need_dw_ih, need_dw_hh, need_db_ih, need_db_hh, need_dw_hr = needs
    acc, dtype = gates.dtype, w_hh.dtype
    steps = make_steps(x_shape, batch_sizes, reverse)
    rows, hidden_size = gates.shape[0], gates.shape[1] // 4
    out_size, batch = w_hh.shape[1], steps.batch

    # Everything in the gate derivatives that does not depend on the incoming gradient
    # is computed for all steps at once, into dgates itself; the sequential loop then
    # only scales it by dc (gates i, f, g) and dh (gate o).
    i, f, gg, o = gates.chunk(4, 1)
    dgates = torch.empty_like(gates)
    d_i, d_f, d_g, d_o = dgates.chunk(4, 1)
    torch.mul(i, i, out=d_i).neg_().add_(i)            # i (1 - i)
    torch.mul(f, f, out=d_f).neg_().add_(f)            # f (1 - f)
    d_f.mul_(prev_sequence(cells, c0.to(acc), steps))  # ... * c_{t-1}
    torch.mul(gg, gg, out=d_g).neg_().add_(1).mul_(i)  # (1 - g^2) i
    d_i.mul_(gg)                                       # i (1 - i) g
    torch.tanh(cells, out=d_o)
    dc_from_dh = d_o.square().neg_().add_(1).mul_(o)   # dc/dh through h = o tanh(c)
    d_o.mul_(o).mul_(1 - o)                            # tanh(c) o (1 - o)
    dh_state = (dh_n.to(acc, copy=True) if dh_n is not None
                else gates.new_zeros(batch, out_size))
    dc_state = (dc_n.to(acc, copy=True) if dc_n is not None
                else gates.new_zeros(batch, hidden_size))
    dh0 = gates.new_zeros(batch, out_size)
    dc0 = gates.new_zeros(batch, hidden_size)
    dy2d = dy.reshape(rows, out_size) if dy is not None else None
    # dL/dy_t, summed over output and recurrence: needed for dW_hr.
    dy_total = gates.new_empty(rows, out_size) if need_dw_hr else None
    recurrent = Product(w_hh.t().to(acc), batch)
    w_hr_acc = w_hr.to(acc) if w_hr is not None else None

    for k in reversed(range(len(steps))):
        off, n = steps.offsets[k], steps.sizes[k]
        dh = dh_state[:n]
        if dy2d is not None:
            dh = dh + dy2d[off:off + n]
        if dy_total is not None:
            dy_total[off:off + n] = dh
        if w_hr_acc is not None:
            dh = dh @ w_hr_acc
        dc = torch.addcmul(dc_state[:n], dh, dc_from_dh[off:off + n])
        d_step = dgates[off:off + n]
        by_gate = d_step.view(n, 4, hidden_size)
        by_gate[:, :3].mul_(dc.unsqueeze(1))
        by_gate[:, 3].mul_(dh)
        dc_prev = dc.mul_(f[off:off + n])
        # Rows that were active one step earlier carry the gradient on; the rest
        # started here from (h0, c0). Where no row is carried, the product only feeds
        # dh0 and is skipped when h0 needs no gradient (docs/usage.md, "What freezing
        # gates and units skips": frozen units still carry the chain to trainable ones).
        carried = min(n, steps.prev_size(k))
        if carried == 0 and not need_dh0:
            dc0[:n] = dc_prev
            continue
        dh_prev = recurrent(d_step)
        dh_state[:carried] = dh_prev[:carried]
        dc_state[:carried] = dc_prev[:carried]
        if carried < n:
            dh0[carried:n] = dh_prev[carried:n]
            dc0[carried:n] = dc_prev[carried:n]

    grads = parameter_and_input_grads(dgates, dh0, dc0, dy_total, x, h0, w_ih, y, hidden,
                                      steps, needs, frozen, x_shape, dtype)
    return grads, dgates
