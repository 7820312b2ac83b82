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
    AVX-512 CPUs measured (bench/); for small weights and elsewhere it is a plain matmul.

    `out_dtype` wider than the weight's (fp32 for a 16-bit weight): the sums reach the
    result unrounded, as in a fused kernel's accumulator. On a CPU the weight is widened
    once and the GEMM runs in out_dtype (4-12x faster there than a 16-bit GEMM on the
    2-core AVX-512 CPU without AVX512_BF16 measured, B = 16-64, H = 512-1024); on a GPU
    cuBLAS multiplies in 16 bits and writes out_dtype (widened_mm)."""

    def __init__(self, weight: Tensor, rows: int, out_dtype: Optional[torch.dtype] = None):
        self.out_dtype = out_dtype or weight.dtype
        self.widen_on_cpu = self.out_dtype != weight.dtype and weight.device.type == "cpu"
        if self.widen_on_cpu:
            weight = weight.to(self.out_dtype)
        self.weight = weight
        self.onednn = (_HAS_ONEDNN_LINEAR and weight.device.type == "cpu"
                       and weight.dtype == torch.float32 and weight.numel() >= _ONEDNN_MIN_WEIGHT)
        if self.onednn:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), max(rows, 1))

    def __call__(self, a: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        if self.widen_on_cpu:
            a = a.to(self.out_dtype)
        if self.onednn and a.shape[0] > 0:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, bias, "none", [], "")
        if self.out_dtype != self.weight.dtype:
            out = widened_mm(a, self.weight.t(), self.out_dtype)
            return out if bias is None else out + bias
        return torch.nn.functional.linear(a, self.weight, bias)


_mm_refuses_out_dtype: set[str] = set()  # device types where torch.mm took no out_dtype


def widened_mm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """a @ b written in out_dtype: torch.mm's out_dtype (torch >= 2.8, CUDA fp16/bf16 to
    fp32: the 16-bit GEMM's fp32 sums, unrounded); where torch has none, the product in
    a's dtype, widened."""
    if a.device.type not in _mm_refuses_out_dtype:
        try:
            return torch.mm(a, b, out_dtype=out_dtype)
        except (TypeError, NotImplementedError, RuntimeError):
            _mm_refuses_out_dtype.add(a.device.type)
    return torch.mm(a, b).to(out_dtype)
