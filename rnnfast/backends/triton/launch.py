"""Host-side helpers shared by the forward and backward launchers."""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl
from torch import Tensor

from ..steps import Steps, accumulation_dtype
from . import interpreting

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def kernel_dtypes(dtype: torch.dtype) -> tuple[tl.dtype, bool, str]:
    """For a layer of `dtype`: the accumulation dtype, whether the interpreter's bf16
    must be worked around (its bf16 maths is wrong: tl.dot operands are converted to
    fp32 first; and it truncates on conversion to bf16: outputs are rounded by hand),
    and the fp32 dot precision ("tf32" only where torch's own matmul setting allows it)."""
    acc = _TL_DTYPES[accumulation_dtype(dtype)]
    interpret_bf16 = interpreting() and dtype == torch.bfloat16
    tf32 = (not interpreting() and dtype == torch.float32
            and torch.backends.cuda.matmul.allow_tf32)
    return acc, interpret_bf16, "tf32" if tf32 else "ieee"


def step_tables(steps: Steps, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Packed input: the first row [T] int64 and active rows [T] int32 of each processed
    step, on the device. Dense input needs no tables (None, None)."""
    if steps.uniform:
        return None, None
    offsets = torch.tensor(steps.offsets, dtype=torch.int64).to(device, non_blocking=True)
    sizes = torch.tensor(steps.sizes, dtype=torch.int32).to(device, non_blocking=True)
    return offsets, sizes
