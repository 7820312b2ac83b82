"""Batching rules of rnnfast::lstm_layer_forward/backward: torch.func.vmap over the
layer and the module, per-sample gradients (vmap over grad), vmap over the parameters
(ensembles), is_grads_batched and vectorized jacobian/hessian; every result against
the same computation done one element at a time (with nn.LSTM where torch can)."""
import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import rnnfast
from conftest import BACKENDS
from rnnfast import backends

I, H, T, B, V = 4, 3, 5, 2, 3
F64 = dict(dtype=torch.float64)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


def _weights():
    """w_ih, w_hh, b_ih, b_hh of one layer."""
    return [_randn(4 * H, I, seed=1), _randn(4 * H, H, seed=2), _randn(4 * H, seed=3),
            _randn(4 * H, seed=4)]


@pytest.fixture
def backend_calls(monkeypatch):
    """How often each backend's forward and backward ran: {"forward": n, "backward": n}."""
    calls = {"forward": 0, "backward": 0}
    for name in BACKENDS:
        original = backends._REGISTRY[name]

        def counted(kind, function):
            def run(*args):
                calls[kind] += 1
                return function(*args)
            return run

        monkeypatch.setitem(backends._REGISTRY, name, dataclasses.replace(
            original, forward=counted("forward", original.forward),
            backward=counted("backward", original.backward)))
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_vmap_over_the_input_is_one_backend_call_and_exact(backend, packed, reverse, backend_calls):
    """The native rule: the vmapped dimension folded into the batch, packed sequences
    included (each element's rows interleaved so the active rows stay a prefix)."""
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    x = _randn(V, 5, I) if packed else _randn(V, T, B, I)
    h0, c0 = _randn(V, B, H, seed=7), _randn(B, H, seed=8)   # c0 not batched: broadcast
    weights = _weights()

    def layer(x, h0):
        return rnnfast.lstm_layer(x, h0, c0, *weights, batch_sizes=batch_sizes, reverse=reverse,
                                  backend=backend)

    with torch.no_grad():
        got = vmap(layer)(x, h0)
        assert backend_calls["forward"] == 1
        expected = [torch.stack(outs) for outs in zip(*(layer(x[v], h0[v]) for v in range(V)))]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_vmap_over_the_backward_gives_each_element_its_own_weight_gradients(
        backend, packed, masked, backend_calls):
    """vmap over torch.autograd.grad (first order): the native backward rule runs the
    recurrence once, folded, and takes each element's weight gradients from its own
    gate gradients; element freeze masks zero their entries in each."""
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    x = _randn(5, I) if packed else _randn(T, B, I)
    x.requires_grad_()
    h0 = _randn(B, H, seed=7).requires_grad_()
    weights = [w.requires_grad_() for w in _weights()]
    frozen = (torch.rand(4 * H, I, generator=torch.Generator().manual_seed(9)) < 0.5, None,
              torch.arange(4 * H) < H, None, None) if masked else (None,) * 5
    y, h_n, c_n = rnnfast.lstm_layer(x, h0, h0.detach(), *weights, batch_sizes=batch_sizes,
                                     frozen=frozen, backend=backend)
    leaves = [x, h0, *weights]
    grad_outputs = (_randn(V, *y.shape, seed=10), _randn(V, *h_n.shape, seed=11))

    def vjp(dy, dh_n):
        return torch.autograd.grad((y, h_n), leaves, (dy, dh_n), retain_graph=True)

    got = vmap(vjp)(*grad_outputs)
    assert backend_calls["backward"] == 1
    expected = [torch.stack(g) for g in zip(*(vjp(*(g[v] for g in grad_outputs)) for v in range(V)))]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if masked:
        assert not got[2][:, frozen[0]].any() and not got[4][:, frozen[2]].any()


def _stacked(dicts):
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}


def _loss(module):
    def loss(params, x):
        out, (h, c) = functional_call(module, params, (x,))
        return out.square().sum() + h.sum() + c.sin().sum()
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2)],
                         ids=["1-layer", "2-layer-bidirectional-proj"])
def test_per_sample_gradients_match_nn_lstm_one_sample_at_a_time(backend, config):
    """vmap(grad(...)) over a batch of unbatched sequences, the way per-sample gradients
    (DP-SGD, influence functions) are computed; nn.LSTM cannot be vmapped (aten::lstm
    has no batching rule), so it runs one sample at a time."""
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, **config, **F64)
    ours = rnnfast.LSTM.from_torch(theirs, backend=backend)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x = _randn(V, T, I)
    got = vmap(grad(_loss(ours)), in_dims=(None, 0))(params, x)
    expected = _stacked([grad(_loss(theirs))(params, x[v]) for v in range(V)])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_the_parameters_of_an_ensemble(backend, backend_calls):
    """Batched weights take the loop rule: one backend call per ensemble member."""
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, **F64)
    ours = rnnfast.LSTM.from_torch(theirs, backend=backend)
    members = [{k: v.detach() + 0.1 * m for k, v in ours.named_parameters()} for m in range(V)]
    x = _randn(T, B, I)
    run = lambda module: lambda p: functional_call(module, p, (x,))[0]  # noqa: E731
    with torch.no_grad():
        got = vmap(run(ours))(_stacked(members))
    assert backend_calls["forward"] == V
    torch.testing.assert_close(got, torch.stack([run(theirs)(m) for m in members]))
    got_grads = vmap(grad(_loss(ours)), in_dims=(0, None))(_stacked(members), x)
    expected = _stacked([grad(_loss(theirs))(m, x) for m in members])
    for name in expected:
        torch.testing.assert_close(got_grads[name], expected[name], msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_is_grads_batched_and_vectorized_jacobian(backend):
    """torch's older vmap (is_grads_batched, autograd.functional with vectorize=True)
    ignores register_vmap and loops over the op itself: still exact."""
    torch.manual_seed(0)
    model = rnnfast.LSTM(I, H, proj_size=2, **F64, backend=backend)
    x = _randn(T, B, I).requires_grad_()
    out, _ = model(x)
    grad_outputs = _randn(V, *out.shape, seed=1)
    got = torch.autograd.grad(out, [x, *model.parameters()], grad_outputs, retain_graph=True,
                              is_grads_batched=True)
    expected = [torch.stack(g) for g in zip(*(
        torch.autograd.grad(out, [x, *model.parameters()], v, retain_graph=True)
        for v in grad_outputs))]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    f = lambda x: model(x)[0].sin().sum(0)  # noqa: E731
    small = _randn(3, 1, I, seed=2)
    jacobian = torch.autograd.functional.jacobian
    torch.testing.assert_close(jacobian(f, small, vectorize=True), jacobian(f, small))


def test_vectorized_hessian():
    """A batched backward through the double-backward graph (the same differentiable ops
    on every backend, so the reference backend stands for all)."""
    torch.manual_seed(0)
    model = rnnfast.LSTM(I, H, proj_size=2, **F64, backend="reference")
    g = lambda x: model(x)[0].sin().sum()  # noqa: E731
    small = _randn(3, 1, I, seed=2)
    hessian = torch.autograd.functional.hessian
    torch.testing.assert_close(hessian(g, small, vectorize=True), hessian(g, small))
