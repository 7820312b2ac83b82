"""Host-side helpers shared by the forward and backward launchers."""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
import triton.language as tl
from torch import Tensor

from ..barrier import BARRIER_SPIN_LIMIT, raise_if_barrier_timed_out, watch_timeout_flag
from ..steps import accumulation_dtype
from . import interpreting
from .plan import TAGGED_WORD_UNITS, Plan

MAX_REGISTERS = 255  # per thread, on every NVIDIA GPU since Kepler

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def kernel_dtypes(dtype: torch.dtype) -> tuple[tl.dtype, bool, str, bool]:
    """For a layer of `dtype`: the accumulation dtype, whether the interpreter's bf16
    must be worked around (its bf16 maths is wrong: tl.dot operands are converted to
    fp32 first; and it truncates on conversion to bf16: outputs are rounded by hand),
    the fp32 dot precision: "tf32x3" (tensor cores, each operand split into two tf32
    parts, three products: about fp32's accuracy, where "ieee" would run on the FMA
    units), or "tf32" where torch's own matmul setting allows it; fp64 "ieee"; and
    whether the interpreter must make tf32x3's three products itself (it ignores the
    precision: cell.dot). The interpreter always takes tf32x3 for fp32, so that CI
    checks the GPU's default arithmetic."""
    acc = _TL_DTYPES[accumulation_dtype(dtype)]
    interpret_bf16 = interpreting() and dtype == torch.bfloat16
    if dtype != torch.float32:
        return acc, interpret_bf16, "ieee", False
    tf32 = not interpreting() and torch.backends.cuda.matmul.allow_tf32
    return acc, interpret_bf16, "tf32" if tf32 else "tf32x3", interpreting()


def forward_constexprs(plan: Plan, dtype: torch.dtype, *, reverse: bool, packed: bool,
                       has_bias: bool, has_proj: bool, save: str) -> dict:
    """The forward kernel's compile-time arguments (shared by the launcher and aot)."""
    acc, interpret_bf16, precision, interpret_tf32x3 = kernel_dtypes(dtype)
    return dict(REVERSE=reverse, PACKED=packed, HAS_BIAS=has_bias, HAS_PROJ=has_proj,
                SAVE_GATES=save == "all", SAVE_CELLS=save != "none",
                USE_BARRIER=plan.counts_arrivals, SPIN_LIMIT=BARRIER_SPIN_LIMIT,
                ONE_TILE=plan.one_tile, W_CHUNKS=plan.held_chunks, TAGGED=plan.tagged,
                WORD_UNITS=TAGGED_WORD_UNITS[dtype.itemsize] if plan.tagged else 1,
                BATCH_AS_N=plan.batch_as_n, ACC=acc, INTERPRET_BF16=interpret_bf16,
                PRECISION=precision, INTERPRET_TF32X3=interpret_tf32x3, BLOCK_B=plan.block_b,
                BLOCK_H=plan.block_h, BLOCK_K=plan.block_k)


def backward_constexprs(plan: Plan, dtype: torch.dtype, *, reverse: bool, packed: bool,
                        has_dy: bool, has_proj: bool, need_dy_total: bool) -> dict:
    """The backward kernel's compile-time arguments (shared by the launcher and aot):
    16-bit layers run the dh chain's product on tensor cores (TENSOR_CORE_CHAIN), the
    others in their accumulation dtype."""
    _, interpret_bf16, _, _ = kernel_dtypes(dtype)
    acc, _, precision, interpret_tf32x3 = kernel_dtypes(accumulation_dtype(dtype))
    return dict(REVERSE=reverse, PACKED=packed, HAS_DY=has_dy, HAS_PROJ=has_proj,
                NEED_DY_TOTAL=need_dy_total, USE_BARRIER=plan.counts_arrivals,
                SPIN_LIMIT=BARRIER_SPIN_LIMIT, ONE_TILE=plan.one_tile,
                W_CHUNKS=plan.held_chunks, TAGGED=plan.tagged, BATCH_AS_N=plan.batch_as_n,
                TENSOR_CORE_CHAIN=dtype in (torch.float16, torch.bfloat16),
                INTERPRET_BF16=interpret_bf16, ACC=acc, PRECISION=precision,
                INTERPRET_TF32X3=interpret_tf32x3, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h,
                BLOCK_K=plan.block_k)


def launch_options(plan: Plan) -> dict:
    """Launch options of a plan: barrier plans (tagged ones too) launch cooperatively,
    so the driver either makes every program resident at once or refuses the launch
    (never a silent hang).
    The register cap is the hardware's own: without one, ptxas picks a lower target for
    kernels that wait at a barrier and spills (sm_80 backward, B=3 H=20: 168 registers
    and 60 B of spills; with the cap, 255 registers and none). One program runs per SM,
    so the registers cost no occupancy."""
    return dict(num_warps=plan.num_warps, num_stages=plan.num_stages, maxnreg=MAX_REGISTERS,
                launch_cooperative_grid=plan.use_barrier)


# Whether the device accepts a kernel specialization (plan, constexprs, how Triton
# specializes the sizes, the tensors' dtypes), checked once per process.
_device_accepts: dict[tuple, bool] = {}
_warned: set[tuple] = set()
# The driver's words when it refuses a cooperative launch (too many programs to be
# resident at once, or no cooperative launch on this device / under MPS).
_COOPERATIVE_REFUSALS = ("too many blocks in cooperative launch", "operation not supported")


def launch(kernel, plans: list[Plan], arguments: Callable[[Plan], tuple[list, dict, Tensor]],
           device: torch.device, name: str) -> Optional[Plan]:
    """Runs `kernel` with the first of `plans` that the device accepts and returns it;
    None when it accepts none (the caller then computes on the reference backend).

    arguments(plan) -> the kernel's positional arguments and constexprs for that plan,
    and its barrier tensor (counters, then the timeout flag), one of those arguments.
    A plan is accepted when its compiled kernel fits the device's shared memory and, for
    all but the last plan, does not spill (checked before its first launch, compiled
    ahead of it), and when the driver takes its launch (cooperative for barrier plans).
    Inside a CUDA-graph capture the timeout flags are neither read nor watched (querying
    an event there would break the capture, and a replay cannot report to the host): the
    bounded wait still ends a hang there, without the error."""
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if not capturing:
        raise_if_barrier_timed_out()
    for index, plan in enumerate(plans):
        args, constexprs, barrier = arguments(plan)
        options = launch_options(plan)
        if not interpreting():
            sizes = tuple((a == 1, a % 16 == 0) for a in args if isinstance(a, int))
            # fp16 and bf16 share every constexpr but compile apart: the dtypes are keys.
            dtypes = tuple(a.dtype for a in args if isinstance(a, Tensor))
            key = (name, plan, tuple(constexprs.items()), sizes, dtypes, device)
            if key not in _device_accepts:
                _device_accepts[key] = _fits(kernel, plan, args, constexprs, options,
                                             spills_allowed=index == len(plans) - 1)
            if not _device_accepts[key]:
                continue
        try:
            kernel[plan.grid](*args, **constexprs, **options)
        except RuntimeError as error:
            if plan.use_barrier and any(words in str(error) for words in _COOPERATIVE_REFUSALS):
                continue
            raise
        if plan.use_barrier and not capturing:
            watch_timeout_flag(barrier[-1:], f"{name} with {plan}")
        return plan
    key = (name, tuple(plans))
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"rnnfast backend 'triton': the device accepted none of the plans {plans} "
                      f"of {name}; using the reference backend for this layer instead",
                      RuntimeWarning, stacklevel=3)
    return None


def _fits(kernel, plan: Plan, args: list, constexprs: dict, options: dict,
          spills_allowed: bool) -> bool:
    """Compiles the kernel for the current device (Triton keeps it for the launch) and
    checks it there: Triton raises OutOfResources for shared memory over the device's limit."""
    from triton.runtime.errors import OutOfResources

    compiled = kernel.warmup(*args, grid=plan.grid, **constexprs, **options)
    try:
        compiled._init_handles()
    except OutOfResources:
        return False
    return spills_allowed or compiled.n_spills == 0
