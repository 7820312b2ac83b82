"""DESIGN.md §6's tolerance rule (rnnfast.precision), and its calibration: it must accept
a correct layer that only sums in another order, and refuse one that multiplies in less
precision than it claims. Every kernel test and `python -m rnnfast verify` judge by it,
so a rule that refuses the reference itself would fail correct kernels at random (as
the max of a few hundred rounding errors moves with the summation order and with the
CPU's own matmul kernels)."""
import pytest
import torch

from rnnfast.backends import reference
from rnnfast.precision import allowed_error, rule_violations

from helpers import layer_args, rule_violations_vs_float64


def test_precision_rule():
    eps16 = torch.finfo(torch.float16).eps
    assert rule_violations([2e-3], [1e-3], torch.float16) == []
    assert rule_violations([2e-3 + 2 * eps16], [1e-3], torch.float16) != []
    assert rule_violations([float("nan")], [1e-3], torch.float16) == ["tensor 0: error nan > 0.00298 "
                                                                      "(reference's own error 0.001)"]
    # The floor scales with the tensor's size and allows 16 rounding steps in fp32.
    assert allowed_error(0.0, torch.float32, scale=4.0) == 16 * torch.finfo(torch.float32).eps * 4


def _units_relabelled(perm):
    """The reference backend on the same layer with its hidden units relabelled: new unit
    j is unit perm[j]. Every sum over units (the recurrent products, the projection, the
    weight gradients' rows) runs in another order; results come back in the caller's
    labels. (forward, backward) with a backend's contract."""
    hidden = len(perm)
    rows = torch.cat([gate * hidden + perm for gate in range(4)])  # the gate rows alike
    unit_back, row_back = perm.argsort(), rows.argsort()

    def take(t, dim, index):  # t's entries `index` along dim; None stays None
        return t if t is None or index is None else t.index_select(dim, index)

    def forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save):
        out = None if w_hr is not None else perm  # with a projection, outputs keep their labels
        y, h_n, c_n, gates, cells, hid = reference.forward(
            x, batch_sizes, take(h0, 1, out), take(c0, 1, perm), take(w_ih, 0, rows),
            take(take(w_hh, 0, rows), 1, out), take(b_ih, 0, rows), take(b_hh, 0, rows),
            take(w_hr, 1, perm), reverse, save)
        back = None if w_hr is not None else unit_back
        # the saved gates, cells and hidden stay relabelled: only `backward` reads them
        return take(y, -1, back), take(h_n, 1, back), take(c_n, 1, unit_back), gates, cells, hid

    def backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
                 hid, reverse, needs, frozen, x_shape):
        assert frozen == [None] * 5
        out, back = (None, None) if w_hr is not None else (perm, unit_back)
        grads, dgates = reference.backward(
            take(dy, -1, out), take(dh_n, 1, out), take(dc_n, 1, perm), x, batch_sizes,
            take(h0, 1, out), take(c0, 1, perm), take(w_ih, 0, rows),
            take(take(w_hh, 0, rows), 1, out), take(w_hr, 1, perm), take(y, -1, out), gates,
            cells, hid, reverse, needs, frozen, x_shape)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
        return [dx, take(dh0, 1, back), take(dc0, 1, unit_back), take(dw_ih, 0, row_back),
                take(take(dw_hh, 0, row_back), 1, back), take(db_ih, 0, row_back),
                take(db_hh, 0, row_back), take(dw_hr, 1, unit_back)], take(dgates, 1, row_back)

    return forward, backward


# (T, B, I, H, proj, reverse); the first is the layer where a floor of 16 fp32 steps of
# 1.0, rather than of the tensor's magnitude, refused the relabelled reference's dW_hh
# (1.31 times that allowance, seed 0) and failed the CUDA kernels' emulated test.
LAYERS = [(2, 48, 3, 128, 0, True), (7, 3, 5, 20, 0, False), (20, 8, 16, 64, 0, False),
          (7, 3, 5, 20, 11, True), (4, 16, 8, 256, 0, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("T,B,I,H,proj,reverse", LAYERS)
def test_the_rule_accepts_the_reference_summing_in_another_order(dtype, T, B, I, H, proj, reverse):
    for seed in range(4):
        args64 = layer_args(T, B, I, H, proj=proj, seed=seed)
        perm = torch.randperm(H, generator=torch.Generator().manual_seed(seed))
        assert rule_violations_vs_float64(args64, dtype, reverse, _units_relabelled(perm)) == []


def _weights_in_tf32(forward, backward):
    """The backend with its weights rounded to TF32 (10 mantissa bits), as a kernel whose
    fp32 products silently ran as one TF32 mma instead of three would see them."""
    def tf32(w):
        return None if w is None else ((w.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)

    def forward_tf32(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save):
        return forward(x, batch_sizes, h0, c0, tf32(w_ih), tf32(w_hh), b_ih, b_hh, tf32(w_hr),
                       reverse, save)

    def backward_tf32(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, *rest):
        return backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, tf32(w_ih), tf32(w_hh),
                        tf32(w_hr), *rest)

    return forward_tf32, backward_tf32


@pytest.mark.parametrize("T,B,I,H,proj,reverse", LAYERS)
def test_the_rule_refuses_fp32_weights_read_in_tf32(T, B, I, H, proj, reverse):
    args64 = layer_args(T, B, I, H, proj=proj)
    broken = rule_violations_vs_float64(args64, torch.float32, reverse,
                                        _weights_in_tf32(reference.forward, reference.backward))
    assert any(name.startswith("y:") for name in broken), broken
