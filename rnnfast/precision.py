"""The low-precision tolerance rule of DESIGN.md §6, in one place.

A kernel's error against a float64 run may be at most about twice the error of the
reference (torch.nn.LSTM or the reference backend) run in the same precision. Its
callers take that error as the largest over the reference's run and a few runs with
the hidden units (and a projection's outputs) relabelled (verify/smoke.py
BASELINE_ORDERS, tests/helpers.py REFERENCE_ORDERS): the largest of a few hundred
rounding errors is one draw, which the summation order alone moved by up to 7x on a
small fp32 layer with a projection. On layers that amplify rounding errors step by
step even that is one draw: the reference in yet another order breaks the rule on
about 1 draw in 40 of two such layers (tests/test_cuda_emulated.py judges the kernels
over draws there). A fixed atol cannot say this: what a correct bf16 LSTM gets wrong
depends on the shape, the sequence length and the values. The tests and `python -m
rnnfast verify` both judge with the functions below, so that the rule is the same
wherever a result is called correct.

Each tensor is allowed `2 * reference_error + steps * eps * max(1, scale)`. The floor
keeps a reference that happens to be (nearly) exact from demanding exactness; `scale`
(the largest magnitude of the exact tensor, 1 when not given) sizes it to the tensor,
not to 1.0. It is one rounding step in 16-bit dtypes, where the output's own rounding
dominates every error, and 16 in fp32/fp64, where another summation order, equally
correct, moves a sum of K terms by about sqrt(K) steps while the reference may happen
to be off by one (seen: 4 steps against 1 on a T=1 layer's input gradient). NaN never
passes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def max_errors(got: Sequence[torch.Tensor], exact: Sequence[torch.Tensor]) -> list[float]:
    """Largest absolute difference of each tensor to its exact (float64) counterpart."""
    return [(a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            for a, b in zip(got, exact)]


def magnitudes(exact: Sequence[torch.Tensor]) -> list[float]:
    """Largest absolute value of each exact tensor (the `scale` of `allowed_error`)."""
    return [t.double().abs().max().item() if t.numel() else 0.0 for t in exact]


FLOOR_STEPS = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 16, torch.float64: 16}


def allowed_error(reference_error: float, dtype: torch.dtype, scale: float = 1.0) -> float:
    """The most a kernel may be off where the reference in `dtype` is off by reference_error."""
    return 2 * reference_error + FLOOR_STEPS[dtype] * torch.finfo(dtype).eps * max(1.0, scale)


def rule_violations(ours: Sequence[float], reference: Sequence[float], dtype: torch.dtype,
                    scales: Optional[Sequence[float]] = None,
                    names: Optional[Sequence[str]] = None) -> list[str]:
    """One message per tensor whose error breaks the rule (empty: all within it)."""
    scales = scales if scales is not None else [1.0] * len(ours)
    names = names if names is not None else [f"tensor {i}" for i in range(len(ours))]
    broken = []
    for name, mine, theirs, scale in zip(names, ours, reference, scales):
        limit = allowed_error(theirs, dtype, scale)
        if math.isnan(mine) or not mine <= limit:
            broken.append(f"{name}: error {mine:.3g} > {limit:.3g} (reference's own error {theirs:.3g})")
    return broken


def allowance_used(ours: Sequence[float], reference: Sequence[float], dtype: torch.dtype,
                   scales: Optional[Sequence[float]] = None) -> float:
    """The largest of each tensor's error over what the rule allows it (at most 1: within
    the rule; NaN where an error is NaN)."""
    scales = scales if scales is not None else [1.0] * len(ours)
    used = [mine / allowed_error(theirs, dtype, scale) for mine, theirs, scale in zip(ours, reference, scales)]
    return math.nan if any(math.isnan(u) for u in used) else max(used, default=0.0)
