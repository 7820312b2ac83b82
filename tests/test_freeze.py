"""Freeze masks: selectors, exact zero gradients, bit-identical weights through
optimizer steps, skipped gradient work and saved activations."""
import pytest
import torch
from torch import nn
from torch.testing import assert_close

import rnnfast
from rnnfast.freeze import frozen_mask
from rnnfast.profiling import saved_activation_bytes
from conftest import NEEDS

I, H, T, B = 5, 6, 7, 3


def _model(**kw):
    torch.manual_seed(0)
    return rnnfast.LSTM(I, H, num_layers=kw.pop("num_layers", 3), **kw)


def _grads(model, x=None):
    x = torch.randn(T, B, I) if x is None else x
    model.zero_grad(set_to_none=True)
    out, (h, c) = model(x)
    (out.sin().sum() + h.sum() + c.sum()).backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def test_freeze_layers_sets_requires_grad_and_keeps_other_grads_exact():
    full, part = _model(bidirectional=True), _model(bidirectional=True)
    rnnfast.freeze(part, layers=[0, 1])
    x = torch.randn(T, B, I)
    g_full, g_part = _grads(full, x), _grads(part, x)
    for name, p in part.named_parameters():
        if "_l2" in name:
            assert p.requires_grad
            assert_close(g_part[name], g_full[name], rtol=0, atol=0)
        else:
            assert not p.requires_grad and g_part[name] is None
    assert not part._buffers  # whole parameters need no masks


@pytest.mark.parametrize("selector", [
    dict(layers=[1], gates="if"),
    dict(layers=[2], units=[0, 3]),
    dict(gates="o"),
    dict(params=["weight_hh_l1"], units=torch.tensor([True, False, False, False, False, True])),
    dict(mask={"weight_ih_l0": torch.rand(4 * H, I) < 0.5, "bias_hh_l2": torch.rand(4 * H) < 0.5}),
])
def test_partial_freeze_zeroes_exactly_the_frozen_entries(selector):
    full, part = _model(), _model()
    rnnfast.freeze(part, **selector)
    x = torch.randn(T, B, I)
    g_full, g_part = _grads(full, x), _grads(part, x)
    masked = 0
    for name, p in part.named_parameters():
        mask = frozen_mask(part, name)
        if mask is None:
            assert p.requires_grad
            assert torch.equal(g_part[name], g_full[name])
            continue
        masked += 1
        assert mask.any() and not mask.all()
        assert torch.all(g_part[name][mask] == 0)
        assert torch.equal(g_part[name][~mask], g_full[name][~mask])
    assert masked > 0


def test_gate_and_unit_rows_are_the_documented_ones():
    m = _model(num_layers=1)
    rnnfast.freeze(m, gates="f", units=[2])
    mask = frozen_mask(m, "weight_ih_l0")
    assert mask.nonzero()[:, 0].unique().tolist() == [H + 2]  # forget-gate row of unit 2
    rnnfast.unfreeze(m)
    rnnfast.freeze(m, units=1)
    rows = frozen_mask(m, "bias_ih_l0").nonzero().flatten().tolist()
    assert rows == [1, H + 1, 2 * H + 1, 3 * H + 1]


def test_unfreeze_undoes_freeze():
    m = _model()
    rnnfast.freeze(m, layers=[0])
    rnnfast.freeze(m, layers=[1], gates="ig")
    rnnfast.unfreeze(m, layers=[1], gates="i")
    assert frozen_mask(m, "weight_hh_l1").view(4, H, -1)[:, 0, 0].tolist() == [False, False, True, False]
    rnnfast.unfreeze(m, layers=[1], gates="g")
    rnnfast.unfreeze(m, params=["weight_ih_l0"])
    rnnfast.unfreeze(m, layers=[0], units=[1])  # partial unfreeze of a wholly frozen parameter
    assert frozen_mask(m, "weight_hh_l0").view(4, H, -1)[:, :, 0].sum() == 4 * (H - 1)
    rnnfast.unfreeze(m)
    assert all(p.requires_grad for p in m.parameters()) and not m._buffers


def _train(model, optimizer, steps=3):
    for _ in range(steps):
        optimizer.zero_grad()
        out, (h, c) = model(torch.randn(T, B, I))
        (out.square().sum() + c.sum()).backward()
        optimizer.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.5),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1, foreach=False),
])
def test_frozen_entries_bit_identical_after_optimizer_steps(make_optimizer):
    m = _model()
    mask = torch.rand(4 * H, H) < 0.3
    rnnfast.freeze(m, layers=[0])
    rnnfast.freeze(m, layers=[1], gates="if")
    rnnfast.freeze(m, layers=[2], units=[1, 4])
    rnnfast.freeze(m, mask={"weight_hh_l2": mask})
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    _train(m, make_optimizer(m.parameters()))
    for name, p in m.named_parameters():
        frozen = frozen_mask(m, name)
        if frozen is None:
            frozen = torch.full(p.shape, not p.requires_grad)
        assert torch.equal(p.detach()[frozen], before[name][frozen]), name
        if not frozen.all():
            assert not torch.equal(p.detach()[~frozen], before[name][~frozen]), f"{name} did not train"


def test_masks_follow_dtype_and_device_moves_and_stay_out_of_state_dict():
    m = _model()
    rnnfast.freeze(m, layers=[1], gates="g")
    m.double()
    assert frozen_mask(m, "weight_ih_l1").dtype == torch.bool
    assert not any(k.startswith("_frozen") for k in m.state_dict())
    before = m.weight_ih_l1.detach().clone()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.5)
    opt.zero_grad()
    m(torch.randn(T, B, I, dtype=torch.float64))[0].sum().backward()
    opt.step()
    mask = frozen_mask(m, "weight_ih_l1")
    assert torch.equal(m.weight_ih_l1.detach()[mask], before[mask])


def test_selector_errors():
    m = _model()
    with pytest.raises(ValueError, match=r"gates must be letters out of 'ifgo'.*'x'"):
        rnnfast.freeze(m, gates="x")
    with pytest.raises(ValueError, match=r"layers must be integers in \[0, 3\), got 3"):
        rnnfast.freeze(m, layers=[3])
    with pytest.raises(ValueError, match=r"units must be in \[0, 6\), got \[6\]"):
        rnnfast.freeze(m, units=[6])
    with pytest.raises(KeyError, match="no parameter named 'weight_xx'"):
        rnnfast.freeze(m, params=["weight_xx"])
    with pytest.raises(ValueError, match=r"must have the parameter's shape \(24, 5\), got \(3,\)"):
        rnnfast.freeze(m, mask={"weight_ih_l0": torch.zeros(3, dtype=torch.bool)})
    model = nn.Sequential(nn.Linear(3, 5), m)
    with pytest.raises(TypeError, match="pass the LSTM submodule"):
        rnnfast.freeze(model, layers=[0])
    with pytest.raises(TypeError, match="partial masks on 'weight' need an rnnfast"):
        rnnfast.freeze(model, mask={"0.weight": torch.eye(5, 3, dtype=torch.bool)})
    rnnfast.freeze(model, params=["0.weight", "1.bias_ih_l0"])  # whole params of any module
    assert not model[0].weight.requires_grad and not m.bias_ih_l0.requires_grad


def test_trainable_summary_counts():
    m = _model(num_layers=2)
    rnnfast.freeze(m, layers=[0])
    rnnfast.freeze(m, layers=[1], gates="i")
    summary = rnnfast.trainable_summary(nn.Sequential(m, nn.Linear(H, 2)))
    per_layer1 = 4 * H * (H + H + 2)
    assert summary.total == 2 * per_layer1 - 4 * H * (H - I) + (2 * H + 2)
    assert summary.trainable == per_layer1 * 3 // 4 + 2 * H + 2
    label, trainable, total, gates = summary.layers[1]
    assert label == "0 layer 1" and gates["i"] == (0, H * (H + H + 2)) and gates["f"][0] == gates["f"][1]
    text = str(summary)
    assert "0.weight_hh_l1" in text and "  0.0%" in text and "trainable)" in text


# ---- what backward computes and what forward saves ----



@pytest.mark.parametrize("frozen_param,x_grad,hx_grad", [
    ("weight_ih_l0", False, False), ("weight_hh_l0", True, False), ("bias_ih_l0", False, True),
    ("bias_hh_l0", True, True), ("weight_hr_l0", False, False), (None, False, False)])
def test_backward_skips_each_gradient_not_needed(needs_spy, frozen_param, x_grad, hx_grad):
    m = rnnfast.LSTM(I, H, proj_size=2, backend="reference")
    if frozen_param:
        rnnfast.freeze(m, params=[frozen_param])
    x = torch.randn(T, B, I, requires_grad=x_grad)
    h0 = torch.randn(1, B, 2, requires_grad=hx_grad)
    c0 = torch.randn(1, B, H, requires_grad=hx_grad)
    out, _ = m(x, (h0, c0))
    out.sum().backward()
    expected = dict(zip(NEEDS, [x_grad, hx_grad, hx_grad, True, True, True, True, True]))
    if frozen_param:
        expected[{"weight_ih_l0": "dW_ih", "weight_hh_l0": "dW_hh", "bias_ih_l0": "db_ih",
                  "bias_hh_l0": "db_hh", "weight_hr_l0": "dW_hr"}[frozen_param]] = False
    assert needs_spy == [expected]


def _saved_bytes(model, x):
    """Bytes of activations autograd saves for backward (parameters and buffers excluded)."""
    total, (out, _) = saved_activation_bytes(
        lambda: model(x), list(model.parameters()) + list(model.buffers()))
    return total, out


def test_frozen_lower_layers_save_at_most_40_percent_of_activations():
    torch.manual_seed(0)
    full = rnnfast.LSTM(16, 32, num_layers=3)
    part = rnnfast.LSTM(16, 32, num_layers=3)
    rnnfast.freeze(part, layers=[0, 1])
    x = torch.randn(50, 8, 16)
    full_bytes, _ = _saved_bytes(full, x)
    part_bytes, out = _saved_bytes(part, x)
    assert full_bytes > 0 and part_bytes <= 0.40 * full_bytes, (part_bytes, full_bytes)
    out.sum().backward()  # and the top layer still trains
    assert part.weight_hh_l2.grad is not None and part.weight_hh_l0.grad is None


def test_frozen_input_weights_do_not_save_the_input():
    m = rnnfast.LSTM(I, H)
    rnnfast.freeze(m, params=["weight_ih_l0"])
    x = torch.randn(T, B, I)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.data_ptr()) or t, lambda t: t):
        m(x)
    assert x.data_ptr() not in seen
    rnnfast.unfreeze(m)
    seen.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.data_ptr()) or t, lambda t: t):
        m(x)
    assert x.data_ptr() in seen


def test_inference_saves_nothing():
    m = rnnfast.LSTM(I, H, num_layers=2)
    with torch.no_grad():
        total, out = _saved_bytes(m, torch.randn(T, B, I))
    assert total == 0 and out.grad_fn is None
