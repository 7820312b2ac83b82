"""CPU: rnnfast.LSTM against torch.nn.LSTM at PyTorch's fastrnns default size
(T=100, B=64, I=H=512, fp32), forward+backward and inference forward.

    python -m pytest bench/test_cpu_fastrnns.py --benchmark-json=out.json

The target (issue 2): forward+backward no slower than 1.2x nn.LSTM.
"""
import pytest
import torch

import rnnfast

T, B, I, H = 100, 64, 512, 512
ROTATE = 3  # inputs rotate so no round sees warm caches from the same tensor


def _models():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    return {"torch": ref, "rnnfast": rnnfast.LSTM.from_torch(ref, backend="reference")}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.fixture(scope="module")
def inputs():
    return [torch.randn(T, B, I, requires_grad=True) for _ in range(ROTATE)]


@pytest.mark.parametrize("provider", ["torch", "rnnfast"])
def test_fwd_bwd(benchmark, models, inputs, provider):
    benchmark.group = f"fastrnns T={T} B={B} I=H={H} fp32 fwd+bwd"
    model, turn = models[provider], iter(range(10**9))

    def step():
        x = inputs[next(turn) % ROTATE]
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()

    benchmark.pedantic(step, rounds=12, warmup_rounds=2)


@pytest.mark.parametrize("provider", ["torch", "rnnfast"])
def test_fwd_inference(benchmark, models, inputs, provider):
    benchmark.group = f"fastrnns T={T} B={B} I=H={H} fp32 forward (no grad)"
    model, turn = models[provider], iter(range(10**9))

    def step():
        with torch.no_grad():
            model(inputs[next(turn) % ROTATE])

    benchmark.pedantic(step, rounds=12, warmup_rounds=2)
