"""The autograd core: one Function per layer and direction.

The Function owns *what is saved* and *what backward skips*; the math lives in the
backend. Both directions of the math are registered as `torch.library` custom ops
(`rnnfast::lstm_layer_forward`, `rnnfast::lstm_layer_backward`) with fake
implementations, so `torch.compile` can trace through the layer instead of breaking.

Saved-activation contract (every backend produces these for backward):
  gates  [N, 4H]  gate activations i, f, g, o after sigmoid/tanh, accumulation dtype
  cells  [N, H]   the cell state c_t of every row, accumulation dtype
  hidden [N, H]   o * tanh(c) before the projection (only with proj_size), input dtype
where N is the number of rows of the layer input (T*B dense, or the packed length).
With recompute=True the forward keeps only cells (save="cells"); backward rebuilds
gates and hidden from x, y and the weights before running the backend's backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends
from .backends import reference
from .backends.steps import accumulation_dtype

# Gradient slots, in the order of the Function's first inputs and of the backward op.
GRAD_SLOTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


@torch.library.custom_op("rnnfast::lstm_layer_forward", mutates_args=())
def lstm_layer_forward(
    x: Tensor,                      # [T, B, I] dense, or packed data [N, I]
    batch_sizes: Optional[Tensor],  # [T] int64 CPU (packed input), else None
    h0: Tensor,                     # [B, P]
    c0: Tensor,                     # [B, H]
    w_ih: Tensor,                   # [4H, I]
    w_hh: Tensor,                   # [4H, P]
    b_ih: Optional[Tensor],         # [4H]
    b_hh: Optional[Tensor],         # [4H]
    w_hr: Optional[Tensor],         # [P, H]
    reverse: bool,
    save: str,                      # "all", "cells" (backward recomputes the gates) or "none"
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """y [.., P], h_n [B, P], c_n [B, H], then gates, cells, hidden (empty unless saved)."""
    return tuple(backends.get(backend).forward(
        x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save))


@lstm_layer_forward.register_fake
def _(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, backend):
    acc = accumulation_dtype(x.dtype)
    hidden_size, out_size = w_hh.shape[0] // 4, w_hh.shape[1]
    rows = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    y = x.new_empty(*x.shape[:-1], out_size)
    h_n, c_n = h0.new_empty(h0.shape), c0.new_empty(c0.shape)
    save_all = save == "all"
    gates = x.new_empty(rows, 4 * hidden_size, dtype=acc) if save_all else x.new_empty(0)
    cells = x.new_empty(rows, hidden_size, dtype=acc) if save != "none" else x.new_empty(0)
    hidden = x.new_empty(rows, hidden_size) if save_all and w_hr is not None else x.new_empty(0)
    return y, h_n, c_n, gates, cells, hidden


@torch.library.custom_op("rnnfast::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(
    dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor],
    x: Optional[Tensor], batch_sizes: Optional[Tensor], h0: Optional[Tensor], c0: Tensor,
    w_ih: Optional[Tensor], w_hh: Tensor, w_hr: Optional[Tensor], y: Optional[Tensor],
    gates: Tensor, cells: Tensor, hidden: Optional[Tensor],
    frozen_w_ih: Optional[Tensor], frozen_w_hh: Optional[Tensor], frozen_b_ih: Optional[Tensor],
    frozen_b_hh: Optional[Tensor], frozen_w_hr: Optional[Tensor],
    reverse: bool, needs: list[bool], x_shape: list[int], backend: str,
) -> list[Tensor]:
    """Gradients in GRAD_SLOTS order; a slot not needed comes back as an empty tensor."""
    grads = backends.get(backend).backward(
        dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
        reverse, needs, [frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr],
        x_shape)
    return [g if g is not None else gates.new_empty(0) for g in grads]


@lstm_layer_backward.register_fake
def _(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
      frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr,
      reverse, needs, x_shape, backend):
    dtype, four_h, out_size = w_hh.dtype, w_hh.shape[0], w_hh.shape[1]
    shapes = (x_shape, [c0.shape[0], out_size], list(c0.shape), [four_h, x_shape[-1]],
              [four_h, out_size], [four_h], [four_h], [out_size, four_h // 4])
    return [gates.new_empty(s, dtype=dtype) if need else gates.new_empty(0)
            for s, need in zip(shapes, needs)]


class LSTMLayerFunction(torch.autograd.Function):
    """One LSTM layer in one direction, with a hand-written backward.

    Saves only what backward needs for the gradients autograd asks for (see the table
    in DESIGN.md §4): x only for dW_ih, W_ih only for dx, y and h0 only for dW_hh, the
    pre-projection hidden only for dW_hr. Gradients not asked for are not computed.
    With recompute=True it saves the cell states instead of the gates (a quarter of
    the bytes) plus what rebuilding the gates takes: x, y, h0 and the weights.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr, backend,
                recompute):
        y, h_n, c_n, gates, cells, hidden = torch.ops.rnnfast.lstm_layer_forward(
            x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
            "cells" if recompute else "all", backend)
        need_dx, _, _, need_dw_ih, need_dw_hh, _, _, need_dw_hr = ctx.needs_input_grad[:len(GRAD_SLOTS)]
        if recompute:
            saved = (x, h0, c0, w_ih, w_hh, w_hr, y, None, cells, None, b_ih, b_hh)
        else:
            saved = (x if need_dw_ih else None, h0 if need_dw_hh else None, c0,
                     w_ih if need_dx else None, w_hh, w_hr, y if need_dw_hh else None,
                     gates, cells, hidden if need_dw_hr else None, None, None)
        ctx.save_for_backward(*saved, frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh,
                              frozen_w_hr)
        ctx.batch_sizes = batch_sizes
        ctx.reverse = reverse
        ctx.x_shape = list(x.shape)
        ctx.backend = backend
        ctx.recompute = recompute
        ctx.set_materialize_grads(False)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        needs = list(ctx.needs_input_grad[:len(GRAD_SLOTS)])
        if dy is None and dh_n is None and dc_n is None:
            return (None,) * 17
        (x, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden, b_ih, b_hh,
         *frozen) = ctx.saved_tensors
        if ctx.recompute:
            gates, hidden = reference.recompute_gates(
                x, ctx.batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_hr, y, cells, ctx.reverse)
        grads = torch.ops.rnnfast.lstm_layer_backward(
            dy, dh_n, dc_n, x, ctx.batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
            hidden, *frozen, ctx.reverse, needs, ctx.x_shape, ctx.backend)
        grads = [g if need else None for g, need in zip(grads, needs)]
        return (*grads,) + (None,) * 9
