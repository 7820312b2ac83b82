"""Double backward (backward with create_graph=True, e.g. gradient penalties), which
cuDNN's LSTM refuses: the gradients are themselves differentiable, checked with float64
gradgradcheck for every backend, dense and packed, both directions, with projection."""
import pytest
import torch
from torch.autograd import gradgradcheck

import rnnfast
from conftest import BACKENDS
from helpers import in_interpreter

B, H, I, T = 2, 3, 4, 3


def _mk(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
def test_gradgradcheck_layer(backend, packed, reverse, proj):
    out = proj or H
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    x = _mk(5, I) if packed else _mk(T, B, I)
    inputs = [x, _mk(B, out), _mk(B, H), _mk(4 * H, I), _mk(4 * H, out), _mk(4 * H), _mk(4 * H)]
    inputs += [_mk(out, H)] if proj else []

    def layer(*args):
        return rnnfast.lstm_layer(*args, batch_sizes=batch_sizes, reverse=reverse, backend=backend)

    assert gradgradcheck(layer, inputs, eps=1e-6, atol=1e-6, fast_mode=in_interpreter(backend))


def _penalty(run, x, wrt):
    """The gradient-penalty pattern: dL/dx of L = |run(x)|^2 as a graph, and the
    gradients of |dL/dx|^2 with respect to `wrt`."""
    (dx,) = torch.autograd.grad(run(x).square().sum(), x, create_graph=True)
    return dx, torch.autograd.grad(dx.square().sum(), wrt)


def _reference_stack(x, weight):
    """Two layers of the out-of-place reference recurrence; weight(name) gives each
    parameter by its nn.LSTM name."""
    from rnnfast.backends.reference import differentiable_forward
    h = x
    for layer in range(2):
        zeros = torch.zeros(B, H, dtype=torch.float64)
        h, _, _ = differentiable_forward(h, None, zeros, zeros, *(weight(f"{n}_l{layer}") for n in
                                         ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                                         None, False)
    return h


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_through_the_module_matches_autograd_of_the_reference(backend):
    """d/dW of |dL/dx|^2 against the same quantity through the out-of-place reference
    recurrence."""
    torch.manual_seed(0)
    model = rnnfast.LSTM(I, H, num_layers=2, dtype=torch.float64, backend=backend)
    params = dict(model.named_parameters())
    x = _mk(T, B, I)
    dx, got = _penalty(lambda x: model(x)[0], x, list(params.values()))
    dx_ref, expected = _penalty(lambda x: _reference_stack(x, params.__getitem__), x,
                                list(params.values()))
    torch.testing.assert_close(dx, dx_ref)
    for got_grad, want in zip(got, expected):
        torch.testing.assert_close(got_grad, want)


SUBSETS = [(), ("bias_ih", "bias_hh"), ("weight_ih",), ("weight_hh",), ("weight_hr",),
           ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trainable", SUBSETS, ids=lambda names: "+".join(names) or "none")
def test_input_gradient_penalty_with_frozen_weights_matches_nn_lstm(backend, trainable):
    """The transfer-learning case: some or all weights frozen, a penalty on |dL/dx|^2
    differentiated again, against nn.LSTM (whose CPU path supports double backward)."""
    torch.manual_seed(0)
    ours = rnnfast.LSTM(I, H, num_layers=2, proj_size=2, dtype=torch.float64, backend=backend)
    theirs = ours.to_torch()
    results = []
    for model in (ours, theirs):
        for name, p in model.named_parameters():
            p.requires_grad_(name.rsplit("_l", 1)[0] in trainable)
        x = torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        wrt = [x] + [p for p in model.parameters() if p.requires_grad]
        results.append(_penalty(lambda x: model(x)[0], x, wrt))
    (dx, got), (dx_ref, expected) = results
    torch.testing.assert_close(dx, dx_ref)
    for got_grad, want in zip(got, expected):
        torch.testing.assert_close(got_grad, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_gradient_penalty_with_frozen_weights_matches_nn_lstmcell(backend):
    torch.manual_seed(0)
    ours = rnnfast.LSTMCell(I, H, dtype=torch.float64, backend=backend).requires_grad_(False)
    theirs = torch.nn.LSTMCell(I, H, dtype=torch.float64).requires_grad_(False)
    theirs.load_state_dict(ours.state_dict())
    results = []
    for cell in (ours, theirs):
        x = torch.randn(B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        results.append(_penalty(lambda x: cell(x)[0], x, [x]))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)


def test_double_backward_without_saved_input_says_why():
    """The one case the forward keeps no input for: a frozen weight_ih on an input that
    needs no gradient (DESIGN.md §4); recompute=True keeps it."""
    for recompute in (False, True):
        model = rnnfast.LSTM(I, H, dtype=torch.float64, recompute=recompute)
        rnnfast.freeze(model, params=["weight_ih_l0", "weight_hh_l0"])
        loss = model(_mk(T, B, I).detach())[0].square().sum()
        if recompute:
            (db,) = torch.autograd.grad(loss, model.bias_ih_l0, create_graph=True)
            torch.autograd.grad(db.square().sum(), model.bias_ih_l0)
            continue
        with pytest.raises(RuntimeError, match="keeps only when the input, the initial state, "
                                               "weight_ih or its LoRA factors need a gradient"):
            torch.autograd.grad(loss, model.bias_ih_l0, create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_gradgradcheck_layer_with_lora_factors(backend, packed):
    """Unmerged LoRA: the layer runs with W + s * B @ A, and the double backward
    differentiates through that merge, for the factors and the base weights alike."""
    rank, scale = 2, 0.5
    batch_sizes = torch.tensor([2, 2, 1]) if packed else None
    x = _mk(5, I) if packed else _mk(T, B, I)
    inputs = [x, _mk(B, H), _mk(B, H), _mk(4 * H, I), _mk(4 * H, H), _mk(4 * H), _mk(4 * H),
              _mk(rank, I), _mk(4 * H, rank), _mk(rank, H), _mk(4 * H, rank)]

    def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, a_ih, b_ih_lora, a_hh, b_hh_lora):
        return rnnfast.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=batch_sizes,
                                  backend=backend, lora_ih=(a_ih, b_ih_lora),
                                  lora_hh=(a_hh, b_hh_lora), lora_scale=scale)

    assert gradgradcheck(layer, inputs, eps=1e-6, atol=1e-6, fast_mode=in_interpreter(backend))


@pytest.mark.parametrize("backend, trainable", [
    *((backend, ()) for backend in BACKENDS), ("reference", (2, 5)), ("reference", (4, 7, 10))],
    ids=lambda v: v if isinstance(v, str) else "+".join(map(str, v)) or "input-only")
def test_gradgradcheck_with_lora_and_frozen_weights(backend, trainable):
    """Unmerged LoRA with subsets of the weights and factors frozen (the input always
    needs a gradient; trainable: indices into the layer's arguments below), with
    gradgradcheck's batched check on (fast mode, as in torch's own module tests). The
    double backward runs the same differentiable ops whatever the backend, so the Triton
    kernels (slow in the interpreter) get the input-only case."""
    rank, scale = 2, 0.5
    args = [_mk(T, B, I), _mk(B, H), _mk(B, H), _mk(4 * H, I), _mk(4 * H, H), _mk(4 * H),
            _mk(4 * H), _mk(rank, I), _mk(4 * H, rank), _mk(rank, H), _mk(4 * H, rank)]
    wanted = [0, *trainable]
    for i, t in enumerate(args):
        t.requires_grad_(i in wanted)

    def layer(*chosen):
        full = list(args)
        for i, t in zip(wanted, chosen):
            full[i] = t
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, a_ih, b_ih_lora, a_hh, b_hh_lora = full
        return rnnfast.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend=backend,
                                  lora_ih=(a_ih, b_ih_lora), lora_hh=(a_hh, b_hh_lora),
                                  lora_scale=scale)

    assert gradgradcheck(layer, [args[i] for i in wanted], eps=1e-6, atol=1e-6,
                         check_batched_grad=True, fast_mode=True)


def test_gradient_penalty_with_unmerged_lora_matches_the_merged_weights():
    """Through the module: a gradient penalty on a LoRA-adapted LSTM (base frozen) gives
    the adapters the gradients of the same penalty on W + s * B @ A written out."""
    from rnnfast import transfer
    torch.manual_seed(0)
    model = rnnfast.LSTM(I, H, num_layers=2, dtype=torch.float64)
    transfer.add_lora(model, rank=2, alpha=4)
    with torch.no_grad():  # B starts at zero; give the adapters a non-trivial delta
        for _, b_name in model.lora.values():
            getattr(model, b_name).normal_()
    adapters = [p for n, p in model.named_parameters() if n.startswith("lora_")]
    assert adapters and all(p.requires_grad == n.startswith("lora_")
                            for n, p in model.named_parameters())
    params = dict(model.named_parameters())

    def merged(name):
        if name not in model.lora:
            return params[name]
        a_name, b_name = model.lora[name]
        return params[name] + model.lora_scale * (params[b_name] @ params[a_name])

    x = _mk(T, B, I)
    dx, got = _penalty(lambda x: model(x)[0], x, adapters)
    dx_ref, expected = _penalty(lambda x: _reference_stack(x, merged), x, adapters)
    torch.testing.assert_close(dx, dx_ref)
    for got_grad, want in zip(got, expected):
        torch.testing.assert_close(got_grad, want)
