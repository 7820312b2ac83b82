"""The part of the backward that is the same for every backend: once the recurrence
has produced the gate gradients of every row, the input and parameter gradients are
large GEMMs over all steps (cuBLAS / oneDNN through torch), each computed only when
asked for. A partly frozen weight's gradient multiplies only the row blocks that hold
a trainable entry (trainable.py); its frozen entries come out exactly zero (DESIGN.md §4)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .gemm import MatMul, Product
from .steps import Steps, prev_sequence
from .trainable import masked_product


def parameter_and_input_grads(
    dgates: Tensor,                 # [N, 4H] dL/d(gate pre-activations), accumulation dtype
    dh0: Tensor,                    # [B, P] accumulation dtype
    dc0: Tensor,                    # [B, H] accumulation dtype
    dy_total: Optional[Tensor],     # [N, P] dL/dy incl. the recurrence (only for dW_hr)
    x: Optional[Tensor],            # layer input (only for dW_ih)
    h0: Optional[Tensor],           # [B, P] (only for dW_hh)
    w_ih: Optional[Tensor],         # [4H, I] (only for dx)
    y: Optional[Tensor],            # [.., P] layer output (only for dW_hh)
    hidden: Optional[Tensor],       # [N, H] pre-projection hidden (only for dW_hr)
    steps: Steps,
    needs: Sequence[bool],          # dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr
    frozen: Sequence[Optional[Tensor]],  # masks for w_ih, w_hh, b_ih, b_hh, w_hr
    x_shape: Sequence[int],
    dtype: torch.dtype,             # the layer's input dtype: every gradient comes out in it
    mm: Optional[MatMul] = None,    # the backend's GEMM, else torch's (Product, torch.mm)
) -> list[Optional[Tensor]]:
    need_dx, need_dh0, need_dc0, need_dw_ih, need_dw_hh, need_db_ih, need_db_hh, need_dw_hr = needs
    frozen_w_ih, frozen_w_hh, frozen_b_ih, frozen_b_hh, frozen_w_hr = frozen
    rows = dgates.shape[0]
    # The GEMMs run in the input dtype (fp32 accumulation inside), like the forward's.
    # dgates is converted whole once if any product reads all of it; the products of
    # partly frozen weights otherwise convert only the blocks they read.
    whole = need_dx or (need_dw_ih and frozen_w_ih is None) or (need_dw_hh and frozen_w_hh is None)
    dgates_io = dgates.to(dtype) if whole else dgates
    grads: list[Optional[Tensor]] = [None] * 8
    if need_dx:
        dx = Product(w_ih.t(), rows)(dgates_io) if mm is None else mm(dgates_io, w_ih)
        grads[0] = dx.view(x_shape)
    if need_dh0:
        grads[1] = dh0.to(dtype)
    if need_dc0:
        grads[2] = dc0.to(dtype)
    if need_dw_ih:
        grads[3] = masked_product(dgates_io, x.reshape(rows, x_shape[-1]), frozen_w_ih, dtype, mm)
    if need_dw_hh:
        y2d = y.reshape(rows, h0.shape[1])
        grads[4] = masked_product(dgates_io, prev_sequence(y2d, h0, steps), frozen_w_hh, dtype, mm)
    if need_db_ih or need_db_hh:
        # One column sum over all of dgates, whatever is frozen: it costs 1/I of a weight
        # product, and a sum over fewer columns would round differently.
        db = dgates.sum(0).to(dtype)
        db_ih = db if need_db_ih else None
        db_hh = (db.clone() if need_db_ih else db) if need_db_hh else None  # outputs may not alias
        grads[5], grads[6] = _zero_frozen(db_ih, frozen_b_ih), _zero_frozen(db_hh, frozen_b_hh)
    if need_dw_hr:
        acc = dy_total.dtype
        grads[7] = masked_product(dy_total, hidden.to(acc), frozen_w_hr, acc, mm).to(dtype)
    return grads


def _zero_frozen(grad: Optional[Tensor], mask: Optional[Tensor]) -> Optional[Tensor]:
    return grad if grad is None or mask is None else grad.masked_fill_(mask, 0)


def low_rank_grads(
    dgates: Tensor,                 # [N, 4H] gate gradients, in the weights' dtype
    inputs: Tensor,                 # [N, in] what the weight multiplies: x, or h(t-1)
    lora_a: Tensor,                 # [r, in]
    lora_b: Tensor,                 # [4H, r]
    scale: float,
    needs: Sequence[bool],          # dA, dB
) -> list[Optional[Tensor]]:
    """dA, dB of a LoRA update W + scale * B @ A, straight from the gate gradients:
    dW would be dgates^T @ inputs ([4H, in], one GEMM over all rows), but
    dB = scale * dgates^T @ (inputs @ A^T) and dA = scale * (dgates @ B)^T @ inputs only
    ever form [N, r]-wide products."""
    need_da, need_db = needs
    d_a = scale * ((dgates @ lora_b).t() @ inputs) if need_da else None
    d_b = scale * (dgates.t() @ (inputs @ lora_a.t())) if need_db else None
    return [d_a, d_b]
