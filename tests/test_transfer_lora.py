"""Strategy 8 (LoRA part): adapters on W_ih / W_hh of rnnfast.LSTM. The adapted model
starts as the base, the factors get exactly the gradients autograd gives through
W + s * B @ A, the frozen base runs no weight-gradient GEMM and stays bit-identical,
and merge / unmerge / remove keep the function."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.testing import assert_close

import rnnfast
from conftest import BACKENDS
from rnnfast import transfer

TIGHT = dict(atol=1e-12, rtol=1e-10)


def _lstm(backend="reference", **extra):
    config = dict(input_size=5, hidden_size=8, num_layers=2, bidirectional=True, proj_size=3,
                  dtype=torch.float64)
    config.update(extra)
    return rnnfast.LSTM(**config, backend=backend)


def _packed_input(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    return lambda: pack_padded_sequence(x, [6, 2, 4], enforce_sorted=False)


def _loss(model, make):
    out, (h, c) = model(make())
    weights = torch.linspace(-1, 1, out.data.numel(), dtype=out.data.dtype).view_as(out.data)
    return (out.data * weights).sum() + h.square().sum() + c.sum()


def _randomise_b(lstm, seed=1):
    """B starts at zero; give it values so every gradient path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in transfer.lora_parameters(lstm):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def test_starts_as_the_base_model_with_the_base_frozen():
    base = _lstm()
    adapted = _lstm()
    adapted.load_state_dict(base.state_dict())
    transfer.add_lora(adapted, rank=2, alpha=4)
    make = _packed_input()
    assert_close(_loss(adapted, make), _loss(base, make), atol=0, rtol=0)
    trainable = sorted(n for n, p in adapted.named_parameters() if p.requires_grad)
    assert trainable and all(n.startswith("lora_") for n in trainable)
    assert len(trainable) == 2 * 2 * 2 * 2  # A, B x W_ih, W_hh x 2 layers x 2 directions
    assert adapted.lora_scale == 2.0
    assert adapted.lora_A_weight_ih_l1_reverse.shape == (2, 6)   # in = 2 directions x proj 3
    assert adapted.lora_B_weight_hh_l0.shape == (32, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("targets", [("weight_ih", "weight_hh"), ("weight_hh",)])
def test_factor_gradients_equal_autograd_through_the_merged_weight(backend, targets):
    """The hand-written dA, dB (no dW formed) against autograd through W + s * B @ A."""
    adapted = transfer.add_lora(_lstm(backend), rank=3, alpha=6, targets=targets)
    _randomise_b(adapted)
    make = _packed_input()
    loss = _loss(adapted, make)
    factors = transfer.lora_parameters(adapted)
    ours = torch.autograd.grad(loss, factors)

    # Reference: a plain LSTM whose weights are functions of the same factors.
    plain = _lstm("reference")
    names = [n for n, _ in plain.named_parameters()]
    base = {n: getattr(adapted, n).detach() for n in names}
    leaves = {n: p.detach().clone().requires_grad_() for n, p in adapted.named_parameters()
              if n.startswith("lora_")}
    weights = dict(base)
    for weight_name, (a_name, b_name) in adapted.lora.items():
        weights[weight_name] = base[weight_name] + adapted.lora_scale * (leaves[b_name] @ leaves[a_name])
    out, (h, c) = torch.func.functional_call(plain, weights, (make(),))
    lin = torch.linspace(-1, 1, out.data.numel(), dtype=out.data.dtype).view_as(out.data)
    ref_loss = (out.data * lin).sum() + h.square().sum() + c.sum()
    expected = torch.autograd.grad(ref_loss, [leaves[n] for n, p in adapted.named_parameters()
                                              if n.startswith("lora_")])
    assert_close(loss, ref_loss, **TIGHT)
    for got, want in zip(ours, expected):
        assert_close(got, want, **TIGHT)


def test_frozen_base_runs_no_weight_gradient_gemm_and_stays_bit_identical(needs_spy):
    calls = needs_spy
    lstm = transfer.add_lora(_lstm(dtype=torch.float32), rank=2)
    before = {n: p.detach().clone() for n, p in lstm.named_parameters() if not n.startswith("lora_")}
    optimizer = torch.optim.AdamW(lstm.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(6, 3, 5)
    for _ in range(3):
        optimizer.zero_grad()
        out, _ = lstm(x)
        out.square().sum().backward()
        optimizer.step()
    assert len(calls) == 3 * 4  # 2 layers x 2 directions per step
    for needs in calls:
        assert not (needs["dW_ih"] or needs["dW_hh"] or needs["db_ih"] or needs["db_hh"]
                    or needs["dW_hr"])
    for name, value in before.items():
        assert torch.equal(getattr(lstm, name), value), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in transfer.lora_parameters(lstm))


def test_merge_unmerge_and_remove_keep_the_function():
    lstm = transfer.add_lora(_lstm(), rank=2)
    _randomise_b(lstm)
    base_weights = {n: getattr(lstm, n).detach().clone() for n in lstm.lora}
    make = _packed_input()
    with torch.no_grad():
        adapted = _loss(lstm, make)
        transfer.merge_lora(lstm)
        assert_close(_loss(lstm, make), adapted, **TIGHT)
        transfer.merge_lora(lstm)  # merging twice is a no-op
        assert_close(_loss(lstm, make), adapted, **TIGHT)
        transfer.unmerge_lora(lstm)
        assert_close(_loss(lstm, make), adapted, **TIGHT)
        for name, value in base_weights.items():
            assert_close(getattr(lstm, name), value, **TIGHT)
        transfer.remove_lora(lstm)
        assert_close(_loss(lstm, make), adapted, **TIGHT)
    assert not any(n.startswith("lora_") for n, _ in lstm.named_parameters())
    torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3,
                  dtype=torch.float64).load_state_dict(lstm.state_dict())


def test_inference_without_grad_uses_the_adapters():
    lstm = transfer.add_lora(_lstm(), rank=2)
    _randomise_b(lstm)
    make = _packed_input()
    with_grad = _loss(lstm, make).detach()
    with torch.no_grad():
        assert_close(_loss(lstm, make), with_grad, **TIGHT)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="needs an rnnfast.LSTM"):
        transfer.add_lora(torch.nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        transfer.add_lora(_lstm(), rank=0)
    with pytest.raises(ValueError, match=r"targets must be among \('weight_ih', 'weight_hh'\), got \['weight_hr'\]"):
        transfer.add_lora(_lstm(), targets=["weight_hr"])
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist: the LSTM has 2 layers"):
        transfer.add_lora(_lstm(), layers=[5])
    lstm = transfer.add_lora(_lstm(), rank=2, layers=[0])
    with pytest.raises(ValueError, match="weight_ih_l0 already has a LoRA adapter"):
        transfer.add_lora(lstm, rank=2, layers=[0])
    with pytest.raises(RuntimeError, match=r"lora_ih must be \(A \[r, 5\], B \[32, r\]\)"):
        rnnfast.lstm_layer(torch.randn(3, 2, 5), torch.zeros(2, 8), torch.zeros(2, 8),
                           torch.randn(32, 5), torch.randn(32, 8),
                           lora_ih=(torch.randn(2, 4), torch.randn(32, 2)))
