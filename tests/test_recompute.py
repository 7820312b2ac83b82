"""recompute=True: the forward keeps only the cell states, backward rebuilds the gate
activations; gradients are unchanged and the saved activations shrink as predicted."""
import pytest
import torch
from torch.testing import assert_close

import rnnfast
from rnnfast.precision import rule_violations
from rnnfast.profiling import saved_activation_bytes
from conftest import BACKENDS
from helpers import run


def _twins(backend, dtype, **config):
    normal = rnnfast.LSTM(**config, dtype=dtype, backend=backend)
    recompute = rnnfast.LSTM(**config, dtype=dtype, backend=backend, recompute=True)
    recompute.load_state_dict(normal.state_dict())
    return normal, recompute


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dense", "packed"])
def test_same_outputs_and_gradients(backend, kind):
    normal, recompute = _twins(backend, torch.float64, input_size=5, hidden_size=20,
                               num_layers=2, bidirectional=True, proj_size=7)
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    make = (lambda: x) if kind == "dense" else (
        lambda: torch.nn.utils.rnn.pack_padded_sequence(x, [4, 7, 2], enforce_sorted=False))
    outs_a, grads_a = run(normal, make, None, [x])
    outs_b, grads_b = run(recompute, make, None, [x])
    for a, b in zip(outs_a + grads_a, outs_b + grads_b):
        assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_16bit_gradients_stay_within_the_precision_rule(backend):
    """bf16: recomputed gates round differently, so compare both runs to float64."""
    config = dict(input_size=13, hidden_size=20, num_layers=2)
    exact, _ = _twins("reference", torch.float64, **config)
    x64 = torch.randn(7, 3, 13, dtype=torch.float64, requires_grad=True)
    expected = run(exact, lambda: x64, None, [x64])
    errors = []
    for recompute in (False, True):
        model = rnnfast.LSTM(**config, dtype=torch.bfloat16, backend=backend, recompute=recompute)
        model.load_state_dict(exact.state_dict())
        x = x64.detach().bfloat16().requires_grad_()
        outs, grads = run(model, lambda: x, None, [x])
        errors.append([(a.double() - b).abs().max().item()
                       for a, b in zip(outs + grads, expected[0] + expected[1])])
    recomputed, normal = errors[1], errors[0]
    assert rule_violations(recomputed, normal, torch.bfloat16) == []


def _saved_bytes(model, x):
    return saved_activation_bytes(lambda: model(x), model.parameters())[0]


@pytest.mark.parametrize("dtype,words_per_row", [
    # Bytes saved per row of a layer with I = H, in units of H: x, y, gates (4H, fp32),
    # cells (H, fp32) normally; x, y and cells with recompute.
    (torch.float32, (4 + 4 + 16 + 4, 4 + 4 + 4)),
    (torch.bfloat16, (2 + 2 + 16 + 4, 2 + 2 + 4)),
])
def test_saved_activations_shrink_as_predicted(dtype, words_per_row):
    T, B, H = 40, 8, 32
    normal, recompute = _twins("reference", dtype, input_size=H, hidden_size=H, num_layers=2)
    x = torch.randn(T, B, H, dtype=dtype)
    state = 2 * 2 * B * H * dtype.itemsize  # h0, c0 of both layers (hx=None: zeros)
    normal_bytes, recompute_bytes = _saved_bytes(normal, x), _saved_bytes(recompute, x)
    rows = 2 * T * B
    assert normal_bytes == rows * H * words_per_row[0] + state
    assert recompute_bytes == rows * H * words_per_row[1] + state
