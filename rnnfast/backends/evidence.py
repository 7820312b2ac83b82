"""Where `backend="auto"` may pick a GPU backend: only where committed results of
`python -m rnnfast verify` earned it (docs/verify.md).

A (backend, GPU kind, dtype) earns its row when one verify run on that kind of GPU
showed every parity case of the backend in that dtype PASS (DESIGN.md §6) and every
timed benchmark row of it in that dtype faster than cuDNN in the same run, TF32 on
and off alike. `earned_rows` is that rule, applied by verify to its own results; its
summary prints the rows a run earned, ready to paste into EARNED below together with
the committed results folder they rest on. The table lives in the package because
bench/results/ is not installed with it.

The GPU kind is the device name as torch reports it ("NVIDIA H200"): an H100 PCIe and
an H100 SXM differ in SMs and clocks, so results from one do not vouch for the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from .traced import compile_constant

GPU_BACKENDS = ("triton", "cuda")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Earned:
    backend: str   # "triton" | "cuda"
    gpu: str       # torch.cuda.get_device_name() of the GPU the results came from
    dtype: str     # "fp32" | "bf16" | "fp16"
    results: str   # committed folder of the verify run, e.g. bench/results/nvidia-h200/verify


# Rows earned by committed verify results. None yet: no kernel has run on a GPU.
EARNED: tuple[Earned, ...] = ()


@compile_constant
def _gpu_kind(index: int) -> str:
    # A constant to torch.compile: the device a traced call runs on does not change.
    return torch.cuda.get_device_name(index)


def gpu_kind(device: torch.device) -> str:
    """The GPU kind of a CUDA device, as EARNED names it."""
    return _gpu_kind(device.index if device.index is not None else torch.cuda.current_device())


def auto_may_pick(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether committed verify results earned `backend` for this device kind and dtype."""
    if device.type != "cuda" or dtype not in DTYPE_NAMES:
        return False
    wanted = (backend, DTYPE_NAMES[dtype])
    rows = [row for row in EARNED if (row.backend, row.dtype) == wanted]
    return bool(rows) and gpu_kind(device) in [row.gpu for row in rows]


def earned_rows(gpu: str, smoke: Iterable[dict], bench: Iterable[dict],
                results: str) -> list[Earned]:
    """The rows one verify run earns on GPU `gpu`.

    smoke: one dict per parity case with "backend", "dtype" and "status" (PASS counts;
    FAIL, TIMEOUT, FALLBACK, SKIPPED and UNAVAILABLE do not).
    bench: rnnfast.bench rows with "provider", "dtype", "status" and "ratio" (time over
    cuDNN's in the same run; below 1 is faster)."""
    smoke, bench = list(smoke), list(bench)
    earned = []
    for backend in GPU_BACKENDS:
        for dtype in DTYPE_NAMES.values():
            cases = [c for c in smoke if (c["backend"], c["dtype"]) == (backend, dtype)]
            # Rows of the frozen-rows modes compare a backend with itself, not with cuDNN.
            timed = [r for r in bench if (r["provider"], r["dtype"]) == (f"rnnfast/{backend}", dtype)
                     and r["mode"] != "memory" and "frozen" not in r]
            if (cases and all(c["status"] == "PASS" for c in cases) and timed
                    and all(_beats_cudnn(r) for r in timed)):
                earned.append(Earned(backend, gpu, dtype, results))
    return earned


def _beats_cudnn(row: dict) -> bool:
    ratio: Optional[float] = row.get("ratio")
    return row["status"] == "ok" and ratio is not None and ratio < 1.0
