"""CPU backend: the fused C++ layer of csrc/cpu/ (one call per layer and direction runs
the whole recurrence, forward or backward; the input projection and the weight/input
gradients are GEMMs through torch, the latter shared with every backend in
backends/gradients.py, freeze masks included).

The extension is compiled on first use (build.py) and cached. `import rnnfast` never
compiles anything: `backend="auto"` builds it the first time a CPU layer runs, and
where it cannot be built (no compiler) rnnfast says so once and runs the reference
backend instead.
"""
from __future__ import annotations

import warnings
from types import ModuleType
from typing import Optional

import torch

from . import build
from ..traced import compile_constant


SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def runs_widened(dtype: torch.dtype) -> bool:
    """Whether a layer of this dtype runs the fp32 kernels on fp32 copies of its tensors,
    its results rounded to the dtype once at the end: fp16 always, and bf16 where this
    CPU's build has no bf16 kernels (build.has_bf16_kernels: AVX512_BF16). Without them
    a CPU has no 16-bit dot product, so the fp32 kernels are the fast way, and the most
    accurate: h(t) is not rounded between steps."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not build.has_bf16_kernels())


def widened(*tensors: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """fp32 copies of a widened layer's tensors, in order; None stays None."""
    return [t.float() if t is not None else None for t in tensors]


_extension: Optional[ModuleType] = None
_build_error: Optional[str] = None


@compile_constant
def _load() -> Optional[str]:
    """Builds or loads the extension once per process; None on success, else why not.
    A constant to torch.compile: tracing never compiles, it sees the eager outcome."""
    global _extension
    if _extension is None and _build_error is None:
        reason = build.missing_tool()
        if reason is None:
            try:
                _extension = build.build()
            except Exception as error:  # a failed compile is reported, never fatal to rnnfast
                reason = f"building csrc/cpu failed: {str(error).strip().splitlines()[-1][:300]}"
        if reason is not None:
            _report(reason)
    return _build_error


def _report(reason: str) -> None:
    """Records why the extension cannot be had and says so, once per process."""
    global _build_error
    if _build_error is None:
        _build_error = reason
        warnings.warn(f"rnnfast: the C++ CPU kernels cannot be used ({reason}); CPU layers "
                      "run on the reference backend (pure PyTorch)", stacklevel=4)


def extension() -> ModuleType:
    """The compiled module; raises RuntimeError naming why it cannot be had."""
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"rnnfast backend 'cpu' is not available: {reason}")
    return _extension


@compile_constant
def unavailable_reason() -> Optional[str]:
    """Cheap: what rules the backend out without compiling (a failed build counts once
    it has been tried). On a GPU machine nothing is compiled until a CPU layer runs.
    A constant to torch.compile, which cannot trace the file system checks."""
    missing = build.missing_tool()
    if missing is not None:
        _report(missing)
    return _build_error


def unsupported_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if device.type != "cpu":
        return f"its kernels run on CPU tensors, got a {device.type} tensor"
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (supported: float32, float64, bfloat16, float16)"
    return None


def auto_picks(device: torch.device, dtype: torch.dtype) -> bool:
    """auto takes it on CPU in every dtype it covers once the extension is built (this is
    what builds it): 0.25-0.31x the reference's time over the CPU suite in fp32, faster in
    every row; bf16 and fp16 likewise, with bf16 kernels or widened (csrc/README.md)."""
    return device.type == "cpu" and dtype in SUPPORTED_DTYPES and _load() is None


# The contracts of backends.reference.forward and backward. Imported last: they call
# extension() above.
from .forward import forward as lstm_forward  # noqa: E402
from .backward import backward as lstm_backward  # noqa: E402
