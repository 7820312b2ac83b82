"""`python -m rnnfast bench --explain`: for each case, without a GPU, the Triton plan
of every layer on an H100/H200 (sm_90), its compiled resources and the latency model's
time, beside cuDNN's published figure where one exists."""
from __future__ import annotations

import torch

from ..cli_args import UsageError

# cuDNN on an H100, fp16, from FlashRNN's paper (DESIGN.md §8): (T, B, I, H, dtype) ->
# (forward, forward+backward) seconds. Other shapes have no published figure.
CUDNN_H100 = {(1024, 16, 768, 768, "fp16"): (2.01e-3, 5.19e-3)}
DEFAULT_GROUPS = ("fastrnns", "flashrnn-dense")
ARCH = 90


def explain(args) -> int:
    """Prints the plans, resources and modelled times of the bench's cases (by default
    the fastrnns and FlashRNN groups; --cases for others) or of --batch/--hidden/--seq."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise UsageError("--explain compiles the Triton kernels: install triton") from None
    from ..backends.triton import aot, model

    from .cli import cases_from_args

    try:
        suite = cases_from_args(args, torch.device("cuda"), DEFAULT_GROUPS)
    except ValueError as e:
        raise UsageError(str(e), "python -m rnnfast bench --explain") from None

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
    print("\nModelled layer totals against cuDNN:")
    for case in suite:
        forward = totals[case, "forward"]
        both = forward + totals[case, "backward"]
        cudnn = CUDNN_H100.get((case.T, case.B, case.I, case.H, case.dtype))
        reference = (f"cuDNN {cudnn[0] * 1e3:.2f} / {cudnn[1] * 1e3:.2f} ms (FlashRNN paper)"
                     if cudnn and case.layers == 1 else "cuDNN: no published figure; measure it")
        print(f"  {case.name:44} fwd {forward * 1e3:7.3f} ms, fwd+bwd {both * 1e3:7.3f} ms; {reference}")
    return 0


def _describe(plan) -> str:
    form = (f"barrier x{plan.programs_per_batch_block}" if plan.use_barrier else "batch split")
    weights = "W held" if plan.weights_resident else "W streamed"
    return (f"{plan.block_b}x{plan.block_h}x{plan.block_k} w{plan.num_warps} s{plan.num_stages} "
            f"{form}, {weights}")
