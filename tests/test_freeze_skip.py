"""Partly frozen weights: the gradient products multiply only the row blocks that hold a
trainable entry (rnnfast/backends/trainable.py), and the result is bit-identical to
computing every entry and zeroing the frozen ones afterwards."""
import pytest
import torch

import rnnfast
from rnnfast.backends import gradients, reference, trainable
from rnnfast.backends.cpu import backward as cpu_backward
from rnnfast.freeze import frozen_mask
from conftest import BACKENDS
from helpers import in_interpreter

I, H, P = 37, 20, 12   # 4H = 80 rows: five blocks of 16


@pytest.fixture(autouse=True)
def skip_at_any_size(monkeypatch):
    """Tests use small layers, where skipping would not pay (test_small_products_...):
    here every frozen block is skipped, so the skipping paths are what runs."""
    monkeypatch.setattr(trainable, "_MIN_SAVED_PER_CALL", {"cpu": 0, "cuda": 0})


def _compute_then_zero(a, b, mask, dtype, mm=None):
    """The products before blocks were skipped: everything, then the frozen entries zeroed
    (on the backend's own GEMM, as masked_product)."""
    product = (mm or torch.mm)(a.to(dtype).t(), b)
    return product if mask is None else product.masked_fill_(mask, 0)


def _masks(kind, shape, generator):
    rows, cols = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    if kind == "gates":                        # i, f, g frozen: only the o rows train
        mask[: 3 * rows // 4] = True
    elif kind == "units_contiguous":           # the first 15 units frozen, in all 4 gates
        mask.view(4, rows // 4, cols)[:, :15] = True
    elif kind == "units_scattered":            # every unit but 3, 11 and 17: many runs
        keep = torch.ones(rows // 4, dtype=torch.bool)
        keep[[3, 11, 17]] = False
        mask.view(4, rows // 4, cols)[:, keep] = True
    elif kind == "columns":                    # a widened layer's old inputs: multiplied, zeroed
        mask[:, : cols - 5] = True
    elif kind == "elements":                   # random entries inside trainable blocks
        frozen_rows = 3 * rows // 5            # 48 of 80: blocks 0-2 skipped
        mask[:frozen_rows] = True
        mask[frozen_rows:] = torch.rand(rows - frozen_rows, cols, generator=generator) < 0.5
    return mask


KINDS = ["gates", "units_contiguous", "units_scattered", "columns", "elements"]


def _layer_grads(backend, dtype, kind, proj):
    """Every gradient of one LSTM layer with masks of `kind` on W_ih, W_hh and W_hr."""
    generator = torch.Generator().manual_seed(3)
    model = rnnfast.LSTM(I, H, proj_size=P if proj else 0, backend=backend, dtype=dtype)
    names = ["weight_ih_l0", "weight_hh_l0"] + (["weight_hr_l0"] if proj else [])
    rnnfast.freeze(model, mask={n: _masks(kind, getattr(model, n).shape, generator) for n in names})
    x = torch.randn(7, 3, I, generator=generator).to(dtype).requires_grad_()
    out, (h, c) = model(x)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out).to(dtype)
    loss = (out * weights).sum() + h.square().sum() + c.sum()
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, [x, *params]), model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_bit_identical_to_computing_everything_then_zeroing(backend, dtype, kind, monkeypatch):
    if in_interpreter(backend) and dtype != torch.float32:
        pytest.skip("the interpreter's cost is per program: fp32 covers the shared products")
    proj = kind in ("gates", "elements")
    calls, blockwise = [], gradients.masked_product
    monkeypatch.setattr(gradients, "masked_product", lambda *a: calls.append(1) or blockwise(*a))
    torch.manual_seed(0)
    skipped, model = _layer_grads(backend, dtype, kind, proj)
    assert len(calls) == (3 if proj else 2)   # the backend went through the shared products
    monkeypatch.setattr(gradients, "masked_product", _compute_then_zero)
    torch.manual_seed(0)
    everything, _ = _layer_grads(backend, dtype, kind, proj)
    for ours, theirs in zip(skipped, everything):
        assert torch.equal(ours, theirs)
    for name, grad in zip([n for n, p in model.named_parameters() if p.requires_grad], skipped[1:]):
        mask = frozen_mask(model, name)
        if mask is not None:
            assert grad[mask].eq(0).all() and grad[~mask].ne(0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("trainable_blocks, runs", [
    ([1, 3, 5, 7, 9, 11], 6),         # more runs than views are worth: one gathered product
    ([0, 1, 4, 11], 3),               # a few runs: a product per run, on views
    ([11], 1),                        # the last block, with the 4-row tail merged into it
])
def test_both_product_paths_bit_identical(dtype, trainable_blocks, runs):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(90, 196, generator=generator)            # dgates [N, 4H], accumulation dtype
    b = torch.randn(90, 29, generator=generator).to(dtype)   # inputs [N, C]
    mask = torch.ones(196, 29, dtype=torch.bool)
    for block in trainable_blocks:
        mask[16 * block: 16 * block + 16] = torch.rand(16, 29, generator=generator) < 0.3
    mask[192:] = mask[176:180]                                # the tail follows block 11
    assert len(trainable.trainable_blocks(mask).runs) == runs
    ours = trainable.masked_product(a, b, mask, dtype)
    assert torch.equal(ours, _compute_then_zero(a, b, mask, dtype))
    assert ours[mask].eq(0).all() and ours[~mask].ne(0).all()


@pytest.fixture
def product_shapes(monkeypatch):
    """The output shape of every weight-gradient product: torch.mm, or the cpu backend's
    own GEMM (the recurrence and dx go through other calls)."""
    shapes = []

    def recording(original):
        def mm(a, b, **kwargs):
            shapes.append((a.shape[0], b.shape[1]))
            return original(a, b, **kwargs)
        return mm

    monkeypatch.setattr(torch, "mm", recording(torch.mm))
    monkeypatch.setattr(cpu_backward, "mm", recording(cpu_backward.mm))
    return shapes


@pytest.mark.parametrize("selector, rows", [
    (dict(gates="ifg"), 32),                        # o only: the last quarter, 32 of 128 rows
    (dict(gates="fg"), 64),                         # i and o: two runs of 32
    (dict(units=range(0, 28)), 64),                 # units 28..31 of each gate: 4 blocks of 16
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_products_touch_only_trainable_row_blocks(backend, selector, rows, product_shapes):
    hidden, inputs = 32, 24
    model = rnnfast.LSTM(inputs, hidden, backend=backend)
    rnnfast.freeze(model, **selector)
    out, _ = model(torch.randn(9, 4, inputs))
    product_shapes.clear()
    out.sum().backward()
    # dW_ih [rows, 24] and dW_hh [rows, 32]: only the trainable rows, never all 128.
    assert sum(n for n, _ in product_shapes) == 2 * rows, product_shapes
    assert {c for _, c in product_shapes} == {inputs, hidden}


def test_blocks_are_derived_once_per_mask_and_again_when_it_changes(monkeypatch):
    derived = []
    original = trainable._derive
    monkeypatch.setattr(trainable, "_derive", lambda mask: derived.append(mask.shape) or original(mask))
    model = rnnfast.LSTM(24, 32, backend="reference")
    rnnfast.freeze(model, gates="ifg")
    assert len(derived) == 2                  # at freeze time: W_ih and W_hh (biases need none)
    for _ in range(3):
        model(torch.randn(4, 2, 24))[0].sum().backward()
    assert len(derived) == 2                  # training steps reuse them
    rnnfast.unfreeze(model, gates="g")        # a new mask: new blocks
    assert len(derived) == 4
    mask = frozen_mask(model, "weight_hh_l0")
    mask[96:].fill_(True)                     # an in-place edit bumps the version
    model.zero_grad()
    model(torch.randn(4, 2, 24))[0].sum().backward()
    assert len(derived) == 5
    assert model.weight_hh_l0.grad[96:].eq(0).all()


def test_small_products_are_computed_whole_where_skipping_would_not_pay(monkeypatch, product_shapes):
    monkeypatch.setattr(trainable, "_MIN_SAVED_PER_CALL", {"cpu": 1 << 20})
    mask = torch.zeros(128, 64, dtype=torch.bool)
    mask[:96] = True                                  # 3 of 4 gates frozen: one run of 32 rows
    a, b = torch.randn(100, 128), torch.randn(100, 64)
    small = trainable.masked_product(a, b, mask, torch.float32)   # saves 100*64*96 < 2 * 2^20
    big = trainable.masked_product(torch.randn(400, 128), torch.randn(400, 64), mask, torch.float32)
    assert product_shapes == [(128, 64), (32, 64)]    # whole, then only the trainable run
    assert torch.equal(small, _compute_then_zero(a, b, mask, torch.float32))
    assert big[:96].eq(0).all() and big[96:].ne(0).all()


@pytest.mark.parametrize("size, bounds", [
    (5, [(0, 5)]), (16, [(0, 16)]), (17, [(0, 17)]), (31, [(0, 31)]), (32, [(0, 16), (16, 32)]),
    (80, [(0, 16), (16, 32), (32, 48), (48, 64), (64, 80)]), (33, [(0, 16), (16, 33)]),
])
def test_blocks_never_leave_a_single_row(size, bounds):
    assert trainable._block_bounds(size) == bounds


def test_one_trainable_entry_costs_one_block_of_rows():
    mask = torch.ones(128, 64, dtype=torch.bool)
    mask[100, 3] = False
    blocks = trainable.trainable_blocks(mask)
    assert blocks.runs == ((96, 112),) and blocks.computed_rows == 16
    assert blocks.frozen_part.shape == (16, 64) and blocks.frozen_part.sum() == 16 * 64 - 1


@pytest.mark.parametrize("need_dh0", [False, True])
def test_first_step_product_skipped_only_when_h0_needs_no_gradient(need_dh0, monkeypatch):
    """Frozen units still carry the chain to the trainable ones, so the only recurrent
    product that no gradient can need is the first step's, which feeds dh0 alone."""
    calls = []
    original = reference.Product

    class CountingProduct(original):
        def __call__(self, a, bias=None):
            calls.append(a.shape[0])
            return super().__call__(a, bias)

    monkeypatch.setattr(reference, "Product", CountingProduct)
    model = rnnfast.LSTM(6, 8, backend="reference")
    h0 = torch.randn(1, 3, 8, requires_grad=need_dh0)
    out, _ = model(torch.randn(5, 3, 6), (h0, torch.zeros(1, 3, 8)))
    calls.clear()
    out.sum().backward()
    recurrent = [n for n in calls if n == 3]  # [B, 4H] @ W_hh products of the chain
    assert len(recurrent) == (5 if need_dh0 else 4)
    assert (h0.grad is not None) == need_dh0
