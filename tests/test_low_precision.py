"""bf16/fp16: the error against a float64 run may be at most ~2x the error of
torch.nn.LSTM itself in the same precision (DESIGN.md §6)."""
import pytest
import torch

from conftest import BACKENDS
from helpers import run, twin_models
from rnnfast.backends.gemm import Product, widened_mm
from rnnfast.precision import magnitudes, max_errors, rule_violations


def _errors(model_dtype, backend, kind_lengths=None):
    torch.manual_seed(3)
    config = dict(input_size=13, hidden_size=20, num_layers=2, bidirectional=True)
    ref64, ours64 = twin_models(backend, torch.float64, **config)
    results = {}
    x64 = torch.randn(7, 3, 13, dtype=torch.float64)
    for name, model in (("torch", ref64), ("rnnfast", ours64)):
        low = model.to(model_dtype) if name == "rnnfast" else type(model)(**config, dtype=model_dtype)
        if name == "torch":
            low.load_state_dict(ref64.state_dict())
        x = x64.to(model_dtype).requires_grad_()
        outs, grads = run(low, lambda: x, None, [x])
        results[name] = (outs, grads)
        if name == "rnnfast":
            ours64.double()
    x = x64.clone().requires_grad_()
    exact = run(ref64, lambda: x, None, [x])
    truth = exact[0] + exact[1]
    errors = {name: max_errors(outs + grads, truth) for name, (outs, grads) in results.items()}
    return errors, magnitudes(truth)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_torch(backend, dtype):
    errors, scales = _errors(dtype, backend)
    assert rule_violations(errors["rnnfast"], errors["torch"], dtype, scales) == []
    for ours, theirs in zip(errors["rnnfast"], errors["torch"]):
        assert ours > 0 or theirs == 0  # really ran in low precision


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_dtypes_of_outputs_and_grads(backend, dtype):
    import rnnfast
    lstm = rnnfast.LSTM(5, 7, proj_size=3, dtype=dtype, backend=backend)
    x = torch.randn(4, 2, 5, dtype=dtype, requires_grad=True)
    out, (h, c) = lstm(x)
    assert out.dtype == h.dtype == c.dtype == dtype
    (out.float().sum() + c.float().sum()).backward()
    assert x.grad.dtype == dtype
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in lstm.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_widened_product_keeps_its_sums_unrounded(dtype):
    """gemm.Product with out_dtype=fp32, the reference's recurrent product in 16-bit
    layers: the fp32 sums of the 16-bit operands, as a fused kernel's accumulator holds
    them, not rounded to 16 bits on the way. widened_mm falls back to the widened 16-bit
    product where torch.mm takes no out_dtype (CPU tensors)."""
    g = torch.Generator().manual_seed(0)
    w, a = (torch.randn(n, 40, generator=g).to(dtype) for n in (96, 5))
    exact = a.double() @ w.double().t()
    wide = Product(w, 5, out_dtype=torch.float32)(a)
    assert wide.dtype == torch.float32
    assert (wide.double() - exact).abs().max() < 1e-6 * exact.abs().max()
    rounded = (a @ w.t()).double()  # what a 16-bit result keeps: far from that
    assert (rounded - exact).abs().max() > 1e-4 * exact.abs().max()
    assert torch.equal(widened_mm(a, w.t(), torch.float32), (a @ w.t()).float())
