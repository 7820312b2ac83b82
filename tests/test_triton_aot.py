"""CI gate without a GPU: every plan the planner emits over a sampled sweep of layer
sizes, compiled ahead of time for sm_80 and sm_90, forward and backward, fits the
architecture (shared memory within the per-block limit, at most 255 registers, no
spills). Each distinct kernel compiles once (about 2-5 s each on one core).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from rnnfast.backends.triton import aot  # noqa: E402
from rnnfast.backends.triton.plan import Plan  # noqa: E402

ARCHS = (80, 90)

# (batch, hidden, proj_size, packed, dtype): each plan form the planner has (W_hh held
# or streamed, one tile a program or several, barrier or batch split, the batch as N
# (8 rows) or 16/32/64-row tiles) in each dtype, odd sizes, projection, packed rows,
# and sizes Triton's launcher specializes (B = 1).
SWEEP = [
    (64, 512, 0, False, torch.float16),     # fastrnns' size: 262,144 B of shared on the old plan
    (64, 256, 0, True, torch.float32),      # the old plan's fp32 spills (W_hh held, 64 rows)
    (16, 768, 0, False, torch.bfloat16),    # FlashRNN's case: W_hh held, 12 chunks backward
    (4, 256, 0, False, torch.float16),      # batch as N, W_hh held both ways
    (16, 1024, 0, False, torch.float16),    # W_hh held by 128 programs on sm_90, not on sm_80
    (8, 512, 0, True, torch.bfloat16),      # batch as N, held, packed
    (8, 512, 128, False, torch.float16),    # held with a projection (P = 128)
    (8, 512, 0, False, torch.float32),      # fp32: streamed (tf32x3 would spill held)
    (8, 192, 0, False, torch.float32),      # fp32 held forward at its limit (24 KB, 6 chunks)
    (2, 1000, 0, True, torch.float32),      # fp32, 1024 padded columns: streamed
    (3, 20, 11, True, torch.float32),       # tiny, odd, projection, packed
    (17, 100, 0, False, torch.float16),     # 32-row tiles
    (33, 257, 0, True, torch.bfloat16),     # 64-row tiles, odd H
    (100, 1000, 300, False, torch.float16), # projection, two batch blocks
    (256, 1024, 0, False, torch.bfloat16),  # a benchmark case
    (512, 2048, 0, False, torch.float32),   # eight batch blocks
    (1, 2048, 0, False, torch.bfloat16),    # B = 1 (folded into the kernel)
    (512, 16, 0, True, torch.float16),      # 8 batch blocks x 2 programs of 8 units
    (8192, 512, 0, False, torch.float16),   # the batch fills the GPU: batch split, 32 units
]


@pytest.fixture(scope="module")
def compiled():
    cases = [aot.plan_case(batch, hidden, proj, 128, dtype, arch, packed, direction)
             for batch, hidden, proj, packed, dtype in SWEEP
             for arch in ARCHS for direction in aot.DIRECTIONS]
    return list(zip(cases, aot.compile_cases(cases)))


def test_every_planned_kernel_multiplies_on_tensor_cores(compiled):
    """The recurrent products of every plan run on tensor cores, forward and backward:
    fp16/bf16 directly, fp32 through tf32x3 (three tf32 mma per product: about fp32's
    accuracy), never the FMA units."""
    on_fma = [f"{case.direction} {case.dtype} B={case.batch} H={case.hidden} sm_{case.arch}"
              for case, result in compiled if result.resources.mma == 0]
    assert on_fma == []


def test_every_barrier_plan_acquires_after_its_wait(compiled):
    """A barrier plan's programs read what the others stored before they arrived: the
    wait must end with an acquire (cell.end_phase), or those reads may see old values.
    Triton drops an unused atomic_add(ptr, 0, sem="acquire"): 3.6 and 3.7 compiled the
    barrier without it until its result decided the timeout."""
    barrier = [(c, r) for c, r in compiled if c.plan.counts_arrivals]
    assert barrier
    missing = [f"{c.direction} {c.dtype} B={c.batch} H={c.hidden} sm_{c.arch}"
               for c, r in barrier if r.resources.acquires == 0]
    assert missing == []


def test_every_tagged_plan_moves_its_words_whole(compiled):
    """A tagged plan (small batches: the forward's h(t), the 16-bit backward's gate
    gradients) reads a word's tag and data in one load, so each word must be stored and
    loaded whole: 8-byte relaxed atomic exchanges at gpu scope (single-copy atomic; a
    plain store racing the polls is a data race), 8-byte volatile loads. No other plan
    touches words."""
    tagged = [(c, r) for c, r in compiled if c.plan.tagged]
    assert {(c.direction, c.dtype) for c, _ in tagged} >= {
        ("forward", "float32"), ("forward", "bfloat16"), ("forward", "float16"),
        ("backward", "bfloat16"), ("backward", "float16")}
    assert not any(c.has_proj or (c.direction == "backward" and c.dtype == "float32")
                   for c, _ in tagged)
    assert [c for c, r in tagged if not (r.resources.word_stores and r.resources.word_loads)] == []
    assert [c for c, r in compiled
            if not c.plan.tagged and (r.resources.word_stores or r.resources.word_loads)] == []


def test_every_planned_kernel_fits_sm80_and_sm90(compiled):
    forms = {(c.plan.weights_resident, c.plan.one_tile, c.plan.use_barrier, c.plan.tagged,
              c.plan.block_b) for c, _ in compiled}
    # (W_hh held, one tile a program, barrier, tagged words, rows a tile): the forms claimed
    assert forms >= {(True, True, True, True, 8), (True, True, True, True, 16),
                     (True, True, True, False, 8), (True, True, True, False, 16),
                     (False, True, True, False, 8), (False, True, True, False, 64),
                     (False, False, True, False, 64), (False, False, False, False, 8),
                     (False, False, False, False, 64)}
    problems = [f"{case}: {', '.join(result.resources.problems(case.arch))}"
                for case, result in compiled if result.resources.problems(case.arch)]
    assert problems == []


def test_held_weights_stay_in_shared_memory_for_the_whole_sequence(compiled):
    """A held plan's chunks cover its reduction (the forward P, the backward 4H) and
    the compiled kernel fills one shared-memory buffer per chunk before its loop over
    time, reading them at every step; a streamed plan fills none. fp32's backward
    streams (held, it spilled or was modelled slower: plan.py)."""
    held = [(c, r) for c, r in compiled if c.plan.weights_resident]
    assert {c.direction for c, _ in held} == {"forward", "backward"}
    for case, result in compiled:
        plan = case.plan
        reduction = case.out_size if case.direction == "forward" else 4 * case.hidden
        if plan.weights_resident:
            assert plan.one_tile and plan.num_stages == 1
            assert (plan.held_chunks - 1) * plan.block_k < reduction <= plan.held_chunks * plan.block_k
        # fp32 holds two buffers a chunk: tf32x3's big and small parts
        assert (result.resources.held_buffers >= plan.held_chunks
                and (plan.held_chunks or not result.resources.held_buffers)), case
    assert not any(c.dtype == "float32" and c.direction == "backward" for c, _ in held)


def test_the_gate_catches_an_oversized_plan():
    """The old planner's choice for B=64, H=512, fp16 (BLOCK_K padded to 512, W_hh held
    in registers, three pipeline stages) needs more shared memory than an H100 has and
    spills: the check must say so."""
    old = Plan(block_b=64, block_h=16, block_k=512, batch_blocks=1, programs_per_batch_block=32,
               one_tile=True, held_chunks=1, batch_as_n=False, use_barrier=True, num_warps=4,
               num_stages=3)
    result = aot.compile_plan(64, 512, 0, 100, torch.float16, 90, plan=old)
    assert result.resources.shared > aot.SHARED_LIMIT[90]
    assert any("shared memory" in p for p in result.resources.problems(90))


@pytest.mark.parametrize("kwargs,error", [
    (dict(arch=75), ValueError),
    (dict(direction="sideways"), ValueError),
    (dict(dtype=torch.int32), TypeError),
    (dict(proj_size=512), ValueError),
    (dict(batch=0), ValueError),
])
def test_bad_requests_raise_clear_errors(kwargs, error):
    request = dict(batch=4, hidden=512, proj_size=0, seq_len=10, dtype=torch.float16, arch=90)
    with pytest.raises(error):
        aot.plan_case(**{**request, **kwargs})


def test_latency_model_counts_what_each_plan_moves_and_waits_for():
    from dataclasses import replace

    from rnnfast.backends.triton import model
    from rnnfast.backends.triton.plan import gpu_plan

    tagged = gpu_plan(4, 256, 256, 50, 2, sms=132)
    held = replace(tagged, tagged=False, num_warps=4)
    streamed = replace(held, held_chunks=0, block_k=32, num_stages=2)
    not_ahead = replace(streamed, one_tile=False)
    split = replace(not_ahead, programs_per_batch_block=1, use_barrier=False)
    plans = dict(held=held, streamed=streamed, not_ahead=not_ahead, split=split)
    times = {name: model.forward_time(p, 4, 256, 256, 256, 50, torch.float16)
             for name, p in plans.items()}
    assert held.weights_resident and held.one_tile and held.batch_as_n
    assert times["held"].bytes_per_step < times["streamed"].bytes_per_step
    assert times["held"].step_s < times["streamed"].step_s
    # Inputs loaded ahead of the barrier wait leave the critical path (same bytes moved,
    # plus the cell state read each step without one_tile).
    assert times["streamed"].step_s < times["not_ahead"].step_s
    # Rows as the mma's M are padded to 16, as its N to 8: with 32-unit tiles (128 gate
    # rows) that is 16 mma tiles against 8 for four warps.
    wide = replace(held, block_h=32, programs_per_batch_block=8)
    assert (model.forward_time(wide, 4, 256, 256, 256, 50, torch.float16).step_s
            < model.forward_time(replace(wide, batch_as_n=False), 4, 256, 256, 256, 50,
                                 torch.float16).step_s)
    assert (times["streamed"].barriers_per_step, times["split"].barriers_per_step) == (1, 0)
    floor = model.H100.l2_round_trip_s + model.H100.barrier_s
    assert times["held"].step_s > floor  # never below one L2 round trip and one barrier
    # Tagged h: no barrier and a shorter wait, for twice the bytes of h(t-1) read (8-byte
    # words of two 16-bit units and a tag).
    with_tags = model.forward_time(tagged, 4, 256, 256, 256, 50, torch.float16)
    assert tagged.tagged and with_tags.barriers_per_step == 0
    assert model.H100.tagged_wait_s < with_tags.step_s < times["held"].step_s
    h_read = 32 * 8 * 256 * 2  # 32 programs, 8 rows (the batch as N), 256 units
    assert with_tags.bytes_per_step - times["held"].bytes_per_step >= h_read
    # The backward's gate gradients as tagged words likewise: 4H of them a row.
    tagged_backward = gpu_plan(4, 256, 256, 50, 2, sms=132, direction="backward")
    at_barrier = replace(tagged_backward, tagged=False, num_warps=4)
    words, barrier = (model.backward_time(p, 4, 256, 256, 256, 50, torch.float16)
                      for p in (tagged_backward, at_barrier))
    assert tagged_backward.tagged and (words.barriers_per_step, barrier.barriers_per_step) == (0, 1)
    assert words.step_s < barrier.step_s
    assert words.bytes_per_step - barrier.bytes_per_step >= 32 * 8 * 4 * 256 * 2
    with_proj = model.forward_time(streamed, 4, 256, 128, 256, 50, torch.float16)
    assert with_proj.barriers_per_step == 2
    backward = model.backward_time(streamed, 4, 256, 256, 256, 50, torch.float16)
    # One tile a program without a projection keeps dh in registers: one barrier a step.
    assert backward.barriers_per_step == 1 and backward.gemm_s > times["streamed"].gemm_s
    assert model.backward_time(not_ahead, 4, 256, 256, 256, 50,
                               torch.float16).barriers_per_step == 2
    assert at_barrier.held_chunks == 4  # 4H = 1024 rows in chunks of 256
    assert (barrier.step_s
            < model.backward_time(replace(at_barrier, held_chunks=0, block_k=32), 4, 256,
                                  256, 256, 50, torch.float16).step_s)


def test_bench_explain_prints_plan_resources_and_modelled_time(capsys):
    from rnnfast.__main__ import main

    assert main(["bench", "--explain", "--batch", "4", "--hidden", "256", "--seq", "8",
                 "--dtype", "fp16"]) == 0
    out = capsys.readouterr().out.split("CUDA plans")[0]  # the Triton table
    rows = [line for line in out.splitlines() if line.startswith("custom T=8 B=4 I=H=256 fp16")]
    assert [row.split()[5] for row in rows] == ["forward", "backward"]
    # 256 units, 8 a program, 4 rows as the products' N; W_hh held in 1 and 4 chunks
    # the forward's h and the backward's gate gradients pass as tagged words
    assert "N8x8x256" in rows[0] and "tagged x32+" in rows[0] and "W held x1" in rows[0]
    assert "tagged x32+" in rows[1] and "W held x4" in rows[1]
    assert "fwd+bwd" in out and "no published figure" in out


def test_bench_explain_rejects_a_shape_the_bench_rejects(capsys):
    """--explain reads the same arguments as the bench: --batch 0 is an error, not 32."""
    from rnnfast.__main__ import main

    assert main(["bench", "--explain", "--batch", "0", "--hidden", "64", "--seq", "8"]) == 2
    assert "--batch must be a positive integer, got 0" in capsys.readouterr().err
