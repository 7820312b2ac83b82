"""One GEMM helper shared by the backends' torch-side products."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# Below this many weight elements oneDNN loses: each call costs ~15 us against ~3 us
# for BLAS at H=32, and packing the weight ~100 us (measured on the 2-core EPYC; at
# 128x512 the two are even, at 512x2048 oneDNN is 15-25% faster).
_ONEDNN_MIN_WEIGHT = 128 * 512


# mm(a, b, out=None) -> a @ b, torch.mm's signature: the GEMM a backend's input and
# weight gradients run on (backends/gradients.py). torch.mm by default; the cpu
# backend passes its own kernel's.
MatMul = Callable[..., Tensor]


class Product:
    """a @ weight.T for one weight [out, in] applied at every step (or once to all rows).

    On CPU in fp32 it packs the weight once and uses oneDNN's GEMM, which runs the
    per-step products of a large LSTM 15-25% faster than the default BLAS on the
    AVX-512 CPUs measured (bench/); for small weights and elsewhere it is a plain matmul."""

    def __init__(self, weight: Tensor, rows: int):
        self.weight = weight
        self.onednn = (_HAS_ONEDNN_LINEAR and weight.device.type == "cpu"
                       and weight.dtype == torch.float32 and weight.numel() >= _ONEDNN_MIN_WEIGHT)
        if self.onednn:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), max(rows, 1))

    def __call__(self, a: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        if self.onednn and a.shape[0] > 0:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, bias, "none", [], "")
        return torch.nn.functional.linear(a, self.weight, bias)
