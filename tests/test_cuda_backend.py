"""The CUDA C++ backend (rnnfast._C).

On CPU: its launch plan for an H100 (pure Python), the registry without the extension,
and the fallback for layers that do not fit on chip (warned once, reference results).
On a GPU with the extension built: the kernels against the reference backend and
torch.nn.LSTM in fp32/bf16/fp16 -- projection, packed rows, reverse direction, freeze
masks, `needs`, save modes. 16-bit results follow DESIGN.md §6: error against float64
at most 2x the reference's own error in the same precision.
"""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import rnnfast
from rnnfast import backends
from rnnfast.backends import evidence, reference
from rnnfast.backends import cuda as cuda_backend
from rnnfast.backends.cuda import plan as cuda_plan

from conftest import kernels_must_run
from helpers import layer_args, planned_launches, rule_violations_vs_float64, run_layer
from test_cuda_emulated import FORMS as EMULATED_FORMS, SIXTEEN_BIT_FORMS, force_plans
from test_cuda_model import NO_16_CTA_CLUSTERS

SMS, SMEM = cuda_plan.H100_SMS, cuda_plan.H100_SMEM_PER_BLOCK
CUDA_REASON = backends.available_backends()["cuda"]
requires_kernels = pytest.mark.skipif(CUDA_REASON is not None,
                                      reason=f"cuda backend unavailable: {CUDA_REASON}")
DEVICE = torch.device("cuda") if CUDA_REASON is None else torch.device("cpu")
pytestmark = kernels_must_run  # except inside the tests' own pytest.warns


@pytest.fixture(autouse=True)
def _barrier_timeouts_raised_in_their_own_test():
    """On a GPU a barrier's timeout flag is read after its launch; a test's own launches
    are checked at its end, so a hang fails the test that launched it."""
    yield
    from rnnfast.backends.barrier import raise_if_barrier_timed_out
    raise_if_barrier_timed_out(wait=True)


# ---------------------------------------------------------------------------------
# The plan (CPU).

def _plan(direction, batch, hidden, proj=0, itemsize=2, major=9):
    return cuda_plan.make_plan(direction, batch, hidden, proj or hidden, bool(proj), itemsize, SMS,
                               SMEM, major)


@pytest.mark.parametrize("batch,hidden,proj,itemsize", [
    (3, 20, 0, 4), (3, 20, 11, 2), (1, 256, 0, 2), (64, 512, 0, 4),  # fastrnns: H = 512 fp32
    (16, 768, 0, 2), (256, 1024, 0, 2), (16, 1024, 0, 2),  # FlashRNN's H = 768; large batch
    (64, 1024, 256, 2), (37, 96, 0, 4), (512, 1024, 0, 2),  # ... and the forward in passes
])
@pytest.mark.parametrize("major", [8, 9])
def test_plans_for_an_h100_fit_and_cover_every_unit_and_row(batch, hidden, proj, itemsize, major):
    out = proj or hidden
    for direction in ("forward", "backward"):
        p = _plan(direction, batch, hidden, proj, itemsize, major)
        assert isinstance(p, cuda_plan.Plan), p
        assert p.smem_bytes <= SMEM and p.block_rows % 8 == 0
        assert p.unit_slices * p.units >= hidden > (p.unit_slices - 1) * p.units  # no idle slice
        assert p.batch_blocks * p.block_rows >= batch > (p.batch_blocks - 1) * p.block_rows
        if p.kind == "grid":  # cooperative: every block resident
            assert p.blocks <= SMS
        else:
            assert (major, proj) == (9, 0) and 2 <= p.unit_slices <= 16
        if proj or direction == "backward":
            assert p.unit_slices * p.proj_cols >= out
        split = p.reduce_ctas if direction == "backward" else p.pass_rows  # the direction's own
        products = (cuda_plan.forward_products if direction == "forward" else
                    cuda_plan.backward_products)(hidden, out, bool(proj), itemsize, p.units,
                                                 p.proj_cols, p.block_rows, p.kind == "cluster",
                                                 p.reg_k_tiles, split)
        if p.reg_k_tiles:  # a cluster forward, or a backward, its register kernel takes
            assert (itemsize, proj) == (2, 0) and (p.kind == "cluster" or direction == "backward")
            assert cuda_plan.reg_split_ok(direction, products[0], p.units, itemsize,
                                          p.kind == "cluster", False, p.reg_k_tiles)
        if p.multicast:  # clusters of consecutive slices of one batch block, all resident
            assert (p.kind, major) == ("grid", 9) and p.multicast in cuda_plan.MULTICAST_SIZES
            assert p.unit_slices % p.multicast == 0
            assert p.blocks <= SMS // p.multicast * p.multicast
            assert any(q.m and q.chunks == 1 for q in products)  # something to multicast
        if p.reduce_ctas:  # a backward in clusters that split the gate columns, all resident
            assert (p.kind, major, direction, proj, p.multicast, p.reg_k_tiles) == (
                "grid", 9, "backward", 0, 0, 0)
            assert p.reduce_ctas in cuda_plan.REDUCE_SIZES and p.unit_slices % p.reduce_ctas == 0
            assert p.blocks <= SMS // p.reduce_ctas * p.reduce_ctas
            assert products[0].m == p.reduce_ctas * p.units  # the cluster's units (M tile 16)
            assert products[0].k == cuda_plan.reduce_cols(hidden, p.reduce_ctas)
        if p.pass_rows:  # a grid forward's rows in passes, where one pass does not fit
            assert (p.kind, direction, proj, p.multicast, p.reg_k_tiles) == (
                "grid", "forward", 0, 0, 0)
            assert cuda_plan.passes_ok(p.pass_rows, p.block_rows, False, False, 0, 0)
            assert products[0].nb == p.pass_rows and p.passes >= 2
            assert cuda_plan._candidate("grid", direction, batch, hidden, out, False, itemsize,
                                        p.unit_slices, p.batch_blocks, SMEM) is None
        smem = (cuda_plan.forward_smem_bytes if direction == "forward" else
                cuda_plan.backward_smem_bytes)(hidden, out, bool(proj), itemsize, p.units,
                                               p.proj_cols, p.block_rows, p.kind == "cluster",
                                               bool(p.multicast), p.reg_k_tiles, split)
        assert p.smem_bytes == smem


def test_h100_plan_numbers_for_the_standard_cases():
    """csrc/README.md quotes these. Of the splits that fit, the plan is the one the
    latency model rates fastest."""
    # FlashRNN's dense case, fp16 H = 768, B = 16. Forward on sm_90: two batch blocks of
    # 8 rows, each a cluster of 16 CTAs of 48 units, every CTA holding 2 k-slices of 13
    # k-tiles of its W_hh rows (416 of 768 columns) in registers and the rest (135 KB)
    # in shared memory. W_hh (4.7 MB) does not fit 16 CTAs' shared memory alone.
    fwd = _plan("forward", 16, 768)
    assert (fwd.kind, fwd.unit_slices, fwd.units, fwd.block_rows, fwd.batch_blocks,
            fwd.reg_k_tiles, fwd.smem_bytes) == ("cluster", 16, 48, 8, 2, 13, 177024)
    assert cuda_plan.reg_geometry("forward", fwd.units, 2, fwd.reg_k_tiles) == (2, 416)
    # Backward, and the forward where no 16-CTA cluster can be placed: two batch blocks
    # of 8 rows, each over 64 blocks of 12 units, stage half the h rows per block that
    # one batch block would. On sm_90 the grid runs in clusters that read each staged
    # operand (h(t-1), dgates(t+1): one chunk each) from L2 once: one mbarrier slot more
    # of shared memory. Forward: 8 CTAs. Backward: 4, because at 4 each SM's own L2
    # rate (49 KB of dgates a step) already bounds the step and 8 gains nothing in the
    # model. The backward's blocks hold 8 k-slices of 21 k-tiles of their W_hh^T rows
    # (2688 of 3072) in registers: 66,432 B of shared memory instead of 152,448. On sm_80
    # the same split without clusters, each block staging its own copy.
    for direction, multicast, regs in (("forward", 8, 0), ("backward", 4, 21)):
        p = cuda_plan.make_plan(direction, 16, 768, 768, False, 2, SMS, SMEM, 9,
                                resident_clusters=NO_16_CTA_CLUSTERS)
        assert p == _plan("backward", 16, 768) or direction == "forward"
        assert (p.kind, p.unit_slices, p.units, p.block_rows, p.batch_blocks, p.multicast,
                p.reg_k_tiles) == ("grid", 64, 12, 8, 2, multicast, regs), direction
        assert p.cluster == 0  # not a cluster plan: the grid's barrier and exchange
        sm80 = dataclasses.replace(p, multicast=0, smem_bytes=p.smem_bytes - cuda_plan.ALIGN)
        assert _plan(direction, 16, 768, major=8) == sm80
    assert _plan("backward", 16, 768).smem_bytes == 66432
    assert cuda_plan.reg_geometry("backward", 12, 2, 21) == (8, 2688)
    # A refused launch of either falls back to the plain grid: no clusters, no registers.
    # The backward's is then one batch block of 16 rows over 96 blocks of 8 units, whose
    # dgates (16 x 3072) arrive in 4 double-buffered chunks, their copies overlapping the
    # product: the model rates it 1.5% faster than 2 x 64 blocks staging theirs whole.
    for direction, slices, units in (("forward", 64, 12), ("backward", 96, 8)):
        plain = cuda_plan.make_plan(direction, 16, 768, 768, False, 2, SMS, SMEM, 9, plain=True)
        assert (plain.kind, plain.unit_slices, plain.units, plain.multicast,
                plain.reg_k_tiles) == ("grid", slices, units, 0, 0), direction
    assert cuda_plan.make_plan("backward", 16, 768, 768, False, 2, SMS, SMEM, 9,
                               plain=True).smem_bytes == 115840
    # H = 512 fp16 fits one cluster of 16 CTAs (32 units each) per batch block, forward
    # and backward; on an A100 (sm_80) a grid. Both hold part of their weights in
    # registers, which the model rates faster than all in shared memory: the forward 320
    # of its 512 W_hh columns (2 k-slices of 10 k-tiles: a slice no wider than what stays
    # in shared memory), the backward 1600 of its 2048 W_hh^T columns (4 k-slices of 25,
    # likewise), 100,224 B of shared memory instead of 202,624.
    for direction, regs, smem, held in (("forward", 10, 77184, (2, 320)),
                                        ("backward", 25, 100224, (4, 1600))):
        small = _plan(direction, 16, 512)
        assert (small.kind, small.unit_slices, small.units, small.reg_k_tiles,
                small.smem_bytes) == ("cluster", 16, 32, regs, smem), direction
        assert cuda_plan.reg_geometry(direction, small.units, 2, small.reg_k_tiles) == held
        assert _plan(direction, 16, 512, major=8).kind == "grid"
    # B = 256 H = 1024 bf16: two batch blocks of 128 rows over 64 blocks of 16 units.
    # Both staged operands (128 x 1024 h, 128 x 4096 dgates) are double-buffered chunks,
    # which keep cp.async: no multicast variant of any split. The backward is a reduce
    # split in clusters of 4: each CTA holds W_hh^T rows of the cluster's 64 units over
    # 1024 of the 4096 gate columns, and stages only those (128 x 1024 a step, not
    # 128 x 4096), in 16 chunks.
    for direction, reduce in (("forward", 0), ("backward", 4)):
        big = _plan(direction, 256, 1024)
        assert (big.kind, big.unit_slices, big.units, big.batch_blocks, big.multicast,
                big.reduce_ctas) == ("grid", 64, 16, 2, 0, reduce), direction
        for batch_blocks in range(1, 33):
            for m in cuda_plan.MULTICAST_SIZES:
                assert cuda_plan._candidate("grid", direction, 256, 1024, 1024, False, 2,
                                            SMS // batch_blocks, batch_blocks, SMEM, m) is None
    chain, _ = cuda_plan.backward_products(1024, 1024, False, 2, 16, 16, 128, False, 0, 4)
    assert (chain.m, chain.k, chain.nb, chain.chunks) == (64, 1024, 128, 16)
    assert _plan("backward", 256, 1024).smem_bytes == 218112
    # fastrnns B = 64 H = 512 fp32: 4 batch blocks of 16 rows over 32 blocks of 16 units;
    # the forward's h (16 x 512) is one chunk and multicast; the backward's dgates
    # (16 x 2048 fp32) are split over clusters of 8 (16 x 256 each, one chunk).
    fwd, bwd = _plan("forward", 64, 512, itemsize=4), _plan("backward", 64, 512, itemsize=4)
    assert (fwd.kind, fwd.unit_slices, fwd.batch_blocks, fwd.multicast) == ("grid", 32, 4, 8)
    assert (bwd.kind, bwd.unit_slices, bwd.batch_blocks, bwd.multicast, bwd.reduce_ctas) == (
        "grid", 32, 4, 0, 8)
    # A refused cluster launch falls back to the grid plan of the same layer.
    for direction in ("forward", "backward"):
        assert cuda_plan.make_plan(direction, 16, 512, 512, False, 2, SMS, SMEM, 9,
                                   plain=True).kind == "grid"
    # A product of 8 units against 16 rows takes the batch as the mma's M: one tile, not
    # two, and no padding rows held; fp32 FlashRNN backward fits.
    chain, _ = cuda_plan.backward_products(768, 768, False, 2, 8, 8, 16, False)
    assert (chain.swapped, chain.m, chain.nb, chain.tiles) == (True, 8, 16, 1)
    assert isinstance(_plan("backward", 16, 768, itemsize=4), cuda_plan.Plan)


def test_cluster_plans_run_only_as_many_batch_blocks_as_clusters_the_gpu_holds():
    """B = 64 at H = 512 fp16 is 8 clusters of 16 CTAs where 132 SMs would hold them;
    a GPU whose GPCs hold only 7 such clusters at once (device_limits) gets a plan
    whose batch blocks all run side by side, not a second wave."""
    eight = _plan("forward", 64, 512)
    assert (eight.kind, eight.unit_slices, eight.batch_blocks) == ("cluster", 16, 8)
    resident = tuple(7 if c == 16 else SMS // max(c, 1) for c in range(17))
    for direction in ("forward", "backward"):
        p = cuda_plan.make_plan(direction, 64, 512, 512, False, 2, SMS, SMEM, 9,
                                resident_clusters=resident)
        assert p.kind == "grid" or p.batch_blocks <= resident[p.unit_slices], (direction, p)
    none = tuple([0] * 17)  # no cluster can be placed: grid plans only
    assert _plan("forward", 16, 512).kind == "cluster"
    assert cuda_plan.make_plan("forward", 16, 512, 512, False, 2, SMS, SMEM, 9,
                               resident_clusters=none).kind == "grid"


@pytest.mark.parametrize("H,itemsize,backward_cluster", [(21, 2, False), (22, 2, True),
                                                         (21, 4, True), (130, 2, True)])
def test_a_cluster_backward_needs_hidden_times_itemsize_a_multiple_of_4(H, itemsize,
                                                                       backward_cluster):
    """The cluster exchange sends 4- or 8-byte words; the backward's four gate blocks
    start hidden apart, so with H * itemsize not a multiple of 4 a word would straddle
    two gates: the backward takes a grid plan there (binding.cpp refuses such a split).
    The forward (one block of h) always can."""
    assert _plan("forward", 4, H, itemsize=itemsize).kind == "cluster"
    assert (_plan("backward", 4, H, itemsize=itemsize).kind == "cluster") == backward_cluster


def test_multicast_grid_plans_need_every_block_in_a_resident_cluster():
    """The cooperative launch needs all 128 blocks of FlashRNN's split resident at once,
    here in clusters: where the GPU holds only 12 clusters of 8 (96 CTAs, e.g. GPCs with
    too few free SMs), clusters of 4 (33 of them) hold them; where it holds no cluster,
    the plain grid. (The backward takes clusters of 4 anyway: see the standard cases.)
    The GPUs here place no 16-CTA cluster, where the forward would be a cluster plan."""
    def plan(direction, resident):
        return cuda_plan.make_plan(direction, 16, 768, 768, False, 2, SMS, SMEM, 9,
                                   resident_clusters=tuple(resident))
    every = list(NO_16_CTA_CLUSTERS)
    twelve = [12 if c == 8 else n for c, n in enumerate(every)]
    only_pairs = [n if c == 2 else 0 for c, n in enumerate(every)]
    for direction, multicast in (("forward", 8), ("backward", 4)):
        assert plan(direction, every).multicast == multicast
        p = plan(direction, twelve)
        assert (p.kind, p.unit_slices, p.batch_blocks, p.multicast) == ("grid", 64, 2, 4)
        assert plan(direction, only_pairs).multicast == 2
        p = plan(direction, [0] * 17)
        assert (p.kind, p.unit_slices, p.batch_blocks, p.multicast) == ("grid", 64, 2, 0)


def test_multicast_only_on_sm_90_and_plain_plans_have_neither_clusters_nor_registers():
    """sm_80 has no clusters, and plain=True (what a refused launch of any other plan
    falls back to) must give plans launched without them, holding no registers."""
    for batch, hidden, itemsize in [(16, 768, 2), (16, 768, 4), (64, 512, 4), (16, 1024, 2),
                                    (64, 1024, 2)]:
        for direction in ("forward", "backward"):
            assert _plan(direction, batch, hidden, itemsize=itemsize, major=8).multicast == 0
            p = cuda_plan.make_plan(direction, batch, hidden, hidden, False, itemsize, SMS, SMEM,
                                    9, plain=True)
            assert (p.kind, p.multicast, p.reg_k_tiles) == ("grid", 0, 0)
    # A projection layer has no cluster plan but may multicast (both phases' operands).
    assert _plan("forward", 64, 1024, 256).multicast > 0
    assert _plan("forward", 64, 1024, 256, major=8).multicast == 0


def test_the_plan_is_the_split_the_model_rates_fastest():
    from rnnfast.backends.cuda import model
    for direction, batch, hidden in [("forward", 16, 768), ("backward", 256, 1024),
                                     ("forward", 64, 512)]:
        chosen = _plan(direction, batch, hidden)
        grid_only = cuda_plan.make_plan(direction, batch, hidden, hidden, False, 2, SMS, SMEM, 9,
                                        plain=True)
        one_block = cuda_plan._candidate("grid", direction, batch, hidden, hidden, False, 2,
                                         SMS, 1, SMEM)
        step = lambda p: model.step_time(p, direction, batch, hidden, hidden)
        assert step(chosen) <= step(grid_only)
        if one_block is not None:
            assert step(chosen) <= step(one_block)


@pytest.mark.parametrize("direction,hidden,itemsize", [("forward", 2048, 2), ("forward", 1536, 4),
                                                       ("backward", 1536, 4)])
def test_layers_too_large_for_chip_get_a_reason(direction, hidden, itemsize):
    reason = _plan(direction, 16, hidden, itemsize=itemsize)
    assert isinstance(reason, str) and "cannot hold this layer on chip" in reason


def test_largest_square_layers_held_on_chip():
    """Where the fallback starts on an H100 at B = 16, and for the 16-bit backward at
    B = 8 (csrc/README.md quotes these)."""
    def largest(direction, itemsize, kind=None, batch=16, plain=False):
        fits = [h for h in range(64, 4097, 64)
                if isinstance(p := cuda_plan.make_plan(direction, batch, h, h, False, itemsize,
                                                       SMS, SMEM, 9, plain), cuda_plan.Plan)
                and (kind is None or p.kind == kind)]
        return max(fits)
    assert largest("forward", 2) == 1536
    assert largest("forward", 4) == 1024
    assert largest("forward", 2, "cluster") == 768  # 640 and 768 with W_hh partly in registers
    assert largest("forward", 4, "cluster") == 384
    # A reduce split stages a 1/c-th of the 4H-wide gate-gradient rows through a smaller
    # ring: the 16-bit backward then holds what the forward holds (plain grids: 1216).
    assert (largest("backward", 2), largest("backward", 2, plain=True)) == (1536, 1216)
    assert largest("backward", 4) == 1024
    assert largest("backward", 2, "cluster") == 576  # 32 k-tiles of W_hh^T a warp in registers
    assert largest("backward", 4, "cluster") == 256
    # One batch block of 8 rows: W_hh^T partly in registers leaves room for more.
    assert (largest("backward", 2, batch=8), largest("backward", 2, batch=8, plain=True)) == (
        1856, 1280)


# ---------------------------------------------------------------------------------
# Registry and fallback (CPU).

@pytest.mark.skipif(CUDA_REASON is None, reason="rnnfast._C is built and usable here")
def test_registry_without_the_extension():
    assert CUDA_REASON.startswith("rnnfast._C not built") or CUDA_REASON == "no CUDA device"
    with pytest.raises(RuntimeError, match="rnnfast backend 'cuda' is not available: "):
        rnnfast.LSTM(3, 4, backend="cuda")
    assert backends.resolve("auto", torch.device("cpu"), torch.float32) in ("reference", "cpu")


def test_registered_above_triton_but_never_picked_by_auto(monkeypatch):
    cuda = backends._REGISTRY["cuda"]
    assert cuda.priority > backends._REGISTRY["triton"].priority
    usable = dataclasses.replace(cuda, unavailable_reason=lambda: None,
                                 unsupported_reason=lambda device, dtype: None)
    monkeypatch.setitem(backends._REGISTRY, "cuda", usable)
    monkeypatch.setattr(evidence, "_gpu_kind", lambda index: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(backends, "_warned_fallbacks", set())
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with pytest.warns(UserWarning, match="cuda: no committed verify results"):
            assert backends.resolve("auto", torch.device("cuda"), dtype) != "cuda"
    assert cuda.unsupported_reason(torch.device("cuda"), torch.float64).startswith("dtype")
    assert "CUDA tensors" in cuda.unsupported_reason(torch.device("cpu"), torch.float32)


def _layer(*args, device=DEVICE, **kwargs):
    return layer_args(*args, device=device, **kwargs)


def _assert_same(got, expected, tol):
    (outs, grads), (outs_ref, grads_ref) = got, expected
    for name, a, b in zip(("y", "h_n", "c_n"), outs, outs_ref):
        assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    names = ("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh", "dW_hr", "dgates")
    for name, a, b in zip(names, grads, grads_ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


def test_layer_too_large_falls_back_to_reference_with_one_warning(monkeypatch):
    from rnnfast.backends.cuda import backward as cuda_bwd, forward as cuda_fwd, launch
    too_big = "the forward kernel cannot hold this layer on chip (B=3, H=6, P=6)"
    monkeypatch.setattr(launch, "plan_for", lambda *a, **k: too_big)
    monkeypatch.setattr(cuda_backend, "_warned", set())
    args = _layer(5, 3, 4, 6, proj=0, device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="cannot run this layer on chip .*using the reference"):
        got = run_layer(cuda_fwd.forward, cuda_bwd.backward, args, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        again = run_layer(cuda_fwd.forward, cuda_bwd.backward, args, True)
    expected = run_layer(reference.forward, reference.backward, args, True)
    _assert_same(got, expected, dict(atol=0, rtol=0))
    _assert_same(again, expected, dict(atol=0, rtol=0))


class _FakeExtension:
    """rnnfast._C on a GPU of compute capability `major` whose launches do `launch(kind,
    cluster, multicast, timed_out)`: a refusal raises LaunchRefused (as under MPS with
    too few SMs, beside a kernel holding them, or for a cluster the GPU cannot place;
    `multicast` is the backward's reduce_ctas where it has those). `tried`: (kernel,
    cluster, multicast) of each launch; `reg_k_tiles`, `reduce_ctas` (backward): what
    each launch was given."""

    class LaunchRefused(RuntimeError):
        pass

    def __init__(self, major, launch):
        self.major, self.launch, self.tried, self.reg_k_tiles = major, launch, [], []
        self.reduce_ctas = []

    def device_limits(self, index):
        resident = [SMS // c if self.major >= 9 and c >= 2 else 0 for c in range(17)]
        return (SMS, SMEM, True, self.major, resident)

    def forward(self, *args):  # (..., cluster, multicast, reg_k_tiles, pass_rows, spin_limit)
        self.tried.append(("forward", args[-5], args[-4]))
        self.reg_k_tiles.append(args[-3])
        self.launch(self, "forward", args[-5], args[-4], args[15])

    def backward(self, *args):  # (..., cluster, multicast, reg_k_tiles, reduce_ctas, spin_limit)
        self.tried.append(("backward", args[-5], args[-4]))
        self.reg_k_tiles.append(args[-3])
        self.reduce_ctas.append(args[-2])
        self.launch(self, "backward", args[-5], args[-4] or args[-2], args[17])


@pytest.mark.skipif(cuda_backend._C is None, reason=f"needs rnnfast._C: {cuda_backend._NOT_BUILT_REASON}")
@pytest.mark.parametrize("major,proj", [(9, 0), (9, 7), (8, 0), (8, 7)])
def test_the_backend_calls_the_real_binding_with_arguments_it_accepts(monkeypatch, major, proj):
    """The stand-ins (_FakeExtension, the emulator's) take whatever they are given;
    pybind11 refuses a call that does not match binding.cpp's signature with a
    TypeError. On CPU tensors each launch must get past that and every check of the
    binding's to its last, the device's, which refuses them: the Python call sites and
    the binding agree, for cluster and grid plans, with and without a projection. Runs
    wherever the extension imports (a GPU machine, or a CPU machine with a CUDA build of
    torch), skips in CPU CI."""
    resident = tuple(SMS // c if major >= 9 and c >= 2 else 0 for c in range(17))
    monkeypatch.setattr(cuda_backend, "device_limits",
                        lambda device: cuda_backend.DeviceLimits(SMS, SMEM, True, major, resident))
    args = _layer(4, 3, 5, 20, proj=proj, dtype=torch.float16, device=torch.device("cpu"))
    _binding_takes_every_argument(args, False)


def _binding_takes_every_argument(args, reverse):
    """Each direction's launch on CPU tensors `args` meets every check of binding.cpp's
    (shapes, dtypes, the split, registers, row passes, reduce splits) and is refused only
    by the last, the device's."""
    from rnnfast.backends.cuda import backward as cuda_bwd, forward as cuda_fwd
    for direction, kernels in (("forward", (cuda_fwd.forward, reference.backward)),
                               ("backward", (reference.forward, cuda_bwd.backward))):
        with pytest.raises(RuntimeError, match=rf"rnnfast\._C\.{direction}: tensors must be on a CUDA device"):
            run_layer(*kernels, args, reverse)


@pytest.mark.skipif(cuda_backend._C is None, reason=f"needs rnnfast._C: {cuda_backend._NOT_BUILT_REASON}")
@pytest.mark.parametrize("name,dtype", [
    (name, dtype) for name, (_, _, form_dtype) in EMULATED_FORMS.items()
    for dtype in ((form_dtype,) if name in SIXTEEN_BIT_FORMS else (torch.float32, torch.bfloat16))])
def test_every_plan_form_meets_the_real_binding_checks(monkeypatch, name, dtype):
    """The plan forms the emulator runs (test_cuda_emulated.FORMS: multicast, registers,
    reduce splits, row passes, clusters, packed, reversed), their Python launches against
    the real binding: what it checks before the device is what the kernels read, and the
    emulator's stand-in for it checks nothing."""
    make_plans, (T, B, I, H, proj, lengths, reverse), _ = EMULATED_FORMS[name]
    resident = tuple(SMS // c if c >= 2 else 0 for c in range(17))
    monkeypatch.setattr(cuda_backend, "device_limits",
                        lambda device: cuda_backend.DeviceLimits(SMS, SMEM, True, 9, resident))
    if make_plans:
        force_plans(monkeypatch, **make_plans(dtype))
    args = _layer(T, B, I, H, proj=proj, lengths=lengths, dtype=dtype, device=torch.device("cpu"))
    _binding_takes_every_argument(args, reverse)


def _refuse(fake, kind, cluster, multicast, timed_out):
    form = "cluster" if cluster or multicast else "cooperative"
    raise fake.LaunchRefused(f"rnnfast._C: {form} launch of the {kind} kernel was refused: "
                             "too many blocks in cooperative launch")


def _use_fake(monkeypatch, fake):
    from rnnfast.backends.cuda import backward as cuda_bwd, forward as cuda_fwd, launch
    for module in (cuda_backend, cuda_fwd, cuda_bwd, launch):
        monkeypatch.setattr(module, "_C", fake)
    monkeypatch.setattr(cuda_backend, "_limits", {})
    monkeypatch.setattr(cuda_backend, "_warned", set())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return cuda_fwd.forward, cuda_bwd.backward


def test_a_refused_launch_falls_back_cluster_then_grid_then_reference_with_one_warning(monkeypatch):
    fake = _FakeExtension(9, _refuse)
    fwd, bwd = _use_fake(monkeypatch, fake)
    args = _layer(5, 3, 4, 6, proj=0, lengths=[5, 3, 2], device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="kernel was refused.*using the reference"):
        got = run_layer(fwd, bwd, args, False)
    # Each direction tried its cluster plan, then its grid plan, launched without clusters.
    assert [(kind, cluster > 0, multicast) for kind, cluster, multicast in fake.tried] == [
        ("forward", True, 0), ("forward", False, 0), ("backward", True, 0),
        ("backward", False, 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each reason said once only
        again = run_layer(fwd, bwd, args, False)
    expected = run_layer(reference.forward, reference.backward, args, False)
    _assert_same(got, expected, dict(atol=0, rtol=0))
    _assert_same(again, expected, dict(atol=0, rtol=0))


@pytest.mark.parametrize("major,tried,reg_k_tiles", [
    (9, [("forward", 16, 0), ("forward", 0, 0), ("backward", 0, 4), ("backward", 0, 0)],
     [13, 0, 21, 0]),
    (8, [("forward", 0, 0), ("backward", 0, 0), ("backward", 0, 0)], [0, 21, 0]),
], ids=["sm_90", "sm_80"])
def test_a_refused_cluster_multicast_or_register_launch_falls_back_to_the_plain_grid(
        monkeypatch, major, tried, reg_k_tiles):
    """FlashRNN's layer (B = 16, H = 768 fp16). On sm_90 the forward is a cluster plan
    and the backward a grid in clusters of 4 for multicast, both with W_hh partly in
    registers; on sm_80 the forward is a plain grid and the backward a grid with W_hh^T
    partly in registers. Refused, each retries as the plain grid (no clusters, no
    registers), then runs on the reference backend; a refused plain grid goes straight
    there."""
    fake = _FakeExtension(major, _refuse)
    fwd, bwd = _use_fake(monkeypatch, fake)
    args = _layer(2, 16, 8, 768, dtype=torch.float16, device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="cooperative launch of the .* kernel was refused.*"
                                         "using the reference"):
        got = run_layer(fwd, bwd, args, False)
    assert (fake.tried, fake.reg_k_tiles) == (tried, reg_k_tiles)
    expected = run_layer(reference.forward, reference.backward, args, False)
    _assert_same(got, expected, dict(atol=0, rtol=0))


def test_a_refused_reduce_split_launch_falls_back_to_the_plain_grid(monkeypatch):
    """B = 16, H = 512 fp32 on sm_90: the backward is a reduce split in clusters of 8.
    Refused (a GPU that cannot place the clusters cooperatively, or an extension built
    without sm_90 code), it retries as the plain grid, which no cluster launches; a
    refused plain grid runs on the reference backend."""
    fake = _FakeExtension(9, _refuse)
    fwd, bwd = _use_fake(monkeypatch, fake)
    args = _layer(2, 16, 8, 512, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="cooperative launch of the .* kernel was refused.*"
                                         "using the reference"):
        got = run_layer(fwd, bwd, args, False)
    backward = [t for t in fake.tried if t[0] == "backward"]
    assert backward == [("backward", 0, 0), ("backward", 0, 0)]
    assert fake.reduce_ctas == [8, 0]
    expected = run_layer(reference.forward, reference.backward, args, False)
    _assert_same(got, expected, dict(atol=0, rtol=0))


@pytest.mark.parametrize("major,kind", [(8, "grid"), (9, "cluster")])
def test_a_wait_that_gave_up_raises_an_error_naming_the_plan(monkeypatch, major, kind):
    """The kernel sets the timeout flag when a wait passes its spin limit: a grid
    barrier (a block never arrived) or a cluster plan's mbarrier wait (a peer's bytes
    never landed). The launcher reads the flag after either plan and raises, never
    returning the launch's wrong results silently."""
    def time_out(fake, kind, cluster, multicast, timed_out):
        timed_out.fill_(1)
    fake = _FakeExtension(major, time_out)
    fwd, bwd = _use_fake(monkeypatch, fake)
    args = _layer(5, 3, 4, 6, proj=0, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match=rf"CUDA LSTM forward with Plan\(kind='{kind}'.*gave up"):
        run_layer(fwd, bwd, args, False)
    from rnnfast.backends.barrier import raise_if_barrier_timed_out
    raise_if_barrier_timed_out(wait=True)  # reported once, not left pending


# ---------------------------------------------------------------------------------
# The kernels on a GPU.

def _kernels():
    from rnnfast.backends.cuda import backward, forward
    return forward.forward, backward.backward


TIGHT32 = dict(atol=2e-5, rtol=1e-4)
SHAPES = [  # T, B, I, H, proj, lengths
    (7, 3, 5, 20, 0, None),
    (7, 3, 5, 20, 11, None),
    (1, 1, 3, 20, 0, None),
    (5, 2, 4, 96, 0, None),
    (3, 37, 4, 12, 0, None),         # three 16-row tiles
    (7, 3, 5, 20, 0, [7, 4, 1]),     # packed
    (6, 4, 3, 9, 5, [6, 6, 3, 2]),   # packed with projection
]


@requires_kernels
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H,proj,lengths", SHAPES)
def test_fp32_kernels_match_reference(reverse, T, B, I, H, proj, lengths):
    args = _layer(T, B, I, H, proj, lengths=lengths, dtype=torch.float32)
    _assert_same(run_layer(*_kernels(), args, reverse),
                 run_layer(reference.forward, reference.backward, args, reverse), TIGHT32)


@requires_kernels
@pytest.mark.parametrize("reverse", [False, True])
def test_many_blocks_at_the_barrier_keep_the_rule(reverse):
    """H = 600 fp32: many blocks, so the grid barrier really synchronises. Judged by the
    rule, not TIGHT32: this layer amplifies rounding (W_hh drawn at H = 20's scale), so
    that the reference with its units relabelled moves 1.8e-4 from itself."""
    args64 = _layer(9, 5, 8, 600)
    assert rule_violations_vs_float64(args64, torch.float32, reverse, _kernels()) == []


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("proj,lengths,reverse", [(0, None, False), (11, None, True),
                                                  (0, [7, 4, 1], True)])
def test_error_at_most_twice_the_reference(dtype, proj, lengths, reverse):
    args64 = _layer(7, 3, 5, 20, proj, lengths=lengths)
    assert rule_violations_vs_float64(args64, dtype, reverse, _kernels()) == []


class _Recorder:
    """The real rnnfast._C, recording (kernel, cluster, multicast, reg_k_tiles,
    reduce_ctas, pass_rows) of each launch that returned (a refused launch raises before
    it is recorded)."""

    def __init__(self, real):
        self.real, self.ran = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def forward(self, *args):  # (..., cluster, multicast, reg_k_tiles, pass_rows, spin_limit)
        self.real.forward(*args)
        self.ran.append(("forward", *args[-5:-2], 0, args[-2]))

    def backward(self, *args):  # (..., cluster, multicast, reg_k_tiles, reduce_ctas, spin_limit)
        self.real.backward(*args)
        self.ran.append(("backward", *args[-5:-1], 0))


def _planned_form_meets_the_rule(monkeypatch, dtype, B, H, lengths, form, has_form):
    """A square layer of B rows (`lengths`: packed, and then reversed), 6 steps, planned
    on this GPU: skipped unless has_form(plans) (the plans hold `form`), else
    _meets_the_rule_as_planned."""
    plans = _plans_here(dtype, B, H)
    if not has_form(plans):
        pytest.skip(f"this GPU plans no {form} for B={B} H={H} {dtype}: {plans}")
    _meets_the_rule_as_planned(monkeypatch, dtype, plans, _layer(6, B, 5, H, lengths=lengths),
                               lengths is not None)


def _plans_here(dtype, B, H):
    """{direction: plan or reason} of a square layer (no projection) on this GPU."""
    return {d: cuda_backend.plan_for(d, DEVICE, dtype, B, H, H, False)
            for d in ("forward", "backward")}


def _meets_the_rule_as_planned(monkeypatch, dtype, plans, args64, reverse):
    """The layer `args64` (float64) run on the kernels in `dtype`, each launch recorded:
    within DESIGN.md §6's rule against float64, and the launches that ran are `plans`'
    ({direction: plan}), not a silent fallback."""
    from rnnfast.backends.cuda import backward as cuda_bwd, forward as cuda_fwd, launch
    recorder = _Recorder(cuda_backend._C)
    for module in (cuda_fwd, cuda_bwd, launch):
        monkeypatch.setattr(module, "_C", recorder)
    assert rule_violations_vs_float64(args64, dtype, reverse, _kernels()) == []
    assert sorted(set(recorder.ran)) == planned_launches(plans)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_multicast_grid_plans_meet_the_rule(monkeypatch, dtype):
    """FlashRNN's layer (B = 16, H = 768), 5 steps: on a Hopper that holds the clusters,
    it runs as grids in clusters whose CTAs stage h(t-1) (fp32's forward) and, where the
    operand is one chunk, dgates(t+1) (16-bit backward) by multicast bulk copies (the
    16-bit forward is a cluster plan: test_register_plans_meet_the_rule; fp32's backward
    a reduce split). Within DESIGN.md §6's rule against float64, and the launches that
    ran are those plans, not a silent fallback."""
    plans = _plans_here(dtype, 16, 768)
    if not any(getattr(p, "multicast", 0) for p in plans.values()):
        pytest.skip(f"this GPU plans no multicast grid for B=16 H=768 {dtype}: {plans} "
                    f"({cuda_backend.device_limits(DEVICE)})")
    args64 = _layer(5, 16, 8, 768)
    _meets_the_rule_as_planned(monkeypatch, dtype, plans, args64, False)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,lengths", [(16, 768, None), (5, 700, [6, 4, 4, 2, 1]),
                                         (3, 256, None), (2, 664, None), (16, 512, None)])
def test_register_plans_meet_the_rule(monkeypatch, dtype, B, H, lengths):
    """Plans holding part of their recurrent weights in registers (csrc/lstm_device.cuh
    load_reg_weights, reg_product). On an H100/H200: FlashRNN's H = 768 (forward: a
    cluster of 2 k-slices of 13 k-tiles; backward: a grid in clusters of 4 for
    multicast, 8 k-slices of 21), an odd H = 700 packed and reversed (forward: 11 M
    tiles over 12 warp places; backward: a last block of 4 of its 8 units, in clusters
    of 2, its k-slices' shared-memory runs 2 and 3 k-tiles long), H = 256 (forward: 4
    k-slices of 3; backward: a cluster, 8 of 7), H = 664 (a backward of 83 blocks, 8
    k-slices of 18, staged by cp.async) and H = 512 (a cluster backward of 4 k-slices
    of 25). Within DESIGN.md §6's rule against float64, and every direction ran as its
    plan, not a fallback."""
    _planned_form_meets_the_rule(monkeypatch, dtype, B, H, lengths, "register plan",
                                 lambda plans: any(getattr(p, "reg_k_tiles", 0) for p in plans.values()))


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,lengths", [(3, 350, None), (5, 700, [6, 4, 4, 2, 1]),
                                         (8, 1024, None), (16, 704, None)])
def test_reduce_split_backwards_meet_the_rule(monkeypatch, dtype, B, H, lengths):
    """Backwards whose clusters split the gate columns (csrc/lstm_backward.cu,
    reduce_partials). On an H100/H200 in fp32: H = 350 (1400 gate columns over 8 CTAs
    of 176, the last 168; 88 blocks of 4 units) and H = 700 packed and reversed; in
    16-bit: H = 1024 and 704 (clusters of 8). Within DESIGN.md §6's rule against
    float64, and the backward ran as its plan, not a fallback."""
    _planned_form_meets_the_rule(monkeypatch, dtype, B, H, lengths, "reduce split",
                                 lambda plans: getattr(plans["backward"], "reduce_ctas", 0))


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,lengths", [(300, 1024, [6] * 200 + [4] * 60 + [1] * 40),
                                         (520, 768, None)])
def test_forward_row_passes_meet_the_rule(monkeypatch, dtype, B, H, lengths):
    """Forwards too large for one pass of their batch block's rows (csrc/lstm_forward.cu,
    forward_pass_rows): on an H100/H200, B = 300 at H = 1024 (packed and reversed: the
    passes' rows end at different steps) and B = 520 at H = 768. Within DESIGN.md §6's
    rule against float64, and the forward ran in passes, not a fallback."""
    _planned_form_meets_the_rule(monkeypatch, dtype, B, H, lengths, "row passes",
                                 lambda plans: getattr(plans["forward"], "pass_rows", 0))


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H,lengths", [(21, None), (22, [6, 4, 1]), (30, None)])
def test_cluster_exchange_edge_sizes_meet_the_rule(monkeypatch, dtype, H, lengths):
    """The cluster plans' st.async exchange where its words do not match the units:
    H = 21 (a last slice of one unit, sent as a whole word into the k-padding; the
    16-bit backward takes a grid plan), H = 22 and 30 (the 16-bit backward's gates
    H x 2 bytes apart, not 8-byte aligned: 4-byte words), packed and reversed rows
    for H = 22 (the expected bytes follow the active rows). Within DESIGN.md §6's rule
    against float64, and the forward ran as a cluster plan (and the backward where its
    plan is one), not a fallback."""
    plans = _plans_here(dtype, 3, H)
    if getattr(plans["forward"], "kind", None) != "cluster":
        pytest.skip(f"this GPU plans no cluster forward for B=3 H={H}: {plans}")
    args64 = _layer(6, 3, 5, H, lengths=lengths)
    reverse = lengths is not None
    _meets_the_rule_as_planned(monkeypatch, dtype, plans, args64, reverse)


@requires_kernels
@pytest.mark.parametrize("save", ["cells", "none"])
def test_save_modes(save):
    args = _layer(7, 3, 5, 20, proj=11, dtype=torch.float32)
    fwd, bwd = _kernels()
    outs = fwd(*args, False, save)
    ref = reference.forward(*args, False, save)
    for a, b in zip(outs, ref):
        assert a.shape == b.shape
        assert_close(a, b, **TIGHT32)
    if save == "cells":
        _assert_same(run_layer(fwd, bwd, args, False, save="cells"),
                     run_layer(reference.forward, reference.backward, args, False), TIGHT32)


@requires_kernels
def test_without_bias_and_only_dc_n_flowing_back():
    args = _layer(7, 3, 5, 20, bias=False, dtype=torch.float32)
    upstream = (None, None, torch.ones(3, 20, device=DEVICE))
    _assert_same(run_layer(*_kernels(), args, False, upstream=upstream),
                 run_layer(reference.forward, reference.backward, args, False, upstream=upstream),
                 TIGHT32)


@requires_kernels
def test_freeze_masks_zero_exactly_the_frozen_entries():
    args = _layer(6, 3, 5, 8, proj=3, dtype=torch.float32)
    g = torch.Generator().manual_seed(4)
    frozen = [torch.rand(a.shape, generator=g).to(DEVICE) < 0.5 for a in args[4:9]]
    got = run_layer(*_kernels(), args, False, frozen=frozen)
    _assert_same(got, run_layer(reference.forward, reference.backward, args, False, frozen=frozen),
                 TIGHT32)
    for grad, mask in zip(got[1][3:8], frozen):
        assert torch.all(grad[mask] == 0) and torch.all(grad[~mask] != 0)


@requires_kernels
@pytest.mark.parametrize("needs", [
    [False, False, False, True, False, False, False, False],
    [True, False, False, False, False, False, False, False],
    [False, True, True, False, False, True, True, False],
])
def test_only_the_gradients_asked_for(needs):
    args = _layer(5, 3, 4, 12, proj=5, dtype=torch.float32)
    got = run_layer(*_kernels(), args, False, needs=needs)
    _assert_same(got, run_layer(reference.forward, reference.backward, args, False, needs=needs),
                 TIGHT32)
    assert [g is not None for g in got[1][:8]] == needs


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_module_matches_nn_lstm(dtype):
    config = dict(input_size=5, hidden_size=20, num_layers=2, bidirectional=True, proj_size=7)
    ref = nn.LSTM(**config).to(DEVICE, torch.float64)
    ours = rnnfast.LSTM(**config, backend="cuda").to(DEVICE, dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 5, dtype=torch.float64, device=DEVICE)
    lengths = [7, 4, 1]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
    out_ref, (h_ref, c_ref) = ref(packed)
    out, (h, c) = ours(nn.utils.rnn.pack_padded_sequence(x.to(dtype), lengths))
    tol = TIGHT32 if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    assert_close(out.data.double(), out_ref.data, **tol)
    assert_close(h.double(), h_ref, **tol)
    assert_close(c.double(), c_ref, **tol)


@requires_kernels
def test_too_large_layer_on_gpu_falls_back_once():
    monkey = set()
    cuda_backend._warned, saved = monkey, cuda_backend._warned
    try:
        args = _layer(3, 2, 8, 2048, dtype=torch.bfloat16)
        with pytest.warns(UserWarning, match="cannot run this layer on chip"):
            y = _kernels()[0](*args, False, "none")[0]
        assert_close(y, reference.forward(*args, False, "none")[0])
    finally:
        cuda_backend._warned = saved
