"""The C++ CPU backend (csrc/cpu/, rnnfast/backends/cpu/): its layer calls against the
reference backend's, in every case the contract names (dense/packed, reverse,
proj_size, no bias, save modes, `needs`, freeze masks), at odd sizes and at a size
whose cell math runs on several threads; its build/fallback behaviour and its errors.
The backend-agnostic suites (parity with nn.LSTM, gradcheck, fuzz, freeze) run on it
through conftest.BACKENDS."""
import warnings

import pytest
import torch

import rnnfast
from conftest import NEEDS
from helpers import layer_args, upstream_grads
from rnnfast import backends
from rnnfast.backends import cpu as cpu_backend, reference
from rnnfast.backends.cpu import backward as cpu_backward
from rnnfast.precision import magnitudes, max_errors, rule_violations

pytestmark = pytest.mark.skipif(backends.available_backends()["cpu"] is not None,
                                reason=f"cpu backend unavailable: {backends.available_backends()['cpu']}")

T, B, I, H = 7, 3, 5, 20      # odd sizes: H is not a multiple of the vector width
LENGTHS = [7, 5, 5, 2, 1]     # packed batch of 5, rows leave at different steps
SAVED = ("gates", "cells", "hidden")


def _cases():
    for lengths in (None, LENGTHS):
        for proj in (0, 6):
            for reverse in (False, True):
                yield pytest.param(lengths, proj, reverse,
                                   id=f"{'packed' if lengths else 'dense'}-proj{proj}-{'rev' if reverse else 'fwd'}")


def _args(lengths, proj, bias=True, dtype=torch.float64, **sizes):
    size = dict(T=T, B=len(lengths) if lengths else B, I=I, H=H) | sizes
    return layer_args(size["T"], size["B"], size["I"], size["H"], proj=proj, bias=bias,
                      lengths=lengths, dtype=dtype)


def _backward_args(forward_out, args, reverse, needs, frozen=(None,) * 5, upstream=(True,) * 3):
    y, h_n, c_n, gates, cells, hidden = forward_out
    dy, dh_n, dc_n = (g if use else None for g, use in zip(upstream_grads(y, h_n, c_n), upstream))
    x, batch_sizes, h0, c0, w_ih, w_hh, _, _, w_hr = args
    return (dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
            hidden if w_hr is not None else None, reverse, list(needs), list(frozen), list(x.shape))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lengths,proj,reverse", list(_cases()))
def test_forward_and_backward_match_reference(lengths, proj, reverse, bias, dtype):
    args = _args(lengths, proj, bias, dtype)
    ours = cpu_backend.lstm_forward(*args, reverse, "all")
    expected = reference.forward(*args, reverse, "all")
    for name, got, want in zip(("y", "h_n", "c_n") + SAVED, ours, expected):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, msg=name)
    needs = [True] * 5 + [bias, bias, bool(proj)]
    # Every combination of incoming gradients: the chain must start from zeros for
    # the ones that are absent.
    for upstream in [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]:
        grads, dgates = cpu_backend.lstm_backward(*_backward_args(ours, args, reverse, needs, upstream=upstream))
        want_grads, want_dgates = reference.backward(*_backward_args(expected, args, reverse, needs,
                                                                     upstream=upstream))
        torch.testing.assert_close(dgates, want_dgates)
        for slot, got, want in zip(("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh", "dW_hr"),
                                   grads, want_grads):
            assert (got is None) == (want is None), slot
            if want is not None:
                torch.testing.assert_close(got, want, msg=f"{slot} with upstream {upstream}")


@pytest.mark.parametrize("save", ["all", "cells", "none"])
@pytest.mark.parametrize("proj", [0, 6])
def test_save_modes_keep_exactly_what_backward_needs(save, proj):
    args = _args(LENGTHS, proj)
    ours = cpu_backend.lstm_forward(*args, True, save)
    expected = reference.forward(*args, True, save)
    for name, got, want in zip(("y", "h_n", "c_n") + SAVED, ours, expected):
        assert got.shape == want.shape, f"{name} with save={save!r}"
        torch.testing.assert_close(got, want)
    kept = {name for name, t in zip(SAVED, ours[3:]) if t.numel()}
    assert kept == {"all": {"gates", "cells", "hidden"} if proj else {"gates", "cells"},
                    "cells": {"cells"}, "none": set()}[save]


def test_backward_computes_only_what_needs_asks_and_zeroes_frozen_entries():
    args = _args(None, 6)
    forward_out = cpu_backend.lstm_forward(*args, False, "all")
    w_hh = args[5]
    frozen_rows = torch.zeros_like(w_hh, dtype=torch.bool)
    frozen_rows[: 2 * H] = True  # gates i and f of W_hh
    needs = [False, True, False, False, True, True, False, False]
    frozen = [None, frozen_rows, None, None, None]
    grads, _ = cpu_backend.lstm_backward(*_backward_args(forward_out, args, False, needs, frozen))
    assert [g is not None for g in grads] == needs
    want, _ = reference.backward(*_backward_args(reference.forward(*args, False, "all"), args, False,
                                                 needs, frozen))
    assert torch.equal(grads[4][: 2 * H], torch.zeros_like(grads[4][: 2 * H]))
    assert grads[4][2 * H:].abs().min() > 0
    for got, expected in zip(grads, want):
        if expected is not None:
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("sizes", [dict(T=1, B=1, I=1, H=1), dict(T=3, B=64, I=8, H=160),
                                   dict(T=20, B=7, I=200, H=150), dict(T=2, B=2, I=300, H=512)],
                         ids=["one-of-each", "multithreaded-cell", "blocked-products",
                              "scratch-not-kept"])
def test_extreme_sizes_match_reference(sizes):
    """H=1: only a vector tail; B*H=10240 units: each step's cell math is split over
    threads; I=200, H=150, B=7, 140 rows: every product spans several inner blocks (128),
    row blocks (96), a ragged column tile and a partial row tile, split over threads;
    I=300, H=512 in fp64: W_ih^T and W_hh's panels are 4.9 and 8.4 MB, over what a thread
    keeps between calls (4 MB a buffer), so they live in the call's own buffers."""
    args = _args(None, 0, **sizes)
    ours = cpu_backend.lstm_forward(*args, True, "all")
    expected = reference.forward(*args, True, "all")
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)
    needs = [True] * 7 + [False]
    grads, _ = cpu_backend.lstm_backward(*_backward_args(ours, args, True, needs))
    want, _ = reference.backward(*_backward_args(expected, args, True, needs))
    for got, expected_grad in zip(grads[:7], want[:7]):
        torch.testing.assert_close(got, expected_grad)


def test_bidirectional_packed_module_matches_nn_lstm():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=6, batch_first=True)
    ours = rnnfast.LSTM.from_torch(ref, backend="cpu")
    x = torch.randn(len(LENGTHS), T, I)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True)
    (out, (h, c)), (want_out, (want_h, want_c)) = ours(packed), ref(packed)
    for got, want in ((out.data, want_out.data), (h, want_h), (c, want_c)):
        torch.testing.assert_close(got, want)
    (out.data.sum() + h.sum()).backward()
    (want_out.data.sum() + want_h.sum()).backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("proj", [0, 5])
def test_inference_forward_gives_the_training_forwards_bits(proj):
    """Inference (nothing saved, the activations not written back) and the training
    forward run the same sums: equal outputs bit for bit, on packed lengths in both
    directions over 100 steps, and nn.LSTM's within tolerance."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(7, 12, num_layers=2, bidirectional=True, proj_size=proj)
    ours = rnnfast.LSTM.from_torch(ref, backend="cpu")
    lengths = [100, 71, 3]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(100, 3, 7), lengths)
    trained, (h_t, c_t) = ours(packed)        # parameters need grad: gates saved
    with torch.no_grad():
        inferred, (h_i, c_i) = ours(packed)
        want, (want_h, want_c) = ref(packed)
    for got, same in ((inferred.data, trained.data), (h_i, h_t), (c_i, c_t)):
        assert torch.equal(got, same.detach())
    for got, other in ((inferred.data, want.data), (h_i, want_h), (c_i, want_c)):
        torch.testing.assert_close(got, other)


def test_auto_picks_cpu_for_every_float_dtype_on_cpu_only():
    cpu = torch.device("cpu")
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert backends.resolve("auto", cpu, dtype) == "cpu"
    assert backends.get("cpu").unsupported_reason(torch.device("cuda"), torch.float32) is not None


@pytest.mark.parametrize("has_bf16", [True, False], ids=["avx512-bf16", "no-bf16"])
def test_16bit_layers_without_bf16_kernels_run_widened(monkeypatch, has_bf16):
    """fp16 layers, and bf16 ones where the build has no bf16 kernels, run the fp32
    kernels on fp32 copies: the extension never sees a 16-bit tensor then."""
    monkeypatch.setattr(cpu_backend.build, "has_bf16_kernels", lambda: has_bf16)
    assert cpu_backend.runs_widened(torch.float16)
    assert cpu_backend.runs_widened(torch.bfloat16) == (not has_bf16)
    assert not cpu_backend.runs_widened(torch.float32) and not cpu_backend.runs_widened(torch.float64)
    seen = []
    real = cpu_backend.extension()

    class Spy:
        def __getattr__(self, name):
            def call(*args):
                seen.append({a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()})
                return getattr(real, name)(*args)
            return call
    monkeypatch.setattr(cpu_backend, "_extension", Spy())
    model = rnnfast.LSTM(I, H, backend="cpu", dtype=torch.float16)
    x = torch.randn(T, B, I, dtype=torch.float16, requires_grad=True)
    y, (h_n, c_n) = model(x)
    y.float().sum().backward()
    assert {y.dtype, h_n.dtype, c_n.dtype, x.grad.dtype, model.weight_hh_l0.grad.dtype} == {torch.float16}
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)


def test_a_call_it_cannot_take_falls_back_to_reference_with_the_reason(monkeypatch):
    monkeypatch.setattr(backends, "_warned_fallbacks", set())  # said once per process
    with pytest.warns(UserWarning, match=r"backend 'cpu' does not support this call \(its kernels "
                                         r"run on CPU tensors, got a cuda tensor\)"):
        assert backends.resolve("cpu", torch.device("cuda"), torch.float32) == "reference"


def test_kernel_rejects_inconsistent_arguments_naming_expected_and_got():
    x, _, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = _args(None, 0, dtype=torch.float32)
    ext = cpu_backend.extension()

    def call(x=x, batch_sizes=None, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=None, b_hh=None):
        return ext.forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, True, True)

    with pytest.raises(ValueError, match=r"w_hh: expected shape \[80, 20\], got \[80, 19\]"):
        call(w_hh=w_hh[:, :19])
    with pytest.raises(TypeError, match=r"w_ih: expected dtype Float, got Double"):
        call(w_ih=w_ih.double())
    with pytest.raises(TypeError, match=r"expected float32, float64 or bfloat16 input, got Half"):
        call(x=x.half())
    with pytest.raises(TypeError, match=r"c0: expected dtype Float, got Double"):
        call(c0=c0.double())
    with pytest.raises(ValueError, match=r"bias: expected shape \[80\], got \[20\]"):
        call(b_ih=b_ih[:20], b_hh=b_hh)
    with pytest.raises(ValueError, match=r"b_ih and b_hh: expected both or neither"):
        call(b_ih=b_ih)
    with pytest.raises(ValueError, match=r"x: expected a CPU tensor, got one on meta"):
        call(x=x.to("meta"))
    with pytest.raises(ValueError, match=r"bias: expected a CPU tensor, got one on meta"):
        call(b_ih=b_ih, b_hh=b_hh.to("meta"))
    with pytest.raises(ValueError, match=r"x: expected a batch of 3 \(h0's rows\), got shape \[7, 2, 5\]"):
        call(x=x[:, :2])
    with pytest.raises(ValueError, match=r"x: expected packed rows \[N, I\], got shape \[7, 3, 5\]"):
        call(batch_sizes=torch.tensor([3] * T))
    with pytest.raises(ValueError, match=r"batch_sizes: expected a 1-D int64 CPU tensor, got 1-D Int"):
        call(x=x.reshape(-1, I), batch_sizes=torch.tensor([3] * T, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"step 6: expected rows \[offset, offset \+ size\) within the 20"):
        call(x=x.reshape(-1, I)[:20], batch_sizes=torch.tensor([3] * T))


def test_without_a_compiler_rnnfast_says_so_once_and_runs_reference(monkeypatch):
    reason = "no C++ compiler ('c++' not found on PATH; set CXX or install g++)"
    monkeypatch.setattr(cpu_backend.build, "missing_tool", lambda: reason)
    monkeypatch.setattr(cpu_backend, "_extension", None)
    monkeypatch.setattr(cpu_backend, "_build_error", None)
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match=r"C\+\+ CPU kernels cannot be used \(no C\+\+ compiler"):
        assert backends.resolve("auto", cpu, torch.float32) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", cpu, torch.float32) == "reference"  # said once only
        out, _ = rnnfast.LSTM(I, H)(torch.randn(T, B, I))
    assert out.shape == (T, B, H)
    assert backends.available_backends()["cpu"] == reason
    with pytest.raises(RuntimeError, match="rnnfast backend 'cpu' is not available: no C\\+\\+ compiler"):
        rnnfast.LSTM(I, H, backend="cpu")


needs_bf16_kernels = pytest.mark.skipif(not cpu_backend.build.has_bf16_kernels(),
                                        reason="this CPU has no AVX512_BF16: bf16 layers run widened")
# The 16-bit ways a layer runs: bf16 on the bf16 kernels (where built), and widened
# (runs_widened): fp16 always, bf16 forced so on a CPU with the bf16 kernels too.
SIXTEEN_BIT = [pytest.param(torch.bfloat16, False, marks=needs_bf16_kernels, id="bf16-kernels"),
               pytest.param(torch.bfloat16, True, id="bf16-widened"),
               pytest.param(torch.float16, True, id="fp16-widened")]


@pytest.fixture
def widened(monkeypatch):
    """widened(True): bf16 layers run widened even where the build has bf16 kernels."""
    def set_widened(on: bool) -> None:
        if on:
            monkeypatch.setattr(cpu_backend.build, "has_bf16_kernels", lambda: False)
    return set_widened


@pytest.mark.parametrize("dtype,wide", [pytest.param(torch.float32, False, id="fp32"), *SIXTEEN_BIT])
@pytest.mark.parametrize("lengths,proj,reverse,sizes", [
    (None, 0, False, dict(H=40)), (LENGTHS, 6, True, dict(H=40)),
    (None, 7, False, dict(I=9, H=21)), (LENGTHS, 0, True, dict(I=301, H=263))],
    ids=["dense", "packed-proj-rev", "odd-inner-proj", "odd-inner-two-blocks-rev"])
def test_error_against_fp64_within_the_rule(lengths, proj, reverse, sizes, dtype, wide, widened):
    """DESIGN.md §6: the kernel's error against a float64 reference may be at most ~2x the
    reference backend's own error in the same dtype (fp32: the fitted tanh of
    lstm_cell_cpu.h and the extension's GEMM; bf16 kernels: vdpbf16ps products summed in
    fp32; widened: the fp32 layer, rounded once). Odd inner sizes (I, P) give the pair
    products' odd last index; I = 301 and P = 263 also span two of the bf16 GEMM's
    256-deep inner blocks."""
    widened(wide)
    args64 = _args(lengths, proj, T=30, **sizes)
    args = [a.to(dtype) if a is not None and a.is_floating_point() else a for a in args64]
    exact = reference.forward(*args64, reverse, "all")
    needs = [True] * 8 if proj else [True] * 7 + [False]
    exact_grads, _ = reference.backward(*_backward_args(exact, args64, reverse, needs))
    exact_all = list(exact[:3]) + [g for g in exact_grads if g is not None]
    errors = {}
    for name, backend in (("reference", reference), ("cpu", cpu_backend)):
        fwd = backend.forward if backend is reference else backend.lstm_forward
        bwd = backend.backward if backend is reference else backend.lstm_backward
        out = fwd(*args, reverse, "all")
        grads, _ = bwd(*_backward_args(out, args, reverse, needs))
        got = list(out[:3]) + [g for g in grads if g is not None]
        assert [t.dtype for t in got] == [dtype] * len(got)
        errors[name] = max_errors(got, exact_all)
    names = ["y", "h_n", "c_n"] + [n for n, need in zip(NEEDS, needs) if need]
    assert rule_violations(errors["cpu"], errors["reference"], dtype, magnitudes(exact_all), names) == []
    assert errors["cpu"][0] > 0  # y is not exact: really ran in this dtype


@pytest.mark.parametrize("dtype,wide", SIXTEEN_BIT)
@pytest.mark.parametrize("lengths,proj,reverse", list(_cases()))
def test_16bit_layer_keeps_the_references_dtypes_and_is_within_the_rule(lengths, proj, reverse,
                                                                       dtype, wide, widened):
    """Every contract case in bf16 and fp16: outputs in the layer's dtype, the saved gates
    and cells in fp32 (the accumulation dtype) and hidden in the layer's dtype, as the
    reference backend's; values within DESIGN.md §6's rule of the reference's own error
    in that dtype against float64."""
    widened(wide)
    args64 = _args(lengths, proj)
    args = [a.to(dtype) if a is not None and a.is_floating_point() else a for a in args64]
    exact = reference.forward(*args64, reverse, "all")
    ours = cpu_backend.lstm_forward(*args, reverse, "all")
    want = reference.forward(*args, reverse, "all")
    for name, got, ref in zip(("y", "h_n", "c_n") + SAVED, ours, want):
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
    assert rule_violations(max_errors(ours[:3], exact[:3]), max_errors(want[:3], exact[:3]),
                           dtype, magnitudes(exact[:3]), ["y", "h_n", "c_n"]) == []
    needs = [True] * 7 + [bool(proj)]
    grads, dgates = cpu_backend.lstm_backward(*_backward_args(ours, args, reverse, needs))
    want_grads, want_dgates = reference.backward(*_backward_args(want, args, reverse, needs))
    assert dgates.dtype == want_dgates.dtype == torch.float32
    assert [g.dtype for g in grads if g is not None] == [dtype] * sum(needs)


def _ulps_from_float64(got, exact, dtype):
    """|got - exact| in units of the last place of exact rounded to dtype."""
    step = torch.nextafter(exact.to(dtype).abs(), torch.tensor(float("inf"), dtype=dtype)).double() \
        - exact.to(dtype).abs().double()
    return ((got.double() - exact).abs() / step).max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_activations_within_a_few_ulp_of_float64(dtype):
    """The cell's activations on a dense grid, and their special values. tanh (fp32: a
    polynomial below |x| = 0.9, 1 - 2/(1 + exp(2|x|)) above; measured 0.97 ulp) within 2
    ulp; exp (fp32 with AVX-512: lstm_cell_cpu.h's own, measured 0.91; SLEEF's 0.57) within
    1 ulp over the range where e^x is normal; sigmoid = 1/(1 + e^-x) adds two roundings:
    within 2.5 ulp (measured 2.04; torch.sigmoid's own fp32 error on this grid is 1.95)."""
    ext = cpu_backend.extension()
    x = torch.cat([torch.linspace(-12, 12, 1_000_001), torch.linspace(-1, 1, 500_001),
                   torch.logspace(-30, 1, 10_001), -torch.logspace(-30, 1, 10_001)]).to(dtype)
    assert _ulps_from_float64(ext.cell_activation(x, "tanh"), torch.tanh(x.double()), dtype) <= 2.0
    assert _ulps_from_float64(ext.cell_activation(x, "sigmoid"), torch.sigmoid(x.double()), dtype) <= 2.5
    wide = torch.linspace(-87, 88, 2_000_001, dtype=torch.float64).to(dtype)   # e^x normal in fp32
    assert _ulps_from_float64(ext.cell_activation(wide, "exp"), torch.exp(wide.double()), dtype) <= 1.0
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 100.0, -100.0], dtype=dtype)
    assert ext.cell_activation(special, "tanh").tolist() == [0.0, -0.0, 1.0, -1.0, 1.0, -1.0]
    assert ext.cell_activation(special, "sigmoid").tolist() == [0.5, 0.5, 1.0, 0.0, 1.0, torch.sigmoid(special[5:]).item()]
    assert ext.cell_activation(special[:4], "exp").tolist() == [1.0, 1.0, float("inf"), 0.0]
    nan = torch.tensor([float("nan")], dtype=dtype)
    assert all(ext.cell_activation(nan, f).isnan().all() for f in ("tanh", "sigmoid", "exp"))


@pytest.mark.parametrize("dtype,hidden,wide", [
    (torch.float32, 150, False), pytest.param(torch.bfloat16, 263, False, marks=needs_bf16_kernels),
    (torch.float16, 150, True)], ids=["fp32", "bf16-kernels", "fp16-widened"])
def test_a_sequence_gives_the_same_bits_alone_or_in_any_batch(dtype, hidden, wide):
    """Each output element is summed in one order whatever the batch (products tiled by
    rows, the few-row gate kernel at B <= 2, threads split unit blocks), so a sequence's outputs
    do not depend on what else is in the batch. H = 150 spans two fp32 inner blocks; bf16's
    H = 263 two of its blocks, with an odd last index after the pairs; fp16 runs widened,
    on the fp32 kernels."""
    assert cpu_backend.runs_widened(dtype) == wide
    torch.manual_seed(0)
    model = rnnfast.LSTM(40, hidden, backend="cpu", dtype=dtype)
    x = torch.randn(9, 7, 40, dtype=dtype)
    with torch.no_grad():
        whole, _ = model(x)
        for rows in (slice(0, 1), slice(5, 7), slice(2, 5)):   # B = 1, 2 and 3
            alone, _ = model(x[:, rows])
            assert torch.equal(alone, whole[:, rows])


@pytest.fixture
def threads():
    """Sets torch's thread count for a test, and puts it back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32,
                                   pytest.param(torch.bfloat16, marks=needs_bf16_kernels)])
@pytest.mark.parametrize("size,lengths,proj,reverse", [
    (dict(B=1, H=64), None, 0, False),         # B=1: a block's units cut in two
    (dict(B=9, H=64), None, 0, True),          # rows in chunks
    (dict(B=8, H=64), None, 0, False),         # not 6 + 2 rows: bf16 has no 1-2 row panels here
    (dict(B=2, H=200), None, 70, False),       # ragged blocks; projection columns split
    (dict(B=5, H=64), [9, 6, 6, 2, 1], 0, True),   # packed: the cut changes from step to step
    (dict(B=5, H=130), [9, 6, 6, 2, 1], 33, False),
], ids=["B1-halved-block", "B9-row-chunks", "B8-row-chunks", "projection", "packed-reverse",
        "packed-projection"])
def test_threads_split_a_forwards_steps_without_changing_a_bit(threads, dtype, size, lengths, proj, reverse):
    """A forward keeps one team of threads for the whole sequence, a barrier between steps
    (csrc/cpu: forward_recurrence). Each step is cut into tasks by unit blocks, halves of
    blocks, chunks of rows and, with a projection, columns of W_hr; every output element
    is summed in one order whatever the cut, so 2 and 3 threads give one thread's bits."""
    ext = cpu_backend.extension()
    args = _args(lengths, proj, dtype=dtype, T=9, I=24, **size)
    steps = [size["B"]] * 9 if lengths is None else args[1].tolist()
    threads(1)
    assert ext.forward_team(steps, size["H"], proj or size["H"], dtype) == 1
    alone = cpu_backend.lstm_forward(*args, reverse, "all")
    for count in (2, 3):
        threads(count)
        assert ext.forward_team(steps, size["H"], proj or size["H"], dtype) > 1   # split indeed
        split = cpu_backend.lstm_forward(*args, reverse, "all")
        for name, got, want in zip(("y", "h_n", "c_n") + SAVED, split, alone):
            assert torch.equal(got, want), (count, name)


def _close_as_torch_mm(got, a, b):
    """DESIGN.md §6's rule: against the float64 product, at most twice torch.mm's error."""
    exact = a.double() @ b.double()
    ours, theirs = (got.double() - exact).abs().max(), ((a @ b).double() - exact).abs().max()
    assert ours <= 2 * theirs + 1e-12, (ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_matches_torch_mm_on_views_and_row_slices(dtype):
    """The backend's mm (used for dx and the weight gradients): a transposed and a sliced
    first operand, an out= row slice, odd sizes, an empty inner dimension."""
    torch.manual_seed(0)
    a, b = torch.randn(301, 70, dtype=dtype), torch.randn(301, 131, dtype=dtype)
    _close_as_torch_mm(cpu_backward.mm(a.t(), b), a.t(), b)
    _close_as_torch_mm(cpu_backward.mm(a[:, 3:20].t(), b), a[:, 3:20].t(), b)
    out = torch.zeros(70, 131, dtype=dtype)
    cpu_backward.mm(a[:, 10:27].t(), b, out=out[10:27])
    assert torch.equal(out[10:27], cpu_backward.mm(a.t(), b)[10:27])   # rows: same bits
    assert out[:10].eq(0).all() and out[27:].eq(0).all()
    _close_as_torch_mm(cpu_backward.mm(b.t()[:, :5], b[:5, :9]), b.t()[:, :5], b[:5, :9])
    assert cpu_backward.mm(a[:0].t(), b[:0]).eq(0).all()
    # A transposed view is packed a row block (96 rows) and inner block (128-512) at a
    # time: 203 rows, 1100 inner and a ragged column tile cross every edge, and the
    # packed product has the bits of the one from a contiguous copy (read in place).
    a, b = torch.randn(1100, 203, dtype=dtype), torch.randn(1100, 131, dtype=dtype)
    packed = cpu_backward.mm(a.t(), b)
    assert torch.equal(packed, cpu_backward.mm(a.t().contiguous(), b))
    _close_as_torch_mm(packed, a.t(), b)
    if dtype == torch.float32:  # (float64 is the measure itself)
        # A weight gradient over T x B = 25,600 rows: summed in chunks (one chain of
        # multiply-adds had 10-18x torch.mm's error here).
        a, b = torch.randn(25600, 48, dtype=dtype), torch.randn(25600, 40, dtype=dtype)
        _close_as_torch_mm(cpu_backward.mm(a.t(), b), a.t(), b)
    with pytest.raises(ValueError, match=r"expected a \[M, K\] and b \[K, N\]"):
        cpu_backward.mm(a, b)
