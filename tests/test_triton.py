"""The Triton kernels against the reference backend, called directly (forward and
backward contracts of rnnfast.backends), on odd sizes, both directions, packed rows,
projection, forced launch plans and freeze masks.

Without a GPU these run in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1); with one they run the compiled kernels on CUDA. 16-bit results
follow DESIGN.md §6: error against float64 at most 2x the reference's own error in the
same precision.
"""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

import rnnfast  # noqa: E402
from rnnfast.backends import available_backends, reference  # noqa: E402
from rnnfast.backends import triton as triton_backend  # noqa: E402
from rnnfast.backends.triton.cell import dot, rounded, tf32_parts  # noqa: E402

from conftest import kernels_must_run  # noqa: E402
from helpers import (layer_args, reference_orders, results_vs_float64,  # noqa: E402
                     rule_violations_of_results, rule_violations_vs_float64, run_layer)

pytestmark = [pytest.mark.skipif(available_backends()["triton"] is not None,
                                 reason=f"triton backend unavailable: {available_backends()['triton']}"),
              kernels_must_run]

DEVICE = torch.device("cpu" if triton_backend.interpreting() else "cuda")


def _kernels():
    from rnnfast.backends.triton import backward, forward, plan
    return forward, backward, plan


def _layer(*args, **kwargs):
    return layer_args(*args, device=DEVICE, **kwargs)


def _compare(args, reverse, fwd_plan=None, bwd_plan=None, **kw):
    forward, backward, _ = _kernels()
    outs_ref, grads_ref = run_layer(reference.forward, reference.backward, args, reverse, **kw)
    plans = {} if fwd_plan is None else {"plan": fwd_plan}
    fwd = lambda *a, **k: forward.forward(*a, **k, **plans)
    bwd = lambda *a, **k: backward.backward(*a, **k, **({} if bwd_plan is None else {"plan": bwd_plan}))
    outs, grads = run_layer(fwd, bwd, args, reverse, **kw)
    return outs, grads, outs_ref, grads_ref


OUTPUT_NAMES = ("y", "h_n", "c_n")
GRAD_NAMES = ("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh", "dW_hr", "dgates")


def _assert_same(outs, grads, outs_ref, grads_ref, tol):
    for name, a, b in zip(OUTPUT_NAMES, outs, outs_ref):
        assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(GRAD_NAMES, grads, grads_ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


TIGHT = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4)}

SHAPES = [  # T, B, I, H, proj, lengths
    (7, 3, 5, 20, 0, None),
    (7, 3, 5, 20, 11, None),
    (1, 1, 3, 20, 0, None),          # T = 1, B = 1
    (5, 2, 4, 96, 0, None),          # H = 96: not a power of two, several K chunks
    (7, 3, 5, 20, 0, [7, 4, 1]),     # packed, sequences of different lengths
    (6, 4, 3, 9, 5, [6, 6, 3, 2]),   # packed with projection
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H,proj,lengths", SHAPES)
def test_kernels_match_reference(dtype, reverse, T, B, I, H, proj, lengths):
    args = _layer(T, B, I, H, proj, lengths=lengths, dtype=dtype)
    _assert_same(*_compare(args, reverse), TIGHT[dtype])


def test_without_bias_and_without_incoming_gradients():
    args = _layer(7, 3, 5, 20, bias=False)
    forward, backward, _ = _kernels()
    x = args[0]
    y, h_n, c_n = forward.forward(*args, False, "none")[:3]
    ref = reference.forward(*args, False, "none")[:3]
    for a, b in zip((y, h_n, c_n), ref):
        assert_close(a, b, **TIGHT[torch.float64])
    # Only dc_n flows back (dy and dh_n None): the kernel must not read them.
    outs, grads, outs_ref, grads_ref = _compare(args, False, upstream=(None, None, torch.ones_like(c_n)))
    _assert_same(outs, grads, outs_ref, grads_ref, TIGHT[torch.float64])
    assert x.shape == (7, 3, 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("proj,lengths", [(0, None), (11, None), (0, [7, 4, 1])])
def test_16bit_error_at_most_twice_the_reference(dtype, proj, lengths):
    forward, backward, _ = _kernels()
    args64 = _layer(7, 3, 5, 20, proj, lengths=lengths)
    assert rule_violations_vs_float64(args64, dtype, True, (forward.forward, backward.backward)) == []
    (ours,), exact = results_vs_float64(args64, dtype, True, (forward.forward, backward.backward))
    assert all(ours[n].double().ne(exact[n]).any() for n in exact)  # it really ran in low precision


@pytest.mark.gpu  # the GPU's own exp and tensor-core sums, over many steps
@pytest.mark.parametrize("dtype,steps", [(torch.float16, 1024), (torch.bfloat16, 256)])
def test_16bit_error_stays_within_the_rule_over_long_sequences(dtype, steps):
    """The backward's dh chain runs on tensor cores, its gate gradients rounded to the
    16-bit dtype at every step: over long sequences every output and gradient stays
    within 2x the error of the reference (whose chain is fp32) against float64. (bf16
    passes at T = 1024 too, in 2 minutes of interpreter time: 256 steps keep CI short.)"""
    forward, backward, _ = _kernels()
    args64 = _layer(steps, 3, 5, 20)
    assert rule_violations_vs_float64(args64, dtype, False, (forward.forward, backward.backward)) == []


@pytest.fixture
def without_tf32():
    """torch's own matmul setting held off (on a GPU it would make the kernels' fp32
    products single tf32), restored after. Not monkeypatch: allow_tf32 is a property
    of torch's cuBLAS module, which monkeypatch's undo deletes instead of resetting."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.gpu
def test_fp32_tf32x3_error_stays_within_the_rule_over_1024_steps(without_tf32):
    """fp32 products run on tensor cores as tf32x3 (cell.dot: each operand split into two
    tf32 parts, three products; the interpreter, which ignores the precision, makes the
    GPU's three products itself). Over T = 1024, forward and backward, every output and
    gradient stays within DESIGN.md §6: its error against float64 at most 2x that of the
    reference backend in plain fp32 (with one tf32 product instead of three, every one
    breaks it). Prints the error along t (pytest -s): y's, and the gate gradients' (the
    backward's dh chain runs from t = T - 1 down). B = 3, H = 20: about 40 s of
    interpreter time."""
    from rnnfast.backends.triton.launch import kernel_dtypes

    assert kernel_dtypes(torch.float32)[2:] == ("tf32x3", triton_backend.interpreting())
    forward, backward, _ = _kernels()
    T, B, H = 1024, 3, 20
    args64 = _layer(T, B, 5, H)
    (ours, *peers), exact = results_vs_float64(args64, torch.float32, False,
                                               (forward.forward, backward.backward), *reference_orders(H))
    theirs = peers[0]  # the reference in its own order
    by_step = {which: {name: (got[name].double() - exact[name]).abs().reshape(T, -1).amax(dim=1)
                       for name in ("y", "dgates")}
               for which, got in (("ours", ours), ("fp32", theirs))}
    print("\nlargest error against float64 at step t: tf32x3 kernel / fp32 reference")
    for t in [*range(0, T, 128), T - 1]:
        print(f"t={t:4d}  y {by_step['ours']['y'][t]:.2e} / {by_step['fp32']['y'][t]:.2e}"
              f"  dgates {by_step['ours']['dgates'][t]:.2e} / {by_step['fp32']['dgates'][t]:.2e}")
    assert rule_violations_of_results(ours, peers, exact, torch.float32) == []


@triton.jit
def _store_rounded(x_ptr, y_ptr, N: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(y_ptr + offsets, rounded(tl.load(x_ptr + offsets), y_ptr, INTERPRET_BF16))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 3.4e38 -> fp16 inf, on purpose
def test_outputs_are_rounded_to_nearest_even():
    """Kernel outputs in a 16-bit dtype are the fp32 values rounded to nearest even, as
    torch rounds (the interpreter would truncate bf16 without `cell.rounded`)."""
    from rnnfast.backends.triton.launch import kernel_dtypes

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(1018, generator=g) * 10.0 ** torch.randint(-8, 8, (1018,), generator=g),
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.4e38])])
    x = x.to(DEVICE)
    for dtype in (torch.bfloat16, torch.float16):
        y = torch.empty(len(x), dtype=dtype, device=DEVICE)
        _store_rounded[(1,)](x, y, N=len(x), INTERPRET_BF16=kernel_dtypes(dtype)[1])
        assert_close(y, x.to(dtype), atol=0, rtol=0, equal_nan=True)


@triton.jit
def _tf32x3_dot(a_ptr, b_ptr, acc_ptr, out_ptr, big_ptr, small_ptr, N: tl.constexpr):
    index = tl.arange(0, N)[:, None] * N + tl.arange(0, N)[None, :]
    a = tl.load(a_ptr + index)
    big, small = tf32_parts(a)
    tl.store(big_ptr + index, big)
    tl.store(small_ptr + index, small)
    out = dot(a, tl.load(b_ptr + index), tl.load(acc_ptr + index), tl.float32, "tf32x3",
              False, True)
    tl.store(out_ptr + index, out)


def _tf32_parts_reference(x):
    """fp32 x -> (big, small) of tf32x3, computed apart from the kernel's bit arithmetic:
    big = x to 11 significant bits, half away from zero; small = the rest, truncated to 11
    significant bits (normal numbers; Inf and NaN: big = x)."""
    x64 = x.double()
    m, e = torch.frexp(x64)  # x = m * 2^e, 1/2 <= |m| < 1
    big = torch.sign(m) * torch.floor(m.abs() * 2**11 + 0.5) * torch.pow(2.0, e - 11.0)
    big = torch.where(x64.isfinite(), big, x64).float()  # rounds up to Inf past fp32's range
    m, e = torch.frexp(x64 - big.double())
    small = (torch.sign(m) * torch.floor(m.abs() * 2**11) * torch.pow(2.0, e - 11.0)).float()
    return big, small


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # Inf - Inf, on purpose
def test_tf32x3_products_are_made_as_on_the_gpu():
    """cell.dot with INTERPRET_TF32X3 makes what the GPU's tf32x3 makes, bit for bit:
    the operands' tf32 parts (big rounded to nearest, ties away from zero, as
    cvt.rna.tf32.f32; small truncated, as the mma reads it), then small_a·big_b +
    big_a·small_b, NaN -> 0, + big_a·big_b, + acc. b is diagonal, so every output is one
    product of each kind and its roundings are those of fp32 additions, in that order."""
    g = torch.Generator().manual_seed(0)
    N = 16
    a = torch.randn(N, N, generator=g) * 10.0 ** torch.randint(-20, 20, (N, N), generator=g)
    for i, special in enumerate([float("inf"), -float("inf"), float("nan"),
                                 torch.finfo(torch.float32).max]):  # the last rounds to Inf
        a[i, i] = special  # one a row: Inf x 0 makes NaN in the rest of its row anyway
    a[4, :4] = torch.tensor([0.0, -0.0, 1.0 + 2.0**-11, -(1.0 + 3 * 2.0**-11)])  # ties
    b = torch.diag(torch.randn(N, generator=g))
    acc = torch.randn(N, N, generator=g)
    out, big, small = (torch.empty(N, N, device=DEVICE) for _ in range(3))
    _tf32x3_dot[(1,)](a.to(DEVICE), b.to(DEVICE), acc.to(DEVICE), out, big, small, N=N)

    a_big, a_small = _tf32_parts_reference(a)
    assert_close(big.cpu(), a_big, atol=0, rtol=0, equal_nan=True)
    assert_close(small.cpu(), a_small, atol=0, rtol=0, equal_nan=True)
    a_big, a_small, b_big, b_small = (p.double() for p in (a_big, a_small,
                                                           *_tf32_parts_reference(b)))
    products = (a_small @ b_big + a_big @ b_small).float()  # float64: exact here
    products = torch.where(products.isnan(), 0.0, products)
    expected = ((a_big @ b_big + products.double()).float().double() + acc.double()).float()
    assert_close(out.cpu(), expected, atol=0, rtol=0, equal_nan=True)
    assert out[0, 0].isinf() and out[1, 1].isinf()  # not NaN: the small products' NaN masked


def _forced(plan_module, **changes):
    base = plan_module.Plan(block_b=16, block_h=16, block_k=16, batch_blocks=1,
                            programs_per_batch_block=1, one_tile=False, held_chunks=0,
                            batch_as_n=False, use_barrier=False, num_warps=4, num_stages=1)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("batch,hidden,proj,seq,forward_form,backward_form", [
    # small batch as the products' N; 32 programs of 8 units hold W_hh in 1 / 4 chunks,
    # h(t) and the gate gradients go between them as tagged words
    (4, 256, 0, 50, "barrier, one tile, held, tagged", "barrier, one tile, held, tagged"),
    # FlashRNN's case: the forward 48 programs of 16 units, tagged h (with a barrier, 96
    # of 8), the backward 48 of 16 at the barrier (each program re-reads the step's gate
    # gradients: fewer, wider programs move less; as tagged words, twice the bytes)
    (16, 768, 0, 1024, "barrier, one tile, held, tagged", "barrier, one tile, held"),
    (16, 1024, 0, 1024, "barrier, one tile, held", "barrier, one tile, held"),  # h: 2x the bytes
    (16, 2048, 0, 1024, "barrier, one tile", "barrier, one tile"),  # too wide to hold
    (4, 256, 0, 2**30, "split", "split"),          # the int32 arrival count would overflow
    (8192, 512, 0, 100, "split", "split"),         # the batch fills the GPU: no barrier needed
    (1024, 512, 0, 100, "barrier", "barrier"),     # 16 batch blocks x 8 programs, 2 tiles each
    (3, 20, 7, 7, "split", "split"),               # tiny: one program does it all
    (8, 512, 128, 100, "barrier, one tile, held", "barrier, one tile"),  # projection
])
def test_gpu_plans_for_an_h100(batch, hidden, proj, seq, forward_form, backward_form):
    """The launch plans chosen for 132 SMs: the barrier form only with a grid that fits
    at once, every reduction chunk >= 16 (tl.dot's K; M and N are padded), the batch as
    the products' N up to 8 rows, W_hh held only where each program owns one tile and
    the chunks cover the reduction (the forward's P, the backward's 4H)."""
    _, _, plan_module = _kernels()
    out_size = proj or hidden
    for direction, form in (("forward", forward_form), ("backward", backward_form)):
        plan = plan_module.gpu_plan(batch, hidden, out_size, seq, 2, sms=132, direction=direction)
        assert plan.use_barrier == form.startswith("barrier"), (direction, plan)
        assert plan.one_tile == ("one tile" in form), (direction, plan)
        assert plan.weights_resident == ("held" in form), (direction, plan)
        assert plan.tagged == ("tagged" in form), (direction, plan)
        assert plan.batch_as_n == (batch <= 8) == (plan.block_b == 8)
        assert plan.batch_blocks * plan.programs_per_batch_block <= 132 or not plan.use_barrier
        assert plan.block_k >= 16 and plan.batch_blocks * plan.block_b >= batch
        assert not plan.one_tile or plan.programs_per_batch_block == triton.cdiv(hidden,
                                                                              plan.block_h)
        if plan.weights_resident:
            reduction = out_size if direction == "forward" else 4 * hidden
            assert plan.held_chunks * plan.block_k >= reduction > (plan.held_chunks - 1) * plan.block_k


# Each code path of the kernels: (B, H, plan changes). "held" holds W_hh in chunks of
# block_k: the forward its tile's rows (P columns), the backward its columns (4H rows).
PLAN_FORMS = {
    "tiles_and_k_chunks": (12, 40, {}),                      # 3 unit tiles, 3 K chunks
    "batch_blocks": (20, 40, {}),                            # 2 batch blocks
    "barrier": (20, 40, dict(use_barrier=True)),             # the barrier's counting
    "narrow_tiles": (20, 40, dict(block_h=8)),               # 8 units: N = 32 / N = 8
    "one_tile": (20, 12, dict(one_tile=True)),               # the next step's inputs ahead
    "one_tile_barrier": (20, 12, dict(one_tile=True, use_barrier=True)),  # one a step backward
    "held": (3, 24, dict(block_h=32, one_tile=True, held=True)),  # 2 and 6 chunks
    "narrow_held": (3, 8, dict(block_h=8, one_tile=True, held=True)),
    "batch_as_n": (20, 40, dict(block_b=8, batch_as_n=True)),   # 3 batch blocks of 8
    "batch_as_n_held": (3, 24, dict(block_b=8, batch_as_n=True, block_h=32, one_tile=True,
                                    held=True)),
}


def _plan_form(plan_module, case, H, P):
    """The case's forward and backward plans (held chunks cover P and 4H)."""
    B, _, changes = PLAN_FORMS[case]
    changes = dict(changes)
    held = changes.pop("held", False)
    plan = _forced(plan_module, **changes)
    plan = dataclasses.replace(plan, batch_blocks=triton.cdiv(B, plan.block_b))
    # The interpreter takes any K; a GPU's tl.dot needs K >= 16.
    assert plan.block_k >= 16, plan
    if not held:
        return plan, plan
    return (dataclasses.replace(plan, held_chunks=triton.cdiv(P, plan.block_k), num_stages=1),
            dataclasses.replace(plan, held_chunks=triton.cdiv(4 * H, plan.block_k), num_stages=1))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 7])
@pytest.mark.parametrize("case", list(PLAN_FORMS))
def test_every_launch_plan_form(case, proj, reverse):
    """Each code path of the kernels against the reference, on packed rows whose
    sequences end (forward) or start (reverse) at different steps, so that rows join
    and leave the carried state in both kernels: several unit tiles and K chunks per
    program, several batch blocks, the grid barrier's counting (with one program per
    batch block, the only form the interpreter can run), 8-unit tiles, one tile a
    program (state in registers, the next step's inputs loaded ahead), W_hh held in
    chunks, and the batch as the products' N."""
    _, _, plan_module = _kernels()
    B, H, _ = PLAN_FORMS[case]
    fwd_plan, bwd_plan = _plan_form(plan_module, case, H, proj or H)
    lengths = [5 - (4 * i) // B for i in range(B)]  # non-increasing, from 5 down to 2
    args = _layer(5, B, 6, H, proj, lengths=lengths)
    _assert_same(*_compare(args, reverse, fwd_plan=fwd_plan, bwd_plan=bwd_plan),
                 TIGHT[torch.float64])


def _barrier_plan(plan_module, B):
    """Two programs share each batch block's unit tiles and meet at the grid barrier."""
    return _forced(plan_module, block_k=32, batch_blocks=triton.cdiv(B, 16),
                   programs_per_batch_block=2, use_barrier=True, num_stages=2)


@pytest.mark.skipif(DEVICE.type == "cuda",
                    reason="needs the interpreter, which runs programs one after another: there "
                           "the second program of a barrier plan never arrives while the first waits")
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_barrier_wait_is_bounded_and_the_host_raises(monkeypatch, direction):
    """A barrier that is never completed ends the wait after SPIN_LIMIT polls with the
    timeout flag set, and the launcher raises an error naming the plan."""
    from rnnfast.backends.triton import launch
    forward, backward, plan_module = _kernels()
    monkeypatch.setattr(launch, "BARRIER_SPIN_LIMIT", 8)
    plan = _barrier_plan(plan_module, 3)
    args = _layer(4, 3, 5, 40)
    fwd = lambda *a, **k: forward.forward(*a, **k, **({"plan": plan} if direction == "forward" else {}))
    bwd = lambda *a, **k: backward.backward(*a, **k, **({"plan": plan} if direction == "backward" else {}))
    with pytest.raises(RuntimeError, match=rf"LSTM {direction} with Plan\(.*use_barrier=True.*gave up"):
        run_layer(fwd, bwd, args, False)
    launch.raise_if_barrier_timed_out(wait=True)  # the flag was read once, not left pending


def _tagged_plan(plan_module, B, H, dtype, batch_as_n=False, block_h=64, direction="forward"):
    """The tagged form: each program one tile of block_h units, W_hh held in chunks of
    the reduction (the forward's H, the backward's 4H; 16-bit: 32 deep, so that a
    word's low and high values are 16 each; fp32: 16). With H <= block_h one program
    owns a batch block's units: the form the interpreter can run (it reads its own words
    back, the forward at the next step, the backward in the same step's phase 2)."""
    block_b = 8 if batch_as_n else 16
    block_k = 32 if dtype.itemsize == 2 else 16
    reduction = H if direction == "forward" else 4 * H
    return _forced(plan_module, block_b=block_b, block_h=block_h, block_k=block_k,
                   batch_blocks=triton.cdiv(B, block_b),
                   programs_per_batch_block=triton.cdiv(H, block_h), one_tile=True,
                   held_chunks=triton.cdiv(reduction, block_k), batch_as_n=batch_as_n,
                   use_barrier=True, tagged=True, num_warps=8)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_as_n", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tagged_words_carry_the_step_as_the_held_plans_do(dtype, batch_as_n, reverse):
    """What a step exchanges as tagged words (the step in the high half, slots by step
    parity), against the same plans exchanging it through memory at a barrier: the
    forward's h(t) (two 16-bit units or one fp32 a word) and the backward's 16-bit gate
    gradients (unit u's i | f and g | o in words 2u, 2u + 1). H = 41 in chunks of 32
    (16-bit) or 16 (fp32) leaves the last chunk part filled (and the forward's last word
    half filled); packed rows join and leave; two batch blocks of 16 rows, or 3 rows as
    the products' N. fp32's forward products are the same, so its results are equal to
    the bit (its backward has no tagged form: it streams W_hh); a 16-bit chunk's words
    are two products, so there the sums may round apart, within §6, forward and
    backward."""
    forward, backward, plan_module = _kernels()
    B = 3 if batch_as_n else 17
    tagged = _tagged_plan(plan_module, B, 41, dtype, batch_as_n)
    lengths = [5] * (B // 2) + [4] * (B - B // 2 - 1) + [2]
    if dtype == torch.float32:
        args = _layer(5, B, 6, 41, lengths=lengths, dtype=dtype)
        got = forward.forward(*args, reverse, "all", plan=tagged)
        expected = forward.forward(*args, reverse, "all",
                                   plan=dataclasses.replace(tagged, tagged=False))
        for name, a, b in zip(("y", "h_n", "c_n", "gates", "cells"), got, expected):
            assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
    else:
        tagged_backward = _tagged_plan(plan_module, B, 41, dtype, batch_as_n, direction="backward")
        args64 = _layer(5, B, 6, 41, lengths=lengths)
        with_tags = (lambda *a, **k: forward.forward(*a, **k, plan=tagged),
                     lambda *a, **k: backward.backward(*a, **k, plan=tagged_backward))
        assert rule_violations_vs_float64(args64, dtype, reverse, with_tags) == []


@pytest.mark.skipif(DEVICE.type == "cuda",
                    reason="needs the interpreter, which runs programs one after another: there "
                           "the second program's words never come while the first waits")
@pytest.mark.parametrize("direction,dtype", [("forward", torch.float32), ("backward", torch.float16)])
def test_tagged_wait_is_bounded_and_the_host_raises(monkeypatch, direction, dtype):
    """A word that never shows its step ends the wait after SPIN_LIMIT polls with the
    timeout flag set, the program waits no more, and the launcher raises an error
    naming the plan."""
    from rnnfast.backends.triton import launch
    forward, backward, plan_module = _kernels()
    monkeypatch.setattr(launch, "BARRIER_SPIN_LIMIT", 8)
    plan = _tagged_plan(plan_module, 3, 40, dtype, block_h=32, direction=direction)  # 2 programs
    args = _layer(4, 3, 5, 40, dtype=dtype)
    fwd = lambda *a, **k: forward.forward(*a, **k, **({"plan": plan} if direction == "forward" else {}))
    bwd = lambda *a, **k: backward.backward(*a, **k, **({"plan": plan} if direction == "backward" else {}))
    with pytest.raises(RuntimeError, match=rf"LSTM {direction} with Plan\(.*tagged=True.*gave up"):
        run_layer(fwd, bwd, args, False)
    launch.raise_if_barrier_timed_out(wait=True)  # the flag was read once, not left pending


class _RefusingCooperativeLaunches:
    """A kernel whose cooperative launches the driver refuses, as it does when the grid
    cannot be resident at once (or cooperative launch is unsupported, e.g. under MPS)."""

    def __init__(self, kernel):
        self.kernel, self.launched = kernel, []

    def __getattr__(self, name):  # warmup and the rest: the kernel's own (the launcher
        return getattr(self.kernel, name)  # compiles ahead of a GPU launch with warmup)

    def __getitem__(self, grid):
        def run(*args, launch_cooperative_grid=False, **kwargs):
            self.launched.append(launch_cooperative_grid)
            if launch_cooperative_grid:
                raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
            return self.kernel[grid](*args, **kwargs)
        return run


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_refused_cooperative_launch_falls_back_to_the_barrier_free_plan(monkeypatch, direction):
    forward, backward, plan_module = _kernels()
    module = forward if direction == "forward" else backward
    kernel_name = f"_lstm_{direction}_kernel"
    refusing = _RefusingCooperativeLaunches(getattr(module, kernel_name))
    monkeypatch.setattr(module, kernel_name, refusing)
    monkeypatch.setattr(module, "make_plan", lambda *a: _barrier_plan(plan_module, 3))
    args = _layer(5, 3, 4, 24, proj=7)
    _assert_same(*_compare(args, False), TIGHT[torch.float64])
    assert refusing.launched == [True, True, False]  # the plan, a smaller one, then no barrier


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_refused_cooperative_launch_of_a_tagged_plan_falls_back_too(monkeypatch, direction):
    """Programs waiting for each other's words need co-residency as barrier plans do:
    the tagged plan launches cooperatively, and a refusal goes on to the smaller plan
    (streamed, at the barrier) and then the barrier-free one."""
    forward, backward, plan_module = _kernels()
    module = forward if direction == "forward" else backward
    kernel_name = f"_lstm_{direction}_kernel"
    refusing = _RefusingCooperativeLaunches(getattr(module, kernel_name))
    monkeypatch.setattr(module, kernel_name, refusing)
    monkeypatch.setattr(module, "make_plan", lambda *a: _tagged_plan(
        plan_module, 3, 24, torch.float16, block_h=16, direction=direction))
    args64 = _layer(5, 3, 4, 24)
    assert rule_violations_vs_float64(args64, torch.float16, False,
                                      (forward.forward, backward.backward)) == []
    assert refusing.launched == [True, True, False]


def test_device_refusing_every_plan_means_reference_with_one_warning(monkeypatch):
    """Where the compiled kernels fit none of the plans (shared memory, spills), the
    layer runs on the reference backend: a warning, once, never an exception."""
    from rnnfast.backends.triton import launch
    forward, _, _ = _kernels()
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(launch, "_fits", lambda *args, **kwargs: False)
    monkeypatch.setattr(launch, "_device_accepts", {})  # earlier tests' launches, on a GPU
    monkeypatch.setattr(launch, "_warned", set())
    args = _layer(4, 3, 5, 20)
    expected = reference.forward(*args, False, "all")
    with pytest.warns(RuntimeWarning, match="using the reference backend"):
        got = forward.forward(*args, False, "all")
    for a, b in zip(got, expected):
        assert_close(a, b, **TIGHT[torch.float64])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward.forward(*args, False, "all")


def test_the_device_check_is_kept_per_dtype(monkeypatch):
    """fp16 and bf16 layers give a plan the same constexprs but compile to different
    kernels (one may spill where the other does not): each is checked on its own."""
    from rnnfast.backends.triton import launch
    _, _, plan_module = _kernels()
    plan = plan_module.gpu_plan(4, 256, 256, 50, 2, sms=132)
    checked = []
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(launch, "_device_accepts", {})
    monkeypatch.setattr(launch, "_fits", lambda kernel, plan, args, *rest, **kwargs:
                        checked.append(args[0].dtype) or False)
    barrier = torch.zeros(2, dtype=torch.int32)
    with pytest.warns(RuntimeWarning, match="using the reference backend"):
        for dtype in (torch.float16, torch.bfloat16, torch.float16):
            x = torch.zeros(4, dtype=dtype)
            assert launch.launch(None, [plan], lambda p: ([x, 4], {"BLOCK": 16}, barrier),
                                 torch.device("cpu"), "kernel") is None
    assert checked == [torch.float16, torch.bfloat16]


def test_fallback_plans_end_without_a_barrier():
    _, _, plan_module = _kernels()
    plan = plan_module.gpu_plan(4, 256, 256, 50, 2, sms=132)
    plans = plan_module.fallback_plans(plan)
    assert plans[0] == plan and plan.use_barrier and plan.weights_resident
    assert len(set(plans)) == len(plans) == 3
    assert not plans[-1].use_barrier and plans[-1].programs_per_batch_block == 1
    assert all(p.block_k <= plan.block_k for p in plans)


def test_freeze_masks_zero_exactly_the_frozen_entries():
    args = _layer(6, 3, 5, 8, proj=3)
    g = torch.Generator().manual_seed(4)
    frozen = [torch.rand(a.shape, generator=g).to(DEVICE) < 0.5 for a in args[4:9]]
    outs, grads, outs_ref, grads_ref = _compare(args, False, frozen=frozen)
    _assert_same(outs, grads, outs_ref, grads_ref, TIGHT[torch.float64])
    for grad, mask in zip(grads[3:8], frozen):
        assert torch.all(grad[mask] == 0) and torch.all(grad[~mask] != 0)


@pytest.mark.parametrize("needs", [
    [False, False, False, True, False, False, False, False],   # dW_ih only
    [True, False, False, False, False, False, False, False],   # dx only (all weights frozen)
    [False, True, True, False, False, True, True, False],      # states and biases
])
def test_only_the_gradients_asked_for(needs):
    args = _layer(5, 3, 4, 12, proj=5)
    outs, grads, outs_ref, grads_ref = _compare(args, False, needs=needs)
    _assert_same(outs, grads, outs_ref, grads_ref, TIGHT[torch.float64])
    assert [g is not None for g in grads[:8]] == needs


def test_module_end_to_end_and_recompute():
    """rnnfast.LSTM on the triton backend: same outputs and gradients as on the
    reference backend, with and without recompute."""
    config = dict(input_size=5, hidden_size=20, num_layers=2, bidirectional=True, proj_size=7,
                  dtype=torch.float64, device=DEVICE)
    ref = rnnfast.LSTM(**config, backend="reference")
    x = torch.randn(7, 3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    expected = None
    for backend, recompute in (("reference", False), ("triton", False), ("triton", True)):
        model = rnnfast.LSTM(**config, backend=backend, recompute=recompute)
        model.load_state_dict(ref.state_dict())
        out, (h, c) = model(x)
        spread = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=DEVICE).view_as(out)
        loss = (out * spread).sum() + h.sum() + c.square().sum()
        got = [out, h, c, *torch.autograd.grad(loss, [x, *model.parameters()])]
        if expected is None:
            expected = got
        else:
            for a, b in zip(got, expected):
                assert_close(a, b, **TIGHT[torch.float64])


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda",
                    reason="needs a CUDA device (T > 65,535 is too slow in the interpreter)")
def test_sequence_longer_than_a_grid_dimension(without_tf32):
    """T > 65,535, a grid's y and z limit: the steps past it too, forward and backward.
    cuDNN (TF32 off) is the peer: the reference's step loop, a dozen launches a step,
    would take a minute of GPU time here."""
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 16, device=DEVICE)
    ours = rnnfast.LSTM(3, 16, device=DEVICE, backend="triton")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(70_000, 2, 3, device=DEVICE)
    upstream = None
    results = []
    with torch.backends.cudnn.flags(allow_tf32=False):
        for model in (ours, theirs):
            xg = x.clone().requires_grad_()
            y, (h, c) = model(xg)
            upstream = upstream or [torch.randn_like(t) for t in (y, h, c)]
            loss = sum((t * u).sum() for t, u in zip((y, h, c), upstream))
            results.append([y, h, c, *torch.autograd.grad(loss, [xg, *model.parameters()])])
    for name, a, b in zip(["y", "h_n", "c_n", "dx", *(n for n, _ in ours.named_parameters())],
                          *results):
        assert_close(a, b, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda",
                    reason="needs a CUDA device: programs meeting at a barrier run concurrently")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_persistent_barrier_plan_on_gpu(dtype):
    _, _, plan_module = _kernels()
    plan = plan_module.make_plan(4, 256, 256, 50, DEVICE, dtype)
    backward_plan = plan_module.make_plan(4, 256, 256, 50, DEVICE, dtype, "backward")
    assert plan.use_barrier and plan.programs_per_batch_block > 1 and plan.batch_as_n
    # each program one tile: the backward keeps dh in registers, one barrier a step,
    # its 16-bit gate gradients in two buffers by step parity; 16-bit layers hold W_hh
    assert plan.one_tile and backward_plan.one_tile
    assert plan.weights_resident == backward_plan.weights_resident == (dtype != torch.float32)
    # fp32 at H = 256 streams W_hh: no tags; fp32's backward never holds W_hh
    assert plan.tagged == backward_plan.tagged == (dtype != torch.float32)
    args64 = _layer(50, 4, 64, 256, lengths=[50, 40, 40, 7])
    forward, backward, _ = _kernels()
    assert rule_violations_vs_float64(args64, dtype, False, (forward.forward, backward.backward)) == []


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda",
                    reason="needs a CUDA device: programs waiting for each other's words run concurrently")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tagged_plan_on_gpu(dtype):
    """FlashRNN's size, B = 16 H = 768: 48 programs pass h(t) as tagged words (the
    planner's choice), with rows leaving the batch along the way."""
    _, _, plan_module = _kernels()
    plan = plan_module.make_plan(16, 768, 768, 64, DEVICE, dtype)
    assert plan.tagged and plan.programs_per_batch_block == 48
    args64 = _layer(64, 16, 32, 768, lengths=[64] * 8 + [50] * 4 + [20] * 3 + [3])
    forward, backward, _ = _kernels()
    assert rule_violations_vs_float64(args64, dtype, False, (forward.forward, backward.backward)) == []
