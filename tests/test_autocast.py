"""torch.autocast: rnnfast.LSTM runs in the autocast dtype like torch.nn.LSTM (bf16 on
CPU here; fp16/bf16 on CUDA when present), fp32 parameters get fp32 gradients, and a
GradScaler step works."""
import copy

import pytest
import torch

import rnnfast
from conftest import BACKENDS, CUDA_BACKENDS, kernels_must_run, requires_cuda
from helpers import twin_models
from rnnfast.precision import magnitudes, max_errors, rule_violations

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def _errors_vs_float64(device, dtype, backend):
    """Max error of outputs and weight gradients under autocast, for nn.LSTM and
    rnnfast, against the same model run in float64 without autocast; and the exact
    tensors' magnitudes (the rule's scales)."""
    torch.manual_seed(0)
    config = dict(input_size=6, hidden_size=10, num_layers=2, bidirectional=True)
    ref, ours = twin_models(backend, **config)
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(7, 3, 6, device=device)
    exact_model = rnnfast.LSTM(**config, dtype=torch.float64, device=device, backend="reference")
    exact_model.load_state_dict(ref.state_dict())
    exact_out = exact_model(x.double())[0]
    exact_grads = torch.autograd.grad(exact_out.square().sum(), list(exact_model.parameters()))
    errors = {}
    for name, model in (("torch", ref), ("rnnfast", ours)):
        try:
            with torch.autocast(device, dtype=dtype):
                out, (h, c) = model(x)
            autocast = True
        except RuntimeError as error:
            if name != "torch" or "primitive descriptor" not in str(error):
                raise
            autocast = False  # oneDNN has no bf16 LSTM on a CPU without AVX-512
        if name == "torch" and (not autocast or out.dtype != dtype):
            # Where nn.LSTM refuses autocast, or runs it in another dtype (cuDNN's
            # autocast casts RNNs to fp16 whatever dtype was asked: torch's
            # AutocastRNN.cpp), the model cast to `dtype` computes what autocast should.
            model = copy.deepcopy(model).to(dtype)
            out, (h, c) = model(x.to(dtype))
            autocast = False
        assert out.dtype == h.dtype == c.dtype == dtype, name
        grads = torch.autograd.grad(out.float().square().sum(), list(model.parameters()))
        assert all(g.dtype == (torch.float32 if autocast else dtype) for g in grads), name
        errors[name] = max_errors([out, *grads], [exact_out, *exact_grads])
    return errors, magnitudes([exact_out, *exact_grads])


@pytest.mark.parametrize("backend,device,dtype", [
    *((backend, "cpu", torch.bfloat16) for backend in BACKENDS),  # cpu: its bf16 kernels
    # where the CPU has AVX512_BF16, else its fp32 ones widened
    *(pytest.param(backend, "cuda", dtype, marks=[requires_cuda, kernels_must_run])
      for backend in CUDA_BACKENDS for dtype in (torch.float16, torch.bfloat16))])
def test_autocast_runs_in_low_precision_like_nn_lstm(backend, device, dtype):
    errors, scales = _errors_vs_float64(device, dtype, backend)
    assert rule_violations(errors["rnnfast"], errors["torch"], dtype, scales) == []
    assert all(ours > 1e-6 for ours in errors["rnnfast"])  # really ran in low precision


@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_step(device):
    torch.manual_seed(0)
    model = rnnfast.LSTM(4, 8, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device)
    before = [p.detach().clone() for p in model.parameters()]
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=dtype):
        out, _ = model(torch.randn(5, 2, 4, device=device))
        loss = out.float().square().mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() and not torch.equal(p, b)
               for p, b in zip(model.parameters(), before))
