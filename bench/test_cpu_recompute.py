"""CPU: what recompute=True costs and saves at PyTorch's fastrnns size (T=100, B=64,
I=H=512, one layer): forward+backward time against torch.nn.LSTM and plain rnnfast
in the same run, and the bytes each keeps for backward (saved-tensor hooks).

    python -m pytest bench/test_cpu_recompute.py --benchmark-json=out.json
"""
import pytest
import torch

import rnnfast
from rnnfast.profiling import saved_activation_bytes

T, B, I, H = 100, 64, 512, 512
ROTATE = 3


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    return {"torch": ref,
            "rnnfast": rnnfast.LSTM.from_torch(ref, backend="reference"),
            "rnnfast-recompute": rnnfast.LSTM.from_torch(ref, backend="reference", recompute=True)}


@pytest.fixture(scope="module")
def inputs():
    return [torch.randn(T, B, I, requires_grad=True) for _ in range(ROTATE)]


@pytest.mark.parametrize("provider", ["torch", "rnnfast", "rnnfast-recompute"])
def test_fwd_bwd(benchmark, models, inputs, provider):
    benchmark.group = f"recompute T={T} B={B} I=H={H} fp32 fwd+bwd"
    model, turn = models[provider], iter(range(10**9))
    if provider != "torch":  # nn.LSTM on CPU saves opaque oneDNN workspaces: not comparable
        benchmark.extra_info["saved_bytes_excluding_input"] = saved_activation_bytes(
            lambda: model(inputs[0]), [*model.parameters(), inputs[0]])[0]

    def step():
        x = inputs[next(turn) % ROTATE]
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()

    benchmark.pedantic(step, rounds=12, warmup_rounds=2)
