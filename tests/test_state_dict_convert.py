"""state_dicts load both ways between torch.nn.LSTM and rnnfast.LSTM, seeded
construction matches torch's init bit for bit, freeze masks stay out of the
state_dict, and from_torch / convert swap modules in without changing what a model
computes."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import rnnfast

I, H, P, B, T = 5, 7, 3, 3, 4

CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2),
    dict(num_layers=3),
    dict(num_layers=1, bias=False),
    dict(num_layers=2, bias=False, bidirectional=True),
    dict(num_layers=1, bidirectional=True),
    dict(num_layers=2, proj_size=P),
    dict(num_layers=3, proj_size=P, bidirectional=True, bias=False),
    dict(num_layers=2, batch_first=True),
    dict(num_layers=2, batch_first=True, bidirectional=True, proj_size=P),
]


def _ids(config):
    return "-".join(f"{k}={v}" for k, v in config.items())


def _input(config, dtype=torch.float32):
    shape = (B, T, I) if config.get("batch_first") else (T, B, I)
    return torch.randn(shape, dtype=dtype)


def _assert_same_outputs(a, b, x, hx=None):
    out_a, (h_a, c_a) = a(x, hx)
    out_b, (h_b, c_b) = b(x, hx)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(h_a, h_b)
    torch.testing.assert_close(c_a, c_b)


def _assert_same_params(a: nn.Module, b: nn.Module, check_requires_grad=True):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(pa) == list(pb)
    for name in pa:
        assert pa[name].dtype == pb[name].dtype, name
        assert torch.equal(pa[name], pb[name]), name
        if check_requires_grad:
            assert pa[name].requires_grad == pb[name].requires_grad, name


# ---------------------------------------------------------------- state_dict round trips

@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_torch_state_dict_loads_into_rnnfast(config):
    ref = nn.LSTM(I, H, **config)
    ours = rnnfast.LSTM(I, H, **config)
    assert not torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)  # differently initialised
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same_params(ref, ours)
    _assert_same_outputs(ref, ours, _input(config))


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_rnnfast_state_dict_loads_into_torch(config):
    ours = rnnfast.LSTM(I, H, **config)
    ref = nn.LSTM(I, H, **config)
    assert not torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)
    result = ref.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same_params(ours, ref)
    _assert_same_outputs(ref, ours, _input(config))


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_state_dict_keys_and_shapes_identical(config):
    ref_sd = nn.LSTM(I, H, **config).state_dict()
    our_sd = rnnfast.LSTM(I, H, **config).state_dict()
    assert list(our_sd) == list(ref_sd)
    for key in ref_sd:
        assert our_sd[key].shape == ref_sd[key].shape, key
        assert our_sd[key].dtype == ref_sd[key].dtype, key


def test_cell_state_dict_round_trip():
    for bias in (True, False):
        ref = nn.LSTMCell(I, H, bias=bias)
        ours = rnnfast.LSTMCell(I, H, bias=bias)
        assert list(ours.state_dict()) == list(ref.state_dict())
        ours.load_state_dict(ref.state_dict(), strict=True)
        _assert_same_params(ref, ours)
        back = nn.LSTMCell(I, H, bias=bias)
        back.load_state_dict(ours.state_dict(), strict=True)
        _assert_same_params(ours, back)


def test_state_dict_with_wrong_shape_refuses_to_load():
    ours = rnnfast.LSTM(I, H, num_layers=2)
    sd = nn.LSTM(I, H + 1, num_layers=2).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch for weight_ih_l0"):
        ours.load_state_dict(sd, strict=True)
    sd = nn.LSTM(I, H, num_layers=3).state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key\\(s\\) in state_dict: .*weight_ih_l2"):
        ours.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------- seeded init

@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_seed_same_weights_lstm(config, dtype):
    torch.manual_seed(1234)
    ref = nn.LSTM(I, H, **config, dtype=dtype)
    torch.manual_seed(1234)
    ours = rnnfast.LSTM(I, H, **config, dtype=dtype)
    _assert_same_params(ref, ours)
    # and the RNG is left in the same state after either constructor
    torch.manual_seed(99)
    nn.LSTM(I, H, **config)
    after_ref = torch.rand(3)
    torch.manual_seed(99)
    rnnfast.LSTM(I, H, **config)
    assert torch.equal(torch.rand(3), after_ref)


@pytest.mark.parametrize("bias", [True, False])
def test_same_seed_same_weights_cell(bias):
    torch.manual_seed(4321)
    ref = nn.LSTMCell(I, H, bias=bias)
    torch.manual_seed(4321)
    ours = rnnfast.LSTMCell(I, H, bias=bias)
    _assert_same_params(ref, ours)
    assert (ours.bias_ih is None) == (not bias)


def test_reset_parameters_matches_torch():
    ref, ours = nn.LSTM(I, H, num_layers=2, proj_size=P), rnnfast.LSTM(I, H, num_layers=2, proj_size=P)
    torch.manual_seed(5)
    ref.reset_parameters()
    torch.manual_seed(5)
    ours.reset_parameters()
    _assert_same_params(ref, ours)


# ---------------------------------------------------------------- freeze masks stay out

def test_freeze_mask_buffers_not_in_state_dict():
    ours = rnnfast.LSTM(I, H, num_layers=2, bidirectional=True)
    keys_before = list(ours.state_dict())
    rnnfast.freeze(ours, layers=[0], gates="i")
    mask_buffers = [n for n, _ in ours.named_buffers() if "frozen" in n]
    assert mask_buffers, "freeze(gates='i') should have created mask buffers"
    sd = ours.state_dict()
    assert list(sd) == keys_before
    assert not any("frozen" in k or "mask" in k for k in sd)
    # ... so the frozen model's state_dict still loads into plain torch, strictly
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ref.load_state_dict(sd, strict=True)
    _assert_same_outputs(ref, ours, torch.randn(T, B, I))
    # and a torch state_dict loads into the frozen module without touching its masks
    ours.load_state_dict(nn.LSTM(I, H, num_layers=2, bidirectional=True).state_dict(), strict=True)
    assert [n for n, _ in ours.named_buffers() if "frozen" in n] == mask_buffers


def test_freeze_mask_buffers_not_in_cell_state_dict():
    cell = rnnfast.LSTMCell(I, H)
    rnnfast.freeze(cell, gates="fo")
    assert any("frozen" in n for n, _ in cell.named_buffers())
    assert list(cell.state_dict()) == list(nn.LSTMCell(I, H).state_dict())


# ---------------------------------------------------------------- safetensors

@pytest.mark.parametrize("config", [dict(num_layers=2, bidirectional=True, proj_size=P),
                                    dict(num_layers=1, bias=False)], ids=_ids)
def test_safetensors_round_trip_into_torch(tmp_path, config):
    ours = rnnfast.LSTM(I, H, **config)
    rnnfast.freeze(ours, layers=[0], gates="g")  # masks must not leak into the file
    path = tmp_path / "lstm.safetensors"
    save_file(ours.state_dict(), str(path))
    loaded = load_file(str(path))
    assert list(sorted(loaded)) == sorted(nn.LSTM(I, H, **config).state_dict())
    ref = nn.LSTM(I, H, **config)
    ref.load_state_dict(loaded, strict=True)
    _assert_same_params(ours, ref, check_requires_grad=False)
    _assert_same_outputs(ref, ours, _input(config))
    # and back into a fresh rnnfast module
    again = rnnfast.LSTM(I, H, **config)
    again.load_state_dict(load_file(str(path)), strict=True)
    _assert_same_params(ours, again, check_requires_grad=False)


# ---------------------------------------------------------------- from_torch

@pytest.mark.parametrize("config", [dict(num_layers=2, bidirectional=True, proj_size=P, batch_first=True),
                                    dict(num_layers=3, bias=False, dropout=0.25)], ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_from_torch_keeps_weights_dtype_mode_requires_grad(config, dtype, training):
    ref = nn.LSTM(I, H, **config, dtype=dtype)
    ref.train(training)
    ref.weight_hh_l0.requires_grad_(False)
    ref.weight_ih_l1.requires_grad_(False)
    ours = rnnfast.LSTM.from_torch(ref)
    assert type(ours) is rnnfast.LSTM
    assert ours.training is training
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    _assert_same_params(ref, ours)
    assert ours.weight_ih_l0.dtype == dtype
    assert not ours.weight_hh_l0.requires_grad and not ours.weight_ih_l1.requires_grad
    assert ours.weight_ih_l0.requires_grad
    # a copy, not an alias
    assert ours.weight_ih_l0.data_ptr() != ref.weight_ih_l0.data_ptr()
    with torch.no_grad():
        ours.weight_ih_l0.add_(1.0)
    assert not torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)
    with torch.no_grad():
        ours.weight_ih_l0.sub_(1.0)
    if not training:  # no dropout in eval: outputs must agree
        _assert_same_outputs(ref, ours, _input(config, dtype))


@pytest.mark.parametrize("config", [dict(num_layers=2, bidirectional=True, proj_size=P, batch_first=True),
                                    dict(num_layers=3, bias=False, dropout=0.25)], ids=_ids)
@pytest.mark.parametrize("training", [True, False])
def test_to_torch_keeps_weights_dtype_mode_requires_grad(config, training):
    ours = rnnfast.LSTM(I, H, **config, dtype=torch.float64)
    ours.train(training)
    rnnfast.freeze(ours, layers=[1])
    ref = ours.to_torch()
    assert type(ref) is nn.LSTM and ref.training is training
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    _assert_same_params(ours, ref)
    assert not ref.weight_hh_l1.requires_grad and ref.weight_hh_l0.requires_grad
    assert ref.weight_ih_l0.data_ptr() != ours.weight_ih_l0.data_ptr()
    if not training:
        _assert_same_outputs(ref, ours, _input(config, torch.float64))


def test_to_torch_refuses_what_nn_lstm_cannot_express():
    partly = rnnfast.freeze(rnnfast.LSTM(I, H), gates="f")
    with pytest.raises(ValueError, match=r"\['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'\] "
                                         "are partly frozen"):
        partly.to_torch()
    from rnnfast import transfer
    adapted = rnnfast.LSTM(I, H)
    transfer.add_lora(adapted, rank=2)
    with pytest.raises(ValueError, match="unmerged LoRA adapters"):
        adapted.to_torch()
    with torch.no_grad():
        adapted.lora_B_weight_hh_l0.normal_()  # so the merged weight differs from the base
    transfer.merge_lora(adapted)
    _assert_same_outputs(adapted, adapted.to_torch(), _input({}))


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="expects a torch.nn.LSTM, got GRU"):
        rnnfast.LSTM.from_torch(nn.GRU(I, H))
    with pytest.raises(TypeError, match="expects a torch.nn.LSTMCell, got LSTM"):
        rnnfast.LSTMCell.from_torch(nn.LSTM(I, H))


# ---------------------------------------------------------------- LSTMCell parity

def _cell_grads(cell, x, hx):
    h, c = cell(x, hx)
    loss = (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum() + (c ** 2).sum()
    leaves = [x] + ([] if hx is None else list(hx)) + list(cell.parameters())
    return (h, c), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
def test_cell_from_torch_parity(bias, batched, with_hx):
    ref = nn.LSTMCell(I, H, bias=bias)
    ours = rnnfast.LSTMCell.from_torch(ref)
    assert type(ours) is rnnfast.LSTMCell
    _assert_same_params(ref, ours)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, requires_grad=True)
    hx = None
    if with_hx:
        hx = (torch.randn(*lead, H, requires_grad=True), torch.randn(*lead, H, requires_grad=True))
    (h_ref, c_ref), g_ref = _cell_grads(ref, x, hx)
    (h, c), g = _cell_grads(ours, x, hx)
    assert h.shape == h_ref.shape == (*lead, H) and c.shape == c_ref.shape
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    assert len(g) == len(g_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_cell_from_torch_keeps_dtype_mode_requires_grad():
    ref = nn.LSTMCell(I, H, dtype=torch.float64).eval()
    ref.bias_hh.requires_grad_(False)
    ours = rnnfast.LSTMCell.from_torch(ref)
    assert ours.weight_ih.dtype == torch.float64 and not ours.training
    _assert_same_params(ref, ours)
    x = torch.randn(B, I, dtype=torch.float64)
    for a, b in zip(ours(x), ref(x)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- convert

class _Nested(nn.Module):
    """nn.Sequential holding an nn.LSTM, an nn.ModuleList of two, an nn.LSTMCell
    attribute, and one nn.LSTM shared by two different parents."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(I, I), nn.LSTM(I, H))
        self.stack = nn.ModuleList([nn.LSTM(H, H, num_layers=2, bidirectional=True),
                                    nn.LSTM(2 * H, H, proj_size=P, batch_first=True)])
        self.cell = nn.LSTMCell(P, H)
        shared = nn.LSTM(H, H)
        self.left = nn.Sequential(shared)
        self.right = nn.Sequential(shared)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y = self.seq[0](x)
        y, _ = self.seq[1](y)
        y, _ = self.stack[0](y)
        y, _ = self.stack[1](y.transpose(0, 1))
        h, c = self.cell(y[:, -1])
        z, _ = self.left[0](h.unsqueeze(0))
        z, _ = self.right[0](z)
        return self.head(z) + c.sum()


def _assert_no_torch_lstm(model):
    for module in model.modules():
        assert not isinstance(module, (nn.LSTM, nn.LSTMCell)), type(module)


def test_convert_nested_model():
    model = _Nested()
    model.stack[0].weight_hh_l1.requires_grad_(False)
    original = copy.deepcopy(model)
    x = torch.randn(T, B, I)
    converted = rnnfast.convert(model)
    assert converted is model
    assert type(model.seq[1]) is rnnfast.LSTM and not isinstance(model.seq[1], nn.LSTM)
    assert all(type(m) is rnnfast.LSTM for m in model.stack)
    assert type(model.cell) is rnnfast.LSTMCell and not isinstance(model.cell, nn.LSTMCell)
    assert type(model.left[0]) is rnnfast.LSTM
    assert model.left[0] is model.right[0], "a shared LSTM must stay one shared module"
    assert isinstance(model.seq[0], nn.Linear) and isinstance(model.head, nn.Linear)
    _assert_no_torch_lstm(model)
    # configurations and weights carried over
    assert model.stack[1].proj_size == P and model.stack[1].batch_first
    assert model.stack[0].bidirectional and model.stack[0].num_layers == 2
    assert not model.stack[0].weight_hh_l1.requires_grad
    _assert_same_params(original, model)
    assert len(list(model.parameters())) == len(list(original.parameters()))
    torch.testing.assert_close(model(x), original(x))
    # gradients agree too
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    model(x1).square().sum().backward()
    original(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p), q in zip(model.named_parameters(), original.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_convert_lstm_itself_returns_rnnfast_lstm():
    ref = nn.LSTM(I, H, num_layers=2, proj_size=P).eval()
    original = copy.deepcopy(ref)
    new = rnnfast.convert(ref)
    assert type(new) is rnnfast.LSTM and not isinstance(new, nn.LSTM)
    assert not new.training
    _assert_same_params(original, new)
    _assert_same_outputs(original, new, torch.randn(T, B, I))
    cell = rnnfast.convert(nn.LSTMCell(I, H))
    assert type(cell) is rnnfast.LSTMCell


def test_convert_leaves_other_modules_and_rnnfast_alone():
    gru = nn.GRU(I, H)
    assert rnnfast.convert(gru) is gru
    already = rnnfast.LSTM(I, H)
    model = nn.Sequential(already)
    rnnfast.convert(model)
    assert model[0] is already


def test_convert_same_instance_under_two_names():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.LSTM(I, H)
            self.alias = self.encoder

        def forward(self, x):
            y, _ = self.encoder(x)
            z, _ = self.alias(torch.zeros_like(x))
            return y + z

    model = Aliased()
    original = copy.deepcopy(model)
    x = torch.randn(T, B, I)
    rnnfast.convert(model)
    torch.testing.assert_close(model(x), original(x))
    assert type(model.encoder) is rnnfast.LSTM
    assert model.alias is model.encoder
    _assert_no_torch_lstm(model)


def test_parametrized_weights_work_as_on_nn_lstm():
    """torch.nn.utils.parametrize (weight norm here) replaces a parameter by a property
    computed on access; the module reads weights from _parameters for speed, and falls
    back to attribute access for such names: outputs and gradients match nn.LSTM's with
    the same parametrization."""
    from torch.nn.utils.parametrizations import weight_norm
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2)
    ours = rnnfast.LSTM.from_torch(ref)
    for model in (ref, ours):
        weight_norm(model, "weight_hh_l1")
    x = torch.randn(T, B, I)
    (out, (h, c)), (want, (want_h, want_c)) = ours(x), ref(x)
    for got, expected in ((out, want), (h, want_h), (c, want_c)):
        torch.testing.assert_close(got, expected)
    out.sum().backward()
    want.sum().backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
