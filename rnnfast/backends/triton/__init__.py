"""Triton backend: the input projection as one GEMM, then one fused kernel per layer
and direction for the recurrence (forward.py) and for its reverse-time gradient
chain (backward.py); the weight and input gradients are GEMMs shared with the
reference backend (backends/gradients.py).

The kernels run on CUDA devices, and on CPU tensors inside Triton's interpreter when
TRITON_INTERPRET=1 is set before rnnfast loads them (that is how CI tests them). The
kernel modules are imported on first use, so `import rnnfast` never pays for Triton.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from ..traced import compile_constant

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_found: Optional[bool] = None  # whether the triton package is installed, once known


@compile_constant
def _installed() -> bool:
    """Looked up once: every layer call on `auto` asks, and without triton imported the
    search of sys.path takes about 40 us. A constant to torch.compile."""
    global _found
    if _found is None:
        _found = importlib.util.find_spec("triton") is not None
    return _found


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as "3.6.0" or "2.4.0rc1"."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])


def interpreter_problem(triton_version: str, numpy_version: Optional[str]) -> Optional[str]:
    """Why Triton's interpreter cannot run the kernels with these versions, or None.
    Triton 3.6's interpreter turns a scalar argument into an int from a 1-element array
    (`range(T)` in every kernel), which numpy 2.4 refuses with a TypeError; 3.7 fixed it."""
    if numpy_version and _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run with numpy {numpy_version} "
                "(it fails on every kernel's range over the steps); use triton>=3.7 or numpy<2.4")
    return None


_interpreter_checked: Optional[tuple[Optional[str]]] = None  # (problem,) once looked up


@compile_constant
def _interpreter_problem_here() -> Optional[str]:
    """interpreter_problem for the installed Triton and numpy, looked up once (by hand:
    Dynamo warns when it traces into an lru_cache). A constant to torch.compile."""
    global _interpreter_checked
    if _interpreter_checked is None:
        import triton
        try:
            import numpy
        except ImportError:
            numpy = None
        _interpreter_checked = (interpreter_problem(
            triton.__version__, numpy.__version__ if numpy is not None else None),)
    return _interpreter_checked[0]


def unavailable_reason() -> Optional[str]:
    if not _installed():
        return "the triton package is not installed (pip install triton)"
    if interpreting():
        return _interpreter_problem_here()
    if not torch.cuda.is_available():
        return ("no CUDA device (set TRITON_INTERPRET=1 to run its kernels on CPU in Triton's "
                "interpreter, which is slow and meant for testing)")
    return None


def unsupported_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (supported: float32, bfloat16, float16, float64)"
    if interpreting():
        if device.type != "cpu":
            return f"TRITON_INTERPRET=1 runs kernels on CPU tensors only, got a {device.type} tensor"
    elif device.type != "cuda":
        return f"its kernels run on CUDA tensors, got a {device.type} tensor"
    return None


def lstm_forward(*args):
    """backends.reference.forward's contract; loads the kernels on first use."""
    from .forward import forward
    return forward(*args)


def lstm_backward(*args):
    """backends.reference.backward's contract; loads the kernels on first use."""
    from .backward import backward
    return backward(*args)
