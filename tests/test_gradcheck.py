"""float64 gradcheck of the hand-written backward, through the functional layer and
the module, dense and packed, both directions, with and without projection."""
import pytest
import torch
from torch.autograd import gradcheck as torch_gradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from conftest import BACKENDS
from helpers import in_interpreter

B, H, I, T = 3, 4, 5, 4


def gradcheck(fn, inputs, backend, **kwargs):
    """torch's gradcheck; for backends run in Triton's CPU interpreter (about 10 ms a
    step) in fast mode, which checks a random projection of the Jacobian instead of
    every column: the same analytic-vs-numeric test with far fewer evaluations."""
    return torch_gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=in_interpreter(backend),
                           **kwargs)


def _layer_args(proj, bias=True):
    out = 3 if proj else H
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)
    args = [mk(B, out), mk(B, H), mk(4 * H, I), mk(4 * H, out)]
    args += [mk(4 * H), mk(4 * H)] if bias else [None, None]
    args += [mk(out, H)] if proj else [None]
    return args


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_layer(backend, reverse, proj, packed):
    h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _layer_args(proj)
    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1])
        x = torch.randn(int(batch_sizes.sum()), I, dtype=torch.float64, requires_grad=True)
    else:
        batch_sizes = None
        x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *rest):
        w_hr = rest[0] if rest else None
        return rnnfast.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes=batch_sizes,
                                  reverse=reverse, backend=backend)

    inputs = [x, h0, c0, w_ih, w_hh, b_ih, b_hh] + ([w_hr] if proj else [])
    assert gradcheck(f, inputs, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_layer_without_bias(backend):
    h0, c0, w_ih, w_hh, _, _, _ = _layer_args(False, bias=False)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    f = lambda *a: rnnfast.lstm_layer(*a, backend=backend)
    assert gradcheck(f, [x, h0, c0, w_ih, w_hh], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_module(backend, packed):
    """Through several bidirectional layers with projection and unsorted packing."""
    lstm = rnnfast.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2,
                        dtype=torch.float64, backend=backend)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, B, H, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, *weights):
        inp = pack_padded_sequence(x, [2, 4, 3], enforce_sorted=False) if packed else x
        out, (h_n, c_n) = torch.func.functional_call(
            lstm, dict(zip([n for n, _ in lstm.named_parameters()], weights)), (inp, (h0, c0)))
        return (out.data if packed else out), h_n, c_n

    weights = [p.detach().clone().requires_grad_() for p in lstm.parameters()]
    assert gradcheck(f, [x, h0, c0, *weights], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_cell(backend):
    cell = rnnfast.LSTMCell(I, H, dtype=torch.float64, backend=backend)
    names = [n for n, _ in cell.named_parameters()]
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    f = lambda x, h, c, *w: torch.func.functional_call(cell, dict(zip(names, w)), (x, (h, c)))
    assert gradcheck(f, [x, h, c, *weights], backend)
