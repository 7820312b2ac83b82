"""Strategy 6: heterogeneous transfer. Widening is exactly function-preserving (float64,
1e-12), deepening stays within its documented bound, depth mapping copies the chosen
layers and reports the rest, new input features start at zero weight."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import transfer

I, H, T, B = 5, 6, 7, 3
DT = torch.float64
LENGTHS = torch.tensor([7, 2, 5])


def _lstm(**config):
    return rnnfast.LSTM(config.pop("input_size", I), H, dtype=DT, **config)


def _width(lstm):
    return (2 if lstm.bidirectional else 1) * (lstm.proj_size or lstm.hidden_size)


WIDEN_CASES = [
    dict(num_layers=3),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(num_layers=2, bidirectional=True, proj_size=3),
]


def _run(lstm, x, batch_first):
    """Padded output [B, T, F] of a packed run (variable lengths) plus (h_n, c_n)."""
    packed, (h, c) = lstm(pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(packed, batch_first=True)
    return out, h, c


@pytest.mark.parametrize("config", WIDEN_CASES, ids=str)
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_widening_preserves_the_function_exactly(config, noise):
    lstm = _lstm(**config)
    head = nn.Linear(3 * _width(lstm), 4, dtype=DT)        # reads concat pooling of the top layer
    step_head = nn.Linear(_width(lstm), 2, dtype=DT)       # reads every step's output
    units = {0: [0, 0, 5, 2], 1: [3, 3, 3, 1]}             # repeats: copy counts up to 4
    wide = transfer.widen(lstm, H + 4, units=units, head=head, noise=noise,
                          generator=torch.Generator().manual_seed(0))
    wide_step = transfer.widen(lstm, H + 4, units=units, head=step_head, noise=noise,
                               generator=torch.Generator().manual_seed(0))
    assert wide.lstm.hidden_size == H + 4 and wide.lstm.num_layers == lstm.num_layers
    batch_first = lstm.batch_first
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=DT)
    out, h, c = _run(lstm, x, batch_first)
    out_w, h_w, c_w = _run(wide.lstm, x, batch_first)
    out_s, _, _ = _run(wide_step.lstm, x, batch_first)
    pooled = transfer.pool(out, LENGTHS, "concat", batch_first=True, bidirectional=lstm.bidirectional)
    pooled_w = transfer.pool(out_w, LENGTHS, "concat", batch_first=True, bidirectional=lstm.bidirectional)
    torch.testing.assert_close(wide.head(pooled_w), head(pooled), rtol=0, atol=1e-12)
    torch.testing.assert_close(wide_step.head(out_s), step_head(out), rtol=0, atol=1e-12)
    # the state of every layer: duplicated units carry exact copies of h and c
    h_e, c_e = wide.expand_state(h, c)
    torch.testing.assert_close(h_w, h_e, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_w, c_e, rtol=0, atol=1e-12)
    assert wide.index[0][H:].tolist() == [0, 0, 5, 2]
    torch.testing.assert_close(c_w[0][:, H + 1], c_w[0][:, 0], rtol=0, atol=1e-12)


def test_random_units_and_noise_break_symmetry_but_not_the_function():
    torch.manual_seed(0)
    lstm = _lstm(num_layers=2)
    head = nn.Linear(H, 1, dtype=DT)
    x = torch.randn(T, B, I, dtype=DT)
    for noise in (0.0, 0.1):
        wide = transfer.widen(lstm, H + 3, units=[1, 2, 4], head=head, noise=noise,
                              generator=torch.Generator().manual_seed(1))
        params = list(wide.lstm.parameters()) + list(wide.head.parameters())
        opt = torch.optim.SGD(params, lr=0.5)
        for _ in range(2):
            opt.zero_grad()
            wide.head(wide.lstm(x)[0]).square().sum().backward()
            opt.step()
        rows = wide.lstm.weight_ih_l1.view(4, H + 3, -1)
        gap = (rows[:, H] - rows[:, 1]).abs().max().item()   # unit 1 and its copy
        if noise == 0:
            assert gap < 1e-12   # exact twins: identical gradients forever
        else:
            assert gap > 1e-4    # different outgoing weights -> they grow apart
    picked = transfer.widen(lstm, H + 2, generator=torch.Generator().manual_seed(3)).index
    assert all(len(g) == H + 2 and int(g[H:].max()) < H for g in picked)


def test_widen_errors():
    lstm = _lstm(num_layers=2)
    with pytest.raises(ValueError, match=r"widen: layer 2 does not exist: the LSTM has 2 layer\(s\), indices 0..1"):
        transfer.widen(lstm, H + 1, units={2: [0]})
    with pytest.raises(ValueError, match="hidden_size must be an int larger than the current 6, got 6"):
        transfer.widen(lstm, H)
    with pytest.raises(ValueError, match=r"layer 0 needs 2 units to copy \(new hidden size 8 - old 6\), got 1"):
        transfer.widen(lstm, H + 2, units=[0])
    with pytest.raises(ValueError, match=r"units for layer 1 must be in \[0, 6\), got \[6\]"):
        transfer.widen(lstm, H + 1, units={1: [6]})
    with pytest.raises(ValueError, match="head.in_features=7 is not a multiple of the LSTM output width 6"):
        transfer.widen(lstm, H + 1, head=nn.Linear(7, 2))
    with pytest.raises(TypeError, match="widen needs an rnnfast.LSTM or torch.nn.LSTM, got Linear"):
        transfer.widen(nn.Linear(2, 2), 3)


def _sub_lstm(lstm, layers):
    """The bottom `layers` layers of `lstm` as an LSTM of their own."""
    sub = rnnfast.LSTM(lstm.input_size, lstm.hidden_size, num_layers=layers, bidirectional=lstm.bidirectional,
                       proj_size=lstm.proj_size, dtype=DT)
    transfer.map_layers(sub, lstm, list(range(layers)), strict=True)
    return sub


@pytest.mark.parametrize("config,position", [
    (dict(num_layers=2), 1), (dict(num_layers=2), 2),
    (dict(num_layers=2, bidirectional=True), 1), (dict(num_layers=1, bidirectional=True, input_size=2 * H), 0),
    (dict(num_layers=2, proj_size=3), 2)], ids=str)
def test_deepening_stays_within_the_documented_bound(config, position):
    lstm = _lstm(**config)
    head = nn.Linear(_width(lstm), 3, dtype=DT)
    deep = transfer.deepen(lstm, position, head=head)
    assert deep.lstm.num_layers == lstm.num_layers + 1 and deep.layer == position
    x = 2 * torch.randn(T, B, lstm.input_size, dtype=DT)   # position 0 sees raw inputs, |x| up to ~6
    inserted_input = x if position == 0 else _sub_lstm(lstm, position)(x)[0]
    inserted_output = _sub_lstm(deep.lstm, position + 1)(x)[0]
    m = inserted_input.abs().max().item()
    error = (inserted_output / deep.scale - inserted_input).abs().max().item()
    bound = deep.bound(m)
    assert error <= bound, (error, bound)
    assert error >= 0.5 * bound     # and the bound is not vacuous: it is nearly attained
    # whole model: old head(old LSTM) vs new head(new LSTM)
    y, y_new = head(lstm(x)[0]), deep.head(deep.lstm(x)[0])
    if position == lstm.num_layers:  # the head is linear: |Δy| <= ||W||_inf * bound, exactly
        assert (y - y_new).abs().max().item() <= head.weight.abs().sum(1).max().item() * bound
    else:                            # propagated through the layers above: small, not formal
        assert (y - y_new).abs().max().item() < 1e-3


def test_near_identity_bound_formula_and_hidden_state_helper():
    delta = 1 / (1 + torch.exp(torch.tensor(20.0, dtype=DT))).item()
    assert transfer.near_identity_bound(1.0) == pytest.approx(3 * delta + (2 / 3) * 1e-4, rel=1e-12)
    assert transfer.near_identity_bound(0.5, scale=1e-3, saturation=30) == pytest.approx(
        1.5 / (1 + torch.exp(torch.tensor(30.0, dtype=DT))).item() + (2 / 3) * 1e-6 * 0.125, rel=1e-12)
    lstm = _lstm(num_layers=2)
    deep = transfer.deepen(lstm, 1)
    h, c = torch.randn(2, B, H, dtype=DT), torch.randn(2, B, H, dtype=DT)
    h2, c2 = deep.expand_state(h, c)
    assert h2.shape == (3, B, H) and torch.equal(h2[1], torch.zeros(B, H, dtype=DT)) and torch.equal(c2[2], c[1])


def test_deepen_errors():
    lstm = _lstm(num_layers=2)
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 2\] \(the new layer's index\), got 3"):
        transfer.deepen(lstm, 3)
    with pytest.raises(ValueError, match="on top needs head="):
        transfer.deepen(lstm)
    with pytest.raises(ValueError, match=r"at position 0 reads the input \(5 features\).*output width is 6"):
        transfer.deepen(lstm, 0)
    with pytest.raises(ValueError, match="this LSTM has bias=False"):
        transfer.deepen(_lstm(num_layers=2, bias=False), 1)


def test_map_layers_into_deeper_and_shallower_targets():
    source = _lstm(num_layers=3, input_size=H)     # input width == output width: every layer fits anywhere
    deeper = _lstm(num_layers=5, input_size=H)
    report = transfer.map_layers(deeper, source)    # bottom: 0,1,2 <- 0,1,2; 3,4 fresh
    assert sorted(report.missing) == sorted(n for n in deeper.state_dict() if n[-1] in "34")
    assert torch.equal(deeper.weight_hh_l2, source.weight_hh_l2)
    spread = _lstm(num_layers=5, input_size=H)
    transfer.map_layers(spread, source, "spread")   # [0, 0, 1, 2, 2]
    assert transfer.layer_mapping(3, 5, "spread") == [0, 0, 1, 2, 2]
    assert torch.equal(spread.weight_ih_l1, source.weight_ih_l0) and torch.equal(spread.bias_hh_l4, source.bias_hh_l2)
    shallow = _lstm(num_layers=2, input_size=H)
    report = transfer.map_layers(shallow, source, [0, 2], strict=True)
    assert report.complete and sorted(report.unused) == sorted(n for n in source.state_dict() if n.endswith("_l1"))
    assert torch.equal(shallow.weight_ih_l1, source.weight_ih_l2)


def test_map_layers_reports_shape_mismatches_and_reads_prefixed_state_dicts():
    source = nn.Module()
    source.lstm = rnnfast.LSTM(I, H, num_layers=2, dtype=DT)
    target = _lstm(num_layers=3)
    report = transfer.map_layers(target, source.state_dict(), "spread", source_prefix="lstm.")
    assert report.names("skipped") == ["weight_ih_l1"]           # source layer 0 reads I=5 features
    assert report.skipped[0].detail == "shape mismatch: source (24, 5), target (24, 6)"
    assert report.skipped[0].source == "lstm.weight_ih_l0"
    assert torch.equal(target.weight_hh_l1, source.lstm.weight_hh_l0)
    with pytest.raises(ValueError, match=r"mapping needs one entry per target layer \(3\), got 2"):
        transfer.map_layers(target, source.lstm, [0, 1])
    with pytest.raises(ValueError, match=r"mapping\[2\] must be None or a source layer in \[0, 2\), got 2"):
        transfer.map_layers(target, source.lstm, [0, 1, 2])
    with pytest.raises(ValueError, match="no LSTM weights under prefix 'rnn.'"):
        transfer.map_layers(target, source.state_dict(), source_prefix="rnn.")


def test_new_input_features_start_at_zero_and_leave_outputs_unchanged():
    lstm = _lstm(num_layers=2, bidirectional=True)
    wider = transfer.resize_input(lstm, I + 3)
    x = torch.randn(T, B, I, dtype=DT)
    x_new = torch.cat([x, 10 * torch.randn(T, B, 3, dtype=DT)], -1)  # new features carry values
    torch.testing.assert_close(wider(x_new)[0], lstm(x)[0], rtol=0, atol=1e-12)
    assert torch.equal(wider.weight_ih_l0_reverse[:, I:], torch.zeros(4 * H, 3, dtype=DT))
    wider(x_new)[0].sum().backward()
    assert wider.weight_ih_l0.grad[:, I:].abs().sum() > 0            # and they learn
    # reordered and partly new features
    columns = [None, 4, 0, None, 1, 2, 3]
    moved = transfer.resize_input(lstm, 7, columns)
    x_moved = torch.randn(T, B, 7, dtype=DT)
    x_moved[..., [1, 2, 4, 5, 6]] = x[..., [4, 0, 1, 2, 3]]
    torch.testing.assert_close(moved(x_moved)[0], lstm(x)[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"columns needs one entry per new input feature \(7\), got 2"):
        transfer.resize_input(lstm, 7, [0, 1])
    with pytest.raises(ValueError, match="an old feature appears twice"):
        transfer.resize_input(lstm, 2, [0, 0])
    with pytest.raises(ValueError, match=r"old feature indices in \[0, 5\), got \[5\]"):
        transfer.resize_input(lstm, 2, [5, None])
