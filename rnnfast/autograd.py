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
from .backends.gradients import low_rank_grads
from .backends.steps import accumulation_dtype, make_steps, prev_sequence

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
    reverse: bool, needs: list[bool], want_dgates: bool, x_shape: list[int], backend: str,
) -> list[Tensor]:
    """Gradients in GRAD_SLOTS order, then dL/d(gate pre-activations) [N, 4H] (the
    accumulation dtype) when want_dgates; a slot not needed comes back empty."""
    grads, dgates = backends.get(backend).backward(
        dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
        reverse, needs, [frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr],
        x_shape)
    grads.append(dgates if want_dgates else None)
    return [g if g is not None else gates.new_empty(0) for g in grads]


@lstm_layer_backward.register_fake
def _(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
      frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr,
      reverse, needs, want_dgates, x_shape, backend):
    dtype, four_h, out_size = w_hh.dtype, w_hh.shape[0], w_hh.shape[1]
    shapes = (x_shape, [c0.shape[0], out_size], list(c0.shape), [four_h, x_shape[-1]],
              [four_h, out_size], [four_h], [four_h], [out_size, four_h // 4])
    grads = [gates.new_empty(s, dtype=dtype) if need else gates.new_empty(0)
             for s, need in zip(shapes, needs)]
    return grads + [gates.new_empty(gates.shape) if want_dgates else gates.new_empty(0)]


def differentiable_grads(inputs, needs, frozen, grad_outputs, batch_sizes, reverse,
                         lora=(None,) * 4, lora_needs=(False,) * 4, lora_scale=1.0):
    """The layer's input gradients as a graph (for double backward): the reference
    recurrence re-run with autograd from the saved inputs, then differentiated with
    create_graph=True. inputs are in GRAD_SLOTS order with the *base* weights; LoRA
    factors (A_ih, B_ih, A_hh, B_hh) are merged inside the graph, so their gradients are
    differentiable too. Frozen entries are zeroed out of place. Returns the gradients of
    inputs, then of lora."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    if x is None or h0 is None:
        raise RuntimeError(
            "double backward (create_graph=True) through an rnnfast LSTM layer needs its "
            "input and initial state, which the forward keeps only when weight_ih and "
            "weight_hh (or their LoRA factors) need a gradient")
    everything, all_needs = (*inputs, *lora), (*needs, *lora_needs)
    with torch.enable_grad():
        w_ih = with_lora(w_ih, lora[0], lora[1], lora_scale)
        w_hh = with_lora(w_hh, lora[2], lora[3], lora_scale)
        outputs = reference.differentiable_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                                   b_hh, w_hr, reverse)
        wanted = [t for t, need in zip(everything, all_needs) if need]
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
        found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                         create_graph=True, allow_unused=True))
    grads = [next(found) if need else None for need in all_needs]
    for slot, mask in zip((3, 4, 5, 6, 7), frozen):
        if grads[slot] is not None and mask is not None:
            grads[slot] = grads[slot].masked_fill(mask, 0)
    for slot, (need, t) in enumerate(zip(all_needs, everything)):
        if need and grads[slot] is None:  # the input did not reach any output used
            grads[slot] = torch.zeros_like(t)
    return grads


def with_lora(weight: Tensor, lora_a: Optional[Tensor], lora_b: Optional[Tensor],
              scale: float) -> Tensor:
    """The weight a layer runs with: W + scale * B @ A, or W itself without factors."""
    return weight if lora_a is None else weight + scale * (lora_b @ lora_a)


class LSTMLayerFunction(torch.autograd.Function):
    """One LSTM layer in one direction, with a hand-written backward.

    Saves only the activations backward needs for the gradients autograd asks for (see
    the table in DESIGN.md §4): x only for dW_ih, y and h0 only for dW_hh, the
    pre-projection hidden only for dW_hr (the weights, which exist anyway, are always
    kept). Gradients not asked for are not computed. Under create_graph=True backward
    re-runs the layer as differentiable torch ops, so double backward works.
    With recompute=True it saves the cell states instead of the gates (a quarter of
    the bytes) plus what rebuilding the gates takes: x, y, h0 and the weights.

    LoRA: with low-rank factors A [r, in], B [4H, r] for W_ih and/or W_hh the layer runs
    with W + scale * B @ A, and backward takes dA and dB straight from the gate
    gradients (GEMMs of width r) instead of forming dW: a frozen base weight costs no
    weight-gradient GEMM.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lora_a_ih, lora_b_ih, lora_a_hh,
                lora_b_hh, batch_sizes, reverse, frozen_w_ih, frozen_w_hh, frozen_b_ih,
                frozen_b_hh, frozen_w_hr, backend, recompute, lora_scale):
        base_w_ih, base_w_hh = w_ih, w_hh
        w_ih = with_lora(w_ih, lora_a_ih, lora_b_ih, lora_scale)
        w_hh = with_lora(w_hh, lora_a_hh, lora_b_hh, lora_scale)
        y, h_n, c_n, gates, cells, hidden = torch.ops.rnnfast.lstm_layer_forward(
            x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
            "cells" if recompute else "all", backend)
        _, _, _, need_dw_ih, need_dw_hh, _, _, need_dw_hr = ctx.needs_input_grad[:len(GRAD_SLOTS)]
        need_lora_ih = any(ctx.needs_input_grad[8:10])
        need_lora_hh = any(ctx.needs_input_grad[10:12])
        keep_x = need_dw_ih or need_lora_ih
        keep_h = need_dw_hh or need_lora_hh
        # Weights and biases are saved whether or not this backward reads them: they
        # exist anyway, and a double backward re-runs the layer from them (from the base
        # weights under LoRA, to differentiate through the merge).
        base = (base_w_ih if lora_a_ih is not None else None,
                base_w_hh if lora_a_hh is not None else None)
        if recompute:
            saved = (x, h0, c0, w_ih, w_hh, w_hr, y, None, cells, None, b_ih, b_hh)
        else:
            saved = (x if keep_x else None, h0 if keep_h else None, c0, w_ih, w_hh, w_hr,
                     y if keep_h else None, gates, cells, hidden if need_dw_hr else None,
                     b_ih, b_hh)
        ctx.save_for_backward(*saved, frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh,
                              frozen_w_hr, lora_a_ih, lora_b_ih, lora_a_hh, lora_b_hh, *base)

        ctx.batch_sizes = batch_sizes
        ctx.reverse = reverse
        ctx.x_shape = list(x.shape)
        ctx.backend = backend
        ctx.recompute = recompute
        ctx.lora_scale = lora_scale
        ctx.set_materialize_grads(False)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        needs = list(ctx.needs_input_grad[:len(GRAD_SLOTS)])
        lora_needs = ctx.needs_input_grad[8:12]
        if dy is None and dh_n is None and dc_n is None:
            return (None,) * 22
        (x, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden, b_ih, b_hh,
         *frozen, lora_a_ih, lora_b_ih, lora_a_hh, lora_b_hh, base_w_ih, base_w_hh
         ) = ctx.saved_tensors
        if torch.is_grad_enabled():  # backward(create_graph=True): it must be differentiable
            inputs = (x, h0, c0, w_ih if base_w_ih is None else base_w_ih,
                      w_hh if base_w_hh is None else base_w_hh, b_ih, b_hh, w_hr)
            grads = differentiable_grads(inputs, needs, frozen, (dy, dh_n, dc_n),
                                         ctx.batch_sizes, ctx.reverse,
                                         (lora_a_ih, lora_b_ih, lora_a_hh, lora_b_hh),
                                         lora_needs, ctx.lora_scale)
            return (*grads,) + (None,) * 10
        if ctx.recompute:
            gates, hidden = reference.recompute_gates(
                x, ctx.batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_hr, y, cells, ctx.reverse)
        *grads, dgates = torch.ops.rnnfast.lstm_layer_backward(
            dy, dh_n, dc_n, x, ctx.batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
            hidden, *frozen, ctx.reverse, needs, any(lora_needs), ctx.x_shape, ctx.backend)
        grads = [g if need else None for g, need in zip(grads, needs)]
        lora_grads = [None] * 4
        if any(lora_needs):
            steps = make_steps(ctx.x_shape, ctx.batch_sizes, ctx.reverse)
            dgates = dgates.to(w_hh.dtype)
            if any(lora_needs[:2]):
                lora_grads[:2] = low_rank_grads(dgates, x.reshape(dgates.shape[0], -1),
                                                lora_a_ih, lora_b_ih, ctx.lora_scale, lora_needs[:2])
            if any(lora_needs[2:]):
                h_prev = prev_sequence(y.reshape(dgates.shape[0], -1), h0, steps)
                lora_grads[2:] = low_rank_grads(dgates, h_prev, lora_a_hh, lora_b_hh,
                                                ctx.lora_scale, lora_needs[2:])
        return (*grads, *lora_grads) + (None,) * 10
