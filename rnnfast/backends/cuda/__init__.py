"""CUDA C++ backend: the extension rnnfast._C built from csrc/ (persistent kernels for
the forward recurrence and the backward dh/dc chain: thread-block clusters on sm_90,
cooperative grids elsewhere; the input projection and the weight/input gradients are
GEMMs through torch, as in the other backends).

Status: compiled for sm_80/sm_90 in CI, its SASS instruction mix checked
(tests/test_cuda_sass.py), its layouts and fragment addressing checked on the CPU
(tests/test_cuda_sources.py), the kernels themselves run on a CPU emulator of their PTX
(tests/test_cuda_emulated.py); not yet run on a GPU, so `backend="auto"` never picks it.

`import rnnfast` works without the extension: this module only records why the
backend is unavailable. Layers whose weight slices do not fit in shared memory
(plan.py) run on the reference backend instead, announced once with a warning.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import NamedTuple, Optional

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Where a call the kernels cannot hold on chip goes: the oracle, so that no size ever
# gets a wrong answer; the Triton backend is not verified on a GPU yet either.
FALLBACK = "reference"

_BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` where a CUDA toolkit "
               "(nvcc) and a CUDA build of torch are installed; see csrc/README.md")


def _load_extension():
    if importlib.util.find_spec("rnnfast._C") is None:  # the usual CPU-only install
        return None, f"rnnfast._C not built: no compiled extension in this install; {_BUILD_HINT}"
    try:
        from rnnfast import _C
    except ImportError as error:  # built, but for another torch/CUDA: say what broke
        return None, f"rnnfast._C not built for this environment: {error}; {_BUILD_HINT}"
    return _C, None


_C, _NOT_BUILT_REASON = _load_extension()
_limits: dict[int, "DeviceLimits"] = {}
_warned: set[str] = set()


def unavailable_reason() -> Optional[str]:
    if _NOT_BUILT_REASON is not None:
        return _NOT_BUILT_REASON
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def unsupported_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (supported: float32, bfloat16, float16)"
    if device.type != "cuda":
        return f"its kernels run on CUDA tensors, got a {device.type} tensor"
    return None


class DeviceLimits(NamedTuple):
    sms: int
    smem: int                           # opt-in shared memory per block (bytes)
    cooperative: bool                   # cooperative launches supported
    major: int                          # compute capability major
    resident_clusters: tuple[int, ...]  # [c]: clusters of c CTAs held at once (0: none, or c < 2)


def device_limits(device: torch.device) -> DeviceLimits:
    """What the plan needs to know about `device` (binding.cpp device_limits)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _limits:
        sms, smem, cooperative, major, resident = _C.device_limits(index)
        _limits[index] = DeviceLimits(sms, smem, cooperative, major, tuple(resident))
    return _limits[index]


def plan_for(direction: str, device: torch.device, dtype: torch.dtype, batch: int, hidden: int,
             out_size: int, has_proj: bool, plain: bool = False):
    """The launch plan of the "forward" or "backward" kernel (plan.py), or why it cannot
    run; plain=True: a plain grid plan (no clusters, multicast, registers or reduce splits), what a
    refused launch of any other plan falls back to."""
    from . import plan
    sms, smem, cooperative, major, resident = device_limits(device)
    if major < 8:
        return f"the kernels need compute capability 8.0 or newer, this GPU has {major}.x"
    if not cooperative:
        return "this GPU does not support cooperative launches"
    return plan.make_plan(direction, batch, hidden, out_size, has_proj, dtype.itemsize, sms, smem,
                          major, plain, resident)


def fallback(reason: str):
    """The backend that runs a call these kernels cannot (a layer too large for the
    chip, or a cooperative launch the GPU refused); warns once per reason."""
    from .. import _REGISTRY
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"rnnfast backend 'cuda' cannot run this layer on chip ({reason}); "
                      f"using the {FALLBACK} backend for it instead", stacklevel=4)
    return _REGISTRY[FALLBACK]


def lstm_forward(*args):
    """backends.reference.forward's contract."""
    from .forward import forward
    return forward(*args)


def lstm_backward(*args):
    """backends.reference.backward's contract."""
    from .backward import backward
    return backward(*args)
