"""Backend registry: which implementations of the LSTM layer exist, which are usable
here, and which one `backend="auto"` picks for a call.

A backend provides `forward` and `backward` with the signatures of
`rnnfast.backends.reference` (the oracle). Registering one is all it takes for the
autograd core, the modules and `python -m rnnfast` to use it.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import cpu as cpu_backend, cuda as cuda_backend, evidence, reference, triton as triton_backend


@dataclass(frozen=True)
class Backend:
    name: str
    forward: Callable
    backward: Callable
    priority: int  # "auto" takes the highest-priority backend that supports the call
    # Why the backend cannot run in this process at all (None: it can).
    unavailable_reason: Callable[[], Optional[str]]
    # Why it cannot run this call's device/dtype (None: it can).
    unsupported_reason: Callable[[torch.device, torch.dtype], Optional[str]]
    description: str = ""
    # Whether "auto" may pick it for a device/dtype: only where tests and benchmarks on
    # real hardware show it correct and faster than the alternatives (backends/evidence.py).
    auto_picks: Callable[[torch.device, torch.dtype], bool] = lambda device, dtype: True


# Names the public API accepts; the ones not registered below are not built yet.
KNOWN_BACKENDS = ("reference", "triton", "cuda", "cpu")
_NOT_BUILT: dict[str, str] = {}
_REGISTRY: dict[str, Backend] = {}
_warned_fallbacks: set[tuple[str, str]] = set()


def register(backend: Backend) -> None:
    if backend.name not in KNOWN_BACKENDS:
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {KNOWN_BACKENDS}")
    _REGISTRY[backend.name] = backend


def get(name: str) -> Backend:
    """The registered backend called `name` (not "auto"); raises if it cannot run here."""
    if name not in KNOWN_BACKENDS:
        raise ValueError(
            f"backend must be one of {('auto',) + KNOWN_BACKENDS}, got {name!r}")
    if name not in _REGISTRY:
        raise RuntimeError(f"rnnfast backend {name!r} is not available: {_NOT_BUILT[name]}")
    backend = _REGISTRY[name]
    reason = backend.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"rnnfast backend {name!r} is not available: {reason}")
    return backend


def check_name(name: str) -> None:
    """Raise a clear error for a backend name that cannot work in this process."""
    if name == "auto":
        return
    get(name)


def resolve(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs a call on `device` with `dtype`.

    "auto" takes the highest-priority backend that is available, supports the call and
    is verified for it (Backend.auto_picks).
    A named backend that is unavailable raises; one that is available but does not
    support this device/dtype falls back to the reference backend and says so once.
    """
    if requested == "auto":
        best = _REGISTRY["reference"]
        for b in _REGISTRY.values():  # a plain loop: Dynamo cannot trace max(key=...)
            if (b.priority > best.priority and b.unavailable_reason() is None
                    and b.unsupported_reason(device, dtype) is None and b.auto_picks(device, dtype)):
                best = b
        if best.name == "reference" and device.type == "cuda":
            _announce_reference_on_gpu(device, dtype)
        return best.name
    backend = get(requested)
    reason = backend.unsupported_reason(device, dtype)
    if reason is None:
        return requested
    key = (requested, reason)
    if key not in _warned_fallbacks:
        _warned_fallbacks.add(key)
        warnings.warn(f"rnnfast backend {requested!r} does not support this call ({reason}); "
                      "using the reference backend instead", stacklevel=3)
    return "reference"


def _announce_reference_on_gpu(device: torch.device, dtype: torch.dtype) -> None:
    """Once per process and dtype: `auto` put a CUDA layer on the reference backend (a
    step at a time in separate PyTorch ops) because no GPU backend is earned for it
    (evidence.py). Says why for each GPU backend and what the user can do, since nothing
    else would tell a GPU user that the layer is not on a fused kernel. Not while
    torch.compile traces: a warning there breaks the graph."""
    key = ("auto", str(dtype))
    if torch.compiler.is_compiling() or key in _warned_fallbacks:
        return
    _warned_fallbacks.add(key)
    why = []
    for name in evidence.GPU_BACKENDS:
        b = _REGISTRY[name]
        reason = b.unavailable_reason() or b.unsupported_reason(device, dtype)
        why.append(f"{name}: {reason or 'no committed verify results for this GPU and dtype'}")
    gpu = evidence.gpu_kind(device)
    warnings.warn(
        f"rnnfast: on {gpu}, backend='auto' runs {str(dtype).removeprefix('torch.')} layers "
        "on the reference backend: correct, but every step is about ten separate PyTorch "
        "ops, where nn.LSTM's cuDNN kernels fuse the sequence. It does not pick rnnfast's "
        f"GPU kernels ({'; '.join(why)}). `python -m rnnfast verify` tests and times them on "
        "this GPU (docs/verify.md); backend='cuda' or backend='triton' runs them before "
        "that, unverified.",
        stacklevel=4)


def forget_announced_fallbacks() -> None:
    """Every fallback is announced once per process (here, and by the cuda backend and the
    Triton launcher for a layer their kernels cannot take): the next of each is
    announced again. For `verify`, whose cases must each hear their own."""
    _warned_fallbacks.clear()
    cuda_backend._warned.clear()
    launch = sys.modules.get("rnnfast.backends.triton.launch")  # loaded with the kernels
    if launch is not None:
        launch._warned.clear()


def available_backends() -> dict[str, Optional[str]]:
    """Every known backend name -> None when usable here, else the reason it is not."""
    status: dict[str, Optional[str]] = {}
    for name in KNOWN_BACKENDS:
        if name in _REGISTRY:
            status[name] = _REGISTRY[name].unavailable_reason()
        else:
            status[name] = _NOT_BUILT[name]
    return status


register(Backend(
    name="reference",
    forward=reference.forward,
    backward=reference.backward,
    priority=0,
    unavailable_reason=lambda: None,
    unsupported_reason=lambda device, dtype: (
        None if dtype.is_floating_point else f"dtype {dtype} is not a floating-point type"),
    description="pure PyTorch; the oracle every kernel is tested against",
))

register(Backend(
    name="triton",
    forward=triton_backend.lstm_forward,
    backward=triton_backend.lstm_backward,
    priority=1,
    unavailable_reason=triton_backend.unavailable_reason,
    unsupported_reason=triton_backend.unsupported_reason,
    description="fused Triton kernels: one launch per layer and direction for the recurrence",
    # Only where committed `python -m rnnfast verify` results earned it.
    auto_picks=lambda device, dtype: evidence.auto_may_pick("triton", device, dtype),
))

register(Backend(
    name="cuda",
    forward=cuda_backend.lstm_forward,
    backward=cuda_backend.lstm_backward,
    priority=2,
    unavailable_reason=cuda_backend.unavailable_reason,
    unsupported_reason=cuda_backend.unsupported_reason,
    description="CUDA C++ (rnnfast._C): persistent cooperative kernels, W_hh on chip",
    # Only where committed `python -m rnnfast verify` results earned it.
    auto_picks=lambda device, dtype: evidence.auto_may_pick("cuda", device, dtype),
))

register(Backend(
    name="cpu",
    forward=cpu_backend.lstm_forward,
    backward=cpu_backend.lstm_backward,
    priority=1,
    unavailable_reason=cpu_backend.unavailable_reason,
    unsupported_reason=cpu_backend.unsupported_reason,
    description="C++ (csrc/cpu, compiled on first use): the whole recurrence in one call, "
                "no allocation or dispatch per step, vectorized cell; fp32/fp64, bf16 on "
                "AVX512_BF16 CPUs, other 16-bit layers widened onto the fp32 kernels",
    # CPU fp32/fp64, and bf16 with AVX512_BF16: 0.21-0.27x the reference's time over the
    # CPU suite; fp16, and bf16 elsewhere, widened: 0.16-0.22x the reference's time in bf16
    # and 0.04-0.11x in fp16 on a CPU without AVX512_BF16 (csrc/README.md).
    auto_picks=cpu_backend.auto_picks,
))
