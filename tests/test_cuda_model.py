"""The CUDA kernels' latency model (rnnfast/backends/cuda/model.py) and its table in
`python -m rnnfast bench --explain`: the model's structure (what costs more than what),
not its numbers, which are assumptions until a GPU measures them. Needs neither a GPU,
nor triton, nor the extension."""
from __future__ import annotations

import builtins
import dataclasses

import pytest
import torch

from rnnfast.backends import latency
from rnnfast.backends.cuda import model, plan as layout

SMS, SMEM, = 132, 227 * 1024


# A GPU that places no 16-CTA cluster: FlashRNN's forward is then the grid in clusters
# of 8 for multicast (with them, a cluster plan holding W_hh partly in registers).
NO_16_CTA_CLUSTERS = tuple(0 if c == 16 else (SMS // c if c >= 2 else 0) for c in range(17))


def _plan(direction, B, H, P=None, itemsize=2, major=9, resident=()):
    P = H if P is None else P
    plan = layout.make_plan(direction, B, H, P, P != H, itemsize, SMS, SMEM, major,
                            resident_clusters=resident)
    assert not isinstance(plan, str), plan
    return plan


def _as_grid(plan, direction, H):
    """The same split of a cluster plan, run as a cooperative grid."""
    smem_bytes = layout.forward_smem_bytes if direction == "forward" else layout.backward_smem_bytes
    smem = smem_bytes(H, H, False, plan.itemsize, plan.units, plan.proj_cols, plan.block_rows,
                      False)
    return dataclasses.replace(plan, kind="grid", smem_bytes=smem)


def test_the_shared_gpu_description_is_what_the_triton_model_uses():
    assert latency.H100.sms == 132 and latency.H100.smem_bytes_per_clock_per_sm == 128
    triton_model = pytest.importorskip("rnnfast.backends.triton.model")
    assert triton_model.H100 is latency.H100 and triton_model.ModelledTime is latency.ModelledTime


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("B,H", [(4, 64), (8, 256), (16, 128)])
def test_a_cluster_step_is_cheaper_than_a_grid_step_of_the_same_layer(direction, B, H):
    cluster = _plan(direction, B, H)
    assert cluster.kind == "cluster"
    same_split = _as_grid(cluster, direction, H)
    sm80 = _plan(direction, B, H, major=8)  # the grid plan an sm_80 GPU gets
    assert sm80.kind == "grid"
    time = model.forward_time if direction == "forward" else model.backward_time
    times = [time(p, B, H, H, H, 100, torch.float16).step_s for p in (cluster, same_split, sm80)]
    assert times[0] < times[1] and times[0] < times[2]
    # The grid plan pays an L2 round trip and a grid barrier; the cluster plan only its
    # exchange.
    gpu = latency.H100
    assert times[1] >= gpu.l2_round_trip_s + gpu.barrier_s
    assert times[0] >= gpu.cluster_exchange_s


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_time_grows_linearly_with_the_sequence(direction, dtype):
    B, H = 16, 256
    plan = _plan(direction, B, H, itemsize=dtype.itemsize)
    time = model.forward_time if direction == "forward" else model.backward_time
    t = [time(plan, B, H, H, H, T, dtype) for T in (100, 200, 300)]
    assert t[0].step_s == t[1].step_s == t[2].step_s > 0
    assert t[1].total_s > t[0].total_s
    assert t[2].total_s - t[1].total_s == pytest.approx(t[1].total_s - t[0].total_s)
    assert t[1].recurrence_s - t[0].recurrence_s == pytest.approx(100 * t[0].step_s)
    assert t[1].gemm_s == pytest.approx(2 * t[0].gemm_s)


def test_bigger_layers_and_batches_cost_more():
    small = _plan("backward", 8, 256)
    big = _plan("backward", 8, 512)
    s = model.backward_time(small, 8, 256, 256, 256, 10, torch.float16)
    b = model.backward_time(big, 8, 512, 512, 512, 10, torch.float16)
    assert b.step_s > s.step_s and b.bytes_per_step > s.bytes_per_step and b.gemm_s > s.gemm_s
    wide = _plan("backward", 64, 256)
    w = model.backward_time(wide, 64, 256, 256, 256, 10, torch.float16)
    assert w.bytes_per_step > s.bytes_per_step and w.gemm_s > s.gemm_s


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_projection_adds_a_phase_and_costs_more(direction):
    B, H, P = 8, 256, 128
    time = model.forward_time if direction == "forward" else model.backward_time
    plain = _plan(direction, B, H, major=8)
    proj = _plan(direction, B, H, P, major=8)
    assert plain.kind == proj.kind == "grid"
    one = time(plain, B, H, H, H, 50, torch.float16)
    two = time(proj, B, H, P, H, 50, torch.float16)
    assert (one.barriers_per_step, two.barriers_per_step) == (1, 2)
    gpu = latency.H100
    assert two.step_s > one.step_s
    assert two.step_s > 2 * (gpu.l2_round_trip_s + gpu.barrier_s)


def test_fp32_issues_three_tf32_mma_per_tile_and_k_tile():
    """3xTF32: three m16n8k8 per tile and 8-wide k-tile against one m16n8k16 per 16-wide
    k-tile, each taking the same time (half the FLOPs at half the rate): 6x the mma of
    the 16-bit product of the same M, N, K."""
    half = layout.Product.make(64, 256, 16, 2, True)
    single = layout.Product.make(64, 256, 16, 4, True)
    # 4 m-tiles x one group of 2 n-tiles, each shared by 2 warps: one item a warp.
    assert ((half.tiles, half.group, half.items, half.ksplit)
            == (single.tiles, single.group, single.items, single.ksplit) == (8, 2, 8, 2))
    h = model.product_time(half, 2, False)
    f = model.product_time(single, 4, False)
    assert h.mma == half.tiles * 256 // 16
    assert f.mma == 3 * single.tiles * 256 // 8 == 6 * h.mma
    assert f.issue_s == pytest.approx(6 * h.issue_s)
    assert f.chain_s == pytest.approx(6 * h.chain_s)
    # Twice the operand bytes; the fp32 k-split partial sums are the same size.
    assert 1.5 * h.smem_s < f.smem_s < 2 * h.smem_s
    # More rows, more mma; the busiest warp sets the chain.
    double = model.product_time(layout.Product.make(128, 256, 16, 2, True), 2, False)
    assert double.mma == 2 * h.mma and double.chain_s == pytest.approx(2 * h.chain_s)


def test_a_k_split_spreads_a_small_product_over_the_warps():
    p = layout.Product.make(16, 256, 8, 2, True)  # one tile: ksplit 8, one slice a warp
    assert (p.tiles, p.ksplit) == (1, 8)
    t = model.product_time(p, 2, False)
    assert t.mma == 16 and t.warp_mma == 2
    # Two k-tile steps, on two of the warp's four accumulator copies: one latency, plus
    # their two issue slots.
    gpu = latency.H100
    assert p.copies == 4
    assert t.chain_s == pytest.approx((gpu.mma_latency_clocks + 2) / gpu.clock_hz)


def test_accumulator_copies_shorten_the_serial_chain():
    """A warp with one slot spreads its k-tiles over 4 accumulator sets: a quarter of
    the dependent mma latency, the same mma count."""
    import dataclasses
    p = layout.Product.make(80, 320, 8, 4, True)  # 5 m-tiles x 1 n-tile, fp32
    assert (p.slots, p.copies, p.ksplit) == (1, 4, 1)
    one = dataclasses.replace(p, copies=1)
    fast, slow = model.product_time(p, 4, False), model.product_time(one, 4, False)
    assert fast.mma == slow.mma
    gpu = latency.H100
    steps = 320 // 8
    assert slow.chain_s == pytest.approx((steps * 3 * gpu.mma_latency_clocks + steps * 3)
                                         / gpu.clock_hz)
    assert fast.chain_s == pytest.approx((steps // 4 * 3 * gpu.mma_latency_clocks + steps * 3)
                                         / gpu.clock_hz)


def test_a_warp_reuses_its_a_fragment_over_its_group_of_n_tiles():
    """A is read once per (m-tile, group), not once per n-tile: 32 n-tiles in 4 groups
    read A 4 times; the same M, K over 8 n-tiles (1 group) reads it once."""
    wide = layout.Product.make(32, 1024, 256, 2, True)    # 2 m-tiles x 32 n-tiles
    narrow = layout.Product.make(32, 1024, 64, 2, True)   # 2 m-tiles x 8 n-tiles
    assert (wide.groups, wide.group, wide.items) == (4, 8, 8)
    assert (narrow.groups, narrow.group) == (1, 8)
    a_bytes = 32 * 1024 * 2
    w, n = model.product_time(wide, 2, False), model.product_time(narrow, 2, False)
    clock_bytes = latency.H100.smem_bytes_per_clock_per_sm * latency.H100.clock_hz
    b_and_parts = lambda p: (p.nb * p.k * 2 * (p.m // 16) + 2 * p.ksplit * p.m * p.nb * 4)
    assert w.smem_s == pytest.approx((4 * a_bytes + b_and_parts(wide)) / clock_bytes)
    assert n.smem_s == pytest.approx((a_bytes + b_and_parts(narrow)) / clock_bytes)


def test_a_plan_for_another_dtype_is_refused():
    plan = _plan("forward", 4, 64)
    with pytest.raises(ValueError, match="2-byte"):
        model.forward_time(plan, 4, 64, 64, 64, 10, torch.float32)


def _hide_triton(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def _cuda_part(out):
    assert "CUDA plans on sm_90" in out
    return out.split("CUDA plans on sm_90")[1]


def test_explain_prints_the_cuda_table_without_triton(capsys, monkeypatch):
    from rnnfast.__main__ import main

    _hide_triton(monkeypatch)
    assert main(["bench", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "Triton plans: skipped (triton is not installed" in out
    table = _cuda_part(out)
    names = [f"{group} T={T} B={B} I=H={H} {dt}" for dt in ("fp32", "bf16", "fp16")
             for group, T, B, H in (("fastrnns", 100, 64, 512), ("flashrnn-dense", 1024, 16, 768))]
    for name in names:
        rows = [line for line in table.splitlines() if line.startswith(name)]
        assert [row.split()[len(name.split())] for row in rows] == ["forward", "backward"], name
        assert all("grid of" in row or "cluster of" in row or "falls back" in row for row in rows)
        assert any(line.strip().startswith(name) for line in table.splitlines()
                   if line.startswith("  "))  # its totals line
    flash = [line for line in table.splitlines()
             if line.startswith("  flashrnn-dense T=1024 B=16 I=H=768 fp16")]
    assert len(flash) == 1 and "cuDNN 2.01 / 5.19 ms" in flash[0]


def test_explain_says_when_a_layer_falls_back(capsys, monkeypatch):
    from rnnfast.__main__ import main

    _hide_triton(monkeypatch)
    assert main(["bench", "--explain", "--batch", "8", "--hidden", "8192", "--seq", "4",
                 "--dtype", "fp32,fp16"]) == 0
    table = _cuda_part(capsys.readouterr().out)
    assert table.count("falls back: the forward kernel cannot hold this layer") == 2
    assert "a layer falls back to the reference path" in table


def test_explain_models_a_custom_shape_with_its_cuda_plan(capsys, monkeypatch):
    from rnnfast.__main__ import main

    _hide_triton(monkeypatch)
    assert main(["bench", "--explain", "--batch", "4", "--hidden", "64", "--seq", "8",
                 "--dtype", "fp16"]) == 0
    table = _cuda_part(capsys.readouterr().out)
    rows = [line for line in table.splitlines() if line.startswith("custom T=8 B=4 I=H=64 fp16")]
    assert len(rows) == 2 and all("cluster of 16" in row for row in rows)
    step = float(rows[0].split()[-2])
    expected = model.forward_time(_plan("forward", 4, 64), 4, 64, 64, 64, 8, torch.float16)
    assert step == pytest.approx(expected.step_s * 1e6, abs=0.006)


def test_a_register_backward_multiplies_each_multicast_chunk_once_it_has_landed(monkeypatch):
    """FlashRNN's backward (B = 16, H = 768 fp16: a register grid in clusters of 4, 8
    k-slices of 21 k-tiles) stages dgates(t+1) in 4 column chunks, 3 of 7 register
    rounds each and the shared-memory part, each on its own mbarrier. Against the same
    plan staging them as one chunk (what a product waiting for the whole operand
    costs), the step is shorter by some of the overlap of copies and product, never by
    more than the smaller of the two."""
    B, H = 16, 768
    plan = _plan("backward", B, H)
    assert (plan.kind, plan.multicast, plan.reg_k_tiles) == ("grid", 4, 21)
    slices, reg_cols = layout.reg_geometry("backward", plan.units, 2, plan.reg_k_tiles)
    assert [layout.stage_chunk_cols(slices, 21, 4 * H - reg_cols, 2, c) for c in range(4)] == [
        (0, 896), (896, 1792), (1792, 2688), (2688, 3072)]
    chunked = model.backward_time(plan, B, H, H, H, 100, torch.float16)
    monkeypatch.setattr(layout, "stage_chunks", lambda reg_k_tiles: 1)
    monkeypatch.setattr(layout, "stage_chunk_cols", lambda *args: (0, 4 * H))
    whole = model.backward_time(plan, B, H, H, H, 100, torch.float16)
    chain, _ = layout.backward_products(H, H, False, 2, plan.units, plan.proj_cols,
                                        plan.block_rows, False, plan.reg_k_tiles)
    product = model.reg_product_time("backward", chain, plan.units, plan.reg_k_tiles, True).s
    copies = plan.block_rows * 4 * H * 2 / latency.H100.l2_bytes_per_s_per_sm
    saved = whole.step_s - chunked.step_s
    assert 0.5 * min(product, copies) < saved <= min(product, copies)
    assert chunked.bytes_per_step == whole.bytes_per_step


def _without_multicast(plan):
    return dataclasses.replace(plan, multicast=0, smem_bytes=plan.smem_bytes - layout.ALIGN)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_multicast_reads_the_staged_operand_from_l2_once_per_cluster(direction):
    """FlashRNN's layer (B = 16, H = 768 fp16) in clusters of 8: the chip's L2 traffic
    loses 7/8 of the staged operand (h(t-1) forward, dgates(t+1) backward, 8 rows of
    the batch block); the step is faster, and every SM still receives the whole operand
    at its own L2 rate."""
    B, H = 16, 768
    plan = dataclasses.replace(_plan(direction, B, H, resident=NO_16_CTA_CLUSTERS),
                               multicast=8)  # the backward picks 4
    assert (plan.kind, plan.blocks, plan.block_rows) == ("grid", 128, 8)
    time = model.forward_time if direction == "forward" else model.backward_time
    multicast = time(plan, B, H, H, H, 100, torch.float16)
    plain = time(_without_multicast(plan), B, H, H, H, 100, torch.float16)
    staged = 8 * (H if direction == "forward" else 4 * H) * 2  # one block's operand, bytes
    assert plain.bytes_per_step - multicast.bytes_per_step == plan.blocks * staged * 7 // 8
    assert multicast.step_s < plain.step_s
    assert (multicast.barriers_per_step, multicast.gemm_s) == (plain.barriers_per_step,
                                                               plain.gemm_s)
    # The L2 term differs: the larger of the block's bytes at the per-SM rate and the
    # chip's bytes at the chip's rate. Only that, but in a register backward, whose
    # multicast chunks are also multiplied as they land (the test below).
    gpu = latency.H100
    block = plain.bytes_per_step // plan.blocks
    l2 = lambda chip: max(block / gpu.l2_bytes_per_s_per_sm, chip / gpu.l2_bytes_per_s)
    fewer_bytes = l2(plain.bytes_per_step) - l2(multicast.bytes_per_step)
    if plan.reg_k_tiles:
        assert plain.step_s - multicast.step_s > fewer_bytes
    else:
        assert plain.step_s - multicast.step_s == pytest.approx(fewer_bytes)
    # The whole operand still reaches each SM at the per-SM rate.
    assert multicast.step_s > (gpu.l2_round_trip_s + gpu.barrier_s
                               + block / gpu.l2_bytes_per_s_per_sm)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_multicast_gains_nothing_where_the_per_sm_l2_rate_bounds_the_step(direction):
    """With few blocks (B = 8, H = 64: 16 blocks of 4 units) the chip's L2 rate is not
    the bound: each SM receives its whole operand either way, so no cluster size makes
    the step faster, though it lowers the chip's traffic."""
    B, H = 8, 64
    time = model.forward_time if direction == "forward" else model.backward_time
    plans = [layout._candidate("grid", direction, B, H, H, False, 2, 16, 1, SMEM, m)
             for m in (0, 2, 4, 8)]
    assert [p.multicast for p in plans] == [0, 2, 4, 8] and plans[0].blocks == 16
    times = [time(p, B, H, H, H, 100, torch.float16) for p in plans]
    assert len({t.step_s for t in times}) == 1
    assert times[0].bytes_per_step > times[1].bytes_per_step > times[2].bytes_per_step \
        > times[3].bytes_per_step


def test_chunked_operands_are_not_multicast():
    """A chunked staged operand keeps cp.async, so it counts in full. B = 64, H = 1024,
    P = 256 fp16 backward: the projection phase's dh (16 rows x 256, one chunk) is
    multicast, the chain's dgates (16 rows x 4096, double-buffered chunks) are not."""
    B, H, P = 64, 1024, 256
    plan = _plan("backward", B, H, P)
    chain, proj = layout.backward_products(H, P, True, 2, plan.units, plan.proj_cols,
                                           plan.block_rows, False)
    assert plan.multicast and proj.chunks == 1 and chain.chunks > 1
    mine = model.backward_time(plan, B, H, P, H, 10, torch.float16)
    plain = model.backward_time(_without_multicast(plan), B, H, P, H, 10, torch.float16)
    shared = proj.nb * proj.k * 2
    assert plain.bytes_per_step - mine.bytes_per_step == (
        plan.blocks * shared - plan.blocks * shared // plan.multicast)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_chunked_staging_overlaps_the_product(direction):
    """B = 256, H = 1024 bf16 as plain grids: each block stages 128 rows of h(t-1)
    (forward) or dgates (backward) in 16 or 64 double-buffered chunks, chunk c+1's
    copies in flight while chunk c is multiplied. Over n chunks the phase pays the first
    chunk's copies, n - 1 times the slower of a chunk's copies and product, and the last
    chunk's product: at least the slower of the two, less than their sum, and exactly
    that sum's split."""
    B, H = 256, 1024
    plan = layout.make_plan(direction, B, H, H, False, 2, SMS, SMEM, 9, plain=True)
    products = (layout.forward_products if direction == "forward"
                else layout.backward_products)(H, H, False, 2, plan.units, plan.proj_cols,
                                               plan.block_rows, False)
    product = products[0]
    assert (plan.kind, plan.block_rows, plan.multicast) == ("grid", 128, 0)
    assert product.chunks == (16 if direction == "forward" else 64)
    gpu = latency.H100
    timed = model.product_time(product, 2, True, gpu)
    phase = model._staged_phase(plan, product, timed, 2, other_bytes=0)
    staged = product.nb * product.k * 2
    assert (phase.l2_bytes, phase.overlapped_bytes, phase.chunks) == (staged, staged,
                                                                      product.chunks)
    copies = max(staged / gpu.l2_bytes_per_s_per_sm, staged * plan.blocks / gpu.l2_bytes_per_s)
    latency_s = gpu.l2_round_trip_s + gpu.barrier_s
    took = model._phase_time(plan, phase, gpu) - latency_s
    n = product.chunks
    assert took == pytest.approx(copies / n + (n - 1) / n * max(copies, timed.s) + timed.s / n)
    assert max(copies, timed.s) < took < copies + timed.s
    # A single chunk is not overlapped: FlashRNN's plain grid forward stages h whole.
    single = _plan("forward", 16, 768, major=8)
    rec = layout.forward_products(768, 768, False, 2, single.units, single.proj_cols,
                                  single.block_rows, False)[0]
    timed = model.product_time(rec, 2, True, gpu)
    phase = model._staged_phase(single, rec, timed, 2, other_bytes=0)
    assert (rec.chunks, phase.overlapped_bytes) == (1, 0)
    whole = rec.nb * rec.k * 2
    copies = max(whole / gpu.l2_bytes_per_s_per_sm, whole * single.blocks / gpu.l2_bytes_per_s)
    assert model._phase_time(single, phase, gpu) - latency_s == pytest.approx(copies + timed.s)


def test_a_reduce_split_stages_a_share_of_the_gate_gradients_and_pays_the_cluster_meeting():
    """B = 256, H = 1024 bf16 backward: the reduce split in clusters of 4 against the
    same 2 x 64 blocks of 16 units without it. Each block stages 128 x 1024 of the gate
    gradients instead of 128 x 4096, so the chip's L2 traffic loses the difference for
    every block; the step pays the cluster's meeting (latency.Gpu.cluster_reduce_s,
    once), and is less than half as long."""
    B, H = 256, 1024
    plan = _plan("backward", B, H)
    assert (plan.kind, plan.reduce_ctas, plan.units, plan.block_rows) == ("grid", 4, 16, 128)
    plain = dataclasses.replace(plan, reduce_ctas=0, smem_bytes=layout.backward_smem_bytes(
        H, H, False, 2, plan.units, plan.proj_cols, plan.block_rows, False))
    split = model.backward_time(plan, B, H, H, H, 10, torch.bfloat16)
    whole = model.backward_time(plain, B, H, H, H, 10, torch.bfloat16)
    assert whole.bytes_per_step - split.bytes_per_step == plan.blocks * 128 * (4096 - 1024) * 2
    assert split.step_s < whole.step_s / 2
    assert (split.barriers_per_step, split.gemm_s) == (whole.barriers_per_step, whole.gemm_s)
    slower = dataclasses.replace(latency.H100, cluster_reduce_s=latency.H100.cluster_reduce_s
                                 + 1e-6)
    for p, extra in ((plan, 1e-6), (plain, 0.0)):
        assumed = model.backward_time(p, B, H, H, H, 10, torch.bfloat16).step_s
        measured = model.backward_time(p, B, H, H, H, 10, torch.bfloat16, slower).step_s
        assert measured - assumed == pytest.approx(extra)


def test_multicast_staging_pays_its_measured_extra_latency_once_per_shared_phase():
    """latency.Gpu.multicast_extra_s (assumed 0; the probe measures it) is added to each
    phase whose operand the cluster multicasts, and to nothing else: FlashRNN's forward
    as a grid (one shared phase) and the backward of B = 64, H = 1024, P = 256 (its
    projection phase shared, its chunked chain phase not)."""
    slower = dataclasses.replace(latency.H100, multicast_extra_s=0.4e-6)
    for direction, B, H, P in [("forward", 16, 768, 768), ("backward", 64, 1024, 256)]:
        plan = _plan(direction, B, H, P, resident=NO_16_CTA_CLUSTERS)
        time = model.forward_time if direction == "forward" else model.backward_time
        for p, extra in ((plan, 0.4e-6), (_without_multicast(plan), 0.0)):
            assumed = time(p, B, H, P, H, 10, torch.float16)
            measured = time(p, B, H, P, H, 10, torch.float16, slower)
            assert measured.step_s - assumed.step_s == pytest.approx(extra), (direction, p)


@pytest.mark.parametrize("direction,B,H", [("forward", 16, 512), ("backward", 16, 768),
                                           ("backward", 64, 512)])
def test_register_plans_issue_the_same_mma_and_read_less_shared_memory(direction, B, H):
    """A register plan (the forward's cluster, the backward's grid in clusters of 4 and
    its cluster)
    against the same split with its whole weight slice in shared memory: the same mma
    (the register part's and the rest's add up to the whole product's), fewer
    shared-memory bytes (the register columns' weights are not read each step), the
    same L2 traffic (the backward still stages the gate gradients whole), so a faster
    step."""
    plan = _plan(direction, B, H)
    assert plan.reg_k_tiles and plan.itemsize == 2
    without = dataclasses.replace(plan, reg_k_tiles=0)
    cluster = plan.kind == "cluster"
    products = layout.forward_products if direction == "forward" else layout.backward_products
    mine, _ = products(H, H, False, 2, plan.units, plan.proj_cols, plan.block_rows, cluster,
                       plan.reg_k_tiles)
    whole, _ = products(H, H, False, 2, plan.units, plan.proj_cols, plan.block_rows, cluster)
    regs = model.reg_product_time(direction, mine, plan.units, plan.reg_k_tiles, not cluster)
    plain = model.product_time(whole, 2, not cluster)
    assert regs.mma == plain.mma and regs.smem_s < plain.smem_s
    time = model.forward_time if direction == "forward" else model.backward_time
    a, b = (time(p, B, H, H, H, 100, torch.float16) for p in (plan, without))
    assert a.bytes_per_step == b.bytes_per_step and a.step_s < b.step_s
