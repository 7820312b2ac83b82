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

Batching rules for torch.func.vmap (per-sample gradients, ensembles, vmap over the
module) are registered for both ops and serve every backend. Native: when only x/h0/c0
(and, backward, the activations and incoming gradients) carry the vmapped dimension,
it is folded into the LSTM batch, one backend call for all of it; backward then takes
each vmapped element's weight gradients from its own rows of the gate gradients. Loop
(exact, V backend calls): a vmapped weight, mask or batch_sizes (vmap over parameters,
ensembles), or a weight_hr gradient (its reduction is internal to the backend's
backward). torch's older vmap, behind is_grads_batched, gradcheck's batched checks and
autograd.functional's vectorize=True, ignores registered rules and loops over the op
by itself.
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
    return _forward_impl(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save,
                         backend)


def _forward_impl(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, backend):
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients in GRAD_SLOTS order, then dL/d(gate pre-activations) [N, 4H] (the
    accumulation dtype) when want_dgates; a slot not needed comes back empty. A tuple
    rather than a list: the batching fallback of is_grads_batched (torch's legacy vmap,
    which ignores register_vmap) can loop over an op only if every return is a Tensor."""
    return _backward_impl(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates,
                          cells, hidden, frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh,
                          frozen_w_hr, reverse, needs, want_dgates, x_shape, backend)


def _backward_impl(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
                   hidden, frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr,
                   reverse, needs, want_dgates, x_shape, backend):
    grads, dgates = backends.get(backend).backward(
        dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
        reverse, needs, [frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr],
        x_shape)
    grads.append(dgates if want_dgates else None)
    return tuple(g if g is not None else gates.new_empty(0) for g in grads)


# Argument types the ops' direct call takes as they are: tensors that are no subclass, and
# the plain Python values of the ops' other arguments.
_PLAIN = frozenset((Tensor, torch.nn.Parameter, type(None), bool, int, float, str, list, tuple))
# The thread's usual dispatch include set (BackendSelect, ADInplaceOrView), as a number:
# where the set is this one, legacy vmap's VmapMode is not in it, with no repr to search.
_USUAL_INCLUDE = torch._C._dispatch_tls_local_include_set().raw_repr()


def plain_eager(args) -> bool:
    """Whether calling the implementation directly is what the custom op would do: no
    compile or export tracing, no functorch transform (vmap, grad), no legacy vmap
    (is_grads_batched: its fallback loops over the op), no dispatch mode (fake tensors,
    FlopCounterMode) and no tensor subclass among the arguments. Then the op's dispatch
    (~13 us a call, 10% of a B=1 T=100 H=64 forward) is skipped."""
    include = torch._C._dispatch_tls_local_include_set()
    return (not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()
            and torch._C._len_torch_dispatch_stack() == 0
            and (include.raw_repr() == _USUAL_INCLUDE or "VmapMode" not in repr(include))
            and all(type(a) in _PLAIN for a in args))


def run_forward(*args):
    """rnnfast::lstm_layer_forward(*args), called directly in plain eager mode."""
    return _forward_impl(*args) if plain_eager(args) else torch.ops.rnnfast.lstm_layer_forward(*args)


def run_backward(*args):
    """rnnfast::lstm_layer_backward(*args), called directly in plain eager mode."""
    return _backward_impl(*args) if plain_eager(args) else torch.ops.rnnfast.lstm_layer_backward(*args)


@lstm_layer_backward.register_fake
def _(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
      frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr,
      reverse, needs, want_dgates, x_shape, backend):
    dtype, four_h, out_size = w_hh.dtype, w_hh.shape[0], w_hh.shape[1]
    shapes = (x_shape, [c0.shape[0], out_size], list(c0.shape), [four_h, x_shape[-1]],
              [four_h, out_size], [four_h], [four_h], [out_size, four_h // 4])
    grads = [gates.new_empty(s, dtype=dtype) if need else gates.new_empty(0)
             for s, need in zip(shapes, needs)]
    return (*grads, gates.new_empty(gates.shape) if want_dgates else gates.new_empty(0))


def _fold(t: Optional[Tensor], dim: Optional[int], size: int, pos: int) -> Optional[Tensor]:
    """The vmapped dimension (at physical `dim`; None: not batched, then broadcast) of a
    tensor whose logical dim pos-1 counts batch entries or rows, merged into that dim as
    its minor index: [.., R, ..] -> [.., R*V, ..] with row r of element v at r*V + v.
    Folded like this the rows active at each step of a packed batch stay a prefix."""
    if t is None:
        return None
    if dim is None:
        t = t.unsqueeze(pos).expand(*t.shape[:pos], size, *t.shape[pos:])
    else:
        t = t.movedim(dim, pos)
    return t.flatten(pos - 1, pos).contiguous()


def _unfold(t: Tensor, size: int, pos: int) -> Tensor:
    """_fold's inverse on an op output: [.., R*V, ..] -> [.., R, V, ..] (vmapped dim at pos)."""
    return t.unflatten(pos - 1, (-1, size))


def _loop_rule(op, info, in_dims, args):
    """The batching rule that is exact for any in_dims: the op once per vmapped element."""
    results = [op(*(a if not isinstance(d, int) else a.select(d, i) for a, d in zip(args, in_dims)))
               for i in range(info.batch_size)]
    return [torch.stack(outs) for outs in zip(*results)], [0] * len(results[0])


@torch.library.register_vmap("rnnfast::lstm_layer_forward")
def _(info, in_dims, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, backend):
    args = (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, backend)
    if any(d is not None for d in (in_dims[1], *in_dims[4:9])):
        outs, dims = _loop_rule(torch.ops.rnnfast.lstm_layer_forward, info, in_dims, args)
        return tuple(outs), tuple(dims)
    size, pos = info.batch_size, x.dim() - (in_dims[0] is not None) - 1
    y, h_n, c_n, *saved = torch.ops.rnnfast.lstm_layer_forward(
        _fold(x, in_dims[0], size, pos), None if batch_sizes is None else batch_sizes * size,
        _fold(h0, in_dims[2], size, 1), _fold(c0, in_dims[3], size, 1),
        w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, backend)
    # Activations not saved come back as [0]: nothing to unfold.
    saved = [(_unfold(t, size, 1), 1) if t.dim() == 2 else (t, None) for t in saved]
    outs = (_unfold(y, size, pos), _unfold(h_n, size, 1), _unfold(c_n, size, 1),
            *(t for t, _ in saved))
    return outs, (pos, 1, 1, *(d for _, d in saved))


@torch.library.register_vmap("rnnfast::lstm_layer_backward")
def _(info, in_dims, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
      hidden, frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr,
      reverse, needs, want_dgates, x_shape, backend):
    frozen = [frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr]
    args = (dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
            *frozen, reverse, needs, want_dgates, x_shape, backend)
    if needs[7] or any(d is not None for d in (in_dims[4], *in_dims[7:10], *in_dims[14:19])):
        outs, dims = _loop_rule(torch.ops.rnnfast.lstm_layer_backward, info, in_dims, args)
        return tuple(outs), tuple(dims)
    size, pos = info.batch_size, len(x_shape) - 1
    dy, x, y = (_fold(t, in_dims[i], size, pos) for t, i in ((dy, 0), (x, 3), (y, 10)))
    dh_n, dc_n, h0, c0, gates, cells, hidden = (
        _fold(t, in_dims[i], size, 1) for t, i in
        ((dh_n, 1), (dc_n, 2), (h0, 5), (c0, 6), (gates, 11), (cells, 12), (hidden, 13)))
    batch_sizes = None if batch_sizes is None else batch_sizes * size
    folded_shape = list(x_shape)
    folded_shape[pos - 1] *= size
    # The recurrence runs folded; the weight gradients are per vmapped element, so they
    # come from the gate gradients here instead of the backend's reductions over all rows.
    *grads, dgates = torch.ops.rnnfast.lstm_layer_backward(
        dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, hidden,
        *frozen, reverse, needs[:3] + [False] * 5, True, folded_shape, backend)
    dtype = w_hh.dtype
    by_element = _unfold(dgates, size, 1)                    # [N, V, 4H]
    by_element_io = by_element.to(dtype)
    empty = dgates.new_empty(0)
    param_grads = [None] * 5
    if needs[3]:
        x_rows = _unfold(x.reshape(dgates.shape[0], -1), size, 1)
        param_grads[0] = torch.einsum("rvg,rvi->vgi", by_element_io, x_rows)
    if needs[4]:
        steps = make_steps(folded_shape, batch_sizes, reverse)
        h_prev = prev_sequence(y.reshape(dgates.shape[0], -1), h0, steps)
        param_grads[1] = torch.einsum("rvg,rvp->vgp", by_element_io, _unfold(h_prev, size, 1))
    if needs[5] or needs[6]:
        db = by_element.sum(0).to(dtype)
        param_grads[2] = db if needs[5] else None
        param_grads[3] = (db.clone() if needs[5] else db) if needs[6] else None
    param_grads = [g if g is None or mask is None else g.masked_fill(mask, 0)
                   for g, mask in zip(param_grads, frozen)]
    outs = [_unfold(grads[0], size, pos) if needs[0] else empty,
            *(_unfold(g, size, 1) if need else empty for g, need in zip(grads[1:3], needs[1:3])),
            *(empty if g is None else g for g in param_grads),
            _unfold(dgates, size, 1) if want_dgates else empty]
    dims = [pos if needs[0] else None, *(1 if need else None for need in needs[1:3]),
            *(None if g is None else 0 for g in param_grads), 1 if want_dgates else None]
    return tuple(outs), tuple(dims)


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
            "double backward (create_graph=True) through an rnnfast LSTM layer re-runs it "
            "from its input, which the forward keeps only when the input, the initial state, "
            "weight_ih or its LoRA factors need a gradient (a frozen weight_ih on an input "
            "that needs none saves no input). Build the LSTM with recompute=True, which "
            "always keeps it, or let the input require grad")
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
    re-runs the layer as differentiable torch ops from x and h0, so double backward
    works; that is why x and h0 are also kept whenever a gradient flows into the input
    or the state (an input-gradient penalty may differentiate it again), frozen weights
    or not: only a frozen W_ih on an input that needs no gradient keeps no x. With
    recompute=True it saves the cell states instead of the gates (a quarter of the
    bytes) plus what rebuilding the gates takes: x, y, h0 and the weights.

    LoRA: with low-rank factors A [r, in], B [4H, r] for W_ih and/or W_hh the layer runs
    with W + scale * B @ A, and backward takes dA and dB straight from the gate
    gradients (GEMMs of width r) instead of forming dW: a frozen base weight costs no
    weight-gradient GEMM.

    forward returns the saved activations as outputs too (non-differentiable), so that
    setup_context can keep them and torch.func can vmap forward, setup_context and
    backward with the ops' batching rules (generate_vmap_rule).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lora_a_ih, lora_b_ih, lora_a_hh,
                lora_b_hh, batch_sizes, reverse, frozen_w_ih, frozen_w_hh, frozen_b_ih,
                frozen_b_hh, frozen_w_hr, backend, recompute, lora_scale):
        w_ih = with_lora(w_ih, lora_a_ih, lora_b_ih, lora_scale)
        w_hh = with_lora(w_hh, lora_a_hh, lora_b_hh, lora_scale)
        return run_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                           "cells" if recompute else "all", backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lora_a_ih, lora_b_ih, lora_a_hh, lora_b_hh,
         batch_sizes, reverse, *frozen, backend, recompute, lora_scale) = inputs
        y, _, _, gates, cells, hidden = output
        ctx.mark_non_differentiable(gates, cells, hidden)
        needs = ctx.needs_input_grad
        need_dw_ih, need_dw_hh, need_dw_hr = needs[3], needs[4], needs[7]
        into_inputs = any(needs[:3])
        keep_x = need_dw_ih or any(needs[8:10]) or into_inputs
        keep_y = need_dw_hh or any(needs[10:12])
        keep_h0 = keep_x or keep_y
        if recompute:
            saved = (x, h0, y, None, cells, None)
        else:
            saved = (x if keep_x else None, h0 if keep_h0 else None, y if keep_y else None,
                     gates, cells, hidden if need_dw_hr else None)
        # Weights and biases are saved whether or not this backward reads them: they
        # exist anyway, and a double backward re-runs the layer from them. Under LoRA
        # these are the base weights: backward merges again (one rank-r GEMM), and a
        # double backward differentiates through the merge.
        ctx.save_for_backward(*saved, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lora_a_ih, lora_b_ih,
                              lora_a_hh, lora_b_hh, *frozen)
        ctx.batch_sizes = batch_sizes
        ctx.reverse = reverse
        ctx.x_shape = list(x.shape)
        ctx.backend = backend
        ctx.recompute = recompute
        ctx.lora_scale = lora_scale
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, *_activations):
        needs = list(ctx.needs_input_grad[:len(GRAD_SLOTS)])
        lora_needs = ctx.needs_input_grad[8:12]
        if dy is None and dh_n is None and dc_n is None:
            return (None,) * 22
        x, h0, y, gates, cells, hidden, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *rest = ctx.saved_tensors
        lora, frozen = rest[:4], rest[4:]
        if torch.is_grad_enabled():  # backward(create_graph=True): it must be differentiable
            grads = differentiable_grads((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), needs, frozen,
                                         (dy, dh_n, dc_n), ctx.batch_sizes, ctx.reverse, lora,
                                         lora_needs, ctx.lora_scale)
            return (*grads,) + (None,) * 10
        lora_a_ih, lora_b_ih, lora_a_hh, lora_b_hh = lora
        w_ih = with_lora(w_ih, lora_a_ih, lora_b_ih, ctx.lora_scale)
        w_hh = with_lora(w_hh, lora_a_hh, lora_b_hh, ctx.lora_scale)
        if ctx.recompute:
            gates, hidden = reference.recompute_gates(
                x, ctx.batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_hr, y, cells, ctx.reverse)
        *grads, dgates = run_backward(
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
