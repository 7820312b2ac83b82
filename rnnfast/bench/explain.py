"""`python -m rnnfast bench --explain`: for each case, without a GPU, the plan of every
layer on an H100/H200 (sm_90) and the latency model's time, beside cuDNN's published
figure where one exists: first the Triton kernels (their plans compiled ahead of time
for their resources; skipped with a note when triton is not installed), then the CUDA
kernels (their plans from rnnfast/backends/cuda/plan.py; needs neither triton nor the
extension)."""
from __future__ import annotations

from typing import Optional

import torch

from ..cli_args import UsageError

# cuDNN on an H100, fp16, from FlashRNN's paper (DESIGN.md §8): (T, B, I, H, dtype) ->
# (forward, forward+backward) seconds. Other shapes have no published figure.
CUDNN_H100 = {(1024, 16, 768, 768, "fp16"): (2.01e-3, 5.19e-3)}
DEFAULT_GROUPS = ("fastrnns", "flashrnn-dense")
ARCH = 90
DIRECTIONS = ("forward", "backward")
# The CUDA plans' GPU: H100/H200 SXM (SMs, opt-in shared memory per block, major).
CUDA_SMS, CUDA_SMEM_PER_BLOCK, CUDA_MAJOR = 132, 227 * 1024, 9


def explain(args) -> int:
    """Prints the plans and modelled times of the bench's cases (by default the fastrnns
    and FlashRNN groups; --cases for others) or of --batch/--hidden/--seq."""
    from .cli import cases_from_args

    try:
        suite = cases_from_args(args, torch.device("cuda"), DEFAULT_GROUPS)
    except ValueError as e:
        raise UsageError(str(e), "python -m rnnfast bench --explain") from None

    try:
        import triton  # noqa: F401
    except ImportError:
        print("Triton plans: skipped (triton is not installed; it compiles them)")
    else:
        _triton_table(suite)
        print()
    _cuda_table(suite)
    return 0


def _reference(case) -> str:
    cudnn = CUDNN_H100.get((case.T, case.B, case.I, case.H, case.dtype))
    if cudnn and case.layers == 1:
        return f"cuDNN {cudnn[0] * 1e3:.2f} / {cudnn[1] * 1e3:.2f} ms (FlashRNN paper)"
    return "cuDNN: no published figure; measure it"


def _triton_table(suite) -> None:
    from ..backends.triton import aot, model

    layers = [(case, layer, direction) for case in suite for layer in range(case.layers)
              for direction in aot.DIRECTIONS]
    compiled = aot.compile_cases([aot.plan_case(case.B, case.H, 0, case.T, case.torch_dtype, ARCH,
                                                direction=direction)
                                  for case, _, direction in layers])
    print(f"Triton plans on sm_{ARCH}, modelled on an {model.H100.name} (rnnfast/backends/triton/"
          f"model.py: a model, not a measurement)")
    print(f"{'case':44} {'pass':8} {'plan':40} {'smem B':>7} {'regs':>4} {'spill':>5} "
          f"{'step us':>7} {'total ms':>8}")
    totals: dict = {}
    for (case, layer, direction), result in zip(layers, compiled):
        plan, found = result.plan, result.resources
        input_size = case.I if layer == 0 else case.H
        timing = (model.forward_time if direction == "forward" else model.backward_time)(
            plan, case.B, case.H, case.H, input_size, case.T, case.torch_dtype)
        totals[case, direction] = totals.get((case, direction), 0.0) + timing.total_s
        label = case.name + (f" layer {layer}" if case.layers > 1 else "")
        print(f"{label:44} {direction:8} {_describe(plan):40} {found.shared:7d} "
              f"{found.registers:4d} {found.spill_bytes:5d} {timing.step_s * 1e6:7.2f} "
              f"{timing.total_s * 1e3:8.3f}")
    print("\nModelled Triton layer totals against cuDNN:")
    for case in suite:
        forward = totals[case, "forward"]
        both = forward + totals[case, "backward"]
        print(f"  {case.name:44} fwd {forward * 1e3:7.3f} ms, fwd+bwd {both * 1e3:7.3f} ms; "
              f"{_reference(case)}")


def cuda_layers(case, gpu=None) -> tuple[list[tuple], Optional[float], Optional[float]]:
    """The CUDA kernels' plan of each layer and direction of `case` (one plan serves
    both directions of a bidirectional layer) and the model's time on `gpu` (default:
    the H100 model). Returns (rows, inference, training): a row is (label, direction,
    plan or why no plan fits, ModelledTime or None); inference is the inference
    forward's seconds, training the training forward's (gates and cells saved) plus
    the backward's, each None when a layer falls back to the reference path, which the
    model does not cover."""
    from ..backends.cuda import model, plan as cuda_plan

    gpu = gpu or model.H100
    dtype = case.torch_dtype
    supported = dtype in (torch.float16, torch.bfloat16, torch.float32)
    rows, inference, training = [], 0.0, 0.0
    for layer in range(case.layers):
        input_size = case.I if layer == 0 else case.H
        label = case.name + (f" layer {layer}" if case.layers > 1 else "")
        for direction in DIRECTIONS:
            plan = (cuda_plan.make_plan(direction, case.B, case.H, case.H, False, dtype.itemsize,
                                        CUDA_SMS, CUDA_SMEM_PER_BLOCK, CUDA_MAJOR)
                    if supported else f"the CUDA kernels take fp32, fp16 and bf16, not {case.dtype}")
            if isinstance(plan, str):
                rows.append((label, direction, plan, None))
                inference = training = None
                continue
            if direction == "forward":
                timing = model.forward_time(plan, case.B, case.H, case.H, input_size, case.T, dtype, gpu)
                if inference is not None:
                    inference += model.forward_time(plan, case.B, case.H, case.H, input_size, case.T,
                                                    dtype, gpu, training=False).total_s
            else:
                timing = model.backward_time(plan, case.B, case.H, case.H, input_size, case.T, dtype, gpu)
            if training is not None:
                training += timing.total_s
            rows.append((label, direction, plan, timing))
    return rows, inference, training


def _cuda_table(suite) -> None:
    """cuda_layers' rows of every case on the H100 model, then each case's totals. The
    forward row is the training forward; the totals' fwd is the inference forward,
    fwd+bwd the training forward and the backward."""
    from ..backends.cuda import model

    print(f"CUDA plans on sm_{CUDA_MAJOR}0 ({CUDA_SMS} SMs, {CUDA_SMEM_PER_BLOCK} B shared a "
          f"block), modelled on an {model.H100.name} (rnnfast/backends/cuda/model.py: a model, "
          f"not a measurement)")
    print(f"{'case':44} {'pass':8} {'plan':54} {'step us':>7} {'total ms':>8}")
    totals: dict = {}  # case -> (inference, training) seconds, None when a layer falls back
    for case in suite:
        rows, inference, training = cuda_layers(case)
        for label, direction, plan, timing in rows:
            if timing is None:
                print(f"{label:44} {direction:8} falls back: {plan}")
            else:
                print(f"{label:44} {direction:8} {_describe_cuda(plan, direction):54} "
                      f"{timing.step_s * 1e6:7.2f} {timing.total_s * 1e3:8.3f}")
        totals[case] = (inference, training)
    print("\nModelled CUDA layer totals against cuDNN:")
    for case in suite:
        inference, training = totals[case]
        mine = ("a layer falls back to the reference path; not modelled" if inference is None
                else f"fwd {inference * 1e3:7.3f} ms, fwd+bwd {training * 1e3:7.3f} ms")
        print(f"  {case.name:44} {mine}; {_reference(case)}")


def _describe_cuda(plan, direction: str) -> str:
    """Kind and size (CTAs a cluster, or blocks of the cooperative grid), hidden units a
    block, batch rows a block x batch blocks, shared memory bytes a block, and (grid
    plans launched in clusters) the CTAs a cluster sharing the staged operand by
    multicast or splitting the backward's reduction (reduce), the forward's row passes,
    and (register plans) the W_hh columns (forward) or rows (backward) a block holds in
    registers."""
    from ..backends.cuda.plan import reg_geometry
    form = (f"cluster of {plan.cluster}" if plan.kind == "cluster"
            else f"grid of {plan.blocks}")
    extra = f", multicast {plan.multicast}" if plan.multicast else ""
    extra += f", reduce {plan.reduce_ctas}" if plan.reduce_ctas else ""
    extra += f", {plan.passes} passes of {plan.pass_rows} rows" if plan.pass_rows else ""
    if plan.reg_k_tiles:
        held = reg_geometry(direction, plan.units, plan.itemsize, plan.reg_k_tiles)[1]
        extra += f", {held} W_hh {'cols' if direction == 'forward' else 'rows'} in regs"
    return (f"{form}, U={plan.units}, rows {plan.block_rows}x{plan.batch_blocks}, "
            f"smem {plan.smem_bytes}{extra}")


def _describe(plan) -> str:
    """rows x units x reduction chunk (rows as the products' N: "N"), warps, stages, the
    grid's form (programs meeting at a barrier, or waiting for tagged words; "+" where each
    program owns one tile and loads ahead), the weights."""
    form = ("batch split" if not plan.use_barrier
            else f"{'tagged' if plan.tagged else 'barrier'} x{plan.programs_per_batch_block}")
    form += "+" if plan.one_tile else ""
    weights = f"W held x{plan.held_chunks}" if plan.weights_resident else "W streamed"
    rows = f"N{plan.block_b}" if plan.batch_as_n else str(plan.block_b)
    return (f"{rows}x{plan.block_h}x{plan.block_k} w{plan.num_warps} s{plan.num_stages} "
            f"{form}, {weights}")
