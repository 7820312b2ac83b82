"""Measuring what a forward pass keeps for backward, on any device."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor


def saved_activation_bytes(forward: Callable[[], object], exclude: Iterable[Tensor] = ()):
    """Runs forward() and counts the bytes autograd saves for backward, leaving out the
    tensors in `exclude` (typically the parameters, which exist anyway). A tensor saved
    twice counts twice, as autograd holds it for two uses. Returns (bytes, result)."""
    skip = {t.data_ptr() for t in exclude}
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        if t.data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = forward()
    return total, result
