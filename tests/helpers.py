"""Shared test utilities: build matching torch/rnnfast models, run forward+backward,
compare everything."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
import rnnfast.backends.triton
from rnnfast.backends import reference
from rnnfast.precision import allowance_used, magnitudes, max_errors, rule_violations


def in_interpreter(backend: str) -> bool:
    """The backend's kernels run in Triton's CPU interpreter (about 10 ms a step): tests
    that evaluate a layer hundreds of times (gradcheck) use their fast modes there."""
    return backend == "triton" and rnnfast.backends.triton.interpreting()


def twin_models(backend="reference", dtype=torch.float32, **config):
    """An nn.LSTM and an rnnfast.LSTM with identical weights."""
    ref = nn.LSTM(**config, dtype=dtype)
    ours = rnnfast.LSTM(**config, dtype=dtype, backend=backend)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_input(kind, seq, batch, size, dtype=torch.float32, batch_first=False, lengths=None,
               enforce_sorted=True):
    """kind: dense | unbatched | packed. Returns (a function making the module input,
    the leaf tensor it is made from); packing is redone per call so that each model
    gets its own graph."""
    if kind == "unbatched":
        x = torch.randn(seq, size, dtype=dtype, requires_grad=True)
        return (lambda: x), x
    shape = (batch, seq, size) if batch_first else (seq, batch, size)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    if kind == "dense":
        return (lambda: x), x
    return (lambda: pack_padded_sequence(x, lengths, batch_first=batch_first,
                                         enforce_sorted=enforce_sorted)), x


def run(model, make, hx, leaves):
    """Forward, a loss touching every output, backward; returns outputs and grads."""
    out, (h_n, c_n) = model(make(), hx)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    # Distinct weights per output element so every gradient path is exercised.
    loss = (data * torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)).sum() \
        + (h_n ** 2).sum() + (c_n * 0.5).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, list(leaves) + params, allow_unused=True)
    return [data, h_n, c_n], list(grads)


def layer_args(T, B, I, H, proj=0, bias=True, lengths=None, dtype=torch.float64, device="cpu", seed=0):
    """Arguments of one layer for a backend's forward: x (dense [T, B, I] or packed
    [N, I] for `lengths`), batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr; drawn in
    float64 from `seed`, then cast, so every dtype and device sees the same values."""
    g = torch.Generator().manual_seed(seed)
    P = proj or H
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device, dtype)  # noqa: E731
    if lengths is None:
        x, batch_sizes = mk(T, B, I), None
    else:
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])
        x = mk(int(batch_sizes.sum()), I)
    args = [x, batch_sizes, mk(B, P), mk(B, H), mk(4 * H, I, scale=0.4), mk(4 * H, P, scale=0.4)]
    args += [mk(4 * H, scale=0.5), mk(4 * H, scale=0.5)] if bias else [None, None]
    args += [mk(P, H, scale=0.4)] if proj else [None]
    return args


def upstream_grads(y, h_n, c_n, seed=1):
    """Random dy, dh_n, dc_n shaped (and placed) like the forward's outputs."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)  # noqa: E731
    return mk(y), mk(h_n), mk(c_n)


def run_layer(fwd, bwd, args, reverse, needs=None, frozen=(None,) * 5, upstream=None, save="all"):
    """One layer's forward `fwd` and backward `bwd` (a backend's contract) on `args`
    (layer_args): ((y, h_n, c_n), [dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr,
    dgates]), with upstream_grads of the outputs unless `upstream` is given."""
    x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = args
    needs = needs or [True, True, True, True, True, b_ih is not None, b_hh is not None,
                      w_hr is not None]
    y, h_n, c_n, gates, cells, hidden = fwd(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                            w_hr, reverse, save)
    if save == "cells":  # what the autograd core does before a recompute backward
        gates, hidden = reference.recompute_gates(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
                                                  w_hr, y, cells, reverse)
    dy, dh_n, dc_n = upstream or upstream_grads(y, h_n, c_n)
    grads, dgates = bwd(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates,
                        cells, hidden if w_hr is not None else None, reverse, list(needs),
                        list(frozen), list(x.shape))
    return (y, h_n, c_n), grads + [dgates]


def planned_launches(plans):
    """The record a CUDA-extension stand-in keeps of each launch that ran (direction,
    cluster, multicast, reg_k_tiles, reduce_ctas, pass_rows), sorted, for the plans of
    {direction: plan} (a reason in place of a plan launches nothing)."""
    return sorted({(d, p.cluster, p.multicast, p.reg_k_tiles, p.reduce_ctas, p.pass_rows)
                   for d, p in plans.items() if not isinstance(p, str)})


LAYER_RESULTS = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh",
                 "dW_hr", "dgates")  # run_layer's outputs, then its gradients


def results_vs_float64(args64, dtype, reverse, *fns):
    """(results, exact): for each (forward, backward) pair f of `fns`, {name: tensor} of
    every output and gradient of run_layer(*f) on `args64` (float64 layer_args) cast to
    `dtype`; and the same of the reference backend in float64 on args64. The upstream
    gradients are the same for all (rounded to dtype)."""
    outs64, grads64 = run_layer(reference.forward, reference.backward, args64, reverse)
    upstream = tuple(u.to(dtype) for u in upstream_grads(*outs64))
    low = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args64]
    exact = {n: t for n, t in zip(LAYER_RESULTS, [*outs64, *grads64]) if t is not None}
    results = []
    for pair in fns:
        outs, grads = run_layer(*pair, low, reverse, upstream=upstream)
        got = dict(zip(LAYER_RESULTS, [*outs, *grads]))
        results.append({n: got[n] for n in exact})
    return results, exact


def relabelled(units, outputs=None):
    """The reference backend on the same layer with its hidden units relabelled (new unit
    j is unit units[j]) and, with a projection, its output columns too (new column j is
    column outputs[j]; without one the outputs are the units): every sum over units or
    over the projection's outputs (the recurrent product, the projection, the weight
    gradients' rows and columns) runs in another order; results come back in the caller's
    labels. (forward, backward) with a backend's contract, no freeze masks."""
    hidden = len(units)
    rows = torch.cat([gate * hidden + units for gate in range(4)])  # the gate rows alike
    unit_back, row_back = units.argsort(), rows.argsort()

    def take(t, dim, index):  # t's entries `index` along dim; None stays None
        return t if t is None or index is None else t.index_select(dim, index.to(t.device))

    def columns(w_hr):  # the order of the layer's output columns (h, y)
        if w_hr is None:
            return units
        assert outputs is not None and len(outputs) == w_hr.shape[0], "a projection needs `outputs`"
        return outputs

    def forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save):
        out = columns(w_hr)
        y, h_n, c_n, gates, cells, hid = reference.forward(
            x, batch_sizes, take(h0, 1, out), take(c0, 1, units), take(w_ih, 0, rows),
            take(take(w_hh, 0, rows), 1, out), take(b_ih, 0, rows), take(b_hh, 0, rows),
            take(take(w_hr, 0, out), 1, units), reverse, save)
        back = out.argsort()
        # the saved gates, cells and hidden stay relabelled: only `backward` reads them
        return take(y, -1, back), take(h_n, 1, back), take(c_n, 1, unit_back), gates, cells, hid

    def backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
                 hid, reverse, needs, frozen, x_shape):
        assert frozen == [None] * 5
        out = columns(w_hr)
        back = out.argsort()
        grads, dgates = reference.backward(
            take(dy, -1, out), take(dh_n, 1, out), take(dc_n, 1, units), x, batch_sizes,
            take(h0, 1, out), take(c0, 1, units), take(w_ih, 0, rows),
            take(take(w_hh, 0, rows), 1, out), take(take(w_hr, 0, out), 1, units),
            take(y, -1, out), gates, cells, hid, reverse, needs, frozen, x_shape)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
        return [dx, take(dh0, 1, back), take(dc0, 1, unit_back), take(dw_ih, 0, row_back),
                take(take(dw_hh, 0, row_back), 1, back), take(db_ih, 0, row_back),
                take(db_hh, 0, row_back), take(take(dw_hr, 0, back), 1, unit_back)], \
            take(dgates, 1, row_back)

    return forward, backward


def weights_in_tf32(forward, backward):
    """The backend with its weights rounded to TF32 (10 mantissa bits), as a kernel whose
    fp32 products silently ran as one TF32 mma instead of three would see them."""
    def tf32(w):
        return None if w is None else ((w.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)

    def forward_tf32(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save):
        return forward(x, batch_sizes, h0, c0, tf32(w_ih), tf32(w_hh), b_ih, b_hh, tf32(w_hr),
                       reverse, save)

    def backward_tf32(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, *rest):
        return backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, tf32(w_ih), tf32(w_hh),
                        tf32(w_hr), *rest)

    return forward_tf32, backward_tf32


# The reference's own error in a dtype: the largest over its run and REFERENCE_ORDERS
# more runs with its hidden units (and a projection's outputs) relabelled (seeded). One
# order's largest error over a few hundred values is one draw: over summation orders
# alone it moved by up to 7x on a small fp32 layer with a projection (csrc/README.md,
# "The kernels on a CPU").
REFERENCE_ORDERS = 3


def relabellings(hidden, proj=0, count=REFERENCE_ORDERS, seed=1000):
    """`count` (forward, backward) of the reference backend in relabellings of its
    `hidden` units and, with a projection, its `proj` outputs (seeded from `seed`)."""
    def perm(n, k):
        return torch.randperm(n, generator=torch.Generator().manual_seed(k))

    return [relabelled(perm(hidden, seed + k), perm(proj, seed + 1000 + k) if proj else None)
            for k in range(count)]


def reference_orders(hidden, proj=0):
    """(forward, backward) of the reference backend in its own order and in REFERENCE_ORDERS
    relabellings of its `hidden` units and, with a projection, its `proj` outputs."""
    return [(reference.forward, reference.backward), *relabellings(hidden, proj)]


def rule_violations_vs_float64(args64, dtype, reverse, fns):
    """DESIGN.md §6's rule for run_layer(*fns) in `dtype` (rule_violations_of_results,
    the reference backend in `dtype` as the peer, in its REFERENCE_ORDERS). [] when within."""
    hidden, w_hr = args64[3].shape[1], args64[8]  # c0 [B, H], w_hr [P, H] or None
    orders = reference_orders(hidden, 0 if w_hr is None else w_hr.shape[0])
    (ours, *peers), exact = results_vs_float64(args64, dtype, reverse, fns, *orders)
    return rule_violations_of_results(ours, peers, exact, dtype)


def _errors_beside_peers(ours, peers, exact):
    """(names, ours' errors, the peers' largest errors, the exact tensors' magnitudes)."""
    names = list(exact)
    truth = [exact[n] for n in names]
    theirs = [max(errors) for errors in zip(*(max_errors([p[n] for n in names], truth) for p in peers))]
    return names, max_errors([ours[n] for n in names], truth), theirs, magnitudes(truth)


def rule_violations_of_results(ours, peers, exact, dtype):
    """DESIGN.md §6's rule, as rnnfast.precision and `verify` judge it, for results_vs_float64's
    {name: tensor} of a backend (`ours`) and of its peers (a list of such: runs of the
    reference in `dtype`): each error against `exact` beside the largest of the peers',
    the floor sized by the exact tensor's largest value."""
    names, mine, theirs, scales = _errors_beside_peers(ours, peers, exact)
    return rule_violations(mine, theirs, dtype, scales, names)


def allowance_used_of_results(ours, peers, exact, dtype):
    """How much of the rule's allowance `ours` uses, judged as rule_violations_of_results
    judges it (at most 1: within the rule)."""
    _, mine, theirs, scales = _errors_beside_peers(ours, peers, exact)
    return allowance_used(mine, theirs, dtype, scales)
