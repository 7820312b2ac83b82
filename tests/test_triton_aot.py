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
# or streamed, barrier or batch split, 16/32/64-row tiles) in each dtype, odd sizes,
# projection, packed rows, and sizes Triton's launcher specializes (B = 1).
SWEEP = [
    (64, 512, 0, False, torch.float16),     # fastrnns' size: 262,144 B of shared on the old plan
    (64, 256, 0, True, torch.float32),      # the old plan's fp32 spills (W_hh held, 64 rows)
    (16, 768, 0, False, torch.bfloat16),    # FlashRNN's case: W_hh held by 96 programs
    (4, 256, 0, False, torch.float16),      # W_hh held, 256 columns
    (16, 1024, 0, False, torch.float16),    # W_hh held, 1024 columns (the largest held)
    (8, 512, 0, True, torch.bfloat16),      # W_hh held, 512 columns
    (8, 512, 0, False, torch.float32),      # the same in fp32: streamed (tf32x3 would spill held)
    (8, 128, 0, False, torch.float32),      # fp32 held: 16 KB a program, split for tf32x3
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


def test_every_planned_kernel_fits_sm80_and_sm90(compiled):
    forms = {(c.plan.weights_resident, c.plan.use_barrier, c.plan.block_b) for c, _ in compiled}
    assert forms >= {(True, True, 16), (False, True, 16), (False, True, 32), (False, True, 64),
                     (False, False, 64)}  # (W_hh held, barrier, rows a tile): the forms claimed
    problems = [f"{case}: {', '.join(result.resources.problems(case.arch))}"
                for case, result in compiled if result.resources.problems(case.arch)]
    assert problems == []


def test_backward_has_its_own_plan(compiled):
    """Where the forward holds W_hh (one unpipelined pass over a padded P), the
    backward, which reduces over 4H, streams it in pipelined chunks instead of reusing
    the forward's plan."""
    plans = {(c.batch, c.hidden, c.out_size, c.dtype, c.arch, c.direction): r.plan
             for c, r in compiled}
    held = [key for key, plan in plans.items() if key[-1] == "forward" and plan.weights_resident]
    assert held
    for key in held:
        backward = plans[key[:-1] + ("backward",)]
        assert not backward.weights_resident and backward.num_stages > 1


def test_the_gate_catches_an_oversized_plan():
    """The old planner's choice for B=64, H=512, fp16 (BLOCK_K padded to 512, W_hh held
    in registers, three pipeline stages) needs more shared memory than an H100 has and
    spills: the check must say so."""
    old = Plan(block_b=64, block_h=16, block_k=512, batch_blocks=1, programs_per_batch_block=32,
               weights_resident=True, use_barrier=True, num_warps=4, num_stages=3)
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
    from rnnfast.backends.triton import model
    from rnnfast.backends.triton.plan import gpu_plan

    held = gpu_plan(4, 256, 256, 50, 2, sms=132)
    streamed = Plan(**{**held.__dict__, "weights_resident": False, "block_k": 32, "num_stages": 2})
    split = Plan(**{**streamed.__dict__, "programs_per_batch_block": 1, "use_barrier": False})
    times = {name: model.forward_time(p, 4, 256, 256, 256, 50, torch.float16)
             for name, p in (("held", held), ("streamed", streamed), ("split", split))}
    assert held.weights_resident
    assert times["held"].bytes_per_step < times["streamed"].bytes_per_step
    assert times["held"].step_s < times["streamed"].step_s
    assert (times["streamed"].barriers_per_step, times["split"].barriers_per_step) == (1, 0)
    floor = model.H100.l2_round_trip_s + model.H100.barrier_s
    assert times["held"].step_s > floor  # never below one L2 round trip and one barrier
    with_proj = model.forward_time(streamed, 4, 256, 128, 256, 50, torch.float16)
    assert with_proj.barriers_per_step == 2
    backward = model.backward_time(streamed, 4, 256, 256, 256, 50, torch.float16)
    assert backward.barriers_per_step == 2 and backward.gemm_s > times["streamed"].gemm_s


def test_bench_explain_prints_plan_resources_and_modelled_time(capsys):
    from rnnfast.__main__ import main

    assert main(["bench", "--explain", "--batch", "4", "--hidden", "64", "--seq", "8",
                 "--dtype", "fp16"]) == 0
    out = capsys.readouterr().out.split("CUDA plans")[0]  # the Triton table
    rows = [line for line in out.splitlines() if line.startswith("custom T=8 B=4 I=H=64 fp16")]
    assert [row.split()[5] for row in rows] == ["forward", "backward"]
    assert "barrier x8" in rows[0] and "W held" in rows[0]  # 64 units, 8 a program
    assert "fwd+bwd" in out and "no published figure" in out


def test_bench_explain_rejects_a_shape_the_bench_rejects(capsys):
    """--explain reads the same arguments as the bench: --batch 0 is an error, not 32."""
    from rnnfast.__main__ import main

    assert main(["bench", "--explain", "--batch", "0", "--hidden", "64", "--seq", "8"]) == 2
    assert "--batch must be a positive integer, got 0" in capsys.readouterr().err
