"""Bad inputs: every one raises a clear error naming what was expected and what came,
never a crash deep inside the backend or a silent wrong result. Plus the edge inputs
that must behave exactly like torch.nn.LSTM instead of raising (B=0, NaN/Inf)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnnfast

I, H, P, B, T, L = 5, 7, 3, 3, 4, 2


@pytest.fixture
def lstm():
    return rnnfast.LSTM(I, H, num_layers=L)


@pytest.fixture
def x():
    return torch.randn(T, B, I)


def zeros(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


# ---------------------------------------------------------------- input rank / size / dtype

@pytest.mark.parametrize("shape, rank", [((I,), 1), ((2, T, B, I), 4)])
def test_input_rank(lstm, shape, rank):
    with pytest.raises(ValueError, match=f"Expected input to be 2D or 3D, got {rank}D"):
        lstm(torch.randn(shape))


@pytest.mark.parametrize("batched", [True, False])
def test_wrong_input_size(lstm, batched):
    bad = torch.randn(T, B, I + 1) if batched else torch.randn(T, I + 1)
    with pytest.raises(RuntimeError, match=f"input_size. Expected {I}, got {I + 1}"):
        lstm(bad)


def test_wrong_input_size_batch_first():
    lstm = rnnfast.LSTM(I, H, batch_first=True)
    with pytest.raises(RuntimeError, match=f"Expected {I}, got {I + 2}"):
        lstm(torch.randn(B, T, I + 2))


def _dtype_mismatch(got, weight):
    """torch.nn.LSTM's message for an input whose dtype is not the weights'."""
    return _literal(f"RNN input dtype ({got}) does not match weight dtype ({weight}). Convert "
                    f"input: input.to({weight}), or convert model: model.to({got})")


def test_float64_input_into_float32_module(lstm, x):
    with pytest.raises(ValueError, match=_dtype_mismatch(torch.float64, torch.float32)):
        lstm(x.double())
    with pytest.raises(ValueError, match=_dtype_mismatch(torch.float64, torch.float32)):
        nn.LSTM(I, H)(x.double())


def test_float32_input_into_float64_module(x):
    lstm = rnnfast.LSTM(I, H, dtype=torch.float64)
    with pytest.raises(ValueError, match=_dtype_mismatch(torch.float32, torch.float64)):
        lstm(x)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_float_input(lstm, dtype):
    with pytest.raises(ValueError, match=_dtype_mismatch(dtype, torch.float32)):
        lstm(torch.ones(T, B, I, dtype=dtype))


def test_non_float_layer_arguments():
    ints = dict(dtype=torch.int64)
    with pytest.raises(TypeError, match="must be a floating-point tensor, got dtype torch.int64"):
        rnnfast.lstm_layer(torch.ones(T, B, I, **ints), torch.zeros(B, H, **ints),
                           torch.zeros(B, H, **ints), torch.ones(4 * H, I, **ints),
                           torch.ones(4 * H, H, **ints))


def test_input_not_a_tensor(lstm):
    with pytest.raises(TypeError, match="Tensor or PackedSequence, got list"):
        lstm([[0.0] * I] * T)


def test_sequence_length_zero(lstm):
    with pytest.raises(RuntimeError, match=r"Expected sequence length to be larger than 0 in RNN"):
        nn.LSTM(I, H)(torch.randn(0, B, I))
    with pytest.raises(RuntimeError, match=r"Expected sequence length to be larger than 0 in RNN"
                                           r".*\(0, 3, 5\)"):
        lstm(torch.randn(0, B, I))


def test_sequence_length_zero_batch_first():
    lstm = rnnfast.LSTM(I, H, batch_first=True)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        lstm(torch.randn(B, 0, I))


def test_sequence_length_zero_unbatched(lstm):
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        lstm(torch.randn(0, I))


# ---------------------------------------------------------------- hx structure and shapes

def test_hx_not_a_tuple(lstm, x):
    with pytest.raises(TypeError, match="hx must be a tuple \\(h_0, c_0\\) of two tensors, got Tensor"):
        lstm(x, zeros(L, B, H))


@pytest.mark.parametrize("n", [1, 3])
def test_hx_tuple_of_wrong_length(lstm, x, n):
    with pytest.raises(TypeError, match=f"of two tensors, got tuple of {n}"):
        lstm(x, (zeros(L, B, H),) * n)


def test_hx_tuple_of_non_tensors(lstm, x):
    with pytest.raises(TypeError, match="hx must be a tuple \\(h_0, c_0\\) of two tensors"):
        lstm(x, (zeros(L, B, H), None))


@pytest.mark.parametrize("which, h_shape, c_shape, expected, got", [
    # wrong num_layers * directions
    (0, (1, B, H), (L, B, H), (L, B, H), [1, B, H]),
    (1, (L, B, H), (L + 1, B, H), (L, B, H), [L + 1, B, H]),
    # wrong batch
    (0, (L, B + 1, H), (L, B, H), (L, B, H), [L, B + 1, H]),
    (1, (L, B, H), (L, B - 1, H), (L, B, H), [L, B - 1, H]),
    # wrong width
    (0, (L, B, H + 1), (L, B, H), (L, B, H), [L, B, H + 1]),
    (1, (L, B, H), (L, B, H - 1), (L, B, H), [L, B, H - 1]),
])
def test_state_wrong_shape(lstm, x, which, h_shape, c_shape, expected, got):
    with pytest.raises(RuntimeError, match=_literal(f"Expected hidden[{which}] size {tuple(expected)}, got {got}")):
        lstm(x, (zeros(*h_shape), zeros(*c_shape)))


def test_state_wrong_directions():
    lstm = rnnfast.LSTM(I, H, num_layers=L, bidirectional=True)
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match=_literal(f"Expected hidden[0] size {(2 * L, B, H)}, got {[L, B, H]}")):
        lstm(x, (zeros(L, B, H), zeros(L, B, H)))


def test_state_with_proj_size():
    lstm = rnnfast.LSTM(I, H, num_layers=L, proj_size=P)
    x = torch.randn(T, B, I)
    # h0 must be proj_size wide: the full hidden width is wrong for it ...
    with pytest.raises(RuntimeError, match=_literal(f"Expected hidden[0] size {(L, B, P)}, got {[L, B, H]}")):
        lstm(x, (zeros(L, B, H), zeros(L, B, H)))
    # ... while c0 stays hidden_size wide.
    with pytest.raises(RuntimeError, match=_literal(f"Expected hidden[1] size {(L, B, H)}, got {[L, B, P]}")):
        lstm(x, (zeros(L, B, P), zeros(L, B, P)))
    out, (h, c) = lstm(x, (zeros(L, B, P), zeros(L, B, H)))
    assert out.shape == (T, B, P) and h.shape == (L, B, P) and c.shape == (L, B, H)


def test_state_wrong_shape_unbatched(lstm):
    with pytest.raises(RuntimeError, match=_literal(f"Expected hidden[0] size {(L, H)}, got {[L, H + 1]}")):
        lstm(torch.randn(T, I), (zeros(L, H + 1), zeros(L, H)))


def test_batched_input_with_2d_state(lstm, x):
    with pytest.raises(RuntimeError, match="batched 3-D input, hx and cx should also be 3-D but got \\(2-D, 2-D\\)"):
        lstm(x, (zeros(L, H), zeros(L, H)))


def test_unbatched_input_with_3d_state(lstm):
    with pytest.raises(RuntimeError, match="unbatched 2-D input, hx and cx should also be 2-D but got \\(3-D, 3-D\\)"):
        lstm(torch.randn(T, I), (zeros(L, 1, H), zeros(L, 1, H)))


@pytest.mark.parametrize("which", ["h0", "c0"])
def test_state_dtype_differs_from_input(lstm, x, which):
    h = zeros(L, B, H, dtype=torch.float64 if which == "h0" else torch.float32)
    c = zeros(L, B, H, dtype=torch.float64 if which == "c0" else torch.float32)
    with pytest.raises(RuntimeError):  # torch's kernel fails, without a message of its own
        nn.LSTM(I, H, num_layers=L)(x, (h, c))
    with pytest.raises(RuntimeError, match=rf"input has dtype torch\.float32 but {which} .* has dtype torch\.float64"):
        lstm(x, (h, c))


# ---------------------------------------------------------------- hand-built PackedSequence

def _packed(batch_sizes, rows=None, dtype=torch.int64):
    batch_sizes = torch.tensor(batch_sizes, dtype=dtype)
    rows = int(batch_sizes.sum()) if rows is None else rows
    return PackedSequence(torch.randn(rows, I), batch_sizes)


def test_packed_valid_hand_built_runs(lstm):
    out, (h, c) = lstm(_packed([3, 2, 1]))
    assert out.data.shape == (6, H) and h.shape == (L, 3, H) and c.shape == (L, 3, H)


def test_packed_increasing_batch_sizes(lstm):
    with pytest.raises(ValueError, match=_literal("must be non-increasing (sequences sorted by decreasing length), got [2, 3, 1]")):
        lstm(_packed([2, 3, 1]))


def test_packed_zero_batch_size(lstm):
    with pytest.raises(ValueError, match=_literal("must all be positive, got [3, 0, 2]")):
        lstm(_packed([3, 0, 2]))


@pytest.mark.parametrize("rows", [5, 7])
def test_packed_batch_sizes_sum_differs_from_rows(lstm, rows):
    with pytest.raises(ValueError, match=f"batch_sizes sum to 6 rows but the data has {rows} rows"):
        lstm(_packed([3, 2, 1], rows=rows))


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32])
def test_packed_batch_sizes_not_int64(lstm, dtype):
    with pytest.raises(ValueError, match=rf"1-D int64 CPU tensor, got 1-D {dtype} on cpu"):
        lstm(_packed([3, 2, 1], rows=6, dtype=dtype))


def test_packed_empty_batch_sizes(lstm):
    with pytest.raises(ValueError, match="batch_sizes is empty: expected at least one time step"):
        lstm(PackedSequence(torch.randn(0, I), torch.zeros(0, dtype=torch.int64)))


def test_packed_data_wrong_width(lstm):
    with pytest.raises(RuntimeError, match=f"Expected {I}, got {I + 1}"):
        lstm(PackedSequence(torch.randn(6, I + 1), torch.tensor([3, 2, 1])))


def test_packed_data_wrong_rank(lstm):
    with pytest.raises(ValueError, match="PackedSequence data must be 2-D \\[N, input_size\\], got 3-D"):
        lstm(PackedSequence(torch.randn(6, 1, I), torch.tensor([3, 2, 1])))


# ---------------------------------------------------------------- backends and constructor

@pytest.mark.parametrize("cls", [rnnfast.LSTM, rnnfast.LSTMCell])
def test_unknown_backend_name(cls):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'reference', 'triton', 'cuda', 'cpu'\), got 'fast'"):
        cls(I, H, backend="fast")


@pytest.mark.parametrize("cls", [rnnfast.LSTM, rnnfast.LSTMCell])
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_unbuilt_backend_not_available(cls, name):
    if rnnfast.available_backends()[name] is None:
        pytest.skip(f"backend {name!r} is usable in this install")
    with pytest.raises(RuntimeError, match=f"rnnfast backend '{name}' is not available: "):
        cls(I, H, backend=name)


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(bias=0), TypeError, "bias should be of type bool, got: int"),
    (dict(bias=1), TypeError, "bias should be of type bool, got: int"),
    (dict(bias="True"), TypeError, "bias should be of type bool, got: str"),
    (dict(batch_first=0), TypeError, "batch_first should be of type bool, got: int"),
    (dict(batch_first=1), TypeError, "batch_first should be of type bool, got: int"),
    (dict(batch_first="False"), TypeError, "batch_first should be of type bool, got: str"),
    (dict(input_size=3.0), TypeError, "input_size should be of type int, got: float"),
    (dict(input_size="10"), TypeError, "input_size should be of type int, got: str"),
    (dict(input_size=0), ValueError, "input_size must be greater than zero"),
    (dict(input_size=-1), ValueError, "input_size must be greater than zero"),
    (dict(hidden_size=5.0), TypeError, "hidden_size should be of type int, got: float"),
    (dict(proj_size=H), ValueError, "proj_size has to be smaller than hidden_size"),
    (dict(proj_size=H + 2), ValueError, "proj_size has to be smaller than hidden_size"),
    (dict(proj_size=-1), ValueError, "proj_size should be a positive integer or zero"),
    (dict(hidden_size=0), ValueError, "hidden_size must be greater than zero"),
    (dict(num_layers=0), ValueError, "num_layers must be greater than zero"),
    (dict(dropout=1.5), ValueError, "dropout should be a number in range \\[0, 1\\]"),
    (dict(dropout=-0.1), ValueError, "dropout should be a number in range \\[0, 1\\]"),
])
def test_constructor_errors_like_nn_lstm(kwargs, exc, message):
    kwargs = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(exc, match=message):
        nn.LSTM(**kwargs)
    with pytest.raises(exc, match=message):
        rnnfast.LSTM(**kwargs)


def test_dropout_with_one_layer_warns_like_nn_lstm():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rnnfast.LSTM(I, H, num_layers=1, dropout=0.5)


# ---------------------------------------------------------------- LSTMCell

@pytest.fixture
def cell():
    return rnnfast.LSTMCell(I, H)


def test_cell_3d_input(cell):
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D instead"):
        cell(torch.randn(T, B, I))


@pytest.mark.parametrize("shape", [(B, I + 1), (I - 1,)])
def test_cell_wrong_input_size(cell, shape):
    with pytest.raises(RuntimeError, match=f"inconsistent input_size: got {shape[-1]} expected {I}"):
        cell(torch.randn(shape))


@pytest.mark.parametrize("which", [0, 1])
def test_cell_hx_batch_mismatch(cell, which):
    hx = [zeros(B, H), zeros(B, H)]
    hx[which] = zeros(B + 1, H)
    with pytest.raises(RuntimeError, match=f"Input batch size {B} doesn't match hidden{which} batch size {B + 1}"):
        cell(torch.randn(B, I), tuple(hx))


@pytest.mark.parametrize("which", [0, 1])
def test_cell_hx_width_mismatch(cell, which):
    hx = [zeros(B, H), zeros(B, H)]
    hx[which] = zeros(B, H + 1)
    with pytest.raises(RuntimeError, match=f"hidden{which} has inconsistent hidden_size: got {H + 1}, expected {H}"):
        cell(torch.randn(B, I), tuple(hx))


def test_cell_hx_width_mismatch_unbatched(cell):
    with pytest.raises(RuntimeError, match=f"hidden0 has inconsistent hidden_size: got {H - 1}, expected {H}"):
        cell(torch.randn(I), (zeros(H - 1), zeros(H)))


def test_cell_hx_4d_like_nn_lstmcell(cell):
    hx = (zeros(B, 1, 1, H), zeros(B, 1, 1, H))
    for module in (nn.LSTMCell(I, H), cell):
        with pytest.raises(ValueError, match=_literal("Expected hx[0] to be 1D or 2D, got 4D instead")):
            module(torch.randn(B, I), hx)


def test_cell_hx_rank_differs_from_input(cell):
    with pytest.raises(ValueError, match="Expected hx\\[0\\] to be 1D like the input, got 2D"):
        cell(torch.randn(I), (zeros(1, H), zeros(1, H)))


def test_cell_input_dtype(cell):
    with pytest.raises(ValueError, match=_dtype_mismatch(torch.float64, torch.float32)):
        cell(torch.randn(B, I, dtype=torch.float64))


def test_cell_hx_single_tensor_rejected_like_nn_lstmcell(cell):
    hx = torch.zeros(2, B, H)
    with pytest.raises(TypeError, match="must be tuple of Tensors, not Tensor"):
        nn.LSTMCell(I, H)(torch.randn(B, I), hx)
    with pytest.raises(TypeError, match="tuple"):
        cell(torch.randn(B, I), hx)


# ---------------------------------------------------------------- functional API

@pytest.fixture
def layer_args():
    return dict(x=torch.randn(T, B, I), h0=zeros(B, H), c0=zeros(B, H),
                w_ih=torch.randn(4 * H, I), w_hh=torch.randn(4 * H, H),
                b_ih=torch.randn(4 * H), b_hh=torch.randn(4 * H))


def _call_layer(args):
    a = args
    return rnnfast.lstm_layer(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])


def test_functional_valid_call_matches_nn_lstm(layer_args):
    y, h, c = _call_layer(layer_args)
    ref = nn.LSTM(I, H)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            torch_name = name.replace("w_", "weight_").replace("b_", "bias_") + "_l0"
            getattr(ref, torch_name).copy_(layer_args[name])
    y_ref, (h_ref, c_ref) = ref(layer_args["x"], (layer_args["h0"][None], layer_args["c0"][None]))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref[0])
    torch.testing.assert_close(c, c_ref[0])


@pytest.mark.parametrize("name, bad_shape, expected", [
    ("w_ih", (4 * H, I + 1), (4 * H, I)),
    ("b_ih", (4 * H - 1,), (4 * H,)),
    ("b_hh", (4 * H + 4,), (4 * H,)),
    ("h0", (B + 1, H), (B, H)),
    ("h0", (B, H + 1), (B, H)),
    ("c0", (B, H + 1), (B, H)),
    ("c0", (B - 1, H), (B, H)),
])
def test_functional_mismatched_shapes(layer_args, name, bad_shape, expected):
    layer_args[name] = torch.zeros(bad_shape)
    what = {"w_ih": "weight_ih", "b_ih": "bias_ih", "b_hh": "bias_hh",
            "h0": "h0 (initial hidden state)", "c0": "c0 (initial cell state)"}[name]
    with pytest.raises(RuntimeError, match=_literal(f"LSTM {what} must have shape {expected}, got {bad_shape}")):
        _call_layer(layer_args)


def test_functional_input_rank(layer_args):
    layer_args["x"] = torch.randn(T, I)
    with pytest.raises(RuntimeError, match=_literal(f"input must be [T, B, I], got shape {(T, I)}")):
        _call_layer(layer_args)


def test_functional_state_dtype(layer_args):
    layer_args["c0"] = layer_args["c0"].double()
    with pytest.raises(RuntimeError, match=r"but c0 \(initial cell state\) has dtype torch\.float64"):
        _call_layer(layer_args)


def test_functional_w_hh_columns_without_projection(layer_args):
    # w_hh with P != H columns needs a weight_hr; h0 of width P makes the shapes agree.
    layer_args["w_hh"] = torch.randn(4 * H, P)
    layer_args["h0"] = zeros(B, P)
    with pytest.raises(RuntimeError, match=f"weight_hh has {P} columns for hidden size {H}: "
                                           "that needs a weight_hr projection"):
        _call_layer(layer_args)


def test_functional_only_one_bias(layer_args):
    layer_args["b_hh"] = None
    with pytest.raises((TypeError, ValueError, RuntimeError), match="bias_hh"):
        _call_layer(layer_args)


# ---------------------------------------------------------------- devices

def test_input_on_another_device_than_the_parameters(lstm, x):
    """The meta device stands in for a second device: the check runs before any kernel."""
    with pytest.raises(RuntimeError, match=_literal(
            "Input and parameter tensors are not at the same device, found input tensor at "
            "cpu and parameter tensor at meta")):
        lstm.to("meta")(x)


def test_state_on_another_device_than_the_input(lstm, x):
    hx = (zeros(L, B, H).to("meta"), zeros(L, B, H).to("meta"))
    with pytest.raises(RuntimeError, match=_literal(
            "Input and hidden tensors are not at the same device, found input tensor at cpu "
            "and hidden tensor at meta")):
        lstm(x, hx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_into_cpu_module(lstm):
    for module in (nn.LSTM(I, H, num_layers=L), lstm):
        with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
            module(torch.randn(T, B, I, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_into_cpu_module(lstm, x):
    hx = (zeros(L, B, H).cuda(), zeros(L, B, H).cuda())
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        lstm(x, hx)


# ---------------------------------------------------------------- must behave like nn.LSTM

def _twins(hidden=H, **config):
    ref = nn.LSTM(I, hidden, **config)
    ours = rnnfast.LSTM(I, hidden, **config)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("config", [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, proj_size=P, batch_first=True),
    dict(hidden=200),  # several unit blocks a step on the cpu backend (it once divided by 0 rows)
])
@pytest.mark.parametrize("with_hx", [False, True])
def test_zero_batch_like_nn_lstm(config, with_hx):
    ref, ours = _twins(**config)
    shape = (0, T, I) if config.get("batch_first") else (T, 0, I)
    results = []
    for model in (ref, ours):
        x = torch.randn(shape, requires_grad=True)
        layers = model.num_layers * (2 if model.bidirectional else 1)
        hx = None
        if with_hx:
            hidden = model.hidden_size
            hx = (torch.zeros(layers, 0, model.proj_size or hidden, requires_grad=True),
                  torch.zeros(layers, 0, hidden, requires_grad=True))
        out, (h, c) = model(x, hx)
        (out.sum() + h.sum() + c.sum()).backward()
        assert x.grad is not None and x.grad.shape == x.shape
        if with_hx:
            assert hx[0].grad.shape == hx[0].shape and hx[1].grad.shape == hx[1].shape
        results.append((out, h, c, {n: p.grad for n, p in model.named_parameters()}))
    (o1, h1, c1, g1), (o2, h2, c2, g2) = results
    assert o2.shape == o1.shape and h2.shape == h1.shape and c2.shape == c1.shape
    assert o2.numel() == 0 and h2.numel() == 0 and c2.numel() == 0
    assert o2.dtype == o1.dtype
    assert g1.keys() == g2.keys()
    for name in g1:
        # nn.LSTM gives zero gradients (not None) for B=0; so must rnnfast.
        assert g2[name] is not None, name
        torch.testing.assert_close(g2[name], g1[name], msg=name)
        assert not g2[name].any(), name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("config", [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, proj_size=P),
])
@pytest.mark.parametrize("where", [(0, 0, 0), (1, 2, 3), (T - 1, 1, I - 1)])
def test_nan_inf_propagate_like_nn_lstm(value, config, where):
    ref, ours = _twins(**config)
    x = torch.randn(T, B, I)
    x[where] = value
    with torch.no_grad():
        out_ref, (h_ref, c_ref) = ref(x)
        out, (h, c) = ours(x)
    for name, a, b in (("output", out, out_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), name
        assert torch.equal(torch.isinf(a), torch.isinf(b)), name
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], msg=name)
    if value != value:  # NaN: the poisoned batch entry is NaN from its time step on
        t, batch, _ = where
        assert torch.isnan(out[t:, batch]).all()
        others = [i for i in range(B) if i != batch]
        assert torch.isfinite(out[:, others]).all()


# ---------------------------------------------------------------- helpers

def _literal(text: str) -> str:
    return re.escape(text)
