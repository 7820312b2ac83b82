"""Host-side helpers shared by the forward and backward launchers."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..steps import Steps


def step_tables(steps: Steps, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Packed input: the first row [T] int64 and active rows [T] int32 of each processed
    step, on the device (the kernels' offsets/sizes). Dense input: (None, None), the
    kernels compute the rows. Same tables as triton/launch.py, without importing Triton."""
    if steps.uniform:
        return None, None
    offsets = torch.tensor(steps.offsets, dtype=torch.int64).to(device, non_blocking=True)
    sizes = torch.tensor(steps.sizes, dtype=torch.int32).to(device, non_blocking=True)
    return offsets, sizes
